"""SFT vs GRPO vs continued-SFT on a ~1M-parameter Qwen2.5-VL trained from scratch on synthetic shapes, in
minutes on a CPU: where does RL beat more SFT (Perception-R1 §5, perceptual perplexity)?

Research code, outside the package: it uses only trl_perception's public API (synthetic data, formats, rewards,
`evaluation.evaluate`, the tiny-model builder) plus TRL's `GRPOTrainer`. The command is `train_tiny.py` next to
this file; the README ("A tiny model that learns") has the results.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import math
import multiprocessing
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import GRPOConfig, GRPOTrainer

from trl_perception.data.completions import render_completion
from trl_perception.data.synthetic import make_synthetic, shape_vocabulary
from trl_perception.demo import reward_mean
from trl_perception.evaluation import EvaluationResult, evaluate
from trl_perception.formats import render_objects
from trl_perception.frames import model_input_size
from trl_perception.matching import match_boxes
from trl_perception.metrics import counting_metrics, grounding_metrics
from trl_perception.rewards import count_reward, get_reward
from trl_perception.testing import build_tiny_vlm
from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

if TYPE_CHECKING:
    import datasets

__all__ = [
    "LEARNING_CONFIG",
    "SETTINGS",
    "Setting",
    "build_learning_model",
    "detection_count_reward",
    "evaluate_setting",
    "make_setting_data",
    "run_experiment",
    "run_grpo_stage",
    "run_sft_stage",
    "summarize",
]

LEARNING_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 4.0,
    "mrope_section": [2, 7, 7],
    "vision_depth": 3,
    "vision_hidden_size": 64,
    "vision_num_heads": 2,
    "fullatt_block_indexes": [0, 1, 2],
    "tokenizer_vocab_size": 1024,
}
"""`build_tiny_vlm` overrides of the tiny Qwen2.5-VL that learns (docs/tiny-models.md, "Learning"): high-frequency
M-RoPE (theta 4, sections [2, 7, 7]) and full attention in every vision block. A vocabulary of 1024 makes colour
and shape names single tokens. About 1.2M parameters."""

BOX_FORMAT = "qwen2_5_vl"
IMAGE_SIZE = 112
MIN_PIXELS = 3136
EVAL_SEED = 1_000_003
"""Seed of the held-out images (training data uses small seeds, so the two never share a row)."""


@dataclass(frozen=True)
class Setting:
    """One experimental setting: data, SFT target, GRPO rewards and hyper-parameters."""

    name: str
    task: str
    description: str
    prompt: str
    synthetic: dict[str, Any]
    rewards: tuple[str, ...]
    max_completion_length: int
    # SFT from scratch
    sft_steps: int = 1500
    sft_batch_size: int = 32
    sft_lr: float = 1e-3
    sft_warmup: int = 100
    sft_train_images: int = 12_000
    # GRPO from the SFT checkpoint
    grpo_steps: int = 100
    grpo_lr: float = 3e-5
    num_generations: int = 8
    prompts_per_step: int = 8
    temperature: float = 1.0
    top_k: int = 0
    beta: float = 0.0
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    grpo_train_images: int = 4000
    # Continued-SFT control from the same checkpoint (equal wall time, see `control_steps_per_grpo_step`)
    control_lr: float = 1e-4
    control_schedule: str = "cosine"
    """`"cosine"` (from `control_lr` to 0, the control's best shot) or `"constant"`."""
    control_steps_per_grpo_step: float = 4.0
    extra: dict[str, Any] = field(default_factory=dict)
    image_size: int = IMAGE_SIZE
    """Side of the square images (Qwen2.5-VL: a multiple of 28; 112 gives 16 visual tokens, 168 gives 36)."""
    matching: str = "hungarian"
    """Matching of the counting reward (`count_reward(matching=...)`): `"sequential"` is Table 5's "w/o reward
    matching"."""
    solution_in_group: int = 0
    """Rollouts per group replaced by the ground-truth answer (`PerceptionGRPOConfig.solution_in_group`)."""
    perception_trainer: bool = False
    """GRPO with `PerceptionGRPOTrainer` (needed for `solution_in_group`) instead of TRL's `GRPOTrainer`."""


SETTINGS: dict[str, Setting] = {
    "high_perplexity": Setting(
        name="high_perplexity",
        task="detection",
        description=(
            "2-3 red squares per 112x112 image (one class, so the test is localisation); SFT answers list the "
            "objects in a random order per sample; GRPO rewards: detection_reward + count_reward (Hungarian-matched)"
        ),
        prompt="Detect all shapes.",
        synthetic={
            "min_objects": 2,
            "max_objects": 3,
            "colors": ("red",),
            "shapes": ("square",),
            "shuffle_objects": True,
        },
        rewards=("detection", "detection_count"),
        max_completion_length=100,
        sft_steps=1500,
        sft_lr=2e-3,
        sft_warmup=100,
        sft_train_images=16000,
        sft_batch_size=32,
        grpo_steps=40,
        temperature=0.7,
        control_steps_per_grpo_step=5.0,
    ),
    "imperfect_supervision": Setting(
        name="imperfect_supervision",
        task="grounding",
        description=(
            "one shape per 112x112 image; SFT boxes are systematically loose (every side 3 px outward, clipped); "
            "GRPO reward: exact IoU against the true box"
        ),
        prompt="Find the {question}.",
        synthetic={"min_objects": 1, "max_objects": 1, "box_jitter": "loose", "box_noise_px": 3},
        rewards=("iou",),
        max_completion_length=30,
        sft_steps=1200,
        sft_lr=2e-3,
        sft_warmup=100,
        sft_train_images=16000,
        sft_batch_size=32,
        grpo_steps=60,
        temperature=0.7,
        control_steps_per_grpo_step=5.0,
    ),
}
"""The settings of the tiny experiments, with the hyper-parameters used for the committed results (README, "A tiny model
that learns"). `high_perplexity_9_classes` is the harder variant whose SFT model localises but confuses
colours and shapes."""
SETTINGS["high_perplexity_9_classes"] = replace(
    SETTINGS["high_perplexity"],
    name="high_perplexity_9_classes",
    description=(
        "2-3 shapes (3 colours x 3 shapes) per 112x112 image; SFT answers list the objects in a random order per "
        "sample; GRPO rewards: detection_reward + count_reward (Hungarian-matched)"
    ),
    synthetic={
        **SETTINGS["high_perplexity"].synthetic,
        "colors": ("red", "green", "blue"),
        "shapes": ("square", "circle", "triangle"),
    },
)

SETTINGS["counting"] = Setting(
    name="counting",
    task="counting",
    description=(
        "3-10 red squares per 168x168 image (36 visual tokens), no distractors; SFT answers list one point per "
        "square in a random order per sample; GRPO reward: count_reward (Hungarian-matched points)"
    ),
    prompt="Point to the {label}.",
    synthetic={
        "min_objects": 3,
        "max_objects": 10,
        "colors": ("red",),
        "shapes": ("square",),
        "max_distractors": 0,
        "shuffle_objects": True,
    },
    rewards=("count",),
    max_completion_length=200,
    image_size=168,
    sft_steps=200,
    sft_lr=2e-3,
    sft_warmup=20,
    sft_train_images=3200,
    sft_batch_size=32,
    grpo_steps=50,
    grpo_lr=5e-5,
    num_generations=16,
    prompts_per_step=1,
    temperature=1.0,
    grpo_train_images=240,
    control_steps_per_grpo_step=0.5,
    perception_trainer=True,
)
"""Table 5's counting gap in miniature (`counting_tiny.py` runs it): many objects of one kind, whose
points SFT must learn in one of k! orders, against a Hungarian-matched reward that accepts every order.
`control_steps_per_grpo_step=0.5`: a GRPO step trains on 1 prompt x 16 samples = 16 sequences, an SFT step on 32
(equal forward/backward sequences, and nearly equal tokens since completions are about as long as answers)."""


def _image_size(box_format: str, image_size: int = IMAGE_SIZE) -> int:
    # Qwen3-VL's patches are 16 px, merged 2x2: its images are a multiple of 32 (112 -> 128).
    return image_size if box_format != "qwen3_vl" else 32 * math.ceil(image_size / 32)


def _setting(setting: str | Setting) -> Setting:
    if isinstance(setting, Setting):
        return setting
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of {sorted(SETTINGS)}")
    return SETTINGS[setting]


# ------------------------------------------------------------------------------------------------- data


def make_setting_data(
    setting: str | Setting, n: int, seed: int = 0, box_format: str = BOX_FORMAT
) -> datasets.Dataset:
    """Rows of a setting in the row contract, plus the SFT answer text.

    `solution` is always the **exact** ground truth (what rewards and metrics use). `sft_target` is the answer
    text SFT learns: the objects in the (random) order of the annotation, with the setting's label noise
    (loose boxes for `"imperfect_supervision"`), rendered in the box format's answer format. Rows depend only on
    `(setting, seed, index)`.

    Example:
    ```python
    >>> ds = make_setting_data("imperfect_supervision", 2, seed=0)
    >>> row = ds[0]
    >>> row["task"], row["box_format"], row["image"].size
    ('grounding', 'qwen2_5_vl', (112, 112))
    >>> target = json.loads(row["sft_target"])[0]["bbox_2d"]
    >>> [t - s for t, s in zip(target, row["solution"])]  # 3 px looser, except where the image edge clips it
    [-3.0, -1.0, 3.0, 3.0]

    ```
    """
    spec = _setting(setting)
    size = _image_size(box_format, spec.image_size)
    ds = make_synthetic(
        spec.task, int(n), seed=int(seed), image_size=size, template=spec.prompt, **spec.synthetic
    )
    input_size = list(
        model_input_size((size, size), box_format, min_pixels=MIN_PIXELS, max_pixels=size * size)
    )
    noisy = ds["solution"]
    exact = ds["exact_solution"] if "exact_solution" in ds.column_names else noisy
    targets = []
    for i, (obj, image_size) in enumerate(zip(noisy, ds["image_size"])):
        if spec.task == "counting":  # points in a fresh random order per row (`object_order="random"`)
            targets.append(
                render_completion(
                    "counting", obj, image_size=image_size, box_format=box_format, input_size=input_size,
                    object_order="random", rng=np.random.default_rng([int(seed) & 0xFFFFFFFF, i]),
                )
            )  # fmt: skip
            continue
        objects = [obj] if spec.task == "grounding" else obj
        targets.append(render_objects(objects, box_format, image_size, input_size))
    ds = ds.remove_columns([c for c in ("solution", "exact_solution") if c in ds.column_names])
    ds = ds.add_column("solution", exact)
    ds = ds.add_column("sft_target", targets)
    ds = ds.add_column("box_format", [box_format] * len(ds))
    ds = ds.add_column("input_size", [input_size] * len(ds))
    return ds


def detection_count_reward(completions: list, solution: list, **kwargs: Any) -> list[float | None]:
    """`rewards.count_reward` on detection rows: the ground-truth points are the centres of the ground-truth
    boxes, and predicted boxes are matched to them by the Hungarian algorithm on centre distance.

    Example:
    ```python
    >>> gt = [{"bbox_2d": [0, 0, 10, 10], "label": "red square"}, {"bbox_2d": [50, 50, 70, 70], "label": "red circle"}]
    >>> detection_count_reward(['[{"bbox_2d": [0, 0, 10, 10], "label": "red square"}]'], [gt], task=["detection"])
    [0.5]

    ```
    """
    counting = []
    for value in solution:
        objects = value
        if isinstance(value, str):  # mixed-task datasets store solutions as JSON
            try:
                objects = json.loads(value)
            except ValueError:
                objects = None
        if not isinstance(objects, (list, tuple)):
            counting.append(None)
            continue
        points = []
        for obj in objects:
            box = obj.get("bbox_2d") if isinstance(obj, dict) else None
            if isinstance(box, (list, tuple)) and len(box) == 4:
                points.append([(float(box[0]) + float(box[2])) / 2, (float(box[1]) + float(box[3])) / 2])
        counting.append({"count": len(points), "points": points})
    kwargs = dict(kwargs)
    kwargs["task"] = ["counting"] * len(completions)
    for key in ("log_metric", "log_extra"):
        kwargs.pop(key, None)
    rewards = count_reward(completions, [c or {"count": 0} for c in counting], **kwargs)
    return [None if c is None else r for c, r in zip(counting, rewards)]


def reward_functions(setting: str | Setting) -> list[Callable[..., Any]]:
    """The GRPO reward functions of a setting (registry rewards, plus `detection_count_reward`).

    Example:
    ```python
    >>> [f.__name__ for f in reward_functions("imperfect_supervision")]
    ['iou_reward']

    ```
    """
    spec = _setting(setting)
    funcs = []
    for name in spec.rewards:
        if name == "detection_count":
            funcs.append(detection_count_reward)
        elif name == "count":
            funcs.append(get_reward(name, matching=spec.matching))
        else:
            funcs.append(get_reward(name))
    return funcs


# ------------------------------------------------------------------------------------------------- model


def build_learning_model(
    output_dir: str | os.PathLike, seed: int = 0, box_format: str = BOX_FORMAT, image_size: int = IMAGE_SIZE
) -> str:
    """Builds the randomly initialised ~1.2M-parameter model of `LEARNING_CONFIG` (with its processor) into
    `output_dir` and returns the path. Its processor's `max_pixels` is `image_size`².

    Example:
    ```python
    >>> import tempfile
    >>> from transformers import AutoModelForImageTextToText
    >>> path = build_learning_model(tempfile.mkdtemp())
    >>> model = AutoModelForImageTextToText.from_pretrained(path)
    >>> 1_000_000 < sum(p.numel() for p in model.parameters()) < 2_000_000
    True

    ```
    """
    overrides = dict(LEARNING_CONFIG)
    if box_format != "qwen2_5_vl":
        overrides.pop("fullatt_block_indexes")
    size = _image_size(box_format, image_size)
    return build_tiny_vlm(
        box_format, output_dir, seed=seed, min_pixels=MIN_PIXELS, max_pixels=size * size, **overrides
    )


def _load(checkpoint: str | os.PathLike) -> tuple[Any, Any]:

    model = AutoModelForImageTextToText.from_pretrained(os.fspath(checkpoint), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(os.fspath(checkpoint))
    processor.tokenizer.padding_side = "left"
    return model, processor


def _save(model: Any, processor: Any, output_dir: str | os.PathLike, half: bool = False) -> str:

    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if half:
        model = copy.deepcopy(model).to(torch.bfloat16)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


# ------------------------------------------------------------------------------------------------- SFT


def _patchify(images: torch.Tensor, processor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL image-processor patches of same-size uint8 images `[B, H, W, 3]` already on the patch grid:
    `(pixel_values [B * gh * gw, 3 * 2 * p * p], image_grid_thw [B, 3])`, equal to the processor's output."""

    ip = processor.image_processor
    p, m, t = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    b, h, w, c = images.shape
    mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, c, 1, 1)
    x = images.permute(0, 3, 1, 2).float() * float(ip.rescale_factor)
    x = (x - mean) / std
    gh, gw = h // p, w // p
    x = x.unsqueeze(1).expand(b, t, c, h, w)
    x = x.reshape(b, t, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(b * gh * gw, c * t * p * p)
    grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long)
    return pixel_values.contiguous(), grid


class _SFTData:
    """Pre-tokenised prompts + answers and uint8 images of a setting's rows, batched for a plain torch loop."""

    def __init__(self, ds: datasets.Dataset, processor: Any):

        tok = processor.tokenizer
        ip = processor.image_processor
        self.processor = processor
        images = np.stack([np.asarray(img.convert("RGB")) for img in ds["image"]])
        self.images = torch.from_numpy(images)
        h, w = images.shape[1:3]
        n_image_tokens = (h // ip.patch_size) * (w // ip.patch_size) // (ip.merge_size**2)
        image_pad = processor.image_token
        image_id = tok.convert_tokens_to_ids(image_pad)
        end = tok("<|im_end|>\n", add_special_tokens=False).input_ids
        cache: dict[str, list[int]] = {}
        self.input_ids: list[list[int]] = []
        self.n_prompt: list[int] = []
        for prompt, target in zip(ds["prompt"], ds["sft_target"]):
            key = json.dumps(prompt, sort_keys=True)
            if key not in cache:
                text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                text = text.replace(image_pad, image_pad * n_image_tokens)
                cache[key] = tok(text, add_special_tokens=False).input_ids
            prompt_ids = cache[key]
            answer = tok(target, add_special_tokens=False).input_ids + end
            self.input_ids.append(prompt_ids + answer)
            self.n_prompt.append(len(prompt_ids))
        self.image_id = image_id
        self.pad_id = tok.pad_token_id
        self.n_answer_tokens_end = len(end) - 1  # the trailing "\n" after <|im_end|> is not learned

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:

        length = max(len(self.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(indices), length), -100, dtype=torch.long)
        mask = torch.zeros((len(indices), length), dtype=torch.long)
        for row, i in enumerate(indices):
            seq = torch.tensor(self.input_ids[i], dtype=torch.long)
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
            stop = len(seq) - self.n_answer_tokens_end
            labels[row, self.n_prompt[i] : stop] = seq[self.n_prompt[i] : stop]
        pixel_values, grid = _patchify(self.images[list(indices)], self.processor)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "mm_token_type_ids": (ids == self.image_id).long(),
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
        }


def _sft_loop(
    model: Any,
    data: _SFTData,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    schedule: str,
    seed: int,
    log: Callable[[str], None] | None = None,
    log_every: int = 25,
) -> list[dict[str, float]]:

    torch.manual_seed(seed)
    rng = random.Random(seed)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        if schedule == "constant":
            return lr
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * progress))

    model.train()
    order: list[int] = []
    history = []
    start = time.time()
    running = 0.0
    for step in range(steps):
        if len(order) < batch_size:
            extra = list(range(len(data)))
            rng.shuffle(extra)
            order += extra
        indices, order = order[:batch_size], order[batch_size:]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(**data.batch(indices)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += float(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            k = (step % log_every) + 1
            entry = {"step": step + 1, "loss": running / k, "lr": lr_at(step), "time": time.time() - start}
            history.append(entry)
            running = 0.0
            if log is not None:
                log(f"sft step {entry['step']}/{steps} loss {entry['loss']:.4f} ({entry['time']:.0f}s)")
    model.eval()
    return history


def run_sft_stage(
    checkpoint: str | os.PathLike,
    setting: str | Setting,
    output_dir: str | os.PathLike,
    *,
    steps: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    schedule: str = "cosine",
    batch_size: int | None = None,
    train_images: int | None = None,
    data_seed: int = 0,
    seed: int = 0,
    eval_n: int = 0,
    half: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """SFT with a plain torch loop (answer-only loss, AdamW (0.9, 0.98), weight decay 0.01 on matrices, gradient
    clip 1.0, fp32) from `checkpoint`, saved to `output_dir`. Defaults are the setting's from-scratch recipe
    (warm-up then cosine to 0); the continued-SFT control passes `lr`, `steps`, `warmup=0` and its `schedule`.

    Returns `{"checkpoint", "history", "wall_time", "steps", "after"}` (`after`: held-out metrics on `eval_n`
    images when `eval_n > 0`).

    Example:
    ```python
    >>> import tempfile
    >>> start = build_learning_model(tempfile.mkdtemp())
    >>> out = run_sft_stage(start, "imperfect_supervision", tempfile.mkdtemp(), steps=2, batch_size=4,
    ...                     train_images=8, warmup=1, log=None)
    >>> out["steps"], len(out["history"])
    (2, 1)

    ```
    """
    spec = _setting(setting)
    steps = spec.sft_steps if steps is None else int(steps)
    model, processor = _load(checkpoint)
    ds = make_setting_data(
        spec, spec.sft_train_images if train_images is None else train_images, seed=data_seed
    )
    data = _SFTData(ds, processor)
    start = time.time()
    history = _sft_loop(
        model,
        data,
        steps=steps,
        batch_size=spec.sft_batch_size if batch_size is None else batch_size,
        lr=spec.sft_lr if lr is None else lr,
        warmup=spec.sft_warmup if warmup is None else warmup,
        schedule=schedule,
        seed=seed,
        log=log,
    )
    wall = time.time() - start
    path = _save(model, processor, output_dir, half=half)
    result: dict[str, Any] = {"checkpoint": path, "history": history, "wall_time": wall, "steps": steps}
    if eval_n:
        result["after"] = evaluate_setting(model, processor, spec, eval_n)
    return result


# ------------------------------------------------------------------------------------------------- eval


def _eval_data(spec: Setting, n: int) -> datasets.Dataset:
    return make_setting_data(spec, n, seed=EVAL_SEED)


def _run_evaluate(
    spec: Setting,
    ds: datasets.Dataset,
    model: Any = None,
    processor: Any = None,
    texts: Sequence[str] | None = None,
    batch_size: int = 100,
) -> EvaluationResult:
    """`trl_perception.evaluation.evaluate` on the rows of `ds`: batched greedy generation by `model` (or the
    given `texts`), parsed and mapped to original pixels in the box format's frame."""
    box_format = ds["box_format"][0] if len(ds) else BOX_FORMAT
    size = _image_size(box_format, spec.image_size)
    categories = None
    if spec.task == "detection":
        categories = shape_vocabulary(spec.synthetic.get("colors"), spec.synthetic.get("shapes"))
    generate_fn = None if texts is None else (lambda requests: [texts[r.index] for r in requests])
    return evaluate(
        None if texts is not None else model,
        ds,
        processor=processor,
        box_format=box_format,
        min_pixels=MIN_PIXELS,
        max_pixels=size * size,
        batch_size=batch_size,
        max_new_tokens=spec.max_completion_length,
        backend="transformers",
        num_visual=0,
        progress=False,
        categories=categories,
        generate_fn=generate_fn,
    )


def _setting_metrics(spec: Setting, result: EvaluationResult) -> dict[str, float]:
    records = result.predictions
    metrics: dict[str, float] = {
        "format_ok": float(np.mean([r["valid"] and bool(r["objects"]) for r in records]))
    }
    if spec.task == "grounding":
        preds = [r["prediction"] for r in records]
        g = grounding_metrics(preds, [r["solution"] for r in records], thresholds=(0.5, 0.75, 0.9))
        metrics.update({k: float(g[k]) for k in ("mean_iou", "acc@0.5", "acc@0.75", "acc@0.9")})
        bias = [
            ((box[2] - box[0]) - (gt[2] - gt[0]) + (box[3] - box[1]) - (gt[3] - gt[1])) / 2
            for box, gt in ((r["prediction"], r["solution"]) for r in records)
            if box is not None
        ]
        metrics["size_bias_px"] = float(np.mean(bias)) if bias else float("nan")
    elif spec.task == "counting":  # points listed (`formats.parse_count`): PixMo-Count's protocol
        counting = result.metrics["counting"]
        metrics["count_acc"], metrics["count_mae"] = float(counting["accuracy"]), float(counting["mae"])
        errors = [(r["prediction"] or 0) - r["solution"]["count"] for r in records]  # nothing parsed: 0
        metrics["count_bias"] = float(np.mean(errors))
        metrics["count_under"] = float(np.mean([e < 0 for e in errors]))
        metrics["count_over"] = float(np.mean([e > 0 for e in errors]))
    else:
        tp = n_pred = n_gt = 0
        counts = []
        for r in records:
            objs = [o for o in r["objects"] if "bbox_2d" in o]
            counts.append(len(objs) if r["valid"] else None)
            gt_boxes = np.asarray([o["bbox_2d"] for o in r["solution"]], dtype=float).reshape(-1, 4)
            gt_labels = [o["label"] for o in r["solution"]]
            if objs:
                boxes = np.asarray([o["bbox_2d"] for o in objs], dtype=float).reshape(-1, 4)
                labels = [str(o.get("label") or "").strip() for o in objs]  # as evaluate's COCO matching
                pred_idx, _, _ = match_boxes(boxes, gt_boxes, 0.5, labels, gt_labels)
                tp += len(pred_idx)
            n_pred += len(objs)
            n_gt += len(gt_labels)
        metrics["precision"] = tp / n_pred if n_pred else 0.0
        metrics["recall"] = tp / n_gt if n_gt else 0.0
        metrics["f1"] = 2 * tp / (n_pred + n_gt) if (n_pred + n_gt) else 0.0
        coco = result.metrics["detection"]
        metrics.update({"AP": coco["AP"], "AP50": coco["AP50"], "AP75": coco["AP75"]})
        cm = counting_metrics(counts, [len(r["solution"]) for r in records])
        metrics["count_acc"], metrics["count_mae"] = float(cm["accuracy"]), float(cm["mae"])
    metrics["reward"] = float(reward_mean(records, reward_functions(spec)) or 0.0)
    return metrics


def score_completions(spec: str | Setting, ds: datasets.Dataset, texts: Sequence[str]) -> dict[str, float]:
    """Held-out metrics of completions `texts` of the rows of `ds`, scored by `trl_perception.evaluation.evaluate`
    (parsing, frames, COCO AP) plus the experiment's own summaries.

    Grounding: `mean_iou`, `acc@0.5`, `acc@0.75`, `acc@0.9` against the exact boxes (`grounding_metrics`),
    plus `size_bias_px` (mean predicted minus true width and height, px). Detection: micro `f1` (class-aware
    Hungarian matching at IoU >= 0.5), `precision`, `recall`, COCO `AP` / `AP50` / `AP75` (every box scored 1,
    as Perception-R1), `count_acc` (number of objects listed == number present) and `count_mae`. Counting:
    `count_acc` and `count_mae` of the number of points listed (`evaluation.evaluate`'s counting metrics), plus
    `count_bias` (mean listed minus true) and `count_under` / `count_over` (share of answers below / above). All:
    `reward` (mean of the setting's GRPO rewards summed) and `format_ok` (share of parseable answers).

    Example:
    ```python
    >>> ds = make_setting_data("imperfect_supervision", 2, seed=0)
    >>> m = score_completions("imperfect_supervision", ds, [json.dumps([{"bbox_2d": ds[0]["solution"]}]), "??"])
    >>> m["mean_iou"], m["acc@0.75"], m["format_ok"]
    (0.5, 0.5, 0.5)

    ```
    """
    spec = _setting(spec)
    if len(texts) != len(ds):
        raise ValueError(f"{len(texts)} completions for {len(ds)} rows")
    return _setting_metrics(spec, _run_evaluate(spec, ds, texts=list(texts)))


def evaluate_setting(
    model: Any, processor: Any, setting: str | Setting, n: int = 1000, batch_size: int = 100
) -> dict[str, float]:
    """Held-out metrics (as `score_completions`) of greedy decoding on the first `n` evaluation images of a
    setting (seed `EVAL_SEED`, never used for training); generation is `evaluation.evaluate`'s, `batch_size`
    rows per `generate` call."""
    spec = _setting(setting)
    ds = _eval_data(spec, n)
    start = time.time()
    result = _run_evaluate(spec, ds, model=model, processor=processor, batch_size=batch_size)
    metrics = _setting_metrics(spec, result)
    metrics["eval_time"] = time.time() - start
    return metrics


# ------------------------------------------------------------------------------------------------- GRPO


def run_grpo_stage(
    checkpoint: str | os.PathLike,
    setting: str | Setting,
    output_dir: str | os.PathLike,
    max_steps: int | None = None,
    seed: int = 0,
    eval_n: int = 1000,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    *,
    eval_before: bool = True,
    save: bool = True,
    train_images: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """GRPO (TRL `GRPOTrainer`, CPU, fp32) with the setting's rewards from `checkpoint`, saved to `output_dir`.

    Hyper-parameters are the setting's (`grpo_lr`, `num_generations`, `prompts_per_step`, `temperature`,
    `top_k`, `beta`, `loss_type`, `scale_rewards`, `max_completion_length`); `overrides` replace any `Setting`
    field. Training prompts come from seed `1000 + seed`, held-out images from `EVAL_SEED`.

    Args:
        checkpoint: a model + processor directory (e.g. `trl_perception/assets/tiny_checkpoint`).
        setting: `"high_perplexity"`, `"imperfect_supervision"` or a `Setting`.
        output_dir: where the trainer writes and the final model is saved.
        max_steps: GRPO steps (default: the setting's `grpo_steps`).
        seed: seed of the trainer (sampling, data order) and of the training prompts.
        eval_n: held-out images for the before / after evaluation (0 skips it).
        callback: called as `callback(step, logs)` after every logged step (`logs` holds `reward`,
            `reward_std`, per-reward means, completion lengths...).
        eval_before: evaluate the checkpoint too (skip when the caller already knows it).
        save: save the final model and processor into `output_dir`.
        train_images: distinct training prompts (default: the setting's `grpo_train_images`).

    Returns:
        `{"before", "after", "history", "wall_time", "train_time", "steps", "checkpoint", "config"}`: held-out
        metrics before and after, the per-step log history, and timings in seconds.

    Example:
    ```python
    >>> import tempfile
    >>> start = build_learning_model(tempfile.mkdtemp())
    >>> out = run_grpo_stage(start, "imperfect_supervision", tempfile.mkdtemp(), max_steps=1, eval_n=4,
    ...                      num_generations=2, prompts_per_step=2, train_images=4, max_completion_length=4)
    >>> out["steps"], sorted(out["after"])[:3]
    (1, ['acc@0.5', 'acc@0.75', 'acc@0.9'])

    ```
    """

    spec = replace(_setting(setting), **overrides) if overrides else _setting(setting)
    steps = spec.grpo_steps if max_steps is None else int(max_steps)
    model, processor = _load(checkpoint)
    result: dict[str, Any] = {"config": {k: v for k, v in asdict(spec).items()}, "steps": steps}
    if eval_n and eval_before:
        result["before"] = evaluate_setting(model, processor, spec, eval_n)
    ds = make_setting_data(
        spec, spec.grpo_train_images if train_images is None else train_images, seed=1000 + seed
    )
    targets = ds["sft_target"]
    ds = ds.remove_columns(["sft_target"])
    if spec.solution_in_group:  # the answer the trainer injects: the SFT target, as TRL's conversational turn
        ds = ds.add_column(
            "completion", [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in targets]
        )

    history: list[dict[str, float]] = []

    class _History(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or "loss" not in logs and "reward" not in logs:
                return
            entry = {
                "step": int(state.global_step),
                **{k: float(v) for k, v in logs.items() if _is_number(v)},
            }
            history.append(entry)
            if callback is not None:
                callback(entry["step"], entry)

    config_class, trainer_class = GRPOConfig, GRPOTrainer
    perception: dict[str, Any] = {}
    if spec.perception_trainer or spec.solution_in_group:
        config_class, trainer_class = PerceptionGRPOConfig, PerceptionGRPOTrainer
        size = _image_size(BOX_FORMAT, spec.image_size)
        perception = dict(
            box_format=BOX_FORMAT, min_pixels=MIN_PIXELS, max_pixels=size * size,
            solution_in_group=spec.solution_in_group,
        )  # fmt: skip
    args = config_class(
        **perception,
        output_dir=os.fspath(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=steps,
        learning_rate=spec.grpo_lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=spec.prompts_per_step * spec.num_generations,
        num_generations=spec.num_generations,
        max_completion_length=spec.max_completion_length,
        temperature=spec.temperature,
        top_k=spec.top_k,
        beta=spec.beta,
        loss_type=spec.loss_type,
        scale_rewards=spec.scale_rewards,
        logging_steps=1,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        weight_decay=0.0,
        max_grad_norm=1.0,
    )
    trainer = trainer_class(
        model=model,
        reward_funcs=reward_functions(spec),
        args=args,
        train_dataset=ds,
        processing_class=processor,
        callbacks=[_History()],
    )

    for printer in (PrinterCallback, ProgressCallback):  # the history goes to `callback`, not stdout
        trainer.remove_callback(printer)
    start = time.time()
    trainer.train()
    result["train_time"] = time.time() - start
    model = trainer.model
    model.eval()
    result["history"] = history
    if save:
        result["checkpoint"] = _save(model, processor, output_dir)
    if eval_n:
        result["after"] = evaluate_setting(model, processor, spec, eval_n)
    result["wall_time"] = time.time() - start
    del trainer
    torch.set_grad_enabled(True)
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


# ------------------------------------------------------------------------------------------------- pipeline


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value).

    Example:
    ```python
    >>> summarize([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> summarize([1.0, float("nan")])
    (nan, nan)

    ```
    """
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):  # e.g. the size bias of a model that never outputs a box
        return (math.nan, math.nan)
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("GRPO", {}),
    "control": ("continued SFT", {}),
    "grpo_sequential": ("GRPO w/o reward matching", {"matching": "sequential"}),
    "grpo_gt0": ("GRPO, 0 ground truths in the group", {"solution_in_group": 0, "perception_trainer": True}),
    "grpo_gt1": ("GRPO, 1 ground truth in the group", {"solution_in_group": 1, "perception_trainer": True}),
}
"""The arms `run_experiment` can run from the SFT checkpoint: table label and the `Setting` fields each GRPO
variant overrides. `"control"` is the continued-SFT control; every other arm is GRPO."""

KEY_METRICS = {
    "detection": ("f1", "AP", "AP50", "count_acc", "precision", "recall", "reward"),
    "grounding": ("mean_iou", "acc@0.5", "acc@0.75", "acc@0.9", "size_bias_px", "reward"),
    "counting": ("count_acc", "count_mae", "format_ok", "reward"),
}


def run_experiment(
    setting: str | Setting,
    output_dir: str | os.PathLike,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    eval_n: int = 1000,
    sft_steps: int | None = None,
    grpo_steps: int | None = None,
    control_steps: int | None = None,
    start_checkpoint: str | None = None,
    arms: Sequence[str] = ("grpo", "control"),
    log: Callable[[str], None] | None = print,
    workers: int = 1,
    **grpo_overrides: Any,
) -> dict[str, Any]:
    """The whole pipeline of one setting: build the model, SFT it from scratch (or take `start_checkpoint`),
    then for each seed each of `arms` (keys of `ARMS`: GRPO, its variants, and the equal-compute continued-SFT
    control) from that same SFT checkpoint, all evaluated with greedy decoding on `eval_n` held-out images.
    Writes `results.json` into `output_dir` and returns the same dict (`sft`, then one dict of per-seed results
    per arm, and `table`: mean ± std per metric; GRPO rows add `train_reward` and `nonzero_adv_groups`, the
    mean over steps of the sampled reward and of the share of groups whose rewards differ).

    With `workers > 1` the GRPO and control runs go to that many worker processes (each with `cpu_count //
    workers` torch threads): on 2 cores, two one-thread runs side by side get more done than one two-thread run.
    Each run depends only on its seed, never on which worker ran it or in which order."""
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; expected some of {sorted(ARMS)}")
    spec = _setting(setting)
    if grpo_overrides:
        spec = replace(spec, **grpo_overrides)
    if sft_steps is not None:  # recorded in results["setting"] as run
        spec = replace(spec, sft_steps=int(sft_steps))
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    out_path = os.path.join(output_dir, "results.json")
    results: dict[str, Any] = {"setting": asdict(spec), "seeds": list(seeds), "eval_n": eval_n}
    if os.path.exists(out_path):
        with open(out_path) as f:
            results.update({k: v for k, v in json.load(f).items() if k == "sft" or k in ARMS})
    pipeline_start = time.time()

    def dump() -> None:
        results["table"] = _table(spec, results)
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)

    if start_checkpoint is None:
        sft_dir = os.path.join(output_dir, "sft")
        if "sft" not in results:
            init = build_learning_model(os.path.join(output_dir, "init"), image_size=spec.image_size)
            sft = run_sft_stage(init, spec, sft_dir, steps=sft_steps, eval_n=eval_n, log=log)
            results["sft"] = {k: v for k, v in sft.items() if k != "checkpoint"}
            dump()
        start_checkpoint = sft_dir
    elif "sft" not in results:
        model, processor = _load(start_checkpoint)
        results["sft"] = {"after": evaluate_setting(model, processor, spec, eval_n), "wall_time": None}
        dump()
    if log is not None:
        log(f"SFT start: {results['sft']['after']}")
    g_steps = spec.grpo_steps if grpo_steps is None else int(grpo_steps)
    c_steps = (
        max(1, round(g_steps * spec.control_steps_per_grpo_step))
        if control_steps is None
        else int(control_steps)
    )
    jobs = []  # (arm, seed, function, args, kwargs): one GRPO run and one control run per seed
    for seed in seeds:
        key = str(seed)
        for arm in (a for a in arms if a != "control"):
            if key in results.setdefault(arm, {}):
                continue
            grpo_kwargs = dict(eval_before=False, save=False)
            if log is not None and workers <= 1:
                grpo_kwargs["callback"] = lambda s, e, seed=seed, arm=arm: log(
                    f"{arm} seed {seed} step {s} reward {e.get('reward', 0.0):.4f}"
                )
            jobs.append((
                arm, seed, run_grpo_stage,
                (start_checkpoint, replace(spec, **ARMS[arm][1]), os.path.join(output_dir, f"{arm}_s{seed}"),
                 g_steps, seed, eval_n),
                grpo_kwargs,
            ))  # fmt: skip
        if "control" in arms and key not in results.setdefault("control", {}):
            jobs.append((
                "control", seed, run_sft_stage,
                (start_checkpoint, spec, os.path.join(output_dir, f"control_s{seed}")),
                dict(
                    steps=c_steps, lr=spec.control_lr, warmup=0, schedule=spec.control_schedule,
                    data_seed=2000 + seed, seed=seed, eval_n=eval_n,
                    train_images=min(spec.sft_train_images, c_steps * spec.sft_batch_size),
                    log=log if workers <= 1 else None,
                ),
            ))  # fmt: skip

    def record(arm: str, seed: int, r: dict[str, Any]) -> None:
        results[arm][str(seed)] = {k: v for k, v in r.items() if k not in ("config", "checkpoint")}
        dump()
        if log is not None:
            log(f"{ARMS[arm][0]} seed {seed}: {r['after']} ({r['wall_time']:.0f}s)")

    if workers <= 1 or len(jobs) <= 1:
        for arm, seed, func, args, kwargs in jobs:
            record(arm, seed, func(*args, **kwargs))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads,),
        ) as pool:
            futures = {
                pool.submit(func, *args, **kwargs): (arm, seed) for arm, seed, func, args, kwargs in jobs
            }
            for future in concurrent.futures.as_completed(futures):
                record(*futures[future], future.result())
    results["pipeline_time"] = time.time() - pipeline_start
    dump()
    return results


def _mean_log(history: Sequence[dict[str, float]], key: str) -> float:
    values = [entry[key] for entry in history if key in entry]
    return statistics.fmean(values) if values else math.nan


def _worker_init(threads: int) -> None:

    torch.set_num_threads(threads)


def _table(spec: Setting, results: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    table: dict[str, dict[str, list[float]]] = {}
    keys = KEY_METRICS[spec.task]
    if "sft" in results:
        table["SFT start"] = {k: [results["sft"]["after"][k], 0.0] for k in keys}
    for arm, (label, _) in ARMS.items():
        runs = list(results.get(arm, {}).values())
        if runs:
            row = {k: list(summarize([r["after"][k] for r in runs])) for k in keys}
            row["wall_time"] = list(summarize([r["wall_time"] for r in runs]))
            if arm != "control" and all(r.get("history") for r in runs):
                row["train_reward"] = list(summarize([_mean_log(r["history"], "reward") for r in runs]))
                row["nonzero_adv_groups"] = list(  # TRL logs the share of groups whose rewards are all equal
                    summarize([1.0 - _mean_log(r["history"], "frac_reward_zero_std") for r in runs])
                )
            row["n_seeds"] = [len(runs), 0.0]
            table[label] = row
    return table


def format_table(results: dict[str, Any]) -> str:
    """Markdown table (mean ± std over seeds) of `run_experiment` results."""
    table = results["table"]
    keys = sorted(
        {k for row in table.values() for k in row if k != "n_seeds"}, key=lambda k: (k == "wall_time", k)
    )
    lines = ["| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for arm, row in table.items():
        cells = [f"{row[k][0]:.4f} ± {row[k][1]:.4f}" if k in row else "" for k in keys]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: `python recipes/demo/train_tiny.py --setting imperfect_supervision --output-dir DIR`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--grpo-steps", type=int)
    parser.add_argument("--control-steps", type=int)
    parser.add_argument("--start-checkpoint")
    parser.add_argument("--arms", nargs="+", default=["grpo", "control"], choices=sorted(ARMS))
    parser.add_argument("--sft-only", action="store_true", help="stop after the SFT stage and its evaluation")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for the GRPO and control runs (default 2: one thread each on a 2-core machine)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's, one per core; 1 lets two runs share two cores)",
    )
    parser.add_argument(
        "--export-checkpoint", help="also copy the SFT checkpoint here (fp32, ~5 MB: the demo's start)"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override Setting fields, e.g. grpo_lr=1e-4"
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    results = run_experiment(
        args.setting,
        args.output_dir,
        [] if args.sft_only else args.seeds,
        eval_n=args.eval_n,
        sft_steps=args.sft_steps,
        grpo_steps=args.grpo_steps,
        control_steps=args.control_steps,
        start_checkpoint=args.start_checkpoint,
        arms=args.arms,
        workers=args.workers,
        **overrides,
    )
    if args.export_checkpoint:
        model, processor = _load(args.start_checkpoint or os.path.join(args.output_dir, "sft"))
        _save(model, processor, args.export_checkpoint)
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
