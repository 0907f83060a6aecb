"""Validated accessors for record fields: boxes, sizes and keys, each raising `RecordError` with what was
found and what was expected."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import RecordError, short_repr

__all__ = [
    "MAX_IMAGE_SIDE",
    "check_xyxy",
    "finite_numbers",
    "positive_size",
    "require_keys",
    "round_box",
    "xywh_to_xyxy",
]


def finite_numbers(value: Any, count: int, what: str) -> list[float]:
    """`count` finite numbers from a list/tuple, else `RecordError("bad bbox"/…)` naming `what`.

    Example:
    ```python
    >>> finite_numbers([1, 2.5], 2, "point")
    [1.0, 2.5]
    >>> finite_numbers([1, None], 2, "point")
    Traceback (most recent call last):
    ...
    trl_perception.data.errors.RecordError: point must be a list of 2 finite numbers, got [1, None]

    ```
    """
    reason = "bad bbox" if "box" in what else "bad record"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise RecordError(reason, f"{what} must be a list of {count} numbers, got {short_repr(value)}")
    out = []
    for v in value:
        try:
            number = float(v) if isinstance(v, (int, float, np.integer, np.floating)) else math.nan
        except OverflowError:  # an integer beyond float range
            number = math.nan
        if isinstance(v, bool) or not math.isfinite(number):
            raise RecordError(reason, f"{what} must be a list of {count} finite numbers, got {short_repr(value)}")
        out.append(number)
    return out


def xywh_to_xyxy(bbox: Any, what: str = "bbox") -> list[float]:
    """A COCO `[x, y, w, h]` as `[x1, y1, x2, y2]`; a non-positive width/height is a `bad bbox`.

    Example:
    ```python
    >>> xywh_to_xyxy([265.35, 143.46, 116.49, 309.57])
    [265.35, 143.46, 381.84, 453.03]
    >>> xywh_to_xyxy([1, 2, -3, 4]).reason
    Traceback (most recent call last):
    ...
    trl_perception.data.errors.RecordError: bbox [x, y, w, h] = [1, 2, -3, 4] has a non-positive width or height

    ```
    """
    x, y, w, h = finite_numbers(bbox, 4, what)
    box = round_box([x, y, x + w, y + h])
    if w <= 0 or h <= 0 or box[2] <= box[0] or box[3] <= box[1]:  # also sub-1/1000-pixel boxes
        raise RecordError(
            "bad bbox", f"{what} [x, y, w, h] = {short_repr(bbox)} has a non-positive width or height"
        )
    return box


def check_xyxy(bbox: Any, what: str = "bbox") -> list[float]:
    """A validated `[x1, y1, x2, y2]` with `x1 < x2` and `y1 < y2`.

    Example:
    ```python
    >>> check_xyxy([265.35, 143.46, 381.84, 453.03])
    [265.35, 143.46, 381.84, 453.03]

    ```
    """
    box = round_box(finite_numbers(bbox, 4, what))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise RecordError(
            "bad bbox", f"{what} [x1, y1, x2, y2] = {short_repr(bbox)} has a non-positive width or height"
        )
    return box


def round_box(box: Iterable[float]) -> list[float]:
    """Round coordinates to 1/1000 pixel, so that the same box read as xywh or xyxy, float32 or
    float64, compares equal across sources.

    Example:
    ```python
    >>> round_box([10.25 + 20.33, 0.1 + 0.2, -0.0, 1e-9])
    [30.58, 0.3, 0.0, 0.0]

    ```
    """
    return [round(float(v), 3) + 0.0 for v in box]


MAX_IMAGE_SIDE = 2**31 - 1
"""Largest image width or height a record may state (Pillow's own limit); larger values are bad records."""


def positive_size(width: Any, height: Any, what: str = "image size") -> list[int]:
    """`[width, height]` as positive integers (at most `MAX_IMAGE_SIDE`), else `RecordError("bad record")`.

    Example:
    ```python
    >>> positive_size(640, 480.0)
    [640, 480]

    ```
    """
    try:
        ok = not isinstance(width, (bool, str)) and not isinstance(height, (bool, str))
        w, h = int(width), int(height)
        ok = ok and 0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE
        ok = ok and float(width) == w and float(height) == h
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise RecordError(
            "bad record",
            f"{what} must be positive integers up to {MAX_IMAGE_SIDE}, got width={short_repr(width)}, "
            f"height={short_repr(height)}",
        )
    return [w, h]


def require_keys(record: Any, keys: Sequence[str], what: str = "record") -> Mapping[str, Any]:
    """The record as a mapping holding `keys`, else `RecordError("bad record")`.

    Example:
    ```python
    >>> require_keys({"image": "a.jpg"}, ["image", "problem"])
    Traceback (most recent call last):
    ...
    trl_perception.data.errors.RecordError: record lacks key(s) ['problem']; has ['image']

    ```
    """
    if not isinstance(record, Mapping):
        raise RecordError(
            "bad record", f"expected a {what} object with keys {list(keys)}, got {short_repr(record)}"
        )
    missing = [k for k in keys if k not in record]
    if missing:
        raise RecordError("bad record", f"{what} lacks key(s) {missing}; has {sorted(map(str, record))[:12]}")
    return record
