"""The error policy of the dataset builders: `DataError` for bad input, `RecordError` for one bad
record, and `ErrorPolicy`, which raises or skips and counts."""

from __future__ import annotations

import logging
import os
import reprlib
import warnings
from collections import Counter
from typing import Any

__all__ = [
    "DataError",
    "DataWarning",
    "ErrorPolicy",
    "ON_ERROR",
    "RECORD_ERRORS",
    "RecordError",
    "short_repr",
]

logger = logging.getLogger("trl_perception.data")

ON_ERROR: tuple[str, ...] = ("raise", "skip")
"""The `on_error` values every builder takes."""


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


RECORD_ERRORS: tuple[type[Exception], ...] = (
    RecordError,
    TypeError,
    ValueError,
    OverflowError,
    KeyError,
    IndexError,
    AttributeError,
)
"""What a builder's per-record code may raise on malformed values (an unhashable id, a number too large for
an integer column, a string where a list belongs): `ErrorPolicy.failed` turns each into a `DataError` naming
the file and record, or a counted skip."""


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
    trl_perception.data.errors.DataError: refs.json: record 3: negative width

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

    def failed(self, where: str, error: Exception, key: Any = None) -> None:
        """Handle the bad record `where` (e.g. `"record 17 (ref_id 42)"`): raise or count it.

        `error` is a `RecordError`, or any of `RECORD_ERRORS` raised by code reading a malformed value
        (counted as `"bad record"`). `key` identifies the source record when several rows come from it, so
        it is counted once.
        """
        if isinstance(error, DataError):  # already names its file: never re-wrap
            raise error
        if not isinstance(error, RecordError):
            error = RecordError("bad record", f"{type(error).__name__}: {_short_text(str(error))}")
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
        """`"skipped k of n records from <file>: …"` by reason, most frequent first.

        `total` is the number of records the builder examined; every skipped record was examined, so the
        count never reads as more skipped than seen.
        """
        total = max(int(total), self.skipped)
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


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 100
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def _short_text(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any, limit: int = 120) -> str:
    """A repr for error messages, bounded in length and work: a huge or deeply shared value is never
    rendered whole.

    Example:
    ```python
    >>> short_repr(list(range(100)))
    '[0, 1, 2, 3, 4, 5, 6, 7, ...]'
    >>> len(short_repr("x" * 10_000)) <= 120
    True

    ```
    """
    return _short_text(_REPR.repr(value), limit)
