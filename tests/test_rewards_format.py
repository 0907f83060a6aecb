"""Specification of the format rewards: full-match checks of the Qwen2-VL token syntax and the JSON list."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trl_perception
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


# ------------------------------------------------------------------- 1 MB adversarial completions (#12)

# Every reward's entry point on repeated openers and other hostile text, 100 KB and 1 MB of each, in a child
# process: a regression to super-linear regex backtracking (which holds the GIL and ignores signals) is
# killed by the timeout instead of hanging the test session.
_ADVERSARIAL_REWARDS_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from trl_perception.rewards import (count_reward, detection_reward, format_reward, grounding_format_reward,
                                        iou_reward, json_format_reward, ocr_reward, qwen2_vl_format_reward)

    PIECES = {
        "ref_openers": "<|object_ref_start|>",
        "ref_and_box_openers": "<|object_ref_start|><|object_ref_end|><|box_start|>",
        "box_openers": "<|box_start|>",
        "ref_close_box_open": "<|object_ref_end|><|box_start|>",
        "full_boxes": "<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>",
        "fences": "```",
        "json_fences": "```json\\n",
        "think_openers": "<think>",
        "answer_openers": "<answer>",
        "answer_closers": "</answer>",
        "brackets": "[",
        "bracketed_words": "[a] ",
        "bracketed_numbers": "[1] ",
        "points": "(1,2)",
        "pairs_with_commas": "(1,2),",
        "json_items": '{"bbox_2d": [1, 2, 3, 4], "label": "x"}, ',
        "spaces_and_tabs": " \\t",
        "newlines": "\\n",
    }
    REWARDS = {
        "grounding_format": lambda t: grounding_format_reward([t]),
        "format": lambda t: format_reward([t]),
        "json_format": lambda t: json_format_reward([t]),
        "qwen2_vl_format": lambda t: qwen2_vl_format_reward([t]),
        "iou": lambda t: iou_reward([t], [[0, 0, 10, 10]]),
        "count": lambda t: count_reward([t], [{"count": 1, "points": [[1, 2]]}]),
        "detection": lambda t: detection_reward([t], [[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]]),
        "ocr": lambda t: ocr_reward([t], ["short text"]),
    }

    def payload(piece, size, wrap):
        body = (piece * (size // len(piece) + 1))[:size]
        return {"plain": body, "think": "<think>" + body + "</think><answer>", "fenced": "```json\\n[" + body}[wrap]

    results = {}
    for kind, piece in PIECES.items():
        for wrap in ("plain", "think", "fenced"):
            for name, reward in REWARDS.items():
                row = {}
                for size in (100_000, 1_000_000):
                    text = payload(piece, size, wrap)
                    start = time.perf_counter()
                    (value,) = reward(text)
                    row[size] = time.perf_counter() - start
                ok = value is not None and value == value and 0.0 <= value <= 1.0
                results[f"{kind}/{wrap}/{name}"] = {"t_small": row[100_000], "t_large": row[1_000_000], "ok": ok}
        print(kind, file=sys.stderr, flush=True)
    print(json.dumps(results))
    """
)


def test_one_megabyte_adversarial_completions_are_scored_in_linear_time():
    try:
        package_root = str(Path(trl_perception.__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.run(
            [sys.executable, "-c", _ADVERSARIAL_REWARDS_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,  # a hang guard only: the whole run takes well under a minute on an idle machine
        )
    except subprocess.TimeoutExpired as err:
        done = (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"scoring adversarial input hung; finished payloads: {done.split()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for case, row in results.items():
        assert row["ok"], case
        # 10x the input may cost at most ~10x the time; the slack absorbs noise on a loaded machine.
        assert row["t_large"] <= 30 * row["t_small"] + 2.0, (case, row)


@pytest.mark.parametrize(
    "text",
    [
        "<think>let me see</think><answer>" + JSON + "</answer>",
        "<think>" + BOX + "</think>\n<answer>```json\n" + JSON + "\n```</answer><|im_end|>",
        "<answer>" + REF + BOX + "</answer>",
        "<think>[1, 2, 3]</think> <answer>" + REF + BOX + "</answer>",
    ],
)
def test_the_answer_after_thinking_is_judged(text):
    assert format_reward([text]) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "<think>" + JSON + "</think>",  # thinking without an answer
        "<think>" + JSON + "</think><answer>Sure: " + JSON + "</answer>",
        "<think>unclosed <answer>" + JSON + "</answer>",
        "<think>a</think> and then <answer>" + JSON + "</answer>",
        "```" + " " * 10_000,
        "```json```",
    ],
)
def test_thinking_or_fences_around_no_well_formed_answer_score_zero(text):
    assert format_reward([text]) == [0.0]
