"""Specification of the detection reward. Expected values are computed by hand from

    r = clip((0.25 fmt + 0.75 F1 + loc + cls - 0.5 pen) / 3, 0, 1)

with F1 = 2 TP / (Np + Ng), loc = mean IoU of the TP pairs, cls = share of the localised predictions
labelled like a box they localise, pen = ((Np - TP) / Np + (Ng - TP) / Ng) / 2.
"""

import json
import logging
import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import HOSTILE_NUMBERS, token_soup
from trl_perception.formats import render_objects
from trl_perception.frames import model_input_size
from trl_perception.rewards import _common, detection_reward, get_reward, make_detection_reward

CAT = {"bbox_2d": [0, 0, 10, 10], "label": "cat"}
DOG = {"bbox_2d": [20, 20, 30, 30], "label": "dog"}
GT = [CAT, DOG]


@pytest.fixture(autouse=True)
def fresh_warning_counts():
    _common._WARN_COUNTS.clear()


def answer(*objects):
    return json.dumps(list(objects))


def obj(box, label):
    return {"bbox_2d": box, "label": label}


def score(text, gt=GT, **kwargs):
    (reward,) = detection_reward([text], [gt], **kwargs)
    return reward


# ---------------------------------------------------------------------------------------------- golden


def test_perfect_answer_scores_one():
    assert score(answer(CAT, DOG)) == 1.0
    assert score(answer(DOG, CAT)) == 1.0


def test_one_of_two_objects_found():
    # fmt 1, F1 2/3, loc 1, cls 1, pen (0 + 1/2) / 2 = 1/4.
    assert score(answer(CAT)) == pytest.approx((0.25 + 0.75 * 2 / 3 + 1 + 1 - 0.5 * 0.25) / 3)  # 0.875


def test_partial_overlap_scores_its_iou_as_location():
    # IoU([0,0,10,8], [0,0,10,10]) = 0.8: fmt 1, F1 1, loc 0.8, cls 1, pen 0.
    assert score(answer(obj([0, 0, 10, 8], "cat")), [CAT]) == pytest.approx((0.25 + 0.75 + 0.8 + 1) / 3)


def test_iou_threshold_is_inclusive():
    half = answer(obj([0, 0, 10, 5], "cat"))  # IoU exactly 0.5
    assert score(half, [CAT]) == pytest.approx((0.25 + 0.75 + 0.5 + 1) / 3)
    (strict,) = make_detection_reward(iou_threshold=0.6)([half], [[CAT]])
    assert strict == 0.0  # fmt 0.25 - pen 0.5 < 0


def test_labels_are_normalised():
    assert score(answer(obj([0, 0, 10, 10], "  Cat "), obj([20, 20, 30, 30], "DOG")), GT) == 1.0
    traffic = [obj([0, 0, 10, 10], "traffic light")]
    assert score(answer(obj([0, 0, 10, 10], "Traffic   Light")), traffic) == 1.0


def test_rejected_items_lower_the_format_term():
    # One kept item and one malformed item: fmt 1/2, F1 1, loc 1, cls 1, pen 0.
    text = '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [1, 2], "label": "dog"}]'
    assert score(text, [CAT]) == pytest.approx((0.125 + 0.75 + 1 + 1) / 3)
    no_label = '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30]}]'
    # The unlabelled box is rejected, not a prediction: fmt 1/2 again, otherwise perfect on [CAT].
    assert score(no_label, [CAT]) == pytest.approx((0.125 + 0.75 + 1 + 1) / 3)


def test_qwen2_vl_token_answers_are_scored():
    text = (
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(10,10)<|box_end|>"
        "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(20,20),(30,30)<|box_end|><|im_end|>"
    )
    assert score(text) == 1.0


def test_solution_as_json_string_and_conversational_completion():
    completion = [{"role": "assistant", "content": "```json\n" + answer(CAT, DOG) + "\n```"}]
    assert detection_reward([completion], [json.dumps(GT)]) == [1.0]


# -------------------------------------------------------------------------------------- no hack pays


def test_empty_answer_on_an_image_with_objects_scores_zero():
    assert detection_reward(["[]", "", "None"], [GT] * 3) == [0.0, 0.0, 0.0]


def test_negative_image_rewards_only_the_empty_answer():
    completions = ["[]", "```json\n[]\n```", "", "No objects.", answer(CAT), "I see nothing here, sorry"]
    assert detection_reward(completions, [[]] * len(completions)) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_duplicates_lower_the_reward():
    # Np 3, TP 2: F1 4/5, loc 1, cls 1 (all three localise a cat or dog), pen (1/3 + 0) / 2 = 1/6.
    expected = (0.25 + 0.75 * 0.8 + 1 + 1 - 0.5 / 6) / 3
    assert score(answer(CAT, CAT, DOG)) == pytest.approx(expected)
    assert score(answer(CAT, CAT, DOG)) < score(answer(CAT, DOG))
    many = score(answer(CAT, *[CAT] * 20, DOG))
    assert many < score(answer(CAT, CAT, DOG))


def test_listing_every_class_at_one_place_does_not_earn_classification():
    # Np 3, TP 1: F1 2/4, loc 1, cls 1/3, pen (2/3 + 0) / 2 = 1/3.
    text = answer(obj([0, 0, 10, 10], "cat"), obj([0, 0, 10, 10], "dog"), obj([0, 0, 10, 10], "bird"))
    expected = (0.25 + 0.75 * 0.5 + 1 + 1 / 3 - 0.5 / 3) / 3
    assert score(text, [CAT]) == pytest.approx(expected)
    assert score(text, [CAT]) < score(answer(CAT), [CAT])


def test_correct_box_with_the_wrong_label_earns_nothing():
    # TP 0, cls 0 (localised but mislabelled), pen 1: (0.25 - 0.5) / 3 < 0.
    assert score(answer(obj([0, 0, 10, 10], "dog")), [CAT]) == 0.0


def test_labels_absent_from_the_ground_truth_are_false_positives():
    # Np 2, TP 1: F1 2/3, loc 1, cls 1 (the unicorn localises nothing), pen (1/2 + 0) / 2.
    text = answer(CAT, obj([50, 50, 60, 60], "unicorn"))
    assert score(text, [CAT]) == pytest.approx((0.25 + 0.5 + 1 + 1 - 0.125) / 3)
    assert score(text, [CAT]) < score(answer(CAT), [CAT])


def test_wrong_boxes_in_perfect_format_earn_nothing():
    assert score(answer(obj([100, 100, 120, 120], "cat"), obj([200, 200, 220, 220], "dog"))) == 0.0


def test_unparseable_answers_score_zero():
    for text in ["I cannot find it.", "<garbage", '[{"bbox_2d": [0, 0, 1', "{", "[[[[[", "null"]:
        assert score(text) == 0.0, text


def test_truncated_answer_loses_the_format_term_but_keeps_its_complete_items():
    text = answer(CAT, DOG)[:-20]  # cut inside the dog
    # kept [CAT] with fmt 0: F1 2/3, loc 1, cls 1, pen 1/4.
    assert score(text) == pytest.approx((0 + 0.5 + 1 + 1 - 0.125) / 3)
    assert score(text) < score(answer(CAT))


def test_whole_image_box_scores_its_true_iou():
    image = [[100, 100]]
    gt = [obj([0, 0, 80, 80], "cat")]
    whole = score(answer(obj([0, 0, 100, 100], "cat")), gt, image_size=image)
    beyond = score(answer(obj([-500, -500, 900, 900], "cat")), gt, image_size=image)
    assert whole == beyond == pytest.approx((0.25 + 0.75 + 0.64 + 1) / 3)


def test_boxes_beyond_the_cap_are_false_positives():
    junk = [obj([500 + i, 500, 501 + i, 501], "cat") for i in range(5)]
    capped = make_detection_reward(max_detections=5)
    (late,) = capped([answer(*junk, CAT)], [[CAT]])
    (early,) = capped([answer(CAT, *junk)], [[CAT]])
    # Early: Np 6, TP 1. Late: the cat is the 6th box, never matched: TP 0 -> 0.
    assert late == 0.0
    assert early == pytest.approx((0.25 + 0.75 * 2 / 7 + 1 + 1 - 0.5 * (5 / 6) / 2) / 3)


# ------------------------------------------------------------------------ known failure cases (§7)


def test_toothbrush_is_just_a_label():
    # PR1#17: the class id 90 overflowed the one-hot and zeroed every rollout predicting a toothbrush.
    gt = [obj([0, 0, 10, 10], "toothbrush")]
    assert score(answer(obj([0, 0, 10, 10], "toothbrush")), gt) == 1.0


def test_inverted_box_is_a_false_positive_not_a_crash():
    # Np 2, TP 1 (the dog): F1 2/4, loc 1, cls 1, pen (1/2 + 1/2) / 2.
    text = answer(obj([10, 10, 0, 0], "cat"), DOG)
    assert score(text) == pytest.approx((0.25 + 0.375 + 1 + 1 - 0.25) / 3)


def test_degenerate_boxes_score_zero_not_nan():
    assert score(answer(obj([5, 5, 5, 5], "cat")), [obj([5, 5, 5, 5], "cat")]) == 0.0


@pytest.mark.parametrize(
    "text",
    [
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [NaN, 0, 1, 1], "label": "dog"}]',
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [1e309, 0, 1, 1], "label": "dog"}]',
        '[{"bbox_2d": [Infinity, 0, 10, 10], "label": "cat"}]',
        '[{"bbox_2d": [-1e400, 0, 10, 10], "label": "cat"}]',
    ],
)
def test_non_finite_numbers_never_reach_the_math(text):
    reward = score(text)
    assert math.isfinite(reward) and 0.0 <= reward < 1.0


def test_prompt_echo_earns_nothing():
    echo = (
        "Please output bbox coordinates and names of person, cat, dog. Answer with a JSON list of "
        '{"bbox_2d": [x1, y1, x2, y2], "label": name} for each object.'
    )
    assert score(echo) == 0.0


@pytest.mark.parametrize(
    "solution",
    [
        "not json",
        {"bbox_2d": [0, 0, 1, 1]},
        [{"bbox_2d": [0, 0, 1], "label": "a"}],
        [{"bbox_2d": [0, 0, 1, 1]}],
        [{"bbox_2d": [5, 5, 1, 1], "label": "a"}],
        None,
        ["cat"],
    ],
)
def test_malformed_solution_gives_none_and_a_warning(solution, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_perception.rewards"):
        assert detection_reward(["[]", "[]"], [solution, []]) == [None, 1.0]
    assert any("detection_reward: row 0 skipped" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------- released weighting


def test_released_weighting_is_the_unnormalised_sum_capped_at_three():
    released = make_detection_reward(released_code=True)
    assert released.__name__ == "detection_released_reward"
    rewards = released([answer(CAT, DOG), answer(CAT), "[]", answer(CAT)], [GT, GT, [], []])
    # One of two: 0.25 + 0.75 * 2/3 + 1 + 1, no penalty. Negative image: [] -> 3, a box -> 0.
    assert rewards == [3.0, pytest.approx(2.75), 3.0, 0.0]
    assert get_reward("detection_released")([answer(CAT)], [GT]) == [pytest.approx(2.75)]


def test_released_weighting_with_the_code_default_penalty():
    (reward,) = make_detection_reward(released_code=True, penalty_weight=0.5)([answer(CAT)], [GT])
    assert reward == pytest.approx(2.75 - 0.5 * 0.25)


def test_custom_weights():
    iou_only = make_detection_reward(
        format_weight=0, number_weight=0, classification_weight=0, penalty_weight=0
    )
    assert iou_only([answer(obj([0, 0, 10, 8], "cat"))], [[CAT]]) == [pytest.approx(0.8)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format_weight": -1},
        {"penalty_weight": float("nan")},
        {"iou_threshold": 0},
        {"iou_threshold": 1.5},
        {"format_weight": 0, "number_weight": 0, "location_weight": 0, "classification_weight": 0},
        {"max_detections": 0},
    ],
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        make_detection_reward(**kwargs)


def test_factory_rewards_pickle_and_keep_their_settings():
    reward = make_detection_reward(iou_threshold=0.75, location_weight=2.0, name="det_strict")
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "det_strict"
    text = answer(obj([0, 0, 10, 8], "cat"))
    assert clone([text], [[CAT]]) == reward([text], [[CAT]])


# ---------------------------------------------------------------------------------------------- frames

IMAGE = (640, 480)
SCENE = [obj([10, 20, 200, 180], "person"), obj([300, 100, 630, 470], "dog"), obj([50, 300, 120, 400], "cup")]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_ground_truth_rendered_in_each_family_scores_near_one(family):
    text = render_objects(SCENE, family, IMAGE, model_input_size(IMAGE, family), fence=family != "qwen2_vl")
    assert score(text, SCENE, box_format=[family], image_size=[list(IMAGE)]) >= 0.99


@pytest.mark.parametrize(("rendered", "scored"), [("qwen2_5_vl", "qwen3_vl"), ("qwen3_vl", "qwen2_5_vl")])
def test_the_wrong_frame_scores_low(rendered, scored):
    text = render_objects(SCENE, rendered, IMAGE, model_input_size(IMAGE, rendered))
    assert score(text, SCENE, box_format=[scored], image_size=[list(IMAGE)]) < 0.3


# --------------------------------------------------------------------------------------------- logging


def test_components_are_logged_per_reward_name():
    metrics, extra = {}, {}
    hooks = {
        "log_metric": lambda name, value: metrics.__setitem__(name, value),
        "log_extra": lambda column, values: extra.__setitem__(column, values),
    }
    detection_reward(
        [answer(CAT), "oops", "x"], [GT, GT, "text"], task=["detection", "detection", "ocr"], **hooks
    )
    assert metrics["detection_reward/f1"] == pytest.approx(1 / 3)
    assert metrics["detection_reward/location"] == pytest.approx(0.5)
    assert metrics["detection_reward/classification"] == pytest.approx(0.5)
    assert metrics["detection_reward/penalty"] == pytest.approx((0.25 + 1) / 2)
    assert metrics["detection_reward/format"] == pytest.approx(0.5)
    assert metrics["detection_reward/parse_failure"] == pytest.approx(0.5)
    assert extra["detection_reward/f1"] == [pytest.approx(2 / 3), 0.0, None]
    assert set(extra) == {
        f"detection_reward/{c}"
        for c in ("format", "f1", "location", "classification", "penalty", "parse_failure")
    }


# ------------------------------------------------------------------------------------------ properties

NEAR_VALID = token_soup(
    [
        '[{"bbox_2d": [',
        '], "label": "cat"}',
        ", ",
        "]",
        "{",
        "}",
        "0",
        "10",
        *HOSTILE_NUMBERS,
        "Infinity",
        '"dog"',
        '"label"',
        ":",
        "```json",
        "```",
        "<|box_start|>",
        "(0,0),(10,10)",
        "<|box_end|>",
    ],
    max_size=40,
)


def _truncations(objects):
    text = json.dumps(objects)
    return st.integers(0, len(text)).map(lambda k: text[:k])


GENERATED = st.lists(
    st.builds(
        lambda box, label: {"bbox_2d": box, "label": label},
        st.lists(st.integers(-50, 700), min_size=4, max_size=4),
        st.sampled_from(["cat", "dog", "Cat", "", "toothbrush"]),
    ),
    max_size=12,
).flatmap(_truncations)


@given(
    text=st.one_of(st.text(max_size=300), NEAR_VALID, GENERATED),
    gt=st.sampled_from([GT, [], [CAT], SCENE]),
    released=st.booleans(),
    size=st.one_of(st.none(), st.just([640, 480])),
)
def test_any_text_gives_a_finite_reward_in_range(text, gt, released, size):
    reward_fn = make_detection_reward(released_code=released)
    (reward,) = reward_fn([text], [gt], image_size=[size])
    assert math.isfinite(reward) and 0.0 <= reward <= (3.0 if released else 1.0)


def test_sub_threshold_overlaps_do_not_steal_a_true_positive():
    preds = [obj([4, 10, 15, 18], "a"), obj([13, 4, 23, 18], "a")]
    gt = [obj([18, 5, 25, 16], "a"), obj([10, 4, 20, 17], "a")]
    # IoU matrix [[0, 0.191], [0.340, 0.508]]: the only pair above 0.5 is pred 1 - gt 1, so TP = 1:
    # F1 2/4, loc 0.508, cls 1, pen (1/2 + 1/2) / 2.
    iou = 91 / 179
    assert score(answer(*preds), gt) == pytest.approx((0.25 + 0.375 + iou + 1 - 0.25) / 3)
