"""Rule-based rewards for perception GRPO (grounding, counting, OCR, detection, output format) in TRL's
reward-function signature, and a registry to look them up by name."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .counting import count_reward, make_count_reward
from .detection import MAX_DETECTIONS, detection_reward, make_detection_reward
from .format import format_reward, json_format_reward, qwen2_vl_format_reward, think_answer_format_reward
from .grounding import grounding_format_reward, iou_reward, make_iou_reward
from .jigsaw import jigsaw_format_reward, jigsaw_reward, make_jigsaw_reward
from .ocr import ocr_reward
from .ovd import make_od_reward, od_ap50_reward, od_ap_reward, od_length_reward, od_weighted_reward
from .vqa import make_vqa_reward, vqa_reward

__all__ = [
    "MAX_DETECTIONS",
    "count_reward",
    "detection_reward",
    "format_reward",
    "get_reward",
    "grounding_format_reward",
    "iou_reward",
    "jigsaw_format_reward",
    "jigsaw_reward",
    "json_format_reward",
    "list_rewards",
    "make_count_reward",
    "make_detection_reward",
    "make_iou_reward",
    "make_od_reward",
    "make_jigsaw_reward",
    "make_vqa_reward",
    "ocr_reward",
    "od_ap50_reward",
    "od_ap_reward",
    "od_length_reward",
    "od_weighted_reward",
    "qwen2_vl_format_reward",
    "register_reward",
    "think_answer_format_reward",
    "vqa_reward",
]

F = TypeVar("F", bound=Callable[..., Any])

_LOCK = threading.Lock()
# name -> (reward or factory class, factory taking the parameters or None)
_REGISTRY: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None]] = {}
_ALIASES = {"counting": "count", "odlength": "od_length", "weighted_sum": "od_weighted"}


def _key(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"reward names are non-empty strings, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if key.endswith("_reward") and len(key) > len("_reward"):
        key = key[: -len("_reward")]
    return _ALIASES.get(key, key)


def _same_object(a: Any, b: Any) -> bool:
    qualname = getattr(a, "__qualname__", None)
    return a is b or (
        qualname is not None
        and qualname == getattr(b, "__qualname__", None)
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
    )


def _register(
    name: str, reward: Callable[..., Any], factory: Callable[..., Any] | None, overwrite: bool
) -> None:
    key = _key(name)
    with _LOCK:
        if key in _REGISTRY and not overwrite and not _same_object(_REGISTRY[key][0], reward):
            raise ValueError(
                f"a reward named {key!r} is already registered ({_REGISTRY[key][0]!r}); "
                "choose another name or pass overwrite=True"
            )
        _REGISTRY[key] = (reward, factory)


def register_reward(name: str | Callable[..., Any] | None = None, *, overwrite: bool = False) -> Any:
    r"""
    Decorator that registers a reward function (or a reward class) under `name` for `get_reward`.

    The name defaults to the function's `__name__` without a trailing `_reward`; lookups ignore case, `-`/`_`
    and that suffix. The decorated object is returned unchanged, so a module-level reward stays picklable
    (pickle stores it by reference). A class is treated as a factory: `get_reward(name, **params)` returns
    `cls(**params)`. Registering another object under a taken name raises `ValueError` unless
    `overwrite=True` (re-registering the same module-level object, e.g. on re-import, is fine).

    Args:
        name (`str`, *optional*): registry name. `@register_reward` without parentheses works too.
        overwrite (`bool`): replace an existing entry.

    Example:
    ```python
    >>> from trl_perception.rewards import get_reward, register_reward

    >>> @register_reward("answer_length")
    ... def short_answer_reward(completions, **kwargs):
    ...     return [1.0 if len(str(c)) < 100 else 0.0 for c in completions]
    >>> get_reward("answer_length")(["[1, 2, 3, 4]"])
    [1.0]

    ```
    """
    if callable(name):  # used bare: @register_reward
        return register_reward(None, overwrite=overwrite)(name)

    def decorator(obj: F) -> F:
        if not callable(obj):
            raise TypeError(f"register_reward decorates callables, got {obj!r}")
        reward_name = name if name is not None else getattr(obj, "__name__", None)
        if reward_name is None:
            raise ValueError(f"cannot infer a name for {obj!r}; pass register_reward(name=...)")
        _register(reward_name, obj, obj if inspect.isclass(obj) else None, overwrite)
        return obj

    return decorator


def _named_parameters(func: Callable[..., Any]) -> set[str] | None:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    return {
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def get_reward(name: str, /, **params: Any) -> Callable[..., list[float | None]]:
    r"""
    A reward function by name, with optional parameters bound.

    Built-in names: `iou`, `iou_squared` (IoU², as Perception-R1's released code), `grounding_format`,
    `count` (alias `counting`), `count_sequential`, `ocr`, `detection`, `detection_released` (released
    weighting, range [0, 3]), `detection_sequential` (the `*_sequential` entries: Table 5's "w/o reward
    matching"), `format`, `qwen2_vl_format`, `json_format`, `think_answer_format` (Table 5's "w/ thinking"),
    the open-vocabulary detection rewards `od_ap`, `od_ap50`, `od_length` (alias `odLength`), `od_weighted`
    (alias `weighted_sum`) and their VLM-R1-compatible `*_vlm_r1` variants (`make_od_reward(..., vlm_r1=True)`),
    `jigsaw` (`metric="connections"` or `jigsaw_connections`), `jigsaw_format`; plus anything added with
    `register_reward`. Names ignore case and a trailing `_reward`. Parameters go to the reward's factory
    (`make_iou_reward`, `make_count_reward`, `make_detection_reward`, ...), which returns a named callable;
    for a plain function they are bound with `functools.partial` and must be named
    parameters of it. The result is picklable whenever the registered object is.

    Args:
        name (`str`): registry name.
        **params: options, e.g. `get_reward("iou", squared=True)` or `get_reward("detection", iou_threshold=0.75)`.

    Returns:
        `Callable`: a reward with TRL's signature.

    Example:
    ```python
    >>> from trl_perception.rewards import get_reward

    >>> get_reward("iou").__name__, get_reward("iou", squared=True).__name__
    ('iou_reward', 'iou_squared_reward')
    >>> get_reward("detection_released")(["[]"], [[]])
    [3.0]
    >>> get_reward("count_sequential").__name__, get_reward("detection", matching="sequential").__name__
    ('count_sequential_reward', 'detection_sequential_reward')

    ```
    """
    key = _key(name)
    with _LOCK:
        entry = _REGISTRY.get(key)
    if entry is None:
        raise KeyError(f"no reward named {name!r}; registered: {', '.join(list_rewards())}")
    reward, factory = entry
    if factory is not None:
        if inspect.isclass(reward) or params:
            return factory(**params)
        return reward
    if not params:
        return reward
    accepted = _named_parameters(reward) or set()
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TypeError(
            f"reward {key!r} takes no parameter(s) {unknown}; it accepts {sorted(accepted - {'completions'})}"
        )
    return functools.partial(reward, **params)


def list_rewards() -> list[str]:
    """Sorted names of the registered rewards.

    Example:
    ```python
    >>> from trl_perception.rewards import list_rewards

    >>> {"iou", "count", "ocr", "detection", "format"} <= set(list_rewards())
    True

    ```
    """
    with _LOCK:
        return sorted(_REGISTRY)


def _iou_squared_factory(**params: Any) -> Callable[..., list[float | None]]:
    return make_iou_reward(**{"squared": True, **params})


def _detection_released_factory(**params: Any) -> Callable[..., list[float | None]]:
    return make_detection_reward(**{"released_code": True, **params})


_register("iou", iou_reward, make_iou_reward, False)
_register("iou_squared", make_iou_reward(squared=True), _iou_squared_factory, False)
_register("grounding_format", grounding_format_reward, None, False)
_register("count", count_reward, make_count_reward, False)
_register("ocr", ocr_reward, None, False)
_register("detection", detection_reward, make_detection_reward, False)
_register("detection_released", make_detection_reward(released_code=True), _detection_released_factory, False)


def _count_sequential_factory(**params: Any) -> Callable[..., list[float | None]]:
    return make_count_reward(**{"matching": "sequential", **params})


def _detection_sequential_factory(**params: Any) -> Callable[..., list[float | None]]:
    return make_detection_reward(**{"matching": "sequential", **params})


# Table 5's "w/o reward matching": named entries, so that a recipe selects them by name and TRL logs them apart.
_register("count_sequential", make_count_reward(matching="sequential"), _count_sequential_factory, False)
_register("detection_sequential", make_detection_reward(matching="sequential"), _detection_sequential_factory, False)
_register("format", format_reward, None, False)
_register("qwen2_vl_format", qwen2_vl_format_reward, None, False)
_register("json_format", json_format_reward, None, False)
_register("think_answer_format", think_answer_format_reward, None, False)


class _ODFactory:
    """`make_od_reward` with `kind` (and the VLM-R1 mode) bound: the registry's factory for one OD name."""

    def __init__(self, kind: str, vlm_r1: bool = False):
        self.kind, self.vlm_r1 = kind, vlm_r1

    def __call__(self, **params: Any) -> Callable[..., list[float | None]]:
        return make_od_reward(**{"kind": self.kind, "vlm_r1": self.vlm_r1, **params})


for _kind, _reward in (
    ("ap", od_ap_reward),
    ("ap50", od_ap50_reward),
    ("length", od_length_reward),
    ("weighted", od_weighted_reward),
):
    _register(f"od_{_kind}", _reward, _ODFactory(_kind), False)
    _register(f"od_{_kind}_vlm_r1", make_od_reward(_kind, vlm_r1=True), _ODFactory(_kind, vlm_r1=True), False)
def _jigsaw_connections_factory(**params: Any) -> Callable[..., list[float | None]]:
    return make_jigsaw_reward(**{"metric": "connections", **params})


_register("jigsaw", jigsaw_reward, make_jigsaw_reward, False)
_register("jigsaw_connections", make_jigsaw_reward("connections"), _jigsaw_connections_factory, False)
_register("jigsaw_format", jigsaw_format_reward, None, False)


def _vqa_factory(mode: str) -> Callable[..., Callable[..., list[float | None]]]:
    return functools.partial(_vqa_mode_reward, mode)


def _vqa_mode_reward(mode: str, **params: Any) -> Callable[..., list[float | None]]:
    return make_vqa_reward(**{"mode": mode, **params})


_register("vqa", vqa_reward, make_vqa_reward, False)
for _mode in ("choice", "number", "text"):
    _register(f"vqa_{_mode}", make_vqa_reward(_mode), _vqa_factory(_mode), False)
