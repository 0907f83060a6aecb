"""Specification of PerceptionGRPOTrainer under `torchrun` with two CPU processes (gloo)."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText

from trl_perception.testing import tiny_vlm

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(__file__), "trainer_ddp_script.py")


def test_two_processes_end_with_identical_weights(tmp_path):
    model_dir = tiny_vlm("qwen2_5_vl")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT,
               model_dir, str(tmp_path)]  # fmt: skip

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["step"] for r in ranks] == [2, 2]
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    initial = dict(AutoModelForImageTextToText.from_pretrained(model_dir).named_parameters())
    assert any(not torch.equal(first[name], initial[name].detach()) for name in first)
