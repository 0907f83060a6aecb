"""Specification of crop turns in `PerceptionGRPOTrainer` (`crop_turns`, after MGPO): TRL's own tool loop with a
`CropEnvironment` per rollout, on tiny Qwen3-VL and Qwen2.5-VL (the latter with the shipped tool template). The
model's sampling is replaced by fixed texts (a random tiny model never writes a tool call); everything after it,
the tool call, the crop, the inserted turn, the masks and the loss forward pass, is TRL's real path."""

import math

import pytest
import torch
from PIL import Image
from trl.chat_template_utils import (
    is_chat_template_prefix_preserving,
    qwen2_5_vl_chat_template,
    supports_tool_calling,
)

from tests._helpers import cpu_run_args
from trl_perception.boxes import paired_box_iou
from trl_perception.crop import crop_pixel_limits, crop_region, tool_chat_template
from trl_perception.data.synthetic import make_synthetic
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

pytestmark = pytest.mark.slow

# The box each family's tool call names: 0-1000 for Qwen3-VL, input pixels for Qwen2.5-VL (inputs are ~112x84)
BOXES = {"qwen3_vl": [100, 100, 600, 700], "qwen2_vl": [100, 100, 600, 700], "qwen2_5_vl": [14, 7, 84, 70]}
FIRST_TURNS = (
    '<tool_call>\n{{"name": "crop_image", "arguments": {{"bbox_2d": {box}}}}}\n</tool_call><|im_end|>',  # a crop
    "The answer is 3.<|im_end|>",  # answers without calling the tool: MGPO's forced second turn
    "no end of turn",  # cut at max_completion_length: nothing to follow
    '<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [50, 50, 10, 10]}}\n</tool_call><|im_end|>',
)
SECOND_TURN = "Final answer 7.<|im_end|>"


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def make_args(tmp_path, **overrides):
    settings = dict(
        max_steps=1, num_generations=4, per_device_train_batch_size=8, max_completion_length=512, crop_turns=1
    )
    return cpu_run_args(PerceptionGRPOConfig, tmp_path, **{**settings, **overrides})


def rows_with_targets(box_format):
    rows = make_synthetic("grounding", 2, seed=0, box_format=box_format, image_size=(400, 300))
    return rows.add_column("target_box", [[float(v) for v in s] for s in rows["solution"]])


def crop_trainer(box_format, tmp_path, rows=None, **overrides):
    trainer = PerceptionGRPOTrainer(
        tiny_vlm(box_format),
        reward_funcs=[zero_reward],
        args=make_args(tmp_path, **overrides),
        train_dataset=rows if rows is not None else rows_with_targets(box_format),
    )
    tokenizer = trainer.processing_class.tokenizer
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    generate = trainer._generate_single_turn
    first = [t.format(box=BOXES[box_format]) if "{box}" in t else t for t in FIRST_TURNS]

    def scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        ids, logprobs = generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        if not has_tool_images:
            injected = set(trainer._injected_rows)  # ground-truth answers (solution_in_group) stay as injected
            return [ids[i] if i in injected else encode(first[i % 4]) for i in range(len(ids))], logprobs
        return [encode(SECOND_TURN) for _ in ids], logprobs

    trainer._generate_single_turn = scripted
    return trainer


def run_one_step(trainer):
    """Train one step; return the generation batch's inputs and outputs and the vision encoder's inputs in
    the loss forward pass (gradients on)."""
    batches, vision_inputs = [], []
    score = trainer._generate_and_score_completions

    def record(inputs):
        out = score(inputs)
        batches.append((inputs, out))
        return out

    def hook(module, args, kwargs):
        if torch.is_grad_enabled():
            pixels = args[0] if args else kwargs.get("hidden_states", kwargs.get("pixel_values"))
            vision_inputs.append((pixels.detach().clone(), kwargs["grid_thw"].detach().clone()))

    trainer._generate_and_score_completions = record
    visual = trainer.model.model.visual
    handle = visual.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        trainer.train()
    finally:
        handle.remove()
    (inputs, out), = batches
    return inputs, out, vision_inputs


@pytest.mark.parametrize("box_format", ["qwen3_vl", "qwen2_5_vl"])
def test_the_crop_reaches_the_loss_forward_pass(box_format, tmp_path):
    trainer = crop_trainer(box_format, tmp_path)
    inputs, out, vision_inputs = run_one_step(trainer)
    assert vision_inputs, "the loss forward pass never ran the vision encoder"
    pixels, grids = vision_inputs[0]
    lo, hi = crop_pixel_limits(processor_limits=(trainer.min_pixels, trainer.max_pixels))
    for row in (0, 4):  # the rollouts that cropped
        crop = crop_region(
            inputs[row]["original_image"], BOXES[box_format], box_format, inputs[row]["input_size"],
            min_pixels=lo, max_pixels=hi,
        )
        assert crop.valid
        expected = trainer.processing_class.image_processor(images=[crop.image], return_tensors="pt")
        grid = expected["image_grid_thw"][0]
        assert any(torch.equal(g, grid) for g in grids)
        patches, n = expected["pixel_values"], expected["pixel_values"].shape[0]
        starts = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), grids.prod(-1)]), 0)[:-1]
        assert any(
            torch.allclose(pixels[s : s + n], patches, atol=1e-5) for s in starts.tolist() if s + n <= len(pixels)
        ), "the crop's pixels are not among the loss forward pass's images"
    assert out["num_images"] == [2, 2, 1, 2] * 2  # crop, forced original, none, invalid box -> original


@pytest.mark.parametrize("box_format", ["qwen3_vl", "qwen2_5_vl", "qwen2_vl"])
def test_the_inserted_turn_is_masked_exactly(box_format, tmp_path):
    trainer = crop_trainer(box_format, tmp_path)
    _, out, _ = run_one_step(trainer)
    decode = trainer.processing_class.tokenizer.decode
    for row in (0, 1, 3):
        ids = out["completion_ids"][row][out["completion_mask"][row].bool()]
        mask = out["tool_mask"][row][: len(ids)]
        zeros = (mask == 0).nonzero().flatten()
        start, end = int(zeros[0]), int(zeros[-1]) + 1
        assert len(zeros) == end - start  # one contiguous block
        own_first, inserted, own_second = decode(ids[:start]), decode(ids[start:end]), decode(ids[end:])
        assert own_first.endswith("<|im_end|>") and "<tool_response>" not in own_first
        assert inserted.startswith("\n<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|>")
        assert inserted.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
        assert own_second == SECOND_TURN
    ids = out["completion_ids"][2][out["completion_mask"][2].bool()]
    assert out["tool_mask"][2][: len(ids)].all()  # no second turn for a cut rollout


def test_crop_metrics_are_logged(tmp_path):
    trainer = crop_trainer("qwen3_vl", tmp_path)
    inputs, _, _ = run_one_step(trainer)
    logged = trainer.state.log_history[0]
    assert logged["crop/call_rate"] == 0.5  # rollouts 0 and 3 of each group called the tool
    assert logged["crop/invalid_rate"] == 0.5  # rollout 3's box has x1 > x2
    assert logged["crop/crop_rate"] == 0.25  # only rollout 0 got a crop
    assert logged["crop/forced_rate"] == 0.25  # rollout 1 answered without a crop
    w, h = inputs[0]["original_image"].size  # [100, 100, 600, 700] of 0-1000 in original pixels
    box = (math.floor(w * 0.1), math.floor(h * 0.1), math.ceil(w * 0.6), math.ceil(h * 0.7))  # widened to pixels
    assert logged["crop/mean_crop_area"] == pytest.approx((box[2] - box[0]) * (box[3] - box[1]) / (w * h))
    ious = [float(paired_box_iou([box], [inputs[r]["target_box"]])[0]) for r in (0, 4)]
    assert logged["crop/mean_iou"] == pytest.approx(sum(ious) / 2)


def test_without_forcing_an_answer_without_a_crop_ends_the_rollout(tmp_path):
    trainer = crop_trainer("qwen3_vl", tmp_path, crop_forced=False)
    _, out, _ = run_one_step(trainer)
    assert out["num_images"] == [2, 1, 1, 2] * 2
    assert trainer.state.log_history[0]["crop/forced_rate"] == 0.0


def test_a_ground_truth_answer_in_the_group_gets_no_forced_turn(tmp_path):
    from trl_perception.formats import render_objects

    rows = rows_with_targets("qwen3_vl")
    answers = [
        [{"role": "assistant", "content": render_objects([box], "qwen3_vl", size)}]
        for box, size in zip(rows["solution"], rows["image_size"])
    ]
    trainer = crop_trainer("qwen3_vl", tmp_path, rows=rows.add_column("completion", answers), solution_in_group=1)
    _, out, _ = run_one_step(trainer)
    assert out["num_images"] == [2, 2, 1, 1] * 2  # rollout 3 of each group is the answer: one turn
    ids = out["completion_ids"][3][out["completion_mask"][3].bool()]
    assert out["tool_mask"][3][: len(ids)].all()
    assert trainer.state.log_history[0]["crop/forced_rate"] == 0.25


@pytest.mark.parametrize("turns", [-1, 1.5, True])
def test_crop_turns_must_be_a_non_negative_integer(turns, tmp_path):
    with pytest.raises(ValueError, match="crop_turns"):
        make_args(tmp_path, crop_turns=turns)


def test_crop_turns_set_the_tool_iterations(tmp_path):
    assert make_args(tmp_path, crop_turns=2).max_tool_calling_iterations == 2
    with pytest.raises(ValueError, match="max_tool_calling_iterations"):
        make_args(tmp_path, crop_turns=1, max_tool_calling_iterations=3)


def test_crop_turns_replace_the_qwen2_5_vl_template_and_keep_the_rows_original(tmp_path):
    trainer = crop_trainer("qwen2_5_vl", tmp_path)
    config = trainer.model.config  # a sampled video token would break TRL's loss pass once tool images exist
    assert {config.image_token_id, config.video_token_id} <= set(trainer.generation_config.suppress_tokens)
    assert trainer.processing_class.chat_template == tool_chat_template("qwen2_5_vl")
    row = trainer.train_dataset[0]
    original = rows_with_targets("qwen2_5_vl")[0]["image"]
    assert row["original_image"].size == original.size and row["image"].size == tuple(row["input_size"])
    assert row["image"].size != original.size


@pytest.mark.parametrize("box_format", ["qwen2_vl", "qwen2_5_vl"])
def test_the_shipped_template_passes_trls_tool_checks(box_format):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm(box_format))
    assert not supports_tool_calling(processor)  # what the checkpoints ship
    processor.chat_template = tool_chat_template(box_format)
    assert supports_tool_calling(processor) and is_chat_template_prefix_preserving(processor)


def test_qwen3_vl_template_passes_trls_tool_checks_as_is():
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm("qwen3_vl"))
    assert tool_chat_template("qwen3_vl") is None
    assert supports_tool_calling(processor) and is_chat_template_prefix_preserving(processor)


@pytest.mark.parametrize(
    "conversation",
    [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find the dog."}]}],
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "3"}]},
            {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        ],
        [{"role": "user", "content": "plain text"}],
    ],
)
def test_the_shipped_template_renders_tool_free_conversations_like_qwen2_5_vl(conversation):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm("qwen2_5_vl"))
    for generation_prompt in (False, True):
        ours = processor.apply_chat_template(
            conversation, chat_template=tool_chat_template("qwen2_5_vl"), add_generation_prompt=generation_prompt
        )
        theirs = processor.apply_chat_template(
            conversation, chat_template=qwen2_5_vl_chat_template, add_generation_prompt=generation_prompt
        )
        assert ours == theirs


def test_the_shipped_template_renders_tools_and_image_tool_responses():
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm("qwen2_5_vl"))
    tool = {"type": "function", "function": {"name": "crop_image", "parameters": {"type": "object"}}}
    messages = [
        {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (56, 56))}, {"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": [], "tool_calls": [
            {"type": "function", "function": {"name": "crop_image", "arguments": {"bbox_2d": [1, 2, 3, 4]}}}]},
        {"role": "tool", "name": "crop_image", "content": [
            {"type": "image", "image": Image.new("RGB", (56, 56))}, {"type": "text", "text": "enlarged"}]},
    ]
    text = processor.apply_chat_template(
        messages, tools=[tool], chat_template=tool_chat_template("qwen2_5_vl"), add_generation_prompt=True
    )
    assert "<tools>\n" + '{"type": "function", "function": {"name": "crop_image"' in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n</tool_call><|im_end|>\n' in text
    assert text.endswith(
        "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>enlarged\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_crop_turns_provide_the_environment_factory(tmp_path):
    from trl_perception.crop import CropEnvironment

    with pytest.raises(ValueError, match="environment_factory"):
        PerceptionGRPOTrainer(
            tiny_vlm("qwen3_vl"),
            reward_funcs=[zero_reward],
            args=make_args(tmp_path),
            train_dataset=rows_with_targets("qwen3_vl"),
            environment_factory=lambda: CropEnvironment("qwen3_vl"),
        )
