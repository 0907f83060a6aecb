"""Specification of PerceptionGRPOTrainer: frames, pixels, Qwen2-VL box tokens, vLLM hand-off, start-up checks,
mixed-task metrics and box-image logging, on tiny offline Qwen-VL models."""

import copy
import glob
import json
import os

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from tests._helpers import cpu_run_args
from trl_perception.data.prompts import build_prompt
from trl_perception.data.resize import fit_dataset_to_grid
from trl_perception.data.rows import rows_to_dataset
from trl_perception.data.synthetic import make_synthetic
from trl_perception.formats import parse_objects, render_objects
from trl_perception.frames import BOX_FORMATS
from trl_perception.rewards import count_reward, detection_reward, iou_reward, ocr_reward
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import (
    PerceptionGRPOConfig,
    PerceptionGRPOTrainer,
    resolve_box_format,
    vllm_serve_args,
)
from trl_perception.viz import GT_COLOR, PRED_COLOR

OTHER_FRAME = {"qwen2_vl": "qwen2_5_vl", "qwen2_5_vl": "qwen3_vl", "qwen3_vl": "qwen2_5_vl"}


def make_args(tmp_path, **overrides):
    defaults = dict(
        max_steps=1,
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=8,
        learning_rate=1e-3,
        max_pixels=56 * 56,
    )
    return cpu_run_args(PerceptionGRPOConfig, tmp_path, **{**defaults, **overrides})


def length_reward(completions, **kwargs):
    """Varies between completions of a random model, so GRPO has a signal."""
    return [float(len(c[0]["content"])) for c in completions]


class KwargsRecorder:
    """A reward that remembers what the trainer passed it."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, completions, **kwargs):
        self.calls.append({"completions": completions, **kwargs})
        return [0.0] * len(completions)


def grounding_dataset(sizes, boxes, images=None):
    rows = []
    for i, ((w, h), box) in enumerate(zip(sizes, boxes)):
        image = images[i] if images else Image.new("RGB", (w, h), (90, 90, 90))
        rows.append(
            {
                "prompt": build_prompt("grounding", question="grey square"),
                "image": image,
                "task": "grounding",
                "solution": [float(v) for v in box],
                "image_size": [w, h],
            }
        )
    return rows_to_dataset(rows)


def completion(text):
    return [{"role": "assistant", "content": text}]


def forced_generation(trainer, text):
    """Make the policy 'write' `text` (plus <|im_end|>) so that TRL's real decoding path handles it."""
    tokenizer = trainer.processing_class.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [
        tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        return [list(ids) for _ in prompt_ids], None

    trainer._generate_single_turn = generate


# --------------------------------------------------------------------------------------------- config


def test_config_rejects_unknown_box_format(tmp_path):
    with pytest.raises(ValueError, match="box_format"):
        make_args(tmp_path, box_format="llava")


def test_config_rejects_min_pixels_above_max_pixels(tmp_path):
    with pytest.raises(ValueError, match="min_pixels"):
        make_args(tmp_path, min_pixels=10_000, max_pixels=100)


def test_log_box_images_turns_completion_logging_on(tmp_path):
    assert make_args(tmp_path, log_box_images=True).log_completions


def test_every_added_field_is_documented_in_help_and_docstring():
    from dataclasses import fields

    from trl import GRPOConfig

    added = {f.name for f in fields(PerceptionGRPOConfig)} - {f.name for f in fields(GRPOConfig)}
    assert {"box_format", "min_pixels", "max_pixels", "log_box_images", "resize_images"} <= added
    for f in fields(PerceptionGRPOConfig):
        if f.name in added:
            assert f.metadata.get("help"), f.name
            assert f"{f.name} (" in PerceptionGRPOConfig.__doc__, f.name


def test_a_plain_grpo_config_is_refused_with_a_hint(tmp_path):
    from trl import GRPOConfig

    args = GRPOConfig(str(tmp_path), use_cpu=True, bf16=False, report_to="none", num_generations=2,
                      per_device_train_batch_size=2)  # fmt: skip
    with pytest.raises(TypeError, match="PerceptionGRPOConfig"):
        PerceptionGRPOTrainer(
            tiny_vlm("qwen2_5_vl"), length_reward, args, train_dataset=make_synthetic("ocr", 2)
        )


# --------------------------------------------------------------------------------------------- frames


@pytest.mark.parametrize("family", BOX_FORMATS)
def test_family_is_detected_from_the_model_path_and_from_the_model_object(family, tmp_path):
    from transformers import AutoModelForImageTextToText

    dataset = make_synthetic("grounding", 2)
    by_path = PerceptionGRPOTrainer(
        tiny_vlm(family), length_reward, make_args(tmp_path), train_dataset=dataset
    )
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm(family))
    by_object = PerceptionGRPOTrainer(model, length_reward, make_args(tmp_path), train_dataset=dataset)

    assert by_path.box_format == by_object.box_format == family
    assert resolve_box_format("auto", model) == family


def test_explicit_box_format_overrides_detection(tmp_path):
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        length_reward,
        make_args(tmp_path, box_format="qwen3_vl"),
        train_dataset=make_synthetic("grounding", 2),
    )

    assert trainer.box_format == "qwen3_vl"
    assert trainer.train_dataset[0]["box_format"] == "qwen3_vl"
    assert trainer.patch_factor == 28  # the grid is still the Qwen2.5-VL processor's


@pytest.mark.parametrize("family", BOX_FORMATS)
def test_ground_truth_in_the_model_frame_scores_iou_one_and_in_another_frame_low(family, tmp_path):
    # off the patch grid and far above max_pixels, so the processor must resize
    dataset = grounding_dataset([(1000, 600), (990, 610)], [(200, 120, 800, 480), (100, 50, 700, 500)])
    recorder = KwargsRecorder()
    trainer = PerceptionGRPOTrainer(
        tiny_vlm(family),
        [iou_reward, recorder],
        make_args(tmp_path, max_pixels=400 * 400),
        train_dataset=dataset,
    )
    row = trainer.train_dataset[0]

    # what the trainer says the model sees is what the real processor feeds the model
    image_processor = trainer.processing_class.image_processor
    grid = image_processor(images=[row["image"]], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert [grid[2] * image_processor.patch_size, grid[1] * image_processor.patch_size] == row["input_size"]
    assert row["input_size"] == list(row["image"].size) == row["image_size"] != [1000, 600]
    assert row["input_size"][0] * row["input_size"][1] <= 400 * 400
    sx, sy = row["image_size"][0] / 1000, row["image_size"][1] / 600
    assert row["solution"] == pytest.approx([200 * sx, 120 * sy, 800 * sx, 480 * sy])

    gt = [{"bbox_2d": row["solution"]}]
    right = render_objects(gt, family, row["image_size"], row["input_size"])
    wrong = render_objects(gt, OTHER_FRAME[family], row["image_size"], row["input_size"])
    rewards = trainer._calculate_rewards(
        [row, row], [row["prompt"]] * 2, [completion(right), completion(wrong)], [[0], [0]]
    )

    assert rewards[0, 0].item() >= 0.99
    assert rewards[1, 0].item() < 0.5
    kwargs = recorder.calls[-1]
    assert kwargs["box_format"] == [family, family]
    assert kwargs["image_size"] == [row["image_size"]] * 2
    assert kwargs["input_size"] == [row["input_size"]] * 2


def test_without_resizing_images_stay_and_rewards_convert_through_input_size(tmp_path):
    dataset = grounding_dataset([(1000, 600)], [(200, 120, 800, 480)])
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        iou_reward,
        make_args(tmp_path, max_pixels=400 * 400, resize_images=False),
        train_dataset=dataset,
    )
    row = trainer.train_dataset[0]

    assert row["image"].size == (1000, 600) and row["image_size"] == [1000, 600]
    assert row["solution"] == [200, 120, 800, 480]
    grid = trainer.processing_class.image_processor(images=[row["image"]], return_tensors="pt")[
        "image_grid_thw"
    ][0]
    assert row["input_size"] == [int(grid[2]) * 14, int(grid[1]) * 14]
    right = render_objects([{"bbox_2d": row["solution"]}], "qwen2_5_vl", row["image_size"], row["input_size"])
    rewards = trainer._calculate_rewards([row], [row["prompt"]], [completion(right)], [[0]])
    assert rewards[0, 0].item() >= 0.99


# --------------------------------------------------------------------------------------------- pixels


def test_pixel_limits_go_to_a_copy_of_the_processor(tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_vlm("qwen2_5_vl"))
    before = copy.deepcopy(processor.image_processor.size)
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        length_reward,
        make_args(tmp_path, min_pixels=28 * 28, max_pixels=84 * 84),
        train_dataset=make_synthetic("grounding", 2),
        processing_class=processor,
    )

    assert trainer.processing_class is not processor
    assert processor.image_processor.size == before
    assert dict(trainer.processing_class.image_processor.size) == {"shortest_edge": 784, "longest_edge": 7056}
    assert (trainer.min_pixels, trainer.max_pixels) == (784, 7056)


def test_each_image_is_resized_lazily_to_a_size_the_processor_keeps(tmp_path):
    dataset = grounding_dataset([(301, 173)], [(30, 20, 150, 90)])
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen3_vl"), iou_reward, make_args(tmp_path), train_dataset=dataset
    )

    stored = trainer.train_dataset.with_format(None)[0]
    assert stored["image"].size == (301, 173)  # the stored data is untouched: resizing happens on read
    row = trainer.train_dataset[0]
    w, h = row["image"].size
    assert w % 32 == 0 and h % 32 == 0 and w * h <= 56 * 56
    assert row["image_size"] == row["input_size"] == [w, h]


def test_a_builder_transform_runs_first_and_the_ground_truth_follows_both_resizes(tmp_path):
    built = fit_dataset_to_grid(
        grounding_dataset([(640, 480)], [(64, 48, 320, 240)]), "qwen2_5_vl", max_pixels=200_000
    )
    assert built[0]["image"].size == (504, 364)
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"), iou_reward, make_args(tmp_path), train_dataset=built
    )
    row = trainer.train_dataset[0]

    w, h = row["image"].size
    assert w * h <= 56 * 56 and row["image_size"] == [w, h]
    assert row["solution"] == pytest.approx(
        [64 * w / 640, 48 * h / 480, 320 * w / 640, 240 * h / 480], rel=0.02
    )


def test_an_iterable_dataset_is_prepared_lazily_too(tmp_path):
    dataset = grounding_dataset([(301, 173)] * 2, [(30, 20, 150, 90)] * 2).to_iterable_dataset()
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"), length_reward, make_args(tmp_path, max_steps=1), train_dataset=dataset
    )

    row = next(iter(trainer.train_dataset))
    assert row["box_format"] == "qwen2_5_vl" and row["input_size"] == list(row["image"].size)
    trainer.train()
    assert trainer.state.global_step == 1


# ----------------------------------------------------------------------------------------------- vLLM


class FakeLLM:
    """Stands in for vllm.LLM: records how TRL's colocate mode builds it."""

    built: list = []

    def __init__(self, **kwargs):
        FakeLLM.built.append(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    from trl.generation import vllm_generation

    # TRL's colocate set-up exports rendezvous variables; restore the environment afterwards.
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vllm_generation, "LLM", FakeLLM, raising=False)
    FakeLLM.built = []
    return vllm_generation


def test_vllm_colocate_gets_the_trainer_pixel_limits(fake_vllm, tmp_path):
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        length_reward,
        make_args(tmp_path, use_vllm=True, vllm_mode="colocate", min_pixels=28 * 28, max_pixels=84 * 84),
        train_dataset=make_synthetic("grounding", 2),
    )

    (kwargs,) = FakeLLM.built
    assert kwargs["mm_processor_kwargs"] == {"size": {"shortest_edge": 784, "longest_edge": 7056}}
    assert kwargs["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert kwargs["max_num_batched_tokens"] == 4096  # TRL's own value, untouched by default
    assert kwargs["model"] == trainer.model.name_or_path
    assert fake_vllm.LLM is FakeLLM  # the hook is gone once the trainer is built
    assert trainer.vllm_generation.llm.llm is not None  # TRL holds our wrapper, which delegates to the engine
    # 4096 is a scheduler budget, not a cap on one image (vLLM's encoder budget is max(4096, largest image))
    assert trainer.max_image_tokens is None


def test_vllm_colocate_budget_comes_from_max_model_length(fake_vllm, tmp_path):
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_vl"),
        length_reward,
        make_args(tmp_path, use_vllm=True, vllm_max_model_length=600, max_completion_length=100),
        train_dataset=make_synthetic("grounding", 2),
    )
    assert trainer.max_image_tokens == 500


def test_vllm_colocate_batched_tokens_can_be_raised(fake_vllm, tmp_path):
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen3_vl"),
        length_reward,
        make_args(tmp_path, use_vllm=True, vllm_max_num_batched_tokens=16384),
        train_dataset=make_synthetic("grounding", 2),
    )

    assert FakeLLM.built[-1]["max_num_batched_tokens"] == 16384
    assert trainer.max_image_tokens is None


def test_vllm_serve_args_carry_the_resolved_limits(tmp_path):
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_vl"),
        length_reward,
        make_args(tmp_path, max_pixels=84 * 84, vllm_max_num_batched_tokens=8192),
        train_dataset=make_synthetic("grounding", 2),
    )

    args = trainer.vllm_serve_args()
    assert args[0] == "--mm-processor-kwargs"
    assert json.loads(args[1]) == {"size": {"shortest_edge": trainer.min_pixels, "longest_edge": 7056}}
    assert args[2:4] == ["--limit-mm-per-prompt", '{"image": 1, "video": 0}']
    assert args[4:] == ["--max-num-batched-tokens", "8192"]


def test_vllm_serve_args_fill_missing_limits_from_the_family_defaults(tmp_path):
    args = make_args(tmp_path, max_pixels=None)
    assert json.loads(vllm_serve_args(args, box_format="qwen3_vl")[1]) == {
        "size": {"shortest_edge": 65536, "longest_edge": 16777216}
    }
    with pytest.raises(ValueError, match="min_pixels and max_pixels"):
        vllm_serve_args(args)


# --------------------------------------------------------------------------------------- Qwen2-VL tokens

BOX_TEXT = "<|object_ref_start|>grey square<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>"


@pytest.mark.parametrize("keep, expected", [(None, BOX_TEXT), (False, "grey square(100,200),(300,400)")])
def test_qwen2_vl_box_tokens_reach_the_rewards(tmp_path, keep, expected):
    # TRL decodes with skip_special_tokens=True; by default the qwen2_vl box tokens survive it, other
    # special tokens (<|im_end|>) do not. keep_box_tokens=False shows what plain TRL would hand the rewards.
    recorder = KwargsRecorder()
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_vl"),
        [recorder, length_reward],
        make_args(tmp_path, keep_box_tokens=keep),
        train_dataset=make_synthetic("grounding", 2, box_format="qwen2_vl"),
    )
    forced_generation(trainer, BOX_TEXT)

    trainer.train()

    texts = {c[0]["content"] for c in recorder.calls[0]["completions"]}
    assert texts == {expected}
    if keep is None:
        assert parse_objects(expected, "qwen2_vl").objects[0].label == "grey square"
    assert "batch_decode" not in vars(trainer.processing_class)  # the decoding hook is temporary


# ------------------------------------------------------------------------------------- start-up checks


def rows(**changes):
    base = {
        "prompt": build_prompt("grounding", question="grey square"),
        "image": Image.new("RGB", (56, 56)),
        "task": "grounding",
        "solution": [1.0, 2.0, 30.0, 40.0],
        "image_size": [56, 56],
    }
    out = []
    for i in range(3):
        row = dict(base)
        for key, values in changes.items():
            if values is None:
                row.pop(key, None)
            else:
                row[key] = values[i]
        out.append(row)
    return out


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompt": None}, "no 'prompt' column"),
        ({"image": None}, "no 'image' or 'images' column"),
        ({"solution": None}, r"no 'solution' column, which the reward\(s\) \['iou_reward'\] need"),
        ({"task": None}, "no 'task' column"),
        ({"task": ["grounding", "grounding", "segmentation"]}, "row 2: unknown task 'segmentation'"),
        ({"image": [Image.new("RGB", (56, 56)), None, Image.new("RGB", (56, 56))]}, "row 1: no image"),
        ({"box_format": ["qwen2_vl"] * 3}, "built for box_format 'qwen2_vl'"),
    ],
)
def test_datasets_the_rewards_cannot_use_fail_at_construction(tmp_path, changes, message):
    dataset = rows_to_dataset(rows(**changes))
    with pytest.raises(ValueError, match=message):
        PerceptionGRPOTrainer(tiny_vlm("qwen2_5_vl"), iou_reward, make_args(tmp_path), train_dataset=dataset)


def test_a_plain_text_prompt_is_refused(tmp_path):
    from datasets import Dataset

    dataset = Dataset.from_dict(
        {"prompt": ["Find it."], "image": [Image.new("RGB", (56, 56))], "task": ["ocr"], "solution": ["x"]}
    )
    with pytest.raises(ValueError, match="row 0: prompt must be conversational"):
        PerceptionGRPOTrainer(tiny_vlm("qwen2_5_vl"), ocr_reward, make_args(tmp_path), train_dataset=dataset)


def test_an_image_over_the_visual_token_budget_is_named(tmp_path):
    images = [Image.new("RGB", (56, 56)), Image.new("RGB", (56, 56)), Image.new("RGB", (224, 224))]
    dataset = rows_to_dataset(rows(image=images, image_size=[[56, 56], [56, 56], [224, 224]]))

    with pytest.raises(
        ValueError, match=r"train_dataset row 2: its 224x224 image is fed at 224x224, i.e. 64 visual tokens"
    ):
        PerceptionGRPOTrainer(
            tiny_vlm("qwen2_5_vl"),
            iou_reward,
            make_args(tmp_path, max_pixels=224 * 224, max_image_tokens=20),
            train_dataset=dataset,
        )


def test_the_budget_check_reads_image_headers_when_sizes_are_missing(tmp_path):
    images = [Image.new("RGB", (56, 56)), Image.new("RGB", (224, 224)), Image.new("RGB", (56, 56))]
    dataset = rows_to_dataset(rows(image=images, image_size=None))

    with pytest.raises(ValueError, match="row 1"):
        PerceptionGRPOTrainer(
            tiny_vlm("qwen2_5_vl"), iou_reward, make_args(tmp_path, max_pixels=224 * 224, max_image_tokens=20),
            train_dataset=dataset,
        )  # fmt: skip


def test_eval_datasets_are_checked_and_prepared_too(tmp_path):
    bad = rows_to_dataset(rows(task=["grounding", "ocr", "pose"]))
    with pytest.raises(ValueError, match=r"eval_dataset\['val'\] row 2: unknown task 'pose'"):
        PerceptionGRPOTrainer(
            tiny_vlm("qwen2_5_vl"), iou_reward, make_args(tmp_path),
            train_dataset=make_synthetic("grounding", 2), eval_dataset={"val": bad},
        )  # fmt: skip


def test_remove_unused_columns_is_refused(tmp_path):
    with pytest.raises(ValueError, match="remove_unused_columns"):
        PerceptionGRPOTrainer(
            tiny_vlm("qwen2_5_vl"), iou_reward, make_args(tmp_path, remove_unused_columns=True),
            train_dataset=make_synthetic("grounding", 2),
        )  # fmt: skip


# ------------------------------------------------------------------------------------ mixed tasks, logs


def mixed_dataset(family):
    dataset = make_synthetic("mixed", 24, seed=3, box_format=family, max_pixels=56 * 56)
    tasks = list(dataset.select_columns(["task"])["task"])
    picks = [
        i
        for task in ("grounding", "counting", "ocr", "detection")
        for i in [j for j, t in enumerate(tasks) if t == task][:2]
    ]
    assert len(picks) == 8
    return dataset.select(picks)


def test_a_mixed_task_run_routes_rows_and_logs_per_task_means(tmp_path):
    rewards = [iou_reward, count_reward, ocr_reward, detection_reward, length_reward]
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        rewards,
        make_args(tmp_path, max_steps=2, per_device_train_batch_size=8),
        train_dataset=mixed_dataset("qwen2_5_vl"),
    )

    trainer.train()

    keys = set().union(*trainer.state.log_history)
    for reward, task in [("iou_reward", "grounding"), ("count_reward", "counting"), ("ocr_reward", "ocr"),
                         ("detection_reward", "detection")]:  # fmt: skip
        assert f"rewards/{reward}/{task}/mean" in keys
        others = {t for t in ("grounding", "counting", "ocr", "detection") if t != task}
        assert not {f"rewards/{reward}/{t}/mean" for t in others} & keys  # None for other tasks
    assert {f"rewards/length_reward/{t}/mean" for t in ("grounding", "counting", "ocr", "detection")} <= keys
    for metric in (
        "perception/parse_failure_rate",
        "perception/empty_answer_rate",
        "perception/objects_per_completion",
    ):
        values = [log[metric] for log in trainer.state.log_history if metric in log]
        assert len(values) == 2 and all(0 <= v for v in values)


def test_answer_statistics_parse_each_completion(tmp_path):
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"), length_reward, make_args(tmp_path), train_dataset=mixed_dataset("qwen2_5_vl")
    )
    data = trainer.train_dataset
    inputs = [data[0], data[1], data[2], data[4]]  # grounding, grounding, counting, ocr
    texts = ['[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]', "no idea", "<answer></answer>", "STOP"]

    trainer._calculate_rewards(
        inputs, [x["prompt"] for x in inputs], [completion(t) for t in texts], [[0]] * 4
    )

    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    assert metrics["perception/parse_failure_rate"] == [pytest.approx(2 / 3)]
    assert metrics["perception/objects_per_completion"] == [pytest.approx(2 / 3)]
    assert metrics["perception/empty_answer_rate"] == [0.25]


class FakeTrackio:
    def __init__(self):
        self.logged = []

    def Image(self, image):  # noqa: N802 - mirrors trackio.Image
        return image

    def Table(self, dataframe):  # noqa: N802 - mirrors trackio.Table
        return dataframe

    def log(self, data):
        self.logged.append(data)


def colours(image):
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return {tuple(p) for p in np.unique(pixels, axis=0)}


def test_box_images_are_drawn_into_the_completions_table_and_saved(tmp_path, monkeypatch):
    from trl.trainer import grpo_trainer

    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"),
        [iou_reward, length_reward],
        make_args(tmp_path, log_box_images=True, max_pixels=112 * 112),
        train_dataset=make_synthetic("grounding", 2, box_format="qwen2_5_vl", max_pixels=112 * 112),
    )
    forced_generation(trainer, '[{"bbox_2d": [2, 2, 20, 20], "label": "guess"}]')
    backend = FakeTrackio()
    monkeypatch.setattr(grpo_trainer, "trackio", backend, raising=False)
    trainer.args.report_to = ["trackio"]

    trainer.train()

    table = backend.logged[0]["completions"]
    drawn = [cell[0] for cell in table["image"]]
    assert len(drawn) == len(table) == 2
    for image in drawn:
        assert image.size == (256, 256)  # 112-pixel images are enlarged for viewing
        assert {PRED_COLOR, GT_COLOR} <= colours(image)
    saved = sorted(glob.glob(os.path.join(tmp_path, "completions", "box_images_00001", "*.png")))
    assert [os.path.basename(p) for p in saved] == ["0000.png", "0001.png"]
    assert {PRED_COLOR, GT_COLOR} <= colours(Image.open(saved[0]))
    assert os.path.exists(os.path.join(tmp_path, "completions", "completions_00001.parquet"))


def multi_image_dataset(second_image):
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    from trl_perception.data.rows import prompt_feature

    prompt = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "image", "text": None},
                                           {"type": "text", "text": "Output the bounding box of the square."}]}]  # fmt: skip
    features = Features(
        {
            "prompt": prompt_feature(),
            "images": List(ImageFeature()),
            "task": Value("string"),
            "solution": List(Value("float64")),
            "image_size": List(Value("int64")),
        }
    )
    return Dataset.from_dict(
        {
            "prompt": [prompt],
            "images": [[Image.new("RGB", (300, 170)), second_image]],
            "task": ["grounding"],
            "solution": [[30.0, 17.0, 150.0, 85.0]],
            "image_size": [[300, 170]],
        },
        features=features,
    )


def test_multi_image_rows_resize_every_image_and_scale_by_the_first(tmp_path):
    dataset = multi_image_dataset(Image.new("RGB", (90, 400)))
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen2_5_vl"), iou_reward, make_args(tmp_path, max_pixels=112 * 112), train_dataset=dataset
    )
    row = trainer.train_dataset[0]

    first, second = row["images"]
    assert first.size == (140, 84) and second.size[0] % 28 == 0 and second.size[1] % 28 == 0
    assert row["image_size"] == row["input_size"] == [140, 84]
    assert row["solution"] == pytest.approx([14.0, 8.4, 70.0, 42.0])


def test_a_multi_image_row_missing_one_image_is_named(tmp_path):
    with pytest.raises(ValueError, match="row 0: no image"):
        PerceptionGRPOTrainer(
            tiny_vlm("qwen2_5_vl"), iou_reward, make_args(tmp_path), train_dataset=multi_image_dataset(None)
        )


def test_the_config_parses_from_the_command_line_like_any_trl_config(tmp_path):
    from trl import TrlParser

    (args,) = TrlParser(PerceptionGRPOConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--box_format",
            "qwen2_vl",
            "--max_pixels",
            "1003520",
            "--keep_box_tokens",
            "false",
            "--log_box_images",
            "true",
            "--use_cpu",
            "true",
        ]  # fmt: skip
    )

    assert (args.box_format, args.max_pixels, args.min_pixels) == ("qwen2_vl", 1003520, None)
    assert args.keep_box_tokens is False and args.log_box_images and args.log_completions
