"""Jigsaw-R1 in miniature on CPU: does a ~1.2M-parameter Qwen2.5-VL learn 2x1 and 2x2 jigsaw
puzzles of synthetic scenes with GRPO from a short SFT start, and does it transfer to a grid it never saw
(1x2)? Compared, over seeds, with continued SFT for the same wall time. Uses only the library's public API.

    python recipes/demo/jigsaw_tiny.py --output-dir runs/jigsaw            # the README table
    python recipes/demo/jigsaw_tiny.py --output-dir runs/jigsaw --quick    # a smoke run in about a minute

Stages: build the model; SFT on puzzles of both training grids (main process, all threads); then GRPO and
the continued-SFT control per seed in `--workers` processes of one thread each (each control runs for the
wall time its seed's GRPO run took); greedy evaluation on held-out scenes of every grid. Writes
`OUTPUT_DIR/results.json` and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiny Qwen2.5-VL that learns and its image size: one definition, in the sibling experiment script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_experiment import IMAGE_SIZE  # noqa: E402
from tiny_experiment import LEARNING_CONFIG as MODEL_CONFIG  # noqa: E402

TEMPLATE = "Solve this {rows}x{cols} jigsaw puzzle: give the original position of each patch."
"""A short prompt: the tiny model cannot read Jigsaw-R1's 300-token instructions, and they would dominate compute."""
TRAIN_GRIDS = ((2, 1), (2, 2))
EVAL_GRIDS = ((2, 1), (2, 2), (1, 2))
SCENES = dict(min_objects=1, max_objects=3, min_size=36, max_size=64)
"""Large shapes, so most patch seams cut through one: the only cue to the arrangement in a scene of shapes
on a flat background."""
EVAL_SEED = 1_000_003


@dataclasses.dataclass
class Settings:
    # The budget of the README table (18.5 min on the shared 2-core machine, load 7-8). The tiny model learned
    # neither puzzle at this budget; a larger one is untested (see the README).
    sft_steps: int = 150
    sft_lr: float = 2e-3
    sft_batch: int = 16
    sft_images: int = 2000
    grpo_steps: int = 15
    grpo_lr: float = 1e-4
    grpo_prompts: int = 4
    generations: int = 8
    temperature: float = 1.0
    control_lr: float = 1e-4
    control_images: int = 1000
    eval_images: int = 60
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = 2

    @classmethod
    def quick(cls) -> Settings:
        return cls(sft_steps=6, sft_batch=4, sft_images=16, grpo_steps=2, grpo_prompts=2, generations=4,
                   control_images=8, eval_images=4, seeds=(0,), workers=1)  # fmt: skip


# ---------------------------------------------------------------------------------------------- data


def scenes(n: int, seed: int) -> Any:
    from trl_perception.data import make_synthetic

    return make_synthetic("grounding", n, seed=seed, image_size=IMAGE_SIZE, **SCENES)


def puzzles(n: int, seed: int, grids: Any) -> Any:
    """Puzzles of `n` scenes for every grid in `grids` (rows of one scene share its image, not its shuffle)."""
    from trl_perception.data.jigsaw import concatenate_jigsaw, make_jigsaw

    source = scenes(n, seed)
    return concatenate_jigsaw([make_jigsaw(source, r, c, seed=seed, template=TEMPLATE) for r, c in grids])


def target_text(permutation: list[int], grid: list[int]) -> str:
    from trl_perception.formats import render_jigsaw_answer

    return render_jigsaw_answer(permutation, cols=grid[1])


# ----------------------------------------------------------------------------------------------- SFT


def build_model(output_dir: str, seed: int = 0) -> str:
    from trl_perception.testing import build_tiny_vlm

    return build_tiny_vlm(
        "qwen2_5_vl", output_dir, seed=seed, min_pixels=3136, max_pixels=IMAGE_SIZE * IMAGE_SIZE, **MODEL_CONFIG
    )


def _load(path: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


def sft(
    start: str,
    data: Any,
    output_dir: str,
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    warmup: int = 0,
    cosine: bool = True,
    time_budget: float | None = None,
) -> dict[str, Any]:
    """Supervised fine-tuning on the rendered true answers (loss on the answer only), AdamW, clipped
    gradients; with `time_budget`, constant lr until that many seconds have passed."""
    import torch

    torch.manual_seed(seed)
    model, processor = _load(start)
    tok = processor.tokenizer
    tok.padding_side = "right"
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))  # fmt: skip
    prompt_lengths: dict[str, tuple[str, int]] = {}
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    start_time, step, losses = time.time(), 0, []
    while True:
        elapsed = time.time() - start_time
        if (time_budget is None and step >= steps) or (time_budget is not None and elapsed >= time_budget):
            break
        if len(order) < batch:
            extra = list(range(len(data)))
            rng.shuffle(extra)
            order += extra
        indices, order = order[:batch], order[batch:]
        rows = data[indices]
        texts = []
        lengths = []
        for prompt, image, perm, grid in zip(rows["prompt"], rows["image"], rows["permutation"], rows["grid"]):
            key = json.dumps(prompt)
            if key not in prompt_lengths:
                chat = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                n = processor(text=[chat], images=[image], return_tensors="pt")["input_ids"].shape[1]
                prompt_lengths[key] = (chat, n)
            chat, n = prompt_lengths[key]
            texts.append(chat + target_text(perm, grid) + "<|im_end|>")
            lengths.append(n)
        inputs = processor(text=texts, images=list(rows["image"]), padding=True, return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        for i, n in enumerate(lengths):
            labels[i, :n] = -100
        if time_budget is None:
            scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
            if cosine and step >= warmup:
                scale = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
        loss = model(**inputs, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            print(f"  sft step {step}: loss {sum(losses[-50:]) / 50:.3f} ({time.time() - start_time:.0f} s)", flush=True)
    model.eval()
    model.save_pretrained(output_dir)
    tok.padding_side = "left"
    processor.save_pretrained(output_dir)
    return {"steps": step, "seconds": time.time() - start_time, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


# ---------------------------------------------------------------------------------------------- GRPO


def grpo(start: str, data: Any, output_dir: str, settings: Settings, seed: int) -> dict[str, Any]:
    """TRL's GRPOTrainer with the jigsaw accuracy (1.0) and format (0.5) rewards, as Jigsaw-R1 weighs them."""
    from trl import GRPOConfig, GRPOTrainer

    from trl_perception.rewards import jigsaw_format_reward, jigsaw_reward

    args = GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=10, disable_tqdm=True, seed=seed, max_steps=settings.grpo_steps,
        per_device_train_batch_size=settings.grpo_prompts * settings.generations,
        num_generations=settings.generations, max_completion_length=10, temperature=settings.temperature,
        learning_rate=settings.grpo_lr, lr_scheduler_type="constant", beta=0.0, loss_type="dapo",
        scale_rewards="group", reward_weights=[1.0, 0.5],
    )  # fmt: skip
    trainer = GRPOTrainer(model=start, reward_funcs=[jigsaw_reward, jigsaw_format_reward], args=args,
                          train_dataset=data)  # fmt: skip
    begin = time.time()
    trainer.train()
    seconds = time.time() - begin
    trainer.save_model(output_dir)
    trainer.processing_class.save_pretrained(output_dir)
    rewards = [log["rewards/jigsaw_reward/mean"] for log in trainer.state.log_history if "rewards/jigsaw_reward/mean" in log]
    return {"steps": trainer.state.global_step, "seconds": seconds, "sampled_reward": rewards}


# ---------------------------------------------------------------------------------------------- eval


def evaluate(path: str, settings: Settings, batch: int = 50) -> dict[str, Any]:
    """Greedy answers on held-out scenes for every grid in `EVAL_GRIDS`: exact, position and connection
    accuracy and the parse rate per grid (`rewards.jigsaw.jigsaw_metrics`)."""
    import torch

    from trl_perception.rewards.jigsaw import jigsaw_metrics, jigsaw_scores, jigsaw_target

    model, processor = _load(path)
    processor.tokenizer.padding_side = "left"
    data = puzzles(settings.eval_images, EVAL_SEED, EVAL_GRIDS)
    records = []
    with torch.no_grad():
        for lo in range(0, len(data), batch):
            rows = data[lo : lo + batch]
            chats = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in rows["prompt"]]
            inputs = processor(text=chats, images=list(rows["image"]), padding=True, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
            texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for text, solution, grid in zip(texts, rows["solution"], rows["grid"]):
                scores = jigsaw_scores(text, jigsaw_target(solution))
                records.append({"grid": grid, **scores, "parsed": float(scores["prediction"] is not None)})
    summary = jigsaw_metrics(records)
    for key in summary:
        group = [r for r in records if key == "all" or f"{r['grid'][0]}x{r['grid'][1]}" == key]
        summary[key]["parsed"] = sum(r["parsed"] for r in group) / len(group)
    return summary


# --------------------------------------------------------------------------------------------- driver


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _grpo_job(start: str, output_dir: str, settings: Settings, seed: int) -> dict[str, Any]:
    data = puzzles(settings.grpo_prompts * max(settings.grpo_steps, 1) * 2, 2 + 100 * seed, TRAIN_GRIDS)
    return grpo(start, data, output_dir, settings, seed)


def _control_job(start: str, output_dir: str, settings: Settings, seed: int, budget: float) -> dict[str, Any]:
    data = puzzles(settings.control_images, 3 + 100 * seed, TRAIN_GRIDS)
    return sft(start, data, output_dir, steps=0, lr=settings.control_lr, batch=settings.sft_batch, seed=seed,
               cosine=False, time_budget=budget)  # fmt: skip


def _save(path: str, results: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: mean ± sample std over seeds of each arm, per evaluation grid."""
    import numpy as np

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"

    grids = [f"{r}x{c}" for r, c in EVAL_GRIDS]
    header = "| arm | " + " | ".join(f"{g} exact | {g} positions" for g in grids) + " | 2x2 connections | train time |"
    lines = [header, "|" + "---|" * (2 * len(grids) + 3)]
    arms = [("SFT start", [results["sft"]])] + [
        (name, [results[arm][s] for s in sorted(results.get(arm, {}))]) for name, arm in (("GRPO", "grpo"), ("continued SFT", "control"))
    ]
    chance = {"2x1": (0.5, 0.5), "2x2": (1 / 24, 0.25), "1x2": (0.5, 0.5)}
    lines.append("| chance | " + " | ".join(f"{chance[g][0]:.3f} | {chance[g][1]:.3f}" for g in grids) + " | 0.167 | |")
    for name, runs in arms:
        runs = [r for r in runs if "eval" in r]
        if not runs:
            continue
        cells = []
        for g in grids:
            cells.append(cell([r["eval"][g]["exact"] for r in runs]))
            cells.append(cell([r["eval"][g]["positions"] for r in runs]))
        cells.append(cell([r["eval"]["2x2"]["connections"] for r in runs]))
        cells.append(cell([r["train"]["seconds"] for r in runs]) + " s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(output_dir: str, settings: Settings, sft_checkpoint: str | None = None) -> dict[str, Any]:
    import torch

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "results.json")
    results: dict[str, Any] = {"settings": dataclasses.asdict(settings), "grpo": {}, "control": {}}
    wall = time.time()
    if sft_checkpoint is not None:  # reuse the SFT start of an earlier run (its settings must match)
        sft_dir = sft_checkpoint
        train = {"steps": None, "seconds": 0.0, "reused": sft_checkpoint}
    else:
        start = build_model(os.path.join(output_dir, "init"))
        sft_dir = os.path.join(output_dir, "sft")
        print(f"SFT: {settings.sft_steps} steps on {settings.sft_images} scenes x {len(TRAIN_GRIDS)} grids", flush=True)
        train = sft(start, puzzles(settings.sft_images, 1, TRAIN_GRIDS), sft_dir, steps=settings.sft_steps,
                    lr=settings.sft_lr, batch=settings.sft_batch, seed=0, warmup=min(50, settings.sft_steps // 5))  # fmt: skip
    results["sft"] = {"train": train}
    print(f"  {train}", flush=True)
    _save(path, results)
    torch.set_num_threads(1)
    with ProcessPoolExecutor(settings.workers, initializer=_one_thread) as pool:
        sft_eval = pool.submit(evaluate, sft_dir, settings)
        grpo_jobs = {s: pool.submit(_grpo_job, sft_dir, os.path.join(output_dir, f"grpo_{s}"), settings, s) for s in settings.seeds}
        for s, job in grpo_jobs.items():
            results["grpo"][str(s)] = {"train": job.result()}
            print(f"GRPO seed {s}: {results['grpo'][str(s)]['train']}", flush=True)
        results["sft"]["eval"] = sft_eval.result()
        _save(path, results)
        control_jobs = {
            s: pool.submit(_control_job, sft_dir, os.path.join(output_dir, f"control_{s}"), settings, s,
                           results["grpo"][str(s)]["train"]["seconds"])  # fmt: skip
            for s in settings.seeds
        }
        grpo_evals = {s: pool.submit(evaluate, os.path.join(output_dir, f"grpo_{s}"), settings) for s in settings.seeds}
        for s, job in control_jobs.items():
            results["control"][str(s)] = {"train": job.result()}
            print(f"control seed {s}: {results['control'][str(s)]['train']}", flush=True)
        control_evals = {s: pool.submit(evaluate, os.path.join(output_dir, f"control_{s}"), settings) for s in settings.seeds}
        for s in settings.seeds:
            results["grpo"][str(s)]["eval"] = grpo_evals[s].result()
            results["control"][str(s)]["eval"] = control_evals[s].result()
    results["wall_seconds"] = time.time() - wall
    _save(path, results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--quick", action="store_true", help="a smoke run (tiny settings)")
    parser.add_argument("--sft-checkpoint", help="skip SFT: start from this SFT checkpoint of an earlier run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a Settings field")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(Settings)}:
            parser.error(f"unknown setting {key!r}")
        current = getattr(settings, key)
        parsed = tuple(int(v) for v in value.split(",")) if isinstance(current, tuple) else type(current)(value)
        setattr(settings, key, parsed)
    results = run(args.output_dir, settings, args.sft_checkpoint)
    print(format_table(results))
    print(f"wall time {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
