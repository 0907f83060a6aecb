"""Specification of the SFT answers (`completion` column): the ground truth written as the assistant's turn in
each family's format, in a chosen object order, and a plain `trl.SFTTrainer` training on builder rows."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._helpers import CPU_RUN
from trl_perception.data.completions import add_completions, render_completion
from trl_perception.data.synthetic import make_synthetic
from trl_perception.formats import parse_count, parse_objects
from trl_perception.frames import BOX_FORMATS, Frame, model_input_size
from trl_perception.rewards import count_reward, detection_reward, iou_reward, ocr_reward

DETECTION = [
    {"bbox_2d": [300.0, 200.0, 400.0, 300.0], "label": "dog"},
    {"bbox_2d": [10.0, 20.0, 110.0, 120.0], "label": "cat"},
    {"bbox_2d": [500.0, 20.0, 600.0, 100.0], "label": "cat"},
]


def test_grounding_answer_in_each_family_frame():
    # 640x480 image: 0-1000 is (x / 0.64, y / 0.48); Qwen2.5-VL writes pixels of the 644x476 input
    box = [64, 24, 192, 72]
    assert render_completion("grounding", box, image_size=(640, 480), box_format="qwen2_vl") == (
        "<|box_start|>(100,50),(300,150)<|box_end|>"
    )
    assert render_completion("grounding", box, image_size=(640, 480), box_format="qwen3_vl") == (
        '[{"bbox_2d": [100, 50, 300, 150]}]'
    )
    assert render_completion(
        "grounding", box, image_size=(640, 480), box_format="qwen2_5_vl", input_size=(644, 476)
    ) == '[{"bbox_2d": [64, 24, 193, 71]}]'


def test_without_a_family_boxes_are_json_in_original_pixels():
    assert render_completion("grounding", [1.4, 2.6, 30, 40], image_size=(100, 100)) == '[{"bbox_2d": [1, 3, 30, 40]}]'


def test_object_orders():
    kwargs = dict(image_size=(640, 480))
    labels = lambda text: [o["label"] for o in json.loads(text)]  # noqa: E731
    assert labels(render_completion("detection", DETECTION, object_order="annotation", **kwargs)) == ["dog", "cat", "cat"]
    # reading order: top to bottom (y1 20, 20, 200), then left to right (x1 10 before 500)
    sorted_text = render_completion("detection", DETECTION, object_order="sorted", **kwargs)
    assert [o["bbox_2d"][0] for o in json.loads(sorted_text)] == [10, 500, 300]
    a = render_completion("detection", DETECTION, object_order="random", rng=np.random.default_rng([0, 7]), **kwargs)
    b = render_completion("detection", DETECTION, object_order="random", rng=np.random.default_rng([0, 7]), **kwargs)
    assert a == b and sorted(json.loads(a), key=str) == sorted(json.loads(sorted_text), key=str)


def test_random_order_draws_a_new_permutation_per_row_and_depends_only_on_the_seed():
    rows = make_synthetic("counting", 24, seed=3, box_format="qwen3_vl", min_objects=4, max_objects=6)
    first = add_completions(rows, object_order="random", seed=11)["completion"]
    again = add_completions(rows, object_order="random", seed=11)["completion"]
    other = add_completions(rows, object_order="random", seed=12)["completion"]
    annotated = add_completions(rows)["completion"]
    assert first == again and first != other
    differs = [f != a for f, a in zip(first, annotated)]
    assert sum(differs) >= 12  # with 4-6 objects a random permutation is rarely the identity


def test_counting_answers_are_points_or_a_bare_count():
    solution = {"count": 2, "points": [[64, 48], [320, 240]], "label": "apple"}
    assert render_completion("counting", solution, image_size=(640, 480), box_format="qwen2_vl") == (
        "<|object_ref_start|>apple<|object_ref_end|><|box_start|>(100,100)<|box_end|><|box_start|>(500,500)<|box_end|>"
    )
    assert render_completion("counting", {"count": 7}, image_size=(640, 480), box_format="qwen3_vl") == "7"
    assert render_completion("counting", json.dumps({"count": 3}), box_format="qwen3_vl") == "3"


def test_ocr_answer_is_the_text_and_think_wraps_any_answer():
    assert render_completion("ocr", "Hello\nworld") == "Hello\nworld"
    assert render_completion("grounding", [0, 0, 10, 10], image_size=(10, 10), think=True) == (
        '<think>\n</think>\n<answer>[{"bbox_2d": [0, 0, 10, 10]}]</answer>'
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(task="segmentation", solution=[]), "unknown task"),
        (dict(task="grounding", solution=[0, 0, 1, 1], image_size=(9, 9), object_order="by size"), "object_order"),
        (dict(task="detection", solution=DETECTION, image_size=(9, 9), object_order="random"), "rng"),
        (dict(task="grounding", solution=[0, 0, 1, 1], box_format="llava", image_size=(9, 9)), "box_format"),
    ],
)
def test_bad_options_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        render_completion(**kwargs)


@pytest.mark.parametrize("box_format", BOX_FORMATS)
@pytest.mark.parametrize("task", ["grounding", "counting", "detection", "ocr"])
def test_the_answer_earns_full_reward(task, box_format):
    rows = add_completions(make_synthetic(task, 4, seed=5, box_format=box_format))
    data = rows.with_format(None).select_columns([c for c in rows.column_names if c not in ("image", "prompt")])
    columns = {c: data[c] for c in data.column_names if c != "completion"}
    completions = [[{"role": "assistant", "content": c[0]["content"][0]["text"]}] for c in data["completion"]]
    reward = {"grounding": iou_reward, "counting": count_reward, "detection": detection_reward, "ocr": ocr_reward}[task]
    scores = reward(completions, **columns)
    assert scores == pytest.approx([1.0] * 4, abs=1e-9 if task == "ocr" else 0.03)  # boxes: integer rounding


@given(
    box=st.tuples(*[st.integers(0, 300)] * 4).map(lambda b: [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]),
    size=st.tuples(st.integers(301, 2000), st.integers(301, 2000)),
    box_format=st.sampled_from(BOX_FORMATS),
)
@settings(max_examples=60, deadline=None)
def test_answers_parse_back_to_the_ground_truth_within_rounding(box, size, box_format):
    input_size = model_input_size(size, box_format)
    text = render_completion("grounding", box, image_size=size, box_format=box_format, input_size=input_size)
    parsed = parse_objects(text, box_format).to_pixels(Frame.of(box_format, size, input_size))
    # one rounded unit of the family's frame, in pixels
    unit = [size[0] / 1000 + 1, size[1] / 1000 + 1] if box_format != "qwen2_5_vl" else [
        size[0] / input_size[0] + 1, size[1] / input_size[1] + 1]  # fmt: skip
    assert np.allclose(parsed.objects[0].bbox, box, atol=max(unit))
    assert parse_count(text, box_format) == 1


@pytest.mark.slow
@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_a_plain_sft_trainer_trains_on_builder_rows(box_format, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from trl_perception.testing import tiny_vlm

    rows = add_completions(make_synthetic(["grounding", "detection"], 4, seed=0, box_format=box_format))
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, max_length=None,
        **{k: v for k, v in CPU_RUN.items() if k != "seed"},
    )  # fmt: skip
    trainer = SFTTrainer(model=tiny_vlm(box_format), args=args, train_dataset=rows)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    # the loss is on the answer only: TRL's prompt-completion form masks the prompt
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    answer = trainer.processing_class.tokenizer.decode(ids[labels != -100])
    assert answer.startswith(rows[0]["completion"][0]["content"][0]["text"][:20])
