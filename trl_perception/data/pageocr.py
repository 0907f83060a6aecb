"""PageOCR rows from the Fox benchmark's page-OCR files (`en_page_ocr.json`, `cn_page_ocr.json`), the set
Perception-R1 evaluates OCR on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RECORD_ERRORS, ErrorPolicy, RecordError
from .images import ImageFolder, image_struct, read_image_size
from .io import load_json_records
from .registry import register_builder
from .resize import check_box_format_options, check_image_size
from .rows import PromptCache, contract_dataset, select_rows
from .validators import require_keys

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["build_pageocr"]

_ANSWER_ROLES = ("gpt", "assistant")


def _answer(conversations: Any) -> str:
    """The page text: the first `gpt` (or `assistant`) turn of a Fox record."""
    if not isinstance(conversations, list):
        raise RecordError("bad record", f"conversations must be a list of turns, got {conversations!r:.80}")
    for turn in conversations:
        if isinstance(turn, dict) and (turn.get("from") or turn.get("role")) in _ANSWER_ROLES:
            value = turn.get("value", turn.get("content"))
            if not isinstance(value, str):
                raise RecordError("bad record", f"the answer turn has no text value: {turn!r:.80}")
            return value
    raise RecordError("bad record", "conversations hold no 'gpt' turn with the page text")


@register_builder("ocr")
def build_pageocr(
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
    think: bool = False,
    allow_outside_image_dir: bool = False,
) -> datasets.Dataset:
    """OCR rows from a Fox page-OCR file (English `en_page_ocr.json` or Chinese `cn_page_ocr.json`).

    Each record is `{"image": "en_1.png", "len": ..., "conversations": [{"from": "human", ...},
    {"from": "gpt", "value": <page text>}]}`; `solution` is the page text exactly as written (Chinese
    included), the prompt Perception-R1's Table 8 `"OCR this image."`. (Their evaluation script sends
    `"<image>\\nOCR this image: "`; pass that as `template` to match it.) Images are looked up in
    `image_dir`, then in Fox's own `<image_dir>/{en,cn}_pdf_png/` folder named after the JSON file.

    Args:
        source: the Fox JSON file.
        split: must be `None`: one Fox file holds one set.
        image_dir: folder of the page images (default: the JSON file's folder, as in Fox's zip).
        num_samples, seed, on_error, box_format, min_pixels, max_pixels, template, system_prompt: as in
            `build_refcoco`. A box format adds its columns (OCR has no output-format instruction); pixel
            limits resize pages to its grid (the text is unchanged).
        think (`bool`): ask for R1-style `<think>…</think><answer>…</answer>` (`data.prompts.THINK_INSTRUCTION`
            appended to the user text, after the template and the box format's instruction).
        allow_outside_image_dir (`bool`): accept an `image` path that leaves `image_dir` (`../x.png`, an
            absolute path); off by default, where such a path is a bad record.

    Returns:
        `datasets.Dataset` in the row contract, `task == "ocr"`.

    Example:
    ```python
    >>> import json, tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "en_pdf_png").mkdir()
    >>> Image.new("RGB", (60, 80), "white").save(root / "en_pdf_png" / "en_1.png")
    >>> _ = (root / "en_page_ocr.json").write_text(json.dumps([{"image": "en_1.png", "len": 11,
    ...     "conversations": [{"from": "human", "value": "<image>\\nOCR this image: "},
    ...                       {"from": "gpt", "value": "Hello world"}]}]))
    >>> row = build_pageocr(root / "en_page_ocr.json")[0]
    >>> row["prompt"][0]["content"][1]["text"], row["solution"], row["image_size"]
    ('OCR this image.', 'Hello world', [60, 80])

    ```
    """
    check_box_format_options(box_format, min_pixels, max_pixels)
    json_file = Path(source)
    if split is not None:
        raise ValueError(f"{json_file}: one Fox file holds one set; it takes no split")
    entries = load_json_records(json_file)
    policy = ErrorPolicy(json_file, on_error)
    folder = ImageFolder(
        image_dir if image_dir is not None else json_file.parent, allow_outside=allow_outside_image_dir
    )
    lang = json_file.name.split("_", 1)[0]
    fox_dir = f"{lang}_pdf_png" if lang in ("en", "cn") else None

    records: list[dict[str, Any]] = []
    for where, record in entries:
        try:
            if isinstance(record, RecordError):
                raise record
            record = require_keys(record, ("image", "conversations"))
            name = record["image"]
            if not isinstance(name, str) or not name:
                raise RecordError("bad record", f"image must be a file name, got {name!r:.80}")
            candidates = [name, os.path.basename(name)]
            if fox_dir is not None:
                candidates.append(f"{fox_dir}/{os.path.basename(name)}")
            records.append(
                {"where": where, "text": _answer(record["conversations"]), "candidates": candidates}
            )
        except RECORD_ERRORS as err:
            policy.failed(where, err)

    def accept(i: int) -> bool:
        record = records[i]
        try:
            found = folder.find(*record["candidates"])
            if found is None:
                raise RecordError(
                    "missing image",
                    f"image {record['candidates'][0]!r} not found in {folder.root} or {fox_dir}/",
                )
            record["image"], record["image_size"] = found, list(read_image_size(found))
            check_image_size(record["image_size"], box_format, min_pixels, max_pixels)
            return True
        except RECORD_ERRORS as err:
            policy.failed(record["where"], err)
            return False

    chosen = select_rows(len(records), accept, num_samples, seed)
    policy.finish(len(entries))
    picked = [records[i] for i in chosen]
    prompt = PromptCache("ocr", box_format, template, system_prompt, think=think)
    return contract_dataset(
        "ocr",
        [prompt() for _ in picked],
        image_struct([r["image"] for r in picked]),
        [r["text"] for r in picked],
        [r["image_size"] for r in picked],
        box_format,
        min_pixels,
        max_pixels,
    )
