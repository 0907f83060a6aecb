"""Perception-R1's Table 5 counting gap (SFT only 58.0 vs SFT+RL 77.1 on PixMo val) in miniature on CPU,
plus ground truth in the rollout group from a model that almost never earns a reward.

    python recipes/demo/counting_tiny.py --output-dir runs/counting \
        --results recipes/demo/results/counting_tiny.json              # the README table
    python recipes/demo/counting_tiny.py --output-dir runs/counting_quick --quick   # a smoke run (~1 min)

The setting is `tiny_experiment.SETTINGS["counting"]`: 3-10 red squares per 168x168 image, SFT answers that list
one point per square in a random order per row, GRPO with `count_reward` (Hungarian matching). Everything runs
through the sibling experiment's `run_experiment` (one definition of each stage):

1. **Table 5 arms**, from one SFT checkpoint trained from scratch for the full SFT budget (`SFT only`), per
   seed: `GRPO` (count_reward, Hungarian), `GRPO w/o reward matching` (`matching="sequential"`) and
   `continued SFT`, whose compute equals GRPO's in forward/backward sequences (one SFT step of 32 answers per
   GRPO step of 2 prompts x 16 samples). Greedy decoding on `--eval-n` held-out images.
2. **Ground truth in the group**: a barely trained SFT model (`--barely-steps` SFT steps from scratch), then per
   seed GRPO with `solution_in_group` 0 and 1 (`PerceptionGRPOTrainer`), same seeds and steps.

3. **SFT only over seeds** (`--stages sft_seeds`): the SFT stage alone from scratch per seed (initialisation,
   training images and their order from the seed); seed 0 is the table's SFT start.

Runs resume: stages and seeds already in `OUTPUT_DIR/*/results.json` are not run again. `--results` gets the
combined JSON after every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Running this file puts its folder first on sys.path; importing it as a module (tests) needs it too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_experiment import (  # noqa: E402
    ARMS,
    SETTINGS,
    Setting,
    build_learning_model,
    format_table,
    run_experiment,
    run_sft_stage,
)

TABLE_ARMS = ("grpo", "grpo_sequential", "control")
GROUND_TRUTH_ARMS = ("grpo_gt0", "grpo_gt1")
BARELY_STEPS = 20
"""SFT steps of the barely trained start of the ground-truth-in-group runs (cosine over these steps)."""
GT_STEPS = 30
"""GRPO steps of each ground-truth-in-group run."""


def counting_setting(quick: bool = False) -> Setting:
    """The experiment's setting: `SETTINGS["counting"]`, or a tiny copy for smoke runs and CI (`quick`).

    Example:
    ```python
    >>> counting_setting().task, counting_setting().synthetic["max_objects"], counting_setting().rewards
    ('counting', 10, ('count',))
    >>> counting_setting(quick=True).num_generations
    4

    ```
    """
    spec = SETTINGS["counting"]
    if not quick:
        return spec
    return replace(
        spec, sft_batch_size=4, sft_train_images=16, sft_warmup=2, num_generations=4, prompts_per_step=2,
        grpo_train_images=8, max_completion_length=48,
    )  # fmt: skip


def run(
    output_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    eval_n: int = 1000,
    sft_steps: int | None = None,
    grpo_steps: int | None = None,
    barely_steps: int = BARELY_STEPS,
    gt_steps: int = GT_STEPS,
    gt_eval_n: int | None = None,
    stages: Sequence[str] = ("table", "ground_truth"),
    workers: int = 2,
    quick: bool = False,
    results_path: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Both stages (see the module docstring), seed by seed; returns `{"table": ..., "ground_truth": ...}`, each
    `run_experiment`'s results, and writes them to `results_path` after each stage when given. The
    ground-truth runs are evaluated on `gt_eval_n` held-out images (default `eval_n`).

    Example:
    ```python
    >>> import tempfile
    >>> out = run(tempfile.mkdtemp(), seeds=[0], eval_n=2, sft_steps=2, grpo_steps=2, stages=["table"], workers=1,
    ...           quick=True, log=None)
    >>> sorted(out["table"]["table"])
    ['GRPO', 'GRPO w/o reward matching', 'SFT start', 'continued SFT']

    ```
    """
    spec = counting_setting(quick)
    output_dir = Path(output_dir)
    combined: dict[str, Any] = {}

    def save() -> None:
        if results_path is not None:
            Path(results_path).parent.mkdir(parents=True, exist_ok=True)
            Path(results_path).write_text(json.dumps(combined, indent=1))

    barely = output_dir / "ground_truth" / "barely_sft"
    # Seed by seed, both stages: a run stopped early still has whole seeds of both.
    for seed in seeds:
        if "table" in stages:
            combined["table"] = run_experiment(
                spec, output_dir / "table", [seed], eval_n=eval_n, sft_steps=sft_steps, grpo_steps=grpo_steps,
                arms=TABLE_ARMS, log=log, workers=workers,
            )  # fmt: skip
            combined["table"]["seeds"] = _seeds_done(combined["table"], TABLE_ARMS)
            save()
        if "sft_seeds" in stages:  # the SFT-only row over seeds: init, images and order all from `seed`
            sft_dir = output_dir / "sft_seeds" / f"seed{seed}"
            if not (sft_dir / "results.json").exists():
                init = build_learning_model(output_dir / "sft_seeds" / f"init{seed}", seed=seed,
                                            image_size=spec.image_size)  # fmt: skip
                sft = run_sft_stage(init, spec, sft_dir, steps=sft_steps, seed=seed, data_seed=seed, eval_n=eval_n,
                                    log=log)  # fmt: skip
                (sft_dir / "results.json").write_text(json.dumps({k: v for k, v in sft.items() if k != "checkpoint"}))
            combined.setdefault("sft_seeds", {})[str(seed)] = json.loads((sft_dir / "results.json").read_text())
            save()
        if "ground_truth" in stages:
            if not (barely / "config.json").exists():
                init = build_learning_model(output_dir / "ground_truth" / "init", image_size=spec.image_size)
                run_sft_stage(init, spec, barely, steps=barely_steps, warmup=min(10, barely_steps), log=log)
            combined["ground_truth"] = run_experiment(
                replace(spec, sft_steps=barely_steps), output_dir / "ground_truth", [seed],
                eval_n=eval_n if gt_eval_n is None else gt_eval_n, grpo_steps=gt_steps,
                start_checkpoint=str(barely), arms=GROUND_TRUTH_ARMS, log=log, workers=workers,
            )  # fmt: skip
            combined["ground_truth"]["seeds"] = _seeds_done(combined["ground_truth"], GROUND_TRUTH_ARMS)
            save()
    return combined


def _seeds_done(results: dict[str, Any], arms: Sequence[str]) -> list[int]:
    """Seeds whose runs of every arm are in `results` (earlier invocations' included)."""
    return sorted(set.intersection(*(set(map(int, results.get(arm, {}))) for arm in arms)))


def report(results: dict[str, Any]) -> str:
    """Markdown tables of `run`'s results, and per-step curves of the ground-truth-in-group runs."""
    lines = []
    for stage in ("table", "ground_truth"):
        if stage in results:
            lines += [f"### {stage}", format_table(results[stage]), ""]
    for arm in GROUND_TRUTH_ARMS:
        for seed, run_ in results.get("ground_truth", {}).get(arm, {}).items():
            curve = [
                (e["step"], e.get("reward"), e.get("frac_reward_zero_std")) for e in run_.get("history", [])
            ]
            text = " ".join(
                f"{s}:{r:.3f}/{1 - z:.2f}" for s, r, z in curve if r is not None and z is not None
            )
            lines.append(f"{ARMS[arm][0]}, seed {seed} (step:reward/nonzero-advantage groups): {text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--results", help="also write the combined results JSON here after every stage")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument(
        "--sft-steps", type=int, help="SFT steps of the table's start (default: the setting's)"
    )
    parser.add_argument(
        "--grpo-steps", type=int, help="GRPO steps of the table's arms (default: the setting's)"
    )
    parser.add_argument("--barely-steps", type=int, default=BARELY_STEPS)
    parser.add_argument("--gt-steps", type=int, default=GT_STEPS)
    parser.add_argument(
        "--gt-eval-n", type=int, help="held-out images of the ground-truth runs (default --eval-n)"
    )
    parser.add_argument(
        "--stages", nargs="+", default=["table", "ground_truth"], choices=["table", "ground_truth", "sft_seeds"]
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes for the per-seed runs (1 thread each on 2 cores)"
    )
    parser.add_argument("--threads", type=int, help="torch threads of the main process (SFT stages)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny batches, 1 seed, few steps")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.eval_n, args.workers = args.seeds[:1], min(args.eval_n, 8), 1
        args.sft_steps = args.sft_steps or 4
        args.grpo_steps = args.grpo_steps or 2
        args.barely_steps, args.gt_steps = min(args.barely_steps, 2), min(args.gt_steps, 2)
    results = run(
        args.output_dir, seeds=args.seeds, eval_n=args.eval_n, sft_steps=args.sft_steps, grpo_steps=args.grpo_steps,
        barely_steps=args.barely_steps, gt_steps=args.gt_steps, gt_eval_n=args.gt_eval_n, stages=args.stages, workers=args.workers,
        quick=args.quick, results_path=args.results,
    )  # fmt: skip
    print(report(results))
    return results


if __name__ == "__main__":
    main()
