"""The open-vocabulary detection recipes carry VLM-R1's hyperparameters and build their rows."""

from pathlib import Path

import pytest

from tests.test_recipes import parse
from trl_perception.scripts.grpo import PerceptionScriptArguments

GRPO = Path(__file__).resolve().parents[1] / "recipes" / "Qwen2.5-VL-3B-Instruct" / "grpo"


@pytest.mark.parametrize("name", ["config_ovd.yaml", "config_ovd_lora.yaml"])
def test_ovd_recipes_use_vlm_r1s_hyperparameters(name):
    script_args, training_args, model_args = parse(GRPO / name)
    assert script_args.task == "ovd"
    assert training_args.num_generations == 8 and training_args.beta == 0.04
    assert training_args.per_device_train_batch_size == 8 and training_args.gradient_accumulation_steps == 2
    assert training_args.num_train_epochs == 2 and training_args.max_completion_length == 2048
    assert "od_length" in script_args.reward_funcs
    assert model_args.use_peft == name.endswith("_lora.yaml")


def test_mixed_ovd_recipe_adds_ovd_to_the_papers_tasks():
    script_args, _, _ = parse(GRPO / "config_mixed_ovd.yaml")
    tasks = {entry.task for entry in script_args.dataset_mixture}
    assert tasks == {"grounding", "counting", "ocr", "detection", "ovd"}
    assert {"od_length", "detection", "iou"} <= set(script_args.reward_funcs)


def test_ovd_task_builds_synthetic_rows_through_the_script_arguments():
    args = PerceptionScriptArguments(task="ovd", num_samples=3, reward_funcs=["od_length"])
    (entry,) = args.train_datasets()
    train = entry.build(box_format="qwen2_5_vl")
    assert len(train) == 3 and set(train["task"]) == {"ovd"}
