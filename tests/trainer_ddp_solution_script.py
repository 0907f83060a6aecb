"""Two-process `solution_in_group` run for tests/test_trainer_distributed.py: groups of 4 rollouts split over two
processes (2 rows each), one ground-truth answer per group.

Launched as `PYTHONPATH=. torchrun --standalone --nproc_per_node 2 tests/trainer_ddp_solution_script.py MODEL_DIR
OUT_DIR`; each rank saves what it generated and scored to OUT_DIR/solution_rank<r>.pt.
"""

import os
import sys


def main(model_dir: str, out_dir: str) -> None:
    import torch

    from tests._helpers import cpu_run_args
    from tests.test_trainer_solution_in_group import ExactAnswerReward, with_answers
    from trl_perception.data.synthetic import make_synthetic
    from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

    args = cpu_run_args(
        PerceptionGRPOConfig,
        os.path.join(out_dir, "run"),
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=2,
        max_completion_length=64,
        learning_rate=1e-3,
        solution_in_group=1,
        ddp_backend="gloo",
    )
    rows = with_answers(make_synthetic("grounding", 4, seed=0, box_format="qwen3_vl"))
    trainer = PerceptionGRPOTrainer(model_dir, [ExactAnswerReward(rows)], args, train_dataset=rows)
    seen = []
    original = trainer._generate_and_score_completions

    def record(inputs):
        out = original(inputs)
        texts = trainer.processing_class.batch_decode(out["completion_ids"], skip_special_tokens=True)
        seen.append(
            {
                "injected": list(trainer._injected_rows),
                "texts": texts,
                "answers": [row["completion"][0]["content"] for row in inputs],
                "advantages": out["advantages"].cpu(),
            }
        )
        return out

    trainer._generate_and_score_completions = record
    trainer.train()
    rank = trainer.accelerator.process_index
    torch.save(
        {"seen": seen, "log": trainer.state.log_history[0], "world_size": trainer.accelerator.num_processes},
        os.path.join(out_dir, f"solution_rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
