"""Specification of `PerceptionGRPOConfig.solution_in_group`: ground-truth answers injected into the GRPO
rollout group (after ViSurf), scored and trained on like any rollout."""

from types import SimpleNamespace

import pytest
import torch

from tests._helpers import cpu_run_args
from trl_perception.data.synthetic import make_synthetic
from trl_perception.formats import render_objects
from trl_perception.testing import tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

pytestmark = pytest.mark.slow


def with_answers(dataset):
    """Rows with a `completion`: the ground truth rendered in Qwen3-VL's 0-1000 JSON (resize-invariant)."""
    answers = [
        [{"role": "assistant", "content": render_objects([box], "qwen3_vl", size)}]
        for box, size in zip(dataset["solution"], dataset["image_size"])
    ]
    return dataset.add_column("completion", answers)


class ExactAnswerReward:
    """1.0 for a completion that is exactly one of the dataset's answers, else 0.0. (TRL hands rewards every
    column but `completion`, so the answers are given at construction.)"""

    __name__ = "exact_answer_reward"

    def __init__(self, dataset):
        self.answers = {c[0]["content"] for c in dataset["completion"]}

    def __call__(self, completions, **kwargs):
        return [float(c[0]["content"] in self.answers) for c in completions]


def make_args(tmp_path, **overrides):
    settings = dict(
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=64,
        learning_rate=1e-3,
        solution_in_group=1,
    )
    return cpu_run_args(PerceptionGRPOConfig, tmp_path, **{**settings, **overrides})


@pytest.mark.parametrize("k", [-1, 4, 5, 1.5])
def test_solution_in_group_must_leave_the_model_a_rollout(k, tmp_path):
    with pytest.raises(ValueError, match="solution_in_group"):
        make_args(tmp_path, solution_in_group=k)


def test_solution_in_group_needs_a_completion_column(tmp_path):
    rows = make_synthetic("grounding", 2, seed=0, box_format="qwen3_vl")
    reward = ExactAnswerReward(with_answers(rows))
    with pytest.raises(ValueError, match="'completion' column"):
        PerceptionGRPOTrainer(tiny_vlm("qwen3_vl"), reward_funcs=[reward], args=make_args(tmp_path), train_dataset=rows)


@pytest.mark.parametrize(
    ("process_index", "n_local", "generations", "k", "expected"),
    [
        (0, 8, 4, 1, [3, 7]),  # one process: the last rollout of each group
        (0, 8, 4, 2, [2, 3, 6, 7]),
        (0, 6, 4, 1, [3]),  # 2 processes x 6 rows, groups of 4: global rows 3, 7, 11
        (1, 6, 4, 1, [1, 5]),  # process 1 holds global rows 6..11: 7 and 11
        (1, 2, 4, 1, [1]),  # a group split over processes 0 and 1: its last row is process 1's second
        (0, 2, 4, 1, []),
    ],
)
def test_injected_rows_are_the_last_of_each_global_group(process_index, n_local, generations, k, expected):
    fake = SimpleNamespace(
        accelerator=SimpleNamespace(process_index=process_index), num_generations=generations, _solution_in_group=k
    )
    assert PerceptionGRPOTrainer._injection_rows(fake, n_local) == expected


def test_the_answer_replaces_the_last_rollout_and_earns_the_advantage(tmp_path):
    rows = with_answers(make_synthetic("grounding", 2, seed=0, box_format="qwen3_vl"))
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen3_vl"), reward_funcs=[ExactAnswerReward(rows)], args=make_args(tmp_path), train_dataset=rows
    )
    outputs = []
    original = trainer._generate_and_score_completions

    def record(inputs):
        out = original(inputs)
        outputs.append((inputs, out))
        return out

    trainer._generate_and_score_completions = record
    trainer.train()

    inputs, out = outputs[0]
    assert len(inputs) == 8  # 2 prompts x 4 generations
    ids, mask = out["completion_ids"], out["completion_mask"]
    for row in (3, 7):  # the last rollout of each group is the answer, token for token, then <|im_end|>
        expected = trainer._answer_ids(inputs[row]["completion"][0]["content"])
        assert ids[row][mask[row].bool()].tolist() == expected
        assert expected[-1] == trainer.processing_class.tokenizer.convert_tokens_to_ids("<|im_end|>")
    # rewards [0, 0, 0, 1] per group (a random model never writes the answer): mean 1/4, unbiased std 1/2,
    # so the answer's advantage is (1 - 1/4) / (1/2 + 1e-4) and every sampled rollout's is -(1/4) / (1/2 + 1e-4)
    expected_advantages = torch.tensor([-0.25, -0.25, -0.25, 0.75] * 2) / (0.5 + 1e-4)
    torch.testing.assert_close(out["advantages"].cpu(), expected_advantages)
    logged = trainer.state.log_history[0]
    assert logged["perception/solution_in_group_fraction"] == pytest.approx(0.25)
    assert logged["rewards/exact_answer_reward/mean"] == pytest.approx(0.25)


def test_injection_with_lora_trains_the_adapter(tmp_path):
    from peft import LoraConfig

    rows = with_answers(make_synthetic("grounding", 2, seed=1, box_format="qwen3_vl"))
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen3_vl"),
        reward_funcs=[ExactAnswerReward(rows)],
        args=make_args(tmp_path, learning_rate=1e-2),
        train_dataset=rows,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)
    assert trainer.state.log_history[0]["perception/solution_in_group_fraction"] == pytest.approx(0.25)


def test_evaluation_batches_are_not_injected(tmp_path):
    rows = with_answers(make_synthetic("grounding", 2, seed=2, box_format="qwen3_vl"))
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4)
    trainer = PerceptionGRPOTrainer(
        tiny_vlm("qwen3_vl"), reward_funcs=[ExactAnswerReward(rows)], args=args, train_dataset=rows, eval_dataset=rows
    )
    metrics = trainer.evaluate()
    assert metrics["eval_rewards/exact_answer_reward/mean"] == 0.0
