"""The Table 5 ablation recipes (`recipes/<Model>/grpo/config_<task>_{think,sequential}.yaml`): each parses
with the GRPO script's parser (`test_recipes.py` checks every YAML too) and differs from its task's recipe in
the ablated setting only."""

import re
from pathlib import Path

import pytest
import yaml

from trl_perception.data import build_dataset
from trl_perception.data.prompts import THINK_INSTRUCTION
from trl_perception.rewards import get_reward
from trl_perception.scripts.grpo import make_parser

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MODELS = ("Qwen2-VL-2B-Instruct", "Qwen2.5-VL-3B-Instruct", "Qwen3-VL-4B-Instruct")
THINK = sorted(RECIPES.glob("*/grpo/config_*_think.yaml"))
SEQUENTIAL = sorted(RECIPES.glob("*/grpo/config_*_sequential.yaml"))
# Keys a variant may change; everything else is its task recipe's.
THINK_KEYS = {"reward_funcs", "dataset_kwargs", "max_completion_length", "eval_max_new_tokens", "output_dir"}
SEQUENTIAL_KEYS = {"reward_funcs", "output_dir"}


def _parse(path):
    from transformers.utils import is_torch_bf16_gpu_available

    cpu = [] if is_torch_bf16_gpu_available() else ["--use_cpu", "true"]
    return make_parser().parse_args_and_config(["--config", str(path), *cpu])


def _base(path: Path) -> Path:
    return path.with_name(path.name.replace("_think", "").replace("_sequential", ""))


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _rel(path: Path) -> str:
    return path.relative_to(RECIPES).as_posix()


def test_every_model_has_the_table_5_variants():
    names = {_rel(p) for p in THINK + SEQUENTIAL}
    for model in MODELS:
        for task in ("grounding", "counting", "ocr", "detection"):
            assert f"{model}/grpo/config_{task}_think.yaml" in names
        for task in ("counting", "detection"):  # the paper's "w/o reward matching" row has PixMo and COCO only
            assert f"{model}/grpo/config_{task}_sequential.yaml" in names


@pytest.mark.parametrize("path", THINK, ids=_rel)
def test_thinking_variant_asks_for_thinking_and_pays_for_the_structure(path):
    script_args, training_args, _ = _parse(path)
    base_args, base_training, _ = _parse(_base(path))
    assert script_args.dataset_kwargs == {**base_args.dataset_kwargs, "think": True}
    assert script_args.reward_funcs == [*base_args.reward_funcs, "think_answer_format"]
    assert training_args.max_completion_length == 2048 and script_args.eval_max_new_tokens == 2048
    variant, base = _raw(path), _raw(_base(path))
    assert {k for k in variant.keys() | base.keys() if variant.get(k) != base.get(k)} <= THINK_KEYS
    # The evaluation rows are built with the same options, so they ask for thinking too.
    row = build_dataset(script_args.task, "synthetic", num_samples=1, box_format=training_args.box_format,
                        **script_args.dataset_kwargs)[0]  # fmt: skip
    assert row["prompt"][-1]["content"][-1]["text"].endswith(THINK_INSTRUCTION)


@pytest.mark.parametrize("path", SEQUENTIAL, ids=_rel)
def test_sequential_variant_swaps_the_matching_only(path):
    script_args, _, _ = _parse(path)
    base_args, _, _ = _parse(_base(path))
    assert script_args.reward_funcs == [
        f"{name}_sequential" if name in ("count", "detection") else name for name in base_args.reward_funcs
    ]
    rewards = [get_reward(name, **script_args.reward_kwargs.get(name, {})) for name in script_args.reward_funcs]
    assert [r.matching for r in rewards if hasattr(r, "matching")] == ["sequential"]
    variant, base = _raw(path), _raw(_base(path))
    assert {k for k in variant.keys() | base.keys() if variant.get(k) != base.get(k)} <= SEQUENTIAL_KEYS


def test_the_readme_table_5_map_names_existing_grpo_recipes():
    readme = (RECIPES.parent / "README.md").read_text()
    section = readme[readme.index("### Table 5 (ablations)") :]
    section = section[: section.index("\n## ")]
    cited = set(re.findall(r"recipes/\$M/grpo/config_[a-z_<>]+\.yaml", section))
    cited |= {f"recipes/$M/grpo/{name}" for name in re.findall(r"`(config_[a-z]+_sequential\.yaml)`", section)}
    assert cited
    for template in cited:
        tasks = ("grounding", "counting", "ocr", "detection") if "<task>" in template else ("",)
        for model in ("Qwen2-VL-2B-Instruct", "Qwen2.5-VL-3B-Instruct"):
            for task in tasks:
                path = RECIPES.parent / template.replace("$M", model).replace("<task>", task)
                if "_sequential" in path.name and task in ("grounding", "ocr"):
                    continue  # the paper's row has no grounding or OCR entry
                assert path.is_file(), path


@pytest.mark.slow
def test_the_script_trains_with_thinking_prompts_and_sequential_matching(tmp_path):
    import json

    from trl_perception.scripts import grpo

    demo = RECIPES / "demo" / "config_demo.yaml"
    args = grpo.make_parser().parse_args_and_config([
        "--config", str(demo), "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--task", "counting",
        "--dataset_kwargs", '{"think": true, "min_objects": 2, "max_objects": 3}',
        "--reward_funcs", "count_sequential", "format", "think_answer_format",
        "--evaluate_after_training", "false", "--eval_source", "", "--max_completion_length", "8",
        "--disable_tqdm", "true",
    ])  # fmt: skip
    result = grpo.main(*args)
    card = json.loads((tmp_path / "run" / "trl_perception_card.json").read_text())
    # TRL logs each reward under its own name, the sequential one apart from the Hungarian one.
    assert card["reward_funcs"] == ["count_sequential_reward", "format_reward", "think_answer_format_reward"]
    assert "train_runtime" in result["train"]
