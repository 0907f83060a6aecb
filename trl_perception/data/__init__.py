"""Dataset builders: the files users have for RefCOCO/+/g, PixMo-Count, PageOCR and COCO, and synthetic
scenes, turned into rows that `GRPOTrainer` trains on directly (the row contract in the README).

Importing the package imports each builder module, which registers its builder in `registry.BUILDERS`;
`build_dataset(task, source, **options)` then builds any task. A new builder module registers itself with
`@register_builder("task")` and is imported below."""

from __future__ import annotations

from . import coco, jigsaw, ovd, pageocr, pixmo_count, refcoco, text, vqa  # noqa: F401  (each registers its builder)
from .coco import build_coco_detection
from .completions import add_completions, render_completion
from .errors import DataError, DataWarning
from .jigsaw import make_jigsaw
from .ovd import build_ovd
from .pageocr import build_pageocr
from .pixmo_count import build_pixmo_count
from .prompts import COCO_CATEGORIES, TASK_TEMPLATES, build_prompt
from .refcoco import build_refcoco
from .registry import BUILDERS, build_dataset, register_builder
from .resize import fit_dataset_to_grid
from .synthetic import make_synthetic
from .text import TEXT_TASK, build_text
from .vqa import build_vqa

__all__ = [
    "BUILDERS",
    "COCO_CATEGORIES",
    "DataError",
    "DataWarning",
    "TASK_TEMPLATES",
    "TEXT_TASK",
    "add_completions",
    "build_coco_detection",
    "build_dataset",
    "build_pageocr",
    "build_pixmo_count",
    "build_prompt",
    "build_refcoco",
    "build_text",
    "fit_dataset_to_grid",
    "make_synthetic",
    "register_builder",
    "render_completion",
    "build_ovd",
    "make_jigsaw",
    "build_vqa",
]
