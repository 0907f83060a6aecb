"""The SFT script `trl_perception/scripts/sft.py` and `PerceptionSFTTrainer`: the loss is on the answer tokens only
for every family; copied alone into an empty folder outside the repository the script trains the demo config (full
model, LoRA merged into the weights, QLoRA); a merged model computes what base + adapter computed; SFT (LoRA, merged)
then GRPO (LoRA) runs end to end through the documented commands."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trl_perception
from tests._helpers import CPU_RUN
from trl_perception.frames import BOX_FORMATS
from trl_perception.scripts import sft
from trl_perception.scripts.arguments import PerceptionSFTScriptArguments
from trl_perception.scripts.sft import make_parser
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionSFTConfig, PerceptionSFTTrainer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "trl_perception" / "scripts" / "sft.py"
DEMO = ROOT / "recipes" / "demo" / "config_sft_demo.yaml"
GRPO_DEMO = ROOT / "recipes" / "demo" / "config_demo.yaml"
PIXELS = {"min_pixels": 32 * 32, "max_pixels": 64 * 64}  # a few image tokens in every family (Qwen3-VL: 32 px patches)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def sft_trainer(box_format, tmp_path, tasks=("grounding", "counting", "detection", "ocr"), **settings):
    """A PerceptionSFTTrainer on builder rows with answers, as the script builds them."""
    data = PerceptionSFTScriptArguments(task="mixed", dataset_mixture=[{"task": t, "num_samples": 2} for t in tasks])
    rows, _ = data.build_datasets(box_format=box_format, completions=True, **PIXELS)
    args = PerceptionSFTConfig(str(tmp_path), per_device_train_batch_size=2, **PIXELS, **{**CPU_RUN, **settings})
    return PerceptionSFTTrainer(tiny_vlm(box_format), args, train_dataset=rows), rows


# --------------------------------------------------------------------------------------------------
# The loss is on the answer only


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_prompt_tokens_are_masked_and_answer_tokens_are_not(box_format, tmp_path):
    trainer, rows = sft_trainer(box_format, tmp_path)
    tokenizer = trainer.processing_class.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    examples = [dict(trainer.train_dataset[i]) for i in range(len(rows))]
    answers = [e["completion"][0]["content"][0]["text"] for e in examples]
    batch = trainer.data_collator(examples)
    for i, answer in enumerate(answers):
        ids, labels, attention = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        trained = (labels != -100).nonzero().flatten()
        # Exactly the answer and the end of the assistant turn are trained, as one contiguous run of tokens...
        expected = tokenizer(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert ids[trained].tolist() == expected
        assert trained.tolist() == list(range(int(trained[0]), int(trained[0]) + len(expected)))
        assert torch.equal(labels[trained], ids[trained])
        # ...and every real token before it (system, user turn, image tokens, generation prompt) is masked.
        prompt = torch.arange(len(ids)) < trained[0]
        real_prompt = prompt & (attention == 1)
        assert (labels[prompt] == -100).all() and real_prompt.sum() > 0
        assert (ids[real_prompt] == image_pad).sum() > 0  # the image is in the prompt, and masked
        assert tokenizer.decode(ids[real_prompt]).rstrip().endswith("<|im_start|>assistant")
        assert (labels[attention == 0] == -100).all()  # padding


@pytest.mark.slow
def test_the_trainer_learns_the_answers_and_sets_the_pixel_limits(tmp_path):
    trainer, _ = sft_trainer("qwen2_5_vl", tmp_path, tasks=("grounding",), max_steps=6, learning_rate=1e-2)
    assert trainer.processing_class.image_processor.size["longest_edge"] == 64 * 64  # the config's, not the model's
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_config_checks_its_frame_fields():
    with pytest.raises(ValueError, match="min_pixels"):
        PerceptionSFTConfig("out", min_pixels=10_000, max_pixels=100, use_cpu=True)
    with pytest.raises(ValueError, match="box_format"):
        PerceptionSFTConfig("out", box_format="llava", use_cpu=True)
    assert PerceptionSFTConfig("out", use_cpu=True).max_length is None  # no truncation through image tokens


def test_the_trainer_wants_its_config(tmp_path):
    from trl import SFTConfig

    with pytest.raises(TypeError, match="PerceptionSFTConfig"):
        PerceptionSFTTrainer(tiny_vlm("qwen2_vl"), SFTConfig(str(tmp_path), use_cpu=True), train_dataset=[])


# --------------------------------------------------------------------------------------------------
# Arguments


def test_the_script_reads_the_grpo_data_keys_and_its_own(tmp_path):
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(DEMO), "--dataset_kwargs", '{"min_objects": 1}', "--merge_lora", "true"]
    )
    assert script_args.dataset_kwargs == {"min_objects": 1}  # the builder's options, not TRL's dataset_kwargs
    assert training_args.dataset_kwargs is None
    assert script_args.object_order == "random" and script_args.merge_lora
    assert training_args.max_pixels == 12544 and training_args.box_format == "auto"
    assert model_args.model_name_or_path == "tiny:qwen2_5_vl"


def test_rewards_are_not_sft_arguments(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(DEMO.read_text() + "reward_funcs: [iou]\n")
    with pytest.raises(ValueError, match="reward_funcs"):
        make_parser().parse_args_and_config(["--config", str(config)])


def test_unknown_object_order_is_rejected():
    with pytest.raises(ValueError, match="object_order"):
        PerceptionSFTScriptArguments(task="counting", object_order="by size")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["--merge_lora", "true"], "set use_peft"),
        (["--merge_lora", "true", "--use_peft", "true", "--load_in_4bit", "true"], "unquantized base"),
        (["--dataset_kwargs", '{"min_objcts": 2}'], "min_objcts"),
    ],
)
def test_main_fails_before_loading_any_model(tmp_path, overrides, match):
    args = make_parser().parse_args_and_config(
        ["--config", str(DEMO), "--output_dir", str(tmp_path), "--box_format", "qwen2_5_vl",
         "--model_name_or_path", str(tmp_path / "no-such-model"), *overrides]
    )  # fmt: skip
    with pytest.raises((TypeError, ValueError), match=match):
        sft.main(*args)


def test_evaluation_rows_get_answers_too():
    data = PerceptionSFTScriptArguments(task="ocr", num_samples=2, eval_source="synthetic", eval_num_samples=3)
    train, held_out = data.build_datasets(box_format="qwen2_vl", completions=True)
    assert len(held_out) == 3 and held_out[0]["completion"][0]["content"][0]["text"] == held_out[0]["solution"]
    assert "completion" not in data.build_datasets(box_format="qwen2_vl")[1].column_names


def test_a_thinking_prompt_gets_a_thinking_answer():
    # `think: true` in the builder options asks for <think>...</think><answer>...</answer>: the answers follow.
    data = PerceptionSFTScriptArguments(task="grounding", num_samples=2, dataset_kwargs={"think": True})
    train, _ = data.build_datasets(box_format="qwen2_vl", completions=True)
    plain, _ = PerceptionSFTScriptArguments(task="grounding", num_samples=2).build_datasets(
        box_format="qwen2_vl", completions=True
    )
    for row, base in zip(train, plain):
        answer = base["completion"][0]["content"][0]["text"]
        assert row["completion"][0]["content"][0]["text"] == f"<think>\n</think>\n<answer>{answer}</answer>"


def test_answers_follow_the_object_order():
    data = PerceptionSFTScriptArguments(task="counting", num_samples=6, object_order="sorted",
                                        dataset_kwargs={"min_objects": 3, "max_objects": 5})  # fmt: skip
    rows, _ = data.build_datasets(box_format="qwen3_vl", completions=True)
    for answer in rows["completion"]:
        points = [p["point_2d"] for p in json.loads(answer[0]["content"][0]["text"])]
        assert points == sorted(points, key=lambda p: (p[1], p[0]))  # reading order


# --------------------------------------------------------------------------------------------------
# A LoRA adapter merged into the weights computes what base + adapter computed


@pytest.mark.slow
def test_merged_weights_equal_base_plus_adapter(tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText

    data = PerceptionSFTScriptArguments(task="grounding", num_samples=4)
    rows, _ = data.build_datasets(box_format="qwen2_vl", completions=True, **PIXELS)
    args = PerceptionSFTConfig(str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=2, learning_rate=5e-2,
                               **PIXELS, **CPU_RUN)  # fmt: skip
    trainer = PerceptionSFTTrainer(tiny_vlm("qwen2_vl"), args, train_dataset=rows,
                                   peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(2)])
    batch.pop("labels")
    model = trainer.model.eval()
    base = tiny_vlm("qwen2_vl")
    with torch.no_grad():
        with_adapter = model(**batch).logits
        with model.disable_adapter():
            without = model(**batch).logits
    assert (with_adapter - without).abs().max() > 1e-3  # the adapter changed the model
    merged = trainer.merge_adapter()
    assert not hasattr(merged, "peft_config") or not merged.peft_config
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**batch).logits, with_adapter, atol=1e-5)
    trainer.save_model(str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    reloaded = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, with_adapter, atol=1e-5)
        untouched = AutoModelForImageTextToText.from_pretrained(base).eval()(**batch).logits
    assert torch.allclose(untouched, without, atol=1e-5)  # the adapter was all the difference


def test_merging_needs_an_adapter(tmp_path):
    trainer, _ = sft_trainer("qwen2_vl", tmp_path, tasks=("ocr",))
    with pytest.raises(ValueError, match="no LoRA adapter"):
        trainer.merge_adapter()


# --------------------------------------------------------------------------------------------------
# The script, copied out of the repository


def run_copied_script(folder: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Copy the script alone into `folder` (outside the repository) and run it there on the SFT demo config."""
    folder.mkdir(parents=True, exist_ok=True)
    assert not str(folder.resolve()).startswith(str(ROOT))
    shutil.copy(SCRIPT, folder / "sft.py")
    shutil.copy(DEMO, folder / "config.yaml")
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(Path(trl_perception.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "sft.py", "--config", "config.yaml", "--disable_tqdm", "true", *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def card_inputs(out: Path) -> dict:
    return json.loads((out / "trl_perception_card.json").read_text())


@pytest.mark.slow
def test_copied_script_fine_tunes_the_demo_config(tmp_path):
    proc = run_copied_script(tmp_path / "copy", "--output_dir", "run", "--max_steps", "2", "--eval_strategy", "steps",
                             "--eval_steps", "2")  # fmt: skip
    assert "'eval_loss'" in proc.stdout + proc.stderr  # TRL's loss on the held-out answers
    out = tmp_path / "copy" / "run"
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    processor = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert processor["size"] == {"shortest_edge": 784, "longest_edge": 12544}  # the recipe's pixel limits
    card = card_inputs(out)
    assert card["method"] == "sft" and card["task"] == ["detection"] and card["dataset"] == ["synthetic"]
    assert card["box_format"] == "qwen2_5_vl" and card["peft"] is None
    assert card["training_args"]["max_steps"] == 2 and card["training_args"]["learning_rate"] == 1e-4
    readme = (out / "README.md").read_text()
    assert "supervised fine-tuning" in readme and "- sft" in readme and "## Rewards" not in readme
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["detection"]["num_samples"] == 8 and card["eval_metrics"]["detection"]["num_samples"] == 8
    assert len((out / "eval" / "predictions.jsonl").read_text().splitlines()) == 8


@pytest.mark.slow
def test_copied_script_merges_a_lora_adapter_into_the_weights(tmp_path):
    run_copied_script(
        tmp_path, "--output_dir", "lora", "--max_steps", "1", "--use_peft", "true", "--lora_r", "8",
        "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj", "--merge_lora", "true",
        "--evaluate_after_training", "false",
    )  # fmt: skip
    out = tmp_path / "lora"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    card = card_inputs(out)
    assert card["peft"]["merged"] is True and card["peft"]["method"] == "LoRA"
    readme = (out / "README.md").read_text()
    assert "library_name: transformers" in readme and "merged into the weights" in readme


@pytest.mark.slow
def test_copied_script_trains_a_qlora_adapter(tmp_path):
    from trl_perception.testing import build_tiny_vlm

    # bitsandbytes' CPU 4-bit kernel needs in_features that are multiples of 64 (see test_script_grpo.py).
    model = build_tiny_vlm("qwen2_5_vl", tmp_path / "tiny64", vision_hidden_size=64)
    run_copied_script(
        tmp_path / "copy", "--model_name_or_path", model, "--output_dir", "qlora", "--max_steps", "2",
        "--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "all-linear", "--load_in_4bit", "true",
        "--num_samples", "8", "--eval_num_samples", "2", "--eval_max_new_tokens", "8",
    )  # fmt: skip
    out = tmp_path / "copy" / "qlora"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    card = card_inputs(out)
    assert card["peft"]["method"] == "QLoRA" and card["peft"]["quantization"] == "4-bit nf4"
    assert json.loads((out / "eval" / "metrics.json").read_text())["metrics"]["detection"]["num_samples"] == 2


# --------------------------------------------------------------------------------------------------
# SFT -> GRPO: the README's two commands


@pytest.mark.slow
def test_sft_with_a_merged_lora_then_grpo_with_lora(tmp_path, capsys):
    from trl_perception.cli import main

    sft_out, grpo_out = tmp_path / "sft", tmp_path / "grpo"
    assert main(["sft", str(DEMO), "--output_dir", str(sft_out), "--max_steps", "2", "--use_peft", "true",
                 "--lora_target_modules", "q_proj", "v_proj", "--merge_lora", "true",
                 "--evaluate_after_training", "false", "--disable_tqdm", "true"]) == 0  # fmt: skip
    assert main(["train", str(GRPO_DEMO), "--model_name_or_path", str(sft_out), "--output_dir", str(grpo_out),
                 "--max_steps", "1", "--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj",
                 "--max_completion_length", "8", "--num_samples", "4", "--eval_num_samples", "2",
                 "--eval_max_new_tokens", "8", "--disable_tqdm", "true"]) == 0  # fmt: skip
    adapter = json.loads((grpo_out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(sft_out)  # GRPO's adapter sits on the merged SFT model
    card = card_inputs(grpo_out)
    assert card["base_model"] == str(sft_out) and card["peft"]["method"] == "LoRA"
    assert card["eval_metrics"]["detection"]["num_samples"] == 2


# --------------------------------------------------------------------------------------------------
# Text-only stages (LMM-R1's first stage): rows without an image, then a multimodal stage

TEXT_DEMO = ROOT / "recipes" / "demo" / "config_sft_text_demo.yaml"


def test_text_rows_are_trained_on_their_answers_only(tmp_path):
    from trl_perception.data import build_text

    rows = build_text(ROOT / "recipes" / "demo" / "text_counting.jsonl", num_samples=4)
    args = PerceptionSFTConfig(str(tmp_path), per_device_train_batch_size=2, **CPU_RUN)
    trainer = PerceptionSFTTrainer(tiny_vlm("qwen2_5_vl"), args, train_dataset=rows)
    tokenizer = trainer.processing_class.tokenizer
    for example in [dict(trainer.train_dataset[i]) for i in range(4)]:
        batch = trainer.data_collator([example])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        expected = tokenizer(example["completion"][0]["content"][0]["text"] + "<|im_end|>\n",
                             add_special_tokens=False)["input_ids"]  # fmt: skip
        assert ids[labels != -100].tolist() == expected
        assert "pixel_values" not in batch


def test_text_rows_are_a_stage_of_their_own():
    with pytest.raises(ValueError, match="stage of their own"):
        PerceptionSFTScriptArguments(task="mixed", dataset_mixture=[{"task": "text", "source": "t.jsonl"},
                                                                    {"task": "ocr"}])  # fmt: skip
    with pytest.raises(ValueError, match="no perception evaluation"):
        PerceptionSFTScriptArguments(task="text", dataset_source="t.jsonl", eval_source="t.jsonl")


@pytest.mark.slow
def test_a_text_only_sft_stage_then_multimodal_grpo(tmp_path, monkeypatch):
    from trl_perception.cli import main

    monkeypatch.chdir(ROOT)  # the demo's dataset_source is relative to the repository
    text_out, grpo_out = tmp_path / "text", tmp_path / "grpo"
    assert main(["sft", str(TEXT_DEMO), "--output_dir", str(text_out), "--max_steps", "2",
                 "--disable_tqdm", "true"]) == 0  # fmt: skip
    card = card_inputs(text_out)
    assert card["task"] == ["text"] and card["method"] == "sft"
    processor = json.loads((text_out / "processor_config.json").read_text())["image_processor"]
    assert processor["size"] == {"shortest_edge": 784, "longest_edge": 12544}  # ready for the image stage
    assert main(["train", str(GRPO_DEMO), "--model_name_or_path", str(text_out), "--output_dir", str(grpo_out),
                 "--max_steps", "1", "--max_completion_length", "8", "--num_samples", "4", "--eval_num_samples", "2",
                 "--eval_max_new_tokens", "8", "--disable_tqdm", "true"]) == 0  # fmt: skip
    card = card_inputs(grpo_out)
    assert card["base_model"] == str(text_out) and card["task"] == ["detection"]
    assert card["eval_metrics"]["detection"]["num_samples"] == 2


# --------------------------------------------------------------------------------------------------
# The command: `trl-perception sft CONFIG [--key value ...]`


def run_cli(capsys, *argv):
    """`cli.main(argv)` -> (exit status or SystemExit message, stdout, stderr)."""
    from trl_perception import cli

    try:
        status = cli.main(list(argv))
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else exit.code)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_has_help_and_lists_the_script_arguments(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0 and "sft" in out
    status, out, _ = run_cli(capsys, "sft", "--help")
    assert status == 0 and "trl_perception/scripts/sft.py" in out and "--help-args" in out
    status, out, _ = run_cli(capsys, "sft", "--help-args")
    for option in ("--dataset_source", "--object_order", "--merge_lora", "--evaluate_after_training", "--box_format",
                   "--max_pixels", "--lora_r", "--load_in_4bit", "--completion_only_loss"):  # fmt: skip
        assert option in out, option
    assert "--reward_funcs" not in out


@pytest.fixture
def captured_sft(monkeypatch):
    seen = {}

    def fake_main(script_args, training_args, model_args):
        seen.update(script=script_args, training=training_args, model=model_args)
        return {"output_dir": training_args.output_dir, "train": {"train_loss": 0.0}}

    monkeypatch.setattr(sft, "main", fake_main)
    return seen


def test_the_yaml_and_overrides_reach_the_script(capsys, captured_sft, tmp_path):
    status, out, _ = run_cli(capsys, "sft", "--config", str(DEMO), "--output_dir", str(tmp_path), "--max_steps", "3",
                             "--object_order", "sorted", "--use_peft", "true", "--merge_lora", "true")  # fmt: skip
    assert status == 0 and json.loads(out)["output_dir"] == str(tmp_path)
    script, training, model = captured_sft["script"], captured_sft["training"], captured_sft["model"]
    assert isinstance(training, PerceptionSFTConfig) and training.max_steps == 3 and training.max_pixels == 12544
    assert script.object_order == "sorted" and script.merge_lora and model.use_peft


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a recipe YAML is required"),
        (["no/such.yaml"], "no such recipe file"),
        ([str(DEMO), "--no_such_option", "1"], "no_such_option"),
        ([str(DEMO), "--object_order", "by size"], "object_order"),
        ([str(DEMO), "--config", str(DEMO)], "give the recipe YAML once"),
    ],
)
def test_bad_arguments_are_one_line(capsys, captured_sft, argv, message):
    status, _, _ = run_cli(capsys, "sft", *argv)
    assert str(status).startswith("trl-perception sft:") and message in str(status) and "\n" not in str(status)
    assert not captured_sft


def test_an_error_in_the_script_is_one_line_with_status_2(capsys, tmp_path):
    status, _, err = run_cli(capsys, "sft", str(DEMO), "--output_dir", str(tmp_path), "--merge_lora", "true")
    assert status == 2
    assert err.startswith("trl-perception sft: error: merge_lora") and err.count("\n") == 1
