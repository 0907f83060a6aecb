"""Images of the builders' sources: sizes read from file headers, path checks that keep a data file
inside its image folder, folder lookups, and the arrow storage of an image column."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from .errors import RecordError, short_repr

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "ImageFolder",
    "check_inside",
    "image_struct",
    "read_image_size",
]


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


def check_inside(name: str, what: str = "image path") -> str:
    """`name` if it is a relative path that stays inside the folder it is relative to, else
    `RecordError("path outside image_dir")`: an absolute path (`/x`, `C:\\x`, `\\\\server\\x`), a `..`
    component (with either slash) or a NUL character would let a data file point anywhere on disk.

    Example:
    ```python
    >>> check_inside("train2014/COCO_train2014_000000000009.jpg")
    'train2014/COCO_train2014_000000000009.jpg'
    >>> check_inside("../secret.jpg")
    Traceback (most recent call last):
    ...
    trl_perception.data.errors.RecordError: image path '../secret.jpg' leaves the image folder (pass allow_outside_image_dir=True to allow it)

    ```
    """
    parts = name.replace("\\", "/").split("/")
    if (
        "\x00" in name
        or PurePosixPath(name).is_absolute()
        or name.startswith(("/", "\\"))
        or PureWindowsPath(name).drive
        or ".." in parts
    ):
        raise RecordError(
            "path outside image_dir",
            f"{what} {short_repr(name)} leaves the image folder (pass allow_outside_image_dir=True to allow it)",
        )
    return name


class ImageFolder:
    """Finds image files under a folder; lists each directory once, so existence checks are cheap.

    Candidates are paths relative to the folder. One that would leave it (`../x.jpg`, an absolute path)
    raises `RecordError("path outside image_dir")`, unless `allow_outside=True`, which also takes absolute
    candidates as they are.

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

    def __init__(self, root: str | os.PathLike | None, allow_outside: bool = False):
        self.root = Path(root).resolve() if root is not None else None
        self.allow_outside = allow_outside
        self._listings: dict[Path, set[str] | None] = {}

    def _names(self, directory: Path) -> set[str] | None:
        if directory not in self._listings:
            try:
                self._listings[directory] = set(os.listdir(directory))
            except OSError:
                self._listings[directory] = None
        return self._listings[directory]

    def find(self, *candidates: str | os.PathLike | None) -> str | None:
        """Absolute path of the first candidate (relative to the root; absolute ones only with
        `allow_outside`) that exists. Every candidate is checked with `check_inside` first."""
        candidates = tuple(c for c in candidates if c is not None and str(c) != "")
        if not self.allow_outside:
            for candidate in candidates:
                check_inside(str(candidate))
        for candidate in candidates:
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
