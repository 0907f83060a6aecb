"""Specification of the format rewards: full-match checks of the Qwen2-VL token syntax and the JSON list."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import QWEN2_VL_TOKENS, token_soup
from trl_perception.formats import render_objects
from trl_perception.frames import model_input_size
from trl_perception.rewards import format_reward, json_format_reward, qwen2_vl_format_reward
from trl_perception.rewards.format import is_json_answer, is_qwen2_vl_answer

REF = "<|object_ref_start|>bird<|object_ref_end|>"
BOX = "<|box_start|>(1,2),(30,40)<|box_end|>"
JSON = '[{"bbox_2d": [1, 2, 30, 40], "label": "bird"}]'


@pytest.mark.parametrize(
    "text",
    [
        REF + BOX,
        BOX,
        REF + BOX + BOX + BOX,
        REF + BOX + "<|object_ref_start|>cat<|object_ref_end|>" + BOX,
        REF + "<|box_start|>(10,20)<|box_end|>",
        REF + "<|box_start|>( 1 , 2 ) , ( 30 , 40 )<|box_end|>",
        REF + BOX + "<|im_end|><|endoftext|><|endoftext|>",
        "<answer>" + REF + BOX + "</answer>",
    ],
)
def test_qwen2_vl_answers_that_pass(text):
    assert is_qwen2_vl_answer(text)
    assert qwen2_vl_format_reward([text]) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I cannot find it.",
        "<garbage no box",
        REF,
        REF + REF + BOX,
        "<|box_start|>" + BOX,
        "<|box_start|><|box_start|>(1,2),(30,40)<|box_end|>",
        BOX + ", " + BOX,  # PR1's counting format rejects separators too
        "Sure: " + REF + BOX,
        REF + BOX + " Hope this helps!",
        REF + BOX + REF,
        REF + "<|box_start|>(1,2),(30<|box_end|>",
        REF + "<|box_start|>(1,2),(30,40)",  # truncated
        REF + "<|box_start|>(30,40),(1,2)<|box_end|>",  # inverted
        REF + "<|box_start|>(-1,2),(30,40)<|box_end|>",
        REF + "<|box_start|>(nan,2),(30,40)<|box_end|>",
        "<|object_ref_start|><|object_ref_end|>" + BOX,
        "<answer>" + REF + BOX + "</answer> trailing",
        JSON,
    ],
)
def test_qwen2_vl_answers_that_fail(text):
    assert not is_qwen2_vl_answer(text)
    assert qwen2_vl_format_reward([text]) == [0.0]


@pytest.mark.parametrize(
    "text",
    [
        JSON,
        "[]",
        "```json\n" + JSON + "\n```",
        "```\n" + JSON + "\n```",
        "  " + JSON + "\n<|im_end|>",
        '[{"point_2d": [3, 4], "label": "bird"}, {"point_2d": [5.5, 6]}]',
        '[{"bbox_2d": [1, 2, 30, 40]}]',
        '[{"bbox_2d": [1, 2, 30, 40], "label": "bird", "text_content": "x"}]',
        "<answer>" + JSON + "</answer>",
    ],
)
def test_json_answers_that_pass(text):
    assert is_json_answer(text)
    assert json_format_reward([text]) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "None",
        "Here you go: " + JSON,
        JSON + " Done.",
        JSON + JSON,
        '{"bbox_2d": [1, 2, 30, 40], "label": "bird"}',
        '[{"bbox_2d": [1, 2, 30, 40], "label": "bird"}',  # truncated
        '[{"bbox_2d": [1, 2, 30], "label": "bird"}]',
        '[{"bbox_2d": [30, 40, 1, 2], "label": "bird"}]',  # inverted
        '[{"bbox_2d": [NaN, 2, 30, 40], "label": "bird"}]',
        '[{"bbox_2d": [1e309, 2, 30, 40], "label": "bird"}]',
        '[{"bbox_2d": [true, 2, 30, 40], "label": "bird"}]',
        '[{"bbox_2d": ["1", 2, 30, 40], "label": "bird"}]',
        '[{"bbox_2d": [-1, 2, 30, 40], "label": "bird"}]',
        '[{"bbox_2d": [1, 2, 30, 40], "label": 5}]',
        '[{"bbox_2d": [1, 2, 30, 40], "label": ""}]',
        '[{"label": "bird"}]',
        '[{"bbox_2d": [1, 2, 30, 40], "point_2d": [1, 2]}]',
        "[[1, 2, 30, 40]]",
        "```json\n" + JSON,
        "```json\n" + JSON + "\n```\nexplanation",
        REF + BOX,
    ],
)
def test_json_answers_that_fail(text):
    assert not is_json_answer(text)
    assert json_format_reward([text]) == [0.0]


def test_format_reward_follows_the_box_format_column():
    completions = [REF + BOX, JSON, REF + BOX, JSON, JSON, REF + BOX]
    families = ["qwen2_vl", "qwen2_vl", "qwen2_5_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl"]
    assert format_reward(completions, box_format=families) == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_format_reward_without_box_format_accepts_either_syntax():
    assert format_reward([REF + BOX, JSON, "prose"]) == [1.0, 1.0, 0.0]


def test_ocr_rows_get_none():
    kwargs = {"task": ["ocr", "grounding", "counting", "detection"]}
    for reward in (format_reward, qwen2_vl_format_reward, json_format_reward):
        assert reward([JSON] * 4, **kwargs)[0] is None
        assert None not in reward([JSON] * 4, **kwargs)[1:]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("fence", [False, True])
def test_rendered_ground_truth_is_well_formatted(family, fence):
    image = (640, 480)
    objects = [
        {"bbox_2d": [10, 20, 200, 180], "label": "person"},
        {"bbox_2d": [300, 100, 630, 470], "label": "dog"},
    ]
    text = render_objects(objects, family, image, model_input_size(image, family), fence=fence)
    assert format_reward([text], box_format=[family]) == [1.0]


def test_long_adversarial_inputs_return():
    # The patterns have a single way to match, so these finish in linear time.
    for text in [
        "<|box_start|>(1,2)" + " " * 50_000 + "x",
        BOX * 5_000 + "x",
        (REF + BOX) * 3_000 + REF,
        "[" * 50_000,
        "```json\n" + "[" * 10_000,
        "<|box_start|>(" + "1" * 50_000,
    ]:
        assert format_reward([text]) == [0.0]


NEAR_VALID = token_soup(
    [
        *QWEN2_VL_TOKENS,
        "(1,2)",
        ",",
        "(30,40)",
        "bird",
        "[",
        "]",
        "{",
        "}",
        '"bbox_2d"',
        ":",
        "[1, 2, 30, 40]",
        '"label"',
        "NaN",
        "```json",
        "```",
        "<|im_end|>",
        "\n",
        " ",
    ],
    max_size=30,
)


@given(
    text=st.one_of(st.text(max_size=300), NEAR_VALID),
    family=st.sampled_from([None, "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]),
)
def test_any_text_scores_zero_or_one(text, family):
    for reward in (format_reward, qwen2_vl_format_reward, json_format_reward):
        (value,) = reward([text], box_format=[family])
        assert value in (0.0, 1.0) and math.isfinite(value)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "bbox_2d": st.lists(st.integers(0, 1000), min_size=4, max_size=4),
                "label": st.text(min_size=1, max_size=10).filter(str.strip),
            }
        ),
        max_size=5,
    )
)
def test_json_lists_of_well_formed_objects_pass(objects):
    for item in objects:
        x1, x2 = sorted([item["bbox_2d"][0], item["bbox_2d"][2]])
        y1, y2 = sorted([item["bbox_2d"][1], item["bbox_2d"][3]])
        item["bbox_2d"] = [x1, y1, x2, y2]
    assert json_format_reward([json.dumps(objects)]) == [1.0]
