"""Strict JSON decoding shared by the rewards and the evaluation: NaN / Infinity are refused, nothing is
ever `eval`-ed."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads_strict", "unquote_text"]


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite JSON constant {name}")


_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads_strict(text: str) -> Any:
    """Decode one JSON document; `NaN`, `Infinity` and `-Infinity` raise `ValueError` like any bad JSON.

    Example:
    ```python
    >>> loads_strict('[1, 2.5, "a"]')
    [1, 2.5, 'a']
    >>> loads_strict("[NaN]")
    Traceback (most recent call last):
    ...
    ValueError: non-finite JSON constant NaN

    ```
    """
    return _STRICT_DECODER.decode(text)


def unquote_text(text: str) -> str:
    """The text a JSON string literal encodes (mixed-task datasets store OCR solutions as JSON strings);
    anything that is not a JSON string literal is returned as it is.

    Example:
    ```python
    >>> unquote_text('"page\\\\ntext"'), unquote_text("plain text"), unquote_text('"a" and "b"')
    ('page\\ntext', 'plain text', '"a" and "b"')

    ```
    """
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        try:
            decoded = json.loads(stripped)
        except ValueError:
            return text
        if isinstance(decoded, str):
            return decoded
    return text
