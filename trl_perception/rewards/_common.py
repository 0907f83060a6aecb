"""Row handling shared by the rewards: completion text, ground-truth decoding, task routing, coordinate
frames, rate-limited warnings and the trainer's `log_metric` / `log_extra` hooks."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._json import loads_strict
from ..formats import (  # noqa: F401 - PAD_TOKENS and remove_padding are re-exported for the rewards
    PAD_TOKENS,
    completion_text,
    remove_padding,
    strip_thinking,
    strip_wrappers,
)
from ..frames import BOX_FORMATS, Frame

logger = logging.getLogger("trl_perception.rewards")

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
    if (
        type(completion) is list and len(completion) == 1
    ):  # TRL's usual [{"role": "assistant", "content": str}]
        message = completion[0]
        if type(message) is dict and message.get("role", "assistant") == "assistant":
            content = message.get("content")
            if type(content) is str:
                return content
    try:
        text = completion_text(completion)
    except Exception:  # noqa: BLE001 - an odd completion object must not stop the run
        return ""
    return text if isinstance(text, str) else str(text)


_EMPTY_ANSWER_RE = re.compile(r"(?:\[\s*\]|none|null|nothing|no objects?(?: found)?)?\s*\.?", re.IGNORECASE)


def is_empty_answer(text: str) -> bool:
    """Whether a completion explicitly answers "no object": empty text, `[]`, `None`, `null`, `nothing`,
    `No object(s) (found)` — after removing padding tokens, thinking, `<answer>` tags and code fences. A
    completion that thinks and then answers nothing (`formats.strip_thinking` is `None`) has no answer, which
    is not the empty answer.

    Example:
    ```python
    >>> is_empty_answer("```json\\n[]\\n```<|im_end|>"), is_empty_answer("No objects."), is_empty_answer("garbage")
    (True, True, False)
    >>> is_empty_answer("<think>x</think><answer>[]</answer>"), is_empty_answer("<think>[]</think>")
    (True, False)

    ```
    """
    try:
        if strip_thinking(remove_padding(text)) is None:
            return False
        body = strip_wrappers(text)
    except Exception:  # noqa: BLE001
        return False
    return len(body) <= 40 and _EMPTY_ANSWER_RE.fullmatch(body) is not None


# ----------------------------------------------------------------------------------------- ground truth


def decode_json(value: Any, what: str = "solution") -> Any:
    """A native value as is; a string through `json.loads` (NaN/Infinity rejected, never `eval`). `what` names
    the column in the error."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            return loads_strict(value.strip())
        except (ValueError, RecursionError) as err:
            raise MalformedSolution(f"{what} is not valid JSON ({err}): {value[:80]!r}") from err
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


_SEQUENCES = frozenset((list, tuple))
_NUMBERS = frozenset((int, float))


def _all_plain_numbers(values: Sequence[Any], count: int) -> bool:
    """`_plain_numbers(v, count)` for every `v`, checked in bulk."""
    return not values or (
        set(map(type, values)) <= _SEQUENCES
        and set(map(len, values)) == {count}
        and set(map(type, itertools.chain.from_iterable(values))) <= _NUMBERS
    )


def gt_boxes(values: Sequence[Any], what: str = "box") -> np.ndarray:
    """Ground-truth boxes `[M, 4]`, each 4 finite numbers with ordered corners, checked in one vectorized
    pass (per-box checks only to word the error)."""
    if _all_plain_numbers(values, 4):
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
    if _all_plain_numbers(values, 2):
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
                if raw is self._raw:
                    same = True
                elif isinstance(raw, np.ndarray):
                    same = raw.dtype != object and np.array_equal(raw, self._raw)
                else:
                    same = bool(raw == self._raw)
            except Exception:  # noqa: BLE001 - e.g. containers holding arrays
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

    def of_row(self, row: Row) -> Any:
        """The decoded solution of `row`."""
        return self(row.solution)


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


def _size_value(value: Any, what: str) -> Any:
    """A size column's cell: JSON text (mixed-task datasets store it so) decoded, anything else as is."""
    if isinstance(value, (str, bytes, bytearray)):
        return decode_json(value, what)
    return value


def frame_for(box_format: Any, image_size: Any, input_size: Any) -> Frame:
    """A row's `frames.Frame` from its `box_format`, `image_size` and `input_size` cells; a malformed cell is
    a `MalformedSolution` (the row is skipped with a warning).

    For Qwen2.5-VL (absolute pixels of the resized input) without `input_size`, the input size is computed
    with `frames.model_input_size` and the family's default pixel limits (those of the released checkpoints).
    """
    if box_format is not None and not isinstance(box_format, str):
        raise MalformedSolution(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    try:
        frame = Frame.of(box_format, _size_value(image_size, "image_size"), _size_value(input_size, "input_size"))
    except ValueError as err:
        raise MalformedSolution(str(err)) from None
    if frame.box_format is not None and frame.image_size is None:
        warn_row(
            "frame-no-image-size",
            f"box_format={frame.box_format!r} given without image_size: coordinates are compared as written",
        )
    return frame


# -------------------------------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One completion to judge: its index in the batch, text, raw solution and frame."""

    index: int
    text: str
    solution: Any
    frame: Frame


def _is_flat_size(value: Any) -> bool:
    """`[640, 480]`: one size, not a column of sizes."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.shape[0] == 2 and value.dtype.kind in "iuf"
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value
        )
    )


def _column(kwargs: dict[str, Any], name: str, n: int) -> list[Any]:
    value = kwargs.get(name)
    if value is None:
        return [None] * n
    if name in ("image_size", "input_size") and _is_flat_size(value):
        # One behaviour whatever the batch size (a flat pair used to raise for 1 completion and to skip
        # every row for 2): a column holds one [width, height] per completion.
        size = np.asarray(value).tolist()
        raise ValueError(
            f"keyword {name!r} must hold one [width, height] per completion, got the single size {size} "
            f"for {n} completion(s); pass {name}=[{size}] * {n}"
        )
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
    format_col = _column(kwargs, "box_format", n)
    size_col = _column(kwargs, "image_size", n)
    input_col = _column(kwargs, "input_size", n)
    rows = []
    frames: dict[tuple, Frame] = {}  # the rows of a GRPO group (and of one image) share their frame
    for i in range(n):
        task = task_col[i]
        if isinstance(task, str) and task.strip() and task.strip().lower() not in tasks:
            continue
        key = (_cell_key(format_col[i]), _cell_key(size_col[i]), _cell_key(input_col[i]))
        frame = frames.get(key) if _UNHASHABLE not in key else None
        if frame is None:
            try:
                frame = frame_for(format_col[i], size_col[i], input_col[i])
            except MalformedSolution as err:
                warn_row(f"{reward_name}-frame", f"{reward_name}: row {i} skipped (reward None): {err}")
                continue
            if _UNHASHABLE not in key:
                frames[key] = frame
        rows.append(Row(i, text_of(completions[i]), solution[i], frame))
    return rows, n


_UNHASHABLE = object()


def _cell_key(value: Any) -> Any:
    """A frame column's cell as a dictionary key: `None`, a string, or a pair of plain numbers; anything
    else is not memoised."""
    if value is None or type(value) is str:
        return value
    if (
        type(value) in (list, tuple)
        and len(value) == 2
        and type(value[0]) in (int, float)
        and type(value[1])
        in (
            int,
            float,
        )
    ):
        return (type(value[0]), value[0], type(value[1]), value[1])
    return _UNHASHABLE


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

    def set_rows(self, indices: Sequence[int], **columns: Sequence[float] | np.ndarray) -> None:
        """`set` for many rows: `columns[key][k]` is the value of row `indices[k]`."""
        for key, values in columns.items():
            column = self.columns[key]
            for index, value in zip(indices, np.asarray(values, dtype=np.float64).tolist()):
                column[index] = value

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
