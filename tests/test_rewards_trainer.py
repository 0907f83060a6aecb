"""End to end: the rewards drop into a plain `trl.GRPOTrainer` (no trl-perception trainer) and train a tiny
offline Qwen2.5-VL for two steps."""

import math

import pytest
from PIL import Image

from tests._helpers import cpu_run_args
from trl_perception.rewards import format_reward, iou_reward
from trl_perception.testing import build_tiny_vlm

PROMPT = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": "Output the bounding box of the red square in the image."},
        ],
    }
]


def red_square(width, height, box):
    image = Image.new("RGB", (width, height), "grey")
    image.paste((255, 0, 0), tuple(box))
    return image


@pytest.mark.slow
def test_plain_grpo_trainer_trains_with_iou_and_format_rewards(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    path = build_tiny_vlm("qwen2_5_vl", tmp_path / "model")
    boxes = [[20, 30, 60, 70], [10, 10, 50, 40]]
    sizes = [[150, 97], [120, 80]]
    dataset = Dataset.from_dict(
        {
            "prompt": [PROMPT, PROMPT],
            "image": [red_square(*size, box) for size, box in zip(sizes, boxes)],
            "solution": boxes,
            "task": ["grounding", "grounding"],
            "image_size": sizes,
            "box_format": ["qwen2_5_vl", "qwen2_5_vl"],
        }
    )
    args = cpu_run_args(
        GRPOConfig,
        tmp_path / "out",
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=12,
        learning_rate=1e-3,
    )
    trainer = GRPOTrainer(
        model=path, reward_funcs=[iou_reward, format_reward], args=args, train_dataset=dataset
    )

    trainer.train()

    assert trainer.state.global_step == 2
    logs = [log for log in trainer.state.log_history if "rewards/iou_reward/mean" in log]
    assert len(logs) == 2
    for log in logs:
        for key in (
            "rewards/iou_reward/mean",
            "rewards/format_reward/mean",
            "iou_reward/iou",
            "iou_reward/parse_failure",
        ):
            assert math.isfinite(log[key]), key
            assert 0.0 <= log[key] <= 1.0, key
