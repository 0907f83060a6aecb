"""Matching predicted to ground-truth objects: bipartite (Hungarian, via scipy), or sequential (the i-th
prediction with the i-th ground truth, Perception-R1's "w/o reward matching" ablation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .boxes import box_iou

__all__ = [
    "MATCHINGS",
    "check_matching",
    "hungarian_match",
    "match_boxes",
    "match_points",
    "sequential_match",
]

MATCHINGS: tuple[str, ...] = ("hungarian", "sequential")
"""How predictions are paired with ground truth: the assignment that maximises the reward (Hungarian), or in
the order written (sequential: the i-th prediction with the i-th ground-truth object)."""

_EMPTY = np.zeros(0, dtype=np.int64)
_MAX_SAFE_COST = 1e100


def hungarian_match(
    cost: Sequence | np.ndarray, max_cost: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of rows to columns of a (possibly rectangular) cost matrix.

    Non-finite costs are treated as "cannot match": they are replaced by a large finite cost before
    solving (scipy raises on NaN and on infeasible matrices) and such pairs are dropped from the result.

    Args:
        cost (`array-like [N, M]`): cost of assigning row `i` to column `j`.
        max_cost (`float`, *optional*): pairs whose cost exceeds it are dropped after solving.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: matched row indices and column indices, sorted by row.

    Example:
    ```python
    >>> rows, cols = hungarian_match([[4, 1, 3], [2, 0, 5]])
    >>> rows.tolist(), cols.tolist()
    ([0, 1], [1, 0])

    ```
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {c.shape}")
    if c.size == 0:
        return _EMPTY, _EMPTY
    finite = np.isfinite(c)
    work = c
    peak = float(np.abs(c[finite]).max()) if finite.any() else 0.0
    if peak > _MAX_SAFE_COST:
        # Rescaling keeps the optimum; it stops the substitute below (and scipy's sums) overflowing to inf,
        # which made scipy raise "cost matrix is infeasible".
        work, peak = c / peak, 1.0
    if not finite.all():
        work = np.where(finite, work, (peak + 1.0) * (c.shape[0] + c.shape[1] + 1))
    rows, cols = linear_sum_assignment(work)
    keep = finite[rows, cols]
    if max_cost is not None:
        keep &= c[rows, cols] <= max_cost
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def check_matching(matching: str) -> str:
    """`matching` if it names one of `MATCHINGS`, else `ValueError`.

    Example:
    ```python
    >>> check_matching("sequential")
    'sequential'

    ```
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    return matching


def sequential_match(n_pred: int, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair the i-th prediction with the i-th ground-truth object, in the order written, for
    `i < min(n_pred, n_gt)`; the rest stay unmatched. This is Perception-R1's Table 5 ablation "w/o reward
    matching": the reward then depends on the order the model lists objects in.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: matched prediction indices and ground-truth indices.

    Example:
    ```python
    >>> rows, cols = sequential_match(3, 2)
    >>> rows.tolist(), cols.tolist()
    ([0, 1], [0, 1])

    ```
    """
    k = np.arange(max(min(int(n_pred), int(n_gt)), 0), dtype=np.int64)
    return k, k.copy()


def match_boxes(
    pred: Sequence | np.ndarray,
    gt: Sequence | np.ndarray,
    iou_threshold: float = 0.5,
    pred_labels: Sequence[str] | None = None,
    gt_labels: Sequence[str] | None = None,
    matching: str = "hungarian",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching of predicted to ground-truth `xyxy` boxes that maximises the total IoU.

    With labels, a pair whose labels differ counts as IoU 0, so matching is class-aware: a box can only
    be credited to a ground-truth object of its own class. Only pairs with IoU ≥ `iou_threshold` (inclusive)
    and IoU > 0 take part, so the result maximises the total IoU of the kept pairs.

    Args:
        pred (`array-like [N, 4]`), gt (`array-like [M, 4]`): boxes in the same frame.
        iou_threshold (`float`): minimum IoU for a kept pair.
        pred_labels, gt_labels (`Sequence[str]`, *optional*): class names, compared exactly.
        matching (`str`): `"hungarian"`, or `"sequential"` to pair the i-th boxes of both lists
            (`sequential_match`), keeping those pairs that pass the same tests.

    Returns:
        `tuple`: `(pred_idx, gt_idx, ious)` of the kept pairs.

    Example:
    ```python
    >>> p, g, iou = match_boxes([[0, 0, 10, 10], [20, 20, 30, 30]], [[21, 20, 31, 30], [0, 0, 10, 10]])
    >>> p.tolist(), g.tolist(), iou.round(3).tolist()
    ([0, 1], [1, 0], [1.0, 0.818])

    ```
    """
    ious = box_iou(pred, gt)
    if ious.size == 0:
        return _EMPTY, _EMPTY, np.zeros(0)
    if pred_labels is not None and gt_labels is not None:
        same = np.asarray(pred_labels, dtype=object)[:, None] == np.asarray(gt_labels, dtype=object)[None, :]
        ious = np.where(same, ious, 0.0)
    # Pairs below the threshold can never be kept, so they must not compete in the assignment either:
    # otherwise two sub-threshold pairs (0.34 + 0.19) can outweigh, and so remove, one kept pair (0.51).
    eligible = (ious >= iou_threshold) & (ious > 0)
    if check_matching(matching) == "sequential":
        rows, cols = sequential_match(*ious.shape)
    else:
        rows, cols = hungarian_match(-np.where(eligible, ious, 0.0))
    keep = eligible[rows, cols]
    return rows[keep], cols[keep], ious[rows, cols][keep]


def match_points(
    pred: Sequence | np.ndarray, gt: Sequence | np.ndarray, matching: str = "hungarian"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching of points minimising the total Euclidean distance (or, with
    `matching="sequential"`, the i-th point of each list paired, `sequential_match`).

    Returns `(pred_idx, gt_idx, distances)`; `min(N, M)` pairs are matched.

    Example:
    ```python
    >>> p, g, d = match_points([[0, 0], [10, 10]], [[11, 10], [0, 1]])
    >>> p.tolist(), g.tolist(), d.tolist()
    ([0, 1], [1, 0], [1.0, 1.0])
    >>> match_points([[0, 0], [10, 10]], [[11, 10], [0, 1]], matching="sequential")[2].round(2).tolist()
    [14.87, 13.45]

    ```
    """
    check_matching(matching)
    a = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    if len(a) == 0 or len(b) == 0:
        return _EMPTY, _EMPTY, np.zeros(0)
    if matching == "sequential":
        rows, cols = sequential_match(len(a), len(b))
        return rows, cols, np.sqrt(((a[rows] - b[cols]) ** 2).sum(-1))
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    rows, cols = hungarian_match(dist)
    return rows, cols, dist[rows, cols]
