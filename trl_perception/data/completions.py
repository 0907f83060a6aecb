"""Answers for supervised fine-tuning: each row's ground truth rendered as the assistant's `completion`, in
the model family's format (`box_format`), so that a plain `trl.SFTTrainer` trains on builder rows directly.

What an answer looks like, per task:

| task | answer |
|---|---|
| grounding | the box, in the family's syntax and frame |
| counting | one point per object (`point_2d`, or `<|box_start|>(x,y)<|box_end|>` for Qwen2-VL); a bare count when the row has no points |
| detection | one labelled box per object |
| ocr | the text |

Without a box format, boxes and points are written as Qwen2.5-VL-style JSON (`bbox_2d` / `point_2d`) in
original-image pixels. The order of several objects is `object_order`: as annotated, sorted in reading order
(top to bottom, then left to right), or a new random permutation per row, deterministic for a seed. That
order ambiguity is what Perception-R1's perplexity argument is about: token-level SFT must pick one order,
a matched reward accepts all of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..formats import render_jigsaw_answer, render_objects
from ..frames import TASKS, check_box_format

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["OBJECT_ORDERS", "add_completions", "render_completion"]

OBJECT_ORDERS: tuple[str, ...] = ("annotation", "random", "sorted")
"""How several objects of one answer are ordered: as annotated, a random permutation per row, or reading order."""


def _decoded(solution: Any) -> Any:
    return json.loads(solution) if isinstance(solution, str) and solution[:1] in "[{" else solution


def _objects(task: str, solution: Any) -> list[dict[str, Any]] | None:
    """The answer's objects in original pixels, or `None` when the answer is not a list of objects."""
    if task == "grounding":
        return [{"bbox_2d": [float(v) for v in solution]}]
    if task == "counting":
        points = solution.get("points") if isinstance(solution, dict) else None
        if not points:
            return None
        label = solution.get("label")
        return [{"point_2d": [float(v) for v in p], **({"label": label} if label else {})} for p in points]
    if task == "ovd" and not solution:
        return None  # none of the phrases asked is present
    if task in ("detection", "ovd"):
        return [{"bbox_2d": [float(v) for v in o["bbox_2d"]], "label": o.get("label")} for o in solution or []]
    return None


def _reading_key(obj: dict[str, Any]) -> tuple[float, float]:
    coords = obj.get("bbox_2d") or obj.get("point_2d")
    return (coords[1], coords[0])


def render_completion(
    task: str,
    solution: Any,
    *,
    image_size: Sequence[float] | None = None,
    box_format: str | None = None,
    input_size: Sequence[float] | None = None,
    object_order: str = "annotation",
    rng: np.random.Generator | None = None,
    think: bool = False,
) -> str:
    """The ground truth `solution` of one row as the assistant's answer text.

    Args:
        task (`str`): the row's task.
        solution: the row's ground truth (the row contract's `solution`, native or JSON text), in pixels of an
            image of `image_size = [width, height]`.
        box_format (`str`, *optional*): the model family whose syntax and frame to write; `None` writes JSON
            in original-image pixels.
        input_size (`[width, height]`, *optional*): the processor-resized size, needed by `"qwen2_5_vl"`.
        object_order (`str`): `"annotation"`, `"random"` (needs `rng`) or `"sorted"` (reading order).
        think (`bool`): wrap the answer as `<think>\\n</think>\\n<answer>…</answer>` for prompts that ask for
            R1-style reasoning; no reasoning is invented, the think block is empty.

    Example:
    ```python
    >>> render_completion("grounding", [64, 24, 192, 72], image_size=(640, 480), box_format="qwen3_vl")
    '[{"bbox_2d": [100, 50, 300, 150]}]'
    >>> render_completion("counting", {"count": 2, "points": [[30, 40], [10, 20]]}, image_size=(100, 100),
    ...                   object_order="sorted")
    '[{"point_2d": [10, 20]}, {"point_2d": [30, 40]}]'
    >>> render_completion("ocr", "Hello", think=True)
    '<think>\\n</think>\\n<answer>Hello</answer>'

    ```
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if object_order not in OBJECT_ORDERS:
        raise ValueError(f"unknown object_order {object_order!r}; expected one of {OBJECT_ORDERS}")
    if box_format is not None:
        check_box_format(box_format)
    solution = _decoded(solution)
    objects = _objects(task, solution)
    if objects is None:
        if task == "counting":
            count = solution.get("count") if isinstance(solution, dict) else solution
            answer = str(int(count))
        elif task == "ovd":
            answer = "None"  # what the OVD prompt asks for when nothing is present
        elif task == "jigsaw":  # {"question", "grid": [rows, cols], "answer", ...} as make_jigsaw writes it
            answer = render_jigsaw_answer(solution["answer"], cols=solution["grid"][1])
        elif task == "vqa":  # the answer as the VQA prompts ask for it (and the VQA reward reads it)
            answer = f"\\boxed{{{solution}}}"
        else:
            answer = "" if solution is None else str(solution)
    else:
        if object_order == "sorted":
            objects = sorted(objects, key=_reading_key)
        elif object_order == "random":
            if rng is None:
                raise ValueError("object_order='random' needs rng")
            objects = [objects[i] for i in rng.permutation(len(objects))]
        if image_size is None:
            raise ValueError(f"rendering a {task} answer needs the image size")
        if box_format is None:  # JSON in original pixels: Qwen2.5-VL's syntax with an unresized input
            answer = render_objects(objects, "qwen2_5_vl", image_size, image_size)
        else:
            answer = render_objects(objects, box_format, image_size, input_size)
    return f"<think>\n</think>\n<answer>{answer}</answer>" if think else answer


def add_completions(
    dataset: datasets.Dataset,
    *,
    box_format: str | None = None,
    object_order: str = "annotation",
    seed: int = 0,
    think: bool = False,
) -> datasets.Dataset:
    """`dataset` with a `completion` column: each row's ground truth as the assistant's turn, in TRL's
    conversational prompt-completion form (`[{"role": "assistant", "content": [{"type": "text", "text": ...}]}]`).

    The box format is the row's own `box_format` column when it has one (builders add it), else
    `box_format`; Qwen2.5-VL rows use their `input_size` column. With `object_order="random"` row `i` gets the
    permutation drawn from `numpy.random.default_rng([seed, i])`, so answers depend only on the seed and the
    row. Images are not decoded. With `think=True` (for rows built with `think=True`) each answer is
    `<think>\\n</think>\\n<answer>…</answer>`: an empty thinking block, because no reasoning exists to imitate
    (R1-style SFT data distils it from a reasoning model); it earns `think_answer_format_reward`, and every
    reward scores it as the bare answer.

    Example:
    ```python
    >>> from trl_perception.data import make_synthetic
    >>> rows = add_completions(make_synthetic("detection", 2, seed=0, box_format="qwen3_vl"))
    >>> rows[0]["completion"][0]["content"][0]["text"].startswith('[{"bbox_2d": [')
    True

    ```
    """
    if object_order not in OBJECT_ORDERS:
        raise ValueError(f"unknown object_order {object_order!r}; expected one of {OBJECT_ORDERS}")
    if box_format is not None:
        check_box_format(box_format)
    columns = [c for c in ("task", "solution", "image_size", "box_format", "input_size") if c in dataset.column_names]
    missing = {"task", "solution"} - set(columns)
    if missing:
        raise ValueError(f"add_completions needs the row contract's {sorted(missing)} column(s)")
    table = dataset.with_format(None).select_columns(columns)
    answers = []
    for i, row in enumerate(table):
        row_format = row.get("box_format") or box_format
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, i]) if object_order == "random" else None
        text = render_completion(
            row["task"],
            row["solution"],
            image_size=row.get("image_size"),
            box_format=row_format,
            input_size=row.get("input_size"),
            object_order=object_order,
            rng=rng,
            think=think,
        )
        answers.append([{"role": "assistant", "content": [{"type": "text", "text": text}]}])
    if "completion" in dataset.column_names:
        dataset = dataset.remove_columns("completion")
    return dataset.add_column("completion", answers)
