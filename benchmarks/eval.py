"""Wall time of `trl_perception.metrics.coco_metrics` on the COCO fixture scaled up, vs faster-coco-eval.

The 100-image val2014 fixture and its 734 fake detections are replicated `--scale` times under new image and
annotation ids (default 20: 2,000 images, 16,780 annotations, 14,680 detections). When `faster_coco_eval` is
importable it is timed on the same data and reported only if its 12 stats equal pycocotools' exactly.

    python benchmarks/eval.py [--scale 20] [--repeat 1] [--fixtures ../shared/fixtures/coco]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trl_perception.metrics import COCO_STAT_NAMES, coco_metrics  # noqa: E402

DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "coco"


def scale_up(gt: dict, results: list[dict], scale: int) -> tuple[dict, list[dict]]:
    """`scale` copies of every image, annotation and detection, copy k shifted by k * id_offset."""
    id_offset = 10 ** len(str(max(img["id"] for img in gt["images"])))
    ann_offset = 10 ** len(str(max(ann["id"] for ann in gt["annotations"])))
    images, annotations, detections = [], [], []
    for k in range(scale):
        for img in gt["images"]:
            images.append({**img, "id": img["id"] + k * id_offset})
        for ann in gt["annotations"]:
            annotations.append(
                {**ann, "id": ann["id"] + k * ann_offset, "image_id": ann["image_id"] + k * id_offset}
            )
        for det in results:
            detections.append({**det, "image_id": det["image_id"] + k * id_offset})
    scaled = {**gt, "images": images, "annotations": annotations}
    return scaled, detections


def faster_coco_eval_stats(gt: dict, results: list[dict]) -> list[float]:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def timed(fn, *args, repeat: int = 1):
    """The result of `fn(*args)` and its best wall time over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=20, help="copies of the 100-image fixture (default 20)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend; the best time is shown")
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="folder of the COCO fixtures")
    args = parser.parse_args()

    gt_path = args.fixtures / "instances_val2014_100.json"
    dt_path = args.fixtures / "instances_val2014_fakebbox100_results.json"
    if not gt_path.exists():
        sys.exit(f"COCO fixtures not found in {args.fixtures} (pass --fixtures)")
    gt = json.loads(gt_path.read_text())
    results = json.loads(dt_path.read_text())
    gt, results = scale_up(gt, results, args.scale)
    print(
        f"data: {len(gt['images'])} images, {len(gt['annotations'])} annotations, "
        f"{len(results)} detections (fixture x{args.scale})"
    )

    ours, t_ours = timed(coco_metrics, gt, results, repeat=args.repeat)
    ours_stats = [ours[name] for name in COCO_STAT_NAMES]
    print(f"coco_metrics (pycocotools): {t_ours:.2f} s  AP={ours['AP']:.4f}")

    try:
        import faster_coco_eval
    except ImportError:
        print("faster-coco-eval: not installed (pip install faster-coco-eval to compare)")
        return
    fast_stats, t_fast = timed(faster_coco_eval_stats, gt, results, repeat=args.repeat)
    max_diff = max(abs(a - b) for a, b in zip(ours_stats, fast_stats))
    identical = fast_stats == ours_stats
    print(
        f"faster-coco-eval {faster_coco_eval.__version__} stats identical to pycocotools: {identical} "
        f"(max abs diff {max_diff:.3g})"
    )
    if identical:
        print(
            f"faster-coco-eval: {t_fast:.2f} s  speed-up x{t_ours / t_fast:.1f} vs coco_metrics (pycocotools)"
        )
    else:
        print("faster-coco-eval: timing not reported because its stats differ from pycocotools'")


if __name__ == "__main__":
    main()
