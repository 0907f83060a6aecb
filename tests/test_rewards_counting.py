"""Specification of `count_reward`: Hungarian point matching with a count ratio, or exact-count credit."""

import json
import logging
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import HOSTILE_NUMBERS, PUNCTUATION, QWEN2_VL_TOKENS, token_soup
from trl_perception.formats import render_objects
from trl_perception.frames import model_input_size
from trl_perception.rewards import _common, count_reward, get_reward

D = 1000 * math.sqrt(2)
TWO = {"count": 2, "points": [[10, 10], [50, 50]]}


@pytest.fixture(autouse=True)
def fresh_warning_counts():
    _common._WARN_COUNTS.clear()


def points(*pts):
    return json.dumps([{"point_2d": list(p), "label": "bird"} for p in pts])


# ---------------------------------------------------------------------------------------------- golden


def test_perfect_points_score_one():
    assert count_reward([points((10, 10), (50, 50))], [TWO]) == [1.0]


def test_order_of_points_does_not_matter():
    assert count_reward([points((50, 50), (10, 10))], [TWO]) == [1.0]


def test_one_of_two_objects_missed_scores_half():
    assert count_reward([points((10, 10))], [TWO]) == [0.5]


def test_one_of_two_missed_with_an_offset_scores_half_times_distance_term():
    # Matched distance 3-4-5 = 5: 1/2 * (1 - 5 / (1000 sqrt 2)).
    assert count_reward([points((13, 14))], [TWO]) == [pytest.approx(0.5 * (1 - 5 / D))]


def test_one_duplicate_extra_among_two_objects_scores_two_thirds():
    assert count_reward([points((10, 10), (10, 10), (50, 50))], [TWO]) == [pytest.approx(2 / 3)]


def test_duplicate_with_offset_scores_two_thirds_times_distance_term():
    # The duplicate is left unmatched; the two matched points are 0 and 10 away: mean 5.
    reward = count_reward([points((10, 10), (10, 10), (50, 60))], [TWO])
    assert reward == [pytest.approx(2 / 3 * (1 - 5 / D))]


def test_box_centres_count_as_points():
    answer = (
        "<|object_ref_start|>bird<|object_ref_end|><|box_start|>(0,0),(20,20)<|box_end|>"
        "<|box_start|>(40,40),(60,60)<|box_end|><|im_end|>"
    )
    assert count_reward(
        [answer, json.dumps([{"bbox_2d": [0, 0, 20, 20]}, {"bbox_2d": [40, 40, 60, 60]}])], [TWO] * 2
    ) == [
        1.0,
        1.0,
    ]


def test_distances_are_measured_in_the_0_1000_frame_of_the_image():
    # A 2000x1000 image: a 200-pixel horizontal error is 100 units of the 0-1000 frame.
    gt = {"count": 2, "points": [[0, 0], [400, 500]]}
    answer = points((0, 0), (200, 500))
    (framed,) = count_reward([answer], [gt], image_size=[[2000, 1000]])
    (as_written,) = count_reward([answer], [gt])
    assert framed == pytest.approx(1 - 50 / D)
    assert as_written == pytest.approx(1 - 100 / D)


def test_solution_as_json_string():
    assert count_reward([points((10, 10), (50, 50))], [json.dumps(TWO)]) == [1.0]


# -------------------------------------------------------------------------------------- count only


def test_count_only_solution_gives_exact_count_credit():
    three = points((1, 1), (2, 2), (3, 3))
    assert count_reward([three, points((1, 1), (2, 2)), three], [3, 3, {"count": 3}]) == [1.0, 0.0, 1.0]


def test_lone_integer_answer_counts_for_count_only_solutions():
    assert count_reward(["There are 3 birds.", "7", "3 or 4"], [3, 3, 3]) == [1.0, 0.0, 0.0]


def test_zero_count_rewards_only_an_empty_answer():
    completions = ["[]", "0", "", "None", points((1, 1)), "no idea"]
    assert count_reward(completions, [0] * len(completions)) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert count_reward(["[]", points((1, 1))], [{"count": 0, "points": []}] * 2) == [1.0, 0.0]


def test_empty_answer_with_objects_present_scores_zero():
    assert count_reward(["[]", "", "2"], [TWO] * 3) == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- known failure cases (§7)


def test_far_away_points_never_go_negative():
    # PR1 gives -4.0 for a point at (5000, 5000) against (0, 0).
    gt = {"count": 1, "points": [[0, 0]]}
    assert count_reward([points((5000, 5000))], [gt]) == [0.0]
    assert count_reward([points((5000, 5000))], [gt], image_size=[[1000, 1000]]) == [0.0]


def test_one_far_outlier_costs_only_its_share():
    gt = {"count": 2, "points": [[0, 0], [10, 0]]}
    assert count_reward([points((0, 0), (100000, 0))], [gt]) == [pytest.approx(0.5)]


@pytest.mark.parametrize(
    "text",
    [
        '[{"point_2d": [NaN, 1]}]',
        '[{"point_2d": [1e309, 1]}]',
        "<|box_start|>(1,2),(3<|box_end|>",
        "((1,2),(3,4))",
    ],
)
def test_malformed_predictions_score_in_range(text):
    (reward,) = count_reward([text], [TWO])
    assert 0.0 <= reward <= 1.0


@pytest.mark.parametrize(
    "solution",
    ["many", -1, 2.5, True, {"count": "x"}, {"points": [[1, float("nan")]]}, {"points": [[1, 2, 3]]}, None],
)
def test_malformed_solution_gives_none_and_a_warning(solution, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_perception.rewards"):
        assert count_reward(["[]", "[]"], [solution, 0]) == [None, 1.0]
    assert any("count_reward: row 0 skipped" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- frames

IMAGE = (1280, 720)
GT_POINTS = [[100, 100], [640, 360], [1200, 700]]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_ground_truth_rendered_in_each_family_scores_near_one(family):
    text = render_objects(
        [{"point_2d": p, "label": "bird"} for p in GT_POINTS], family, IMAGE, model_input_size(IMAGE, family)
    )
    gt = {"count": 3, "points": GT_POINTS}
    (reward,) = count_reward([text], [gt], box_format=[family], image_size=[list(IMAGE)])
    assert reward >= 0.99


def test_wrong_frame_scores_lower():
    text = render_objects([{"point_2d": p} for p in GT_POINTS], "qwen2_vl", IMAGE)
    gt = {"count": 3, "points": GT_POINTS}
    (right,) = count_reward([text], [gt], box_format=["qwen2_vl"], image_size=[list(IMAGE)])
    (wrong,) = count_reward([text], [gt], box_format=["qwen2_5_vl"], image_size=[list(IMAGE)])
    assert wrong < right - 0.1


# --------------------------------------------------------------------------------------------- logging


def test_components_are_logged():
    metrics, extra = {}, {}
    count_reward(
        [points((10, 10)), "2", "x"],
        [TWO, 2, "hello"],
        task=["counting", "counting", "ocr"],
        log_metric=lambda name, value: metrics.__setitem__(name, value),
        log_extra=lambda column, values: extra.__setitem__(column, values),
    )
    assert metrics["count_reward/count_exact"] == pytest.approx(0.5)
    assert metrics["count_reward/count_ratio"] == pytest.approx(0.75)
    assert metrics["count_reward/parse_failure"] == 0.0
    assert extra["count_reward/count_exact"] == [0.0, 1.0, None]


# ------------------------------------------------------------------------------------------ properties

NEAR_VALID = token_soup(
    [
        *QWEN2_VL_TOKENS,
        *PUNCTUATION,
        '"point_2d"',
        '"bbox_2d"',
        ":",
        *HOSTILE_NUMBERS,
        "5000",
        "3",
        " ",
        "birds",
        "```json",
    ],
    max_size=40,
)


@given(
    text=st.one_of(st.text(max_size=300), NEAR_VALID),
    gt=st.one_of(
        st.integers(0, 50),
        st.lists(st.tuples(st.floats(0, 2000), st.floats(0, 2000)), max_size=20).map(
            lambda p: {"count": len(p), "points": [list(x) for x in p]}
        ),
    ),
    size=st.one_of(st.none(), st.tuples(st.integers(1, 3000), st.integers(1, 3000)).map(list)),
)
def test_any_text_gives_a_finite_reward_in_range(text, gt, size):
    (reward,) = count_reward([text], [gt], image_size=[size])
    assert math.isfinite(reward) and 0.0 <= reward <= 1.0


# ---------------------------------------------------------------------------- hardening (#12) and #14


def test_a_negative_count_is_not_a_count():
    # "-3" used to score as 3.
    assert count_reward(["-3", "\u22123", "3"], [3, 3, 3]) == [0.0, 0.0, 1.0]


@given(st.integers(1, 10**6 - 1))
def test_a_negative_number_never_scores_as_its_magnitude(k):
    assert count_reward([f"-{k}", f"There are -{k} birds."], [k, k]) == [0.0, 0.0]


def test_qwen2_vl_points_without_their_tokens_are_counted():
    # skip_special_tokens=True turns <|box_start|>(16,21)<|box_end|>... into bird(16,21)(116,121)...: 4 points.
    text = "bird(16,21)(116,121)(216,221)(316,321)"
    assert count_reward([text], [4]) == [1.0]
    # (x1,y1),(x2,y2) is one box: one object.
    assert count_reward(["bird(16,21),(116,121)"], [1]) == [1.0]
    # Without an image size the points are compared as written: the same points, distance 0.
    gt = {"count": 4, "points": [[16, 21], [116, 121], [216, 221], [316, 321]]}
    assert count_reward([text], [gt]) == [1.0]


def test_numpy_ground_truth_is_read():
    gt = {"count": np.int64(2), "points": np.array([[10.0, 10.0], [50.0, 50.0]])}
    assert count_reward([points((10, 10), (50, 50)), points((10, 10))], [gt, gt]) == [1.0, 0.5]
    assert count_reward(["There are 3.", "[]"], [np.int64(3), np.array(0)]) == [1.0, 1.0]
    assert count_reward(["[]"], [{"count": np.int32(0), "points": np.zeros((0, 2))}]) == [1.0]


def test_sequential_matching_pays_for_order():
    swapped = points((50, 50), (10, 10))
    assert count_reward([swapped], [TWO]) == [1.0]
    # Pairs (50,50)-(10,10) and (10,10)-(50,50): each 40 * sqrt(2) away, so r = 1 - 40 sqrt(2) / D = 0.96.
    assert count_reward([swapped], [TWO], matching="sequential") == [pytest.approx(1 - 40 * math.sqrt(2) / D)]
    # A third (duplicate) point: ratio 2/3 either way; sequential pairs the first two in order.
    three = points((10, 10), (50, 50), (10, 10))
    assert count_reward([three], [TWO], matching="sequential") == [pytest.approx(2 / 3)]
    # Count-only ground truth has nothing to pair: the same exact-count credit.
    assert count_reward([swapped], [2], matching="sequential") == [1.0]


def test_sequential_matching_from_the_registry():
    reward = get_reward("count", matching="sequential")
    assert reward([points((50, 50), (10, 10))], [TWO]) == [pytest.approx(0.96)]
    with pytest.raises(ValueError, match="matching"):
        count_reward(["[]"], [0], matching="greedy")


def test_only_the_answer_counts_when_the_model_thinks_first():
    thinking = "<think>I see " + points((1, 1), (2, 2), (3, 3)) + " <|box_start|>(5,5)<|box_end|></think>"
    assert count_reward([thinking + "<answer>" + points((10, 10), (50, 50)) + "</answer>"], [TWO]) == [1.0]
    assert count_reward([thinking + "<answer>There are 2.</answer>"], [2]) == [1.0]
    assert count_reward([thinking + "<answer>[]</answer>"], [0]) == [1.0]
    assert count_reward([thinking + "<answer>[]</answer>"], [3]) == [0.0]
