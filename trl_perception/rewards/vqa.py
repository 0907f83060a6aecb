"""VQA answer rewards (the "look again" task, after MGPO): 1 for the right final answer, else 0 — a letter of
the options, a number, or a short text — read from the last turn of a (multi-turn) completion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._json import unquote_text
from ..formats import (
    CHOICE_LETTERS,
    normalize_answer,
    parse_choice,
    parse_number,
    vqa_answer_body,
)
from ._common import ComponentLog, MalformedSolution, call_safely, select_rows

__all__ = ["VQA_MODES", "VQAReward", "make_vqa_reward", "vqa_answer", "vqa_reward"]

_TASKS = ("vqa", "text")  # text-only rows (a text stage, as LMM-R1's first) are judged as short answers
VQA_MODES: tuple[str, ...] = ("auto", "choice", "number", "text")
"""How an answer is compared: `"choice"` (the option letter), `"number"` (numerically), `"text"` (normalised
exact match), or `"auto"`: choice when the row has options (or the solution is one upper-case letter), number
when the solution is a number, text otherwise."""


def _solution_text(solution: Any) -> str:
    if isinstance(solution, (bytes, bytearray)):
        solution = solution.decode("utf-8", errors="replace")
    if isinstance(solution, (int, float, np.integer, np.floating)) and not isinstance(solution, bool):
        return str(solution)
    if not isinstance(solution, str):
        raise MalformedSolution(f"a VQA solution must be text, got {type(solution).__name__}")
    text = unquote_text(solution).strip()
    if not text:
        raise MalformedSolution("a VQA solution is empty")
    return text


def _options(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value] or None
    return None


def _mode(mode: str, truth: str, options: list[str] | None) -> str:
    if mode != "auto":
        return mode
    if options or (len(truth) == 1 and truth in CHOICE_LETTERS):
        return "choice"
    return "number" if parse_number(truth) is not None else "text"


def _score(completion: Any, truth: str, options: list[str] | None, mode: str) -> tuple[float, float]:
    """`(reward, parse_failure)` of one completion."""
    mode = _mode(mode, truth, options)
    if mode == "choice":
        letter = truth.strip("() .").upper()
        if len(letter) != 1 or letter not in CHOICE_LETTERS:
            if options:  # the solution names the option's text
                hits = [i for i, o in enumerate(options) if normalize_answer(o) == normalize_answer(truth)]
                if len(hits) != 1:
                    raise MalformedSolution(f"VQA solution {truth[:40]!r} is no letter of the options")
                letter = CHOICE_LETTERS[hits[0]]
            else:
                raise MalformedSolution(f"a multiple-choice solution must be a letter, got {truth[:40]!r}")
        if options and CHOICE_LETTERS.index(letter) >= len(options):
            raise MalformedSolution(f"solution {letter!r} is no letter of the {len(options)} options")
        picked = parse_choice(completion, options)
        return float(picked == letter), float(picked is None)
    if mode == "number":
        target = parse_number(truth)
        if target is None:
            raise MalformedSolution(f"a numeric VQA solution must be a number, got {truth[:40]!r}")
        value = parse_number(completion)
        if value is None:
            return 0.0, 1.0
        return float(abs(value - target) <= 1e-6 * max(1.0, abs(target))), 0.0
    body = vqa_answer_body(completion)
    if not body:
        return 0.0, 1.0
    return float(normalize_answer(body) == normalize_answer(truth)), 0.0


def vqa_answer(
    completion: Any, solution: Any, options: Sequence[str] | None = None, mode: str = "auto"
) -> tuple[str | None, bool]:
    r"""`(prediction, correct)` of one VQA completion, judged exactly as `make_vqa_reward(mode)` judges it: the
    option letter, number or normalised text read from the final turn (`None` when none can be read), and
    whether it matches `solution`. A malformed solution raises `ValueError`.

    Example:
    ```python
    >>> vqa_answer("I see it now. \\boxed{(C)}", "C", ["a", "b", "c", "d"])
    ('C', True)
    >>> vqa_answer("A, B, C or D", "C", ["a", "b", "c", "d"])
    (None, False)

    ```
    """
    if mode not in VQA_MODES:
        raise ValueError(f"unknown VQA reward mode {mode!r}; expected one of {VQA_MODES}")
    truth = _solution_text(solution)
    options = _options(options)
    reward, failed = _score(completion, truth, options, mode)
    chosen = _mode(mode, truth, options)
    if failed:
        return None, False
    if chosen == "choice":
        prediction: str | None = parse_choice(completion, options)
    elif chosen == "number":
        value = parse_number(completion)
        prediction = None if value is None else f"{value:g}"
    else:
        prediction = normalize_answer(vqa_answer_body(completion))
    return prediction, bool(reward)


class VQAReward:
    """A named, picklable VQA answer reward (see `make_vqa_reward`)."""

    def __init__(self, mode: str = "auto"):
        if mode not in VQA_MODES:
            raise ValueError(f"unknown VQA reward mode {mode!r}; expected one of {VQA_MODES}")
        self.mode = mode
        self.__name__ = "vqa_reward" if mode == "auto" else f"vqa_{mode}_reward"

    def __call__(
        self, completions: list, solution: list, options: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float | None]:
        rows, n = select_rows(self.__name__, _TASKS, completions, solution, kwargs)
        if options is not None and (isinstance(options, (str, bytes)) or len(options) != n):
            raise ValueError(f"{self.__name__}: options must hold one list per completion ({n})")
        rewards: list[float | None] = [None] * n
        log = ComponentLog(self.__name__, n, ("accuracy", "parse_failure"))
        for row in rows:
            row_options = None if options is None else _options(options[row.index])
            result = call_safely(
                self.__name__,
                row,
                lambda r, opts=row_options: _score(
                    completions[r.index], _solution_text(r.solution), opts, self.mode
                ),
                failure=(0.0, 1.0),
            )
            if result is None:
                continue
            rewards[row.index], failed = result
            log.set(row.index, accuracy=result[0], parse_failure=failed)
        log.emit(kwargs)
        return rewards

    def __repr__(self) -> str:
        return f"VQAReward(mode={self.mode!r})"


def make_vqa_reward(mode: str = "auto") -> VQAReward:
    r"""
    Reward for VQA answers (MGPO's accuracy reward): 1.0 when the final answer equals the solution, else 0.0.

    Only the **final turn** counts (`formats.final_turn_text`): with crop turns TRL passes the whole
    conversation, `[assistant (box / tool call), tool (the crop), assistant (answer)]`, and the answer is the
    last assistant message; a conversation that ends on the tool message (the answer was cut off) earns 0.
    In that turn the answer is the content of the last `\boxed{}`, else the text in the last `<answer>`, else
    the whole turn, without a leading "Answer:" / "The answer is" (`formats.vqa_answer_body`). Then by `mode`
    (`VQA_MODES`):

    - `"choice"`: `formats.parse_choice` must read exactly one option letter (`B`, `(B)`, `B.`, `B) red`,
      or the option's own text) equal to the solution's. Listing several letters (`A B C D`, `A or B`) reads
      none and earns 0, so guessing everything never pays; always answering "A" earns chance.
    - `"number"`: the answer must be one number (`1,000`, `-2.5`) equal to the solution up to 1e-6 relative.
    - `"text"`: lower-cased, whitespace-collapsed, edge punctuation and a leading article dropped, equal.
    - `"auto"` (default): choice when the row has `options` (or the solution is one capital letter), number
      when the solution is a number, else text.

    Linear in the completion's length; never raises on model output. `None` for rows of another task and
    for malformed solutions (logged).

    Args:
        mode (`str`): one of `VQA_MODES`.

    Returns:
        `VQAReward`: `reward(completions, solution, options=None, **kwargs) -> list[float | None]`; `options` is
        the dataset column (one list per completion); `log_metric` / `log_extra` receive
        `<name>/{accuracy,parse_failure}`.

    Example:
    ```python
    >>> reward = make_vqa_reward("number")
    >>> reward(["\\boxed{1,000}", "about 1000 or 2000"], ["1000", "1000"])
    [1.0, 0.0]

    ```
    """
    return VQAReward(mode)


_AUTO = VQAReward("auto")


def vqa_reward(
    completions: list, solution: list, options: Sequence[Any] | None = None, **kwargs: Any
) -> list[float | None]:
    r"""
    VQA answer reward in `"auto"` mode: 1.0 for the right final answer (an option letter, a number or a short
    text), else 0.0; see `make_vqa_reward` for the rules.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational (multi-turn with
            tool turns: the last assistant turn is read).
        solution (`list[str]`): the answers (a letter for multiple choice).
        options (`list[list[str]]`, *optional*): the `options` column.
        **kwargs: `task` (rows of another task get `None`), `log_metric` / `log_extra`; others ignored.

    Returns:
        `list[float | None]`: one reward per completion.

    Example:
    ```python
    >>> from trl_perception.rewards import vqa_reward
    >>> turns = [{"role": "assistant", "content": '[{"bbox_2d": [10, 10, 60, 60], "label": "sign"}]'},
    ...          {"role": "tool", "name": "crop", "content": [{"type": "text", "text": "Here is the crop."}]},
    ...          {"role": "assistant", "content": "The sign reads 058. \\boxed{B}"}]
    >>> options = [["086", "058", "057", "053"]] * 4
    >>> vqa_reward([turns, "\\boxed{A}", "A B C D", "(b) 058"], ["B"] * 4, options=options)
    [1.0, 0.0, 0.0, 1.0]
    >>> vqa_reward(["\\boxed{Red.}", "\\boxed{42}"], ["red", "42.0"])
    [1.0, 1.0]

    ```
    """
    return _AUTO(completions, solution, options=options, **kwargs)
