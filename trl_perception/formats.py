"""Model output formats: parse completions into boxes, points and labels, and render ground truth into
each model family's text (its `box_format`).

| `box_format` | syntax | frame |
|---|---|---|
| `qwen2_vl` | `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` | 0–1000 |
| `qwen2_5_vl` | JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` or `"point_2d": [x, y]` | resized-input pixels |
| `qwen3_vl` | the same JSON | 0–1000 |

Parsing never evaluates text, rejects NaN/inf/huge numbers, and runs in time linear in the input: every
regular expression here is free of nested quantifiers, and JSON decoding is attempted at a bounded number
of positions. Parsed coordinates are returned as written; `ParsedOutput.to_pixels` maps them to
original pixels with a `frames.Frame`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .frames import Frame, check_box_format, convert_frame, frame_of

__all__ = [
    "MAX_ABS_COORD",
    "MAX_OBJECTS",
    "JIGSAW_QUESTIONS",
    "DetectedObject",
    "ParsedOutput",
    "completion_text",
    "format_instruction",
    "parse_count",
    "parse_jigsaw_choice",
    "parse_jigsaw_grid",
    "parse_objects",
    "render_jigsaw_answer",
    "render_objects",
    "strip_wrappers",
]

MAX_ABS_COORD = 100_000.0
"""Coordinates whose magnitude exceeds this are rejected as absurd (no real frame is that large)."""

MAX_OBJECTS = 1000
"""At most this many objects are parsed from one completion; later ones are ignored."""

_MAX_JSON_ATTEMPTS = 16

_NUM = r"[-+]?(?:\d{1,16}(?:\.\d{0,16})?|\.\d{1,16})(?:[eE][-+]?\d{1,4})?"
_NUM_RE = re.compile(_NUM)
_BOX_BLOCK_RE = re.compile(r"<\|box_start\|>([^<]{0,200})<\|box_end\|>")
_REF_RE = re.compile(r"<\|object_ref_start\|>([^<]{0,300})<\|object_ref_end\|>")
_PAIR_BOX_RE = re.compile(
    rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*(?:,\s*)?\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
)
_QUAD_RE = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")
_ANSWER_OPEN = "<answer>"
_ANSWER_CLOSE = "</answer>"
_FENCE_RE = re.compile(r"```[a-zA-Z]{0,10}")
_PAD_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|eot_id|>")
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
        return ParsedOutput(objects=objects, valid=self.valid, truncated=self.truncated, rejected=self.rejected)


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


def strip_wrappers(text: str) -> str:
    """Remove what surrounds an answer: padding tokens, the last `<answer>…</answer>` wrapper (an unclosed
    one runs to the end), and Markdown code fences.

    Example:
    ```python
    >>> strip_wrappers('<answer>```json\\n[1, 2]\\n```</answer><|im_end|><|endoftext|>')
    '[1, 2]'

    ```
    """
    if not isinstance(text, str):
        text = completion_text(text)
    for token in _PAD_TOKENS:
        if token in text:
            text = text.replace(token, "")
    start = text.rfind(_ANSWER_OPEN)
    if start >= 0:
        end = text.find(_ANSWER_CLOSE, start)
        text = text[start + len(_ANSWER_OPEN) : end if end >= 0 else len(text)]
    else:
        # A lone closing tag (the opening one was in the prompt) ends the answer.
        end = text.find(_ANSWER_CLOSE)
        if end >= 0:
            text = text[:end]
    if "```" in text:
        text = _FENCE_RE.sub("", text)
    return text.strip()


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


def _parse_exact_json_list(body: str) -> ParsedOutput | None:
    """The common case, decoded in one `json` call: the answer is exactly a JSON list of
    `{"bbox_2d": [4 numbers], "label": str}` / `{"point_2d": [2 numbers], "label": str}` items. `None` for
    anything else, which the general parsers then handle; for inputs accepted here the result equals theirs
    (a property test checks it)."""
    if len(body) < 2 or body[0] != "[" or body[-1] != "]":
        return None
    try:
        items = _DECODER.decode(body)
    except (ValueError, RecursionError):
        return None
    if type(items) is not list or len(items) >= MAX_OBJECTS:
        return None
    objects = []
    append = objects.append
    for item in items:
        if type(item) is not dict:
            return None
        coords = item.get("bbox_2d")
        is_box = coords is not None
        if not is_box:
            coords = item.get("point_2d")
        label = item.get("label")
        # Only {"bbox_2d"|"point_2d", "label"?} items with a list of plain numbers; anything else (other
        # keys, bools, strings, NaN, huge values) goes to the full parser.
        if (
            coords is None
            or len(item) != (1 if label is None else 2)
            or type(coords) is not list
            or len(coords) != (4 if is_box else 2)
            or (label is not None and type(label) is not str)
        ):
            return None
        values = []
        for v in coords:
            if type(v) is not float and type(v) is not int:
                return None
            v = float(v)  # an int too large for a float raises: the full parser decides
            if not -MAX_ABS_COORD <= v <= MAX_ABS_COORD:
                return None
            values.append(v)
        if label is not None:
            label = label.strip()[:300] or None
        if is_box:
            append(DetectedObject(bbox=tuple(values), label=label))  # type: ignore[arg-type]
        else:
            append(DetectedObject(point=tuple(values), label=label))  # type: ignore[arg-type]
    return ParsedOutput(objects, valid=True)


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _decode_list_items(text: str, start: int) -> tuple[list[Any], bool, bool]:
    """Decode the items of a JSON list starting at `text[start] == "["` one by one.

    Returns `(items, closed, broken)`: `closed` when the list ended with `]`, `broken` when an item
    failed to decode (typically a truncated tail). Items decoded before the failure are kept.
    """
    items: list[Any] = []
    pos = _skip_ws(text, start + 1)
    if pos < len(text) and text[pos] == "]":
        return items, True, False
    while pos < len(text) and len(items) < MAX_OBJECTS:
        try:
            item, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return items, False, True
        items.append(item)
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            return items, False, True
        if text[pos] == "]":
            return items, True, False
        if text[pos] != ",":
            return items, False, True
        pos = _skip_ws(text, pos + 1)
    return items, False, pos >= len(text)


def _parse_json(text: str) -> ParsedOutput | None:
    """Read the first JSON list or object in `text` that holds objects (or an explicit empty list)."""
    attempts = 0
    pos = 0
    n = len(text)
    while attempts < _MAX_JSON_ATTEMPTS:
        starts = [i for i in (text.find("[", pos), text.find("{", pos)) if i >= 0]
        if not starts:
            return None
        start = min(starts)
        attempts += 1
        pos = start + 1
        if text[start] == "[":
            items, closed, broken = _decode_list_items(text, start)
            if closed and not items:
                return ParsedOutput(valid=True)
            if items and not all(isinstance(x, (int, float)) for x in items):
                candidates = items
            elif items and len(items) == 4 and closed:
                candidates = [items]  # a bare [x1, y1, x2, y2]
            elif items and len(items) == 2 and closed:
                candidates = [items]  # a bare [x, y]
            else:
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
        else:
            try:
                item, _ = _DECODER.raw_decode(text, start)
            except (ValueError, RecursionError):
                continue
            obj = _object_from_json(item)
            if obj is not None:
                return ParsedOutput([obj], valid=True)
            if isinstance(item, Mapping) and any(k in item for k in _BOX_KEYS + _POINT_KEYS):
                return ParsedOutput([], valid=False, rejected=1)
        if pos >= n:
            return None
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


def _parse_plain(text: str) -> ParsedOutput | None:
    """`(x1,y1),(x2,y2)` pairs, then `[x1, y1, x2, y2]` / `(x1, y1, x2, y2)` quadruples, in prose."""
    for pattern in (_PAIR_BOX_RE, _QUAD_RE):
        objects, rejected = [], 0
        for match in pattern.finditer(text):
            values = tuple(_finite(v) for v in match.groups())
            if None in values:
                rejected += 1
            else:
                objects.append(DetectedObject(bbox=values))  # type: ignore[arg-type]
            if len(objects) >= MAX_OBJECTS:
                break
        if objects or rejected:
            return ParsedOutput(objects, valid=bool(objects), rejected=rejected)
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
        raw = text if isinstance(text, str) else completion_text(text)
        body = strip_wrappers(raw)
        if "<|box_start|>" not in raw:
            # Most answers of a trained model are exactly a JSON list: decode it in one call.
            fast = _parse_exact_json_list(body)
            if fast is not None:
                return fast
        return _parse_general(raw, body, box_format)
    except Exception:  # noqa: BLE001 - a parser must never take a training run down
        return ParsedOutput()


def _parse_general(raw: str, body: str, box_format: str | None) -> ParsedOutput:
    """Every syntax, in the box format's order of likelihood; the first valid reading wins."""
    if box_format in ("qwen2_5_vl", "qwen3_vl") and "<|box_start|>" not in raw:
        order = (_parse_json, _parse_special_tokens, _parse_plain)
    else:
        order = (_parse_special_tokens, _parse_json, _parse_plain)
    fallback: ParsedOutput | None = None
    for parser in order:
        # Box tokens live outside any <answer> wrapper just as well; search the raw text for them.
        result = parser(raw if parser is _parse_special_tokens else body)
        if result is None:
            continue
        if result.valid:
            return result
        fallback = fallback or result
    return fallback or ParsedOutput()


_COUNT_RE = re.compile(r"^\D{0,200}?(\d{1,6})\D{0,200}$")


def parse_count(text: Any, box_format: str | None = None) -> int | None:
    """Number of objects a completion reports: the objects it lists, else a lone integer in the text.

    Returns `None` when nothing countable is found; an explicit empty list counts as 0.

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
    return int(match.group(1)) if match else None


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
        raise ValueError(f"rendering for {box_format!r} needs input_size, the processor-resized [width, height]")
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
            body = f"({values[0]},{values[1]}),({values[2]},{values[3]})" if is_box else f"({values[0]},{values[1]})"
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
_WHAT = {"grounding": "object", "counting": "object", "detection": "object"}


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
