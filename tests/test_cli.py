"""The `trl-perception` command: help of every subcommand, argument checks, `data preview`, `eval`, `train`
with command-line overrides of YAML keys, and one real console-script run. In-process through `cli.main`
where possible (a subprocess pays ~10 s of imports)."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_data_preview_of_a_missing_file_says_so(capsys, tmp_path):
    status, _, err = run(capsys, "data", "preview", "--task", "ocr", "--source", str(tmp_path / "nowhere.json"))
    assert status == 2 and "nowhere.json" in err and "Traceback" not in err


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


# --------------------------------------------------------------------------------------------------
# User errors: checked before any model or data, one line on stderr, status 2; --debug shows the traceback


@pytest.fixture
def no_model_or_data(monkeypatch):
    """Fails the test if a model or processor is loaded, or a dataset built, or generation starts."""
    import transformers

    from trl_perception import evaluation

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded a model or built data before checking the arguments")

    for name in ("_load_model", "_load_processor", "evaluate"):
        monkeypatch.setattr(evaluation, name, forbidden)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", forbidden)
    monkeypatch.setattr("trl_perception.data.build_dataset", forbidden)
    monkeypatch.setattr("trl_perception.data.registry.make_synthetic", forbidden)


def _one_line_error(status, out, err, *words):
    assert status == 2, (status, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


def _eval(tmp_path, *extra):
    model = tmp_path / "ckpt"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    return ["eval", "--model", str(model), "--task", "grounding", "--output-dir", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--generation-kwargs", "{bad json"], ["--generation-kwargs", "not valid JSON"]),
        (["--generation-kwargs", "[1, 2]"], ["--generation-kwargs", "JSON object"]),
        (["--generation-kwargs", '{"temprature": 0.5}'], ["--generation-kwargs", "temprature"]),
        (["--source-option", "noequals"], ["--source-option", "KEY=VALUE"]),
        (["--source-option", "=3"], ["--source-option"]),
        (["--batch-size", "0"], ["--batch-size", "positive"]),
        (["--num-samples", "-4"], ["--num-samples", "positive"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--num-visual", "-1"], ["--num-visual"]),
        (["--min-pixels", "5000", "--max-pixels", "4000"], ["--min-pixels", "exceeds"]),
        (["--source", "/no/such/annotations.json"], ["--source", "no such file"]),
        (["--batch-size", "two"], ["--batch-size", "invalid int"]),
        (["--box-format", "llava"], ["--box-format", "invalid choice"]),
        (["--task", "segmentation"], ["--task", "invalid choice"]),
    ],
)
def test_eval_argument_errors_are_one_line_before_any_model_or_data(capsys, tmp_path, no_model_or_data, extra, words):
    _one_line_error(*run(capsys, *_eval(tmp_path, *extra)), *words)


def test_eval_output_dir_naming_a_file_fails_at_once(capsys, tmp_path, no_model_or_data):
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    argv = _eval(tmp_path)
    argv[argv.index("--output-dir") + 1] = str(taken)
    _one_line_error(*run(capsys, *argv), "--output-dir", "not a folder")
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("model", ["/nonexistent", "./no/such/ckpt", "../x/../y", "C:\\\\models\\\\m", "a//b"])
def test_eval_model_that_is_no_folder_nor_hub_id_is_named(capsys, tmp_path, no_model_or_data, model):
    argv = _eval(tmp_path)
    argv[argv.index("--model") + 1] = model
    _one_line_error(*run(capsys, *argv), f"--model {model}", "no such checkpoint folder")


def test_eval_model_folder_without_config_is_named(capsys, tmp_path, no_model_or_data):
    argv = _eval(tmp_path)
    (tmp_path / "empty").mkdir()
    argv[argv.index("--model") + 1] = str(tmp_path / "empty")
    _one_line_error(*run(capsys, *argv), "config.json")


def test_eval_hub_id_that_cannot_be_read_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = _eval(tmp_path)
    argv[argv.index("--model") + 1] = "nobody-here/no-such-model-xyz"
    _one_line_error(*run(capsys, *argv), "--model nobody-here/no-such-model-xyz", "cannot read its config")


def test_eval_task_mixed_needs_the_synthetic_source(capsys, tmp_path, no_model_or_data):
    data = tmp_path / "refs.json"
    data.write_text("[]")
    argv = [a if a != "grounding" else "mixed" for a in _eval(tmp_path, "--source", str(data))]
    _one_line_error(*run(capsys, *argv), "--task mixed", "--source synthetic")


def test_eval_unknown_source_option_is_a_user_error(capsys):
    from trl_perception.testing import tiny_vlm

    model = tiny_vlm("qwen2_vl")
    capsys.readouterr()
    status, out, err = run(capsys, "eval", "--model", model, "--task", "counting", "--source-option",
                           "colour_count=3")  # fmt: skip
    _one_line_error(status, out, err, "--source-option", "colour_count")


def test_eval_help_offers_only_what_it_accepts(capsys):
    from trl_perception import evaluation

    status, out, _ = run(capsys, "eval", "--help")
    assert status == 0
    for task in evaluation._TASK_EVALUATIONS:
        assert task in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["data", "preview", "--task", "ocr", "--source", "/no/such/file.json"], ["--source", "no such file"]),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--image-dir", "/no/such/dir"], ["--image-dir"]),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--max-pixels", "3136"], ["--box-format"]),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--box-format", "qwen2_vl", "--min-pixels",
          "9000", "--max-pixels", "3136"], ["exceeds"]),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--out", "{tmp}"], ["--out", "is a folder"]),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--out", "{tmp}/x.txt"], ["--out", "'.txt'"]),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--out", "{file}/x.png"], ["--out", "is a file"]),
        (["data", "preview", "--task", "ocr", "--source", "synthetic", "--n", "0"], ["--n", "positive"]),
        (["demo", "--output-dir", "{file}"], ["--output-dir", "not a folder"]),
        (["demo", "--checkpoint", "/no/such/ckpt"], ["--checkpoint", "no such checkpoint"]),
        (["demo", "--output-dir", "{file}/sub"], ["--output-dir", "cannot create"]),
        (["push", "/no/such/folder", "--repo-id", "me/model"], ["no such model folder"]),
        (["push", "{tmp}", "--repo-id", "just-a-name"], ["--repo-id", "OWNER/NAME"]),
        (["push", "{tmp}", "--repo-id", "a/b/c"], ["--repo-id"]),
        (["data"], ["required"]),
        (["nonsense"], ["invalid choice"]),
    ],
)
def test_other_argument_errors_are_one_line(capsys, tmp_path, no_model_or_data, argv, words):
    file = tmp_path / "a-file"
    file.write_text("")
    argv = [a.format(tmp=tmp_path, file=file) for a in argv]
    _one_line_error(*run(capsys, *argv), *words)


def test_data_preview_without_an_extension_writes_a_png(capsys, tmp_path):
    from PIL import Image

    out = tmp_path / "preview"
    status, _, _ = run(capsys, "data", "preview", "--task", "counting", "--source", "synthetic", "--n", "2", "--out",
                       str(out))  # fmt: skip
    assert status == 0 and Image.open(out).format == "PNG"


def test_data_errors_are_one_line(capsys, tmp_path):
    bad = tmp_path / "en_page_ocr.json"
    bad.write_text("{ not json")
    status, out, err = run(capsys, "data", "preview", "--task", "ocr", "--source", str(bad))
    _one_line_error(status, out, err, "en_page_ocr.json")


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "env"])
def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch, how):
    argv = ["data", "preview", "--task", "ocr", "--source", str(tmp_path / "bad.json")]
    (tmp_path / "bad.json").write_text("{ not json")
    if how == "flag-before":
        argv = ["--debug", *argv]
    elif how == "flag-after":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("TRL_PERCEPTION_DEBUG", "1")
    status, _, err = run(capsys, *argv)
    assert status == 2 and "Traceback (most recent call last)" in err and "bad.json" in err


def test_an_unexpected_error_is_one_line_with_status_1(capsys, monkeypatch):
    from trl_perception.data import preview

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nover two lines")

    monkeypatch.setattr(preview, "render_preview", boom)
    status, _, err = run(capsys, "data", "preview", "--task", "ocr", "--source", "synthetic", "--n", "1")
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "RuntimeError: something broke over two lines" in err and "--debug" in err


_EVAL_TOKENS = ["--model", "--task", "--source", "--split", "--num-samples", "--seed", "--source-option", "--box-format",
                "--min-pixels", "--max-pixels", "--batch-size", "--max-new-tokens", "--backend", "--generation-kwargs",
                "--output-dir", "--num-visual", "grounding", "mixed", "synthetic", "-1", "0", "3", "1e9", "{", "{}",
                "[]", "a=b", "=", "/nonexistent", "..", "", "qwen2_vl", "vllm", "\x00", "\u2029", "ü", "--debug"]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.sampled_from(_EVAL_TOKENS) | st.text(max_size=6), max_size=10))
def test_eval_never_shows_a_traceback_for_any_arguments(tokens):
    from trl_perception import evaluation

    def forbidden(*args, **kwargs):
        raise RuntimeError("reached the model or the data")

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(io.StringIO()) as err:
        patch.delenv("TRL_PERCEPTION_DEBUG", raising=False)
        for name in ("_load_model", "_load_processor", "evaluate", "_checked_box_format"):
            patch.setattr(evaluation, name, forbidden)
        patch.setattr("trl_perception.data.build_dataset", forbidden)
        try:
            status = cli.main(["eval", *[t for t in tokens if t != "--debug"]])
        except SystemExit as exit:
            status = exit.code
    lines = err.getvalue().strip().splitlines()
    assert status in (1, 2) and len(lines) <= 1 and "Traceback" not in err.getvalue()
    if status == 1:
        assert "reached the model or the data" in lines[0]  # only arguments that pass every check get there
