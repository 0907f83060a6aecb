"""Box geometry on numpy arrays: formats, areas, clipping and pairwise IoU/GIoU. Box formats of model
families and coordinate frames live in `trl_perception.frames`.

Boxes are `(x1, y1, x2, y2)` with `x1 <= x2` and `y1 <= y2` unless a function says otherwise. Every
function takes array-likes and returns `numpy.ndarray` of `float64`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes",
    "generalized_box_iou",
    "paired_box_iou",
]


def _as_boxes(boxes: Sequence | np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.shape[-1] != 4:
        raise ValueError(f"boxes must have a last dimension of 4, got shape {arr.shape}")
    return arr


def box_convert(boxes: Sequence | np.ndarray, in_fmt: str, out_fmt: str) -> np.ndarray:
    """Convert boxes between `"xyxy"`, `"xywh"` (COCO: top-left corner, width, height) and `"cxcywh"`.

    Args:
        boxes (`array-like [..., 4]`): boxes in `in_fmt`.
        in_fmt (`str`): one of `"xyxy"`, `"xywh"`, `"cxcywh"`.
        out_fmt (`str`): one of `"xyxy"`, `"xywh"`, `"cxcywh"`.

    Returns:
        `np.ndarray [..., 4]`: the boxes in `out_fmt`.

    Example:
    ```python
    >>> box_convert([[10, 20, 30, 40]], "xywh", "xyxy").tolist()
    [[10.0, 20.0, 40.0, 60.0]]
    >>> box_convert([[10, 20, 40, 60]], "xyxy", "cxcywh").tolist()
    [[25.0, 40.0, 30.0, 40.0]]

    ```
    """
    fmts = ("xyxy", "xywh", "cxcywh")
    if in_fmt not in fmts or out_fmt not in fmts:
        raise ValueError(f"box formats must be among {fmts}, got {in_fmt!r} -> {out_fmt!r}")
    b = _as_boxes(boxes)
    if in_fmt == out_fmt:
        return b.copy()
    a0, a1, a2, a3 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    if in_fmt == "xywh":
        xyxy = np.stack([a0, a1, a0 + a2, a1 + a3], axis=-1)
    elif in_fmt == "cxcywh":
        xyxy = np.stack([a0 - a2 / 2, a1 - a3 / 2, a0 + a2 / 2, a1 + a3 / 2], axis=-1)
    else:
        xyxy = b
    x1, y1, x2, y2 = xyxy[..., 0], xyxy[..., 1], xyxy[..., 2], xyxy[..., 3]
    if out_fmt == "xyxy":
        return np.array(xyxy, dtype=np.float64)
    if out_fmt == "xywh":
        return np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def box_area(boxes: Sequence | np.ndarray) -> np.ndarray:
    """Area of `xyxy` boxes; degenerate or inverted boxes have area 0.

    Args:
        boxes (`array-like [N, 4]`): boxes in `xyxy`.

    Returns:
        `np.ndarray [N]`: the areas.

    Example:
    ```python
    >>> box_area([[0, 0, 10, 5], [3, 3, 1, 1]]).tolist()
    [50.0, 0.0]

    ```
    """
    b = _as_boxes(boxes)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def clip_boxes(boxes: Sequence | np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip `xyxy` boxes to the canvas `[0, width] x [0, height]`.

    Example:
    ```python
    >>> clip_boxes([[-5, 10, 120, 40]], width=100, height=50).tolist()
    [[0.0, 10.0, 100.0, 40.0]]

    ```
    """
    b = _as_boxes(boxes).copy()
    b[..., 0::2] = np.clip(b[..., 0::2], 0, width)
    b[..., 1::2] = np.clip(b[..., 1::2], 0, height)
    return b


def _inter_union(boxes1: np.ndarray, boxes2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    area1, area2 = box_area(boxes1), box_area(boxes2)
    # x and y as separate [N, M] operations: the same values as one [N, M, 2] broadcast, with fewer strided passes
    w = np.minimum(boxes1[:, None, 2], boxes2[None, :, 2]) - np.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    h = np.minimum(boxes1[:, None, 3], boxes2[None, :, 3]) - np.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    union = area1[:, None] + area2[None, :] - inter
    return inter, union


def box_iou(boxes1: Sequence | np.ndarray, boxes2: Sequence | np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two sets of `xyxy` boxes.

    IoU is the plain continuous ratio (no +1 pixel convention). Pairs whose union is 0 (both boxes
    degenerate) have IoU 0, never NaN.

    Args:
        boxes1 (`array-like [N, 4]`), boxes2 (`array-like [M, 4]`): boxes in `xyxy`.

    Returns:
        `np.ndarray [N, M]`: IoU of every pair.

    Example:
    ```python
    >>> box_iou([[0, 0, 10, 10]], [[5, 5, 15, 15], [0, 0, 10, 10]]).round(4).tolist()
    [[0.1429, 1.0]]

    ```
    """
    b1, b2 = _as_boxes(boxes1).reshape(-1, 4), _as_boxes(boxes2).reshape(-1, 4)
    inter, union = _inter_union(b1, b2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def paired_box_iou(boxes1: Sequence | np.ndarray, boxes2: Sequence | np.ndarray) -> np.ndarray:
    """IoU of matching rows: `boxes1[i]` against `boxes2[i]`.

    Example:
    ```python
    >>> paired_box_iou([[0, 0, 1, 1], [0, 0, 2, 2]], [[0.5, 0.5, 1, 1], [0, 0, 2, 2]]).tolist()
    [0.25, 1.0]

    ```
    """
    b1, b2 = _as_boxes(boxes1).reshape(-1, 4), _as_boxes(boxes2).reshape(-1, 4)
    if b1.shape != b2.shape:
        raise ValueError(f"paired_box_iou needs equal shapes, got {b1.shape} and {b2.shape}")
    lt = np.maximum(b1[:, :2], b2[:, :2])
    rb = np.minimum(b1[:, 2:], b2[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(b1) + box_area(b2) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def generalized_box_iou(boxes1: Sequence | np.ndarray, boxes2: Sequence | np.ndarray) -> np.ndarray:
    """Pairwise generalized IoU (Rezatofighi et al., 2019) of `xyxy` boxes, in `[-1, 1]`.

    GIoU = IoU − (area of the smallest enclosing box − union) / area of the enclosing box. Pairs whose
    enclosing box has area 0 get GIoU 0 rather than NaN.

    Example:
    ```python
    >>> generalized_box_iou([[0, 0, 1, 1]], [[2, 0, 3, 1]]).tolist()
    [[-0.3333333333333333]]

    ```
    """
    b1, b2 = _as_boxes(boxes1).reshape(-1, 4), _as_boxes(boxes2).reshape(-1, 4)
    inter, union = _inter_union(b1, b2)
    lt = np.minimum(b1[:, None, :2], b2[None, :, :2])
    rb = np.maximum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    hull = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        giou = iou - np.where(hull > 0, (hull - union) / np.where(hull > 0, hull, 1.0), 0.0)
    return giou
