"""Box geometry on numpy arrays: formats, areas, pairwise IoU/GIoU, the Qwen-VL `smart_resize` rule and
coordinate frames.

Boxes are `(x1, y1, x2, y2)` with `x1 <= x2` and `y1 <= y2` unless a function says otherwise. Every
function takes array-likes and returns `numpy.ndarray` of `float64`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "FAMILIES",
    "FRAMES",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes",
    "convert_frame",
    "default_pixel_limits",
    "family_frame",
    "generalized_box_iou",
    "model_input_size",
    "paired_box_iou",
    "patch_factor",
    "smart_resize",
]

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""Model families whose output formats and coordinate frames this library knows."""

FRAMES: tuple[str, ...] = ("pixels", "input", "norm1000", "norm1")
"""Coordinate frames: original-image pixels, pixels of the processor-resized input, 0–1000, 0–1."""

_PATCH_FACTOR = {"qwen2_vl": 28, "qwen2_5_vl": 28, "qwen3_vl": 32}
# The pixel limits shipped in the real checkpoints' preprocessor configs.
_PIXEL_LIMITS = {
    "qwen2_vl": (3136, 12845056),
    "qwen2_5_vl": (3136, 12845056),
    "qwen3_vl": (65536, 16777216),
}
_FAMILY_FRAME = {"qwen2_vl": "norm1000", "qwen2_5_vl": "input", "qwen3_vl": "norm1000"}


def _as_boxes(boxes: Sequence | np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.shape[-1] != 4:
        raise ValueError(f"boxes must have a last dimension of 4, got shape {arr.shape}")
    return arr


def _check_family(family: str) -> str:
    if family not in _PATCH_FACTOR:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return family


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
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
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


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 3136,
    max_pixels: int = 12845056,
) -> tuple[int, int]:
    """The Qwen-VL image processors' resize rule: the `(height, width)` an image is fed to the model at.

    Each side is rounded to a multiple of `factor`; if the area then exceeds `max_pixels` both sides are
    scaled down (floored to the grid), if it falls below `min_pixels` they are scaled up (ceiled). This
    is the rule of `transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`, which the
    Qwen2-VL, Qwen2.5-VL and Qwen3-VL image processors share (factor 28, 28 and 32).

    Args:
        height (`int`), width (`int`): original image size.
        factor (`int`): patch size × merge size (see `patch_factor`).
        min_pixels (`int`), max_pixels (`int`): the processor's pixel limits.

    Returns:
        `tuple[int, int]`: `(resized_height, resized_width)`.

    Example:
    ```python
    >>> smart_resize(480, 640)  # a COCO image through Qwen2.5-VL
    (476, 644)
    >>> smart_resize(1000, 1000, max_pixels=112 * 112)
    (112, 112)

    ```
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patch_factor(family: str) -> int:
    """Side of the pixel square one merged visual token covers: patch size × spatial merge size.

    Example:
    ```python
    >>> patch_factor("qwen2_5_vl"), patch_factor("qwen3_vl")
    (28, 32)

    ```
    """
    return _PATCH_FACTOR[_check_family(family)]


def default_pixel_limits(family: str) -> tuple[int, int]:
    """`(min_pixels, max_pixels)` of the family's released checkpoints.

    Example:
    ```python
    >>> default_pixel_limits("qwen2_vl")
    (3136, 12845056)

    ```
    """
    return _PIXEL_LIMITS[_check_family(family)]


def family_frame(family: str) -> str:
    """The frame a family writes coordinates in: `"norm1000"` (Qwen2-VL, Qwen3-VL) or `"input"`
    (Qwen2.5-VL: absolute pixels of the resized input).

    Example:
    ```python
    >>> family_frame("qwen2_5_vl"), family_frame("qwen3_vl")
    ('input', 'norm1000')

    ```
    """
    return _FAMILY_FRAME[_check_family(family)]


def model_input_size(
    image_size: Sequence[int],
    family: str,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """`(width, height)` of an image of `image_size = (width, height)` after the family's processor resize.

    Limits default to the family's released checkpoints (`default_pixel_limits`).

    Example:
    ```python
    >>> model_input_size((640, 480), "qwen2_5_vl")
    (644, 476)
    >>> model_input_size((640, 480), "qwen3_vl", max_pixels=112 * 112)
    (128, 96)

    ```
    """
    lo, hi = default_pixel_limits(family)
    width, height = int(image_size[0]), int(image_size[1])
    h, w = smart_resize(
        height,
        width,
        factor=patch_factor(family),
        min_pixels=lo if min_pixels is None else int(min_pixels),
        max_pixels=hi if max_pixels is None else int(max_pixels),
    )
    return w, h


def _frame_scale(frame: str, image_size: Sequence[float], input_size: Sequence[float] | None) -> np.ndarray:
    """Per-axis factor that maps a frame's coordinates to original-image pixels."""
    w, h = float(image_size[0]), float(image_size[1])
    if frame == "pixels":
        return np.array([1.0, 1.0])
    if frame == "norm1000":
        return np.array([w / 1000.0, h / 1000.0])
    if frame == "norm1":
        return np.array([w, h])
    if frame == "input":
        if input_size is None:
            raise ValueError("the 'input' frame needs input_size (the processor-resized [width, height])")
        return np.array([w / float(input_size[0]), h / float(input_size[1])])
    raise ValueError(f"unknown frame {frame!r}; expected one of {FRAMES}")


def convert_frame(
    coords: Sequence | np.ndarray,
    src: str,
    dst: str,
    image_size: Sequence[float],
    input_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Map boxes or points from frame `src` to frame `dst`.

    Args:
        coords (`array-like [..., 2k]`): boxes `[..., 4]` or points `[..., 2]`, x at even and y at odd
            positions of the last axis.
        src (`str`), dst (`str`): frames among `"pixels"` (original image), `"input"` (absolute pixels of
            the processor-resized input), `"norm1000"` and `"norm1"`.
        image_size (`[width, height]`): original image size.
        input_size (`[width, height]`, *optional*): resized input size, needed by the `"input"` frame.

    Returns:
        `np.ndarray`: coordinates in `dst`, same shape.

    Example:
    ```python
    >>> convert_frame([[100, 50, 300, 150]], "norm1000", "pixels", image_size=(640, 480)).tolist()
    [[64.0, 24.0, 192.0, 72.0]]
    >>> convert_frame([322, 238], "input", "pixels", image_size=(640, 480), input_size=(644, 476)).round(2).tolist()
    [320.0, 240.0]

    ```
    """
    arr = np.asarray(coords, dtype=np.float64)
    if arr.size and arr.shape[-1] % 2:
        raise ValueError(f"coordinates need an even last dimension, got shape {arr.shape}")
    if src == dst:
        return arr.copy()
    scale = _frame_scale(src, image_size, input_size) / _frame_scale(dst, image_size, input_size)
    if arr.size == 0:
        return arr.copy()
    reps = arr.shape[-1] // 2
    return arr * np.tile(scale, reps)
