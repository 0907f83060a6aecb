"""Format rewards: 1.0 when the whole completion is a well-formed answer in the model family's box syntax
(Qwen2-VL box tokens, or the Qwen2.5-VL / Qwen3-VL JSON list), else 0.0; and the R1-style structure
`<think>…</think><answer>…</answer>` for prompts that ask for thinking."""

from __future__ import annotations

import math
import re
from typing import Any

from .._json import loads_strict
from ..formats import strip_thinking
from ..frames import BOX_TASKS
from ._common import is_empty_answer, remove_padding, select_rows, text_of

__all__ = [
    "format_reward",
    "is_json_answer",
    "is_qwen2_vl_answer",
    "is_think_answer",
    "json_format_reward",
    "qwen2_vl_format_reward",
    "think_answer_format_reward",
]

_MAX_CHARS = 200_000

_NUM = r"\s*\d{1,7}(?:\.\d{1,8})?\s*"
_BODY = rf"\({_NUM},{_NUM}\)(?:(?:\s*,\s*|\s*)\({_NUM},{_NUM}\))?"  # a box (x1,y1),(x2,y2) or a point (x,y)
_REF = r"<\|object_ref_start\|>[^<]{1,300}<\|object_ref_end\|>"
_BOX = rf"<\|box_start\|>{_BODY}<\|box_end\|>"
# Groups must start with a reference after the first, so the pattern has one way to match: no backtracking
# blow-up on long inputs.
_QWEN2_VL_RE = re.compile(rf"(?:{_REF})?(?:{_BOX})+(?:{_REF}(?:{_BOX})+)*")
_BOX_BODY_RE = re.compile(r"<\|box_start\|>([^<]*)<\|box_end\|>")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_FENCE = "```"


def _answer_body(text: str) -> str:
    """The completion without padding and, when it thinks first (`<think>…</think>` at its start, or a lone
    `</think>` whose opening tag was in the prompt), without the thinking (`formats.strip_thinking`); then
    without an `<answer>…</answer>` wrapper around everything. Text before a `<think>`, and a completion that
    only thinks, are left as they are, so that the format checks fail. Slicing, not a regular expression:
    linear on any input."""
    body = remove_padding(text).strip()
    if _THINK_OPEN in body or _THINK_CLOSE in body:
        rest = strip_thinking(body)
        if rest is None or (_THINK_OPEN in body and not body.startswith(_THINK_OPEN)):
            return body  # thinking without an answer is no answer; prose before the thinking is prose
        body = rest.strip()
    if body.startswith(_ANSWER_OPEN) and body.endswith(_ANSWER_CLOSE, len(_ANSWER_OPEN)):
        return body[len(_ANSWER_OPEN) : -len(_ANSWER_CLOSE)].strip()
    return body


def _unfenced(body: str) -> str:
    """The content of a ```` ```json ```` fence around the whole body (`json` optional), stripped."""
    if len(body) >= 2 * len(_FENCE) and body.startswith(_FENCE) and body.endswith(_FENCE):
        inner = body[len(_FENCE) : -len(_FENCE)]
        return (inner[4:] if inner.startswith("json") else inner).strip()
    return body


def is_qwen2_vl_answer(text: str) -> bool:
    """Whether `text` is nothing but Qwen2-VL box syntax: an optional object reference, then one or more
    `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` (or `(x,y)` point) blocks, optionally repeated as further
    reference + boxes groups (one per label in detection), with ordered corners.

    Example:
    ```python
    >>> is_qwen2_vl_answer("<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|>")
    True
    >>> is_qwen2_vl_answer("cat <|box_start|>(1,2),(30,40)<|box_end|>"), is_qwen2_vl_answer("<|box_start|>(9,9),(1,1)<|box_end|>")
    (False, False)

    ```
    """
    body = _answer_body(text)
    if len(body) > _MAX_CHARS or _QWEN2_VL_RE.fullmatch(body) is None:
        return False
    for box in _BOX_BODY_RE.findall(body):
        values = [float(v) for v in _NUMBER_RE.findall(box)]
        if len(values) == 4 and (values[2] < values[0] or values[3] < values[1]):
            return False
    return True


def _coords(value: Any, count: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) != count:
        return None
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            return None
        out.append(float(v))
    return out


def _well_formed(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    if "label" in item and not (isinstance(item["label"], str) and item["label"].strip()):
        return False
    if "bbox_2d" in item:
        box = _coords(item["bbox_2d"], 4)
        return box is not None and box[0] <= box[2] and box[1] <= box[3] and "point_2d" not in item
    return _coords(item.get("point_2d"), 2) is not None


def is_json_answer(text: str) -> bool:
    """Whether `text` is nothing but a JSON list of well-formed objects (optionally in a ```` ```json ````
    fence): each a dict with `bbox_2d` (4 non-negative numbers, ordered corners) or `point_2d` (2), and an
    optional non-empty string `label`. The empty list `[]` (no object) is well-formed.

    Example:
    ```python
    >>> is_json_answer('```json\\n[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}]\\n```'), is_json_answer("[]")
    (True, True)
    >>> is_json_answer('Sure! [{"bbox_2d": [1, 2, 30, 40]}]'), is_json_answer('[{"bbox_2d": [1, 2, 30]}]')
    (False, False)

    ```
    """
    body = _answer_body(text)
    if len(body) > _MAX_CHARS:
        return False
    body = _unfenced(body)
    if not body.startswith("["):
        return False
    try:
        value = loads_strict(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, list) and all(_well_formed(item) for item in value)


_CHECKS = {"qwen2_vl": (is_qwen2_vl_answer,), "qwen2_5_vl": (is_json_answer,), "qwen3_vl": (is_json_answer,)}
_ANY = (is_qwen2_vl_answer, is_json_answer)


def _format_rewards(completions: list, kwargs: dict, name: str, fixed: tuple | None) -> list[float | None]:
    rows, n = select_rows(name, BOX_TASKS, completions, None, kwargs)
    rewards: list[float | None] = [None] * n
    tasks = kwargs.get("task")
    tasks = [tasks] * n if isinstance(tasks, str) or tasks is None else list(tasks)
    for row in rows:
        checks = fixed or _CHECKS.get(row.frame.box_format or "", _ANY)
        try:
            # The OVD prompt asks for None when no phrase is present: that answer is well formed there.
            ok = any(check(row.text) for check in checks) or (tasks[row.index] == "ovd" and is_empty_answer(row.text))
        except Exception:  # noqa: BLE001 - a format check must never raise on model output
            ok = False
        rewards[row.index] = 1.0 if ok else 0.0
    return rewards


def format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    r"""
    Format reward, aware of the model family: 1.0 when the whole completion is a well-formed answer, else 0.0.

    The row's `box_format` picks the syntax: `"qwen2_vl"` → nothing but an optional object reference and one
    or more `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` blocks (`is_qwen2_vl_answer`); `"qwen2_5_vl"` /
    `"qwen3_vl"` → the whole answer is a JSON list of well-formed objects, optionally in a ```` ```json ````
    fence (`is_json_answer`). Without `box_format` either syntax is accepted. Trailing padding tokens and an
    `<answer>…</answer>` wrapper around the whole answer (after an optional `<think>…</think>` block: the
    answer is judged, not the thinking) are allowed; prose, repeated or dangling tags, a
    truncated list, NaN or inverted boxes score 0 (full-match semantics, so a correct answer embedded in text
    does not pay). On open-vocabulary detection rows (`task="ovd"`) an explicit empty answer (`None`, `[]`) is
    well formed too, as their prompt asks for it. OCR rows (plain text) get `None`, as do rows of tasks other
    than grounding, counting, detection and ovd. The Qwen2-VL box tokens are special tokens: decode completions with
    `skip_special_tokens=False` for that syntax to survive.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        **kwargs: `task` and `box_format` columns; others are ignored.

    Returns:
        `list[float | None]`: 1.0 or 0.0 per completion (`None` for OCR rows).

    Example:
    ```python
    >>> from trl_perception.rewards import format_reward

    >>> format_reward(['[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}]', "<|box_start|>(1,2),(30,40)<|box_end|>",
    ...                "The cat is at [1, 2, 30, 40].", "Hello"], task=["detection", "counting", "grounding", "ocr"])
    [1.0, 1.0, 0.0, None]
    >>> format_reward(["<|box_start|>(1,2),(30,40)<|box_end|>"], box_format=["qwen2_5_vl"])
    [0.0]

    ```
    """
    return _format_rewards(completions, kwargs, "format_reward", None)


def qwen2_vl_format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    r"""
    Format reward for the Qwen2-VL box syntax only (`is_qwen2_vl_answer`), whatever `box_format` says: 1.0
    when the completion is nothing but an optional object reference and one or more box blocks, else 0.0;
    `None` for OCR rows.

    Example:
    ```python
    >>> from trl_perception.rewards import qwen2_vl_format_reward

    >>> qwen2_vl_format_reward([
    ...     "<|object_ref_start|>bird<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|box_start|>(5,6),(7,8)<|box_end|><|im_end|>",
    ...     "<|object_ref_start|>bird<|object_ref_end|><|object_ref_start|>bird<|object_ref_end|>",
    ... ])
    [1.0, 0.0]

    ```
    """
    return _format_rewards(completions, kwargs, "qwen2_vl_format_reward", (is_qwen2_vl_answer,))


def json_format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    r"""
    Format reward for the Qwen2.5-VL / Qwen3-VL JSON syntax only (`is_json_answer`), whatever `box_format`
    says: 1.0 when the whole completion (optionally fenced) is a JSON list of well-formed objects, else 0.0;
    `None` for OCR rows.

    Example:
    ```python
    >>> from trl_perception.rewards import json_format_reward

    >>> json_format_reward(['[{"point_2d": [3, 4], "label": "bird"}]', '[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6'])
    [1.0, 0.0]

    ```
    """
    return _format_rewards(completions, kwargs, "json_format_reward", (is_json_answer,))


_STRUCTURE_TAGS = (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)


def is_think_answer(text: str) -> bool:
    """Whether `text` is exactly one `<think>…</think>` block, then (after optional whitespace) exactly one
    `<answer>…</answer>` block with a non-empty answer, and nothing else (trailing padding tokens and
    surrounding whitespace allowed). The thinking may be empty, as in the SFT answers of
    `data.render_completion(..., think=True)`; no tag may appear a second time, inside the thinking or the
    answer. Counting and slicing only: linear on any input.

    Example:
    ```python
    >>> is_think_answer("<think>two cats</think>\\n<answer>[1, 2, 3, 4]</answer><|im_end|>")
    True
    >>> is_think_answer("<think>two cats</think>[1, 2, 3, 4]"), is_think_answer("<think><answer>2</answer></think><answer>2</answer>")
    (False, False)

    ```
    """
    body = remove_padding(text).strip()
    if not (body.startswith(_THINK_OPEN) and body.endswith(_ANSWER_CLOSE)):
        return False
    if any(body.count(tag) != 1 for tag in _STRUCTURE_TAGS):
        return False
    rest = body[body.index(_THINK_CLOSE) + len(_THINK_CLOSE) :].lstrip()
    if not rest.startswith(_ANSWER_OPEN):
        return False
    return bool(rest[len(_ANSWER_OPEN) : -len(_ANSWER_CLOSE)].strip())


def think_answer_format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    r"""
    R1-style structure reward for prompts that ask for thinking (`build_prompt(..., think=True)`, the
    builders' `think=True`): 1.0 when the completion is exactly `<think>…</think>` then `<answer>…</answer>`
    (`is_think_answer`), else 0.0. Table 5's "w/ thinking" ablation adds it to the task's rewards.

    TRL's `trl.rewards.think_format_reward` does not fit these prompts: it checks only that the completion
    opens with a `<think>…</think>` block and accepts anything after it (no `<answer>` tags, a second
    `</think>`, answer tags inside the thinking), while every reward here reads the answer inside the last
    `<answer>` after the thinking. It also expects conversational completions only and no padding tokens.
    This reward requires exactly one of each tag, in order, a non-empty answer and nothing outside the two
    blocks, for any completion form, in linear time. The thinking may be empty (R1-style format rewards and
    TRL's accept that too): the answer's syntax is `format_reward`'s job, its content the task reward's.
    Every row is judged, whatever its task.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        **kwargs: ignored.

    Returns:
        `list[float]`: 1.0 or 0.0 per completion.

    Example:
    ```python
    >>> from trl_perception.rewards import think_answer_format_reward

    >>> think_answer_format_reward(["<think>the left one</think><answer>[1, 2, 3, 4]</answer>",
    ...                             "<think>the left one</think>[1, 2, 3, 4]",
    ...                             [{"role": "assistant", "content": "<think></think>\n<answer>3</answer>"}]])
    [1.0, 0.0, 1.0]

    ```
    """
    rewards: list[float | None] = []
    for completion in completions:
        try:
            ok = is_think_answer(text_of(completion))
        except Exception:  # noqa: BLE001 - a format check must never raise on model output
            ok = False
        rewards.append(1.0 if ok else 0.0)
    return rewards
