# Supervised fine-tuning (SFT) of a Qwen-VL model on perception answers (grounding, counting, OCR, detection):
# Perception-R1's "SFT only" baseline, and the first stage of SFT -> GRPO.
#
#   python trl_perception/scripts/sft.py --config recipes/demo/config_sft_demo.yaml      # CPU smoke run
#   accelerate launch --config_file recipes/accelerate_configs/zero3.yaml trl_perception/scripts/sft.py \
#       --config recipes/Qwen2.5-VL-3B-Instruct/sft/config_grounding.yaml
#   trl-perception sft --config recipes/Qwen2.5-VL-3B-Instruct/sft/config_grounding.yaml
#   accelerate launch --config_file zero3.yaml -m trl_perception.scripts.sft --config my.yaml   # pip install
#
# Then GRPO from its output (Table 5's "SFT+RL"):
#   trl-perception train recipes/Qwen2.5-VL-3B-Instruct/grpo/config_grounding.yaml \
#       --model_name_or_path outputs/Qwen2.5-VL-3B-Instruct-SFT-grounding --output_dir outputs/Qwen2.5-VL-3B-Instruct-SFT-GRPO-grounding
#
# Every YAML key is a field of PerceptionSFTScriptArguments (trl_perception/scripts/arguments.py: data, answers,
# final evaluation, LoRA merge; the same data keys as the GRPO script), PerceptionSFTConfig (TRL's SFTConfig plus
# box_format, min_pixels, max_pixels) or trl.ModelConfig (model, LoRA, QLoRA); any of them can be overridden on the
# command line (`--learning_rate 1e-5`). Copy this file to change a step: it uses only the public API of trl and
# trl_perception.
"""Fine-tune a vision-language model on ground-truth perception answers (the comments above say how to run it)."""

import logging
import os
import sys

import datasets
import transformers
from transformers import AutoConfig, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from trl_perception.evaluation import evaluate
from trl_perception.frames import resolve_box_format
from trl_perception.scripts.arguments import PerceptionSFTScriptArguments
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionSFTConfig, PerceptionSFTTrainer

logger = logging.getLogger(__name__)


def main(script_args: PerceptionSFTScriptArguments, training_args: PerceptionSFTConfig, model_args: ModelConfig):
    # ------------------------------------------------------------------------------------------- logging and seed
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)
    if script_args.merge_lora and not model_args.use_peft:
        raise ValueError("merge_lora merges a LoRA adapter: set use_peft true (or merge_lora false)")
    if script_args.merge_lora and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise ValueError("merge_lora needs an unquantized base model: drop load_in_4bit/load_in_8bit, or keep the "
                         "adapter (merge_lora false) and merge it into an unquantized base offline")  # fmt: skip

    # ------------------------------------------------------------------------------------ model and box format
    if model_args.model_name_or_path.startswith("tiny:"):  # one-process smoke runs: a tiny random model, offline
        model_args.model_name_or_path = tiny_vlm(model_args.model_name_or_path.removeprefix("tiny:"))
    box_format = training_args.box_format
    if box_format == "auto":  # the checkpoint's model_type says how it writes boxes (prompts and answers depend on it)
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
    # Prompts in the box format's syntax; each image resized once to the model's grid within the pixel limits; the
    # ground truth written as the assistant's answer (`completion`) in that format, objects in `object_order`.
    train_dataset, eval_dataset = script_args.build_datasets(
        box_format=box_format, min_pixels=training_args.min_pixels, max_pixels=training_args.max_pixels,
        completions=True,
    )  # fmt: skip

    # ---------------------------------------------------------------------------------------------------- train
    # TRL's prompt-completion rows: the loss is on the answer tokens only (completion_only_loss).
    trainer = PerceptionSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,  # loss on held-out answers
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # ----------------------------------------------------------------------------------------------------- save
    if script_args.merge_lora:  # a plain checkpoint for the next stage; the adapter alone goes to adapter/
        if trainer.accelerator.is_main_process:
            trainer.model.save_pretrained(os.path.join(training_args.output_dir, "adapter"))
        trainer.merge_adapter()
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
    """The parser of this script: `(PerceptionSFTScriptArguments, PerceptionSFTConfig, ModelConfig)`."""
    return TrlParser((PerceptionSFTScriptArguments, PerceptionSFTConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
