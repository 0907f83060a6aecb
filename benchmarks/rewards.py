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

    python benchmarks/rewards.py [--repeat 3] [--ocr-baseline-pages 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from trl_perception.data.prompts import COCO_CATEGORIES  # noqa: E402
from trl_perception.frames import model_input_size  # noqa: E402
from trl_perception.rewards import count_reward, detection_reward, iou_reward, ocr_reward  # noqa: E402

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


def _naive_box(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = box[0] * SX, box[1] * SY, box[2] * SX, box[3] * SY
    return [
        min(max(x1, 0), IMAGE[0]),
        min(max(y1, 0), IMAGE[1]),
        min(max(x2, 0), IMAGE[0]),
        min(max(y2, 0), IMAGE[1]),
    ]


def naive_detection(completions: list[str], solutions: list[list[dict]]) -> list[float]:
    rewards = []
    for text, gt in zip(completions, solutions):
        kept, rejected, valid = _naive_parse(text)
        if not kept:
            rewards.append(0.0)
            continue
        fmt = len(kept) / (len(kept) + rejected) if valid else 0.0
        boxes = [_naive_box(p["bbox_2d"]) for p in kept]
        labels = [" ".join(p["label"].split()).lower() for p in kept]
        gt_labels = [g["label"] for g in gt]
        iou = [[_naive_iou(b, g["bbox_2d"]) for g in gt] for b in boxes]
        cost = [
            [-(iou[i][j] if labels[i] == gt_labels[j] else 0.0) for j in range(len(gt))]
            for i in range(len(boxes))
        ]
        rows, cols = linear_sum_assignment(cost)
        matched = [-cost[i][j] for i, j in zip(rows, cols) if -cost[i][j] >= 0.5]
        tp = len(matched)
        f1 = 2 * tp / (len(boxes) + len(gt))
        loc = sum(matched) / tp if tp else 0.0
        localized = correct = 0
        for i in range(len(boxes)):
            hits = [j for j in range(len(gt)) if iou[i][j] >= 0.5]
            if hits:
                localized += 1
                correct += any(labels[i] == gt_labels[j] for j in hits)
        cls = correct / localized if localized else 0.0
        pen = 0.5 * ((len(boxes) - tp) / len(boxes) + (len(gt) - tp) / len(gt))
        rewards.append(min(max((0.25 * fmt + 0.75 * f1 + loc + cls - 0.5 * pen) / 3.0, 0.0), 1.0))
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
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()

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
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
