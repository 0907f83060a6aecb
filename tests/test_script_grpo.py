"""The GRPO script `trl_perception/scripts/grpo.py`: its arguments are checked when parsed; copied alone into an
empty folder outside the repository, it trains the demo config end to end (full model, LoRA on a task mixture,
QLoRA) and leaves the model, the card and the evaluation behind."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trl_perception
from trl_perception.scripts import grpo
from trl_perception.scripts.arguments import PerceptionDatasetConfig, PerceptionScriptArguments
from trl_perception.scripts.grpo import make_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "trl_perception" / "scripts" / "grpo.py"
DEMO = ROOT / "recipes" / "demo" / "config_demo.yaml"


def bad(**kwargs) -> str:
    with pytest.raises(ValueError) as info:
        PerceptionScriptArguments(**{"reward_funcs": ["iou"], **kwargs})
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# PerceptionScriptArguments.__post_init__


def test_every_task_of_the_builder_registry_is_accepted():
    from trl_perception.data import BUILDERS

    for task in set(BUILDERS) - {"text"}:
        PerceptionScriptArguments(task=task, reward_funcs=["format"])



def test_an_unknown_task_is_rejected():
    assert "unknown task 'segmentation'" in bad(task="segmentation")


def test_reward_funcs_are_required():
    with pytest.raises(ValueError, match="reward_funcs is required"):
        PerceptionScriptArguments(task="ocr")


def test_an_unregistered_reward_is_rejected():
    assert "reward 'iuo'" in bad(reward_funcs=["iou", "iuo"])


def test_import_paths_are_left_to_main():
    PerceptionScriptArguments(task="ocr", reward_funcs=["ocr", "my_package.rewards.length"])


def test_reward_kwargs_must_fit_the_rewards_they_name():
    assert "not in reward_funcs" in bad(reward_funcs=["ocr"], reward_kwargs={"iou": {"squared": True}})
    assert "reward 'iou'" in bad(reward_kwargs={"iou": {"sqared": True}})


def test_mappings_and_lists_may_come_as_json_strings():
    args = PerceptionScriptArguments(
        task="mixed",
        dataset_mixture='[{"task": "ocr"}, {"task": "counting", "num_samples": 3}]',
        reward_funcs=["iou"],
        reward_kwargs='{"iou": {"squared": true}}',
    )
    assert args.reward_kwargs == {"iou": {"squared": True}}
    assert args.dataset_mixture[1] == PerceptionDatasetConfig("counting", num_samples=3, seed=1)
    assert "must be a mapping" in bad(dataset_kwargs="[1, 2]")


def test_mixture_entries_become_dataset_configs_with_their_own_seeds():
    args = PerceptionScriptArguments(
        task="mixed", dataset_seed=10, reward_funcs=["ocr"],
        dataset_mixture=[{"task": "ocr"}, {"task": "detection", "source": "a/instances.json", "seed": 3}],
    )  # fmt: skip
    assert args.train_datasets() == [
        PerceptionDatasetConfig("ocr", "synthetic", seed=10),
        PerceptionDatasetConfig("detection", "a/instances.json", seed=3),
    ]


def test_mixtures_are_checked():
    assert "non-empty list" in bad(task="mixed")
    assert "unknown task 'segmentation'" in bad(task="mixed", dataset_mixture=[{"task": "segmentation"}])
    assert "sorce" in bad(task="mixed", dataset_mixture=[{"task": "ocr", "sorce": "x.json"}])
    assert "only read with task 'mixed'" in bad(task="ocr", dataset_mixture=[{"task": "ocr"}])
    assert "eval_source is not read" in bad(task="mixed", dataset_mixture=[{"task": "ocr"}], eval_source="x")


def test_one_task_is_one_dataset_config():
    args = PerceptionScriptArguments(task="counting", dataset_source="c.parquet", image_dir="img", num_samples=5,
                                     dataset_seed=2, dataset_kwargs={"min_count": 1}, reward_funcs=["count"])  # fmt: skip
    assert args.train_datasets() == [PerceptionDatasetConfig("counting", "c.parquet", None, "img", 5, 2, {"min_count": 1})]


def test_evaluation_needs_eval_source():
    assert "needs eval_source" in bad(evaluate_after_training=True)


def test_eval_images_default_to_the_train_folder_only_for_the_same_source():
    same = PerceptionScriptArguments(dataset_source="refcoco", image_dir="train2014", eval_source="refcoco",
                                     reward_funcs=["iou"])  # fmt: skip
    other = PerceptionScriptArguments(task="detection", dataset_source="a/instances_train2017.json",
                                      image_dir="a/train2017", eval_source="a/instances_val2017.json",
                                      reward_funcs=["detection"])  # fmt: skip
    assert same.eval_image_dir == "train2014"
    assert other.eval_image_dir is None  # the builder finds val2017/ next to the annotations


def test_dataset_config_builds_through_the_registry():
    rows = PerceptionDatasetConfig("counting", num_samples=3, seed=1, kwargs={"max_objects": 2}).build(
        box_format="qwen2_5_vl"
    )
    assert len(rows) == 3 and set(rows["task"]) == {"counting"} and set(rows["box_format"]) == {"qwen2_5_vl"}


def test_bad_arguments_stop_the_parse(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(DEMO.read_text().replace("reward_funcs: [detection, format]", "reward_funcs: [detection, iuo]"))
    with pytest.raises(ValueError, match="reward 'iuo'"):
        make_parser().parse_args_and_config(["--config", str(config)])


def test_main_fails_on_a_builder_option_before_loading_any_model(tmp_path):
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(DEMO), "--output_dir", str(tmp_path), "--box_format", "qwen2_5_vl",
         "--model_name_or_path", str(tmp_path / "no-such-model"), "--dataset_kwargs", '{"min_objcts": 2}']
    )  # fmt: skip
    with pytest.raises(TypeError, match="min_objcts"):
        grpo.main(script_args, training_args, model_args)


# --------------------------------------------------------------------------------------------------
# The script, copied out of the repository


def run_copied_script(folder: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Copy the script alone into `folder` (outside the repository) and run it there on the demo config."""
    folder.mkdir(parents=True, exist_ok=True)
    assert not str(folder.resolve()).startswith(str(ROOT))
    shutil.copy(SCRIPT, folder / "grpo.py")
    shutil.copy(DEMO, folder / "config.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(Path(trl_perception.__file__).parents[1])}  # the package under test  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "grpo.py", "--config", "config.yaml", "--disable_tqdm", "true", *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def card_inputs(out: Path) -> dict:
    return json.loads((out / "trl_perception_card.json").read_text())


@pytest.mark.slow
def test_copied_script_trains_the_demo_config(tmp_path):
    run_copied_script(tmp_path / "copy", "--output_dir", "run", "--max_steps", "2")
    out = tmp_path / "copy" / "run"
    # The model and its processor, reloadable with transformers.
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    # The card, written by the trainer.
    card = card_inputs(out)
    assert card["task"] == ["detection"] and card["dataset"] == ["synthetic"]
    assert card["reward_funcs"] == ["detection_reward", "format_reward"]
    assert card["box_format"] == "qwen2_5_vl"  # box_format: auto, read from the model
    assert card["training_args"]["max_steps"] == 2 and card["training_args"]["learning_rate"] == 1e-5
    assert card["peft"] is None
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "trl-perception" in readme
    assert "| detection_reward | 1.0 |" in readme and "| max_steps | 2 |" in readme
    assert "## Evaluation" in readme and "| detection/num_samples | 8 |" in readme
    # evaluate_after_training: predictions, metrics and report on the 8 held-out rows.
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["detection"]["num_samples"] == 8
    assert len((out / "eval" / "predictions.jsonl").read_text().splitlines()) == 8
    assert (out / "eval" / "report.md").is_file()
    assert card["eval_metrics"]["detection"]["num_samples"] == 8


@pytest.mark.slow
def test_copied_script_trains_a_lora_adapter_on_a_task_mixture(tmp_path):
    mixture = [{"task": "detection", "num_samples": 2}, {"task": "ocr", "num_samples": 2}]
    run_copied_script(
        tmp_path, "--output_dir", "lora", "--max_steps", "1", "--task", "mixed", "--dataset_mixture",
        json.dumps(mixture), "--dataset_kwargs", "{}", "--eval_source", "", "--evaluate_after_training", "false",
        "--reward_funcs", "detection", "ocr", "format", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_target_modules", "q_proj", "v_proj", "--max_completion_length", "8",
    )  # fmt: skip
    out = tmp_path / "lora"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter only
    assert not (out / "eval").exists()
    card = card_inputs(out)
    assert card["task"] == ["detection", "ocr"] and card["dataset"] == ["synthetic", "synthetic"]
    assert card["peft"]["method"] == "LoRA" and card["peft"]["r"] == 8
    assert card["eval_metrics"] is None
    readme = (out / "README.md").read_text()
    assert "library_name: peft" in readme and "- **Adapter:** LoRA" in readme


@pytest.mark.slow
def test_copied_script_trains_a_qlora_adapter(tmp_path):
    from trl_perception.testing import build_tiny_vlm

    # bitsandbytes' CPU inference kernel packs 4-bit weights in blocks of 64 inputs: every Linear's
    # in_features must be a multiple of 64, so widen the tiny vision tower (32 by default).
    model = build_tiny_vlm("qwen2_5_vl", tmp_path / "tiny64", vision_hidden_size=64)
    run_copied_script(
        tmp_path / "copy", "--model_name_or_path", model, "--output_dir", "qlora", "--max_steps", "2",
        "--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "all-linear",
        "--load_in_4bit", "true", "--max_completion_length", "16", "--num_samples", "8",
        "--eval_num_samples", "2", "--eval_max_new_tokens", "8",
    )  # fmt: skip
    out = tmp_path / "copy" / "qlora"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    card = card_inputs(out)
    assert card["peft"]["method"] == "QLoRA" and card["peft"]["quantization"] == "4-bit nf4"
    assert card["base_model"] == str(model)
    # The adapter was evaluated on top of the 4-bit model.
    assert json.loads((out / "eval" / "metrics.json").read_text())["metrics"]["detection"]["num_samples"] == 2
    assert "4-bit nf4" in (out / "README.md").read_text()


@pytest.mark.slow
def test_the_script_adds_the_answers_that_solution_in_group_injects(tmp_path):
    # Without a `completion` column the trainer refuses solution_in_group at construction; the script adds it.
    args = make_parser().parse_args_and_config(
        ["--config", str(DEMO), "--output_dir", str(tmp_path), "--solution_in_group", "1", "--max_steps", "1",
         "--num_samples", "4", "--max_completion_length", "8", "--evaluate_after_training", "false",
         "--object_order", "sorted", "--disable_tqdm", "true"]
    )  # fmt: skip
    summary = grpo.main(*args)
    assert summary["train"]["train_loss"] is not None and (tmp_path / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# A text-only GRPO stage (LMM-R1's first stage): rows without an image, judged by the answer reward


def test_the_answer_reward_scores_text_rows():
    from trl_perception.rewards import vqa_reward

    texts = ["\\boxed{2}", "<answer>3</answer>", "2 or 3", "<think>2</think>"]
    assert vqa_reward(texts, ["2"] * 4, task=["text"] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_text_rows_make_a_grpo_stage_of_their_own():
    with pytest.raises(ValueError, match="stage of their own"):
        PerceptionScriptArguments(task="mixed", reward_funcs=["vqa"], evaluate_after_training=False,
                                  dataset_mixture=[{"task": "text", "source": "t.jsonl"}, {"task": "ocr"}])  # fmt: skip


@pytest.mark.slow
def test_a_text_only_grpo_stage_then_multimodal_grpo(tmp_path, monkeypatch):
    from trl_perception.cli import main

    monkeypatch.chdir(ROOT)  # the demos' dataset_source is relative to the repository
    text_out, grpo_out = tmp_path / "text", tmp_path / "grpo"
    text_demo = ROOT / "recipes" / "demo" / "config_grpo_text_demo.yaml"
    assert main(["train", str(text_demo), "--output_dir", str(text_out), "--disable_tqdm", "true",
                 "--logging_steps", "1"]) == 0  # fmt: skip
    card = card_inputs(text_out)
    assert card["task"] == ["text"] and card["reward_funcs"] == ["vqa_reward"]
    assert main(["train", str(DEMO), "--model_name_or_path", str(text_out), "--output_dir", str(grpo_out),
                 "--max_steps", "1", "--max_completion_length", "8", "--num_samples", "4", "--eval_num_samples", "2",
                 "--eval_max_new_tokens", "8", "--disable_tqdm", "true"]) == 0  # fmt: skip
    assert card_inputs(grpo_out)["base_model"] == str(text_out)
