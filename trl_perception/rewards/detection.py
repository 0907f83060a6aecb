"""Detection reward: Perception-R1's multi-subject reward (format, F1 number reward, IoU location reward,
classification reward, missing / false-positive penalty) on class-aware matching, made precision-aware so
that spraying boxes does not pay; the released code's weighting as an option."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..boxes import box_iou
from ..formats import parse_boxes
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


class _Group:
    """Pending rows that share one ground truth (the rollouts of a GRPO prompt): their predictions are
    stacked and scored against it in one IoU matrix."""

    def __init__(self, gt: np.ndarray, gt_ids: np.ndarray):
        self.gt, self.gt_ids = gt, gt_ids
        self.rows: list[int] = []  # batch index per row
        self.fmt: list[float] = []
        self.n_pred: list[int] = []  # all kept predictions, including those beyond max_detections
        self.n_considered: list[int] = []
        self.coords: list[float] = []  # considered predicted boxes of every row, as written, flattened
        self.labels: list[int] = []
        self.frames: list[Frame] = []  # one per row


class _Pending:
    """The rows of one call that need box matching, grouped by ground truth."""

    def __init__(self) -> None:
        self.groups: list[_Group] = []
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
        boxes: list[Any],
        label_ids: list[int],
        n_pred: int,
        fmt: float,
        target: tuple[np.ndarray, list[str]],
    ) -> None:
        if target is not self._last_target:  # the rows of a GRPO group share one decoded target
            self._last_target = target
            gt_ids = np.array([self.label_id(label) for label in target[1]], dtype=np.int64)
            self.groups.append(_Group(target[0], gt_ids))
        group = self.groups[-1]
        group.rows.append(index)
        group.fmt.append(fmt)
        group.n_pred.append(n_pred)
        group.n_considered.append(len(boxes))
        group.coords.extend(itertools.chain.from_iterable(boxes))
        group.labels.extend(label_ids)
        group.frames.append(frame)


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
        self, row: Row, target: tuple[np.ndarray, list[str]], pending: _Pending
    ) -> dict[str, float] | None:
        """Components of a row that needs no matching, or `None` after queueing the row in `pending`."""
        parsed = parse_boxes(row.text, row.frame.box_format)
        labels = pending.label_ids_of(parsed.labels)
        boxes = parsed.boxes
        if -1 in labels:  # a label of nothing but whitespace: not a labelled box
            keep = [k for k, label in enumerate(labels) if label >= 0]
            boxes, labels = [boxes[k] for k in keep], [labels[k] for k in keep]
        n_kept = len(labels)
        rejected = parsed.rejected + len(parsed.labels) - n_kept
        if not n_kept or not target[1]:
            empty = not n_kept and is_empty_answer(row.text)
            failed = float(not n_kept and not empty and not parsed.valid)
            if not target[1]:
                # A negative image: only the empty answer is right; anything else must not pay.
                full = 1.0 if empty else 0.0
                return {"format": full, "f1": full, "location": full, "classification": full,
                        "penalty": 1 - full, "parse_failure": failed, "empty_gt": 1.0}  # fmt: skip
            return {"format": 0.0, "f1": 0.0, "location": 0.0, "classification": 0.0, "penalty": 1.0,
                    "parse_failure": failed}  # fmt: skip
        fmt = 0.0 if (not parsed.valid or parsed.truncated) else n_kept / (n_kept + rejected)
        cap = self.max_detections
        pending.add(row.index, row.frame, boxes[:cap], labels[:cap], n_kept, fmt, target)
        return None

    # ---------------------------------------------------------------------------------------- batched

    def _match_group(self, group: _Group) -> list[dict[str, float]]:
        """Components of the rows of one group, from one IoU matrix of all their predictions against the
        shared ground truth; rows are contiguous blocks of its rows."""
        n_con = np.array(group.n_considered, dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(n_con)[:-1]))
        raw = np.array(group.coords, dtype=np.float64).reshape(-1, 4)
        frames = group.frames
        if all(frame is frames[0] for frame in frames):
            boxes = frames[0].to_pixels(raw)
        else:
            boxes = Frame.stack_to_pixels(
                raw, [f for f, n in zip(frames, group.n_considered) for _ in range(n)]
            )
        gt, n_g = group.gt, len(group.gt_ids)
        ious = box_iou(boxes, gt)
        same = np.asarray(group.labels, dtype=np.int64)[:, None] == group.gt_ids[None, :]
        hit = ious >= self.iou_threshold

        if self.released_code:
            # The released code's pairs: IoU >= threshold; matching maximises their total IoU.
            eligible = hit & same & (ious > 0)
            bonus = None
        else:
            # Every overlapping same-class pair can pay its IoU; matching first maximises the number of
            # pairs at IoU >= threshold (the F1 true positives), then the total IoU.
            eligible = same & (ious > 0)
            bonus = np.minimum(n_con, n_g) + 1.0
        if self.matching == "sequential":
            local = np.arange(len(boxes)) - np.repeat(starts, n_con)
            chosen = eligible & (local[:, None] == np.arange(n_g)[None, :])
        else:
            chosen = _assign(eligible, ious, hit, bonus, starts, n_con)
        chosen_hit = chosen & hit
        chosen_ious = np.where(chosen, ious, 0.0)
        # Per prediction, then summed per row in one pass. Classification: a prediction that localises some
        # object (IoU >= threshold, any class) is correct when it carries the label of an object it localises.
        per_prediction = np.column_stack(
            (
                hit.any(axis=1),
                (hit & same).any(axis=1),
                chosen_hit.sum(axis=1),
                chosen.sum(axis=1),
                chosen_ious.sum(axis=1),
                np.where(chosen_hit, chosen_ious, 0.0).sum(axis=1),
            )
        ).astype(np.float64)
        per_row = np.add.reduceat(per_prediction, starts, axis=0).tolist()

        out = []
        for r, (n_localized, n_correct, tp, n_chosen, iou_sum, tp_iou_sum) in enumerate(per_row):
            n_p, t = group.n_pred[r], int(tp)
            penalty = 0.5 * ((n_p - t) / n_p + (n_g - t) / n_g)
            if self.released_code:
                location = tp_iou_sum / t if t else 0.0
                classification = n_correct / n_localized if n_localized else 0.0
                fmt = group.fmt[r]
            else:
                location = 2.0 * iou_sum / (n_p + n_g) if n_chosen else 0.0
                classification = n_correct / max(n_p, n_g)
                fmt = group.fmt[r] * min(1.0, n_g / n_p)
            out.append({"format": fmt, "f1": 2.0 * t / (n_p + n_g), "location": location,
                        "classification": classification, "penalty": penalty, "parse_failure": 0.0})  # fmt: skip
        return out

    # ------------------------------------------------------------------------------------------- total

    def combine(self, c: dict[str, float]) -> float:
        """Weighted sum of the components, normalised to [0, 1] (or capped at 3 with `released_code`)."""
        if c.get("empty_gt"):
            return self.max_reward * c["format"]
        w = self.weights
        total = (
            w["format"] * c["format"]
            + w["number"] * c["f1"]
            + w["location"] * c["location"]
            + w["classification"] * c["classification"]
            - self.penalty_weight * c["penalty"]
        )
        if not self.released_code:
            total /= self.total_weight
        value = min(max(total, 0.0), self.max_reward)
        return value if math.isfinite(value) else 0.0

    def __call__(self, completions: list, solution: list, **kwargs: Any) -> list[float | None]:
        name = self.__name__
        rows, n = select_rows(name, _TASKS, completions, solution, kwargs)
        rewards: list[float | None] = [None] * n
        log = ComponentLog(name, n, _COMPONENTS)
        targets = SolutionCache(_detection_target)
        pending = _Pending()
        failure = {"parse_failure": 1.0}
        for row in rows:
            result = call_safely(name, row, lambda r: self._prepare(r, targets(r.solution), pending), failure)
            if result is None:
                continue  # queued for matching, or a malformed solution (reward None)
            rewards[row.index] = 0.0 if result is failure else self.combine(result)
            log.set(row.index, **{k: v for k, v in result.items() if k in _COMPONENTS})
        for group in pending.groups:
            try:
                matched = self._match_group(group)
            except Exception as err:  # noqa: BLE001 - scoring must never raise on model output
                warn_row(
                    f"{name}-error",
                    f"{name}: rows {group.rows} scored 0.0 after an unexpected {type(err).__name__}: {err}",
                )
                matched = [failure] * len(group.rows)
            for index, components in zip(group.rows, matched):
                rewards[index] = 0.0 if components is failure else self.combine(components)
                log.set(index, **components)
        log.emit(kwargs)
        return rewards


def _assign(
    eligible: np.ndarray,
    ious: np.ndarray,
    hit: np.ndarray,
    bonus: np.ndarray | None,
    starts: np.ndarray,
    n_con: np.ndarray,
) -> np.ndarray:
    """The pairs a maximum-weight one-to-one assignment over the eligible pairs keeps, for each block of
    rows `starts[r] : starts[r] + n_con[r]` (one completion each) of an `[N, M]` pair matrix. A pair weighs
    its IoU, plus `bonus[r]` when it is a hit (so that the number of hits comes first).

    A block where no prediction and no ground-truth object has two eligible partners needs no solver: its
    eligible pairs are disjoint, so they are the assignment. Only the other blocks call scipy."""
    chosen = eligible.copy()
    conflicted = (np.add.reduceat(eligible.sum(axis=1) > 1, starts) > 0) | (
        np.add.reduceat(eligible, starts, axis=0) > 1
    ).any(axis=1)
    if not conflicted.any():
        return chosen
    for r in np.flatnonzero(conflicted).tolist():
        start = int(starts[r])
        stop = start + int(n_con[r])
        mask = eligible[start:stop]
        gains = np.where(mask, ious[start:stop], 0.0)
        if bonus is not None:
            gains += np.where(mask & hit[start:stop], bonus[r], 0.0)
        rr, cc = linear_sum_assignment(gains, maximize=True)
        rr += start
        keep = eligible[rr, cc]
        chosen[start:stop] = False
        chosen[rr[keep], cc[keep]] = True
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
