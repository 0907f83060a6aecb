"""Dataset builders: the files users have for RefCOCO/+/g, PixMo-Count, PageOCR and COCO, and synthetic
scenes, turned into rows that `GRPOTrainer` trains on directly (the row contract in the README)."""

from __future__ import annotations

import importlib
from typing import Any

from .prompts import COCO_CATEGORIES, TASK_TEMPLATES, build_prompt

__all__ = [
    "COCO_CATEGORIES",
    "DataError",
    "build_from_source",
    "fit_dataset_to_grid",
    "render_preview",
    "TASK_TEMPLATES",
    "build_coco_detection",
    "build_pageocr",
    "build_pixmo_count",
    "build_prompt",
    "build_refcoco",
    "make_synthetic",
    "add_completions",
    "render_completion",
    "make_jigsaw",
]

# Builders import datasets/PIL; load them on first use so `import trl_perception.data` stays light.
_LAZY = {
    "build_refcoco": "refcoco",
    "build_pixmo_count": "pixmo_count",
    "build_pageocr": "pageocr",
    "build_coco_detection": "coco",
    "make_synthetic": "synthetic",
    "make_jigsaw": "jigsaw",
    "DataError": "common",
    "build_from_source": "common",
    "fit_dataset_to_grid": "common",
    "render_preview": "preview",
    "add_completions": "completions",
    "render_completion": "completions",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
