"""Tasks, box formats and coordinate frames: the one home of what a task is, which model families the
library knows (`box_format`), how their processors resize images, and how their coordinates map to
original-image pixels.

Vocabulary, used the same way in config fields, dataset columns, function arguments and docs:

- `box_format`: the model family whose answer syntax and coordinate frame a row or a model uses, one of
  `BOX_FORMATS` (`"qwen2_vl"`, `"qwen2_5_vl"`, `"qwen3_vl"`); `"auto"` in configs means "read it from the
  model's `model_type`".
- Sizes are `(width, height)`. The one exception is `smart_resize`, which keeps transformers' signature
  `(height, width) -> (height, width)` so that it can be compared with transformers' own function.
- Frames: `"pixels"` (original image), `"input"` (pixels of the processor-resized image, Qwen2.5-VL),
  `"norm1000"` (0–1000 of the image, Qwen2-VL and Qwen3-VL) and `"norm1"`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "BOX_FORMATS",
    "BOX_TASKS",
    "FRAMES",
    "MODEL_TYPES",
    "TASKS",
    "Frame",
    "box_format_of",
    "check_box_format",
    "convert_frame",
    "default_pixel_limits",
    "fit_to_grid",
    "frame_of",
    "grid_size",
    "model_input_size",
    "patch_factor",
    "pixel_limits",
    "resolve_box_format",
    "smart_resize",
]

TASKS: tuple[str, ...] = ("grounding", "counting", "ocr", "detection", "ovd", "jigsaw", "vqa")
"""The `task` values of the row contract. New tasks are appended (the order seeds synthetic data)."""

BOX_TASKS: tuple[str, ...] = ("grounding", "counting", "detection", "ovd")
"""Tasks whose answers are boxes or points, written in a box format's syntax and frame."""

BOX_FORMATS: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""The model families whose answer syntax and coordinate frame this library knows."""

MODEL_TYPES: dict[str, str] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
}
"""`config.model_type` → box format, for `box_format="auto"`."""

FRAMES: tuple[str, ...] = ("pixels", "input", "norm1000", "norm1")
"""Coordinate frames: original-image pixels, pixels of the processor-resized input, 0–1000, 0–1."""

_PATCH_FACTOR = {"qwen2_vl": 28, "qwen2_5_vl": 28, "qwen3_vl": 32}
# The pixel limits shipped in the real checkpoints' preprocessor configs.
_PIXEL_LIMITS = {
    "qwen2_vl": (3136, 12845056),
    "qwen2_5_vl": (3136, 12845056),
    "qwen3_vl": (65536, 16777216),
}
_FRAME_OF = {"qwen2_vl": "norm1000", "qwen2_5_vl": "input", "qwen3_vl": "norm1000"}


# ------------------------------------------------------------------------------------------ box formats


def check_box_format(box_format: Any, allow_auto: bool = False) -> str:
    """`box_format` if it names a known box format (or `"auto"` when allowed), else `ValueError`.

    Example:
    ```python
    >>> check_box_format("qwen3_vl")
    'qwen3_vl'
    >>> check_box_format("llava")
    Traceback (most recent call last):
    ...
    ValueError: unknown box_format 'llava'; expected one of ('qwen2_vl', 'qwen2_5_vl', 'qwen3_vl')

    ```
    """
    if box_format in BOX_FORMATS or (allow_auto and box_format == "auto"):
        return box_format
    expected = ("auto", *BOX_FORMATS) if allow_auto else BOX_FORMATS
    raise ValueError(f"unknown box_format {box_format!r}; expected one of {expected}")


def _model_type(model: Any) -> str | None:
    """`model_type` of a checkpoint folder, a config, a model, or a wrapped (PEFT, DDP, compiled) model."""
    if isinstance(model, (str, os.PathLike)):
        try:
            config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        model_type = config.get("model_type") if isinstance(config, dict) else None
        return model_type if isinstance(model_type, str) else None
    for _ in range(8):  # unwrap DDP / DeepSpeed `.module`, torch.compile's `_orig_mod`, PEFT's base model
        model_type = getattr(model, "model_type", None)
        if isinstance(model_type, str):
            return model_type
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if isinstance(model_type, str):
            return model_type
        inner = next(
            (getattr(model, name) for name in ("_orig_mod", "module", "base_model") if hasattr(model, name)),
            None,
        )
        if inner is None or inner is model:
            return None
        model = inner
    return None


def box_format_of(model: Any) -> str | None:
    """The box format of a model (a checkpoint folder, a config, a model, a PEFT or DDP wrapper), or
    `None` when its `model_type` is not a known family.

    Example:
    ```python
    >>> from types import SimpleNamespace
    >>> box_format_of(SimpleNamespace(config=SimpleNamespace(model_type="qwen3_vl_moe")))
    'qwen3_vl'
    >>> box_format_of(SimpleNamespace(model_type="llava")) is None
    True

    ```
    """
    return MODEL_TYPES.get(_model_type(model) or "")


def resolve_box_format(box_format: str | None, model: Any = None) -> str:
    """The box format to use: `box_format` itself when it names one, else (`"auto"` or `None`) the box
    format of `model`; `ValueError` when neither tells.

    Example:
    ```python
    >>> from types import SimpleNamespace
    >>> resolve_box_format("auto", SimpleNamespace(model_type="qwen2_5_vl"))
    'qwen2_5_vl'
    >>> resolve_box_format("qwen3_vl")
    'qwen3_vl'
    >>> resolve_box_format("auto", SimpleNamespace(model_type="llava"))
    Traceback (most recent call last):
    ...
    ValueError: box_format='auto' cannot tell the box format of model_type 'llava'; known model types: ['qwen2_5_vl', 'qwen2_vl', 'qwen3_vl', 'qwen3_vl_moe']. Set box_format to one of ('qwen2_vl', 'qwen2_5_vl', 'qwen3_vl').

    ```
    """
    if box_format not in (None, "auto"):
        return check_box_format(box_format)
    found = box_format_of(model)
    if found is not None:
        return found
    raise ValueError(
        f"box_format='auto' cannot tell the box format of model_type {_model_type(model)!r}; known model "
        f"types: {sorted(MODEL_TYPES)}. Set box_format to one of {BOX_FORMATS}."
    )


def patch_factor(box_format: str) -> int:
    """Side of the pixel square one merged visual token covers: patch size × spatial merge size.

    Example:
    ```python
    >>> patch_factor("qwen2_5_vl"), patch_factor("qwen3_vl")
    (28, 32)

    ```
    """
    return _PATCH_FACTOR[check_box_format(box_format)]


def default_pixel_limits(box_format: str) -> tuple[int, int]:
    """`(min_pixels, max_pixels)` of the family's released checkpoints.

    Example:
    ```python
    >>> default_pixel_limits("qwen2_vl")
    (3136, 12845056)

    ```
    """
    return _PIXEL_LIMITS[check_box_format(box_format)]


def pixel_limits(box_format: str, min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """`(min_pixels, max_pixels)` in effect: the given limits, the family's defaults where `None`.

    Example:
    ```python
    >>> pixel_limits("qwen2_5_vl", max_pixels=200_704)
    (3136, 200704)
    >>> pixel_limits("qwen3_vl", max_pixels=50_000)
    Traceback (most recent call last):
    ...
    ValueError: min_pixels (65536) exceeds max_pixels (50000) for qwen3_vl (a limit left as None takes the family's default); pass both

    ```
    """
    lo, hi = default_pixel_limits(box_format)
    lo = lo if min_pixels is None else int(min_pixels)
    hi = hi if max_pixels is None else int(max_pixels)
    if lo <= 0 or hi <= 0:
        raise ValueError(f"pixel limits must be positive, got min_pixels={lo}, max_pixels={hi}")
    if lo > hi:
        raise ValueError(
            f"min_pixels ({lo}) exceeds max_pixels ({hi}) for {box_format} (a limit left as None takes the "
            "family's default); pass both"
        )
    return lo, hi


def frame_of(box_format: str) -> str:
    """The frame a box format writes coordinates in: `"norm1000"` (Qwen2-VL, Qwen3-VL) or `"input"`
    (Qwen2.5-VL: absolute pixels of the resized input).

    Example:
    ```python
    >>> frame_of("qwen2_5_vl"), frame_of("qwen3_vl")
    ('input', 'norm1000')

    ```
    """
    return _FRAME_OF[check_box_format(box_format)]


# ------------------------------------------------------------------------------------------ image sizes


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 3136,
    max_pixels: int = 12845056,
) -> tuple[int, int]:
    """The Qwen-VL image processors' resize rule, with transformers' signature: `(height, width)` in,
    `(resized_height, resized_width)` out.

    Each side is rounded to a multiple of `factor`; if the area then exceeds `max_pixels` both sides are
    scaled down (floored to the grid), if it falls below `min_pixels` they are scaled up (ceiled). This
    is the rule of `transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`, which the
    Qwen2-VL, Qwen2.5-VL and Qwen3-VL image processors share (factor 28, 28 and 32). Prefer
    `model_input_size`, which speaks `(width, height)` like the rest of the library.

    Example:
    ```python
    >>> smart_resize(height=480, width=640)  # a COCO image through Qwen2.5-VL
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


def model_input_size(
    image_size: Sequence[int],
    box_format: str,
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
    lo, hi = default_pixel_limits(box_format)
    width, height = int(image_size[0]), int(image_size[1])
    h, w = smart_resize(
        height,
        width,
        factor=patch_factor(box_format),
        min_pixels=lo if min_pixels is None else int(min_pixels),
        max_pixels=hi if max_pixels is None else int(max_pixels),
    )
    return w, h


def _stable_grid_size(image_size: Sequence[int], factor: int, lo: int, hi: int) -> tuple[int, int]:
    """The on-grid size within `[lo, hi]` pixels closest in aspect ratio to `image_size` (then in area):
    a size the processor keeps as is. Used where `smart_resize`'s own answer is not such a size (its
    upscale to `min_pixels` can overshoot `max_pixels` for tiny images and tight limits)."""
    width, height = float(image_size[0]), float(image_size[1])
    aspect, area = math.log(width / height), min(max(width * height, lo), hi)
    best: tuple[float, float, int, int] | None = None
    for m in range(1, hi // (factor * factor) + 1):
        h = m * factor
        k_lo, k_hi = max(1, -(-lo // (h * factor))), hi // (h * factor)
        if k_lo > k_hi:
            continue
        k = min(max(round(h * width / height / factor), k_lo), k_hi)
        w = k * factor
        if max(w, h) / min(w, h) > 200:
            continue
        score = (abs(math.log(w / h) - aspect), abs(w * h - area), w, h)
        if best is None or score < best:
            best = score
    if best is None:
        raise ValueError(f"no {factor}-pixel grid size lies within [{lo}, {hi}] pixels")
    return best[2], best[3]


def grid_size(
    image_size: Sequence[int], box_format: str, min_pixels: int | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """`(width, height)` that the family's processor leaves unchanged for an image of `image_size`: on the
    patch grid and within the pixel limits (the family's defaults where a limit is `None`).

    This is the processor's own resize (`model_input_size`), except in the corner case where that size is
    not itself kept by the processor (tiny images under tight limits); then the closest stable size is
    used, so that an image resized to it is never resized again (by the trainer's processor or by vLLM).

    Example:
    ```python
    >>> grid_size((640, 480), "qwen2_5_vl")
    (644, 476)
    >>> grid_size((640, 480), "qwen2_vl", max_pixels=200_000)
    (504, 364)

    ```
    """
    return _grid_size(int(image_size[0]), int(image_size[1]), box_format, min_pixels, max_pixels)


@functools.lru_cache(maxsize=1 << 16)
def _grid_size(
    width: int, height: int, box_format: str, min_pixels: int | None, max_pixels: int | None
) -> tuple[int, int]:
    # Cached: datasets repeat a few image sizes (COCO has ~3k distinct sizes for 118k images).
    lo, hi = pixel_limits(box_format, min_pixels, max_pixels)
    size = model_input_size((width, height), box_format, min_pixels=lo, max_pixels=hi)
    if model_input_size(size, box_format, min_pixels=lo, max_pixels=hi) == size:
        return size
    return _stable_grid_size((width, height), patch_factor(box_format), lo, hi)


def fit_to_grid(
    image: Image.Image, box_format: str, min_pixels: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """`image` resized (bicubic, as the Qwen processors do) to `grid_size(image.size, ...)`, so that the
    family's processor, in training and in vLLM rollouts, feeds it to the model unchanged. An image already
    at that size is returned as is.

    Example:
    ```python
    >>> from PIL import Image
    >>> fit_to_grid(Image.new("RGB", (640, 480)), "qwen2_5_vl").size
    (644, 476)

    ```
    """
    target = grid_size(image.size, box_format, min_pixels, max_pixels)
    if tuple(image.size) == target:
        return image
    if image.mode not in ("RGB", "RGBA", "L", "F", "I"):
        image = image.convert("RGB")
    return image.resize(target, Image.Resampling.BICUBIC)


# ------------------------------------------------------------------------------------------------ frames


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
    return arr * np.tile(scale, arr.shape[-1] // 2)


def _positive_size(value: Any, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{what} must be [width, height], got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{what} must be two numbers, got {value!r}")
        if not math.isfinite(float(v)) or float(v) <= 0:
            raise ValueError(f"{what} must be positive and finite, got {value!r}")
        out.append(float(v))
    return out[0], out[1]


@dataclass(frozen=True)
class Frame:
    """How to bring coordinates a model wrote into original-image pixels.

    Build one with `Frame.of(box_format, image_size, input_size)`. `scale` maps the box format's frame
    (0–1000, or resized-input pixels) to original pixels per axis; `image_size` clips to the image. With no
    box format, coordinates are taken as written; with no image size they are neither converted nor
    clipped.

    Example:
    ```python
    >>> frame = Frame.of("qwen2_vl", image_size=(640, 480))
    >>> frame.to_pixels([[100, 50, 300, 150]]).tolist()
    [[64.0, 24.0, 192.0, 72.0]]
    >>> Frame.of("qwen2_5_vl", image_size=(640, 480)).input_size  # the processor's resize, defaults
    (644.0, 476.0)
    >>> Frame.of(None, image_size=(640, 480)).to_pixels([[-5, 0, 700, 10]]).tolist()  # only clipped
    [[0.0, 0.0, 640.0, 10.0]]

    ```
    """

    box_format: str | None = None
    image_size: tuple[float, float] | None = None
    input_size: tuple[float, float] | None = None
    scale: tuple[float, float] = (1.0, 1.0)

    @staticmethod
    def of(box_format: str | None, image_size: Any = None, input_size: Any = None) -> Frame:
        """The frame of a row or an image: `box_format` (or `None`: coordinates as written), the original
        `[width, height]` and, for Qwen2.5-VL, the processor-resized `[width, height]` (computed with the
        family's default pixel limits when not given). Raises `ValueError` for malformed values."""
        if isinstance(box_format, str):
            box_format = box_format.strip().lower() or None
        if box_format is not None:
            check_box_format(box_format)
        return _frame(box_format, _positive_size(image_size, "image_size"), _positive_size(input_size, "input_size"))

    def to_pixels(self, coords: Sequence | np.ndarray, clip: bool = True) -> np.ndarray:
        """Coordinates `[..., 2k]` (x at even, y at odd positions) in original pixels, clipped to the image
        unless `clip=False` (evaluation keeps boxes as written, as COCO's evaluation does)."""
        out = np.asarray(coords, dtype=np.float64)
        if out.size == 0 or (self.scale == (1.0, 1.0) and (self.image_size is None or not clip)):
            return out
        pairs = out.reshape(*out.shape[:-1], -1, 2)  # (x, y) pairs broadcast against per-axis factors
        if self.scale != (1.0, 1.0):
            pairs = pairs * self.scale
        if clip and self.image_size is not None:
            pairs = np.clip(pairs, 0.0, self.image_size)
        return pairs.reshape(out.shape)

    def to_norm1000(self, coords: Sequence | np.ndarray) -> np.ndarray:
        """Original-pixel coordinates in the 0–1000 frame of the image; as given without an image size."""
        out = np.asarray(coords, dtype=np.float64)
        if self.image_size is None or out.size == 0:
            return out
        w, h = self.image_size
        return (out.reshape(*out.shape[:-1], -1, 2) * (1000.0 / w, 1000.0 / h)).reshape(out.shape)

    @staticmethod
    def stack_to_pixels(coords: np.ndarray, frames: Sequence[Frame]) -> np.ndarray:
        """`to_pixels` for many rows at once: `coords[i]` (shape `[N, 2k]` per row, stacked `[R, N, 2k]`
        or `[R, 2k]`) in `frames[i]`. Rows sharing one frame (a GRPO group, one image) take `to_pixels`."""
        if frames and all(frame is frames[0] for frame in frames):
            return frames[0].to_pixels(coords)
        out = np.asarray(coords, dtype=np.float64)
        if out.size == 0:
            return out
        reps = out.shape[-1] // 2
        shape = (len(frames),) + (1,) * (out.ndim - 2) + (2 * reps,)
        scale = np.tile(np.array([f.scale for f in frames], dtype=np.float64), reps).reshape(shape)
        upper = np.array([f.image_size if f.image_size is not None else (np.inf, np.inf) for f in frames])
        out = out * scale
        if not np.isfinite(upper).any():
            return out
        lower = np.where(np.isfinite(upper), 0.0, -np.inf)  # rows without an image size are not clipped
        return np.clip(out, np.tile(lower, reps).reshape(shape), np.tile(upper, reps).reshape(shape))


@functools.lru_cache(maxsize=4096)
def _frame(
    box_format: str | None, image_size: tuple[float, float] | None, input_size: tuple[float, float] | None
) -> Frame:
    # The rows of one GRPO group (and of one image) share their frame: build each distinct one once.
    if box_format is None or image_size is None:
        return Frame(box_format=box_format, image_size=image_size, input_size=input_size)
    src = frame_of(box_format)
    if src == "input" and input_size is None:
        w, h = model_input_size((int(round(image_size[0])), int(round(image_size[1]))), box_format)
        input_size = (float(w), float(h))
    sx, sy = convert_frame([1.0, 1.0], src, "pixels", image_size, input_size).tolist()
    return Frame(box_format=box_format, image_size=image_size, input_size=input_size, scale=(sx, sy))
