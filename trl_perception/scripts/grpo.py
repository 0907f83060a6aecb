# GRPO post-training of a Qwen-VL model on perception tasks (grounding, counting, OCR, detection).
#
#   python trl_perception/scripts/grpo.py --config recipes/demo/config_demo.yaml        # CPU smoke run
#   accelerate launch --config_file recipes/accelerate_configs/zero3.yaml trl_perception/scripts/grpo.py \
#       --config recipes/Qwen2.5-VL-3B-Instruct/grpo/config_grounding.yaml
#   trl-perception train --config recipes/Qwen2.5-VL-3B-Instruct/grpo/config_grounding.yaml
#   accelerate launch --config_file zero3.yaml -m trl_perception.scripts.grpo --config my.yaml  # pip install
#
# Every YAML key is a field of PerceptionScriptArguments (below: data, rewards, final evaluation),
# PerceptionGRPOConfig (TRL's GRPOConfig plus box_format, min_pixels, max_pixels, ...) or trl.ModelConfig
# (model, LoRA, QLoRA); any of them can be overridden on the command line (`--learning_rate 2e-6`).
# Copy this file to change a step: it uses only the public API of trl and trl_perception.
"""Train a vision-language model with GRPO on perception tasks (the comments above say how to run it)."""

import functools
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import datasets
import transformers
from transformers import AutoConfig, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from trl_perception.callbacks import JigsawCurriculumCallback
from trl_perception.data import BUILDERS, build_dataset
from trl_perception.evaluation import evaluate
from trl_perception.frames import resolve_box_format
from trl_perception.rewards import get_reward, list_rewards
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

logger = logging.getLogger(__name__)


@dataclass
class PerceptionDatasetConfig:
    """One dataset of a mixture: a task, its source (a file or folder the task's builder reads, or
    `"synthetic"`) and the builder's options (`split`, `image_dir`, `num_samples`, `seed`, and `kwargs` for the
    builder's own). TRL's `DatasetConfig` plays this part for `datasets.load_dataset`; these rows come from
    `trl_perception.data.build_dataset` instead."""

    task: str
    source: str = "synthetic"
    split: str | None = None
    image_dir: str | None = None
    num_samples: int | None = None
    seed: int = 0
    kwargs: dict = field(default_factory=dict)

    def build(self, **options: Any) -> datasets.Dataset:
        """The rows, from `trl_perception.data.build_dataset` (`options` add the box format and pixel limits)."""
        return build_dataset(self.task, self.source, split=self.split, image_dir=self.image_dir,
                             num_samples=self.num_samples, seed=self.seed, **self.kwargs, **options)  # fmt: skip


def _json(name: str, value: Any) -> Any:
    """YAML gives mappings and lists; the command line gives them as JSON strings."""
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON ({err}): {value!r}") from None


@dataclass
class PerceptionScriptArguments:
    """Data, rewards and final evaluation of the GRPO script; checked when parsed, before any model loads."""

    task: str = field(default="grounding", metadata={"help": "The task, or 'mixed' to train on dataset_mixture."})
    dataset_source: str = field(
        default="synthetic",
        metadata={"help": "A file or folder the task's builder reads (RefCOCO, PixMo-Count, Fox page OCR, COCO "
                  "instances JSON), or 'synthetic'."},
    )  # fmt: skip
    dataset_split: str | None = field(default=None, metadata={"help": "Split (RefCOCO: train, val, testA, ...)."})
    image_dir: str | None = field(default=None, metadata={"help": "Image folder (default: the source's usual one)."})
    num_samples: int | None = field(default=None, metadata={"help": "Train on a seeded random subset this size."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the subsets and of synthetic data."})
    dataset_kwargs: dict | str | None = field(
        default=None, metadata={"help": "The builder's own options (a YAML mapping or a JSON string)."}
    )
    dataset_mixture: list | str | None = field(
        default=None,
        metadata={"help": "With task 'mixed': a list of {task, source, split, image_dir, num_samples, seed, "
                  "kwargs}; rows of every task are shuffled together."},
    )  # fmt: skip
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward names (trl_perception.rewards.list_rewards()) or import paths 'module.function'."},
    )
    reward_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Parameters per reward name, e.g. {iou: {squared: true}}."}
    )
    eval_source: str | None = field(default=None, metadata={"help": "Evaluation data (same forms as dataset_source)."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split."})
    eval_image_dir: str | None = field(
        default=None, metadata={"help": "Evaluation images (default: image_dir when eval_source is dataset_source)."}
    )
    eval_num_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset this size."})
    evaluate_after_training: bool = field(
        default=False, metadata={"help": "Evaluate on eval_source after training (main process, greedy)."}
    )
    eval_max_new_tokens: int = field(default=512, metadata={"help": "Generation length of the final evaluation."})

    def __post_init__(self):
        self.dataset_kwargs = _json("dataset_kwargs", self.dataset_kwargs) or {}
        self.reward_kwargs = _json("reward_kwargs", self.reward_kwargs) or {}
        for name in ("dataset_kwargs", "reward_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        tasks = sorted(BUILDERS)
        if self.task == "mixed":
            entries = _json("dataset_mixture", self.dataset_mixture)
            if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
                raise ValueError("task 'mixed' needs dataset_mixture: a non-empty list of {task, source, ...}")
            try:  # unknown keys are a TypeError naming the key
                self.dataset_mixture = [PerceptionDatasetConfig(**{"seed": self.dataset_seed + i, **e})
                                        for i, e in enumerate(entries)]  # fmt: skip
            except TypeError as err:
                raise ValueError(f"dataset_mixture: {err}") from None
            if self.eval_source:
                raise ValueError("eval_source is not read with task 'mixed': evaluate with `trl-perception eval`")
        elif self.dataset_mixture:
            raise ValueError("dataset_mixture is only read with task 'mixed'")
        for task in [e.task for e in self.dataset_mixture or []] or [self.task]:
            if task not in tasks:
                raise ValueError(f"unknown task {task!r}; expected one of {tasks} (or 'mixed')")
        if self.eval_image_dir is None and self.eval_source == self.dataset_source != "synthetic":
            self.eval_image_dir = self.image_dir  # another split of the same files
        if self.evaluate_after_training and not self.eval_source:
            raise ValueError("evaluate_after_training needs eval_source")
        if not self.reward_funcs:
            raise ValueError(f"reward_funcs is required: names from {list_rewards()} or 'module.function'")
        unused = sorted(set(self.reward_kwargs) - set(self.reward_funcs))
        if unused:
            raise ValueError(f"reward_kwargs names {unused}, which are not in reward_funcs {self.reward_funcs}")
        for name in self.reward_funcs:
            if "." not in name:  # import paths are resolved in main
                try:
                    get_reward(name, **self.reward_kwargs.get(name, {}))
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"reward {name!r}: {err}") from None

    def train_datasets(self) -> list[PerceptionDatasetConfig]:
        """The training data: the mixture's entries, or the one dataset the other fields describe."""
        if self.task == "mixed":
            return self.dataset_mixture
        return [PerceptionDatasetConfig(self.task, self.dataset_source, self.dataset_split, self.image_dir,
                                        self.num_samples, self.dataset_seed, self.dataset_kwargs)]  # fmt: skip



def curriculum_callbacks(dataset: Any) -> list[Any]:
    """A `JigsawCurriculumCallback` when the training set is a jigsaw dataset that follows a grid curriculum
    (`dataset_kwargs: {curriculum: [[0, [2, 1]], [1000, [2, 2]]]}`), so that it moves with `global_step`."""
    transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
    curriculum = getattr(transform, "curriculum", None)
    return [JigsawCurriculumCallback(curriculum)] if curriculum is not None else []

def main(script_args: PerceptionScriptArguments, training_args: PerceptionGRPOConfig, model_args: ModelConfig):
    # ------------------------------------------------------------------------------------------- logging and seed
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)

    # ------------------------------------------------------------------------------------ model and box format
    if model_args.model_name_or_path.startswith("tiny:"):  # one-process smoke runs: a tiny random model, offline
        model_args.model_name_or_path = tiny_vlm(model_args.model_name_or_path.removeprefix("tiny:"))
    box_format = training_args.box_format
    if box_format == "auto":  # the checkpoint's model_type says how it writes boxes (prompts depend on it)
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                            trust_remote_code=training_args.trust_remote_code)  # fmt: skip
        box_format = resolve_box_format("auto", config)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }

    # ------------------------------------------------------------------------------------------------- datasets
    # Prompts in the box format's syntax; each image resized once to the model's grid within the pixel limits.
    grid = {"box_format": box_format, "min_pixels": training_args.min_pixels, "max_pixels": training_args.max_pixels}
    parts = [entry.build(**grid) for entry in script_args.train_datasets()]
    if len(parts) == 1:
        train_dataset = parts[0]
    else:  # one `solution` column for every task's type: JSON strings, which every reward reads
        parts = [p.map(lambda s: {"solution": json.dumps(s)}, input_columns="solution") for p in parts]
        common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts)]
        parts = [p.select_columns(common) for p in parts]
        train_dataset = datasets.concatenate_datasets(parts).shuffle(seed=script_args.dataset_seed)
    eval_dataset = None
    if script_args.eval_source:
        eval_dataset = PerceptionDatasetConfig(
            script_args.task, script_args.eval_source, script_args.eval_split, script_args.eval_image_dir,
            script_args.eval_num_samples, script_args.dataset_seed + 1000, script_args.dataset_kwargs,
        ).build(**grid)  # fmt: skip

    # -------------------------------------------------------------------------------------------------- rewards
    reward_funcs = []
    sys.path.insert(0, os.getcwd())  # import paths may name a module in the working directory
    for name in script_args.reward_funcs:
        params = script_args.reward_kwargs.get(name, {})
        if "." in name:  # an import path: `my_package.rewards.my_reward`
            module, attr = name.rsplit(".", 1)
            func = getattr(importlib.import_module(module), attr)
            reward_funcs.append(functools.update_wrapper(functools.partial(func, **params), func) if params else func)
        else:
            reward_funcs.append(get_reward(name, **params))

    # ---------------------------------------------------------------------------------------------------- train
    trainer = PerceptionGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        callbacks=curriculum_callbacks(train_dataset),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # ----------------------------------------------------------------------------------------------------- save
    trainer.save_model(training_args.output_dir)  # with push_to_hub, transformers uploads it here already
    logger.info("Model saved to %s", training_args.output_dir)

    # ------------------------------------------------------------------------------------------------- evaluate
    eval_metrics = None
    if script_args.evaluate_after_training and trainer.accelerator.is_main_process:
        # ZeRO-3 and FSDP shard the weights over processes: evaluate the saved model instead.
        sharded = is_deepspeed_zero3_enabled() or trainer.is_fsdp_enabled
        result = evaluate(
            training_args.output_dir if sharded else trainer.model,
            eval_dataset,
            processor=trainer.processing_class,
            box_format=box_format,
            min_pixels=training_args.min_pixels,
            max_pixels=training_args.max_pixels,
            max_new_tokens=script_args.eval_max_new_tokens,
            backend="transformers",
            output_dir=os.path.join(training_args.output_dir, "eval"),
            progress=not training_args.disable_tqdm,
            # VQA with crop turns: accuracy with and without the crop turn, and the crop statistics
            crop_turns=training_args.crop_turns if script_args.task == "vqa" else 0,
            crop_min_pixels=training_args.crop_min_pixels,
            crop_max_pixels=training_args.crop_max_pixels,
        )
        eval_metrics = result.metrics
    trainer.accelerator.wait_for_everyone()

    # ----------------------------------------------------------------------------------- model card and push
    card = {
        "dataset_name": [entry.source for entry in script_args.train_datasets()],
        "eval_metrics": eval_metrics,
        "eval_dataset": " ".join(filter(None, [script_args.eval_source, script_args.eval_split])) or None,
    }
    trainer.create_model_card(**card)  # README.md, with the evaluation when there is one
    if training_args.push_to_hub:  # the weights with this card and eval/ (save_model pushed them without eval)
        trainer.push_to_hub(**card)
        logger.info("Model pushed to https://huggingface.co/%s", trainer.hub_model_id)
    trainer.accelerator.end_training()
    return {"output_dir": training_args.output_dir, "train": train_result.metrics, "eval": eval_metrics}


def make_parser() -> TrlParser:
    """The parser of this script: `(PerceptionScriptArguments, PerceptionGRPOConfig, ModelConfig)`."""
    return TrlParser((PerceptionScriptArguments, PerceptionGRPOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
