"""A tiny end-to-end GRPO run on synthetic open-vocabulary detection rows with the OD rewards (CPU, fp32)."""

import pytest

from tests._helpers import cpu_run_args
from trl_perception.data.synthetic import make_synthetic
from trl_perception.rewards import od_length_reward, od_weighted_reward
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

pytestmark = pytest.mark.slow


def length_reward(completions, **kwargs):
    """A random model earns 0 from the OD rewards; completion length varies, so GRPO gets a gradient."""
    return [float(len(c[0]["content"])) for c in completions]


def test_two_grpo_steps_on_synthetic_ovd_rows(tmp_path):
    dataset = make_synthetic("ovd", 4, seed=0, box_format="qwen2_5_vl")
    args = cpu_run_args(
        PerceptionGRPOConfig, tmp_path, max_steps=2, num_generations=2, per_device_train_batch_size=4,
        max_completion_length=8, learning_rate=1e-2, max_pixels=56 * 56,
    )  # fmt: skip
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"), [od_length_reward, od_weighted_reward, length_reward], args, train_dataset=dataset
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    trainer.train()

    assert trainer.state.global_step == 2
    after = dict(trainer.model.named_parameters())
    assert any(not (after[n].detach() == before[n]).all() for n in before), "no weight moved"
    logged = set().union(*trainer.state.log_history)
    assert any(k.startswith("rewards/od_length_reward") for k in logged), sorted(logged)
    assert any(k.startswith("rewards/od_weighted_reward") for k in logged)
