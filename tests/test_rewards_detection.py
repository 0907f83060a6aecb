"""Specification of the detection reward. Expected values are computed by hand from the default,
precision-aware formula

    r = clip((0.25 fmt min(1, Ng/Np) + 0.75 F1 + loc + cls) / 3, 0, 1)

with F1 = 2 TP / (Np + Ng) (TP: matched same-label pairs at IoU >= 0.5), loc = 2 sum(IoU of the matched
pairs) / (Np + Ng), cls = (predictions that localise a ground-truth box of their label) / max(Np, Ng); and,
for `released_code=True`, from Perception-R1's formula 0.25 fmt + 0.75 F1 + mean IoU of the TP pairs + share
of the localised predictions labelled right - w_pen ((Np - TP) / Np + (Ng - TP) / Ng) / 2.
"""

import itertools
import json
import logging
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._helpers import HOSTILE_NUMBERS, token_soup
from trl_perception.boxes import box_iou
from trl_perception.formats import parse_objects, render_objects
from trl_perception.frames import Frame, model_input_size
from trl_perception.rewards import (
    MAX_DETECTIONS,
    _common,
    detection_reward,
    get_reward,
    make_detection_reward,
)
from trl_perception.rewards import detection as detection_module

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
    # Np 1, Ng 2, TP 1: fmt 1, F1 2/3, loc 2 * 1 / 3, cls 1 / 2.
    assert score(answer(CAT)) == pytest.approx((0.25 + 0.75 * 2 / 3 + 2 / 3 + 1 / 2) / 3)  # 0.639


def test_partial_overlap_scores_its_iou_as_location():
    # IoU([0,0,10,8], [0,0,10,10]) = 0.8: fmt 1, F1 1, loc 0.8, cls 1, pen 0.
    assert score(answer(obj([0, 0, 10, 8], "cat")), [CAT]) == pytest.approx((0.25 + 0.75 + 0.8 + 1) / 3)


def test_iou_threshold_is_inclusive():
    half = answer(obj([0, 0, 10, 5], "cat"))  # IoU exactly 0.5
    assert score(half, [CAT]) == pytest.approx((0.25 + 0.75 + 0.5 + 1) / 3)
    (strict,) = make_detection_reward(iou_threshold=0.6)([half], [[CAT]])
    # No true positive at 0.6, but the overlapping pair still pays its IoU: fmt 1, loc 2 * 0.5 / 2.
    assert strict == pytest.approx((0.25 + 0.5) / 3)


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
    # Np 3, Ng 2, TP 2: fmt 2/3, F1 4/5, loc 2 * 2 / 5, cls 3 / 3 (all three localise a cat or dog).
    expected = (0.25 * 2 / 3 + 0.75 * 0.8 + 0.8 + 1) / 3
    assert score(answer(CAT, CAT, DOG)) == pytest.approx(expected)
    assert score(answer(CAT, CAT, DOG)) < score(answer(CAT, DOG))
    many = score(answer(CAT, *[CAT] * 20, DOG))
    assert many < score(answer(CAT, CAT, DOG))


def test_listing_every_class_at_one_place_does_not_earn_classification():
    # Np 3, Ng 1, TP 1: fmt 1/3, F1 2/4, loc 2 * 1 / 4, cls 1/3.
    text = answer(obj([0, 0, 10, 10], "cat"), obj([0, 0, 10, 10], "dog"), obj([0, 0, 10, 10], "bird"))
    expected = (0.25 / 3 + 0.75 * 0.5 + 0.5 + 1 / 3) / 3
    assert score(text, [CAT]) == pytest.approx(expected)
    assert score(text, [CAT]) < score(answer(CAT), [CAT])


def test_correct_box_with_the_wrong_label_earns_only_the_format_term():
    # TP 0, no same-label pair (loc 0), cls 0 (localised but mislabelled): fmt 1 only.
    assert score(answer(obj([0, 0, 10, 10], "dog")), [CAT]) == pytest.approx(0.25 / 3)


def test_labels_absent_from_the_ground_truth_are_false_positives():
    # Np 2, Ng 1, TP 1: fmt 1/2, F1 2/3, loc 2 * 1 / 3, cls 1 / 2 (the unicorn localises nothing).
    text = answer(CAT, obj([50, 50, 60, 60], "unicorn"))
    assert score(text, [CAT]) == pytest.approx((0.125 + 0.5 + 2 / 3 + 0.5) / 3)
    assert score(text, [CAT]) < score(answer(CAT), [CAT])


def test_wrong_boxes_in_perfect_format_earn_only_the_format_term():
    # Np 2, Ng 2, nothing overlaps: fmt 1 only.
    assert score(answer(obj([100, 100, 120, 120], "cat"), obj([200, 200, 220, 220], "dog"))) == pytest.approx(
        0.25 / 3
    )


def test_unparseable_answers_score_zero():
    for text in ["I cannot find it.", "<garbage", '[{"bbox_2d": [0, 0, 1', "{", "[[[[[", "null"]:
        assert score(text) == 0.0, text


def test_truncated_answer_loses_the_format_term_but_keeps_its_complete_items():
    text = answer(CAT, DOG)[:-20]  # cut inside the dog
    # kept [CAT] with fmt 0: Np 1, Ng 2, TP 1: F1 2/3, loc 2/3, cls 1/2.
    assert score(text) == pytest.approx((0 + 0.5 + 2 / 3 + 0.5) / 3)
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
    # Np 6, Ng 1, so fmt 1/6 either way. Late: the cat is the 6th box, never matched: fmt only.
    # Early: TP 1: F1 2/7, loc 2 * 1 / 7, cls 1/6.
    assert late == pytest.approx(0.25 / 6 / 3)
    assert early == pytest.approx((0.25 / 6 + 0.75 * 2 / 7 + 2 / 7 + 1 / 6) / 3)


# ------------------------------------------------------------------------ known failure cases (§7)


def test_toothbrush_is_just_a_label():
    # PR1#17: the class id 90 overflowed the one-hot and zeroed every rollout predicting a toothbrush.
    gt = [obj([0, 0, 10, 10], "toothbrush")]
    assert score(answer(obj([0, 0, 10, 10], "toothbrush")), gt) == 1.0


def test_inverted_box_is_a_false_positive_not_a_crash():
    # Np 2, Ng 2, TP 1 (the dog): fmt 1, F1 2/4, loc 2 * 1 / 4, cls 1/2.
    text = answer(obj([10, 10, 0, 0], "cat"), DOG)
    assert score(text) == pytest.approx((0.25 + 0.375 + 0.5 + 0.5) / 3)


def test_degenerate_boxes_earn_only_the_format_term_not_nan():
    assert score(answer(obj([5, 5, 5, 5], "cat")), [obj([5, 5, 5, 5], "cat")]) == pytest.approx(0.25 / 3)


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
    # The released code subtracts 0.5 (FP rate + FN rate) = 0.5 (0 + 1/2) when DO_PENAIlty is unset: that
    # is penalty_weight=1.0 on our pen = (FP rate + FN rate) / 2 = 1/4.
    (reward,) = make_detection_reward(released_code=True, penalty_weight=1.0)([answer(CAT)], [GT])
    assert reward == pytest.approx(2.75 - 0.25)


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
    # Row 0: Np 1, Ng 2: F1 2/3, loc 2/3, cls 1/2, pen 1/4, fmt 1; row 1 unparseable: 0s, pen 1.
    assert metrics["detection_reward/f1"] == pytest.approx(1 / 3)
    assert metrics["detection_reward/location"] == pytest.approx(1 / 3)
    assert metrics["detection_reward/classification"] == pytest.approx(0.25)
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
    # IoU matrix [[0, 0.191], [0.340, 0.508]]: the only pair above 0.5 is pred 1 - gt 1, so TP = 1, and
    # the two sub-threshold pairs (0.191 + 0.340 > 0.508) must not replace it: F1 2/4, loc 2 * 0.508 / 4,
    # cls 1/2 (pred 0 localises nothing), fmt 1. Released: F1 2/4, mean IoU 0.508, cls 1/1.
    iou = 91 / 179
    assert score(answer(*preds), gt) == pytest.approx((0.25 + 0.375 + iou / 2 + 0.5) / 3)
    (released,) = make_detection_reward(released_code=True)([answer(*preds)], [gt])
    assert released == pytest.approx(0.25 + 0.375 + iou + 1)


# ------------------------------------------------------------------------------------- box spraying (#12)


def _iou(a, b):
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


BUS = obj([200, 150, 360, 270], "bus")  # 160 x 120 in a 640 x 480 image
# 200 windows of the object's size sliding over the image, all labelled "bus": a few of them overlap the
# bus at IoU >= 0.5.
SPRAY = [obj([x, y, x + 160, y + 120], "bus") for x in range(0, 481, 25) for y in range(0, 361, 40)][:200]


def test_spraying_boxes_scores_near_zero_far_below_any_honest_answer():
    assert len(SPRAY) == 200
    sprayed = score(answer(*SPRAY), [BUS], image_size=[[640, 480]])
    # An honest box shifted right by 78 px: intersection 82 x 120, union 2 * 19200 - 9840, IoU 0.3233.
    honest = obj([278, 150, 438, 270], "bus")
    assert _iou(honest["bbox_2d"], BUS["bbox_2d"]) == pytest.approx(9840 / 28560)
    honest_score = score(answer(honest), [BUS])
    # Np 1, Ng 1, TP 0: fmt 1 and loc 2 * 0.3445 / 2; no F1, no cls.
    assert honest_score == pytest.approx((0.25 + 9840 / 28560) / 3)
    wrong_place = score(answer(obj([0, 0, 50, 50], "bus")), [BUS])  # well-formed, no overlap at all
    assert sprayed < 0.02
    assert sprayed < honest_score / 10 and sprayed < wrong_place
    # The released formula pays the spray (that is the hack this default closes).
    (released,) = make_detection_reward(released_code=True)([answer(*SPRAY)], [[BUS]])
    assert released > 2.0


@given(
    n_spray=st.integers(20, 300),
    seed=st.integers(0, 2**16),
    label=st.sampled_from(["bus", "cat"]),
)
def test_spraying_never_beats_one_honest_box(n_spray, seed, label):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 500, size=(n_spray, 2))
    wh = rng.uniform(20, 200, size=(n_spray, 2))
    spray = [obj([*p, *(p + s)], label) for p, s in zip(xy.tolist(), wh.tolist())]
    # Any honest single box of the right label that overlaps the object at all.
    honest = obj([200 + 100, 150, 360 + 100, 270], "bus")  # IoU 60 * 120 / (2 * 19200 - 7200) = 0.23
    assert score(answer(*spray), [BUS]) < score(answer(honest), [BUS])
    assert score(answer(*spray), [BUS]) < 0.1


# ------------------------------------------------------------------------------ slow reference, batching


def _brute_force_matching(eligible, weight_key):
    """The best one-to-one set of eligible pairs by exhaustive search (tiny inputs only)."""
    p, g = eligible.shape
    n = max(p, g)
    best, best_key = [], None
    for perm in itertools.permutations(range(n)):
        pairs = [(i, perm[i]) for i in range(p) if perm[i] < g and eligible[i, perm[i]]]
        key = weight_key(pairs)
        if best_key is None or key > best_key:
            best, best_key = pairs, key
    return best


def reference_reward(text, gt, *, released=False, matching="hungarian", box_format=None, image_size=None,
                     penalty_weight=None, max_detections=MAX_DETECTIONS):  # fmt: skip
    """Row by row, the formulas of the module docstring, with matching by exhaustive search."""
    parsed = parse_objects(text, box_format)
    kept = [
        (o.bbox, " ".join(o.label.split()).lower()) for o in parsed.objects if o.bbox is not None and o.label
    ]
    kept = [(b, lab) for b, lab in kept if lab]
    rejected = parsed.rejected + len(parsed.objects) - len(kept)
    top = 3.0 if released else 1.0
    if not gt:
        return top if (not kept and _common.is_empty_answer(text)) else 0.0
    if not kept:
        return 0.0
    fmt = 0.0 if (not parsed.valid or parsed.truncated) else len(kept) / (len(kept) + rejected)
    considered = kept[:max_detections]
    frame = Frame.of(box_format, image_size)
    boxes = frame.to_pixels(np.array([b for b, _ in considered], dtype=np.float64))
    gt_b = np.array([o["bbox_2d"] for o in gt], dtype=np.float64)
    gt_l = [o["label"].lower() for o in gt]
    iou = box_iou(boxes, gt_b)
    same = np.array([[lab == g for g in gt_l] for _, lab in considered])
    hit = iou >= 0.5
    n_p, n_g = len(kept), len(gt)
    if released:
        eligible = hit & same & (iou > 0)
        key = lambda pairs: sum(iou[i, j] for i, j in pairs)  # noqa: E731
    else:
        eligible = same & (iou > 0)
        key = lambda pairs: (sum(hit[i, j] for i, j in pairs), sum(iou[i, j] for i, j in pairs))  # noqa: E731
    if matching == "sequential":
        pairs = [(i, i) for i in range(min(len(considered), n_g)) if eligible[i, i]]
    else:
        pairs = _brute_force_matching(eligible, key)
    tp_pairs = [(i, j) for i, j in pairs if hit[i, j]]
    tp = len(tp_pairs)
    localized, correct = hit.any(axis=1), (hit & same).any(axis=1)
    pen = 0.5 * ((n_p - tp) / n_p + (n_g - tp) / n_g)
    f1 = 2 * tp / (n_p + n_g)
    if released:
        loc = sum(iou[i, j] for i, j in tp_pairs) / tp if tp else 0.0
        cls = correct[localized].mean() if localized.any() else 0.0
        w_pen = 0.0 if penalty_weight is None else penalty_weight
        return min(max(0.25 * fmt + 0.75 * f1 + loc + cls - w_pen * pen, 0.0), 3.0)
    loc = 2 * sum(iou[i, j] for i, j in pairs) / (n_p + n_g)
    cls = correct.sum() / max(n_p, n_g)
    w_pen = 0.0 if penalty_weight is None else penalty_weight
    return min(max((0.25 * fmt * min(1, n_g / n_p) + 0.75 * f1 + loc + cls - w_pen * pen) / 3, 0.0), 1.0)


def _random_batch(seed, rows):
    """Rows of crowded scenes (so that matchings conflict), in groups sharing a ground truth as in GRPO."""
    rng = np.random.default_rng(seed)
    labels = ["cat", "dog", "bird"]
    texts, gts, sizes = [], [], []
    for k in range(rows):
        if k % 3 == 0:
            gt = [obj((xy := rng.uniform(0, 60, 2)).tolist() + (xy + rng.uniform(5, 40, 2)).tolist(),
                      str(rng.choice(labels))) for _ in range(int(rng.integers(1, 5)))]  # fmt: skip
        preds = []
        for _ in range(int(rng.integers(0, 6))):
            if gt and rng.random() < 0.6:
                base = np.array(gt[int(rng.integers(len(gt)))]["bbox_2d"])
                box = base + rng.normal(0, 4, 4)
            else:
                xy = rng.uniform(0, 60, 2)
                box = np.concatenate([xy, xy + rng.uniform(-5, 40, 2)])  # sometimes inverted
            label = str(rng.choice(labels + ["Cat", "unicorn"]))
            preds.append(obj(np.round(box, 3).tolist(), label))
        text = answer(*preds)
        if rng.random() < 0.15:
            text = text[: int(rng.integers(0, len(text) + 1))]  # truncated
        texts.append(text)
        gts.append(gt)
        sizes.append([80, 70] if rng.random() < 0.5 else None)
    return texts, gts, sizes


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    released=st.booleans(),
    matching=st.sampled_from(["hungarian", "sequential"]),
    penalty=st.sampled_from([None, 0.5, 1.0]),
)
def test_batched_reward_equals_the_slow_reference(seed, released, matching, penalty):
    texts, gts, sizes = _random_batch(seed, 9)
    reward = make_detection_reward(released_code=released, matching=matching, penalty_weight=penalty)
    got = reward(texts, gts, image_size=sizes, box_format=["qwen2_5_vl"] * len(texts))
    for text, gt, size, value in zip(texts, gts, sizes, got):
        expected = reference_reward(
            text, gt, released=released, matching=matching, box_format="qwen2_5_vl", image_size=size,
            penalty_weight=penalty,
        )  # fmt: skip
        assert value == pytest.approx(expected, abs=1e-12, rel=0)


def test_batched_reward_equals_the_slow_reference_with_a_detection_cap():
    texts, gts, _ = _random_batch(7, 30)
    reward = make_detection_reward(max_detections=2)
    for text, gt, value in zip(texts, gts, reward(texts, gts)):
        assert value == pytest.approx(reference_reward(text, gt, max_detections=2), abs=1e-12, rel=0)


def test_released_mode_is_the_previous_default_times_three():
    # The previous default was (0.25 fmt + 0.75 F1 + loc + cls - 0.5 pen) / 3 on the released components.
    texts, gts, _ = _random_batch(3, 60)
    released = make_detection_reward(released_code=True, penalty_weight=0.5)(texts, gts)
    previous = [
        min(max(reference_reward(t, g, released=True, penalty_weight=0.5), 0), 3) / 3
        for t, g in zip(texts, gts)
    ]
    assert [r / 3 for r in released] == pytest.approx(previous, abs=1e-12, rel=0)


# ----------------------------------------------------------------------------- sequential matching (#14)


def test_sequential_matching_pairs_the_i_th_box_with_the_i_th_object():
    sequential = make_detection_reward(matching="sequential")
    assert sequential.matching == "sequential" and "sequential" in repr(sequential)
    two_cats = [obj([0, 0, 10, 10], "cat"), obj([20, 0, 30, 10], "cat")]
    in_order = answer(*two_cats)
    swapped = answer(two_cats[1], two_cats[0])
    assert sequential([in_order], [two_cats]) == [1.0]
    # Swapped: pred 0 vs gt 0 and pred 1 vs gt 1 do not overlap: TP 0, loc 0; both boxes still localise a
    # cat (cls 2/2) and the format is perfect: (0.25 + 1) / 3. Hungarian matching is order-blind.
    assert sequential([swapped], [two_cats]) == [pytest.approx(1.25 / 3)]
    assert detection_reward([swapped], [two_cats]) == [1.0]
    # A partial order: pred 0 matches gt 0 at IoU 1, pred 1 (the first cat again) misses gt 1.
    # Np 2, Ng 2, TP 1: fmt 1, F1 1/2, loc 2 * 1 / 4, cls 2/2.
    again = answer(two_cats[0], two_cats[0])
    assert sequential([again], [two_cats]) == [pytest.approx((0.25 + 0.375 + 0.5 + 1) / 3)]
    # Released weighting: TP 1, F1 1/2, mean IoU 1, cls 1: 0.25 + 0.375 + 1 + 1.
    (released,) = make_detection_reward(released_code=True, matching="sequential")([again], [two_cats])
    assert released == pytest.approx(2.625)


def test_unknown_matching_is_a_value_error():
    with pytest.raises(ValueError, match="matching"):
        make_detection_reward(matching="greedy")


def test_get_reward_passes_the_matching_option():
    reward = get_reward("detection", matching="sequential")
    assert reward.matching == "sequential"


# ----------------------------------------------------------------------------------------- numpy (#12)


def test_ground_truth_as_numpy_arrays_is_read():
    # `datasets` may hand a list-of-dicts column over as an object array, and boxes as float arrays.
    gt = np.array([{"bbox_2d": np.array([0.0, 0.0, 10.0, 10.0]), "label": "cat"},
                   {"bbox_2d": np.array([20, 20, 30, 30]), "label": np.str_("dog")}], dtype=object)  # fmt: skip
    assert detection_reward([answer(CAT, DOG), answer(CAT)], [gt, gt]) == [
        1.0,
        pytest.approx(score(answer(CAT))),
    ]


# -------------------------------------------------------------------------------------- thinking (#14)


def test_only_the_answer_counts_when_the_model_thinks_first():
    thinking = "<think>maybe " + answer(CAT, DOG) + " or <|box_start|>(0,0),(10,10)<|box_end|></think>"
    assert score(thinking + "<answer>" + answer(CAT, DOG) + "</answer>") == 1.0
    assert score(thinking + "<answer>[]</answer>") == 0.0
    assert score(thinking + "<answer>" + answer(CAT) + "</answer>") == pytest.approx(score(answer(CAT)))
    assert detection_reward([thinking + "<answer>[]</answer>"], [[]]) == [1.0]


def test_an_unexpected_error_in_matching_scores_zero_with_a_warning(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise FloatingPointError("boom")

    monkeypatch.setattr(detection_module, "paired_box_iou", broken)
    with caplog.at_level(logging.WARNING, logger="trl_perception.rewards"):
        assert detection_reward([answer(CAT), "[]", answer(CAT)], [GT, [], GT]) == [0.0, 1.0, 0.0]
    assert any("FloatingPointError" in r.getMessage() for r in caplog.records)


# --------------------------------------------------- batched call vs a row-by-row scipy reference (#12)


def scipy_reference_reward(text, gt, *, released=False, penalty_weight=None, box_format=None, image_size=None):
    """Row by row and straightforwardly: the general parser, one IoU matrix, one scipy assignment on the
    `[predictions, objects]` matrix of pair weights (IoU, plus a bonus for hits so that their number comes
    first), for inputs too large for the exhaustive search of `reference_reward`."""
    from scipy.optimize import linear_sum_assignment

    parsed = parse_objects(text, box_format)
    kept = [(o.bbox, " ".join(o.label.split()).lower()) for o in parsed.objects if o.bbox is not None and o.label]
    kept = [(b, lab) for b, lab in kept if lab]
    rejected = parsed.rejected + len(parsed.objects) - len(kept)
    if not gt or not kept:
        return (3.0 if released else 1.0) if (not gt and not kept and _common.is_empty_answer(text)) else 0.0
    fmt = 0.0 if (not parsed.valid or parsed.truncated) else len(kept) / (len(kept) + rejected)
    considered = kept[:MAX_DETECTIONS]
    boxes = Frame.of(box_format, image_size).to_pixels(np.array([b for b, _ in considered], dtype=np.float64))
    iou = box_iou(boxes, np.array([o["bbox_2d"] for o in gt], dtype=np.float64))
    same = np.array([[lab == " ".join(o["label"].split()).lower() for o in gt] for _, lab in considered])
    hit = iou >= 0.5
    n_p, n_g = len(kept), len(gt)
    eligible = (hit & same) if released else (same & (iou > 0))
    gains = np.where(eligible, iou, 0.0) + (0.0 if released else np.where(eligible & hit, min(len(considered), n_g) + 1.0, 0.0))
    rows, cols = linear_sum_assignment(gains, maximize=True)
    pairs = [(i, j) for i, j in zip(rows, cols) if eligible[i, j]]
    tp_pairs = [(i, j) for i, j in pairs if hit[i, j]]
    tp = len(tp_pairs)
    localized, correct = hit.any(axis=1), (hit & same).any(axis=1)
    pen = 0.5 * ((n_p - tp) / n_p + (n_g - tp) / n_g)
    w_pen = 0.0 if penalty_weight is None else penalty_weight
    if released:
        loc = sum(iou[i, j] for i, j in tp_pairs) / tp if tp else 0.0
        cls = correct.sum() / localized.sum() if localized.any() else 0.0
        return min(max(0.25 * fmt + 0.75 * 2 * tp / (n_p + n_g) + loc + cls - w_pen * pen, 0.0), 3.0)
    loc = 2 * sum(iou[i, j] for i, j in pairs) / (n_p + n_g)
    cls = correct.sum() / max(n_p, n_g)
    total = 0.25 * fmt * min(1, n_g / n_p) + 0.75 * 2 * tp / (n_p + n_g) + loc + cls - w_pen * pen
    return min(max(total / 3, 0.0), 1.0)


def _crowded_batch(seed, rows, integer):
    """GRPO-like groups of crowded scenes with few labels, so that most rows have conflicting pairs: stars
    (duplicates of one object, one box over several) and rows that need the solver; `integer` coordinates
    make exact IoU ties. Some answers are malformed, truncated, empty, or in another syntax."""
    rng = np.random.default_rng(seed)
    texts, gts = [], []
    for k in range(rows):
        if k % 4 == 0:
            gt = []
            for _ in range(int(rng.integers(1, 14))):
                x, y = rng.integers(0, 60, 2) if integer else rng.uniform(0, 60, 2)
                w, h = rng.integers(2, 30, 2) if integer else rng.uniform(2, 30, 2)
                gt.append(obj([float(x), float(y), float(x + w), float(y + h)], str(rng.choice(["cat", "dog", "Cat "]))))
        preds = []
        for _ in range(int(rng.integers(0, 18))):
            base = np.array(gt[int(rng.integers(len(gt)))]["bbox_2d"]) if gt and rng.random() < 0.75 else rng.uniform(0, 70, 4)
            box = base + (rng.integers(-3, 4, 4) if integer else rng.normal(0, 3, 4)) * (rng.random() < 0.7)
            value = [int(v) for v in box] if integer else np.round(box, 2).tolist()
            preds.append(obj(value, str(rng.choice(["cat", "dog", "bird", " CAT"]))))
        if preds and rng.random() < 0.3:
            preds += [preds[0]] * int(rng.integers(1, 4))  # duplicates
        text = answer(*preds)
        u = rng.random()
        if u < 0.1:
            text = text[: int(rng.integers(0, len(text) + 1))]
        elif u < 0.15:
            text = "```json\n" + json.dumps(preds, indent=1) + "\n```"
        elif u < 0.2:
            text = "".join(f"<|object_ref_start|>{p['label']}<|object_ref_end|><|box_start|>({p['bbox_2d'][0]},{p['bbox_2d'][1]}),"
                           f"({p['bbox_2d'][2]},{p['bbox_2d'][3]})<|box_end|>" for p in preds)  # fmt: skip
        texts.append(text)
        gts.append(gt)
    return texts, gts


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), released=st.booleans(), integer=st.booleans(), penalty=st.sampled_from([None, 1.0]))
def test_a_crowded_batch_equals_the_row_by_row_scipy_reference(seed, released, integer, penalty):
    texts, gts = _crowded_batch(seed, 24, integer)
    reward = make_detection_reward(released_code=released, penalty_weight=penalty)
    got = reward(texts, gts)
    expected = [scipy_reference_reward(t, g, released=released, penalty_weight=penalty) for t, g in zip(texts, gts)]
    assert got == pytest.approx(expected, abs=1e-12, rel=0)


def test_hard_rows_stars_and_disjoint_pairs_in_one_call_match_the_reference():
    two = [obj([0, 0, 10, 10], "cat"), obj([5, 0, 15, 10], "cat"), obj([40, 40, 50, 50], "dog")]
    texts = [
        answer(obj([0, 0, 10, 10], "cat"), obj([5, 0, 15, 10], "cat"), obj([40, 40, 50, 50], "dog")),  # hard + disjoint
        answer(*[obj([0, 0, 10, 10], "cat")] * 4),  # a star around one object: duplicates
        answer(obj([0, 0, 15, 10], "cat")),  # a star around one prediction
        answer(obj([40, 40, 50, 50], "dog"), obj([0, 0, 10, 10], "cat")),  # disjoint pairs
        "[]",
        "garbage",
    ]
    for released in (False, True):
        got = make_detection_reward(released_code=released)(texts, [two] * len(texts))
        expected = [scipy_reference_reward(t, two, released=released) for t in texts]
        assert got == pytest.approx(expected, abs=1e-12, rel=0)
