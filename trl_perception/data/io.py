"""Safe readers for the files the builders take: JSON, JSON lines, parquet, and data pickles (plain data
only, bounded work). Every failure becomes a `DataError` naming the file.

Text comes out as valid Unicode: a lone UTF-16 surrogate, which JSON can spell (`"cat\\ud800"`) and a pickle
can hold but no UTF-8 file, Arrow table or picture can, becomes U+FFFD (`valid_text`), so a label,
sentence or file name never crashes a build."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, RecordError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "MAX_PICKLE_ITEMS",
    "iter_jsonl",
    "load_json",
    "load_json_records",
    "load_pickle",
    "loads_text",
    "parquet_columns",
    "read_parquet",
    "valid_text",
]


def _may_hold_surrogates(data: str | bytes) -> bool:
    """Whether decoding `data` (JSON text or a pickle) may give a lone surrogate: it holds an escape
    `\\uD...` (JSON, protocol-0 pickles) or, in bytes, a 0xED lead byte (a surrogate UTF-8-style, as binary
    pickles store it). Substring scans only; a false alarm just costs a walk over the value."""
    if isinstance(data, str):
        return "\\ud" in data or "\\uD" in data
    return b"\\ud" in data or b"\\uD" in data or b"\xed" in data


def valid_text(value: Any) -> Any:
    """`value` with every string (dict keys included) valid Unicode: each lone UTF-16 surrogate becomes
    U+FFFD, a split surrogate pair is joined. Containers are rebuilt (call it only when needed).

    Example:
    ```python
    >>> valid_text({"name": "cat\\ud800", "ids": (1, "dog")})
    {'name': 'cat\ufffd', 'ids': (1, 'dog')}
    >>> valid_text(["\\ud83d\\ude00"])
    ['😀']

    ```
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(valid_text(v) for v in value)
    return value


def loads_text(text: str | bytes, **kwargs: Any) -> Any:
    """`json.loads(text, **kwargs)`, with strings made valid Unicode (`valid_text`) when the text escapes a
    surrogate.

    Example:
    ```python
    >>> loads_text('{"label": "cat\\\\ud800"}')
    {'label': 'cat\ufffd'}

    ```
    """
    value = json.loads(text, **kwargs)
    return valid_text(value) if _may_hold_surrogates(text) else value


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
    trl_perception.data.errors.DataError: ...a.json: not valid JSON (truncated file?): Expecting ',' delimiter: line 1 column 19 (char 18)

    ```
    """
    path = _require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            return loads_text(f.read())
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
                yield number, loads_text(raw.decode("utf-8"))
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
_CONTAINERS = (dict, list, tuple, set, frozenset)
_SCALAR_TYPES = frozenset({str, bytes, bytearray, int, float, bool, type(None)})

MAX_PICKLE_ITEMS = 50_000_000
"""Most values a data pickle may hold, counting a shared object once per place it is referenced: the
size of the tree that code walking the value would visit (refer's largest `refs(google).p` holds a few
million)."""


def _children(item: Any) -> Any:
    if isinstance(item, dict):
        return [*item.keys(), *item.values()]
    return item


def _check_plain(value: Any, max_items: int = MAX_PICKLE_ITEMS) -> None:
    """Check that `value` is a finite tree of plain data, visiting each distinct object once.

    A container that (indirectly) contains itself is refused; so is a value whose tree, counting each
    shared reference where it occurs, exceeds `max_items` values (a list doubled 60 times through shared
    references is 60 objects but a tree of 2**60), since any code that walks it would never finish.
    """
    sizes: dict[int, int] = {}  # id -> tree size of a finished container
    on_path: set[int] = set()
    keep: list[Any] = []  # every visited container stays alive, so no id is reused during the check
    stack: list[list[Any]] = []  # frames [container, iterator over its children, tree size so far]

    def add(frame: list[Any], size: int) -> None:
        frame[2] += size
        if frame[2] > max_items:
            raise pickle.UnpicklingError(f"more than {max_items:,} values (shared references counted)")

    def enter(item: Any) -> int | None:
        """The tree size of a scalar or finished container; None after pushing a new container."""
        if not isinstance(item, _PLAIN_TYPES):
            raise pickle.UnpicklingError(f"unexpected {type(item).__name__} in a data pickle")
        if not isinstance(item, _CONTAINERS):
            return 1
        key = id(item)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise pickle.UnpicklingError(f"a {type(item).__name__} contains itself (a cyclic pickle)")
        on_path.add(key)
        keep.append(item)
        stack.append([item, iter(_children(item)), 1])
        return None

    if enter(value) is None:
        while stack:
            frame = stack[-1]
            for child in frame[1]:
                if type(child) in _SCALAR_TYPES:  # the bulk of any real pickle: no call, no bookkeeping
                    frame[2] += 1
                    continue
                size = enter(child)
                if size is None:
                    break  # finish the new container first
                add(frame, size)
            else:
                stack.pop()
                add(frame, 0)
                key = id(frame[0])
                on_path.discard(key)
                sizes[key] = frame[2]
                if stack:
                    add(stack[-1], frame[2])


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
    trl_perception.data.errors.DataError: <bytes>: not a plain-data pickle: refusing to load global builtins.print: only plain data is allowed

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
            return valid_text(value) if _may_hold_surrogates(data) else value
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
    trl_perception.data.errors.DataError: ...x.parquet: not a readable parquet file (truncated?): ...

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
