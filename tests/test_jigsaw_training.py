"""Specification of jigsaw training with TRL's GRPOTrainer: the trainer feeds the processor the puzzle,
the jigsaw rewards train a tiny model, and the grid curriculum follows training progress, across a
resume from a checkpoint."""

import os

import numpy as np
import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from tests._helpers import cpu_run_args
from trl_perception.callbacks import JigsawCurriculumCallback
from trl_perception.data import make_synthetic
from trl_perception.data.jigsaw import GridCurriculum, crop_to_grid, make_jigsaw, reassemble
from trl_perception.rewards import jigsaw_format_reward, jigsaw_reward
from trl_perception.testing import tiny_vlm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenes():
    return make_synthetic("grounding", 8, seed=0)


class Recorder:
    """A reward that records the columns TRL hands to rewards and pays for completion length, so that a
    random model's GRPO groups have a gradient."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, completions, **kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("grid", "permutation", "image", "jigsaw_index", "task")})
        return [float(len(str(c))) / 100 for c in completions]


def make_args(output_dir, **overrides):
    settings = dict(max_steps=2, num_generations=2, per_device_train_batch_size=4, max_completion_length=8,
                    learning_rate=1e-2)  # fmt: skip
    return cpu_run_args(GRPOConfig, output_dir, **{**settings, **overrides})


def test_a_tiny_grpo_run_on_jigsaw_rows_trains_on_the_puzzles(scenes, tmp_path):
    dataset = make_jigsaw(scenes, rows=2, cols=2, seed=0)
    recorder = Recorder()
    trainer = GRPOTrainer(
        model=tiny_vlm("qwen2_5_vl"),
        reward_funcs=[jigsaw_reward, jigsaw_format_reward, recorder],
        args=make_args(tmp_path),
        train_dataset=dataset,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    trainer.train()

    assert trainer.state.global_step == 2
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved
    logged = set().union(*trainer.state.log_history)
    assert {"rewards/jigsaw_reward/mean", "rewards/jigsaw_format_reward/mean"} <= logged
    # what the trainer handed on is the shuffled puzzle: reassembled with the row's permutation it is the scene
    call = recorder.calls[0]
    assert set(call["task"]) == {"jigsaw"}
    source = make_synthetic("grounding", 8, seed=0)
    for image, grid, permutation, index in zip(call["image"], call["grid"], call["permutation"], call["jigsaw_index"]):
        original = crop_to_grid(source[index]["image"].convert("RGB"), *grid)
        assert np.array_equal(np.asarray(reassemble(image, *grid, permutation)), np.asarray(original))
        assert not np.array_equal(np.asarray(image), np.asarray(original)) or permutation == [1, 2, 3, 4]


def grids_seen(recorder):
    return [sorted({tuple(g) for g in call["grid"]}) for call in recorder.calls]


def test_the_curriculum_moves_with_the_global_step_and_resumes_at_its_stage(scenes, tmp_path):
    curriculum = GridCurriculum([(0, (2, 1)), (2, (2, 2))])
    recorder = Recorder()
    first = GRPOTrainer(
        model=tiny_vlm("qwen2_5_vl"),
        reward_funcs=[jigsaw_reward, recorder],
        args=make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=make_jigsaw(scenes, curriculum=curriculum, seed=0),
        callbacks=[JigsawCurriculumCallback(curriculum)],
    )
    first.train()
    assert grids_seen(recorder) == [[(2, 1)], [(2, 1)]]
    assert curriculum.step == 2

    # a fresh process: a new curriculum object at step 0, and the trainer resumed from step 2
    fresh = GridCurriculum([(0, (2, 1)), (2, (2, 2))])
    resumed_recorder = Recorder()
    resumed = GRPOTrainer(
        model=tiny_vlm("qwen2_5_vl"),
        reward_funcs=[jigsaw_reward, resumed_recorder],
        args=make_args(tmp_path / "resumed", max_steps=3),
        train_dataset=make_jigsaw(scenes, curriculum=fresh, seed=0),
        callbacks=[JigsawCurriculumCallback(fresh)],
    )
    resumed.train(resume_from_checkpoint=os.path.join(tmp_path, "checkpoint-2"))

    assert resumed.state.global_step == 3
    assert grids_seen(resumed_recorder) == [[(2, 2)]]
    prompts = {p for call in resumed_recorder.calls for p in [tuple(call["grid"][0])]}
    assert prompts == {(2, 2)}


def test_without_the_callback_the_curriculum_stays_at_its_first_stage(scenes, tmp_path):
    curriculum = GridCurriculum([(0, (2, 1)), (1, (2, 2))])
    recorder = Recorder()
    GRPOTrainer(
        model=tiny_vlm("qwen2_5_vl"),
        reward_funcs=[recorder],
        args=make_args(tmp_path, max_steps=2),
        train_dataset=make_jigsaw(scenes, curriculum=curriculum, seed=0),
    ).train()
    assert grids_seen(recorder) == [[(2, 1)], [(2, 1)]]
