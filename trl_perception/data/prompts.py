"""Task prompts: Perception-R1's Table 8 templates plus each box format's output-format instruction."""

from __future__ import annotations

from typing import Any

from ..formats import format_choices, format_instruction
from ..frames import TASKS

__all__ = [
    "COCO_CATEGORIES",
    "DEFAULT_SYSTEM_PROMPT",
    "TASK_TEMPLATES",
    "THINK_INSTRUCTION",
    "VQA_CHOICE_INSTRUCTION",
    "VQA_SHORT_INSTRUCTION",
    "build_prompt",
]

TASK_TEMPLATES: dict[str, str] = {
    "grounding": "Output the bounding box of the {question} in the image.",
    "counting": "Output all the bounding boxes of the {label}",
    "ocr": "OCR this image.",
    "detection": "Please output bbox coordinates and names of {categories}.",
    "ovd": "Please carefully check the image and detect the following objects: {phrases}. "
    "If none of them is in the image, answer None.",
    "vqa": "{question}",
}
"""Perception-R1 Table 8 user prompts (the counting template has no final period in the paper's code), and the
open-vocabulary detection prompt after VLM-R1's OVD wording (target phrases, some absent; `None` when none
is present)."""

VQA_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices, enclosed within \\boxed{}."
"""Ends a multiple-choice VQA prompt (after the lettered options), as V* and MGPO ask for a letter."""

VQA_SHORT_INSTRUCTION = "Answer with a single word or number, enclosed within \\boxed{}."
"""Ends a short-answer VQA prompt (no options)."""

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
"""The Qwen chat templates' default system prompt (Perception-R1's training code adds a trailing space)."""

COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO category names in category-id order, as the Perception-R1 detection prompt lists them."""


THINK_INSTRUCTION = (
    "First think about the question inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags."
)
"""Appended by `build_prompt(..., think=True)`: R1-style reasoning before the answer (Table 5's "w/ thinking").
Every reward reads the answer inside `<answer>`; `think_format_reward` checks the structure."""


def build_prompt(
    task: str,
    *,
    box_format: str | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    think: bool = False,
    **fields: Any,
) -> list[dict[str, Any]]:
    """A conversational prompt with one image, in TRL's format.

    The text is `template` (default: the task's Table 8 template) filled with `fields`, followed by the
    output-format instruction of `box_format` when one is given, so that the model is asked for the
    format the rewards parse.

    Args:
        task (`str`): `"grounding"`, `"counting"`, `"ocr"` or `"detection"`.
        box_format (`str`, *optional*): the model's box format (`"qwen2_vl"`, `"qwen2_5_vl"`, `"qwen3_vl"`).
        template (`str`, *optional*): a `str.format` template overriding the task's default.
        system_prompt (`str`, *optional*): adds a system turn first.
        think (`bool`): ask for reasoning in `<think>` and the answer in `<answer>` (`THINK_INSTRUCTION`).
        **fields: template fields (`question` for grounding, `label` for counting, `categories` for detection);
            lists and tuples are joined with ", ". For `"vqa"`, `question` and optional `options` (a list): the
            options follow the question as lines `(A) ...`, then `VQA_CHOICE_INSTRUCTION` (or
            `VQA_SHORT_INSTRUCTION` without options).

    Returns:
        `list[dict]`: `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}]`.

    Example:
    ```python
    >>> build_prompt("grounding", question="man in red")[0]["content"][1]["text"]
    'Output the bounding box of the man in red in the image.'
    >>> len(build_prompt("ocr", system_prompt="You are a helpful assistant."))
    2
    >>> build_prompt("ocr", think=True)[0]["content"][1]["text"]
    'OCR this image. First think about the question inside <think> </think> tags, then give the final answer inside <answer> </answer> tags.'
    >>> print(build_prompt("vqa", question="What colour is the square?", options=["red", "blue"])[0]["content"][1]["text"])
    What colour is the square?
    (A) red
    (B) blue
    Answer with the option's letter from the given choices, enclosed within \\boxed{}.

    ```
    """
    if task not in TASK_TEMPLATES and template is None:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS} (or pass template=)")
    text_template = template if template is not None else TASK_TEMPLATES[task]
    vqa_tail = ""
    if task == "vqa":
        options = fields.pop("options", None)
        options = list(options) if options is not None else []
        vqa_tail = "\n".join(
            part
            for part in (format_choices(options) if options else "",
                         VQA_CHOICE_INSTRUCTION if options else VQA_SHORT_INSTRUCTION)
            if part
        )
    # A list of names (e.g. COCO_CATEGORIES) reads as "a, b, c" in the prompt.
    fields = {k: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in fields.items()}
    try:
        text = text_template.format(**fields)
    except (KeyError, IndexError) as err:
        raise ValueError(f"prompt template {text_template!r} needs field {err}; got fields {sorted(fields)}") from err
    if vqa_tail:
        text = f"{text.rstrip()}\n{vqa_tail}"
    for sentence in (format_instruction(box_format, task), THINK_INSTRUCTION if think else ""):
        if sentence:
            body = text.rstrip()
            if body and body[-1] not in ".?!:":
                body += "."  # Table 8's counting template has no final period
            text = f"{body} {sentence}" if body else sentence
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return messages
