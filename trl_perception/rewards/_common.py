"""Row handling shared by the rewards: completion text, ground-truth decoding, task routing, coordinate
frames, rate-limited warnings and the trainer's `log_metric` / `log_extra` hooks."""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._json import loads_strict
from ..boxes import FAMILIES, convert_frame, family_frame, model_input_size
from ..formats import (
    completion_text,
    strip_wrappers,
)

logger = logging.getLogger("trl_perception.rewards")

TASKS: tuple[str, ...] = ("grounding", "counting", "ocr", "detection")

PAD_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|eot_id|>")
"""Padding / end-of-turn tokens that may trail a completion decoded with `skip_special_tokens=False`."""


class MalformedSolution(ValueError):
    """The ground truth (or a frame column) of a row cannot be read; the row is skipped with a warning."""


# --------------------------------------------------------------------------------------------- warnings

_WARN_LOCK = threading.Lock()
_WARN_COUNTS: dict[str, int] = {}
_WARN_FIRST = 5


def warn_row(key: str, message: str) -> None:
    """Log `message` the first few times `key` occurs, then every 1000th time, so a bad column cannot flood
    the training log."""
    with _WARN_LOCK:
        count = _WARN_COUNTS.get(key, 0) + 1
        _WARN_COUNTS[key] = count
    if count <= _WARN_FIRST or count % 1000 == 0:
        suffix = (
            f" (occurrence {count}; further ones are logged every 1000th time)"
            if count >= _WARN_FIRST
            else ""
        )
        logger.warning("%s%s", message, suffix)


# ------------------------------------------------------------------------------------------ completions


def text_of(completion: Any) -> str:
    """Plain text of one completion (string or TRL conversational); never raises."""
    try:
        text = completion_text(completion)
    except Exception:  # noqa: BLE001 - an odd completion object must not stop the run
        return ""
    return text if isinstance(text, str) else str(text)


def remove_padding(text: str) -> str:
    """`text` without padding / end-of-turn tokens."""
    for token in PAD_TOKENS:
        if token in text:
            text = text.replace(token, "")
    return text


_EMPTY_ANSWER_RE = re.compile(r"(?:\[\s*\]|none|null|nothing|no objects?(?: found)?)?\s*\.?", re.IGNORECASE)


def is_empty_answer(text: str) -> bool:
    """Whether a completion explicitly answers "no object": empty text, `[]`, `None`, `null`, `nothing`,
    `No object(s) (found)` — after removing padding tokens, `<answer>` tags and code fences.

    Example:
    ```python
    >>> is_empty_answer("```json\\n[]\\n```<|im_end|>"), is_empty_answer("No objects."), is_empty_answer("garbage")
    (True, True, False)

    ```
    """
    try:
        body = strip_wrappers(text)
    except Exception:  # noqa: BLE001
        return False
    return len(body) <= 40 and _EMPTY_ANSWER_RE.fullmatch(body) is not None


# ----------------------------------------------------------------------------------------- ground truth


def decode_json(value: Any) -> Any:
    """A native value as is; a string through `json.loads` (NaN/Infinity rejected, never `eval`)."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            return loads_strict(value.strip())
        except (ValueError, RecursionError) as err:
            raise MalformedSolution(f"solution is not valid JSON ({err}): {value[:80]!r}") from err
    return value


def finite_number(value: Any, what: str) -> float:
    """`value` as a finite float; booleans, strings and non-finite numbers are malformed."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MalformedSolution(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise MalformedSolution(f"{what} must be finite, got {value!r}")
    return number


def number_list(value: Any, count: int, what: str) -> list[float]:
    """Exactly `count` finite numbers."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise MalformedSolution(f"{what} must be {count} numbers, got {value!r}")
    return [finite_number(v, what) for v in value]


def gt_box(value: Any, what: str = "box") -> list[float]:
    """A ground-truth `[x1, y1, x2, y2]` with ordered corners."""
    box = number_list(value, 4, what)
    if box[2] < box[0] or box[3] < box[1]:
        raise MalformedSolution(f"{what} {box} has x2 < x1 or y2 < y1")
    return box


def _plain_numbers(values: Any, count: int) -> bool:
    return (
        type(values) in (list, tuple)
        and len(values) == count
        and all(type(v) in (int, float) for v in values)  # bools and strings excluded
    )


def gt_boxes(values: Sequence[Any], what: str = "box") -> np.ndarray:
    """Ground-truth boxes `[M, 4]`, each 4 finite numbers with ordered corners, checked in one vectorized
    pass (per-box checks only to word the error)."""
    if all(_plain_numbers(v, 4) for v in values):
        boxes = np.asarray(values, dtype=np.float64).reshape(-1, 4)
        if (
            np.isfinite(boxes).all()
            and (boxes[:, 2] >= boxes[:, 0]).all()
            and (boxes[:, 3] >= boxes[:, 1]).all()
        ):
            return boxes
    return np.asarray([gt_box(v, f"{what} {k}") for k, v in enumerate(values)], dtype=np.float64).reshape(
        -1, 4
    )


def gt_points(values: Sequence[Any], what: str = "point") -> np.ndarray:
    """Ground-truth points `[N, 2]` of finite numbers, checked in one vectorized pass."""
    if all(_plain_numbers(v, 2) for v in values):
        points = np.asarray(values, dtype=np.float64).reshape(-1, 2)
        if np.isfinite(points).all():
            return points
    return np.asarray([number_list(v, 2, f"{what} {k}") for k, v in enumerate(values)]).reshape(-1, 2)


_MISSING = object()


class SolutionCache:
    """Decodes ground truth once per run of equal consecutive solutions: the rows of a GRPO group share one.

    The decoded value is shared between those rows and must not be modified.
    """

    def __init__(self, decode: Callable[[Any], Any]):
        self.decode = decode
        self._raw: Any = _MISSING
        self._value: Any = None
        self._error: MalformedSolution | None = None

    def __call__(self, raw: Any) -> Any:
        if self._raw is not _MISSING and type(raw) is type(self._raw):
            try:
                same = raw is self._raw or bool(raw == self._raw)
            except Exception:  # noqa: BLE001 - e.g. arrays of different shapes
                same = False
            if same:
                if self._error is not None:
                    raise self._error
                return self._value
        self._raw, self._value, self._error = raw, None, None
        try:
            self._value = self.decode(raw)
        except MalformedSolution as err:
            self._error = err
            raise
        return self._value


@functools.lru_cache(maxsize=8192)
def _normalize_label_text(text: str) -> str | None:
    return " ".join(text.split()).lower() or None


def normalize_label(label: Any) -> str | None:
    """Lower-case, trimmed, inner whitespace collapsed; `None` for a missing or empty label.

    Example:
    ```python
    >>> normalize_label("  Traffic   Light "), normalize_label("")
    ('traffic light', None)

    ```
    """
    if label is None or isinstance(label, (dict, list, tuple)):
        return None
    return _normalize_label_text(label if isinstance(label, str) else str(label))


# ------------------------------------------------------------------------------------------------ frames


def _size(value: Any, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = decode_json(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise MalformedSolution(f"{what} must be [width, height], got {value!r}")
    w, h = (finite_number(v, what) for v in value)
    if w <= 0 or h <= 0:
        raise MalformedSolution(f"{what} must be positive, got {value!r}")
    return w, h


@dataclass(frozen=True)
class Frame:
    """How to bring a row's predicted coordinates into the ground truth's frame (original-image pixels).

    `family` is the row's `box_format`; `scale` maps the family's frame (0–1000 or resized-input pixels)
    to original pixels per axis; `image_size` clips to the image. With no family, coordinates are taken as
    written; with no image size they are neither converted nor clipped.
    """

    family: str | None = None
    image_size: tuple[float, float] | None = None
    scale: tuple[float, float] = (1.0, 1.0)

    def to_image(self, coords: np.ndarray) -> np.ndarray:
        """Coordinates `[..., 2k]` (x at even, y at odd positions) in the ground-truth frame, clipped."""
        out = np.asarray(coords, dtype=np.float64)
        if out.size == 0 or (self.scale == (1.0, 1.0) and self.image_size is None):
            return out
        pairs = out.reshape(*out.shape[:-1], -1, 2)  # (x, y) pairs broadcast against per-axis factors
        if self.scale != (1.0, 1.0):
            pairs = pairs * self.scale
        if self.image_size is not None:
            pairs = np.clip(pairs, 0.0, self.image_size)
        return pairs.reshape(out.shape)

    def to_norm1000(self, coords: np.ndarray) -> np.ndarray:
        """Original-pixel coordinates in the 0–1000 frame of the image; as given without an image size."""
        out = np.asarray(coords, dtype=np.float64)
        if self.image_size is None or out.size == 0:
            return out
        w, h = self.image_size
        return (out.reshape(*out.shape[:-1], -1, 2) * (1000.0 / w, 1000.0 / h)).reshape(out.shape)


def _hashable_size(value: Any, what: str) -> tuple[float, float] | None:
    if type(value) in (list, tuple) and len(value) == 2 and all(type(v) in (int, float) for v in value):
        return (float(value[0]), float(value[1]))  # the usual case, validated by the cached builder
    return _size(value, what)


def frame_for(family: Any, image_size: Any, input_size: Any) -> Frame:
    """Build a row's `Frame` from its `box_format`, `image_size` and `input_size` values.

    For Qwen2.5-VL (absolute pixels of the resized input) without `input_size`, the input size is computed
    with `boxes.model_input_size` and the family's default pixel limits (those of the released checkpoints).
    """
    if isinstance(family, str) and not family.strip():
        family = None  # an empty cell means "no family"
    if family is not None and not isinstance(family, str):
        raise MalformedSolution(f"box_format must be one of {FAMILIES}, got {family!r}")
    size = _hashable_size(image_size, "image_size")
    in_size = _hashable_size(input_size, "input_size")
    if family is not None and size is None:
        warn_row(
            "frame-no-image-size",
            f"box_format={family!r} given without image_size: coordinates are compared as written",
        )
    return _build_frame(family, size, in_size)


@functools.lru_cache(maxsize=4096)
def _build_frame(family: str | None, size: tuple | None, in_size: tuple | None) -> Frame:
    # Rows of one GRPO group (and of one image) share their frame: build each distinct one once.
    if family is not None:
        if family.strip().lower() not in FAMILIES:
            raise MalformedSolution(f"box_format must be one of {FAMILIES}, got {family!r}")
        family = family.strip().lower()
    size = _size(size, "image_size")
    in_size = _size(in_size, "input_size")
    if family is None or size is None:
        return Frame(family=family, image_size=size)
    src = family_frame(family)
    if src == "input" and in_size is None:
        try:
            in_size = model_input_size((int(round(size[0])), int(round(size[1]))), family)
        except ValueError as err:
            raise MalformedSolution(f"cannot compute the input size of image_size={size}: {err}") from err
    sx, sy = convert_frame([1.0, 1.0], src, "pixels", size, in_size).tolist()
    return Frame(family=family, image_size=size, scale=(float(sx), float(sy)))


# -------------------------------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One completion to judge: its index in the batch, text, raw solution and frame."""

    index: int
    text: str
    solution: Any
    frame: Frame


def _column(kwargs: dict[str, Any], name: str, n: int) -> list[Any]:
    value = kwargs.get(name)
    if value is None:
        return [None] * n
    if isinstance(value, str):  # one value for every row, convenient outside a trainer
        return [value] * n
    try:
        values = list(value)
    except TypeError as err:
        raise ValueError(f"keyword {name!r} must hold one value per completion, got {value!r}") from err
    if len(values) != n:
        raise ValueError(f"keyword {name!r} has {len(values)} values for {n} completions")
    return values


def select_rows(
    reward_name: str,
    tasks: Sequence[str],
    completions: Sequence[Any],
    solution: Sequence[Any] | None,
    kwargs: dict[str, Any],
) -> tuple[list[Row], int]:
    """The rows a reward judges, and the batch size.

    A row is skipped (its reward stays `None`) when its `task` names a task outside `tasks`, or, with a
    logged warning, when its `box_format` / `image_size` / `input_size` value is malformed.
    """
    n = len(completions)
    if solution is None:
        solution = [None] * n
    elif isinstance(solution, (str, bytes)) or len(solution) != n:
        raise ValueError(
            f"{reward_name}: got {n} completions but solution is {type(solution).__name__} "
            f"of length {len(solution)}; pass one solution per completion"
        )
    task_col = _column(kwargs, "task", n)
    family_col = _column(kwargs, "box_format", n)
    size_col = _column(kwargs, "image_size", n)
    input_col = _column(kwargs, "input_size", n)
    rows = []
    for i in range(n):
        task = task_col[i]
        if isinstance(task, str) and task.strip() and task.strip().lower() not in tasks:
            continue
        try:
            frame = frame_for(family_col[i], size_col[i], input_col[i])
        except MalformedSolution as err:
            warn_row(f"{reward_name}-frame", f"{reward_name}: row {i} skipped (reward None): {err}")
            continue
        rows.append(Row(i, text_of(completions[i]), solution[i], frame))
    return rows, n


def call_safely(reward_name: str, row: Row, score: Callable[[Row], Any], failure: Any) -> Any:
    """`score(row)`; a malformed solution gives `None` with a warning, any other error `failure` with a
    warning, so one bad row never takes a training run down."""
    try:
        return score(row)
    except MalformedSolution as err:
        warn_row(f"{reward_name}-solution", f"{reward_name}: row {row.index} skipped (reward None): {err}")
        return None
    except Exception as err:  # noqa: BLE001 - scoring must never raise on model output
        warn_row(
            f"{reward_name}-error",
            f"{reward_name}: row {row.index} scored {failure!r} after an unexpected {type(err).__name__}: {err}",
        )
        return failure


# ---------------------------------------------------------------------------------------------- logging


class ComponentLog:
    """Per-row reward components, sent to the trainer's hooks as `<reward name>/<component>`.

    `log_metric` receives the mean of each component over the judged rows; `log_extra` receives one column
    per component with a value per completion (`None` for rows the reward did not judge). Prefixing with the
    reward's name keeps two rewards (or two settings of one) from writing into the same column.
    """

    def __init__(self, reward_name: str, n: int, components: Sequence[str]):
        self.reward_name = reward_name
        self.columns: dict[str, list[float | None]] = {c: [None] * n for c in components}

    def set(self, index: int, **values: float | None) -> None:
        for key, value in values.items():
            self.columns[key][index] = None if value is None else float(value)

    def emit(self, kwargs: dict[str, Any]) -> None:
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if callable(log_metric):
            for key, values in self.columns.items():
                judged = [v for v in values if v is not None]
                if judged:
                    log_metric(f"{self.reward_name}/{key}", float(np.mean(judged)))
        if callable(log_extra):
            for key, values in self.columns.items():
                log_extra(f"{self.reward_name}/{key}", list(values))


def frames_to_image(coords: np.ndarray, frames: Sequence[Frame]) -> np.ndarray:
    """`Frame.to_image` for one row of coordinates `[N, 2k]` per frame, vectorized over the rows."""
    out = np.asarray(coords, dtype=np.float64)
    if out.size == 0:
        return out
    reps = out.shape[-1] // 2
    scale = np.array([f.scale for f in frames], dtype=np.float64)
    upper = np.array([f.image_size if f.image_size is not None else (np.inf, np.inf) for f in frames])
    out = out * np.tile(scale, reps)
    if not np.isfinite(upper).any():
        return out
    lower = np.where(np.isfinite(upper), 0.0, -np.inf)  # rows without an image size are not clipped
    return np.clip(out, np.tile(lower, reps), np.tile(upper, reps))
