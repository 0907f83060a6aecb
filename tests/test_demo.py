"""`trl-perception demo`: a short run writes its report (report.md, metrics.json with before/after, sample
images, reward curve); `reward_mean` and the setting overrides."""

import json

import pytest

from trl_perception import cli
from trl_perception.demo import DEFAULT_SETTING, DemoSetting, reward_mean, run_demo

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One short demo through the command line, shared by the report tests: 1 GRPO step on 16 synthetic
    scenes, 4 held-out scenes evaluated before and after, answers of at most 16 tokens."""
    out = tmp_path_factory.mktemp("demo")
    status = cli.main(
        ["demo", "--output-dir", str(out), "--max-steps", "1", "--eval-samples", "4", "--train-samples", "16",
         "--max-completion-length", "16", "--no-progress"]
    )  # fmt: skip
    return status, out


def test_demo_completes(demo_run, capsys):
    status, out = demo_run
    assert status == 0
    for name in ("report.md", "metrics.json", "samples_before.png", "samples_after.png", "reward_curve.png"):
        assert (out / name).is_file(), name


def test_metrics_hold_before_and_after_with_reward_mean(demo_run):
    _, out = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 1
    assert metrics["eval_samples"] == 4
    assert metrics["model"] in ("learned checkpoint", "random initialisation")
    # With the bundled learned checkpoint the demo runs the tiny experiment's grounding GRPO stage (IoU
    # reward); with a random model, synthetic detection (detection + format rewards).
    expected = {"grounding": {"mean_iou", "acc@0.5", "num_unparsed"}, "detection": {"AP", "AP50", "num_unparsed"}}
    task = metrics["setting"]["task"]
    for when in ("before", "after"):
        result = metrics[when]
        assert isinstance(result["reward_mean"], float)
        assert 0.0 <= result["reward_mean"] <= len(metrics["setting"]["rewards"])
        assert result["num_samples"] == 4
        assert expected[task] <= set(result)
    assert set(metrics["before"]) == set(metrics["after"])
    assert [entry["step"] for entry in metrics["history"] if "reward" in entry] == [1]
    assert metrics["setting"]["train_samples"] == 16 and metrics["setting"]["max_completion_length"] == 16
    assert metrics["train_time_s"] <= metrics["wall_time_s"]


def test_report_tabulates_before_and_after(demo_run):
    _, out = demo_run
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert report.startswith("# trl-perception demo")
    assert "1 step," in report and f"rewards: {', '.join(metrics['setting']['rewards'])}" in report
    assert "| metric | before | after |" in report
    assert f"| reward_mean | {metrics['before']['reward_mean']:.4f} | {metrics['after']['reward_mean']:.4f} |" in report
    assert "| num_samples | 4 | 4 |" in report  # counts stay whole
    assert "| APl | n/a | n/a |" in report or "| APl | " not in report  # COCO's -1: no large objects
    for image in ("reward_curve.png", "samples_before.png", "samples_after.png"):
        assert f"]({image})" in report


def test_images_are_pngs(demo_run):
    from PIL import Image

    _, out = demo_run
    for name in ("samples_before.png", "samples_after.png", "reward_curve.png"):
        assert (out / name).read_bytes()[:8] == PNG
        with Image.open(out / name) as image:
            assert min(image.size) > 50


def test_evaluations_are_kept(demo_run):
    _, out = demo_run
    task = json.loads((out / "metrics.json").read_text())["setting"]["task"]
    for when in ("before", "after"):
        folder = out / f"eval_{when}"
        assert len((folder / "predictions.jsonl").read_text().splitlines()) == 4
        assert json.loads((folder / "metrics.json").read_text())["metrics"][task]["num_samples"] == 4


def test_the_bundled_checkpoint_runs_the_learned_setting(demo_run):
    from trl_perception.demo import LEARNED_SETTING, bundled_checkpoint

    assert bundled_checkpoint() is not None
    assert LEARNED_SETTING.task == "grounding" and LEARNED_SETTING.rewards == ("iou",)
    metrics = json.loads((demo_run[1] / "metrics.json").read_text())
    assert metrics["model"] == "learned checkpoint" and metrics["setting"]["task"] == "grounding"


def test_the_demo_uses_only_library_code(demo_run):
    """The research experiment (recipes/demo/tiny_experiment.py) is not in the package, and the demo, which
    runs from a pip install, never imports it."""
    import re
    import sys
    from pathlib import Path

    import trl_perception

    package = Path(trl_perception.__file__).parent
    assert not (package / "tiny_experiment.py").exists()
    assert "trl_perception.tiny_experiment" not in sys.modules
    for source in package.rglob("*.py"):
        assert not re.search(r"(import|from)\s+\S*tiny_experiment", source.read_text(encoding="utf-8")), source


def test_demo_prints_before_and_after(tmp_path, capsys, monkeypatch):
    import trl_perception.demo as demo

    seen = {}

    def fake_run_demo(output_dir, **kwargs):
        seen.update(output_dir=output_dir, **kwargs)
        return {"before": {"reward_mean": 0.1}, "after": {"reward_mean": 0.5}}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--output-dir", str(tmp_path), "--max-steps", "3", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1]) == {"before": {"reward_mean": 0.1}, "after": {"reward_mean": 0.5}}
    assert f"Report written to {tmp_path / 'report.md'}" in out
    assert seen == {
        "output_dir": str(tmp_path), "max_steps": 3, "eval_samples": None, "train_samples": None,
        "max_completion_length": None, "checkpoint": None, "seed": 2, "progress": True,
    }  # fmt: skip


def test_overrides_must_be_positive(tmp_path):
    for name in ("max_steps", "eval_samples", "train_samples", "max_completion_length"):
        with pytest.raises(ValueError, match=name):
            run_demo(tmp_path, **{name: 0})
    assert not (tmp_path / "report.md").exists()


def test_default_setting_is_a_real_training_run():
    assert isinstance(DEFAULT_SETTING, DemoSetting)
    assert DEFAULT_SETTING.max_steps >= 10 and DEFAULT_SETTING.train_samples >= 64
    assert DEFAULT_SETTING.num_generations >= 2
    assert DEFAULT_SETTING.temperature == 1.0


# --------------------------------------------------------------------------------------------------
# reward_mean


def test_reward_mean_sums_rewards_per_record_then_averages():
    from trl_perception.rewards import get_reward

    records = [
        {"text": "[]", "solution": [], "task": "detection", "box_format": "qwen2_5_vl",
         "image_size": [112, 112], "input_size": [112, 112]},
        {"text": "nothing", "solution": [], "task": "detection", "box_format": "qwen2_5_vl",
         "image_size": [112, 112], "input_size": [112, 112]},
    ]  # fmt: skip
    funcs = [get_reward("detection"), get_reward("format")]
    per_record = [sum(f(completions=[[{"role": "assistant", "content": r["text"]}]], solution=[r["solution"]],
                        task=[r["task"]], box_format=[r["box_format"]], image_size=[r["image_size"]],
                        input_size=[r["input_size"]])[0] or 0.0 for f in funcs) for r in records]  # fmt: skip
    assert reward_mean(records, funcs) == pytest.approx(sum(per_record) / 2)
    assert per_record[0] > per_record[1]  # an empty list is a valid answer to an empty scene


def test_reward_mean_counts_none_as_zero_and_handles_no_records():
    def only_first(completions, **kwargs):
        return [1.0] + [None] * (len(completions) - 1)

    assert reward_mean([{"text": "a"}, {"text": "b"}], [only_first]) == 0.5
    assert reward_mean([], [only_first]) is None
