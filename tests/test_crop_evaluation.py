"""Specification of `evaluation.generate_with_crop_turns`: turn 1 with the crop tool, the crop from the original,
turn 2 on the crop, greedy, with the training-time environment, instruction and template. The model's `generate`
is scripted (a random tiny model never calls a tool); rendering, parsing, cropping and the processor are real."""

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from trl_perception.data.synthetic import make_synthetic
from trl_perception.evaluation import generate_with_crop_turns
from trl_perception.testing import tiny_vlm

pytestmark = pytest.mark.slow


def scripted(model, processor, turns):
    """`model.generate` returning `turns[call][row]` after each prompt; records the images it was given."""
    tokenizer = processor.tokenizer
    calls = []

    def generate(input_ids, **kwargs):
        texts = turns[len(calls)]
        calls.append({"input_ids": input_ids, "image_grid_thw": kwargs.get("image_grid_thw")})
        new = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(n) for n in new)
        pad = tokenizer.pad_token_id
        new = torch.tensor([n + [pad] * (width - len(n)) for n in new])
        return torch.cat([input_ids, new], dim=1)

    model.generate = generate
    return calls


@pytest.mark.parametrize(("box_format", "box"), [("qwen3_vl", [0, 0, 500, 500]), ("qwen2_5_vl", [0, 0, 56, 56])])
def test_two_turns_crop_the_original_and_answer(box_format, box):
    rows = make_synthetic("grounding", 3, seed=0, box_format=box_format, image_size=(400, 300))
    rows = rows.add_column("target_box", [[0.0, 0.0, 100.0, 100.0]] * 3)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm(box_format))
    processor = AutoProcessor.from_pretrained(tiny_vlm(box_format))
    arguments = json.dumps({"bbox_2d": box})
    call = f'<tool_call>\n{{"name": "crop_image", "arguments": {arguments}}}\n</tool_call><|im_end|>'
    calls = scripted(
        model,
        processor,
        [
            [call, "It is 3.<|im_end|>", "no end"],  # turn 1: a crop, an answer without a crop, a cut turn
            ["Final 7.<|im_end|>", "Final 8.<|im_end|>"],  # turn 2 for rows 0 and 1 (row 1 forced)
        ],
    )
    template = processor.chat_template
    outputs = generate_with_crop_turns(model, processor, rows, box_format, max_new_tokens=32)
    crop, forced, cut = outputs
    assert crop.called and crop.second_turn == "Final 7." and crop.answer == "Final 7."
    (record,) = crop.crops
    assert record.valid and not record.forced and record.box[0] == 0 and record.iou is not None
    assert not forced.called and forced.crops[0].forced and forced.answer == "Final 8."
    assert cut.second_turn is None and cut.answer == "no end" and cut.crops == []
    # the first prompt lists the tool; the second holds the prompt image and the crop (or the image again)
    first_prompt = processor.tokenizer.decode(calls[0]["input_ids"][0])
    assert '"name": "crop_image"' in first_prompt and "First, identify" in first_prompt
    assert len(calls[1]["image_grid_thw"]) == 4
    second_prompt = processor.tokenizer.decode(calls[1]["input_ids"][0])
    assert "<tool_response>\n<|vision_start|>" in second_prompt and "Here is the region" in second_prompt
    assert processor.chat_template == template  # the caller's processor is left alone


def test_without_forcing_an_answer_without_a_crop_is_final():
    rows = make_synthetic("grounding", 1, seed=0, box_format="qwen3_vl")
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm("qwen3_vl"))
    processor = AutoProcessor.from_pretrained(tiny_vlm("qwen3_vl"))
    scripted(model, processor, [["It is 3.<|im_end|>"]])
    (out,) = generate_with_crop_turns(model, processor, rows, "qwen3_vl", forced=False)
    assert out.second_turn is None and out.answer == "It is 3." and out.crops == []
