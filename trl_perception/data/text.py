"""Text-only rows (no image) from a JSON or JSON-lines file of prompt-answer pairs: the data of a text-only stage,
such as LMM-R1's text-only first stage before multimodal training (arXiv 2503.07536)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .errors import RECORD_ERRORS, ErrorPolicy, RecordError
from .io import load_json_records
from .registry import register_builder
from .rows import select_rows
from .validators import require_keys

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["TEXT_TASK", "build_text"]

TEXT_TASK = "text"
"""The `task` of text-only rows (not a perception task: no reward or metric of this library reads it)."""


def _text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise RecordError("bad record", f"{key} must be non-empty text, got {value!r:.80}")
    return value


@register_builder(TEXT_TASK)
def build_text(
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
) -> datasets.Dataset:
    """Text-only prompt-answer rows from a JSON list or JSON-lines file of `{"prompt": ..., "completion": ...}`
    records (`"solution"` may stand for `"completion"`), in TRL's conversational prompt-completion form.

    Each row has a user turn with one text part (after a system turn when `system_prompt` is given), the answer
    as the assistant's `completion`, the answer text again as `solution` (for a reward that compares with it), and
    `task == "text"`. There is no image column: TRL's `SFTTrainer` then tokenizes the rows as text and trains a
    vision-language model's language part on the answer tokens only.

    Args:
        source: the JSON or JSON-lines file.
        split, image_dir, box_format, min_pixels, max_pixels: must be `None` (a text file has one set, no images).
        num_samples, seed, on_error: as in `build_refcoco`.
        template (`str`, *optional*): a format string with `{prompt}`, wrapped around each record's prompt.
        system_prompt (`str`, *optional*): a system turn before each prompt.

    Returns:
        `datasets.Dataset` with `prompt`, `completion`, `task`, `solution`.

    Example:
    ```python
    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "text.jsonl"
    >>> _ = path.write_text(json.dumps({"prompt": "How many apples: apple apple?", "completion": "2"}) + "\\n")
    >>> row = build_text(path)[0]
    >>> row["prompt"], row["completion"][0]["content"][0]["text"], row["task"]
    ([{'role': 'user', 'content': [{'type': 'text', 'text': 'How many apples: apple apple?'}]}], '2', 'text')

    ```
    """
    import datasets

    given = {"split": split, "image_dir": image_dir, "box_format": box_format, "min_pixels": min_pixels,
             "max_pixels": max_pixels}  # fmt: skip
    unused = sorted(name for name, value in given.items() if value is not None)
    if unused:
        raise ValueError(f"text-only rows take no {unused} (one file, no images)")
    if template is not None and "{prompt}" not in template:
        raise ValueError(f"template must contain {{prompt}}, got {template!r}")
    entries = load_json_records(source)
    policy = ErrorPolicy(source, on_error)
    records: list[tuple[str, str] | None] = []
    for where, record in entries:
        try:
            if isinstance(record, RecordError):
                raise record
            answer_key = "completion" if isinstance(record, dict) and "completion" in record else "solution"
            record = require_keys(record, ("prompt", answer_key))
            records.append((_text(record, "prompt"), _text(record, answer_key)))
        except RECORD_ERRORS as err:
            policy.failed(where, err)
            records.append(None)
    chosen = select_rows(len(records), lambda i: records[i] is not None, num_samples, seed)
    policy.finish(len(entries))
    system = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    rows = []
    for i in chosen:
        prompt, answer = records[i]
        text = template.replace("{prompt}", prompt) if template is not None else prompt
        rows.append({
            "prompt": [*system, {"role": "user", "content": [{"type": "text", "text": text}]}],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "task": TEXT_TASK,
            "solution": answer,
        })  # fmt: skip
    if not rows:
        raise ValueError(f"{source}: no usable prompt-answer records")
    return datasets.Dataset.from_list(rows)
