"""Specification of jigsaw evaluation: exact, position and connection accuracy per grid size, a picture
report (puzzle, the model's reassembly, the original), and `eval --task jigsaw` on synthetic scenes."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from trl_perception.data import make_synthetic
from trl_perception.data.jigsaw import concatenate_jigsaw, make_jigsaw
from trl_perception.evaluation import add_eval_arguments, evaluate, run_eval_from_args
from trl_perception.formats import render_jigsaw_answer
from trl_perception.testing import tiny_vlm


@pytest.fixture(scope="module")
def puzzles():
    scenes = make_synthetic("grounding", 4, seed=0)
    return concatenate_jigsaw([make_jigsaw(scenes, 2, 1, seed=0), make_jigsaw(scenes, 2, 2, seed=0)])


def answers_by_prompt(dataset, wrong_for=()):
    """A generate_fn answering each request with its row's true answer (the identity for rows in `wrong_for`)."""
    rows = list(dataset.with_format(None).select_columns(["permutation", "grid"]))

    def generate(requests):
        texts = []
        for request in requests:
            row = rows[request.index]
            answer = list(range(1, len(row["permutation"]) + 1)) if request.index in wrong_for else row["permutation"]
            texts.append(render_jigsaw_answer(answer, cols=row["grid"][1]))
        return texts

    return generate


def test_true_answers_score_one_per_grid_size(puzzles, tmp_path):
    result = evaluate(None, puzzles, generate_fn=answers_by_prompt(puzzles), progress=False, box_format=None,
                      output_dir=tmp_path)  # fmt: skip

    metrics = result.metrics["jigsaw"]
    assert set(metrics) >= {"2x1", "2x2", "all"}
    for key in ("2x1", "2x2", "all"):
        assert metrics[key]["exact"] == metrics[key]["positions"] == metrics[key]["connections"] == 1.0
    assert metrics["2x2"]["n"] == 4 and metrics["all"]["n"] == 8


def test_wrong_answers_lower_the_accuracies_of_their_grid_only(puzzles):
    perms = puzzles.with_format(None)["permutation"]
    wrong = {i for i, p in enumerate(perms) if len(p) == 4 and p != [1, 2, 3, 4]}
    result = evaluate(None, puzzles, generate_fn=answers_by_prompt(puzzles, wrong), progress=False, box_format=None)

    metrics = result.metrics["jigsaw"]
    assert metrics["2x1"]["exact"] == 1.0
    assert metrics["2x2"]["exact"] == pytest.approx(1 - len(wrong) / 4)
    assert metrics["2x2"]["positions"] < 1.0 and metrics["2x2"]["connections"] < 1.0


def test_the_picture_report_shows_puzzle_reassembly_and_original(puzzles, tmp_path):
    evaluate(None, puzzles, generate_fn=answers_by_prompt(puzzles), progress=False, box_format=None,
             output_dir=tmp_path, num_visual=2)  # fmt: skip
    pictures = sorted(p for p in tmp_path.rglob("*.png"))
    assert pictures
    image = np.asarray(Image.open(pictures[0]).convert("RGB"))
    assert image.shape[1] > image.shape[0]  # three panels side by side per puzzle
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()] if (
        tmp_path / "predictions.jsonl"
    ).exists() else []
    assert all(r["task"] == "jigsaw" for r in records)


def test_eval_cli_task_jigsaw_on_synthetic_scenes(tmp_path, capsys):
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", tiny_vlm("qwen2_5_vl"), "--task", "jigsaw", "--source", "synthetic", "--num-samples", "2",
         "--source-option", "rows=2", "--source-option", "cols=2", "--max-new-tokens", "4",
         "--output-dir", str(tmp_path), "--no-progress", "--num-visual", "1"]
    )  # fmt: skip

    result = run_eval_from_args(args)

    assert result.metrics["jigsaw"]["2x2"]["n"] == 2
    assert "jigsaw" in capsys.readouterr().out
