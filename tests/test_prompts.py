"""Specification of `trl_perception.data.prompts`: Perception-R1's Table 8 prompts, the per-family output-format
instruction, template overrides and system turns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trl_perception.data.prompts import (
    COCO_CATEGORIES,
    DEFAULT_SYSTEM_PROMPT,
    TASK_TEMPLATES,
    build_prompt,
)
from trl_perception.formats import format_instruction
from trl_perception.frames import BOX_FORMATS, TASKS

BOX_TASKS = ("grounding", "counting", "detection")
FIELDS = {
    "grounding": {"question": "man in red"},
    "counting": {"label": "cars"},
    "ocr": {},
    "detection": {"categories": "person, bicycle"},
}


def prompt_text(messages):
    user = messages[-1]
    assert user["role"] == "user"
    assert user["content"][0] == {"type": "image"}
    assert user["content"][1]["type"] == "text"
    assert len(user["content"]) == 2
    return user["content"][1]["text"]


# --------------------------------------------------------------------------------------------------
# Table 8
# --------------------------------------------------------------------------------------------------


def test_table_8_templates_verbatim():
    assert TASKS[:5] == ("grounding", "counting", "ocr", "detection", "ovd")  # newer tasks (jigsaw) follow
    assert {k: v for k, v in TASK_TEMPLATES.items() if k not in ("ovd", "vqa")} == {
        "grounding": "Output the bounding box of the {question} in the image.",
        "counting": "Output all the bounding boxes of the {label}",
        "ocr": "OCR this image.",
        "detection": "Please output bbox coordinates and names of {categories}.",
    }


def test_vqa_prompts_letter_the_options_and_ask_for_a_boxed_answer():
    text = prompt_text(build_prompt("vqa", question="What colour is the sign?", options=["red", "blue", "green"]))
    assert text == (
        "What colour is the sign?\n(A) red\n(B) blue\n(C) green\n"
        "Answer with the option's letter from the given choices, enclosed within \\boxed{}."
    )
    short = prompt_text(build_prompt("vqa", question="How many cars?", box_format="qwen2_5_vl", think=True))
    assert short.startswith("How many cars?\nAnswer with a single word or number, enclosed within \\boxed{}.")
    assert "bbox_2d" not in short and short.endswith("</answer> tags.")


def test_ovd_prompt_lists_the_phrases_and_says_what_to_answer_when_none_is_present():
    text = prompt_text(build_prompt("ovd", phrases=["red circle", "blue square"], box_format="qwen2_5_vl"))
    assert text.startswith(
        "Please carefully check the image and detect the following objects: red circle, blue square. "
        "If none of them is in the image, answer None. Answer with a JSON list of"
    )


def test_grounding_prompt():
    text = prompt_text(build_prompt("grounding", question="man in red"))
    assert text == "Output the bounding box of the man in red in the image."


def test_counting_prompt_has_no_final_period_as_in_the_papers_code():
    assert prompt_text(build_prompt("counting", label="cars")) == "Output all the bounding boxes of the cars"


def test_ocr_prompt():
    assert prompt_text(build_prompt("ocr")) == "OCR this image."


def test_detection_prompt_lists_the_80_coco_names():
    text = prompt_text(build_prompt("detection", categories=", ".join(COCO_CATEGORIES)))
    assert text.startswith("Please output bbox coordinates and names of person, bicycle, car, motorcycle, ")
    assert text.endswith(", scissors, teddy bear, hair drier, toothbrush.")
    assert text.count(", ") == 79


def test_prompt_structure_is_one_user_turn_with_an_image_then_text():
    assert build_prompt("ocr") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR this image."}]}
    ]


def test_every_call_returns_fresh_messages():
    first = build_prompt("ocr")
    first[0]["content"].append({"type": "text", "text": "mutated"})
    assert len(build_prompt("ocr")[0]["content"]) == 2


# --------------------------------------------------------------------------------------------------
# COCO categories
# --------------------------------------------------------------------------------------------------

# COCO's 80 category ids are non-contiguous (1-90); COCO_CATEGORIES is in id order.
_COCO_IDS = [
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91)
]  # fmt: skip


def test_coco_categories_are_the_80_names_in_id_order():
    assert len(COCO_CATEGORIES) == len(_COCO_IDS) == 80
    assert len(set(COCO_CATEGORIES)) == 80
    by_id = dict(zip(_COCO_IDS, COCO_CATEGORIES))
    expected = {
        1: "person", 2: "bicycle", 11: "fire hydrant", 13: "stop sign", 25: "giraffe", 27: "backpack",
        28: "umbrella", 31: "handbag", 44: "bottle", 46: "wine glass", 65: "bed", 67: "dining table",
        70: "toilet", 72: "tv", 82: "refrigerator", 84: "book", 90: "toothbrush",
    }  # fmt: skip
    assert {i: by_id[i] for i in expected} == expected
    assert all(name == name.strip().lower() for name in COCO_CATEGORIES)


# --------------------------------------------------------------------------------------------------
# output-format instruction per family
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", BOX_FORMATS)
@pytest.mark.parametrize("task", BOX_TASKS)
def test_box_format_appends_the_familys_instruction(family, task):
    base = prompt_text(build_prompt(task, **FIELDS[task]))
    text = prompt_text(build_prompt(task, box_format=family, **FIELDS[task]))
    instruction = format_instruction(family, task)
    assert instruction
    # Table 8's counting template has no final period: one is added before the instruction.
    sentence = base if base.endswith(".") else base + "."
    assert text == f"{sentence} {instruction}"


def test_list_fields_are_joined_with_commas():
    text = prompt_text(build_prompt("detection", categories=("cat", "dog")))
    assert text == "Please output bbox coordinates and names of cat, dog."


def test_box_format_golden_for_qwen2_5_vl_detection():
    text = prompt_text(build_prompt("detection", box_format="qwen2_5_vl", categories="cat, dog"))
    assert text == (
        "Please output bbox coordinates and names of cat, dog. "
        'Answer with a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": name} for each object, '
        "in absolute pixel coordinates of the image."
    )


@pytest.mark.parametrize("family", BOX_FORMATS)
def test_ocr_gets_no_format_instruction(family):
    assert prompt_text(build_prompt("ocr", box_format=family)) == "OCR this image."


def test_no_box_format_means_no_instruction():
    assert prompt_text(build_prompt("grounding", box_format=None, question="dog")) == (
        "Output the bounding box of the dog in the image."
    )


def test_unknown_box_format_is_a_value_error():
    with pytest.raises(ValueError, match="unknown box_format"):
        build_prompt("grounding", box_format="llava", question="dog")


# --------------------------------------------------------------------------------------------------
# template override, system prompt, errors
# --------------------------------------------------------------------------------------------------


def test_template_override_replaces_the_table_8_text():
    text = prompt_text(build_prompt("grounding", template="Where is the {question}?", question="dog"))
    assert text == "Where is the dog?"


def test_template_override_still_gets_the_format_instruction():
    text = prompt_text(
        build_prompt("counting", template="Count the {label}.  ", box_format="qwen3_vl", label="cats")
    )
    assert text == "Count the cats. " + format_instruction("qwen3_vl", "counting")


def test_template_override_works_for_a_task_without_a_table_8_template():
    assert (
        prompt_text(build_prompt("caption", template="Describe the {thing}.", thing="scene"))
        == "Describe the scene."
    )


def test_empty_template_with_a_family_is_just_the_instruction():
    text = prompt_text(build_prompt("grounding", template="", box_format="qwen2_vl"))
    assert text == format_instruction("qwen2_vl", "grounding")


def test_system_prompt_adds_a_system_turn_first():
    messages = build_prompt("ocr", system_prompt=DEFAULT_SYSTEM_PROMPT)
    assert DEFAULT_SYSTEM_PROMPT == "You are a helpful assistant."
    assert messages[0] == {
        "role": "system",
        "content": [{"type": "text", "text": "You are a helpful assistant."}],
    }
    assert [m["role"] for m in messages] == ["system", "user"]
    assert prompt_text(messages) == "OCR this image."


@pytest.mark.parametrize("system_prompt", [None, ""])
def test_no_system_prompt_means_no_system_turn(system_prompt):
    assert [m["role"] for m in build_prompt("ocr", system_prompt=system_prompt)] == ["user"]


@pytest.mark.parametrize(
    "task, fields", [("grounding", {}), ("counting", {"question": "cars"}), ("detection", {})]
)
def test_missing_template_field_is_a_value_error_naming_it(task, fields):
    missing = {"grounding": "question", "counting": "label", "detection": "categories"}[task]
    with pytest.raises(ValueError, match=missing):
        build_prompt(task, **fields)


def test_positional_template_field_is_a_value_error():
    with pytest.raises(ValueError, match="needs field"):
        build_prompt("ocr", template="Read {0}.")


def test_unknown_task_without_template_is_a_value_error():
    with pytest.raises(ValueError, match="unknown task"):
        build_prompt("segmentation")


def test_extra_fields_are_ignored():
    assert prompt_text(build_prompt("ocr", question="unused")) == "OCR this image."


@given(question=st.text(max_size=50), family=st.sampled_from([None, *BOX_FORMATS]))
def test_field_values_are_inserted_verbatim_even_with_braces(question, family):
    text = prompt_text(build_prompt("grounding", box_format=family, question=question))
    assert text.startswith(f"Output the bounding box of the {question} in the image.")
