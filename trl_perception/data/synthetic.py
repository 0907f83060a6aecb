"""Synthetic perception data with exact ground truth: coloured shapes for grounding, counting and detection,
and text rendered with a real font for OCR, returned in the row contract."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from ..formats import CHOICE_LETTERS
from ..frames import TASKS, grid_size, model_input_size
from ..viz import find_cjk_font, latin_font_path, load_font
from .rows import PromptCache, row_features, rows_to_dataset

if TYPE_CHECKING:
    import datasets

__all__ = [
    "BACKGROUNDS",
    "BOX_JITTERS",
    "COLORS",
    "DEFAULT_COLORS",
    "DEFAULT_SHAPES",
    "SHAPES",
    "VQA_IMAGE_SIZE",
    "VQA_QUESTIONS",
    "find_cjk_font",
    "jitter_box",
    "latin_font_path",
    "load_font",
    "make_sample",
    "make_synthetic",
    "render_scene",
    "render_text",
    "render_text_scene",
    "shape_vocabulary",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
    "cyan": (20, 200, 210),
    "pink": (250, 130, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
"""Shape colours by name. None is a grey in 64..192, so no background pixel ever equals a shape colour."""

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond", "hexagon", "star", "cross")
"""Shapes `render_scene` can draw (each drawn upright inside an s×s square)."""

DEFAULT_SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DEFAULT_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")

BACKGROUNDS: tuple[str, ...] = ("grey", "color", "noise")
"""Plain grey (one level in 90..170), a plain colour far from the scene's shape colours (at least 100 apart
in some channel), or grey noise (64..192)."""

VQA_QUESTIONS: tuple[str, ...] = ("color", "shape", "digits")
"""What a synthetic VQA question asks about its small target: its colour, its shape, or the digits on a small
sign."""

VQA_IMAGE_SIZE: tuple[int, int] = (2000, 1500)
"""Default `(width, height)` of synthetic VQA images: V*-style high resolution, so that the small target is
lost when the image is resized to a model's pixel budget."""

_VQA_TARGET_SIDE = 0.005  # target side (or sign text height) as a share of the short side: 8 px of 1500
_VQA_DISTRACTORS = (3, 8)
_VQA_DISTRACTOR_SIDE = (0.05, 0.15)
_VQA_OPTIONS = 4

BOX_JITTERS: tuple[str, ...] = ("loose", "shift", "random")
"""Imperfect-supervision modes for training boxes (`jitter_box`)."""

_TASK_IDS = {task: i for i, task in enumerate(TASKS)}
_PLURALS = {"cross": "crosses"}
_DEFAULT_OBJECTS = {"grounding": (1, 3), "counting": (1, 5), "detection": (2, 5), "ovd": (1, 4)}
_OVD_NEGATIVES = 2  # absent "{color} {shape}" phrases asked per OVD row
_OVD_NEGATIVE_ONLY = 0.25  # share of OVD rows asked only for absent phrases (the answer is None)
_MIXED_TASKS = ("grounding", "counting", "ocr", "detection")  # task="mixed": Perception-R1's four tasks
_DEFAULT_WORDS = {"en": (1, 6), "zh": (1, 4)}
_MIN_SHAPE_PX = 6

_EN_WORDS = tuple(
    """the of and to in is that for it as was with be by on not he this are or his from at which but have
    an they you were her she there one all we their can has more when will would if what so no about up out
    some time them into only other new could than first two way may then do any like now my such make over
    our even most after also many before must well back through years much where your way down should
    because long each those people state very just little good world take year still between come work
    life without never both under last might great old place while number part found same another against
    house system water line right small large point city page model image shape color circle square box
    text label answer reward policy vision language train test data value group order light green blue red
    paper table river mountain window garden market school doctor engine planet signal music window summer
    winter morning evening orange yellow purple silver golden simple quick brown fox jumps lazy dog""".split()
)
_ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
    "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合"
    "还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只"
    "没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边"
    "流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造"
    "百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例"
)


# --------------------------------------------------------------------------------------------- shapes


def shape_vocabulary(
    colors: Sequence[str] = DEFAULT_COLORS, shapes: Sequence[str] = DEFAULT_SHAPES
) -> list[str]:
    """Labels `"{color} {shape}"` of every colour/shape pair, colours outermost: the detection vocabulary.

    Example:
    ```python
    >>> shape_vocabulary(["red", "blue"], ["circle", "square"])
    ['red circle', 'red square', 'blue circle', 'blue square']

    ```
    """
    return [f"{color} {shape}" for color in colors for shape in shapes]


def _plural(shape: str) -> str:
    return _PLURALS.get(shape, shape + "s")


def _regular_polygon(center: float, radius: float, n: int, start_deg: float) -> list[tuple[float, float]]:
    return [
        (
            center + radius * math.cos(math.radians(start_deg + 360.0 * i / n)),
            center + radius * math.sin(math.radians(start_deg + 360.0 * i / n)),
        )
        for i in range(n)
    ]


@lru_cache(maxsize=4096)
def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean [size, size] mask of the drawn shape (aliased, so every pixel is exactly in or out)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    e = size - 1
    c = e / 2.0
    if shape == "square":
        draw.rectangle([0, 0, e, e], fill=255)
    elif shape == "circle":
        draw.ellipse([0, 0, e, e], fill=255)
    elif shape == "triangle":
        draw.polygon([(c, 0), (e, e), (0, e)], fill=255)
    elif shape == "diamond":
        draw.polygon([(c, 0), (e, c), (c, e), (0, c)], fill=255)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(c, c, 6, 0.0), fill=255)
    elif shape == "star":
        outer = _regular_polygon(c, c, 5, -90.0)
        inner = _regular_polygon(c, 0.45 * c, 5, -54.0)
        draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=255)
    elif shape == "cross":
        t = max(1, round(size / 3))
        a = (size - t) // 2
        draw.rectangle([a, 0, a + t - 1, e], fill=255)
        draw.rectangle([0, a, e, a + t - 1], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask = np.asarray(canvas) > 0
    mask.setflags(write=False)
    return mask


def _far_from(rgb: np.ndarray, palette: np.ndarray, min_dist: int = 100) -> bool:
    return palette.size == 0 or bool(np.abs(palette - rgb[None, :]).max(axis=1).min() >= min_dist)


def _background(
    rng: np.random.Generator,
    kind: str | Sequence[str],
    width: int,
    height: int,
    avoid: Sequence[tuple[int, int, int]] = (),
) -> np.ndarray:
    if isinstance(kind, str):
        kinds = BACKGROUNDS if kind == "mixed" else (kind,)
    else:
        kinds = tuple(kind)
    chosen = kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
    chosen = "grey" if chosen == "gray" else "color" if chosen == "colour" else chosen
    if chosen == "noise":
        levels = rng.integers(64, 193, size=(height, width), dtype=np.uint8)
        return np.repeat(levels[:, :, None], 3, axis=2)
    if chosen == "color":
        palette = np.asarray(list(avoid), dtype=np.int64).reshape(-1, 3)
        for _ in range(50):
            rgb = rng.integers(30, 226, size=3)
            if _far_from(rgb, palette):
                return np.broadcast_to(rgb.astype(np.uint8), (height, width, 3)).copy()
        chosen = "grey"  # practically unreachable; keeps the guarantee that no pixel equals a shape colour
    if chosen == "grey":
        level = int(rng.integers(90, 171))
        return np.full((height, width, 3), level, dtype=np.uint8)
    raise ValueError(f"unknown background {chosen!r}; expected one of {BACKGROUNDS} or 'mixed'")


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        width = height = int(image_size)
    else:
        width, height = (int(v) for v in image_size)
    if width < 8 or height < 8:
        raise ValueError(f"image_size must be at least 8x8 pixels, got {(width, height)}")
    return width, height


def _size_range(
    image_size: tuple[int, int], n_objects: int, min_size: int | None, max_size: int | None
) -> tuple[int, int]:
    width, height = image_size
    short = min(width, height)
    # The objects' squares cover at most ~36% of the image, so random placement rarely fails.
    cap = max(_MIN_SHAPE_PX, int(math.sqrt(width * height * 0.36 / max(1, n_objects))))
    lo = min_size if min_size is not None else min(max(_MIN_SHAPE_PX, round(0.14 * short)), cap)
    hi = max_size if max_size is not None else min(round(0.6 * short), cap)
    lo = max(1, min(int(lo), short))
    hi = max(lo, min(int(hi), short))
    return lo, hi


def _conflicts(
    box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], gap: int, max_overlap: float
) -> bool:
    x1, y1, x2, y2 = box
    for bx1, by1, bx2, by2 in placed:
        if max_overlap <= 0:
            if x1 - gap < bx2 and bx1 < x2 + gap and y1 - gap < by2 and by1 < y2 + gap:
                return True
            continue
        iw = min(x2, bx2) - max(x1, bx1)
        ih = min(y2, by2) - max(y1, by1)
        if iw > 0 and ih > 0:
            inter = iw * ih
            union = (x2 - x1) * (y2 - y1) + (bx2 - bx1) * (by2 - by1) - inter
            if inter / union > max_overlap:
                return True
    return False


def render_scene(
    rng: np.random.Generator,
    kinds: Sequence[tuple[str, str]],
    *,
    image_size: int | Sequence[int] = (112, 112),
    background: str | Sequence[str] = "mixed",
    min_size: int | None = None,
    max_size: int | None = None,
    gap: int = 2,
    max_overlap: float = 0.0,
    attempts: int = 60,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw one shape per `(color, shape)` in `kinds` at random sizes and places, and return the image with
    the exact extent of every shape.

    Shapes are drawn without anti-aliasing, in order, each inside an s×s square (s uniform in
    `[min_size, max_size]`, defaults scaled to the image and to the number of shapes). With
    `max_overlap=0` the squares are at least `gap` pixels apart; otherwise their IoU is at most
    `max_overlap` and later shapes hide earlier ones. A shape that finds no room after `attempts` tries,
    even shrunk to the minimum size, is left out (its `kind_index` is then missing from the result).

    Returns:
        `(image, objects)`: an RGB image of `image_size = (width, height)`, and one dict per drawn shape in
        drawing order with `bbox_2d` `[x1, y1, x2, y2]` (integers; the tight extent of the shape's visible
        pixels, `x1 <= x < x2`), `point_2d` `[x, y]` (the centroid of those pixels, 0.1 px), `label`
        `"{color} {shape}"`, `color`, `shape` and `kind_index` (position in `kinds`).

    Example:
    ```python
    >>> rng = np.random.default_rng(0)
    >>> image, objects = render_scene(rng, [("red", "circle"), ("blue", "square")], background="grey")
    >>> image.size, [o["label"] for o in objects]
    ((112, 112), ['red circle', 'blue square'])
    >>> x1, y1, x2, y2 = objects[1]["bbox_2d"]
    >>> pixels = np.asarray(image)
    >>> bool((pixels[y1:y2, x1:x2] == COLORS["blue"]).all())  # a square fills its box
    True

    ```
    """
    width, height = _as_size(image_size)
    for color, shape in kinds:
        if color not in COLORS:
            raise ValueError(f"unknown color {color!r}; expected one of {tuple(COLORS)}")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    lo, hi = _size_range((width, height), len(kinds), min_size, max_size)
    shrink_floor = min(lo, _MIN_SHAPE_PX) if min_size is None else lo
    pixels = _background(rng, background, width, height, avoid=[COLORS[c] for c, _ in kinds])
    owner = np.full((height, width), -1, dtype=np.int32)
    placed: list[tuple[int, int, int, int]] = []
    windows: dict[int, tuple[int, int, int]] = {}
    for index, (color, shape) in enumerate(kinds):
        size = int(rng.integers(lo, hi + 1))
        spot = None
        while spot is None:
            for _ in range(attempts):
                x = int(rng.integers(0, width - size + 1))
                y = int(rng.integers(0, height - size + 1))
                if not _conflicts((x, y, x + size, y + size), placed, gap, max_overlap):
                    spot = (x, y)
                    break
            if spot is not None or size <= shrink_floor:
                break
            size = max(shrink_floor, int(size * 0.8))
        if spot is None:
            continue
        x, y = spot
        mask = _shape_mask(shape, size)
        owner[y : y + size, x : x + size][mask] = index
        pixels[y : y + size, x : x + size][mask] = COLORS[color]
        placed.append((x, y, x + size, y + size))
        windows[index] = (x, y, size)
    objects = []
    for index, (x, y, size) in windows.items():
        ys, xs = np.nonzero(owner[y : y + size, x : x + size] == index)
        if xs.size == 0:  # entirely hidden by later shapes
            continue
        color, shape = kinds[index]
        objects.append(
            {
                "bbox_2d": [
                    x + int(xs.min()),
                    y + int(ys.min()),
                    x + int(xs.max()) + 1,
                    y + int(ys.max()) + 1,
                ],
                "point_2d": [round(x + float(xs.mean()) + 0.5, 1), round(y + float(ys.mean()) + 0.5, 1)],
                "label": f"{color} {shape}",
                "color": color,
                "shape": shape,
                "kind_index": index,
            }
        )
    return Image.fromarray(pixels), objects


# --------------------------------------------------------------------------------------------- text


def render_text(
    text: str,
    *,
    image_size: int | Sequence[int] | None = None,
    font_size: int = 16,
    language: str = "en",
    font: str | None = None,
    position: tuple[int, int] | None = None,
    color: tuple[int, int, int] = (0, 0, 0),
    background: tuple[int, int, int] | np.ndarray = (255, 255, 255),
    spacing: int = 4,
    margin: int = 4,
) -> Image.Image:
    """Render `text` (lines separated by `\\n`) with a real font.

    Without `image_size` the image is just large enough for the text plus `margin`; without `position`
    the text is placed at the margin. `background` is an RGB triple or an `[H, W, 3]` uint8 array.

    Example:
    ```python
    >>> image = render_text("hello world")
    >>> image.mode, image.size[0] > image.size[1]
    ('RGB', True)
    >>> bool((np.asarray(image) < 128).any())  # dark ink on white
    True

    ```
    """
    face = load_font(font_size, language, font)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=face, spacing=spacing)
    if image_size is None:
        size = (max(1, right - left) + 2 * margin, max(1, bottom - top) + 2 * margin)
    else:
        size = _as_size(image_size)
    if position is None:
        position = (margin - left, margin - top)
    if isinstance(background, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(background[: size[1], : size[0], :3], dtype=np.uint8))
    else:
        image = Image.new("RGB", size, tuple(int(v) for v in background))
    ImageDraw.Draw(image).multiline_text(position, text, font=face, fill=tuple(color), spacing=spacing)
    return image


def _random_word(rng: np.random.Generator, language: str) -> str:
    if language == "zh":
        length = int(rng.integers(2, 5))
        return "".join(_ZH_CHARS[int(i)] for i in rng.integers(len(_ZH_CHARS), size=length))
    word = _EN_WORDS[int(rng.integers(len(_EN_WORDS)))]
    style = rng.random()
    if style < 0.15:
        return word.capitalize()
    if style < 0.2:
        return word.upper()
    if style < 0.27:
        return str(int(rng.integers(0, 10000)))
    return word


def render_text_scene(
    rng: np.random.Generator,
    *,
    image_size: int | Sequence[int] = (112, 112),
    language: str = "en",
    min_words: int | None = None,
    max_words: int | None = None,
    font: str | None = None,
    background: str = "plain",
) -> tuple[Image.Image, str]:
    """Random words (English) or 2–4 character words (Chinese) laid out in lines that fit the image,
    rendered dark on a light background; returns `(image, text)` with lines joined by `\\n`.

    The number of words is drawn in `[min_words, max_words]` and reduced when they do not fit; the text's
    ink always lies fully inside the image. `background="noise"` adds faint grey noise.

    Example:
    ```python
    >>> image, text = render_text_scene(np.random.default_rng(0), image_size=(160, 64))
    >>> image.size, len(text) > 0
    ((160, 64), True)

    ```
    """
    width, height = _as_size(image_size)
    if language not in _DEFAULT_WORDS:
        raise ValueError(f"unknown language {language!r}; expected 'en' or 'zh'")
    lo_words, hi_words = _DEFAULT_WORDS[language]
    lo_words = max(1, int(min_words if min_words is not None else lo_words))
    hi_words = max(lo_words, int(max_words if max_words is not None else hi_words))
    n_words = int(rng.integers(lo_words, hi_words + 1))
    words = [_random_word(rng, language) for _ in range(n_words)]
    joiner = "" if language == "zh" else " "
    margin = 3
    spacing = 3
    font_size = int(rng.integers(max(9, height // 9), max(10, height // 4) + 1))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    room = (width - 2 * margin, height - 2 * margin)

    def layout(chosen: list[str], face) -> str:
        lines: list[str] = []
        for word in chosen:
            candidate = lines[-1] + joiner + word if lines else word
            if lines and probe.textlength(candidate, font=face) <= room[0]:
                lines[-1] = candidate
            else:
                lines.append(word)
        return "\n".join(lines)

    def fits(candidate: str, face) -> bool:
        left, top, right, bottom = probe.multiline_textbbox((0, 0), candidate, font=face, spacing=spacing)
        return right - left <= room[0] and bottom - top <= room[1]

    while True:
        face = load_font(font_size, language, font)
        # Drop words from the end until the ink fits; shrink the font when not even one word fits.
        chosen = list(words)
        text = layout(chosen, face)
        while chosen and not fits(text, face):
            chosen.pop()
            text = layout(chosen, face)
        if chosen or font_size <= 6:
            break
        font_size = max(6, int(font_size * 0.8))
    if not chosen:  # a tiny image: keep as many characters of the first word as fit
        text = words[0][:1]
        for end in range(len(words[0]), 0, -1):
            if fits(words[0][:end], face):
                text = words[0][:end]
                break
    left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=face, spacing=spacing)
    slack_x = max(0, width - 2 * margin - (right - left))
    slack_y = max(0, height - 2 * margin - (bottom - top))
    position = (
        margin - left + int(rng.integers(0, slack_x + 1)),
        margin - top + int(rng.integers(0, slack_y + 1)),
    )
    paper = rng.integers(200, 256, size=3)
    ink = rng.integers(0, 70, size=3)
    canvas: tuple[int, int, int] | np.ndarray
    if background == "noise":
        noise = rng.integers(-20, 1, size=(height, width, 1))
        canvas = np.clip(paper[None, None, :] + noise, 0, 255).astype(np.uint8)
    elif background == "plain":
        canvas = (int(paper[0]), int(paper[1]), int(paper[2]))
    else:
        raise ValueError(f"unknown OCR background {background!r}; expected 'plain' or 'noise'")
    image = render_text(
        text,
        image_size=(width, height),
        font_size=font_size,
        language=language,
        font=font,
        position=position,
        color=(int(ink[0]), int(ink[1]), int(ink[2])),
        background=canvas,
        spacing=spacing,
    )
    return image, text


# --------------------------------------------------------------------------------------------- label noise


def jitter_box(
    box: Sequence[float],
    rng: np.random.Generator,
    mode: str,
    noise_px: int,
    image_size: Sequence[int],
) -> list[int]:
    """An imperfect training box: `"loose"` pushes every side `noise_px` outward, `"shift"` moves the box
    `noise_px` right and down (a systematic annotation offset), `"random"` moves each coordinate by an
    independent integer in `[-noise_px, noise_px]`. The result is clipped to the image and keeps `x1 < x2`,
    `y1 < y2`.

    Example:
    ```python
    >>> rng = np.random.default_rng(0)
    >>> jitter_box([10, 10, 20, 20], rng, "loose", 3, (112, 112))
    [7, 7, 23, 23]
    >>> jitter_box([10, 10, 20, 20], rng, "shift", 3, (112, 112))
    [13, 13, 23, 23]

    ```
    """
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    n = int(noise_px)
    if mode == "loose":
        x1, y1, x2, y2 = x1 - n, y1 - n, x2 + n, y2 + n
    elif mode == "shift":
        x1, y1, x2, y2 = x1 + n, y1 + n, x2 + n, y2 + n
    elif mode == "random":
        dx1, dy1, dx2, dy2 = (int(v) for v in rng.integers(-n, n + 1, size=4))
        x1, y1, x2, y2 = x1 + dx1, y1 + dy1, x2 + dx2, y2 + dy2
    else:
        raise ValueError(f"unknown box_jitter {mode!r}; expected one of {BOX_JITTERS}")
    width, height = int(image_size[0]), int(image_size[1])
    x1 = min(max(x1, 0), width - 1)
    y1 = min(max(y1, 0), height - 1)
    x2 = min(max(x2, x1 + 1), width)
    y2 = min(max(y2, y1 + 1), height)
    return [x1, y1, x2, y2]


def _jitter_point(
    point: Sequence[float], rng: np.random.Generator, mode: str, noise_px: int, image_size
) -> list[float]:
    x, y = float(point[0]), float(point[1])
    if mode == "shift":
        x, y = x + noise_px, y + noise_px
    elif mode == "random":
        dx, dy = rng.integers(-noise_px, noise_px + 1, size=2)
        x, y = x + int(dx), y + int(dy)
    # "loose" leaves centres where they are.
    return [round(min(max(x, 0.0), image_size[0]), 1), round(min(max(y, 0.0), image_size[1]), 1)]


def _jitter_solution(
    task: str, solution: Any, rng: np.random.Generator, mode: str, noise_px: int, image_size
) -> Any:
    if task == "grounding":
        return jitter_box(solution, rng, mode, noise_px, image_size)
    if task in ("detection", "ovd"):
        return [
            {"bbox_2d": jitter_box(o["bbox_2d"], rng, mode, noise_px, image_size), "label": o["label"]}
            for o in solution
        ]
    if task == "counting":
        points = [_jitter_point(p, rng, mode, noise_px, image_size) for p in solution["points"]]
        return {"count": solution["count"], "points": points}
    return solution  # OCR text has no boxes


# --------------------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class _Options:
    image_size: tuple[int, int]
    min_objects: int | None
    max_objects: int | None
    max_distractors: int | None
    min_size: int | None
    max_size: int | None
    max_overlap: float
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    background: str | tuple[str, ...]
    language: str
    font: str | None
    shuffle_objects: bool
    vqa_questions: tuple[str, ...] = VQA_QUESTIONS


def _object_range(task: str, opts: _Options) -> tuple[int, int]:
    lo, hi = _DEFAULT_OBJECTS[task]
    floor = 1 if task == "grounding" else 0
    lo = max(floor, int(opts.min_objects if opts.min_objects is not None else lo))
    hi = int(opts.max_objects if opts.max_objects is not None else max(hi, lo))
    if hi < lo:
        raise ValueError(f"max_objects ({hi}) must be >= min_objects ({lo}) for task {task!r}")
    return lo, hi


_GROUNDING_SCENES = 20
"""Scenes drawn for one grounding sample before its settings are declared impossible."""


def _order(rng: np.random.Generator, items: list[Any], key_xy, shuffle: bool) -> list[Any]:
    if shuffle:
        return [items[int(i)] for i in rng.permutation(len(items))]
    return sorted(items, key=lambda item: (key_xy(item)[1], key_xy(item)[0]))


def _sample(
    task: str, rng: np.random.Generator, opts: _Options
) -> tuple[Image.Image, Any, dict[str, str], list[dict[str, Any]]]:
    """(image, solution, prompt fields, every drawn object) of one sample."""
    kinds_all = [(c, s) for c in opts.colors for s in opts.shapes]
    scene = dict(
        image_size=opts.image_size,
        background=opts.background,
        min_size=opts.min_size,
        max_size=opts.max_size,
        max_overlap=opts.max_overlap,
    )
    if task == "ocr":
        lo, hi = (opts.min_objects, opts.max_objects)
        bg = "noise" if rng.random() < 0.3 else "plain"
        image, text = render_text_scene(
            rng, image_size=opts.image_size, language=opts.language, min_words=lo, max_words=hi,
            font=opts.font, background=bg,
        )  # fmt: skip
        return image, text, {}, []
    if task == "vqa":
        image, answer, extra, objects = _vqa_sample(rng, opts)
        return image, answer, {**extra["fields"], "target_box": extra["target_box"]}, objects
    lo, hi = _object_range(task, opts)
    if task == "grounding":
        target = kinds_all[int(rng.integers(len(kinds_all)))]
        others = [k for k in kinds_all if k != target]
        n_distractors = int(rng.integers(lo, hi + 1)) - 1 if others else 0
        kinds = [target]
        if others:
            kinds += [others[int(i)] for i in rng.integers(len(others), size=n_distractors)]
        # The target may find no room, or be hidden by later shapes when they may overlap: draw again, a
        # bounded number of times, then say which setting leaves it no room.
        for _ in range(_GROUNDING_SCENES):
            image, objects = render_scene(rng, kinds, **scene)
            box = next((o["bbox_2d"] for o in objects if o["kind_index"] == 0), None)
            if box is not None:
                return image, box, {"question": f"{target[0]} {target[1]}"}, objects
        raise ValueError(
            f"grounding: the target shape was not visible in any of {_GROUNDING_SCENES} scenes of "
            f"{len(kinds)} shapes on {opts.image_size[0]}x{opts.image_size[1]} pixels with "
            f"min_size={opts.min_size}, max_size={opts.max_size}, max_overlap={opts.max_overlap}: lower "
            "max_objects, min_size or max_overlap, or enlarge image_size"
        )
    if task == "counting":
        target = kinds_all[int(rng.integers(len(kinds_all)))]
        others = [k for k in kinds_all if k != target]
        k = int(rng.integers(lo, hi + 1))
        max_distractors = 3 if opts.max_distractors is None else max(0, int(opts.max_distractors))
        n_distractors = int(rng.integers(0, max_distractors + 1)) if others else 0
        kinds = [target] * k + [others[int(i)] for i in rng.integers(max(1, len(others)), size=n_distractors)]
        image, objects = render_scene(rng, kinds, **scene)
        points = [o["point_2d"] for o in objects if o["kind_index"] < k]
        points = _order(rng, points, lambda p: p, opts.shuffle_objects)
        label = f"{target[0]} {_plural(target[1])}"
        return image, {"count": len(points), "points": points}, {"label": label}, objects
    if task == "detection":
        n = int(rng.integers(lo, hi + 1))
        kinds = [kinds_all[int(i)] for i in rng.integers(len(kinds_all), size=n)]
        image, objects = render_scene(rng, kinds, **scene)
        boxes = [{"bbox_2d": o["bbox_2d"], "label": o["label"]} for o in objects]
        boxes = _order(rng, boxes, lambda o: o["bbox_2d"], opts.shuffle_objects)
        categories = ", ".join(shape_vocabulary(opts.colors, opts.shapes))
        return image, boxes, {"categories": categories}, objects
    if task == "ovd":
        n = int(rng.integers(lo, hi + 1))
        kinds = [kinds_all[int(i)] for i in rng.integers(len(kinds_all), size=n)]
        image, objects = render_scene(rng, kinds, **scene)
        present = list(dict.fromkeys(o["label"] for o in objects))
        absent = [label for label in shape_vocabulary(opts.colors, opts.shapes) if label not in present]
        negatives = [absent[int(i)] for i in rng.permutation(len(absent))[:_OVD_NEGATIVES]]
        if negatives and rng.random() < _OVD_NEGATIVE_ONLY:
            present = []  # ask only for absent shapes: the answer is None
        boxes = [{"bbox_2d": o["bbox_2d"], "label": o["label"]} for o in objects if o["label"] in present]
        boxes = _order(rng, boxes, lambda o: o["bbox_2d"], opts.shuffle_objects)
        phrases = present + negatives
        phrases = [phrases[int(i)] for i in rng.permutation(len(phrases))]
        return image, boxes, {"phrases": ", ".join(phrases)}, objects
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _vqa_options(rng: np.random.Generator, truth: str, pool: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """`_VQA_OPTIONS` options holding `truth` and others from `pool`, shuffled, and the letter of `truth`."""
    others = [p for p in dict.fromkeys(pool) if p != truth]
    picked = [others[int(i)] for i in rng.permutation(len(others))[: _VQA_OPTIONS - 1]]
    options = [truth, *picked]
    options = [options[int(i)] for i in rng.permutation(len(options))]
    return tuple(options), CHOICE_LETTERS[options.index(truth)]


def _digit_options(rng: np.random.Generator, digits: str) -> list[str]:
    """Wrong readings of `digits`: the same length, one or two digits changed."""
    pool: list[str] = []
    while len(pool) < _VQA_OPTIONS - 1:
        chars = list(digits)
        for pos in rng.permutation(len(chars))[: int(rng.integers(1, 3))]:
            chars[int(pos)] = str((int(chars[int(pos)]) + int(rng.integers(1, 10))) % 10)
        candidate = "".join(chars)
        if candidate != digits and candidate not in pool:
            pool.append(candidate)
    return pool


def _vqa_sample(rng: np.random.Generator, opts: _Options) -> tuple[Image.Image, str, dict[str, Any], list[dict]]:
    """One V*-style row: large distractor shapes and one small target; the question asks about the target."""
    width, height = opts.image_size
    short = min(width, height)
    kind = opts.vqa_questions[int(rng.integers(len(opts.vqa_questions)))]
    lo = opts.min_size if opts.min_size is not None else max(_MIN_SHAPE_PX, round(_VQA_TARGET_SIDE * short))
    hi = opts.max_size if opts.max_size is not None else max(lo, round(1.25 * lo))
    side = int(rng.integers(lo, hi + 1))
    color = opts.colors[int(rng.integers(len(opts.colors)))]
    shape = opts.shapes[int(rng.integers(len(opts.shapes)))]
    # Distractors differ from the target in colour and shape, so "the small red object" names one thing.
    others_c = [c for c in opts.colors if c != color] or [c for c in COLORS if c != color]
    others_s = [t for t in opts.shapes if t != shape] or [t for t in SHAPES if t != shape]
    d_lo, d_hi = (
        (opts.min_objects, opts.max_objects) if opts.min_objects is not None else _VQA_DISTRACTORS
    )
    n_distractors = int(rng.integers(d_lo, max(d_lo, d_hi if d_hi is not None else d_lo) + 1))
    s_lo = max(side + 1, round(_VQA_DISTRACTOR_SIDE[0] * short))
    s_hi = max(s_lo, round(_VQA_DISTRACTOR_SIDE[1] * short))
    distractors = [
        (others_c[int(rng.integers(len(others_c)))], others_s[int(rng.integers(len(others_s)))],
         int(rng.integers(s_lo, s_hi + 1)))
        for _ in range(n_distractors)
    ]  # fmt: skip
    pixels = _background(rng, opts.background, width, height, avoid=[COLORS[color], COLORS["white"]])
    placed: list[tuple[int, int, int, int]] = []
    objects: list[dict[str, Any]] = []
    for d_color, d_shape, d_side in distractors:
        d_side = min(d_side, short)
        for _ in range(40):
            x, y = int(rng.integers(0, width - d_side + 1)), int(rng.integers(0, height - d_side + 1))
            if not _conflicts((x, y, x + d_side, y + d_side), placed, 4, 0.0):
                pixels[y : y + d_side, x : x + d_side][_shape_mask(d_shape, d_side)] = COLORS[d_color]
                placed.append((x, y, x + d_side, y + d_side))
                objects.append({"bbox_2d": list(placed[-1]), "label": f"{d_color} {d_shape}"})
                break
    if kind == "digits":
        digits = "".join(str(int(d)) for d in rng.integers(0, 10, size=3))
        font = load_font(side, path=opts.font)
        left, top, right, bottom = font.getbbox(digits)
        margin = max(1, side // 5)
        box_w, box_h = right - left + 2 * margin, bottom - top + 2 * margin
    else:
        box_w = box_h = side
    target = None
    for _ in range(200):
        x, y = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        if not _conflicts((x, y, x + box_w, y + box_h), placed, 2 * side, 0.0):
            target = (x, y)
            break
    if target is None:  # a crowded small image: the target may touch a distractor, never hide under one
        target = (int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1)))
    x, y = target
    if kind == "digits":
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        draw.rectangle([x, y, x + box_w - 1, y + box_h - 1], fill=COLORS["white"])
        draw.text((x + margin - left, y + margin - top), digits, fill=COLORS["black"], font=font)
        box = [x, y, x + box_w, y + box_h]
        question = "What number is written on the small white sign?"
        options, answer = _vqa_options(rng, digits, _digit_options(rng, digits))
        label = f"sign {digits}"
    else:
        mask = _shape_mask(shape, side)
        pixels[y : y + side, x : x + side][mask] = COLORS[color]
        ys, xs = np.nonzero(mask)
        box = [x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1]
        image = Image.fromarray(pixels)
        label = f"{color} {shape}"
        if kind == "color":
            question = f"What is the colour of the small {shape}?"
            options, answer = _vqa_options(rng, color, [*others_c, *COLORS])
        else:
            question = f"What is the shape of the small {color} object?"
            options, answer = _vqa_options(rng, shape, [*others_s, *SHAPES])
    objects.append({"bbox_2d": box, "label": label, "target": True})
    fields = {"question": question, "options": options}
    return image, answer, {"fields": fields, "target_box": [float(v) for v in box]}, objects


def _sample_rng(seed: int, task: str, index: int, stream: int = 0) -> np.random.Generator:
    # One independent stream per (seed, task, row): row i does not depend on n, and the label-noise stream
    # (stream 1) leaves images and exact solutions identical to a run without noise.
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _TASK_IDS.get(task, 7), int(index), int(stream)])


def _check_options(opts: _Options) -> None:
    if not opts.shapes or not opts.colors:
        raise ValueError("shapes and colors must not be empty")
    for shape in opts.shapes:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    for color in opts.colors:
        if color not in COLORS:
            raise ValueError(f"unknown color {color!r}; expected one of {tuple(COLORS)}")
    if opts.font is not None and not os.path.isfile(opts.font):
        raise FileNotFoundError(f"font file {opts.font!r} not found")
    if opts.language not in ("en", "zh"):
        raise ValueError(f"unknown language {opts.language!r}; expected 'en' or 'zh'")
    backgrounds = (opts.background,) if isinstance(opts.background, str) else opts.background
    allowed = (*BACKGROUNDS, "mixed", "gray", "colour")
    if not backgrounds or any(b not in allowed for b in backgrounds):
        raise ValueError(f"unknown background {opts.background!r}; expected one of {allowed}")
    if not 0.0 <= opts.max_overlap < 1.0:
        raise ValueError(f"max_overlap must be in [0, 1), got {opts.max_overlap}")


def _options(
    image_size: tuple[int, int],
    min_objects: int | None,
    max_objects: int | None,
    max_distractors: int | None,
    min_size: int | None,
    max_size: int | None,
    max_overlap: float,
    shapes: Sequence[str],
    colors: Sequence[str],
    background: str | Sequence[str],
    language: str,
    font: str | None,
    shuffle_objects: bool,
) -> _Options:
    """The checked sampling options of `make_sample` / `make_synthetic`."""
    opts = _Options(
        image_size=image_size,
        min_objects=min_objects,
        max_objects=max_objects,
        max_distractors=max_distractors,
        min_size=min_size,
        max_size=max_size,
        max_overlap=float(max_overlap),
        shapes=tuple(shapes),
        colors=tuple(colors),
        background=background if isinstance(background, str) else tuple(background),
        language=language,
        font=font,
        shuffle_objects=bool(shuffle_objects),
    )
    _check_options(opts)
    return opts


def _require_cjk_font(needs_ocr: bool, language: str, font: str | None) -> None:
    """Chinese OCR samples need a CJK font: fail early, with the install hint, when none is found."""
    if needs_ocr and language == "zh" and font is None:
        load_font(12, "zh")  # raises RuntimeError naming a CJK font to install when none is found


def make_sample(
    task: str,
    rng: np.random.Generator,
    *,
    image_size: int | Sequence[int] | None = None,
    min_objects: int | None = None,
    max_objects: int | None = None,
    max_distractors: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    max_overlap: float = 0.0,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    colors: Sequence[str] = DEFAULT_COLORS,
    background: str | Sequence[str] = "mixed",
    language: str = "en",
    font: str | None = None,
    shuffle_objects: bool = True,
    vqa_questions: Sequence[str] = VQA_QUESTIONS,
) -> dict[str, Any]:
    """One synthetic sample as plain Python values: `image` (PIL), `task`, `solution` (absolute pixels of
    the image), `image_size`, `fields` (the prompt-template fields: `question`, `label` or `categories`)
    and `objects` (every drawn shape, distractors included, as `render_scene` returns them; empty for OCR);
    VQA samples also have `target_box`. Parameters mean what they mean for `make_synthetic`.

    Example:
    ```python
    >>> sample = make_sample("counting", np.random.default_rng(0), max_objects=3)
    >>> sample["solution"]["count"] == len(sample["solution"]["points"]), sample["fields"]["label"][-1]
    (True, 's')

    ```
    """
    opts = _options(
        _default_size(task, image_size), min_objects, max_objects, max_distractors, min_size, max_size, max_overlap,
        shapes, colors, background, language, font, shuffle_objects,
    )  # fmt: skip
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    _require_cjk_font(task == "ocr", language, font)
    opts = _with_vqa_questions(opts, vqa_questions)
    image, solution, fields, objects = _sample(task, rng, opts)
    extra = {"target_box": fields.pop("target_box")} if task == "vqa" else {}
    return {
        "image": image,
        "task": task,
        "solution": solution,
        "image_size": list(image.size),
        "fields": fields,
        "objects": objects,
        **extra,
    }


def _default_size(task: Any, image_size: int | Sequence[int] | None) -> tuple[int, int]:
    if image_size is None:
        return VQA_IMAGE_SIZE if task == "vqa" else (112, 112)
    return _as_size(image_size)


def _with_vqa_questions(opts: _Options, questions: Sequence[str]) -> _Options:
    questions = tuple(questions)
    if not questions or any(q not in VQA_QUESTIONS for q in questions):
        raise ValueError(f"vqa_questions must name some of {VQA_QUESTIONS}, got {questions!r}")
    return dataclasses.replace(opts, vqa_questions=questions)


def _grid_size(image_size: tuple[int, int], box_format: str, min_pixels: int | None, max_pixels: int | None):
    size = image_size
    # smart_resize maps an on-grid size within the limits to itself; a second pass settles the rare sizes
    # that one rounding step leaves just outside the limits.
    for _ in range(4):
        resized = tuple(grid_size(size, box_format, min_pixels, max_pixels))
        if resized == tuple(size):
            break
        size = resized
    return int(size[0]), int(size[1])


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def make_synthetic(
    task: str | Sequence[str],
    num_samples: int,
    seed: int = 0,
    *,
    image_size: int | Sequence[int] | None = None,
    box_format: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    fit_to_grid: bool = True,
    min_objects: int | None = None,
    max_objects: int | None = None,
    max_distractors: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    max_overlap: float = 0.0,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    colors: Sequence[str] = DEFAULT_COLORS,
    background: str | Sequence[str] = "mixed",
    language: str = "en",
    font: str | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    think: bool = False,
    shuffle_objects: bool = True,
    box_jitter: str | None = None,
    box_noise_px: int = 3,
    vqa_questions: Sequence[str] = VQA_QUESTIONS,
) -> datasets.Dataset:
    """A synthetic dataset in the row contract, with exact ground truth, for tests, smoke runs and small
    learning experiments.

    Tasks:
        - `"grounding"`: one target shape and distractors that differ in colour or shape; the question is
          `"{color} {shape}"` and the solution its box `[x1, y1, x2, y2]`.
        - `"counting"`: k shapes of one kind among distractors of other kinds; the label is
          `"{color} {shape}s"` and the solution `{"count": k, "points": [[x, y], ...]}` (centroids).
        - `"detection"`: several shapes; the prompt lists the vocabulary `"{color} {shape}"` of every colour
          and shape, the solution is `[{"bbox_2d": [...], "label": ...}, ...]`.
        - `"ocr"`: random words (`language="en"`) or Chinese words (`"zh"`, needs a CJK font such as
          `fonts-wqy-microhei`) in lines that fit the image; the solution is the text, lines joined by `\\n`.
        - `"ovd"`: open-vocabulary detection: 1-4 shapes; the prompt asks for the `"{color} {shape}"` of the
          shapes present and two absent ones, shuffled (a quarter of the rows only absent ones); the solution
          holds the boxes of the present shapes asked, `[]` when none is.
        - `"vqa"`: V*-style high-resolution multiple choice (default 2000×1500): large distractor shapes and
          one small target (0.5% of the short side, 8-10 px) whose colour, shape, or 3-digit sign
          (`vqa_questions`) the question asks about, with 4 lettered options; the solution is the letter,
          `options` the choices and `target_box` the target's box in pixels of `image`. The target is lost at
          a model's pixel budget and legible in a crop (the "look again" task, see `trl_perception.crop`).
          With a `box_format` the image keeps its size (crops need the original pixels) and `input_size` is
          the size the model sees under `min_pixels`/`max_pixels`. `min_size`/`max_size` set the target's
          side (the sign's text height), `min_objects`/`max_objects` the number of distractors (3–8).
        - `"mixed"` (Perception-R1's four tasks) or a list of tasks: each row's task drawn uniformly;
          solutions become JSON strings.

    Boxes are the tight extent of the drawn pixels in absolute pixels of `image` (`x1 <= x < x2`, so a box's
    width is its pixel count): whole numbers, stored as float64 like every builder's boxes (the features
    come from `row_features`), so synthetic and real datasets concatenate. Row `i` depends
    only on `(seed, task, i)`: the same call gives identical image bytes and solutions, and a larger
    `num_samples` extends a smaller one.

    Args:
        task: `"grounding"`, `"counting"`, `"ocr"`, `"detection"`, `"mixed"` or a list of tasks.
        num_samples: number of rows.
        seed: random seed.
        image_size: `(width, height)` (or one int); default 112×112 (VQA: `VQA_IMAGE_SIZE`). With a `box_format`
            and `fit_to_grid` (not for VQA), it is replaced by
            the nearest size the model's processor leaves unchanged (e.g. 112×112 stays 112×112 for
            Qwen2.5-VL; Qwen3-VL's default `min_pixels` makes it 256×256).
        box_format: the model's box format; adds the `box_format` and `input_size` columns and the model's output
            format instruction to the prompt.
        min_pixels, max_pixels: the processor's pixel limits (default: the checkpoints' own).
        min_objects, max_objects: grounding: shapes in the scene (1–3); counting: the count (1–5);
            detection: shapes (2–5); OCR: words (1–6 English, 1–4 Chinese).
        max_distractors: counting only: up to this many shapes of other kinds (3).
        min_size, max_size: side of each shape's square in pixels (default: scaled to the image and the
            number of shapes; 16–67 for one shape in 112×112).
        max_overlap: 0 keeps shapes apart; above 0, boxes may overlap up to this IoU (GT then covers the
            visible pixels). A grounding scene whose target finds no room or is hidden is drawn again; after
            20 such scenes the settings are refused with a `ValueError` naming them.
        shapes, colors: names from `SHAPES` and `COLORS`.
        background: `"grey"`, `"color"`, `"noise"`, `"mixed"` (one of the three per image) or a list.
        language, font: OCR language and an optional font file.
        template, system_prompt: passed to `build_prompt`.
        think (`bool`): ask for R1-style `<think>…</think><answer>…</answer>` (`data.prompts.THINK_INSTRUCTION`
            appended to the user text, after the template and the box format's instruction).
        shuffle_objects: detection boxes and counting points in random order per row, as real annotations
            are; `False` gives reading order (top to bottom, then left to right).
        box_jitter: imperfect supervision for training: `"loose"`, `"shift"` or `"random"` (see
            `jitter_box`) applied to the `solution` boxes (and counting points), with the exact ground truth
            kept in an `exact_solution` column. Images are the same as without jitter.
        box_noise_px: size of the jitter in pixels.
        vqa_questions: what VQA questions ask about: some of `VQA_QUESTIONS`.

    Returns:
        `datasets.Dataset` with columns `prompt`, `image`, `task`, `solution`, `image_size`, plus
        `box_format` and `input_size` with a box format, `exact_solution` with `box_jitter`, and `options`
        and `target_box` for VQA.

    Example:
    ```python
    >>> ds = make_synthetic("grounding", 4, seed=0, box_format="qwen2_5_vl")
    >>> row = ds[0]
    >>> row["task"], row["image_size"], row["input_size"], row["image"].size
    ('grounding', [112, 112], [112, 112], (112, 112))
    >>> x1, y1, x2, y2 = row["solution"]
    >>> 0 <= x1 < x2 <= 112 and 0 <= y1 < y2 <= 112
    True
    >>> make_synthetic("detection", 2, seed=0)[0]["solution"][0].keys()
    dict_keys(['bbox_2d', 'label'])

    ```
    """
    if isinstance(task, str):
        tasks = _MIXED_TASKS if task == "mixed" else (task,)
    else:
        tasks = tuple(task)
    if not tasks or any(t not in TASKS or t == "jigsaw" for t in tasks):  # puzzles come from make_jigsaw
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS} but jigsaw, 'mixed' or a list of them")
    mixed = not isinstance(task, str) or task == "mixed"
    if mixed and "vqa" in tasks:
        raise ValueError("vqa rows have columns of their own (options, target_box): make them alone, not mixed")
    if int(num_samples) < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if box_jitter is not None and box_jitter not in BOX_JITTERS:
        raise ValueError(f"unknown box_jitter {box_jitter!r}; expected one of {BOX_JITTERS} or None")
    if box_noise_px < 0:
        raise ValueError(f"box_noise_px must be >= 0, got {box_noise_px}")
    size = _default_size(tasks[0], image_size)
    vqa = tasks == ("vqa",)
    input_size = None
    if box_format is not None:
        if fit_to_grid and not vqa:
            size = _grid_size(size, box_format, min_pixels, max_pixels)
        input_size = list(model_input_size(size, box_format, min_pixels=min_pixels, max_pixels=max_pixels))
    opts = _options(
        size, min_objects, max_objects, max_distractors, min_size, max_size, max_overlap,
        shapes, colors, background, language, font, shuffle_objects,
    )  # fmt: skip
    _require_cjk_font("ocr" in tasks, language, font)
    opts = _with_vqa_questions(opts, vqa_questions)

    prompts = {t: PromptCache(t, box_format, template, system_prompt, think=think) for t in tasks}
    columns: dict[str, list[Any]] = {"prompt": [], "image": [], "task": [], "solution": [], "image_size": []}
    if box_format is not None:
        columns["box_format"] = []
        columns["input_size"] = []
    if box_jitter is not None:
        columns["exact_solution"] = []
    if vqa:
        columns["options"], columns["target_box"] = [], []
    for index in range(int(num_samples)):
        if mixed:
            row_task = tasks[
                int(np.random.default_rng([int(seed) & 0xFFFFFFFF, 99, index]).integers(len(tasks)))
            ]
        else:
            row_task = tasks[0]
        image, solution, fields, _ = _sample(row_task, _sample_rng(seed, row_task, index), opts)
        if vqa:
            columns["target_box"].append(fields.pop("target_box"))
            columns["options"].append(list(fields["options"]))
        train_solution = solution
        if box_jitter is not None:
            noise_rng = _sample_rng(seed, row_task, index, stream=1)
            train_solution = _jitter_solution(
                row_task, solution, noise_rng, box_jitter, box_noise_px, image.size
            )
        prompt = prompts[row_task](**fields)
        columns["prompt"].append(prompt)
        columns["image"].append({"bytes": _png_bytes(image), "path": None})
        columns["task"].append(row_task)
        columns["solution"].append(
            json.dumps(train_solution, ensure_ascii=False) if mixed else train_solution
        )
        columns["image_size"].append(list(image.size))
        if box_format is not None:
            columns["box_format"].append(box_format)
            columns["input_size"].append(list(input_size))
        if box_jitter is not None:
            columns["exact_solution"].append(json.dumps(solution, ensure_ascii=False) if mixed else solution)
    features = row_features(None if mixed else tasks[0], with_box_format=box_format is not None)
    if box_jitter is not None:
        features["exact_solution"] = features["solution"]
    return rows_to_dataset(columns, features=features)
