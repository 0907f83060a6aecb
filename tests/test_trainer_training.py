"""Specification of PerceptionGRPOTrainer training runs: full fine-tuning, LoRA and QLoRA for every family,
checkpoint save and resume, on tiny offline Qwen-VL models (fp32, CPU)."""

import os

import pytest
import torch

from tests._helpers import cpu_run_args
from trl_perception.data.synthetic import make_synthetic
from trl_perception.frames import BOX_FORMATS
from trl_perception.rewards import iou_reward
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

pytestmark = pytest.mark.slow


def length_reward(completions, **kwargs):
    """A random model earns IoU 0 everywhere; completion length varies, so GRPO gets a gradient."""
    return [float(len(c[0]["content"])) for c in completions]


def make_args(output_dir, **overrides):
    defaults = dict(
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=8,
        learning_rate=1e-2,
        max_pixels=56 * 56,
    )
    return cpu_run_args(PerceptionGRPOConfig, output_dir, **{**defaults, **overrides})


@pytest.fixture(scope="module")
def dataset():
    # 150x97 is off every patch grid and above max_pixels: the trainer resizes each image on read
    return make_synthetic("grounding", 4, seed=0, image_size=(150, 97))


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
    )


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", BOX_FORMATS)
@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_a_few_steps_move_the_trainable_weights(family, mode, dataset, tmp_path):
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    kwargs = {}
    model = tiny_vlm(family)
    if mode == "full":
        model = AutoModelForImageTextToText.from_pretrained(model)  # family detection from an object
    if mode in ("lora", "qlora"):
        kwargs["peft_config"] = lora_config()
    if mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    trainer = PerceptionGRPOTrainer(
        model, [iou_reward, length_reward], make_args(tmp_path), train_dataset=dataset, **kwargs
    )
    before = trainable(trainer.model)

    trainer.train()

    assert trainer.box_format == family
    assert trainer.state.global_step == 2
    names = set(before)
    if mode == "full":
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    else:
        assert names and all("lora_" in n for n in names)
    if mode == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    after = dict(trainer.model.named_parameters())
    moved = [n for n in names if not torch.equal(after[n].detach(), before[n])]
    assert moved, "no trainable weight moved"
    if mode != "full":
        assert any("lora_B" in n for n in moved)
    logged = set().union(*trainer.state.log_history)
    assert {"rewards/iou_reward/grounding/mean", "perception/parse_failure_rate"} <= logged


def test_training_resumes_from_a_checkpoint_at_the_right_step(dataset, tmp_path):
    from transformers import AutoProcessor

    first = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        [iou_reward, length_reward],
        make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1),
        train_dataset=dataset,
    )
    first.train()
    checkpoint = os.path.join(tmp_path, "checkpoint-1")
    assert os.path.isdir(checkpoint) and os.path.isdir(os.path.join(tmp_path, "checkpoint-2"))
    # the trainer's pixel limits are saved with the checkpoint
    assert AutoProcessor.from_pretrained(checkpoint).image_processor.size["longest_edge"] == 56 * 56

    resumed = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        [iou_reward, length_reward],
        make_args(tmp_path / "resumed", max_steps=3),
        train_dataset=dataset,
    )
    resumed.train(resume_from_checkpoint=checkpoint)

    assert resumed.state.global_step == 3
    steps = [log["step"] for log in resumed.state.log_history if "loss" in log]
    assert steps == [1, 2, 3]  # step 1 comes from the checkpoint's history; 2 and 3 were trained now
