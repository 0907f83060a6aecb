"""Every SFT YAML in `recipes/` (`<Model>/sft/config_<task>[_lora].yaml`, `demo/config_sft_demo.yaml`): each parses
into the SFT script's dataclasses (`trl_perception/scripts/sft.py`), names only existing tasks and data forms, and
reads the same data, pixels and evaluation as the GRPO recipe it is stage 1 of (Table 5's "SFT+RL"). The script
itself is specified in `test_script_sft.py`."""

from pathlib import Path

import pytest
import yaml

from trl_perception.scripts import grpo, sft

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SFT_CONFIGS = sorted(RECIPES.glob("*/sft/config_*.yaml"))
DEMO = RECIPES / "demo" / "config_sft_demo.yaml"
TEXT_DEMO = RECIPES / "demo" / "config_sft_text_demo.yaml"
MODELS = {"Qwen2-VL-2B-Instruct": "qwen2_vl", "Qwen2.5-VL-3B-Instruct": "qwen2_5_vl", "Qwen3-VL-4B-Instruct": "qwen3_vl"}
TASKS = ("grounding", "counting", "ocr", "detection")
# What the SFT stage must share with its GRPO stage: the same rows, in the same frame, evaluated the same way.
SHARED_KEYS = ("model_name_or_path", "box_format", "min_pixels", "max_pixels", "task", "dataset_source", "dataset_split",
               "image_dir", "num_samples", "dataset_seed", "eval_source", "eval_split", "eval_image_dir",
               "lora_r", "lora_alpha", "lora_target_modules")  # fmt: skip


def _cpu_overrides() -> list[str]:
    from transformers.utils import is_torch_bf16_gpu_available

    return [] if is_torch_bf16_gpu_available() else ["--use_cpu", "true"]


def parse(path, *extra):
    """Parse a recipe as the SFT script does (a fresh parser: TrlParser keeps a config's values as defaults)."""
    return sft.make_parser().parse_args_and_config(["--config", str(path), *_cpu_overrides(), *extra])


def rel(path: Path) -> str:
    return path.relative_to(RECIPES).as_posix()


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def grpo_stage(path: Path) -> Path:
    """The GRPO recipe an SFT recipe is stage 1 of: same folder name under grpo/, same file name."""
    return path.parents[1] / "grpo" / path.name


def test_the_sft_recipe_set_is_complete():
    names = {rel(p) for p in SFT_CONFIGS}
    for model in MODELS:
        for task in TASKS:
            assert f"{model}/sft/config_{task}.yaml" in names
    for task in TASKS:
        assert f"Qwen2.5-VL-3B-Instruct/sft/config_{task}_lora.yaml" in names


@pytest.mark.parametrize("path", [*SFT_CONFIGS, DEMO, TEXT_DEMO], ids=rel)
def test_sft_recipe_parses_into_the_script_dataclasses(path):
    from trl_perception.scripts.arguments import PerceptionSFTScriptArguments
    from trl_perception.trainer import PerceptionSFTConfig

    script_args, training_args, model_args = parse(path)
    assert isinstance(script_args, PerceptionSFTScriptArguments) and isinstance(training_args, PerceptionSFTConfig)
    assert script_args.task in (*TASKS, "text") and model_args.model_name_or_path
    assert training_args.max_length is None  # no truncation through image tokens or answers
    assert training_args.completion_only_loss in (None, True)  # None: TRL turns it on for prompt-completion rows
    assert not training_args.assistant_only_loss and not training_args.packing
    assert training_args.dataset_kwargs is None  # dataset_kwargs in the YAML are the builder's options
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(training_args.report_to) <= set(INTEGRATION_TO_CALLBACK)


@pytest.mark.parametrize("path", SFT_CONFIGS, ids=rel)
def test_sft_recipe_matches_its_folder_and_its_grpo_stage(path):
    model = path.parts[-3]
    script_args, training_args, model_args = parse(path)
    assert model_args.model_name_or_path == f"Qwen/{model}"
    assert training_args.box_format == MODELS[model]
    assert script_args.task in path.stem
    assert training_args.bf16 and model_args.dtype == "bfloat16" and training_args.gradient_checkpointing
    assert training_args.output_dir == f"outputs/{model}-SFT-{path.stem.replace('config_', '').replace('_', '-')}"
    assert script_args.evaluate_after_training and script_args.eval_source
    assert training_args.num_train_epochs == 1 and training_args.max_steps == -1
    # The SFT stage trains on the GRPO recipe's rows, in its frame, and is evaluated as it is.
    stage2 = raw(grpo_stage(path))
    for key in SHARED_KEYS:
        assert raw(path).get(key) == stage2.get(key), key
    assert script_args.eval_max_new_tokens == stage2["max_completion_length"]
    # The GRPO stage parses with its own script, starting from this output (the README's second command).
    grpo_args = grpo.make_parser().parse_args_and_config(
        ["--config", str(grpo_stage(path)), *_cpu_overrides(), "--model_name_or_path", training_args.output_dir]
    )
    assert grpo_args[2].model_name_or_path == training_args.output_dir
    # The header shows both commands.
    text = path.read_text()
    assert f"trl-perception sft {path.relative_to(ROOT).as_posix()}" in text
    assert f"trl-perception train {grpo_stage(path).relative_to(ROOT).as_posix()}" in text
    assert f"--model_name_or_path {training_args.output_dir}" in text


@pytest.mark.parametrize("path", [p for p in SFT_CONFIGS if p.stem.endswith("_lora")], ids=rel)
def test_lora_recipes_merge_for_the_grpo_stage(path):
    script_args, training_args, model_args = parse(path)
    assert model_args.use_peft and model_args.lora_r > 0 and not model_args.load_in_4bit
    assert script_args.merge_lora  # the GRPO stage then loads a plain checkpoint


def test_the_demo_is_a_cpu_smoke_run():
    script_args, training_args, model_args = parse(DEMO)
    assert model_args.model_name_or_path == "tiny:qwen2_5_vl"
    assert training_args.use_cpu and not training_args.bf16 and training_args.report_to == []
    assert script_args.dataset_source == "synthetic" and script_args.eval_source == "synthetic"
    # It trains on the GRPO demo's data, in its frame: `trl-perception train config_demo.yaml` continues it.
    grpo_demo = raw(RECIPES / "demo" / "config_demo.yaml")
    for key in ("min_pixels", "max_pixels", "task", "dataset_source", "num_samples", "dataset_kwargs", "eval_source"):
        assert raw(DEMO)[key] == grpo_demo[key], key


def test_unknown_yaml_keys_are_rejected(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(DEMO.read_text() + "merge_lroa: true\n")
    with pytest.raises(ValueError, match="merge_lroa"):
        parse(config)


def test_the_text_demo_is_a_text_only_stage():
    script_args, training_args, model_args = parse(TEXT_DEMO)
    assert script_args.task == "text" and not script_args.eval_source
    assert (ROOT / script_args.dataset_source).is_file()
    assert training_args.use_cpu and model_args.model_name_or_path == "tiny:qwen2_5_vl"
