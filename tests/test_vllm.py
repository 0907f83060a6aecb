"""What colocated vLLM would SEE: TRL 1.16's own `VLLMGeneration.generate` runs with a stand-in engine that applies
vLLM's prompt-update rule for Qwen-VL token prompts, and every image must come out as exactly one run of its
own length.

The rule is re-implemented from vLLM 0.31.0's source (wheel commit db9527a46), so this runs without vLLM;
where vLLM is importable, `test_rule_matches_vllms_own_function` checks it against vLLM's `apply_token_matches`:
- `vllm/model_executor/models/qwen2_vl.py` (`Qwen2VLMultiModalProcessor._get_prompt_updates`, lines 1150-1157) and
  `qwen3_vl.py` (~line 1613): one `PromptReplacement` per image, target `[image_token_id]` (a single token),
  replacement `[image_token_id] * (image_grid_thw.prod() // merge_size**2)`; Qwen2.5-VL reuses Qwen2-VL's.
- `vllm/multimodal/processing/processor.py` (`apply_token_matches`, line 835, and `_apply_matches`): a token prompt is not run through the HF
  processor's text path, so the updates are applied (`is_update_applied` is False): images are taken in
  order, each replacing the next match of its target left to right.
"""

from __future__ import annotations

import types

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from trl_perception.testing import tiny_vlm
from trl_perception.vllm import CollapsingLLM, collapse_image_runs, image_runs

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def vllm_prompt_update(prompt_ids: list[int], image_token_id: int, tokens_per_image: list[int]) -> list[int]:
    """vLLM's replacement of each image's target `[image_token_id]` by its full run, images in order."""
    out: list[int] = []
    pending = list(tokens_per_image)
    for token in prompt_ids:
        if token == image_token_id and pending:
            out.extend([image_token_id] * pending.pop(0))
        else:
            out.append(token)
    if pending:  # vLLM raises when a prompt has fewer placeholders than images
        raise RuntimeError(f"{len(pending)} image(s) found no {image_token_id} placeholder")
    return out


class RuleEngine:
    """Stands in for `vllm.LLM`: records what the Qwen-VL processing would feed the model."""

    def __init__(self, image_token_id: int, tokens_per_image: list[list[int]]):
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image
        self.seen: list[list[int]] = []

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        outputs = []
        for prompt, counts in zip(prompts, self.tokens_per_image, strict=True):
            ids = list(prompt["prompt_token_ids"])
            if "multi_modal_data" in prompt:
                ids = vllm_prompt_update(ids, self.image_token_id, counts)
            self.seen.append(ids)
            completion = types.SimpleNamespace(token_ids=[0], logprobs=None)
            outputs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[completion]))
        return outputs


def trl_colocate_generate(llm, prompt_ids: list[list[int]], images: list[list]) -> None:
    """Run TRL's own colocate `VLLMGeneration.generate` (single GPU, no sleep mode) against `llm`."""
    from trl.generation import vllm_generation

    gen = object.__new__(vllm_generation.VLLMGeneration)
    attrs = dict(
        accelerator=None, mode="colocate", temperature=1.0, top_p=1.0, top_k=0, min_p=None,
        repetition_penalty=1.0, max_completion_length=4, enable_sleep_mode=False, _llm_weights_sleeping=False,
        logprobs=0, generation_kwargs={}, structured_outputs_regex=None, tensor_parallel_size=1,
        model=torch.nn.Linear(1, 1), llm=llm,
    )  # fmt: skip
    gen.__dict__.update(attrs)
    original = getattr(vllm_generation, "SamplingParams", None)
    vllm_generation.SamplingParams = dict
    try:
        gen.generate(prompts=prompt_ids, images=images, num_generations=1)
    finally:
        if original is None:
            del vllm_generation.SamplingParams
        else:
            vllm_generation.SamplingParams = original


def _image(size: int, shade: int) -> Image.Image:
    return Image.new("RGB", (size, size), (shade, shade, shade))


def _conversation(num_images: int, tool_image: bool) -> list[dict]:
    user = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": "Count the squares."}]
    messages = [{"role": "user", "content": user}]
    if tool_image:  # the tool-call loop: the assistant calls a tool that returns an image
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": "zoom(0, 0, 10, 10)"}]},
            {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "zoomed"}]},
        ]
    return messages


def _encode(family: str, num_images: int, tool_image: bool):
    processor = AutoProcessor.from_pretrained(tiny_vlm(family))
    images = [_image(56 + 28 * i, 40 * (i + 1)) for i in range(num_images + tool_image)]
    text = processor.apply_chat_template(
        _conversation(num_images, tool_image), tokenize=False, add_generation_prompt=True
    )
    enc = processor(text=[text], images=images, return_tensors="pt")
    merge = processor.image_processor.merge_size
    counts = [int(t.prod()) // merge**2 for t in enc["image_grid_thw"]]
    return processor.image_token_id, enc["input_ids"][0].tolist(), images, counts


CASES = [(f, n, t) for f in FAMILIES for n, t in ((1, False), (2, False), (1, True))]


@pytest.mark.parametrize(("family", "num_images", "tool_image"), CASES)
def test_vllm_sees_each_image_expanded_exactly_once(family, num_images, tool_image):
    image_token_id, ids, images, counts = _encode(family, num_images, tool_image)
    assert image_runs(ids, image_token_id) == counts  # what the trainer trains on

    engine = RuleEngine(image_token_id, [counts])
    trl_colocate_generate(CollapsingLLM(engine, image_token_id), [ids], [images])

    (seen,) = engine.seen
    assert image_runs(seen, image_token_id) == counts
    assert seen == ids  # vLLM's model input is token-for-token the trainer's


@pytest.mark.parametrize(("family", "num_images", "tool_image"), CASES)
def test_without_the_wrapper_trl_1_16_feeds_vllm_stray_image_tokens(family, num_images, tool_image):
    """The bug being fixed (TRL issue #6294): unwrapped, vLLM expands the already-expanded runs again."""
    image_token_id, ids, images, counts = _encode(family, num_images, tool_image)
    engine = RuleEngine(image_token_id, [counts])
    trl_colocate_generate(engine, [ids], [images])

    (seen,) = engine.seen
    if image_runs(seen, image_token_id) == counts:
        pytest.fail(
            "TRL now hands vLLM prompts with one image token per image (upstream fix of TRL #6294 / PRs "
            "#6718-#6719): trl_perception.vllm.CollapsingLLM is now a no-op; drop it and this test"
        )
    assert seen.count(image_token_id) == sum(counts) + sum(c - 1 for c in counts)


def test_rule_on_the_issue_example_one_image_of_four_tokens():
    pad = 9
    prompt = [1, pad, pad, pad, pad, 2]
    assert image_runs(vllm_prompt_update(prompt, pad, [4]), pad) == [7]  # before: 3 stray tokens
    assert image_runs(vllm_prompt_update(collapse_image_runs(prompt, pad), pad, [4]), pad) == [4]


def test_two_images_without_the_fix_land_inside_the_first_run():
    pad = 9
    prompt = [1] + [pad] * 4 + [2] + [pad] * 4 + [3]
    seen = vllm_prompt_update(prompt, pad, [4, 4])
    assert image_runs(seen, pad) == [10, 4]  # both images fill the first block; the second run stays stray
    assert image_runs(vllm_prompt_update(collapse_image_runs(prompt, pad), pad, [4, 4]), pad) == [4, 4]


def test_text_only_and_already_collapsed_prompts_pass_through_unchanged():
    engine = RuleEngine(9, [[], [2]])
    llm = CollapsingLLM(engine, 9)
    text = {"prompt_token_ids": [1, 9, 9, 2]}  # no images: vLLM does no replacement, nor do we
    collapsed = {"prompt_token_ids": [1, 9, 2], "multi_modal_data": {"image": "x"}}
    llm.generate([text, collapsed])
    assert engine.seen == [[1, 9, 9, 2], [1, 9, 9, 2]]
    assert llm.image_token_id == 9 and llm.tokens_per_image == [[], [2]]  # attributes are delegated


@pytest.mark.parametrize(("family", "num_images", "tool_image"), CASES)
def test_rule_matches_vllms_own_function(family, num_images, tool_image):
    processing = pytest.importorskip("vllm.multimodal.processing.processor")
    image_token_id, ids, _, counts = _encode(family, num_images, tool_image)
    updates = {
        "image": [
            [processing.PromptReplacement("image", [image_token_id], [image_token_id] * n).resolve(i)]
            for i, n in enumerate(counts)
        ]
    }
    for prompt in (ids, collapse_image_runs(ids, image_token_id)):
        expected, _ = processing.apply_token_matches(list(prompt), updates)
        assert vllm_prompt_update(prompt, image_token_id, counts) == expected
