"""The arguments the training scripts share (`grpo.py`, `sft.py`): the data, the answers and the final evaluation
(`PerceptionDataArguments`), the rewards on top of them for GRPO (`PerceptionScriptArguments`) and the LoRA merge
for SFT (`PerceptionSFTScriptArguments`). Every field is a YAML key of the recipes; checks run when parsed, before
any model loads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import datasets

from trl_perception.data import BUILDERS, TEXT_TASK, add_completions, build_dataset
from trl_perception.data.completions import OBJECT_ORDERS
from trl_perception.rewards import get_reward, list_rewards

__all__ = [
    "PerceptionDataArguments",
    "PerceptionDatasetConfig",
    "PerceptionSFTScriptArguments",
    "PerceptionScriptArguments",
]


@dataclass
class PerceptionDatasetConfig:
    """One dataset of a mixture: a task, its source (a file or folder the task's builder reads, or
    `"synthetic"`) and the builder's options (`split`, `image_dir`, `num_samples`, `seed`, and `kwargs` for the
    builder's own). TRL's `DatasetConfig` plays this part for `datasets.load_dataset`; these rows come from
    `trl_perception.data.build_dataset` instead.

    Example:
    ```python
    >>> rows = PerceptionDatasetConfig("counting", num_samples=2).build(box_format="qwen3_vl")
    >>> len(rows), rows[0]["task"]
    (2, 'counting')

    ```
    """

    task: str
    source: str = "synthetic"
    split: str | None = None
    image_dir: str | None = None
    num_samples: int | None = None
    seed: int = 0
    kwargs: dict = field(default_factory=dict)

    def build(self, **options: Any) -> datasets.Dataset:
        """The rows, from `trl_perception.data.build_dataset` (`options` add the box format and pixel limits)."""
        return build_dataset(self.task, self.source, split=self.split, image_dir=self.image_dir,
                             num_samples=self.num_samples, seed=self.seed, **self.kwargs, **options)  # fmt: skip


def _json(name: str, value: Any) -> Any:
    """YAML gives mappings and lists; the command line gives them as JSON strings."""
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON ({err}): {value!r}") from None


@dataclass
class PerceptionDataArguments:
    """Data, answers and final evaluation, as both training scripts read them; checked when parsed.

    Example:
    ```python
    >>> args = PerceptionDataArguments(task="ocr", num_samples=2)
    >>> train, evaluation = args.build_datasets(box_format="qwen2_vl", completions=True)
    >>> train[0]["completion"][0]["role"], evaluation
    ('assistant', None)

    ```
    """

    task: str = field(default="grounding", metadata={"help": "The task, or 'mixed' to train on dataset_mixture."})
    dataset_source: str = field(
        default="synthetic",
        metadata={"help": "A file or folder the task's builder reads (RefCOCO, PixMo-Count, Fox page OCR, COCO "
                  "instances JSON), or 'synthetic'."},
    )  # fmt: skip
    dataset_split: str | None = field(default=None, metadata={"help": "Split (RefCOCO: train, val, testA, ...)."})
    image_dir: str | None = field(default=None, metadata={"help": "Image folder (default: the source's usual one)."})
    num_samples: int | None = field(default=None, metadata={"help": "Train on a seeded random subset this size."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the subsets and of synthetic data."})
    dataset_kwargs: dict | str | None = field(
        default=None, metadata={"help": "The builder's own options (a YAML mapping or a JSON string)."}
    )
    dataset_mixture: list | str | None = field(
        default=None,
        metadata={"help": "With task 'mixed': a list of {task, source, split, image_dir, num_samples, seed, "
                  "kwargs}; rows of every task are shuffled together."},
    )  # fmt: skip
    object_order: str = field(
        default="annotation",
        metadata={"help": "Order of the objects in the ground-truth answers (the 'completion' column: SFT, and GRPO "
                  "with solution_in_group): annotation, random (a permutation per row, fixed by the seed) or sorted "
                  "(reading order)."},
    )  # fmt: skip
    eval_source: str | None = field(default=None, metadata={"help": "Evaluation data (same forms as dataset_source)."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split."})
    eval_image_dir: str | None = field(
        default=None, metadata={"help": "Evaluation images (default: image_dir when eval_source is dataset_source)."}
    )
    eval_num_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset this size."})
    evaluate_after_training: bool = field(
        default=False, metadata={"help": "Evaluate on eval_source after training (main process, greedy)."}
    )
    eval_max_new_tokens: int = field(default=512, metadata={"help": "Generation length of the final evaluation."})

    def __post_init__(self):
        self.dataset_kwargs = _json("dataset_kwargs", self.dataset_kwargs) or {}
        if not isinstance(self.dataset_kwargs, dict):
            raise ValueError(f"dataset_kwargs must be a mapping, got {self.dataset_kwargs!r}")
        if self.object_order not in OBJECT_ORDERS:
            raise ValueError(f"unknown object_order {self.object_order!r}; expected one of {OBJECT_ORDERS}")
        tasks = sorted(BUILDERS)
        if self.task == "mixed":
            entries = _json("dataset_mixture", self.dataset_mixture)
            if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
                raise ValueError("task 'mixed' needs dataset_mixture: a non-empty list of {task, source, ...}")
            try:  # unknown keys are a TypeError naming the key
                self.dataset_mixture = [PerceptionDatasetConfig(**{"seed": self.dataset_seed + i, **e})
                                        for i, e in enumerate(entries)]  # fmt: skip
            except TypeError as err:
                raise ValueError(f"dataset_mixture: {err}") from None
            if self.eval_source:
                raise ValueError("eval_source is not read with task 'mixed': evaluate with `trl-perception eval`")
        elif self.dataset_mixture:
            raise ValueError("dataset_mixture is only read with task 'mixed'")
        entry_tasks = [e.task for e in self.dataset_mixture or []] or [self.task]
        for task in entry_tasks:
            if task not in tasks:
                raise ValueError(f"unknown task {task!r}; expected one of {tasks} (or 'mixed')")
        if TEXT_TASK in entry_tasks and set(entry_tasks) != {TEXT_TASK}:
            raise ValueError(f"text-only rows (task {TEXT_TASK!r}) make a stage of their own: a batch mixing them "
                             "with image rows cannot be collated; train them first, then the image tasks")  # fmt: skip
        if TEXT_TASK in entry_tasks and self.eval_source:
            raise ValueError(f"eval_source: there is no perception evaluation of text-only rows (task {TEXT_TASK!r})")
        if self.eval_image_dir is None and self.eval_source == self.dataset_source != "synthetic":
            self.eval_image_dir = self.image_dir  # another split of the same files
        if self.evaluate_after_training and not self.eval_source:
            raise ValueError("evaluate_after_training needs eval_source")

    def train_datasets(self) -> list[PerceptionDatasetConfig]:
        """The training data: the mixture's entries, or the one dataset the other fields describe."""
        if self.task == "mixed":
            return self.dataset_mixture
        return [PerceptionDatasetConfig(self.task, self.dataset_source, self.dataset_split, self.image_dir,
                                        self.num_samples, self.dataset_seed, self.dataset_kwargs)]  # fmt: skip

    def eval_dataset(self) -> PerceptionDatasetConfig | None:
        """The evaluation data (seeded apart from the training data), or `None` without `eval_source`."""
        if not self.eval_source:
            return None
        return PerceptionDatasetConfig(self.task, self.eval_source, self.eval_split, self.eval_image_dir,
                                       self.eval_num_samples, self.dataset_seed + 1000, self.dataset_kwargs)  # fmt: skip

    def build_datasets(
        self, *, completions: bool = False, **grid: Any
    ) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        """Build the training rows (every entry of a mixture, shuffled together) and the evaluation rows.

        `grid` (`box_format`, `min_pixels`, `max_pixels`) goes to every builder: prompts in the family's syntax,
        each image resized once to the model's grid. With `completions`, the training and evaluation rows get the
        `completion` column (`data.add_completions`, in `object_order`, seeded by each entry's seed; wrapped in
        `<think>`/`<answer>` when the entry's builder options ask for thinking); text-only rows (task `"text"`)
        bring their own answers and take no grid. A mixture stores `solution` as JSON text, which every reward
        reads, so that one column holds every task's type.
        """
        parts = []
        for entry in self.train_datasets():
            rows = entry.build(**grid) if entry.task != TEXT_TASK else entry.build()  # no images, no grid
            if completions and "completion" not in rows.column_names:  # text rows carry their answers
                rows = add_completions(rows, object_order=self.object_order, seed=entry.seed,
                                       think=bool(entry.kwargs.get("think", False)))  # fmt: skip
            parts.append(rows)
        if len(parts) == 1:
            train = parts[0]
        else:
            parts = [p.map(lambda s: {"solution": json.dumps(s)}, input_columns="solution") for p in parts]
            common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts)]
            parts = [p.select_columns(common) for p in parts]
            train = datasets.concatenate_datasets(parts).shuffle(seed=self.dataset_seed)
        evaluation = self.eval_dataset()
        if evaluation is None:
            return train, None
        eval_rows = evaluation.build(**grid)
        if completions:  # for the trainer's own evaluation loss (SFT's eval_strategy)
            eval_rows = add_completions(eval_rows, object_order=self.object_order, seed=evaluation.seed,
                                        think=bool(evaluation.kwargs.get("think", False)))  # fmt: skip
        return train, eval_rows


@dataclass
class PerceptionScriptArguments(PerceptionDataArguments):
    """The GRPO script's arguments: the data of `PerceptionDataArguments` and the rewards; checked when parsed,
    before any model loads."""

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward names (trl_perception.rewards.list_rewards()) or import paths 'module.function'."},
    )
    reward_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Parameters per reward name, e.g. {iou: {squared: true}}."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.reward_kwargs = _json("reward_kwargs", self.reward_kwargs) or {}
        if not isinstance(self.reward_kwargs, dict):
            raise ValueError(f"reward_kwargs must be a mapping, got {self.reward_kwargs!r}")
        if not self.reward_funcs:
            raise ValueError(f"reward_funcs is required: names from {list_rewards()} or 'module.function'")
        unused = sorted(set(self.reward_kwargs) - set(self.reward_funcs))
        if unused:
            raise ValueError(f"reward_kwargs names {unused}, which are not in reward_funcs {self.reward_funcs}")
        for name in self.reward_funcs:
            if "." not in name:  # import paths are resolved in main
                try:
                    get_reward(name, **self.reward_kwargs.get(name, {}))
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"reward {name!r}: {err}") from None


@dataclass
class PerceptionSFTScriptArguments(PerceptionDataArguments):
    """The SFT script's arguments: the data of `PerceptionDataArguments` (the answers are the `completion`
    column) and what to save for the next stage."""

    merge_lora: bool = field(
        default=False,
        metadata={"help": "With use_peft: save the LoRA adapter merged into the weights (full model and processor in "
                  "output_dir, the adapter alone in output_dir/adapter), so a next stage (GRPO) loads a plain "
                  "checkpoint. Not with a 4-bit or 8-bit base."},
    )  # fmt: skip
