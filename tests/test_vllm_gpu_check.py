"""CPU-side logic of benchmarks/gpu_check.py: arguments, the checks on given numbers, the table."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", _PATH)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("gpu_check", gpu_check)  # dataclasses look their module up
_spec.loader.exec_module(gpu_check)


def test_arguments_need_only_a_model_path():
    args = gpu_check.parse_args(["/models/qwen"])
    assert (args.model, args.steps, args.num_images) == ("/models/qwen", 3, 8)
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["m", "--steps", "0"])


def test_importance_sampling_ratio_near_one_passes_and_far_off_fails():
    logs = [
        {"loss": 0.1},
        {"sampling/importance_sampling_ratio/mean": 0.99},
        {"sampling/importance_sampling_ratio/mean": 1.03},
    ]
    ok = gpu_check.check_importance_sampling(logs)
    assert ok.passed and "mean 1.0100" in ok.value and "worst step 1.0300" in ok.value
    bad = gpu_check.check_importance_sampling(logs + [{"sampling/importance_sampling_ratio/mean": 0.6}])
    assert not bad.passed and "0.6000" in bad.value
    assert not gpu_check.check_importance_sampling([{"loss": 1.0}]).passed  # nothing logged is a failure
    assert not gpu_check.check_importance_sampling(
        [{"sampling/importance_sampling_ratio/mean": math.nan}]
    ).passed


def test_greedy_answers_must_match_image_by_image():
    assert gpu_check.check_same_answers(["a", "b "], ["a", "b"]).passed
    differ = gpu_check.check_same_answers(["a", "b"], ["a", "c"])
    assert not differ.passed and differ.value == "1/2 identical"
    assert not gpu_check.check_same_answers(["a"], []).passed
    assert not gpu_check.check_same_answers([], []).passed


def test_table_lists_every_check_and_a_verdict():
    checks = [
        gpu_check.Check("IS ratio", "mean 1.00", "1 ± 0.1", True),
        gpu_check.Check("answers", "7/8", ">= 100%", False),
    ]
    table = gpu_check.format_table(checks).splitlines()
    assert table[0].split() == ["check", "measured", "expected", "result"]
    assert table[2].endswith("PASS") and table[3].endswith("FAIL") and table[-1] == "FAILED"
    assert gpu_check.format_table(checks[:1]).splitlines()[-1] == "ALL PASS"


def test_main_refuses_without_a_gpu(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["m"]) == 2
    assert "CUDA" in capsys.readouterr().err
