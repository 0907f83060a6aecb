"""The recipe (`recipes/grpo.py`, `trl_perception.recipe`) and every YAML in `recipes/`: configs parse with
TrlParser and name only existing tasks, data forms, builder options and rewards; the paper configs carry the
paper's hyperparameters; the accelerate configs are valid; the script trains end to end (full, LoRA, QLoRA)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_perception.recipe import (
    DEFAULT_REWARDS,
    PerceptionScriptArguments,
    build_datasets,
    build_rewards,
    check_script_args,
    make_parser,
    reward_names,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
CONFIGS = sorted(p for p in RECIPES.rglob("config_*.yaml") if "accelerate_configs" not in p.parts)
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))
DEMO = RECIPES / "demo" / "config_demo.yaml"

TASKS = ("grounding", "counting", "ocr", "detection")
BOX_FORMATS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# The folder a recipe lives in names its base model, whose family fixes the box format.
MODEL_FAMILY = {
    "Qwen2-VL-2B-Instruct": "qwen2_vl",
    "Qwen2.5-VL-3B-Instruct": "qwen2_5_vl",
    "Qwen3-VL-4B-Instruct": "qwen3_vl",
}
# Forms of `dataset_source` each task's builder reads (data.common.build_from_source): "" is a folder.
SOURCE_FORMS = {
    "grounding": {"", ".p", ".parquet", ".json", ".jsonl"},
    "counting": {"", ".parquet", ".json", ".jsonl"},
    "ocr": {".json"},
    "detection": {".json"},
    "jigsaw": {""},  # any image folder
}
PAPER_CONFIGS = {
    # Perception-R1's four released settings (docs: perception-r1.md §2): config -> task, subset size,
    # rewards, max completion length of the released scripts.
    "Qwen2-VL-2B-Instruct/grpo/config_grounding.yaml": ("grounding", 5000, ["iou", "format"], 768),
    "Qwen2-VL-2B-Instruct/grpo/config_counting.yaml": ("counting", 10000, ["count", "format"], 768),
    "Qwen2-VL-2B-Instruct/grpo/config_ocr.yaml": ("ocr", 5000, ["ocr"], 2048),
    "Qwen2.5-VL-3B-Instruct/grpo/config_detection.yaml": ("detection", None, ["detection"], 2048),
}


def _cpu_overrides() -> list[str]:
    """bf16 configs only validate on a bf16 GPU; elsewhere parse them as CPU runs (nothing else changes)."""
    from transformers.utils import is_torch_bf16_gpu_available

    return [] if is_torch_bf16_gpu_available() else ["--use_cpu", "true"]


def parse(path, *extra):
    """Parse a recipe YAML as `recipes/grpo.py` does. A fresh parser each time: TrlParser keeps a config's
    values as defaults, so reusing one would leak keys between configs."""
    return make_parser().parse_args_and_config(["--config", str(path), *_cpu_overrides(), *extra])


def rel(path: Path) -> str:
    return path.relative_to(RECIPES).as_posix()


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------------------------------
# Every recipe YAML


def test_the_recipe_set_is_complete():
    names = {rel(p) for p in CONFIGS}
    for model in MODEL_FAMILY:
        for task in TASKS:
            assert f"{model}/grpo/config_{task}.yaml" in names
    for task in TASKS:
        for variant in ("lora", "qlora"):
            assert f"Qwen2.5-VL-3B-Instruct/grpo/config_{task}_{variant}.yaml" in names
    assert "Qwen2.5-VL-3B-Instruct/grpo/config_mixed.yaml" in names
    assert "demo/config_demo.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_recipe_parses_and_names_only_existing_things(path):
    from trl_perception.rewards import list_rewards

    script_args, training_args, model_args = parse(path)
    assert model_args.model_name_or_path
    assert training_args.box_format in ("auto", *BOX_FORMATS)
    assert script_args.task in (*TASKS, "jigsaw", "mixed")

    if script_args.task == "mixed":
        entries = script_args.dataset_mixture
        assert isinstance(entries, list) and entries
        for entry in entries:
            assert set(entry) <= {"task", "source", "split", "image_dir", "num_samples", "seed", "kwargs"}
            assert entry["task"] in TASKS
            source = entry["source"]
            assert source == "synthetic" or Path(source).suffix in SOURCE_FORMS[entry["task"]], entry
        assert {e["task"] for e in entries} == set(TASKS)
    else:
        for source in filter(None, (script_args.dataset_source, script_args.eval_source)):
            assert source == "synthetic" or Path(source).suffix in SOURCE_FORMS[script_args.task], source

    names = reward_names(script_args)
    assert names, "a run needs at least one reward"
    assert set(names) <= set(list_rewards())
    # The whole check the recipe runs before loading a model: builder options, reward parameters, ...
    check_script_args(script_args)
    # report_to names integrations transformers knows (installing them is the user's choice).
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(training_args.report_to) <= set(INTEGRATION_TO_CALLBACK)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parts[-3] in MODEL_FAMILY], ids=rel)
def test_model_recipe_matches_its_folder(path):
    model = path.parts[-3]
    script_args, training_args, model_args = parse(path)
    assert model_args.model_name_or_path == f"Qwen/{model}"
    assert training_args.box_format == MODEL_FAMILY[model]
    assert script_args.task in path.stem  # config_<task>[_lora|_qlora].yaml
    assert training_args.bf16 and model_args.dtype == "bfloat16"
    assert training_args.num_generations == 8
    assert training_args.temperature == 1.0 and training_args.beta == 0.04
    assert training_args.min_pixels <= training_args.max_pixels <= 1_000_000
    assert training_args.output_dir == f"outputs/{model}-GRPO-{path.stem.replace('config_', '').replace('_', '-')}"
    assert training_args.remove_unused_columns is False  # the rewards read solution, task, image_size, ...


def test_output_dirs_are_distinct():
    dirs = [raw(p)["output_dir"] for p in CONFIGS]
    assert len(dirs) == len(set(dirs))


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_carry_the_paper_hyperparameters(name):
    task, num_samples, rewards, max_completion_length = PAPER_CONFIGS[name]
    script_args, training_args, model_args = parse(RECIPES / name)
    # §4.3 / Table in §4.3: lr 1e-6, 8 rollouts, batch size 1 prompt (x 8 rollouts), grad-acc 2, KL 0.04,
    # temperature 1.0; the released scripts: max_pixels 1e6 (min 3136), 1 epoch, bf16.
    assert training_args.learning_rate == 1e-6
    assert training_args.num_generations == 8
    assert training_args.per_device_train_batch_size == 8
    assert training_args.gradient_accumulation_steps == 2
    assert training_args.beta == 0.04
    assert training_args.temperature == 1.0
    assert training_args.max_pixels == 1_000_000 and training_args.min_pixels == 3136
    assert training_args.num_train_epochs == 1 and training_args.max_steps == -1
    assert training_args.loss_type == "grpo" and training_args.num_iterations == 1
    assert training_args.max_completion_length == max_completion_length
    assert training_args.bf16 and training_args.gradient_checkpointing
    # Full fine-tuning of the whole model, as the paper.
    assert not model_args.use_peft and not model_args.load_in_4bit
    # Table 7 subsets and the task's rewards.
    assert script_args.task == task
    assert script_args.num_samples == num_samples
    assert script_args.reward_funcs == rewards
    assert script_args.evaluate_after_training and script_args.eval_source


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith(("_lora", "_qlora"))], ids=rel)
def test_adapter_variants(path):
    script_args, training_args, model_args = parse(path)
    assert model_args.use_peft
    assert model_args.lora_r > 0 and model_args.lora_alpha > 0
    assert model_args.load_in_4bit == path.stem.endswith("_qlora")
    assert training_args.use_vllm is False  # sized for one 24 GB GPU with HF generate
    # Apart from the adapter set-up and the pixel budget, the variant trains like its full recipe.
    full = raw(path.with_name(path.name.replace("_qlora", "").replace("_lora", "")))
    variant = raw(path)
    for key in ("task", "dataset_source", "image_dir", "num_samples", "reward_funcs", "box_format"):
        assert variant.get(key) == full.get(key), key


def test_demo_config_is_a_cpu_smoke_run():
    script_args, training_args, model_args = parse(DEMO)
    assert model_args.model_name_or_path == "tiny:qwen2_5_vl"
    assert training_args.use_cpu and not training_args.bf16
    assert script_args.dataset_source == "synthetic" and script_args.eval_source == "synthetic"
    assert training_args.report_to == []
    assert not training_args.use_vllm


def test_unknown_yaml_keys_are_rejected(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(DEMO.read_text() + "learnin_rate: 1.0e-5\n")
    with pytest.raises(ValueError, match="learnin_rate"):
        parse(config)


def test_command_line_overrides_yaml_keys():
    script_args, training_args, model_args = parse(
        DEMO,
        "--learning_rate", "3e-5",
        "--task", "grounding",
        "--reward_funcs", "iou", "format",
        "--reward_kwargs", '{"iou": {"squared": true}}',
        "--dataset_kwargs", '{"min_objects": 1}',
        "--use_peft", "true",
        "--lora_target_modules", "q_proj", "v_proj",
    )  # fmt: skip
    assert training_args.learning_rate == 3e-5
    assert script_args.task == "grounding"
    assert script_args.reward_funcs == ["iou", "format"]
    assert [f.__name__ for f in build_rewards(script_args)] == ["iou_squared_reward", "format_reward"]
    assert model_args.use_peft and model_args.lora_target_modules == ["q_proj", "v_proj"]
    assert training_args.max_pixels == 12544  # untouched keys keep the YAML's values


# --------------------------------------------------------------------------------------------------
# Accelerate configs


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_is_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType
    from accelerate.utils.constants import FSDP2_STATE_DICT_TYPE, FSDP_AUTO_WRAP_POLICY

    config = load_config_from_file(str(path))  # raises on keys accelerate does not know
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type in (DistributedType.MULTI_GPU, DistributedType.DEEPSPEED, DistributedType.FSDP)
    assert config.mixed_precision == "bf16" and not config.use_cpu
    assert config.num_machines == 1 and config.num_processes == 8  # Perception-R1 trained on 8 GPUs
    # `accelerate launch` copies nested keys onto its own options: each must be one of them.
    options = {action.dest for action in launch_command_parser()._actions}
    nested = {**(config.deepspeed_config or {}), **(config.fsdp_config or {})}
    assert set(nested) <= options, sorted(set(nested) - options)
    if config.distributed_type == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["zero_stage"] in (2, 3)
    if config.distributed_type == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_auto_wrap_policy"] in FSDP_AUTO_WRAP_POLICY
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] in FSDP2_STATE_DICT_TYPE


def test_zero3_saves_whole_weights():
    # The recipe evaluates and pushes the saved folder: ZeRO-3 must gather a full 16-bit model when saving.
    assert raw(RECIPES / "accelerate_configs" / "zero3.yaml")["deepspeed_config"]["zero3_save_16bit_model"]


# --------------------------------------------------------------------------------------------------
# check_script_args, reward_names, build_rewards, build_datasets


def bad(**kwargs):
    with pytest.raises(ValueError) as info:
        check_script_args(PerceptionScriptArguments(**kwargs))
    return str(info.value)


def test_check_accepts_every_task_on_synthetic_data():
    for task in TASKS:
        check_script_args(PerceptionScriptArguments(task=task, dataset_source="synthetic", eval_source="synthetic"))


def test_check_rejects_an_unknown_task():
    assert "unknown task 'segmentation'" in bad(task="segmentation")


def test_check_rejects_an_unregistered_reward():
    message = bad(task="grounding", reward_funcs=["iou", "iuo"])
    assert "reward 'iuo' is not registered" in message and "iou_squared" in message


def test_check_accepts_import_paths_for_rewards():
    check_script_args(PerceptionScriptArguments(task="ocr", reward_funcs=["ocr", "my_package.rewards.length"]))


def test_check_rejects_reward_kwargs_of_unused_or_wrong_parameters():
    assert "does not use" in bad(task="ocr", reward_kwargs={"iou": {"squared": True}})
    assert "reward_kwargs for 'iou'" in bad(task="grounding", reward_kwargs={"iou": {"sqared": True}})


def test_check_rejects_sources_no_builder_reads():
    assert "the ocr builders read *.json" in bad(task="ocr", dataset_source="pages.parquet")
    assert "the detection builders read *.json" in bad(task="detection", dataset_source="coco/train2017")
    assert "eval_source" in bad(task="counting", eval_source="counts.csv")


def test_check_does_not_need_the_files():
    check_script_args(
        PerceptionScriptArguments(task="detection", dataset_source="nowhere/instances_train2017.json",
                                  image_dir="nowhere/train2017", eval_source="nowhere/instances_val2017.json")
    )  # fmt: skip


def test_check_rejects_unknown_builder_options():
    message = bad(task="detection", dataset_source="instances.json", dataset_kwargs={"include_crwd": True})
    assert "include_crwd" in message and "include_crowd" in message
    assert "min_objcts" in bad(task="counting", dataset_kwargs={"min_objcts": 2})
    check_script_args(PerceptionScriptArguments(task="counting", dataset_kwargs={"min_objects": 2}))


def test_check_rejects_split_or_image_dir_where_the_source_takes_none():
    assert "synthetic source takes no split" in bad(task="grounding", dataset_split="val")
    assert "one file" in bad(task="ocr", dataset_source="fox.json", dataset_split="val")


def test_check_of_mixtures():
    good = [{"task": "ocr", "source": "synthetic"}, {"task": "detection", "source": "coco/instances.json"}]
    check_script_args(PerceptionScriptArguments(task="mixed", dataset_mixture=good))
    check_script_args(PerceptionScriptArguments(task="mixed", dataset_mixture=json.dumps(good)))
    assert "non-empty list" in bad(task="mixed", dataset_mixture=None)
    assert "dataset_mixture[1]: unknown task 'segmentation'" in bad(
        task="mixed", dataset_mixture=[good[0], {"task": "segmentation", "source": "synthetic"}]
    )
    assert "unknown key(s) ['sorce']" in bad(task="mixed", dataset_mixture=[{"task": "ocr", "sorce": "x.json"}])
    assert "only read with task 'mixed'" in bad(task="ocr", dataset_mixture=good)
    assert "eval_source is not read" in bad(task="mixed", dataset_mixture=good, eval_source="synthetic")


def test_reward_names_default_to_the_papers():
    for task in TASKS:
        assert reward_names(PerceptionScriptArguments(task=task)) == DEFAULT_REWARDS[task]
    mixture = [{"task": "ocr", "source": "synthetic"}, {"task": "grounding", "source": "synthetic"}]
    assert reward_names(PerceptionScriptArguments(task="mixed", dataset_mixture=mixture)) == ["format", "iou", "ocr"]


def test_build_rewards_binds_parameters_of_import_paths():
    funcs = build_rewards(
        PerceptionScriptArguments(
            task="ocr",
            reward_funcs=["ocr", "trl_perception.rewards.iou_reward"],
            reward_kwargs={"trl_perception.rewards.iou_reward": {"squared": True}},
        )
    )
    assert [f.__name__ for f in funcs] == ["ocr_reward", "iou_reward"]
    assert funcs[1].keywords == {"squared": True}


def test_build_datasets_mixes_tasks_with_json_solutions():
    from types import SimpleNamespace

    mixture = [
        {"task": "ocr", "source": "synthetic", "num_samples": 2},
        {"task": "detection", "source": "synthetic", "num_samples": 3, "kwargs": {"max_objects": 2}},
    ]
    args = PerceptionScriptArguments(task="mixed", dataset_mixture=mixture)
    train, evaluation = build_datasets(args, SimpleNamespace(min_pixels=784, max_pixels=12544), "qwen2_5_vl")
    assert evaluation is None
    assert sorted(train["task"]) == ["detection"] * 3 + ["ocr"] * 2
    for row in train:
        solution = json.loads(row["solution"])
        assert isinstance(solution, str if row["task"] == "ocr" else list)
        assert row["image"].size[0] * row["image"].size[1] <= 12544


def test_build_datasets_eval_split_of_synthetic_data_differs_from_train():
    from types import SimpleNamespace

    args = PerceptionScriptArguments(task="grounding", num_samples=4, eval_source="synthetic", eval_num_samples=4)
    train, evaluation = build_datasets(args, SimpleNamespace(min_pixels=None, max_pixels=None), None)
    assert train["solution"] != evaluation["solution"]


def test_eval_images_default_to_the_train_folder_only_for_the_same_source():
    from trl_perception.recipe import _eval_image_dir

    same = PerceptionScriptArguments(dataset_source="refcoco", image_dir="train2014", eval_source="refcoco")
    other = PerceptionScriptArguments(
        task="detection", dataset_source="a/instances_train2017.json", image_dir="a/train2017",
        eval_source="a/instances_val2017.json",
    )  # fmt: skip
    assert _eval_image_dir(same) == "train2014"
    assert _eval_image_dir(other) is None  # build_from_source finds val2017/ next to the annotations
    other.eval_image_dir = "b/val2017"
    assert _eval_image_dir(other) == "b/val2017"


def test_main_stops_before_loading_a_model_on_bad_arguments(tmp_path):
    from trl_perception.recipe import main

    script_args, training_args, model_args = parse(DEMO, "--output_dir", str(tmp_path), "--reward_funcs", "iuo")
    model_args.model_name_or_path = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="'iuo' is not registered"):
        main(script_args, training_args, model_args)
    _, training_args, _ = parse(DEMO, "--output_dir", str(tmp_path), "--report_to", "no_such_integration_x")
    script_args, _, model_args = parse(DEMO)
    model_args.model_name_or_path = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match=r"report_to names \['no_such_integration_x'\]"):
        main(script_args, training_args, model_args)


# --------------------------------------------------------------------------------------------------
# End to end: recipes/grpo.py in a subprocess


def run_recipe(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(RECIPES / "grpo.py"), "--config", str(DEMO), "--disable_tqdm", "true", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def card_json(out: Path) -> dict:
    return json.loads((out / "trl_perception_card.json").read_text())


@pytest.mark.slow
def test_recipe_script_trains_the_demo_config(tmp_path):
    out = tmp_path / "run"
    run_recipe("--output_dir", str(out), "--max_steps", "2")
    # The model and its processor, reloadable with transformers.
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    # The card and its inputs.
    card = card_json(out)
    assert card["base_model"] == "tiny:qwen2_5_vl"
    assert card["task"] == ["detection"] and card["dataset"] == ["synthetic"]
    assert card["reward_funcs"] == ["detection", "format"]
    assert card["box_format"] == "qwen2_5_vl"  # box_format: auto, read from the model
    assert card["training_args"]["max_steps"] == 2 and card["training_args"]["learning_rate"] == 1e-5
    assert card["peft"] is None
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "trl-perception" in readme
    assert "| detection | 1.0 |" in readme and "| max_steps | 2 |" in readme
    assert "## Evaluation" in readme and "| detection/num_samples | 8 |" in readme
    # evaluate_after_training: predictions, metrics and report on the 8 held-out rows.
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["detection"]["num_samples"] == 8
    assert len((out / "eval" / "predictions.jsonl").read_text().splitlines()) == 8
    assert (out / "eval" / "report.md").is_file()
    assert card["eval_metrics"]["detection"]["num_samples"] == 8


@pytest.mark.slow
def test_recipe_script_trains_a_lora_adapter(tmp_path):
    out = tmp_path / "lora"
    run_recipe(
        "--output_dir", str(out), "--max_steps", "2",
        "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
        "--evaluate_after_training", "false", "--max_completion_length", "16",
    )  # fmt: skip
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter only
    assert not (out / "eval").exists()
    card = card_json(out)
    assert card["peft"]["method"] == "LoRA" and card["peft"]["r"] == 8
    assert card["eval_metrics"] is None
    readme = (out / "README.md").read_text()
    assert "library_name: peft" in readme and "- **Adapter:** LoRA" in readme


@pytest.mark.slow
def test_recipe_script_trains_a_qlora_adapter(tmp_path):
    from trl_perception.testing import build_tiny_vlm

    # bitsandbytes' CPU inference kernel packs 4-bit weights in blocks of 64 inputs: every Linear's
    # in_features must be a multiple of 64, so widen the tiny vision tower (32 by default).
    model = build_tiny_vlm("qwen2_5_vl", tmp_path / "tiny64", vision_hidden_size=64)
    out = tmp_path / "qlora"
    run_recipe(
        "--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "2",
        "--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "all-linear",
        "--load_in_4bit", "true", "--max_completion_length", "16", "--num_samples", "8",
        "--eval_num_samples", "2", "--eval_max_new_tokens", "8",
    )  # fmt: skip
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    card = card_json(out)
    assert card["peft"]["method"] == "QLoRA" and card["peft"]["quantization"] == "4-bit nf4"
    assert card["base_model"] == model
    # The adapter was evaluated on top of the 4-bit model.
    assert json.loads((out / "eval" / "metrics.json").read_text())["metrics"]["detection"]["num_samples"] == 2
    assert "4-bit nf4" in (out / "README.md").read_text()


def test_the_jigsaw_recipes_exist_and_follow_jigsaw_r1():
    names = {rel(p) for p in CONFIGS}
    assert {"Qwen2.5-VL-3B-Instruct/grpo/config_jigsaw.yaml", "Qwen2.5-VL-3B-Instruct/grpo/config_jigsaw_lora.yaml",
            "demo/config_jigsaw_demo.yaml"} <= names  # fmt: skip
    script_args, training_args, _ = parse(RECIPES / "Qwen2.5-VL-3B-Instruct" / "grpo" / "config_jigsaw.yaml")
    assert (training_args.learning_rate, training_args.beta, training_args.num_generations) == (1e-6, 0.04, 8)
    assert training_args.per_device_train_batch_size * 8 * training_args.gradient_accumulation_steps == 64 * 8
    assert training_args.max_steps == 2000 and training_args.reward_weights == [1.0, 0.5]
    assert reward_names(script_args) == ["jigsaw", "jigsaw_format"]


def test_the_jigsaw_demo_builds_a_curriculum_dataset_and_its_callback():
    from types import SimpleNamespace

    from trl_perception.callbacks import JigsawCurriculumCallback
    from trl_perception.recipe import _curriculum_callbacks, build_datasets

    script_args, _, _ = parse(DEMO.parent / "config_jigsaw_demo.yaml")
    train, _ = build_datasets(script_args, SimpleNamespace(min_pixels=None, max_pixels=None), None)
    assert len(train) == 16 and train[0]["task"] == "jigsaw" and train[0]["grid"] == [2, 1]
    (callback,) = _curriculum_callbacks(train)
    assert isinstance(callback, JigsawCurriculumCallback) and callback.curriculum.grid_at(2) == (2, 2)
