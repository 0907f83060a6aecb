"""Specification of open-vocabulary detection evaluation: `metrics.ovd_metrics` and `evaluate(..., task
"ovd")` — COCO AP / AP50 / AR over the phrases with pycocotools over the whole set, and hallucination."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from trl_perception.data.synthetic import make_synthetic
from trl_perception.evaluation import _load_solution, add_eval_arguments, evaluate, run_eval_from_args
from trl_perception.formats import render_objects
from trl_perception.metrics import coco_metrics, ovd_metrics
from trl_perception.testing import tiny_vlm

CAT = {"bbox_2d": [0, 0, 10, 10], "label": "cat"}
DOG = {"bbox_2d": [20, 20, 40, 40], "label": "dog"}


def test_perfect_answers_score_full_ap_and_no_hallucination():
    out = ovd_metrics([[CAT, DOG], [], [dict(DOG, label=" DOG ")]], [[CAT, DOG], None, [DOG]])
    assert out["AP"] == pytest.approx(1.0) and out["AP50"] == pytest.approx(1.0) and out["AR100"] == pytest.approx(1.0)
    assert out["hallucination_rate"] == 0.0 and out["negative_image_fp_rate"] == 0.0
    assert out["negative_images"] == 1 and out["num_samples"] == 3


def test_boxes_for_absent_phrases_are_hallucinations_and_false_positives():
    preds = [[CAT, dict(CAT, label="dog")], [dict(CAT, label="cat")]]
    out = ovd_metrics(preds, [[CAT], None])
    # 3 boxes, 2 of them for phrases absent from their image; the negative image got a box
    assert out["hallucinated_boxes"] == 2 and out["hallucination_rate"] == pytest.approx(2 / 3)
    assert out["negative_image_fp_rate"] == 1.0
    # the cat box on image 2 is a false positive of "cat": AP below 1 (pycocotools over the set)
    assert out["AP"] < 1.0


def test_ap_is_pycocotools_over_the_whole_set():
    preds = [[CAT, {"bbox_2d": [1, 1, 12, 9], "label": "dog"}], [DOG]]
    gts = [[CAT, {"bbox_2d": [0, 0, 11, 10], "label": "dog"}], [DOG, CAT]]
    gt = {
        "images": [{"id": 1, "width": 50, "height": 50}, {"id": 2, "width": 50, "height": 50}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 11, 10], "area": 110, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [20, 20, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 1.0},
        {"image_id": 1, "category_id": 2, "bbox": [1, 1, 11, 8], "score": 1.0},
        {"image_id": 2, "category_id": 2, "bbox": [20, 20, 20, 20], "score": 1.0},
    ]
    expected = coco_metrics(gt, results)
    out = ovd_metrics(preds, gts, [[50, 50], [50, 50]])
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert out[key] == pytest.approx(expected[key], abs=1e-12)


def test_nothing_predicted_gives_zero_ap_and_no_hallucination():
    out = ovd_metrics([[], []], [[CAT], None])
    assert out["AP"] == 0.0 and out["hallucination_rate"] == 0.0 and out["negative_image_fp_rate"] == 0.0


def _answers(rows, family, mode):
    def generate(requests):
        texts = []
        for r in requests:
            solution = _load_solution("ovd", rows[r.index]["solution"])
            if mode == "none":
                texts.append("None")
            elif mode == "perfect":
                texts.append(render_objects(solution, family, r.image_size, r.input_size) if solution else "None")
            else:  # every phrase asked, boxed on the whole image
                text = rows[r.index]["prompt"][-1]["content"][1]["text"]
                phrases = text.split("objects: ", 1)[1].split(". If none", 1)[0].split(", ")
                whole = [{"bbox_2d": [0, 0, r.image_size[0], r.image_size[1]], "label": p} for p in phrases]
                texts.append(render_objects(whole, family, r.image_size, r.input_size))
        return texts

    return generate


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_evaluate_ovd_rows_perfect_none_and_spray(family):
    rows = [dict(r) for r in make_synthetic("ovd", 12, seed=0, box_format=family)]
    perfect = evaluate(None, rows, generate_fn=_answers(rows, family, "perfect"), progress=False).metrics["ovd"]
    none = evaluate(None, rows, generate_fn=_answers(rows, family, "none"), progress=False).metrics["ovd"]
    spray = evaluate(None, rows, generate_fn=_answers(rows, family, "spray"), progress=False).metrics["ovd"]
    assert perfect["AP"] > 0.95 and perfect["hallucination_rate"] == 0.0
    assert none["AP"] == 0.0 and none["negative_image_fp_rate"] == 0.0
    assert spray["hallucination_rate"] > 0.3 and spray["negative_image_fp_rate"] == 1.0
    assert spray["AP"] < perfect["AP"]


def test_tiny_model_ovd_evaluation_writes_predictions_and_report(tmp_path):
    dataset = make_synthetic("ovd", 3, seed=0, box_format="qwen2_5_vl")
    result = evaluate(tiny_vlm("qwen2_5_vl"), dataset, max_new_tokens=6, output_dir=tmp_path, progress=False)
    metrics = result.metrics["ovd"]
    assert metrics["num_samples"] == 3
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert set(result.files) == {"predictions", "metrics", "report", "report_image"}
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["task"] for r in records] == ["ovd"] * 3
    report = (tmp_path / "report.md").read_text()
    assert "## ovd" in report and "hallucination_rate" in report


def test_cli_evaluates_ovd_on_a_synthetic_source(tmp_path, capsys):
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", tiny_vlm("qwen3_vl"), "--task", "ovd", "--source", "synthetic", "--num-samples", "2",
         "--max-new-tokens", "3", "--output-dir", str(tmp_path), "--no-progress", "--num-visual", "1"]
    )  # fmt: skip
    result = run_eval_from_args(args)
    assert result.metrics["ovd"]["num_samples"] == 2
    assert "ovd/AP" in capsys.readouterr().out
