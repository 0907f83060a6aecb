"""Fitting a dataset to a model's grid: ground truth scaled to the grid size when a dataset is built, and
images resized lazily on access (`GridImageTransform`), so that training and rollouts see the same pixels."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..frames import BOX_FORMATS, TASKS, fit_to_grid, grid_size, pixel_limits
from .errors import RecordError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = [
    "GridImageTransform",
    "box_format_columns",
    "check_box_format_options",
    "check_image_size",
    "finalize",
    "fit_dataset_to_grid",
    "scale_solution",
]


def check_image_size(
    image_size: Sequence[int],
    box_format: str | None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> None:
    """Raise `RecordError("bad image size")` for an image the processor of `box_format`'s models refuses
    (an aspect ratio of 200 or more); nothing without a box format.

    Example:
    ```python
    >>> check_image_size((640, 480), "qwen2_vl")
    >>> check_image_size((4000, 10), "qwen2_vl")
    Traceback (most recent call last):
    ...
    trl_perception.data.errors.RecordError: image of size [4000, 10] cannot be fed to qwen2_vl: absolute aspect ratio must be smaller than 200, got 400.0

    ```
    """
    if box_format is None:
        return
    try:
        grid_size(image_size, box_format, min_pixels, max_pixels)
    except ValueError as err:
        raise RecordError(
            "bad image size", f"image of size {list(image_size)} cannot be fed to {box_format}: {err}"
        ) from None


def _scale_xy(values: Any, sx: float, sy: float, what: str) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) % 2:
        raise ValueError(f"{what} must be a list of x, y coordinates, got {values!r}")
    return [float(v) * (sx if i % 2 == 0 else sy) for i, v in enumerate(values)]


def scale_solution(task: str, solution: Any, sx: float, sy: float) -> Any:
    """Scale a ground truth by `sx` horizontally and `sy` vertically (x at even, y at odd positions).

    Grounding boxes, counting points and detection `bbox_2d` / `point_2d` are scaled; counts, OCR text
    and VQA answers are returned unchanged. JSON-string solutions (mixed-task datasets) come back as JSON strings.

    Example:
    ```python
    >>> scale_solution("grounding", [10, 20, 30, 40], 2.0, 0.5)
    [20.0, 10.0, 60.0, 20.0]
    >>> scale_solution("counting", {"count": 1, "points": [[4, 4]]}, 0.5, 0.5)
    {'count': 1, 'points': [[2.0, 2.0]]}
    >>> scale_solution("detection", '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]', 2, 2)
    '[{"bbox_2d": [0.0, 0.0, 20.0, 20.0], "label": "cat"}]'
    >>> scale_solution("ocr", "text", 2, 2)
    'text'

    ```
    """
    if solution is None or task in ("ocr", "vqa"):
        return solution
    if isinstance(solution, str):
        return json.dumps(scale_solution(task, json.loads(solution), sx, sy), ensure_ascii=False)
    if task == "grounding":
        return _scale_xy(solution, sx, sy, "a grounding box")
    if task == "counting":
        if isinstance(solution, Mapping):
            out = dict(solution)
            if out.get("points") is not None:
                out["points"] = [_scale_xy(p, sx, sy, "a point") for p in out["points"]]
            return out
        return solution
    if task in ("detection", "ovd"):
        scaled = []
        for obj in solution:
            obj = dict(obj)
            for key in ("bbox_2d", "point_2d"):
                if obj.get(key) is not None:
                    obj[key] = _scale_xy(obj[key], sx, sy, key)
            scaled.append(obj)
        return scaled
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


class GridImageTransform:
    """`Dataset.with_transform` function that resizes the `image` column to the model's grid on access.

    Only images are touched; the ground truth was scaled when the dataset was built. Picklable, so it
    survives `shuffle`/`select`, multiprocessing and the trainer. Note that with any transform set,
    `dataset["solution"]` iterates whole rows (decoding images, as `datasets` does for every custom
    format); read metadata with `dataset.select_columns(["solution"])["solution"]` instead.

    Example:
    ```python
    >>> from PIL import Image
    >>> transform = GridImageTransform("qwen2_5_vl", max_pixels=100_000)
    >>> transform({"image": [Image.new("RGB", (640, 480))]})["image"][0].size
    (364, 252)

    ```
    """

    def __init__(self, box_format: str, min_pixels: int | None = None, max_pixels: int | None = None):
        self.box_format, self.min_pixels, self.max_pixels = box_format, min_pixels, max_pixels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "image" in batch:
            batch["image"] = [
                None if image is None else fit_to_grid(image, self.box_format, self.min_pixels, self.max_pixels)
                for image in batch["image"]
            ]
        return batch

    def __repr__(self) -> str:
        return (
            f"GridImageTransform({self.box_format!r}, min_pixels={self.min_pixels}, max_pixels={self.max_pixels})"
        )


def check_box_format_options(box_format: str | None, min_pixels: int | None, max_pixels: int | None) -> bool:
    """Validate builder options; True when images are to be resized to the model's grid.

    Example:
    ```python
    >>> check_box_format_options("qwen2_vl", None, None), check_box_format_options("qwen2_vl", None, 200_000)
    (False, True)
    >>> check_box_format_options(None, None, 200_000)
    Traceback (most recent call last):
    ...
    ValueError: min_pixels/max_pixels resize images to a model's grid: pass box_format= too

    ```
    """
    if box_format is not None and box_format not in BOX_FORMATS:
        raise ValueError(f"unknown box_format {box_format!r}; expected one of {BOX_FORMATS}")
    resize = min_pixels is not None or max_pixels is not None
    if resize and box_format is None:
        raise ValueError("min_pixels/max_pixels resize images to a model's grid: pass box_format= too")
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if box_format is not None:
        pixel_limits(box_format, min_pixels, max_pixels)
    return resize


def box_format_columns(
    task: str,
    solutions: list[Any],
    image_sizes: list[list[int]],
    box_format: str | None,
    min_pixels: int | None,
    max_pixels: int | None,
) -> tuple[list[Any], list[list[int]], dict[str, list]]:
    """Apply the box-format options to built columns: with pixel limits, scale each solution and image
    size to the grid size; with a box format, add the `box_format` and `input_size` columns. Returns
    `(solutions, image_sizes, extra_columns)`.

    Example:
    ```python
    >>> box_format_columns("grounding", [[64.0, 48.0, 320.0, 240.0]], [[640, 480]], "qwen2_5_vl", None, None)
    ([[64.0, 48.0, 320.0, 240.0]], [[640, 480]], {'box_format': ['qwen2_5_vl'], 'input_size': [[644, 476]]})
    >>> box_format_columns("grounding", [[64.0, 48.0, 320.0, 240.0]], [[640, 480]], "qwen2_vl", None, 200_000)[:2]
    ([[50.4, 36.4, 252.0, 182.0]], [[504, 364]])

    ```
    """
    if box_format is None:
        return solutions, image_sizes, {}
    resize = min_pixels is not None or max_pixels is not None
    input_sizes = [list(grid_size(size, box_format, min_pixels, max_pixels)) for size in image_sizes]
    if resize:
        solutions = [
            scale_solution(task, sol, new[0] / size[0], new[1] / size[1])
            for sol, size, new in zip(solutions, image_sizes, input_sizes)
        ]
        image_sizes = [list(s) for s in input_sizes]
    extra = {"box_format": [box_format] * len(solutions), "input_size": input_sizes}
    return solutions, image_sizes, extra


def finalize(
    dataset: datasets.Dataset, box_format: str | None, min_pixels: int | None, max_pixels: int | None
) -> datasets.Dataset:
    """Attach the lazy resize transform when the builder was asked to fit images to a model's grid.

    Example:
    ```python
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"task": ["ocr"]})
    >>> finalize(ds, "qwen2_vl", None, None).format["type"], finalize(ds, "qwen2_vl", None, 10**6).format["type"]
    (None, 'custom')

    ```
    """
    if box_format is not None and (min_pixels is not None or max_pixels is not None):
        return dataset.with_transform(GridImageTransform(box_format, min_pixels, max_pixels))
    return dataset


def fit_dataset_to_grid(
    dataset: datasets.Dataset, box_format: str, min_pixels: int | None = None, max_pixels: int | None = None
) -> datasets.Dataset:
    """Fit any row-contract dataset to the grid of `box_format`'s models: scale `solution` and `image_size` (and a VQA
    `target_box`) to the grid size, set `box_format` / `input_size`, and resize images lazily on access
    (`GridImageTransform`). VQA datasets meant for crop turns should keep their original images instead.

    The same step the builders apply with `max_pixels`/`min_pixels`; no image is decoded here. Applying it
    twice with the same limits changes nothing more.

    Example:
    ```python
    >>> from PIL import Image
    >>> from trl_perception.data.prompts import build_prompt
    >>> from trl_perception.data.rows import rows_to_dataset
    >>> ds = rows_to_dataset([{"prompt": build_prompt("grounding", question="cat"), "image": Image.new("RGB", (640, 480)),
    ...                        "task": "grounding", "solution": [64.0, 48.0, 320.0, 240.0], "image_size": [640, 480]}])
    >>> row = fit_dataset_to_grid(ds, "qwen2_vl", max_pixels=200_000)[0]
    >>> row["image"].size, row["image_size"], row["input_size"], [round(v, 1) for v in row["solution"]]
    ((504, 364), [504, 364], [504, 364], [50.4, 36.4, 252.0, 182.0])

    ```
    """
    from datasets import List, Value

    check_box_format_options(box_format, min_pixels, max_pixels)
    fields = dataset.features
    missing = [c for c in ("task", "solution", "image_size") if c not in fields]
    if missing:
        raise ValueError(f"fit_dataset_to_grid needs the row-contract columns; missing {missing}")
    base = dataset.with_format(None)
    columns = base.select_columns(["task", "solution", "image_size"])[:]
    sizes, solutions = [], []
    for task, sol, size in zip(columns["task"], columns["solution"], columns["image_size"]):
        new = list(grid_size(size, box_format, min_pixels, max_pixels))
        solutions.append(scale_solution(task, sol, new[0] / size[0], new[1] / size[1]))
        sizes.append(new)
    replaced = [c for c in ("solution", "image_size", "box_format", "input_size") if c in fields]
    target_boxes = None
    if "target_box" in fields:  # VQA rows: the region that answers the question, scaled with the image
        old = base.select_columns(["target_box"])["target_box"]
        target_boxes = [
            [] if not box else _scale_xy(box, new[0] / size[0], new[1] / size[1], "a target box")
            for box, size, new in zip(old, columns["image_size"], sizes)
        ]
        replaced.append("target_box")
    out = base.remove_columns(replaced)
    if target_boxes is not None:
        out = out.add_column("target_box", target_boxes, feature=fields["target_box"])
    out = out.add_column("solution", solutions, feature=fields["solution"])
    out = out.add_column("image_size", sizes, feature=List(Value("int64")))
    out = out.add_column("box_format", [box_format] * len(sizes), feature=Value("string"))
    out = out.add_column("input_size", sizes, feature=List(Value("int64")))
    return out.with_transform(GridImageTransform(box_format, min_pixels, max_pixels))
