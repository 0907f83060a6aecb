"""Specification of the open-vocabulary detection rewards (`od_ap`, `od_ap50`, `od_length`, `od_weighted`)
and of their VLM-R1 compatibility mode.

Hand-computed values use COCOeval's rules for one image: per category and IoU threshold t in
{0.50, 0.55, ..., 0.95}, greedy matching in rank order, 101-point interpolated precision, mean over the
categories that have ground truth (plus, in our rewards, categories that only the answer names, at AP 0).
The pycocotools parity tests run pycocotools itself on the same single-image problem.
"""

import contextlib
import io
import itertools
import json
import math
import pickle
import random

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests._helpers import HOSTILE_NUMBERS, token_soup
from trl_perception.formats import render_objects
from trl_perception.frames import model_input_size
from trl_perception.rewards import (
    _common,
    get_reward,
    make_od_reward,
    od_ap50_reward,
    od_ap_reward,
    od_length_reward,
    od_weighted_reward,
)
from trl_perception.rewards.ovd import IOU_THRESHOLDS, _coco_ap, _xyxy_to_xywh, image_average_precision

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

OURS = (od_ap_reward, od_ap50_reward, od_length_reward, od_weighted_reward)
CAT = {"bbox_2d": [0, 0, 10, 10], "label": "cat"}
CAT2 = {"bbox_2d": [20, 20, 30, 30], "label": "cat"}
DOG = {"bbox_2d": [40, 0, 50, 10], "label": "dog"}


@pytest.fixture(autouse=True)
def fresh_warning_counts():
    _common._WARN_COUNTS.clear()


def answer(*objects):
    return json.dumps(list(objects))


def vlm_r1_answer(*objects):
    return "<think>ok</think><answer>```json\n" + json.dumps(list(objects)) + "\n```</answer>"


def obj(box, label):
    return {"bbox_2d": list(box), "label": label}


def one(reward, text, gt, **kwargs):
    (value,) = reward([text], [gt], **kwargs)
    return value


# ------------------------------------------------------------------------------------ pycocotools


def pycoco_precision(gt_boxes, gt_labels, pred_boxes, pred_labels, categories):
    """pycocotools' precision array [T, R, K] (area "all", 100 detections) for one image, the predictions
    given in rank order with score 1.0, as VLM-R1 builds the problem (one image, `area = w * h`)."""
    ids = {c: i + 1 for i, c in enumerate(categories)}
    dataset = {
        "images": [{"id": 1, "width": 2048, "height": 2048}],
        "categories": [{"id": ids[c], "name": c} for c in categories],
        "annotations": [],
    }
    for k, (b, label) in enumerate(zip(gt_boxes, gt_labels)):
        w, h = b[2] - b[0], b[3] - b[1]
        dataset["annotations"].append(
            {"id": k + 1, "image_id": 1, "category_id": ids[label], "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0}
        )
    results = [
        {"image_id": 1, "category_id": ids[label], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": 1.0}
        for b, label in zip(pred_boxes, pred_labels)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"][:, :, :, 0, 2]


def pycoco_ours(gt_boxes, gt_labels, pred_boxes, pred_labels, ap50=False):
    """Our per-sample AP, computed by pycocotools: predictions ranked by best same-label IoU (then
    coordinates), categories named only by the answer counted with precision 0."""
    pred_boxes = [[b[0], b[1], max(b[2], b[0]), max(b[3], b[1])] for b in pred_boxes]
    gt_xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in gt_boxes]

    def key(k):
        b, label = pred_boxes[k], pred_labels[k]
        xywh = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
        same = [g for g, gl in zip(gt_xywh, gt_labels) if gl == label]
        best = float(mask_utils.iou([xywh], same, [0] * len(same)).max()) if same else 0.0
        return (-best, *xywh)

    order = sorted(range(len(pred_boxes)), key=key)
    categories = sorted(set(gt_labels) | set(pred_labels))
    precision = pycoco_precision(
        gt_boxes, gt_labels, [pred_boxes[k] for k in order], [pred_labels[k] for k in order], categories
    )
    if ap50:
        precision = precision[:1]
    for k, c in enumerate(categories):
        if c not in gt_labels:
            precision[:, :, k] = 0.0  # COCOeval's -1 (no ground truth) becomes AP 0
    return float(np.mean(precision[precision > -1]))


def vlm_r1_reference(pred_items, gt_items, kind="ap"):
    """VLM-R1's `map_reward` as the issue describes it, on pycocotools: one 2048x2048 image, one category per
    distinct ground-truth label, every prediction scored 1.0 in list order, predictions with other labels
    dropped; no prediction kept -> 0; `odLength` multiplies by min(1, |G| / |P|) over all listed items."""
    if not pred_items and not gt_items:
        ap = 1.0
    elif not pred_items or not gt_items:
        ap = 0.0
    else:
        categories = list(dict.fromkeys(g["label"] for g in gt_items))
        kept = [p for p in pred_items if p["label"] in categories]
        if not kept:
            ap = 0.0
        else:
            precision = pycoco_precision(
                [g["bbox_2d"] for g in gt_items],
                [g["label"] for g in gt_items],
                [p["bbox_2d"] for p in kept],
                [p["label"] for p in kept],
                categories,
            )
            if kind == "ap50":
                precision = precision[:1]
            ap = float(np.mean(precision[precision > -1]))
    if kind == "length" and pred_items:
        ap *= min(1.0, len(gt_items) / len(pred_items))
    return ap


# ------------------------------------------------------------------------------------------ golden


def test_perfect_answer_scores_one_with_every_reward():
    gt = [CAT, CAT2, DOG]
    for reward in OURS:
        assert one(reward, answer(DOG, CAT, CAT2), gt) == 1.0


def test_ap_over_thresholds_counts_the_thresholds_the_box_passes():
    # IoU([0,0,10,12], [0,0,10,10]) = 100/120 = 0.833: a true positive at t = 0.50 ... 0.80 (7 of 10).
    assert one(od_ap_reward, answer(obj([0, 0, 10, 12], "cat")), [CAT]) == pytest.approx(0.7, abs=1e-12)
    assert one(od_ap50_reward, answer(obj([0, 0, 10, 12], "cat")), [CAT]) == 1.0


def test_one_of_two_objects_gives_half_the_recall_curve():
    # cat: recall 1/2 at precision 1 -> 51 of 101 recall thresholds (0.00 ... 0.50) -> AP 51/101.
    assert one(od_ap_reward, answer(CAT), [CAT, CAT2]) == pytest.approx(51 / 101, abs=1e-12)


def test_list_order_does_not_change_our_ap_but_changes_vlm_r1s():
    # Two false positives listed before two true positives (the case): VLM-R1 0.5, ours 1.0.
    fps = [obj([60, 60, 70, 70], "cat"), obj([80, 80, 90, 90], "cat")]
    gt = [CAT, CAT2]
    assert one(make_od_reward("ap", vlm_r1=True), vlm_r1_answer(*fps, CAT, CAT2), gt) == pytest.approx(0.5, abs=1e-12)
    assert one(make_od_reward("ap", vlm_r1=True), vlm_r1_answer(CAT, CAT2, *fps), gt) == pytest.approx(1.0, abs=1e-12)
    assert one(od_ap_reward, answer(*fps, CAT, CAT2), gt) == one(od_ap_reward, answer(CAT, CAT2, *fps), gt) == 1.0


def test_a_label_outside_the_ground_truth_is_a_false_positive():
    # cat AP 1, "bird" (named only by the answer) AP 0 -> 1/2; VLM-R1 drops the bird box -> 1.
    text = answer(CAT, obj([40, 0, 50, 10], "bird"))
    assert one(od_ap_reward, text, [CAT]) == 0.5
    assert one(od_length_reward, text, [CAT]) == 0.25  # 0.5 * min(1, 1/2)
    assert one(make_od_reward("ap", vlm_r1=True), vlm_r1_answer(CAT, obj([40, 0, 50, 10], "bird")), [CAT]) == pytest.approx(1.0)


def test_labels_compare_case_and_space_insensitively():
    assert one(od_ap_reward, answer(obj([0, 0, 10, 10], "  CAT ")), [CAT]) == 1.0


def test_length_factor_divides_by_every_listed_item():
    assert one(od_length_reward, answer(CAT, CAT, CAT), [CAT]) == pytest.approx(1 / 3)
    # an unparseable item still counts in |P|
    text = '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [1, 2], "label": "cat"}]'
    assert one(od_length_reward, text, [CAT]) == 0.5


@pytest.mark.parametrize("reward", OURS)
@pytest.mark.parametrize("empty", ["None", "none", "[]", "```json\n[]\n```", "<answer>None</answer>", ""])
def test_none_scores_one_only_when_nothing_asked_is_present(reward, empty):
    assert one(reward, empty, None) == 1.0
    assert one(reward, empty, []) == 1.0
    assert one(reward, empty, "None") == 1.0
    assert one(reward, empty, [CAT]) == 0.0


@pytest.mark.parametrize("reward", OURS)
def test_boxes_on_a_negative_image_score_zero(reward):
    assert one(reward, answer(CAT), None) == 0.0
    assert one(reward, "I think there is a cat", None) == 0.0


def test_weighted_golden_values():
    gt = [CAT, DOG]
    # found cat only: 0.7 * 1/2 + 0.3 * (1 - (1/2 + 0) / 2) = 0.575
    assert one(od_weighted_reward, answer(CAT), gt) == pytest.approx(0.575)
    # IoU 0.8 box for the cat, dog found: 0.7 * 1.8/2 + 0.3 = 0.93
    assert one(od_weighted_reward, answer(obj([0, 0, 10, 8], "cat"), DOG), gt) == pytest.approx(0.93)
    # a duplicate: location over max(|G|, |P|) = 3: 0.7 * 2/3 + 0.3 * (1 - (0 + 1/3) / 2) = 0.7167
    assert one(od_weighted_reward, answer(CAT, DOG, DOG), gt) == pytest.approx(0.7 * 2 / 3 + 0.3 * (1 - 1 / 6))


def test_weighted_wrong_label_does_not_use_up_the_object():
    # VLM-R1 matches class-agnostically: the dog box at the cat's place takes the cat (IoU recorded 0) and
    # the right cat box after it is a false alarm: 0.7 * 0 + 0.3 * (1 - (0 + 1/2) / 2) = 0.225.
    text = [obj([0, 0, 10, 10], "dog"), CAT]
    assert one(make_od_reward("weighted", vlm_r1=True), vlm_r1_answer(*text), [CAT]) == pytest.approx(0.225)
    # ours: the cat box matches the cat; the dog box is a false alarm: 0.7 * 1/2 + 0.3 * (1 - 1/4) = 0.575
    assert one(od_weighted_reward, answer(*text), [CAT]) == pytest.approx(0.575)


def test_weighted_vlm_r1_reuses_the_previous_label_for_an_unlabelled_box():
    # Their `pred_box = ""` typo keeps the label of the previous match: the unlabelled box scores as a cat.
    text = vlm_r1_answer(CAT, {"bbox_2d": [20, 20, 30, 30]})
    assert one(make_od_reward("weighted", vlm_r1=True), text, [CAT, CAT2]) == pytest.approx(1.0)
    # ... and when the first match has no label their code raises; here it scores 0.
    assert one(make_od_reward("weighted", vlm_r1=True), vlm_r1_answer({"bbox_2d": [0, 0, 10, 10]}), [CAT]) == 0.0
    # ours: the unlabelled item is a false alarm: 0.7 * 1/2 + 0.3 * (1 - (1/2 + 1/2) / 2) = 0.5
    assert one(od_weighted_reward, answer(CAT, {"bbox_2d": [20, 20, 30, 30]}), [CAT, CAT2]) == pytest.approx(0.5)


def test_weighted_vlm_r1_plus_one_iou_misses_one_pixel_boxes():
    tiny = obj([0, 0, 1, 1], "cat")
    assert one(make_od_reward("weighted", vlm_r1=True), vlm_r1_answer(tiny), [tiny]) == 0.0
    assert one(od_weighted_reward, answer(tiny), [tiny]) == 1.0


def test_vlm_r1_mode_needs_the_answer_tags_and_the_json_fence():
    gt = [CAT]
    assert one(make_od_reward("length", vlm_r1=True), answer(CAT), gt) == 0.0  # no <answer>
    assert one(make_od_reward("length", vlm_r1=True), "<answer>" + answer(CAT) + "</answer>", gt) == 0.0  # no fence
    assert one(make_od_reward("length", vlm_r1=True), "<answer>None</answer>", None) == 1.0
    assert one(make_od_reward("length", vlm_r1=True), "<answer>```json\n[]\n```</answer>", None) == 1.0
    assert one(make_od_reward("ap", vlm_r1=True), vlm_r1_answer(CAT), "```json\n" + answer(CAT) + "\n```") == pytest.approx(1.0)
    # weighted_sum's "none" path: only the literal answer None is right (`[]` is not)
    assert one(make_od_reward("weighted", vlm_r1=True), "<answer>None.</answer>", None) == 1.0
    assert one(make_od_reward("weighted", vlm_r1=True), "<answer>```json\n[]\n```</answer>", None) == 0.0


def test_frames_every_box_format_scores_the_same_answer_alike():
    size = (640, 480)
    gt = [obj([64, 48, 320, 240], "red circle"), obj([400, 100, 600, 400], "blue square")]
    for box_format in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        input_size = model_input_size(size, box_format) if box_format == "qwen2_5_vl" else None
        text = render_objects(gt, box_format, size, input_size)
        for reward in OURS:
            value = one(reward, text, gt, box_format=box_format, image_size=[list(size)], task="ovd")
            assert value > 0.9, (box_format, reward.__name__, value)


def test_rows_of_other_tasks_get_none_and_detection_rows_on_request():
    rewards = od_ap_reward([answer(CAT)] * 2, [[CAT], [CAT]], task=["ovd", "grounding"])
    assert rewards == [1.0, None]
    both = get_reward("od_ap", tasks=["ovd", "detection"])
    assert both([answer(CAT)] * 2, [[CAT], [CAT]], task=["detection", "ocr"]) == [1.0, None]


def test_malformed_solution_gives_none():
    assert od_ap_reward([answer(CAT)], ["{not json"]) == [None]
    assert od_ap_reward([answer(CAT)], [[{"bbox_2d": [0, 0, 1, 1]}]]) == [None]


def test_registry_names_and_pickling():
    assert get_reward("odLength") is od_length_reward
    assert get_reward("weighted_sum") is od_weighted_reward
    assert get_reward("od_ap_vlm_r1").__name__ == "od_ap_vlm_r1_reward"
    for reward in (*OURS, make_od_reward("length", vlm_r1=True), get_reward("od_ap50", tasks=["ovd"])):
        clone = pickle.loads(pickle.dumps(reward))
        assert clone([answer(CAT)], [[CAT]]) == reward([answer(CAT)], [[CAT]])


def test_components_are_logged():
    logged = {}
    od_length_reward([answer(CAT, CAT)], [[CAT]], log_metric=lambda k, v: logged.__setitem__(k, v))
    assert logged["od_length_reward/ap"] == 1.0
    assert logged["od_length_reward/length_factor"] == 0.5


# ------------------------------------------------------------------------------ pycocotools parity

coord = st.integers(0, 60)


@st.composite
def boxes(draw, min_size=1, max_size=6):
    n = draw(st.integers(min_size, max_size))
    out = []
    for _ in range(n):
        x, y = draw(coord), draw(coord)
        w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        frac = draw(st.sampled_from([0.0, 0.0, 0.5, 0.25]))
        out.append([x + frac, y, x + w, y + h + frac])
    return out


@st.composite
def problems(draw, unknown_labels=True):
    gt = draw(boxes(1, 5))
    gt_labels = draw(st.lists(st.sampled_from(["a", "b"]), min_size=len(gt), max_size=len(gt)))
    n = draw(st.integers(1, 8))
    preds = []
    for _ in range(n):
        if draw(st.booleans()):
            g = draw(st.sampled_from(gt))
            d = draw(st.sampled_from([0.0, 0.0, 1.0, 2.5, 4.0]))
            preds.append([g[0] + d, g[1], g[2], g[3] + d])
        else:
            preds.append(draw(boxes(1, 1))[0])
    pool = ["a", "b", "c"] if unknown_labels else ["a", "b"]
    labels = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    return gt, gt_labels, preds, labels


@given(problems())
@settings(max_examples=80)
def test_per_sample_ap_equals_pycocotools(problem):
    gt, gt_labels, preds, labels = problem
    expected = pycoco_ours(gt, gt_labels, preds, labels)
    assert image_average_precision(gt, gt_labels, preds, labels) == pytest.approx(expected, abs=1e-12)
    expected50 = pycoco_ours(gt, gt_labels, preds, labels, ap50=True)
    assert image_average_precision(gt, gt_labels, preds, labels, iou_threshold=0.5) == pytest.approx(expected50, abs=1e-12)


@given(problems(unknown_labels=False))
@settings(max_examples=60)
def test_list_order_engine_equals_pycocotools(problem):
    gt, gt_labels, preds, labels = problem
    categories = sorted(set(gt_labels))
    kept = [k for k in range(len(preds)) if labels[k] in categories]
    assume(kept)
    precision = pycoco_precision(gt, gt_labels, [preds[k] for k in kept], [labels[k] for k in kept], categories)
    ours = _coco_ap(
        _xyxy_to_xywh(np.array(gt, float)), gt_labels,
        _xyxy_to_xywh(np.array([preds[k] for k in kept], float)), [labels[k] for k in kept],
        IOU_THRESHOLDS, "list", "skip",
    )  # fmt: skip
    assert ours == pytest.approx(float(np.mean(precision[precision > -1])), abs=1e-12)


def test_more_than_100_predictions_keep_the_best_100_per_category():
    rng = random.Random(0)
    gt = [[rng.uniform(0, 500), rng.uniform(0, 500)] for _ in range(30)]
    gt = [[x, y, x + rng.uniform(5, 80), y + rng.uniform(5, 80)] for x, y in gt]
    preds = [[b[0] + rng.uniform(-3, 3), b[1], b[2], b[3] + rng.uniform(-3, 3)] for b in gt for _ in range(5)]
    labels = ["a"] * len(preds)
    expected = pycoco_ours(gt, ["a"] * 30, preds, labels)
    assert image_average_precision(gt, ["a"] * 30, preds, labels) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------- ties: order and best ordering


@given(problems(), st.randoms(use_true_random=False))
@settings(max_examples=60)
def test_ap_does_not_depend_on_the_order_of_the_list(problem, rnd):
    gt, gt_labels, preds, labels = problem
    items = [obj(b, label) for b, label in zip(preds, labels)]
    shuffled = list(items)
    rnd.shuffle(shuffled)
    gt_objs = [obj(b, label) for b, label in zip(gt, gt_labels)]
    for reward in OURS:
        assert one(reward, answer(*items), gt_objs) == one(reward, answer(*shuffled), gt_objs)


def _competing(gt, gt_labels, preds, labels):
    """Whether some ground-truth box is overlapped (IoU >= 0.5) by two predictions of its label."""
    for g, gl in zip(gt, gt_labels):
        close = [p for p, pl in zip(preds, labels) if pl == gl and image_average_precision([g], [gl], [p], [pl], iou_threshold=0.5) > 0]
        if len(close) > 1:
            return True
    return False


@given(problems())
@settings(max_examples=40)
def test_tie_rule_is_the_best_ordering_without_competing_predictions(problem):
    gt, gt_labels, preds, labels = problem
    preds, labels = preds[:5], labels[:5]
    ours = image_average_precision(gt, gt_labels, preds, labels)
    best = max(
        _coco_ap(
            _xyxy_to_xywh(np.array(gt, float)), gt_labels,
            _xyxy_to_xywh(np.array([preds[k] for k in order], float)), [labels[k] for k in order],
            IOU_THRESHOLDS, "list", "zero",
        )  # fmt: skip
        for order in itertools.permutations(range(len(preds)))
    )
    if not _competing(gt, gt_labels, preds, labels):
        assert ours == pytest.approx(best, abs=1e-12)
    else:
        assert ours <= best + 1e-12


# ------------------------------------------------------------------------- VLM-R1 compatibility


@given(problems())
@settings(max_examples=50)
def test_vlm_r1_mode_reproduces_their_map_rewards(problem):
    gt, gt_labels, preds, labels = problem
    gt_items = [obj(b, label) for b, label in zip(gt, gt_labels)]
    pred_items = [obj(b, label) for b, label in zip(preds, labels)]
    text = vlm_r1_answer(*pred_items)
    for kind in ("ap", "ap50", "length"):
        got = one(make_od_reward(kind, vlm_r1=True), text, gt_items)
        assert got == pytest.approx(vlm_r1_reference(pred_items, gt_items, kind), abs=1e-12)


def vlm_r1_weighted_reference(pred_items, gt_items):
    """`weighted_sum` from the issue's description: greedy class-agnostic max-IoU pairs at IoU >= 0.5 (IoU
    with a +1-pixel intersection), a wrong label records IoU 0 but uses up the pair, then
    0.7 * sum IoU / |G| + 0.3 * (1 - (miss + false alarm) / 2)."""

    def iou(a, b):
        iw = min(a[2] - 1, b[2] - 1) - max(a[0], b[0])
        ih = min(a[3] - 1, b[3] - 1) - max(a[1], b[1])
        inter = (iw + 1) * (ih + 1) if iw > 0 and ih > 0 else 0
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    pairs = sorted(
        ((iou(p["bbox_2d"], g["bbox_2d"]), i, j) for i, p in enumerate(pred_items) for j, g in enumerate(gt_items)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    used_p, used_g, total = set(), set(), 0.0
    for value, i, j in pairs:
        if value < 0.5:
            break
        if i in used_p or j in used_g:
            continue
        used_p.add(i)
        used_g.add(j)
        total += value if pred_items[i]["label"] == gt_items[j]["label"] else 0.0
    miss = (len(gt_items) - len(used_g)) / len(gt_items)
    false_alarm = (len(pred_items) - len(used_p)) / len(pred_items)
    return 0.7 * total / len(gt_items) + 0.3 * (1 - (miss + false_alarm) / 2)


@given(problems())
@settings(max_examples=50)
def test_vlm_r1_mode_reproduces_their_weighted_sum(problem):
    gt, gt_labels, preds, labels = problem
    gt_items = [obj(b, label) for b, label in zip(gt, gt_labels)]
    pred_items = [obj(b, label) for b, label in zip(preds, labels)]
    got = one(make_od_reward("weighted", vlm_r1=True), vlm_r1_answer(*pred_items), gt_items)
    assert got == pytest.approx(vlm_r1_weighted_reference(pred_items, gt_items), abs=1e-12)


def test_vlm_r1_mode_reads_their_solution_strings_and_jsonl_answers():
    sol = "```json\n" + answer(CAT, CAT2) + "\n```"
    text = "<think>two cats</think><answer>```json\n" + answer(CAT) + "\n```</answer>"
    assert one(make_od_reward("ap", vlm_r1=True), text, sol) == pytest.approx(51 / 101, abs=1e-12)
    assert one(make_od_reward("ap", vlm_r1=True), text, "<answer> " + sol + " </answer>") == pytest.approx(51 / 101, abs=1e-12)


# ----------------------------------------------------------------------------------- no hack pays


@st.composite
def scenes(draw):
    """A scene of 2-5 well-separated objects of 1-3 phrases (out of 6 asked), an honest imperfect answer
    (one object missed or one box loose), and the phrases asked."""
    n = draw(st.integers(2, 5))
    phrases = ["red circle", "blue square", "green triangle", "yellow star", "white cross", "black ring"]
    present = draw(st.lists(st.sampled_from(phrases[:3]), min_size=n, max_size=n))
    gt = []
    for k in range(n):
        x, y = 120 * k + draw(st.integers(0, 20)), draw(st.integers(0, 200))
        gt.append(obj([x, y, x + draw(st.integers(30, 90)), y + draw(st.integers(30, 90))], present[k]))
    honest = [dict(g) for g in gt]
    if draw(st.booleans()):
        honest.pop(draw(st.integers(0, n - 1)))
    else:
        k = draw(st.integers(0, n - 1))
        b = honest[k]["bbox_2d"]
        honest[k] = obj([b[0] + 4, b[1] + 4, b[2] + 4, b[3]], honest[k]["label"])
    return gt, honest, phrases


def spray(phrases, labels_from, count, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        x, y = rng.uniform(0, 600), rng.uniform(0, 300)
        out.append(obj([round(x), round(y), round(x + rng.uniform(20, 120)), round(y + rng.uniform(20, 120))], rng.choice(labels_from)))
    return out


@given(scenes(), st.integers(0, 10**6))
@settings(max_examples=60)
def test_no_hack_pays(scene, seed):
    gt, honest, phrases = scene
    present = sorted({g["label"] for g in gt})
    hacks = {
        "spray 200 boxes of the present phrases": spray(phrases, present, 200, seed),
        "spray 200 boxes of every phrase": spray(phrases, phrases, 200, seed),
        "repeat one true box 10 times": [gt[0]] * 10,
        "every phrase at one location": [obj(gt[0]["bbox_2d"], p) for p in phrases],
        "every phrase at every true box": [obj(g["bbox_2d"], p) for g in gt for p in phrases],
    }
    for reward in (od_length_reward, od_weighted_reward):
        fair = one(reward, answer(*honest), gt)
        for name, hack in hacks.items():
            value = one(reward, answer(*hack), gt)
            assert value < fair - 0.1, (reward.__name__, name, value, fair)
    # AP alone ignores false positives ranked after the true ones, but naming phrases that are absent costs.
    assert one(od_ap_reward, answer(*hacks["every phrase at every true box"]), gt) < one(od_ap_reward, answer(*honest), gt)


@given(scenes())
@settings(max_examples=30)
def test_answering_none_pays_only_on_negative_images(scene):
    gt, _, _ = scene
    for reward in OURS:
        assert one(reward, "None", gt) == 0.0
        assert one(reward, "None", None) == 1.0


# -------------------------------------------------------------------------------------- robustness

TOKENS = ('[{"bbox_2d": [', '"label": "cat"}', "]", "}", ",", " 0", " 10", "1e5", "None", "<answer>", "</answer>",
          "```json", "```", *HOSTILE_NUMBERS)  # fmt: skip


@given(token_soup(TOKENS, 40))
@settings(max_examples=150)
def test_any_text_gives_a_reward_in_range_and_never_raises(text):
    for reward in (*OURS, *(make_od_reward(k, vlm_r1=True) for k in ("ap", "ap50", "length", "weighted"))):
        for gt in ([CAT, DOG], None):
            value = one(reward, text, gt)
            assert value is not None and 0.0 <= value <= 1.0 and math.isfinite(value)


def test_a_huge_answer_is_scored_quickly():
    text = answer(*([CAT] * 5000))
    assert one(od_length_reward, text, [CAT]) <= 1 / 900
    assert one(make_od_reward("length", vlm_r1=True), "<answer>" + "<answer>" * 100_000, [CAT]) == 0.0


def test_format_reward_accepts_none_on_ovd_rows_only():
    from trl_perception.rewards import format_reward

    rewards = format_reward(["None", "[]", "garbage", "None"], task=["ovd", "ovd", "ovd", "detection"])
    assert rewards == [1.0, 1.0, 0.0, 0.0]


def test_our_rewards_read_vlm_r1_solution_strings_too():
    sol = "<answer> ```json\n" + answer(CAT, CAT2) + "\n``` </answer>"
    assert one(od_ap_reward, answer(CAT, CAT2), sol) == 1.0
    assert one(od_ap_reward, "None", "<answer> None </answer>") == 1.0


def test_hallucination_component_is_the_share_of_boxes_for_absent_phrases():
    logged = {}
    od_ap_reward([answer(CAT, obj([40, 0, 50, 10], "zebra"), DOG)], [[CAT]], log_metric=logged.__setitem__)
    assert logged["od_ap_reward/hallucination"] == pytest.approx(2 / 3)
