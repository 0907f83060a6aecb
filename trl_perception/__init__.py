"""trl-perception: GRPO post-training of vision-language models on perception tasks, on top of TRL.

The main entry points are importable from the top level (loaded on first use, so `import trl_perception`
stays light):

- `PerceptionGRPOConfig`, `PerceptionGRPOTrainer`: TRL's GRPO with frames, pixel budgets and metrics.
- `PerceptionSFTConfig`, `PerceptionSFTTrainer`: TRL's SFT with the same pixel limits and model card.
- `iou_reward`, `count_reward`, `ocr_reward`, `detection_reward`, `format_reward`, `get_reward`, `list_rewards`.
- `evaluate`, `PerceptionEvalCallback`: the paper's evaluation protocol.
- `build_refcoco`, `build_pixmo_count`, `build_pageocr`, `build_coco_detection`, `make_synthetic`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_LAZY = {
    "PerceptionGRPOConfig": "trainer",
    "PerceptionGRPOTrainer": "trainer",
    "PerceptionSFTConfig": "trainer",
    "PerceptionSFTTrainer": "trainer",
    "evaluate": "evaluation",
    "PerceptionEvalCallback": "callbacks",
    "iou_reward": "rewards",
    "count_reward": "rewards",
    "ocr_reward": "rewards",
    "detection_reward": "rewards",
    "format_reward": "rewards",
    "grounding_format_reward": "rewards",
    "make_detection_reward": "rewards",
    "get_reward": "rewards",
    "list_rewards": "rewards",
    "register_reward": "rewards",
    "build_refcoco": "data",
    "build_pixmo_count": "data",
    "build_pageocr": "data",
    "build_coco_detection": "data",
    "make_synthetic": "data",
    "build_tiny_vlm": "testing",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
