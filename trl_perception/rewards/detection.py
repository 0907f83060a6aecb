"""Detection reward: Perception-R1's multi-subject reward (format, F1 number reward, IoU location reward,
classification reward, missing / false-positive penalty) on class-aware Hungarian matching, in [0, 1]."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..boxes import box_iou
from ..formats import parse_objects
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

__all__ = ["MAX_DETECTIONS", "detection_reward", "make_detection_reward"]

_TASKS = ("detection",)
_COMPONENTS = ("format", "f1", "location", "classification", "penalty", "parse_failure")

MAX_DETECTIONS = 300
"""Predicted boxes considered per completion (bounds the O(n³) matching); later ones are false positives."""

_DEFAULT_WEIGHTS = {"format": 0.25, "number": 0.75, "location": 1.0, "classification": 1.0}
_DEFAULT_PENALTY = 0.5


def _detection_target(solution: Any) -> tuple[np.ndarray, list[str]]:
    """Ground-truth boxes `[M, 4]` and normalised labels."""
    value = decode_json(solution)
    if value is None:
        raise MalformedSolution("detection solution is missing")
    if not isinstance(value, (list, tuple)):
        raise MalformedSolution(f"detection solution must be a list of objects, got {type(value).__name__}")
    boxes, labels = [], []
    for k, item in enumerate(value):
        if not isinstance(item, dict):
            raise MalformedSolution(f"detection object {k} must be a dict, got {item!r}")
        label = normalize_label(item.get("label", item.get("name", item.get("category"))))
        if label is None:
            raise MalformedSolution(f"detection object {k} has no label: {item!r}")
        boxes.append(item.get("bbox_2d", item.get("bbox")))
        labels.append(label)
    return gt_boxes(boxes, "detection object box"), labels


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
        name: str | None = None,
    ):
        given = {
            "format": format_weight,
            "number": number_weight,
            "location": location_weight,
            "classification": classification_weight,
        }
        self.weights = {k: float(_DEFAULT_WEIGHTS[k] if v is None else v) for k, v in given.items()}
        default_penalty = 0.0 if released_code else _DEFAULT_PENALTY
        self.penalty_weight = float(default_penalty if penalty_weight is None else penalty_weight)
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
        self.__name__ = name or ("detection_released_reward" if self.released_code else "detection_reward")

    @property
    def max_reward(self) -> float:
        """The reward of a perfect answer: 1.0, or the sum of the weights (3.0) with `released_code=True`."""
        return self.total_weight if self.released_code else 1.0

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}_weight={v}" for k, v in self.weights.items())
        return (
            f"{type(self).__name__}({weights}, penalty_weight={self.penalty_weight}, "
            f"iou_threshold={self.iou_threshold}, released_code={self.released_code}, name={self.__name__!r})"
        )

    def components(self, row: Row, target: tuple[np.ndarray, list[str]] | None = None) -> dict[str, float]:
        """Reward components of one row (before weighting); raises `MalformedSolution` for a bad solution."""
        gt, gt_labels = _detection_target(row.solution) if target is None else target
        parsed = parse_objects(row.text, row.frame.box_format)
        kept = [(obj.bbox, normalize_label(obj.label)) for obj in parsed.objects if obj.bbox is not None]
        kept = [(box, label) for box, label in kept if label is not None]
        rejected = parsed.rejected + len(parsed.objects) - len(kept)
        empty = not kept and is_empty_answer(row.text)
        failed = float(not kept and not empty and not parsed.valid)
        if len(gt_labels) == 0:
            # A negative image: only the empty answer is right; anything else must not pay (hallucination).
            full = 1.0 if empty else 0.0
            return {
                "format": full,
                "f1": full,
                "location": full,
                "classification": full,
                "penalty": 1 - full,
                "parse_failure": failed,
                "empty_gt": 1.0,
            }
        if not kept:
            return {
                "format": 0.0,
                "f1": 0.0,
                "location": 0.0,
                "classification": 0.0,
                "penalty": 1.0,
                "parse_failure": failed,
            }
        fmt = 0.0 if (not parsed.valid or parsed.truncated) else len(kept) / (len(kept) + rejected)
        considered = kept[: self.max_detections]
        boxes = row.frame.to_pixels(np.asarray([box for box, _ in considered], dtype=np.float64))
        labels = [label for _, label in considered]
        overlaps = box_iou(boxes, gt) >= self.iou_threshold
        same = np.asarray(labels, dtype=object)[:, None] == np.asarray(gt_labels, dtype=object)[None, :]
        correct_pairs = overlaps & same
        if correct_pairs.any():
            _, _, matched_ious = match_boxes(boxes, gt, self.iou_threshold, labels, gt_labels)
        else:  # no pair of the same class overlaps enough: nothing to match
            matched_ious = np.zeros(0)
        n_pred, n_gt, tp = len(kept), len(gt_labels), len(matched_ious)
        f1 = 2.0 * tp / (n_pred + n_gt)
        location = float(matched_ious.mean()) if tp else 0.0
        # Classification: of the predictions that localise some object (IoU >= threshold, any class), the
        # share labelled like an object they localise. Listing k labels at one place earns 1/k, not 1.
        localized = overlaps.any(axis=1)
        correct = correct_pairs.any(axis=1)
        classification = float(correct[localized].mean()) if localized.any() else 0.0
        penalty = 0.5 * ((n_pred - tp) / n_pred + (n_gt - tp) / n_gt)
        return {
            "format": fmt,
            "f1": f1,
            "location": location,
            "classification": classification,
            "penalty": penalty,
            "parse_failure": 0.0,
        }

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

    def _score(self, row: Row, target: tuple[np.ndarray, list[str]]) -> tuple[float, dict[str, float]]:
        components = self.components(row, target)
        return self.combine(components), components

    def __call__(self, completions: list, solution: list, **kwargs: Any) -> list[float | None]:
        name = self.__name__
        rows, n = select_rows(name, _TASKS, completions, solution, kwargs)
        rewards: list[float | None] = [None] * n
        log = ComponentLog(name, n, _COMPONENTS)
        targets = SolutionCache(_detection_target)
        for row in rows:
            result = call_safely(
                name,
                row,
                lambda r: self._score(r, targets(r.solution)),
                failure=(0.0, {"parse_failure": 1.0}),
            )
            if result is None:
                continue
            rewards[row.index], components = result
            log.set(row.index, **{k: v for k, v in components.items() if k in _COMPONENTS})
        log.emit(kwargs)
        return rewards


def make_detection_reward(
    format_weight: float | None = None,
    number_weight: float | None = None,
    location_weight: float | None = None,
    classification_weight: float | None = None,
    penalty_weight: float | None = None,
    iou_threshold: float = 0.5,
    released_code: bool = False,
    max_detections: int = MAX_DETECTIONS,
    name: str | None = None,
) -> _DetectionReward:
    r"""
    A detection reward with its weights bound, as a named, picklable callable (see `detection_reward` for the
    components).

    Default weights: format 0.25, number (F1) 0.75, location 1.0, classification 1.0, penalty 0.5. The
    reward is $(\sum_c w_c\,c - w_{pen}\,pen) / (w_{fmt} + w_{num} + w_{loc} + w_{cls})$ clipped to [0, 1].

    With `released_code=True` it reproduces the weighting of Perception-R1's released `pr1_detection` reward
    for comparison: $0.25\,fmt + 0.75\,F1 + cls + IoU$, no penalty (the released script sets
    `DO_PENAIlty=False`; pass `penalty_weight=0.5` for the code's default), not normalised, capped at 3, so
    **the range is [0, 3]**. Our matching and bug fixes still apply in that mode: class-aware Hungarian
    matching on IoU instead of the pixel-L1 DETR cost, no class-index off-by-one (`toothbrush` works),
    inverted boxes are false positives rather than a crash, `[]` on a negative image earns full credit and
    any box earns 0, and classification is measured on localised predictions.

    Args:
        format_weight, number_weight, location_weight, classification_weight, penalty_weight (`float`,
            *optional*): non-negative weights (defaults above).
        iou_threshold (`float`): a predicted box matches a ground-truth box when IoU ≥ this (inclusive).
        released_code (`bool`): the released code's weighting and [0, 3] range.
        max_detections (`int`): predicted boxes considered per completion; later ones are false positives.
        name (`str`, *optional*): the reward's `__name__` (TRL's column name).

    Example:
    ```python
    >>> from trl_perception.rewards import make_detection_reward

    >>> released = make_detection_reward(released_code=True)
    >>> released.__name__, released(['[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]'], [[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]])
    ('detection_released_reward', [3.0])

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
        name=name,
    )


_DEFAULT_REWARD = _DetectionReward()


def detection_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    Reward for object detection: Perception-R1's multi-subject reward, normalised to [0, 1].

    The completion is parsed with `formats.parse_objects` (family-aware through `box_format`). Kept items have
    a box and a label; labels are lower-cased, trimmed and whitespace-collapsed, boxes are converted to the
    ground truth's frame (original pixels; see `iou_reward` for the frame columns) and clipped to the image.
    Only the first `MAX_DETECTIONS` (300) boxes are matched; later ones count as false positives. True
    positives $TP$ come from class-aware Hungarian matching maximising IoU (`matching.match_boxes`), keeping
    pairs with **IoU ≥ 0.5** (inclusive). With $N_p$ kept predictions and $N_g$ ground-truth objects:

    - format $fmt$ = kept / (kept + rejected items); 0 when no answer structure is found or it is truncated;
    - number reward $F1 = 2\,TP / (N_p + N_g)$;
    - location reward $loc$ = mean IoU over the $TP$ pairs (0 if none);
    - classification reward $cls$ = among predictions that localise some ground-truth box (IoU ≥ 0.5, any
      class), the share whose label equals that of a box they localise (0 if none): listing every class at
      one location earns 1/k, not 1;
    - missing / false-positive penalty $pen = \tfrac12\,[(N_p - TP)/N_p + (N_g - TP)/N_g]$.

    $$ r = \operatorname{clip}_{[0,1]}\frac{0.25\,fmt + 0.75\,F1 + loc + cls - 0.5\,pen}{0.25 + 0.75 + 1 + 1} $$

    A negative image (solution `[]`) gives 1.0 to an empty answer (`[]`, empty text, `None`) and 0.0 to
    anything else, so hallucinated boxes never pay. An empty, unparseable or truncated-to-nothing answer on a
    non-empty image gives 0.0. Labels absent from the ground truth are false positives. A malformed solution
    gives `None` with a logged warning. `make_detection_reward` changes the weights or reproduces the
    released code's weighting.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        solution (`list`): per completion, `[{"bbox_2d": [x1, y1, x2, y2], "label": name}, ...]` in absolute
            pixels of the image (native or JSON strings).
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
    [1.0, 0.875, 1.0]

    ```
    """
    return _DEFAULT_REWARD(completions, solution, **kwargs)
