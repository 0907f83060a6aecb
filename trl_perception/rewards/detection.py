"""Detection reward: Perception-R1's multi-subject reward (format, F1 number reward, IoU location reward,
classification reward, missing / false-positive penalty) on class-aware matching, made precision-aware so
that spraying boxes does not pay; the released code's weighting as an option."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..boxes import box_iou, paired_box_iou
from ..formats import BoxBatch, parse_boxes_batch
from ..frames import Frame
from ..matching import check_matching
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
    warn_row,
)

__all__ = ["MAX_DETECTIONS", "detection_reward", "make_detection_reward"]

_TASKS = ("detection",)
_COMPONENTS = ("format", "f1", "location", "classification", "penalty", "parse_failure")

MAX_DETECTIONS = 300
"""Predicted boxes considered per completion (bounds the O(n³) matching); later ones are false positives."""

_DEFAULT_WEIGHTS = {"format": 0.25, "number": 0.75, "location": 1.0, "classification": 1.0}


def _detection_target(solution: Any) -> tuple[np.ndarray, list[str]]:
    """Ground-truth boxes `[M, 4]` and normalised labels."""
    value = decode_json(solution)
    if isinstance(value, np.ndarray):  # `datasets` may hand a column of dicts over as an object array
        value = value.tolist()
    if value is None:
        raise MalformedSolution("detection solution is missing")
    if not isinstance(value, (list, tuple)):
        raise MalformedSolution(f"detection solution must be a list of objects, got {type(value).__name__}")
    if not all(isinstance(item, dict) for item in value):
        k, item = next((k, item) for k, item in enumerate(value) if not isinstance(item, dict))
        raise MalformedSolution(f"detection object {k} must be a dict, got {item!r}")
    raw_labels = [item.get("label", item.get("name", item.get("category"))) for item in value]
    labels = [normalize_label(label) for label in raw_labels]
    if None in labels:
        k = labels.index(None)
        raise MalformedSolution(f"detection object {k} has no label: {value[k]!r}")
    boxes = [item.get("bbox_2d", item.get("bbox")) for item in value]
    return gt_boxes(boxes, "detection object box"), labels


class _Pending:
    """The rows of one call that need box matching, in batch order: their considered predictions stacked,
    and the ground truth of each GRPO group (consecutive rows sharing one decoded target) stored once."""

    def __init__(self) -> None:
        self.rows: list[int] = []  # batch index per row
        self.fmt: list[float] = []
        self.n_pred: list[int] = []  # all kept predictions, including those beyond max_detections
        self.n_considered: list[int] = []
        self.n_gt: list[int] = []
        self.group: list[int] = []  # group index per row
        self.frames: list[Frame] = []
        self.boxes: np.ndarray = np.zeros((0, 4))  # the parsed boxes of the call, as written
        self.index: list[int] = []  # the rows of `boxes` each queued row considers, row after row
        self.labels: list[int] = []
        self.gts: list[np.ndarray] = []  # per group
        self.gt_ids: list[np.ndarray] = []
        self.label_ids: dict[str, int] = {}
        self._last_target: Any = None
        self._raw_ids: dict[str, int] = {}

    def label_ids_of(self, labels: list[str]) -> list[int]:
        """An id per label, equal for labels equal after `normalize_label`; -1 for a label that normalises
        to nothing. Each distinct label is normalised once per call."""
        found = list(map(self._raw_ids.get, labels))
        if None in found:
            found = [self._new_label(label) if k is None else k for k, label in zip(found, labels)]
        return found  # type: ignore[return-value]

    def _new_label(self, label: str) -> int:
        normalized = normalize_label(label)
        found = -1 if normalized is None else self.label_id(normalized)
        self._raw_ids[label] = found
        return found

    def label_id(self, label: str) -> int:
        """The id of a normalised label."""
        ids = self.label_ids
        found = ids.get(label)
        if found is None:
            found = ids[label] = len(ids)
        return found

    def add(
        self,
        index: int,
        frame: Frame,
        boxes: Sequence[int],
        label_ids: list[int],
        n_pred: int,
        fmt: float,
        target: tuple[np.ndarray, list[str]],
    ) -> None:
        if target is not self._last_target:  # the rows of a GRPO group share one decoded target
            self._last_target = target
            self.gts.append(target[0])
            self.gt_ids.append(np.array([self.label_id(label) for label in target[1]], dtype=np.int64))
        self.rows.append(index)
        self.fmt.append(fmt)
        self.n_pred.append(n_pred)
        self.n_considered.append(len(boxes))
        self.n_gt.append(len(target[1]))
        self.group.append(len(self.gts) - 1)
        self.frames.append(frame)
        self.index.extend(boxes)
        self.labels.extend(label_ids)

    def group_spans(self) -> list[tuple[int, int]]:
        """`(first row, end row)` of each group, in order."""
        bounds = [k for k in range(1, len(self.group)) if self.group[k] != self.group[k - 1]]
        edges = [0, *bounds, len(self.group)]
        return list(zip(edges[:-1], edges[1:]))


class _DetectionReward:
    """`detection_reward` with its weights bound; a class (not a closure) so that it pickles."""

    def __init__(
        self,
        format_weight: float | None = None,
        number_weight: float | None = None,
        location_weight: float | None = None,
        classification_weight: float | None = None,
        penalty_weight: float | None = None,
        iou_threshold: float = 0.5,
        released_code: bool = False,
        max_detections: int = MAX_DETECTIONS,
        matching: str = "hungarian",
        name: str | None = None,
    ):
        given = {
            "format": format_weight,
            "number": number_weight,
            "location": location_weight,
            "classification": classification_weight,
        }
        self.weights = {k: float(_DEFAULT_WEIGHTS[k] if v is None else v) for k, v in given.items()}
        self.penalty_weight = float(0.0 if penalty_weight is None else penalty_weight)
        for key, weight in (*self.weights.items(), ("penalty", self.penalty_weight)):
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{key}_weight must be a finite number >= 0, got {weight}")
        self.total_weight = sum(self.weights.values())
        if self.total_weight <= 0:
            raise ValueError("at least one of the format/number/location/classification weights must be > 0")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.iou_threshold = float(iou_threshold)
        self.released_code = bool(released_code)
        self.max_detections = int(max_detections)
        self.matching = check_matching(matching)
        base = "detection_released" if self.released_code else "detection"
        self.__name__ = name or (f"{base}_reward" if self.matching == "hungarian" else f"{base}_{self.matching}_reward")

    @property
    def max_reward(self) -> float:
        """The reward of a perfect answer: 1.0, or the sum of the weights (3.0) with `released_code=True`."""
        return self.total_weight if self.released_code else 1.0

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}_weight={v}" for k, v in self.weights.items())
        return (
            f"{type(self).__name__}({weights}, penalty_weight={self.penalty_weight}, "
            f"iou_threshold={self.iou_threshold}, released_code={self.released_code}, "
            f"matching={self.matching!r}, name={self.__name__!r})"
        )

    # ---------------------------------------------------------------------------------------- one row

    def _prepare(
        self, row: Row, target: tuple[np.ndarray, list[str]], pending: _Pending, parsed: BoxBatch, k: int
    ) -> dict[str, float] | None:
        """Components of a row (the `k`-th of `parsed`) that needs no matching, or `None` after queueing the
        row in `pending`."""
        a, b = parsed.spans[k]
        labels = pending.label_ids_of(parsed.labels[a:b])
        boxes: Sequence[int] = range(a, b)  # rows of `parsed.coords`
        if -1 in labels:  # a label of nothing but whitespace: not a labelled box
            keep = [j for j, label in enumerate(labels) if label >= 0]
            boxes, labels = [a + j for j in keep], [labels[j] for j in keep]
        n_kept = len(labels)
        rejected = parsed.rejected[k] + (b - a) - n_kept
        if not n_kept or not target[1]:
            empty = not n_kept and is_empty_answer(row.text)
            failed = float(not n_kept and not empty and not parsed.valid[k])
            if not target[1]:
                # A negative image: only the empty answer is right; anything else must not pay.
                full = 1.0 if empty else 0.0
                return {"format": full, "f1": full, "location": full, "classification": full,
                        "penalty": 1 - full, "parse_failure": failed, "empty_gt": 1.0}  # fmt: skip
            return {"format": 0.0, "f1": 0.0, "location": 0.0, "classification": 0.0, "penalty": 1.0,
                    "parse_failure": failed}  # fmt: skip
        fmt = 0.0 if (not parsed.valid[k] or parsed.truncated[k]) else n_kept / (n_kept + rejected)
        cap = self.max_detections
        pending.add(row.index, row.frame, boxes[:cap], labels[:cap], n_kept, fmt, target)
        return None

    # ---------------------------------------------------------------------------------------- batched

    def _match_rows(self, pending: _Pending, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Components of the queued rows `lo:hi` (whole groups), computed for all of them at once.

        Only pairs of a prediction and a ground-truth object of the same label can be matched or be
        correct, so those pairs (a few per prediction) are listed by one join on (group, label), their IoU
        computed in one pass, and matching runs on that list; every row is then summed in one pass."""
        n_con = np.array(pending.n_considered[lo:hi], dtype=np.int64)
        n_rows = len(n_con)
        ends = np.cumsum(n_con)
        starts = ends - n_con
        first = sum(pending.n_considered[:lo])
        n = int(ends[-1])
        raw = pending.boxes[np.array(pending.index[first : first + n], dtype=np.int64)]
        frames = pending.frames[lo:hi]
        boxes = Frame.stack_to_pixels(raw, [f for f, k in zip(frames, n_con.tolist()) for _ in range(k)])
        labels = np.array(pending.labels[first : first + n], dtype=np.int64)
        groups = np.array(pending.group[lo:hi], dtype=np.int64)
        g_lo, g_hi = int(groups[0]), int(groups[-1]) + 1
        gt = np.concatenate(pending.gts[g_lo:g_hi]).reshape(-1, 4)
        gt_labels = np.concatenate(pending.gt_ids[g_lo:g_hi])
        n_gt_of_group = np.array([len(ids) for ids in pending.gt_ids[g_lo:g_hi]], dtype=np.int64)
        gt_group = np.repeat(np.arange(g_hi - g_lo), n_gt_of_group)
        gt_local = np.arange(len(gt_labels)) - np.repeat(np.cumsum(n_gt_of_group) - n_gt_of_group, n_gt_of_group)
        n_g = n_gt_of_group[groups - g_lo]
        row_of = np.repeat(np.arange(n_rows), n_con)

        # Same-label pairs: a join of predictions and objects on (group, label), in prediction order.
        n_labels = len(pending.label_ids) + 1
        gt_keys = gt_group * n_labels + gt_labels
        order = np.argsort(gt_keys, kind="stable")
        sorted_keys = gt_keys[order]
        keys = (groups[row_of] - g_lo) * n_labels + labels
        left = np.searchsorted(sorted_keys, keys, "left")
        counts = np.searchsorted(sorted_keys, keys, "right") - left
        pred = np.repeat(np.arange(n), counts)
        offsets = np.cumsum(counts) - counts
        obj = order[np.repeat(left - offsets, counts) + np.arange(len(pred))]
        ious = paired_box_iou(boxes[pred], gt[obj])
        hit = ious >= self.iou_threshold
        n_correct = np.zeros(n, dtype=bool)  # a prediction that localises an object of its own label
        n_correct[pred[hit]] = True
        if self.released_code:
            # The released code's pairs: IoU >= threshold (> 0); matching maximises their total IoU.
            keep = hit
            bonus = None
        else:
            # Every overlapping same-class pair can pay its IoU; matching first maximises the number of
            # pairs at IoU >= threshold (the F1 true positives), then the total IoU.
            keep = ious > 0
            bonus = np.minimum(n_con, n_g) + 1.0
        pred, obj, ious, hit = pred[keep], gt_local[obj[keep]], ious[keep], hit[keep]
        row = row_of[pred]
        if self.matching == "sequential":
            chosen = pred - starts[row] == obj
        else:
            chosen = _assign(pred, obj, row, ious, hit, bonus, starts, n_con, n_g)
        chosen_hit = chosen & hit
        tp = np.bincount(row[chosen_hit], minlength=n_rows).astype(np.float64)
        n_chosen = np.bincount(row[chosen], minlength=n_rows)
        iou_sum = np.bincount(row[chosen], weights=ious[chosen], minlength=n_rows)
        tp_iou_sum = np.bincount(row[chosen_hit], weights=ious[chosen_hit], minlength=n_rows)
        n_correct = np.add.reduceat(n_correct, starts).astype(np.float64)

        n_p = np.array(pending.n_pred[lo:hi], dtype=np.float64)
        n_gf = n_g.astype(np.float64)
        fmt = np.array(pending.fmt[lo:hi], dtype=np.float64)
        zeros = np.zeros(n_rows)
        if self.released_code:
            # Classification: of the predictions that localise some object (IoU >= threshold, any class),
            # the share that carries the label of an object it localises.
            localized = np.zeros(n, dtype=bool)
            for g in range(g_lo, g_hi):
                a, b = np.searchsorted(groups, [g, g + 1])
                p0, p1 = int(starts[a]), int(ends[b - 1])
                localized[p0:p1] = (box_iou(boxes[p0:p1], pending.gts[g]) >= self.iou_threshold).any(axis=1)
            n_localized = np.add.reduceat(localized, starts).astype(np.float64)
            location = np.divide(tp_iou_sum, tp, out=zeros.copy(), where=tp > 0)
            classification = np.divide(n_correct, n_localized, out=zeros.copy(), where=n_localized > 0)
        else:
            location = np.where(n_chosen > 0, 2.0 * iou_sum / (n_p + n_gf), 0.0)
            classification = n_correct / np.maximum(n_p, n_gf)
            fmt = fmt * np.minimum(1.0, n_gf / n_p)
        return {
            "format": fmt,
            "f1": 2.0 * tp / (n_p + n_gf),
            "location": location,
            "classification": classification,
            "penalty": 0.5 * ((n_p - tp) / n_p + (n_gf - tp) / n_gf),
            "parse_failure": zeros,
        }

    # ------------------------------------------------------------------------------------------- total

    def _total(self, c: Any) -> Any:
        """The weighted sum of the components (floats or arrays alike), normalised unless `released_code`."""
        w = self.weights
        total = (
            w["format"] * c["format"]
            + w["number"] * c["f1"]
            + w["location"] * c["location"]
            + w["classification"] * c["classification"]
            - self.penalty_weight * c["penalty"]
        )
        return total if self.released_code else total / self.total_weight

    def combine(self, c: dict[str, float]) -> float:
        """Weighted sum of the components, normalised to [0, 1] (or capped at 3 with `released_code`)."""
        if c.get("empty_gt"):
            return self.max_reward * c["format"]
        total = self._total(c)
        value = min(max(total, 0.0), self.max_reward)
        return value if math.isfinite(value) else 0.0

    def combine_many(self, c: dict[str, np.ndarray]) -> np.ndarray:
        """`combine` of many rows at once (no negative image among them), with the same arithmetic."""
        total = self._total(c)
        value = np.minimum(np.maximum(total, 0.0), self.max_reward)
        return np.where(np.isfinite(value), value, 0.0)

    def __call__(self, completions: list, solution: list, **kwargs: Any) -> list[float | None]:
        name = self.__name__
        rows, n = select_rows(name, _TASKS, completions, solution, kwargs)
        rewards: list[float | None] = [None] * n
        log = ComponentLog(name, n, _COMPONENTS)
        targets = SolutionCache(_detection_target)
        pending = _Pending()
        failure = {"parse_failure": 1.0}
        # Every answer of the call parsed at once (the common well-formed ones in bulk); never raises.
        parsed = parse_boxes_batch([row.text for row in rows], [row.frame.box_format for row in rows])
        pending.boxes = parsed.coords
        for k, row in enumerate(rows):
            result = call_safely(
                name, row, lambda r, k=k: self._prepare(r, targets(r.solution), pending, parsed, k), failure
            )
            if result is None:
                continue  # queued for matching, or a malformed solution (reward None)
            rewards[row.index] = 0.0 if result is failure else self.combine(result)
            log.set(row.index, **{k: v for k, v in result.items() if k in _COMPONENTS})
        if pending.rows:
            # All queued rows at once; should that ever fail, group by group, so one bad group costs only its rows.
            spans = [(0, len(pending.rows))]
            while spans:
                lo, hi = spans.pop(0)
                try:
                    components = self._match_rows(pending, lo, hi)
                except Exception as err:  # noqa: BLE001 - scoring must never raise on model output
                    if hi - lo == len(pending.rows) and len(pending.gts) > 1:
                        spans = pending.group_spans()
                        continue
                    indices = pending.rows[lo:hi]
                    warn_row(
                        f"{name}-error",
                        f"{name}: rows {indices} scored 0.0 after an unexpected {type(err).__name__}: {err}",
                    )
                    for index in indices:
                        rewards[index] = 0.0
                        log.set(index, **failure)
                    continue
                indices = pending.rows[lo:hi]
                for index, value in zip(indices, self.combine_many(components).tolist()):
                    rewards[index] = value
                log.set_rows(indices, **components)
        log.emit(kwargs)
        return rewards


def _first_best(key: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """For each distinct `key`, the position of its largest `weight` (the first of equal ones)."""
    order = np.lexsort((-weight, key))
    head = np.ones(len(order), dtype=bool)
    head[1:] = key[order[1:]] != key[order[:-1]]
    return order[head]


def _assign(
    pred: np.ndarray,
    obj: np.ndarray,
    row: np.ndarray,
    ious: np.ndarray,
    hit: np.ndarray,
    bonus: np.ndarray | None,
    starts: np.ndarray,
    n_con: np.ndarray,
    n_g: np.ndarray,
) -> np.ndarray:
    """Which of the eligible pairs (prediction `pred`, ground-truth object `obj` of row `row`) a
    maximum-weight one-to-one assignment keeps, row by row. A pair weighs its IoU, plus `bonus[row]` when
    it is a hit (so that the number of hits comes first).

    The pairs of a row form a bipartite graph, and the assignment is the best one of each of its connected
    parts. A part that is one pair, or a star (one prediction or object whose partners have no other
    partner), needs no solver: its best pair (the first of equal ones, which weigh, hit and pay the same).
    A row holding a pair whose prediction and object both have other partners is solved whole by scipy, on
    the same `[predictions, objects]` matrix as a row-by-row implementation would build."""
    width = int(n_g.max()) if len(n_g) else 0
    slot = row * width + obj  # (row, object)
    deg_p = np.bincount(pred, minlength=int(starts[-1] + n_con[-1]) if len(n_con) else 0)[pred]
    deg_g = np.bincount(slot, minlength=len(n_con) * width)[slot]
    multi_p, multi_g = deg_p > 1, deg_g > 1
    chosen = ~multi_p & ~multi_g  # pairs that are a whole part
    if chosen.all():
        return chosen
    weight = ious if bonus is None else ious + bonus[row] * hit
    star = np.flatnonzero(multi_p & ~multi_g)  # a prediction with several partners: its best one
    if star.size:
        chosen[star[_first_best(pred[star], weight[star])]] = True
    star = np.flatnonzero(multi_g & ~multi_p)  # an object with several partners: its best one
    if star.size:
        chosen[star[_first_best(slot[star], weight[star])]] = True
    hard = multi_p & multi_g
    for r in np.unique(row[hard]).tolist():
        in_row = np.flatnonzero(row == r)
        start, m = int(starts[r]), int(n_g[r])
        local = pred[in_row] - start
        gains = np.zeros((int(n_con[r]), m))
        gains[local, obj[in_row]] = weight[in_row]
        index = np.full((int(n_con[r]), m), -1)
        index[local, obj[in_row]] = in_row
        rr, cc = linear_sum_assignment(gains, maximize=True)
        picked = index[rr, cc]
        chosen[in_row] = False
        chosen[picked[picked >= 0]] = True
    return chosen


def make_detection_reward(
    format_weight: float | None = None,
    number_weight: float | None = None,
    location_weight: float | None = None,
    classification_weight: float | None = None,
    penalty_weight: float | None = None,
    iou_threshold: float = 0.5,
    released_code: bool = False,
    max_detections: int = MAX_DETECTIONS,
    matching: str = "hungarian",
    name: str | None = None,
) -> _DetectionReward:
    r"""
    A detection reward with its weights bound, as a named, picklable callable (see `detection_reward` for the
    components).

    Default weights: format 0.25, number (F1) 0.75, location 1.0, classification 1.0, penalty 0. The reward
    is $(\sum_c w_c\,c - w_{pen}\,pen) / (w_{fmt} + w_{num} + w_{loc} + w_{cls})$ clipped to [0, 1], with
    the precision-aware components of `detection_reward`, where misses and false positives already lower
    every term; `penalty_weight` adds the explicit missing / false-positive penalty on top.

    With `released_code=True` it reproduces the formula of Perception-R1's released `pr1_detection` reward
    for comparison: $0.25\,fmt + 0.75\,F1 + cls + IoU - w_{pen}\,pen$ with the released components (format
    share of well-formed items, F1 at IoU > threshold, mean IoU of the matched pairs, the share of the
    localised predictions labelled right, $pen = \tfrac12[(N_p - TP)/N_p + (N_g - TP)/N_g]$), not
    normalised and capped at 3, so **the range is [0, 3]**. Its penalty is off by default, as in the released
    training script (`DO_PENAIlty=False`); the released code's own default, `0.5 · (FP rate + FN rate)`, is
    `penalty_weight=1.0` here. Spraying boxes pays in this mode, as it does in the released code (see
    `detection_reward`). Our matching and bug fixes still apply: class-aware Hungarian matching on IoU
    instead of the pixel-L1 DETR cost, no class-index off-by-one (`toothbrush` works), inverted boxes are
    false positives rather than a crash, `[]` on a negative image earns full credit and any box earns 0.

    Args:
        format_weight, number_weight, location_weight, classification_weight, penalty_weight (`float`,
            *optional*): non-negative weights (defaults above).
        iou_threshold (`float`): a predicted box is a true positive when IoU ≥ this (inclusive).
        released_code (`bool`): the released code's components, weighting and [0, 3] range.
        max_detections (`int`): predicted boxes considered per completion; later ones are false positives.
        matching (`str`): `"hungarian"` (default), or `"sequential"` to pair the i-th predicted box with the
            i-th ground-truth object, Perception-R1's Table 5 ablation "w/o reward matching".
        name (`str`, *optional*): the reward's `__name__` (TRL's column name; default `detection_reward`,
            `detection_released_reward`, and `detection_sequential_reward` / `detection_released_sequential_reward`
            with sequential matching).

    Example:
    ```python
    >>> from trl_perception.rewards import make_detection_reward

    >>> released = make_detection_reward(released_code=True)
    >>> released.__name__, released(['[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]'], [[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]])
    ('detection_released_reward', [3.0])
    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 0, 30, 10], "label": "cat"}]
    >>> swapped = '[{"bbox_2d": [20, 0, 30, 10], "label": "cat"}, {"bbox_2d": [0, 0, 10, 10], "label": "cat"}]'
    >>> detection_reward = make_detection_reward()
    >>> detection_reward([swapped], [gt]), make_detection_reward(matching="sequential")([swapped], [gt])
    ([1.0], [0.4166666666666667])

    ```
    """
    return _DetectionReward(
        format_weight=format_weight,
        number_weight=number_weight,
        location_weight=location_weight,
        classification_weight=classification_weight,
        penalty_weight=penalty_weight,
        iou_threshold=iou_threshold,
        released_code=released_code,
        max_detections=max_detections,
        matching=matching,
        name=name,
    )


_DEFAULT_REWARDS = {matching: _DetectionReward(matching=matching) for matching in ("hungarian", "sequential")}


def detection_reward(
    completions: list, solution: list, matching: str = "hungarian", **kwargs: Any
) -> list[float | None]:
    r"""
    Reward for object detection: Perception-R1's multi-subject reward, made precision-aware (spraying boxes
    earns nearly nothing) and normalised to [0, 1].

    The completion is parsed with `formats.parse_objects` (aware of the `box_format`). Kept items have a box
    and a label; labels are lower-cased, trimmed and whitespace-collapsed, boxes are converted to the ground
    truth's frame (original pixels; see `iou_reward` for the frame columns) and clipped to the image. Only
    the first `MAX_DETECTIONS` (300) boxes are matched; later ones count as false positives. Predictions are
    matched one-to-one to ground-truth objects of the same label by the Hungarian algorithm, which first
    maximises the number of pairs with **IoU ≥ 0.5** (inclusive), the true positives $TP$, then the total
    IoU of all overlapping pairs. With $N_p$ kept predictions and $N_g$ ground-truth objects, every term
    pays per object, so that each false positive and each miss costs in every term:

    - format $fmt$ = kept / (kept + rejected items) · $\min(1, N_g / N_p)$; 0 when no answer structure is
      found or it is truncated;
    - number reward $F1 = 2\,TP / (N_p + N_g)$;
    - location reward $loc = 2\,\sum \mathrm{IoU} / (N_p + N_g)$ over the matched pairs (an F1 in which a pair
      counts its IoU, so a box at IoU 0.3 earns something and a sprayed grid nearly nothing);
    - classification reward $cls$ = the number of predictions that localise (IoU ≥ 0.5) a ground-truth
      object of their own label, divided by $\max(N_p, N_g)$: listing $k$ labels at one place earns $1/k$.

    $$ r = \operatorname{clip}_{[0,1]}\frac{0.25\,fmt + 0.75\,F1 + loc + cls}{0.25 + 0.75 + 1 + 1} $$

    Against one ground-truth box, 200 sliding windows score 0.012, an honest box at IoU 0.32 scores 0.19
    and a perfect one 1.0 (Perception-R1's formula, `make_detection_reward(released_code=True)`, gives the
    windows 2.10 of 3 and the honest box 0.25).

    A negative image (solution `[]`) gives 1.0 to an empty answer (`[]`, empty text, `None`) and 0.0 to
    anything else, so hallucinated boxes never pay. An empty, unparseable or truncated-to-nothing answer on a
    non-empty image gives 0.0. Labels absent from the ground truth are false positives. A malformed solution
    gives `None` with a logged warning. `make_detection_reward` changes the weights, adds the explicit
    missing / false-positive penalty, switches to sequential matching or reproduces the released code.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        solution (`list`): per completion, `[{"bbox_2d": [x1, y1, x2, y2], "label": name}, ...]` in absolute
            pixels of the image (native, numpy arrays as `datasets` may hand them over, or JSON strings).
        matching (`str`): `"hungarian"` (default), or `"sequential"` to pair the i-th predicted box with the
            i-th ground-truth object, Perception-R1's Table 5 ablation "w/o reward matching".
        **kwargs: `task`, `box_format`, `image_size`, `input_size` columns; `log_metric` / `log_extra`
            receive `detection_reward/{format,f1,location,classification,penalty,parse_failure}`.

    Returns:
        `list[float | None]`: one reward per completion.

    Example:
    ```python
    >>> from trl_perception.rewards import detection_reward

    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "dog"}]
    >>> detection_reward(['[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "Dog"}]',
    ...                   '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]', "[]"], [gt, gt, []])
    [1.0, 0.6388888888888888, 1.0]

    ```
    """
    return _DEFAULT_REWARDS[check_matching(matching)](completions, solution, **kwargs)
