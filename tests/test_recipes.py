"""Every GRPO YAML in `recipes/`: the configs parse with the GRPO script's parser (`trl_perception/scripts/grpo.py`)
and name only existing tasks, data forms and rewards; the paper configs carry the paper's hyperparameters; the
accelerate configs are valid. The script itself is specified in `test_script_grpo.py`."""

from pathlib import Path

import pytest
import yaml

from trl_perception.scripts.grpo import make_parser

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
# The GRPO recipes; the SFT ones (`sft/`, `demo/config_sft_*.yaml`) are specified in test_recipes_sft.py.
CONFIGS = sorted(
    p for p in RECIPES.rglob("config_*.yaml")
    if not {"accelerate_configs", "sft"} & set(p.relative_to(RECIPES).parts) and not p.name.startswith("config_sft")
)
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
# Forms of `dataset_source` each task's builder reads: "" is a folder.
SOURCE_FORMS = {
    "grounding": {"", ".p", ".parquet", ".json", ".jsonl"},
    "counting": {"", ".parquet", ".json", ".jsonl"},
    "ocr": {".json"},
    "detection": {".json"},
    "ovd": {".json", ".jsonl"},
    "jigsaw": {""},  # any image folder
    "vqa": {".json", ".jsonl"},
    "text": {".json", ".jsonl"},
}
# Look again (crop turns, after MGPO): recipe -> box format; the 3B one is a LoRA variant of the 7B one.
LOOK_AGAIN = {
    "Qwen2.5-VL-7B-Instruct/grpo/config_look_again.yaml": "qwen2_5_vl",
    "Qwen2.5-VL-3B-Instruct/grpo/config_look_again_lora.yaml": "qwen2_5_vl",
    "Qwen3-VL-4B-Instruct/grpo/config_look_again.yaml": "qwen3_vl",
}
LOOK_AGAIN_DEMO = RECIPES / "demo" / "config_look_again_demo.yaml"
PAPER_CONFIGS = {
    # Perception-R1's four released settings: config -> task, subset size,
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
    """Parse a recipe YAML as the GRPO script does. A fresh parser each time: TrlParser keeps a config's
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
    assert set(LOOK_AGAIN) | {"demo/config_look_again_demo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_recipe_parses_and_names_only_existing_things(path):
    from trl_perception.rewards import list_rewards

    script_args, training_args, model_args = parse(path)
    assert model_args.model_name_or_path
    assert training_args.box_format in ("auto", *BOX_FORMATS)
    assert script_args.task in (*TASKS, "ovd", "jigsaw", "vqa", "text", "mixed")

    if script_args.task == "mixed":
        entries = script_args.dataset_mixture
        assert isinstance(entries, list) and entries
        for entry in entries:  # PerceptionDatasetConfig: unknown keys were rejected when parsed
            assert entry.task in (*TASKS, "ovd")
            assert entry.source == "synthetic" or Path(entry.source).suffix in SOURCE_FORMS[entry.task], entry
        assert set(TASKS) <= {e.task for e in entries}
    else:
        for source in filter(None, (script_args.dataset_source, script_args.eval_source)):
            assert source == "synthetic" or Path(source).suffix in SOURCE_FORMS[script_args.task], source

    assert script_args.reward_funcs, "a run needs at least one reward"
    assert set(script_args.reward_funcs) <= set(list_rewards())
    # report_to names integrations transformers knows (installing them is the user's choice).
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(training_args.report_to) <= set(INTEGRATION_TO_CALLBACK)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parts[-3] in MODEL_FAMILY and rel(p) not in LOOK_AGAIN],
                         ids=rel)  # fmt: skip
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
    full_path = path.with_name(path.name.replace("_qlora", "").replace("_lora", ""))
    if rel(path) in LOOK_AGAIN:  # the look-again LoRA variant shrinks MGPO's 7B recipe
        full_path = RECIPES / "Qwen2.5-VL-7B-Instruct" / "grpo" / "config_look_again.yaml"
    full = raw(full_path)
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


@pytest.mark.parametrize("name", sorted(LOOK_AGAIN))
def test_look_again_recipes_carry_mgpos_setup(name):
    path = RECIPES / name
    script_args, training_args, model_args = parse(path)
    model = path.parts[-3]
    assert model_args.model_name_or_path == f"Qwen/{model}" and training_args.box_format == LOOK_AGAIN[name]
    # MGPO's run script: 8 rollouts, KL loss 0.01, lr 1e-6 (LoRA: larger), temperature 1, the answer reward only.
    assert training_args.num_generations == 8 and training_args.beta == 0.01 and training_args.temperature == 1.0
    assert training_args.learning_rate == (1e-5 if model_args.use_peft else 1e-6)
    assert script_args.task == "vqa" and script_args.reward_funcs == ["vqa"]
    # Two turns: one crop, resized to MGPO's sub-image limits (at most), the second turn always given.
    assert training_args.crop_turns == 1 and training_args.max_tool_calling_iterations == 1
    assert training_args.crop_forced
    assert training_args.crop_min_pixels == 200_704 and training_args.crop_max_pixels <= 1_003_520
    assert training_args.min_pixels == 200_704 and training_args.max_pixels <= 1_003_520
    # The completion holds the crop's image tokens: room for the largest crop and an answer.
    assert training_args.max_completion_length >= training_args.crop_max_pixels // 784 + 512
    assert Path(script_args.dataset_source).suffix == ".jsonl" and script_args.eval_source.endswith(
        "vstar_bench/test_questions.jsonl"
    )
    assert training_args.bf16 and model_args.dtype == "bfloat16" and training_args.remove_unused_columns is False
    suffix = path.stem.replace("config_", "").replace("_", "-")
    assert training_args.output_dir == f"outputs/{model}-GRPO-{suffix}"


def test_look_again_demo_is_a_cpu_smoke_run():
    script_args, training_args, model_args = parse(LOOK_AGAIN_DEMO)
    assert model_args.model_name_or_path == "tiny:qwen3_vl"  # Qwen3-VL's own template calls tools
    assert training_args.use_cpu and not training_args.bf16 and not training_args.use_vllm
    assert training_args.crop_turns == 1 and script_args.task == "vqa" and script_args.reward_funcs == ["vqa"]
    assert script_args.dataset_source == "synthetic" and script_args.eval_source == "synthetic"
    assert training_args.crop_max_pixels <= training_args.max_pixels


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
    assert script_args.reward_kwargs == {"iou": {"squared": True}}  # JSON on the command line
    assert script_args.dataset_kwargs == {"min_objects": 1}
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


def test_the_jigsaw_demo_builds_a_curriculum_dataset_and_its_callback():
    from trl_perception.callbacks import JigsawCurriculumCallback
    from trl_perception.data import build_dataset
    from trl_perception.scripts.grpo import curriculum_callbacks

    train = build_dataset("jigsaw", "synthetic", num_samples=4, seed=0, curriculum=[[0, [2, 1]], [2, [2, 2]]])
    assert len(train) == 4 and train[0]["task"] == "jigsaw" and train[0]["grid"] == [2, 1]
    (callback,) = curriculum_callbacks(train)
    assert isinstance(callback, JigsawCurriculumCallback) and callback.curriculum.grid_at(2) == (2, 2)
