"""Pictures for humans: boxes, points and labels drawn on images (predictions red, ground truth green),
grids of captioned samples, line plots of reward curves, and the fonts they (and synthetic OCR pages) use."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .formats import parse_objects

__all__ = [
    "GT_COLOR",
    "PRED_COLOR",
    "display_text",
    "draw_objects",
    "find_cjk_font",
    "image_grid",
    "latin_font_path",
    "load_font",
    "save_plot",
    "to_pil",
]

PRED_COLOR: tuple[int, int, int] = (235, 40, 40)
"""Predictions: red boxes, filled dots."""

GT_COLOR: tuple[int, int, int] = (20, 200, 60)
"""Ground truth: green boxes, hollow rings."""

_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d")
_POINT_KEYS = ("point_2d", "point")
_LABEL_KEYS = ("label", "name", "category", "class")
_MAX_LABEL_CHARS = 32
_MAX_ITEMS = 10_000
_MAX_DEPTH = 8

_DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
_CJK_FONT_ENV = "TRL_PERCEPTION_CJK_FONT"
_CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
_CJK_INSTALL_HINT = (
    "no CJK font found for language='zh'. Install one, e.g. `apt-get install fonts-wqy-microhei` "
    "(or fonts-noto-cjk / fonts-droid-fallback), or point the environment variable "
    f"{_CJK_FONT_ENV} (or font=) at a .ttf/.ttc file that has Chinese glyphs"
)


# ------------------------------------------------------------------------------------------ fonts


@lru_cache(maxsize=1)
def latin_font_path() -> str | None:
    """Path of a DejaVuSans TrueType font: the system copy, else matplotlib's bundled one, else `None`
    (then `load_font` falls back to Pillow's built-in font).

    Example:
    ```python
    >>> path = latin_font_path()
    >>> path is None or path.endswith("DejaVuSans.ttf")
    True

    ```
    """
    if os.path.isfile(_DEJAVU):
        return _DEJAVU
    try:
        import matplotlib

        bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    except Exception:  # matplotlib missing or broken: Pillow's default font still works
        return None
    return str(bundled) if bundled.is_file() else None


def _fc_list_cjk() -> list[str]:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return []
    try:
        out = subprocess.run(
            [fc_list, ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    paths = [line.split(":")[0].strip() for line in out.splitlines() if line.strip()]
    preferred = ("wqy", "noto", "droid", "source-han", "sourcehan")
    # Well-known families first, then the rest in a stable order.
    return sorted(
        (p for p in paths if p.lower().endswith((".ttf", ".ttc", ".otf", ".otc"))),
        key=lambda p: (not any(k in p.lower() for k in preferred), p),
    )


@lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """Path of an installed font with Chinese glyphs, or `None`.

    Looks at `$TRL_PERCEPTION_CJK_FONT`, then well-known paths (WenQuanYi Micro Hei, Noto CJK, Droid Sans
    Fallback, macOS and Windows system fonts), then asks `fc-list :lang=zh`.

    Example:
    ```python
    >>> path = find_cjk_font()
    >>> path is None or os.path.isfile(path)
    True

    ```
    """
    env = os.environ.get(_CJK_FONT_ENV)
    candidates = ([env] if env else []) + list(_CJK_FONT_CANDIDATES) + _fc_list_cjk()
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            ImageFont.truetype(path, 12)
        except OSError:
            continue
        return path
    return None


@lru_cache(maxsize=256)
def load_font(
    size: int, language: str = "en", path: str | None = None
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of `size` pixels: `path` when given, else a CJK font for `language="zh"` (raising a
    `RuntimeError` naming what to install when none exists), else DejaVuSans, else Pillow's default font.

    Example:
    ```python
    >>> font = load_font(16)
    >>> font.getbbox("Hello")[2] > 0
    True

    ```
    """
    size = max(1, int(size))
    if path is None and language == "zh":
        path = find_cjk_font()
        if path is None:
            raise RuntimeError(_CJK_INSTALL_HINT)
    if path is None:
        path = latin_font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError as err:  # Pillow's message ("cannot open resource") does not say which file
            raise OSError(f"cannot load the font file {path!r}: {err}") from None
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _font(size: int, texts: Sequence[str] = ()) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVuSans of `size`, or a CJK font when any of `texts` has CJK characters and one is installed."""
    size = max(6, int(size))
    if any(ord(ch) >= 0x2E80 for text in texts for ch in str(text)) and find_cjk_font() is not None:
        return load_font(size, "zh")
    return load_font(size)


def display_text(text: Any, max_chars: int | None = None) -> str:
    """`text` as one line that any font and Pillow's text layout can draw: every whitespace character
    (line and paragraph separators, `\\r`, `\\x1c`–`\\x1f`, `\\x85`, tabs, ...) becomes a space, runs
    of spaces collapse, and other control characters and lone surrogates become U+FFFD; cut to
    `max_chars` with "...". Labels and captions come from model output and data files, and Pillow's
    layout engine raises on some control characters, so everything drawn goes through here.

    Example:
    ```python
    >>> display_text("cat\\r\\x1cdog\\u2029 \\x00bird\\ud800")
    'cat dog \ufffdbird\ufffd'
    >>> display_text("a very long label", max_chars=10)
    'a very ...'

    ```
    """
    try:
        text = text if isinstance(text, str) else str(text)
    except Exception:  # an object whose __str__ fails is still drawn, as a placeholder
        text = "?"
    chars = []
    for ch in text:
        if ch.isspace():
            chars.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cs"):
            chars.append("\ufffd")
        else:
            chars.append(ch)
    line = " ".join("".join(chars).split())
    if max_chars is not None and len(line) > max_chars:
        line = line[: max(0, max_chars - 3)] + "..."
    return line


def to_pil(image: Any) -> Image.Image:
    """An RGB copy of `image`: a PIL image, an `[H, W]` / `[H, W, 3|4]` array (uint8, or floats in 0–1),
    a datasets image dict (`{"bytes": ..., "path": ...}`) or a file path.

    Example:
    ```python
    >>> to_pil(np.zeros((4, 6), dtype=np.uint8)).size
    (6, 4)
    >>> to_pil(np.ones((2, 2, 3))).getpixel((0, 0))
    (255, 255, 255)

    ```
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, Mapping):
        if image.get("bytes"):
            with Image.open(io.BytesIO(image["bytes"])) as opened:
                return opened.convert("RGB")
        if image.get("path"):
            return to_pil(image["path"])
        raise ValueError("image dict has neither 'bytes' nor 'path'")
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor, [C, H, W] or [H, W, C]
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        array = np.clip(finite * scale, 0, 255).round().astype(np.uint8)
    else:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot make an image of an array of shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _finite_numbers(values: Any, count: int) -> tuple[float, ...] | None:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        return None
    try:
        if len(values) != count:
            return None
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def _label_of(item: Any) -> str | None:
    for key in _LABEL_KEYS:
        value = item.get(key) if isinstance(item, Mapping) else None
        if value is not None:
            return display_text(value) or None
    return None


def _collect(
    item: Any, boxes: list[tuple[tuple[float, ...], str | None]], points: list[tuple[tuple[float, ...], str | None]],
    depth: int = 0,
) -> None:  # fmt: skip
    """Gather boxes and points from any of the shapes objects come in; anything unreadable is skipped."""
    if item is None or depth > _MAX_DEPTH or len(boxes) + len(points) >= _MAX_ITEMS:
        return
    if isinstance(item, (str, bytes)):
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        try:
            _collect(json.loads(text), boxes, points, depth + 1)
            return
        except (ValueError, RecursionError):
            pass
        _collect(parse_objects(text).objects, boxes, points, depth + 1)
        return
    if isinstance(item, Mapping):
        label = _label_of(item)
        found = False
        for key in _BOX_KEYS:
            if key in item:
                box = _finite_numbers(item[key], 4)
                if box is not None:
                    boxes.append((box, label))
                found = True
                break
        for key in _POINT_KEYS:
            if key in item:
                point = _finite_numbers(item[key], 2)
                if point is not None:
                    points.append((point, label))
                found = True
                break
        if not found and "points" in item:  # a counting solution
            _collect_points(item["points"], points)
        if not found and "objects" in item:
            _collect(item["objects"], boxes, points, depth + 1)
        return
    if hasattr(item, "objects") and not isinstance(item, np.ndarray):  # formats.ParsedOutput
        _collect(item.objects, boxes, points, depth + 1)
        return
    if hasattr(item, "bbox") or hasattr(item, "point"):  # formats.DetectedObject and look-alikes
        label = getattr(item, "label", None)
        label = None if label is None else display_text(label) or None
        box = _finite_numbers(getattr(item, "bbox", None), 4)
        point = _finite_numbers(getattr(item, "point", None), 2)
        if box is not None:
            boxes.append((box, label))
        elif point is not None:
            points.append((point, label))
        return
    if isinstance(item, np.ndarray):
        item = item.tolist()
    if isinstance(item, Sequence):
        box = _finite_numbers(item, 4)
        if box is not None:
            boxes.append((box, None))
            return
        point = _finite_numbers(item, 2)
        if point is not None:
            points.append((point, None))
            return
        if len(item) in (2, 4) and all(isinstance(v, (int, float, np.number)) for v in item):
            return  # a box or point with NaN/inf in it
        for child in list(item)[:_MAX_ITEMS]:
            _collect(child, boxes, points, depth + 1)


def _collect_points(item: Any, points: list[tuple[tuple[float, ...], str | None]]) -> None:
    if isinstance(item, np.ndarray):
        item = item.tolist()
    if not isinstance(item, (list, tuple)):
        return
    for child in item[:_MAX_ITEMS]:
        point = _finite_numbers(child, 2)
        if point is not None:
            points.append((point, None))


def _objects(objects: Any, extra_points: Any) -> tuple[list, list]:
    boxes: list[tuple[tuple[float, ...], str | None]] = []
    points: list[tuple[tuple[float, ...], str | None]] = []
    _collect(objects, boxes, points)
    if extra_points is not None:
        if isinstance(extra_points, Mapping):
            extra_points = extra_points.get("points", [])
        _collect_points(extra_points, points)
    return boxes, points


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _draw_tag(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill, font, size) -> None:
    """A label on a filled background, kept inside the image."""
    text = display_text(text, _MAX_LABEL_CHARS)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 2
    x = min(max(0.0, xy[0]), max(0.0, size[0] - tw))
    y = min(max(0.0, xy[1]), max(0.0, size[1] - th))
    draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=fill)
    draw.text((x + 2 - left, y + 1 - top), text, fill=_text_colour(fill), font=font)


def draw_objects(
    image: Any,
    objects: Any = None,
    gt_objects: Any = None,
    *,
    points: Any = None,
    gt_points: Any = None,
    label: bool = True,
    width: int = 2,
    scale: float = 1.0,
    legend: bool = True,
) -> Image.Image:
    """Draw predicted (red) and ground-truth (green) boxes and points on a copy of `image`.

    Objects come as anything the library produces: dicts `{"bbox_2d": [...], "label": ...}` or
    `{"point_2d": [...]}`, `formats.DetectedObject`s (`.bbox`, `.point`, `.label`), a `ParsedOutput`, a
    box `[x1, y1, x2, y2]` or point `[x, y]` (alone or in lists), a counting solution
    `{"count": n, "points": [...]}`, a JSON string, or model text (read with `formats.parse_objects`). Coordinates are absolute pixels of `image` (boxes
    `x1 <= x < x2`). Boxes with NaN/inf are skipped, corners are reordered, and boxes are clipped to the
    image (those entirely outside are skipped). Ground truth is drawn first (boxes, hollow rings), then
    predictions (boxes, filled dots). When both are drawn and `legend` is set, a small "GT"/"pred" key
    goes in the top-right corner. `scale` enlarges the output (nearest neighbour), e.g. for 112-pixel
    images.

    Returns:
        `PIL.Image.Image`: RGB, of size `image.size * scale`.

    Example:
    ```python
    >>> image = Image.new("RGB", (64, 48), "white")
    >>> out = draw_objects(image, [{"bbox_2d": [5, 5, 30, 30], "label": "cat"}], [10, 8, 32, 33], scale=2)
    >>> out.size
    (128, 96)
    >>> draw_objects(image, [{"bbox_2d": [float("nan"), 0, 1, 1]}], points=[[100, 100]]).size
    (64, 48)

    ```
    """
    canvas = to_pil(image)
    original = canvas.size
    try:
        factor = float(scale)
    except (TypeError, ValueError):
        factor = 1.0
    if not math.isfinite(factor) or factor <= 0:
        factor = 1.0
    if factor != 1.0:
        new_size = (max(1, round(canvas.width * factor)), max(1, round(canvas.height * factor)))
        canvas = canvas.resize(new_size, Image.Resampling.NEAREST)
    size = canvas.size
    sx, sy = size[0] / original[0], size[1] / original[1]
    line = min(max(1, int(width)), 64)
    draw = ImageDraw.Draw(canvas)
    radius = max(2, line + 1, round(min(size) / 80))
    layers = [
        (*_objects(gt_objects, gt_points), GT_COLOR, True),
        (*_objects(objects, points), PRED_COLOR, False),
    ]
    names = [name for boxes, pts, _, _ in layers for _, name in boxes + pts if name] if label else []
    font = _font(max(9, min(16, min(size) // 12)), names)
    _, _, _, text_h = draw.textbbox((0, 0), "Ag", font=font)
    drawn = [False, False]
    for layer, (boxes, pts, colour, is_gt) in enumerate(layers):
        for (x1, y1, x2, y2), name in boxes:
            x1, x2 = sorted((x1 * sx, x2 * sx))
            y1, y2 = sorted((y1 * sy, y2 * sy))
            if x2 <= 0 or y2 <= 0 or x1 >= size[0] or y1 >= size[1]:
                continue
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(size[0]), x2), min(float(size[1]), y2)
            right, bottom = max(x1, x2 - 1), max(y1, y2 - 1)
            draw.rectangle([x1, y1, right, bottom], outline=colour, width=line)
            drawn[layer] = True
            if label and name:
                # Predictions are labelled above the box, ground truth below it, so neither hides the
                # object and both show when they overlap.
                ty = y2 + 1 if is_gt else y1 - text_h - 3
                _draw_tag(draw, (x1, ty), name, colour, font, size)
        for (px, py), name in pts:
            px, py = px * sx, py * sy
            if not (0 <= px <= size[0] and 0 <= py <= size[1]):
                continue
            bounds = [px - radius, py - radius, px + radius, py + radius]
            if is_gt:
                draw.ellipse(bounds, outline=colour, width=max(1, line // 2 + 1))
            else:
                draw.ellipse(bounds, fill=colour, outline=(255, 255, 255))
            drawn[layer] = True
            if label and name:
                _draw_tag(draw, (px + radius + 1, py - radius), name, colour, font, size)
    if legend and all(drawn) and min(size) >= 48:
        tag_font = _font(max(8, min(12, min(size) // 10)))
        right_edge = size[0]
        for text, colour in (("pred", PRED_COLOR), ("GT", GT_COLOR)):
            left, top, right, bottom = draw.textbbox((0, 0), text, font=tag_font)
            tw = right - left + 4
            right_edge -= tw + 1
            _draw_tag(draw, (right_edge, 1), text, colour, tag_font, size)
    return canvas


def _wrap(text: str, font, max_width: int, max_lines: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap (breaking over-long words), truncated to `max_lines` with an ellipsis; each line
    made drawable by `display_text`."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        paragraph = display_text(paragraph)
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}" if current else word
            if draw.textlength(candidate, font=font) <= max_width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            for char in word:  # a word wider than the cell is broken anywhere
                if draw.textlength(current + char, font=font) > max_width and current:
                    lines.append(current)
                    current = ""
                current += char
            if len(lines) > max_lines:
                break
        lines.append(current)
        if len(lines) > max_lines:
            break
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + "...", font=font) > max_width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def image_grid(
    images: Sequence[Any],
    ncols: int = 4,
    captions: Sequence[Any] | None = None,
    cell_size: int | Sequence[int] | None = None,
    *,
    max_caption_lines: int = 3,
    padding: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Images in a grid of `ncols` columns, each scaled to fit its cell (aspect ratio kept) with its
    caption below, word-wrapped to the cell width and cut to `max_caption_lines` with "...".

    `cell_size` is `(width, height)` or one int; by default the largest image's size. Images that cannot be
    read (or `None`) leave an empty cell; an empty list gives a blank 64×64 image.

    Example:
    ```python
    >>> tiles = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    >>> grid = image_grid(tiles, ncols=2, captions=["a", "b", "a long caption " * 5])
    >>> grid.width, grid.height > 64
    (76, True)

    ```
    """
    pictures: list[Image.Image | None] = []
    for item in list(images):
        try:
            pictures.append(None if item is None else to_pil(item))
        except Exception:  # unreadable cell: left blank rather than failing the whole grid
            pictures.append(None)
    if not pictures:
        return Image.new("RGB", (64, 64), background)
    cols = max(1, min(int(ncols) if ncols else 1, len(pictures)))
    rows = math.ceil(len(pictures) / cols)
    if cell_size is None:
        sizes = [p.size for p in pictures if p is not None] or [(64, 64)]
        cell_w, cell_h = max(s[0] for s in sizes), max(s[1] for s in sizes)
    elif isinstance(cell_size, (int, np.integer)):
        cell_w = cell_h = int(cell_size)
    else:
        cell_w, cell_h = (int(v) for v in cell_size)
    cell_w, cell_h = max(1, cell_w), max(1, cell_h)
    pad = max(0, int(padding))
    font = _font(
        max(9, min(14, cell_w // 12)), [] if captions is None else [display_text(c) for c in captions]
    )
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, top, _, bottom = probe.textbbox((0, 0), "Ag", font=font)
    line_h = bottom - top + 2
    wrapped: list[list[str]] = []
    if captions is not None:
        texts = list(captions) + [""] * (len(pictures) - len(captions))
        wrapped = [
            _wrap(
                "" if t is None else t if isinstance(t, str) else display_text(t),
                font,
                cell_w,
                max(1, max_caption_lines),
                probe,
            )
            for t in texts
        ]
    caption_h = (max((len(w) for w in wrapped), default=0) * line_h + 2) if captions is not None else 0
    grid = Image.new(
        "RGB", (cols * cell_w + (cols + 1) * pad, rows * (cell_h + caption_h) + (rows + 1) * pad), background
    )
    draw = ImageDraw.Draw(grid)
    for i, picture in enumerate(pictures):
        x0 = pad + (i % cols) * (cell_w + pad)
        y0 = pad + (i // cols) * (cell_h + caption_h + pad)
        if picture is not None:
            ratio = min(cell_w / picture.width, cell_h / picture.height)
            fitted = (max(1, round(picture.width * ratio)), max(1, round(picture.height * ratio)))
            resample = Image.Resampling.NEAREST if ratio >= 1 else Image.Resampling.LANCZOS
            tile = picture.resize(fitted, resample)
            grid.paste(tile, (x0 + (cell_w - fitted[0]) // 2, y0 + (cell_h - fitted[1]) // 2))
        if wrapped:
            for j, text in enumerate(wrapped[i]):
                draw.text((x0, y0 + cell_h + 1 + j * line_h - top), text, fill=(0, 0, 0), font=font)
    return grid


def _as_series(values: Any) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        array = np.array([_float_or_nan(v) for v in values], dtype=np.float64)
    return array


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def save_plot(
    xs: Sequence[float] | None,
    ys_dict: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str | None = None,
    xlabel: str = "step",
    ylabel: str = "reward",
    *,
    smooth: int | None = None,
    dpi: int = 100,
) -> Path:
    """Save a line plot of one or more series (e.g. reward curves) to `path` (PNG, PDF or SVG by extension)
    with matplotlib's Agg canvas, imported lazily.

    `xs` may be `None` (0, 1, 2, ...); a series longer or shorter than `xs` is cut to the common length.
    Non-numeric values become gaps; a series with values at fewer than half of the points (an evaluation
    every N steps) is drawn through its points, with markers. `smooth=k` also draws a trailing moving average over `k` points.

    Example:
    ```python
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = save_plot([0, 1, 2], {"iou": [0.1, 0.5, 0.7], "format": [1, 1, None]}, os.path.join(d, "r.png"))
    ...     out.stat().st_size > 0
    True

    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6.4, 4.0), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    x_all = None if xs is None else _as_series(xs)
    plotted = False
    for name, values in (ys_dict or {}).items():
        ys = _as_series(values)
        x = np.arange(len(ys), dtype=np.float64) if x_all is None else x_all
        length = min(len(x), len(ys))
        if length == 0:
            continue
        x, ys = x[:length], ys[:length]
        finite = np.isfinite(ys)
        if finite.sum() * 2 < length:
            # A sparse series (e.g. an evaluation every N steps) is drawn through its points, with markers;
            # with gaps between every point nothing would show.
            (line,) = axes.plot(x[finite], ys[finite], marker="o", label=str(name))
            plotted = True
            continue
        (line,) = axes.plot(x, ys, label=str(name), alpha=0.45 if smooth and smooth > 1 else 1.0)
        plotted = True
        if smooth and int(smooth) > 1 and length >= 2:
            k = int(smooth)
            filled = np.where(np.isfinite(ys), ys, 0.0)
            counts = np.convolve(np.isfinite(ys).astype(np.float64), np.ones(k), mode="full")[:length]
            sums = np.convolve(filled, np.ones(k), mode="full")[:length]
            with np.errstate(invalid="ignore", divide="ignore"):
                axes.plot(
                    x,
                    np.where(counts > 0, sums / counts, np.nan),
                    color=line.get_color(),
                    label=f"{name} (avg {k})",
                )
    if title:
        axes.set_title(str(title))
    axes.set_xlabel(str(xlabel))
    axes.set_ylabel(str(ylabel))
    axes.grid(True, alpha=0.3)
    if plotted:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(out)
    return out
