"""Multiple-choice and short-answer VQA rows (the "look again" task) from V*'s and MGPO's JSON layouts.

Images stay at their original resolution: the crop turn (`trl_perception.crop`) cuts its crop from the original
pixels, and `input_size` says what the model sees under the pixel limits."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._json import loads_strict
from ..formats import CHOICE_LETTERS
from ..frames import model_input_size
from .errors import RECORD_ERRORS, ErrorPolicy, RecordError, short_repr
from .images import ImageFolder, image_struct, read_image_size
from .io import load_json_records
from .registry import register_builder
from .resize import check_box_format_options, check_image_size
from .rows import PromptCache, row_features, rows_to_dataset, select_rows

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["build_vqa", "split_choices"]

_QUESTION_KEYS = ("question", "text", "problem", "prompt")
_OPTION_KEYS = ("options", "choices")
_ANSWER_KEYS = ("answer", "label", "ground_truth", "solution")
_IMAGE_KEYS = ("image", "image_path", "img", "image_file")
_BOX_KEYS = ("target_box", "bbox")
_MARKER_RE = re.compile(r"\(([A-Z])\)")
_LINE_OPTION_RE = re.compile(r"([A-Z])[.:)]\s+(\S.*)")
_LETTER_RE = re.compile(r"\(?([A-Z])\)?[.:)]?")
_IMAGE_TOKEN = "<image>"
_MAX_TEXT = 20_000


def split_choices(text: str) -> tuple[str, list[str]]:
    """`(question, options)` of a question text that lists its options, V*-style (`(A) red` markers, inline or
    one per line) or as lines `A. red`; options must run A, B, C, ... in order. Lines after the options (an
    instruction such as "Answer with the option's letter ...") are dropped. No options: `(text, [])`.

    Example:
    ```python
    >>> split_choices("What colour is the cup?\\n(A) red\\n(B) blue\\nAnswer with the option's letter.")
    ('What colour is the cup?', ['red', 'blue'])
    >>> split_choices("Which? A. cat\\nB. dog")
    ('Which? A. cat\\nB. dog', [])
    >>> split_choices("Which?\\nA. cat\\nB. dog")
    ('Which?', ['cat', 'dog'])

    ```
    """
    text = text.replace(_IMAGE_TOKEN, "").strip()
    markers = list(_MARKER_RE.finditer(text))
    letters = "".join(m.group(1) for m in markers)
    if len(markers) >= 2 and CHOICE_LETTERS.startswith(letters):
        question = text[: markers[0].start()].strip()
        options = []
        for i, marker in enumerate(markers):
            end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
            piece = text[marker.end() : end].strip()
            if i + 1 == len(markers):
                piece = piece.split("\n", 1)[0].strip()  # an instruction may follow the last option
            options.append(piece)
        return question, options
    lines = text.split("\n")
    for start, line in enumerate(lines):
        match = _LINE_OPTION_RE.fullmatch(line.strip())
        if match and match.group(1) == "A":
            options = []
            for follow in lines[start:]:
                item = _LINE_OPTION_RE.fullmatch(follow.strip())
                if item is None or item.group(1) != CHOICE_LETTERS[len(options)]:
                    break
                options.append(item.group(2).strip())
            if len(options) >= 2:
                return "\n".join(lines[:start]).strip(), options
    return text, []


def _first(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if record.get(key) is not None:
            return key, record[key]
    return None, None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError("bad record", f"{what} must be non-empty text, got {short_repr(value)}")
    if len(value) > _MAX_TEXT:
        raise RecordError("bad record", f"{what} is {len(value)} characters long (at most {_MAX_TEXT})")
    return value.strip()


def _options(value: Any) -> list[str]:
    if isinstance(value, str):
        _, options = split_choices("\n" + value)
        if not options:
            raise RecordError("bad options", f"cannot read options from {short_repr(value)}")
        return options
    if isinstance(value, Mapping):  # {"A": "red", "B": "blue"}
        keys = sorted(value)
        if "".join(map(str, keys)) != CHOICE_LETTERS[: len(keys)]:
            raise RecordError("bad options", f"option keys must be A, B, C, ... got {short_repr(keys)}")
        value = [value[k] for k in keys]
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= len(CHOICE_LETTERS):
        raise RecordError("bad options", f"options must be a list of 2-26 texts, got {short_repr(value)}")
    return [
        _text(str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v, "an option")
        for v in value
    ]


def _answer(value: Any, options: list[str]) -> str:
    if isinstance(value, Mapping):  # MGPO/verl: reward_model = {"ground_truth": ...}
        value = value.get("ground_truth")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise RecordError("bad answer", f"answer must be finite, got {value!r}")
        value = str(int(value)) if float(value).is_integer() else str(value)
    text = _text(value, "answer")
    if not options:
        return text
    letter = _LETTER_RE.fullmatch(text)
    if letter and CHOICE_LETTERS.index(letter.group(1)) < len(options):
        return letter.group(1)
    matches = [i for i, option in enumerate(options) if option.strip().lower() == text.lower()]
    if len(matches) == 1:
        return CHOICE_LETTERS[matches[0]]
    raise RecordError(
        "bad answer",
        f"answer {short_repr(text)} is neither a letter of the {len(options)} options nor one of them",
    )


def _box(value: Any, size: tuple[int, int], xywh: bool) -> list[float]:
    """A target box in pixels, `[x1, y1, x2, y2]`; several boxes (V*'s `bbox` lists) become their union."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return []
    boxes = (
        value
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple))
        else [value]
    )
    out = None
    for box in boxes:
        ok = isinstance(box, (list, tuple)) and len(box) == 4
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box
        )
        if not ok:
            raise RecordError("bad bbox", f"a target box must be 4 finite numbers, got {short_repr(box)}")
        x1, y1, a, b = (float(v) for v in box)
        x2, y2 = (x1 + a, y1 + b) if xywh else (a, b)
        if not (x1 < x2 and y1 < y2):
            raise RecordError("bad bbox", f"target box {short_repr(box)} is empty")
        out = (
            [x1, y1, x2, y2]
            if out is None
            else [min(out[0], x1), min(out[1], y1), max(out[2], x2), max(out[3], y2)]
        )
    w, h = size
    clipped = [
        min(max(out[0], 0.0), w),
        min(max(out[1], 0.0), h),
        min(max(out[2], 0.0), w),
        min(max(out[3], 0.0), h),
    ]
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        raise RecordError("bad bbox", f"target box {short_repr(out)} lies outside the {w}x{h} image")
    return clipped


def _sidecar_box(image_path: str, size: tuple[int, int]) -> list[float]:
    """V*'s per-image annotation `<image>.json` (`"bbox": [[x, y, w, h], ...]`), when it exists."""
    sidecar = Path(image_path).with_suffix(".json")
    if not sidecar.is_file():
        return []
    try:
        data = loads_strict(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise RecordError("bad annotation", f"{sidecar}: not JSON ({err})") from None
    if not isinstance(data, Mapping) or "bbox" not in data:
        return []
    return _box(data["bbox"], size, xywh=True)


def _read(entries: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, Exception]]]:
    records, failures = [], []
    for where, record in entries:
        try:
            if isinstance(record, RecordError):
                raise record
            if not isinstance(record, Mapping):
                raise RecordError("bad record", f"expected a record object, got {short_repr(record)}")
            q_key, question = _first(record, _QUESTION_KEYS)
            question = _text(question, f"'{q_key or 'question'}'")
            _, raw_options = _first(record, _OPTION_KEYS)
            if raw_options is None:
                question, options = split_choices(question)
            else:
                question = split_choices(question)[0] if _MARKER_RE.search(question) else question
                question = question.replace(_IMAGE_TOKEN, "").strip()
                options = _options(raw_options)
            a_key, raw_answer = _first(record, _ANSWER_KEYS)
            if raw_answer is None and isinstance(record.get("reward_model"), Mapping):
                raw_answer = record["reward_model"]
            if raw_answer is None:
                raise RecordError(
                    "bad record", f"record has no answer ({', '.join(_ANSWER_KEYS)} or reward_model)"
                )
            _, image = _first(record, _IMAGE_KEYS)
            if not isinstance(image, str) or not image:
                raise RecordError("bad record", f"image must be a relative path, got {short_repr(image)}")
            box_key, box = _first(record, _BOX_KEYS)
            records.append(
                {
                    "where": where,
                    "question": question,
                    "options": options,
                    "answer": _answer(raw_answer, options),
                    "image_rel": image,
                    "box": box,
                    "box_xywh": box_key == "bbox",
                }
            )
        except RECORD_ERRORS as err:
            failures.append((where, err))
    return records, failures


@register_builder("vqa")
def build_vqa(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    image_dir: str | os.PathLike | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    on_error: str = "raise",
    box_format: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    allow_outside_image_dir: bool = False,
) -> datasets.Dataset:
    """Multiple-choice (or short-answer) VQA rows from a JSON list or JSON-lines file.

    Layouts (one record per question; keys are tried in this order):
        * **V*** (`craigwu/vstar_bench`, `test_questions.jsonl`): `{"image": "direct_attributes/sa_4690.jpg",
          "text": "What is the colour of ...?\\n(A) red\\n(B) blue\\n(C) ...\\nAnswer with the option's letter
          from the given choices directly.", "label": "A", "category": ..., "question_id": ...}`. The options
          are read from the `(A)` markers of `text`; the instruction after them is dropped (the prompt adds
          its own). V*'s per-image annotation `<image>.json` next to the image, when present, gives the target
          region: the union of its `"bbox"` boxes (`[x, y, w, h]`).
        * **MGPO** (the columns its verl fork reads): `{"image_path" (or "image"): ..., "question": ...,
          "choices": "(A) red (B) blue ..." or ["red", "blue", ...], "answer" (or "ground_truth", or
          "reward_model": {"ground_truth": ...}): "B"}`.
        * generic: `question`/`problem`, `options` (a list, or `{"A": ..., "B": ...}`), `answer` as a letter,
          `(B)`, or the option's text (turned into its letter), and an optional `target_box` `[x1, y1, x2, y2]`
          (or `bbox` `[x, y, w, h]`) in pixels. Without options the answer is a short text or number.

    A `<image>` placeholder in the question is removed. Image paths are relative to `image_dir` (default: the
    file's folder); one that leaves it is a bad record unless `allow_outside_image_dir=True`.

    Unlike the box-task builders, images are never resized, even with `min_pixels`/`max_pixels`: the crop
    turn needs the original pixels. Those limits (with `box_format`) only set `input_size`, the size the
    model sees. Bad records raise a `DataError` naming the file and record, or with `on_error="skip"` are
    skipped and counted.

    Args:
        source: the `.json` / `.jsonl` file.
        split, image_dir, num_samples, seed, on_error, box_format, min_pixels, max_pixels, template,
            system_prompt: as in every builder (`split` is not used: one file is one split). `template` overrides
            the question template `"{question}"`.
        allow_outside_image_dir (`bool`): accept image paths outside `image_dir`.

    Returns:
        `datasets.Dataset` in the row contract with `task == "vqa"`, `solution` the answer (a letter for
        multiple choice), `options` and `target_box` (`[]` when unknown).

    Example:
    ```python
    >>> import json, tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (640, 480)).save(root / "a.jpg")
    >>> _ = (root / "test_questions.jsonl").write_text(json.dumps({"image": "a.jpg", "label": "B",
    ...     "text": "What colour is the cup?\\n(A) red\\n(B) blue\\nAnswer with the option's letter."}) + "\\n")
    >>> row = build_vqa(root / "test_questions.jsonl")[0]
    >>> row["solution"], row["options"], row["target_box"], row["image_size"]
    ('B', ['red', 'blue'], [], [640, 480])

    ```
    """
    check_box_format_options(box_format, min_pixels, max_pixels)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a .json or .jsonl file of VQA records)")
    entries = load_json_records(path)
    policy = ErrorPolicy(path, on_error)
    records, failures = _read(entries)
    for where, err in failures:
        policy.failed(where, err)
    folder = ImageFolder(
        path.parent if image_dir is None else image_dir, allow_outside=allow_outside_image_dir
    )

    def accept(i: int) -> bool:
        record = records[i]
        try:
            rel = record["image_rel"]
            found = folder.find(rel)
            if found is None:
                raise RecordError("missing image", f"image {short_repr(rel)} not found in {folder.root}")
            size = read_image_size(found)
            check_image_size(size, box_format, min_pixels, max_pixels)
            if record["box"] is not None:
                record["target_box"] = _box(record["box"], size, record["box_xywh"])
            else:
                record["target_box"] = _sidecar_box(found, size)
            record["image"], record["image_size"] = found, list(size)
            return True
        except RECORD_ERRORS as err:
            policy.failed(record["where"], err)
            return False

    chosen = select_rows(len(records), accept, num_samples, seed)
    policy.finish(len(entries))
    picked = [records[i] for i in chosen]
    prompt = PromptCache("vqa", box_format, template, system_prompt)
    columns: dict[str, list[Any]] = {
        "prompt": [prompt(question=r["question"], options=tuple(r["options"])) for r in picked],
        "image": image_struct([r["image"] for r in picked]),
        "task": ["vqa"] * len(picked),
        "solution": [r["answer"] for r in picked],
        "image_size": [r["image_size"] for r in picked],
    }
    if box_format is not None:
        columns["box_format"] = [box_format] * len(picked)
        columns["input_size"] = [
            list(model_input_size(r["image_size"], box_format, min_pixels, max_pixels)) for r in picked
        ]
    columns["options"] = [r["options"] for r in picked]
    columns["target_box"] = [r["target_box"] for r in picked]
    return rows_to_dataset(columns, row_features("vqa", with_box_format=box_format is not None))
