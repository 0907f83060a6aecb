"""Two-process PerceptionGRPOTrainer run for tests/test_trainer_distributed.py.

Launched from the repository root as
`PYTHONPATH=. torchrun --standalone --nproc_per_node 2 tests/trainer_ddp_script.py MODEL_DIR OUT_DIR`; each rank
trains two steps on CPU (gloo) and saves its final weights to OUT_DIR/rank<r>.pt.
"""

import os
import sys


def length_reward(completions, **kwargs):
    return [float(len(c[0]["content"])) for c in completions]


def main(model_dir: str, out_dir: str) -> None:
    import torch

    from tests._helpers import cpu_run_args
    from trl_perception.data.synthetic import make_synthetic
    from trl_perception.rewards import iou_reward
    from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

    args = cpu_run_args(
        PerceptionGRPOConfig,
        os.path.join(out_dir, "run"),
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=8,
        learning_rate=1e-2,
        max_pixels=56 * 56,
        ddp_backend="gloo",
    )
    dataset = make_synthetic("grounding", 8, seed=0, image_size=(150, 97))
    trainer = PerceptionGRPOTrainer(model_dir, [iou_reward, length_reward], args, train_dataset=dataset)
    trainer.train()
    rank = trainer.accelerator.process_index
    state = {
        n: p.detach().cpu() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
    }
    torch.save(
        {"state": state, "world_size": trainer.accelerator.num_processes, "step": trainer.state.global_step},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
