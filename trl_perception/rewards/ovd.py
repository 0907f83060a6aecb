"""Open-vocabulary detection (OVD) rewards after VLM-R1: per-sample COCO AP (`od_ap`, `od_ap50`), AP with a
length penalty (`od_length`) and the weighted-sum reward (`od_weighted`), plus a VLM-R1 compatibility mode
that reproduces the released numbers, bugs included.

The per-sample AP is COCOeval's bounding-box AP for one image, computed directly (no pycocotools objects):
the same IoU (`maskApi.c`'s `bbIou` on `[x, y, w, h]`), the same greedy matching per IoU threshold, the
same 101-point interpolated precision and the same area rule, so that it equals pycocotools on the same
single-image problem (tests check 1e-12) at a fraction of the cost.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..boxes import box_iou
from ..formats import MAX_OBJECTS, parse_objects, strip_wrappers
from ..matching import match_boxes
from ._common import (
    ComponentLog,
    MalformedSolution,
    Row,
    SolutionCache,
    call_safely,
    decode_json,
    gt_boxes,
    is_empty_answer,
    normalize_label,
    select_rows,
)

__all__ = [
    "OVD_TASKS",
    "image_average_precision",
    "make_od_reward",
    "od_ap50_reward",
    "od_ap_reward",
    "od_length_reward",
    "od_weighted_reward",
]

OVD_TASKS: tuple[str, ...] = ("ovd",)
"""The `task` values the OD rewards judge by default (rows of other tasks get `None`)."""

# COCOeval's parameters (pycocotools `Params.setDetParams`), built with the same expressions so that the
# floating-point thresholds are bit-identical.
IOU_THRESHOLDS: tuple[float, ...] = tuple(
    np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True).tolist()
)
RECALL_THRESHOLDS: tuple[float, ...] = tuple(
    np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True).tolist()
)
MAX_DETS = 100
"""Detections per category that COCOeval's AP considers (`maxDets[-1]`)."""

_AREA_RANGE = (0.0, 1e5**2)  # COCOeval's "all" area range
_EPS = float(np.spacing(1))  # COCOeval's precision denominator guard
_N_RECALL = len(RECALL_THRESHOLDS)


# --------------------------------------------------------------------------------------- AP engine


def _iou_xywh(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU `[D, G]` of `[x, y, w, h]` boxes with pycocotools' arithmetic (`bbIou`, no crowd regions)."""
    dx, dy, dw, dh = (pred[:, k : k + 1] for k in range(4))
    gx, gy, gw, gh = (gt[:, k] for k in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    union = (dw * dh + gw * gh) - inter
    overlap = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _category_precision_sums(
    ious: list[list[float]],
    gt_ignored: list[bool],
    pred_area_ignored: list[bool],
    thresholds: Sequence[float],
) -> float | None:
    """Sum over the IoU thresholds and the 101 recall thresholds of COCOeval's interpolated precision for one
    category of one image, with detections already in rank order; `None` when the category has no
    non-ignored ground truth (COCOeval's -1, excluded from the mean).

    `ious[d][g]` uses the ground truth sorted non-ignored first, as COCOeval sorts it.
    """
    n_gt = len(gt_ignored)
    npig = n_gt - sum(gt_ignored)
    if npig == 0:
        return None
    any_ignored = npig != n_gt
    lowest = min(min(thresholds), 1 - 1e-10)
    # Per detection, the ground truth it may match at some threshold, best first. COCOeval's scan keeps the
    # *last* of equal IoUs, hence the ties by descending index.
    candidates = []
    for row in ious:
        cands = [(v, g) for g, v in enumerate(row) if v >= lowest]
        if len(cands) > 1:
            cands.sort(reverse=True)
        candidates.append(cands)
    values = sorted(v for cands in candidates for v, _ in cands)
    total = 0.0
    cache: dict[Any, float] = {}
    for t in thresholds:
        floor = min(t, 1 - 1e-10)
        # The matching depends on the threshold only through which candidate IoUs reach it.
        reach = len(values) - bisect.bisect_left(values, floor)
        if not any_ignored and reach in cache:
            total += cache[reach]
            continue
        taken = [False] * n_gt
        outcome = []  # per detection: 1 true positive, 0 false positive, -1 ignored
        for d, cands in enumerate(candidates):
            m = -1
            if any_ignored:
                m = _scan(ious[d], taken, gt_ignored, floor)
            else:
                for v, g in cands:
                    if v < floor:
                        break
                    if not taken[g]:
                        m = g
                        break
            if m == -1:
                outcome.append(-1 if pred_area_ignored[d] else 0)
                continue
            taken[m] = True
            outcome.append(-1 if gt_ignored[m] else 1)
        value = _interpolated_precision_sum(tuple(outcome), npig)
        cache[reach] = value
        total += value
    return total


def _scan(row: list[float], taken: list[bool], gt_ignored: list[bool], floor: float) -> int:
    """COCOeval's match of one detection (`evaluateImg`), for categories with ignored ground truth."""
    best, m = floor, -1
    for g in range(len(row)):
        if taken[g]:
            continue
        if m > -1 and not gt_ignored[m] and gt_ignored[g]:
            break
        if row[g] < best:
            continue
        best, m = row[g], g
    return m


@functools.lru_cache(maxsize=1 << 14)
def _interpolated_precision_sum(outcome: tuple[int, ...], npig: int) -> float:
    """Σ over the 101 recall thresholds of COCOeval's interpolated precision (`accumulate`) for detections
    with these outcomes in rank order. Cached: a few short outcome patterns make up most answers."""
    tp = fp = 0
    recall, precision = [], []
    for o in outcome:
        if o == 1:
            tp += 1
        elif o == 0:
            fp += 1
        recall.append(tp / npig)
        precision.append(tp / (fp + tp + _EPS))
    for i in range(len(precision) - 1, 0, -1):  # precision envelope, from the right
        if precision[i] > precision[i - 1]:
            precision[i - 1] = precision[i]
    total, assigned = 0.0, 0
    for rc, pr in zip(recall, precision):
        # recall thresholds r with previous recall < r <= rc take this precision (searchsorted "left")
        count = bisect.bisect_right(RECALL_THRESHOLDS, rc)
        if count > assigned:
            total += pr * (count - assigned)
            assigned = count
    return total


def _coco_ap(
    gt_xywh: np.ndarray,
    gt_cats: list[Any],
    pred_xywh: np.ndarray,
    pred_cats: list[Any],
    thresholds: Sequence[float],
    rank: str,
    unmatched_categories: str,
    gt_areas: np.ndarray | None = None,
) -> float:
    """COCOeval's AP for one image: mean over categories with ground truth of the per-category AP.

    `rank="list"` ranks equal-score detections in list order (COCOeval's stable sort); `rank="iou"` by their
    best IoU with a ground-truth box of their category, descending, then by coordinates. With
    `unmatched_categories="zero"` a predicted category absent from the ground truth adds an AP of 0 to the
    mean; with `"skip"` it is left out, as COCOeval does.
    """
    gt_areas = gt_xywh[:, 2] * gt_xywh[:, 3] if gt_areas is None else gt_areas
    gt_ignored_all = ((gt_areas < _AREA_RANGE[0]) | (gt_areas > _AREA_RANGE[1])).tolist()
    pred_areas = pred_xywh[:, 2] * pred_xywh[:, 3]
    pred_ignored_all = ((pred_areas < _AREA_RANGE[0]) | (pred_areas > _AREA_RANGE[1])).tolist()
    iou = _iou_xywh(pred_xywh, gt_xywh).tolist() if len(pred_xywh) and len(gt_xywh) else [[] for _ in pred_cats]
    by_cat_gt: dict[Any, list[int]] = {}
    for g, c in enumerate(gt_cats):
        by_cat_gt.setdefault(c, []).append(g)
    by_cat_pred: dict[Any, list[int]] = {}
    for d, c in enumerate(pred_cats):
        by_cat_pred.setdefault(c, []).append(d)
    pred_list = pred_xywh.tolist() if rank == "iou" else None
    total, counted = 0.0, 0
    for cat, g_idx in by_cat_gt.items():
        d_idx = by_cat_pred.get(cat, [])
        if any(gt_ignored_all[g] for g in g_idx):  # COCOeval sorts the ground truth non-ignored first
            g_idx = [g for g in g_idx if not gt_ignored_all[g]] + [g for g in g_idx if gt_ignored_all[g]]
        sub = [[iou[d][g] for g in g_idx] for d in d_idx]
        if rank == "iou" and len(d_idx) > 1:
            order = sorted(range(len(d_idx)), key=lambda k: (-max(sub[k]), *pred_list[d_idx[k]]))
            d_idx = [d_idx[k] for k in order]
            sub = [sub[k] for k in order]
        sums = _category_precision_sums(
            sub[:MAX_DETS],
            [gt_ignored_all[g] for g in g_idx],
            [pred_ignored_all[d] for d in d_idx[:MAX_DETS]],
            thresholds,
        )
        if sums is None:
            continue
        total += sums / (len(thresholds) * _N_RECALL)
        counted += 1
    if unmatched_categories == "zero":
        counted += sum(1 for cat in by_cat_pred if cat not in by_cat_gt)
    return total / counted if counted else -1.0


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def image_average_precision(
    gt_boxes: Sequence | np.ndarray,
    gt_labels: Sequence[str],
    pred_boxes: Sequence | np.ndarray,
    pred_labels: Sequence[str],
    *,
    iou_threshold: float | None = None,
) -> float:
    r"""
    COCO bounding-box AP of the predictions of one image, all with the same score, exactly as pycocotools'
    `COCOeval` computes it for that image, with two rules for what COCOeval leaves open:

    - **Ties.** All predictions have the same score, so COCOeval would rank them in list order. Here they are
      ranked by their best IoU with a ground-truth box of their label (descending), then by coordinates, so
      the value depends on the set of predictions, not their order. When no ground-truth box is overlapped
      (IoU ≥ 0.5) by two predictions of its label this is the best possible ordering; in general it is
      COCOeval's value for the model that is most confident in its best-placed boxes.
    - **Unknown labels.** A predicted label absent from the ground truth is a category with detections and
      no ground truth; COCOeval leaves it out, here it counts with AP 0, so its boxes are false positives.

    Boxes are `[x1, y1, x2, y2]`; a box with `x2 < x1` or `y2 < y1` is scored as a zero-size box (a false
    positive). Each category keeps its first `MAX_DETS` (100) ranked predictions, as COCOeval does.

    Args:
        gt_boxes (`array-like [M, 4]`), gt_labels (`list[str]`): the ground truth (at least one box).
        pred_boxes (`array-like [N, 4]`), pred_labels (`list[str]`): the predictions.
        iou_threshold (`float`, *optional*): `None` for AP over IoU 0.50:0.95 (`stats[0]`), `0.5` for AP50
            (`stats[1]`), or any of COCOeval's ten thresholds.

    Returns:
        `float`: AP in [0, 1], rounded to 12 decimals (so that a perfect answer gives 1.0, not COCOeval's
        0.9999999999999999).

    Example:
    ```python
    >>> gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    >>> image_average_precision(gt, ["cat", "dog"], [[0, 0, 10, 10], [20, 20, 30, 30]], ["cat", "dog"])
    1.0
    >>> image_average_precision(gt, ["cat", "dog"], [[0, 0, 10, 10], [20, 20, 30, 30]], ["cat", "bird"])  # dog, bird: 0
    0.333333333333
    >>> round(image_average_precision(gt, ["cat", "dog"], [[0, 0, 10, 12]], ["cat"], iou_threshold=0.5), 4)
    0.5

    ```
    """
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt) != len(gt_labels) or len(gt) == 0:
        raise ValueError("image_average_precision needs one label per ground-truth box and at least one box")
    pred = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    if len(pred) != len(pred_labels):
        raise ValueError("image_average_precision needs one label per predicted box")
    thresholds = _thresholds(iou_threshold)
    return _tidy(_coco_ap(_xyxy_to_xywh(gt), list(gt_labels), _proper_xywh(pred), list(pred_labels), thresholds, "iou", "zero"))


def _tidy(ap: float) -> float:
    """AP in [0, 1], rounded to 12 decimals: COCOeval's `tp / (tp + fp + eps)` makes a perfect answer
    0.9999999999999999; the rounding (far below the 1e-12 agreement with pycocotools) makes it 1.0."""
    return round(min(1.0, max(0.0, ap)), 12)


def _thresholds(iou_threshold: float | None) -> tuple[float, ...]:
    if iou_threshold is None:
        return IOU_THRESHOLDS
    matches = [t for t in IOU_THRESHOLDS if abs(t - float(iou_threshold)) < 1e-9]
    if not matches:
        raise ValueError(f"iou_threshold must be None or one of COCOeval's {IOU_THRESHOLDS}, got {iou_threshold}")
    return (matches[0],)


def _proper_xywh(pred_xyxy: np.ndarray) -> np.ndarray:
    """`[x, y, w, h]` of predicted `xyxy` boxes; inverted sides become 0 (a zero-size box never matches)."""
    xywh = _xyxy_to_xywh(pred_xyxy)
    xywh[:, 2:] = np.maximum(xywh[:, 2:], 0.0)
    return xywh


# ------------------------------------------------------------------------------------ ground truth


def _ovd_target(solution: Any) -> tuple[np.ndarray, list[str]]:
    """Ground-truth boxes `[M, 4]` and normalised labels; `None`, `[]`, `"None"` (and VLM-R1's
    `<answer> None </answer>` / fenced JSON) are the empty ground truth."""
    value = solution
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = strip_wrappers(value)
        if text.lower() in ("", "none", "null", "[]"):
            return np.zeros((0, 4)), []
        value = decode_json(text)
    if value is None:
        return np.zeros((0, 4)), []
    if not isinstance(value, (list, tuple)):
        raise MalformedSolution(f"ovd solution must be a list of objects or None, got {type(value).__name__}")
    boxes, labels = [], []
    for k, item in enumerate(value):
        if not isinstance(item, dict):
            raise MalformedSolution(f"ovd object {k} must be a dict, got {item!r:.80}")
        label = normalize_label(item.get("label", item.get("name", item.get("category"))))
        if label is None:
            raise MalformedSolution(f"ovd object {k} has no label: {item!r:.80}")
        boxes.append(item.get("bbox_2d", item.get("bbox")))
        labels.append(label)
    return gt_boxes(boxes, "ovd object box"), labels


# -------------------------------------------------------------------------------------- our rewards


_COMPONENTS = ("ap", "length_factor", "predicted", "hallucination", "parse_failure")


class _OVDReward:
    """One OD reward (`kind` in `ap`, `ap50`, `length`, `weighted`); a class so that it pickles."""

    _NAMES = {"ap": "od_ap", "ap50": "od_ap50", "length": "od_length", "weighted": "od_weighted"}

    def __init__(
        self,
        kind: str = "length",
        vlm_r1: bool = False,
        tasks: Sequence[str] = OVD_TASKS,
        iou_threshold: float = 0.5,
        name: str | None = None,
    ):
        if kind not in self._NAMES:
            raise ValueError(f"kind must be one of {sorted(self._NAMES)}, got {kind!r}")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
        self.kind = kind
        self.vlm_r1 = bool(vlm_r1)
        self.tasks = tuple(t.strip().lower() for t in tasks)
        self.iou_threshold = float(iou_threshold)
        base = self._NAMES[kind]
        self.__name__ = name or (f"{base}_vlm_r1_reward" if self.vlm_r1 else f"{base}_reward")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, vlm_r1={self.vlm_r1}, tasks={self.tasks}, "
            f"iou_threshold={self.iou_threshold}, name={self.__name__!r})"
        )

    # --- ours

    def _score(self, row: Row, target: tuple[np.ndarray, list[str]]) -> tuple[float, dict[str, float]]:
        gt, gt_labels = target
        parsed = parse_objects(row.text, row.frame.box_format)
        kept = [
            (obj.bbox, label)
            for obj in parsed.objects
            if obj.bbox is not None and (label := normalize_label(obj.label)) is not None
        ]
        n_pred = len(parsed.objects) + parsed.rejected  # every item the answer lists
        empty = n_pred == 0 and (parsed.valid or is_empty_answer(row.text))
        failed = float(n_pred == 0 and not empty)
        # Share of the boxes whose phrase is absent from the image (asked and absent, or never asked).
        present = set(gt_labels)
        absent = sum(label not in present for _, label in kept)
        info = {"predicted": float(n_pred), "parse_failure": failed, "hallucination": absent / len(kept) if kept else 0.0}
        if len(gt_labels) == 0:
            value = 1.0 if empty else 0.0  # a negative image: only "nothing here" is right
            return value, {**info, "ap": value, "length_factor": 1.0 if n_pred == 0 else 0.0}
        if not kept:
            return 0.0, {**info, "ap": 0.0, "length_factor": min(1.0, len(gt_labels) / n_pred) if n_pred else 1.0}
        boxes = row.frame.to_pixels(np.asarray([b for b, _ in kept], dtype=np.float64))
        labels = [label for _, label in kept]
        length_factor = min(1.0, len(gt_labels) / n_pred)
        if self.kind == "weighted":
            value = _weighted(boxes, labels, gt, gt_labels, n_pred, self.iou_threshold)
            return value, {**info, "length_factor": length_factor}
        thresholds = (IOU_THRESHOLDS[0],) if self.kind == "ap50" else IOU_THRESHOLDS
        ap = _tidy(_coco_ap(_xyxy_to_xywh(gt), gt_labels, _proper_xywh(boxes), labels, thresholds, "iou", "zero"))
        value = ap * length_factor if self.kind == "length" else ap
        return value, {**info, "ap": ap, "length_factor": length_factor}

    # --- VLM-R1's released code

    def _score_vlm_r1(self, row: Row, sol_text: str) -> float:
        if self.kind == "weighted":
            return _vlm_r1_weighted(row.text, sol_text)
        return _vlm_r1_map(row.text, sol_text, self.kind)

    def __call__(self, completions: list, solution: list, **kwargs: Any) -> list[float | None]:
        name = self.__name__
        rows, n = select_rows(name, self.tasks, completions, solution, kwargs)
        rewards: list[float | None] = [None] * n
        if self.vlm_r1:
            texts = SolutionCache(_vlm_r1_solution_text)
            for row in rows:
                rewards[row.index] = call_safely(
                    name, row, lambda r: self._score_vlm_r1(r, texts(r.solution)), failure=0.0
                )
            return rewards
        log = ComponentLog(name, n, _COMPONENTS)
        targets = SolutionCache(_ovd_target)
        for row in rows:
            result = call_safely(
                name, row, lambda r: self._score(r, targets(r.solution)), failure=(0.0, {"parse_failure": 1.0})
            )
            if result is None:
                continue
            value, components = result
            rewards[row.index] = min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0
            log.set(row.index, **{k: v for k, v in components.items() if k in _COMPONENTS})
        log.emit(kwargs)
        return rewards


def _weighted(
    boxes: np.ndarray, labels: list[str], gt: np.ndarray, gt_labels: list[str], n_pred: int, iou_threshold: float
) -> float:
    """VLM-R1's weighted sum with its bugs fixed (see `od_weighted_reward`)."""
    boxes = boxes[:MAX_OBJECTS]
    labels = labels[: len(boxes)]
    same = np.asarray(labels, dtype=object)[:, None] == np.asarray(gt_labels, dtype=object)[None, :]
    if (same & (box_iou(boxes, gt) >= iou_threshold)).any():
        _, _, ious = match_boxes(boxes, gt, iou_threshold, labels, gt_labels)
    else:
        ious = np.zeros(0)
    tp, n_gt = len(ious), len(gt_labels)
    location = float(ious.sum()) / max(n_gt, n_pred)
    miss, false_alarm = (n_gt - tp) / n_gt, (n_pred - tp) / n_pred
    return 0.7 * location + 0.3 * (1.0 - (miss + false_alarm) / 2.0)


# ------------------------------------------------------------------------- VLM-R1 compatibility


def _between(text: str, start: str, end: str) -> list[str]:
    """What `re.findall(start + "(.*?)" + end, text, re.DOTALL)` returns, found in linear time."""
    out, pos = [], 0
    while True:
        s = text.find(start, pos)
        if s < 0:
            return out
        e = text.find(end, s + len(start))
        if e < 0:
            return out
        out.append(text[s + len(start) : e])
        pos = e + len(end)


_SPACE_NEWLINE = {c: (re.compile(r"(?<=\s)" + re.escape(c)), re.compile(r"(?<!\s)" + re.escape(c))) for c in "\n\r"}


def _clean_text(text: str) -> str:
    """VLM-R1's `clean_text`: the last `<answer>` body, newlines folded into spaces, stripped, trailing dots
    removed, lower-cased."""
    answers = _between(text, "<answer>", "</answer>")
    if answers:
        text = answers[-1]
    for char in "\n\r":
        after_space, other = _SPACE_NEWLINE[char]
        text = after_space.sub("", text)
        text = other.sub(" ", text)
    return text.strip().rstrip(".").lower()


def _vlm_r1_solution_text(solution: Any) -> str:
    """The solution string VLM-R1's reward sees: the jsonl answer wrapped in `<answer> … </answer>`."""
    if isinstance(solution, (bytes, bytearray)):
        solution = solution.decode("utf-8", errors="replace")
    if isinstance(solution, str):
        body = solution
        stripped = solution.strip()
        if stripped.startswith("[") or stripped.startswith("{"):
            try:
                body = _vlm_r1_render(json.loads(stripped))
            except ValueError:
                body = solution
    elif solution is None or (isinstance(solution, (list, tuple)) and len(solution) == 0):
        body = "None"
    else:
        body = _vlm_r1_render(solution)
    return body if "<answer>" in body else f"<answer> {body} </answer>"


def _vlm_r1_render(objects: Any) -> str:
    if not objects:
        return "None"
    if not isinstance(objects, (list, tuple)):
        raise MalformedSolution(f"ovd solution must be a list of objects, got {type(objects).__name__}")
    items = []
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict) or "bbox_2d" not in obj or "label" not in obj:
            raise MalformedSolution(f"ovd object {k} needs bbox_2d and label, got {obj!r:.80}")
        items.append({"bbox_2d": list(obj["bbox_2d"]), "label": obj["label"]})
    return "```json\n" + json.dumps(items, ensure_ascii=False) + "\n```"


def _iterate(value: Any) -> list[Any]:
    """`[item for item in value]` as VLM-R1 writes it: a dict gives its keys, a string its characters."""
    if isinstance(value, (list, tuple, str, dict)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not iterable")


def _vlm_r1_map(content: str, sol_text: str, kind: str) -> float:
    """VLM-R1's `od_reward` / `odLength_reward` (→ `map_reward` → `calculate_map`)."""
    ground_truth, n_gt, prepared = _vlm_r1_ground_truth(sol_text)
    answers = _between(content, "<answer>", "</answer>")
    if not answers:
        return 0.0
    student = answers[-1].strip()
    if ground_truth == "None" and student == "None":
        return 1.0
    pred_list: list[Any] = []
    blocks = _between(student, "```json", "```")
    if blocks:
        try:
            pred_list = _iterate(json.loads(blocks[-1].strip()))
        except (ValueError, TypeError, RecursionError):
            pred_list = []
    if pred_list and n_gt:
        if isinstance(prepared, MalformedSolution):
            raise prepared
        reward = _vlm_r1_calculate_map(pred_list, prepared, kind)
    elif not pred_list and not n_gt:
        reward = 1.0
    else:
        reward = 0.0
    if kind == "length":
        n_pred = len(pred_list)
        reward *= 1.0 if n_gt >= n_pred else n_gt / n_pred
    return reward


@functools.lru_cache(maxsize=1024)
def _vlm_r1_ground_truth(sol_text: str) -> tuple[str | None, int, Any]:
    """`(ground truth text, |G|, prepared ground truth or the MalformedSolution to raise)` of a solution
    string; cached, since the rollouts of a GRPO group share their solution."""
    gt_answers = _between(sol_text, "<answer>", "</answer>")
    ground_truth = gt_answers[0].strip() if gt_answers else None
    gt_blocks = _between(ground_truth or "", "```json", "```")
    gt_list: list[Any] = []
    if gt_blocks and gt_blocks[-1].strip():
        try:
            gt_list = _iterate(json.loads(gt_blocks[-1].strip()))
        except (ValueError, TypeError, RecursionError) as err:
            raise MalformedSolution(f"VLM-R1 solution JSON does not load ({err})") from err
    cats: dict[Any, int] = {}
    gt_xywh, gt_area, gt_cat = [], [], []
    for k, item in enumerate(gt_list):
        try:
            label = item["label"]
            b = item["bbox_2d"]
            x1, y1, x2, y2 = _four(b)
            cat = cats.setdefault(label, len(cats))
        except (KeyError, TypeError, IndexError, OverflowError):
            # their code raises only once a prediction is scored against it
            return ground_truth, len(gt_list), MalformedSolution(f"VLM-R1 solution object {k} is not a labelled box: {item!r:.80}")
        w, h = x2 - x1, y2 - y1
        gt_xywh.append((x1, y1, w, h))
        gt_area.append(w * h)
        gt_cat.append(cat)
    prepared = (cats, np.asarray(gt_xywh, dtype=np.float64).reshape(-1, 4), np.asarray(gt_area, dtype=np.float64), gt_cat)
    return ground_truth, len(gt_list), prepared


def _real(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        return float(value)  # OverflowError for huge ints: the item is dropped
    if isinstance(value, float):
        return value
    raise TypeError("not a number")


def _four(b: Any) -> tuple[float, float, float, float]:
    """The first four coordinates as floats, with VLM-R1's failures (IndexError, TypeError, ...) raised."""
    values = (b[0], b[1], b[2], b[3])
    if all(type(v) is int or type(v) is float for v in values):
        return tuple(float(v) for v in values)  # type: ignore[return-value]
    return tuple(_real(v) for v in values)  # type: ignore[return-value]


def _vlm_r1_calculate_map(pred_list: list[Any], prepared: tuple, kind: str) -> float:
    cats, gt_xywh, gt_area, gt_cat = prepared
    pred_xywh, pred_cat = [], []
    for item in pred_list:
        try:
            cat = cats[item["label"]]  # a label outside the ground truth raises: silently dropped (their bug)
            x1, y1, x2, y2 = _four(item["bbox_2d"])
        except (KeyError, TypeError, IndexError, OverflowError):
            continue
        if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
            continue  # pycocotools' C code treats NaN inconsistently; such items are dropped here
        pred_xywh.append((x1, y1, x2 - x1, y2 - y1))
        pred_cat.append(cat)
    if not pred_xywh:
        return 0.0
    thresholds = (IOU_THRESHOLDS[0],) if kind == "ap50" else IOU_THRESHOLDS
    return _coco_ap(
        gt_xywh, gt_cat, np.asarray(pred_xywh, dtype=np.float64), pred_cat, thresholds, "list", "skip", gt_areas=gt_area
    )


def _vlm_r1_iou(box1: Any, box2: Any) -> float:
    """VLM-R1's `iou`: +1-pixel intersection, plain areas in the union."""
    inter_x1 = max(box1[0], box2[0])
    inter_y1 = max(box1[1], box2[1])
    inter_x2 = min(box1[2] - 1, box2[2] - 1)
    inter_y2 = min(box1[3] - 1, box2[3] - 1)
    if inter_x1 < inter_x2 and inter_y1 < inter_y2:
        inter = (inter_x2 - inter_x1 + 1) * (inter_y2 - inter_y1 + 1)
    else:
        inter = 0
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    return float(inter) / union


class _UnboundLabel(Exception):
    """VLM-R1's `detection_score` reads an unassigned `pred_label` (its `pred_box = ""` typo) and raises."""


def _vlm_r1_weighted(content: str, sol_text: str) -> float:
    """VLM-R1's `weighted_sum` accuracy path (`clean_text` then `detection_score`)."""
    content = _clean_text(content)
    sol = _clean_text(sol_text)
    if sol == "none":
        return 1.0 if content == "none" else 0.0
    blocks = _between(_clean_text(content), "```json", "```")
    pred: list[Any] = []
    if blocks:
        try:
            pred = _iterate(json.loads(blocks[0].strip()))
        except (ValueError, TypeError, RecursionError):
            pred = []
    blocks = _between(_clean_text(sol), "```json", "```")
    gt: list[Any] = []
    if blocks:
        try:
            gt = _iterate(json.loads(blocks[0].strip()))
        except (ValueError, TypeError, RecursionError) as err:
            raise MalformedSolution(f"VLM-R1 solution JSON does not load ({err})") from err
    if not gt:
        return 1.0 if not pred else 0.0
    if not pred:
        return 0.0
    ious = []
    for p in pred:
        row = []
        for g in gt:
            try:
                row.append(_vlm_r1_iou(p["bbox_2d"], g["bbox_2d"]))
            except Exception:  # noqa: BLE001 - their bare except: any failure is IoU 0
                row.append(0.0)
        ious.append(row)
    # Their loop takes, again and again, the free pair of highest IoU (first in prediction-then-truth order on
    # ties) until it falls below 0.5: the same pairs, in the same order, as one pass over the pairs >= 0.5
    # sorted by (-IoU, prediction, truth).
    pairs = sorted((-v, i, j) for i, row in enumerate(ious) for j, v in enumerate(row) if v >= 0.5)
    used_pred, used_gt = set(), set()
    matched_iou = []
    pred_label: Any = _UnboundLabel
    for negative_iou, bp, bg in pairs:
        if bp in used_pred or bg in used_gt:
            continue
        try:
            pred_label = pred[bp]["label"].lower()
        except Exception:  # noqa: BLE001 - their code assigns `pred_box` here and keeps the old label
            if pred_label is _UnboundLabel:
                raise _UnboundLabel("VLM-R1's detection_score raises UnboundLocalError here") from None
        try:
            gt_label = gt[bg]["label"].lower()
        except Exception:  # noqa: BLE001
            gt_label = ""
        matched_iou.append(-negative_iou if pred_label == gt_label else 0)
        used_pred.add(bp)
        used_gt.add(bg)
    free_pred = len(pred) - len(used_pred)
    free_gt = len(gt) - len(used_gt)
    position = sum(matched_iou) / len(gt) if matched_iou else 0.0
    miss_rate = free_gt / len(gt)
    false_alarm_rate = free_pred / len(pred)
    completeness = 1.0 - (miss_rate + false_alarm_rate) / 2.0
    return (0.7 * position + 0.0 * 0.0 + 0.3 * completeness) / (0.7 + 0.0 + 0.3)


# ------------------------------------------------------------------------------------ public API


def make_od_reward(
    kind: str = "length",
    vlm_r1: bool = False,
    tasks: Sequence[str] = OVD_TASKS,
    iou_threshold: float = 0.5,
    name: str | None = None,
) -> _OVDReward:
    r"""
    An OD reward as a named, picklable callable: `kind` is `"ap"`, `"ap50"`, `"length"` or `"weighted"`
    (see `od_ap_reward`, `od_ap50_reward`, `od_length_reward`, `od_weighted_reward`).

    With `vlm_r1=True` it reproduces VLM-R1's released rewards (`od_ap`, `od_ap50`, `odLength`,
    `weighted_sum` at commit 90052f4) number for number, bugs included: the answer must sit in
    `<answer>…</answer>` and the boxes in the last ```` ```json ```` block (the first, lower-cased, for
    `weighted_sum`); coordinates are compared as written (no frame conversion); predicted labels outside
    the ground truth are dropped from AP instead of counting as false positives; equal scores rank in list
    order; `weighted_sum` matches greedily without regard to labels with VLM-R1's +1-pixel IoU, and a
    completion whose first matched item has no string label scores 0 here where their code raises. The
    solution is our list of objects (rendered as their ```` ```json ```` text, `None` when empty) or their
    own solution string. Items with non-finite coordinates are dropped from AP (pycocotools' C code treats NaN
    inconsistently).

    Args:
        kind (`str`): which reward.
        vlm_r1 (`bool`): reproduce VLM-R1's released code instead of ours.
        tasks (`list[str]`): the `task` values judged (default `("ovd",)`; add `"detection"` to score COCO
            detection rows too); other rows get `None`.
        iou_threshold (`float`): matching threshold of `"weighted"` (inclusive).
        name (`str`, *optional*): the reward's `__name__` (TRL's column name).

    Example:
    ```python
    >>> from trl_perception.rewards import make_od_reward

    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}]
    >>> fp_first = ('<answer>```json\n[{"bbox_2d": [50, 50, 60, 60], "label": "cat"}, {"bbox_2d": [70, 70, 80, 80], '
    ...             '"label": "cat"}, {"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}]\n```</answer>')
    >>> round(make_od_reward("ap", vlm_r1=True)([fp_first], [gt])[0], 6), make_od_reward("ap")([fp_first], [gt])
    (0.5, [1.0])

    ```
    """
    return _OVDReward(kind=kind, vlm_r1=vlm_r1, tasks=tasks, iou_threshold=iou_threshold, name=name)


_AP = _OVDReward("ap")
_AP50 = _OVDReward("ap50")
_LENGTH = _OVDReward("length")
_WEIGHTED = _OVDReward("weighted")


def od_ap_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    Per-sample COCO AP (IoU 0.50:0.95) of an open-vocabulary detection answer, as VLM-R1's `od_ap`, without
    its bugs.

    The completion is parsed with `formats.parse_objects` (any box format; coordinates converted to the
    ground truth's original pixels through `box_format` / `image_size` / `input_size` and clipped). Labels are
    compared lower-cased and whitespace-collapsed. The value is `image_average_precision`: COCOeval's AP for
    the image with every prediction scored equally, ties ranked by best same-label IoU (so the order of the
    list does not matter), and a predicted label outside the ground truth counting as a category with AP 0
    (its boxes are false positives; listing every phrase of the prompt at one place is no free lunch).

    A solution with no object (`None`, `[]`, `"None"`): 1.0 for an explicit empty answer (`None`, `[]`,
    empty text), 0.0 for anything else. Objects present: 0.0 for an empty or unparseable answer. Note that AP
    does not fall when false positives rank after all true positives: extra boxes are nearly free, which is
    VLM-R1's reward-hacking finding; `od_length_reward` is the counter-measure.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        solution (`list`): per completion, `[{"bbox_2d": [x1, y1, x2, y2], "label": phrase}, ...]` in pixels of
            the image (only the phrases asked for), `None` / `[]` when none of them is present; native or JSON.
        **kwargs: `task` (rows whose task is not `"ovd"` get `None`), `box_format`, `image_size`,
            `input_size`; `log_metric` / `log_extra` receive `od_ap_reward/{ap,length_factor,predicted,hallucination,
            parse_failure}` (`hallucination`: the share of boxes whose phrase is absent from the image).

    Returns:
        `list[float | None]`: one reward in [0, 1] per completion.

    Example:
    ```python
    >>> from trl_perception.rewards import od_ap_reward

    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]
    >>> od_ap_reward(['[{"bbox_2d": [0, 0, 10, 10], "label": "Cat"}]', "None", "None"], [gt, gt, None])
    [1.0, 0.0, 1.0]

    ```
    """
    return _AP(completions, solution, **kwargs)


def od_ap50_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    Per-sample COCO AP at IoU 0.5 (COCOeval's `stats[1]`); otherwise as `od_ap_reward`.

    Example:
    ```python
    >>> from trl_perception.rewards import od_ap50_reward

    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]
    >>> od_ap50_reward(['[{"bbox_2d": [0, 0, 10, 12], "label": "cat"}]'], [gt])
    [1.0]

    ```
    """
    return _AP50(completions, solution, **kwargs)


def od_length_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    VLM-R1's `odLength`: per-sample AP times a length factor,

    $$ r = AP \cdot \min\left(1, \frac{|G|}{|P|}\right), $$

    with $|G|$ ground-truth objects and $|P|$ items in the answer (every listed item, malformed or unlabelled
    ones included), so that padding the answer with extra boxes, duplicates of a true box or one box per phrase
    costs in proportion. AP and the empty cases are those of `od_ap_reward`.

    Example:
    ```python
    >>> from trl_perception.rewards import od_length_reward

    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]
    >>> od_length_reward(['[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [0, 0, 10, 10], "label": "cat"}]'], [gt])
    [0.5]

    ```
    """
    return _LENGTH(completions, solution, **kwargs)


def od_weighted_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    VLM-R1's weighted-sum detection reward with its bugs fixed:

    $$ r = 0.7\,\frac{\sum_{TP} IoU}{\max(|G|, |P|)} + 0.3\left(1 - \frac{miss + false\_alarm}{2}\right), $$

    $miss = (|G| - TP)/|G|$, $false\_alarm = (|P| - TP)/|P|$, where the $TP$ pairs come from class-aware
    Hungarian matching (`matching.match_boxes`) at IoU ≥ 0.5 with the plain continuous IoU, and $|P|$ counts
    every listed item. Fixed against VLM-R1: a wrongly labelled box no longer uses up a ground-truth box
    (class-aware matching), a missing label no longer reuses the previous one or crashes, boxes are compared
    in the right frame, thin boxes no longer get IoU 0 from the +1-pixel convention, `[]` counts as an empty
    answer like `None`; and the location term averages over $\max(|G|, |P|)$ rather than $|G|$, so that a
    spray of boxes that happens to cover the objects no longer earns as much as an honest partial answer.
    Empty cases as `od_ap_reward`.

    Example:
    ```python
    >>> from trl_perception.rewards import od_weighted_reward

    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "dog"}]
    >>> od_weighted_reward(['[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]', '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]'], [gt, gt])
    [0.575, 0.0]

    ```
    """
    return _WEIGHTED(completions, solution, **kwargs)
