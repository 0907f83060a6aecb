"""Wall time and peak memory of `build_coco_detection` on a COCO-train-scale annotation file.

Writes an `instances.json` shaped like COCO train2017 (118,287 images, 860,001 boxes, 80 categories with
COCO's ids, about 1.5 % crowd regions, and polygon segmentations so the file is realistically large)
plus a folder of empty stub images into a temporary directory, then builds the dataset in a fresh
process and reports its wall time and peak RSS (`resource.getrusage`). Goal: <= 60 s and <= 3 GB.

    python benchmarks/data.py [--images 118287] [--boxes 860001] [--no-segmentation] [--box-format qwen2_5_vl]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# COCO's 80 category ids (1..90 with gaps).
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def write_instances(path: Path, n_images: int, n_boxes: int, segmentation: bool, seed: int = 0) -> None:
    """Stream a synthetic COCO-train-scale `instances.json` to `path`."""
    from trl_perception.data.prompts import COCO_CATEGORIES

    rng = np.random.default_rng(seed)
    widths = rng.choice([640, 480, 427, 500, 612], n_images)
    heights = rng.choice([480, 640, 427, 375, 612], n_images)
    owner = np.sort(rng.integers(0, n_images, n_boxes))
    cats = rng.choice(COCO_IDS, n_boxes)
    crowd = rng.random(n_boxes) < 0.015
    x = rng.random(n_boxes) * widths[owner] * 0.8
    y = rng.random(n_boxes) * heights[owner] * 0.8
    w = 1 + rng.random(n_boxes) * (widths[owner] - x - 1)
    h = 1 + rng.random(n_boxes) * (heights[owner] - y - 1)
    n_points = rng.integers(4, 33, n_boxes) * 2
    with open(path, "w") as f:
        f.write(
            '{"info": {"description": "synthetic COCO-train-scale benchmark"}, "licenses": [], "images": ['
        )
        for i in range(n_images):
            f.write(
                ("," if i else "")
                + f'{{"license": 1, "file_name": "{i + 1:012d}.jpg", "coco_url": "http://images.cocodataset.org/train2017/{i + 1:012d}.jpg", '
                f'"height": {heights[i]}, "width": {widths[i]}, "date_captured": "2013-11-14 11:18:45", '
                f'"flickr_url": "http://farm1.staticflickr.com/1/{i + 1}.jpg", "id": {i + 1}}}'
            )
        f.write('], "annotations": [')
        for k in range(n_boxes):
            seg = ""
            if segmentation:
                poly = rng.random(n_points[k]) * 400
                seg = '"segmentation": [[' + ",".join(f"{v:.2f}" for v in poly) + "]], "
            f.write(
                ("," if k else "")
                + f'{{{seg}"area": {w[k] * h[k]:.4f}, "iscrowd": {int(crowd[k])}, "image_id": {owner[k] + 1}, '
                f'"bbox": [{x[k]:.2f}, {y[k]:.2f}, {w[k]:.2f}, {h[k]:.2f}], "category_id": {cats[k]}, "id": {k + 1}}}'
            )
        f.write('], "categories": ')
        json.dump(
            [
                {"supercategory": "thing", "id": cid, "name": name}
                for cid, name in zip(COCO_IDS, COCO_CATEGORIES)
            ],
            f,
        )
        f.write("}")


def build_once(annotation_file: str, image_dir: str, box_format: str | None, max_pixels: int | None) -> dict:
    """Build in this process and measure it (run in a fresh subprocess, so the RSS is the builder's)."""
    from trl_perception.data.coco import build_coco_detection

    start = time.perf_counter()
    ds = build_coco_detection(annotation_file, image_dir=image_dir, box_format=box_format, max_pixels=max_pixels)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    boxes = sum(len(s) for s in ds.with_format("arrow", columns=["solution"])[:]["solution"].to_pylist())
    return {
        "rows": len(ds),
        "boxes": boxes,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--boxes", type=int, default=860_001)
    parser.add_argument("--no-segmentation", action="store_true", help="Omit polygons (a much smaller file).")
    parser.add_argument(
        "--box-format", default=None, help="Also add a family's columns (and resize with --max-pixels)."
    )
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument(
        "--workdir", default=None, help="Keep the generated files here instead of a temp dir."
    )
    parser.add_argument("--build-only", nargs=2, metavar=("ANNOTATIONS", "IMAGE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.build_only:
        print(json.dumps(build_once(*args.build_only, args.box_format, args.max_pixels)))
        return 0

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp_path = Path(tmp)
        annotation_file = tmp_path / "instances_train2017.json"
        image_dir = tmp_path / "train2017"
        image_dir.mkdir()
        start = time.perf_counter()
        write_instances(annotation_file, args.images, args.boxes, not args.no_segmentation)
        for i in range(args.images):
            open(image_dir / f"{i + 1:012d}.jpg", "wb").close()
        print(
            f"generated {annotation_file.name}: {annotation_file.stat().st_size / 2**20:.0f} MiB, "
            f"{args.images:,} images, {args.boxes:,} boxes, stub images in {time.perf_counter() - start:.1f} s"
        )
        command = [sys.executable, __file__, "--build-only", str(annotation_file), str(image_dir)]
        if args.box_format:
            command += ["--box-format", args.box_format]
        if args.max_pixels:
            command += ["--max-pixels", str(args.max_pixels)]
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"build_coco_detection: {result['rows']:,} rows, {result['boxes']:,} boxes (crowd excluded) in "
        f"{result['wall_s']} s, peak RSS {result['peak_rss_mb']:,} MB (goal: <= 60 s, <= 3072 MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
