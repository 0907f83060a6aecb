"""Helpers shared by the test modules: short CPU training runs and fuzzing text built from answer tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

CPU_RUN: dict[str, Any] = dict(
    use_cpu=True, bf16=False, report_to="none", logging_steps=1, save_strategy="no", seed=0
)
"""The settings every test training run shares: on the CPU, in fp32, no reporting, no checkpoints, seed 0."""


def cpu_run_args(config_class: type, output_dir: Any, **settings: Any) -> Any:
    """A `GRPOConfig` (or subclass) for a short CPU run writing to `output_dir`; `settings` give the run's
    size and may override `CPU_RUN`."""
    return config_class(**{"output_dir": str(output_dir), **CPU_RUN, **settings})


def token_soup(tokens: Sequence[str], max_size: int) -> st.SearchStrategy[str]:
    """Text made of up to `max_size` pieces drawn from `tokens` (answer syntax, numbers, hostile values):
    near-valid answers that reach deep into the parsers."""
    return st.lists(st.sampled_from(list(tokens)), max_size=max_size).map("".join)


QWEN2_VL_TOKENS = ("<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>")
"""Qwen2-VL's box and object-reference tokens."""

PUNCTUATION = ("(", ")", ",", "[", "]", "{", "}")
"""The brackets and commas of both answer syntaxes."""

HOSTILE_NUMBERS = ("NaN", "1e309", "-5")
"""Numbers no coordinate may be: not a number, overflowing to infinity, negative."""
