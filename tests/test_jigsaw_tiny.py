"""The jigsaw miniature (recipes/demo/jigsaw_tiny.py) end to end in its shortest form: model build, SFT,
GRPO, the equal-time control, evaluation on every grid, the results file and the table."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "jigsaw_tiny.py"


def load_script():
    spec = importlib.util.spec_from_file_location("jigsaw_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["jigsaw_tiny"] = module
    spec.loader.exec_module(module)
    return module


def test_the_shortened_miniature_runs_every_stage_and_writes_its_table(tmp_path, capsys):
    script = load_script()

    results = script.main(["--output-dir", str(tmp_path), "--quick"])

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sft"]["train"]["steps"] == 6
    assert saved["grpo"]["0"]["train"]["steps"] == 2
    # the control ran for (at least) the wall time of its seed's GRPO run
    assert saved["control"]["0"]["train"]["seconds"] >= saved["grpo"]["0"]["train"]["seconds"]
    for arm in (saved["sft"], saved["grpo"]["0"], saved["control"]["0"]):
        assert set(arm["eval"]) == {"2x1", "2x2", "1x2", "all"}
        assert all(0.0 <= arm["eval"][g]["positions"] <= 1.0 for g in ("2x1", "2x2", "1x2"))
    out = capsys.readouterr().out
    assert "| GRPO |" in out and "| continued SFT |" in out and "| chance |" in out
    assert results["wall_seconds"] > 0


def test_the_sft_targets_are_the_rendered_permutations():
    script = load_script()
    data = script.puzzles(3, seed=0, grids=script.TRAIN_GRIDS)
    row = data[4]
    assert row["grid"] == [2, 2]
    assert script.target_text(row["permutation"], row["grid"]).split() == [str(v) for v in row["permutation"]]
    assert "2x2 jigsaw" in row["prompt"][-1]["content"][1]["text"]
