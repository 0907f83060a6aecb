"""Run a vision-language model over a perception dataset with Perception-R1's evaluation protocol: images fed
on the family's grid, predictions mapped back to original pixels, metrics per task, and a written report."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._json import unquote_text
from .boxes import paired_box_iou
from .formats import ParsedOutput, parse_count, parse_objects, strip_wrappers
from .frames import (
    BOX_FORMATS,
    TASKS,
    Frame,
    box_format_of,
    check_box_format,
    default_pixel_limits,
    model_input_size,
)
from .rewards.jigsaw import jigsaw_metrics, jigsaw_scores, jigsaw_target

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_NEW_TOKENS",
    "EvaluationResult",
    "GenerationRequest",
    "add_eval_arguments",
    "build_coco_ground_truth",
    "evaluate",
    "flatten_metrics",
    "run_eval_from_args",
    "unwrap_model",
    "vllm_engine_kwargs",
    "vllm_sampling_kwargs",
]

BACKENDS: tuple[str, ...] = ("auto", "transformers", "vllm")

DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "grounding": 512, "counting": 512, "ocr": 2048, "detection": 4096, "ovd": 2048, "jigsaw": 1024,
}  # fmt: skip
"""Generation budget per task when `max_new_tokens` is not given: Perception-R1's evaluation scripts'."""

_VLLM_MIN_CHUNK = 256


# --------------------------------------------------------------------------------------------------
# Public data types


@dataclass
class GenerationRequest:
    """What a generation backend (or a test's `generate_fn`) receives for one row.

    `image` is the image the model sees: already resized to the family's grid (`image.size == input_size`),
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
class EvaluationResult:
    """Outcome of `evaluate`.

    Attributes:
        metrics: `{task: {metric: value}}` for every task present in the dataset.
        predictions: one record per row (what `predictions.jsonl` holds).
        config: the settings the run used (model, family, pixel limits, backend, ...).
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
    family: str | None, processor: Any, min_pixels: int | None, max_pixels: int | None
) -> tuple[int | None, int | None]:
    """Explicit limits, else the processor's, else the family's checkpoints' defaults."""
    proc_lo, proc_hi = _processor_pixel_limits(processor)
    fam_lo, fam_hi = default_pixel_limits(family) if family else (None, None)
    lo = min_pixels if min_pixels is not None else proc_lo if proc_lo is not None else fam_lo
    hi = max_pixels if max_pixels is not None else proc_hi if proc_hi is not None else fam_hi
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


def _keep_special_tokens(family: str | None, task: str) -> bool:
    """Qwen2-VL answers with box tokens, which `skip_special_tokens=True` would delete; OCR and the JSON
    families decode without special tokens, as PR1's evaluation does."""
    return task != "ocr" and family in (None, "qwen2_vl")


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
    """Arguments for `vllm.LLM`: the checkpoint, one image per prompt, and the **same pixel limits** the
    images were fitted to (`mm_processor_kwargs`), so vLLM's processor leaves them unchanged.

    Example:
    ```python
    >>> vllm_engine_kwargs("Qwen/Qwen2-VL-2B-Instruct", 3136, 1_000_000)["mm_processor_kwargs"]
    {'min_pixels': 3136, 'max_pixels': 1000000}

    ```
    """
    kwargs: dict[str, Any] = {"model": os.fspath(model), "limit_mm_per_prompt": {"image": 1}}
    processor_kwargs = {}
    if min_pixels is not None:
        processor_kwargs["min_pixels"] = int(min_pixels)
    if max_pixels is not None:
        processor_kwargs["max_pixels"] = int(max_pixels)
    if processor_kwargs:
        kwargs["mm_processor_kwargs"] = processor_kwargs
    kwargs.update(overrides)
    return kwargs


def vllm_sampling_kwargs(
    family: str | None, task: str, max_new_tokens: int, generation_kwargs: Mapping[str, Any] | None = None
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
        "skip_special_tokens": not _keep_special_tokens(family, task),
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
# Scoring


def _objects_to_pixels(parsed: ParsedOutput, frame: Frame) -> list[dict[str, Any]]:
    """Parsed objects in the frame's box format -> dicts in original-image pixels (unrounded, unclipped)."""
    out = []
    for obj in parsed.to_pixels(frame, clip=False).objects:
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


@dataclass
class _Scored:
    record: dict[str, Any]
    prediction: Any  # grounding box | count | text | objects


def _score_row(request: GenerationRequest, solution: Any, text: str) -> _Scored:
    task, family = request.task, request.box_format
    record: dict[str, Any] = {
        "index": request.index,
        "task": task,
        "box_format": family,
        "image_size": list(request.image_size),
        "input_size": list(request.input_size),
        "text": text,
    }
    if task == "ocr":
        prediction = strip_wrappers(text)
        record.update(prediction=prediction, valid=bool(prediction), truncated=False, solution=solution)
        return _Scored(record, prediction)
    if task == "jigsaw":
        target = jigsaw_target(solution)
        scores = jigsaw_scores(text, target)
        record.update(scores, valid=scores["prediction"] is not None, truncated=False, solution=solution,
                      grid=[target.rows, target.cols])  # fmt: skip
        return _Scored(record, scores)
    parsed = parse_objects(text, family)
    objects = _objects_to_pixels(parsed, Frame.of(family, request.image_size, request.input_size))
    record.update(
        objects=_rounded(objects), valid=parsed.valid, truncated=parsed.truncated, solution=solution
    )
    if task == "grounding":
        box = next((obj["bbox_2d"] for obj in objects if "bbox_2d" in obj), None)
        gt = _gt_box(solution)
        iou = 0.0
        if box is not None and gt is not None:
            iou = float(min(max(paired_box_iou([box], [gt])[0], 0.0), 1.0))
        record.update(prediction=None if box is None else [round(v, 2) for v in box], iou=round(iou, 4))
        return _Scored(record, box)
    if task == "counting":
        count = parse_count(text, family)
        record["prediction"] = count
        return _Scored(record, count)
    record["prediction"] = len(objects)
    return _Scored(record, objects)


def _task_metrics(
    task: str, scored: list[_Scored], solutions: list[Any], ground_truth: Any = None
) -> dict[str, Any]:
    from . import metrics as m

    preds = [s.prediction for s in scored]
    if task == "grounding":
        result = m.grounding_metrics(preds, [_gt_box(sol) for sol in solutions])
    elif task == "counting":
        result = m.counting_metrics(preds, [_gt_count(sol) for sol in solutions])
    elif task == "ocr":
        result = m.ocr_metrics(preds, [None if sol is None else str(sol) for sol in solutions])
    elif task == "ovd":  # COCO AP/AR over the phrases asked, and hallucination rates
        result = m.ovd_metrics(preds, solutions, [s.record["image_size"] for s in scored])
    elif task == "jigsaw":  # exact / position / connection accuracy per grid size, and over all ("all")
        result = jigsaw_metrics(s.record for s in scored)
    else:
        coco_gt, label_to_id = ground_truth
        results: list[dict[str, Any]] = []
        dropped = {"unknown_label": 0, "no_box": 0, "invalid_box": 0, "inverted_box": 0}
        for s in scored:
            # Every box scores 1.0 (the model gives no confidence); COCOeval's stable sort then ranks an
            # image's boxes in the order the model emitted them, and keeps the first 100.
            image_results, counts = m.objects_to_coco_results(
                s.record["index"] + 1, s.prediction, label_to_id
            )
            results.extend(image_results)
            for key, value in counts.items():
                dropped[key] += value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = m.coco_metrics(coco_gt, results)
        result["num_samples"] = len(scored)
        result["objects_dropped"] = dropped
    result = dict(result)
    result["num_unparsed"] = sum(not s.record["valid"] for s in scored)
    result["num_truncated"] = sum(bool(s.record.get("truncated")) for s in scored)
    return result


# --------------------------------------------------------------------------------------------------
# Report


def _summary(record: dict[str, Any]) -> str:
    task, pred, sol = record["task"], record.get("prediction"), record.get("solution")
    if task == "grounding":
        return f"#{record['index']} grounding: IoU {record.get('iou', 0.0):.2f}"
    if task == "counting":
        return f"#{record['index']} counting: pred {pred} / gt {_gt_count(sol):g}"
    if task in ("detection", "ovd"):
        return f"#{record['index']} {task}: {pred} pred / {len(_detection_objects(sol))} gt"
    if task == "jigsaw":
        rows, cols = record["grid"]
        extra = "" if record.get("positions") is None else f", positions {record['positions']:.2f}"
        return f"#{record['index']} jigsaw {rows}x{cols}: exact {record.get('exact', 0.0):g}{extra}"
    return f"#{record['index']} ocr: {str(pred or '')[:60]!r} (gt {str(sol or '')[:40]!r})"


def _jigsaw_visual(record: dict[str, Any], puzzle: Any) -> Any:
    """The puzzle, the model's reassembly and the original (the puzzle reassembled with the true answer);
    for a pair/single/multiple question, the puzzle with the true and the model's answer."""
    from .data.jigsaw import reassemble
    from .viz import image_grid

    target = jigsaw_target(record["solution"])
    rows, cols = target.rows, target.cols
    prediction = record.get("prediction")
    if target.question == "full":
        original = reassemble(puzzle, rows, cols, target.answer)
        model = reassemble(puzzle, rows, cols, prediction if isinstance(prediction, list) else None)
        return image_grid([puzzle, model, original], ncols=3, captions=["puzzle", "model", "original"])
    return image_grid([puzzle], ncols=1, captions=[f"answer {target.answer}, model {prediction}"])


def _visual(record: dict[str, Any], image: Any) -> Any:
    from .viz import draw_objects

    if record["task"] == "jigsaw":
        return _jigsaw_visual(record, image)
    task, sol = record["task"], record.get("solution")
    gt: Any = None
    if task == "grounding":
        gt = [_gt_box(sol)] if _gt_box(sol) else None
    elif task in ("counting", "detection", "ovd"):
        gt = sol
    scale = min(4.0, max(1.0, 256 / max(image.size)))
    return draw_objects(image, record.get("objects") or None, gt, scale=scale)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _write_report(
    output_dir: str, metrics: dict[str, dict[str, Any]], config: dict[str, Any], has_image: bool
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
        lines.append(f"| {key} | {config.get(key)} |")
    lines.append("")
    lines.append(
        "Predicted boxes are mapped from the model's frame back to original image pixels before scoring; "
        "fractions in [0, 1] (the paper shows ×100)."
    )
    for task, values in metrics.items():
        lines += ["", f"## {task}", "", "| metric | value |", "|---|---|"]
        for name, value in values.items():
            if isinstance(value, Mapping):
                continue
            lines.append(f"| {name} | {_format_value(value)} |")
        per_class = values.get("per_class_AP")
        if isinstance(per_class, Mapping) and per_class:
            lines += ["", "| category | AP |", "|---|---|"]
            lines += [f"| {name} | {_format_value(ap)} |" for name, ap in per_class.items()]
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
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _write_outputs(
    output_dir: str,
    records: list[dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
    config: dict[str, Any],
    visuals: list[tuple[dict[str, Any], Any]],
) -> dict[str, str]:
    os.makedirs(output_dir, exist_ok=True)
    files = {
        "predictions": os.path.join(output_dir, "predictions.jsonl"),
        "metrics": os.path.join(output_dir, "metrics.json"),
    }
    with open(files["predictions"], "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
    with open(files["metrics"], "w", encoding="utf-8") as f:
        json.dump(
            {"metrics": metrics, "config": config}, f, indent=2, ensure_ascii=False, default=_json_default
        )
    if visuals:
        from .viz import image_grid

        tiles = [_visual(record, image) for record, image in visuals]
        grid = image_grid(tiles, ncols=4, captions=[_summary(record) for record, _ in visuals])
        files["report_image"] = os.path.join(output_dir, "report.png")
        grid.save(files["report_image"])
    files["report"] = _write_report(output_dir, metrics, config, bool(visuals))
    return files


# --------------------------------------------------------------------------------------------------
# evaluate


def _prepare(
    index: int,
    row: Mapping[str, Any],
    family: str | None,
    min_pixels: int | None,
    max_pixels: int | None,
    max_new_tokens: int | None,
) -> tuple[GenerationRequest, Any, Any]:
    task = row.get("task")
    if task not in TASKS:
        raise ValueError(f"row {index}: unknown task {task!r}; expected one of {TASKS}")
    image = _row_image(row)
    image_size = tuple(int(v) for v in (row.get("image_size") or image.size))
    if family is not None:
        target = model_input_size(image.size, family, min_pixels=min_pixels, max_pixels=max_pixels)
        try:
            from .frames import fit_to_grid

            model_image = fit_to_grid(image, family, min_pixels, max_pixels)
        except ImportError:  # pragma: no cover - frames ships with the package
            model_image = image if tuple(image.size) == target else image.resize(target, 3)  # bicubic
    else:
        model_image = image
    request = GenerationRequest(
        index=index,
        task=task,
        prompt=_as_prompt(row["prompt"]),
        image=model_image,
        image_size=image_size,
        input_size=tuple(model_image.size),
        box_format=family,
        max_new_tokens=int(max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task]),
    )
    return request, _load_solution(task, row.get("solution")), image


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
) -> EvaluationResult:
    """Evaluate a model on a row-contract dataset with Perception-R1's protocol, mapping predictions back to
    original image pixels.

    For each row: the image is resized **once** to the family's grid within the pixel limits, exactly as
    for training (`frames.fit_to_grid`), so the model's frame (`input_size`) is known and every
    processor (transformers or vLLM) feeds it unchanged. The model answers the row's `prompt` (batched
    `generate`, left padding, greedy unless `generation_kwargs` says otherwise; or vLLM). The text is parsed
    as the rewards parse it (`formats.parse_objects` with the family; Qwen2-VL box tokens are kept when
    decoding), boxes and points are mapped from the family's frame (0–1000 for Qwen2-VL / Qwen3-VL, input
    pixels for Qwen2.5-VL) to original pixels (`frames.Frame`), and scored per task:

    * grounding: `metrics.grounding_metrics` on the first predicted box (none → IoU 0);
    * counting: `metrics.counting_metrics` on `formats.parse_count` (number of objects listed);
    * ocr: `metrics.ocr_metrics` on the answer text;
    * detection: `metrics.coco_metrics` (pycocotools) against a COCO ground truth built from the rows
      (`build_coco_ground_truth`: every image kept, none dropped); each box scores 1.0, so COCOeval ranks an
      image's boxes in the order the model emitted them (the model gives no confidence; PR1 does the same).

    The model frame is the size this evaluation fed the image at (a row's own `input_size` column, computed
    for training with possibly other limits, is not used), checked against the processor's `image_grid_thw`.

    Every task also reports `num_unparsed` (no answer structure found) and `num_truncated`. Empty or
    unparseable answers score 0; nothing in a model's output can crash the run.

    With `output_dir`, writes `predictions.jsonl` (row index, task, raw text, parsed objects in original
    pixels, prediction, ground truth), `metrics.json` (`{"metrics": ..., "config": ...}`), `report.png`
    (the first `num_visual` rows: predictions in red, ground truth in green) and `report.md` (settings,
    metrics tables, the image).

    Args:
        model: a checkpoint path or a loaded model (`None` with `generate_fn`).
        dataset: a `datasets.Dataset` from the builders, or a list of row dicts (`prompt`, `image`, `task`,
            `solution`, `image_size`; optional `box_format`).
        processor: the model's processor (loaded from the model path when omitted).
        box_format: the family (`"qwen2_vl"`, `"qwen2_5_vl"`, `"qwen3_vl"`); `"auto"` reads it from the
            model's config, else from the rows' `box_format` column. Without a family, images are fed as is
            and coordinates are taken as original pixels.
        min_pixels, max_pixels: pixel limits of the grid resize; default: the processor's, else the family's.
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
    model_family = box_format if box_format not in (None, "auto") else _model_box_format(model)
    if generate_fn is None and model is None:
        raise ValueError("evaluate() needs a model (a path or a loaded model) or a generate_fn")

    generator: Callable[[list[GenerationRequest]], list[str]]
    chosen = "custom" if generate_fn is not None else _choose_backend(backend, model)
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

    def limits_for(family: str | None) -> tuple[int | None, int | None]:
        if family not in limits:
            limits[family] = _pixel_limits(family, processor_for_limits, min_pixels, max_pixels)
        return limits[family]

    if generate_fn is None:
        lo, hi = limits_for(model_family)
        if chosen == "vllm":
            generator = _VLLMGenerator(os.fspath(model), processor, lo, hi, generation_kwargs, vllm_kwargs)
        else:
            loaded = (
                _load_model(os.fspath(model))
                if isinstance(model, (str, os.PathLike))
                else unwrap_model(model)
            )
            generator = _TransformersGenerator(loaded, processor, lo, hi, generation_kwargs)
    chunk = max(batch_size, _VLLM_MIN_CHUNK) if chosen == "vllm" else batch_size

    from tqdm.auto import tqdm

    total = len(dataset) if hasattr(dataset, "__len__") else None
    scored: dict[str, list[_Scored]] = {}
    solutions: dict[str, list[Any]] = {}
    detection_rows: list[dict[str, Any]] = []
    visuals: list[tuple[dict[str, Any], Any]] = []
    records: list[dict[str, Any]] = []
    mismatch_warned = False
    families_seen: set[str | None] = set()

    def flush(batch: list[tuple[GenerationRequest, Any, Any]]) -> None:
        texts = list(generator([request for request, _, _ in batch]))
        if len(texts) != len(batch):
            raise RuntimeError(f"generation returned {len(texts)} texts for {len(batch)} prompts")
        for (request, solution, image), text in zip(batch, texts):
            item = _score_row(request, solution, "" if text is None else str(text))
            scored.setdefault(request.task, []).append(item)
            solutions.setdefault(request.task, []).append(solution)
            records.append(item.record)
            if len(visuals) < num_visual:
                visuals.append((item.record, image))

    batch: list[tuple[GenerationRequest, Any, Any]] = []
    with tqdm(total=total, disable=not progress, desc="evaluate", unit="row") as bar:
        for index, row in enumerate(dataset):
            row_family = row.get("box_format") if isinstance(row.get("box_format"), str) else None
            family = model_family or (row_family if row_family in BOX_FORMATS else None)
            if model_family and row_family and row_family != model_family and not mismatch_warned:
                mismatch_warned = True
                warnings.warn(
                    f"rows were built for {row_family!r} but the model is {model_family!r}; parsing and frames "
                    f"follow {model_family!r}",
                    UserWarning,
                    stacklevel=2,
                )
            families_seen.add(family)
            lo, hi = limits_for(family)
            request, solution, image = _prepare(index, row, family, lo, hi, max_new_tokens)
            if request.task == "detection":
                detection_rows.append(
                    {"index": index, "task": "detection", "solution": solution, "image_size": list(request.image_size),
                     "categories": row.get("categories")}
                )  # fmt: skip
            batch.append((request, solution, image if len(visuals) + len(batch) < num_visual else None))
            if len(batch) >= chunk:
                flush(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            flush(batch)
            bar.update(len(batch))

    metrics: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        if task not in scored:
            continue
        ground_truth = None
        if task == "detection":
            ground_truth = _detection_ground_truth(detection_rows, categories, dataset)
        metrics[task] = _task_metrics(task, scored[task], solutions[task], ground_truth)

    used_families = sorted(f for f in families_seen if f) or [None]
    config = {
        "model": model_name,
        "box_format": used_families[0] if len(used_families) == 1 else used_families,
        "backend": chosen,
        "min_pixels": limits_for(used_families[0])[0] if len(used_families) == 1 else None,
        "max_pixels": limits_for(used_families[0])[1] if len(used_families) == 1 else None,
        "max_new_tokens": max_new_tokens
        if max_new_tokens
        else "per task " + json.dumps(DEFAULT_MAX_NEW_TOKENS),
        "generation_kwargs": dict(generation_kwargs or {}),
        "num_samples": len(records),
    }
    files: dict[str, str] = {}
    if output_dir is not None:
        shown = [(record, image) for record, image in visuals if image is not None]
        files = _write_outputs(os.fspath(output_dir), records, metrics, config, shown)
    return EvaluationResult(metrics=metrics, predictions=records, config=config, files=files)


def _detection_ground_truth(
    detection_rows: list[dict[str, Any]], categories: Sequence[str] | None, dataset: Any
) -> tuple[dict[str, Any], dict[str, int]]:
    """COCO ground truth whose image ids are dataset index + 1 (matching the predictions)."""
    if not detection_rows:
        return build_coco_ground_truth([], categories, dataset=dataset)
    size = max(row["index"] for row in detection_rows) + 1
    placeholder = {"task": "other"}
    rows: list[Mapping[str, Any]] = [placeholder] * size
    for row in detection_rows:
        rows[row["index"]] = row
    return build_coco_ground_truth(rows, categories, dataset=dataset)


# --------------------------------------------------------------------------------------------------
# Command line


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `trl-perception eval` options to `parser` (run them with `run_eval_from_args`).

    Example:
    ```python
    >>> import argparse
    >>> args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
    ...     ["--model", "ckpt", "--task", "grounding", "--max-pixels", "1000000"])
    >>> args.source, args.max_pixels, args.backend
    ('synthetic', 1000000, 'auto')

    ```
    """
    parser.add_argument("--model", required=True, help="checkpoint path or Hub id")
    parser.add_argument("--task", required=True, choices=[*TASKS, "mixed"], help="task to evaluate")
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
    parser.add_argument("--box-format", default="auto", choices=["auto", *BOX_FORMATS], help="box format (model family)")
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: PR1's budget per task")
    parser.add_argument("--backend", default="auto", choices=list(BACKENDS))
    parser.add_argument(
        "--generation-kwargs",
        default=None,
        help="JSON of extra generate arguments, e.g. '{\"repetition_penalty\": 1.05}'",
    )
    parser.add_argument(
        "--output-dir", default="eval_results", help="where predictions, metrics and report go"
    )
    parser.add_argument("--num-visual", type=int, default=16, help="samples drawn in report.png")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--source-option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip().replace("-", "_"), json.loads(value)
    except ValueError:
        return key.strip().replace("-", "_"), value


def _build_dataset(task: str, source: str, family: str | None, args: argparse.Namespace) -> Any:
    options = dict(_parse_option(option) for option in (getattr(args, "source_option", None) or []))
    if getattr(args, "split", None) is not None:
        options.setdefault("split", args.split)
    from .data import build_dataset

    return build_dataset(task, source, num_samples=args.num_samples, seed=args.seed, box_format=family, **options)


def run_eval_from_args(args: argparse.Namespace) -> EvaluationResult:
    """Build the dataset named by `--task/--source`, evaluate `--model` on it, print the metrics; the body of
    `trl-perception eval`.

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
    family = args.box_format if args.box_format != "auto" else _model_box_format(args.model)
    dataset = _build_dataset(args.task, args.source, family, args)
    generation_kwargs = json.loads(args.generation_kwargs) if args.generation_kwargs else None
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
    )
    print(json.dumps(result.flat(), indent=2))
    if result.files:
        print(f"wrote {', '.join(sorted(result.files.values()))}")
    return result
