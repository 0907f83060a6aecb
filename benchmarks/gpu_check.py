"""One-command GPU check of vLLM generation (colocate mode) against the trainer, in a few minutes.

    python benchmarks/gpu_check.py MODEL_PATH

1. A few GRPO steps with `use_vllm=True, vllm_mode="colocate"` on synthetic images: TRL logs the importance-
   sampling ratio between vLLM's sampling log-probs and the trainer's; with images expanded once and the same
   pixels on both sides it stays near 1 (a doubled image run or different pixels drive it far off).
2. The same images evaluated greedily with both backends (`evaluation.evaluate`, backend "transformers" and
   "vllm"): the answers must be identical.

Prints a pass/fail table and exits 1 when a check fails. Needs a CUDA GPU and `pip install "trl-perception[vllm]"`.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

IS_RATIO_TOLERANCE = 0.1
"""Pass when the logged mean importance-sampling ratio is within 1 ± this."""
MIN_AGREEMENT = 1.0
"""Fraction of images whose greedy answers must match between the backends."""


@dataclass
class Check:
    name: str
    value: str
    expected: str
    passed: bool


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="path (or Hub id) of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (default 3)")
    parser.add_argument(
        "--num-images", type=int, default=8, help="images evaluated with both backends (default 8)"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.num_images < 1:
        parser.error("--steps and --num-images must be at least 1")
    if not 0.05 <= args.gpu_memory_utilization <= 0.95:
        parser.error("--gpu-memory-utilization must be within [0.05, 0.95]")
    return args


def check_importance_sampling(log_history: Sequence[dict], tolerance: float = IS_RATIO_TOLERANCE) -> Check:
    """The mean of TRL's per-step `sampling/importance_sampling_ratio/mean` must lie within 1 ± `tolerance`."""
    values = [
        float(row["sampling/importance_sampling_ratio/mean"])
        for row in log_history
        if "sampling/importance_sampling_ratio/mean" in row
    ]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return Check("IS ratio vLLM/trainer", "not logged", f"1 ± {tolerance}", False)
    mean = sum(values) / len(values)
    worst = max(values, key=lambda v: abs(v - 1.0))
    return Check(
        "IS ratio vLLM/trainer",
        f"mean {mean:.4f}, worst step {worst:.4f} ({len(values)} steps)",
        f"1 ± {tolerance}",
        abs(worst - 1.0) <= tolerance,
    )


def check_same_answers(hf: Sequence[str], vllm: Sequence[str], min_agreement: float = MIN_AGREEMENT) -> Check:
    """Greedy answers of the two backends, image by image."""
    if len(hf) != len(vllm) or not hf:
        return Check("greedy answers HF = vLLM", f"{len(hf)} vs {len(vllm)} answers", "same count", False)
    same = sum(a.strip() == b.strip() for a, b in zip(hf, vllm, strict=True))
    share = same / len(hf)
    return Check(
        "greedy answers HF = vLLM",
        f"{same}/{len(hf)} identical",
        f">= {min_agreement:.0%}",
        share >= min_agreement,
    )


def format_table(checks: Sequence[Check]) -> str:
    """A fixed-width table with one row per check and a final verdict line."""
    rows = [("check", "measured", "expected", "result")]
    rows += [(c.name, c.value, c.expected, "PASS" if c.passed else "FAIL") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("ALL PASS" if checks and all(c.passed for c in checks) else "FAILED")
    return "\n".join(lines)


def _dataset(model: str, n: int):
    from trl_perception.data import make_synthetic
    from trl_perception.evaluation import resolve_family

    box_format = resolve_family(model) or "qwen2_5_vl"
    return make_synthetic(["grounding", "counting"], n, seed=0, box_format=box_format), box_format


def run_grpo(args: argparse.Namespace, out: str) -> Check:
    from trl_perception.rewards import iou_reward
    from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

    dataset, box_format = _dataset(args.model, 16)
    config = PerceptionGRPOConfig(
        output_dir=out, max_steps=args.steps, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=64, learning_rate=1e-6, logging_steps=1, bf16=True, report_to="none",
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_importance_sampling_correction=True, box_format=box_format, max_pixels=256 * 28 * 28,
        save_strategy="no", remove_unused_columns=False,
    )  # fmt: skip
    trainer = PerceptionGRPOTrainer(args.model, iou_reward, config, train_dataset=dataset)
    trainer.train()
    return check_importance_sampling(trainer.state.log_history)


def run_eval(args: argparse.Namespace) -> Check:
    from trl_perception.evaluation import evaluate

    dataset, box_format = _dataset(args.model, args.num_images)
    common = dict(box_format=box_format, max_pixels=256 * 28 * 28, max_new_tokens=64, progress=False)
    hf = evaluate(args.model, dataset, backend="transformers", **common)
    vl = evaluate(args.model, dataset, backend="vllm", vllm_kwargs={"gpu_memory_utilization": 0.3}, **common)
    return check_same_answers([p["text"] for p in hf.predictions], [p["text"] for p in vl.predictions])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU", file=sys.stderr)
        return 2
    checks = []
    with tempfile.TemporaryDirectory() as out:
        for name, step in (
            ("GRPO colocate", lambda: run_grpo(args, out)),
            ("evaluation", lambda: run_eval(args)),
        ):
            try:
                checks.append(step())
            except Exception as error:  # a crash is a failed check, reported in the table
                checks.append(Check(name, f"crashed: {type(error).__name__}: {error}"[:160], "runs", False))
            torch.cuda.empty_cache()
    print(format_table(checks))
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
