"""Model cards (`hub.build_model_card`) and `hub.push_to_hub` with a fake HfApi: no network."""

import json

import pytest
import yaml

from trl_perception.hub import build_model_card, push_to_hub

CARD_ARGS = dict(
    model_name="me/qwen2-vl-2b-grounding",
    base_model="Qwen/Qwen2-VL-2B-Instruct",
    task="grounding",
    dataset="data/refcoco",
    reward_funcs=["iou", "format"],
    reward_weights=[1.0, 0.5],
    box_format="qwen2_vl",
    training_args={
        "learning_rate": 1e-6,
        "num_generations": 8,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "beta": 0.04,
        "temperature": 1.0,
        "max_completion_length": 768,
        "loss_type": "grpo",
        "num_train_epochs": 1.0,
        "max_steps": -1,
        "min_pixels": 3136,
        "max_pixels": 1000000,
        "seed": 0,
        "output_dir": "not a hyperparameter",
    },
    eval_metrics={"grounding": {"acc@0.5": 0.891, "mean_iou": 0.8, "num_samples": 500}},
    eval_dataset="data/refcoco (val)",
)


def metadata(card: str) -> dict:
    """The YAML front matter of a card."""
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def section(card: str, title: str) -> str:
    """The text of a `## title` section."""
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


class FakeHfApi:
    """Records calls; returns what HfApi would (repo URL, commit URL) without any network."""

    def __init__(self):
        self.calls = []
        self.uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **kwargs):
        import pathlib

        self.calls.append(("upload_folder", repo_id, kwargs))
        self.uploaded = {
            p.relative_to(folder_path).as_posix(): p.read_bytes()
            for p in pathlib.Path(folder_path).rglob("*")
            if p.is_file()
        }
        return f"https://huggingface.co/{repo_id}/commit/abc123"


# --------------------------------------------------------------------------------------------------
# Card content


def test_card_metadata_names_base_model_library_pipeline_and_tags():
    meta = metadata(build_model_card(**CARD_ARGS))
    assert meta["base_model"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert {"trl", "trl-perception", "grpo", "grounding"} <= set(meta["tags"])
    assert meta["model_name"] == "me/qwen2-vl-2b-grounding"


def test_card_states_task_data_and_box_format():
    card = build_model_card(**CARD_ARGS)
    assert "# me/qwen2-vl-2b-grounding" in card
    assert "- **Base model:** Qwen/Qwen2-VL-2B-Instruct" in card
    assert "- **Task:** grounding" in card
    assert "- **Training data:** data/refcoco" in card
    assert "- **Box format:** `qwen2_vl`" in card
    assert "0–1000" in card  # Qwen2-VL's frame is explained
    assert "Perception-R1" in card and "2504.07954" in card


def test_card_lists_each_reward_with_its_weight():
    rewards = section(build_model_card(**CARD_ARGS), "Rewards")
    assert "| iou | 1.0 |" in rewards
    assert "| format | 0.5 |" in rewards


def test_rewards_default_to_weight_one_like_trl():
    card = build_model_card(**{**CARD_ARGS, "reward_weights": None})
    assert "| iou | 1.0 |" in card and "| format | 1.0 |" in card


def test_reward_callables_are_named_by_their_function_name():
    def my_reward(completions, **kwargs):
        return [0.0] * len(completions)

    card = build_model_card(**{**CARD_ARGS, "reward_funcs": [my_reward], "reward_weights": [2]})
    assert "| my_reward | 2.0 |" in card


def test_mismatched_reward_weights_are_an_error():
    with pytest.raises(ValueError, match="2 reward functions but 1 reward weights"):
        build_model_card(**{**CARD_ARGS, "reward_weights": [1.0]})


def test_card_lists_key_hyperparameters_only():
    table = section(build_model_card(**CARD_ARGS), "Training hyperparameters")
    for row in (
        "| learning_rate | 1e-06 |",
        "| num_generations | 8 |",
        "| beta | 0.04 |",
        "| temperature | 1.0 |",
        "| max_completion_length | 768 |",
        "| loss_type | grpo |",
        "| num_train_epochs | 1.0 |",
        "| max_pixels | 1000000 |",
    ):
        assert row in table
    assert "output_dir" not in table
    assert "max_steps" not in table  # -1: training runs for num_train_epochs


def test_max_steps_replaces_epochs_when_set():
    args = {**CARD_ARGS["training_args"], "max_steps": 500}
    table = section(build_model_card(**{**CARD_ARGS, "training_args": args}), "Training hyperparameters")
    assert "| max_steps | 500 |" in table
    assert "num_train_epochs" not in table


def test_hyperparameters_are_read_from_a_config_object():
    from trl_perception.trainer import PerceptionGRPOConfig

    config = PerceptionGRPOConfig(
        output_dir="out", use_cpu=True, bf16=False, learning_rate=3e-6, num_generations=4, beta=0.04,
        max_pixels=401408, report_to="none",
    )  # fmt: skip
    table = section(build_model_card(**{**CARD_ARGS, "training_args": config}), "Training hyperparameters")
    assert "| learning_rate | 3e-06 |" in table
    assert "| num_generations | 4 |" in table
    assert "| max_pixels | 401408 |" in table


def test_evaluation_table_names_the_data_and_keeps_counts_whole():
    evaluation = section(build_model_card(**CARD_ARGS), "Evaluation")
    assert "On data/refcoco (val)" in evaluation
    assert "| grounding/acc@0.5 | 0.8910 |" in evaluation
    assert "| grounding/mean_iou | 0.8000 |" in evaluation
    assert "| grounding/num_samples | 500 |" in evaluation


def test_no_evaluation_section_without_metrics():
    card = build_model_card(**{**CARD_ARGS, "eval_metrics": None})
    assert "## Evaluation" not in card


def test_usage_snippet_loads_the_model_with_transformers_and_parses_boxes():
    usage = section(build_model_card(**CARD_ARGS), "Usage")
    assert 'AutoModelForImageTextToText.from_pretrained("me/qwen2-vl-2b-grounding")' in usage
    assert 'AutoProcessor.from_pretrained("me/qwen2-vl-2b-grounding")' in usage
    assert "Output the bounding box of" in usage  # the grounding prompt of Table 8
    assert "skip_special_tokens=False" in usage  # Qwen2-VL's box tokens must survive decoding
    assert 'parse_objects(answer, "qwen2_vl")' in usage
    assert 'Frame.of("qwen2_vl", image.size, input_size)' in usage and ".to_pixels(frame)" in usage


@pytest.mark.parametrize("task", ["grounding", "counting", "ocr", "detection"])
def test_usage_prompt_is_the_tasks_own(task):
    from trl_perception.data.prompts import TASK_TEMPLATES

    usage = section(build_model_card(**{**CARD_ARGS, "task": task}), "Usage")
    assert TASK_TEMPLATES[task].split("{")[0].strip() in usage


def test_snippets_are_valid_python():
    import ast

    card = build_model_card(**CARD_ARGS)
    blocks = [b.split("```", 1)[0] for b in card.split("```python\n")[1:]]
    assert len(blocks) == 2
    for block in blocks:
        ast.parse(block)


def test_local_paths_stay_out_of_the_metadata(tmp_path):
    local = tmp_path / "checkpoint"
    local.mkdir()
    meta = metadata(
        build_model_card(**{**CARD_ARGS, "base_model": str(local), "dataset": ["synthetic", "data/x.json"]})
    )
    assert "base_model" not in meta
    assert "datasets" not in meta
    meta = metadata(build_model_card(**{**CARD_ARGS, "base_model": "tiny:qwen2_5_vl"}))
    assert "base_model" not in meta


def test_hub_dataset_ids_go_into_the_metadata():
    meta = metadata(build_model_card(**{**CARD_ARGS, "dataset": ["lmms-lab/RefCOCO", "local.json"]}))
    assert meta["datasets"] == ["lmms-lab/RefCOCO"]


def test_several_tasks():
    card = build_model_card(**{**CARD_ARGS, "task": ["grounding", "ocr"], "dataset": ["a", "b"]})
    assert "- **Task:** grounding, ocr" in card
    assert "- **Training data:** a, b" in card
    assert {"grounding", "ocr"} <= set(metadata(card)["tags"])


def test_adapter_card_says_lora_or_qlora_and_names_peft():
    peft = {"method": "QLoRA", "r": 64, "alpha": 128, "dropout": 0.05, "target_modules": ["q_proj"],
            "quantization": "4-bit nf4"}  # fmt: skip
    card = build_model_card(**{**CARD_ARGS, "peft": peft})
    assert metadata(card)["library_name"] == "peft"
    assert "- **Adapter:** QLoRA (r 64, alpha 128, dropout 0.05, target_modules ['q_proj'])" in card
    assert "4-bit nf4" in card
    assert "needs `peft`" in card


def test_license_and_extra_text():
    card = build_model_card(**{**CARD_ARGS, "license": "apache-2.0", "extra_text": "## Notes\n\nHello."})
    assert metadata(card)["license"] == "apache-2.0"
    assert card.rstrip().endswith("Hello.")


def test_minimal_card():
    card = build_model_card(model_name="m", base_model=None, task="ocr")
    assert "- **Base model:** unknown" in card
    assert "## Rewards" not in card and "## Training hyperparameters" not in card
    assert "OCR this image." in card


# --------------------------------------------------------------------------------------------------
# push_to_hub


def saved_run(folder, **overrides):
    """A training output folder as the recipe leaves it: weights, card inputs and the card."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    card_args = {**CARD_ARGS, "model_name": folder.name, **overrides}
    (folder / "trl_perception_card.json").write_text(json.dumps(card_args))
    (folder / "README.md").write_text(build_model_card(**card_args))
    return folder


def test_push_uploads_the_folder_and_returns_the_commit_url(tmp_path):
    api = FakeHfApi()
    url = push_to_hub(saved_run(tmp_path / "run"), "me/model", private=True, api=api)
    assert url == "https://huggingface.co/me/model/commit/abc123"
    (create, repo, create_kwargs), (upload, repo2, upload_kwargs) = api.calls
    assert (create, repo, repo2, upload) == ("create_repo", "me/model", "me/model", "upload_folder")
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert create_kwargs["repo_type"] == upload_kwargs["repo_type"] == "model"
    assert "checkpoint-*" in upload_kwargs["ignore_patterns"]
    assert {"model.safetensors", "README.md", "trl_perception_card.json"} <= set(api.uploaded)


def test_push_writes_the_card_for_the_target_repository(tmp_path):
    folder = saved_run(tmp_path / "run")
    assert 'from_pretrained("run")' in (folder / "README.md").read_text()
    api = FakeHfApi()
    push_to_hub(folder, "me/qwen-grounding", api=api)
    readme = api.uploaded["README.md"].decode()
    assert 'AutoModelForImageTextToText.from_pretrained("me/qwen-grounding")' in readme
    assert metadata(readme)["model_name"] == "me/qwen-grounding"
    assert "| iou | 1.0 |" in readme  # everything else comes from trl_perception_card.json


def test_push_keeps_a_hand_edited_card(tmp_path):
    folder = saved_run(tmp_path / "run")
    (folder / "README.md").write_text("# My own card\n")
    api = FakeHfApi()
    push_to_hub(folder, "me/model", api=api)
    assert api.uploaded["README.md"] == b"# My own card\n"


def test_push_builds_the_card_when_only_the_json_is_there(tmp_path):
    folder = saved_run(tmp_path / "run")
    (folder / "README.md").unlink()
    api = FakeHfApi()
    push_to_hub(folder, "me/model", api=api)
    assert "# me/model" in api.uploaded["README.md"].decode()


def test_push_with_an_explicit_card(tmp_path):
    api = FakeHfApi()
    folder = saved_run(tmp_path / "run")
    push_to_hub(folder, "me/model", card="# given\n", api=api)
    assert api.uploaded["README.md"] == b"# given\n"
    assert (folder / "README.md").read_text() == "# given\n"


def test_push_of_a_folder_without_card_inputs_keeps_its_readme(tmp_path):
    (tmp_path / "README.md").write_text("hello")
    api = FakeHfApi()
    push_to_hub(tmp_path, "me/model", api=api)
    assert api.uploaded == {"README.md": b"hello"}


def test_push_of_a_missing_folder_fails_before_any_call(tmp_path):
    api = FakeHfApi()
    with pytest.raises(FileNotFoundError, match="save the model there"):
        push_to_hub(tmp_path / "nope", "me/model", api=api)
    assert api.calls == []


def test_push_uses_huggingface_hub_hfapi_by_default(tmp_path, monkeypatch):
    import huggingface_hub

    made = []

    class RecordingApi(FakeHfApi):
        def __init__(self, token=None):
            super().__init__()
            made.append(token)

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    push_to_hub(saved_run(tmp_path / "run"), "me/model", token="hf_xxx")
    assert made == ["hf_xxx"]


def test_cli_push_calls_push_to_hub(tmp_path, monkeypatch, capsys):
    from trl_perception import cli, hub

    seen = {}

    def fake_push(folder, repo_id, **kwargs):
        seen.update(folder=folder, repo_id=repo_id, **kwargs)
        return "https://huggingface.co/me/model/commit/1"

    monkeypatch.setattr(hub, "push_to_hub", fake_push)
    folder = saved_run(tmp_path / "run")
    assert cli.main(["push", str(folder), "--repo-id", "me/model", "--private"]) == 0
    assert seen == {"folder": str(folder), "repo_id": "me/model", "private": True, "token": None}
    assert "commit/1" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# The trainer's card: PerceptionGRPOTrainer.create_model_card and push_to_hub


def tiny_trainer(output_dir, reward_funcs=None, **config):
    from trl_perception.data import make_synthetic
    from trl_perception.rewards import get_reward
    from trl_perception.testing import tiny_vlm
    from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

    args = PerceptionGRPOConfig(str(output_dir), use_cpu=True, report_to="none", num_generations=2, learning_rate=3e-6,
                                per_device_train_batch_size=2, max_completion_length=4, max_pixels=56 * 56, **config)  # fmt: skip
    rewards = reward_funcs or [get_reward("detection"), get_reward("format")]
    return PerceptionGRPOTrainer(tiny_vlm("qwen3_vl"), rewards, args,
                                 train_dataset=make_synthetic(["detection", "counting"], 4))  # fmt: skip


class TrainerHubApi(FakeHfApi):
    """What transformers' `hf_api()` returns, recording one snapshot of the folder per upload."""

    def __init__(self):
        super().__init__()
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        from types import SimpleNamespace

        super().create_repo(repo_id, **kwargs)
        return SimpleNamespace(repo_id=f"me/{repo_id}" if "/" not in repo_id else repo_id)

    def upload_folder(self, folder_path, repo_id, **kwargs):
        url = super().upload_folder(folder_path, repo_id, **kwargs)
        self.uploads.append(dict(self.uploaded))
        return url


def test_trainer_card_says_what_the_trainer_knows(tmp_path):
    trainer = tiny_trainer(tmp_path, reward_weights=[1.0, 0.5])
    trainer.create_model_card(model_name="ignored", dataset_name=["synthetic"], tags="extra-tag",
                              eval_metrics={"detection": {"AP": 0.25}}, eval_dataset="synthetic val")  # fmt: skip
    card = (tmp_path / "README.md").read_text()
    meta = metadata(card)
    assert meta["model_name"] == "ignored"  # no Hub id yet: the name given
    assert {"trl-perception", "detection", "counting", "extra-tag"} <= set(meta["tags"])
    assert "- **Task:** counting, detection" in card  # the training rows' tasks
    assert "- **Box format:** `qwen3_vl`" in card  # resolved from the model
    assert "| detection_reward | 1.0 |" in card and "| format_reward | 0.5 |" in card
    assert "| learning_rate | 3e-06 |" in card and "| num_generations | 2 |" in card
    assert "On synthetic val" in card and "| detection/AP | 0.2500 |" in card
    inputs = json.loads((tmp_path / "trl_perception_card.json").read_text())
    assert build_model_card(**inputs) == card  # `trl-perception push` rebuilds the same card from it


def test_trainer_card_describes_a_lora_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    trainer = tiny_trainer(tmp_path)
    trainer.model = get_peft_model(trainer.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert metadata(card)["library_name"] == "peft"
    assert "- **Adapter:** LoRA (r 4, alpha 8, dropout 0.0, target_modules ['q_proj', 'v_proj'])" in card


def test_trainer_push_to_hub_uploads_weights_and_the_perception_card_in_one_commit(tmp_path, monkeypatch):
    import transformers.trainer

    api = TrainerHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    trainer = tiny_trainer(tmp_path / "run", hub_model_id="me/qwen3-perception")

    trainer.push_to_hub(dataset_name="synthetic", eval_metrics={"detection": {"AP": 0.5}}, eval_dataset="held out")

    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]
    (uploaded,) = api.uploads
    assert {"model.safetensors", "config.json", "README.md", "trl_perception_card.json"} <= set(uploaded)
    readme = uploaded["README.md"].decode()
    assert metadata(readme)["model_name"] == "me/qwen3-perception"
    assert 'AutoModelForImageTextToText.from_pretrained("me/qwen3-perception")' in readme
    assert "| detection/AP | 0.5000 |" in readme and "- **Training data:** synthetic" in readme
    assert "trl-perception" in metadata(readme)["tags"]
