"""`PerceptionGRPOConfig` and `PerceptionGRPOTrainer`: TRL's GRPO trainer with coordinate frames, pixel
budgets, Qwen2-VL box tokens and perception metrics taken care of; `PerceptionSFTConfig` and
`PerceptionSFTTrainer`: TRL's SFT trainer with the same pixel limits and model card. The training loops are TRL's own."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from .callbacks import PerceptionEvalCallback
from .crop import CROP_TOOL_NAME, CropEnvironment, ForcedCrop, crop_pixel_limits, prepare_tool_processor
from .data.errors import RecordError
from .data.images import read_image_size
from .data.resize import scale_solution
from .data.text import TEXT_TASK
from .formats import completion_text, parse_objects, strip_wrappers
from .frames import (
    BOX_FORMATS,
    BOX_TASKS,
    TASKS,
    Frame,
    box_format_of,
    check_box_format,
    default_pixel_limits,
    fit_to_grid,
    grid_size,
    patch_factor,
    resolve_box_format,
)
from .hub import CARD_HYPERPARAMETERS, adapter_summary, write_model_card
from .metrics import CROP_COUNTS, crop_counts, crop_rates
from .vllm import colocate_llm, limit_mm_per_prompt, mm_processor_kwargs, serve_args

__all__ = [
    "PerceptionGRPOConfig",
    "PerceptionGRPOTrainer",
    "PerceptionSFTConfig",
    "PerceptionSFTTrainer",
    "vllm_serve_args",
]

logger = logging.getLogger("trl_perception.trainer")


# Qwen2-VL writes grounding answers with these tokens; TRL decodes with `skip_special_tokens=True`.
_BOX_TOKENS = (
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
)
_CONTROL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


_BOX_FORMAT_FIELD = {
    "help": "Model family whose output syntax and coordinate frame the rewards use: 'qwen2_vl', "
    "'qwen2_5_vl' or 'qwen3_vl'. 'auto' reads it from the model config's model_type.",
    "choices": ["auto", *BOX_FORMATS],
}
_MIN_PIXELS_FIELD = {
    "help": "Smallest image area (pixels) the model sees; set on the processor and handed to vLLM. "
    "None keeps the processor's value."
}
_MAX_PIXELS_FIELD = {
    "help": "Largest image area (pixels) the model sees; set on the processor and handed to vLLM. "
    "None keeps the processor's value."
}


def _check_frame_fields(config: Any, *positive: str) -> None:
    """The checks `box_format`, `min_pixels`, `max_pixels` (and the other `positive` integer fields) share."""
    check_box_format(config.box_format, allow_auto=True)
    for name in ("min_pixels", "max_pixels", *positive):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or int(value) != value or value <= 0):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if config.min_pixels is not None and config.max_pixels is not None and config.min_pixels > config.max_pixels:
        raise ValueError(f"min_pixels ({config.min_pixels}) must not exceed max_pixels ({config.max_pixels})")


@dataclass
class PerceptionGRPOConfig(GRPOConfig):
    r"""
    Configuration of [`PerceptionGRPOTrainer`]: every field of TRL's [`~trl.GRPOConfig`] plus the ones below.

    Parameters:
        > Parameters that control frames and pixels

        box_format (`str`, *optional*, defaults to `"auto"`):
            Model family whose output syntax and coordinate frame the rewards use: `"qwen2_vl"` (box tokens,
            0–1000), `"qwen2_5_vl"` (JSON, absolute pixels of the resized input) or `"qwen3_vl"` (JSON,
            0–1000). `"auto"` reads it from the model config's `model_type` (`qwen2_vl`, `qwen2_5_vl`,
            `qwen3_vl`, `qwen3_vl_moe`), whether the model is passed as a path or as an object.
        min_pixels (`int`, *optional*):
            Smallest image area (in pixels) the model sees. Set on the trainer's copy of the processor and
            handed to vLLM. `None` keeps the processor's value (the checkpoint's).
        max_pixels (`int`, *optional*):
            Largest image area (in pixels) the model sees; same handling as `min_pixels`.
        resize_images (`bool`, *optional*, defaults to `True`):
            Resize every image once, lazily when a row is read, to the size the processor leaves unchanged (on
            the patch grid, within `min_pixels`/`max_pixels`), and scale its `solution` with it. Rollout (HF
            `generate` or vLLM) and training then see the same pixels, whatever limits vLLM applies.
        max_image_tokens (`int`, *optional*):
            Largest number of visual tokens one image may take (resized area / (patch size × merge size)²).
            Checked for every row at start-up. `None` means `vllm_max_model_length - max_completion_length`
            with vLLM in colocate mode when `vllm_max_model_length` is set (vLLM refuses longer prompts), and
            no limit otherwise.
        vllm_max_num_batched_tokens (`int`, *optional*):
            Overrides the `max_num_batched_tokens=4096` that TRL hard-codes for vLLM in colocate mode (a
            scheduler budget: vLLM's encoder budget is max(it, the largest image), so it does not cap one
            image). In server mode it is added to `vllm_serve_args`.

        > Parameters that control decoding

        keep_box_tokens (`bool`, *optional*):
            Keep Qwen2-VL's `<|object_ref_start|>`, `<|object_ref_end|>`, `<|box_start|>`, `<|box_end|>`,
            `<|quad_start|>` and `<|quad_end|>` in decoded completions (TRL decodes with
            `skip_special_tokens=True`, which deletes them, so rewards would never see a box). `None` keeps
            them for the `qwen2_vl` box format only. Other special tokens are still removed.

        > Parameters that control the rollout group

        solution_in_group (`int`, *optional*, defaults to `0`):
            Replace this many rollouts of every GRPO group (the last ones) with the row's ground-truth answer, its
            `completion` column (`data.add_completions` adds it; the GRPO script does when this is set), after ViSurf. The answer is scored by
            the rewards and enters the loss like any rollout, with log-probabilities computed under the current
            policy; with vLLM it has no sampling log-probabilities, so its importance-sampling ratio is exactly 1
            and the off-policy mask compares it with the current policy. Groups whose own samples never earn a
            reward then still have a non-zero advantage. Must be smaller than `num_generations`.

        > Parameters that control crop turns ("look again", after MGPO)

        crop_turns (`int`, *optional*, defaults to `0`):
            Let the model crop the original high-resolution image this many times per rollout before it answers
            (MGPO: 1). The model calls the `crop_image` tool with a box in its family's frame; a
            [`~trl_perception.crop.CropEnvironment`] per rollout crops the row's original (un-resized) image,
            resizes the crop to `crop_min_pixels`/`crop_max_pixels` and shows it in a tool turn, which is masked
            out of the loss (TRL's `tool_mask`). Sets `max_tool_calling_iterations`. Qwen2-VL and Qwen2.5-VL get
            the library's tool-capable chat template (`crop.tool_chat_template`). Rows may carry `target_box`
            (original pixels) for the `crop/mean_iou` and `crop/target_inside` metrics.
        crop_min_pixels (`int`, *optional*):
            Smallest area a crop is resized to; `None` is MGPO's 200,704. Kept within the processor's limits.
        crop_max_pixels (`int`, *optional*):
            Largest area a crop is resized to; `None` is MGPO's 1,003,520. Kept within the processor's limits.
        crop_forced (`bool`, *optional*, defaults to `True`):
            MGPO's fixed two-turn template: a rollout that ends its first turn without calling the tool gets the
            second turn anyway, with the original image and the "could not be cropped (no box was given)" text,
            as MGPO does for a missing or invalid box. Without it, a model that never calls the tool never sees a
            second turn (MGPO reports that models "struggle to autonomously trigger visual grounding during the
            rollout process"). Logged as `crop/forced_rate`.

        > Parameters that control logging

        log_box_images (`bool`, *optional*, defaults to `False`):
            Draw each completion's predicted boxes and points (red) and the ground truth (green) on its image.
            The drawings replace the images of TRL's completions table (wandb / trackio) and are saved as
            `<output_dir>/completions/box_images_<step>/<row>.png`, rows in the order of the completions
            parquet file. Turns `log_completions` on; needs `log_multimodal=True`.
    """

    box_format: str = field(default="auto", metadata=_BOX_FORMAT_FIELD)
    min_pixels: int | None = field(default=None, metadata=_MIN_PIXELS_FIELD)
    max_pixels: int | None = field(default=None, metadata=_MAX_PIXELS_FIELD)
    resize_images: bool = field(
        default=True,
        metadata={
            "help": "Resize each image once (lazily) to the size the processor leaves unchanged and scale its "
            "solution with it, so rollout and training see the same pixels."
        },
    )
    max_image_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Largest number of visual tokens one image may take, checked for every row at start-up. "
            "None: vllm_max_model_length - max_completion_length with vLLM colocate when vllm_max_model_length "
            "is set, no limit otherwise."
        },
    )
    vllm_max_num_batched_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Overrides the max_num_batched_tokens=4096 TRL hard-codes for vLLM colocate (a scheduler "
            "budget, not a cap on one image); added to "
            "vllm_serve_args in server mode."
        },
    )
    keep_box_tokens: bool | None = field(
        default=None,
        metadata={
            "help": "Keep Qwen2-VL's box and object-reference tokens in decoded completions. None: keep them "
            "for the qwen2_vl box format only."
        },
    )
    solution_in_group: int = field(
        default=0,
        metadata={
            "help": "Replace this many rollouts of every GRPO group with the row's ground-truth answer (its "
            "'completion' column), after ViSurf. Must be smaller than num_generations."
        },
    )
    crop_turns: int = field(
        default=0,
        metadata={
            "help": "Crops of the original high-resolution image the model may request per rollout before "
            "answering (MGPO: 1); sets max_tool_calling_iterations."
        },
    )
    crop_min_pixels: int | None = field(
        default=None,
        metadata={"help": "Smallest area a crop is resized to; None is MGPO's 200704 (kept within the processor's)."},
    )
    crop_max_pixels: int | None = field(
        default=None,
        metadata={"help": "Largest area a crop is resized to; None is MGPO's 1003520 (kept within the processor's)."},
    )
    crop_forced: bool = field(
        default=True,
        metadata={
            "help": "MGPO's fixed two-turn template: a rollout that answers without calling the crop tool still "
            "gets the second turn, with the original image."
        },
    )
    log_box_images: bool = field(
        default=False,
        metadata={
            "help": "Draw predicted (red) and ground-truth (green) boxes on each completion's image in the "
            "completions table and save them under <output_dir>/completions. Turns log_completions on."
        },
    )

    def __post_init__(self):
        _check_frame_fields(
            self, "max_image_tokens", "vllm_max_num_batched_tokens", "crop_min_pixels", "crop_max_pixels"
        )
        turns = self.crop_turns
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 0:
            raise ValueError(f"crop_turns must be a non-negative integer, got {turns!r}")
        if turns:
            crop_pixel_limits(self.crop_min_pixels, self.crop_max_pixels)  # raises for min > max
            if self.max_tool_calling_iterations is None:
                self.max_tool_calling_iterations = turns
            elif self.max_tool_calling_iterations != turns:
                raise ValueError(
                    f"crop_turns={turns} sets max_tool_calling_iterations, but it is set to "
                    f"{self.max_tool_calling_iterations}; leave it unset or equal"
                )
        if self.log_box_images:
            if not self.log_multimodal:
                raise ValueError("log_box_images draws on the logged images: it needs log_multimodal=True")
            self.log_completions = True
        super().__post_init__()
        k = self.solution_in_group
        if isinstance(k, bool) or int(k) != k or not 0 <= k < self.num_generations:
            raise ValueError(
                f"solution_in_group must be an integer in [0, num_generations) = [0, {self.num_generations}), "
                f"got {k!r}: at least one rollout of each group must be the model's own"
            )


def vllm_serve_args(args: PerceptionGRPOConfig, box_format: str | None = None) -> list[str]:
    """Extra arguments for `trl vllm-serve` (or `vllm serve`) so that a vLLM server preprocesses images with
    the trainer's pixel limits (`--mm-processor-kwargs '{"size": {"shortest_edge": ..., "longest_edge": ...}}'`),
    one image per prompt and no video (`--limit-mm-per-prompt`), plus `--max-num-batched-tokens` when
    `vllm_max_num_batched_tokens` is set.

    Limits come from `args`; a limit left `None` there is the checkpoint default of `box_format` (or of
    `args.box_format`). [`PerceptionGRPOTrainer.vllm_serve_args`] gives the arguments for the limits the
    trainer actually resolved from its processor.

    Example:
    ```python
    >>> args = PerceptionGRPOConfig("out", max_pixels=1003520, use_cpu=True, report_to="none")
    >>> vllm_serve_args(args, box_format="qwen2_5_vl")[:2]
    ['--mm-processor-kwargs', '{"size": {"shortest_edge": 3136, "longest_edge": 1003520}}']

    ```
    """
    family = box_format if box_format is not None else (args.box_format if args.box_format in BOX_FORMATS else None)
    lo, hi = args.min_pixels, args.max_pixels
    if lo is None or hi is None:
        if family is None:
            raise ValueError(
                "vllm_serve_args needs min_pixels and max_pixels in the config, or a box_format whose checkpoint "
                "defaults fill the missing ones"
            )
        default_lo, default_hi = default_pixel_limits(family)
        lo = default_lo if lo is None else lo
        hi = default_hi if hi is None else hi
    return serve_args(int(lo), int(hi), max_num_batched_tokens=args.vllm_max_num_batched_tokens)


class _DecodeKeepingTokens:
    """`batch_decode` that drops special tokens itself, except `keep`, when asked to skip special tokens."""

    def __init__(self, decode: Callable[..., list[str]], drop_ids: frozenset[int]):
        self.decode = decode
        self.drop_ids = drop_ids

    def __call__(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        if not skip_special_tokens:
            return self.decode(sequences, skip_special_tokens=False, **kwargs)
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        kept = [[t for t in seq if t not in self.drop_ids] for seq in sequences]
        return self.decode(kept, skip_special_tokens=False, **kwargs)


def _size_pair(value: Any) -> tuple[int, int] | None:
    """A valid `[width, height]` as ints, else `None`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    try:
        w, h = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        return None
    return int(round(w)), int(round(h))


class PerceptionRowTransform:
    """Dataset transform that makes each row frame-aware for the rewards, lazily when the row is read.

    Per row: the image (or every image of `images`) is resized once to the size the processor leaves
    unchanged (when `resize`), the `solution` is scaled with it (from the declared `image_size`, the frame
    the ground truth is in), and `image_size`, `input_size` (what the model sees) and `box_format` are set.
    A transform the dataset already had (e.g. a builder's grid transform) runs first. Multi-image rows scale
    the solution with their first image. Picklable, so dataloader workers can use it.

    Example:
    ```python
    >>> from PIL import Image
    >>> rows = PerceptionRowTransform("qwen2_5_vl", "qwen2_5_vl", 3136, 112 * 112)
    >>> out = rows({"image": [Image.new("RGB", (300, 170))], "task": ["grounding"],
    ...             "solution": [[30, 17, 150, 85]], "image_size": [[300, 170]]})
    >>> out["image"][0].size, out["image_size"], out["input_size"], out["box_format"]
    ((140, 84), [[140, 84]], [[140, 84]], ['qwen2_5_vl'])
    >>> [round(v, 1) for v in out["solution"][0]]
    [14.0, 8.4, 70.0, 42.0]

    ```
    """

    def __init__(
        self,
        box_format: str,
        model_box_format: str,
        min_pixels: int,
        max_pixels: int,
        resize: bool = True,
        inner: Callable[[dict], dict] | None = None,
        keep_original: bool = False,
    ):
        self.keep_original = bool(keep_original)  # crop turns crop the un-resized image
        self.box_format = box_format
        self.model_box_format = model_box_format  # the model's own family: its processor's grid
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.resize = bool(resize)
        self.inner = inner

    def grid_size(self, image_size: Sequence[int]) -> tuple[int, int]:
        """`(width, height)` the processor feeds an image of `image_size` at."""
        return grid_size(image_size, self.model_box_format, self.min_pixels, self.max_pixels)

    def _fit(self, image: Any) -> Any:
        return fit_to_grid(image, self.model_box_format, self.min_pixels, self.max_pixels)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.inner is not None:
            batch = self.inner(batch)
        batch = dict(batch)
        n = len(next(iter(batch.values()))) if batch else 0
        key = "images" if "images" in batch else "image" if "image" in batch else None
        tasks = batch.get("task") or [None] * n
        solutions = batch.get("solution")
        declared = batch.get("image_size") or [None] * n
        images_out, sizes_out, inputs_out, originals_out = [], [], [], []
        solutions_out = list(solutions) if solutions is not None else None
        for i in range(n):
            value = batch[key][i] if key is not None else None
            images = list(value) if key == "images" and value is not None else [value]
            first = images[0] if images else None
            originals_out.append(first)
            if first is None or not hasattr(first, "size"):
                images_out.append(value)
                sizes_out.append(_size_pair(declared[i]) and list(_size_pair(declared[i])))
                inputs_out.append(None)
                continue
            frame = _size_pair(declared[i]) or tuple(first.size)
            if self.resize:
                images = [self._fit(im) if im is not None and hasattr(im, "size") else im for im in images]
                target = tuple(images[0].size)
                if solutions_out is not None and target != frame:
                    solutions_out[i] = self._scale(tasks[i], solutions_out[i], frame, target)
                frame = target
            else:
                target = self.grid_size(first.size)
            images_out.append(images if key == "images" else images[0])
            sizes_out.append([int(frame[0]), int(frame[1])])
            inputs_out.append([int(target[0]), int(target[1])])
        if key is not None:
            batch[key] = images_out
        batch["image_size"] = sizes_out
        batch["input_size"] = inputs_out
        batch["box_format"] = [self.box_format] * n
        if self.keep_original:
            batch["original_image"] = originals_out
        if solutions_out is not None:
            batch["solution"] = solutions_out
        return batch

    @staticmethod
    def _scale(task: Any, solution: Any, frame: tuple[int, int], target: tuple[int, int]) -> Any:
        if solution is None or task in ("ocr", "jigsaw"):  # no coordinates to scale
            return solution
        if task not in TASKS:
            raise ValueError(
                f"cannot scale the solution of a row with task {task!r} to its resized image; the row "
                f"contract's task is one of {TASKS}"
            )
        return scale_solution(task, solution, target[0] / frame[0], target[1] / frame[1])

    def __repr__(self) -> str:
        return (
            f"PerceptionRowTransform({self.box_format!r}, model_box_format={self.model_box_format!r}, min_pixels="
            f"{self.min_pixels}, max_pixels={self.max_pixels}, resize={self.resize}"
            + (", keep_original=True)" if self.keep_original else ")")
        )


class PerceptionGRPOTrainer(GRPOTrainer):
    """TRL's [`~trl.GRPOTrainer`] for perception tasks (grounding, counting, OCR, detection) on Qwen2-VL,
    Qwen2.5-VL and Qwen3-VL, correct by construction about frames and pixels.

    Everything is TRL's: the loop, losses, generation (transformers or vLLM), PEFT/QLoRA, distributed
    training, checkpoints. On top of it:

    - **Frames.** Every reward receives, per row, `box_format` (the model family), `image_size` (the image
      the ground truth is in, after the one-time resize) and `input_size` (what the model sees), so
      frame-aware rewards score a box in the frame the model wrote it in.
    - **Pixels.** The processor's `min_pixels`/`max_pixels` come from the config; each image is resized once,
      lazily, to a size the processor leaves unchanged and its ground truth scaled with it, so HF generation,
      vLLM and the training forward pass see the same pixels. vLLM colocate gets the same limits
      (`mm_processor_kwargs`); for server mode see `vllm_serve_args`.
    - **Qwen2-VL decoding.** Box tokens survive TRL's `skip_special_tokens=True` decoding.
    - **Mixed tasks.** Rows route to their rewards by `task`; `rewards/<reward>/<task>/mean` is logged.
    - **Observability.** `perception/parse_failure_rate`, `perception/empty_answer_rate` and
      `perception/objects_per_completion` every step; with `log_box_images`, boxes drawn on the images.
    - **Start-up checks.** Missing `prompt`/`image`/`solution`/`task` columns, unknown tasks, images without
      pixels and images over the visual-token budget fail at construction, naming the row.

    Args are those of [`~trl.GRPOTrainer`], with `args` a [`PerceptionGRPOConfig`]. The processing class,
    when given, is copied (the caller's object is left alone).

    Example:
    ```python
    >>> import tempfile
    >>> from trl_perception.data import make_synthetic
    >>> from trl_perception.testing import tiny_vlm
    >>> args = PerceptionGRPOConfig(tempfile.mkdtemp(), use_cpu=True, report_to="none", max_steps=1,
    ...     num_generations=2, per_device_train_batch_size=2, max_completion_length=4, max_pixels=56 * 56)
    >>> def length_reward(completions, **kwargs):
    ...     return [float(len(c[0]["content"])) for c in completions]
    >>> trainer = PerceptionGRPOTrainer(tiny_vlm("qwen2_5_vl"), length_reward, args,
    ...                                 train_dataset=make_synthetic("grounding", 4, image_size=(150, 97)))
    >>> row = trainer.train_dataset[0]
    >>> trainer.box_format, row["image"].size, row["input_size"], row["box_format"]
    ('qwen2_5_vl', (56, 28), [56, 28], 'qwen2_5_vl')

    ```
    """

    _tag_names = ["trl", "grpo", "trl-perception"]

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: PerceptionGRPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ):
        if args is None:
            name = (
                model
                if isinstance(model, str)
                else getattr(getattr(model, "config", None), "_name_or_path", "")
            )
            args = PerceptionGRPOConfig(f"{str(name).rstrip('/').split('/')[-1] or 'model'}-PerceptionGRPO")
        elif not isinstance(args, PerceptionGRPOConfig):
            raise TypeError(
                f"PerceptionGRPOTrainer needs a PerceptionGRPOConfig (a GRPOConfig with the perception fields), "
                f"got {type(args).__name__}"
            )
        if args.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True would drop the columns the perception rewards read (solution, task, "
                "image_size, ...); set it to False"
            )

        model_config = _model_config(model, args)
        self.box_format = resolve_box_format(args.box_format, model_config)
        self.model_box_format = box_format_of(model_config) or self.box_format
        processing_class = _prepare_processor(model, model_config, processing_class, args, "PerceptionGRPOTrainer")
        self.min_pixels, self.max_pixels = self._pixel_limits(processing_class)
        self.patch_factor = self._check_patch_factor(processing_class)
        self.max_image_tokens = self._token_budget(args)
        self._budget_from_vllm = args.max_image_tokens is None
        self._resize_images = bool(args.resize_images)
        self._sizes_within_budget: set[tuple[int, int]] = set()
        self._dataset_max_images = 1
        self._uses_vllm = bool(args.use_vllm)
        self._crop_turns = int(args.crop_turns)
        if self._crop_turns:
            kwargs = self._add_crop_environment(processing_class, args, kwargs)
        keep = args.keep_box_tokens if args.keep_box_tokens is not None else self.box_format == "qwen2_vl"
        self._decode_drop_ids = self._drop_ids(processing_class) if keep else None

        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs] if reward_funcs else []
        needs_solution = [getattr(f, "__name__", type(f).__name__) for f in funcs if _takes_solution(f)]
        self._solution_in_group = int(args.solution_in_group)
        self._injected_answers: list[str] | None = None  # this generation batch's answers to inject
        self._injected_rows: list[int] = []
        if self._solution_in_group:
            _require_completion_column(train_dataset)
        train_dataset = self._prepare_dataset(train_dataset, "train_dataset", needs_solution)
        if isinstance(eval_dataset, Mapping):
            eval_dataset = {
                k: self._prepare_dataset(v, f"eval_dataset[{k!r}]", needs_solution)
                for k, v in eval_dataset.items()
            }
        else:
            eval_dataset = self._prepare_dataset(eval_dataset, "eval_dataset", needs_solution)

        self._pending_box_images: list | None = None
        self._max_images_per_prompt = self._image_limit(
            args, kwargs.get("tools") or kwargs.get("environment_factory")
        )
        vllm_patch = contextlib.nullcontext()
        if args.use_vllm and args.vllm_mode == "colocate":
            overrides = {}
            if args.vllm_max_num_batched_tokens is not None:
                overrides["max_num_batched_tokens"] = int(args.vllm_max_num_batched_tokens)
            extra = {
                "mm_processor_kwargs": mm_processor_kwargs(self.min_pixels, self.max_pixels),
                "limit_mm_per_prompt": limit_mm_per_prompt(self._max_images_per_prompt),
            }
            image_token_id = getattr(processing_class, "image_token_id", None)
            vllm_patch = colocate_llm(image_token_id, extra, overrides)
        with vllm_patch:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                **kwargs,
            )
        self._bind_eval_callbacks()
        if self._crop_turns:
            self._suppress_video_tokens()
        if args.use_vllm and args.vllm_mode == "server" and self.accelerator.is_main_process:
            logger.info(
                "vLLM server mode: start the server with these extra arguments so that rollouts see the "
                "trainer's pixels: %s",
                " ".join(self.vllm_serve_args()),
            )

    # ------------------------------------------------------------------------------------------ set-up

    def _add_crop_environment(self, processing_class: Any, args: PerceptionGRPOConfig, kwargs: dict) -> dict:
        """Crop turns: one `CropEnvironment` per rollout through TRL's `environment_factory`, and a chat
        template that can call tools (Qwen2-VL and Qwen2.5-VL ship one that cannot)."""
        if kwargs.get("environment_factory") is not None:
            raise ValueError(
                "crop_turns > 0 provides the environment_factory (a CropEnvironment per rollout); pass either "
                "crop_turns or your own environment_factory"
            )
        prepare_tool_processor(processing_class, self.model_box_format)
        lo, hi = self._pixel_limits(processing_class)
        crop_lo, crop_hi = crop_pixel_limits(args.crop_min_pixels, args.crop_max_pixels, (lo, hi))
        factory = functools.partial(
            CropEnvironment, self.box_format, min_pixels=crop_lo, max_pixels=crop_hi, max_crops=self._crop_turns
        )
        return {**kwargs, "environment_factory": factory}

    def _suppress_video_tokens(self) -> None:
        """With tool images, TRL types every `<|video_pad|>` of the whole sequence, sampled ones included, as a
        video token in the loss pass, and Qwen-VL models then fail for want of a video grid. TRL already keeps
        transformers' generation from sampling the image token; crop turns also keep it from sampling the video
        token (which no answer needs)."""
        video = getattr(self.model.config, "video_token_id", None)
        config = getattr(self, "generation_config", None)
        if video is None or config is None or self.use_vllm:
            return
        suppressed = sorted({*(config.suppress_tokens or []), int(video)})
        config.suppress_tokens = suppressed
        if isinstance(getattr(self, "generation_kwargs", None), dict):
            self.generation_kwargs["suppress_tokens"] = suppressed

    @staticmethod
    def _pixel_limits(processing_class: Any) -> tuple[int, int]:
        lo, hi = _processor_limits(processing_class.image_processor)
        return int(lo), int(hi)

    def _check_patch_factor(self, processing_class: Any) -> int:
        image_processor = processing_class.image_processor
        factor = int(getattr(image_processor, "patch_size", 0) or 0) * int(
            getattr(image_processor, "merge_size", 0) or 0
        )
        expected = patch_factor(self.model_box_format)
        if factor and factor != expected:
            raise ValueError(
                f"the image processor works on a grid of {factor} pixels (patch_size × merge_size) but a "
                f"{self.model_box_format} model uses {expected}; the model and processor do not match"
            )
        return expected

    def _token_budget(self, args: PerceptionGRPOConfig) -> int | None:
        if args.max_image_tokens is not None:
            return int(args.max_image_tokens)
        # `max_num_batched_tokens` does not bound one image (vLLM's encoder budget is max(it, the largest
        # image)); what vLLM does refuse is a prompt over `max_model_len`, which must also hold the completion.
        if args.use_vllm and args.vllm_mode == "colocate" and args.vllm_max_model_length:
            return max(1, int(args.vllm_max_model_length) - int(args.max_completion_length or 0))
        return None

    def _image_limit(self, args: PerceptionGRPOConfig, tools: Any) -> int | None:
        """Most images one vLLM prompt can hold: the dataset's, plus one per tool call when tools may return
        images (`None`, vLLM's default, when the number of tool calls is not capped)."""
        images = max(1, self._dataset_max_images)
        if tools:
            if args.max_tool_calling_iterations is None:
                return None
            images += int(args.max_tool_calling_iterations)
        return images

    @staticmethod
    def _drop_ids(processing_class: Any) -> frozenset[int] | None:
        tokenizer = processing_class.tokenizer
        keep = set()
        for token in _BOX_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                keep.add(token_id)
        if not keep:
            return None
        special = set(tokenizer.all_special_ids)
        special |= {
            i
            for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
            if getattr(tok, "special", False)
        }
        return frozenset(special - keep)

    def vllm_serve_args(self) -> list[str]:
        """Extra `trl vllm-serve` / `vllm serve` arguments carrying this trainer's resolved pixel limits.

        Example: `trl vllm-serve --model Qwen/Qwen2.5-VL-3B-Instruct --mm-processor-kwargs
        '{"min_pixels": 3136, "max_pixels": 1003520}'`.
        """
        return serve_args(
            self.min_pixels,
            self.max_pixels,
            max_images=self._max_images_per_prompt,
            max_num_batched_tokens=self.args.vllm_max_num_batched_tokens,
        )

    # ---------------------------------------------------------------------------------------- datasets

    def _prepare_dataset(self, dataset: Any, name: str, needs_solution: list[str]) -> Any:
        if dataset is None:
            return None
        from datasets import Dataset, IterableDataset

        if self._check_dataset(dataset, name, needs_solution) == "text":
            return dataset  # text-only rows: no image to fit, no coordinates to scale
        if isinstance(dataset, Dataset):
            fmt = dataset.format
            inner = fmt["format_kwargs"].get("transform") if fmt.get("type") == "custom" else None
            transform = PerceptionRowTransform(
                self.box_format,
                self.model_box_format,
                self.min_pixels,
                self.max_pixels,
                self._resize_images,
                inner,
                keep_original=bool(self._crop_turns),
            )
            return dataset.with_transform(transform)
        if isinstance(dataset, IterableDataset):
            transform = PerceptionRowTransform(
                self.box_format,
                self.model_box_format,
                self.min_pixels,
                self.max_pixels,
                self._resize_images,
                keep_original=bool(self._crop_turns),
            )
            return dataset.map(transform, batched=True, batch_size=16)
        raise TypeError(f"{name} must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}")

    def _check_dataset(self, dataset: Any, name: str, needs_solution: list[str]) -> str | None:
        """Start-up checks: fail now, naming the row, rather than train on rows the rewards cannot judge.
        Returns `"text"` for a text-only stage (every row of task `"text"`, no image column)."""
        from datasets import Dataset

        if isinstance(dataset, Dataset):
            columns = list(dataset.column_names)
            raw = dataset.with_format(None)
        else:
            columns = list(dataset.column_names or [])
            raw = None
            if not columns:
                first = next(iter(dataset.take(1)), None)
                columns = list(first) if first else []
        contract = "the row contract: prompt, image (or images), task, solution, image_size"
        if "prompt" not in columns:
            raise ValueError(f"{name} has no 'prompt' column ({contract}); columns: {columns}")
        image_key = "images" if "images" in columns else "image" if "image" in columns else None
        if image_key is None and "task" in columns:
            tasks = set(raw.unique("task")) if raw is not None else {row.get("task") for row in dataset.take(8)}
            if tasks == {TEXT_TASK}:
                return self._check_text_stage(name, needs_solution, columns)
        if image_key is None:
            raise ValueError(f"{name} has no 'image' or 'images' column ({contract}); columns: {columns}")
        if needs_solution and "solution" not in columns:
            raise ValueError(
                f"{name} has no 'solution' column, which the reward(s) {needs_solution} need ({contract})"
            )
        if "solution" in columns and "task" not in columns:
            raise ValueError(
                f"{name} has a 'solution' but no 'task' column: each row's task ({', '.join(TASKS)}) routes it to "
                "its rewards and says how to scale its ground truth"
            )
        if raw is None:  # an IterableDataset: check what a peek at the first rows shows
            rows = list(dataset.take(8))
            self._check_rows(name, image_key, rows, offset=0)
            return None
        if len(raw) == 0:
            raise ValueError(f"{name} is empty")
        first_prompt = raw.select_columns(["prompt"])[0]["prompt"]
        if not _is_conversational(first_prompt):
            raise ValueError(
                f"{name} row 0: prompt must be conversational ([{{'role': 'user', 'content': [{{'type': 'image'}}, "
                f"{{'type': 'text', 'text': ...}}]}}]), got {str(first_prompt)[:120]!r}"
            )
        if "task" in columns:
            tasks = raw.unique("task")
            unknown = [t for t in tasks if t not in TASKS]
            if unknown:
                values = list(raw.select_columns(["task"])["task"])
                row = next(i for i, t in enumerate(values) if t in unknown)
                raise ValueError(f"{name} row {row}: unknown task {values[row]!r}; expected one of {TASKS}")
        if "box_format" in columns:
            formats = [f for f in raw.unique("box_format") if f is not None]
            other = [f for f in formats if f != self.box_format]
            if other:
                raise ValueError(
                    f"{name} was built for box_format {other[0]!r} (its prompts ask for that format) but the trainer "
                    f"uses {self.box_format!r}; rebuild the dataset with box_format={self.box_format!r} or set "
                    f"PerceptionGRPOConfig.box_format={other[0]!r}"
                )
        self._check_images(name, raw, image_key, "image_size" in columns)
        return None

    def _check_text_stage(self, name: str, needs_solution: list[str], columns: list[str]) -> str:
        """A text-only stage (LMM-R1's first stage): rows of task `"text"` without images, scored by a reward
        that reads text answers (`vqa_reward` and its modes); crop turns need an image."""
        if self._crop_turns:
            raise ValueError(f"{name} has text-only rows (task {TEXT_TASK!r}): crop turns need an image")
        if needs_solution and "solution" not in columns:
            raise ValueError(f"{name} has no 'solution' column, which the reward(s) {needs_solution} need")
        return "text"

    def _check_rows(self, name: str, image_key: str, rows: list[dict], offset: int) -> None:
        for i, row in enumerate(rows, start=offset):
            task = row.get("task")
            if "task" in row and task not in TASKS:
                raise ValueError(f"{name} row {i}: unknown task {task!r}; expected one of {TASKS}")
            value = row.get(image_key)
            images = list(value or []) if image_key == "images" else [value]
            if not images or any(im is None for im in images):
                raise ValueError(f"{name} row {i}: no image (the row would train as text only)")
            self._dataset_max_images = max(self._dataset_max_images, len(images))
            for im in images:
                self._check_tokens(name, i, tuple(im.size))

    def _check_images(self, name: str, raw: Any, image_key: str, has_sizes: bool) -> None:
        """Every row has its image(s), and none needs more visual tokens than the budget."""
        from datasets import Image, List
        from datasets import Sequence as DsSequence

        feature = raw.features[image_key]
        inner = getattr(feature, "feature", None)
        header_only = raw
        if isinstance(feature, Image):
            header_only = raw.cast_column(image_key, Image(decode=False))
        elif isinstance(feature, (List, DsSequence)) and isinstance(inner, Image):
            header_only = raw.cast_column(image_key, List(Image(decode=False)))
        table = header_only.with_format("arrow").select_columns(
            [image_key] + (["image_size"] if has_sizes else [])
        )
        offset = 0
        for batch in table.iter(batch_size=4096):
            images = batch.column(image_key)
            missing = _missing_images(
                images.combine_chunks() if hasattr(images, "combine_chunks") else images
            )
            if missing:
                raise ValueError(
                    f"{name} row {offset + missing[0]}: no image (the row would train as text only)"
                )
            if image_key == "images":
                import pyarrow.compute as pc

                lengths = pc.max(pc.list_value_length(images)).as_py()
                self._dataset_max_images = max(self._dataset_max_images, int(lengths or 1))
            if self.max_image_tokens is not None:
                sizes = batch.column("image_size").to_pylist() if has_sizes else None
                values = None if has_sizes else images.to_pylist()
                for j in range(len(batch)):
                    size = _size_pair(sizes[j]) if sizes is not None else None
                    candidates = (
                        [size]
                        if size is not None
                        else _header_sizes(values[j] if values else None, image_key)
                    )
                    for candidate in candidates:
                        self._check_tokens(name, offset + j, candidate)
            offset += len(batch)

    def _check_tokens(self, name: str, row: int, image_size: tuple[int, int] | None) -> None:
        if image_size is None or self.max_image_tokens is None or image_size in self._sizes_within_budget:
            return
        w, h = grid_size(image_size, self.model_box_format, self.min_pixels, self.max_pixels)
        tokens = (w // self.patch_factor) * (h // self.patch_factor)
        if tokens > self.max_image_tokens:
            hint = self.max_image_tokens * self.patch_factor**2
            raise ValueError(
                f"{name} row {row}: its {image_size[0]}x{image_size[1]} image is fed at {w}x{h}, i.e. {tokens} "
                f"visual tokens, over max_image_tokens={self.max_image_tokens}"
                + (
                    " (vllm_max_model_length minus max_completion_length: vLLM refuses longer prompts)"
                    if self._uses_vllm and self._budget_from_vllm
                    else ""
                )
                + f". Lower max_pixels to at most {hint} (= {self.max_image_tokens} x {self.patch_factor}^2)"
                + (
                    ", or raise vllm_max_model_length"
                    if self._uses_vllm and self._budget_from_vllm
                    else ", or raise max_image_tokens"
                )
            )
        self._sizes_within_budget.add(image_size)

    # ------------------------------------------------------------------------------------- generation

    # ------------------------------------------------------------------------------ ground truth in group

    def _injection_rows(self, n_local: int) -> list[int]:
        """Local rows whose rollout becomes the ground-truth answer: the last `solution_in_group` positions of
        every group. Groups are contiguous runs of `num_generations` in the process-major global order that
        GRPO's advantage computation uses, so a group split across processes is handled like any other."""
        start = self.accelerator.process_index * n_local
        first_injected = self.num_generations - self._solution_in_group
        return [i for i in range(n_local) if (start + i) % self.num_generations >= first_injected]

    def _answer_ids(self, text: str) -> list[int]:
        """Token ids of `text` as the assistant would write it: the text, then the end-of-turn token
        (unless cut at `max_completion_length`)."""
        tokenizer = self._tokenizer
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if not isinstance(end, int) or end == tokenizer.unk_token_id:
            end = self.eos_token_ids[0]
        limit = self.args.max_completion_length
        return (ids + [end])[:limit] if limit else ids + [end]

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )
        answers, self._injected_answers = self._injected_answers, None  # first turn only, never a tool turn
        if answers is None or has_tool_images or len(answers) != len(completion_ids):
            return completion_ids, logprobs
        completion_ids = list(completion_ids)
        logprobs = list(logprobs) if logprobs is not None else None
        self._injected_rows = self._injection_rows(len(completion_ids))
        for i in self._injected_rows:
            completion_ids[i] = self._answer_ids(answers[i])
            if logprobs is not None:
                # The answer was never sampled: no sampling log-probability exists. TRL turns None into NaN,
                # and a NaN sampling log-probability gives an importance-sampling ratio of exactly 1.
                logprobs[i] = [None] * len(completion_ids[i])
        return completion_ids, logprobs

    def _generate(self, prompts: list) -> Any:
        if not self._decode_drop_ids:
            return super()._generate(prompts)
        processor = self.processing_class
        previous = processor.__dict__.get("batch_decode")
        processor.batch_decode = _DecodeKeepingTokens(
            previous or processor.batch_decode, self._decode_drop_ids
        )
        try:
            return super()._generate(prompts)
        finally:
            if previous is None:
                del processor.__dict__["batch_decode"]
            else:
                processor.batch_decode = previous

    # ------------------------------------------------------------------------------------------ crop turns

    def _tool_call_loop(self, prompts, prompt_ids, completion_ids, completions, logprobs, images, multimodal_fields):
        """TRL's tool loop; with `crop_forced`, MGPO's fixed second turn for rollouts whose first turn ended
        without a tool call: their crop tool is called with no box (the original image comes back with the
        invalid-box text), so they too answer in a second turn. The model's own tokens are unchanged."""
        forced = self._force_crop_calls(completion_ids, completions) if self._crop_turns else []
        try:
            return super()._tool_call_loop(
                prompts, prompt_ids, completion_ids, completions, logprobs, images, multimodal_fields
            )
        finally:
            for i in forced:  # the call was the trainer's, not the model's: keep it out of the logged messages
                completions[i][0].pop("tool_calls", None)
                self._sync_tool_dicts[i][CROP_TOOL_NAME] = self.environments[i].crop_image

    def _force_crop_calls(self, completion_ids: list, completions: list) -> list[int]:
        if not self.args.crop_forced or not self.environments:
            return []
        ends = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        injected = set(self._injected_rows)  # a ground-truth answer stays a one-turn answer
        forced = []
        for i, (ids, completion) in enumerate(zip(completion_ids, completions)):
            first = completion[0] if completion else None
            if i in injected or not isinstance(first, dict) or first.get("tool_calls"):
                continue
            if not ids or ids[-1] not in ends:  # cut at max_completion_length: no room for a second turn
                continue
            environment = self.environments[i]
            if not isinstance(environment, CropEnvironment):
                continue
            first["tool_calls"] = [{"type": "function", "function": {"name": CROP_TOOL_NAME, "arguments": {}}}]
            self._sync_tool_dicts[i][CROP_TOOL_NAME] = ForcedCrop(environment)
            forced.append(i)
        return forced

    def _log_crop_stats(self, mode: str) -> None:
        """The crop statistics of this step's rollouts, `metrics.crop_metrics`' definitions summed over processes,
        logged as `crop/<name>` (`call_rate`, `forced_rate`, `invalid_rate`, `crop_rate`, `mean_crop_area`,
        `mean_iou`, `target_inside`)."""
        environments = [e for e in self.environments or [] if isinstance(e, CropEnvironment)]
        counts = crop_counts([e.records for e in environments], [e.target_box for e in environments])
        device = self.accelerator.device
        local = torch.tensor(counts, device=device, dtype=torch.float64)
        totals = self.accelerator.gather(local).view(-1, len(CROP_COUNTS)).sum(0).tolist()
        for name, value in crop_rates(totals).items():
            if value is not None:
                self._metrics[mode][f"crop/{name}"].append(value)

    # ------------------------------------------------------------------------------------------ rewards

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        self._log_task_rewards(mode, inputs, rewards_per_func)
        self._log_answer_stats(mode, inputs, completions)
        if self._crop_turns:
            self._log_crop_stats(mode)
        return rewards_per_func

    def _log_task_rewards(self, mode: str, inputs: list[dict], rewards_per_func: torch.Tensor) -> None:
        tasks = gather_object([x.get("task") for x in inputs])
        if len(tasks) != rewards_per_func.shape[0]:
            return
        by_task: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            if isinstance(task, str):
                by_task.setdefault(task, []).append(i)
        for task, rows in sorted(by_task.items()):
            index = torch.tensor(rows, device=rewards_per_func.device)
            for j, reward_name in enumerate(self.reward_func_names):
                values = rewards_per_func[index, j]
                if torch.isnan(values).all():
                    continue  # this reward does not judge this task
                self._metrics[mode][f"rewards/{reward_name}/{task}/mean"].append(torch.nanmean(values).item())

    def _log_answer_stats(self, mode: str, inputs: list[dict], completions: list) -> None:
        """Parse each completion once: parse failures and objects per answer on box tasks, empty answers on
        all; with `log_box_images`, draw the boxes."""
        # completions, empty answers, box-task completions, parse failures, objects read
        counts = [0.0] * 5
        drawings = [] if self.args.log_box_images else None
        for row, completion in zip(inputs, completions):
            text = completion_text(completion)
            counts[0] += 1
            counts[1] += not strip_wrappers(text).strip()
            task = row.get("task")
            parsed = None
            if task in BOX_TASKS:
                parsed = parse_objects(text, self.box_format)
                counts[2] += 1
                counts[3] += not parsed.valid
                counts[4] += len(parsed.objects)
            if drawings is not None:
                drawings.append(self._draw(row, parsed))
        totals = (
            self.accelerator.gather(torch.tensor(counts, device=self.accelerator.device)).view(-1, 5).sum(0)
        )
        n, empty, n_box, failures, objects = totals.tolist()
        metrics = self._metrics[mode]
        if n:
            metrics["perception/empty_answer_rate"].append(empty / n)
        if n_box:
            metrics["perception/parse_failure_rate"].append(failures / n_box)
            metrics["perception/objects_per_completion"].append(objects / n_box)
        self._pending_box_images = drawings

    def _draw(self, row: dict, parsed: Any) -> Any:
        from .viz import draw_objects

        image = row.get("image")
        if image is None and row.get("images"):
            image = row["images"][0]
        if image is None:
            return None
        size = row.get("image_size") or list(image.size)
        objects = []
        if parsed is not None:
            try:
                frame = Frame.of(self.box_format, size, row.get("input_size"))
            except ValueError:
                frame = Frame()  # a malformed size column: draw the coordinates as written
            for obj in parsed.to_pixels(frame, clip=False).objects:
                if obj.bbox is not None:
                    objects.append({"bbox_2d": list(obj.bbox), "label": obj.label})
                elif obj.point is not None:
                    objects.append({"point_2d": list(obj.point), "label": obj.label})
        gt = row.get("solution") if row.get("task") in BOX_TASKS else None
        scale = max(1.0, 256.0 / max(image.size))
        try:
            return draw_objects(image, objects, gt, scale=scale)
        except Exception:  # noqa: BLE001 - a drawing must never stop training
            return image

    def _generate_and_score_completions(self, inputs):
        self._pending_box_images = None
        self._injected_rows = []
        if self._solution_in_group and self.model.training:
            self._injected_answers = [completion_text(row.get("completion") or "") for row in inputs]
        output = super()._generate_and_score_completions(inputs)
        if self._solution_in_group and self.model.training:
            self._injected_answers = None
            self._finish_injection(output)  # on every process: it gathers
        if self._pending_box_images is not None:
            drawings = gather_object(self._pending_box_images)
            logged = self._logs["images"]
            start = len(logged) - len(drawings)
            for k, drawing in enumerate(drawings):
                if start + k >= 0 and drawing is not None:
                    logged[start + k] = [drawing]
            self._pending_box_images = None
        return output

    def _finish_injection(self, output: dict[str, Any]) -> None:
        """Injected rows have no sampling log-probabilities (NaN): use the current policy's instead, so the
        off-policy mask and any later use see an on-policy rollout rather than NaN."""
        device = self.accelerator.device
        rows = torch.tensor(self._injected_rows, dtype=torch.long, device=device)
        sampled, old = output.get("sampling_per_token_logps"), output.get("old_per_token_logps")
        if len(rows) and sampled is not None:
            sampled[rows] = old[rows] if old is not None else torch.nan_to_num(sampled[rows], nan=0.0)
        ratio = output.get("importance_sampling_ratio")
        if len(rows) and ratio is not None:
            ratio[rows] = 1.0
        mode = "train" if self.model.training else "eval"
        counts = torch.tensor([float(len(rows)), float(len(output["completion_ids"]))], device=device)
        injected, total = self.accelerator.gather(counts).view(-1, 2).sum(0).tolist()
        self._metrics[mode]["perception/solution_in_group_fraction"].append(injected / max(1.0, total))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if self.args.log_box_images and self.accelerator.is_main_process and self._logs["images"]:
            folder = os.path.join(
                self.args.output_dir, "completions", f"box_images_{self.state.global_step:05d}"
            )
            os.makedirs(folder, exist_ok=True)
            for i, images in enumerate(self._logs["images"]):
                if images:
                    images[0].save(os.path.join(folder, f"{i:04d}.png"))

    # ------------------------------------------------------------------------- callbacks and model card

    def _bind_eval_callbacks(self) -> None:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, PerceptionEvalCallback):
                callback.bind(self)

    def add_callback(self, callback: Any) -> None:
        """`Trainer.add_callback`; a `PerceptionEvalCallback` is also handed this trainer to log through."""
        super().add_callback(callback)
        self._bind_eval_callbacks()

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | Sequence[str] | None = None,
        tags: str | Sequence[str] | None = None,
        *,
        eval_metrics: Mapping[str, Any] | None = None,
        eval_dataset: str | None = None,
        license: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the perception model card to `args.output_dir`: `README.md` and its inputs,
        `trl_perception_card.json` (which `trl-perception push` reads to rebuild it for another repository).

        Replaces TRL's generic card. `push_to_hub(**kwargs)` passes its keyword arguments here, so
        `trainer.push_to_hub(dataset_name=..., eval_metrics=...)` uploads the weights and this card in one
        commit. The card (`hub.build_model_card`) names the base model, the tasks (the training rows' `task`
        values), `dataset_name`, the rewards and their weights, the box format, key hyperparameters, the
        LoRA / QLoRA set-up (`hub.adapter_summary`) and, when given, `eval_metrics` measured on `eval_dataset`.
        The model is named by the Hub repository id when there is one, else `model_name`, else the output
        folder's name. Only the main process writes; other keyword arguments (TRL's and transformers') are
        accepted and ignored.

        Example:
        ```python
        >>> import tempfile, pathlib
        >>> from trl_perception.data import make_synthetic
        >>> from trl_perception.rewards import get_reward
        >>> from trl_perception.testing import tiny_vlm
        >>> args = PerceptionGRPOConfig(tempfile.mkdtemp(), use_cpu=True, report_to="none", num_generations=2,
        ...     per_device_train_batch_size=2, max_completion_length=4, max_pixels=56 * 56)
        >>> trainer = PerceptionGRPOTrainer(tiny_vlm("qwen2_5_vl"), [get_reward("iou"), get_reward("format")],
        ...     args, train_dataset=make_synthetic("grounding", 2))
        >>> trainer.create_model_card(dataset_name="synthetic", eval_metrics={"grounding": {"acc@0.5": 0.5}})
        >>> card = (pathlib.Path(args.output_dir) / "README.md").read_text()
        >>> "- **Task:** grounding" in card, "| iou_reward | 1.0 |" in card, "| grounding/acc@0.5 | 0.5000 |" in card
        (True, True, True)

        ```
        """
        if not self.is_world_process_zero():
            return
        write_model_card(
            self.args.output_dir,
            **_card_fields(self, model_name, dataset_name, tags, eval_metrics, eval_dataset, license),
            reward_funcs=list(self.reward_func_names),
            reward_weights=[float(w) for w in self.reward_weights.tolist()],
            peft=adapter_summary(self.model),
        )


@dataclass
class PerceptionSFTConfig(SFTConfig):
    r"""
    Configuration of [`PerceptionSFTTrainer`]: every field of TRL's [`~trl.SFTConfig`] plus the frame fields of
    [`PerceptionGRPOConfig`], so that an SFT stage and the GRPO stage after it read the same YAML keys.

    Parameters:
        box_format (`str`, *optional*, defaults to `"auto"`):
            Model family whose answer syntax and coordinate frame the dataset's prompts and `completion` answers
            use (`"qwen2_vl"`, `"qwen2_5_vl"`, `"qwen3_vl"`); `"auto"` reads it from the model config.
        min_pixels (`int`, *optional*):
            Smallest image area (in pixels) the model sees, set on the trainer's copy of the processor. Build the
            dataset with the same limits: Qwen2.5-VL answers are pixels of the resized image.
        max_pixels (`int`, *optional*):
            Largest image area (in pixels) the model sees; same handling as `min_pixels`.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            TRL's truncation length. `None` here (TRL's default is 1024): truncating a row with an image would cut
            through its image tokens (the model then refuses the batch) or through the answer.

    TRL's `dataset_kwargs` is not an argument here: in the scripts' YAML `dataset_kwargs` are the builder's options
    (as in the GRPO recipes), and the trainer prepares the rows as TRL does for vision datasets.
    """

    box_format: str = field(default="auto", metadata=_BOX_FORMAT_FIELD)
    min_pixels: int | None = field(default=None, metadata=_MIN_PIXELS_FIELD)
    max_pixels: int | None = field(default=None, metadata=_MAX_PIXELS_FIELD)
    max_length: int | None = field(
        default=None,
        metadata={"help": "Truncation length in tokens; None (no truncation) so image tokens and answers stay whole."},
    )
    dataset_kwargs: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        _check_frame_fields(self)
        super().__post_init__()


class PerceptionSFTTrainer(SFTTrainer):
    """TRL's [`~trl.SFTTrainer`] on perception rows (a `prompt` with an image, the `completion` answer that
    `data.add_completions` renders), with three additions; the loop, the collator, the loss masking (the loss is
    on the answer only: TRL's `completion_only_loss` for prompt-completion rows), PEFT and QLoRA are TRL's.

    - **Pixels.** The processor's `min_pixels`/`max_pixels` come from the config, as in
      [`PerceptionGRPOTrainer`], so the model sees each image at the size its answer's frame assumes.
    - **Model card.** `create_model_card` (and so `push_to_hub`) writes the perception card of `hub`, with the
      tasks, the box format, the adapter set-up and the evaluation.
    - **Merging.** `merge_adapter()` folds a LoRA adapter into the weights (PEFT's `merge_and_unload`), so the
      saved folder is a plain model that a next stage (GRPO) loads like any checkpoint.

    `box_format` is resolved from the model when the config says `"auto"`.

    Example:
    ```python
    >>> import tempfile
    >>> from trl_perception.data import add_completions, make_synthetic
    >>> from trl_perception.testing import tiny_vlm
    >>> rows = add_completions(make_synthetic("grounding", 2, box_format="qwen2_vl", max_pixels=56 * 56))
    >>> args = PerceptionSFTConfig(tempfile.mkdtemp(), use_cpu=True, bf16=False, report_to="none", max_steps=1,
    ...     per_device_train_batch_size=2, max_pixels=56 * 56)
    >>> trainer = PerceptionSFTTrainer(tiny_vlm("qwen2_vl"), args, train_dataset=rows)
    >>> trainer.box_format, trainer.processing_class.image_processor.size["longest_edge"]
    ('qwen2_vl', 3136)

    ```
    """

    _tag_names = ["trl", "sft", "trl-perception"]

    def __init__(
        self,
        model: Any,
        args: PerceptionSFTConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            args = PerceptionSFTConfig(f"{str(name).rstrip('/').split('/')[-1] or 'model'}-PerceptionSFT")
        elif not isinstance(args, PerceptionSFTConfig):
            raise TypeError(
                f"PerceptionSFTTrainer needs a PerceptionSFTConfig (an SFTConfig with the frame fields), "
                f"got {type(args).__name__}"
            )
        model_config = _model_config(model, args)
        self.box_format = resolve_box_format(args.box_format, model_config)
        processing_class = _prepare_processor(model, model_config, processing_class, args, "PerceptionSFTTrainer")
        self.merged_adapter: dict[str, Any] | None = None
        super().__init__(
            model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=processing_class, **kwargs,
        )  # fmt: skip

    def merge_adapter(self) -> Any:
        """Fold the LoRA adapter into the weights (PEFT's `merge_and_unload`) and train/save the plain model from
        now on; `save_model` then writes full weights and the processor, and the card says "LoRA, merged".
        A quantized (QLoRA) base cannot take the merge exactly: that raises `ValueError`. Returns the model."""
        summary = adapter_summary(self.model)
        if summary is None:
            raise ValueError("merge_adapter: the model has no LoRA adapter (train with use_peft)")
        if summary.get("quantization"):
            raise ValueError(
                f"merge_adapter: the base model is quantized ({summary['quantization']}); merging into it would "
                "round the adapter away. Keep the adapter, or train LoRA on an unquantized base to merge"
            )
        self.model = self.model.merge_and_unload()
        self.model_wrapped = self.model
        self.merged_adapter = {**summary, "merged": True}
        return self.model

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | Sequence[str] | None = None,
        tags: str | Sequence[str] | None = None,
        *,
        eval_metrics: Mapping[str, Any] | None = None,
        eval_dataset: str | None = None,
        license: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the perception model card (`hub.write_model_card`, method `"sft"`) to `args.output_dir`, as
        [`PerceptionGRPOTrainer.create_model_card`] does for GRPO: `README.md` and `trl_perception_card.json`.
        Only the main process writes; other keyword arguments are accepted and ignored."""
        if not self.is_world_process_zero():
            return
        write_model_card(
            self.args.output_dir,
            **_card_fields(self, model_name, dataset_name, tags, eval_metrics, eval_dataset, license),
            peft=self.merged_adapter or adapter_summary(self.model),
            method="sft",
        )


def _card_fields(
    trainer: Any,
    model_name: str | None,
    dataset_name: str | Sequence[str] | None,
    tags: str | Sequence[str] | None,
    eval_metrics: Mapping[str, Any] | None,
    eval_dataset: str | None,
    license: str | None,
) -> dict[str, Any]:
    """The model card inputs both trainers share (`hub.write_model_card` keywords): the name (Hub repository
    id, else `model_name`, else the output folder's name), base model, the training rows' tasks, datasets,
    box format, key hyperparameters, evaluation, licence and tags."""
    train = trainer.train_dataset
    tasks: list[str] = []
    if hasattr(train, "unique") and "task" in (train.column_names or []):
        tasks = sorted(str(t) for t in train.unique("task"))
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    args = trainer.args
    return {
        "model_name": trainer.hub_model_id
        or args.hub_model_id
        or model_name
        or os.path.basename(os.path.abspath(args.output_dir)),
        "base_model": getattr(getattr(trainer.model, "config", None), "_name_or_path", None) or None,
        "task": tasks,
        "dataset": [str(d) for d in datasets],
        "box_format": trainer.box_format,
        "training_args": {k: getattr(args, k, None) for k in CARD_HYPERPARAMETERS},
        "eval_metrics": dict(eval_metrics) if eval_metrics is not None else None,
        "eval_dataset": eval_dataset,
        "license": license,
        "tags": [tags] if isinstance(tags, str) else list(tags or []),
    }


def _model_config(model: Any, args: Any) -> Any:
    """The config of `model` (a path or a loaded model), read without loading the weights."""
    if not isinstance(model, str):
        return getattr(model, "config", model)
    from transformers import AutoConfig

    init_kwargs = args.model_init_kwargs if isinstance(args.model_init_kwargs, dict) else {}
    return AutoConfig.from_pretrained(model, revision=init_kwargs.get("revision"), trust_remote_code=args.trust_remote_code)


def _prepare_processor(model: Any, model_config: Any, processing_class: Any, args: Any, trainer: str) -> Any:
    """The trainer's own processor (loaded, or a copy of the caller's) with `args.min_pixels`/`max_pixels` set
    on its image processor, so that every image is fed at the size the dataset's frames assume."""
    from transformers import AutoProcessor, ProcessorMixin

    if processing_class is None:
        init_kwargs = args.model_init_kwargs if isinstance(args.model_init_kwargs, dict) else {}
        model_id = model if isinstance(model, str) else getattr(model_config, "_name_or_path", "")
        processing_class = AutoProcessor.from_pretrained(
            model_id,
            revision=init_kwargs.get("revision"),
            truncation_side="left",
            padding_side="left",
            trust_remote_code=args.trust_remote_code,
        )
    else:
        # The pixel limits and the decoding hook are the trainer's business, not the caller's object's.
        processing_class = copy.deepcopy(processing_class)
    if not isinstance(processing_class, ProcessorMixin) or getattr(processing_class, "image_processor", None) is None:
        raise TypeError(
            f"{trainer} trains vision-language models: the processing class must be a processor "
            f"with an image processor, got {type(processing_class).__name__}"
        )
    image_processor = processing_class.image_processor
    lo, hi = _processor_limits(image_processor)
    lo = args.min_pixels if args.min_pixels is not None else lo
    hi = args.max_pixels if args.max_pixels is not None else hi
    if lo is None or hi is None:
        raise ValueError(f"{type(image_processor).__name__} declares no pixel limits; set min_pixels and max_pixels")
    if lo > hi:
        raise ValueError(f"min_pixels ({lo}) exceeds max_pixels ({hi}) after merging config and processor")
    image_processor.size = {"shortest_edge": int(lo), "longest_edge": int(hi)}
    for name, value in (("min_pixels", lo), ("max_pixels", hi)):
        if hasattr(image_processor, name):  # transformers 4 keeps them as attributes too
            setattr(image_processor, name, int(value))
    return processing_class


def _processor_limits(image_processor: Any) -> tuple[int | None, int | None]:
    size = getattr(image_processor, "size", None)
    lo = hi = None
    if size is not None:
        get = size.get if isinstance(size, Mapping) else lambda k, d=None: getattr(size, k, d)
        lo, hi = get("shortest_edge", None), get("longest_edge", None)
    lo = lo if lo is not None else getattr(image_processor, "min_pixels", None)
    hi = hi if hi is not None else getattr(image_processor, "max_pixels", None)
    return lo, hi


def _missing_images(column: Any) -> list[int]:
    """Rows of an arrow image column (undecoded `{bytes, path}` structs, or lists of them) without an image."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def missing_cells(array: Any) -> Any:
        mask = array.is_null()
        if pa.types.is_struct(array.type):
            names = [array.type.field(i).name for i in range(array.type.num_fields)]
            if "bytes" in names and "path" in names:
                empty = pc.and_(array.field("bytes").is_null(), array.field("path").is_null())
                mask = pc.or_(mask, empty)
        return mask

    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        rows = set(
            pc.indices_nonzero(
                pc.or_(column.is_null(), pc.equal(pc.list_value_length(column), 0))
            ).to_pylist()
        )
        child = missing_cells(column.flatten())
        parents = pc.list_parent_indices(column)
        rows |= set(pc.filter(parents, child).to_pylist())
        return sorted(rows)
    return pc.indices_nonzero(missing_cells(column)).to_pylist()


def _require_completion_column(dataset: Any) -> None:
    """`solution_in_group` injects each row's `completion`: the train dataset must have one."""
    if dataset is None:
        raise ValueError("solution_in_group > 0 needs a train_dataset with a 'completion' column")
    columns = list(getattr(dataset, "column_names", None) or [])
    if "completion" not in columns:
        raise ValueError(
            "solution_in_group > 0 injects each row's ground-truth answer, its 'completion' column, into the "
            f"rollout group, but the train_dataset has none (columns: {columns}); add it with "
            "trl_perception.data.add_completions(rows)"
        )


def _takes_solution(func: Any) -> bool:
    """Whether a reward function requires a `solution` argument."""
    if isinstance(func, (str, torch.nn.Module)) or not callable(func):
        return False
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    param = parameters.get("solution")
    return param is not None and param.default is inspect.Parameter.empty


def _is_conversational(prompt: Any) -> bool:
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt)
    )


def _header_sizes(value: Any, image_key: str) -> list[tuple[int, int] | None]:
    """`(width, height)` of undecoded image cells (`{"bytes", "path"}`), read from the file headers."""
    cells = list(value or []) if image_key == "images" else [value]
    sizes = []
    for cell in cells:
        if not isinstance(cell, Mapping):
            sizes.append(None)
            continue
        source = cell.get("bytes") or cell.get("path")
        try:
            sizes.append(read_image_size(source) if source else None)
        except RecordError:
            sizes.append(None)
    return sizes
