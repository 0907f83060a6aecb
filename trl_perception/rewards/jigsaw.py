"""Jigsaw rewards (after Jigsaw-R1): position or connection accuracy of a full answer, exact match of a
number or letter, a strict format reward, and the per-puzzle scores and per-grid summary that evaluation
reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats import JIGSAW_QUESTIONS, parse_jigsaw_choice, parse_jigsaw_grid
from ._common import (
    ComponentLog,
    MalformedSolution,
    SolutionCache,
    call_safely,
    decode_json,
    remove_padding,
    select_rows,
)

__all__ = [
    "JIGSAW_METRICS",
    "JigsawReward",
    "JigsawTarget",
    "connection_accuracy",
    "jigsaw_format_reward",
    "jigsaw_metrics",
    "jigsaw_reward",
    "jigsaw_scores",
    "jigsaw_target",
    "make_jigsaw_reward",
    "position_accuracy",
]

JIGSAW_METRICS: tuple[str, ...] = ("positions", "connections")
_TASKS = ("jigsaw",)
_MAX_CHOICE = 10**6


@dataclass(frozen=True)
class JigsawTarget:
    """A decoded jigsaw solution: the question, the grid, the answer (a tuple of original positions for
    `full`, a number as a string for `single`, an upper-case letter for `pair`/`multiple`), whether
    thinking was asked for, and the number of options of a letter question."""

    question: str
    rows: int
    cols: int
    answer: tuple[int, ...] | str
    think: bool = False
    options: int | None = None

    @property
    def size(self) -> int:
        return self.rows * self.cols


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MalformedSolution(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def jigsaw_target(solution: Any) -> JigsawTarget:
    """Decode a jigsaw `solution` (a dict, or its JSON string, as `make_jigsaw` writes it:
    `{"question", "grid": [rows, cols], "answer", "think"[, "options"]}`); `MalformedSolution` otherwise.

    Example:
    ```python
    >>> jigsaw_target('{"question": "full", "grid": [1, 2], "answer": [2, 1], "think": false}')
    JigsawTarget(question='full', rows=1, cols=2, answer=(2, 1), think=False, options=None)

    ```
    """
    value = decode_json(solution)
    if not isinstance(value, Mapping):
        raise MalformedSolution(f"a jigsaw solution is a dict with question, grid and answer, got {value!r}")
    question = value.get("question", "full")
    if question not in JIGSAW_QUESTIONS:
        raise MalformedSolution(f"jigsaw question must be one of {JIGSAW_QUESTIONS}, got {question!r}")
    grid = value.get("grid")
    if not isinstance(grid, (list, tuple)) or len(grid) != 2:
        raise MalformedSolution(f"jigsaw grid must be [rows, cols], got {grid!r}")
    rows, cols = (_positive_int(v, "jigsaw grid side") for v in grid)
    n = rows * cols
    if n < 2:
        raise MalformedSolution(f"a jigsaw grid has at least 2 patches, got {rows}x{cols}")
    answer = value.get("answer")
    options = value.get("options")
    if question == "full":
        if not isinstance(answer, (list, tuple)) or sorted(answer) != list(range(1, n + 1)):
            raise MalformedSolution(f"a full jigsaw answer is a permutation of 1..{n}, got {answer!r}")
        parsed: tuple[int, ...] | str = tuple(int(v) for v in answer)
    elif question == "single":
        if _positive_int(answer, "single jigsaw answer") > n:
            raise MalformedSolution(f"a single jigsaw answer is in 1..{n}, got {answer!r}")
        parsed = str(int(answer))
    else:
        if not isinstance(answer, str) or len(answer) != 1 or not answer.isalpha():
            raise MalformedSolution(f"a {question} jigsaw answer is one letter, got {answer!r}")
        parsed = answer.upper()
        options = _positive_int(options, "jigsaw options") if options is not None else None
    return JigsawTarget(question, rows, cols, parsed, bool(value.get("think", False)), options)


def position_accuracy(prediction: Iterable[int], truth: Iterable[int]) -> float:
    """Fraction of positions whose predicted original position is right.

    Example:
    ```python
    >>> position_accuracy([2, 1, 3, 4], [2, 1, 4, 3])
    0.5

    ```
    """
    pred, true = np.asarray(list(prediction)), np.asarray(list(truth))
    if pred.shape != true.shape or true.size == 0:
        return 0.0
    return float((pred == true).mean())


def connection_accuracy(prediction: Iterable[int], truth: Iterable[int], rows: int, cols: int) -> float:
    """Fraction of the `2·rows·cols − rows − cols` adjacent pairs of the image reassembled by
    `prediction` that are adjacent the same way (left–right or above–below) in the original.

    Both are permutations of `1..rows·cols` (position `x` of the puzzle holds original patch `value[x-1]`).
    Reassembling with the prediction puts the patch at puzzle position `x` at `prediction[x-1]`, whose
    true original position is `truth[x-1]`; a pair of neighbouring cells is right when their true
    positions are neighbours in the same direction. (Jigsaw-R1's released code applies its formula to
    the answer list read the other way round; the two agree on right answers, not on wrong ones.)

    Example:
    ```python
    >>> connection_accuracy([1, 2, 3, 4], [1, 2, 3, 4], 2, 2)
    1.0
    >>> connection_accuracy([2, 1, 4, 3], [1, 2, 3, 4], 2, 2)  # columns swapped: only vertical pairs hold
    0.5

    ```
    """
    pred = np.asarray(list(prediction), dtype=np.int64) - 1
    true = np.asarray(list(truth), dtype=np.int64) - 1
    n = rows * cols
    if pred.shape != (n,) or true.shape != (n,):
        return 0.0
    placed = np.empty(n, dtype=np.int64)
    placed[pred] = true
    grid = placed.reshape(rows, cols)
    horizontal = (grid[:, 1:] == grid[:, :-1] + 1) & (grid[:, :-1] % cols != cols - 1)
    vertical = grid[1:, :] == grid[:-1, :] + cols
    return float((horizontal.sum() + vertical.sum()) / (2 * n - rows - cols))


def jigsaw_scores(text: Any, target: JigsawTarget) -> dict[str, Any]:
    """Scores of one answer: `exact` (0/1), and for full answers `positions` and `connections` (else
    `None`); `prediction` is the parsed answer (`None` when unreadable). A full answer scores 0 unless it
    is a permutation of `1..rows·cols` (wrong length, repeated or out-of-range indices: 0); a number or
    letter must be the whole answer.

    Example:
    ```python
    >>> target = jigsaw_target({"question": "full", "grid": [2, 2], "answer": [2, 1, 4, 3]})
    >>> jigsaw_scores("2 1\\n3 4", target)
    {'prediction': [2, 1, 3, 4], 'exact': 0.0, 'positions': 0.5, 'connections': 0.25}

    ```
    """
    if target.question == "full":
        prediction = parse_jigsaw_grid(text, target.size)
        if prediction is None or len(set(prediction)) != target.size:
            return {"prediction": prediction, "exact": 0.0, "positions": 0.0, "connections": 0.0}
        return {
            "prediction": prediction,
            "exact": float(tuple(prediction) == target.answer),
            "positions": position_accuracy(prediction, target.answer),
            "connections": connection_accuracy(prediction, target.answer, target.rows, target.cols),
        }
    choice = parse_jigsaw_choice(text)
    if target.question == "single":
        exact = choice is not None and choice.isdigit() and int(choice) == int(target.answer)
    else:
        exact = choice == target.answer
    return {"prediction": choice, "exact": float(exact), "positions": None, "connections": None}


_FAILED: dict[str, Any] = {"prediction": None, "exact": 0.0, "positions": 0.0, "connections": 0.0}


def _cached_targets() -> SolutionCache:
    return SolutionCache(jigsaw_target)


class JigsawReward:
    r"""
    Jigsaw accuracy reward (Jigsaw-R1's accuracy reward) in TRL's signature; see `make_jigsaw_reward`
    for the formulas and why trivial answers earn no more than chance. `jigsaw_reward` is the positions
    instance. Picklable; `__name__` is `jigsaw_reward` or `jigsaw_connections_reward`.

    Example:
    ```python
    >>> from trl_perception.rewards import jigsaw_reward
    >>> solution = '{"question": "full", "grid": [1, 2], "answer": [2, 1], "think": false}'
    >>> jigsaw_reward(["2 1", "1 2", "2 1 1"], [solution] * 3, task=["jigsaw"] * 3)
    [1.0, 0.0, 0.0]
    >>> jigsaw_reward(["2 1"], [None], task=["ocr"])
    [None]

    ```
    """

    def __init__(self, metric: str = "positions"):
        if metric not in JIGSAW_METRICS:
            raise ValueError(f"metric must be one of {JIGSAW_METRICS}, got {metric!r}")
        self.metric = metric
        self.__name__ = "jigsaw_reward" if metric == "positions" else "jigsaw_connections_reward"

    def __call__(self, completions: list, solution: list, **kwargs: Any) -> list[float | None]:
        rows, n = select_rows(self.__name__, _TASKS, completions, solution, kwargs)
        rewards: list[float | None] = [None] * n
        log = ComponentLog(self.__name__, n, ("exact", "parse_failure"))
        targets = _cached_targets()
        for row in rows:
            result = call_safely(
                self.__name__, row, lambda r: jigsaw_scores(r.text, targets(r.solution)), failure=_FAILED
            )
            if result is None:  # malformed solution: skipped with a warning
                continue
            score = result[self.metric] if result[self.metric] is not None else result["exact"]
            rewards[row.index] = float(score)
            log.set(row.index, exact=result["exact"], parse_failure=float(result["prediction"] is None))
        log.emit(kwargs)
        return rewards

    def __repr__(self) -> str:
        return f"JigsawReward(metric={self.metric!r})"


def make_jigsaw_reward(metric: str = "positions") -> JigsawReward:
    r"""
    A jigsaw accuracy reward. A full answer earns, with `metric="positions"`, the fraction of positions
    right ($\frac{1}{N}\sum_x [\hat p_x = p_x]$), or with `metric="connections"` the fraction of the
    $2mn - m - n$ neighbouring pairs of the reassembled image that are neighbours in the original
    (`connection_accuracy`). A `single`, `pair` or `multiple` answer earns 1.0 for the exact number or
    letter, else 0.0. Range [0, 1]; `None` for rows of other tasks and malformed solutions.

    No trivial answer pays beyond chance. The permutation of every puzzle is uniform, so for any *fixed*
    valid answer (the identity, or any other) the expected positions and connections scores equal those
    of guessing a random permutation ($1/N$ for positions); the tests check this exactly on every 2×2
    puzzle. Answers that are not permutations — the wrong length, out-of-range or repeated indices such
    as "1 1 1 1" (which would otherwise collect exactly $1/N$ on every puzzle, with no variance) — score
    0. A letter or number must be the whole answer, so listing every option scores 0; the right
    letter's position is uniform, so always answering "A" earns exactly chance. Rescaling by chance
    (e.g. $(s - 1/N)/(1 - 1/N)$) would change nothing for GRPO's group-normalised advantages, and
    clipping it at 0 to stay in [0, 1] would bias it, so scores are kept as the paper defines them.

    Args:
        metric (`str`): `"positions"` (default, as Jigsaw-R1) or `"connections"`.

    Example:
    ```python
    >>> reward = make_jigsaw_reward("connections")
    >>> solution = {"question": "full", "grid": [2, 2], "answer": [2, 1, 4, 3]}
    >>> reward(["2 1\n4 3", "1 2\n3 4", "1 1 1 1"], [solution] * 3)
    [1.0, 0.5, 0.0]

    ```
    """
    return JigsawReward(metric)


jigsaw_reward = JigsawReward("positions")
"""Jigsaw accuracy reward with the positions metric (see `JigsawReward`)."""


def _think_answer(text: str) -> str | None:
    """The answer inside `<think>…</think> <answer>…</answer>` when that is the whole text (one of each
    tag), else `None`."""
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if not text.startswith("<think>") or not text.endswith("</answer>"):
        return None
    if any(text.count(tag) != 1 for tag in tags):
        return None
    close = text.find("</think>")
    rest = text[close + len("</think>") :].lstrip()
    if not rest.startswith("<answer>"):
        return None
    return rest[len("<answer>") : -len("</answer>")]


def _well_formed(answer: str, target: JigsawTarget) -> bool:
    if target.question == "full":
        values = parse_jigsaw_grid(answer, target.size)
        return values is not None and len(set(values)) == target.size
    choice = parse_jigsaw_choice(answer)
    if choice is None:
        return False
    if target.question == "single":
        return choice.isdigit() and 1 <= int(choice) <= min(target.size, _MAX_CHOICE)
    return choice.isalpha() and (target.options is None or ord(choice) - ord("A") < target.options)


def jigsaw_format_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    r"""
    Jigsaw format reward (Jigsaw-R1's): 1.0 when the completion has the asked-for shape, else 0.0.

    With thinking asked for (the solution's `think`), the whole completion must be
    `<think>…</think><answer>…</answer>` with one of each tag; without, it must be the bare answer. The
    answer must be a permutation of `1..rows·cols` for `full` questions (repeating one index is not a
    well-formed answer), one number in range for `single`, one letter among the options for `pair` and
    `multiple`. Trailing padding tokens are ignored. Range [0, 1]; `None` for rows of other tasks and
    malformed solutions. Jigsaw-R1 weights it 0.5 against 1.0 for accuracy.

    Example:
    ```python
    >>> from trl_perception.rewards import jigsaw_format_reward
    >>> think = {"question": "pair", "grid": [2, 2], "answer": "C", "options": 8, "think": True}
    >>> jigsaw_format_reward(["<think>left</think><answer>B</answer>", "<answer>B</answer>", "B"], [think] * 3)
    [1.0, 0.0, 0.0]
    >>> direct = {"question": "full", "grid": [1, 2], "answer": [2, 1]}
    >>> jigsaw_format_reward(["1 2<|im_end|>", "1 1", "<answer>1 2</answer>"], [direct] * 3)
    [1.0, 0.0, 0.0]

    ```
    """
    name = "jigsaw_format_reward"
    rows, n = select_rows(name, _TASKS, completions, solution, kwargs)
    rewards: list[float | None] = [None] * n
    targets = _cached_targets()

    def score(row: Any) -> float:
        target = targets(row.solution)
        text = remove_padding(row.text).strip()
        if target.think:
            answer = _think_answer(text)
        else:
            answer = None if ("<answer>" in text or "<think>" in text or "</answer>" in text) else text
        return float(answer is not None and _well_formed(answer, target))

    for row in rows:
        if row.solution is None:
            continue
        rewards[row.index] = call_safely(name, row, score, failure=0.0)
    return rewards


def jigsaw_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Evaluation summary per grid size: for each `"{rows}x{cols}"` (and `"all"`), the number of puzzles,
    exact accuracy, and for full answers the mean position and connection accuracy. `records` are dicts
    with `grid` (`[rows, cols]`) and the `jigsaw_scores` keys `exact`, `positions`, `connections`.

    Example:
    ```python
    >>> jigsaw_metrics([{"grid": [2, 2], "exact": 1.0, "positions": 1.0, "connections": 1.0},
    ...                 {"grid": [2, 2], "exact": 0.0, "positions": 0.5, "connections": 0.0}])["2x2"]
    {'n': 2, 'exact': 0.5, 'positions': 0.75, 'connections': 0.5}

    ```
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        rows, cols = record["grid"]
        groups.setdefault(f"{rows}x{cols}", []).append(record)
        groups.setdefault("all", []).append(record)
    summary: dict[str, dict[str, float]] = {}
    for key in sorted(groups, key=lambda k: (k == "all", k)):
        group = groups[key]
        out: dict[str, float] = {"n": len(group), "exact": float(np.mean([r["exact"] for r in group]))}
        for metric in JIGSAW_METRICS:
            values = [r[metric] for r in group if r.get(metric) is not None]
            if values:
                out[metric] = float(np.mean(values))
        summary[key] = out
    return summary
