"""Specification of `trl_perception.matching`: Hungarian assignment (optimal, rectangular, robust to NaN/inf),
IoU-maximising box matching (class-aware, inclusive threshold) and point matching."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trl_perception.boxes import box_iou
from trl_perception.matching import (
    check_matching,
    hungarian_match,
    match_boxes,
    match_points,
    sequential_match,
)

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

finite_cost = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
shapes = st.tuples(st.integers(1, 5), st.integers(1, 5))


def _assignments(n: int, m: int):
    """Every maximum one-to-one assignment of an n x m matrix, as (rows, cols) index tuples."""
    if n <= m:
        for cols in itertools.permutations(range(m), n):
            yield tuple(range(n)), cols
    else:
        for rows in itertools.permutations(range(n), m):
            yield rows, tuple(range(m))


def _brute_force_min(cost: np.ndarray) -> float:
    return min(cost[list(r), list(c)].sum() for r, c in _assignments(*cost.shape))


def _assert_one_to_one(rows, cols, shape):
    assert len(rows) == len(cols)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert all(0 <= r < shape[0] for r in rows) and all(0 <= c < shape[1] for c in cols)
    assert rows.tolist() == sorted(rows.tolist())


@st.composite
def boxes(draw, max_n=5, labels=None):
    n = draw(st.integers(0, max_n))
    out = []
    for _ in range(n):
        x, y = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        w, h = draw(st.integers(0, 30)), draw(st.integers(0, 30))
        out.append([x, y, x + w, y + h])
    arr = np.array(out, dtype=np.float64).reshape(n, 4)
    if labels is None:
        return arr
    return arr, [draw(st.sampled_from(labels)) for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# hungarian_match
# --------------------------------------------------------------------------------------------------


def test_hungarian_match_golden():
    rows, cols = hungarian_match([[4, 1, 3], [2, 0, 5], [3, 2, 2]])
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]


@given(cost=shapes.flatmap(lambda s: arrays(np.float64, s, elements=finite_cost)))
def test_hungarian_match_is_optimal_against_brute_force(cost):
    rows, cols = hungarian_match(cost)
    _assert_one_to_one(rows, cols, cost.shape)
    assert len(rows) == min(cost.shape)
    assert cost[rows, cols].sum() == pytest.approx(_brute_force_min(cost), rel=1e-9, abs=1e-6)


@given(cost=shapes.flatmap(lambda s: arrays(np.float64, s, elements=st.integers(0, 3).map(float))))
def test_hungarian_match_is_optimal_with_many_ties(cost):
    rows, cols = hungarian_match(cost)
    assert len(rows) == min(cost.shape)
    assert cost[rows, cols].sum() == _brute_force_min(cost)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (2, 4), (4, 2), (3, 3)])
def test_hungarian_match_rectangular_matches_min_side(shape):
    cost = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)[::-1]
    rows, cols = hungarian_match(cost)
    assert len(rows) == min(shape)
    _assert_one_to_one(rows, cols, shape)


@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (3, 0)])
def test_hungarian_match_on_an_empty_matrix_matches_nothing(shape):
    rows, cols = hungarian_match(np.zeros(shape))
    assert rows.tolist() == [] and cols.tolist() == []
    assert rows.dtype == np.int64 and cols.dtype == np.int64


def test_hungarian_match_rejects_non_matrices():
    with pytest.raises(ValueError):
        hungarian_match([1.0, 2.0])


def test_hungarian_match_max_cost_drops_expensive_pairs_after_solving():
    cost = [[1.0, 10.0], [10.0, 5.0]]
    rows, cols = hungarian_match(cost, max_cost=4.0)
    assert rows.tolist() == [0] and cols.tolist() == [0]
    rows, cols = hungarian_match(cost, max_cost=5.0)  # inclusive
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1]


@given(
    cost=shapes.flatmap(lambda s: arrays(np.float64, s, elements=finite_cost)),
    max_cost=finite_cost,
)
def test_hungarian_match_max_cost_filters_the_unbounded_assignment(cost, max_cost):
    rows, cols = hungarian_match(cost)
    kept_rows, kept_cols = hungarian_match(cost, max_cost=max_cost)
    keep = cost[rows, cols] <= max_cost
    assert kept_rows.tolist() == rows[keep].tolist() and kept_cols.tolist() == cols[keep].tolist()


def test_hungarian_match_never_returns_non_finite_pairs():
    nan, inf = np.nan, np.inf
    rows, cols = hungarian_match([[nan, 1.0], [2.0, inf]])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    rows, cols = hungarian_match([[nan, nan], [nan, 3.0]])
    assert rows.tolist() == [1] and cols.tolist() == [1]
    rows, cols = hungarian_match([[nan, -inf], [inf, nan]])
    assert rows.tolist() == [] and cols.tolist() == []


def test_hungarian_match_with_huge_finite_costs_next_to_nan_does_not_raise():
    # (max|cost| + 1) * (N + M + 1) used to overflow to inf, and scipy raised "cost matrix is infeasible".
    rows, cols = hungarian_match([[1e308, np.nan], [np.nan, np.nan]])
    assert rows.tolist() == [0] and cols.tolist() == [0]
    rows, cols = hungarian_match([[1e308, -1e308], [-1e308, 1e308]])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


special = st.sampled_from([np.nan, np.inf, -np.inf])


@given(
    cost=shapes.flatmap(
        lambda s: arrays(np.float64, s, elements=st.one_of(finite_cost, special, st.floats(allow_nan=True)))
    )
)
def test_hungarian_match_never_raises_on_any_floats(cost):
    rows, cols = hungarian_match(cost)
    _assert_one_to_one(rows, cols, cost.shape)
    assert np.isfinite(cost[rows, cols]).all()


@given(cost=shapes.flatmap(lambda s: arrays(np.float64, s, elements=st.one_of(finite_cost, special))))
def test_hungarian_match_treats_non_finite_costs_as_forbidden_and_stays_optimal(cost):
    """It matches as many pairs with a finite cost as possible, and among those minimises their total."""
    rows, cols = hungarian_match(cost)
    best = None
    for r, c in _assignments(*cost.shape):
        values = cost[list(r), list(c)]
        ok = np.isfinite(values)
        key = (-int(ok.sum()), float(values[ok].sum()))
        best = key if best is None or key < best else best
    assert len(rows) == -best[0]
    assert cost[rows, cols].sum() == pytest.approx(best[1], rel=1e-9, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# match_boxes
# --------------------------------------------------------------------------------------------------


def test_match_boxes_golden():
    pred = [[0, 0, 10, 10], [20, 20, 30, 30], [100, 100, 110, 110]]
    gt = [[21, 20, 31, 30], [0, 0, 10, 10]]
    p, g, iou = match_boxes(pred, gt)
    assert p.tolist() == [0, 1] and g.tolist() == [1, 0]
    np.testing.assert_allclose(iou, [1.0, 90 / 110])


def test_match_boxes_maximises_total_iou_not_greedy():
    # Greedy takes the single best pair (pred 0 - gt 0, IoU 0.82) and leaves pred 1 with gt 1 (IoU 0.18):
    # total 0.99. The optimum crosses over: 0.43 + 0.67 = 1.10.
    pred = [[1, 0, 11, 10], [-2, 0, 8, 10]]
    gt = [[0, 0, 10, 10], [5, 0, 15, 10]]
    p, g, iou = match_boxes(pred, gt, iou_threshold=0.0)
    assert p.tolist() == [0, 1] and g.tolist() == [1, 0]
    np.testing.assert_allclose(iou, [6 / 14, 8 / 12])


@given(pred=boxes(), gt=boxes())
@settings(max_examples=150)
def test_match_boxes_maximises_total_iou_against_brute_force(pred, gt):
    p, g, iou = match_boxes(pred, gt, iou_threshold=0.0)
    _assert_one_to_one(p, g, (len(pred), len(gt)))
    ious = box_iou(pred, gt)
    np.testing.assert_allclose(iou, ious[p, g])
    best = -_brute_force_min(-ious) if ious.size else 0.0
    assert iou.sum() == pytest.approx(best, abs=1e-9)


@given(pred=boxes(), gt=boxes(), threshold=st.floats(0.0, 1.0))
def test_match_boxes_keeps_exactly_the_pairs_at_or_above_the_threshold(pred, gt, threshold):
    p0, g0, iou0 = match_boxes(pred, gt, iou_threshold=0.0)
    p, g, iou = match_boxes(pred, gt, iou_threshold=threshold)
    keep = iou0 >= threshold
    assert p.tolist() == p0[keep].tolist() and g.tolist() == g0[keep].tolist()
    assert (iou >= threshold).all() and (iou > 0).all()


def test_match_boxes_threshold_is_inclusive():
    pred, gt = [[0, 0, 10, 10]], [[0, 0, 10, 5]]  # IoU exactly 0.5
    assert match_boxes(pred, gt, iou_threshold=0.5)[0].tolist() == [0]
    assert match_boxes(pred, gt, iou_threshold=0.5000001)[0].tolist() == []
    assert match_boxes([[0, 0, 1, 1]], [[0, 0, 1, 1]], iou_threshold=1.0)[2].tolist() == [1.0]


def test_match_boxes_never_matches_disjoint_boxes_even_at_threshold_zero():
    p, g, iou = match_boxes([[0, 0, 10, 10]], [[20, 20, 30, 30]], iou_threshold=0.0)
    assert p.tolist() == [] and g.tolist() == [] and iou.tolist() == []


def test_match_boxes_is_class_aware_with_labels():
    pred = [[0, 0, 10, 10]]
    gt = [[0, 0, 10, 10], [1, 0, 11, 10]]
    p, g, _ = match_boxes(pred, gt)
    assert g.tolist() == [0]  # class-agnostic: the identical box
    p, g, iou = match_boxes(pred, gt, pred_labels=["cat"], gt_labels=["dog", "cat"])
    assert p.tolist() == [0] and g.tolist() == [1]
    np.testing.assert_allclose(iou, [90 / 110])


def test_match_boxes_with_no_label_in_common_matches_nothing():
    p, g, iou = match_boxes([[0, 0, 10, 10]], [[0, 0, 10, 10]], pred_labels=["a"], gt_labels=["b"])
    assert p.tolist() == [] and g.tolist() == [] and iou.tolist() == []
    p, g, iou = match_boxes([[0, 0, 10, 10]], [[0, 0, 10, 10]], 0.0, pred_labels=["a"], gt_labels=["b"])
    assert p.tolist() == []


def test_match_boxes_labels_are_compared_exactly():
    p, _, _ = match_boxes([[0, 0, 10, 10]], [[0, 0, 10, 10]], pred_labels=["Cat"], gt_labels=["cat"])
    assert p.tolist() == []


@given(data=st.data())
@settings(max_examples=150)
def test_class_aware_matching_only_pairs_equal_labels_and_is_optimal(data):
    pred, pred_labels = data.draw(boxes(labels=["a", "b"]))
    gt, gt_labels = data.draw(boxes(labels=["a", "b"]))
    p, g, iou = match_boxes(pred, gt, iou_threshold=0.0, pred_labels=pred_labels, gt_labels=gt_labels)
    _assert_one_to_one(p, g, (len(pred), len(gt)))
    assert all(pred_labels[i] == gt_labels[j] for i, j in zip(p, g))
    ious = box_iou(pred, gt)
    same = np.array(pred_labels, dtype=object)[:, None] == np.array(gt_labels, dtype=object)[None, :]
    masked = np.where(same, ious, 0.0).reshape(len(pred), len(gt))
    best = -_brute_force_min(-masked) if masked.size else 0.0
    assert iou.sum() == pytest.approx(best, abs=1e-9)


def test_match_boxes_duplicates_are_left_unmatched():
    pred = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    p, g, _ = match_boxes(pred, [[0, 0, 10, 10]])
    assert len(p) == 1 and g.tolist() == [0]


@pytest.mark.parametrize("pred, gt", [([], []), ([], [[0, 0, 1, 1]]), ([[0, 0, 1, 1]], [])])
def test_match_boxes_with_no_boxes_on_a_side_matches_nothing(pred, gt):
    p, g, iou = match_boxes(pred, gt)
    assert p.tolist() == [] and g.tolist() == [] and iou.tolist() == []


def test_match_boxes_with_degenerate_and_inverted_boxes_does_not_raise():
    pred = [[5, 5, 5, 5], [9, 9, 1, 1], [0, 0, 10, 10]]
    gt = [[5, 5, 5, 5], [9, 9, 1, 1]]
    p, g, iou = match_boxes(pred, gt, iou_threshold=0.0)
    assert p.tolist() == [] and iou.tolist() == []


# --------------------------------------------------------------------------------------------------
# match_points
# --------------------------------------------------------------------------------------------------


def test_match_points_golden():
    p, g, d = match_points([[0, 0], [10, 10]], [[11, 10], [0, 1]])
    assert p.tolist() == [0, 1] and g.tolist() == [1, 0] and d.tolist() == [1.0, 1.0]


@st.composite
def points(draw, max_n=5):
    n = draw(st.integers(0, max_n))
    values = [[draw(st.floats(-1e3, 1e3)), draw(st.floats(-1e3, 1e3))] for _ in range(n)]
    return np.array(values, dtype=np.float64).reshape(n, 2)


@given(pred=points(), gt=points())
def test_match_points_minimises_total_distance_against_brute_force(pred, gt):
    p, g, d = match_points(pred, gt)
    _assert_one_to_one(p, g, (len(pred), len(gt)))
    assert len(p) == min(len(pred), len(gt))
    if len(p):
        dist = np.sqrt(((pred[:, None, :] - gt[None, :, :]) ** 2).sum(-1))
        np.testing.assert_allclose(d, dist[p, g])
        assert d.sum() == pytest.approx(_brute_force_min(dist), rel=1e-9, abs=1e-6)


def test_match_points_accepts_flat_pairs_and_empty_sides():
    p, g, d = match_points([3, 4], [[0, 0]])
    assert p.tolist() == [0] and d.tolist() == [5.0]
    assert match_points([], [[0, 0]])[0].tolist() == []
    assert match_points([[0, 0]], [])[2].tolist() == []


def test_match_points_drops_pairs_with_non_finite_distances():
    p, g, d = match_points([[0, 0], [np.nan, 0]], [[1, 0], [2, 0]])
    assert p.tolist() == [0] and np.isfinite(d).all()


# --------------------------------------------------------------------------------------------------
# sequential matching (Perception-R1's Table 5 "w/o reward matching")
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_pred", "n_gt", "pairs"), [(3, 2, [0, 1]), (2, 3, [0, 1]), (0, 4, []), (4, 0, [])]
)
def test_sequential_match_pairs_the_i_th_with_the_i_th(n_pred, n_gt, pairs):
    rows, cols = sequential_match(n_pred, n_gt)
    assert rows.tolist() == pairs and cols.tolist() == pairs
    assert rows.dtype == cols.dtype == np.int64


def test_sequential_box_matching_follows_the_order_written():
    pred = [[20, 0, 30, 10], [0, 0, 10, 10]]
    gt = [[0, 0, 10, 10], [20, 0, 30, 10]]
    # Hungarian pairs each box with its twin; sequential pairs box 0 with object 0 (IoU 0), so nothing is kept.
    p, g, iou = match_boxes(pred, gt)
    assert (p.tolist(), g.tolist(), iou.tolist()) == ([0, 1], [1, 0], [1.0, 1.0])
    p, g, iou = match_boxes(pred, gt, matching="sequential")
    assert (p.tolist(), g.tolist(), iou.tolist()) == ([], [], [])
    # In order, both are kept; with labels, a pair of different labels is dropped.
    p, g, iou = match_boxes(
        pred[::-1], gt, matching="sequential", pred_labels=["a", "b"], gt_labels=["a", "c"]
    )
    assert (p.tolist(), g.tolist(), iou.tolist()) == ([0], [0], [1.0])


def test_sequential_point_matching_distances():
    # (0,0)-(3,4) is 5 and (10,10)-(10,10) is 0 in order; Hungarian would pick the same here.
    p, g, d = match_points([[0, 0], [10, 10], [7, 7]], [[3, 4], [10, 10]], matching="sequential")
    assert (p.tolist(), g.tolist(), d.tolist()) == ([0, 1], [0, 1], [5.0, 0.0])
    # Swapped: (10,10)-(3,4) = sqrt(49 + 36), (0,0)-(10,10) = sqrt(200).
    _, _, d = match_points([[10, 10], [0, 0]], [[3, 4], [10, 10]], matching="sequential")
    assert d.tolist() == pytest.approx([math.sqrt(85), math.sqrt(200)])


@given(st.integers(0, 30), st.integers(0, 30))
def test_sequential_match_is_a_prefix_identity(n_pred, n_gt):
    rows, cols = sequential_match(n_pred, n_gt)
    assert rows.tolist() == cols.tolist() == list(range(min(n_pred, n_gt)))


def test_unknown_matching_is_refused():
    assert check_matching("hungarian") == "hungarian"
    with pytest.raises(ValueError, match="matching must be one of"):
        match_points([[0, 0]], [[0, 0]], matching="greedy")
    with pytest.raises(ValueError, match="matching must be one of"):
        match_boxes([[0, 0, 1, 1]], [[0, 0, 1, 1]], matching="Hungarian")
