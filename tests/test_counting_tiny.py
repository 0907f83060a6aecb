"""The counting miniature of Table 5 (recipes/demo/counting_tiny.py, on tiny_experiment.py's stages): its data,
rewards and metrics with computed values, and the whole pipeline on a shortened schedule."""

import doctest
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

DEMO_DIR = Path(__file__).resolve().parents[1] / "recipes" / "demo"
if str(DEMO_DIR) not in sys.path:
    sys.path.insert(0, str(DEMO_DIR))

import counting_tiny as ct  # noqa: E402
import tiny_experiment as te  # noqa: E402

SPEC = te.SETTINGS["counting"]


def test_counting_rows_have_3_to_10_points_in_a_random_order():
    ds = te.make_setting_data(SPEC, 40, seed=5)
    reordered = 0
    for row in ds:
        assert row["task"] == "counting" and row["image"].size == (168, 168)
        assert row["image_size"] == row["input_size"] == [168, 168]
        solution = row["solution"]
        assert 3 <= solution["count"] <= 10 and solution["count"] == len(solution["points"])
        # the SFT answer lists every true point once (rounded to whole pixels, Qwen2.5-VL's absolute frame)
        target = json.loads(row["sft_target"])
        listed = [tuple(o["point_2d"]) for o in target]
        assert len(listed) == solution["count"]
        for x, y in solution["points"]:  # shapes are far apart: each point has exactly one listed twin
            assert sum(abs(x - px) <= 1 and abs(y - py) <= 1 for px, py in listed) == 1
        reordered += listed != sorted(listed, key=lambda p: (p[1], p[0]))
    assert reordered >= 30  # not reading order: a fresh permutation per row
    again = te.make_setting_data(SPEC, 40, seed=5)
    assert again["sft_target"] == ds["sft_target"]
    assert te.make_setting_data(SPEC, 40, seed=6)["sft_target"] != ds["sft_target"]


def test_counting_scores_and_the_sequential_arm():
    ds = te.make_setting_data(SPEC, 6, seed=0)
    perfect = te.score_completions(SPEC, ds, ds["sft_target"])
    assert perfect["count_acc"] == perfect["format_ok"] == 1.0 and perfect["count_mae"] == 0.0
    assert perfect["reward"] > 0.99  # points rounded to whole pixels: within a pixel of the centroids
    # one point dropped from every answer: counts off by one, reward ratio (n - 1) / n at best
    dropped = [json.dumps(json.loads(t)[:-1]) for t in ds["sft_target"]]
    worse = te.score_completions(SPEC, ds, dropped)
    assert worse["count_acc"] == 0.0 and worse["count_mae"] == 1.0
    assert worse["count_bias"] == -1.0 and worse["count_under"] == 1.0 and worse["count_over"] == 0.0
    assert perfect["count_bias"] == perfect["count_under"] == perfect["count_over"] == 0.0
    expected = sum((n - 1) / n for n in (row["solution"]["count"] for row in ds)) / len(ds)
    assert worse["reward"] <= expected + 1e-9 and worse["reward"] > expected - 0.01
    broken = te.score_completions(SPEC, ds, ["nonsense"] * 6)
    assert broken["count_acc"] == broken["reward"] == broken["format_ok"] == 0.0
    # the answers list points in a random order: sequential matching pays less for the same right answer
    (hungarian,) = te.reward_functions(SPEC)
    (sequential,) = te.reward_functions(replace(SPEC, **te.ARMS["grpo_sequential"][1]))
    kwargs = {k: ds[k] for k in ("task", "image_size", "input_size", "box_format")}
    h = hungarian(ds["sft_target"], ds["solution"], **kwargs)
    s = sequential(ds["sft_target"], ds["solution"], **kwargs)
    assert min(h) > 0.99 and max(s) < 0.99 and sum(s) < sum(h) - 0.5


def test_quick_pipeline_table_keys_and_ground_truth_share(tmp_path):
    """The whole experiment on a shortened schedule: both stages run, the table has every arm of Table 5's
    counting row, and the ground-truth arm injects exactly 1 of the 4 rollouts of every group."""
    out_json = tmp_path / "results.json"
    results = ct.run(
        tmp_path / "run", seeds=[0], eval_n=4, sft_steps=3, grpo_steps=2, barely_steps=2, gt_steps=2,
        workers=1, quick=True, results_path=out_json, log=None,
    )  # fmt: skip
    table = results["table"]["table"]
    assert set(table) == {"SFT start", "GRPO", "GRPO w/o reward matching", "continued SFT"}
    for row in table.values():
        assert set(te.KEY_METRICS["counting"]) <= set(row)
        assert 0.0 <= row["count_acc"][0] <= 1.0 and row["count_mae"][0] >= 0.0
    for label in ("GRPO", "GRPO w/o reward matching"):
        assert 0.0 <= table[label]["nonzero_adv_groups"][0] <= 1.0
        assert math.isfinite(table[label]["train_reward"][0])
    gt = results["ground_truth"]
    assert set(gt["table"]) == {"SFT start", *(te.ARMS[a][0] for a in ct.GROUND_TRUTH_ARMS)}
    assert gt["setting"]["sft_steps"] == 2
    for arm, share in (("grpo_gt0", None), ("grpo_gt1", 0.25)):
        history = gt[arm]["0"]["history"]
        assert [e["step"] for e in history] == [1, 2]
        shares = [e.get("perception/solution_in_group_fraction") for e in history]
        assert shares == [share, share] if share else all(s in (None, 0.0) for s in shares)
    saved = json.loads(out_json.read_text())
    assert set(saved) == {"table", "ground_truth"} and "| GRPO |" in ct.report(saved)


def test_counting_control_has_grpo_compute():
    """Equal compute: the control's SFT steps train on as many sequences as the GRPO steps do."""
    per_grpo_step = SPEC.prompts_per_step * SPEC.num_generations
    assert SPEC.control_steps_per_grpo_step * SPEC.sft_batch_size == per_grpo_step


def test_unknown_arm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown arms"):
        te.run_experiment(SPEC, tmp_path, seeds=[0], arms=("grpo", "nope"), start_checkpoint="x", eval_n=0)


def test_docstring_examples_run():
    result = doctest.testmod(ct, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0
