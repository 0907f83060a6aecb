"""Visual grounding rewards: IoU of the predicted box with the referred object's box, and Perception-R1's
grounding format check with its special-token pipes escaped."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..boxes import paired_box_iou
from ..formats import BoxBatch, answer_text, parse_boxes_batch, parse_objects
from ..frames import Frame
from ._common import (
    ComponentLog,
    MalformedSolution,
    Row,
    SolutionCache,
    call_safely,
    decode_json,
    gt_box,
    is_empty_answer,
    select_rows,
)

__all__ = ["grounding_format_reward", "iou_reward", "is_grounding_format", "make_iou_reward"]

_TASKS = ("grounding",)
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


_ABSENT = object()


def _grounding_target(solution: Any) -> list[float] | object:
    """The ground-truth box, or `_ABSENT` when the referred object is absent (`[]`)."""
    value = decode_json(solution)
    if isinstance(value, dict):
        value = value.get("bbox_2d", value.get("bbox"))
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return _ABSENT
        if len(value) == 1 and isinstance(value[0], (list, tuple, dict)):
            return _grounding_target(value[0])
    if value is None:
        raise MalformedSolution("grounding solution is missing")
    return gt_box(value, "grounding solution")


def _prepare(
    row: Row, gt: list[float] | None, parsed: BoxBatch, k: int
) -> tuple[float | None, int | None, list[float] | None, bool]:
    """`(final reward or None, row of the predicted box in `parsed.coords`, ground-truth box, parse failure)`
    for the `k`-th row of `parsed`."""
    if gt is None:
        if is_empty_answer(row.text):
            return 1.0, None, None, False
        return 0.0, None, None, not parse_objects(row.text, row.frame.box_format).objects
    first, stop = parsed.spans[k]
    if first == stop:
        return 0.0, None, gt, True
    return None, first, gt, False


def _iou_rewards(
    completions: list, solution: list, squared: bool, name: str, kwargs: dict
) -> list[float | None]:
    rows, n = select_rows(name, _TASKS, completions, solution, kwargs)
    rewards: list[float | None] = [None] * n
    log = ComponentLog(name, n, ("iou", "parse_failure"))
    pending: list[tuple[Row, int, list[float]]] = []
    targets = SolutionCache(_grounding_target)
    # Every answer of the call parsed at once (the common well-formed ones in bulk); never raises.
    parsed = parse_boxes_batch([row.text for row in rows], [row.frame.box_format for row in rows], False)
    failure = (0.0, None, None, True)
    for k, row in enumerate(rows):
        gt = call_safely(name, row, targets.of_row, failure)
        if gt is None or gt is failure:  # a malformed solution (reward None), or an unexpected error
            if gt is failure:
                rewards[row.index] = 0.0
                log.set(row.index, parse_failure=1.0, iou=None)
            continue
        first, stop = parsed.spans[k]
        if gt is not _ABSENT and first < stop:  # the common case: a box to score
            pending.append((row, first, gt))
            continue
        value, pred, gt, failed = _prepare(row, None if gt is _ABSENT else gt, parsed, k)
        if value is not None:
            rewards[row.index] = value
            log.set(row.index, parse_failure=float(failed), iou=0.0 if gt is not None else None)
        else:
            pending.append((row, pred, gt))
    if pending:
        # One vectorized pass: frame conversion, clipping and IoU for every row with a box.
        first = np.array([p for _, p, _ in pending], dtype=np.int64)
        pred = Frame.stack_to_pixels(parsed.coords[first], [r.frame for r, _, _ in pending])
        ious = paired_box_iou(pred, np.array([g for _, _, g in pending]))
        ious = np.nan_to_num(np.clip(ious, 0.0, 1.0))
        indices = [row.index for row, _, _ in pending]
        values = ious.tolist()
        for index, iou in zip(indices, values):
            rewards[index] = iou * iou if squared else iou
        log.set_rows(indices, iou=values, parse_failure=np.zeros(len(values)))
    log.emit(kwargs)
    return rewards


def iou_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    Reward for visual grounding: IoU of the first box in the completion with the ground-truth box.

    $$ r = \mathrm{IoU}(\hat b, b) = \frac{|\hat b \cap b|}{|\hat b \cup b|} \in [0, 1] $$

    The predicted box $\hat b$ is the first box `formats.parse_objects` reads (Qwen2-VL box tokens, Qwen2.5-VL /
    Qwen3-VL JSON, or `(x1,y1),(x2,y2)` / `[x1, y1, x2, y2]` in prose). With the `box_format` and
    `image_size` columns it is converted from the family's frame to original-image pixels (for Qwen2.5-VL
    with the `input_size` column, or, when absent, the input size `boxes.model_input_size` computes with the
    family's default pixel limits) and clipped to the image, so a whole-image box scores its true IoU.
    Without them, coordinates are compared as written. Inverted or degenerate boxes have IoU 0.

    When the referred object is absent (solution `[]`), an empty answer (`[]`, empty text, `None`,
    `No objects`) scores 1.0 and anything else 0.0. No parseable box scores 0.0. A malformed solution (or
    frame column) gives `None` with a logged warning. Perception-R1's released code squares the IoU:
    use `make_iou_reward(squared=True)` or `get_reward("iou_squared")`.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions, plain or conversational (`[{"role": "assistant", "content": ...}]`).
        solution (`list`):
            Ground-truth boxes `[x1, y1, x2, y2]` in absolute pixels of the image (native or JSON strings).
        **kwargs:
            Dataset columns, one value per completion: `task` (rows of another task get `None`),
            `box_format`, `image_size` (`[width, height]`), `input_size`; and the trainer's `log_metric` /
            `log_extra`, which receive `iou_reward/iou` and `iou_reward/parse_failure`. Others are ignored.

    Returns:
        `list[float | None]`: one reward per completion.

    Example:
    ```python
    >>> from trl_perception.rewards import iou_reward

    >>> completions = [[{"role": "assistant", "content": '[{"bbox_2d": [5, 5, 15, 15], "label": "cat"}]'}],
    ...                [{"role": "assistant", "content": "I cannot find it."}]]
    >>> [round(r, 4) for r in iou_reward(completions, [[0, 0, 10, 10], [0, 0, 10, 10]])]
    [0.1429, 0.0]
    >>> iou_reward(["<|box_start|>(0,0),(500,500)<|box_end|>"], [[0, 0, 320, 240]],
    ...            box_format=["qwen2_vl"], image_size=[[640, 480]])
    [1.0]

    ```
    """
    return _iou_rewards(completions, solution, False, "iou_reward", kwargs)


class _IoUReward:
    """`iou_reward` with its options bound; a class (not a closure) so it pickles."""

    def __init__(self, squared: bool = False, name: str | None = None):
        self.squared = bool(squared)
        self.__name__ = name or ("iou_squared_reward" if self.squared else "iou_reward")

    def __call__(self, completions: list, solution: list, **kwargs: Any) -> list[float | None]:
        return _iou_rewards(completions, solution, self.squared, self.__name__, kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(squared={self.squared}, name={self.__name__!r})"


def make_iou_reward(squared: bool = False, name: str | None = None) -> _IoUReward:
    r"""
    A grounding IoU reward with options bound, as a named, picklable callable.

    With `squared=True` the reward is $\mathrm{IoU}^2$, as in Perception-R1's released `pr1_grounding` reward
    (the paper says IoU; squaring shrinks the signal for poor boxes). Everything else is as in `iou_reward`.

    Args:
        squared (`bool`): return IoU².
        name (`str`, *optional*): the reward's `__name__` (TRL's column name); default `"iou_reward"` or
            `"iou_squared_reward"`.

    Example:
    ```python
    >>> from trl_perception.rewards import make_iou_reward

    >>> reward = make_iou_reward(squared=True)
    >>> reward.__name__, reward(["[0, 0, 10, 5]"], [[0, 0, 10, 10]])
    ('iou_squared_reward', [0.25])

    ```
    """
    return _IoUReward(squared=squared, name=name)


_REF_START, _REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
_BOX_START, _BOX_END = "<|box_start|>", "<|box_end|>"
_MIDDLE = _REF_END + _BOX_START
_TRAILING_TOKENS = ("<|im_end|>", "<|endoftext|>")


def is_grounding_format(text: str) -> bool:
    r"""Whether `text` is Perception-R1's grounding answer: what `re.fullmatch` of
    `<\|object_ref_start\|>.*?<\|object_ref_end\|><\|box_start\|>.*?<\|box_end\|>(?:<\|im_end\|>|<\|endoftext\|>|\s)*`
    accepts (its pipes escaped), decided in linear time: the two lazy `.*?` of that pattern made the regex
    quadratic (135 s on 1 MB of repeated openers).

    The text, without its trailing `<|im_end|>` / `<|endoftext|>` / whitespace, must start with the
    reference opener, end with `<|box_end|>`, contain `<|object_ref_end|><|box_start|>` between them, and
    hold no newline (`.` does not match one).

    Example:
    ```python
    >>> is_grounding_format("<|object_ref_start|>man<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|>")
    True
    >>> is_grounding_format("<|object_ref_start|>man<|object_ref_end|> (1,2),(3,4)")
    False

    ```
    """
    end = len(text)
    while end:
        if text[end - 1].isspace():
            end -= 1
        elif text.endswith(_TRAILING_TOKENS[0], 0, end):
            end -= len(_TRAILING_TOKENS[0])
        elif text.endswith(_TRAILING_TOKENS[1], 0, end):
            end -= len(_TRAILING_TOKENS[1])
        else:
            break
    body_start, body_end = len(_REF_START), end - len(_BOX_END)
    return (
        text.startswith(_REF_START)
        and text.endswith(_BOX_END, 0, end)
        and body_start <= body_end
        and text.find(_MIDDLE, body_start, body_end) >= 0
        and text.find("\n", 0, end) < 0
    )


def grounding_format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    r"""
    Perception-R1's grounding format reward with its regex fixed: 1.0 when the completion is
    `<|object_ref_start|>…<|object_ref_end|><|box_start|>…<|box_end|>`, else 0.0.

    The released check is `re.match` of the same pattern with unescaped `|`, an alternation that accepts any
    text starting with `<` (and rejects prose); here the pipes are escaped and the whole completion must match.
    `<|im_end|>` is optional (TRL decodes with `skip_special_tokens=True`, so it is usually absent) and
    trailing `<|im_end|>` / `<|endoftext|>` padding and whitespace are allowed. Note that the Qwen2-VL box
    tokens are special tokens too: the check can only pass when completions are decoded with
    `skip_special_tokens=False`, as Perception-R1 does for grounding. With thinking,
    `<think>…</think><answer>…</answer>`, the answer inside the tags is judged. The check runs in linear time
    (`is_grounding_format`). Rows whose `task` is not grounding get `None`.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        **kwargs: ignored except `task`.

    Example:
    ```python
    >>> from trl_perception.rewards import grounding_format_reward

    >>> grounding_format_reward([
    ...     "<|object_ref_start|>man<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|><|im_end|>",
    ...     "<garbage no box",
    ...     "I cannot find it.",
    ... ])
    [1.0, 0.0, 0.0]

    ```
    """
    rows, n = select_rows("grounding_format_reward", _TASKS, completions, None, kwargs)
    rewards: list[float | None] = [None] * n
    for row in rows:
        text = row.text
        if any(tag in text for tag in (_ANSWER_OPEN, _ANSWER_CLOSE, "<think>", "</think>")):
            text = answer_text(text)  # `<think>…</think><answer>…</answer>`: the answer is judged
        rewards[row.index] = 1.0 if is_grounding_format(text) else 0.0
    return rewards
