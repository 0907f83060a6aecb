"""Model output formats: parse completions into boxes, points and labels, and render ground truth into
each model family's text (its `box_format`).

| `box_format` | syntax | frame |
|---|---|---|
| `qwen2_vl` | `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` | 0–1000 |
| `qwen2_5_vl` | JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` or `"point_2d": [x, y]` | resized-input pixels |
| `qwen3_vl` | the same JSON | 0–1000 |

Parsing never evaluates text, rejects NaN/inf/huge numbers, and runs in time linear in the input: every
regular expression here is free of nested quantifiers and ambiguous repetitions, brackets that cannot open
JSON are skipped, complete non-answer lists are stepped over, and the JSON decodes that fail (which may scan
far) are bounded in number. Only the answer is read (`answer_text`): thinking (`<think>…</think>`, or an unclosed
`<think>` to the end) is removed first (`strip_thinking`), then the text inside the last `<answer>…</answer>`
is taken, so boxes and answer tags written while thinking do not count. Parsed coordinates are returned as written;
`ParsedOutput.to_pixels` maps them to original pixels with a `frames.Frame`.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._json import loads_strict
from .frames import Frame, check_box_format, convert_frame, frame_of

__all__ = [
    "CHOICE_LETTERS",
    "MAX_ABS_COORD",
    "MAX_VQA_ANSWER",
    "PAD_TOKENS",
    "MAX_OBJECTS",
    "JIGSAW_QUESTIONS",
    "BoxBatch",
    "DetectedObject",
    "ParsedBoxes",
    "ParsedOutput",
    "answer_text",
    "boxed_content",
    "completion_text",
    "final_turn_text",
    "format_choices",
    "format_instruction",
    "normalize_answer",
    "parse_choice",
    "parse_count",
    "parse_boxes",
    "parse_boxes_batch",
    "parse_jigsaw_choice",
    "parse_jigsaw_grid",
    "parse_number",
    "parse_objects",
    "render_jigsaw_answer",
    "render_objects",
    "remove_padding",
    "strip_thinking",
    "strip_wrappers",
    "vqa_answer_body",
]

MAX_ABS_COORD = 100_000.0
"""Coordinates whose magnitude exceeds this are rejected as absurd (no real frame is that large)."""

MAX_OBJECTS = 1000
"""At most this many objects are parsed from one completion; later ones are ignored."""

_MAX_JSON_ATTEMPTS = 16
"""Failed JSON decodes tried per completion: a failure may scan far, so their number is bounded."""
_JSON_VALUE_START = frozenset('[{"-+.0123456789tfnNI]}')

_NUM = r"[-+]?(?:\d{1,16}(?:\.\d{0,16})?|\.\d{1,16})(?:[eE][-+]?\d{1,4})?"
_NUM_RE = re.compile(_NUM)
_BOX_BLOCK_RE = re.compile(r"<\|box_start\|>([^<]{0,200})<\|box_end\|>")
_REF_RE = re.compile(r"<\|object_ref_start\|>([^<]{0,300})<\|object_ref_end\|>")
_PAIR_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_QUAD_RE = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")
_ANSWER_OPEN = "<answer>"
_ANSWER_CLOSE = "</answer>"
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_FENCE_RE = re.compile(r"```[a-zA-Z]{0,10}")
_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d", "Position", "position")
_POINT_KEYS = ("point_2d", "point", "points_2d")
_LABEL_KEYS = ("label", "name", "category", "class")


@dataclass(frozen=True)
class DetectedObject:
    """One object read from a completion: a box `(x1, y1, x2, y2)` or a point `(x, y)`, and a label."""

    bbox: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    label: str | None = None

    @property
    def center(self) -> tuple[float, float] | None:
        """The point, or the centre of the box."""
        if self.point is not None:
            return self.point
        if self.bbox is not None:
            x1, y1, x2, y2 = self.bbox
            return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
        return None


@dataclass
class ParsedOutput:
    """What `parse_objects` read from a completion.

    Attributes:
        objects: the objects, in the order written.
        valid: an answer structure was found (an explicit empty list `[]` is valid and has no objects).
        truncated: the answer was cut off (e.g. at `max_completion_length`); complete items were kept.
        rejected: items that looked like objects but were malformed (NaN, huge or missing numbers).
    """

    objects: list[DetectedObject] = field(default_factory=list)
    valid: bool = False
    truncated: bool = False
    rejected: int = 0

    @property
    def empty(self) -> bool:
        """No object was read."""
        return not self.objects

    def to_pixels(self, frame: Frame, clip: bool = True) -> ParsedOutput:
        """The same objects with boxes and points mapped from `frame`'s box format into original-image
        pixels (clipped to the image unless `clip=False`).

        Example:
        ```python
        >>> from trl_perception.frames import Frame
        >>> parsed = parse_objects('[{"bbox_2d": [100, 50, 300, 150], "label": "dog"}]', "qwen3_vl")
        >>> parsed.to_pixels(Frame.of("qwen3_vl", image_size=(640, 480))).objects[0].bbox
        (64.0, 24.0, 192.0, 72.0)

        ```
        """
        objects = []
        for obj in self.objects:
            bbox = tuple(frame.to_pixels(obj.bbox, clip).tolist()) if obj.bbox is not None else None
            point = tuple(frame.to_pixels(obj.point, clip).tolist()) if obj.point is not None else None
            objects.append(DetectedObject(bbox=bbox, point=point, label=obj.label))
        return ParsedOutput(
            objects=objects, valid=self.valid, truncated=self.truncated, rejected=self.rejected
        )


def completion_text(completion: Any) -> str:
    """Text of a completion as TRL passes it: a string, or a conversational list of messages.

    Example:
    ```python
    >>> completion_text([{"role": "assistant", "content": "[1, 2, 3, 4]"}])
    '[1, 2, 3, 4]'
    >>> completion_text("plain")
    'plain'

    ```
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return completion_text(completion.get("content", ""))
    if isinstance(completion, Sequence):
        parts = []
        for item in completion:
            if isinstance(item, Mapping) and item.get("type") == "text":
                parts.append(str(item.get("text", "")))
            elif isinstance(item, Mapping) and item.get("role", "assistant") != "assistant":
                continue
            else:
                parts.append(completion_text(item))
        return "".join(parts)
    return "" if completion is None else str(completion)


PAD_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|eot_id|>")
"""Padding / end-of-turn tokens that may trail a completion decoded with `skip_special_tokens=False`."""


def remove_padding(text: str) -> str:
    """`text` without padding / end-of-turn tokens (`PAD_TOKENS`).

    Example:
    ```python
    >>> remove_padding("[1, 2, 3, 4]<|im_end|><|endoftext|>")
    '[1, 2, 3, 4]'

    ```
    """
    for token in PAD_TOKENS:
        if token in text:
            text = text.replace(token, "")
    return text


def strip_thinking(text: str) -> str | None:
    """The completion without its thinking, or `None` when it thinks and then answers nothing.

    Everything up to the last `</think>` is thinking (its `<think>` may have been in the prompt), and an
    unclosed `<think>` runs to the end (thinking cut off by the length limit). Text without thinking tags is
    returned unchanged. `None` means "no answer" (not "an empty answer"): a model that only thinks must not
    collect the reward of an explicit empty answer. Slicing only: linear on any input.

    Example:
    ```python
    >>> strip_thinking("<think>maybe [1, 2, 3, 4]</think><answer>[5, 6, 7, 8]</answer>")
    '<answer>[5, 6, 7, 8]</answer>'
    >>> strip_thinking("[5, 6, 7, 8]"), strip_thinking("<think><answer>[]</answer></think>"), strip_thinking("<think>cut o")
    ('[5, 6, 7, 8]', None, None)

    ```
    """
    close = text.rfind(_THINK_CLOSE)
    rest = text[close + len(_THINK_CLOSE) :] if close >= 0 else text
    start = rest.find(_THINK_OPEN)
    if start >= 0:
        rest = rest[:start]
    if (close >= 0 or start >= 0) and not rest.strip():
        return None
    return rest


def answer_text(text: str) -> str:
    """The part of a completion that holds the answer: padding tokens and thinking (`strip_thinking`)
    removed, then the content of the last `<answer>…</answer>` (an unclosed one runs to the end), or the text
    before a lone `</answer>` (its opening tag was in the prompt), or the whole text. A completion that only
    thinks has the answer `""` (`strip_thinking` tells it from an explicit empty answer).

    Example:
    ```python
    >>> answer_text("<think>maybe (1,2),(3,4)</think><answer>[5, 6, 7, 8]</answer><|im_end|>")
    '[5, 6, 7, 8]'
    >>> answer_text("<think>it is <answer>[1, 2, 3, 4]</answer></think>")
    ''

    ```
    """
    if not isinstance(text, str):
        text = completion_text(text)
    text = remove_padding(text)
    rest = strip_thinking(text)
    if rest is None:
        return ""
    text = rest
    start = text.rfind(_ANSWER_OPEN)
    if start >= 0:
        end = text.find(_ANSWER_CLOSE, start)
        return text[start + len(_ANSWER_OPEN) : end if end >= 0 else len(text)]
    # A lone closing tag (the opening one was in the prompt) ends the answer.
    end = text.find(_ANSWER_CLOSE)
    return text[:end] if end >= 0 else text


def _strip_fences(text: str) -> str:
    if "```" in text:
        text = _FENCE_RE.sub("", text)
    return text.strip()


def strip_wrappers(text: str) -> str:
    """Remove what surrounds an answer: padding tokens, everything outside the last `<answer>…</answer>`
    wrapper (`answer_text`), and Markdown code fences.

    Example:
    ```python
    >>> strip_wrappers('<answer>```json\\n[1, 2]\\n```</answer><|im_end|><|endoftext|>')
    '[1, 2]'

    ```
    """
    return _strip_fences(answer_text(text))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or abs(number) > MAX_ABS_COORD:
        return None
    return number


def _numbers(values: Any, count: int) -> tuple[float, ...] | None:
    if not isinstance(values, (list, tuple)) or len(values) != count:
        return None
    out = tuple(_finite(v) for v in values)
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


def _label(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a JSON NaN / Infinity label
    label = str(value).strip()
    return label[:300] or None


def _object_from_json(item: Any) -> DetectedObject | None:
    """One JSON item → object; None when it is not a well-formed object."""
    if isinstance(item, Mapping):
        label = next((_label(item[k]) for k in _LABEL_KEYS if k in item), None)
        for key in _BOX_KEYS:
            if key in item:
                box = _numbers(item[key], 4)
                if box is None and isinstance(item[key], list) and len(item[key]) == 2:
                    pair = [_numbers(p, 2) for p in item[key]]  # [[x1, y1], [x2, y2]]
                    if all(p is not None for p in pair):
                        box = (*pair[0], *pair[1])  # type: ignore[misc]
                return DetectedObject(bbox=box, label=label) if box is not None else None
        for key in _POINT_KEYS:
            if key in item:
                point = _numbers(item[key], 2)
                return DetectedObject(point=point, label=label) if point is not None else None
        return None
    if isinstance(item, (list, tuple)):
        if len(item) == 4:
            box = _numbers(item, 4)
            return DetectedObject(bbox=box) if box is not None else None
        if len(item) == 2:
            point = _numbers(item, 2)
            return DetectedObject(point=point) if point is not None else None
    return None


def _nan_constant(name: str) -> float:
    # NaN / Infinity / -Infinity decode to NaN, which `_finite` then rejects item by item: raising here
    # would abort the whole list and report a complete answer as truncated.
    return math.nan


_DECODER = json.JSONDecoder(parse_constant=_nan_constant)


_PLAIN_NUMBERS = frozenset((int, float))
_LABEL_TYPES = frozenset((str, type(None)))

# The most common grounding answer, `[{"bbox_2d": [x1, y1, x2, y2], "label": "name"}]`, read with one short
# regex instead of a JSON decode: JSON's own number and whitespace grammar, a label without escapes (what
# the decoder returns for such text, so both readings agree; a property test checks it).
_JWS = r"[ \t\n\r]*"
# A plain `-0` is left to the decoder: it reads the integer 0 where `float("-0")` gives -0.0.
_JNUM = r"((?!-0[^.eE])-?(?:0|[1-9]\d{0,20})(?:\.\d{1,30})?(?:[eE][-+]?\d{1,4})?)"
_ONE_BOX_RE = re.compile(
    rf'\[{_JWS}\{{{_JWS}"bbox_2d"{_JWS}:{_JWS}\[{_JWS}{_JNUM}{_JWS},{_JWS}{_JNUM}{_JWS},{_JWS}{_JNUM}{_JWS},'
    rf'{_JWS}{_JNUM}{_JWS}\]{_JWS},{_JWS}"label"{_JWS}:{_JWS}"([^"\\\x00-\x1f]{{0,300}})"{_JWS}\}}{_JWS}\]'
)


_BOX_OF, _LABEL_OF = operator.itemgetter("bbox_2d"), operator.itemgetter("label")
_LISTS, _STRINGS, _TWO, _FOUR = frozenset((list,)), frozenset((str,)), frozenset((2,)), frozenset((4,))


def _labelled_boxes(items: list[Any]) -> tuple[list[float], list[str]] | None:
    """The coordinates and labels of strictly decoded items (no NaN) when every one is exactly
    `{"bbox_2d": [4 plain numbers], "label": str}` with finite numbers in range (the answer of a trained
    model), checked in a few bulk passes; `None` otherwise (the general checks decide)."""
    if not items:
        return None
    try:
        coords = list(map(_BOX_OF, items))
        labels = list(map(_LABEL_OF, items))
    except (KeyError, TypeError):  # an item without a box or a label, or not a dict
        return None
    if (
        set(map(len, items)) != _TWO
        or set(map(type, labels)) != _STRINGS
        or set(map(type, coords)) != _LISTS
        or set(map(len, coords)) != _FOUR
    ):
        return None
    flat = list(itertools.chain.from_iterable(coords))
    if not set(map(type, flat)) <= _PLAIN_NUMBERS:
        return None
    try:
        values = list(map(float, flat))
    except OverflowError:
        return None
    # Decoded strictly, they hold no NaN, so the extremes bound every value (a huge literal is inf and fails).
    if not (-MAX_ABS_COORD <= min(values) and max(values) <= MAX_ABS_COORD):
        return None
    return values, labels


def _exact_json_items(body: str) -> tuple[list[bool] | None, list[float], list[str | None]] | None:
    """The common case, checked in bulk: the answer is exactly a JSON list of
    `{"bbox_2d": [4 numbers], "label": str}` / `{"point_2d": [2 numbers], "label": str}` items (the label
    optional). Returns which items are boxes (`None` when all are), all their coordinates as floats in
    order, and their labels (`None` where absent); `None` for anything else (other keys, bools, strings,
    NaN, huge values), which the general parsers then handle."""
    if len(body) < 2 or body[0] != "[" or body[-1] != "]":
        return None
    one = _ONE_BOX_RE.fullmatch(body) if len(body) < 500 else None
    if one is not None:
        values = [float(v) for v in one.groups()[:4]]
        if all(-MAX_ABS_COORD <= v <= MAX_ABS_COORD for v in values):
            return None, values, [one.group(5)]
        return None
    try:
        items = loads_strict(body)
        lean = _labelled_boxes(items) if type(items) is list and len(items) < MAX_OBJECTS else None
    except json.JSONDecodeError:
        return None
    except ValueError:  # NaN / Infinity among the items: decoded to NaN, then checked item by item below
        try:
            items = _DECODER.decode(body)
        except (ValueError, RecursionError):
            return None
        lean = None
    except RecursionError:
        return None
    if lean is not None:
        return None, *lean
    if type(items) is not list or len(items) >= MAX_OBJECTS:
        return None
    if items and set(map(type, items)) != {dict}:
        return None
    coords = list(map(dict.get, items, itertools.repeat("bbox_2d")))
    labels = list(map(dict.get, items, itertools.repeat("label")))
    is_box = None
    if None in coords:  # points among the items: checked one by one
        is_box = [c is not None for c in coords]
        for k, item in enumerate(items):
            if coords[k] is None:
                coords[k] = item.get("point_2d")
                if coords[k] is None or type(coords[k]) is not list or len(coords[k]) != 2:
                    return None
            elif type(coords[k]) is not list or len(coords[k]) != 4:
                return None
    elif items and (set(map(type, coords)) != {list} or set(map(len, coords)) != {4}):
        return None
    # Each item holds its coordinates and an optional string label, nothing else.
    if not set(map(type, labels)) <= _LABEL_TYPES or sum(map(len, items)) != 2 * len(items) - labels.count(
        None
    ):
        return None
    flat = list(itertools.chain.from_iterable(coords))
    if not set(map(type, flat)) <= _PLAIN_NUMBERS:
        return None
    try:
        values = list(map(float, flat))
    except OverflowError:  # an int too large for a float: the full parser decides
        return None
    # The sum of in-range values is finite, so a non-finite sum reveals NaN or infinity.
    if values and not (
        math.isfinite(sum(values)) and -MAX_ABS_COORD <= min(values) and max(values) <= MAX_ABS_COORD
    ):
        return None
    return is_box, values, labels


def _parse_exact_json_list(body: str) -> ParsedOutput | None:
    """`_exact_json_items` as a `ParsedOutput`; for inputs accepted here the result equals the general
    parsers' (a property test checks it)."""
    exact = _exact_json_items(body)
    if exact is None:
        return None
    is_box, values, labels = exact
    objects = []
    append = objects.append
    k = 0
    for n, label in enumerate(labels):
        if label is not None:
            label = label.strip()[:300] or None
        if is_box is None or is_box[n]:
            append(DetectedObject(bbox=tuple(values[k : k + 4]), label=label))  # type: ignore[arg-type]
            k += 4
        else:
            append(DetectedObject(point=tuple(values[k : k + 2]), label=label))  # type: ignore[arg-type]
            k += 2
    return ParsedOutput(objects, valid=True)


@dataclass
class ParsedBoxes:
    """What `parse_boxes` read: the boxes of a completion, in order.

    Attributes:
        boxes: `(x1, y1, x2, y2)` per kept object, as written.
        labels: the label of each, as `DetectedObject.label` holds it (stripped, at most 300 characters;
            `None` for an unlabelled box, which only `require_label=False` keeps).
        rejected: items that are not kept: malformed ones, points, and boxes without a label when one is
            required.
        valid, truncated: as in `ParsedOutput`.
    """

    boxes: list[Sequence[float]]
    labels: list[str | None]
    rejected: int = 0
    valid: bool = False
    truncated: bool = False


def _clean_labels(labels: list[str | None]) -> list[str | None]:
    """Labels as `DetectedObject.label` holds them: stripped, at most 300 characters, `None` when empty."""
    if None in labels:
        kept: list[str | None] = [label.strip() if label is not None else None for label in labels]
    else:
        kept = list(map(str.strip, labels))  # type: ignore[arg-type]
    if kept and max(map(len, filter(None, kept)), default=0) > 300:
        kept = [label[:300] if label else label for label in kept]
    if "" in kept:
        kept = [label or None for label in kept]
    return kept


def parse_boxes(text: Any, box_format: str | None = None, require_label: bool = True) -> ParsedBoxes:
    """The boxes of a completion (with their labels), and the count of items that are not kept.

    Equal to filtering `parse_objects(text, box_format).objects` for objects with a box (and a label, by
    default), but a well-formed JSON answer, the common case in training, is read without building an object
    per item: what detection and grounding score.

    Example:
    ```python
    >>> out = parse_boxes('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}, {"point_2d": [5, 6]}, {"bbox_2d": [0, 0, 1, 1]}]')
    >>> out.boxes, out.labels, out.rejected, out.valid
    ([(1.0, 2.0, 3.0, 4.0)], ['cat'], 2, True)
    >>> parse_boxes("<|box_start|>(1,2),(3,4)<|box_end|>", require_label=False).boxes
    [(1.0, 2.0, 3.0, 4.0)]

    ```
    """
    if box_format is not None:
        check_box_format(box_format)
    try:
        scope = answer_text(text if isinstance(text, str) else completion_text(text))
        if "<|box_start|>" not in scope:
            exact = _exact_json_items(_strip_fences(scope))
            if exact is not None:
                is_box, values, labels = exact
                n_items = len(labels)
                starts: Sequence[int]
                if is_box is None:
                    starts = range(0, len(values), 4)
                else:  # boxes and points
                    starts = list(itertools.accumulate((4 if box else 2 for box in is_box), initial=0))[:-1]
                    pairs = [(start, label) for start, label, box in zip(starts, labels, is_box) if box]
                    starts, labels = [start for start, _ in pairs], [label for _, label in pairs]
                kept = _clean_labels(labels)
                if require_label and None in kept:  # boxes without a label are not kept
                    pairs = [(start, label) for start, label in zip(starts, kept) if label is not None]
                    starts, kept = [start for start, _ in pairs], [label for _, label in pairs]
                if is_box is None and len(kept) == n_items:
                    boxes = list(zip(*[iter(values)] * 4))  # every item is a kept box
                else:
                    boxes = [tuple(values[start : start + 4]) for start in starts]
                return ParsedBoxes(boxes, kept, n_items - len(boxes), valid=True)
    except Exception:  # noqa: BLE001 - a parser must never take a training run down
        return ParsedBoxes([], [])
    parsed = parse_objects(text, box_format)
    boxes, kept = [], []
    for obj in parsed.objects:
        if obj.bbox is not None and (obj.label is not None or not require_label):
            boxes.append(obj.bbox)
            kept.append(obj.label)
    rejected = parsed.rejected + len(parsed.objects) - len(boxes)
    return ParsedBoxes(boxes, kept, rejected, parsed.valid, parsed.truncated)


# The answer a trained Qwen model writes, `[{"bbox_2d": [x1, y1, x2, y2], "label": "name"}, ...]` with the spacing of
# `json.dumps` inside each item and any JSON whitespace between items, split by one regex into the text of its
# coordinates (digits, signs, points, exponents, commas and whitespace only: JSON decodes them, all answers of a
# batch at once) and its labels (without quote, backslash or control character: the text is the JSON string).
_CANONICAL_ITEM_RE = re.compile(r'\{"bbox_2d": \[([-+.0-9eE \t\n\r,]*)\], "label": "([^"\\\x00-\x1f]*)"\}')
_JSON_WS = " \t\n\r"
_THREE = frozenset((3,))


def _canonical_items(body: str) -> tuple[str, list[str]] | None:
    """`(coordinates text, labels)` of a body that is exactly a canonical list of labelled boxes, else `None`.
    The coordinates text holds 4 comma-separated values per item; it is valid JSON (and then equal to the
    items' `bbox_2d` values) only if each value is a JSON number, which the caller checks by decoding."""
    parts = _CANONICAL_ITEM_RE.split(body)
    n = len(parts) // 3
    if not n or n >= MAX_OBJECTS or parts[0].rstrip(_JSON_WS) != "[" or parts[-1].lstrip(_JSON_WS) != "]":
        return None
    if n > 1 and any(sep.strip(_JSON_WS) != "," for sep in set(parts[3:-1:3])):
        return None
    coords = parts[1::3]
    if set(map(str.count, coords, itertools.repeat(","))) != _THREE:
        return None
    return ",".join(coords), parts[2::3]


@dataclass
class BoxBatch:
    """What `parse_boxes_batch` read from many completions.

    Attributes:
        coords: `[N, 4]` float64, the kept boxes of every completion as written; completion `i` owns rows
            `spans[i][0]:spans[i][1]`.
        spans: per completion, its `(start, stop)` rows of `coords`.
        labels: per row of `coords`, its label (as in `ParsedBoxes.labels`).
        rejected, valid, truncated: per completion, as in `ParsedBoxes`.
    """

    coords: np.ndarray
    spans: list[tuple[int, int]]
    labels: list[str | None]
    rejected: list[int]
    valid: list[bool]
    truncated: list[bool]

    def parsed(self, i: int) -> ParsedBoxes:
        """Completion `i` as `parse_boxes` returns it."""
        a, b = self.spans[i]
        boxes = [tuple(box) for box in self.coords[a:b].tolist()]
        return ParsedBoxes(boxes, self.labels[a:b], self.rejected[i], self.valid[i], self.truncated[i])


def parse_boxes_batch(
    texts: Sequence[Any], box_format: str | Sequence[str | None] | None = None, require_label: bool = True
) -> BoxBatch:
    """`parse_boxes` of many completions, stacked into one array, never raising. `box_format` is one for all
    or one per completion.

    Answers in the canonical layout (`[{"bbox_2d": [x1, y1, x2, y2], "label": "name"}, ...]` as `json.dumps`
    and the Qwen models space it) are split by one regex and the coordinates of all of them decoded in one JSON
    call and range-checked in one array operation; every other answer, and any whose coordinates are not
    JSON numbers within `MAX_ABS_COORD`, goes through `parse_boxes`. Equal to `parse_boxes` on each (a
    property test checks it).

    Example:
    ```python
    >>> batch = parse_boxes_batch(['[{"bbox_2d": [1, 2, 3, 4], "label": " cat "}]', "(5,6),(7,8)", "no"],
    ...                           require_label=False)
    >>> batch.coords.tolist(), batch.spans, batch.labels, batch.valid
    ([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], [(0, 1), (1, 2), (2, 2)], ['cat', None], [True, True, False])

    ```
    """
    n = len(texts)
    formats = [box_format] * n if box_format is None or isinstance(box_format, str) else list(box_format)
    if len(formats) != n:
        raise ValueError(f"box_format has {len(formats)} values for {n} completions")
    for name in set(formats) - {None}:
        check_box_format(name)  # type: ignore[arg-type]
    lean: list[tuple[int, str, list[str]]] = []
    general: list[int] = []
    for i, text in enumerate(texts):
        try:
            if type(text) is str and text[:1] == "[" and text[-1:] == "]" and "<" not in text and "`" not in text:
                body = text  # no tag, token or fence to remove: `strip_wrappers` would return it unchanged
            else:
                scope = answer_text(text if isinstance(text, str) else completion_text(text))
                body = "<|box_start|>" if "<|box_start|>" in scope else _strip_fences(scope)
            found = _canonical_items(body)
        except Exception:  # noqa: BLE001 - `parse_boxes` below answers for anything odd, without raising
            found = None
        if found is None:
            general.append(i)
        else:
            lean.append((i, *found))
    # The canonical answers, in bulk: one decode of all their coordinates, one range check, one label clean-up.
    # One whose coordinates are not JSON numbers within MAX_ABS_COORD is left to the general path.
    n_items = [len(labels) for _, _, labels in lean]
    flat, good = _decode_coordinates([numbers for _, numbers, _ in lean], n_items)
    labels_all = _clean_labels(list(itertools.chain.from_iterable(labels for _, _, labels in lean)))
    keep = np.repeat(np.array(good, dtype=bool), n_items)
    if require_label and None in labels_all:
        keep &= np.array([label is not None for label in labels_all], dtype=bool)
    kept_counts = np.add.reduceat(keep, np.cumsum(n_items) - n_items).tolist() if lean else []
    stops = itertools.accumulate(kept_counts)
    rejected, valid, truncated = [0] * n, [True] * n, [False] * n
    spans: list[tuple[int, int]] = [(0, 0)] * n
    for (i, _, _), ok, count, kept, stop in zip(lean, good, n_items, kept_counts, stops):
        if ok:
            spans[i] = (stop - kept, stop)
            rejected[i] = count - kept
        else:
            general.append(i)
    labels_out = list(itertools.compress(labels_all, keep.tolist()))
    chunks = [flat[keep]]
    start = len(labels_out)
    for i in general:
        out = parse_boxes(texts[i], formats[i], require_label)
        chunks.append(np.array(out.boxes, dtype=np.float64).reshape(-1, 4))
        labels_out.extend(out.labels)
        spans[i] = (start, start + len(out.boxes))
        start += len(out.boxes)
        rejected[i], valid[i], truncated[i] = out.rejected, out.valid, out.truncated
    return BoxBatch(np.concatenate(chunks), spans, labels_out, rejected, valid, truncated)


def _decode_coordinates(texts: list[str], n_items: list[int]) -> tuple[np.ndarray, list[bool]]:
    """The coordinates texts of `_canonical_items` (`n_items[i]` boxes each) decoded into one `[N, 4]` array,
    and per text whether it holds JSON numbers within `MAX_ABS_COORD` (the rows of one that does not are
    zeros); all decoded in one call when all are valid JSON."""
    try:
        flat = np.array(loads_strict("[" + ",".join(texts) + "]"), dtype=np.float64).reshape(-1, 4)
    except (ValueError, OverflowError, TypeError, RecursionError):  # one of them is bad: find which, one by one
        if len(texts) <= 1:
            return np.zeros((sum(n_items), 4)), [False] * len(texts)
        parts = [_decode_coordinates([text], [count]) for text, count in zip(texts, n_items)]
        return np.concatenate([part for part, _ in parts]), [ok for _, (ok,) in parts]
    if not texts:
        return flat, []
    within = (np.abs(flat) <= MAX_ABS_COORD).all(axis=1)
    good = [True] * len(texts) if within.all() else (np.add.reduceat(~within, np.cumsum(n_items) - n_items) == 0).tolist()
    return flat, good


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _decode_list_items(text: str, start: int) -> tuple[list[Any], bool, bool, int]:
    """Decode the items of a JSON list starting at `text[start] == "["` one by one.

    Returns `(items, closed, broken, end)`: `closed` when the list ended with `]` (at `end - 1`), `broken`
    when an item failed to decode (typically a truncated tail). Items decoded before the failure are kept.
    """
    items: list[Any] = []
    pos = _skip_ws(text, start + 1)
    if pos < len(text) and text[pos] == "]":
        return items, True, False, pos + 1
    while pos < len(text) and len(items) < MAX_OBJECTS:
        try:
            item, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return items, False, True, pos
        items.append(item)
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            return items, False, True, pos
        if text[pos] == "]":
            return items, True, False, pos + 1
        if text[pos] != ",":
            return items, False, True, pos
        pos = _skip_ws(text, pos + 1)
    return items, False, pos >= len(text), pos


def _can_start_answer(text: str, start: int) -> bool:
    """Whether the bracket at `start` may open a JSON answer: `[` followed by a JSON value or `]`, `{`
    followed by a key. Prose in brackets ("[see left]", "[a]") is skipped at no cost."""
    pos = _skip_ws(text, start + 1)
    if pos >= len(text):
        return False
    if text[start] == "{":
        return text[pos] == '"'
    return text[pos] in _JSON_VALUE_START


def _parse_json(text: str) -> ParsedOutput | None:
    """Read the first JSON list or object in `text` that holds objects (or an explicit empty list).

    Linear in `len(text)`: brackets that cannot open JSON are skipped, a complete list that is not an answer
    (`[1]`, `[1, 2, 3]`) is stepped over as a whole, and the decodes that fail or read a non-answer object,
    which may scan far, are at most `_MAX_JSON_ATTEMPTS`.
    """
    attempts = 0
    pos = 0
    n = len(text)
    next_list, next_dict = text.find("[", pos), text.find("{", pos)
    while attempts < _MAX_JSON_ATTEMPTS and pos < n:
        # Each search runs only when its previous hit has been passed: the scans stay linear in total.
        if 0 <= next_list < pos:
            next_list = text.find("[", pos)
        if 0 <= next_dict < pos:
            next_dict = text.find("{", pos)
        starts = [i for i in (next_list, next_dict) if i >= 0]
        if not starts:
            return None
        start = min(starts)
        pos = start + 1
        if not _can_start_answer(text, start):
            continue
        if text[start] == "[":
            items, closed, broken, end = _decode_list_items(text, start)
            if closed and not items:
                return ParsedOutput(valid=True)
            if items and not all(isinstance(x, (int, float)) for x in items):
                candidates = items
            elif items and len(items) == 4 and closed:
                candidates = [items]  # a bare [x1, y1, x2, y2]
            elif items and len(items) == 2 and closed:
                candidates = [items]  # a bare [x, y]
            else:
                if closed:
                    pos = end  # a complete list of numbers, not an answer: nothing inside it is one either
                else:
                    attempts += 1
                continue
            objects, rejected = [], 0
            for item in candidates:
                obj = _object_from_json(item)
                if obj is None:
                    rejected += 1
                else:
                    objects.append(obj)
            if objects or (closed and not broken and rejected == 0):
                return ParsedOutput(objects, valid=True, truncated=broken or not closed, rejected=rejected)
            if rejected:
                return ParsedOutput([], valid=False, truncated=broken or not closed, rejected=rejected)
            attempts += 1
        else:
            attempts += 1
            try:
                item, _ = _DECODER.raw_decode(text, start)
            except (ValueError, RecursionError):
                continue
            obj = _object_from_json(item)
            if obj is not None:
                return ParsedOutput([obj], valid=True)
            if isinstance(item, Mapping) and any(k in item for k in _BOX_KEYS + _POINT_KEYS):
                return ParsedOutput([], valid=False, rejected=1)
    return None


def _parse_special_tokens(text: str) -> ParsedOutput | None:
    """Qwen2-VL's `<|object_ref_start|>…<|box_start|>(x1,y1),(x2,y2)<|box_end|>` syntax."""
    if "<|box_start|>" not in text:
        return None
    refs = [(m.end(), _label(m.group(1))) for m in _REF_RE.finditer(text)]
    objects, rejected, ref_i, label = [], 0, 0, None
    for match in _BOX_BLOCK_RE.finditer(text):
        while ref_i < len(refs) and refs[ref_i][0] <= match.start():
            label = refs[ref_i][1]
            ref_i += 1
        values = tuple(_finite(v) for v in _NUM_RE.findall(match.group(1)))
        if len(values) == 4 and None not in values:
            objects.append(DetectedObject(bbox=values, label=label))  # type: ignore[arg-type]
        elif len(values) == 2 and None not in values:
            objects.append(DetectedObject(point=values, label=label))  # type: ignore[arg-type]
        else:
            rejected += 1
        if len(objects) >= MAX_OBJECTS:
            break
    last_open = text.rfind("<|box_start|>")
    truncated = text.find("<|box_end|>", last_open) < 0
    if not objects and not rejected:
        return ParsedOutput([], valid=False, truncated=truncated)
    return ParsedOutput(objects, valid=bool(objects), truncated=truncated, rejected=rejected)


def _pair_objects(text: str) -> tuple[list[DetectedObject], int]:
    """`(x, y)` pairs in prose: two joined by a comma, `(x1,y1),(x2,y2)`, are a box; a pair with no comma on
    either side is a point. Qwen2-VL's points lose their tokens under `skip_special_tokens=True`, leaving
    `bird(16,21)(116,121)`: two points, where `(16,21),(116,121)` is a box. A pair joined by a comma to
    something that opens or closes like a pair, `(nan,2),(3,4)`, is half of a malformed box: rejected."""
    objects: list[DetectedObject] = []
    rejected = 0
    # The previous pair, not yet placed: (its values, whether a comma precedes it, where it ends).
    pending: tuple[tuple[float | None, ...], bool, int] | None = None
    previous_end, previous_start = 0, -1

    def place_single(values: tuple[float | None, ...], comma: bool) -> None:
        nonlocal rejected
        if comma or None in values:
            rejected += 1
        else:
            objects.append(DetectedObject(point=values))  # type: ignore[arg-type]

    for match in _PAIR_RE.finditer(text):
        if len(objects) >= MAX_OBJECTS:
            break
        values = (_finite(match.group(1)), _finite(match.group(2)))
        gap = text[previous_end : match.start()].strip()  # each character is looked at once
        previous_end = match.end()
        if pending is not None:
            first, first_comma, _ = pending
            pending = None
            if gap == ",":
                previous_start = match.start()
                coords = first + values
                if None in coords:
                    rejected += 1
                else:
                    objects.append(DetectedObject(bbox=coords))  # type: ignore[arg-type]
                continue
            place_single(first, first_comma or _comma_then_pair(gap))
        pending = (values, _pair_then_comma(gap, after_pair=previous_start >= 0), match.end())
        previous_start = match.start()
    if pending is not None and len(objects) < MAX_OBJECTS:
        place_single(pending[0], pending[1] or _comma_then_pair(text[pending[2] :].strip()))
    return objects, rejected


def _comma_then_pair(gap: str) -> bool:
    # "(x,y), (" after a pair: it was meant to be joined to a pair that is malformed.
    return gap.startswith(",") and gap[1:].lstrip().startswith("(")


def _pair_then_comma(gap: str, after_pair: bool) -> bool:
    # "), (x,y)" before a pair (the ")" closing the previous pair, or some malformed one): likewise.
    if not gap.endswith(","):
        return False
    before = gap[:-1].rstrip()
    return before.endswith(")") or (after_pair and not before)


def _parse_plain(text: str) -> ParsedOutput | None:
    """In prose: `(x1,y1),(x2,y2)` boxes (and `(x,y)` points beside them), else `[x1, y1, x2, y2]` /
    `(x1, y1, x2, y2)` quadruples, else `(x,y)(x,y)…` points alone."""
    pairs, pair_rejected = _pair_objects(text)
    if any(obj.bbox is not None for obj in pairs):
        return ParsedOutput(pairs, valid=True, rejected=pair_rejected)
    objects, rejected = [], 0
    for match in _QUAD_RE.finditer(text):
        values = tuple(_finite(v) for v in match.groups())
        if None in values:
            rejected += 1
        else:
            objects.append(DetectedObject(bbox=values))  # type: ignore[arg-type]
        if len(objects) >= MAX_OBJECTS:
            break
    if objects or rejected:
        return ParsedOutput(objects, valid=bool(objects), rejected=rejected)
    if pairs or pair_rejected:
        return ParsedOutput(pairs, valid=bool(pairs), rejected=pair_rejected)
    return None


def parse_objects(text: Any, box_format: str | None = None) -> ParsedOutput:
    """Parse a completion into objects (boxes or points, with labels), never raising.

    Understood, in this order: Qwen2-VL box tokens; JSON (a list of `{"bbox_2d": …, "label": …}` /
    `{"point_2d": …}` items, a single such object, a list of `[x1, y1, x2, y2]` lists, or one bare
    list), with complete items of a truncated list kept; and in prose `(x1,y1),(x2,y2)` or
    `[x1, y1, x2, y2]`. `<answer>` wrappers, code fences and padding tokens are removed first. Numbers may be
    negative or fractional; NaN, infinities and magnitudes above `MAX_ABS_COORD` are rejected.

    Args:
        text (`str` or TRL conversational completion): the model output.
        box_format (`str`, *optional*): one of `frames.BOX_FORMATS`; `"qwen2_vl"` tries box tokens first, the others JSON
            first. Coordinates are returned as written either way.

    Returns:
        `ParsedOutput`: objects, whether an answer was found, and whether it was truncated.

    Example:
    ```python
    >>> parse_objects('```json\\n[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]\\n```').objects
    [DetectedObject(bbox=(10.0, 20.0, 30.0, 40.0), point=None, label='cat')]
    >>> out = parse_objects("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>")
    >>> out.objects[0].bbox, out.objects[0].label
    ((1.0, 2.0, 3.0, 4.0), 'dog')
    >>> out = parse_objects('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6')
    >>> len(out.objects), out.truncated
    (1, True)
    >>> parse_objects("[]").valid, parse_objects("no idea").valid
    (True, False)

    ```
    """
    if box_format is not None:
        check_box_format(box_format)
    try:
        # Only the answer is read: boxes written while thinking (`<think>…</think><answer>…</answer>`) or
        # after the answer do not count.
        scope = answer_text(text if isinstance(text, str) else completion_text(text))
        body = _strip_fences(scope)
        if "<|box_start|>" not in scope:
            # Most answers of a trained model are exactly a JSON list: decode it in one call.
            fast = _parse_exact_json_list(body)
            if fast is not None:
                return fast
        return _parse_general(scope, body, box_format)
    except Exception:  # noqa: BLE001 - a parser must never take a training run down
        return ParsedOutput()


def _parse_general(scope: str, body: str, box_format: str | None) -> ParsedOutput:
    """Every syntax, in the box format's order of likelihood; the first valid reading wins. `scope` is the
    answer with its code fences (`answer_text`), `body` the same without them."""
    if box_format in ("qwen2_5_vl", "qwen3_vl") and "<|box_start|>" not in scope:
        order = (_parse_json, _parse_special_tokens, _parse_plain)
    else:
        order = (_parse_special_tokens, _parse_json, _parse_plain)
    fallback: ParsedOutput | None = None
    for parser in order:
        result = parser(scope if parser is _parse_special_tokens else body)
        if result is None:
            continue
        if result.valid:
            return result
        fallback = fallback or result
    return fallback or ParsedOutput()


_COUNT_RE = re.compile(r"^\D{0,200}?(\d{1,6})\D{0,200}$")
_MINUS_SIGNS = ("-", "\u2212", "\u2013", "\u2012", "\ufe63", "\uff0d")


def parse_count(text: Any, box_format: str | None = None) -> int | None:
    """Number of objects a completion reports: the objects it lists, else a lone integer in the text.

    Returns `None` when nothing countable is found (a negative number such as `"-3"` included); an explicit
    empty list counts as 0.

    Example:
    ```python
    >>> parse_count('[{"point_2d": [1, 2]}, {"point_2d": [3, 4]}]'), parse_count("There are 7."), parse_count("[]")
    (2, 7, 0)

    ```
    """
    parsed = parse_objects(text, box_format)
    if parsed.objects or parsed.valid:
        return len(parsed.objects)
    body = strip_wrappers(text if isinstance(text, str) else completion_text(text))
    match = _COUNT_RE.match(body) if len(body) <= 400 else None
    if match is None or body[max(match.start(1) - 1, 0) : match.start(1)] in _MINUS_SIGNS:
        return None  # "-3" is no count of objects; it must not score as 3
    return int(match.group(1))


def _object_fields(obj: Any) -> tuple[Sequence[float] | None, Sequence[float] | None, str | None]:
    if isinstance(obj, DetectedObject):
        return obj.bbox, obj.point, obj.label
    if isinstance(obj, Mapping):
        return obj.get("bbox_2d"), obj.get("point_2d"), obj.get("label")
    values = list(obj)
    return (values, None, None) if len(values) == 4 else (None, values, None)


def _fmt_number(value: float) -> str:
    return str(int(round(value)))


def render_objects(
    objects: Iterable[Any],
    box_format: str,
    image_size: Sequence[float],
    input_size: Sequence[float] | None = None,
    *,
    fence: bool = False,
) -> str:
    """Write objects given in original-image pixels as the family's answer text (for SFT targets, few-shot
    prompts and tests).

    Objects are `{"bbox_2d": [...], "label": ...}` / `{"point_2d": [...], "label": ...}` dicts,
    `DetectedObject`s, or bare `[x1, y1, x2, y2]` lists. Coordinates are converted into the box format's frame
    and rounded to integers; consecutive objects with the same label share one Qwen2-VL object reference,
    as in Perception-R1's counting format.

    Args:
        objects: the objects, in original pixels of an image of `image_size = [width, height]`.
        box_format (`str`): `"qwen2_vl"`, `"qwen2_5_vl"` or `"qwen3_vl"`.
        input_size (`[width, height]`, *optional*): the processor-resized size; required for `"qwen2_5_vl"`.
        fence (`bool`): wrap JSON in a ```` ```json ```` fence, as the Qwen chat models do.

    Example:
    ```python
    >>> render_objects([{"bbox_2d": [64, 24, 192, 72], "label": "cat"}], "qwen2_vl", (640, 480))
    '<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,50),(300,150)<|box_end|>'
    >>> render_objects([{"bbox_2d": [64, 24, 192, 72], "label": "cat"}], "qwen2_5_vl", (640, 480), (644, 476))
    '[{"bbox_2d": [64, 24, 193, 71], "label": "cat"}]'

    ```
    """
    frame = frame_of(box_format)
    if frame == "input" and input_size is None:
        raise ValueError(
            f"rendering for {box_format!r} needs input_size, the processor-resized [width, height]"
        )
    items = []
    for obj in objects:
        box, point, label = _object_fields(obj)
        coords = box if box is not None else point
        if coords is None:
            continue
        converted = convert_frame(list(coords), "pixels", frame, image_size, input_size)
        items.append(([_fmt_number(v) for v in converted], box is not None, label))
    if box_format == "qwen2_vl":
        parts, previous = [], object()
        for values, is_box, label in items:
            if label is not None and label != previous:
                parts.append(f"<|object_ref_start|>{label}<|object_ref_end|>")
            previous = label
            body = (
                f"({values[0]},{values[1]}),({values[2]},{values[3]})"
                if is_box
                else f"({values[0]},{values[1]})"
            )
            parts.append(f"<|box_start|>{body}<|box_end|>")
        return "".join(parts)
    entries = []
    for values, is_box, label in items:
        entry: dict[str, Any] = {("bbox_2d" if is_box else "point_2d"): [int(v) for v in values]}
        if label is not None:
            entry["label"] = label
        entries.append(entry)
    text = json.dumps(entries, ensure_ascii=False)
    return f"```json\n{text}\n```" if fence else text


_INSTRUCTIONS = {
    "qwen2_vl": (
        "Answer with <|object_ref_start|>name<|object_ref_end|> followed by "
        "<|box_start|>(x1,y1),(x2,y2)<|box_end|> for each {what}, with coordinates scaled to 0-1000."
    ),
    "qwen2_5_vl": (
        'Answer with a JSON list of {{"bbox_2d": [x1, y1, x2, y2], "label": name}} for each {what}, '
        "in absolute pixel coordinates of the image."
    ),
    "qwen3_vl": (
        'Answer with a JSON list of {{"bbox_2d": [x1, y1, x2, y2], "label": name}} for each {what}, '
        "with coordinates scaled to 0-1000."
    ),
}
_WHAT = {"grounding": "object", "counting": "object", "detection": "object", "ovd": "object"}


def format_instruction(box_format: str | None, task: str) -> str:
    """The sentence that tells a model which output format the rewards parse; `""` for OCR (plain
    text) or when no box_format is given.

    Example:
    ```python
    >>> format_instruction("qwen3_vl", "detection")
    'Answer with a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": name} for each object, with coordinates scaled to 0-1000.'
    >>> format_instruction("qwen2_vl", "ocr")
    ''

    ```
    """
    if box_format is None or task not in _WHAT:
        return ""
    check_box_format(box_format)
    return _INSTRUCTIONS[box_format].format(what=_WHAT[task])


# --------------------------------------------------------------------------------------------------
# Jigsaw answers: a grid of position indices, one number, or one letter

JIGSAW_QUESTIONS: tuple[str, ...] = ("full", "pair", "single", "multiple")
"""Jigsaw question types: the whole grid of original positions, the relation of two patches (a letter),
one patch's original position (a number), or the right grid among candidates (a letter)."""

_JIGSAW_SEPARATORS_RE = re.compile(r"[\s`,;\[\]()]+")
_JIGSAW_INDEX_RE = re.compile(r"\d{1,6}")
_JIGSAW_CHOICE_RE = re.compile(r"\(?\s*([A-Za-z]|\d{1,6})\s*\)?\s*\.?")


def parse_jigsaw_grid(text: Any, size: int) -> list[int] | None:
    """The position indices of a full jigsaw answer, or `None` unless the answer (after `strip_wrappers`)
    is exactly `size` integers in `[1, size]` separated by spaces, newlines, commas, semicolons, brackets
    or backticks. Repeated indices are returned as written (a permutation check is the reward's job).
    Linear time: the answer is split once and the split stops counting past `size` tokens.

    Example:
    ```python
    >>> parse_jigsaw_grid("<answer>\\n2 1\\n4 3\\n</answer>", 4)
    [2, 1, 4, 3]
    >>> parse_jigsaw_grid("[3, 1, 2]", 3), parse_jigsaw_grid("1 2 3", 4), parse_jigsaw_grid("1 2 5 3", 4)
    ([3, 1, 2], None, None)

    ```
    """
    body = strip_wrappers(text)
    values: list[int] = []
    for token in _JIGSAW_SEPARATORS_RE.split(body):
        if not token:
            continue
        if len(values) == size or _JIGSAW_INDEX_RE.fullmatch(token) is None:
            return None
        value = int(token)
        if not 1 <= value <= size:
            return None
        values.append(value)
    return values if len(values) == size else None


def parse_jigsaw_choice(text: Any) -> str | None:
    """The single letter (upper-cased) or number of a `pair`, `multiple` or `single` jigsaw answer, or
    `None` unless the answer (after `strip_wrappers`) is that one token, optionally in parentheses and
    followed by a period. Listing several options is not an answer.

    Example:
    ```python
    >>> parse_jigsaw_choice("(b)"), parse_jigsaw_choice("<answer> 3. </answer>"), parse_jigsaw_choice("A or B")
    ('B', '3', None)

    ```
    """
    body = strip_wrappers(text)
    if len(body) > 16:
        return None
    match = _JIGSAW_CHOICE_RE.fullmatch(body)
    return match.group(1).upper() if match else None


def render_jigsaw_answer(answer: Any, cols: int = 1, think: bool = False) -> str:
    """The target text of a jigsaw answer (for SFT): a full answer as `cols` indices per line, a number
    or letter as itself, wrapped in `<think></think><answer>…</answer>` when thinking was asked for.

    Example:
    ```python
    >>> render_jigsaw_answer([2, 1, 4, 3], cols=2)
    '2 1\\n4 3'
    >>> render_jigsaw_answer("B", think=True)
    '<think></think><answer>B</answer>'

    ```
    """
    if isinstance(answer, (list, tuple)):
        values = [str(int(v)) for v in answer]
        cols = max(int(cols), 1)
        body = "\n".join(" ".join(values[i : i + cols]) for i in range(0, len(values), cols))
    else:
        body = str(answer)
    return f"<think></think><answer>{body}</answer>" if think else body


# --------------------------------------------------------------------------------------------------
# VQA answers: the final turn of a (multi-turn) completion, `\boxed{}`, a letter, a number, a short text

CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Option letters of a multiple-choice question, in order: option `i` is `CHOICE_LETTERS[i]`."""

MAX_VQA_ANSWER = 200
"""Longest answer body (characters, after unwrapping) read as a letter, number or short text; a longer one is
not a short answer and earns nothing."""

_BOXED = "\\boxed{"
_ANSWER_PREFIX_RE = re.compile(
    r"(?:the\s)?\s{0,3}(?:final\s|correct\s|best\s)?\s{0,3}(?:answer|option|choice)(?:\sis)?\s{0,3}[:：]?\s{0,3}",
    re.IGNORECASE,
)
_CHOICE_RE = re.compile(r"\(?\s?([A-Za-z])\s?\)?[.:)]?")
_CHOICE_LEAD_RE = re.compile(r"\(([A-Za-z])\)[.:]?\s{0,3}(\S.*)|([A-Z])[.:)]?\s+(\S.*)", re.DOTALL)
_LETTER_TOKEN_RE = re.compile(r"\(?[A-Z]\)?[.:),]?")
_NUMBER_RE = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+|\d{1,30})(\.\d{1,30})?|([-+]?)\.(\d{1,30})")
_EDGE_PUNCTUATION = " \t\n\r.,;:!?\"'`()[]{}"


def final_turn_text(completion: Any) -> str:
    """Text of the final assistant turn of a completion: a string as is; for TRL's conversational completions
    (with tools on, `[assistant (tool call), tool (result), assistant (answer), ...]`) the content of the last
    message, or `""` when the conversation ends with a tool or user message (the answer was cut off).

    Example:
    ```python
    >>> final_turn_text([{"role": "assistant", "content": "crop [1, 2, 3, 4]"},
    ...                  {"role": "tool", "name": "crop", "content": [{"type": "text", "text": "sub-image"}]},
    ...                  {"role": "assistant", "content": "\\\\boxed{B}"}])
    '\\\\boxed{B}'
    >>> final_turn_text([{"role": "assistant", "content": "A"}, {"role": "tool", "content": "..."}])
    ''
    >>> final_turn_text("plain B")
    'plain B'

    ```
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        if completion.get("role", "assistant") != "assistant":
            return ""
        return completion_text(completion.get("content", ""))
    if isinstance(completion, Sequence) and completion:
        if any(isinstance(item, Mapping) and "role" in item for item in completion):
            return final_turn_text(completion[-1])
        return completion_text(completion)
    return "" if completion is None or isinstance(completion, Sequence) else str(completion)


def boxed_content(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text` (nested braces balanced), or `None` when there is none
    or it is never closed. Linear time.

    Example:
    ```python
    >>> boxed_content("so \\\\boxed{A} no, \\\\boxed{\\\\text{B}}"), boxed_content("\\\\boxed{open")
    ('\\\\text{B}', None)

    ```
    """
    if not isinstance(text, str):
        return None
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for pos in range(begin, len(text)):
        char = text[pos]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin:pos]
    return None


def vqa_answer_body(completion: Any) -> str:
    """The answer a VQA completion gives: in its final turn (`final_turn_text`) without its thinking
    (`strip_thinking`; thinking alone gives `""`), the content of the last
    `\\boxed{}` (a `\\text{...}` inside unwrapped), else the text inside the last `<answer>` (or all of it),
    with padding tokens, code fences and a leading "Answer:" / "The answer is" removed and the ends trimmed.

    Example:
    ```python
    >>> vqa_answer_body("I zoomed in. The final answer is \\\\boxed{\\\\text{(B) red}}.")
    '(B) red'
    >>> vqa_answer_body("<think>hmm</think><answer>Answer: C</answer><|im_end|>")
    'C'

    ```
    """
    text = strip_thinking(remove_padding(final_turn_text(completion)))
    if text is None:  # thinking only: no answer (an answer written while thinking does not count)
        return ""
    boxed = boxed_content(text)
    body = boxed if boxed is not None else strip_wrappers(text)
    body = body.strip()
    if body.startswith("\\text{") and body.endswith("}"):
        body = body[len("\\text{") : -1].strip()
    if len(body) > MAX_VQA_ANSWER:
        return body
    prefix = _ANSWER_PREFIX_RE.match(body)
    if prefix and prefix.end() < len(body):
        body = body[prefix.end() :]
    return body.strip()


def normalize_answer(text: Any) -> str:
    """A short answer for exact matching: lower case, inner whitespace collapsed, punctuation and quotes at
    the ends and a leading article ("a", "an", "the") removed.

    Example:
    ```python
    >>> normalize_answer("  The Red   Square. "), normalize_answer('"blue"')
    ('red square', 'blue')

    ```
    """
    words = str(text).lower().strip(_EDGE_PUNCTUATION).split()
    if len(words) > 1 and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words).strip(_EDGE_PUNCTUATION)


def parse_choice(completion: Any, options: Sequence[str] | None = None) -> str | None:
    """The option letter a multiple-choice answer picks, or `None`.

    The answer body (`vqa_answer_body`: the last `\\boxed{}`, else the `<answer>` or whole final turn, with
    "Answer:" / "The answer is" removed) must be one letter — `B`, `(b)`, `B.`, `B)` — or an upper-case letter
    (or a bracketed one, `(b)`) followed by that option's text (`(B) red`, `B. red`; without `options`, by text holding no other option
    letter), or exactly one option's text. With `options`, the letter must be one of theirs. Listing several
    letters (`A B C D`, `A or B`) picks nothing.

    Example:
    ```python
    >>> parse_choice("\\\\boxed{B}"), parse_choice("Answer: (c)."), parse_choice("B. red", ["blue", "red"])
    ('B', 'C', 'B')
    >>> parse_choice("red", ["blue", "red"]), parse_choice("A B C D"), parse_choice("E", ["x", "y"])
    ('B', None, None)

    ```
    """
    body = vqa_answer_body(completion)
    if not body or len(body) > MAX_VQA_ANSWER:
        return None
    n = None if options is None else len(options)
    letter = None
    match = _CHOICE_RE.fullmatch(body)
    if match:
        letter = match.group(1).upper()
    else:
        lead = _CHOICE_LEAD_RE.fullmatch(body)
        if lead:
            first = (lead.group(1) or lead.group(3)).upper()
            rest = lead.group(2) if lead.group(1) else lead.group(4)
            if options is not None:
                index = CHOICE_LETTERS.find(first)
                if index < len(options) and normalize_answer(rest) == normalize_answer(options[index]):
                    letter = first
            elif not any(_LETTER_TOKEN_RE.fullmatch(token) for token in rest.split()):
                letter = first
        elif options:
            wanted = normalize_answer(body)
            hits = [i for i, option in enumerate(options) if normalize_answer(option) == wanted]
            if len(hits) == 1 and hits[0] < len(CHOICE_LETTERS):
                letter = CHOICE_LETTERS[hits[0]]
    if letter is None or (n is not None and CHOICE_LETTERS.index(letter) >= n):
        return None
    return letter


def parse_number(completion: Any) -> float | None:
    """The number a short answer gives, or `None` unless the answer body (`vqa_answer_body`) is exactly one
    number: an integer, a decimal, thousands separated by commas (`1,000`), signed, optionally followed by a
    period.

    Example:
    ```python
    >>> parse_number("\\\\boxed{1,000}"), parse_number("Answer: -2.5."), parse_number("3 or 4")
    (1000.0, -2.5, None)

    ```
    """
    body = vqa_answer_body(completion)
    if not body or len(body) > 64:
        return None
    if body.endswith("."):
        body = body[:-1].rstrip()
    match = _NUMBER_RE.fullmatch(body)
    if match is None:
        return None
    value = float(match.group(0).replace(",", ""))
    return value if math.isfinite(value) else None


def format_choices(options: Sequence[str]) -> str:
    """Options as lines `(A) first`, `(B) second`, ... for a multiple-choice prompt (V*'s layout).

    Example:
    ```python
    >>> print(format_choices(["red", "blue"]))
    (A) red
    (B) blue

    ```
    """
    if len(options) > len(CHOICE_LETTERS):
        raise ValueError(f"at most {len(CHOICE_LETTERS)} options, got {len(options)}")
    return "\n".join(f"({CHOICE_LETTERS[i]}) {option}" for i, option in enumerate(options))
