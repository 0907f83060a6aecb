"""Crop turns after MGPO ("look again"): the model names a box, the system crops that region from the original
high-resolution image and shows it, and the model answers. This module owns MGPO's box -> crop mapping with its
validity rules, the turn texts, the crop environment for TRL's `environment_factory`, and the tool-capable chat
template for Qwen2-VL and Qwen2.5-VL."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

from .boxes import paired_box_iou
from .frames import Frame, check_box_format, fit_to_grid, frame_of, grid_size

__all__ = [
    "CROP_INVALID_TEXT",
    "CROP_MAX_PIXELS",
    "CROP_MIN_PIXELS",
    "CROP_RESULT_TEXT",
    "CROP_TOOL_NAME",
    "MAX_CROP_ASPECT",
    "MIN_CROP_SIDE",
    "CropEnvironment",
    "CropRecord",
    "CropResult",
    "ForcedCrop",
    "crop_instruction",
    "crop_pixel_limits",
    "crop_region",
    "map_crop_box",
    "prepare_tool_processor",
    "tool_chat_template",
]

CROP_MIN_PIXELS = 200_704
"""Smallest area (pixels) a crop is resized to: MGPO's `min_pixels` for the sub-image."""
CROP_MAX_PIXELS = 1_003_520
"""Largest area (pixels) a crop is resized to: MGPO's `max_pixels` for the sub-image."""
MIN_CROP_SIDE = 28
"""A valid box is wider and taller than this, in pixels of the model's input image (MGPO's rule)."""
MAX_CROP_ASPECT = 100
"""A valid box has a longer-to-shorter side ratio below this (MGPO's rule)."""
CROP_TOOL_NAME = "crop_image"
"""The name of the tool the model calls (the `CropEnvironment` method)."""

CROP_RESULT_TEXT = (
    "Here is the region you selected, cropped from the original high-resolution image and enlarged. "
    "Carefully analyze both the original image and the enlarged region, then answer the question.\n"
    "Question: {question}"
)
"""Turn-2 text after a valid box (after MGPO's "Based on the provided coordinates, return the sub-image ...")."""
CROP_INVALID_TEXT = (
    "The box could not be cropped ({reason}); here is the original image again. "
    "Carefully analyze it, then answer the question.\nQuestion: {question}"
)
"""Turn-2 text after an invalid box or no box: the original image comes back instead of a crop."""

_BOX_WORDS = {
    "norm1000": "with coordinates normalized to 0-1000 (x to the right, y down)",
    "input": "in absolute pixel coordinates of the image (x to the right, y down)",
}
_MAX_QUESTION_CHARS = 4000


def crop_instruction(box_format: str) -> str:
    """The turn-1 instruction (MGPO's "first identify the key image area ... and stop"), adapted to a tool call
    in the family's coordinate frame. `CropEnvironment.reset` returns it, so TRL appends it to the user turn.

    Example:
    ```python
    >>> print(crop_instruction("qwen3_vl"))
    First, identify the image region most relevant to the question and call the crop_image tool with its bounding box bbox_2d = [x1, y1, x2, y2] with coordinates normalized to 0-1000 (x to the right, y down). You will then see that region enlarged from the original high-resolution image; answer after that.

    ```
    """
    words = _BOX_WORDS[frame_of(box_format)]
    return (
        "First, identify the image region most relevant to the question and call the "
        f"{CROP_TOOL_NAME} tool with its bounding box bbox_2d = [x1, y1, x2, y2] {words}. You will then see "
        "that region enlarged from the original high-resolution image; answer after that."
    )


def crop_pixel_limits(
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    processor_limits: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """`(min_pixels, max_pixels)` a crop is resized to: the given values (MGPO's 200,704 and 1,003,520 where
    `None`), kept within the processor's limits when given, so that the processor (in training and in vLLM)
    feeds the crop unchanged.

    Example:
    ```python
    >>> crop_pixel_limits()
    (200704, 1003520)
    >>> crop_pixel_limits(processor_limits=(3136, 401408))  # a 401,408-pixel budget caps the crop too
    (200704, 401408)
    >>> crop_pixel_limits(processor_limits=(784, 3136))  # a tiny test model: the whole budget
    (3136, 3136)

    ```
    """
    lo = CROP_MIN_PIXELS if min_pixels is None else int(min_pixels)
    hi = CROP_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if lo <= 0 or hi <= 0 or lo > hi:
        raise ValueError(f"crop pixel limits need 0 < min_pixels <= max_pixels, got ({lo}, {hi})")
    if processor_limits is not None:
        p_lo, p_hi = int(processor_limits[0]), int(processor_limits[1])
        hi = max(p_lo, min(hi, p_hi))
        lo = min(max(lo, p_lo), hi)
    return lo, hi


def _as_box(value: Any) -> tuple[float, float, float, float] | str:
    """Four finite numbers, or the reason they are not."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return "bbox_2d must be a list of 4 numbers"
    if len(value) != 4:
        return f"bbox_2d needs 4 numbers, got {len(value)}"
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return "bbox_2d must be a list of 4 numbers"
        try:
            f = float(v)
        except OverflowError:  # an int too large for a float
            return "coordinates outside the image"
        if not math.isfinite(f):
            return "coordinates must be finite numbers"
        out.append(f)
    return out[0], out[1], out[2], out[3]


def map_crop_box(
    bbox_2d: Any,
    box_format: str,
    image_size: Sequence[float],
    input_size: Sequence[float],
) -> tuple[tuple[int, int, int, int] | None, str]:
    """MGPO's box rules, then the box in original pixels: `(box, "")` for a valid box, `(None, reason)` else.

    `bbox_2d` is in the family's frame: 0-1000 for `qwen2_vl` / `qwen3_vl`, pixels of the resized input
    (`input_size`) for `qwen2_5_vl`. Valid means four finite numbers with `x1 < x2`, `y1 < y2`, inside the
    frame (`0 <= x1` and `x2 <= ` the frame's width, likewise for y), each side longer than
    `MIN_CROP_SIDE` pixels of the model's input image and an aspect ratio below `MAX_CROP_ASPECT` (for 0-1000
    families the sides are measured after scaling to `input_size`, so the rules mean the same image area in
    every family). The valid box maps to original pixels with `Frame` and widens to whole pixels (floor the
    top-left, ceil the bottom-right), clipped to `image_size`.

    Example:
    ```python
    >>> map_crop_box([100, 200, 300, 400], "qwen3_vl", image_size=(2000, 1500), input_size=(512, 384))
    ((200, 300, 600, 600), '')
    >>> map_crop_box([28, 28, 140, 84], "qwen2_5_vl", image_size=(2000, 1500), input_size=(560, 420))
    ((100, 100, 500, 300), '')
    >>> map_crop_box([300, 200, 100, 400], "qwen3_vl", image_size=(2000, 1500), input_size=(512, 384))
    (None, 'x1 must be smaller than x2 and y1 smaller than y2')

    ```
    """
    box_format = check_box_format(box_format)
    parsed = _as_box(bbox_2d)
    if isinstance(parsed, str):
        return None, parsed
    x1, y1, x2, y2 = parsed
    if not (x1 < x2 and y1 < y2):
        return None, "x1 must be smaller than x2 and y1 smaller than y2"
    in_w, in_h = float(input_size[0]), float(input_size[1])
    norm = frame_of(box_format) == "norm1000"
    frame_w, frame_h = (1000.0, 1000.0) if norm else (in_w, in_h)
    if x1 < 0 or y1 < 0 or x2 > frame_w or y2 > frame_h:
        return None, "coordinates outside the image"
    side_w, side_h = x2 - x1, y2 - y1
    if norm:
        side_w, side_h = side_w * in_w / 1000.0, side_h * in_h / 1000.0
    if side_w <= MIN_CROP_SIDE or side_h <= MIN_CROP_SIDE:
        return None, f"the box must be more than {MIN_CROP_SIDE} pixels wide and tall"
    if max(side_w, side_h) / min(side_w, side_h) >= MAX_CROP_ASPECT:
        return None, f"the box's aspect ratio must be below {MAX_CROP_ASPECT}"
    frame = Frame.of(box_format, image_size, input_size)
    px = frame.to_pixels([x1, y1, x2, y2], clip=True)
    w, h = int(round(float(image_size[0]))), int(round(float(image_size[1])))
    left, top = int(math.floor(px[0] + 1e-6)), int(math.floor(px[1] + 1e-6))
    right, bottom = min(w, int(math.ceil(px[2] - 1e-6))), min(h, int(math.ceil(px[3] - 1e-6)))
    if right <= left or bottom <= top:
        return None, "the box is empty in the original image"
    return (left, top, right, bottom), ""


@dataclass(frozen=True)
class CropResult:
    """What one crop request produced.

    Attributes:
        image (`PIL.Image.Image`): the crop, resized to the crop pixel limits on the family's grid; for an
            invalid box, the fallback image (the original as the model saw it).
        box (`tuple[int, int, int, int]` or `None`): the crop in original pixels; `None` when invalid.
        valid (`bool`): whether the box passed MGPO's rules.
        reason (`str`): why the box was invalid; `""` when valid.
    """

    image: Image.Image
    box: tuple[int, int, int, int] | None
    valid: bool
    reason: str


def crop_region(
    image: Image.Image,
    bbox_2d: Any,
    box_format: str,
    input_size: Sequence[float] | None = None,
    *,
    min_pixels: int = CROP_MIN_PIXELS,
    max_pixels: int = CROP_MAX_PIXELS,
    fallback: Image.Image | None = None,
) -> CropResult:
    """Crop the region `bbox_2d` (family frame, see `map_crop_box`) from the original `image` and resize it
    to `[min_pixels, max_pixels]` on the family's patch grid (`frames.fit_to_grid`, the size the processor
    keeps). `input_size` is the model's input size for `image` (the processor's resize with the family's
    default limits when `None`). An invalid box returns `fallback` (default: `image` fitted to the same
    limits) with `valid=False` and the reason.

    Example:
    ```python
    >>> from PIL import Image
    >>> big = Image.new("RGB", (2000, 1500))
    >>> out = crop_region(big, [100, 200, 300, 400], "qwen3_vl", input_size=(512, 384))
    >>> out.valid, out.box, out.image.size  # a 400x300 crop enlarged to at least 200,704 pixels
    (True, (200, 300, 600, 600), (544, 416))
    >>> crop_region(big, [0, 0, 5, 5], "qwen3_vl", input_size=(512, 384)).reason
    'the box must be more than 28 pixels wide and tall'

    ```
    """
    if input_size is None:
        input_size = grid_size(image.size, box_format)
    box, reason = map_crop_box(bbox_2d, box_format, image.size, input_size)
    if box is None:
        back = fallback if fallback is not None else fit_to_grid(image, box_format, min_pixels, max_pixels)
        return CropResult(image=back, box=None, valid=False, reason=reason)
    region = image.crop(box)
    return CropResult(image=fit_to_grid(region, box_format, min_pixels, max_pixels), box=box, valid=True, reason="")


@dataclass(frozen=True)
class CropRecord:
    """One tool call of a rollout, for metrics and evaluation reports.

    Attributes:
        valid (`bool`): whether a crop was made.
        box (`tuple[int, int, int, int]` or `None`): the crop in original pixels.
        reason (`str`): why no crop was made (`""` when valid).
        area_fraction (`float` or `None`): crop area / original image area.
        iou (`float` or `None`): IoU of the crop with the row's `target_box` (original pixels), when known.
        forced (`bool`): the call was made by the trainer (a rollout that answered without calling the tool,
            given MGPO's second turn), not by the model.
    """

    valid: bool
    box: tuple[int, int, int, int] | None
    reason: str
    area_fraction: float | None
    iou: float | None
    forced: bool = False


def _target_box(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    parsed = _as_box(value)
    if isinstance(parsed, str) or not (parsed[0] < parsed[2] and parsed[1] < parsed[3]):
        return None
    return parsed


def _question(prompt: Any) -> str:
    """The text of the prompt's last user turn (the question the turn-2 text repeats)."""
    if isinstance(prompt, str):
        return prompt[:_MAX_QUESTION_CHARS]
    if not isinstance(prompt, Sequence):
        return ""
    for message in reversed(prompt):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.strip()[:_MAX_QUESTION_CHARS]
        if isinstance(content, Sequence):
            texts = [
                str(part.get("text") or "")
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            ]
            return " ".join(t.strip() for t in texts if t.strip())[:_MAX_QUESTION_CHARS]
    return ""


class CropEnvironment:
    """One rollout's crop tool, for TRL's `GRPOTrainer(environment_factory=...)` (one instance per rollout).

    `reset(**row)` keeps the row's original image (`original_image`, else `image`), what the model sees
    (`image`, `input_size`), the question and the `target_box` (original pixels, optional), and returns the
    turn-1 instruction (TRL appends it to the user turn). The one tool, `crop_image(bbox_2d)`, crops per
    `crop_region` and returns TRL content blocks: the crop and `CROP_RESULT_TEXT`, or, for an invalid box, the
    image the model saw and `CROP_INVALID_TEXT`. Calls beyond `max_crops` per rollout return text only.
    `records` holds one `CropRecord` per call, for the trainer's metrics.

    Example:
    ```python
    >>> from PIL import Image
    >>> env = CropEnvironment("qwen2_5_vl", min_pixels=3136, max_pixels=12544, max_crops=2)
    >>> big = Image.new("RGB", (2000, 1500))
    >>> prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit?"}]}]
    >>> env.reset(prompt=prompt, image=big.resize((112, 84)), original_image=big, input_size=[112, 84],
    ...           target_box=[250, 250, 500, 500]).startswith("First, identify")
    True
    >>> blocks = env.crop_image(bbox_2d=[14, 14, 42, 42])  # 28x28 input pixels: too small
    >>> env.records[-1].reason, blocks[0]["image"].size
    ('the box must be more than 28 pixels wide and tall', (112, 84))
    >>> blocks = env.crop_image(bbox_2d=[14, 14, 56, 56])  # original pixels (250, 250, 1000, 1000)
    >>> record = env.records[-1]
    >>> record.box, round(record.area_fraction, 4), record.iou, blocks[1]["text"].endswith("What digit?")
    ((250, 250, 1000, 1000), 0.1875, 0.1111111111111111, True)

    ```
    """

    def __init__(
        self,
        box_format: str,
        min_pixels: int = CROP_MIN_PIXELS,
        max_pixels: int = CROP_MAX_PIXELS,
        max_crops: int = 1,
        instruction: str | None = None,
    ):
        self.box_format = check_box_format(box_format)
        self.min_pixels, self.max_pixels = crop_pixel_limits(min_pixels, max_pixels)
        self.max_crops = int(max_crops)
        self.instruction = crop_instruction(self.box_format) if instruction is None else instruction
        self.records: list[CropRecord] = []
        self._original: Image.Image | None = None
        self._seen: Image.Image | None = None
        self._input_size: tuple[float, float] | None = None
        self._target: tuple[float, float, float, float] | None = None
        self._question = ""

    @property
    def target_box(self) -> tuple[float, float, float, float] | None:
        """The row's `target_box` (original pixels) when it has a valid one, else `None`."""
        return self._target

    def reset(self, **row: Any) -> str | None:
        """Start a rollout on `row` (a dataset row: `prompt`, `image`, optional `original_image`,
        `input_size`, `target_box`); returns the turn-1 instruction."""
        self.records = []
        image = row.get("image")
        if image is None and row.get("images"):
            image = row["images"][0]
        original = row.get("original_image")
        original = image if original is None else original
        self._original = original if isinstance(original, Image.Image) else None
        self._seen = image if isinstance(image, Image.Image) else self._original
        size = row.get("input_size")
        try:
            w, h = float(size[0]), float(size[1])  # type: ignore[index]
            self._input_size = (w, h) if w > 0 and h > 0 and math.isfinite(w + h) else None
        except (TypeError, ValueError, IndexError, KeyError):
            self._input_size = None
        if self._input_size is None and self._seen is not None:
            self._input_size = tuple(float(v) for v in self._seen.size)  # type: ignore[assignment]
        self._target = _target_box(row.get("target_box"))
        self._question = _question(row.get("prompt"))
        return self.instruction or None

    def crop_image(self, bbox_2d: list[float], label: str = "") -> list[dict[str, Any]]:
        """
        Crop a region of the original high-resolution image and show it enlarged.

        Args:
            bbox_2d: The region as [x1, y1, x2, y2], in the coordinates the instructions give.
            label: Optional name of what the region contains.

        Returns:
            The enlarged region as an image, with a reminder of the question.
        """
        return self._crop(bbox_2d, forced=False)

    def _crop(self, bbox_2d: Any, forced: bool) -> list[dict[str, Any]]:
        question = self._question
        if len(self.records) >= self.max_crops:
            self.records.append(CropRecord(False, None, "crop limit reached", None, None, forced))
            return [{"type": "text", "text": f"No more crops: the limit is {self.max_crops}. Answer the question."}]
        if self._original is None or self._input_size is None:
            self.records.append(CropRecord(False, None, "no image", None, None, forced))
            return [{"type": "text", "text": "No image to crop. Answer the question."}]
        reason = "no box was given" if bbox_2d is None else None
        result = None
        if reason is None:
            result = crop_region(
                self._original,
                bbox_2d,
                self.box_format,
                self._input_size,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
                fallback=self._seen,
            )
            reason = result.reason
        if result is None or not result.valid:
            self.records.append(CropRecord(False, None, reason, None, None, forced))
            text = CROP_INVALID_TEXT.format(reason=reason, question=question)
            return [{"type": "image", "image": self._seen}, {"type": "text", "text": text}]
        box = result.box
        w, h = self._original.size
        area = (box[2] - box[0]) * (box[3] - box[1]) / float(w * h)
        iou = None
        if self._target is not None:
            iou = float(paired_box_iou([box], [self._target])[0])
        self.records.append(CropRecord(True, box, "", area, iou, forced))
        return [{"type": "image", "image": result.image}, {"type": "text", "text": CROP_RESULT_TEXT.format(question=question)}]


class ForcedCrop:
    """The crop tool of a rollout given MGPO's fixed second turn although the model called no tool: the first
    call is the system's (no box: the original image comes back with `CROP_INVALID_TEXT`, recorded with
    `forced=True`); any later call is the model's own `crop_image`.

    Example:
    ```python
    >>> from PIL import Image
    >>> env = CropEnvironment("qwen3_vl")
    >>> _ = env.reset(prompt="What colour?", image=Image.new("RGB", (64, 64)))
    >>> blocks = ForcedCrop(env)()
    >>> env.records[0].forced, env.records[0].reason
    (True, 'no box was given')

    ```
    """

    def __init__(self, environment: CropEnvironment):
        self.environment = environment
        self.used = False

    def __call__(self, **arguments: Any) -> list[dict[str, Any]]:
        if not self.used:
            self.used = True
            return self.environment._crop(None, forced=True)
        return self.environment.crop_image(**arguments)


@functools.cache
def _template_text(name: str) -> str:
    return resources.files("trl_perception").joinpath("assets", "chat_templates", name).read_text(encoding="utf-8")


def tool_chat_template(box_format: str) -> str | None:
    """The tool-capable chat template this library ships for a family, or `None` where the checkpoint's own
    template already calls tools (Qwen3-VL).

    Qwen2-VL-Instruct and Qwen2.5-VL-Instruct ship a template that ignores `tools`, tool calls and tool
    messages, so TRL refuses to run a tool loop with it. The shipped template renders every conversation
    without tools exactly as theirs does; with tools it lists them in the system turn and writes calls and
    responses in the Qwen2.5 text models' `<tool_call>` / `<tool_response>` format (which TRL's
    `qwen3_template` response parser reads), images allowed in tool responses. It is prefix-preserving.

    Example:
    ```python
    >>> "<tool_call>" in tool_chat_template("qwen2_5_vl"), tool_chat_template("qwen3_vl")
    (True, None)

    ```
    """
    if check_box_format(box_format) == "qwen3_vl":
        return None
    return _template_text("qwen2_5_vl_tools.jinja")


def prepare_tool_processor(processing_class: Any, box_format: str) -> Any:
    """Make a Qwen-VL processor ready for crop turns, in place: the shipped tool-capable chat template for
    Qwen2-VL / Qwen2.5-VL when its own cannot call tools (`tool_chat_template`), and a tool-call parser on the
    tokenizer (TRL's for a template it knows, else TRL's `qwen3_template`, which reads the `<tool_call>` JSON
    format both templates write). A parser already set is kept. Returns the processor.

    Example:
    ```python
    >>> from transformers import AutoProcessor
    >>> from trl.chat_template_utils import supports_tool_calling
    >>> from trl_perception.testing import tiny_vlm
    >>> processor = prepare_tool_processor(AutoProcessor.from_pretrained(tiny_vlm("qwen2_5_vl")), "qwen2_5_vl")
    >>> call = '<tool_call>\\n{"name": "crop_image", "arguments": {"bbox_2d": [1, 2, 30, 40]}}\\n</tool_call><|im_end|>'
    >>> parsed = processor.tokenizer.parse_response(call, prefix="<|im_start|>assistant\\n")
    >>> supports_tool_calling(processor), parsed["tool_calls"][0]["function"]["arguments"]
    (True, {'bbox_2d': [1, 2, 30, 40]})

    ```
    """
    from trl.chat_template_utils import add_response_schema, supports_tool_calling

    template = tool_chat_template(box_format)
    if template is not None and not supports_tool_calling(processing_class):
        processing_class.chat_template = template
        if getattr(processing_class, "tokenizer", None) is not None:
            processing_class.tokenizer.chat_template = template
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if getattr(tokenizer, "response_template", None) is not None or getattr(tokenizer, "response_schema", None):
        return processing_class
    try:
        add_response_schema(processing_class)
    except ValueError:  # a template TRL does not know, e.g. the shipped one: Qwen's <tool_call> JSON format
        from trl.chat_template_utils import qwen3_schema, qwen3_template

        if _supports_response_template():
            tokenizer.response_template = qwen3_template
        else:
            tokenizer.response_schema = qwen3_schema
    return processing_class


def _supports_response_template() -> bool:
    from packaging.version import Version
    from transformers import __version__ as transformers_version

    return Version(transformers_version) >= Version("5.13.0.dev0")
