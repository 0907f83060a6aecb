"""Specification of PerceptionGRPOTrainer under `torchrun` with two CPU processes (gloo)."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText

from trl_perception.testing import tiny_vlm

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))


def run_two_processes(script: str, model_dir: str, out_dir) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(HERE), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(HERE, script), model_dir, str(out_dir)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_processes_end_with_identical_weights(tmp_path):
    model_dir = tiny_vlm("qwen2_5_vl")

    run_two_processes("trainer_ddp_script.py", model_dir, tmp_path)

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["step"] for r in ranks] == [2, 2]
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    initial = dict(AutoModelForImageTextToText.from_pretrained(model_dir).named_parameters())
    assert any(not torch.equal(first[name], initial[name].detach()) for name in first)


def test_ground_truth_in_a_group_split_across_processes(tmp_path):
    run_two_processes("trainer_ddp_solution_script.py", tiny_vlm("qwen3_vl"), tmp_path)

    ranks = [torch.load(tmp_path / f"solution_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # one prompt x 4 rollouts per step, 2 rows per process: rank 0 holds the group's rollouts 0-1 and rank 1
    # rollouts 2-3, so the group's last rollout (the injected answer) is rank 1's second row
    first, second = ranks[0]["seen"][0], ranks[1]["seen"][0]
    assert first["injected"] == [] and second["injected"] == [1]
    assert second["texts"][1] == second["answers"][1]
    # rewards per group [0, 0, 0, 1]: the answer's advantage is (1 - 1/4) / (1/2 + 1e-4), the others' -1/4 / ...
    assert second["advantages"][1].item() == pytest.approx(0.75 / 0.5001, rel=1e-5)
    assert first["advantages"].tolist() == pytest.approx([-0.25 / 0.5001] * 2, rel=1e-5)
    assert ranks[0]["log"]["perception/solution_in_group_fraction"] == pytest.approx(0.25)
