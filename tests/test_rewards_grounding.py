"""Specification of the grounding rewards: `iou_reward`, `make_iou_reward` and `grounding_format_reward`."""

import json
import logging
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._helpers import HOSTILE_NUMBERS, PUNCTUATION, QWEN2_VL_TOKENS, token_soup
from trl_perception.formats import _parse_general, _strip_fences, answer_text, parse_boxes, render_objects
from trl_perception.frames import model_input_size
from trl_perception.rewards import _common, get_reward, grounding_format_reward, iou_reward, make_iou_reward
from trl_perception.rewards.grounding import is_grounding_format


@pytest.fixture(autouse=True)
def fresh_warning_counts():
    """Warnings are rate-limited per process; start every test from zero so it can see its own."""
    _common._WARN_COUNTS.clear()


def conv(text):
    return [{"role": "assistant", "content": text}]


def json_box(box, label="cat"):
    return json.dumps([{"bbox_2d": box, "label": label}])


# ------------------------------------------------------------------------------------------- golden IoU


def test_iou_of_overlapping_squares_is_25_over_175():
    assert iou_reward([json_box([5, 5, 15, 15])], [[0, 0, 10, 10]]) == [pytest.approx(25 / 175)]


def test_identical_box_scores_one_and_disjoint_box_zero():
    assert iou_reward(["[0, 0, 10, 10]", "[20, 20, 30, 30]"], [[0, 0, 10, 10]] * 2) == [1.0, 0.0]


def test_conversational_and_plain_completions_score_alike():
    text = json_box([0, 0, 10, 5])
    assert iou_reward([conv(text), text], [[0, 0, 10, 10]] * 2) == [0.5, 0.5]


def test_first_box_is_scored():
    text = json.dumps([{"bbox_2d": [0, 0, 10, 5], "label": "a"}, {"bbox_2d": [0, 0, 10, 10], "label": "a"}])
    assert iou_reward([text], [[0, 0, 10, 10]]) == [0.5]


def test_qwen2_vl_tokens_and_prose_boxes_are_read():
    completions = [
        "<|object_ref_start|>man<|object_ref_end|><|box_start|>(0,0),(10,5)<|box_end|><|im_end|>",
        "The box is [0, 0, 10, 5].",
        "(0,0),(10,5)",
    ]
    assert iou_reward(completions, [[0, 0, 10, 10]] * 3) == [0.5, 0.5, 0.5]


def test_solution_may_be_a_json_string_or_a_dict():
    assert iou_reward(["[0, 0, 10, 5]"] * 2, ["[0, 0, 10, 10]", {"bbox_2d": [0, 0, 10, 10]}]) == [0.5, 0.5]


def test_squared_option_reproduces_the_released_iou_squared():
    expected = (25 / 175) ** 2
    assert make_iou_reward(squared=True)([json_box([5, 5, 15, 15])], [[0, 0, 10, 10]]) == [
        pytest.approx(expected)
    ]
    assert get_reward("iou", squared=True)(["[5, 5, 15, 15]"], [[0, 0, 10, 10]]) == [pytest.approx(expected)]
    assert get_reward("iou_squared")(["[5, 5, 15, 15]"], [[0, 0, 10, 10]]) == [pytest.approx(expected)]


def test_factory_rewards_are_named_for_trl():
    assert make_iou_reward().__name__ == "iou_reward"
    assert make_iou_reward(squared=True).__name__ == "iou_squared_reward"
    assert make_iou_reward(name="rec_iou").__name__ == "rec_iou"


# ------------------------------------------------------------------------ known failure cases (§7)


def test_inverted_box_scores_zero_without_crashing():
    # PR1 raises ZeroDivisionError on (10,0,0,10) vs (0,0,10,10): the union is 0 there.
    assert iou_reward(["[10, 0, 0, 10]", "[10, 10, 0, 0]"], [[0, 0, 10, 10]] * 2) == [0.0, 0.0]


def test_zero_union_scores_zero():
    assert iou_reward(["[5, 5, 5, 5]"], [[5, 5, 5, 5]]) == [0.0]


@pytest.mark.parametrize(
    "text",
    [
        '[{"bbox_2d": [NaN, 0, 10, 10], "label": "a"}]',
        '[{"bbox_2d": [Infinity, 0, 10, 10], "label": "a"}]',
        '[{"bbox_2d": [1e309, 0, 10, 10], "label": "a"}]',
        "[1e309, 0, 10, 10]",
        "[-1e400, 0, 10, 10]",
    ],
)
def test_non_finite_numbers_score_zero(text):
    assert iou_reward([text], [[0, 0, 10, 10]]) == [0.0]


def test_unparseable_and_truncated_answers_score_zero():
    completions = [
        "I cannot find it.",
        "",
        '[{"bbox_2d": [0, 0, 1',
        "<|box_start|>(0,0),(1",
        "<garbage no box",
    ]
    assert iou_reward(completions, [[0, 0, 10, 10]] * len(completions)) == [0.0] * len(completions)


def test_prompt_echo_without_an_answer_scores_zero():
    echo = (
        "Output the bounding box of the cat in the image. Answer with a JSON list of "
        '{"bbox_2d": [x1, y1, x2, y2], "label": name} for each object, in absolute pixel coordinates.'
    )
    assert iou_reward([echo], [[0, 0, 10, 10]]) == [0.0]


def test_absent_object_rewards_only_the_empty_answer():
    completions = ["[]", "```json\n[]\n```", "None", "", "[0, 0, 10, 10]", "I cannot find it."]
    assert iou_reward(completions, [[]] * len(completions)) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_empty_answer_on_a_present_object_scores_zero():
    assert iou_reward(["[]", ""], [[0, 0, 10, 10]] * 2) == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------- frames

IMAGE = (1920, 1080)
GT = [300.0, 200.0, 900.0, 700.0]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_ground_truth_rendered_in_each_family_scores_near_one(family):
    input_size = model_input_size(IMAGE, family)
    text = render_objects([{"bbox_2d": GT, "label": "cat"}], family, IMAGE, input_size)
    (reward,) = iou_reward([text], [GT], box_format=[family], image_size=[list(IMAGE)])
    assert reward >= 0.99


def test_qwen2_5_vl_uses_the_given_input_size():
    small = model_input_size(IMAGE, "qwen2_5_vl", max_pixels=112 * 112)
    text = render_objects([{"bbox_2d": GT, "label": "cat"}], "qwen2_5_vl", IMAGE, small)
    kwargs = {"box_format": ["qwen2_5_vl"], "image_size": [list(IMAGE)]}
    (right,) = iou_reward([text], [GT], input_size=[list(small)], **kwargs)
    (default_limits,) = iou_reward([text], [GT], **kwargs)
    assert right >= 0.95
    assert default_limits < 0.2


@pytest.mark.parametrize(
    ("rendered", "scored"),
    [("qwen2_5_vl", "qwen2_vl"), ("qwen2_vl", "qwen2_5_vl"), ("qwen3_vl", "qwen2_5_vl")],
)
def test_the_wrong_frame_scores_low(rendered, scored):
    text = render_objects(
        [{"bbox_2d": GT, "label": "cat"}], rendered, IMAGE, model_input_size(IMAGE, rendered)
    )
    (reward,) = iou_reward([text], [GT], box_format=[scored], image_size=[list(IMAGE)])
    assert reward < 0.5


def test_without_frame_columns_coordinates_are_compared_as_written():
    text = render_objects([{"bbox_2d": GT, "label": "cat"}], "qwen2_vl", IMAGE)  # 0-1000 numbers
    assert iou_reward([text], [GT])[0] < 0.5
    assert iou_reward([json_box(GT)], [GT]) == [1.0]


def test_whole_image_box_scores_its_true_iou():
    gt = [0, 0, 320, 240]  # a quarter of a 640x480 image
    completions = [
        "<|box_start|>(0,0),(1000,1000)<|box_end|>",
        "<|box_start|>(-500,-500),(3000,3000)<|box_end|>",
    ]
    rewards = iou_reward(completions, [gt] * 2, box_format=["qwen2_vl"] * 2, image_size=[[640, 480]] * 2)
    assert rewards == [pytest.approx(0.25)] * 2
    # Without a family the numbers are pixels, still clipped to the image.
    assert iou_reward(["[-100, -100, 5000, 5000]"], [gt], image_size=[[640, 480]]) == [pytest.approx(0.25)]


# ------------------------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    "solution",
    ["not json", [0, 0, 10], [10, 10, 0, 0], [0, float("nan"), 1, 1], None, {"label": "x"}, "[1, 2, 3, 4"],
)
def test_malformed_solution_gives_none_and_a_warning(solution, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_perception.rewards"):
        rewards = iou_reward(["[0, 0, 10, 10]", "[0, 0, 10, 10]"], [solution, [0, 0, 10, 10]])
    assert rewards == [None, 1.0]
    assert any("iou_reward: row 0 skipped" in r.getMessage() for r in caplog.records)


def test_malformed_frame_column_gives_none_for_that_row(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_perception.rewards"):
        rewards = iou_reward(
            ["[0, 0, 10, 10]"] * 3,
            [[0, 0, 10, 10]] * 3,
            box_format=["qwen2_vl", "llava", None],
            image_size=[[0, 0], [100, 100], None],
        )
    assert rewards == [None, None, 1.0]
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 2


# ------------------------------------------------------------------------------- grounding format reward


def test_grounding_format_accepts_the_pr1_answer_with_or_without_im_end():
    answer = "<|object_ref_start|>man in red<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>"
    completions = [
        answer,
        answer + "<|im_end|>",
        answer + "<|im_end|><|endoftext|><|endoftext|>",
        answer + "\n",
    ]
    assert grounding_format_reward(completions) == [1.0] * 4


def test_grounding_format_rejects_what_the_unescaped_pr1_regex_accepted():
    completions = [
        "<garbage no box",
        "I cannot find it.",
        "<|object_ref_start|>man<|object_ref_end|>",
        "<|box_start|>(10,20),(30,40)<|box_end|>",
        "<|object_ref_start|>man<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|> and more text",
        "Sure! <|object_ref_start|>man<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>",
    ]
    assert grounding_format_reward(completions) == [0.0] * len(completions)


def test_grounding_format_skips_other_tasks():
    assert grounding_format_reward(["x", "y"], task=["detection", "grounding"]) == [None, 0.0]


# --------------------------------------------------------------------------------------------- logging


def test_components_are_logged_when_the_trainer_passes_hooks():
    metrics, extra = {}, {}
    iou_reward(
        ["[0, 0, 10, 5]", "no box", "[0, 0, 1, 1]"],
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 1, 1]],
        task=["grounding", "grounding", "ocr"],
        log_metric=lambda name, value: metrics.__setitem__(name, value),
        log_extra=lambda column, values: extra.__setitem__(column, values),
    )
    assert metrics == {"iou_reward/iou": pytest.approx(0.25), "iou_reward/parse_failure": pytest.approx(0.5)}
    assert extra == {"iou_reward/iou": [0.5, 0.0, None], "iou_reward/parse_failure": [0.0, 1.0, None]}


# ------------------------------------------------------------------------------------------ properties

NEAR_VALID = token_soup(
    [
        *QWEN2_VL_TOKENS,
        *PUNCTUATION,
        '"bbox_2d"',
        ":",
        "cat",
        *HOSTILE_NUMBERS,
        "1000",
        "0.5",
        " ",
        "<|im_end|>",
        "```json",
    ],
    max_size=40,
)


@given(
    text=st.one_of(st.text(max_size=300), NEAR_VALID),
    box=st.lists(st.integers(0, 2000), min_size=4, max_size=4),
)
def test_any_text_gives_a_finite_reward_in_range(text, box):
    gt = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    for squared in (False, True):
        (reward,) = make_iou_reward(squared=squared)([text], [gt])
        assert math.isfinite(reward) and 0.0 <= reward <= 1.0
    (fmt,) = grounding_format_reward([text])
    assert fmt in (0.0, 1.0)


@given(
    text=st.one_of(st.text(max_size=200), NEAR_VALID),
    family=st.sampled_from(["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]),
    size=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
)
def test_any_text_with_frame_columns_gives_a_finite_reward(text, family, size):
    (reward,) = iou_reward([text], [[0, 0, 10, 10]], box_format=[family], image_size=[list(size)])
    assert reward is None or (math.isfinite(reward) and 0.0 <= reward <= 1.0)


# ------------------------------------------------------------------------------------ linear format (#12)

_RELEASED_PATTERN_ESCAPED = re.compile(
    r"<\|object_ref_start\|>.*?<\|object_ref_end\|><\|box_start\|>.*?<\|box_end\|>"
    r"(?:<\|im_end\|>|<\|endoftext\|>|\s)*"
)
_FORMAT_PIECES = [
    *QWEN2_VL_TOKENS, "<|im_end|>", "<|endoftext|>", " ", "\n", "\t", "\x85", "\u2029", "a", "(1,2),(3,4)", "<", "|",
]  # fmt: skip


@given(token_soup(_FORMAT_PIECES, max_size=12))
def test_the_linear_check_accepts_exactly_what_the_fixed_regex_accepts(text):
    assert is_grounding_format(text) == bool(_RELEASED_PATTERN_ESCAPED.fullmatch(text))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<|object_ref_start|>man<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>", True),
        ("<|object_ref_start|>man<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|> \n", True),
        # The lazy groups may span tokens: the regex accepts these, so does the check.
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>b<|box_end|>c<|object_ref_end|><|box_start|>d<|box_end|>", True),
        ("<|object_ref_start|>a\nb<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>", False),
        ("<|object_ref_start|><|object_ref_end|><|box_start|><|box_end|>x", False),
        ("<|object_ref_start|>man<|object_ref_end|><|box_start|>(1,2),(3,4)", False),
        ("<|object_ref_start|><|object_ref_end|><|box_start|><|box_end|>", True),
        ("<|object_ref_start|><|object_ref_end|><|box_start|><|box_end|>"[:-1], False),
    ],
)  # fmt: skip
def test_grounding_format_golden(text, ok):
    assert is_grounding_format(text) is ok
    assert grounding_format_reward([text]) == [1.0 if ok else 0.0]


def test_grounding_format_reads_the_answer_after_thinking():
    answer = "<|object_ref_start|>man<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    assert grounding_format_reward([f"<think>the left one</think><answer>{answer}</answer><|im_end|>"]) == [
        1.0
    ]
    assert grounding_format_reward([f"<think>{answer}</think><answer>no idea</answer>"]) == [0.0]


# -------------------------------------------------------------------------------------- thinking (#14)


def test_iou_reads_the_answer_not_the_thinking():
    thinking = "<think>maybe [0, 0, 10, 10] or <|box_start|>(0,0),(10,10)<|box_end|></think>"
    gt = [[0, 0, 10, 10]]
    assert iou_reward([thinking + "<answer>[0, 0, 10, 5]</answer>"], gt) == [pytest.approx(0.5)]
    assert iou_reward([thinking + "<answer>I cannot tell.</answer>"], gt) == [0.0]
    assert iou_reward(
        [conv(thinking + '<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "x"}]</answer>')], gt
    ) == [1.0]
    assert iou_reward([thinking + "<answer>[]</answer>"], [[]]) == [1.0]


# ------------------------------------------------------------------------------------ lean path (#12)


@given(
    box=st.lists(st.one_of(st.integers(-10**6, 10**6), st.floats(-2e5, 2e5, allow_nan=False)), min_size=4, max_size=4),
    label=st.text(max_size=20),
    spaces=st.sampled_from(["", " ", "\n  ", "\t"]),
)  # fmt: skip
def test_the_lean_path_scores_like_the_general_parser(box, label, spaces):
    s = spaces
    text = f'[{s}{{{s}"bbox_2d":{s}[{s}{f",{s}".join(json.dumps(v) for v in box)}{s}],{s}"label":{s}{json.dumps(label)}{s}}}{s}]'
    parsed = _general(text)
    expected = next((o.bbox for o in parsed.objects if o.bbox is not None), None)
    boxes = parse_boxes(text, require_label=False).boxes
    assert (tuple(boxes[0]) if boxes else None) == expected
    (reward,) = iou_reward([text], [[0, 0, 100, 100]])
    if expected is None:
        assert reward == 0.0
    else:
        assert reward == iou_reward([f"{list(expected)}"], [[0, 0, 100, 100]])[0]


def _general(text):
    """The general parsers alone, without the lean path."""
    scope = answer_text(text)
    return _parse_general(scope, _strip_fences(scope), None)


_NUMBER = st.one_of(st.integers(-50, 700), st.floats(-50, 700, allow_nan=False), st.sampled_from(HOSTILE_NUMBERS))
_ANSWER = st.one_of(
    st.builds(lambda b, lab: json.dumps([{"bbox_2d": b, "label": lab}]), st.lists(_NUMBER, min_size=4, max_size=4),
              st.sampled_from(["cat", "", " the man ", "a\"b", "<answer>"])),
    st.builds(lambda b: json.dumps([{"bbox_2d": b, "label": "x"}, {"bbox_2d": [0, 0, 1, 1], "label": "y"}]),
              st.lists(st.integers(0, 600), min_size=4, max_size=4)),
    st.builds(lambda b: "```json\n" + json.dumps([{"bbox_2d": b, "label": "x"}]) + "\n```",
              st.lists(st.integers(0, 600), min_size=4, max_size=4)),
    st.builds(lambda b: json.dumps([{"bbox_2d": b, "label": "x"}])[: len(b)], st.lists(st.integers(0, 600), min_size=4, max_size=4)),
    st.sampled_from(["[1, 2, 300, 400]", "(10,20),(300,400)", "<|box_start|>(100,200),(300,400)<|box_end|>", "[]",
                     '[{"bbox_2d": [01, 2, 3, 4], "label": "x"}]', '[{"bbox_2d": [-0, 2, 300, 400], "label": "x"}]',
                     '[{"bbox_2d": [1e400, 2, 3, 4], "label": "x"}]', '[{"bbox_2d": [1, 2, 3, 4], "label": "x"}] tail']),
    st.text(max_size=30),
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(_ANSWER, st.sampled_from([[0, 0, 100, 100], [50.5, 20, 400, 300], [0, 0, 640, 480]])),
                  min_size=1, max_size=12),
    family=st.sampled_from([None, "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]),
)  # fmt: skip
def test_a_batch_scores_every_row_like_the_general_parser_would(rows, family):
    # The whole call is parsed at once (canonical answers in bulk); each row must still score the IoU of the
    # first box the general parsers read, in the row's frame.
    import numpy as np

    from trl_perception.boxes import paired_box_iou
    from trl_perception.frames import Frame

    texts, gts = [list(x) for x in zip(*rows)]
    size = [640, 480]
    got = iou_reward(texts, gts, box_format=[family] * len(texts), image_size=[size] * len(texts))
    for text, gt, value in zip(texts, gts, got):
        box = next((o.bbox for o in _general(text).objects if o.bbox is not None), None)
        if box is None:
            assert value == 0.0
            continue
        pred = Frame.of(family, size).to_pixels(np.array([box], dtype=np.float64))
        expected = float(np.nan_to_num(np.clip(paired_box_iou(pred, [gt]), 0.0, 1.0))[0])
        assert value == pytest.approx(expected, abs=1e-12, rel=0), text
