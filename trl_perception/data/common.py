"""Machinery the dataset builders share: the error policy, deterministic sampling, safe readers for
JSON/JSONL/parquet/pickle sources, image lookup, the row features, and the resize-to-grid step."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..frames import BOX_FORMATS, TASKS, fit_to_grid, grid_size, pixel_limits
from .prompts import build_prompt

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pyarrow as pa

__all__ = [
    "DataError",
    "build_from_source",
    "DataWarning",
    "ErrorPolicy",
    "GridImageTransform",
    "ImageFolder",
    "RecordError",
    "fit_dataset_to_grid",
    "iter_jsonl",
    "load_json",
    "load_pickle",
    "read_image_size",
    "read_parquet",
    "row_features",
    "rows_to_dataset",
    "sample_indices",
    "scale_solution",
    "select_rows",
]

logger = logging.getLogger("trl_perception.data")

ON_ERROR = ("raise", "skip")


# --------------------------------------------------------------------------------------------------
# Errors


class DataError(ValueError):
    """Bad input data: the message names the file, the record and what was expected."""


class DataWarning(UserWarning):
    """Records were skipped (`on_error="skip"`); the message counts them by reason."""


class RecordError(Exception):
    """One bad record, raised inside a builder and handed to `ErrorPolicy.failed`.

    `reason` is the short category the skip summary counts (`"missing image"`, `"bad bbox"`, …);
    `detail` says what was found and what was expected.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ErrorPolicy:
    """What a builder does with a bad record: raise a `DataError`, or skip it and count it.

    Skipped records are counted by reason; `finish` reports them once, as a `DataWarning` and a log line
    (`"skipped 3 of 120 records from <file>: 2 missing image, 1 bad bbox"`). Nothing is dropped silently.

    Args:
        source (`str | Path`): the file the records come from, named in every message.
        on_error (`str`): `"raise"` (default) or `"skip"`.

    Example:
    ```python
    >>> policy = ErrorPolicy("refs.json", on_error="skip")
    >>> policy.failed("record 3", RecordError("bad bbox", "bbox [1, 2, -3, 4] has a negative width"))
    >>> policy.skipped
    1
    >>> policy.summary(total=10)
    'skipped 1 of 10 records from refs.json: 1 bad bbox'
    >>> ErrorPolicy("refs.json").failed("record 3", RecordError("bad bbox", "negative width"))
    Traceback (most recent call last):
    ...
    trl_perception.data.common.DataError: refs.json: record 3: negative width

    ```
    """

    def __init__(self, source: str | os.PathLike, on_error: str = "raise"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.source = str(source)
        self.on_error = on_error
        self.reasons: Counter[str] = Counter()
        self._failed_keys: set[Any] = set()
        self.first_failure: str | None = None

    @property
    def skipped(self) -> int:
        """Number of records skipped so far."""
        return sum(self.reasons.values())

    def failed(self, where: str, error: RecordError, key: Any = None) -> None:
        """Handle the bad record `where` (e.g. `"record 17 (ref_id 42)"`): raise or count it.

        `key` identifies the source record when several rows come from it, so it is counted once.
        """
        message = f"{self.source}: {where}: {error.detail}"
        if self.on_error == "raise":
            raise DataError(message) from None
        key = where if key is None else key
        if key in self._failed_keys:
            return
        self._failed_keys.add(key)
        self.reasons[error.reason] += 1
        if self.first_failure is None:
            self.first_failure = message
        logger.debug("skipped %s", message)

    def is_failed(self, key: Any) -> bool:
        """Whether the record `key` was already skipped."""
        return key in self._failed_keys

    def summary(self, total: int) -> str:
        """`"skipped k of n records from <file>: …"` by reason, most frequent first."""
        parts = ", ".join(
            f"{n} {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        return f"skipped {self.skipped} of {total} records from {self.source}: {parts}"

    def finish(self, total: int) -> None:
        """Report the skipped records once (a `DataWarning` and a log line); nothing when none was skipped."""
        if not self.skipped:
            return
        message = self.summary(total)
        logger.warning("%s (first: %s)", message, self.first_failure)
        warnings.warn(message, DataWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# Sampling


def sample_indices(n: int, num_samples: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of a deterministic random subset of `range(n)`, in increasing order.

    `num_samples=None` (or at least `n`) keeps everything; the same `seed` always gives the same subset.

    Example:
    ```python
    >>> sample_indices(5).tolist()
    [0, 1, 2, 3, 4]
    >>> sample_indices(10, 3, seed=0).tolist() == sample_indices(10, 3, seed=0).tolist()
    True
    >>> len(sample_indices(10, 3, seed=1))
    3

    ```
    """
    if num_samples is None or num_samples >= n:
        return np.arange(n)
    if num_samples < 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:num_samples])


def select_rows(
    n: int, accept: Callable[[int], bool], num_samples: int | None = None, seed: int = 0
) -> list[int]:
    """Pick rows `i` of `range(n)` for which `accept(i)` is true: all of them, or `num_samples` drawn in a
    seeded random order (rejected rows are replaced by the next ones in that order). Sorted result.

    Expensive checks (image files) thus run only on the rows examined, not on the whole source.

    Example:
    ```python
    >>> select_rows(6, lambda i: i != 2)
    [0, 1, 3, 4, 5]
    >>> len(select_rows(100, lambda i: i % 2 == 0, num_samples=10, seed=0))
    10

    ```
    """
    if num_samples is not None and num_samples < 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if num_samples is None or num_samples >= n:
        return [i for i in range(n) if accept(i)]
    chosen: list[int] = []
    for i in np.random.default_rng(seed).permutation(n).tolist():
        if len(chosen) >= num_samples:
            break
        if accept(i):
            chosen.append(i)
    return sorted(chosen)


# --------------------------------------------------------------------------------------------------
# Source readers: every failure becomes a DataError naming the file


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def load_json(path: str | os.PathLike) -> Any:
    """Read a whole JSON file; a truncated or malformed file raises `DataError` naming it.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> _ = p.write_text('[{"image": "a.jpg"')
    >>> load_json(p)
    Traceback (most recent call last):
    ...
    trl_perception.data.common.DataError: ...a.json: not valid JSON (truncated file?): Expecting ',' delimiter: line 1 column 19 (char 18)

    ```
    """
    path = _require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"{path}: not valid JSON (truncated file?): {err}") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, value)` for each non-blank line of a JSON-lines file; a malformed line
    yields a `RecordError` as its value (for the caller's error policy) instead of stopping the read.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n\\n{"a": \\n')
    >>> [(n, v if isinstance(v, dict) else v.reason) for n, v in iter_jsonl(p)]
    [(1, {'a': 1}), (3, 'bad json')]

    ```
    """
    path = _require_file(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as err:
                yield number, RecordError("bad json", f"not valid JSON: {err}")


def load_json_records(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """`(where, value)` pairs from a JSON list file or a JSON-lines file (chosen by the first character);
    a malformed line of a JSON-lines file comes back as a `RecordError` value.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> _ = p.write_text('[{"a": 1}, 2]')
    >>> load_json_records(p)
    [('record 0', {'a': 1}), ('record 1', 2)]

    ```
    """
    path = _require_file(path)
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"["):
        data = load_json(path)
        if not isinstance(data, list):  # pragma: no cover - '[' always decodes to a list
            raise DataError(f"{path}: expected a JSON list of records")
        return [(f"record {i}", value) for i, value in enumerate(data)]
    return [(f"line {n}", value) for n, value in iter_jsonl(path)]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global at all: only pickle's built-in containers and scalars load."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only plain data is allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids: only plain data is allowed")


_PLAIN_TYPES = (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, bool, type(None))


def _check_plain(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if not isinstance(item, _PLAIN_TYPES):
            raise pickle.UnpicklingError(f"unexpected {type(item).__name__} in a data pickle")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)


def load_pickle(source: str | os.PathLike | bytes) -> Any:
    """Load a data pickle (such as refer's `refs(unc).p`) without executing anything.

    The unpickler resolves no class or function, so only dicts, lists, tuples, sets, strings, bytes and
    numbers can come out of it; Python-2 pickles with non-ASCII byte strings are retried as latin-1.
    Anything else (code, a truncated file, random bytes) raises `DataError`.

    Example:
    ```python
    >>> import pickle
    >>> load_pickle(pickle.dumps([{"ref_id": 1, "sentences": [{"sent": "left dog"}]}], protocol=2))
    [{'ref_id': 1, 'sentences': [{'sent': 'left dog'}]}]
    >>> load_pickle(pickle.dumps(print))
    Traceback (most recent call last):
    ...
    trl_perception.data.common.DataError: <bytes>: not a plain-data pickle: refusing to load global builtins.print: only plain data is allowed

    ```
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "<bytes>"
    else:
        path = _require_file(source)
        data, name = path.read_bytes(), str(path)
    last: BaseException | None = None
    for encoding in ("ASCII", "latin1"):
        try:
            value = _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
            _check_plain(value)
            return value
        except UnicodeDecodeError as err:
            last = err
            continue
        except (MemoryError, RecursionError) as err:
            raise DataError(f"{name}: not a plain-data pickle: {type(err).__name__}") from None
        except Exception as err:  # the unpickler raises many types on garbage: all of them are bad data
            raise DataError(f"{name}: not a plain-data pickle: {err}") from None
    raise DataError(f"{name}: not a plain-data pickle: {last}")


def read_parquet(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a parquet file with pyarrow; a truncated or non-parquet file raises `DataError`.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.parquet"
    >>> _ = p.write_bytes(b"PAR1 not really")
    >>> read_parquet(p)
    Traceback (most recent call last):
    ...
    trl_perception.data.common.DataError: ...x.parquet: not a readable parquet file (truncated?): ...

    ```
    """
    import pyarrow.parquet as pq

    path = _require_file(path)
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for broken files
        raise DataError(f"{path}: not a readable parquet file (truncated?): {err}") from None


def parquet_columns(path: str | os.PathLike) -> list[str]:
    """Column names of a parquet file (reads the footer only).

    Example:
    ```python
    >>> import tempfile, pathlib, pyarrow as pa, pyarrow.parquet as pq
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.parquet"
    >>> pq.write_table(pa.table({"image_url": ["u"], "count": [3]}), p)
    >>> parquet_columns(p)
    ['image_url', 'count']

    ```
    """
    import pyarrow.parquet as pq

    path = _require_file(path)
    try:
        return list(pq.read_schema(path).names)
    except Exception as err:
        raise DataError(f"{path}: not a readable parquet file (truncated?): {err}") from None


# --------------------------------------------------------------------------------------------------
# Images


def read_image_size(source: str | os.PathLike | bytes) -> tuple[int, int]:
    """`(width, height)` of an image file or encoded bytes, read from the header (no pixel decode).

    The EXIF orientation is honoured the way `datasets.Image` decodes: a rotated photo reports its
    displayed size. An unreadable image raises `RecordError("unreadable image", ...)`.

    Example:
    ```python
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (64, 48)).save(buf, "PNG")
    >>> read_image_size(buf.getvalue())
    (64, 48)

    ```
    """
    from PIL import Image, UnidentifiedImageError

    try:
        fp: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        with Image.open(fp) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(0x0112)
            except Exception:  # a broken EXIF block does not stop datasets from decoding the image
                orientation = None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        what = "image bytes" if isinstance(source, (bytes, bytearray)) else f"image {source}"
        raise RecordError("unreadable image", f"{what} cannot be read: {err}") from None
    if orientation in (5, 6, 7, 8):  # transposed by datasets' exif_transpose
        width, height = height, width
    return int(width), int(height)


class ImageFolder:
    """Finds image files under a folder; lists each directory once, so existence checks are cheap.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); _ = (root / "a.jpg").write_bytes(b"")
    >>> folder = ImageFolder(root)
    >>> folder.find("missing.jpg", "a.jpg") == str(root / "a.jpg")
    True
    >>> folder.find("b.jpg") is None
    True

    ```
    """

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root).resolve() if root is not None else None
        self._listings: dict[Path, set[str] | None] = {}

    def _names(self, directory: Path) -> set[str] | None:
        if directory not in self._listings:
            try:
                self._listings[directory] = set(os.listdir(directory))
            except OSError:
                self._listings[directory] = None
        return self._listings[directory]

    def find(self, *candidates: str | os.PathLike | None) -> str | None:
        """Absolute path of the first candidate (relative to the root, or absolute) that exists."""
        for candidate in candidates:
            if candidate is None or str(candidate) == "":
                continue
            candidate = Path(candidate)
            if not candidate.is_absolute():
                if self.root is None:
                    continue
                candidate = self.root / candidate
            names = self._names(candidate.parent)
            if names is not None and candidate.name in names:
                return str(candidate)
        return None


def image_struct(paths: Sequence[str | None], blobs: Sequence[bytes | None] | None = None) -> pa.Array:
    """Arrow storage of a `datasets.Image` column: paths (decoded lazily) and/or embedded bytes.

    Example:
    ```python
    >>> image_struct(["/data/a.jpg"]).to_pylist()
    [{'bytes': None, 'path': '/data/a.jpg'}]

    ```
    """
    import pyarrow as pa

    if blobs is None:
        blobs = pa.nulls(len(paths), pa.binary())
    return pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
    )


# --------------------------------------------------------------------------------------------------
# Row features and dataset assembly


def prompt_feature() -> Any:
    """The `datasets` feature of a conversational prompt column.

    Example:
    ```python
    >>> list(prompt_feature().feature)
    ['role', 'content']

    ```
    """
    from datasets import List, Value

    return List(
        {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
    )


def solution_feature(task: str) -> Any:
    """The `datasets` feature of `solution` for one task (see the row contract).

    Example:
    ```python
    >>> solution_feature("ocr"), solution_feature("grounding")
    (Value('string'), List(Value('float64')))

    ```
    """
    from datasets import List, Value

    if task == "grounding":
        return List(Value("float64"))
    if task == "counting":
        return {"count": Value("int64"), "points": List(List(Value("float64")))}
    if task == "ocr":
        return Value("string")
    if task == "detection":
        return List({"bbox_2d": List(Value("float64")), "label": Value("string")})
    if task == "jigsaw":
        return Value("string")  # JSON: {"question", "grid", "answer", "think"[, "options"]}
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def row_features(task: str | None, family: bool = False) -> datasets.Features:
    """Features of a builder's rows: `prompt`, `image`, `task`, `solution`, `image_size`, and with
    `family=True` also `box_format` and `input_size`. `task=None` stores `solution` as JSON strings
    (mixed-task datasets).

    Example:
    ```python
    >>> list(row_features("detection", family=True))
    ['prompt', 'image', 'task', 'solution', 'image_size', 'box_format', 'input_size']
    >>> row_features(None)["solution"]
    Value('string')

    ```
    """
    from datasets import Features, Image, List, Value

    features = {
        "prompt": prompt_feature(),
        "image": Image(),
        "task": Value("string"),
        "solution": solution_feature(task) if task is not None else Value("string"),
        "image_size": List(Value("int64")),
    }
    if family:
        features["box_format"] = Value("string")
        features["input_size"] = List(Value("int64"))
    return Features(features)


def _to_arrow(values: Any, feature: Any) -> pa.Array:
    import pyarrow as pa
    from datasets import Image

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(feature, Image):
        encoded = [
            None
            if v is None
            else v
            if isinstance(v, dict) and set(v) <= {"bytes", "path"}
            else feature.encode_example(v)
            for v in values
        ]
        return image_struct([e and e.get("path") for e in encoded], [e and e.get("bytes") for e in encoded])
    return pa.array(values, type=_arrow_type(feature))


def _arrow_type(feature: Any) -> pa.DataType:
    from datasets import Features

    return Features({"x": feature}).arrow_schema.field("x").type


def rows_to_dataset(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], features: datasets.Features | None = None
) -> datasets.Dataset:
    """Assemble builder rows into a `datasets.Dataset` with the row-contract features.

    `rows` is a list of row dicts or a dict of columns (lists or pyarrow arrays). Without `features`,
    the contract columns get their standard features (`solution` by the rows' task; JSON strings when
    tasks are mixed) and other columns are inferred. Images may be paths, bytes, PIL images or
    `{"bytes", "path"}` dicts; paths stay paths (decoded lazily on access).

    Example:
    ```python
    >>> ds = rows_to_dataset([{"prompt": build_prompt("ocr"), "image": "page.png", "task": "ocr",
    ...                        "solution": "Hello", "image_size": [640, 480]}])
    >>> ds.features["solution"], ds.features["image"].decode
    (Value('string'), True)
    >>> ds.select_columns(["solution", "image_size"])[0]
    {'solution': 'Hello', 'image_size': [640, 480]}

    ```
    """
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, Features, Value

    if isinstance(rows, Mapping):
        columns = dict(rows)
    else:
        names: list[str] = []
        for row in rows:
            names.extend(k for k in row if k not in names)
        columns = {name: [row.get(name) for row in rows] for name in names}
    if features is None:
        tasks = (
            set(columns["task"])
            if "task" in columns and not isinstance(columns["task"], (pa.Array, pa.ChunkedArray))
            else set()
        )
        single = next(iter(tasks)) if len(tasks) == 1 and next(iter(tasks)) in TASKS else None
        standard = row_features(single, family=True)
        if single is None and "solution" in columns:
            columns["solution"] = [
                v if isinstance(v, str) or v is None else json.dumps(v) for v in columns["solution"]
            ]
        inferred: dict[str, Any] = {}
        for name, values in columns.items():
            if name in standard:
                inferred[name] = standard[name]
            else:
                array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
                inferred[name] = Features.from_arrow_schema(pa.schema([pa.field(name, array.type)]))[name]
                columns[name] = array
        if single is None and "solution" in columns:
            inferred["solution"] = Value("string")
        features = Features(inferred)
    arrays = [_to_arrow(columns[name], features[name]) for name in features]
    table = pa.Table.from_arrays(arrays, names=list(features)).cast(features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features))


class PromptCache:
    """Builds each distinct prompt once (detection prompts repeat on every row).

    Example:
    ```python
    >>> prompts = PromptCache("counting", None, None, None)
    >>> prompts(label="cats") is prompts(label="cats")
    True

    ```
    """

    def __init__(self, task: str, box_format: str | None, template: str | None, system_prompt: str | None):
        self.task, self.box_format, self.template, self.system_prompt = (
            task,
            box_format,
            template,
            system_prompt,
        )
        self._cache: dict[tuple, list[dict[str, Any]]] = {}

    def __call__(self, **fields: Any) -> list[dict[str, Any]]:
        key = tuple(sorted(fields.items()))
        if key not in self._cache:
            self._cache[key] = build_prompt(
                self.task,
                box_format=self.box_format,
                template=self.template,
                system_prompt=self.system_prompt,
                **fields,
            )
        return self._cache[key]


# --------------------------------------------------------------------------------------------------
# Resizing to the processor's grid


def check_image_size(
    image_size: Sequence[int],
    family: str | None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> None:
    """Raise `RecordError("bad image size")` for an image the family's processor refuses (an aspect
    ratio of 200 or more); nothing without a family.

    Example:
    ```python
    >>> check_image_size((640, 480), "qwen2_vl")
    >>> check_image_size((4000, 10), "qwen2_vl")
    Traceback (most recent call last):
    ...
    trl_perception.data.common.RecordError: image of size [4000, 10] cannot be fed to qwen2_vl: absolute aspect ratio must be smaller than 200, got 400.0

    ```
    """
    if family is None:
        return
    try:
        grid_size(image_size, family, min_pixels, max_pixels)
    except ValueError as err:
        raise RecordError(
            "bad image size", f"image of size {list(image_size)} cannot be fed to {family}: {err}"
        ) from None


def _scale_xy(values: Any, sx: float, sy: float, what: str) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) % 2:
        raise ValueError(f"{what} must be a list of x, y coordinates, got {values!r}")
    return [float(v) * (sx if i % 2 == 0 else sy) for i, v in enumerate(values)]


def scale_solution(task: str, solution: Any, sx: float, sy: float) -> Any:
    """Scale a ground truth by `sx` horizontally and `sy` vertically (x at even, y at odd positions).

    Grounding boxes, counting points and detection `bbox_2d` / `point_2d` are scaled; counts and OCR
    text are returned unchanged. JSON-string solutions (mixed-task datasets) come back as JSON strings.

    Example:
    ```python
    >>> scale_solution("grounding", [10, 20, 30, 40], 2.0, 0.5)
    [20.0, 10.0, 60.0, 20.0]
    >>> scale_solution("counting", {"count": 1, "points": [[4, 4]]}, 0.5, 0.5)
    {'count': 1, 'points': [[2.0, 2.0]]}
    >>> scale_solution("detection", '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]', 2, 2)
    '[{"bbox_2d": [0.0, 0.0, 20.0, 20.0], "label": "cat"}]'
    >>> scale_solution("ocr", "text", 2, 2)
    'text'

    ```
    """
    if solution is None or task == "ocr":
        return solution
    if isinstance(solution, str):
        return json.dumps(scale_solution(task, json.loads(solution), sx, sy), ensure_ascii=False)
    if task == "grounding":
        return _scale_xy(solution, sx, sy, "a grounding box")
    if task == "counting":
        if isinstance(solution, Mapping):
            out = dict(solution)
            if out.get("points") is not None:
                out["points"] = [_scale_xy(p, sx, sy, "a point") for p in out["points"]]
            return out
        return solution
    if task == "detection":
        scaled = []
        for obj in solution:
            obj = dict(obj)
            for key in ("bbox_2d", "point_2d"):
                if obj.get(key) is not None:
                    obj[key] = _scale_xy(obj[key], sx, sy, key)
            scaled.append(obj)
        return scaled
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


class GridImageTransform:
    """`Dataset.with_transform` function that resizes the `image` column to the family's grid on access.

    Only images are touched; the ground truth was scaled when the dataset was built. Picklable, so it
    survives `shuffle`/`select`, multiprocessing and the trainer. Note that with any transform set,
    `dataset["solution"]` iterates whole rows (decoding images, as `datasets` does for every custom
    format); read metadata with `dataset.select_columns(["solution"])["solution"]` instead.

    Example:
    ```python
    >>> from PIL import Image
    >>> transform = GridImageTransform("qwen2_5_vl", max_pixels=100_000)
    >>> transform({"image": [Image.new("RGB", (640, 480))]})["image"][0].size
    (364, 252)

    ```
    """

    def __init__(self, family: str, min_pixels: int | None = None, max_pixels: int | None = None):
        self.family, self.min_pixels, self.max_pixels = family, min_pixels, max_pixels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "image" in batch:
            batch["image"] = [
                None if image is None else fit_to_grid(image, self.family, self.min_pixels, self.max_pixels)
                for image in batch["image"]
            ]
        return batch

    def __repr__(self) -> str:
        return (
            f"GridImageTransform({self.family!r}, min_pixels={self.min_pixels}, max_pixels={self.max_pixels})"
        )


def check_family_options(box_format: str | None, min_pixels: int | None, max_pixels: int | None) -> bool:
    """Validate builder options; True when images are to be resized to the family's grid.

    Example:
    ```python
    >>> check_family_options("qwen2_vl", None, None), check_family_options("qwen2_vl", None, 200_000)
    (False, True)
    >>> check_family_options(None, None, 200_000)
    Traceback (most recent call last):
    ...
    ValueError: min_pixels/max_pixels resize images to a model family's grid: pass box_format= too

    ```
    """
    if box_format is not None and box_format not in BOX_FORMATS:
        raise ValueError(f"unknown box_format {box_format!r}; expected one of {BOX_FORMATS}")
    resize = min_pixels is not None or max_pixels is not None
    if resize and box_format is None:
        raise ValueError("min_pixels/max_pixels resize images to a model family's grid: pass box_format= too")
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if box_format is not None:
        pixel_limits(box_format, min_pixels, max_pixels)
    return resize


def family_columns(
    task: str,
    solutions: list[Any],
    image_sizes: list[list[int]],
    box_format: str | None,
    min_pixels: int | None,
    max_pixels: int | None,
) -> tuple[list[Any], list[list[int]], dict[str, list]]:
    """Apply the family options to built columns: with pixel limits, scale each solution and image size
    to the grid size; with a family, add `box_format` and `input_size`. Returns
    `(solutions, image_sizes, extra_columns)`.

    Example:
    ```python
    >>> family_columns("grounding", [[64.0, 48.0, 320.0, 240.0]], [[640, 480]], "qwen2_5_vl", None, None)
    ([[64.0, 48.0, 320.0, 240.0]], [[640, 480]], {'box_format': ['qwen2_5_vl'], 'input_size': [[644, 476]]})
    >>> family_columns("grounding", [[64.0, 48.0, 320.0, 240.0]], [[640, 480]], "qwen2_vl", None, 200_000)[:2]
    ([[50.4, 36.4, 252.0, 182.0]], [[504, 364]])

    ```
    """
    if box_format is None:
        return solutions, image_sizes, {}
    resize = min_pixels is not None or max_pixels is not None
    input_sizes = [list(grid_size(size, box_format, min_pixels, max_pixels)) for size in image_sizes]
    if resize:
        solutions = [
            scale_solution(task, sol, new[0] / size[0], new[1] / size[1])
            for sol, size, new in zip(solutions, image_sizes, input_sizes)
        ]
        image_sizes = [list(s) for s in input_sizes]
    extra = {"box_format": [box_format] * len(solutions), "input_size": input_sizes}
    return solutions, image_sizes, extra


def finalize(
    dataset: datasets.Dataset, box_format: str | None, min_pixels: int | None, max_pixels: int | None
) -> datasets.Dataset:
    """Attach the lazy resize transform when the builder was asked to fit images to a family's grid.

    Example:
    ```python
    >>> ds = rows_to_dataset({"task": ["ocr"]})
    >>> finalize(ds, "qwen2_vl", None, None).format["type"], finalize(ds, "qwen2_vl", None, 10**6).format["type"]
    (None, 'custom')

    ```
    """
    if box_format is not None and (min_pixels is not None or max_pixels is not None):
        return dataset.with_transform(GridImageTransform(box_format, min_pixels, max_pixels))
    return dataset


def contract_dataset(
    task: str,
    prompts: list[Any],
    image: Any,
    solutions: list[Any],
    image_sizes: list[list[int]],
    box_format: str | None,
    min_pixels: int | None,
    max_pixels: int | None,
) -> datasets.Dataset:
    """A builder's last step: the row-contract dataset of one task from its picked rows, with the family
    options applied (`family_columns`), the contract features, and the lazy resize transform (`finalize`).

    Example:
    ```python
    >>> prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR this image."}]}]
    >>> images = image_struct(["page.png"])  # decoded lazily, on access
    >>> ds = contract_dataset("ocr", [prompt], images, ["hi"], [[640, 480]], "qwen2_vl", None, None)
    >>> ds.column_names
    ['prompt', 'image', 'task', 'solution', 'image_size', 'box_format', 'input_size']
    >>> list(ds["task"]), list(ds["solution"]), list(ds["image_size"]), list(ds["input_size"])
    (['ocr'], ['hi'], [[640, 480]], [[644, 476]])

    ```
    """
    solutions, image_sizes, extra = family_columns(
        task, solutions, image_sizes, box_format, min_pixels, max_pixels
    )
    columns = {
        "prompt": prompts,
        "image": image,
        "task": [task] * len(prompts),
        "solution": solutions,
        "image_size": image_sizes,
        **extra,
    }
    dataset = rows_to_dataset(columns, row_features(task, family=box_format is not None))
    return finalize(dataset, box_format, min_pixels, max_pixels)


def fit_dataset_to_grid(
    dataset: datasets.Dataset, family: str, min_pixels: int | None = None, max_pixels: int | None = None
) -> datasets.Dataset:
    """Fit any row-contract dataset to `family`'s grid: scale `solution` and `image_size` to the grid
    size, set `box_format` / `input_size`, and resize images lazily on access (`GridImageTransform`).

    The same step the builders apply with `max_pixels`/`min_pixels`; no image is decoded here. Applying it
    twice with the same limits changes nothing more.

    Example:
    ```python
    >>> from PIL import Image
    >>> ds = rows_to_dataset([{"prompt": build_prompt("grounding", question="cat"), "image": Image.new("RGB", (640, 480)),
    ...                        "task": "grounding", "solution": [64.0, 48.0, 320.0, 240.0], "image_size": [640, 480]}])
    >>> row = fit_dataset_to_grid(ds, "qwen2_vl", max_pixels=200_000)[0]
    >>> row["image"].size, row["image_size"], row["input_size"], [round(v, 1) for v in row["solution"]]
    ((504, 364), [504, 364], [504, 364], [50.4, 36.4, 252.0, 182.0])

    ```
    """
    from datasets import List, Value

    check_family_options(family, min_pixels, max_pixels)
    fields = dataset.features
    missing = [c for c in ("task", "solution", "image_size") if c not in fields]
    if missing:
        raise ValueError(f"fit_dataset_to_grid needs the row-contract columns; missing {missing}")
    base = dataset.with_format(None)
    columns = base.select_columns(["task", "solution", "image_size"])[:]
    sizes, solutions = [], []
    for task, sol, size in zip(columns["task"], columns["solution"], columns["image_size"]):
        new = list(grid_size(size, family, min_pixels, max_pixels))
        solutions.append(scale_solution(task, sol, new[0] / size[0], new[1] / size[1]))
        sizes.append(new)
    replaced = [c for c in ("solution", "image_size", "box_format", "input_size") if c in fields]
    out = base.remove_columns(replaced)
    out = out.add_column("solution", solutions, feature=fields["solution"])
    out = out.add_column("image_size", sizes, feature=List(Value("int64")))
    out = out.add_column("box_format", [family] * len(sizes), feature=Value("string"))
    out = out.add_column("input_size", sizes, feature=List(Value("int64")))
    return out.with_transform(GridImageTransform(family, min_pixels, max_pixels))


# --------------------------------------------------------------------------------------------------
# Small validated accessors used by the builders


def finite_numbers(value: Any, count: int, what: str) -> list[float]:
    """`count` finite numbers from a list/tuple, else `RecordError("bad bbox"/…)` naming `what`.

    Example:
    ```python
    >>> finite_numbers([1, 2.5], 2, "point")
    [1.0, 2.5]
    >>> finite_numbers([1, None], 2, "point")
    Traceback (most recent call last):
    ...
    trl_perception.data.common.RecordError: point must be a list of 2 finite numbers, got [1, None]

    ```
    """
    reason = "bad bbox" if "box" in what else "bad record"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise RecordError(reason, f"{what} must be a list of {count} numbers, got {_short(value)}")
    out = []
    for v in value:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not math.isfinite(v)
        ):
            raise RecordError(reason, f"{what} must be a list of {count} finite numbers, got {_short(value)}")
        out.append(float(v))
    return out


def xywh_to_xyxy(bbox: Any, what: str = "bbox") -> list[float]:
    """A COCO `[x, y, w, h]` as `[x1, y1, x2, y2]`; a non-positive width/height is a `bad bbox`.

    Example:
    ```python
    >>> xywh_to_xyxy([265.35, 143.46, 116.49, 309.57])
    [265.35, 143.46, 381.84, 453.03]
    >>> xywh_to_xyxy([1, 2, -3, 4]).reason
    Traceback (most recent call last):
    ...
    trl_perception.data.common.RecordError: bbox [x, y, w, h] = [1, 2, -3, 4] has a non-positive width or height

    ```
    """
    x, y, w, h = finite_numbers(bbox, 4, what)
    box = round_box([x, y, x + w, y + h])
    if w <= 0 or h <= 0 or box[2] <= box[0] or box[3] <= box[1]:  # also sub-1/1000-pixel boxes
        raise RecordError(
            "bad bbox", f"{what} [x, y, w, h] = {_short(bbox)} has a non-positive width or height"
        )
    return box


def check_xyxy(bbox: Any, what: str = "bbox") -> list[float]:
    """A validated `[x1, y1, x2, y2]` with `x1 < x2` and `y1 < y2`.

    Example:
    ```python
    >>> check_xyxy([265.35, 143.46, 381.84, 453.03])
    [265.35, 143.46, 381.84, 453.03]

    ```
    """
    box = round_box(finite_numbers(bbox, 4, what))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise RecordError(
            "bad bbox", f"{what} [x1, y1, x2, y2] = {_short(bbox)} has a non-positive width or height"
        )
    return box


def round_box(box: Iterable[float]) -> list[float]:
    """Round coordinates to 1/1000 pixel, so that the same box read as xywh or xyxy, float32 or
    float64, compares equal across sources.

    Example:
    ```python
    >>> round_box([10.25 + 20.33, 0.1 + 0.2, -0.0, 1e-9])
    [30.58, 0.3, 0.0, 0.0]

    ```
    """
    return [round(float(v), 3) + 0.0 for v in box]


def positive_size(width: Any, height: Any, what: str = "image size") -> list[int]:
    """`[width, height]` as positive integers, else `RecordError("bad record")`.

    Example:
    ```python
    >>> positive_size(640, 480.0)
    [640, 480]

    ```
    """
    try:
        w, h = int(width), int(height)
        ok = w > 0 and h > 0 and float(width) == w and float(height) == h
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise RecordError(
            "bad record",
            f"{what} must be positive integers, got width={_short(width)}, height={_short(height)}",
        )
    return [w, h]


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_keys(record: Any, keys: Sequence[str], what: str = "record") -> Mapping[str, Any]:
    """The record as a mapping holding `keys`, else `RecordError("bad record")`.

    Example:
    ```python
    >>> require_keys({"image": "a.jpg"}, ["image", "problem"])
    Traceback (most recent call last):
    ...
    trl_perception.data.common.RecordError: record lacks key(s) ['problem']; has ['image']

    ```
    """
    if not isinstance(record, Mapping):
        raise RecordError(
            "bad record", f"expected a {what} object with keys {list(keys)}, got {_short(record)}"
        )
    missing = [k for k in keys if k not in record]
    if missing:
        raise RecordError("bad record", f"{what} lacks key(s) {missing}; has {sorted(map(str, record))[:12]}")
    return record


# --------------------------------------------------------------------------------------------------
# One entry point for the CLI


def _guess_image_dir(task: str, source: Path) -> Path | None:
    """Where the images usually are, relative to the annotation file of each source."""
    if task == "detection":
        # annotations/instances_val2017.json -> ../val2017 (or ./val2017)
        name = source.stem.split("_", 1)[-1]
        for candidate in (source.parent.parent / name, source.parent / name):
            if candidate.is_dir():
                return candidate
        return None
    if task == "ocr":
        return source.parent
    if task == "counting":
        return source.parent if source.is_file() else source
    return None


def build_from_source(task: str, source: str | os.PathLike, **kwargs: Any) -> datasets.Dataset:
    """Build a dataset for `task` from a path, choosing the builder: grounding → `build_refcoco`,
    counting → `build_pixmo_count`, ocr → `build_pageocr`, detection → `build_coco_detection`, and
    `source="synthetic"` → `make_synthetic` (with `num_samples` rows, default 16).

    `kwargs` go to the builder (`split`, `image_dir`, `box_format`, `num_samples`, `seed`, ...). Where
    `image_dir` is not given it is guessed from the usual layout (COCO: `annotations/instances_X.json` →
    `X/`; Fox: the JSON's folder; PixMo: the source's folder); RefCOCO's split defaults to the one named
    in a Perception-R1 file name, else `"val"`.

    Example:
    ```python
    >>> ds = build_from_source("counting", "synthetic", num_samples=2, seed=0)
    >>> len(ds), ds[0]["task"]
    (2, 'counting')

    ```
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if str(source) == "synthetic":
        from .synthetic import make_synthetic

        unused = sorted(k for k in ("split", "image_dir") if kwargs.get(k) is not None)
        if unused:
            raise ValueError(f"the synthetic source takes no {unused}")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("split", "image_dir", "on_error")}
        n = kwargs.pop("num_samples", None) or 16
        return make_synthetic(task, n, **kwargs)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    image_dir = kwargs.pop("image_dir", None)
    if image_dir is None:
        image_dir = _guess_image_dir(task, path)
    if task == "grounding":
        from .refcoco import build_refcoco, default_split

        split = kwargs.pop("split", None) or default_split(path)
        return build_refcoco(path, split, image_dir, **kwargs)
    if task == "counting":
        from .pixmo_count import build_pixmo_count

        return build_pixmo_count(path, image_dir, **kwargs)
    if kwargs.get("split") is not None:
        raise ValueError(f"the {task} source is one file; it takes no split")
    kwargs.pop("split", None)
    if task == "ocr":
        from .pageocr import build_pageocr

        return build_pageocr(path, image_dir, **kwargs)
    from .coco import build_coco_detection

    if image_dir is None:
        raise ValueError(f"pass image_dir= for {path} (no image folder found next to it)")
    return build_coco_detection(path, image_dir, **kwargs)
