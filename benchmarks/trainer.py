"""Step time of `PerceptionGRPOTrainer` next to a stock `trl.GRPOTrainer` on the same tiny model, data, rewards
and seed: the cost of the perception adapter (lazy one-time resize, frame columns, answer parsing for the
metrics, per-task reward means, the decoding hook).

Both trainers train a tiny offline VLM (`trl_perception.testing.tiny_vlm`) on the same synthetic grounding
rows (images 150x97, off the patch grid, so the perception trainer resizes each one on read) with the same
rewards (`iou_reward` and a length reward). The pixel limits are the processor's own for both, so both feed
the model the same number of visual tokens.

The two trainers run in lock-step, one optimizer step each in turn (A B A B ..., A first in even rounds and
B first in odd ones), handing a baton over at every `on_step_end`, so that load from other processes hits
both alike. A step is timed from the moment its trainer gets the baton to its next `on_step_end`: batch fetch
(where the resize happens), generation, rewards, loss, backward, optimizer and logging. The first
`--warmup` steps of every run are dropped. The ratio is perception / stock.

    python benchmarks/trainer.py [--rounds 4] [--steps 25] [--warmup 2] [--threads 1] [--family qwen2_5_vl]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

KINDS = ("stock", "perception")


def length_reward(completions, **kwargs):
    return [float(len(c[0]["content"])) for c in completions]


class Baton:
    """Lets exactly one of several trainers (each in its own thread) run at a time, in turn."""

    def __init__(self, order: list[str]):
        self.order = list(order)
        self.turn = self.order[0]
        self.finished: set[str] = set()
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.finished.add(name)
            i = self.order.index(name)
            for k in range(1, len(self.order) + 1):
                candidate = self.order[(i + k) % len(self.order)]
                if candidate not in self.finished:
                    self.turn = candidate
                    break
            self.cond.notify_all()


def lockstep_callback(name: str, baton: Baton, times: list[float]):
    from transformers import TrainerCallback

    class LockStep(TrainerCallback):
        start = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            baton.wait(name)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)
            baton.pass_on(name)
            baton.wait(name)
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            baton.pass_on(name, finished=True)

    return LockStep()


def build(kind: str, model: str, dataset, steps: int, seed: int):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_perception.rewards import iou_reward
    from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{kind}-"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=steps,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=16,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-4,
        seed=seed,
        disable_tqdm=True,
    )
    rewards = [iou_reward, length_reward]
    if kind == "perception":
        trainer = PerceptionGRPOTrainer(model, rewards, PerceptionGRPOConfig(**common), train_dataset=dataset)
    else:
        trainer = GRPOTrainer(model, rewards, GRPOConfig(**common), train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)  # printing every log line to a terminal only adds noise
    trainer.remove_callback(ProgressCallback)
    return trainer


def run_round(order: tuple[str, str], model: str, dataset, steps: int, seed: int) -> dict[str, list[float]]:
    baton = Baton(list(order))
    times: dict[str, list[float]] = {kind: [] for kind in order}
    trainers = {kind: build(kind, model, dataset, steps, seed) for kind in order}
    for kind, trainer in trainers.items():
        trainer.add_callback(lockstep_callback(kind, baton, times[kind]))
    errors: list[BaseException] = []

    def train(kind: str) -> None:
        try:
            trainers[kind].train()
        except BaseException as err:  # surface failures from the worker threads
            errors.append(err)
            baton.pass_on(kind, finished=True)

    threads = [threading.Thread(target=train, args=(kind,)) for kind in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each with a fresh pair of trainers")
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per trainer and round")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--rows", type=int, default=256, help="synthetic grounding rows")
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()

    import logging

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("trl_perception").setLevel(logging.ERROR)
    torch.set_num_threads(cli.threads)

    import trl

    from trl_perception.data.synthetic import make_synthetic
    from trl_perception.testing import tiny_vlm

    model = tiny_vlm(cli.family)
    dataset = make_synthetic("grounding", cli.rows, seed=cli.seed, image_size=(150, 97))

    all_times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    pair_ratios: list[float] = []
    for r in range(cli.rounds):
        order = KINDS if r % 2 == 0 else KINDS[::-1]
        times = run_round(order, model, dataset, cli.steps, cli.seed)
        kept = {kind: times[kind][cli.warmup :] for kind in KINDS}
        for kind in KINDS:
            all_times[kind] += kept[kind]
        pair_ratios += [p / s for s, p in zip(kept["stock"], kept["perception"])]
        print(
            f"round {r + 1}/{cli.rounds} ({order[0]} first): stock {statistics.median(kept['stock']) * 1e3:.1f} "
            f"ms/step, perception {statistics.median(kept['perception']) * 1e3:.1f} ms/step (medians)",
            flush=True,
        )

    med = {k: statistics.median(v) for k, v in all_times.items()}
    mean = {k: statistics.fmean(v) for k, v in all_times.items()}
    print()
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {trl.__version__}, {torch.get_num_threads()} torch thread(s), family {cli.family}")  # fmt: skip
    print(f"{'':12}{'steps':>7}{'median ms':>12}{'mean ms':>10}")
    for kind in KINDS:
        print(f"{kind:12}{len(all_times[kind]):>7}{med[kind] * 1e3:>12.1f}{mean[kind] * 1e3:>10.1f}")
    print(f"ratio perception/stock: median step {med['perception'] / med['stock']:.3f}, "
          f"mean step {mean['perception'] / mean['stock']:.3f}, "
          f"median of step-pair ratios {statistics.median(pair_ratios):.3f}  (goal <= 1.05)")  # fmt: skip


if __name__ == "__main__":
    main()
