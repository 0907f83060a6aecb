"""vLLM generation for Qwen-VL prompts: the one place where trl-perception wraps TRL's colocated `vllm.LLM`.

Two things go wrong with TRL 1.16's colocate mode out of the box, and both are fixed here:

- **Image tokens are expanded twice.** TRL tokenizes the prompt with the processor, so each image's
  `<|image_pad|>` is already a full run, then hands those ids and the raw images to `LLM.generate`. vLLM's
  Qwen2-VL / 2.5-VL / 3-VL processing replaces the first `<|image_pad|>` of each image with a full run again
  (one image of 4 tokens becomes 7; a second image's features land inside the first image's run). The
  wrapper collapses each run to the single token vLLM expects. TRL discards the prompt ids vLLM returns, so
  nothing downstream sees the collapsed ids. A prompt whose runs are already single tokens is left alone, so
  the wrapper stays correct if TRL fixes this itself.
- **Pixel limits.** TRL builds `LLM(...)` without `mm_processor_kwargs` or `limit_mm_per_prompt`, so vLLM
  would resize images with the checkpoint's limits, not the trainer's.

Server mode is not affected by the first problem (TRL renders prompts on the server); for the second, start
the server with [`serve_args`].
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "COLOCATE_MAX_NUM_BATCHED_TOKENS",
    "TESTED_TRL_MINORS",
    "CollapsingLLM",
    "collapse_image_runs",
    "colocate_llm",
    "image_runs",
    "limit_mm_per_prompt",
    "mm_processor_kwargs",
    "serve_args",
]

TESTED_TRL_MINORS: tuple[tuple[int, int], ...] = ((1, 16),)
"""TRL minor versions whose private hooks `PerceptionGRPOTrainer` and this module were checked against
(`tests/test_trl_contract.py`); `pyproject.toml` pins `trl` to them."""

COLOCATE_MAX_NUM_BATCHED_TOKENS = 4096
"""The `max_num_batched_tokens` TRL 1.16 hard-codes for colocated vLLM. It is a scheduler budget, not a limit on
one image: vLLM sizes its encoder budget as max(this, the largest image's tokens) and, with chunked prefill,
spreads a long prompt over several steps."""


def image_runs(token_ids: Sequence[int], image_token_id: int) -> list[int]:
    """Lengths of the runs of `image_token_id` in `token_ids`, in order.

    Example:
    ```python
    >>> image_runs([1, 9, 9, 9, 2, 9, 3], image_token_id=9)
    [3, 1]

    ```
    """
    runs: list[int] = []
    previous = None
    for token in token_ids:
        if token == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = token
    return runs


def collapse_image_runs(token_ids: Sequence[int], image_token_id: int) -> list[int]:
    """`token_ids` with each run of `image_token_id` replaced by one token: the prompt form vLLM expands itself.

    Example:
    ```python
    >>> collapse_image_runs([1, 9, 9, 9, 2, 9, 9, 3], image_token_id=9)
    [1, 9, 2, 9, 3]

    ```
    """
    out: list[int] = []
    for token in token_ids:
        token = int(token)
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(token)
    return out


def mm_processor_kwargs(min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """The `mm_processor_kwargs` that make vLLM's Hugging Face processor resize images like the trainer's.

    transformers 5 (our floor) reads `size={"shortest_edge": MIN, "longest_edge": MAX}` for every Qwen-VL family
    (both keys are required: one alone raises); `min_pixels` / `max_pixels` only survive there with a
    FutureWarning, so they are not sent.

    Example:
    ```python
    >>> mm_processor_kwargs(3136, 1003520)
    {'size': {'shortest_edge': 3136, 'longest_edge': 1003520}}

    ```
    """
    lo, hi = int(min_pixels), int(max_pixels)
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {lo} and {hi}")
    return {"size": {"shortest_edge": lo, "longest_edge": hi}}


def limit_mm_per_prompt(max_images: int | None) -> dict[str, int]:
    """vLLM's `limit_mm_per_prompt`: at most `max_images` images (at least 1) and no video, so vLLM's memory
    profiling budgets for what the prompts hold. `None` (unknown, e.g. tool calls that return images without
    an iteration cap) leaves the image limit at vLLM's default.

    Example:
    ```python
    >>> limit_mm_per_prompt(2)
    {'image': 2, 'video': 0}
    >>> limit_mm_per_prompt(None)
    {'video': 0}

    ```
    """
    if max_images is None:
        return {"video": 0}
    return {"image": max(1, int(max_images)), "video": 0}


def serve_args(
    min_pixels: int,
    max_pixels: int,
    *,
    max_images: int | None = 1,
    max_num_batched_tokens: int | None = None,
) -> list[str]:
    """Extra `trl vllm-serve` / `vllm serve` arguments giving a server the same pixels and image limit as the
    trainer (in server mode the server resizes the images and the trainer trusts its token ids).

    Example:
    ```python
    >>> serve_args(3136, 1003520, max_images=1)  # doctest: +NORMALIZE_WHITESPACE
    ['--mm-processor-kwargs', '{"size": {"shortest_edge": 3136, "longest_edge": 1003520}}', '--limit-mm-per-prompt', '{"image": 1, "video": 0}']

    ```
    """
    out = [
        "--mm-processor-kwargs",
        json.dumps(mm_processor_kwargs(min_pixels, max_pixels)),
        "--limit-mm-per-prompt",
        json.dumps(limit_mm_per_prompt(max_images)),
    ]
    if max_num_batched_tokens is not None:
        out += ["--max-num-batched-tokens", str(int(max_num_batched_tokens))]
    return out


def _has_raw_images(prompt: Any) -> bool:
    data = prompt.get("multi_modal_data") if isinstance(prompt, Mapping) else None
    return isinstance(data, Mapping) and data.get("image") is not None


class CollapsingLLM:
    """Wraps a `vllm.LLM` so that `generate` receives each image's `<|image_pad|>` run as one token, which vLLM's
    Qwen-VL prompt update then expands exactly once. Everything else is delegated to the wrapped engine.

    Example:
    ```python
    >>> class Engine:
    ...     def generate(self, prompts, **kwargs):
    ...         return [p["prompt_token_ids"] for p in prompts]
    >>> llm = CollapsingLLM(Engine(), image_token_id=9)
    >>> llm.generate([{"prompt_token_ids": [1, 9, 9, 9, 2], "multi_modal_data": {"image": "img"}}])
    [[1, 9, 2]]

    ```
    """

    def __init__(self, llm: Any, image_token_id: int):
        self.llm = llm
        self.image_token_id = int(image_token_id)

    def generate(self, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        single = isinstance(prompts, Mapping)
        batch = [prompts] if single else list(prompts)
        fixed = [self._collapse(p) for p in batch]
        return self.llm.generate(fixed[0] if single else fixed, *args, **kwargs)

    def _collapse(self, prompt: Any) -> Any:
        if not _has_raw_images(prompt) or "prompt_token_ids" not in prompt:
            return prompt
        ids = prompt["prompt_token_ids"]
        if all(run == 1 for run in image_runs(ids, self.image_token_id)):
            return prompt
        return {**prompt, "prompt_token_ids": collapse_image_runs(ids, self.image_token_id)}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)


@contextlib.contextmanager
def colocate_llm(
    image_token_id: int | None, extra: Mapping[str, Any], overrides: Mapping[str, Any]
) -> Iterator[None]:
    """While TRL's `GRPOTrainer.__init__` builds its colocated `vllm.LLM`, build it with `extra` keyword
    arguments (unless TRL passes them itself) and `overrides` (replacing values TRL hard-codes), and wrap it in
    [`CollapsingLLM`] when the processor has an image token. Patches `trl.generation.vllm_generation.LLM` and
    restores it on exit. Without vLLM installed it does nothing (TRL raises its own clear ImportError).

    Example:
    ```python
    >>> with colocate_llm(9, {"limit_mm_per_prompt": {"image": 1, "video": 0}}, {}):
    ...     pass

    ```
    """
    from trl.generation import vllm_generation

    original = getattr(vllm_generation, "LLM", None)
    if original is None:
        yield
        return

    def build_llm(*args: Any, **kwargs: Any) -> Any:
        for key, value in extra.items():
            kwargs.setdefault(key, value)
        kwargs.update(overrides)
        llm = original(*args, **kwargs)
        return llm if image_token_id is None else CollapsingLLM(llm, image_token_id)

    vllm_generation.LLM = build_llm
    try:
        yield
    finally:
        vllm_generation.LLM = original
