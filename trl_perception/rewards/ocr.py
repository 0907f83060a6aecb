"""OCR reward: one minus the normalised character edit distance (Levenshtein) between prediction and text."""

from __future__ import annotations

from typing import Any

import Levenshtein

from .._json import unquote_text
from ..formats import answer_text, strip_thinking
from ._common import (
    ComponentLog,
    MalformedSolution,
    Row,
    SolutionCache,
    call_safely,
    remove_padding,
    select_rows,
)

__all__ = ["normalize_whitespace", "ocr_reward"]

_TASKS = ("ocr",)
_NAME = "ocr_reward"


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends.

    Example:
    ```python
    >>> normalize_whitespace("  Hello,\\n\\n  world\\t! ")
    'Hello, world !'

    ```
    """
    return " ".join(text.split())


def _ocr_target(solution: Any) -> str:
    if isinstance(solution, (bytes, bytearray)):
        solution = solution.decode("utf-8", errors="replace")
    if not isinstance(solution, str):
        raise MalformedSolution(f"OCR solution must be text, got {type(solution).__name__}")
    # Mixed-task datasets store solutions as JSON strings: '"page text"' decodes to the text.
    return unquote_text(solution)


def _ocr_text(solution: Any) -> str:
    return normalize_whitespace(_ocr_target(solution))


def _score(row: Row, gt: str) -> tuple[float, float]:
    if strip_thinking(remove_padding(row.text)) is None:
        return 0.0, 1.0  # thinking and no answer: not the answer "" (a blank page)
    pred = normalize_whitespace(answer_text(row.text))
    longest = max(len(pred), len(gt))
    if longest == 0:
        return 1.0, 0.0
    distance = Levenshtein.distance(pred, gt)
    normalized = distance / longest
    return min(max(1.0 - normalized, 0.0), 1.0), normalized


def ocr_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    Reward for OCR: one minus the character edit distance normalised by the longer string.

    $$ r = 1 - \frac{\operatorname{Levenshtein}(\hat t, t)}{\max(|\hat t|, |t|)} \in [0, 1] $$

    Both texts are whitespace-normalised first (runs collapsed to one space, ends stripped) and padding
    tokens (`<|im_end|>`, `<|endoftext|>`) are removed from the completion; with answer tags
    (`<think>…</think><answer>…</answer>`) only the text inside the last `<answer>` is read; thinking is never
    read, and a completion that only thinks scores 0.0. Two empty texts score 1.0. This
    is the per-page edit-distance metric of Perception-R1's OCR evaluation turned into a reward (the paper's
    OCR reward was never released; MMR1's `perpo_ocr_edit_distance_reward` has the same form). The distance
    comes from the `Levenshtein` package (C, character level). A solution that is not text gives `None`
    with a logged warning.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        solution (`list[str]`): the page text (a JSON string literal is decoded).
        **kwargs: `task` (rows of another task get `None`); `log_metric` / `log_extra` receive
            `ocr_reward/edit_distance`. Others are ignored.

    Returns:
        `list[float | None]`: one reward per completion.

    Example:
    ```python
    >>> from trl_perception.rewards import ocr_reward

    >>> ocr_reward(["Hello  world<|im_end|>", "Hello", ""], ["Hello world", "Hello world", ""])
    [1.0, 0.4545454545454546, 1.0]

    ```
    """
    rows, n = select_rows(_NAME, _TASKS, completions, solution, kwargs)
    rewards: list[float | None] = [None] * n
    log = ComponentLog(_NAME, n, ("edit_distance",))
    targets = SolutionCache(_ocr_text)
    for row in rows:
        result = call_safely(_NAME, row, lambda r: _score(r, targets(r.solution)), failure=(0.0, 1.0))
        if result is None:
            continue
        rewards[row.index], distance = result
        log.set(row.index, edit_distance=distance)
    log.emit(kwargs)
    return rewards
