# Perception GRPO recipe: TRL's conventions with perception datasets, rewards and frames.
#
#   accelerate launch --config_file recipes/accelerate_configs/zero3.yaml recipes/grpo.py \
#       --config recipes/Qwen2-VL-2B-Instruct/grpo/config_grounding.yaml
#   python recipes/grpo.py --config recipes/demo/config_demo.yaml            # CPU smoke run
#
# Every key of the YAML is an argument of PerceptionScriptArguments (data, rewards, evaluation),
# PerceptionGRPOConfig (TRL's GRPOConfig plus box_format, min/max_pixels, ...) or trl.ModelConfig
# (model path, LoRA / QLoRA); any of them can be overridden on the command line.
"""Train a vision-language model with GRPO on a perception task (see the comments above)."""

from trl_perception.recipe import main, make_parser

if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
