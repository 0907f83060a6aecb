# GRPO post-training of a Qwen-VL model on perception tasks (grounding, counting, OCR, detection).
#
#   python trl_perception/scripts/grpo.py --config recipes/demo/config_demo.yaml        # CPU smoke run
#   accelerate launch --config_file recipes/accelerate_configs/zero3.yaml trl_perception/scripts/grpo.py \
#       --config recipes/Qwen2.5-VL-3B-Instruct/grpo/config_grounding.yaml
#   trl-perception train --config recipes/Qwen2.5-VL-3B-Instruct/grpo/config_grounding.yaml
#   accelerate launch --config_file zero3.yaml -m trl_perception.scripts.grpo --config my.yaml  # pip install
#
# Every YAML key is a field of PerceptionScriptArguments (trl_perception/scripts/arguments.py: data, rewards, final
# evaluation), PerceptionGRPOConfig (TRL's GRPOConfig plus box_format, min_pixels, max_pixels, ...) or
# trl.ModelConfig (model, LoRA, QLoRA); any of them can be overridden on the command line (`--learning_rate 2e-6`).
# Copy this file to change a step: it uses only the public API of trl and trl_perception.
"""Train a vision-language model with GRPO on perception tasks (the comments above say how to run it)."""

import functools
import importlib
import logging
import os
import sys
from typing import Any

import datasets
import transformers
from transformers import AutoConfig, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from trl_perception.callbacks import JigsawCurriculumCallback
from trl_perception.evaluation import evaluate
from trl_perception.frames import resolve_box_format
from trl_perception.rewards import get_reward
from trl_perception.scripts.arguments import PerceptionScriptArguments
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

logger = logging.getLogger(__name__)


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
    # A mixture's rows are shuffled together. Ground-truth answers (`completion`) only for solution_in_group.
    train_dataset, eval_dataset = script_args.build_datasets(
        box_format=box_format, min_pixels=training_args.min_pixels, max_pixels=training_args.max_pixels,
        completions=training_args.solution_in_group > 0,
    )  # fmt: skip

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
