"""Trainer callbacks: `PerceptionEvalCallback` scores the policy on a perception dataset every N steps of
training (GRPOTrainer or any transformers `Trainer`) and logs the metrics through the trainer."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

from transformers import Trainer, TrainerCallback

from .evaluation import evaluate, flatten_metrics, unwrap_model

__all__ = ["JigsawCurriculumCallback", "PerceptionEvalCallback"]


def _subsample(dataset: Any, num_samples: int | None, seed: int) -> Any:
    if num_samples is None or num_samples >= len(dataset):
        return dataset
    if hasattr(dataset, "shuffle") and hasattr(dataset, "select"):
        return dataset.shuffle(seed=seed).select(range(num_samples))
    rows = list(dataset)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), num_samples))]


class PerceptionEvalCallback(TrainerCallback):
    """Evaluate the model being trained on a perception dataset every `eval_steps` optimizer steps.

    At each evaluation the (unwrapped) model generates greedily for a fixed subsample of `dataset`
    (`num_samples` rows drawn once with `seed`, so every evaluation sees the same rows) through
    `trl_perception.evaluation.evaluate`: same grid resize, parsing, mapping back to original pixels and
    metrics as `trl-perception eval`. The model comes from the callback arguments (`kwargs["model"]`,
    with DDP / DeepSpeed / compile wrappers stripped; PEFT adapters are used), the processor from
    `processing_class`. The model is put in eval mode for the evaluation and back in train mode after.

    The scalar metrics are logged as `{prefix}/{task}/{metric}` (e.g. `eval_perception/grounding/acc@0.5`,
    `eval_perception/detection/AP`) with `transformers.Trainer.log`, so they reach `log_history` and every
    `report_to` integration. The base-class `log` is called on purpose: `GRPOTrainer.log` would flush its
    running training averages early. `PerceptionGRPOTrainer` hands itself to every `PerceptionEvalCallback`
    it is given (in `callbacks=` or with `add_callback`); with another trainer, pass `trainer=` or call
    `callback.bind(trainer)` once the trainer exists. Without a trainer the metrics are appended to
    `state.log_history` only (with a warning). Every evaluation is also kept in `history`
    (`{"step": ..., **metrics}`), and with `output_dir` its predictions and report are written to
    `{output_dir}/step-{step}`.

    Only the main process evaluates. DeepSpeed ZeRO-3 shards the weights across processes and is not
    supported (evaluate the saved checkpoints with `trl-perception eval` instead).

    Args:
        dataset: a row-contract dataset (or list of rows).
        eval_steps: evaluate when `global_step % eval_steps == 0`.
        num_samples: rows per evaluation (default: all).
        seed: seed of the subsample.
        prefix: prefix of the logged keys.
        trainer: the trainer to log through (optional, see above and `bind`).
        output_dir: write each evaluation's files under this directory.
        eval_on_train_end: also evaluate after the last step when it was not an evaluation step.
        **evaluate_kwargs: passed to `evaluate` (`box_format`, `min_pixels`, `max_pixels`, `batch_size`,
            `max_new_tokens`, `generation_kwargs`, `num_visual`, `categories`, `generate_fn`).

    Example:
    ```python
    >>> from types import SimpleNamespace
    >>> from PIL import Image
    >>> from transformers import TrainerControl, TrainerState
    >>> from trl_perception.data.prompts import build_prompt
    >>> rows = [{"prompt": build_prompt("grounding", question="cat"), "image": Image.new("RGB", (100, 100)),
    ...          "task": "grounding", "solution": [10, 10, 50, 50], "image_size": [100, 100]}]
    >>> answer = lambda requests: ['[{"bbox_2d": [100, 100, 500, 500]}]' for _ in requests]  # 0-1000 frame
    >>> callback = PerceptionEvalCallback(rows, eval_steps=2, box_format="qwen3_vl", generate_fn=answer)
    >>> state = TrainerState(global_step=2)
    >>> _ = callback.on_step_end(None, state, TrainerControl(), model=None)  # no trainer: goes to log_history
    >>> callback.history[0]["step"], callback.history[0]["eval_perception/grounding/mean_iou"]
    (2, 1.0)
    >>> state.log_history[0]["eval_perception/grounding/acc@0.5"]
    1.0

    ```
    """

    def __init__(
        self,
        dataset: Any,
        *,
        eval_steps: int = 100,
        num_samples: int | None = None,
        seed: int = 0,
        prefix: str = "eval_perception",
        trainer: Any = None,
        output_dir: str | os.PathLike | None = None,
        eval_on_train_end: bool = False,
        **evaluate_kwargs: Any,
    ):
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}")
        for key in ("model", "dataset", "processor", "output_dir", "progress", "backend"):
            if key in evaluate_kwargs:
                raise TypeError(f"PerceptionEvalCallback sets evaluate()'s {key!r} itself")
        self.dataset = _subsample(dataset, num_samples, seed)
        self.eval_steps = int(eval_steps)
        self.prefix = prefix
        self.trainer = trainer
        self.output_dir = output_dir
        self.eval_on_train_end = eval_on_train_end
        self.evaluate_kwargs = evaluate_kwargs
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None

    def bind(self, trainer: Any) -> PerceptionEvalCallback:
        """Log through `trainer` (a `transformers.Trainer`) from now on; returns the callback. A trainer with crop
        turns (`PerceptionGRPOConfig.crop_turns`) also has VQA rows evaluated after a crop turn, with its crop
        pixel limits, unless `crop_turns` was given to the callback.

        Example:
        ```python
        >>> from types import SimpleNamespace
        >>> callback = PerceptionEvalCallback([], eval_steps=10)
        >>> trainer = SimpleNamespace(name="my trainer")
        >>> callback.bind(trainer).trainer is trainer
        True

        ```
        """
        self.trainer = trainer
        args = getattr(trainer, "args", None)
        if getattr(args, "crop_turns", 0) and "crop_turns" not in self.evaluate_kwargs:
            self.evaluate_kwargs.update(
                crop_turns=args.crop_turns, crop_min_pixels=args.crop_min_pixels, crop_max_pixels=args.crop_max_pixels
            )
        return self

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step > 0 and state.global_step % self.eval_steps == 0:
            # Trainer.log resets control.should_log through the callback handler; keep the training loop's
            # own decision so this step's training metrics (reward, loss) are still logged.
            should_log = control.should_log
            self._evaluate(args, state, kwargs)
            control.should_log = should_log
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.eval_on_train_end and self._last_step != state.global_step:
            self._evaluate(args, state, kwargs)
        return control

    def _evaluate(self, args: Any, state: Any, kwargs: Mapping[str, Any]) -> dict[str, float] | None:
        if not getattr(state, "is_world_process_zero", True):
            return None
        trainer = self.trainer
        model = kwargs.get("model")
        if model is None and trainer is not None:
            model = trainer.model
        processor = kwargs.get("processing_class")
        if processor is None and trainer is not None:
            processor = getattr(trainer, "processing_class", None)
        generate_fn = self.evaluate_kwargs.get("generate_fn")
        if generate_fn is None and model is None:
            raise ValueError("PerceptionEvalCallback got no model from the trainer")
        model = None if model is None else unwrap_model(model)
        if generate_fn is None and getattr(processor, "image_processor", None) is None:
            raise ValueError(
                "PerceptionEvalCallback needs the trainer's processing_class to be the model's processor "
                f"(with an image processor), got {type(processor).__name__}"
            )
        output_dir = (
            None if self.output_dir is None else os.path.join(self.output_dir, f"step-{state.global_step}")
        )
        result = evaluate(
            model,
            self.dataset,
            processor=processor,
            backend="transformers",
            output_dir=output_dir,
            progress=False,
            **self.evaluate_kwargs,
        )
        logs = flatten_metrics(result.metrics, self.prefix)
        self._last_step = state.global_step
        self.history.append({"step": state.global_step, **logs})
        if trainer is not None:
            Trainer.log(trainer, dict(logs))
        else:
            if not self.history[:-1]:
                warnings.warn(
                    "PerceptionEvalCallback found no trainer to log through; metrics go to state.log_history "
                    "only (pass trainer= or call bind(trainer) to reach report_to integrations)",
                    UserWarning,
                    stacklevel=2,
                )
            state.log_history.append({**logs, "step": state.global_step})
        return logs


class JigsawCurriculumCallback(TrainerCallback):
    """Moves a jigsaw `GridCurriculum` along with training: the dataset built with
    `make_jigsaw(..., curriculum=curriculum)` renders each row read at the stage of the current
    `TrainerState.global_step`.

    The step is set when training begins (after a resumed run's state is loaded, so a run resumed at step
    600 continues at the stage of step 600) and after every optimizer step (the trainer fetches a step's
    batch before `on_step_begin`). GRPO generates for `steps_per_generation` steps at once, so a stage
    starts at the first generation at or after its step. Keep `dataloader_num_workers=0`: worker
    processes would hold copies of the curriculum.

    Example:
    ```python
    >>> from transformers import TrainerControl, TrainerState, TrainingArguments
    >>> from trl_perception.data.jigsaw import GridCurriculum
    >>> curriculum = GridCurriculum([(0, (2, 1)), (10, (2, 2))])
    >>> callback = JigsawCurriculumCallback(curriculum)
    >>> _ = callback.on_train_begin(TrainingArguments("out", report_to=[]), TrainerState(global_step=12), TrainerControl())
    >>> curriculum.grid
    (2, 2)

    ```
    """

    def __init__(self, curriculum: Any):
        if not (hasattr(curriculum, "grid_at") and hasattr(curriculum, "step")):
            raise TypeError(f"JigsawCurriculumCallback needs a data.jigsaw.GridCurriculum, got {curriculum!r}")
        self.curriculum = curriculum

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.curriculum.step = int(state.global_step)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.curriculum.step = int(state.global_step)
        return control
