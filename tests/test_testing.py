"""Specification of trl_perception.testing: tiny offline Qwen-VL checkpoints that reload, generate and train."""

import json
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests._helpers import cpu_run_args
from trl_perception.frames import BOX_FORMATS
from trl_perception.testing import QWEN_SPECIAL_TOKENS, build_tiny_vlm, tiny_vlm

MODEL_CLASS = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
PROCESSOR_CLASS = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find the red circle."}]}]


@pytest.fixture(scope="module", params=BOX_FORMATS)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tokenizer():
    return AutoProcessor.from_pretrained(tiny_vlm("qwen2_5_vl")).tokenizer


def off_grid_image(width=150, height=97):
    """An image whose sides are not multiples of the patch factor, so the processor must resize it."""
    image = Image.new("RGB", (width, height), "grey")
    image.paste((255, 0, 0), (20, 30, 60, 70))
    return image


def test_families_are_the_three_qwen_vl_generations():
    assert BOX_FORMATS == ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def test_build_saves_a_checkpoint_that_auto_classes_reload(family, tmp_path):
    path = build_tiny_vlm(family, tmp_path / "ckpt")

    assert path == str(tmp_path / "ckpt")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == MODEL_CLASS[family]
    assert type(processor).__name__ == PROCESSOR_CLASS[family]
    assert processor.video_processor is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 100_000 < model.num_parameters() < 1_000_000


def test_special_tokens_have_ids_0_to_13_in_qwen_order(family):
    tokenizer = AutoProcessor.from_pretrained(tiny_vlm(family)).tokenizer
    config = AutoModelForImageTextToText.from_pretrained(tiny_vlm(family)).config

    assert tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(14))
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == 12
    assert config.video_token_id == 13
    assert (config.vision_start_token_id, config.vision_end_token_id) == (9, 10)


def test_tokenizer_follows_qwen_conventions(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None and tokenizer.unk_token is None
    assert tokenizer.padding_side == "left"
    for token in ("<think>", "</think>", "<tool_call>", "</tool_call>"):
        assert tokenizer.tokenize(f"a{token}b") == ["a", token, "b"]
        assert token not in tokenizer.all_special_tokens
    assert 900 <= len(tokenizer) <= 1024


@given(st.integers(min_value=0, max_value=10**12))
def test_digits_tokenise_one_per_token(tokenizer, number):
    assert tokenizer.tokenize(str(number)) == list(str(number))


@given(st.text(max_size=40))
def test_any_text_round_trips_through_the_byte_level_tokenizer(tokenizer, text):
    import unicodedata

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


@pytest.mark.parametrize(
    "text, max_tokens",
    [
        ('[{"bbox_2d": [12, 34, 56, 78], "label": "red circle"}]', 29),
        ("```json\n[]\n```", 6),
        ("(12,34),(56,78)", 13),
        ("<answer>[1, 2]</answer>", 12),
        ("Output the bounding box of the traffic light in the image.", 13),
        ("Please output bbox coordinates and names of person, dog, teddy bear.", 18),
    ],
)
def test_perception_text_tokenises_compactly(tokenizer, text, max_tokens):
    # 8 digits are 8 tokens on their own; the budgets leave the rest about one token per word or symbol run
    assert len(tokenizer.tokenize(text)) <= max_tokens


def test_generation_config_stops_at_im_end_or_endoftext(family):
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm(family))

    assert list(model.generation_config.eos_token_id) == [2, 0]
    assert model.generation_config.pad_token_id == 0


def test_processor_renders_chat_and_resizes_off_grid_image(family):
    processor = AutoProcessor.from_pretrained(tiny_vlm(family))

    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[off_grid_image()], return_tensors="pt")

    assert text.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Find the red circle." in text
    grid = inputs["image_grid_thw"]
    assert grid.shape == (1, 3) and grid[0, 0] == 1
    assert inputs["pixel_values"].shape[0] == grid.prod()
    num_image_tokens = int((inputs["input_ids"] == 12).sum())
    assert num_image_tokens == grid.prod() // 4
    assert num_image_tokens <= 16


def test_model_generates_from_image_prompt(family):
    path = tiny_vlm(family)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=[text, text],
        images=[off_grid_image(), off_grid_image(64, 200)],
        padding=True,
        return_tensors="pt",
    )

    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)

    assert output.shape[0] == 2
    assert inputs["input_ids"].shape[1] < output.shape[1] <= inputs["input_ids"].shape[1] + 4
    assert all(isinstance(t, str) for t in processor.batch_decode(output[:, inputs["input_ids"].shape[1] :]))


def test_pixel_limits_can_be_overridden(tmp_path):
    path = build_tiny_vlm("qwen2_vl", tmp_path, min_pixels=56 * 56, max_pixels=224 * 224)
    processor = AutoProcessor.from_pretrained(path)

    inputs = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[off_grid_image(224, 224)]
    )

    assert processor.image_processor.size == {"shortest_edge": 56 * 56, "longest_edge": 224 * 224}
    assert inputs["image_grid_thw"][0].tolist() == [1, 16, 16]  # 256 patches, 64 image tokens


def test_same_seed_gives_identical_weights_and_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_vlm("qwen3_vl", tmp_path / "a", seed=7)
    assert torch.rand(1) == expected_next
    b = build_tiny_vlm("qwen3_vl", tmp_path / "b", seed=7)
    c = build_tiny_vlm("qwen3_vl", tmp_path / "c", seed=8)

    def read(path):
        with open(os.path.join(path, "model.safetensors"), "rb") as f:
            return f.read()

    assert read(a) == read(b)
    assert read(a) != read(c)


def test_overrides_build_the_model_that_learns(tmp_path):
    # tiny-models.md "Learning": about 0.99M parameters, fast M-RoPE, full attention in every vision block
    path = build_tiny_vlm(
        "qwen2_5_vl",
        tmp_path,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=4.0,
        mrope_section=[2, 7, 7],
        vision_depth=3,
        vision_hidden_size=64,
        vision_num_heads=2,
        fullatt_block_indexes=[0, 1, 2],
        tokenizer_vocab_size=384,
    )
    model = AutoModelForImageTextToText.from_pretrained(path)

    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (128, 4, 384)
    assert text.rope_parameters["rope_theta"] == 4.0 and text.rope_parameters["mrope_section"] == [2, 7, 7]
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (3, 64, 128)
    assert list(vision.fullatt_block_indexes) == [0, 1, 2]
    assert 0.9e6 < model.num_parameters() < 1.1e6


def test_torch_dtype_override_saves_bfloat16_weights(tmp_path):
    path = build_tiny_vlm("qwen2_vl", tmp_path, torch_dtype="bfloat16")

    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["dtype"] == "bfloat16"
    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    assert model.dtype == torch.bfloat16


def test_unknown_override_raises_type_error_naming_it(tmp_path):
    with pytest.raises(TypeError, match="hiden_size"):
        build_tiny_vlm("qwen2_vl", tmp_path, hiden_size=32)


def test_override_of_another_family_raises_type_error(tmp_path):
    with pytest.raises(TypeError, match="only valid for qwen2_5_vl"):
        build_tiny_vlm("qwen2_vl", tmp_path, fullatt_block_indexes=[0])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mrope_section": [4, 4, 4]}, "head_dim / 2 = 8"),
        ({"hidden_size": 128, "mrope_section": [4, 2, 2]}, "head_dim / 2 = 16"),
        ({"num_attention_heads": 3}, "divisible"),
        ({"num_key_value_heads": 3}, "multiple"),
        ({"min_pixels": 10_000, "max_pixels": 100}, "min_pixels"),
    ],
)
def test_inconsistent_overrides_raise_value_error(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_vlm("qwen2_5_vl", tmp_path, **overrides)


def test_unknown_family_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        build_tiny_vlm("llava", tmp_path)


def test_tiny_vlm_builds_once_per_process():
    assert tiny_vlm("qwen2_5_vl") == tiny_vlm("qwen2_5_vl")
    assert tiny_vlm("qwen2_5_vl", seed=1) != tiny_vlm("qwen2_5_vl")


def completion_length_reward(completions, **kwargs):
    """Varies between completions of a random model, so GRPO advantages (and gradients) are non-zero."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [float(len(t)) for t in texts]


@pytest.mark.slow
def test_grpo_trainer_trains_the_tiny_model_for_two_steps(family, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    path = tiny_vlm(family)
    dataset = Dataset.from_dict(
        {
            "prompt": [PROMPT, PROMPT],
            "image": [off_grid_image(), off_grid_image(120, 80)],
        }
    )
    args = cpu_run_args(
        GRPOConfig,
        tmp_path,
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        learning_rate=1e-3,
    )
    trainer = GRPOTrainer(model=path, reward_funcs=completion_length_reward, args=args, train_dataset=dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    trainer.train()

    assert trainer.state.global_step == 2
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    changed = [
        n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])
    ]
    assert changed, "no trainable weight moved in two GRPO steps"
    assert any("reward" in log for log in trainer.state.log_history)
