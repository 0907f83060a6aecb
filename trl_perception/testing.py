"""Tiny, randomly initialised, fully offline Qwen-VL checkpoints (model + processor) for tests and demos.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in-process on a synthetic corpus.
"""

from __future__ import annotations

import functools
import os
import random
import tempfile
from typing import Any

from .frames import BOX_FORMATS, check_box_format

# Qwen's special tokens in Qwen's own order; training puts them at ids 0..13.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Plain (non-special) added tokens of the Qwen2.5 / Qwen3 tokenizers.
QWEN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

# transformers' Qwen2 pre-tokenizer regex: note `\p{N}` alone, so every digit is its own pre-token.
_QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

_FAMILY_CLASSES = {
    # family: (config class, processor class, video processor class)
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}

_PATCH_SIZE = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
_MERGE_SIZE = 2
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Overrides every family accepts, with their defaults (None = derived from the others).
_COMMON_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 1_000_000.0,
    "mrope_section": None,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "vision_depth": 2,
    "vision_hidden_size": 32,
    "vision_intermediate_size": None,
    "vision_num_heads": 2,
    "min_pixels": None,
    "max_pixels": None,
    "tokenizer_vocab_size": 1024,
    "torch_dtype": "float32",
}
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2_vl": {},
    "qwen2_5_vl": {"fullatt_block_indexes": None, "window_size": 56},
    "qwen3_vl": {
        "head_dim": None,
        "rope_theta": 5_000_000.0,
        "num_position_embeddings": 256,
        "deepstack_visual_indexes": None,
    },
}

# A few words per theme; the corpus combines them so that BPE learns compact tokens for what perception
# prompts and answers are made of.
_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black", "grey", "pink", "brown")
_SHAPES = ("square", "circle", "triangle", "rectangle", "star", "ellipse", "shape", "object", "box")
_COMMON_WORDS = (
    "the", "a", "an", "of", "in", "on", "at", "to", "and", "or", "is", "are", "there", "this", "that", "it",
    "with", "for", "from", "by", "left", "right", "top", "bottom", "middle", "center", "above", "below",
    "next", "near", "behind", "front", "small", "large", "big", "little", "man", "woman", "child", "people",
    "one", "two", "three", "four", "five", "many", "all", "each", "no", "none", "yes", "image", "picture",
    "photo", "find", "output", "give", "its", "bounding", "boxes", "coordinates", "names", "count", "number",
    "text", "read", "OCR", "answer", "think", "first", "then", "so", "I", "see", "can", "be", "has", "have",
    "sitting", "standing", "holding", "wearing", "looking", "table", "street", "room", "water", "sky",
)  # fmt: skip
_OCR_WORDS = ("STOP", "EXIT", "OPEN", "Hello", "World", "Total", "Page", "Name", "Date", "Price", "Main St")


def _synthetic_corpus(num_lines: int = 3000, seed: int = 0) -> list[str]:
    """Short lines mixing prompts, JSON / Qwen2-VL style answers, fences, tags, numbers and English."""
    from .data.prompts import COCO_CATEGORIES

    rng = random.Random(seed)

    def box() -> list[int]:
        x1, y1 = rng.randrange(0, 900), rng.randrange(0, 900)
        return [x1, y1, x1 + rng.randrange(1, 100), y1 + rng.randrange(1, 100)]

    def noun() -> str:
        choice = rng.random()
        if choice < 0.5:
            return rng.choice(COCO_CATEGORIES)
        if choice < 0.8:
            return f"{rng.choice(_COLOURS)} {rng.choice(_SHAPES)}"
        return rng.choice(_SHAPES)

    def sentence() -> str:
        words = [rng.choice(_COMMON_WORDS) for _ in range(rng.randrange(4, 12))]
        words.insert(rng.randrange(len(words)), noun())
        return " ".join(words).capitalize() + rng.choice((".", ".", "?", "!", ","))

    def json_objects() -> str:
        objs = []
        for _ in range(rng.randrange(0, 4)):
            if rng.random() < 0.8:
                objs.append(f'{{"bbox_2d": {box()}, "label": "{noun()}"}}')
            else:
                x, y = rng.randrange(0, 1000), rng.randrange(0, 1000)
                objs.append(f'{{"point_2d": [{x}, {y}], "label": "{noun()}"}}')
        return "[" + ", ".join(objs) + "]"

    def qwen2_vl_boxes() -> str:
        # special tokens are atomic in the final tokenizer, so the corpus leaves them out
        parts = []
        for _ in range(rng.randrange(1, 3)):
            x1, y1, x2, y2 = box()
            parts.append(f"{noun()}({x1},{y1}),({x2},{y2})")
        return "".join(parts)

    templates = (
        lambda: f"Output the bounding box of the {noun()} in the image.",
        lambda: f"Output all the bounding boxes of the {noun()}",
        lambda: "OCR this image.",
        lambda: f"Please output bbox coordinates and names of {', '.join(noun() for _ in range(3))}.",
        lambda: f"Find the {rng.choice(_COLOURS)} {rng.choice(_SHAPES)}. Give its box as [x1, y1, x2, y2].",
        lambda: str(box()),
        lambda: f"```json\n{json_objects()}\n```",
        lambda: json_objects(),
        lambda: qwen2_vl_boxes(),
        lambda: f"<answer>{json_objects()}</answer>",
        lambda: f"<think>{sentence()}</think><answer>{box()}</answer>",
        lambda: (
            f'{{"count": {rng.randrange(0, 30)}, "points": [[{rng.randrange(999)}, {rng.randrange(999)}]]}}'
        ),
        lambda: f"There are {rng.randrange(0, 20)} {noun()}s in the image.",
        lambda: (
            " ".join(rng.choice(_OCR_WORDS) for _ in range(rng.randrange(1, 5))) + f" {rng.randrange(10**4)}"
        ),
        lambda: "You are a helpful assistant.",
        lambda: sentence(),
        lambda: sentence(),
    )
    return [rng.choice(templates)() for _ in range(num_lines)]


@functools.lru_cache(maxsize=8)
def _trained_bpe(vocab_size: int) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Trains the byte-level BPE once per process; returns immutable (vocab items, merges)."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # Same normalizer and pre-tokenizer as transformers' Qwen2Tokenizer, which re-wraps vocab and merges.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_synthetic_corpus(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    vocab = tuple(sorted(model["vocab"].items(), key=lambda item: item[1]))
    return vocab, merges


def _build_tokenizer(family: str, tokenizer_vocab_size: int):
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _trained_bpe(tokenizer_vocab_size - len(QWEN_ADDED_TOKENS))
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        padding_side="left",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_TOKENS])
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    if ids != list(range(len(QWEN_SPECIAL_TOKENS))):  # guards the contract other code relies on
        raise RuntimeError(f"tiny tokenizer special token ids are {ids}, expected 0..13 in Qwen's order")
    tokenizer.chat_template = _chat_template(family)
    return tokenizer


def _chat_template(family: str) -> str:
    from trl import chat_template_utils

    if family == "qwen3_vl":
        return chat_template_utils.qwen3_vl_chat_template
    return chat_template_utils.qwen2_5_vl_chat_template  # Qwen2-VL-Instruct ships the same template


def _resolve_overrides(family: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Merges overrides into the defaults, derives the dependent values and validates the result."""
    allowed = {**_COMMON_DEFAULTS, **_FAMILY_DEFAULTS[family]}
    if "dtype" in overrides:  # transformers' newer spelling of torch_dtype
        if "torch_dtype" in overrides:
            raise TypeError("build_tiny_vlm() got both 'dtype' and 'torch_dtype'; pass one of them")
        overrides = {**overrides, "torch_dtype": overrides["dtype"]}
        del overrides["dtype"]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        other_families = [f for f in BOX_FORMATS if f != family and set(unknown) <= set(_FAMILY_DEFAULTS[f])]
        hint = f" (only valid for {', '.join(other_families)})" if other_families else ""
        raise TypeError(
            f"build_tiny_vlm() got unexpected override(s) {unknown} for family {family!r}{hint}; "
            f"valid overrides: {sorted(allowed)}"
        )
    cfg = {**allowed, **overrides}

    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vision_depth", "vision_hidden_size", "vision_num_heads"):  # fmt: skip
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{key} must be a positive int, got {cfg[key]!r}")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError(
            f"hidden_size ({cfg['hidden_size']}) must be divisible by num_attention_heads "
            f"({cfg['num_attention_heads']})"
        )
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError(
            f"num_attention_heads ({cfg['num_attention_heads']}) must be a multiple of num_key_value_heads "
            f"({cfg['num_key_value_heads']})"
        )
    if family == "qwen3_vl" and cfg["head_dim"] is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if head_dim % 2:
        raise ValueError(f"the text head_dim must be even for rotary embeddings, got {head_dim}")
    half = head_dim // 2
    if cfg["mrope_section"] is None:
        cfg["mrope_section"] = [half - 2 * (half // 4), half // 4, half // 4]  # [4, 2, 2] for head_dim 16
    section = list(cfg["mrope_section"])
    if len(section) != 3 or not all(isinstance(s, int) and s >= 0 for s in section) or sum(section) != half:
        raise ValueError(
            f"mrope_section must be three non-negative ints (temporal, height, width) summing to "
            f"head_dim / 2 = {half}; got {cfg['mrope_section']!r}"
        )
    if family == "qwen3_vl" and (3 * section[1] > half + 1 or 3 * section[2] > half):
        # Qwen3-VL interleaves the bands: height uses frequencies 1, 4, 7, ... and width 2, 5, 8, ...
        raise ValueError(
            f"qwen3_vl interleaves M-RoPE bands, so 3 * mrope_section[1] must be <= {half + 1} and "
            f"3 * mrope_section[2] <= {half}; got {section}"
        )
    cfg["mrope_section"] = section
    if not isinstance(cfg["rope_theta"], (int, float)) or cfg["rope_theta"] <= 0:
        raise ValueError(f"rope_theta must be a positive number, got {cfg['rope_theta']!r}")

    if cfg["vision_intermediate_size"] is None:
        cfg["vision_intermediate_size"] = 2 * cfg["vision_hidden_size"]
    if (
        cfg["vision_hidden_size"] % cfg["vision_num_heads"]
        or (cfg["vision_hidden_size"] // cfg["vision_num_heads"]) % 4
    ):
        raise ValueError(
            f"vision_hidden_size ({cfg['vision_hidden_size']}) / vision_num_heads ({cfg['vision_num_heads']}) "
            "must be an integer divisible by 4 (2-D rotary embeddings)"
        )
    if family == "qwen2_vl" and cfg["vision_intermediate_size"] % cfg["vision_hidden_size"]:
        raise ValueError(
            "qwen2_vl expresses the vision MLP as an integer mlp_ratio, so vision_intermediate_size "
            f"({cfg['vision_intermediate_size']}) must be a multiple of vision_hidden_size ({cfg['vision_hidden_size']})"
        )
    depth = cfg["vision_depth"]
    for key, default in (("fullatt_block_indexes", [depth - 1]), ("deepstack_visual_indexes", [0])):
        if key not in cfg:
            continue
        cfg[key] = default if cfg[key] is None else list(cfg[key])
        if not all(isinstance(i, int) and 0 <= i < depth for i in cfg[key]):
            raise ValueError(f"{key} must list vision block indexes in [0, {depth}); got {cfg[key]!r}")
    factor = _PATCH_SIZE[family] * _MERGE_SIZE
    if family == "qwen2_5_vl" and (cfg["window_size"] < factor or cfg["window_size"] % factor):
        raise ValueError(f"window_size must be a positive multiple of {factor}, got {cfg['window_size']!r}")
    if family == "qwen3_vl":
        n = cfg["num_position_embeddings"]
        if not isinstance(n, int) or n < 1 or round(n**0.5) ** 2 != n:
            raise ValueError(f"num_position_embeddings must be a perfect square, got {n!r}")

    # ≤ 16 image tokens by default: a 4x4 grid of merged patches.
    if cfg["max_pixels"] is None:
        cfg["max_pixels"] = (4 * factor) ** 2
    if cfg["min_pixels"] is None:
        cfg["min_pixels"] = factor**2
    if not 0 < cfg["min_pixels"] <= cfg["max_pixels"]:
        raise ValueError(
            f"need 0 < min_pixels <= max_pixels, got min_pixels={cfg['min_pixels']}, max_pixels={cfg['max_pixels']}"
        )
    if cfg["tokenizer_vocab_size"] < 300:  # 14 specials + 256 bytes + 6 added tokens + a few merges
        raise ValueError(f"tokenizer_vocab_size must be at least 300, got {cfg['tokenizer_vocab_size']!r}")
    return cfg


def _torch_dtype(value: Any):
    import torch

    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"torch_dtype must be a floating point torch dtype or its name, got {value!r}")
    return dtype


def _build_config(family: str, cfg: dict[str, Any], tokenizer):
    import transformers

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    rope_parameters: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": float(cfg["rope_theta"]),
        "mrope_section": cfg["mrope_section"],
    }
    if family == "qwen3_vl":
        rope_parameters["mrope_interleaved"] = True
    text_config = {
        "vocab_size": -(-len(tokenizer) // 64) * 64,
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg["tie_word_embeddings"],
        "bos_token_id": ids["<|endoftext|>"],  # as in Qwen's own configs
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config: dict[str, Any] = {
        "depth": cfg["vision_depth"],
        "num_heads": cfg["vision_num_heads"],
        "patch_size": _PATCH_SIZE[family],
        "spatial_merge_size": _MERGE_SIZE,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    if family == "qwen2_vl":
        vision_config.update(
            embed_dim=cfg["vision_hidden_size"],
            hidden_size=cfg["hidden_size"],  # Qwen2-VL's vision `hidden_size` is the merger's output width
            mlp_ratio=cfg["vision_intermediate_size"] // cfg["vision_hidden_size"],
        )
    else:
        vision_config.update(
            hidden_size=cfg["vision_hidden_size"],
            intermediate_size=cfg["vision_intermediate_size"],
            out_hidden_size=cfg["hidden_size"],
        )
    if family == "qwen2_5_vl":
        vision_config.update(
            fullatt_block_indexes=cfg["fullatt_block_indexes"], window_size=cfg["window_size"]
        )
    if family == "qwen3_vl":
        text_config["head_dim"] = cfg["head_dim"]
        vision_config.update(
            num_position_embeddings=cfg["num_position_embeddings"],
            deepstack_visual_indexes=cfg["deepstack_visual_indexes"],
        )
    config_class = getattr(transformers, _FAMILY_CLASSES[family][0])
    return config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=cfg["tie_word_embeddings"],
    )


def _build_processor(family: str, cfg: dict[str, Any], tokenizer):
    import transformers
    from transformers import Qwen2VLImageProcessor

    _, processor_name, video_processor_name = _FAMILY_CLASSES[family]
    mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if family == "qwen3_vl" else (_CLIP_MEAN, _CLIP_STD)
    vision_kwargs = {
        "size": {"shortest_edge": cfg["min_pixels"], "longest_edge": cfg["max_pixels"]},
        "patch_size": _PATCH_SIZE[family],
        "temporal_patch_size": 2,
        "merge_size": _MERGE_SIZE,
        "image_mean": list(mean),
        "image_std": list(std),
    }
    image_processor = Qwen2VLImageProcessor(**vision_kwargs)
    video_processor = getattr(transformers, video_processor_name)(**vision_kwargs, cap_pixels_per_frame=True)
    return getattr(transformers, processor_name)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=_chat_template(family),
    )


def build_tiny_vlm(box_format: str, output_dir: str | os.PathLike, *, seed: int = 0, **overrides: Any) -> str:
    r"""Builds and saves a tiny random Qwen-VL checkpoint with its processor, entirely offline.

    The default model has a 2-layer text decoder (hidden 64, 4 heads, 2 KV heads, M-RoPE ``[4, 2, 2]``), a
    2-layer vision tower of width 32, about 0.3M parameters in fp32, and a byte-level BPE tokenizer of about
    1k tokens whose first 14 ids are Qwen's special tokens in Qwen's order (``<|endoftext|>`` = 0,
    ``<|im_start|>`` = 1, ``<|im_end|>`` = 2, ..., ``<|video_pad|>`` = 13). Digits are one token each. The
    image processor is capped at 16 image tokens per image (``max_pixels`` = 112*112, or 128*128 for
    ``qwen3_vl`` whose patch is 16). The weights depend only on ``seed``; the global torch RNG is untouched.

    Args:
        box_format (`str`):
            The model family, one of `frames.BOX_FORMATS`: ``"qwen2_vl"``, ``"qwen2_5_vl"`` or ``"qwen3_vl"``.
        output_dir (`str` or `os.PathLike`):
            Directory to write into (created if needed). Reload with
            ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``.
        seed (`int`, *optional*, defaults to ``0``):
            Seed of the weight initialisation.
        **overrides:
            Text: ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
            ``num_key_value_heads``, ``rope_theta``, ``mrope_section`` (three ints summing to head_dim / 2;
            by default ``[h - 2*(h//4), h//4, h//4]`` with h = head_dim / 2), ``max_position_embeddings``,
            ``tie_word_embeddings``, and ``head_dim`` for ``qwen3_vl``.
            Vision: ``vision_depth``, ``vision_hidden_size``, ``vision_intermediate_size`` (default twice the
            width), ``vision_num_heads``; ``fullatt_block_indexes`` (default the last block) and ``window_size``
            for ``qwen2_5_vl``; ``num_position_embeddings`` and ``deepstack_visual_indexes`` for ``qwen3_vl``.
            Processor: ``min_pixels``, ``max_pixels``. Tokenizer: ``tokenizer_vocab_size`` (target size,
            default 1024). Weights: ``torch_dtype`` (or ``dtype``; default ``"float32"``).
            An unknown key raises `TypeError`; an inconsistent value raises `ValueError`.

    Returns:
        `str`: ``output_dir`` as a string.

    Example:

    ```python
    >>> import tempfile
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> from trl_perception.testing import build_tiny_vlm
    >>> path = build_tiny_vlm("qwen2_5_vl", tempfile.mkdtemp())
    >>> model = AutoModelForImageTextToText.from_pretrained(path)
    >>> processor = AutoProcessor.from_pretrained(path)
    >>> type(model).__name__, model.dtype
    ('Qwen2_5_VLForConditionalGeneration', torch.float32)
    >>> processor.tokenizer.convert_ids_to_tokens([0, 1, 2, 13])
    ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|video_pad|>']
    >>> processor.tokenizer.tokenize("[12, 345]")
    ['[', '1', '2', ',', 'Ġ', '3', '4', '5', ']']

    ```
    """
    family = check_box_format(box_format)
    cfg = _resolve_overrides(family, overrides)
    dtype = _torch_dtype(cfg["torch_dtype"])

    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    tokenizer = _build_tokenizer(family, cfg["tokenizer_vocab_size"])
    processor = _build_processor(family, cfg, tokenizer)
    config = _build_config(family, cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model = model.to(dtype)
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)

    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return str(output_dir)


_KEEP_ALIVE: list[tempfile.TemporaryDirectory] = []


@functools.cache
def tiny_vlm(box_format: str, seed: int = 0) -> str:
    """Path of a default `build_tiny_vlm` checkpoint, built once per process into a temporary directory.

    Use it wherever many tests or a demo need the same tiny model; do not write into the returned directory.

    Args:
        box_format (`str`):
            The model family, one of `frames.BOX_FORMATS`.
        seed (`int`, *optional*, defaults to ``0``):
            Seed of the weight initialisation.

    Returns:
        `str`: Directory holding the saved model and processor.

    Example:

    ```python
    >>> from trl_perception.testing import tiny_vlm
    >>> path = tiny_vlm("qwen2_vl")
    >>> tiny_vlm("qwen2_vl") == path
    True

    ```
    """
    family = check_box_format(box_format)
    # Lives until interpreter exit; TemporaryDirectory's finalizer removes it then.
    tmp = tempfile.TemporaryDirectory(prefix=f"tiny-{family}-")
    _KEEP_ALIVE.append(tmp)
    return build_tiny_vlm(family, tmp.name, seed=seed)
