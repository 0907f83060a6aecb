"""RefCOCO / RefCOCO+ / RefCOCOg grounding rows from the four layouts users have: the refer API files,
the lmms-lab and jxu124 parquet releases, and Perception-R1's flat JSON."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RECORD_ERRORS, DataError, ErrorPolicy, RecordError, short_repr
from .images import ImageFolder, image_struct, read_image_size
from .io import load_json, load_json_records, load_pickle, loads_text, parquet_columns, read_parquet
from .registry import register_builder
from .resize import check_box_format_options, check_image_size, scale_solution
from .rows import PromptCache, contract_dataset, select_rows
from .validators import check_xyxy, positive_size, require_keys, round_box, xywh_to_xyxy

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["LAYOUTS", "SOLUTION_FRAMES", "SPLITS", "build_refcoco", "default_split", "detect_refcoco_layout"]

LAYOUTS: tuple[str, ...] = ("refer", "lmms-lab", "jxu124", "pr1")
"""RefCOCO layouts `build_refcoco` reads (see `detect_refcoco_layout`)."""

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB", "test")
"""Split names, as the refer API spells them; each layout's own names are mapped to these."""

SOLUTION_FRAMES: tuple[str, ...] = ("pixels", "qwen2_vl")
"""Frames a Perception-R1 flat file may store `solution` in: absolute pixels of the image (its evaluation
files, which carry `normalized_solution` beside it) or Qwen2-VL's 0–1000 (its training set,
`Kangheng/refcoco_320k`)."""

_SPLIT_ALIASES = {"validation": "val"}
_SPLIT_BY_ORDER = ("unc", "umd", "google")
_LMMS_COLUMNS = ("answer", "bbox", "image")
_JXU_COLUMNS = ("sentences", "bbox", "image_path", "raw_image_info")
_PR1_COLUMNS = ("image", "problem", "solution")
_HF_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_+]+?)-\d{5}-of-\d{5}")


@dataclass
class _Object:
    """One referred object: its sentences, xyxy box and where its image is."""

    where: str
    sentences: list[str]
    bbox: list[float]
    image_candidates: tuple[str, ...] = ()
    image_size: list[int] | None = None
    arrow_row: int | None = None  # row of an embedded image (lmms-lab)
    image_path: str | None = None
    resolved: bool = False
    frame: str = "pixels"  # of `bbox` until `resolve` converts it to pixels
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Layout detection


def _parquet_layout(path: Path) -> str:
    columns = set(parquet_columns(path))
    if set(_LMMS_COLUMNS) <= columns:
        return "lmms-lab"
    if set(_JXU_COLUMNS) <= columns:
        return "jxu124"
    if set(_PR1_COLUMNS) <= columns:
        return "pr1"
    raise DataError(
        f"{path}: parquet columns {sorted(columns)} match none of lmms-lab/RefCOCO* "
        f"({list(_LMMS_COLUMNS)}), jxu124/refcoco* ({list(_JXU_COLUMNS)}) or Perception-R1's "
        f"refcoco_320k ({list(_PR1_COLUMNS)})"
    )


def detect_refcoco_layout(path: str | os.PathLike) -> str:
    """Which RefCOCO layout `path` holds: `"refer"`, `"lmms-lab"`, `"jxu124"` or `"pr1"`.

    * `"refer"`: a folder with `refs(unc|umd|google).p` and `instances.json` (or one such pickle);
    * `"lmms-lab"`: parquet with `answer`, `bbox` (xywh) and an embedded `image`;
    * `"jxu124"`: parquet with `sentences`, `bbox` (xyxy), `image_path` and `raw_image_info`;
    * `"pr1"`: Perception-R1 / VLM-R1 flat records (`image`, `problem`, `solution`): JSON, JSON lines, or
      parquet (`Kangheng/refcoco_320k`); a file or a folder of them.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "refs(unc).p").write_bytes(b""); _ = (root / "instances.json").write_text("{}")
    >>> detect_refcoco_layout(root)
    'refer'

    ```
    """
    p = Path(path)
    if p.is_file():
        if p.suffix == ".p" or p.name.startswith("refs("):
            return "refer"
        if p.suffix == ".parquet":
            return _parquet_layout(p)
        if p.suffix in (".json", ".jsonl"):
            return "pr1"
        raise DataError(f"{p}: not a RefCOCO file (expected refs(*).p, *.parquet or *.json)")
    if p.is_dir():
        if any(p.glob("refs(*).p")):
            return "refer"
        parquet = sorted(p.rglob("*.parquet"))
        if parquet:
            return _parquet_layout(parquet[0])
        if any(j.name != "instances.json" for j in [*p.glob("*.json"), *p.glob("*.jsonl")]):
            return "pr1"
        raise DataError(
            f"{p}: no RefCOCO layout found (expected refs(*).p + instances.json, parquet files, or JSON files)"
        )
    raise FileNotFoundError(f"{p}: no such file or directory")


def _canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def default_split(path: str | os.PathLike) -> str:
    """The split a file names (`refcoco_testA.json` → `"testA"`, `train-00000-of-00001.parquet` →
    `"train"`), else `"val"`.

    Example:
    ```python
    >>> default_split("jsons/grounding/refcocog_test.json"), default_split("refcoco/")
    ('test', 'val')

    ```
    """
    shard = _HF_SHARD.match(Path(path).name)
    if shard and _SPLIT_ALIASES.get(shard.group("split"), shard.group("split")) in SPLITS:
        return _SPLIT_ALIASES.get(shard.group("split"), shard.group("split"))
    stem = Path(path).stem
    named = next((s for s in (*SPLITS, "validation") if stem.endswith(f"_{s}")), None)
    return _SPLIT_ALIASES.get(named, named) if named else "val"


def _file_split(path: Path) -> str:
    match = _HF_SHARD.match(path.name)
    if match:
        return match.group("split")
    if path.stem in (*SPLITS, "validation"):
        return path.stem
    return path.parent.name


# --------------------------------------------------------------------------------------------------
# The refer API layout


def _pick_refs_file(path: Path, split_by: str | None) -> Path:
    if path.is_file():
        return path
    found = {m.group(1): f for f in path.glob("refs(*).p") if (m := re.fullmatch(r"refs\((.+)\)\.p", f.name))}
    if split_by is not None:
        if split_by not in found:
            raise FileNotFoundError(f"{path}: no refs({split_by}).p; found {sorted(found)}")
        return found[split_by]
    for name in _SPLIT_BY_ORDER:
        if name in found:
            return found[name]
    return found[sorted(found)[0]]


def _sentences(values: Any, key: str) -> list[str]:
    if not isinstance(values, (list, tuple)) or not values:
        raise RecordError("bad record", f"sentences must be a non-empty list, got {values!r:.80}")
    out = []
    for sent in values:
        text = None
        if isinstance(sent, dict):
            text = next((sent.get(k) for k in (key, "sent", "raw") if isinstance(sent.get(k), str)), None)
        elif isinstance(sent, str):
            text = sent
        if text is None or not text.strip():
            raise RecordError("bad record", f"a sentence has no text under {key!r}: {sent!r:.80}")
        out.append(text.strip())
    return out


def _refer_image_dir(refs_file: Path) -> Path:
    """refer's own layout: `<root>/images/mscoco/images/train2014` beside `<root>/refcoco*/`."""
    guess = refs_file.parent.parent / "images" / "mscoco" / "images" / "train2014"
    if not guess.is_dir():
        raise ValueError(
            f"the refer layout needs image_dir= (the COCO train2014 folder); {guess} does not exist"
        )
    return guess


def _read_refer(
    refs_file: Path, split: str, sentence_key: str, on_error: str
) -> tuple[list[_Object], ErrorPolicy, int]:
    instances_file = refs_file.parent / "instances.json"
    if not instances_file.is_file():
        raise FileNotFoundError(
            f"{instances_file}: the refer layout needs instances.json next to {refs_file.name}"
        )
    refs = load_pickle(refs_file)
    if not isinstance(refs, list):
        raise DataError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    instances = load_json(instances_file)
    if not isinstance(instances, dict) or not all(
        isinstance(instances.get(key), list) for key in ("images", "annotations")
    ):
        raise DataError(f"{instances_file}: expected a COCO-style object with 'images' and 'annotations' lists")
    anns = _by_id(instances["annotations"])
    images = _by_id(instances["images"])

    policy = ErrorPolicy(refs_file, on_error)
    objects: list[_Object] = []
    total = 0
    for i, ref in enumerate(refs):
        where = f"record {i}"
        try:
            if not isinstance(ref, dict) or ref.get("split", split) == split:
                total += 1  # a ref of this split, or one whose split cannot be told: examined here
            ref = require_keys(ref, ("split",), "ref")
            if ref["split"] != split:
                continue
            ref = require_keys(ref, ("ref_id", "ann_id", "sentences"), "ref")
            where = f"record {i} (ref_id {short_repr(ref['ref_id'])})"
            ann = anns.get(_key(ref["ann_id"]))
            if ann is None:
                raise RecordError(
                    "bad record", f"ann_id {short_repr(ref['ann_id'])} is not in {instances_file.name}"
                )
            image_id = ann.get("image_id", ref.get("image_id"))
            image = images.get(_key(image_id))
            if image is None:
                raise RecordError("bad record", f"image_id {short_repr(image_id)} is not in {instances_file.name}")
            image = require_keys(image, ("file_name", "width", "height"), "image")
            objects.append(
                _Object(
                    where=where,
                    sentences=_sentences(ref["sentences"], sentence_key),
                    bbox=xywh_to_xyxy(ann.get("bbox"), f"bbox of ann_id {ref['ann_id']}"),
                    image_candidates=(_file_name(image["file_name"], "file_name"),),
                    image_size=positive_size(image["width"], image["height"]),
                )
            )
        except RECORD_ERRORS as err:
            policy.failed(where, err)
    return objects, policy, total


def _key(value: Any) -> Any:
    """A COCO id as a dict key: `None` for values that cannot be ids (lists, dicts, ...)."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _by_id(entries: list[Any]) -> dict[Any, dict[str, Any]]:
    """COCO entries by id; entries without a usable id can never be referred to, so they are left out."""
    out: dict[Any, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, dict) and _key(entry.get("id")) is not None:
            out[entry["id"]] = entry
    return out


def _file_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise RecordError("bad record", f"{key} must be a relative path, got {short_repr(value)}")
    return value


# --------------------------------------------------------------------------------------------------
# Parquet layouts


def _parquet_files(path: Path, split: str, layout: str) -> list[Path]:
    """The parquet files of `split`, by each layout's own split names (exact match)."""
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(_file_split(f), []).append(f)
    available = sorted(by_split)
    if layout == "jxu124":
        # jxu124 names val `validation`; refcoco/refcoco+ (which have testB) name testA `test`.
        has_test_b = "testB" in by_split
        if split == "val":
            names = ["validation", "val"]
        elif split == "testA" and has_test_b:
            names = ["testA", "test"]
        elif split == "test" and has_test_b:
            raise ValueError(
                f"{path}: in jxu124's refcoco/refcoco+ the `test` files hold testA; ask for split='testA' "
                f"(or 'testB'). Available: {available}"
            )
        else:
            names = [split]
    else:
        names = ["val", "validation"] if split == "val" else [split]
    for name in names:
        if name in by_split:
            return by_split[name]
    raise FileNotFoundError(
        f"{path}: no parquet files for split {split!r} (looked for {names}); found {available}"
    )


def _read_lmms(path: Path, split: str, on_error: str) -> tuple[list[_Object], ErrorPolicy, int, Any]:
    import pyarrow as pa

    files = _parquet_files(path, split, "lmms-lab")
    _check_single_file_split(path, files, split)
    tables = []
    for f in files:
        columns = parquet_columns(f)
        wanted = [c for c in ("answer", "bbox", "image", "file_name") if c in columns]
        tables.append(read_parquet(f, wanted))
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    source = files[0] if len(files) == 1 else path
    policy = ErrorPolicy(source, on_error)
    answers = table.column("answer").to_pylist()
    bboxes = table.column("bbox").to_pylist()
    names = (
        table.column("file_name").to_pylist() if "file_name" in table.column_names else [None] * len(answers)
    )
    image_column = table.column("image").combine_chunks()
    if not pa.types.is_struct(image_column.type):
        raise DataError(f"{source}: column 'image' should be a datasets Image struct {{bytes, path}}")
    blobs = image_column.field("bytes")
    objects: list[_Object] = []
    for i, (answer, bbox, name) in enumerate(zip(answers, bboxes, names)):
        where = f"row {i}"
        try:
            objects.append(
                _Object(
                    where=where,
                    sentences=_sentences(answer, "sent"),
                    bbox=xywh_to_xyxy(bbox),
                    image_candidates=(str(name),) if name else (),
                    arrow_row=i if blobs[i].is_valid else None,
                    extra={"file_name": name},
                )
            )
        except RECORD_ERRORS as err:
            policy.failed(where, err)
    return objects, policy, len(answers), image_column


def _check_single_file_split(path: Path, files: list[Path], split: str) -> None:
    if path.is_file():
        named = _file_split(path)
        canon = _SPLIT_ALIASES.get(named, named)
        if canon in SPLITS and canon != split and not (split == "testA" and canon == "test"):
            raise ValueError(f"{path}: this file holds split {named!r}, not {split!r}")


def _read_jxu(
    path: Path, split: str, on_error: str, sentence_key: str
) -> tuple[list[_Object], ErrorPolicy, int]:
    import pyarrow as pa

    files = _parquet_files(path, split, "jxu124")
    tables = []
    for f in files:
        columns = parquet_columns(f)
        missing = [c for c in _JXU_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{f}: jxu124 parquet lacks column(s) {missing}")
        wanted = [*_JXU_COLUMNS, *(["split"] if "split" in columns and path.is_file() else [])]
        tables.append(read_parquet(f, wanted))
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    source = files[0] if len(files) == 1 else path
    policy = ErrorPolicy(source, on_error)
    splits = table.column("split").to_pylist() if "split" in table.column_names else None
    accepted = {split, "test" if split == "testA" else split, "validation" if split == "val" else split}
    columns = {name: table.column(name).to_pylist() for name in _JXU_COLUMNS}
    objects: list[_Object] = []
    total = 0
    for i in range(table.num_rows):
        if splits is not None and splits[i] not in accepted:
            continue
        total += 1
        where = f"row {i}"
        try:
            info = columns["raw_image_info"][i]
            try:
                info = loads_text(info) if isinstance(info, str) else info
            except ValueError as err:
                raise RecordError("bad record", f"raw_image_info is not valid JSON: {err}") from None
            info = require_keys(info, ("width", "height"), "raw_image_info")
            rel = _file_name(columns["image_path"][i], "image_path")
            objects.append(
                _Object(
                    where=where,
                    sentences=_sentences(columns["sentences"][i], sentence_key),
                    bbox=check_xyxy(columns["bbox"][i]),
                    image_candidates=(rel, os.path.basename(rel)),
                    image_size=positive_size(info["width"], info["height"]),
                )
            )
        except RECORD_ERRORS as err:
            policy.failed(where, err)
    return objects, policy, total


# --------------------------------------------------------------------------------------------------
# Perception-R1 / VLM-R1 flat JSON


def _pr1_file(path: Path, split: str) -> Path:
    if path.is_file():
        stem = path.stem
        named = next((s for s in (*SPLITS, "validation") if stem.endswith(f"_{s}")), None)
        if named is not None and _SPLIT_ALIASES.get(named, named) != split:
            raise ValueError(f"{path}: this file holds split {named!r}, not {split!r}")
        return path
    names = ["val", "validation"] if split == "val" else [split]
    found = [
        f
        for f in sorted([*path.glob("*.json"), *path.glob("*.jsonl")])
        if any(f.stem.endswith(f"_{n}") for n in names)
    ]
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path}: expected one *_{split}.json file, found {[f.name for f in found]}; pass the file itself"
        )
    return found[0]


def _pr1_box(value: Any, what: str = "solution") -> list[float]:
    """A flat-file box: a list, or its text (`"[x1, y1, x2, y2]"`, as refcoco_320k stores it)."""
    if isinstance(value, str):
        try:
            value = loads_text(value)
        except ValueError:
            raise RecordError("bad bbox", f"{what} {short_repr(value)} is not a list of 4 numbers") from None
    return check_xyxy(value, what)


def _pr1_records(path: Path, split: str) -> tuple[Path, list[tuple[str, Any]], Any]:
    """`(source, [(where, record)], image column)` of flat JSON / JSON lines or refcoco_320k parquet; the
    image column (a `datasets` Image struct) is returned only where the parquet embeds images."""
    import pyarrow as pa

    if path.suffix == ".parquet" or (path.is_dir() and not any(path.glob("*.json*"))):
        files = _parquet_files(path, split, "pr1")
        _check_single_file_split(path, files, split)
        tables = []
        for f in files:
            columns = parquet_columns(f)
            missing = [c for c in _PR1_COLUMNS if c not in columns]
            if missing:
                raise DataError(f"{f}: Perception-R1 parquet lacks column(s) {missing}")
            tables.append(read_parquet(f, [*_PR1_COLUMNS, *(["normalized_solution"] if "normalized_solution" in columns else [])]))
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        image_column = table.column("image").combine_chunks()
        embedded = pa.types.is_struct(image_column.type)
        names = (image_column.field("path") if embedded else image_column).to_pylist()
        has_bytes = image_column.field("bytes").is_valid().to_pylist() if embedded else [False] * len(names)
        rows = table.drop_columns(["image"]).to_pylist()
        records = []
        for i, (row, name, blob) in enumerate(zip(rows, names, has_bytes)):
            row["image"] = name
            if blob:
                row["_arrow_row"] = i
            records.append((f"row {i}", row))
        return (files[0] if len(files) == 1 else path), records, image_column if embedded else None
    file = _pr1_file(path, split)
    return file, load_json_records(file), None


def _read_pr1(
    path: Path, split: str, on_error: str, per: str, solution_frame: str | None
) -> tuple[list[_Object], ErrorPolicy, int, Any]:
    source, records, image_column = _pr1_records(path, split)
    policy = ErrorPolicy(source, on_error)
    objects: list[_Object] = []
    grouped: dict[tuple, _Object] = {}
    for where, record in records:
        try:
            if isinstance(record, RecordError):
                raise record
            record = require_keys(record, ("image", "problem", "solution"))
            image, problem = record["image"], record["problem"]
            arrow_row = record.get("_arrow_row")
            if arrow_row is None:
                image = _file_name(image, "image")
            if not isinstance(problem, str) or not problem.strip():
                raise RecordError(
                    "bad record", f"problem must be a referring expression, got {short_repr(problem)}"
                )
            frame = _pr1_frame(source, where, record, solution_frame)
            bbox = _pr1_box(record["solution"])
            if frame == "qwen2_vl" and (min(bbox) < 0 or max(bbox) > 1000):
                raise RecordError(
                    "bad bbox", f"solution {short_repr(record['solution'])} lies outside Qwen2-VL's 0-1000 frame"
                )
            key = (image if arrow_row is None else arrow_row, tuple(bbox))
            if per == "object" and key in grouped:
                grouped[key].sentences.append(problem.strip())
                continue
            obj = _Object(
                where=where,
                sentences=[problem.strip()],
                bbox=bbox,
                image_candidates=() if arrow_row is not None else (image, os.path.basename(image)),
                arrow_row=arrow_row,
                frame=frame,
                extra={"file_name": image if isinstance(image, str) else None},
            )
            grouped[key] = obj
            objects.append(obj)
        except RECORD_ERRORS as err:
            policy.failed(where, err)
    return objects, policy, len(records), image_column


def _pr1_frame(source: Path, where: str, record: dict[str, Any], solution_frame: str | None) -> str:
    """The frame of a flat record's `solution`: where the record says it (`normalized_solution` beside it
    means `solution` is in pixels), else `solution_frame`; never a guess."""
    if "normalized_solution" in record:
        if solution_frame not in (None, "pixels"):
            raise DataError(
                f"{source}: {where}: has normalized_solution, so its solution is in pixels, but "
                f"solution_frame={solution_frame!r} was passed"
            )
        return "pixels"
    if solution_frame is None:
        raise DataError(
            f"{source}: {where}: the frame of `solution` is not stated (no normalized_solution beside it). "
            "Perception-R1's training set (Kangheng/refcoco_320k) stores it in Qwen2-VL's 0-1000 frame, its "
            "evaluation files in pixels: pass solution_frame='qwen2_vl' or solution_frame='pixels'"
        )
    return solution_frame


# --------------------------------------------------------------------------------------------------
# The builder


@register_builder("grounding")
def build_refcoco(
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
    per: str = "sentence",
    split_by: str | None = None,
    sentence_key: str = "sent",
    solution_frame: str | None = None,
    allow_outside_image_dir: bool = False,
) -> datasets.Dataset:
    """Grounding rows from RefCOCO, RefCOCO+ or RefCOCOg, in any of four layouts (detected from `source`).

    | layout | `source` | boxes | images |
    |---|---|---|---|
    | refer API | folder with `refs(unc\\|umd\\|google).p` + `instances.json` (or the pickle) | COCO xywh | `image_dir` (COCO train2014) |
    | lmms-lab | `lmms-lab/RefCOCO*` parquet file or snapshot folder | xywh | embedded |
    | jxu124 | `jxu124/refcoco*` parquet file or snapshot folder | xyxy | `image_dir` + `image_path` |
    | Perception-R1 | flat JSON (`image`, `problem`, `solution`) or a folder of `*_<split>.json`; `Kangheng/refcoco_320k` parquet | xyxy (pixels or 0–1000, see `solution_frame`) | `image_dir` + `image`, or embedded |

    Splits are named `"train"`, `"val"`, `"testA"`, `"testB"`, `"test"` and matched exactly (not with
    refer.py's substring test); each layout's names are mapped (jxu124's `validation`, and its `test`
    file that holds testA for refcoco/refcoco+). The refs pickle is read with an unpickler that loads
    plain data only. Every layout of the same refs gives the same rows: the prompt is Perception-R1's
    grounding template (Table 8) filled with the sentence, `solution` the `[x1, y1, x2, y2]` pixel box
    (rounded to 1/1000 px, clipped to the image).

    Args:
        source: the file or folder (see the table).
        split (`str`, *optional*): which split; by default the one a Perception-R1 file name says
            (`refcoco_testA.json` → `"testA"`), else `"val"`.
        image_dir: folder the image paths are relative to (refer: the train2014 folder, found by default
            in refer's own layout; jxu124 and Perception-R1: their image root, or the folder holding the
            files themselves). lmms-lab needs none (it may still resolve rows without embedded bytes by
            `file_name`).
        num_samples (`int`, *optional*), seed (`int`): a deterministic random subset of rows.
        on_error (`str`): `"raise"` (`DataError` naming the file and record) or `"skip"` (skip bad
            records, then warn with counts by reason).
        box_format (`str`, *optional*): the model's box format; adds its output-format instruction to the
            prompt and the `box_format` / `input_size` columns.
        min_pixels, max_pixels (`int`, *optional*): with `box_format`, fit each image to the model's
            grid within these limits (lazily, on access) and scale `solution` / `image_size` with it.
        template, system_prompt (`str`, *optional*): override the prompt (`{question}` is the sentence).
        think (`bool`): ask for R1-style `<think>…</think><answer>…</answer>` (`data.prompts.THINK_INSTRUCTION`
            appended to the user text, after the template and the box format's instruction).
        per (`str`): `"sentence"` (one row per referring sentence) or `"object"` (one row per referred
            object, prompted with its first sentence).
        split_by (`str`, *optional*): which refs pickle of the refer layout (`"unc"`, `"umd"`,
            `"google"`); by default the first of unc, umd, google present.
        sentence_key (`str`): `"sent"` (refer's normalised text, default) or `"raw"`.
        solution_frame (`str`, *optional*): Perception-R1 flat files only: the frame `solution` is stored
            in, `"pixels"` or `"qwen2_vl"` (0–1000 of the image, converted to pixels here). Needed only
            where the file does not say it: a record with `normalized_solution` beside `solution` (the
            evaluation files) is in pixels; the training set (`Kangheng/refcoco_320k`) has none and stores
            Qwen2-VL's frame, so it needs `solution_frame="qwen2_vl"`. Without either, `DataError`.
        allow_outside_image_dir (`bool`): accept image paths that leave `image_dir` (`../x.jpg`, absolute
            paths). Off by default: such a path in a data file is a bad record.

    Returns:
        `datasets.Dataset` with `prompt`, `image`, `task` (`"grounding"`), `solution`, `image_size`
        (+ `box_format`, `input_size` with a box format).

    Example:
    ```python
    >>> import json, pickle, tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (64, 48)).save(root / "COCO_train2014_000000000001.jpg")
    >>> _ = (root / "instances.json").write_text(json.dumps({
    ...     "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64, "height": 48}],
    ...     "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [4, 6, 20, 10]}]}))
    >>> _ = (root / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 0, "ann_id": 7, "image_id": 1,
    ...     "split": "val", "sentences": [{"sent": "left man", "raw": "Left man"}]}], protocol=2))
    >>> row = build_refcoco(root, split="val", image_dir=root)[0]
    >>> row["prompt"][0]["content"][1]["text"], row["solution"], row["image_size"]
    ('Output the bounding box of the left man in the image.', [4.0, 6.0, 24.0, 16.0], [64, 48])

    ```
    """
    path = Path(source)
    split = _canonical_split(default_split(path) if split is None else split)
    if per not in ("sentence", "object"):
        raise ValueError(f"per must be 'sentence' or 'object', got {per!r}")
    if sentence_key not in ("sent", "raw"):
        raise ValueError(f"sentence_key must be 'sent' or 'raw', got {sentence_key!r}")
    check_box_format_options(box_format, min_pixels, max_pixels)
    if solution_frame is not None and solution_frame not in SOLUTION_FRAMES:
        raise ValueError(f"solution_frame must be one of {SOLUTION_FRAMES}, got {solution_frame!r}")
    layout = detect_refcoco_layout(path)
    if layout != "pr1" and solution_frame not in (None, "pixels"):
        raise ValueError(f"the {layout} layout stores pixel boxes; solution_frame applies to Perception-R1 files")
    image_column = None
    if layout == "refer":
        refs_file = _pick_refs_file(path, split_by)
        if image_dir is None:
            image_dir = _refer_image_dir(refs_file)
        objects, policy, total = _read_refer(refs_file, split, sentence_key, on_error)
    elif layout == "lmms-lab":
        objects, policy, total, image_column = _read_lmms(path, split, on_error)
    elif layout == "jxu124":
        objects, policy, total = _read_jxu(path, split, on_error, sentence_key)
    else:
        objects, policy, total, image_column = _read_pr1(path, split, on_error, per, solution_frame)
    if layout == "jxu124" or (layout == "pr1" and image_column is None):
        if image_dir is None:
            raise ValueError(f"the {layout} layout stores image paths: pass image_dir=")
    folder = ImageFolder(image_dir, allow_outside=allow_outside_image_dir)

    def resolve(obj: _Object) -> None:
        if obj.resolved:
            return
        if obj.arrow_row is not None:
            blob = image_column.field("bytes")[obj.arrow_row].as_py()
            size = read_image_size(blob)
        else:
            found = folder.find(*obj.image_candidates)
            if found is None:
                looked = (
                    ", ".join(str(Path(folder.root or "") / c) for c in obj.image_candidates) or "(no path)"
                )
                raise RecordError("missing image", f"image not found (looked for {looked})")
            obj.image_path = found
            size = read_image_size(found) if obj.image_size is None else obj.image_size
        obj.image_size = list(size)
        check_image_size(obj.image_size, box_format, min_pixels, max_pixels)
        w, h = obj.image_size
        if obj.frame == "qwen2_vl":
            obj.bbox = scale_solution("grounding", obj.bbox, w / 1000, h / 1000)
            obj.frame = "pixels"
        x1, y1, x2, y2 = obj.bbox
        clipped = round_box([min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)])
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            hint = ""
            if layout == "pr1" and solution_frame == "pixels" and max(obj.bbox) <= 1000:
                hint = " (a box in Qwen2-VL's 0-1000 frame? then pass solution_frame='qwen2_vl')"
            raise RecordError("bad bbox", f"box {obj.bbox} lies outside the {w}x{h} image{hint}")
        obj.bbox = clipped
        obj.resolved = True

    rows: list[tuple[int, str]] = []
    for k, obj in enumerate(objects):
        sentences = obj.sentences if per == "sentence" else obj.sentences[:1]
        rows.extend((k, s) for s in sentences)

    def accept(i: int) -> bool:
        k = rows[i][0]
        obj = objects[k]
        if policy.is_failed(k):
            return False
        try:
            resolve(obj)
            return True
        except RECORD_ERRORS as err:
            policy.failed(obj.where, err, key=k)
            return False

    chosen = select_rows(len(rows), accept, num_samples, seed)
    policy.finish(total)

    prompt = PromptCache("grounding", box_format, template, system_prompt, think=think)
    picked = [objects[rows[i][0]] for i in chosen]
    if image_column is not None:
        image = _embedded_images(image_column, picked)
    else:
        image = image_struct([obj.image_path for obj in picked])
    return contract_dataset(
        "grounding",
        [prompt(question=rows[i][1]) for i in chosen],
        image,
        [list(obj.bbox) for obj in picked],
        [list(obj.image_size) for obj in picked],
        box_format,
        min_pixels,
        max_pixels,
    )


def _embedded_images(image_column: Any, picked: Sequence[_Object]) -> Any:
    """Image column of lmms-lab rows: the embedded bytes (taken, not copied through Python), or the file
    found in `image_dir` for rows without bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = [obj.arrow_row if obj.arrow_row is not None else 0 for obj in picked]
    blobs = image_column.field("bytes").take(pa.array(rows, pa.int64()))
    has_bytes = pa.array([obj.arrow_row is not None for obj in picked], pa.bool_())
    blobs = pc.if_else(has_bytes, blobs, pa.nulls(len(picked), pa.binary()))
    paths = [obj.extra.get("file_name") if obj.arrow_row is not None else obj.image_path for obj in picked]
    return pa.StructArray.from_arrays([blobs, pa.array(paths, pa.string())], names=["bytes", "path"])
