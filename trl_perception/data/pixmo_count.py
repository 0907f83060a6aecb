"""PixMo-Count counting rows: the Hugging Face parquet release (`allenai/pixmo-count`) with images from a
local folder, and Perception-R1's `pixmo_count_{val,test}540.jsonl` evaluation files."""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from .errors import RECORD_ERRORS, DataError, ErrorPolicy, RecordError, short_repr
from .images import ImageFolder, check_inside, image_struct, read_image_size
from .io import load_json_records, parquet_columns, read_parquet
from .registry import register_builder
from .resize import check_box_format_options, check_image_size
from .rows import PromptCache, contract_dataset, select_rows
from .validators import require_keys

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["build_pixmo_count"]

_HF_COLUMNS = ("image_url", "image_sha256", "count", "label")
_PR1_KEYS = ("image_path", "question", "ground_truth")
_SPLIT_ALIASES = {"val": "validation"}
_HF_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+?)-\d{5}-of-\d{5}")
_POINT_TOLERANCE = 1.0  # pixels a point may lie outside the image (annotation clicks on the border)


class _ShaFolder(ImageFolder):
    """An image folder also indexed by file stem, so `<sha256>.jpg`, `<sha256>.png` or `<sha256>` match."""

    def __init__(self, root: str | os.PathLike | None, allow_outside: bool = False):
        super().__init__(root, allow_outside)
        self._stems: dict[str, str] | None = None

    def by_stem(self, stem: str) -> str | None:
        if self.root is None:
            return None
        if self._stems is None:
            self._stems = {}
            for directory, _, files in os.walk(self.root):
                for name in files:
                    self._stems.setdefault(Path(name).stem, os.path.join(directory, name))
                    self._stems.setdefault(name, os.path.join(directory, name))
        return self._stems.get(stem)


def _file_split(path: Path) -> str:
    match = _HF_SHARD.match(path.name)
    return match.group("split") if match else path.stem


def _hf_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path}: no parquet files")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(_file_split(f), []).append(f)
    if split is None:
        if len(by_split) > 1:
            raise ValueError(f"{path}: holds splits {sorted(by_split)}; pass split=")
        return files
    name = _SPLIT_ALIASES.get(split, split)
    if name not in by_split:
        raise FileNotFoundError(f"{path}: no parquet files for split {split!r}; found {sorted(by_split)}")
    return by_split[name]


def _points(value: Any, count: int) -> list[list[float]] | None:
    """PixMo's points, a struct of lists `{"x": [...], "y": [...]}` (or a list of `{x, y}` / `[x, y]`),
    as `[[x, y], ...]`; `None` when the source has none (the eval splits)."""
    if value is None:
        return None
    if isinstance(value, dict):
        xs, ys = value.get("x"), value.get("y")
        if xs is None and ys is None:
            return None
        if not isinstance(xs, (list, tuple)) or not isinstance(ys, (list, tuple)) or len(xs) != len(ys):
            raise RecordError(
                "bad points", f"points must hold x and y lists of one length, got {value!r:.120}"
            )
        pairs = list(zip(xs, ys))
    elif isinstance(value, (list, tuple)):
        pairs = [(p.get("x"), p.get("y")) if isinstance(p, dict) else p for p in value]
    else:
        raise RecordError("bad points", f"points must be {{'x': [...], 'y': [...]}}, got {value!r:.120}")
    out = []
    for pair in pairs:
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair
        )
        if not ok:
            raise RecordError("bad points", f"a point must be two finite numbers, got {pair!r:.80}")
        out.append([float(pair[0]), float(pair[1])])
    if not out:
        return None
    if len(out) != count:
        raise RecordError("bad points", f"{len(out)} points for a count of {count}")
    return out


MAX_COUNT = 2**31 - 1
"""Largest count a record may state; a count of `1e300` is a bad record, not an integer overflow."""


def _count(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise RecordError(
            "bad record", f"count must be an integer in [0, {MAX_COUNT}], got {short_repr(value)}"
        )
    return value


def _label(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError("bad record", f"{key} must be the object name, got {value!r:.80}")
    return value.strip()


def _url_name(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return None
    name = os.path.basename(unquote(urlparse(url).path))
    try:
        return check_inside(name) if name else None
    except RecordError:  # a URL's last segment of `..`: no local file name to look for
        return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_hf(path: Path, split: str | None, on_error: str) -> tuple[list[dict[str, Any]], ErrorPolicy, int]:
    files = _hf_files(path, split)
    policy = ErrorPolicy(files[0] if len(files) == 1 else path, on_error)
    records: list[dict[str, Any]] = []
    total = 0
    for f in files:
        columns = parquet_columns(f)
        missing = [c for c in _HF_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{f}: not the allenai/pixmo-count schema: lacks column(s) {missing}")
        wanted = [*_HF_COLUMNS, *(["points"] if "points" in columns else [])]
        table = read_parquet(f, wanted).to_pydict()
        n = len(table["count"])
        prefix = f"{f.name} " if len(files) > 1 else ""
        for i in range(n):
            where = f"{prefix}row {i}"
            try:
                count = _count(table["count"][i])
                sha = table["image_sha256"][i]
                url = table["image_url"][i]
                name = _url_name(url)
                records.append(
                    {
                        "where": where,
                        "label": _label(table["label"][i], "label"),
                        "count": count,
                        "points": _points(table["points"][i], count) if "points" in table else None,
                        "sha256": sha if isinstance(sha, str) and sha else None,
                        "candidates": tuple(c for c in (name,) if c),
                        "describe": f"sha256 {sha} / url {url}",
                    }
                )
            except RECORD_ERRORS as err:
                policy.failed(where, err)
        total += n
    return records, policy, total


def _read_pr1(path: Path, on_error: str) -> tuple[list[dict[str, Any]], ErrorPolicy, int]:
    entries = load_json_records(path)
    policy = ErrorPolicy(path, on_error)
    records = []
    for where, record in entries:
        try:
            if isinstance(record, RecordError):
                raise record
            record = require_keys(record, _PR1_KEYS)
            rel = record["image_path"]
            if not isinstance(rel, str) or not rel:
                raise RecordError("bad record", f"image_path must be a relative path, got {short_repr(rel)}")
            records.append(
                {
                    "where": where,
                    "label": _label(record["question"], "question"),
                    "count": _count(record["ground_truth"]),
                    "points": None,
                    "sha256": None,
                    "candidates": (rel, os.path.basename(rel)),
                    "describe": rel,
                }
            )
        except RECORD_ERRORS as err:
            policy.failed(where, err)
    return records, policy, len(entries)


@register_builder("counting")
def build_pixmo_count(
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
    verify_sha256: bool = False,
    allow_outside_image_dir: bool = False,
) -> datasets.Dataset:
    """Counting rows from PixMo-Count.

    Sources:
        * the Hugging Face release `allenai/pixmo-count` (parquet: `image_url`, `image_sha256`, `count`,
          `points` as a struct of lists `{"x": [...], "y": [...]}` in pixels, `label`): a file or a
          snapshot folder (`split` picks `train`, `validation`/`val` or `test` among its files). The
          release has URLs only; images are looked up in `image_dir` by sha256 (`<sha256>`,
          `<sha256>.jpg`, ... anywhere under it) and then by the URL's file name;
        * Perception-R1's evaluation files `pixmo_count_{val,test}540.jsonl`
          (`image_path` relative to `image_dir`, `question` = the label, `ground_truth` = the count).

    The prompt is Perception-R1's counting template (Table 8) filled with the label; `solution` is
    `{"count": n, "points": [[x, y], ...]}` with points in pixels of `image`, or `points: None` where
    the source has none (the jsonl files, and the eval splits of some releases).

    Args:
        source: the parquet file/folder or the jsonl file.
        split (`str`, *optional*): split of a snapshot folder holding several.
        image_dir: the folder holding the downloaded images (default: the source's folder, or the source
            itself when it is a folder).
        num_samples, seed, on_error, box_format, min_pixels, max_pixels, template, system_prompt: as in
            `build_refcoco` (`{label}` is the template field).
        think (`bool`): ask for R1-style `<think>…</think><answer>…</answer>` (`data.prompts.THINK_INSTRUCTION`
            appended to the user text, after the template and the box format's instruction).
        verify_sha256 (`bool`): hash each image found and check it against `image_sha256` (a mismatch is
            a bad record). Off by default: it reads every file.
        allow_outside_image_dir (`bool`): accept an `image_path` that leaves `image_dir` (`../x.jpg`, an
            absolute path); off by default, where such a path is a bad record.

    Returns:
        `datasets.Dataset` in the row contract, `task == "counting"`.

    Example:
    ```python
    >>> import json, tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (64, 48)).save(root / "a.jpg")
    >>> _ = (root / "pixmo_count_val540.jsonl").write_text(
    ...     json.dumps({"image_path": "a.jpg", "question": "birds", "ground_truth": 3}) + "\\n")
    >>> row = build_pixmo_count(root / "pixmo_count_val540.jsonl", image_dir=root)[0]
    >>> row["prompt"][0]["content"][1]["text"], row["solution"], row["image_size"]
    ('Output all the bounding boxes of the birds', {'count': 3, 'points': None}, [64, 48])

    ```
    """
    check_box_format_options(box_format, min_pixels, max_pixels)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if image_dir is None:
        image_dir = path.parent if path.is_file() else path
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        records, policy, total = _read_pr1(path, on_error)
    else:
        records, policy, total = _read_hf(path, split, on_error)
    folder = _ShaFolder(image_dir, allow_outside=allow_outside_image_dir)

    def accept(i: int) -> bool:
        record = records[i]
        try:
            found = None
            if record["sha256"]:
                found = folder.by_stem(record["sha256"])
            if found is None:
                found = folder.find(*record["candidates"])
            for candidate in record["candidates"] if found is None else ():
                found = found or folder.by_stem(Path(candidate).stem)
            if found is None:
                raise RecordError("missing image", f"image not found in {folder.root} ({record['describe']})")
            if verify_sha256 and record["sha256"] and _sha256(found) != record["sha256"].lower():
                raise RecordError("bad image", f"{found} does not match image_sha256 {record['sha256']}")
            size = read_image_size(found)
            check_image_size(size, box_format, min_pixels, max_pixels)
            if record["points"] is not None:
                w, h = size
                t = _POINT_TOLERANCE
                outside = [p for p in record["points"] if not (-t <= p[0] <= w + t and -t <= p[1] <= h + t)]
                if outside:
                    raise RecordError(
                        "bad points",
                        f"point {outside[0]} lies outside the {w}x{h} image (points must be pixels)",
                    )
                record["points"] = [[min(max(x, 0.0), w), min(max(y, 0.0), h)] for x, y in record["points"]]
            record["image"], record["image_size"] = found, list(size)
            return True
        except RECORD_ERRORS as err:
            policy.failed(record["where"], err)
            return False

    chosen = select_rows(len(records), accept, num_samples, seed)
    policy.finish(total)
    picked = [records[i] for i in chosen]
    prompt = PromptCache("counting", box_format, template, system_prompt, think=think)
    return contract_dataset(
        "counting",
        [prompt(label=r["label"]) for r in picked],
        image_struct([r["image"] for r in picked]),
        [{"count": r["count"], "points": r["points"]} for r in picked],
        [r["image_size"] for r in picked],
        box_format,
        min_pixels,
        max_pixels,
    )
