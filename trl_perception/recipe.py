"""The GRPO recipe behind `recipes/grpo.py` and `trl-perception train`: TRL's conventions (TrlParser over
script arguments, `PerceptionGRPOConfig` and `ModelConfig`), perception datasets, rewards by name."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_REWARDS",
    "PerceptionScriptArguments",
    "build_datasets",
    "build_rewards",
    "check_script_args",
    "main",
    "make_parser",
    "reward_names",
]

logger = logging.getLogger(__name__)

DEFAULT_REWARDS: dict[str, list[str]] = {
    "grounding": ["iou", "format"],
    "counting": ["count", "format"],
    "ocr": ["ocr"],
    "detection": ["detection"],
    "jigsaw": ["jigsaw", "jigsaw_format"],
}
"""Rewards used when a recipe names none: the paper's answer reward plus a format reward for box tasks."""


@dataclass
class PerceptionScriptArguments:
    """Dataset, reward and evaluation arguments of the perception GRPO recipe.

    Every field can be set in the recipe YAML (`--config`) and overridden on the command line.
    """

    task: str = field(
        default="grounding",
        metadata={"help": "Task: grounding, counting, ocr or detection; 'mixed' trains on `dataset_mixture`."},
    )
    dataset_source: str = field(
        default="synthetic",
        metadata={
            "help": "Where the training data is: a file or folder our builders read (RefCOCO layouts, PixMo-Count, "
            "Fox PageOCR JSON, COCO instances JSON), or 'synthetic' for generated scenes."
        },
    )
    dataset_split: str | None = field(default=None, metadata={"help": "Split name (RefCOCO: train, val, testA...)."})
    image_dir: str | None = field(default=None, metadata={"help": "Image folder for sources that reference files."})
    num_samples: int | None = field(default=None, metadata={"help": "Train on a seeded random subset of this size."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the subset and of synthetic data."})
    dataset_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra keyword arguments for the dataset builder (a YAML mapping or a JSON string)."},
    )
    dataset_mixture: list | str | None = field(
        default=None,
        metadata={
            "help": "For task 'mixed': a list of {task, source, split, image_dir, num_samples, kwargs} entries "
            "(YAML list or JSON string); rows of every task are shuffled together."
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward names from the registry (`trl_perception.rewards.list_rewards()`) or import paths "
        "`module.function`. Default: the task's paper rewards."},
    )
    reward_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Parameters per reward name, e.g. {iou: {squared: true}} (YAML mapping or JSON string)."},
    )
    eval_source: str | None = field(default=None, metadata={"help": "Evaluation data source (same forms as dataset_source)."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split."})
    eval_image_dir: str | None = field(
        default=None,
        metadata={
            "help": "Image folder of the evaluation data. Default: image_dir when eval_source is dataset_source "
            "(another split of the same files), else guessed from the usual layout (COCO: "
            "annotations/instances_val2017.json -> val2017/; Fox and PixMo JSON: the file's folder)."
        },
    )
    eval_num_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset of this size."})
    evaluate_after_training: bool = field(
        default=False, metadata={"help": "Run trl_perception.evaluation on the eval data after training."}
    )
    eval_max_new_tokens: int = field(default=512, metadata={"help": "Generation length in the final evaluation."})


def _mapping(value: Any, name: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be a mapping or a JSON object string, got {value!r}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    return value


_MIXTURE_KEYS = frozenset({"task", "source", "split", "image_dir", "num_samples", "seed", "kwargs"})


def _mixture(value: Any) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"dataset_mixture must be a list or a JSON list string, got {value!r}") from err
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ValueError("dataset_mixture must be a non-empty list of mappings with at least `task` and `source`")
    return value


# What each task's builder reads (see `data.common.build_from_source`): file suffixes, "" for a folder.
_SOURCE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "grounding": ("", ".p", ".parquet", ".json", ".jsonl"),  # refer folder / pickle, parquet, PR1 JSON
    "counting": ("", ".parquet", ".json", ".jsonl"),  # HF parquet (file or folder), PR1 jsonl
    "ocr": (".json",),  # Fox page-OCR JSON
    "detection": (".json",),  # COCO instances JSON
    "jigsaw": ("",),  # any image folder
}
_BUILDERS: dict[str, tuple[str, str]] = {
    "grounding": ("refcoco", "build_refcoco"),
    "counting": ("pixmo_count", "build_pixmo_count"),
    "ocr": ("pageocr", "build_pageocr"),
    "detection": ("coco", "build_coco_detection"),
    "synthetic": ("synthetic", "make_synthetic"),
    "jigsaw": ("jigsaw", "make_jigsaw"),  # synthetic scenes are a jigsaw source like any images
}
# Passed by the recipe itself (or by `build_from_source`), never through `dataset_kwargs`.
_SET_BY_RECIPE = frozenset({"task", "n", "path", "json_file", "annotation_file", "num_samples", "seed"})


def _source_problem(task: str, source: Any) -> str | None:
    """Why no builder would read `source` for `task` (`None` when one would). The file need not exist."""
    if not isinstance(source, str) or not source:
        return f"source must be a path or 'synthetic', got {source!r}"
    if source == "synthetic":
        return None
    suffix = Path(source).suffix.lower()
    accepted = _SOURCE_SUFFIXES[task]
    if suffix not in accepted:
        forms = ", ".join("a folder" if a == "" else f"*{a}" for a in accepted)
        return f"{source!r}: the {task} builders read {forms}"
    return None


def _builder_options(task: str, source: str) -> set[str] | None:
    """Keyword options the builder for (`task`, `source`) accepts; `None` when it takes any."""
    import importlib
    import inspect

    module, name = _BUILDERS["synthetic" if source == "synthetic" and task != "jigsaw" else task]
    builder = getattr(importlib.import_module(f".data.{module}", __package__), name)
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names = {p.name for p in params} - _SET_BY_RECIPE - {"images"}
    if source == "synthetic":
        names -= {"split", "image_dir"}
    return names


def _entry_problems(where: str, task: Any, source: Any, kwargs: Any, split: Any = None, image_dir: Any = None) -> list:
    from .frames import TASKS

    if task not in TASKS:
        return [f"{where}: unknown task {task!r}; expected one of {', '.join(TASKS)}"]
    problems = []
    problem = _source_problem(task, source)
    if problem:
        problems.append(f"{where}: {problem}")
        return problems
    try:
        options = _mapping(kwargs, f"{where} kwargs")
    except ValueError as err:
        return [*problems, str(err)]
    accepted = _builder_options(task, source)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            problems.append(f"{where}: the builder takes no option(s) {unknown}; it accepts {sorted(accepted)}")
    if source == "synthetic" and (split is not None or image_dir is not None):
        problems.append(f"{where}: the synthetic source takes no split or image_dir")
    if task in ("ocr", "detection") and split is not None:
        problems.append(f"{where}: a {task} source is one file; it takes no split")
    return problems


def reward_names(script_args: PerceptionScriptArguments) -> list[str]:
    """The reward names a run uses: `reward_funcs`, else the task's `DEFAULT_REWARDS` (for `mixed`, the union
    over the mixture's tasks).

    Example:
    ```python
    >>> reward_names(PerceptionScriptArguments(task="counting"))
    ['count', 'format']
    >>> reward_names(PerceptionScriptArguments(task="ocr", reward_funcs=["ocr", "my_module.my_reward"]))
    ['ocr', 'my_module.my_reward']

    ```
    """
    if script_args.reward_funcs:
        return list(script_args.reward_funcs)
    if script_args.task == "mixed":
        return sorted({n for entry in _mixture(script_args.dataset_mixture) for n in DEFAULT_REWARDS[entry["task"]]})
    return list(DEFAULT_REWARDS[script_args.task])


def check_script_args(script_args: PerceptionScriptArguments) -> None:
    """Check a recipe's data and reward arguments before any model is loaded; raise `ValueError` listing
    every problem.

    Checked: the task; that each data source is `"synthetic"` or a path of a form the task's builder reads
    (folder or file suffix; the file need not exist yet); that `dataset_kwargs` and mixture `kwargs` name
    options the builder takes; mixture entries (keys, tasks, sources); that every reward name is registered
    (`trl_perception.rewards.list_rewards()`, or a `module.function` path) and accepts its `reward_kwargs`.

    Example:
    ```python
    >>> check_script_args(PerceptionScriptArguments(task="detection", dataset_source="coco/instances_val2017.json"))
    >>> check_script_args(PerceptionScriptArguments(task="ocr", dataset_source="pages.parquet", reward_funcs=["iuo"]))
    Traceback (most recent call last):
    ...
    ValueError: recipe arguments: dataset_source: 'pages.parquet': the ocr builders read *.json; reward 'iuo' is not registered (known: ...)

    ```
    """
    from .frames import TASKS
    from .rewards import get_reward, list_rewards

    problems: list[str] = []
    task = script_args.task
    if task == "mixed":
        try:
            entries = _mixture(script_args.dataset_mixture)
        except ValueError as err:
            entries = []
            problems.append(str(err))
        for i, entry in enumerate(entries):
            where = f"dataset_mixture[{i}]"
            unknown = sorted(set(entry) - _MIXTURE_KEYS)
            if unknown:
                problems.append(f"{where}: unknown key(s) {unknown}; expected {sorted(_MIXTURE_KEYS)}")
            problems += _entry_problems(
                where,
                entry.get("task"),
                entry.get("source", "synthetic"),
                entry.get("kwargs"),
                entry.get("split"),
                entry.get("image_dir"),
            )
        if script_args.eval_source:
            problems.append(
                "eval_source is not read with task 'mixed': evaluate each task's checkpoint with `trl-perception eval`"
            )
    elif task not in TASKS:
        problems.append(f"unknown task {task!r}; expected one of {', '.join(TASKS)} or 'mixed'")
    else:
        if script_args.dataset_mixture:
            problems.append("dataset_mixture is only read with task 'mixed'")
        problems += _entry_problems(
            "dataset_source",
            task,
            script_args.dataset_source,
            script_args.dataset_kwargs,
            script_args.dataset_split,
            script_args.image_dir,
        )
        if script_args.eval_source:
            problems += _entry_problems(
                "eval_source",
                task,
                script_args.eval_source,
                script_args.dataset_kwargs,
                script_args.eval_split,
                _eval_image_dir(script_args),
            )
    if script_args.evaluate_after_training and not script_args.eval_source and task != "mixed":
        logger.warning("evaluate_after_training is set but eval_source is not: no evaluation will run")
    try:
        params = _mapping(script_args.reward_kwargs, "reward_kwargs")
    except ValueError as err:
        params = {}
        problems.append(str(err))
    try:
        names = reward_names(script_args)
    except (ValueError, KeyError):  # a bad task or mixture, reported above
        names = list(script_args.reward_funcs or [])
    for name in names:
        if not isinstance(name, str) or not name:
            problems.append(f"reward names must be strings, got {name!r}")
            continue
        if "." in name:
            continue  # an import path, resolved by build_rewards
        try:
            get_reward(name, **params.get(name, {}))
        except KeyError:
            problems.append(f"reward {name!r} is not registered (known: {', '.join(list_rewards())})")
        except (TypeError, ValueError) as err:
            problems.append(f"reward_kwargs for {name!r}: {err}")
    unused = sorted(set(params) - set(names))
    if unused:
        problems.append(f"reward_kwargs names reward(s) {unused} that the run does not use ({names})")
    if problems:
        raise ValueError("recipe arguments: " + "; ".join(problems))


def _build_one(task: str, source: str, *, split, image_dir, num_samples, seed, box_format, training_args, kwargs):
    from .data.common import build_from_source

    if task == "jigsaw":
        return _build_jigsaw(source, image_dir=image_dir, num_samples=num_samples, seed=seed, box_format=box_format,
                             training_args=training_args, kwargs=kwargs)  # fmt: skip
    extra = dict(kwargs)
    for key, value in (("split", split), ("image_dir", image_dir)):
        if value is not None:
            extra.setdefault(key, value)
    if box_format not in (None, "auto"):
        extra.setdefault("box_format", box_format)
    if getattr(training_args, "max_pixels", None) is not None:
        extra.setdefault("max_pixels", training_args.max_pixels)
    if getattr(training_args, "min_pixels", None) is not None:
        extra.setdefault("min_pixels", training_args.min_pixels)
    return build_from_source(task, source, num_samples=num_samples, seed=seed, **extra)


def _curriculum_callbacks(dataset: Any) -> list[Any]:
    """A `JigsawCurriculumCallback` when the training set is a jigsaw dataset that follows a curriculum."""
    from .callbacks import JigsawCurriculumCallback

    transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
    curriculum = getattr(transform, "curriculum", None)
    return [JigsawCurriculumCallback(curriculum)] if curriculum is not None else []


def _build_jigsaw(source: str, *, image_dir, num_samples, seed, box_format, training_args, kwargs):
    """Jigsaw puzzles from an image folder, or from `num_samples` synthetic scenes (default 16)."""
    from .data.jigsaw import make_jigsaw
    from .data.synthetic import make_synthetic

    extra = dict(kwargs)
    if box_format not in (None, "auto"):
        extra.setdefault("box_format", box_format)
        for key in ("min_pixels", "max_pixels"):
            if getattr(training_args, key, None) is not None:
                extra.setdefault(key, getattr(training_args, key))
    if source == "synthetic":
        return make_jigsaw(make_synthetic("detection", num_samples or 16, seed=seed), seed=seed, **extra)
    return make_jigsaw(image_dir or source, num_samples=num_samples, seed=seed, **extra)


def _eval_image_dir(script_args: PerceptionScriptArguments) -> str | None:
    if script_args.eval_image_dir is not None or script_args.eval_source == "synthetic":
        return script_args.eval_image_dir
    if script_args.eval_source == script_args.dataset_source:
        return script_args.image_dir
    return None


def build_datasets(script_args: PerceptionScriptArguments, training_args: Any, box_format: str | None):
    """Build `(train_dataset, eval_dataset_or_None)` from the script arguments.

    Mixed-task datasets store `solution` as JSON strings so that one column holds every task's type.
    Images are resized to the family's grid within `training_args.min_pixels`/`max_pixels` when
    `box_format` names a family.

    Example:
    ```python
    >>> from types import SimpleNamespace
    >>> args = PerceptionScriptArguments(task="counting", num_samples=4, eval_source="synthetic", eval_num_samples=2)
    >>> train, evaluation = build_datasets(args, SimpleNamespace(min_pixels=None, max_pixels=None), "qwen2_5_vl")
    >>> len(train), len(evaluation), train[0]["task"]
    (4, 2, 'counting')

    ```
    """
    from datasets import concatenate_datasets

    kwargs = _mapping(script_args.dataset_kwargs, "dataset_kwargs")
    common = dict(box_format=box_format, training_args=training_args)
    if script_args.task == "mixed":
        parts = []
        for i, entry in enumerate(_mixture(script_args.dataset_mixture)):
            part = _build_one(
                entry["task"],
                entry.get("source", "synthetic"),
                split=entry.get("split"),
                image_dir=entry.get("image_dir"),
                num_samples=entry.get("num_samples"),
                seed=entry.get("seed", script_args.dataset_seed + i),
                kwargs=_mapping(entry.get("kwargs"), f"dataset_mixture[{i}] kwargs"),
                **common,
            )
            parts.append(part.map(lambda row: {"solution": json.dumps(row["solution"])}, desc="mixing"))
        train = concatenate_datasets(parts).shuffle(seed=script_args.dataset_seed)
    else:
        train = _build_one(
            script_args.task,
            script_args.dataset_source,
            split=script_args.dataset_split,
            image_dir=script_args.image_dir,
            num_samples=script_args.num_samples,
            seed=script_args.dataset_seed,
            kwargs=kwargs,
            **common,
        )
    evaluation = None
    if script_args.eval_source and script_args.task != "mixed":
        evaluation = _build_one(
            script_args.task,
            script_args.eval_source,
            split=script_args.eval_split,
            image_dir=_eval_image_dir(script_args),
            num_samples=script_args.eval_num_samples,
            seed=script_args.dataset_seed + 1000,
            kwargs=kwargs,
            **common,
        )
    return train, evaluation


def build_rewards(script_args: PerceptionScriptArguments) -> list[Any]:
    """Reward callables named by the script arguments (registry names or `module.function` paths), with
    `reward_kwargs` bound.

    Example:
    ```python
    >>> funcs = build_rewards(PerceptionScriptArguments(task="grounding", reward_kwargs={"iou": {"squared": True}}))
    >>> [f.__name__ for f in funcs]
    ['iou_squared_reward', 'format_reward']

    ```
    """
    import importlib

    from .rewards import get_reward

    params = _mapping(script_args.reward_kwargs, "reward_kwargs")
    funcs = []
    for name in reward_names(script_args):
        if "." in name:
            module_path, attr = name.rsplit(".", 1)
            func = getattr(importlib.import_module(module_path), attr)
            if name in params:
                import functools

                func = functools.partial(func, **params[name])
                func.__name__ = attr  # TRL logs rewards by __name__
            funcs.append(func)
        else:
            funcs.append(get_reward(name, **params.get(name, {})))
    return funcs


def make_parser():
    """The recipe's `TrlParser` over `(PerceptionScriptArguments, PerceptionGRPOConfig, ModelConfig)`."""
    from trl import ModelConfig, TrlParser

    from .trainer import PerceptionGRPOConfig

    return TrlParser((PerceptionScriptArguments, PerceptionGRPOConfig, ModelConfig))


def _is_sharded(trainer: Any) -> bool:
    """Whether the trained weights are split across processes (DeepSpeed ZeRO-3 or FSDP)."""
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    zero3 = getattr(trainer, "is_deepspeed_enabled", False) and getattr(plugin, "zero_stage", None) == 3
    return bool(zero3 or getattr(trainer, "is_fsdp_enabled", False))


def _check_report_to(training_args: Any) -> None:
    """Fail before any model is loaded when a `report_to` integration is not installed."""
    report_to = getattr(training_args, "report_to", None) or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    report_to = [r for r in report_to if r not in ("none", "all")]
    if not report_to:
        return
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    missing = sorted(set(report_to) - set(get_available_reporting_integrations()))
    if missing:
        raise ValueError(
            f"report_to names {missing}, which is not installed: `pip install {' '.join(missing)}`, "
            "or pass --report_to none"
        )


def _peft_card(model_args: Any) -> dict[str, Any] | None:
    if not getattr(model_args, "use_peft", False):
        return None
    quantized = "4-bit" if model_args.load_in_4bit else "8-bit" if model_args.load_in_8bit else None
    card = {
        "method": "QLoRA" if quantized else "LoRA",
        "r": model_args.lora_r,
        "alpha": model_args.lora_alpha,
        "dropout": model_args.lora_dropout,
        "target_modules": model_args.lora_target_modules,
    }
    if quantized:
        card["quantization"] = f"{quantized} {model_args.bnb_4bit_quant_type}" if model_args.load_in_4bit else quantized
    return card


def _reward_labels(script_args: PerceptionScriptArguments) -> list[str]:
    """Reward names for the model card, with their bound parameters: `iou(squared=True)`."""
    params = _mapping(script_args.reward_kwargs, "reward_kwargs")
    labels = []
    for name in reward_names(script_args):
        options = params.get(name) or {}
        labels.append(f"{name}({', '.join(f'{k}={v!r}' for k, v in options.items())})" if options else name)
    return labels


def main(script_args: PerceptionScriptArguments, training_args: Any, model_args: Any) -> dict[str, Any]:
    """Train with GRPO as the recipe describes, save, then optionally evaluate and push to the Hub.

    Writes to `training_args.output_dir`: the model (or the LoRA adapter), its processor, `README.md` (the
    model card, `hub.build_model_card`), `trl_perception_card.json` (the card's inputs, which `trl-perception
    push` reads) and, with `evaluate_after_training`, `eval/` (predictions, metrics, report). The arguments
    are checked (`check_script_args`) before any model is loaded. `model_name_or_path: tiny:<family>` trains a
    tiny random checkpoint built offline (smoke runs).

    Returns a summary dict: output directory, train metrics and (when run) evaluation metrics.
    """
    from trl import get_peft_config, get_quantization_config

    from .hub import build_model_card
    from .trainer import PerceptionGRPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required (a local checkpoint path or a Hub model id)")
    check_script_args(script_args)
    _check_report_to(training_args)
    base_model = model_args.model_name_or_path
    if model_args.model_name_or_path.startswith("tiny:"):
        # Smoke runs: a tiny random checkpoint of the named family, built offline.
        from .testing import tiny_vlm

        model_args.model_name_or_path = tiny_vlm(model_args.model_name_or_path.split(":", 1)[1])
    # TRL >= 1.x moved trust_remote_code from ModelConfig to the trainer config.
    trust_remote_code = getattr(model_args, "trust_remote_code", None)
    if trust_remote_code is None:
        trust_remote_code = getattr(training_args, "trust_remote_code", None)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    if training_args.model_init_kwargs:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    quantization_config = get_quantization_config(model_args)
    peft_config = get_peft_config(model_args)
    box_format = getattr(training_args, "box_format", "auto")
    if box_format in (None, "auto"):
        from transformers import AutoConfig

        from .trainer import resolve_box_format

        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=bool(trust_remote_code),
        )
        box_format = resolve_box_format("auto", config)
    train_dataset, eval_dataset = build_datasets(script_args, training_args, box_format)
    reward_funcs = build_rewards(script_args)
    trainer = PerceptionGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        peft_config=peft_config,
        quantization_config=quantization_config,
        callbacks=_curriculum_callbacks(train_dataset),
    )
    checkpoint = training_args.resume_from_checkpoint
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    summary: dict[str, Any] = {"output_dir": training_args.output_dir, "train": dict(train_result.metrics)}

    eval_metrics = None
    if script_args.evaluate_after_training and eval_dataset is not None and trainer.accelerator.is_main_process:
        from .evaluation import evaluate

        # Sharded weights (ZeRO-3, FSDP) cannot generate on one process: evaluate the saved model instead.
        model = training_args.output_dir if _is_sharded(trainer) else trainer.model
        result = evaluate(
            model,
            eval_dataset,
            processor=trainer.processing_class,
            box_format=box_format,
            max_pixels=training_args.max_pixels,
            min_pixels=training_args.min_pixels,
            max_new_tokens=script_args.eval_max_new_tokens,
            backend="transformers",
            output_dir=os.path.join(training_args.output_dir, "eval"),
            progress=not training_args.disable_tqdm,
        )
        eval_metrics = result.metrics
        summary["eval"] = eval_metrics

    if trainer.accelerator.is_main_process:
        if script_args.task == "mixed":
            entries = _mixture(script_args.dataset_mixture)
            tasks = sorted({e["task"] for e in entries})
            datasets = [str(e.get("source", "synthetic")) for e in entries]
        else:
            tasks, datasets = [script_args.task], [script_args.dataset_source]
        eval_data = None
        if eval_metrics is not None:
            eval_data = script_args.eval_source + (f" ({script_args.eval_split})" if script_args.eval_split else "")
        card_args = dict(
            model_name=training_args.hub_model_id or Path(training_args.output_dir).name,
            base_model=base_model,
            task=tasks,
            dataset=datasets,
            reward_funcs=_reward_labels(script_args),
            reward_weights=training_args.reward_weights,
            box_format=box_format,
            training_args={k: getattr(training_args, k, None) for k in (
                "learning_rate", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
                "beta", "temperature", "max_completion_length", "loss_type", "num_train_epochs", "max_steps",
                "min_pixels", "max_pixels", "seed")},
            eval_metrics=eval_metrics,
            eval_dataset=eval_data,
            peft=_peft_card(model_args),
        )
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "trl_perception_card.json").write_text(
            json.dumps(card_args, indent=2, default=str), encoding="utf-8"
        )
        (Path(training_args.output_dir) / "README.md").write_text(build_model_card(**card_args), encoding="utf-8")
        if training_args.push_to_hub:
            from .hub import push_to_hub

            push_to_hub(
                training_args.output_dir,
                training_args.hub_model_id or Path(training_args.output_dir).name,
                private=training_args.hub_private_repo,
                token=training_args.hub_token,
            )
    return summary
