"""Model cards for perception models trained with trl-perception, and pushing them to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_HYPERPARAMETERS",
    "CARD_INPUTS_FILE",
    "adapter_summary",
    "build_model_card",
    "push_to_hub",
    "write_model_card",
]

CARD_INPUTS_FILE = "trl_perception_card.json"
"""The file beside `README.md` that keeps the card's inputs, so `push_to_hub` can rebuild the card for another
repository id."""

_TASK_TITLES = {
    "grounding": "visual grounding (referring expressions)",
    "counting": "object counting",
    "ocr": "page OCR",
    "detection": "object detection",
    "ovd": "open-vocabulary detection",
    "vqa": "visual question answering on high-resolution images",
}
_METHOD_TEXT = {
    "grpo": "GRPO (reinforcement learning with rule-based rewards)",
    "sft": "supervised fine-tuning on ground-truth answers",
}
_FRAME_TEXT = {
    "qwen2_vl": "`<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, "
    "coordinates in 0–1000 of the image",
    "qwen2_5_vl": '`[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` JSON, absolute pixels of the image after the '
    "processor's resize (`smart_resize`)",
    "qwen3_vl": '`[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` JSON, coordinates in 0–1000 of the image',
}
CARD_HYPERPARAMETERS = (
    "learning_rate",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "beta",
    "temperature",
    "max_completion_length",
    "loss_type",
    "num_train_epochs",
    "max_steps",
    "min_pixels",
    "max_pixels",
    "seed",
)
"""The training arguments a model card lists (when set)."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".p", ".pkl", ".pickle", ".csv", ".tsv", ".arrow", ".txt", ".zip")


def _hub_id(name: Any) -> str | None:
    """`name` when it reads as a Hub repository id (`owner/name`, not a local path), else `None`."""
    if not isinstance(name, str) or not _HUB_ID.match(name) or os.path.exists(name):
        return None
    if os.path.splitext(name)[1].lower() in _FILE_SUFFIXES:
        return None
    return name


def _reward_rows(reward_funcs: Sequence[Any] | None, reward_weights: Sequence[float] | None) -> list[tuple[str, float]]:
    names = []
    for func in reward_funcs or []:
        names.append(func if isinstance(func, str) else getattr(func, "__name__", type(func).__name__))
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} reward functions but {len(weights)} reward weights")
    return list(zip(names, [float(w) for w in weights]))


def _hyperparameters(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    source = args if isinstance(args, Mapping) else vars(args)
    values = {k: source[k] for k in CARD_HYPERPARAMETERS if source.get(k) is not None}
    # Trainer semantics: max_steps > 0 overrides num_train_epochs; otherwise max_steps is unused.
    if isinstance(values.get("max_steps"), (int, float)):
        values.pop("num_train_epochs" if values["max_steps"] > 0 else "max_steps", None)
    return values


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _metric_table(metrics: Mapping[str, Any]) -> list[str]:
    rows = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for sub, subvalue in value.items():
                if isinstance(subvalue, (int, float)) and not isinstance(subvalue, bool):
                    rows.append(f"| {key}/{sub} | {_number(subvalue)} |")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {key} | {_number(value)} |")
    return rows if len(rows) > 2 else []


def adapter_summary(model: Any) -> dict[str, Any] | None:
    """The LoRA / QLoRA set-up of a PEFT model, as `build_model_card(peft=...)` shows it; `None` for a model
    without adapters.

    Reads the first adapter's config (`r`, `lora_alpha`, `lora_dropout`, `target_modules`) and the base model's
    `quantization_config` (4-bit with its quant type, or 8-bit: then the method is QLoRA).

    Example:
    ```python
    >>> from types import SimpleNamespace
    >>> lora = SimpleNamespace(r=8, lora_alpha=16, lora_dropout=0.05, target_modules={"v_proj", "q_proj"})
    >>> config = SimpleNamespace(quantization_config={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    >>> adapter_summary(SimpleNamespace(peft_config={"default": lora}, config=config))
    {'method': 'QLoRA', 'r': 8, 'alpha': 16, 'dropout': 0.05, 'target_modules': ['q_proj', 'v_proj'], 'quantization': '4-bit nf4'}
    >>> adapter_summary(SimpleNamespace(config=config)) is None
    True

    ```
    """
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, Mapping) or not configs:
        return None
    lora = next(iter(configs.values()))
    targets = getattr(lora, "target_modules", None)
    if isinstance(targets, (set, frozenset, list, tuple)):
        targets = sorted(targets)
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    if quant is not None and not isinstance(quant, Mapping):
        quant = quant.to_dict() if hasattr(quant, "to_dict") else vars(quant)
    quantization = None
    if quant and quant.get("load_in_4bit"):
        quantization = f"4-bit {quant.get('bnb_4bit_quant_type') or ''}".strip()
    elif quant and quant.get("load_in_8bit"):
        quantization = "8-bit"
    summary = {
        "method": "QLoRA" if quantization else "LoRA",
        "r": getattr(lora, "r", None),
        "alpha": getattr(lora, "lora_alpha", None),
        "dropout": getattr(lora, "lora_dropout", None),
        "target_modules": targets,
    }
    if quantization:
        summary["quantization"] = quantization
    return summary


def build_model_card(
    *,
    model_name: str,
    base_model: str | None,
    task: str | Sequence[str],
    dataset: str | Sequence[str] | None = None,
    reward_funcs: Sequence[Any] | None = None,
    reward_weights: Sequence[float] | None = None,
    box_format: str | None = None,
    training_args: Any = None,
    eval_metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    extra_text: str | None = None,
    eval_dataset: str | None = None,
    peft: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    method: str = "grpo",
) -> str:
    """Write the model card (Markdown with YAML metadata) of a perception model.

    The card says what the model is: base model, task(s), dataset(s), the reward functions and their weights,
    the box format the model writes, key GRPO hyperparameters, the LoRA / QLoRA set-up for adapters, the
    evaluation table when there is one, and how to use the model with transformers. `base_model` and
    `dataset` entries go into the card's metadata only when they read as Hub ids (`owner/name`, not an
    existing local path).

    Args:
        model_name (`str`): the Hub repository id or a local name.
        base_model (`str`): the model training started from.
        task (`str` or list): `"grounding"`, `"counting"`, `"ocr"`, `"detection"`.
        dataset (`str` or list, *optional*): dataset names or paths.
        reward_funcs (list, *optional*): reward callables or registry names.
        reward_weights (list, *optional*): one weight per reward (default 1.0 each, as in TRL).
        box_format (`str`, *optional*): model family whose output format the model writes.
        training_args (*optional*): a `GRPOConfig` (or dict); key hyperparameters are listed.
        eval_metrics (`dict`, *optional*): metric name → value (nested dicts allowed).
        license (`str`, *optional*): license identifier for the metadata.
        extra_text (`str`, *optional*): Markdown appended at the end.
        eval_dataset (`str`, *optional*): what `eval_metrics` were measured on.
        peft (`dict`, *optional*): the adapter set-up when the folder holds a LoRA adapter (`method`, `r`,
            `alpha`, `dropout`, `target_modules`, `quantization`; `adapter_summary` reads it from a model);
            the metadata then names `peft` as library.
        tags (list, *optional*): tags added to the metadata's own (`trl`, `trl-perception`, the method, the tasks).
        method (`str`): how the model was trained: `"grpo"` (reinforcement learning with the rewards) or `"sft"`
            (supervised fine-tuning on the ground-truth answers). A `peft` summary with `merged: True` describes
            a LoRA adapter folded into the weights: the repository then holds the full model.

    Returns:
        `str`: the card text.

    Example:
    ```python
    >>> card = build_model_card(model_name="me/qwen-grounding", base_model="Qwen/Qwen2-VL-2B-Instruct",
    ...     task="grounding", reward_funcs=["iou", "grounding_format"], box_format="qwen2_vl",
    ...     eval_metrics={"acc@0.5": 0.891})
    >>> "base_model: Qwen/Qwen2-VL-2B-Instruct" in card, "| iou | 1.0 |" in card, "| acc@0.5 | 0.8910 |" in card
    (True, True, True)
    >>> "base_model" in build_model_card(model_name="run", base_model="/tmp/checkpoints/step-100", task="ocr")
    False

    ```
    """
    from huggingface_hub import ModelCard, ModelCardData

    if method not in _METHOD_TEXT:
        raise ValueError(f"unknown training method {method!r}; expected one of {sorted(_METHOD_TEXT)}")
    tasks = [task] if isinstance(task, str) else list(task)
    merged = bool(peft and peft.get("merged"))
    datasets = [dataset] if isinstance(dataset, str) else list(dataset or [])
    rewards = _reward_rows(reward_funcs, reward_weights)
    hyper = _hyperparameters(training_args)
    data = ModelCardData(
        base_model=_hub_id(base_model),
        datasets=[d for d in datasets if _hub_id(d)] or None,
        library_name="peft" if peft and not merged else "transformers",
        license=license,
        pipeline_tag="image-text-to-text",
        tags=list(dict.fromkeys(["trl", "trl-perception", method, *tasks, *(tags or [])])),
        model_name=model_name,
    )
    lines = [
        f"# {model_name}",
        "",
        f"A vision-language model post-trained with {_METHOD_TEXT[method]} for "
        f"{', '.join(_TASK_TITLES.get(t, t) for t in tasks)}, with "
        "trl-perception on top of [TRL](https://github.com/huggingface/trl), following Perception-R1 "
        "([arXiv 2504.07954](https://arxiv.org/abs/2504.07954)).",
        "",
        f"- **Base model:** {base_model or 'unknown'}",
        f"- **Task:** {', '.join(tasks)}",
    ]
    if datasets:
        lines.append(f"- **Training data:** {', '.join(datasets)}")
    if box_format:
        lines.append(f"- **Box format:** `{box_format}`: {_FRAME_TEXT.get(box_format, box_format)}")
    if peft:
        details = ", ".join(
            f"{k} {v}" for k, v in peft.items() if k not in ("method", "quantization", "merged") and v is not None
        )
        quantization = f", base model quantized to {peft['quantization']}" if peft.get("quantization") else ""
        holds = "merged into the weights; this repository holds the full model" if merged else (
            "this repository holds the adapter only")  # fmt: skip
        lines.append(f"- **Adapter:** {peft.get('method', 'LoRA')} ({details}){quantization}; {holds}")
    if rewards:
        lines += ["", "## Rewards", "", "| reward | weight |", "|---|---|"]
        lines += [f"| {name} | {weight} |" for name, weight in rewards]
    if hyper:
        lines += ["", "## Training hyperparameters", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in hyper.items()]
    table = _metric_table(eval_metrics or {})
    if table:
        lines += ["", "## Evaluation", ""]
        if eval_dataset:
            lines += [f"On {eval_dataset}, greedy decoding, boxes mapped back to original image pixels:", ""]
        lines += table
    example_prompt = {
        "grounding": "Output the bounding box of the person on the left in the image.",
        "counting": "Output all the bounding boxes of the apples",
        "ocr": "OCR this image.",
        "detection": "Please output bbox coordinates and names of person, car, dog.",
        "ovd": "Please carefully check the image and detect the following objects: red car, zebra. "
        "If none of them is in the image, answer None.",
        "vqa": "What is the colour of the small sign?\\n(A) red\\n(B) blue\\nAnswer with the option's letter "
        "from the given choices, enclosed within \\\\boxed{}.",
    }.get(tasks[0] if tasks else "", "Describe the image.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{model_name}")',
        f'processor = AutoProcessor.from_pretrained("{model_name}")',
        'image = Image.open("image.jpg")',
        f'messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "{example_prompt}"}}]}}]',
        "text = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(text=[text], images=[image], return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=512, do_sample=False)",
        "print(processor.batch_decode(output[:, inputs.input_ids.shape[1]:], skip_special_tokens=False)[0])",
        "```",
    ]
    if peft and not merged:
        lines += [
            "",
            f"Loading the adapter needs `peft` installed; transformers fetches the base model ({base_model}) "
            "and applies the adapter on top.",
        ]
    if box_format:
        lines += [
            "",
            "Parse the answer and map boxes back to original image pixels with trl-perception:",
            "",
            "```python",
            "from trl_perception.formats import parse_objects",
            "from trl_perception.frames import Frame, model_input_size",
            "",
            f'input_size = model_input_size(image.size, "{box_format}")  # pass your min/max_pixels',
            f'frame = Frame.of("{box_format}", image.size, input_size)',
            f'boxes = [o.bbox for o in parse_objects(answer, "{box_format}").to_pixels(frame).objects if o.bbox]',
            "```",
        ]
    if extra_text:
        lines += ["", extra_text.strip()]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return str(card)


def write_model_card(output_dir: str | os.PathLike, **card_args: Any) -> str:
    """Write the model card of a training run into `output_dir`: `README.md` (`build_model_card(**card_args)`)
    and its inputs, `trl_perception_card.json`, which `push_to_hub` reads to rebuild the card for another
    repository id. Returns the card text.

    Example:
    ```python
    >>> import tempfile, pathlib
    >>> folder = tempfile.mkdtemp()
    >>> card = write_model_card(folder, model_name="run", base_model=None, task="ocr", method="sft")
    >>> sorted(p.name for p in pathlib.Path(folder).iterdir()), "supervised fine-tuning" in card
    (['README.md', 'trl_perception_card.json'], True)

    ```
    """
    card = build_model_card(**card_args)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, CARD_INPUTS_FILE), "w", encoding="utf-8") as f:
        json.dump(card_args, f, indent=2, default=str)
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return card


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload perception model trained with trl-perception",
    api: Any = None,
) -> str:
    """Upload a saved model folder to the Hub with its model card (written to `README.md` first).

    When `card` is omitted, the card is built from `trl_perception_card.json` (written with the card by
    `PerceptionGRPOTrainer.create_model_card`) with `repo_id` as the model name, so the usage snippet loads the
    model from where it is pushed; a `README.md` that was edited by hand (it differs from the card written
    with that file) is kept as it is, and so is any `README.md` when there is no `trl_perception_card.json`.
    (Inside a training script, `trainer.push_to_hub()` does the same in one step.)

    Args:
        folder: the output directory of a training run.
        repo_id (`str`): the Hub repository, e.g. `"me/qwen2-vl-grounding"`.
        card (`str`, *optional*): model card text.
        private, token: passed to `huggingface_hub`.
        api (*optional*): an `HfApi`-like object (for tests).

    Returns:
        `str`: the URL of the commit.

    Example:
    ```python
    >>> class FakeApi:
    ...     def create_repo(self, repo_id, **kwargs): return repo_id
    ...     def upload_folder(self, folder_path, repo_id, **kwargs): return f"https://hub/{repo_id}"
    >>> import tempfile
    >>> push_to_hub(tempfile.mkdtemp(), "me/model", card="# card", api=FakeApi())
    'https://hub/me/model'

    ```
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory: save the model there before pushing")
    readme = folder / "README.md"
    meta = folder / CARD_INPUTS_FILE
    if card is None and meta.exists():
        card_args = json.loads(meta.read_text(encoding="utf-8"))
        written = readme.read_text(encoding="utf-8") if readme.exists() else None
        if written is None or written == build_model_card(**card_args):
            card = build_model_card(**{**card_args, "model_name": repo_id})
    if card is not None:
        readme.write_text(card, encoding="utf-8")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    result = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "*.pt", "runs/**"],
    )
    return str(result)
