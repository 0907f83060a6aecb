"""The VQA reward inside a real `PerceptionGRPOTrainer` step with crop turns: what TRL passes it (the whole
conversation, tool turn included) and that it scores the final answer. The model's first and second turns are
fixed texts (a random tiny model never calls a tool); the tool call, crop, inserted turn and reward are TRL's and
the library's real path."""

import pytest

from tests._helpers import cpu_run_args
from trl_perception.data.synthetic import make_synthetic
from trl_perception.formats import final_turn_text
from trl_perception.rewards import vqa_reward
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

pytestmark = pytest.mark.slow

CALL = '<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [100, 100, 700, 800]}}\n</tool_call><|im_end|>'


def test_the_reward_sees_the_conversation_and_scores_its_last_turn(tmp_path):
    rows = make_synthetic("vqa", 1, seed=0, image_size=(512, 384), box_format="qwen3_vl")
    truth = rows[0]["solution"]
    wrong = next(letter for letter in "ABCD" if letter != truth)
    seen = {}

    def capture(completions, **kwargs):
        seen["completions"], seen["kwargs"] = completions, kwargs
        return [0.0] * len(completions)

    args = cpu_run_args(PerceptionGRPOConfig, tmp_path, max_steps=1, num_generations=4, per_device_train_batch_size=4,
                        max_completion_length=512, crop_turns=1, min_pixels=1024, max_pixels=16384,
                        crop_min_pixels=1024, crop_max_pixels=16384)  # fmt: skip
    trainer = PerceptionGRPOTrainer(tiny_vlm("qwen3_vl"), reward_funcs=[vqa_reward, capture], args=args,
                                    train_dataset=rows)  # fmt: skip
    tokenizer = trainer.processing_class.tokenizer
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    generate = trainer._generate_single_turn
    # Rollout 0 crops and answers right, 1 crops and answers wrong, 2 answers right without a tool call (MGPO's
    # forced second turn follows), 3 crops and lists every letter.
    first = [CALL, CALL, f"\\boxed{{{truth}}}<|im_end|>", CALL]
    second = [f"Now I see it. \\boxed{{{truth}}}<|im_end|>", f"\\boxed{{{wrong}}}<|im_end|>",
              f"Still \\boxed{{{truth}}}<|im_end|>", "A B C D<|im_end|>"]  # fmt: skip

    def scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        ids, logprobs = generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        texts = second if has_tool_images else first  # every rollout reaches the second turn (forced for 2)
        return [encode(texts[i]) for i in range(len(ids))], logprobs

    trainer._generate_single_turn = scripted
    trainer.train()
    completions = seen["completions"]
    assert len(completions) == 4
    for completion in completions:  # the whole conversation: the call, the tool's turn, the answer
        assert [m["role"] for m in completion] == ["assistant", "tool", "assistant"]
        assert any(part.get("type") == "image" for part in completion[1]["content"])
    rewards = vqa_reward(completions, [truth] * 4, options=seen["kwargs"]["options"])
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert [final_turn_text(c) for c in completions][3] == "A B C D"
