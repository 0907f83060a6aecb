"""The GRPO recipe behind `recipes/grpo.py` and `trl-perception train`: TRL's conventions (TrlParser over
script arguments, `PerceptionGRPOConfig` and `ModelConfig`), perception datasets, rewards by name."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_REWARDS", "PerceptionScriptArguments", "build_datasets", "build_rewards", "main", "make_parser"]

logger = logging.getLogger(__name__)

DEFAULT_REWARDS: dict[str, list[str]] = {
    "grounding": ["iou", "format"],
    "counting": ["count", "format"],
    "ocr": ["ocr"],
    "detection": ["detection"],
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


def _mixture(value: Any) -> list[dict]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("dataset_mixture must be a list of mappings with at least `task` and `source`")
    return value


def _build_one(task: str, source: str, *, split, image_dir, num_samples, seed, box_format, training_args, kwargs):
    from .data.common import build_from_source

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


def build_datasets(script_args: PerceptionScriptArguments, training_args: Any, box_format: str | None):
    """Build `(train_dataset, eval_dataset_or_None)` from the script arguments.

    Mixed-task datasets store `solution` as JSON strings so that one column holds every task's type.
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
                kwargs=entry.get("kwargs", {}),
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
    if script_args.eval_source:
        evaluation = _build_one(
            script_args.task if script_args.task != "mixed" else "grounding",
            script_args.eval_source,
            split=script_args.eval_split,
            image_dir=script_args.image_dir,
            num_samples=script_args.eval_num_samples,
            seed=script_args.dataset_seed + 1000,
            kwargs=kwargs,
            **common,
        )
    return train, evaluation


def build_rewards(script_args: PerceptionScriptArguments) -> list[Any]:
    """Reward callables named by the script arguments (registry names or `module.function` paths)."""
    import importlib

    from .rewards import get_reward

    if script_args.reward_funcs:
        names = list(script_args.reward_funcs)
    elif script_args.task == "mixed":
        names = sorted({n for entry in _mixture(script_args.dataset_mixture) for n in DEFAULT_REWARDS[entry["task"]]})
    else:
        names = DEFAULT_REWARDS[script_args.task]
    params = _mapping(script_args.reward_kwargs, "reward_kwargs")
    funcs = []
    for name in names:
        if "." in name:
            module_path, attr = name.rsplit(".", 1)
            funcs.append(getattr(importlib.import_module(module_path), attr))
        else:
            funcs.append(get_reward(name, **params.get(name, {})))
    return funcs


def make_parser():
    """The recipe's `TrlParser` over `(PerceptionScriptArguments, PerceptionGRPOConfig, ModelConfig)`."""
    from trl import ModelConfig, TrlParser

    from .trainer import PerceptionGRPOConfig

    return TrlParser((PerceptionScriptArguments, PerceptionGRPOConfig, ModelConfig))


def main(script_args: PerceptionScriptArguments, training_args: Any, model_args: Any) -> dict[str, Any]:
    """Train with GRPO as the recipe describes, save, then optionally evaluate and push to the Hub.

    Returns a summary dict: output directory, train metrics and (when run) evaluation metrics.
    """
    from trl import get_peft_config, get_quantization_config

    from .hub import build_model_card
    from .trainer import PerceptionGRPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required (a local checkpoint path or a Hub model id)")
    if model_args.model_name_or_path.startswith("tiny:"):
        # Smoke runs: a tiny random checkpoint of the named family, built offline.
        from .testing import tiny_vlm

        model_args.model_name_or_path = tiny_vlm(model_args.model_name_or_path.split(":", 1)[1])
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
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
            trust_remote_code=model_args.trust_remote_code,
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
    )
    checkpoint = training_args.resume_from_checkpoint
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    summary: dict[str, Any] = {"output_dir": training_args.output_dir, "train": dict(train_result.metrics)}

    eval_metrics = None
    if script_args.evaluate_after_training and eval_dataset is not None and trainer.accelerator.is_main_process:
        from .evaluation import evaluate

        result = evaluate(
            trainer.model,
            eval_dataset,
            processor=trainer.processing_class,
            box_format=box_format,
            max_pixels=training_args.max_pixels,
            min_pixels=training_args.min_pixels,
            max_new_tokens=script_args.eval_max_new_tokens,
            output_dir=os.path.join(training_args.output_dir, "eval"),
        )
        eval_metrics = result.metrics
        summary["eval"] = eval_metrics

    if trainer.accelerator.is_main_process:
        tasks = (
            sorted({e["task"] for e in _mixture(script_args.dataset_mixture)})
            if script_args.task == "mixed"
            else [script_args.task]
        )
        card_args = dict(
            model_name=training_args.hub_model_id or Path(training_args.output_dir).name,
            base_model=model_args.model_name_or_path,
            task=tasks,
            dataset=[script_args.dataset_source] if script_args.task != "mixed" else [
                str(e.get("source", "synthetic")) for e in _mixture(script_args.dataset_mixture)
            ],
            reward_funcs=[getattr(f, "__name__", str(f)) for f in reward_funcs],
            reward_weights=training_args.reward_weights,
            box_format=box_format,
            training_args={k: getattr(training_args, k, None) for k in (
                "learning_rate", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
                "beta", "temperature", "max_completion_length", "loss_type", "num_train_epochs", "max_steps",
                "min_pixels", "max_pixels", "seed")},
            eval_metrics=eval_metrics,
        )
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "trl_perception_card.json").write_text(json.dumps(card_args, indent=2))
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
