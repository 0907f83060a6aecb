"""Counting reward: predicted points (or box centres) matched to ground-truth points by the Hungarian
algorithm, as in Perception-R1; exact-count credit when only the count is known."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..formats import parse_count, parse_objects
from ..matching import check_matching, match_points
from ._common import (
    ComponentLog,
    MalformedSolution,
    Row,
    SolutionCache,
    call_safely,
    decode_json,
    finite_number,
    gt_points,
    is_empty_answer,
    select_rows,
)

__all__ = ["count_reward", "make_count_reward"]

_TASKS = ("counting",)
_NAME = "count_reward"
DIAGONAL = 1000.0 * math.sqrt(2.0)
"""Distance normaliser: the diagonal of the 0–1000 canvas."""


def _counting_target(solution: Any) -> tuple[int, np.ndarray | None]:
    """`(count, points [N, 2] or None when only the count is known)`."""
    value = decode_json(solution)
    if isinstance(value, np.ndarray) and value.ndim == 0:  # a numpy scalar count
        value = value.item()
    points = None
    if isinstance(value, dict):
        raw_points = value.get("points")
        if isinstance(raw_points, np.ndarray):  # `datasets` may hand the column over as an array
            raw_points = raw_points.tolist()
        if raw_points is not None:
            if not isinstance(raw_points, (list, tuple)):
                raise MalformedSolution(f"counting points must be a list, got {raw_points!r}")
            points = gt_points(raw_points, "counting point")
        if points is not None and len(points):
            return len(points), points
        value = value.get("count", 0 if raw_points is not None else None)
    if value is None:
        raise MalformedSolution("counting solution has neither a count nor points")
    count = finite_number(value, "count")
    if count < 0 or count != int(count):
        raise MalformedSolution(f"count must be a non-negative integer, got {value!r}")
    return int(count), None


def _score(
    row: Row, target: tuple[int, np.ndarray | None], matching: str = "hungarian"
) -> tuple[float, dict[str, float | None]]:
    n_gt, gt_points = target
    parsed = parse_objects(row.text, row.frame.box_format)
    centres = [obj.center for obj in parsed.objects if obj.center is not None]
    if gt_points is None:
        # Count only: the number of objects listed, else a lone integer ("There are 7.").
        n_pred = len(centres) if (centres or parsed.valid) else parse_count(row.text, row.frame.box_format)
        if n_pred is None and is_empty_answer(row.text):
            n_pred = 0
        failed = float(n_pred is None)
        exact = float(n_pred == n_gt)
        ratio = (
            None
            if n_pred is None
            else (1.0 if n_pred == n_gt == 0 else min(n_pred, n_gt) / max(n_pred, n_gt))
        )
        return exact, {
            "count_exact": exact,
            "count_ratio": ratio,
            "mean_distance": None,
            "parse_failure": failed,
        }
    if not centres:
        failed = float(not parsed.valid and not is_empty_answer(row.text))
        return 0.0, {"count_exact": 0.0, "count_ratio": 0.0, "mean_distance": None, "parse_failure": failed}
    frame = row.frame
    pred = frame.to_norm1000(frame.to_pixels(np.asarray(centres, dtype=np.float64)))
    gt = frame.to_norm1000(gt_points)
    _, _, distances = match_points(pred, gt, matching=matching)
    # Each distance is capped at the canvas diagonal so that one far-off point (possible only when no
    # image size is known to clip to) costs its share and no more; the reward never goes negative.
    mean_distance = float(np.minimum(distances, DIAGONAL).mean()) if distances.size else DIAGONAL
    n_pred = len(centres)
    ratio = min(n_pred, n_gt) / max(n_pred, n_gt)
    reward = min(max(ratio * (1.0 - mean_distance / DIAGONAL), 0.0), 1.0)
    components = {
        "count_exact": float(n_pred == n_gt),
        "count_ratio": ratio,
        "mean_distance": mean_distance,
        "parse_failure": 0.0,
    }
    return reward, components


def count_reward(
    completions: list, solution: list, matching: str = "hungarian", **kwargs: Any
) -> list[float | None]:
    r"""
    Reward for counting (Perception-R1's point-matching reward, clipped to [0, 1]).

    Predicted points are the `point_2d` points, or the centres of the boxes, that `formats.parse_objects`
    reads. They are matched one-to-one to the $n_g$ ground-truth points by the Hungarian algorithm on
    Euclidean distance (`matching.match_points`); with $n_p$ predictions and matched distances $d_k$:

    $$ r = \frac{\min(n_p, n_g)}{\max(n_p, n_g)} \left(1 - \frac{\operatorname{mean}_k \min(d_k, D)}{D}\right),
       \qquad D = 1000\sqrt{2} $$

    With `matching="sequential"` the i-th predicted point is paired with the i-th ground-truth point instead
    (Perception-R1's Table 5 ablation "w/o reward matching"), so listing the right points in another order
    costs distance. Distances are measured in the 0–1000 frame of the original image when the `image_size` column is known
    (predictions are first converted from the `box_format` family's frame and clipped to the image), else as
    written. Missed objects and duplicates lower the count ratio. Ground truth:
    `{"count": n, "points": [[x, y], ...]}` in original pixels, or just `n`. With only a count, the reward
    is exact-count credit: 1.0 when the number of objects listed (or a lone integer such as "There are 7.")
    equals `n`, else 0.0; when points are known, a lone integer earns nothing. A count of 0 gives 1.0 to an
    empty answer (`[]`, empty text, `0`, `None`) and 0.0 to anything else. A malformed solution gives `None`
    with a logged warning.

    Args:
        completions (`list[str]` or `list[list[dict]]`): completions, plain or conversational.
        solution (`list`): counting ground truth per completion (native, numpy arrays as `datasets` may hand
            them over, or JSON strings).
        matching (`str`): `"hungarian"` (default) or `"sequential"` (see above).
        **kwargs: `task`, `box_format`, `image_size`, `input_size` columns; `log_metric` / `log_extra`
            receive `count_reward/{count_exact,count_ratio,mean_distance,parse_failure}`. Others ignored.

    Returns:
        `list[float | None]`: one reward per completion.

    Example:
    ```python
    >>> from trl_perception.rewards import count_reward

    >>> gt = {"count": 2, "points": [[10, 10], [50, 50]]}
    >>> count_reward(['[{"point_2d": [10, 10]}, {"point_2d": [50, 50]}]',
    ...               '[{"point_2d": [10, 10]}]',
    ...               '[{"point_2d": [10, 10]}, {"point_2d": [10, 10]}, {"point_2d": [50, 50]}]'], [gt] * 3)
    [1.0, 0.5, 0.6666666666666666]
    >>> count_reward(["There are 3 birds.", "[]"], [3, 0])
    [1.0, 1.0]
    >>> swapped = ['[{"point_2d": [50, 50]}, {"point_2d": [10, 10]}]']
    >>> count_reward(swapped, [gt]), [round(r, 4) for r in count_reward(swapped, [gt], matching="sequential")]
    ([1.0], [0.96])

    ```
    """
    return _count_rewards(_NAME, check_matching(matching), completions, solution, kwargs)


def _count_rewards(
    name: str, matching: str, completions: list, solution: list, kwargs: dict[str, Any]
) -> list[float | None]:
    rows, n = select_rows(name, _TASKS, completions, solution, kwargs)
    rewards: list[float | None] = [None] * n
    log = ComponentLog(name, n, ("count_exact", "count_ratio", "mean_distance", "parse_failure"))
    targets = SolutionCache(_counting_target)
    for row in rows:
        result = call_safely(
            name,
            row,
            lambda r: _score(r, targets(r.solution), matching),
            failure=(0.0, {"parse_failure": 1.0}),
        )
        if result is None:
            continue
        reward, components = result
        rewards[row.index] = reward
        log.set(row.index, **components)
    log.emit(kwargs)
    return rewards


class _CountReward:
    """`count_reward` with its matching bound and a name of its own; a class (not a closure or a
    `functools.partial`) so that it pickles and TRL logs it under its own column."""

    def __init__(self, matching: str = "hungarian", name: str | None = None):
        self.matching = check_matching(matching)
        self.__name__ = name or ("count_reward" if matching == "hungarian" else f"count_{matching}_reward")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(matching={self.matching!r}, name={self.__name__!r})"

    def __call__(self, completions: list, solution: list, **kwargs: Any) -> list[float | None]:
        return _count_rewards(self.__name__, self.matching, completions, solution, kwargs)


def make_count_reward(matching: str = "hungarian", name: str | None = None) -> _CountReward:
    r"""
    `count_reward` with its matching bound, as a named, picklable callable: the registry's `count` factory
    (`get_reward("count", matching="sequential")`) and its `count_sequential` entry.

    Args:
        matching (`str`): `"hungarian"` (default) or `"sequential"`, the i-th predicted point against the i-th
            ground-truth point (Perception-R1's Table 5 ablation "w/o reward matching").
        name (`str`, *optional*): the reward's `__name__`, which TRL logs as its column and which prefixes
            its components (default `count_reward`, or `count_sequential_reward`).

    Example:
    ```python
    >>> from trl_perception.rewards import make_count_reward

    >>> sequential = make_count_reward(matching="sequential")
    >>> gt = {"count": 2, "points": [[0, 0], [0, 100]]}
    >>> sequential.__name__, sequential(['[{"point_2d": [0, 100]}, {"point_2d": [0, 0]}]'], [gt])
    ('count_sequential_reward', [0.9292893218813453])

    ```
    """
    return _CountReward(matching=matching, name=name)
