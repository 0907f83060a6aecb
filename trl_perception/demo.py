"""`trl-perception demo`: GRPO on synthetic perception data with a tiny model, evaluated before and after,
on a laptop CPU in minutes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_SETTING", "LEARNED_SETTING", "DemoSetting", "bundled_checkpoint", "reward_mean", "run_demo"]


@dataclass
class DemoSetting:
    """What the demo trains: task, synthetic data options, rewards and GRPO knobs.

    Training images are `make_synthetic(task, train_samples, seed=train_seed + seed, **data_kwargs)` and the
    held-out images `make_synthetic(task, eval_samples, seed=eval_seed, **data_kwargs)` (the same for every run
    seed), where `data_kwargs` extends `box_format`, `min_pixels` and `max_pixels`.
    """

    task: str = "detection"
    box_format: str = "qwen2_5_vl"
    data_kwargs: dict[str, Any] = field(default_factory=lambda: {"min_objects": 2, "max_objects": 4})
    rewards: tuple[str, ...] = ("detection", "format")
    max_steps: int = 20
    train_samples: int = 256
    eval_samples: int = 64
    num_generations: int = 8
    prompts_per_step: int = 2
    learning_rate: float = 1e-5
    temperature: float = 1.0
    beta: float = 0.0
    loss_type: str = "dapo"
    max_completion_length: int = 96
    eval_every: int = 5
    min_pixels: int = 784
    max_pixels: int = 112 * 112
    top_k: int = 0
    scale_rewards: str = "group"
    train_seed: int = 0
    eval_seed: int = 10_000


DEFAULT_SETTING = DemoSetting()
"""The setting for a random tiny model (used when no learned checkpoint is available)."""

LEARNED_SETTING = DemoSetting(
    task="grounding",
    # The data the bundled checkpoint was SFT-trained on: one shape per 112x112 image and the prompt "Find the
    # {colour} {shape}." with no output-format instruction (`box_format=None`); here with the exact boxes.
    data_kwargs={
        "box_format": None,
        "image_size": 112,
        "min_objects": 1,
        "max_objects": 1,
        "template": "Find the {question}.",
    },
    rewards=("iou",),
    max_steps=60,
    train_samples=4000,
    eval_samples=200,
    num_generations=8,
    prompts_per_step=8,
    learning_rate=3e-5,
    temperature=0.7,
    max_completion_length=30,
    eval_every=10,
    min_pixels=3136,
    max_pixels=112 * 112,
    train_seed=1000,
    eval_seed=1_000_003,
)
"""The setting that continues the bundled checkpoint: the GRPO stage (exact IoU reward) of the tiny experiment's
`imperfect_supervision` setting (`recipes/demo/tiny_experiment.py`; README, "A tiny model that learns"), with its
training and held-out seeds. GRPO removes the label bias SFT learned there."""


def bundled_checkpoint() -> str | None:
    """Path of the small learned checkpoint (the demo's SFT start), or `None` when it is absent.

    It ships inside the package, in `trl_perception/assets/tiny_checkpoint` (with the command that made it in
    its README).
    """
    path = Path(__file__).resolve().parent / "assets" / "tiny_checkpoint"
    return str(path) if (path / "config.json").exists() else None


def _reward_records(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    return {
        "completions": [[{"role": "assistant", "content": r.get("text", "")}] for r in records],
        "solution": [r.get("solution") for r in records],
        "task": [r.get("task") for r in records],
        "box_format": [r.get("box_format") for r in records],
        "image_size": [r.get("image_size") for r in records],
        "input_size": [r.get("input_size") for r in records],
    }


def reward_mean(records: Sequence[Mapping[str, Any]], reward_funcs: Sequence[Callable[..., list]]) -> float | None:
    """Mean total reward (sum over `reward_funcs`, `None` counted as 0, as TRL sums) of evaluation records.

    Records are `trl_perception.evaluation` predictions (`text`, `solution`, `task`, frame fields), so the
    reward is scored on greedy answers to held-out images in the frame the model saw.

    Example:
    ```python
    >>> from trl_perception.rewards import ocr_reward
    >>> reward_mean([{"text": "hello", "solution": "hello", "task": "ocr"}], [ocr_reward])
    1.0

    ```
    """
    if not records:
        return None
    kwargs = _reward_records(records)
    totals = [0.0] * len(records)
    for func in reward_funcs:
        values = func(**kwargs)
        totals = [t + (float(v) if v is not None else 0.0) for t, v in zip(totals, values)]
    return sum(totals) / len(totals)


def _summarize(result: Any, reward_funcs: Sequence[Callable[..., list]], task: str) -> dict[str, Any]:
    metrics = dict(result.metrics.get(task, {}))
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["reward_mean"] = reward_mean(result.predictions, reward_funcs)
    return metrics


def _cell(key: str, value: Any) -> str:
    """A report cell: counts whole, rates to 4 decimals, COCO's -1 (no objects of that size) as n/a."""
    if value is None or (key.startswith(("AP", "AR")) and value == -1):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _write_report(out: Path, setting: DemoSetting, summary: dict[str, Any]) -> None:
    before, after = summary["before"], summary["after"]
    keys = [k for k in before if k in after]
    lines = [
        "# trl-perception demo",
        "",
        f"GRPO on synthetic **{setting.task}** scenes with a tiny `{setting.box_format}` model "
        f"({summary['model']}), {summary['steps']} step{'' if summary['steps'] == 1 else 's'}, "
        f"rewards: {', '.join(setting.rewards)}. "
        f"Held-out evaluation on {summary['eval_samples']} images with greedy decoding, before and after.",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    for key in keys:
        lines.append(f"| {key} | {_cell(key, before[key])} | {_cell(key, after[key])} |")
    lines += [
        "",
        f"Wall time: {summary['wall_time_s']:.1f} s (training {summary['train_time_s']:.1f} s).",
        "",
        "## Reward and held-out metrics over the steps",
        "",
        "![reward curve](reward_curve.png)",
        "",
        "## Samples (red: prediction, green: ground truth)",
        "",
        "Before training:",
        "",
        "![before](samples_before.png)",
        "",
        "After training:",
        "",
        "![after](samples_after.png)",
        "",
        "Files: `metrics.json` (before/after and the per-step history), `eval_before/`, `eval_after/` "
        "(predictions.jsonl, metrics.json, report.md).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_demo(
    output_dir: str | os.PathLike = "demo-output",
    *,
    max_steps: int | None = None,
    eval_samples: int | None = None,
    train_samples: int | None = None,
    max_completion_length: int | None = None,
    checkpoint: str | None = None,
    seed: int = 0,
    progress: bool = True,
    setting: DemoSetting | None = None,
) -> dict[str, Any]:
    """Train a tiny VLM with `PerceptionGRPOTrainer` on synthetic data and evaluate it before and after.

    The model is `checkpoint`, else the learned checkpoint bundled with the package (then the setting is
    `LEARNED_SETTING`: the GRPO stage of the tiny imperfect-supervision experiment), else a tiny random model
    built offline (with `DEFAULT_SETTING`). Writes to `output_dir`: `report.md`, `metrics.json` (`before`, `after` — held-out
    metrics and `reward_mean` — and the per-step `history`), `samples_before.png`, `samples_after.png`,
    `reward_curve.png`, and the evaluation folders.

    `max_steps`, `eval_samples`, `train_samples` and `max_completion_length` override the fields of
    `setting` of the same names; small values make a quick smoke run.

    Returns:
        `dict`: the contents of `metrics.json`.
    """
    import torch

    from .callbacks import PerceptionEvalCallback
    from .data.synthetic import make_synthetic
    from .evaluation import evaluate
    from .rewards import get_reward
    from .testing import tiny_vlm
    from .trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer
    from .viz import save_plot

    start = time.perf_counter()
    model_path = checkpoint or bundled_checkpoint()
    if setting is None:
        setting = LEARNED_SETTING if model_path is not None and checkpoint is None else DEFAULT_SETTING
    overrides = {
        "max_steps": max_steps,
        "eval_samples": eval_samples,
        "train_samples": train_samples,
        "max_completion_length": max_completion_length,
    }
    for name, value in overrides.items():
        if value is not None:
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            setting = DemoSetting(**{**asdict(setting), name: int(value)})
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    model_desc = "learned checkpoint" if model_path else "random initialisation"
    if model_path is None:
        model_path = tiny_vlm(setting.box_format, seed=seed)
    data_options = {
        "box_format": setting.box_format,
        "min_pixels": setting.min_pixels,
        "max_pixels": setting.max_pixels,
        **setting.data_kwargs,
    }
    train_seed = setting.train_seed + seed
    train = make_synthetic(setting.task, setting.train_samples, seed=train_seed, **data_options)
    held_out = make_synthetic(setting.task, setting.eval_samples, seed=setting.eval_seed, **data_options)
    reward_funcs = [get_reward(name) for name in setting.rewards]
    eval_options = dict(
        box_format=setting.box_format,
        min_pixels=setting.min_pixels,
        max_pixels=setting.max_pixels,
        max_new_tokens=setting.max_completion_length,
        batch_size=16,
        num_visual=8,
        progress=progress,
    )

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_path)
    before = evaluate(model, held_out, processor=processor, output_dir=out / "eval_before", **eval_options)
    summary_before = _summarize(before, reward_funcs, setting.task)

    batch = setting.num_generations * setting.prompts_per_step
    args = PerceptionGRPOConfig(
        output_dir=str(out / "trainer"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=setting.max_steps,
        per_device_train_batch_size=batch,
        num_generations=setting.num_generations,
        learning_rate=setting.learning_rate,
        temperature=setting.temperature,
        top_k=setting.top_k,
        scale_rewards=setting.scale_rewards,
        beta=setting.beta,
        loss_type=setting.loss_type,
        max_completion_length=setting.max_completion_length,
        logging_steps=1,
        save_strategy="no",
        seed=seed,
        box_format=setting.box_format,
        min_pixels=setting.min_pixels,
        max_pixels=setting.max_pixels,
        disable_tqdm=not progress,
    )
    callback = PerceptionEvalCallback(  # the same held-out images as before/after, so the curve starts at `before`
        held_out,
        eval_steps=max(1, setting.eval_every),
        seed=seed,
        **{k: v for k, v in eval_options.items() if k != "progress"},
    )
    trainer = PerceptionGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train,
        processing_class=processor,
        callbacks=[callback],
    )
    callback.trainer = trainer
    train_start = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - train_start

    after = evaluate(trainer.model, held_out, processor=processor, output_dir=out / "eval_after", **eval_options)
    summary_after = _summarize(after, reward_funcs, setting.task)

    history = [
        {k: v for k, v in entry.items() if isinstance(v, (int, float))}
        for entry in trainer.state.log_history
        if "reward" in entry or any(k.startswith("eval_perception") for k in entry)
    ]
    steps = [0] + sorted({e["step"] for e in history if "step" in e})
    series: dict[str, list[float | None]] = {}
    plotted = ("/f1", "/AP", "/mean_iou", "/accuracy", "/acc@0.75", "/edit_distance")
    for key in ["reward"] + sorted({k for e in history for k in e if k.startswith("eval_perception")}):
        if key != "reward" and not key.endswith(plotted):
            continue
        by_step = {e["step"]: e[key] for e in history if key in e and "step" in e}
        if key != "reward":  # step 0 is the before-training evaluation of the same images
            by_step[0] = summary_before.get(key.rsplit("/", 1)[1])
        name = "train reward" if key == "reward" else f"held-out {key.split('/', 1)[1]}"
        series[name] = [by_step.get(step) for step in steps]
    if steps:
        save_plot(
            steps,
            series,
            out / "reward_curve.png",
            title=f"GRPO on synthetic {setting.task}",
            xlabel="step",
            ylabel="value",
        )
    for name, result in (("before", before), ("after", after)):
        image = result.files.get("report_image")
        if image and os.path.exists(image):
            Path(out / f"samples_{name}.png").write_bytes(Path(image).read_bytes())

    summary = {
        "setting": asdict(setting),
        "model": model_desc,
        "model_path": str(model_path),
        "steps": int(trainer.state.global_step),
        "eval_samples": len(held_out),
        "before": summary_before,
        "after": summary_after,
        "history": history,
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - start,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    _write_report(out, setting, summary)
    return summary
