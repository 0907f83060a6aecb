"""The `trl-perception` command: help of every subcommand, argument checks, `data preview`, `eval`, `train`
with command-line overrides of YAML keys, and one real console-script run. In-process through `cli.main`
where possible (a subprocess pays ~10 s of imports)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_perception import __version__, cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo" / "config_demo.yaml"


def run(capsys, *argv):
    """`cli.main(argv)` -> (exit status, stdout, stderr); `--help`/errors exit through SystemExit."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else exit.code)
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------------------------------
# Help


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--help"], ["demo", "train", "data", "eval", "push", "--version"]),
        (["demo", "--help"], ["--output-dir", "--max-steps", "--eval-samples", "--train-samples",
                              "--max-completion-length", "--checkpoint", "--seed", "HF_HUB_OFFLINE"]),
        (["train", "--help"], ["config", "--help-args", "--learning_rate 2e-6"]),
        (["data", "--help"], ["preview"]),
        (["data", "preview", "--help"], ["--task", "--source", "--split", "--image-dir", "--box-format", "--n",
                                         "--out", "synthetic"]),
        (["eval", "--help"], ["--model", "--task", "--source", "--box-format", "--max-pixels", "--backend",
                              "--output-dir", "--num-samples"]),
        (["push", "--help"], ["folder", "--repo-id", "--private", "--token", "README.md"]),
    ],
    ids=["top", "demo", "train", "data", "data-preview", "eval", "push"],
)  # fmt: skip
def test_help(capsys, argv, expected):
    status, out, _ = run(capsys, *argv)
    assert status == 0
    assert out.startswith("usage: trl-perception")
    for word in expected:
        assert word in out, word


def test_train_help_args_lists_every_recipe_argument(capsys):
    status, out, _ = run(capsys, "train", "--help-args")
    assert status == 0
    # PerceptionScriptArguments, PerceptionGRPOConfig (TRL's GRPOConfig + perception fields), trl.ModelConfig
    for option in ("--dataset_source", "--reward_funcs", "--evaluate_after_training", "--eval_image_dir",
                   "--box_format", "--max_pixels", "--num_generations", "--beta", "--learning_rate",
                   "--model_name_or_path", "--use_peft", "--lora_r", "--load_in_4bit"):  # fmt: skip
        assert option in out, option


def test_version(capsys):
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.strip() == f"trl-perception {__version__}"


def test_console_script_runs():
    script = shutil.which("trl-perception", path=str(Path(sys.executable).parent)) or shutil.which("trl-perception")
    assert script, "the package is installed with its console script (pip install -e .)"
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"trl-perception {__version__}"


# --------------------------------------------------------------------------------------------------
# Argument errors


def test_a_subcommand_is_required(capsys):
    status, _, err = run(capsys)
    assert status == 2 and "required" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--max-steps", "0"], "positive integer"),
        (["demo", "--eval-samples", "x"], "positive integer"),
        (["data", "preview", "--task", "segmentation", "--source", "synthetic"], "invalid choice"),
        (["data", "preview", "--task", "ocr"], "--source"),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--box-format", "qwen9"], "invalid choice"),
        (["eval", "--task", "grounding"], "--model"),
        (["push", "folder"], "--repo-id"),
    ],
)
def test_bad_arguments_exit_with_status_2(capsys, argv, message):
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert message in err


def test_train_needs_a_recipe(capsys):
    status, _, _ = run(capsys, "train")
    assert "a recipe YAML is required" in str(status)
    status, _, _ = run(capsys, "train", "no/such/config.yaml")
    assert "no such recipe file" in str(status)


# --------------------------------------------------------------------------------------------------
# train: the YAML plus command-line overrides reach the recipe


@pytest.fixture
def captured_recipe(monkeypatch):
    from trl_perception.scripts import grpo

    seen = {}

    def fake_main(script_args, training_args, model_args):
        seen.update(script=script_args, training=training_args, model=model_args)
        return {"output_dir": training_args.output_dir, "train": {"train_loss": 0.0}}

    monkeypatch.setattr(grpo, "main", fake_main)
    return seen


def test_train_passes_yaml_and_overrides_to_the_recipe(capsys, captured_recipe, tmp_path):
    status, out, _ = run(
        capsys, "train", str(DEMO),
        "--learning_rate", "3e-5", "--max_steps", "7", "--output_dir", str(tmp_path),
        "--reward_funcs", "detection", "--use_peft", "true", "--lora_r", "4",
    )  # fmt: skip
    assert status == 0
    script, training, model = captured_recipe["script"], captured_recipe["training"], captured_recipe["model"]
    # overridden
    assert training.learning_rate == 3e-5 and training.max_steps == 7
    assert training.output_dir == str(tmp_path)
    assert script.reward_funcs == ["detection"]
    assert model.use_peft and model.lora_r == 4
    # from the YAML
    assert model.model_name_or_path == "tiny:qwen2_5_vl"
    assert script.task == "detection" and script.eval_num_samples == 8
    assert training.max_pixels == 12544 and training.num_generations == 4
    # the recipe's summary is printed as JSON
    assert json.loads(out)["output_dir"] == str(tmp_path)


def test_train_takes_the_recipe_with_config_too(capsys, captured_recipe):
    assert run(capsys, "train", "--config", str(DEMO), "--max_steps", "3")[0] == 0
    assert captured_recipe["training"].max_steps == 3
    assert run(capsys, "train", f"--config={DEMO}")[0] == 0
    status, _, _ = run(capsys, "train", str(DEMO), "--config", str(DEMO))
    assert "give the recipe YAML once" in str(status)


def test_train_rejects_unknown_options_and_bad_arguments_in_one_line(capsys, captured_recipe):
    status, _, _ = run(capsys, "train", str(DEMO), "--no_such_option", "1")
    assert str(status).startswith("trl-perception train:") and "no_such_option" in str(status)
    status, _, _ = run(capsys, "train", str(DEMO), "--reward_funcs", "iuo")
    assert str(status).startswith("trl-perception train:") and "reward 'iuo'" in str(status)
    assert not captured_recipe


@pytest.mark.slow
def test_train_runs_the_recipe_with_overrides(capsys, tmp_path):
    out = tmp_path / "run"
    status, stdout, _ = run(
        capsys, "train", str(DEMO),
        "--output_dir", str(out), "--max_steps", "1", "--learning_rate", "3e-5", "--num_samples", "4",
        "--max_completion_length", "8", "--evaluate_after_training", "false", "--disable_tqdm", "true",
    )  # fmt: skip
    assert status == 0
    summary = json.loads(stdout[stdout.rindex("{\n  \"output_dir\"") :])
    assert summary["output_dir"] == str(out) and "train_loss" in summary["train"]
    card = json.loads((out / "trl_perception_card.json").read_text())
    assert card["training_args"]["learning_rate"] == 3e-5
    assert card["training_args"]["max_steps"] == 1
    assert card["training_args"]["max_completion_length"] == 8
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not (out / "eval").exists()


# --------------------------------------------------------------------------------------------------
# data preview and eval


def test_data_preview_writes_a_png(capsys, tmp_path):
    from PIL import Image

    out = tmp_path / "nested" / "x.png"
    status, stdout, _ = run(
        capsys, "data", "preview", "--task", "detection", "--source", "synthetic", "--n", "4", "--ncols", "2",
        "--out", str(out),
    )  # fmt: skip
    assert status == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        width, height = image.size
    assert width > 2 * 112 and height > 2 * 112  # a 2x2 grid of 112 px scenes with captions
    assert f"Wrote {out} (4 rows of detection from synthetic)" in stdout


def test_data_preview_in_a_model_frame(capsys, tmp_path):
    out = tmp_path / "x.png"
    status, _, _ = run(
        capsys, "data", "preview", "--task", "grounding", "--source", "synthetic", "--n", "2",
        "--box-format", "qwen2_vl", "--max-pixels", "3136", "--out", str(out),
    )  # fmt: skip
    assert status == 0 and out.is_file()


def test_data_preview_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        cli.main(["data", "preview", "--task", "ocr", "--source", str(tmp_path / "nowhere.json")])


def test_eval_writes_metrics(capsys, tmp_path):
    from trl_perception.testing import tiny_vlm

    out = tmp_path / "eval"
    status, stdout, _ = run(
        capsys, "eval", "--model", tiny_vlm("qwen2_5_vl"), "--task", "grounding", "--source", "synthetic",
        "--num-samples", "3", "--max-new-tokens", "4", "--output-dir", str(out), "--no-progress",
    )  # fmt: skip
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["grounding"]["num_samples"] == 3
    assert 0.0 <= metrics["grounding"]["acc@0.5"] <= 1.0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert (out / "report.md").is_file()
    # The metrics are printed once, as JSON, then the files written.
    printed = json.loads(stdout[: stdout.rindex("}") + 1])
    assert printed["grounding/num_samples"] == 3
    assert stdout.count('"grounding/num_samples"') == 1
    assert str(out / "metrics.json") in stdout
