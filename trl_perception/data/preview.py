"""A picture of a built dataset: rows in a grid, each with its ground truth drawn on the image it will be
trained on, to check a build (boxes in the right place, right frame, right labels) by eye."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..viz import display_text, draw_objects, image_grid

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["caption_for", "render_preview"]

_MAX_CELL = 384


def _prompt_text(prompt: Any) -> str:
    """The text of the last user turn of a conversational prompt (or the prompt itself)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text") or "" for p in content or [] if p.get("type") == "text")
    return ""


def _solution(task: str, solution: Any) -> Any:
    if task != "ocr" and isinstance(solution, str):
        try:
            return json.loads(solution)
        except ValueError:
            return solution
    return solution


def caption_for(row: dict[str, Any], max_chars: int = 160) -> str:
    """A short caption of a row: task, what is asked, and the ground truth in brief.

    Example:
    ```python
    >>> from trl_perception.data.prompts import build_prompt
    >>> caption_for({"task": "grounding", "prompt": build_prompt("grounding", question="left dog"),
    ...              "solution": [1.0, 2.0, 30.5, 40.0], "image_size": [64, 48]})
    'grounding 64x48: Output the bounding box of the left dog in the image. -> [1, 2, 30.5, 40]'
    >>> caption_for({"task": "counting", "prompt": build_prompt("counting", label="cats"),
    ...              "solution": {"count": 3, "points": None}, "image_size": [64, 48]})
    'counting 64x48: Output all the bounding boxes of the cats -> 3'

    ```
    """
    task = row.get("task") or "?"
    solution = _solution(task, row.get("solution"))
    size = row.get("image_size")
    head = f"{task} {size[0]}x{size[1]}" if size else task
    if task in ("detection", "ovd"):
        labels = [o.get("label") for o in solution or [] if isinstance(o, dict)]
        counts: dict[str, int] = {}
        for label in labels:
            counts[str(label)] = counts.get(str(label), 0) + 1
        summary = ", ".join(f"{k}×{v}" if v > 1 else k for k, v in counts.items()) or "no objects"
        text = f"{head}: {len(labels)} objects: {summary}"
    elif task == "ocr":
        text = f"{head}: {' '.join(str(solution).split())}"
    else:
        if task == "grounding" and isinstance(solution, list):
            gt = "[" + ", ".join(f"{v:g}" for v in solution) + "]"
        elif task == "counting" and isinstance(solution, dict):
            gt = str(solution.get("count"))
        else:
            gt = str(solution)
        text = f"{head}: {_prompt_text(row.get('prompt')).split(' Answer with')[0]} -> {gt}"
    return display_text(text, max_chars)


def render_preview(
    dataset: datasets.Dataset, out_path: str | os.PathLike, n: int = 16, ncols: int = 4
) -> str:
    """Render the first `n` rows of `dataset` in a grid of `ncols` columns, ground truth drawn in green on
    each image (boxes, labels, counting points), captioned with the task, the question and the answer;
    write it as an image (PNG unless `out_path`'s extension names another format) and return the path.
    Labels and captions are drawn whatever characters they hold (`viz.display_text`).

    The images are the rows' own (resized to the model's grid when the dataset was built with pixel
    limits), so the drawing shows exactly what training sees. Works with any row-contract dataset,
    including mixed-task datasets with JSON-string solutions.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from trl_perception.data.registry import build_dataset
    >>> ds = build_dataset("detection", "synthetic", num_samples=4, seed=0)
    >>> out = render_preview(ds, pathlib.Path(tempfile.mkdtemp()) / "preview.png", n=4, ncols=2)
    >>> Image.open(out).size[0] > 0
    True

    ```
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    out = Path(out_path)
    if out.suffix and out.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{out}: unknown image extension {out.suffix!r} (e.g. .png, .jpg)")
    rows = dataset.select(range(min(n, len(dataset))))
    pictures, captions = [], []
    for row in rows:
        task = row.get("task") or "?"
        image = row["image"]
        solution = _solution(task, row.get("solution"))
        if task == "grounding":
            gt: Any = [solution] if isinstance(solution, list) and len(solution) == 4 else solution
            gt = (
                [{"bbox_2d": b} for b in gt]
                if isinstance(gt, list) and gt and isinstance(gt[0], list)
                else gt
            )
        elif task in ("counting", "detection", "ovd"):
            gt = solution
        elif task == "vqa" and row.get("target_box"):  # the region that answers the question
            gt = [{"bbox_2d": list(row["target_box"]), "label": "target"}]
        else:
            gt = None
        width = max(2, round(max(image.size) / 200)) if image is not None else 2
        pictures.append(draw_objects(image, gt_objects=gt, width=width) if image is not None else None)
        captions.append(caption_for(row))
    sizes = [p.size for p in pictures if p is not None] or [(64, 64)]
    longest = max(max(s) for s in sizes)
    ratio = min(1.0, _MAX_CELL / longest)
    cell = (
        max(1, math.ceil(max(s[0] for s in sizes) * ratio)),
        max(1, math.ceil(max(s[1] for s in sizes) * ratio)),
    )
    grid = image_grid(pictures, ncols=ncols, captions=captions, cell_size=cell)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format=None if out.suffix else "PNG")
    return str(out)
