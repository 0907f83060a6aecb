"""The one task → builder registry: `BUILDERS`, the `register_builder` decorator each builder module applies
to its builder, and `build_dataset`, which builds any task from a file, a folder or `"synthetic"`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .synthetic import make_synthetic

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["BUILDERS", "SYNTHETIC", "build_dataset", "register_builder"]

BUILDERS: dict[str, Callable[..., datasets.Dataset]] = {}
"""Task → builder. Every builder takes the source first, then keyword options with the same names and
meanings everywhere (`split`, `image_dir`, `num_samples`, `seed`, `on_error`, `box_format`, `min_pixels`,
`max_pixels`), plus options of its own. The package fills it on import (`trl_perception.data` imports each
builder module, which registers its builder with `register_builder`)."""

SYNTHETIC = "synthetic"
"""The source name `build_dataset` reads as "make synthetic rows" (`make_synthetic`) instead of a path."""

_SYNTHETIC_DEFAULT_ROWS = 16

Builder = TypeVar("Builder", bound=Callable[..., Any])


def register_builder(task: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder for `task` in `BUILDERS` (a second builder for a task is an error).

    A builder module outside the package registers the same way; it is registered once it is imported.

    Example:
    ```python
    >>> @register_builder("toy_counting")
    ... def build_toy(source, *, num_samples=None, seed=0, **options):
    ...     from trl_perception.data.synthetic import make_synthetic
    ...     return make_synthetic("counting", num_samples or 2, seed=seed)
    >>> len(build_dataset("toy_counting", "anything", num_samples=3))
    3
    >>> del BUILDERS["toy_counting"]

    ```
    """

    def register(builder: Builder) -> Builder:
        known = BUILDERS.get(task, builder)
        # The same function from a module loaded again (importlib.reload, pytest's importlib mode) replaces itself.
        if _name(known) != _name(builder):
            raise ValueError(f"task {task!r} already has a builder: {_name(known)}")
        BUILDERS[task] = builder
        return builder

    return register


def _name(builder: Callable[..., Any]) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


def build_dataset(task: str, source: str | os.PathLike, **options: Any) -> datasets.Dataset:
    """Build a row-contract dataset for `task` from `source`, with the task's registered builder.

    `source` is a file or folder the builder reads, or `"synthetic"`: rows from `make_synthetic` (the tasks
    it draws, which it checks; `num_samples` defaults to 16; `split` and `image_dir` do not apply, `on_error` is ignored since
    synthetic rows cannot be malformed). `options` are the builder's keyword options.

    Where `image_dir` is left out, each builder looks where its source usually keeps the images (COCO:
    `annotations/instances_X.json` → `X/`; Fox: the JSON's folder; PixMo: the source's folder; refer: its
    own layout).

    Example:
    ```python
    >>> ds = build_dataset("counting", "synthetic", num_samples=2, seed=0)
    >>> len(ds), ds[0]["task"]
    (2, 'counting')
    >>> {"grounding", "counting", "ocr", "detection"} <= set(BUILDERS)
    True

    ```
    """
    if str(source) == SYNTHETIC and task != "jigsaw":  # jigsaw cuts its puzzles from synthetic scenes itself
        unused = sorted(k for k in ("split", "image_dir") if options.get(k) is not None)
        if unused:
            raise ValueError(f"the synthetic source takes no {unused}")
        options = {k: v for k, v in options.items() if k not in ("split", "image_dir", "on_error")}
        num_samples = options.pop("num_samples", None)
        return make_synthetic(task, _SYNTHETIC_DEFAULT_ROWS if num_samples is None else num_samples, **options)
    if task not in BUILDERS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(BUILDERS)}")
    return BUILDERS[task](source, **options)
