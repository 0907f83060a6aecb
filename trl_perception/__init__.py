"""trl-perception: GRPO post-training of vision-language models on perception tasks, on top of TRL."""

__version__ = "0.1.0.dev0"
