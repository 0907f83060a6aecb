"""Run a vision-language model over a perception dataset with Perception-R1's evaluation protocol: images fed
on the box_format's grid, predictions mapped back to original pixels, metrics per task, and a written report."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._json import unquote_text
from .boxes import paired_box_iou
from .crop import CropEnvironment, CropRecord, ForcedCrop, crop_pixel_limits, prepare_tool_processor
from .data import build_dataset
from .data.io import valid_text
from .data.jigsaw import reassemble
from .formats import ParsedOutput, parse_count, parse_objects, strip_wrappers
from .frames import BOX_FORMATS, Frame, box_format_of, check_box_format, default_pixel_limits, fit_to_grid
from .metrics import (
    coco_metrics,
    counting_metrics,
    crop_metrics,
    grounding_metrics,
    objects_to_coco_results,
    ocr_metrics,
    ovd_metrics,
    vqa_metrics,
)
from .rewards.jigsaw import jigsaw_metrics, jigsaw_scores, jigsaw_target
from .rewards.vqa import vqa_answer
from .viz import display_text, draw_objects, image_grid
from .vllm import limit_mm_per_prompt, mm_processor_kwargs

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_NEW_TOKENS",
    "CropTurnOutput",
    "CropTurnsOutput",
    "CropTurnsRequest",
    "EvaluationResult",
    "GenerationRequest",
    "add_eval_arguments",
    "build_coco_ground_truth",
    "evaluate",
    "flatten_metrics",
    "generate_with_crop_turns",
    "run_eval_from_args",
    "unwrap_model",
    "vllm_engine_kwargs",
    "vllm_sampling_kwargs",
]

BACKENDS: tuple[str, ...] = ("auto", "transformers", "vllm")

DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "grounding": 512,
    "counting": 512,
    "ocr": 2048,
    "detection": 4096,
    "ovd": 2048,
    "jigsaw": 1024,
    "vqa": 1024,
}
"""Generation budget per task when `max_new_tokens` is not given: Perception-R1's evaluation scripts'."""

_VLLM_MIN_CHUNK = 256


# --------------------------------------------------------------------------------------------------
# Public data types


@dataclass
class GenerationRequest:
    """What a generation backend (or a test's `generate_fn`) receives for one row.

    `image` is the image the model sees: already resized to the box_format's grid (`image.size == input_size`),
    so any processor leaves it unchanged. `image_size` is the original `[width, height]`.
    """

    index: int
    task: str
    prompt: list[dict[str, Any]]
    image: Any
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    box_format: str | None
    max_new_tokens: int


@dataclass
class CropTurnsRequest:
    """One VQA row for the two-turn ("look again") generation: the single-turn `request` (its `image` is what
    the model sees, fitted to the grid), the row's `original_image` the crop is cut from, and its `target_box`
    (original pixels; `None` when unknown)."""

    request: GenerationRequest
    original_image: Any
    target_box: list[float] | None


@dataclass
class CropTurnsOutput:
    """What the two-turn generation returns for one row: the final answer `text` (the last assistant turn),
    every assistant turn's text, and the crop calls (`crop.CropRecord`s, or dicts with the same fields)."""

    text: str
    turns: list[str]
    records: list[Any]


@dataclass
class EvaluationResult:
    """Outcome of `evaluate`.

    Attributes:
        metrics: `{task: {metric: value}}` for every task present in the dataset.
        predictions: one record per row (what `predictions.jsonl` holds).
        config: the settings the run used (model, box_format, pixel limits, backend, ...).
        files: paths written (`predictions`, `metrics`, `report`, `report_image`), empty without `output_dir`.
    """

    metrics: dict[str, dict[str, Any]]
    predictions: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Scalar metrics as `{"{prefix}/{task}/{name}": value}` (see `flatten_metrics`)."""
        return flatten_metrics(self.metrics, prefix)

    def __repr__(self) -> str:
        tasks = ", ".join(
            f"{task}: {len([p for p in self.predictions if p['task'] == task])}" for task in self.metrics
        )
        return f"EvaluationResult({tasks}; files={sorted(self.files)})"


def flatten_metrics(metrics: Mapping[str, Mapping[str, Any]], prefix: str = "") -> dict[str, float]:
    """Scalar metrics of `{task: {name: value}}` as `{"{prefix}/{task}/{name}": float}`.

    `None`, booleans and nested values (per-class AP, drop counts) are left out, so the result can go
    straight to a logger.

    Example:
    ```python
    >>> flatten_metrics({"grounding": {"acc@0.5": 0.5, "mean_iou": None, "num_samples": 2}}, "eval")
    {'eval/grounding/acc@0.5': 0.5, 'eval/grounding/num_samples': 2.0}

    ```
    """
    flat: dict[str, float] = {}
    for task, values in metrics.items():
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            key = f"{task}/{name}"
            flat[f"{prefix}/{key}" if prefix else key] = float(value)
    return flat


# --------------------------------------------------------------------------------------------------
# Families, pixel limits, models


def _model_box_format(model: Any) -> str | None:
    """The box format of a model object, a local checkpoint or a Hub id; `None` when it cannot be told."""
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)) and not os.path.isdir(model):
        try:
            from transformers import AutoConfig  # a Hub id: its config.json is fetched (or read from cache)

            model = AutoConfig.from_pretrained(os.fspath(model))
        except Exception:  # noqa: BLE001 - an unreadable config only means "box format unknown"
            return None
    return box_format_of(model if isinstance(model, (str, os.PathLike)) else unwrap_model(model))


def unwrap_model(model: Any) -> Any:
    """Strip distributed / compile wrappers (DDP and DeepSpeed `.module`, `torch.compile`'s `_orig_mod`);
    PEFT models are kept (they generate with their adapters).

    Example:
    ```python
    >>> from types import SimpleNamespace
    >>> inner = SimpleNamespace(name="model")
    >>> unwrap_model(SimpleNamespace(module=SimpleNamespace(_orig_mod=inner))) is inner
    True

    ```
    """
    for _ in range(8):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and not hasattr(model, "generate"):
            model = model.module
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine"):
            model = model.module
        else:
            break
    return model


def _processor_pixel_limits(processor: Any) -> tuple[int | None, int | None]:
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None, None
    lo = getattr(image_processor, "min_pixels", None)
    hi = getattr(image_processor, "max_pixels", None)
    size = getattr(image_processor, "size", None)
    if size is not None:
        get = size.get if isinstance(size, Mapping) else lambda key, default=None: getattr(size, key, default)
        lo = lo or get("shortest_edge", None) or get("min_pixels", None)
        hi = hi or get("longest_edge", None) or get("max_pixels", None)
    return (int(lo) if lo else None), (int(hi) if hi else None)


def _pixel_limits(
    box_format: str | None, processor: Any, min_pixels: int | None, max_pixels: int | None
) -> tuple[int | None, int | None]:
    """Explicit limits, else the processor's, else the box_format's checkpoints' defaults."""
    proc_lo, proc_hi = _processor_pixel_limits(processor)
    format_lo, format_hi = default_pixel_limits(box_format) if box_format else (None, None)
    lo = min_pixels if min_pixels is not None else proc_lo if proc_lo is not None else format_lo
    hi = max_pixels if max_pixels is not None else proc_hi if proc_hi is not None else format_hi
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min_pixels ({lo}) must not exceed max_pixels ({hi})")
    return lo, hi


# --------------------------------------------------------------------------------------------------
# Rows


def _row_image(row: Mapping[str, Any]) -> Any:
    from PIL import Image

    image = row.get("image")
    if image is None and row.get("images"):
        image = row["images"][0]
    if isinstance(image, Mapping):
        if image.get("bytes"):
            import io

            image = Image.open(io.BytesIO(image["bytes"]))
        elif image.get("path"):
            image = image["path"]
    if isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"row has no readable image (got {type(image).__name__}); expected a PIL image or path"
        )
    return image if image.mode == "RGB" else image.convert("RGB")


def _load_solution(task: str, solution: Any) -> Any:
    """Row-contract ground truth, decoding the JSON strings of mixed-task datasets (never `eval`)."""
    if isinstance(solution, str):
        text = solution.strip()
        if task == "ocr":
            return unquote_text(solution)
        try:
            return json.loads(text)
        except ValueError as err:
            raise ValueError(f"{task} solution is not valid JSON: {solution[:120]!r}") from err
    return solution


def _as_prompt(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return [dict(message) for message in prompt]


def _gt_box(solution: Any) -> list[float] | None:
    if isinstance(solution, Mapping):
        solution = solution.get("bbox_2d", solution.get("bbox"))
    if (
        isinstance(solution, (list, tuple))
        and len(solution) == 1
        and isinstance(solution[0], (list, tuple, Mapping))
    ):
        return _gt_box(solution[0])
    try:
        box = [float(v) for v in solution]
    except (TypeError, ValueError):
        return None
    return box if len(box) == 4 and all(math.isfinite(v) for v in box) else None


def _gt_count(solution: Any) -> float:
    value = solution.get("count") if isinstance(solution, Mapping) else solution
    if value is None and isinstance(solution, Mapping) and solution.get("points") is not None:
        value = len(solution["points"])
    if isinstance(value, (list, tuple)):
        value = len(value)
    return float(value)


def _detection_objects(solution: Any) -> list[Mapping[str, Any]]:
    return [obj for obj in (solution or []) if isinstance(obj, Mapping)]


def _category_names(
    dataset: Any, rows: Iterable[Mapping[str, Any]], categories: Sequence[str] | None
) -> list[str]:
    """Category vocabulary: given, else carried by the dataset (a `categories` column or metadata), then
    every ground-truth label not yet listed, in order of first appearance."""
    names: list[str] = [str(c) for c in categories] if categories is not None else []
    if categories is None:
        info = getattr(dataset, "info", None)
        carried = None
        description = getattr(info, "description", None)
        if isinstance(description, str) and description.lstrip().startswith("{"):
            try:
                carried = json.loads(description).get("categories")
            except (ValueError, AttributeError):
                carried = None
        if isinstance(carried, list):
            names.extend(str(c) for c in carried)
    seen = set(names)
    for row in rows:
        for name in row.get("categories") or []:
            if str(name) not in seen:
                seen.add(str(name))
                names.append(str(name))
        for obj in _detection_objects(row["solution"]):
            label = obj.get("label")
            if isinstance(label, str) and label.strip() not in seen:
                seen.add(label.strip())
                names.append(label.strip())
    return names


def build_coco_ground_truth(
    rows: Iterable[Mapping[str, Any]], categories: Sequence[str] | None = None, *, dataset: Any = None
) -> tuple[dict[str, Any], dict[str, int]]:
    """COCO-format ground truth of detection rows, with **every** image (PR1's evaluator drops the last one).

    Row `i` (its position in `rows`, counting every task) becomes image id `i + 1`; rows of other tasks are
    skipped. Each `{"bbox_2d": [x1, y1, x2, y2], "label": name}` becomes an annotation with `bbox` xywh, `area`
    the object's `area` when given (COCO's mask area) else the box area, and `iscrowd` the object's `iscrowd`
    (default 0). Categories get ids `1..K` in the order of `categories`, else of the dataset's own category
    list (a `categories` column, or `{"categories": [...]}` JSON in `dataset.info.description`), then of
    first appearance; ground-truth labels missing from a given list are appended.

    Returns:
        `(coco_dict, label_to_category_id)`.

    Example:
    ```python
    >>> rows = [{"task": "detection", "image_size": [100, 80], "solution": [{"bbox_2d": [10, 10, 50, 40], "label": "cat"}]},
    ...         {"task": "detection", "image_size": [64, 64], "solution": []}]
    >>> gt, label_to_id = build_coco_ground_truth(rows)
    >>> [img["id"] for img in gt["images"]], gt["annotations"][0]["bbox"], label_to_id
    ([1, 2], [10.0, 10.0, 40.0, 30.0], {'cat': 1})

    ```
    """
    rows = [dict(row, solution=_load_solution("detection", row.get("solution"))) for row in rows]
    detection_rows = [(i, row) for i, row in enumerate(rows) if row.get("task", "detection") == "detection"]
    names = _category_names(dataset, [row for _, row in detection_rows], categories)
    label_to_id = {name: k + 1 for k, name in enumerate(names)}
    images, annotations = [], []
    for i, row in detection_rows:
        width, height = (int(v) for v in row["image_size"])
        images.append(
            {"id": i + 1, "width": width, "height": height, "file_name": str(row.get("file_name", i))}
        )
        for obj in _detection_objects(row["solution"]):
            box = _gt_box(obj.get("bbox_2d", obj.get("bbox")))
            label = obj.get("label")
            if box is None or not isinstance(label, str):
                continue
            w, h = max(box[2] - box[0], 0.0), max(box[3] - box[1], 0.0)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched": start at 1
                    "image_id": i + 1,
                    "category_id": label_to_id[label.strip()],
                    "bbox": [box[0], box[1], w, h],
                    "area": float(obj.get("area") or w * h),
                    "iscrowd": int(bool(obj.get("iscrowd", 0))),
                }
            )
    gt = {
        "info": {"description": "trl-perception evaluation ground truth"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": name, "supercategory": ""} for name, k in label_to_id.items()],
    }
    return gt, label_to_id


# --------------------------------------------------------------------------------------------------
# Decoding


def _keep_special_tokens(box_format: str | None, task: str) -> bool:
    """Qwen2-VL answers with box tokens, which `skip_special_tokens=True` would delete; OCR and the JSON
    families decode without special tokens, as PR1's evaluation does."""
    return task != "ocr" and box_format in (None, "qwen2_vl")


def _clean_generation(text: str, stop_strings: Sequence[str] = ("<|im_end|>", "<|endoftext|>")) -> str:
    """Cut a decoded completion at its first end-of-turn / padding token."""
    cut = len(text)
    for stop in stop_strings:
        if stop:
            pos = text.find(stop)
            if pos >= 0:
                cut = min(cut, pos)
    return text[:cut].strip()


# --------------------------------------------------------------------------------------------------
# Backends


def vllm_engine_kwargs(
    model: str, min_pixels: int | None, max_pixels: int | None, **overrides: Any
) -> dict[str, Any]:
    """Arguments for `vllm.LLM`: the checkpoint, one image and no video per prompt, and the **same pixel
    limits** the images were fitted to (`vllm.mm_processor_kwargs`, transformers 5's `size` form), so vLLM's
    processor leaves them unchanged.

    Example:
    ```python
    >>> vllm_engine_kwargs("Qwen/Qwen2-VL-2B-Instruct", 3136, 1_000_000)["mm_processor_kwargs"]
    {'size': {'shortest_edge': 3136, 'longest_edge': 1000000}}

    ```
    """
    kwargs: dict[str, Any] = {"model": os.fspath(model), "limit_mm_per_prompt": limit_mm_per_prompt(1)}
    if (min_pixels is None) != (max_pixels is None):
        raise ValueError(f"vLLM needs both pixel limits or neither, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    if min_pixels is not None:
        kwargs["mm_processor_kwargs"] = mm_processor_kwargs(min_pixels, max_pixels)
    kwargs.update(overrides)
    return kwargs


def vllm_sampling_kwargs(
    box_format: str | None, task: str, max_new_tokens: int, generation_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Arguments for `vllm.SamplingParams`: greedy (`temperature=0`), `max_tokens`, and
    `skip_special_tokens=False` where Qwen2-VL box tokens must survive. `generation_kwargs` use
    transformers' names (`do_sample`, `max_new_tokens`, `temperature`, `top_p`, `top_k`,
    `repetition_penalty`, ...) and are translated.

    Example:
    ```python
    >>> vllm_sampling_kwargs("qwen2_vl", "grounding", 512)
    {'temperature': 0.0, 'max_tokens': 512, 'skip_special_tokens': False}
    >>> vllm_sampling_kwargs("qwen2_5_vl", "detection", 64, {"do_sample": True, "top_p": 0.9})["temperature"]
    1.0

    ```
    """
    extra = dict(generation_kwargs or {})
    do_sample = bool(extra.pop("do_sample", False))
    temperature = extra.pop("temperature", None)
    kwargs: dict[str, Any] = {
        "temperature": float(
            temperature if temperature is not None and do_sample else (1.0 if do_sample else 0.0)
        ),
        "max_tokens": int(extra.pop("max_new_tokens", max_new_tokens)),
        "skip_special_tokens": not _keep_special_tokens(box_format, task),
    }
    extra.pop("num_beams", None)
    kwargs.update(extra)
    return kwargs


class _TransformersGenerator:
    """Batched `model.generate` with left padding, greedy unless `generation_kwargs` says otherwise."""

    def __init__(self, model: Any, processor: Any, min_pixels: int | None, max_pixels: int | None,
                 generation_kwargs: Mapping[str, Any] | None):  # fmt: skip
        self.model = model
        self.processor = processor
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.generation_kwargs = dict(generation_kwargs or {})
        tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer = tokenizer
        stops = {
            "<|im_end|>",
            "<|endoftext|>",
            getattr(tokenizer, "eos_token", None),
            getattr(tokenizer, "pad_token", None),
        }
        eos_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos_ids is not None:
            for token_id in eos_ids if isinstance(eos_ids, (list, tuple)) else [eos_ids]:
                stops.add(tokenizer.convert_ids_to_tokens(int(token_id)))
        self.stop_strings = tuple(s for s in stops if isinstance(s, str) and s)
        self.patch = int(getattr(getattr(processor, "image_processor", None), "patch_size", 0) or 0)

    def __call__(self, requests: Sequence[GenerationRequest]) -> list[str]:
        import torch

        texts = [
            self.processor.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        images_kwargs = {}
        if self.min_pixels is not None and self.max_pixels is not None:
            images_kwargs["size"] = {
                "shortest_edge": int(self.min_pixels),
                "longest_edge": int(self.max_pixels),
            }
        padding_side = getattr(self.tokenizer, "padding_side", None)
        self.tokenizer.padding_side = "left"
        try:
            inputs = self.processor(
                text=texts,
                images=[r.image for r in requests],
                padding=True,
                return_tensors="pt",
                **({"images_kwargs": images_kwargs} if images_kwargs else {}),
            )
        finally:
            if padding_side is not None:
                self.tokenizer.padding_side = padding_side
        self._check_grid(inputs, requests)
        parameter = next(self.model.parameters())
        inputs = {
            k: (v.to(parameter.device, parameter.dtype) if v.is_floating_point() else v.to(parameter.device))
            if hasattr(v, "to") else v
            for k, v in inputs.items()
        }  # fmt: skip
        kwargs = {"max_new_tokens": max(r.max_new_tokens for r in requests), "do_sample": False}
        kwargs.update(self.generation_kwargs)
        if not kwargs.get("do_sample"):
            # A checkpoint's sampling defaults (Qwen ships top_k/top_p/temperature) mean nothing greedily.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            with torch.no_grad():
                output = self.model.generate(**inputs, **kwargs)
        finally:
            if was_training:
                self.model.train()
        sequences = output.sequences if hasattr(output, "sequences") else output
        new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
        results = []
        for request, ids in zip(requests, new_tokens):
            skip = not _keep_special_tokens(request.box_format, request.task)
            text = self.tokenizer.decode(ids, skip_special_tokens=skip)
            results.append(_clean_generation(text, self.stop_strings))
        return results

    def _check_grid(self, inputs: Mapping[str, Any], requests: Sequence[GenerationRequest]) -> None:
        grid = inputs.get("image_grid_thw")
        if grid is None or not self.patch:
            return
        for request, (_, h, w) in zip(requests, grid.tolist()):
            fed = (int(w) * self.patch, int(h) * self.patch)
            if request.box_format is not None and fed != tuple(request.input_size):
                warnings.warn(
                    f"row {request.index}: the processor fed the image at {fed}, not at the grid size "
                    f"{tuple(request.input_size)} it was fitted to; using {fed} as the model frame",
                    UserWarning,
                    stacklevel=3,
                )
                request.input_size = fed


def _crop_turns_generator(
    generator: Any, crop_turns: int, crop_min_pixels: int | None, crop_max_pixels: int | None
) -> Callable[[list[CropTurnsRequest]], list[CropTurnsOutput]]:
    """`evaluate`'s two-turn pass: `generate_with_crop_turns` on the loaded model, with a processor whose pixel
    limits are this evaluation's (the single-turn pass feeds the same image at the same size)."""
    # `evaluate` has checked the arguments: the transformers backend, and crop_turns == 1.
    processor = copy.deepcopy(generator.processor)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and generator.min_pixels is not None and generator.max_pixels is not None:
        lo, hi = int(generator.min_pixels), int(generator.max_pixels)
        image_processor.size = {"shortest_edge": lo, "longest_edge": hi}
        for name, value in (("min_pixels", lo), ("max_pixels", hi)):
            if getattr(image_processor, name, None) is not None:  # transformers 4 keeps them as attributes too
                setattr(image_processor, name, value)

    def run(items: list[CropTurnsRequest]) -> list[CropTurnsOutput]:
        by_format: dict[str | None, list[int]] = {}
        for i, item in enumerate(items):
            by_format.setdefault(item.request.box_format, []).append(i)
        outputs: list[CropTurnsOutput | None] = [None] * len(items)
        for box_format, indices in by_format.items():
            if box_format is None:
                raise ValueError("crop turns need the model's box format (the frame of the crop box)")
            rows = [
                {
                    "prompt": items[i].request.prompt,
                    "image": items[i].request.image,
                    "original_image": items[i].original_image,
                    "target_box": items[i].target_box,
                }
                for i in indices
            ]
            results = generate_with_crop_turns(
                generator.model, processor, rows, box_format,
                max_new_tokens=max(items[i].request.max_new_tokens for i in indices),
                crop_min_pixels=crop_min_pixels, crop_max_pixels=crop_max_pixels, batch_size=len(rows),
            )  # fmt: skip
            for i, result in zip(indices, results):
                turns = [result.first_turn] + ([] if result.second_turn is None else [result.second_turn])
                outputs[i] = CropTurnsOutput(text=result.answer, turns=turns, records=list(result.crops))
        return [out for out in outputs if out is not None]

    return run


class _VLLMGenerator:
    def __init__(self, model: str, processor: Any, min_pixels: int | None, max_pixels: int | None,
                 generation_kwargs: Mapping[str, Any] | None, engine_kwargs: Mapping[str, Any] | None):  # fmt: skip
        import vllm

        self.vllm = vllm
        self.processor = processor
        self.generation_kwargs = dict(generation_kwargs or {})
        self.llm = vllm.LLM(**vllm_engine_kwargs(model, min_pixels, max_pixels, **dict(engine_kwargs or {})))

    def __call__(self, requests: Sequence[GenerationRequest]) -> list[str]:
        inputs, params = [], []
        for r in requests:
            text = self.processor.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=False)
            inputs.append({"prompt": text, "multi_modal_data": {"image": r.image}})
            params.append(
                self.vllm.SamplingParams(
                    **vllm_sampling_kwargs(r.box_format, r.task, r.max_new_tokens, self.generation_kwargs)
                )
            )
        outputs = self.llm.generate(inputs, sampling_params=params, use_tqdm=False)
        return [_clean_generation(out.outputs[0].text if out.outputs else "") for out in outputs]


def _load_model(path: str) -> Any:
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def _load_processor(model: Any, processor: Any) -> Any:
    if processor is not None:
        return processor
    from transformers import AutoProcessor

    source = (
        model if isinstance(model, (str, os.PathLike)) else getattr(unwrap_model(model), "name_or_path", None)
    )
    if not source:
        raise ValueError(
            "evaluate() needs processor= when the model object does not say where it was loaded from"
        )
    return AutoProcessor.from_pretrained(os.fspath(source))


def _choose_backend(backend: str, model: Any) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    is_path = isinstance(model, (str, os.PathLike))
    if backend == "vllm" and not is_path:
        raise ValueError("backend='vllm' needs the model as a checkpoint path, not a loaded model object")
    if backend == "auto":
        return "vllm" if is_path and importlib.util.find_spec("vllm") is not None else "transformers"
    return backend


# --------------------------------------------------------------------------------------------------
# Scoring, per task
#
# Everything task-specific lives in `_TASK_EVALUATIONS` below: how a row's answer is scored, how a task's
# rows become metrics, the caption and the picture of a row in report.png. A new task adds one
# `_TaskEvaluation` there (and its budget in `DEFAULT_MAX_NEW_TOKENS`); `evaluate` needs no other change.


@dataclass
class _Scored:
    record: dict[str, Any]  # the row's line of predictions.jsonl
    prediction: Any  # what the task's metrics take: a box, a count, a text, objects
    solution: Any  # the row's decoded ground truth
    categories: Any = None  # the row's own category list (detection), when it has one


@dataclass(frozen=True)
class _TaskEvaluation:
    """How `evaluate` handles one task.

    `score(request, solution, text)` returns the task's fields of the row's record and the prediction its
    metrics take; it must accept any text. `metrics(scored, categories=..., dataset=...)` returns the
    task's metrics over its rows. `summary(record)` is the row's caption and `ground_truth(solution)`
    what `viz.draw_objects` draws in green (or `visual(record, image)` the whole tile, for tasks whose
    picture is not boxes on the image). `solution(row)`, when set, reads the ground truth from the whole row
    (VQA: the answer with the row's `options` and `target_box`)."""

    score: Callable[[GenerationRequest, Any, str], tuple[dict[str, Any], Any]]
    metrics: Callable[..., dict[str, Any]]
    summary: Callable[[dict[str, Any]], str]
    ground_truth: Callable[[Any], Any] = lambda solution: None
    visual: Callable[[dict[str, Any], Any], Any] | None = None
    solution: Callable[[Mapping[str, Any]], Any] | None = None  # the row's ground truth, when not `solution` alone


def _object_dicts(parsed: ParsedOutput) -> list[dict[str, Any]]:
    """Parsed objects as row-contract dicts (`bbox_2d` or `point_2d`, and `label` when given)."""
    out = []
    for obj in parsed.objects:
        key, coords = ("bbox_2d", obj.bbox) if obj.bbox is not None else ("point_2d", obj.point)
        if coords is None:
            continue
        item: dict[str, Any] = {key: list(coords)}
        if obj.label is not None:
            item["label"] = obj.label
        out.append(item)
    return out


def _rounded(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: ([round(v, 2) for v in val] if k in ("bbox_2d", "point_2d") else val) for k, val in obj.items()}
        for obj in objects
    ]


def _parsed_objects(request: GenerationRequest, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The answer's objects in original pixels, and the record fields every box task shares."""
    parsed = parse_objects(text, request.box_format)
    # Unclipped: a box reaching past the image is scored as written, as COCO's evaluation does.
    frame = Frame.of(request.box_format, request.image_size, request.input_size)
    objects = _object_dicts(parsed.to_pixels(frame, clip=False))
    return {"objects": _rounded(objects), "valid": parsed.valid, "truncated": parsed.truncated}, objects


def _score_grounding(request: GenerationRequest, solution: Any, text: str) -> tuple[dict[str, Any], Any]:
    fields, objects = _parsed_objects(request, text)
    box = next((obj["bbox_2d"] for obj in objects if "bbox_2d" in obj), None)
    gt = _gt_box(solution)
    iou = 0.0
    if box is not None and gt is not None:
        iou = float(min(max(paired_box_iou([box], [gt])[0], 0.0), 1.0))
    fields.update(prediction=None if box is None else [round(v, 2) for v in box], iou=round(iou, 4))
    return fields, box


def _score_counting(request: GenerationRequest, solution: Any, text: str) -> tuple[dict[str, Any], Any]:
    fields, _ = _parsed_objects(request, text)
    count = parse_count(text, request.box_format)
    fields["prediction"] = count
    return fields, count


def _score_detection(request: GenerationRequest, solution: Any, text: str) -> tuple[dict[str, Any], Any]:
    fields, objects = _parsed_objects(request, text)
    fields["prediction"] = len(objects)
    return fields, objects


def _score_ocr(request: GenerationRequest, solution: Any, text: str) -> tuple[dict[str, Any], Any]:
    prediction = strip_wrappers(text)
    return {"prediction": prediction, "valid": bool(prediction), "truncated": False}, prediction


def _grounding_metrics(scored: list[_Scored], **_: Any) -> dict[str, Any]:
    return grounding_metrics([s.prediction for s in scored], [_gt_box(s.solution) for s in scored])


def _counting_metrics(scored: list[_Scored], **_: Any) -> dict[str, Any]:
    return counting_metrics([s.prediction for s in scored], [_gt_count(s.solution) for s in scored])


def _ocr_metrics(scored: list[_Scored], **_: Any) -> dict[str, Any]:
    refs = [None if s.solution is None else str(s.solution) for s in scored]
    return ocr_metrics([s.prediction for s in scored], refs)


def _detection_metrics(
    scored: list[_Scored], *, categories: Sequence[str] | None = None, dataset: Any = None, **_: Any
) -> dict[str, Any]:
    """COCO AP of every detection row against ground truth whose image ids are dataset index + 1."""
    size = max((s.record["index"] for s in scored), default=-1) + 1
    rows: list[Mapping[str, Any]] = [{"task": "other"}] * size
    for s in scored:
        rows[s.record["index"]] = {"task": "detection", "solution": s.solution,
                                   "image_size": s.record["image_size"], "categories": s.categories}  # fmt: skip
    coco_gt, label_to_id = build_coco_ground_truth(rows, categories, dataset=dataset)
    results: list[dict[str, Any]] = []
    dropped = {"unknown_label": 0, "no_box": 0, "invalid_box": 0, "inverted_box": 0}
    for s in scored:
        # Every box scores 1.0 (the model gives no confidence); COCOeval's stable sort then ranks an
        # image's boxes in the order the model emitted them, and keeps the first 100.
        image_results, counts = objects_to_coco_results(s.record["index"] + 1, s.prediction, label_to_id)
        results.extend(image_results)
        for key, value in counts.items():
            dropped[key] += value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = dict(coco_metrics(coco_gt, results))
    result["num_samples"] = len(scored)
    result["objects_dropped"] = dropped
    return result


def _score_jigsaw(request: GenerationRequest, solution: Any, text: str) -> tuple[dict[str, Any], Any]:
    target = jigsaw_target(solution)
    scores = jigsaw_scores(text, target)
    fields = dict(scores, valid=scores["prediction"] is not None, truncated=False, grid=[target.rows, target.cols])
    return fields, scores


def _jigsaw_summary(record: dict[str, Any]) -> str:
    rows, cols = record["grid"]
    extra = "" if record.get("positions") is None else f", positions {record['positions']:.2f}"
    return f"#{record['index']} jigsaw {rows}x{cols}: exact {record.get('exact', 0.0):g}{extra}"


def _jigsaw_visual(record: dict[str, Any], puzzle: Any) -> Any:
    """The puzzle, the model's reassembly and the original (the puzzle reassembled with the true answer);
    for a pair/single/multiple question, the puzzle captioned with the true and the model's answer."""
    target = jigsaw_target(record["solution"])
    rows, cols = target.rows, target.cols
    prediction = record.get("prediction")
    if target.question == "full":
        original = reassemble(puzzle, rows, cols, target.answer)
        model = reassemble(puzzle, rows, cols, prediction if isinstance(prediction, list) else None)
        return image_grid([puzzle, model, original], ncols=3, captions=["puzzle", "model", "original"])
    return image_grid([puzzle], ncols=1, captions=[f"answer {target.answer}, model {prediction}"])


def _vqa_solution(row: Mapping[str, Any]) -> dict[str, Any]:
    options = row.get("options")
    target = row.get("target_box")
    return {
        "answer": row.get("solution"),
        "options": [str(o) for o in options] if options is not None else [],
        "target_box": [float(v) for v in target] if target is not None and len(target) == 4 else None,
    }


def _score_vqa(request: GenerationRequest, solution: Any, text: str) -> tuple[dict[str, Any], Any]:
    prediction, correct = vqa_answer(text, solution["answer"], solution["options"] or None)
    fields = {"prediction": prediction, "correct": correct, "valid": prediction is not None, "truncated": False}
    return fields, correct


def _vqa_summary(record: dict[str, Any]) -> str:
    solution = record.get("solution") or {}
    crop = record.get("crop")
    after = "" if crop is None else f", after crop {crop.get('prediction')}"
    return f"#{record['index']} vqa: {record.get('prediction')}{after} / gt {solution.get('answer')}"


_CROP_RECORD_FIELDS = ("valid", "box", "reason", "area_fraction", "iou", "forced")


def _crop_record_dict(record: Any) -> dict[str, Any]:
    get = record.get if isinstance(record, Mapping) else lambda key: getattr(record, key, None)
    out = {key: get(key) for key in _CROP_RECORD_FIELDS}
    out["box"] = None if out["box"] is None else [int(v) for v in out["box"]]
    return out


def _score_vqa_crop(solution: Any, output: CropTurnsOutput) -> dict[str, Any]:
    """The record's `crop` field: the two-turn answer scored like the single-turn one, and its crop calls."""
    text = "" if output.text is None else str(output.text)
    prediction, correct = vqa_answer(text, solution["answer"], solution["options"] or None)
    return {
        "text": text,
        "turns": [str(t) for t in output.turns],
        "prediction": prediction,
        "correct": correct,
        "records": [_crop_record_dict(r) for r in output.records],
    }


def _vqa_metrics(scored: list[_Scored], **_: Any) -> dict[str, Any]:
    """Accuracy of the single-turn answers; with crop turns also `crop_accuracy` (the same rows answered after
    the crop turn), `crop_accuracy_gain` and the crop statistics (`metrics.crop_metrics`)."""
    result: dict[str, Any] = dict(vqa_metrics([s.prediction for s in scored]))
    cropped = [s for s in scored if s.record.get("crop") is not None]
    if cropped:
        single = vqa_metrics([s.prediction for s in cropped])["accuracy"]
        two_turn = vqa_metrics([s.record["crop"]["correct"] for s in cropped])["accuracy"]
        result["crop_accuracy"] = two_turn
        result["crop_accuracy_gain"] = two_turn - single
        stats = crop_metrics([s.record["crop"]["records"] for s in cropped],
                             [s.solution.get("target_box") for s in cropped])  # fmt: skip
        result.update({k: v for k, v in stats.items() if k != "num_samples"})
    return result


def _clip(text: Any, n: int) -> str:
    return display_text(text, n)


_TASK_EVALUATIONS: dict[str, _TaskEvaluation] = {
    "grounding": _TaskEvaluation(
        score=_score_grounding,
        metrics=_grounding_metrics,
        summary=lambda r: f"#{r['index']} grounding: IoU {r.get('iou', 0.0):.2f}",
        ground_truth=lambda solution: [_gt_box(solution)] if _gt_box(solution) else None,
    ),
    "counting": _TaskEvaluation(
        score=_score_counting,
        metrics=_counting_metrics,
        summary=lambda r: f"#{r['index']} counting: pred {r.get('prediction')} / gt {_gt_count(r.get('solution')):g}",
        ground_truth=lambda solution: solution,
    ),
    "ocr": _TaskEvaluation(
        score=_score_ocr,
        metrics=_ocr_metrics,
        summary=lambda r: f"#{r['index']} ocr: {_clip(r.get('prediction') or '', 60)!r} (gt {_clip(r.get('solution') or '', 40)!r})",
    ),
    "detection": _TaskEvaluation(
        score=_score_detection,
        metrics=_detection_metrics,
        summary=lambda r: f"#{r['index']} detection: {r.get('prediction')} pred / {len(_detection_objects(r.get('solution')))} gt",
        ground_truth=lambda solution: solution,
    ),
    # Open-vocabulary detection: COCO AP/AR over the phrases asked, and hallucination rates.
    "ovd": _TaskEvaluation(
        score=_score_detection,
        metrics=lambda scored, **_: ovd_metrics([s.prediction for s in scored], [s.solution for s in scored],
                                                [s.record["image_size"] for s in scored]),
        summary=lambda r: f"#{r['index']} ovd: {r.get('prediction')} pred / {len(_detection_objects(r.get('solution')))} gt",
        ground_truth=lambda solution: solution,
    ),
    # Jigsaw puzzles: exact / position / connection accuracy per grid size and over all; the tile shows the
    # puzzle, the model's reassembly and the original.
    "jigsaw": _TaskEvaluation(
        score=_score_jigsaw,
        metrics=lambda scored, **_: jigsaw_metrics(s.record for s in scored),
        summary=_jigsaw_summary,
        visual=_jigsaw_visual,
    ),
    # Multiple-choice / short-answer VQA (the "look again" task): accuracy as the VQA reward judges it; the
    # tile shows the target region (green) and, with crop turns, the crop (red).
    "vqa": _TaskEvaluation(
        score=_score_vqa,
        metrics=_vqa_metrics,
        summary=_vqa_summary,
        ground_truth=lambda solution: [solution["target_box"]] if solution and solution.get("target_box") else None,
        solution=_vqa_solution,
    ),
}  # fmt: skip
"""Task → how `evaluate` scores it, computes its metrics and draws it (see `_TaskEvaluation`)."""


def _score_row(request: GenerationRequest, solution: Any, text: str, categories: Any = None) -> _Scored:
    record: dict[str, Any] = {
        "index": request.index,
        "task": request.task,
        "box_format": request.box_format,
        "image_size": list(request.image_size),
        "input_size": list(request.input_size),
        "text": text,
    }
    fields, prediction = _TASK_EVALUATIONS[request.task].score(request, solution, text)
    record.update(fields)
    record["solution"] = solution
    return _Scored(valid_text(record), prediction, solution, categories)


def _task_metrics(task: str, scored: list[_Scored], **context: Any) -> dict[str, Any]:
    result = dict(_TASK_EVALUATIONS[task].metrics(scored, **context))
    result["num_unparsed"] = sum(not s.record.get("valid", True) for s in scored)
    result["num_truncated"] = sum(bool(s.record.get("truncated")) for s in scored)
    return result


# --------------------------------------------------------------------------------------------------
# Outputs: predictions and metrics first, pictures last (a picture that fails is a warning)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


_LINE_BREAKS_IN_JSON = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _json_line(record: Mapping[str, Any]) -> str:
    """One JSON Lines line: UTF-8-safe, and escaped so that no reader that splits on Unicode line breaks
    (`str.splitlines` splits on U+0085, U+2028, U+2029; JSON leaves them raw) sees two lines."""
    text = json.dumps(valid_text(record), ensure_ascii=False, default=_json_default)
    return text.translate(_LINE_BREAKS_IN_JSON) + "\n"


def _prepare_output_dir(output_dir: str | os.PathLike) -> str:
    """Create `output_dir` (before any generation), or say why it cannot be used."""
    path = os.fspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"output_dir {path!r} exists and is not a directory")
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"output_dir {path!r} is not writable")
    return path


def _write_metrics(path: str, metrics_: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(valid_text({"metrics": metrics_, "config": config}), f, indent=2, ensure_ascii=False,
                  default=_json_default)  # fmt: skip


def _visual(record: dict[str, Any], image: Any) -> Any:
    evaluation = _TASK_EVALUATIONS[record["task"]]
    if evaluation.visual is not None:
        return evaluation.visual(record, image)
    scale = min(4.0, max(1.0, 256 / max(image.size)))
    gt = evaluation.ground_truth(record.get("solution"))
    return draw_objects(image, record.get("objects") or None, gt, scale=scale)


def _write_report_image(path: str, visuals: list[tuple[dict[str, Any], Any]]) -> bool:
    """report.png of the sampled rows; a row that cannot be drawn leaves an empty cell, and a picture that
    cannot be written at all is a warning, never a lost run."""
    tiles, captions = [], []
    for record, image in visuals:
        try:
            tiles.append(_visual(record, image))
        except Exception as err:  # noqa: BLE001 - one row's picture must not cost the report
            warnings.warn(f"report.png: row {record.get('index')} could not be drawn ({err!r})", UserWarning,
                          stacklevel=3)  # fmt: skip
            tiles.append(None)
        try:
            captions.append(_TASK_EVALUATIONS[record["task"]].summary(record))
        except Exception:  # noqa: BLE001 - a caption is a convenience
            captions.append(f"#{record.get('index')}")
    try:
        image_grid(tiles, ncols=4, captions=captions).save(path, format="PNG")
    except Exception as err:  # noqa: BLE001 - predictions and metrics are already written
        warnings.warn(f"report.png could not be written ({err!r}); predictions and metrics are", UserWarning,
                      stacklevel=3)  # fmt: skip
        return False
    return True


def _markdown_cell(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else display_text(value)
    return text.replace("|", "\\|")


def _write_report(
    output_dir: str, metrics_: dict[str, dict[str, Any]], config: dict[str, Any], has_image: bool
) -> str:
    lines = ["# Perception evaluation", ""]
    lines.append("| setting | value |")
    lines.append("|---|---|")
    for key in (
        "model",
        "box_format",
        "backend",
        "min_pixels",
        "max_pixels",
        "max_new_tokens",
        "num_samples",
    ):
        lines.append(f"| {key} | {_markdown_cell(config.get(key))} |")
    lines.append("")
    lines.append(
        "Predicted boxes are mapped from the model's frame back to original image pixels before scoring; "
        "fractions in [0, 1] (the paper shows ×100)."
    )
    for task, values in metrics_.items():
        lines += ["", f"## {_markdown_cell(task)}", "", "| metric | value |", "|---|---|"]
        for name, value in values.items():
            if isinstance(value, Mapping):
                continue
            lines.append(f"| {_markdown_cell(name)} | {_markdown_cell(value)} |")
        per_class = values.get("per_class_AP")
        if isinstance(per_class, Mapping) and per_class:
            lines += ["", "| category | AP |", "|---|---|"]
            lines += [f"| {_markdown_cell(name)} | {_markdown_cell(ap)} |" for name, ap in per_class.items()]
    if has_image:
        lines += [
            "",
            "## Samples",
            "",
            "![predictions (red) against ground truth (green)](report.png)",
            "",
            "Red: predictions; green: ground truth, both in original image pixels.",
        ]
    path = os.path.join(output_dir, "report.md")
    with open(path, "w", encoding="utf-8", errors="replace") as f:
        f.write("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# evaluate


def _prepare(
    index: int,
    row: Mapping[str, Any],
    box_format: str | None,
    min_pixels: int | None,
    max_pixels: int | None,
    max_new_tokens: int | None,
) -> tuple[GenerationRequest, Any, Any]:
    task = row.get("task")
    if task not in _TASK_EVALUATIONS:
        raise ValueError(
            f"row {index}: no evaluation for task {task!r}; expected one of {tuple(_TASK_EVALUATIONS)}"
        )
    image = _row_image(row)
    image_size = tuple(int(v) for v in (row.get("image_size") or image.size))
    model_image = fit_to_grid(image, box_format, min_pixels, max_pixels) if box_format is not None else image
    request = GenerationRequest(
        index=index,
        task=task,
        prompt=_as_prompt(row["prompt"]),
        image=model_image,
        image_size=image_size,
        input_size=tuple(model_image.size),
        box_format=box_format,
        max_new_tokens=int(max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task]),
    )
    load = _TASK_EVALUATIONS[task].solution
    solution = load(row) if load is not None else _load_solution(task, row.get("solution"))
    return request, solution, image


def evaluate(
    model: Any,
    dataset: Any,
    *,
    processor: Any = None,
    box_format: str | None = "auto",
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    backend: str = "auto",
    output_dir: str | os.PathLike | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
    num_visual: int = 16,
    progress: bool = True,
    categories: Sequence[str] | None = None,
    generate_fn: Callable[[list[GenerationRequest]], list[str]] | None = None,
    vllm_kwargs: Mapping[str, Any] | None = None,
    crop_turns: int = 0,
    crop_min_pixels: int | None = None,
    crop_max_pixels: int | None = None,
    crop_generate_fn: Callable[[list[CropTurnsRequest]], list[CropTurnsOutput]] | None = None,
) -> EvaluationResult:
    """Evaluate a model on a row-contract dataset with Perception-R1's protocol, mapping predictions back to
    original image pixels.

    For each row: the image is resized **once** to the box format's grid within the pixel limits, exactly as
    for training (`frames.fit_to_grid`), so the model's frame (`input_size`) is known and every
    processor (transformers or vLLM) feeds it unchanged. The model answers the row's `prompt` (batched
    `generate`, left padding, greedy unless `generation_kwargs` says otherwise; or vLLM). The text is parsed
    as the rewards parse it (`formats.parse_objects` with the box format; Qwen2-VL box tokens are kept when
    decoding), boxes and points are mapped from the box format's frame (0–1000 for Qwen2-VL / Qwen3-VL, input
    pixels for Qwen2.5-VL) to original pixels (`frames.Frame`), and scored per task:

    * grounding: `metrics.grounding_metrics` on the first predicted box (none → IoU 0);
    * counting: `metrics.counting_metrics` on `formats.parse_count` (number of objects listed);
    * ocr: `metrics.ocr_metrics` on the answer text;
    * detection: `metrics.coco_metrics` (pycocotools) against a COCO ground truth built from the rows
      (`build_coco_ground_truth`: every image kept, none dropped); each box scores 1.0, so COCOeval ranks an
      image's boxes in the order the model emitted them (the model gives no confidence; PR1 does the same).
    * vqa: `metrics.vqa_metrics` on the answer as `rewards.vqa_reward` judges it (option letter, number or
      short text from the last `\\boxed{}`); with `crop_turns`, also after a crop turn (see below).

    The model frame is the size this evaluation fed the image at (a row's own `input_size` column, computed
    for training with possibly other limits, is not used), checked against the processor's `image_grid_thw`.

    Every task also reports `num_unparsed` (no answer structure found) and `num_truncated`. Empty or
    unparseable answers score 0; nothing in a model's output can crash the run.

    With `output_dir` (checked and created before any model is loaded), writes `predictions.jsonl` (row
    index, task, raw text, parsed objects in original pixels, prediction, ground truth), one line per row
    as soon as the row is scored, so a run stopped half way keeps its rows; then `metrics.json`
    (`{"metrics": ..., "config": ...}`); then `report.png` (the first `num_visual` rows: predictions in
    red, ground truth in green) and `report.md` (settings, metrics tables, the image). Records are valid
    UTF-8 whatever the model wrote (a lone surrogate becomes U+FFFD, also in `predictions`), and labels
    are drawn whatever characters they hold; a picture that still fails is a `UserWarning`, never a lost run.

    Args:
        model: a checkpoint path or a loaded model (`None` with `generate_fn`).
        dataset: a `datasets.Dataset` from the builders, or a list of row dicts (`prompt`, `image`, `task`,
            `solution`, `image_size`; optional `box_format`).
        processor: the model's processor (loaded from the model path when omitted).
        box_format: the model family (`"qwen2_vl"`, `"qwen2_5_vl"`, `"qwen3_vl"`); `"auto"` reads it from the
            model's config, else from the rows' `box_format` column. Without one, images are fed as is
            and coordinates are taken as original pixels.
        min_pixels, max_pixels: pixel limits of the grid resize; default: the processor's, else the box format's.
        batch_size: rows per `generate` call (vLLM receives chunks of at least 256 rows).
        max_new_tokens: generation budget; default per task `DEFAULT_MAX_NEW_TOKENS` (PR1's: 512 grounding
            and counting, 2048 OCR, 4096 detection).
        backend: `"transformers"`, `"vllm"` (needs a checkpoint path), or `"auto"` (vLLM when it is
            importable and the model is a path).
        output_dir: where to write predictions, metrics and the report.
        generation_kwargs: extra `generate` arguments (transformers names; translated for vLLM).
        num_visual: rows drawn in `report.png` (0 for none).
        progress: show a tqdm progress bar.
        categories: detection category names (default: the dataset's list, else the ground-truth labels).
        generate_fn: replaces the model: called with a list of `GenerationRequest`s, returns one text each.
        vllm_kwargs: extra `vllm.LLM` arguments (e.g. `tensor_parallel_size`, `gpu_memory_utilization`).
        crop_turns: 1: for VQA rows, also answer after a crop turn ("look again", after MGPO; 0: none):
            the model names a box, sees that region cropped from the original image, then answers (greedy, the
            transformers backend). The metrics then hold both accuracies (`accuracy` single-turn,
            `crop_accuracy` after the crop turn, `crop_accuracy_gain`) and the crop statistics of
            `metrics.crop_metrics` (`call_rate`, `forced_rate`, `invalid_rate`, `crop_rate`, `mean_crop_area`, `mean_iou`
            and `target_inside` against the rows' `target_box`); each record gets a `crop` field.
        crop_min_pixels, crop_max_pixels: the crop's pixel limits (default MGPO's, `crop.crop_pixel_limits`).
        crop_generate_fn: replaces the two-turn generation (tests): called with `CropTurnsRequest`s, returns one
            `CropTurnsOutput` each.

    Returns:
        `EvaluationResult` with `metrics` (`{task: {...}}`), `predictions`, `config` and `files`.

    Example:
    ```python
    >>> from PIL import Image
    >>> from trl_perception.data.prompts import build_prompt
    >>> rows = [{"prompt": build_prompt("grounding", question="cat"), "image": Image.new("RGB", (640, 480)),
    ...          "task": "grounding", "solution": [64, 48, 320, 240], "image_size": [640, 480]}]
    >>> answer = lambda requests: ["<|box_start|>(100,100),(500,500)<|box_end|>" for _ in requests]
    >>> result = evaluate(None, rows, box_format="qwen2_vl", generate_fn=answer, progress=False)
    >>> result.predictions[0]["objects"], result.metrics["grounding"]["acc@0.5"]
    ([{'bbox_2d': [64.0, 48.0, 320.0, 240.0]}], 1.0)

    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if box_format not in (None, "auto"):
        check_box_format(box_format)
    if generate_fn is None and model is None:
        raise ValueError("evaluate() needs a model (a path or a loaded model) or a generate_fn")
    if isinstance(crop_turns, bool) or crop_turns not in (0, 1):
        raise ValueError(f"crop_turns must be 0 or 1 (MGPO's two turns), got {crop_turns!r}")
    if crop_turns and crop_generate_fn is None and generate_fn is not None:
        raise ValueError("crop_turns with generate_fn needs crop_generate_fn too (the model is replaced)")
    # The output folder is checked (and created) before any model is loaded or any row generated.
    out_dir = _prepare_output_dir(output_dir) if output_dir is not None else None
    model_box_format = box_format if box_format not in (None, "auto") else _model_box_format(model)

    generator: Callable[[list[GenerationRequest]], list[str]]
    if crop_turns and backend == "auto":
        backend = "transformers"  # the crop turns run with transformers; one model serves both passes
    chosen = "custom" if generate_fn is not None else _choose_backend(backend, model)
    if crop_turns and chosen == "vllm":
        raise ValueError("crop_turns runs its two turns with transformers: use backend='transformers'")
    model_name = (
        os.fspath(model)
        if isinstance(model, (str, os.PathLike))
        else None
        if model is None
        else type(model).__name__
    )
    if generate_fn is not None:
        generator, processor_for_limits = generate_fn, processor
    else:
        processor = _load_processor(model, processor)
        processor_for_limits = processor
    limits: dict[str | None, tuple[int | None, int | None]] = {}

    def limits_for(fmt: str | None) -> tuple[int | None, int | None]:
        if fmt not in limits:
            limits[fmt] = _pixel_limits(fmt, processor_for_limits, min_pixels, max_pixels)
        return limits[fmt]

    if generate_fn is None:
        lo, hi = limits_for(model_box_format)
        if chosen == "vllm":
            generator = _VLLMGenerator(os.fspath(model), processor, lo, hi, generation_kwargs, vllm_kwargs)
        else:
            loaded = (
                _load_model(os.fspath(model))
                if isinstance(model, (str, os.PathLike))
                else unwrap_model(model)
            )
            generator = _TransformersGenerator(loaded, processor, lo, hi, generation_kwargs)
    crop_generator = crop_generate_fn
    if crop_turns and crop_generator is None:
        crop_generator = _crop_turns_generator(generator, crop_turns, crop_min_pixels, crop_max_pixels)
    chunk = max(batch_size, _VLLM_MIN_CHUNK) if chosen == "vllm" else batch_size

    from tqdm.auto import tqdm

    total = len(dataset) if hasattr(dataset, "__len__") else None
    scored: dict[str, list[_Scored]] = {}
    visuals: list[tuple[dict[str, Any], Any]] = []
    records: list[dict[str, Any]] = []
    mismatch_warned = False
    box_formats_seen: set[str | None] = set()
    files: dict[str, str] = {}
    stream = None
    if out_dir is not None:
        # Each row's record is written as soon as it is scored: a run stopped half way keeps its rows.
        files["predictions"] = os.path.join(out_dir, "predictions.jsonl")
        stream = open(files["predictions"], "w", encoding="utf-8")  # noqa: SIM115 - closed in `finally`

    def flush(batch: list[tuple[GenerationRequest, Any, Any, Any, Any]]) -> None:
        texts = list(generator([request for request, _, _, _, _ in batch]))
        if len(texts) != len(batch):
            raise RuntimeError(f"generation returned {len(texts)} texts for {len(batch)} prompts")
        crops: dict[int, dict[str, Any]] = {}
        looked = [(i, item) for i, item in enumerate(batch) if item[4] is not None]
        if looked and crop_generator is not None:
            outputs = list(crop_generator([
                CropTurnsRequest(item[0], item[4], item[1].get("target_box")) for _, item in looked
            ]))  # fmt: skip
            if len(outputs) != len(looked):
                raise RuntimeError(f"crop turns returned {len(outputs)} outputs for {len(looked)} rows")
            crops = {i: _score_vqa_crop(item[1], out) for (i, item), out in zip(looked, outputs)}
        for position, ((request, solution, image, row_categories, _), text) in enumerate(zip(batch, texts)):
            item = _score_row(request, solution, "" if text is None else str(text), row_categories)
            if position in crops:
                item.record["crop"] = valid_text(crops[position])
                first = next(iter(crops[position]["records"]), None)
                if first is not None and first["valid"] and first["box"] is not None:
                    item.record["objects"] = [{"bbox_2d": first["box"], "label": "crop"}]  # red in report.png
            scored.setdefault(request.task, []).append(item)
            records.append(item.record)
            if stream is not None:
                stream.write(_json_line(item.record))
            if len(visuals) < num_visual:
                visuals.append((item.record, image))
        if stream is not None:
            stream.flush()

    try:
        batch: list[tuple[GenerationRequest, Any, Any, Any, Any]] = []
        with tqdm(total=total, disable=not progress, desc="evaluate", unit="row") as bar:
            for index, row in enumerate(dataset):
                row_box_format = row.get("box_format") if isinstance(row.get("box_format"), str) else None
                row_format = model_box_format or (row_box_format if row_box_format in BOX_FORMATS else None)
                if (
                    model_box_format
                    and row_box_format
                    and row_box_format != model_box_format
                    and not mismatch_warned
                ):
                    mismatch_warned = True
                    warnings.warn(
                        f"rows were built for {row_box_format!r} but the model is {model_box_format!r}; parsing and "
                        f"frames follow {model_box_format!r}",
                        UserWarning,
                        stacklevel=2,
                    )
                box_formats_seen.add(row_format)
                lo, hi = limits_for(row_format)
                request, solution, image = _prepare(index, row, row_format, lo, hi, max_new_tokens)
                keep_image = image if len(visuals) + len(batch) < num_visual else None
                original = image if crop_turns and request.task == "vqa" else None
                batch.append((request, solution, keep_image, row.get("categories"), original))
                if len(batch) >= chunk:
                    flush(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                flush(batch)
                bar.update(len(batch))
    finally:
        if stream is not None:
            stream.close()

    metrics_: dict[str, dict[str, Any]] = {
        task: _task_metrics(task, scored[task], categories=categories, dataset=dataset)
        for task in _TASK_EVALUATIONS
        if task in scored
    }
    used_box_formats = sorted(f for f in box_formats_seen if f) or [None]
    config = {
        "model": model_name,
        "box_format": used_box_formats[0] if len(used_box_formats) == 1 else used_box_formats,
        "backend": chosen,
        "min_pixels": limits_for(used_box_formats[0])[0] if len(used_box_formats) == 1 else None,
        "max_pixels": limits_for(used_box_formats[0])[1] if len(used_box_formats) == 1 else None,
        "max_new_tokens": max_new_tokens
        if max_new_tokens
        else "per task " + json.dumps(DEFAULT_MAX_NEW_TOKENS),
        "generation_kwargs": dict(generation_kwargs or {}),
        "num_samples": len(records),
        "crop_turns": crop_turns,
    }
    if out_dir is not None:
        files["metrics"] = os.path.join(out_dir, "metrics.json")
        _write_metrics(files["metrics"], metrics_, config)
        shown = [(record, image) for record, image in visuals if image is not None]
        has_image = False
        if shown:
            has_image = _write_report_image(os.path.join(out_dir, "report.png"), shown)
            if has_image:
                files["report_image"] = os.path.join(out_dir, "report.png")
        files["report"] = _write_report(out_dir, metrics_, config, has_image)
    return EvaluationResult(metrics=metrics_, predictions=records, config=config, files=files)


# --------------------------------------------------------------------------------------------------
# Command line


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `trl-perception eval` options to `parser` (check and run them with `run_eval_from_args`).

    Example:
    ```python
    >>> import argparse
    >>> args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
    ...     ["--model", "ckpt", "--task", "grounding", "--max-pixels", "1000000"])
    >>> args.source, args.max_pixels, args.backend
    ('synthetic', 1000000, 'auto')

    ```
    """
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument(
        "--task",
        required=True,
        choices=[*_TASK_EVALUATIONS, "mixed"],
        help="task to evaluate ('mixed': synthetic rows of every task, with --source synthetic)",
    )
    parser.add_argument(
        "--source",
        default="synthetic",
        help="data source: 'synthetic', or a file/directory/Hub id that the task's builder reads",
    )
    parser.add_argument("--split", default=None, help="split of the source (e.g. val, testA, test)")
    parser.add_argument("--num-samples", type=int, default=None, help="evaluate a deterministic subset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset / synthetic data")
    parser.add_argument(
        "--source-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra builder argument (repeatable); VALUE is read as JSON when it parses, else as text",
    )
    parser.add_argument(
        "--box-format", default="auto", choices=["auto", *BOX_FORMATS], help="box format (model family)"
    )
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: PR1's budget per task")
    parser.add_argument("--backend", default="auto", choices=list(BACKENDS))
    parser.add_argument(
        "--generation-kwargs",
        default=None,
        help="JSON object of extra generate arguments, e.g. '{\"repetition_penalty\": 1.05}'",
    )
    parser.add_argument(
        "--output-dir", default="eval_results", help="where predictions, metrics and report go"
    )
    parser.add_argument("--num-visual", type=int, default=16, help="samples drawn in report.png")
    parser.add_argument(
        "--crop-turns",
        type=int,
        default=0,
        help="vqa: 1 also answers after a crop turn (look again, after MGPO) and reports both accuracies "
        "and the crop statistics (transformers backend)",
    )
    parser.add_argument("--crop-min-pixels", type=int, default=None, help="crop resize limit (default MGPO's 200704)")
    parser.add_argument("--crop-max-pixels", type=int, default=None, help="crop resize limit (default MGPO's 1003520)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _is_hub_id(text: str) -> bool:
    """Whether `text` has the shape of a Hugging Face Hub repository id (`name` or `owner/name`)."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and "--" not in text and len(text) <= 96


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--source-option expects KEY=VALUE, got {text!r}")
    try:
        return key.strip().replace("-", "_"), json.loads(value)
    except ValueError:
        return key.strip().replace("-", "_"), value


def _check_eval_arguments(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every check that needs neither a model nor data, so that a bad argument fails at once: returns the
    builder options of `--split` / `--source-option` and the decoded `--generation-kwargs`; a `ValueError`
    (or `OSError`) naming the option otherwise."""
    for name in ("num_samples", "batch_size", "max_new_tokens", "min_pixels", "max_pixels", "crop_min_pixels",
                 "crop_max_pixels"):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    crop_turns = getattr(args, "crop_turns", 0) or 0
    if crop_turns not in (0, 1):
        raise ValueError(f"--crop-turns must be 0 or 1 (MGPO's two turns), got {crop_turns}")
    if crop_turns and args.task != "vqa":
        raise ValueError(f"--crop-turns applies to --task vqa (questions about a region), not {args.task}")
    if crop_turns and args.backend == "vllm":
        raise ValueError("--crop-turns runs its two turns with transformers: use --backend transformers (or auto)")
    lo, hi = getattr(args, "crop_min_pixels", None), getattr(args, "crop_max_pixels", None)
    if (lo is not None or hi is not None) and not crop_turns:
        raise ValueError("--crop-min-pixels / --crop-max-pixels need --crop-turns")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"--crop-min-pixels ({lo}) exceeds --crop-max-pixels ({hi})")
    if args.num_visual < 0:
        raise ValueError(f"--num-visual must be >= 0, got {args.num_visual}")
    if args.min_pixels is not None and args.max_pixels is not None and args.min_pixels > args.max_pixels:
        raise ValueError(f"--min-pixels ({args.min_pixels}) exceeds --max-pixels ({args.max_pixels})")
    generation_kwargs = None
    if args.generation_kwargs:
        try:
            generation_kwargs = json.loads(args.generation_kwargs)
        except ValueError as err:
            raise ValueError(
                f"--generation-kwargs is not valid JSON ({err}): {args.generation_kwargs!r}"
            ) from None
        if not isinstance(generation_kwargs, dict):
            raise ValueError(f"--generation-kwargs must be a JSON object, got {args.generation_kwargs!r}")
        from transformers import GenerationConfig

        unknown = sorted(key for key in generation_kwargs if not hasattr(GenerationConfig(), key))
        if unknown:
            raise ValueError(
                f"--generation-kwargs: {unknown} are not generation arguments (transformers' names)"
            )
    options = dict(_parse_option(option) for option in (args.source_option or []))
    if args.split is not None:
        options.setdefault("split", args.split)
    model = os.path.expanduser(args.model)
    if os.path.exists(model):
        if not os.path.isdir(model):
            raise NotADirectoryError(f"--model {args.model}: not a checkpoint folder")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise FileNotFoundError(f"--model {args.model}: the folder has no config.json (not a checkpoint)")
    elif not _is_hub_id(args.model):
        raise FileNotFoundError(f"--model {args.model}: no such checkpoint folder (nor a Hub id)")
    source = str(args.source)
    if source != "synthetic" and not os.path.exists(source) and not _is_hub_id(source):
        raise FileNotFoundError(f"--source {source}: no such file or folder")
    if args.task == "mixed" and source != "synthetic":
        raise ValueError(
            "--task mixed evaluates synthetic rows of every task; use it with --source synthetic"
        )
    output_dir = os.path.abspath(args.output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--output-dir {args.output_dir}: exists and is not a folder")
    parent = output_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--output-dir {args.output_dir}: cannot write in {parent}")
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("--backend vllm: vllm is not installed (pip install 'trl-perception[vllm]')")
    return options, generation_kwargs


def _checked_box_format(model: str, box_format: str) -> str | None:
    """`--box-format`, else the checkpoint's (a local folder's config.json, or a Hub id's config, fetched
    once here so that a wrong id fails before any data is built)."""
    if box_format != "auto":
        return box_format
    if os.path.isdir(os.path.expanduser(model)):
        return box_format_of(os.path.expanduser(model))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, HTTP errors...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(
            f"--model {model}: cannot read its config from the Hub or the cache ({first_line})"
        ) from err
    return box_format_of(config)


def run_eval_from_args(args: argparse.Namespace) -> EvaluationResult:
    """Check the arguments, build the dataset named by `--task/--source`, evaluate `--model` on it and print
    the metrics; the body of `trl-perception eval`. Arguments are checked before any model or data is
    loaded; a bad one raises a `ValueError` or `OSError` naming it.

    Example:
    ```python
    >>> import argparse, tempfile
    >>> from trl_perception.testing import tiny_vlm
    >>> args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
    ...     ["--model", tiny_vlm("qwen2_5_vl"), "--task", "counting", "--num-samples", "2",
    ...      "--max-new-tokens", "2", "--output-dir", tempfile.mkdtemp(), "--no-progress"])
    >>> result = run_eval_from_args(args)  # doctest: +ELLIPSIS
    {...
    >>> result.metrics["counting"]["num_samples"]
    2

    ```
    """
    options, generation_kwargs = _check_eval_arguments(args)
    box_format = _checked_box_format(args.model, args.box_format)
    try:
        dataset = build_dataset(
            args.task,
            args.source,
            num_samples=args.num_samples,
            seed=args.seed,
            box_format=box_format,
            **options,
        )
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"--source-option: the {args.task} builder takes no such option ({err})") from None
    result = evaluate(
        args.model,
        dataset,
        box_format=args.box_format,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        backend=args.backend,
        output_dir=args.output_dir,
        generation_kwargs=generation_kwargs,
        num_visual=args.num_visual,
        progress=not args.no_progress,
        crop_turns=getattr(args, "crop_turns", 0) or 0,
        crop_min_pixels=getattr(args, "crop_min_pixels", None),
        crop_max_pixels=getattr(args, "crop_max_pixels", None),
    )
    print(json.dumps(result.flat(), indent=2))
    if result.files:
        print(f"wrote {', '.join(sorted(result.files.values()))}")
    return result


# --------------------------------------------------------------------------------------------------
# Crop turns ("look again", after MGPO): two-turn greedy generation


@dataclass
class CropTurnOutput:
    """One row of `generate_with_crop_turns`.

    Attributes:
        first_turn: the model's first turn (text, tool call included as written).
        second_turn: its answer after the tool turn; `None` when there was no second turn.
        answer: the final answer text (the second turn when there is one, else the first).
        called: whether the model itself called the crop tool.
        crops: the `CropRecord` of each tool call (box in original pixels, validity, area fraction, IoU with
            the row's `target_box`, whether the call was forced).
    """

    first_turn: str
    second_turn: str | None
    answer: str
    called: bool
    crops: list[CropRecord]


def _fill_images(prompt: Any, images: list[Any]) -> list[dict[str, Any]]:
    from trl.data_utils import prepare_multimodal_messages

    return prepare_multimodal_messages(_as_prompt(prompt), images=images)


def _with_instruction(messages: list[dict[str, Any]], instruction: str | None) -> list[dict[str, Any]]:
    """The instruction appended to the last turn as a text part, as TRL does with `reset`'s return value."""
    if not instruction:
        return messages
    last = messages[-1]
    return messages[:-1] + [{**last, "content": list(last["content"]) + [{"type": "text", "text": instruction}]}]


def _image_parts(messages: list[dict[str, Any]]) -> list[Any]:
    return [
        part["image"]
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, Mapping) and part.get("type") == "image"
    ]


def _greedy(model: Any, processor: Any, conversations: list[list[dict[str, Any]]], tools: list[Any],
            max_new_tokens: int) -> tuple[list[list[int]], list[list[int]]]:  # fmt: skip
    """Greedy generation for rendered conversations: (prompt ids, new ids up to and including the end of turn)."""
    import torch

    tokenizer = processor.tokenizer
    texts = [
        processor.apply_chat_template(c, tools=tools, add_generation_prompt=True, tokenize=False)
        for c in conversations
    ]
    images = [image for c in conversations for image in _image_parts(c)]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = padding_side
    parameter = next(model.parameters())
    inputs = {
        k: (v.to(parameter.device, parameter.dtype) if v.is_floating_point() else v.to(parameter.device))
        for k, v in inputs.items()
        if hasattr(v, "to")
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None
            )
    finally:
        if was_training:
            model.train()
    sequences = output.sequences if hasattr(output, "sequences") else output
    width = inputs["input_ids"].shape[1]
    ends = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id, tokenizer.pad_token_id}
    prompts, completions = [], []
    for ids, mask, row in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), sequences.tolist()):
        prompts.append([t for t, m in zip(ids, mask) if m])
        new = row[width:]
        cut = next((i + 1 for i, t in enumerate(new) if t in ends), len(new))
        completions.append(new[:cut])
    return prompts, completions


def generate_with_crop_turns(
    model: Any,
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    box_format: str,
    *,
    max_new_tokens: int = 512,
    crop_min_pixels: int | None = None,
    crop_max_pixels: int | None = None,
    forced: bool = True,
    batch_size: int = 8,
) -> list[CropTurnOutput]:
    """Crop turns at evaluation time, greedy with transformers: the same `CropEnvironment`, instruction, tool and
    chat template as training with `crop_turns=1`.

    Turn 1 sees the row's prompt (its `image` filled in) with the crop instruction; a `<tool_call>` is parsed
    with TRL's parser and run on the row's environment, which crops `original_image` (else `image`); turn 2
    sees the crop (or, for an invalid box, the image again) and answers. With `forced` (MGPO's fixed
    two-turn template, as `PerceptionGRPOConfig.crop_forced`), a first turn that ends without a tool call also
    gets the second turn, with the original image; without it, that first turn is the answer.

    Args:
        model: a Qwen-VL model (`generate`).
        processor: its processor; a copy gets the tool template and parser (`crop.prepare_tool_processor`).
        rows: mappings with `prompt` (conversational, `{"type": "image"}` placeholders), `image` (what the
            model sees, on the family's grid), optional `original_image` (the high-resolution original the
            crop is cut from), `input_size` (default: `image.size`) and `target_box` (original pixels).
        box_format: the family's frame the model writes the box in.
        max_new_tokens: budget of each turn.
        crop_min_pixels, crop_max_pixels: the crop's size limits (MGPO's by default, kept within the
            processor's limits).
        forced: give a second turn to first turns without a tool call.
        batch_size: rows generated together.

    Returns:
        `list[CropTurnOutput]`, one per row.

    Example:
    ```python
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> from trl_perception.data import make_synthetic
    >>> from trl_perception.testing import tiny_vlm
    >>> rows = make_synthetic("grounding", 2, box_format="qwen3_vl")
    >>> model = AutoModelForImageTextToText.from_pretrained(tiny_vlm("qwen3_vl"))
    >>> outputs = generate_with_crop_turns(model, AutoProcessor.from_pretrained(tiny_vlm("qwen3_vl")), rows,
    ...                                    "qwen3_vl", max_new_tokens=8)
    >>> len(outputs), outputs[0].answer == (outputs[0].second_turn or outputs[0].first_turn)
    (2, True)

    ```
    """
    from trl.chat_template_utils import parse_response

    processor = prepare_tool_processor(copy.deepcopy(processor), box_format)
    image_processor = getattr(processor, "image_processor", None)
    limits = _processor_pixel_limits(processor) if image_processor is not None else (None, None)
    lo, hi = crop_pixel_limits(
        crop_min_pixels, crop_max_pixels, limits if None not in limits else None  # type: ignore[arg-type]
    )
    outputs: list[CropTurnOutput] = []
    for start in range(0, len(rows), max(1, int(batch_size))):  # noqa: PLR1702
        batch = [dict(rows[i]) for i in range(start, min(start + max(1, int(batch_size)), len(rows)))]
        environments = [CropEnvironment(box_format, min_pixels=lo, max_pixels=hi, max_crops=1) for _ in batch]
        conversations = []
        for row, environment in zip(batch, environments):
            image = _row_image(row)
            if row.get("original_image") is None:
                row["original_image"] = image
            if None not in limits:  # what the processor feeds unchanged: the frame the model writes its box in
                image = fit_to_grid(image, box_format, limits[0], limits[1])
            row["image"], row["input_size"] = image, list(image.size)
            instruction = environment.reset(**row)
            conversations.append(_with_instruction(_fill_images(row["prompt"], [image]), instruction))
        tools = [environments[0].crop_image] if environments else []
        prompt_ids, first_ids = _greedy(model, processor, conversations, tools, max_new_tokens)
        follow, pending = [], []
        firsts: list[dict[str, Any]] = []
        turn_ends = {processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.eos_token_id}
        for i, environment in enumerate(environments):
            parsed = parse_response(processor.tokenizer, first_ids[i], prefix=prompt_ids[i], tools=tools)
            firsts.append(parsed)
            calls = parsed.get("tool_calls") or []
            ended = bool(first_ids[i]) and first_ids[i][-1] in turn_ends
            if not calls and not (forced and ended):
                continue
            messages = [{**parsed, "content": parsed.get("content") or ""}]
            if calls:
                call = calls[0].get("function", {}) if isinstance(calls[0], Mapping) else {}
                arguments = call.get("arguments") if isinstance(call.get("arguments"), Mapping) else {}
                try:
                    result: Any = environment.crop_image(**arguments)
                except TypeError as error:  # arguments the tool does not take, as TRL reports a failed call
                    result = str({"error": str(error)})
                messages[0]["tool_calls"] = [{"type": "function", "function": {**call, "arguments": arguments}}]
            else:
                result = ForcedCrop(environment)()
                messages[0]["tool_calls"] = [{"type": "function", "function": {"name": "crop_image", "arguments": {}}}]
            messages.append({"role": "tool", "name": "crop_image", "content": result})
            follow.append(conversations[i] + messages)
            pending.append(i)
        seconds: dict[int, str] = {}
        if follow:
            from trl.data_utils import prepare_multimodal_messages

            follow = [prepare_multimodal_messages(c) for c in follow]
            _, second_ids = _greedy(model, processor, follow, tools, max_new_tokens)
            for i, ids in zip(pending, second_ids):
                seconds[i] = _clean_generation(processor.tokenizer.decode(ids, skip_special_tokens=False))
        for i, environment in enumerate(environments):
            first = _clean_generation(processor.tokenizer.decode(first_ids[i], skip_special_tokens=False))
            second = seconds.get(i)
            outputs.append(
                CropTurnOutput(
                    first_turn=first,
                    second_turn=second,
                    answer=second if second is not None else first,
                    called=any(not r.forced for r in environment.records) or bool(firsts[i].get("tool_calls")),
                    crops=list(environment.records),
                )
            )
    return outputs
