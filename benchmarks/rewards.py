"""Throughput of the rewards in `trl_perception.rewards` on realistic GRPO batches, next to a straightforward
per-pair pure-Python implementation of the same formulas (the way reward code is usually first written).

Batches (seeded, synthetic, Qwen2.5-VL JSON answers scored with `box_format` / `image_size` columns; as in
GRPO, every 8 consecutive completions are rollouts of one prompt and share its ground truth):
detection 512 completions with 10-50 boxes against 5-30 ground-truth boxes; OCR 256 pages of ~2,000
characters with ~3% character noise; counting 512 completions with 5-40 points; grounding 4,096 one-box
completions. The naive baselines parse with `json.loads`, compute IoU / distances pair by pair in Python
loops, match with one `scipy.optimize.linear_sum_assignment` per completion and, for OCR, run the textbook
O(n·m) Levenshtein dynamic programme; the OCR baseline is timed on a few pages only (it needs seconds per
page) and its rate extrapolated. Both sides score the same batch; the table shows that they agree.

A second table puts `detection_reward` next to Perception-R1's own released `pr1_detection_reward`, run from
its repository at a pinned commit (`PR1_COMMIT`), with torch pinned to one thread, on 256 COCO-like
completions (5-30 ground-truth boxes, ~80% of them found, 0-15 false positives, the 80 COCO classes). The
benchmark reads PR1's two source files with `git show` from a local clone or mirror given by `--pr1-repo` (or
the `PR1_REPO` environment variable) into a temporary package and imports it; nothing of PR1 is stored in
this repository. PR1's `log()` (a file write per call, or an exception when `LOG_DIR` is unset) is replaced by
a no-op, which only makes PR1 faster. The naive per-pair baseline of the first table runs on the same batch
(coordinates as written, as no frame columns are passed), so the table shows each reward against both PR1 and
the naive baseline. Times are CPU seconds of this process, best of `--repeat` interleaved runs, so other
processes on a shared machine do not skew the ratio much (PR1's torch code suffers more from a loaded machine
than ours: quote the load with the ratio). Without a PR1 clone the PR1 row is skipped.

    python benchmarks/rewards.py [--repeat 3] [--ocr-baseline-pages 3] [--seed 0] [--pr1-repo PATH] [--pr1-only]

e.g. `git clone https://github.com/philipmit/PR1` (a fork that has the detection reward; upstream
`linkangheng/PR1` merged it as `accb7cb`), then `--pr1-repo PR1`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from trl_perception.data.prompts import COCO_CATEGORIES  # noqa: E402
from trl_perception.frames import model_input_size  # noqa: E402
from trl_perception.rewards import (  # noqa: E402
    count_reward,
    detection_reward,
    iou_reward,
    make_detection_reward,
    ocr_reward,
)

FAMILY = "qwen2_5_vl"
IMAGE = (640, 480)
INPUT = model_input_size(IMAGE, FAMILY)  # (644, 476): predictions are in this frame
SX, SY = IMAGE[0] / INPUT[0], IMAGE[1] / INPUT[1]
GROUP = 8  # GRPO: each prompt (image, ground truth) is rolled out 8 times, consecutive in the batch
WORDS = "the of and to in is was for on that with as by at from this be are or an it which not have".split()


# ------------------------------------------------------------------------------------------------- data


def _random_box(rng: random.Random) -> list[float]:
    w, h = rng.uniform(10, 300), rng.uniform(10, 250)
    x, y = rng.uniform(0, IMAGE[0] - w), rng.uniform(0, IMAGE[1] - h)
    return [round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)]


def _to_input(box: list[float]) -> list[int]:
    return [round(box[0] / SX), round(box[1] / SY), round(box[2] / SX), round(box[3] / SY)]


def _jitter(box: list[float], rng: random.Random, scale: float) -> list[float]:
    w, h = box[2] - box[0], box[3] - box[1]
    return [box[0] + rng.gauss(0, scale * w), box[1] + rng.gauss(0, scale * h),
            box[2] + rng.gauss(0, scale * w), box[3] + rng.gauss(0, scale * h)]  # fmt: skip


def detection_batch(
    n: int, rng: random.Random, gt_range: tuple[int, int] = (5, 30), pred_range: tuple[int, int] = (10, 50)
) -> tuple[list[str], list[list[dict]]]:
    completions, solutions = [], []
    for k in range(n):
        if k % GROUP == 0:
            gt = [
                {"bbox_2d": _random_box(rng), "label": rng.choice(COCO_CATEGORIES[:20])}
                for _ in range(rng.randint(*gt_range))
            ]
        n_pred = rng.randint(*pred_range)
        preds = []
        for k in range(n_pred):
            if k < len(gt) and rng.random() < 0.8:  # a jittered true object, sometimes mislabelled
                label = gt[k]["label"] if rng.random() < 0.85 else rng.choice(COCO_CATEGORIES)
                preds.append({"bbox_2d": _to_input(_jitter(gt[k]["bbox_2d"], rng, 0.08)), "label": label})
            else:  # a hallucination or a duplicate
                source = rng.choice(gt)["bbox_2d"] if rng.random() < 0.5 else _random_box(rng)
                preds.append(
                    {"bbox_2d": _to_input(_jitter(source, rng, 0.05)), "label": rng.choice(COCO_CATEGORIES)}
                )
        completions.append("```json\n" + json.dumps(preds) + "\n```")
        solutions.append(copy.deepcopy(gt))
    return completions, solutions


def counting_batch(
    n: int, rng: random.Random, count_range: tuple[int, int] = (5, 40)
) -> tuple[list[str], list[dict]]:
    completions, solutions = [], []
    for k in range(n):
        if k % GROUP == 0:
            gt = [
                [rng.uniform(0, IMAGE[0]), rng.uniform(0, IMAGE[1])] for _ in range(rng.randint(*count_range))
            ]
        preds = [[p[0] + rng.gauss(0, 8), p[1] + rng.gauss(0, 8)] for p in gt if rng.random() < 0.85]
        preds += [[rng.uniform(0, IMAGE[0]), rng.uniform(0, IMAGE[1])] for _ in range(rng.randint(0, 5))]
        preds = preds[: count_range[1]] or [[0.0, 0.0]] * count_range[0]
        items = [{"point_2d": [round(x / SX), round(y / SY)], "label": "bird"} for x, y in preds]
        completions.append(json.dumps(items))
        solutions.append({"count": len(gt), "points": copy.deepcopy(gt)})
    return completions, solutions


def grounding_batch(n: int, rng: random.Random) -> tuple[list[str], list[list[float]]]:
    completions, solutions = [], []
    for k in range(n):
        if k % GROUP == 0:
            gt = _random_box(rng)
        pred = _to_input(_jitter(gt, rng, 0.1))
        completions.append(json.dumps([{"bbox_2d": pred, "label": "the man in red"}]))
        solutions.append(list(gt))
    return completions, solutions


def ocr_batch(n: int, rng: random.Random, chars: int = 2000) -> tuple[list[str], list[str]]:
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    completions, solutions = [], []
    for k in range(n):
        if k % GROUP == 0:
            words, length = [], 0
            while length < chars:
                word = (
                    rng.choice(WORDS)
                    if rng.random() < 0.6
                    else "".join(rng.choices(alphabet, k=rng.randint(3, 10)))
                )
                words.append(word)
                length += len(word) + 1
            page = " ".join(words)[:chars]
        noisy = []
        for ch in page:
            r = rng.random()
            if r < 0.01:
                continue  # deletion
            noisy.append(rng.choice(alphabet) if r < 0.02 else ch)  # substitution
            if r > 0.99:
                noisy.append(rng.choice(alphabet))  # insertion
        completions.append("".join(noisy))
        solutions.append(page)
    return completions, solutions


# ------------------------------------------------------------------------------------- naive baselines


def _naive_parse(text: str) -> tuple[list, int, bool]:
    text = text.replace("```json", "").replace("```", "").strip()
    try:
        items = json.loads(text)
    except ValueError:
        return [], 0, False
    if not isinstance(items, list):
        return [], 0, False
    kept, rejected = [], 0
    for item in items:
        if (
            isinstance(item, dict)
            and isinstance(item.get("label"), str)
            and isinstance(item.get("bbox_2d"), list)
            and len(item["bbox_2d"]) == 4
        ):
            kept.append(item)
        else:
            rejected += 1
    return kept, rejected, True


def _naive_iou(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
    return inter / union if union > 0 else 0.0


def _naive_box(box: list[float], frame: bool = True) -> list[float]:
    if not frame:  # no frame columns: coordinates are compared as written
        return list(box)
    x1, y1, x2, y2 = box[0] * SX, box[1] * SY, box[2] * SX, box[3] * SY
    return [
        min(max(x1, 0), IMAGE[0]),
        min(max(y1, 0), IMAGE[1]),
        min(max(x2, 0), IMAGE[0]),
        min(max(y2, 0), IMAGE[1]),
    ]


def naive_detection(completions: list, solutions: list[list[dict]], frame: bool = True) -> list[float]:
    rewards = []
    for text, gt in zip(completions, solutions):
        if not isinstance(text, str):  # conversational
            text = text[0]["content"]
        kept, rejected, valid = _naive_parse(text)
        if not kept:
            rewards.append(0.0)
            continue
        fmt = len(kept) / (len(kept) + rejected) if valid else 0.0
        boxes = [_naive_box(p["bbox_2d"], frame) for p in kept]
        labels = [" ".join(p["label"].split()).lower() for p in kept]
        gt_labels = [g["label"] for g in gt]
        n_p, n_g = len(boxes), len(gt)
        iou = [[_naive_iou(b, g["bbox_2d"]) for g in gt] for b in boxes]
        # Same-label overlapping pairs; the assignment first maximises the pairs at IoU >= 0.5, then the IoU.
        bonus = min(n_p, n_g) + 1
        weight = [
            [(iou[i][j] + (bonus if iou[i][j] >= 0.5 else 0)) if labels[i] == gt_labels[j] and iou[i][j] > 0 else 0.0
             for j in range(n_g)] for i in range(n_p)
        ]  # fmt: skip
        rows, cols = linear_sum_assignment(weight, maximize=True)
        pairs = [(i, j) for i, j in zip(rows, cols) if weight[i][j] > 0]
        tp = sum(iou[i][j] >= 0.5 for i, j in pairs)
        correct = sum(
            any(iou[i][j] >= 0.5 and labels[i] == gt_labels[j] for j in range(n_g)) for i in range(n_p)
        )
        f1 = 2 * tp / (n_p + n_g)
        loc = 2 * sum(iou[i][j] for i, j in pairs) / (n_p + n_g)
        cls = correct / max(n_p, n_g)
        rewards.append(min(max((0.25 * fmt * min(1, n_g / n_p) + 0.75 * f1 + loc + cls) / 3.0, 0.0), 1.0))
    return rewards


def naive_counting(completions: list[str], solutions: list[dict]) -> list[float]:
    diagonal = 1000 * math.sqrt(2)
    rewards = []
    for text, gt in zip(completions, solutions):
        items = json.loads(text)
        pred = [(min(max(i["point_2d"][0] * SX, 0), IMAGE[0]) * 1000 / IMAGE[0],
                 min(max(i["point_2d"][1] * SY, 0), IMAGE[1]) * 1000 / IMAGE[1]) for i in items]  # fmt: skip
        points = [(x * 1000 / IMAGE[0], y * 1000 / IMAGE[1]) for x, y in gt["points"]]
        dist = [[math.hypot(p[0] - g[0], p[1] - g[1]) for g in points] for p in pred]
        rows, cols = linear_sum_assignment(dist)
        mean = sum(min(dist[i][j], diagonal) for i, j in zip(rows, cols)) / len(rows)
        ratio = min(len(pred), len(points)) / max(len(pred), len(points))
        rewards.append(min(max(ratio * (1 - mean / diagonal), 0.0), 1.0))
    return rewards


_QUAD = re.compile(r"\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")


def naive_grounding(completions: list[str], solutions: list[list[float]]) -> list[float]:
    rewards = []
    for text, gt in zip(completions, solutions):
        match = _QUAD.search(text)
        rewards.append(_naive_iou(_naive_box([float(v) for v in match.groups()]), gt) if match else 0.0)
    return rewards


def _levenshtein_dp(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def naive_ocr(completions: list[str], solutions: list[str]) -> list[float]:
    rewards = []
    for pred, gt in zip(completions, solutions):
        a, b = " ".join(pred.split()), " ".join(gt.split())
        longest = max(len(a), len(b))
        rewards.append(1.0 if longest == 0 else 1 - _levenshtein_dp(a, b) / longest)
    return rewards


# ------------------------------------------------------------------------------ Perception-R1's own code

PR1_COMMIT = "accb7cb952f88419c0f66be43b067490036a80a5"  # "Merge pull request #12 ... detection_update"
PR1_FILES = ("src/open_r1/utils.py", "src/open_r1/rewards.py")


def load_pr1_rewards(repo: str | None):
    """Perception-R1's `open_r1.rewards` module at `PR1_COMMIT`, read from a local clone or mirror, or the
    reason it is unavailable."""
    if not repo:
        return None, "no PR1 clone given (--pr1-repo or PR1_REPO)"
    try:
        sources = {
            path: subprocess.run(
                ["git", "-C", repo, "show", f"{PR1_COMMIT}:{path}"], capture_output=True, text=True, check=True
            ).stdout
            for path in PR1_FILES
        }
    except (OSError, subprocess.CalledProcessError) as err:
        return None, f"cannot read PR1 at {PR1_COMMIT[:7]} from {repo}: {err}"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    torch.set_num_threads(1)
    package = Path(tempfile.mkdtemp(prefix="pr1-")) / "open_r1"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for path, text in sources.items():
        (package / Path(path).name).write_text(text)
    sys.path.insert(0, str(package.parent))
    try:
        module = importlib.import_module("open_r1.rewards")
    except Exception as err:  # noqa: BLE001 - e.g. a missing torchvision
        return None, f"cannot import PR1's rewards: {type(err).__name__}: {err}"
    finally:
        sys.path.remove(str(package.parent))
        shutil.rmtree(package.parent, ignore_errors=True)  # the code is loaded; the copy is not needed
    module.log = lambda *args, **kwargs: None  # a file write per call upstream; raises without LOG_DIR
    return module, ""


def coco_detection_batch(n: int, rng: random.Random) -> tuple[list[str], list[list[dict]]]:
    """The PR1 comparison's batch: 5-30 ground-truth boxes over the 80 COCO classes, ~80% found (jittered,
    90% with the right label), 0-15 false positives, in a shuffled order; boxes in the image's pixels."""
    completions, solutions = [], []
    for k in range(n):
        if k % GROUP == 0:
            gt = [
                {"bbox_2d": _random_box(rng), "label": rng.choice(COCO_CATEGORIES)}
                for _ in range(rng.randint(5, 30))
            ]
        preds = []
        for obj in gt:
            if rng.random() < 0.8:
                x1, y1, x2, y2 = _jitter(obj["bbox_2d"], rng, 0.05)
                box = [round(min(x1, x2), 1), round(min(y1, y2), 1), round(max(x1, x2), 1), round(max(y1, y2), 1)]
                label = obj["label"] if rng.random() < 0.9 else rng.choice(COCO_CATEGORIES)
                preds.append({"bbox_2d": box, "label": label})
        preds += [
            {"bbox_2d": _random_box(rng), "label": rng.choice(COCO_CATEGORIES)} for _ in range(rng.randint(0, 15))
        ]
        rng.shuffle(preds)
        completions.append("```json\n" + json.dumps(preds) + "\n```")
        solutions.append(copy.deepcopy(gt))
    return completions, solutions


def pr1_comparison(pr1, repeat: int, rng: random.Random) -> None:
    completions, solutions = coco_detection_batch(256, rng)
    conversational = [[{"role": "assistant", "content": text}] for text in completions]
    ids = pr1.get_cate_to_id() if pr1 is not None else {}
    pr1_solutions = [
        {"target_id": [ids.get(o["label"]) for o in gt], "target_box": [o["bbox_2d"] for o in gt]}
        for gt in solutions
    ]
    released = make_detection_reward(released_code=True, penalty_weight=1.0)
    ours = "detection_reward (default, precision-aware)"
    naive = "naive per-pair Python, default formula (json.loads, scipy per completion)"
    pr1_name = "Perception-R1 pr1_detection_reward (torch, 1 thread)"
    candidates = {
        ours: lambda: detection_reward(conversational, solutions),
        "detection_reward, released_code=True, penalty_weight=1.0": lambda: released(conversational, solutions),
        naive: lambda: naive_detection(conversational, solutions, frame=False),
    }
    if pr1 is not None:
        candidates[pr1_name] = lambda: pr1.pr1_detection_reward(conversational, pr1_solutions)
    best = {name: math.inf for name in candidates}
    results = {}
    for _ in range(repeat):  # interleaved: each candidate sees the same machine conditions
        for name, fn in candidates.items():
            start = time.process_time()
            results[name] = fn()
            best[name] = min(best[name], time.process_time() - start)
    reference = best.get(pr1_name)
    agree = max(abs(a - b) for a, b in zip(results[ours], results[naive]))
    print("\nDetection against Perception-R1's released code: 256 completions, 5-30 GT boxes, ~80% found, "
          f"0-15 false positives, 80 COCO classes; CPU time, best of {repeat} interleaved runs\n")  # fmt: skip
    print("| reward | CPU ms / 256 | completions/s | speed-up vs PR1 | speed-up vs naive | mean reward (range) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds in best.items():
        top = "[0, 3]" if ("released" in name or "Perception-R1" in name) else "[0, 1]"
        ratio = f"{reference / seconds:.1f}x" if reference else "n/a"
        print(
            f"| {name} | {seconds * 1e3:.1f} | {256 / seconds:,.0f} | {ratio} | {best[naive] / seconds:.1f}x "
            f"| {float(np.mean(results[name])):.3f} {top} |"
        )
    print(f"\ndetection_reward and the naive baseline agree to {agree:.0e} (max abs diff).")


# ---------------------------------------------------------------------------------------------- timing


def best_time(fn, *args, repeat: int, **kwargs) -> tuple[float, list]:
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; the best is kept")
    parser.add_argument(
        "--ocr-baseline-pages", type=int, default=3, help="pages the pure-Python DP is timed on"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pr1-repo",
        default=os.environ.get("PR1_REPO"),
        help=f"a local clone or mirror of Perception-R1 holding commit {PR1_COMMIT[:7]} (default: $PR1_REPO)",
    )
    parser.add_argument("--pr1-only", action="store_true", help="run only the comparison with Perception-R1")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    if args.pr1_only:
        pr1, reason = load_pr1_rewards(args.pr1_repo)
        if pr1 is None:
            print(f"Perception-R1 row skipped: {reason}")
        pr1_comparison(pr1, max(args.repeat, 5), rng)
        return

    # (reward, batch description, ours, naive, completions, solutions, naive timed on the first k only)
    cases = [
        ("detection", "512 completions, 10-50 boxes vs 5-30 GT", detection_reward, naive_detection,
         *detection_batch(512, rng), None),
        ("counting", "512 completions, 5-40 points", count_reward, naive_counting, *counting_batch(512, rng), None),
        ("grounding", "4,096 completions, 1 box", iou_reward, naive_grounding, *grounding_batch(4096, rng), None),
        ("ocr", "256 pages, ~2,000 chars", ocr_reward, naive_ocr, *ocr_batch(256, rng), args.ocr_baseline_pages),
        # Scaling: long answers, where per-pair Python work grows with boxes x ground truth.
        ("detection (long)", "64 completions, 200-300 boxes vs 50-100 GT", detection_reward, naive_detection,
         *detection_batch(64, rng, gt_range=(50, 100), pred_range=(200, 300)), None),
        ("counting (crowds)", "64 completions, 100-300 points", count_reward, naive_counting,
         *counting_batch(64, rng, count_range=(100, 300)), None),
    ]  # fmt: skip
    rows = []
    for task, shape, ours, naive, completions, solutions, subset in cases:
        n = len(completions)
        columns = {} if task == "ocr" else {"box_format": [FAMILY] * n, "image_size": [list(IMAGE)] * n}
        ours_s, ours_r = best_time(ours, completions, solutions, repeat=args.repeat, **columns)
        k = n if subset is None else min(subset, n)
        naive_s, naive_r = best_time(
            naive, completions[:k], solutions[:k], repeat=args.repeat if k == n else 1
        )
        agree = max(abs(a - b) for a, b in zip(ours_r[:k], naive_r))
        note = "" if k == n else f" (baseline timed on {k})"
        ours_rate, naive_rate = n / ours_s, k / naive_s
        rows.append(
            (task, shape + note, ours_rate, naive_rate, ours_rate / naive_rate, float(np.mean(ours_r)), agree)
        )

    def rate(value: float) -> str:
        return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"

    print(f"Python {platform.python_version()}, {platform.machine()}, best of {args.repeat} runs\n")
    print("| reward | batch | ours (completions/s) | naive per-pair Python (completions/s) | speed-up "
          "| mean reward | max abs diff |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for task, shape, ours_rate, naive_rate, ratio, mean, agree in rows:
        print(
            f"| {task} | {shape} | {rate(ours_rate)} | {rate(naive_rate)} | {ratio:,.1f}x | {mean:.3f} | {agree:.0e} |"
        )
    pr1, reason = load_pr1_rewards(args.pr1_repo)
    if pr1 is None:
        print(f"\nPerception-R1 row skipped: {reason}")
    pr1_comparison(pr1, max(args.repeat, 5), random.Random(args.seed))
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")



# ======================================================================================================
# OVD section (open-vocabulary detection rewards). Separate from the table above:
#     python benchmarks/rewards.py --ovd [--repeat 3] [--seed 0] [--completions 512]
# Per-sample COCO AP as `od_ap_reward` / `od_ap_vlm_r1` compute it, next to pycocotools called per
# completion (COCO + loadRes + COCOeval evaluate/accumulate/summarize, as VLM-R1's `calculate_map` does) on
# the same single-image problems; the values must agree to 1e-12.
# ======================================================================================================

OVD_PHRASES = ("red circle", "blue square", "green triangle", "yellow star", "white cross", "black ring")


def ovd_batch(n: int, rng: random.Random) -> tuple[list[str], list[list[dict]]]:
    """GRPO-like OVD batch: groups of 8 rollouts share a ground truth of 1-10 boxes of 1-3 phrases; answers
    hold 1-20 items: jittered true boxes (some duplicated), random boxes, and boxes of absent phrases."""
    completions, solutions = [], []
    for _ in range(n // GROUP):
        present = rng.sample(OVD_PHRASES, rng.randint(1, 3))
        gt = [{"bbox_2d": _random_box(rng), "label": rng.choice(present)} for _ in range(rng.randint(1, 10))]
        for _ in range(GROUP):
            items = []
            for _ in range(rng.randint(1, 20)):
                u = rng.random()
                if u < 0.6:
                    g = rng.choice(gt)
                    items.append({"bbox_2d": _jitter(g["bbox_2d"], rng, 0.1), "label": g["label"]})
                elif u < 0.85:
                    items.append({"bbox_2d": _random_box(rng), "label": rng.choice(present)})
                else:
                    items.append({"bbox_2d": _random_box(rng), "label": rng.choice(OVD_PHRASES)})
            completions.append("<answer>```json\n" + json.dumps(items) + "\n```</answer>")
            solutions.append(gt)
    return completions, solutions


def _pycocotools_ap(gt: list[dict], preds: list[dict], order: str) -> float:
    """One completion through pycocotools, as VLM-R1 does it (one 2048x2048 image, score 1.0 for all).

    `order="list"`: VLM-R1's problem (list order; labels outside the ground truth dropped). `order="iou"`:
    our problem (ranked by best same-label IoU then coordinates; other labels are categories with AP 0)."""
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_labels = list(dict.fromkeys(g["label"] for g in gt))
    labels = gt_labels + ([] if order == "list" else sorted({p["label"] for p in preds} - set(gt_labels)))
    ids = {label: k for k, label in enumerate(labels)}

    def xywh(b: list[float]) -> list[float]:
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    anns = [
        {"id": k + 1, "image_id": 0, "category_id": ids[g["label"]], "bbox": xywh(g["bbox_2d"]),
         "area": (g["bbox_2d"][2] - g["bbox_2d"][0]) * (g["bbox_2d"][3] - g["bbox_2d"][1]), "iscrowd": 0}
        for k, g in enumerate(gt)
    ]  # fmt: skip
    preds = [p for p in preds if p["label"] in ids]
    if order == "iou":
        boxes = [[b[0], b[1], max(b[2], b[0]), max(b[3], b[1])] for b in (p["bbox_2d"] for p in preds)]
        preds = [{"bbox_2d": b, "label": p["label"]} for b, p in zip(boxes, preds)]

        def key(p: dict) -> tuple:
            same = [xywh(g["bbox_2d"]) for g in gt if g["label"] == p["label"]]
            best = float(mask_utils.iou([xywh(p["bbox_2d"])], same, [0] * len(same)).max()) if same else 0.0
            return (-best, *xywh(p["bbox_2d"]))

        preds = sorted(preds, key=key)
    if not preds:
        return 0.0
    dts = [{"image_id": 0, "category_id": ids[p["label"]], "bbox": xywh(p["bbox_2d"]), "score": 1.0} for p in preds]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": 0, "width": 2048, "height": 2048, "file_name": "image_0.jpg"}],
                        "annotations": anns, "categories": [{"id": i, "name": c} for c, i in ids.items()]}  # fmt: skip
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dts), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if order == "list":
        return float(evaluator.stats[0])
    precision = evaluator.eval["precision"][:, :, :, 0, 2]
    for label, k in ids.items():
        if label not in gt_labels:
            precision[:, :, k] = 0.0
    return float(np.mean(precision[precision > -1]))


def pycocotools_per_completion(completions: list[str], solutions: list[list[dict]], order: str) -> list[float]:
    out = []
    for text, gt in zip(completions, solutions):
        match = re.findall(r"```json(.*?)```", text, re.DOTALL)
        try:
            preds = json.loads(match[-1].strip()) if match else []
        except ValueError:
            preds = []
        out.append(_pycocotools_ap(gt, preds, order) if preds else 0.0)
    return out


def ovd_main(argv: list[str] | None = None) -> None:
    from trl_perception.rewards import make_od_reward, od_ap_reward

    parser = argparse.ArgumentParser(description="OVD per-sample AP: ours vs pycocotools per completion")
    parser.add_argument("--ovd", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--completions", type=int, default=512)
    args = parser.parse_args(argv)
    completions, solutions = ovd_batch(args.completions, random.Random(args.seed))
    n = len(completions)
    cases = [
        ("od_ap_vlm_r1 (list order, VLM-R1's problem)", make_od_reward("ap", vlm_r1=True), "list"),
        ("od_ap (IoU-ranked ties, unknown labels AP 0)", od_ap_reward, "iou"),
    ]
    print(f"Python {platform.python_version()}, {platform.machine()}, {n} completions, best of {args.repeat} runs\n")
    print("| reward | ours (completions/s) | pycocotools per completion (completions/s) | speed-up | mean AP | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ours, order in cases:
        # Interleaved runs, best of each: a busy machine slows both sides alike.
        ours_s = coco_s = math.inf
        for _ in range(args.repeat):
            t, ours_r = best_time(ours, completions, solutions, repeat=1, task=["ovd"] * n)
            ours_s = min(ours_s, t)
            t, coco_r = best_time(pycocotools_per_completion, completions, solutions, order, repeat=1)
            coco_s = min(coco_s, t)
        diff = max(abs(a - b) for a, b in zip(ours_r, coco_r))
        print(
            f"| {name} | {n / ours_s:,.0f} | {n / coco_s:,.0f} | {coco_s / ours_s:,.1f}x "
            f"| {float(np.mean(ours_r)):.4f} | {diff:.0e} |"
        )


if __name__ == "__main__":
    if "--ovd" in sys.argv[1:]:
        ovd_main()
    else:
        main()
