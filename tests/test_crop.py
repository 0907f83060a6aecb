"""Specification of `trl_perception.crop`: MGPO's box -> crop mapping per family against hand-computed pixel
boxes, its validity rules, and the crop environment TRL's `environment_factory` drives."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trl_perception.crop import (
    CROP_MAX_PIXELS,
    CROP_MIN_PIXELS,
    CropEnvironment,
    crop_instruction,
    crop_pixel_limits,
    crop_region,
    map_crop_box,
)
from trl_perception.frames import grid_size, model_input_size

ORIGINAL = (2000, 1500)


@pytest.mark.parametrize(
    ("box_format", "input_size", "bbox", "expected"),
    [
        # 0-1000 families: x * 2000 / 1000, y * 1500 / 1000
        ("qwen3_vl", (512, 384), [100, 200, 300, 400], (200, 300, 600, 600)),
        ("qwen2_vl", (560, 420), [0, 0, 1000, 1000], (0, 0, 2000, 1500)),
        ("qwen3_vl", (512, 384), [333, 333, 667, 667], (666, 499, 1334, 1001)),  # 499.5 -> 499, 1000.5 -> 1001
        # Qwen2.5-VL: pixels of the 560x420 input, x * 2000 / 560, y * 1500 / 420
        ("qwen2_5_vl", (560, 420), [28, 28, 140, 84], (100, 100, 500, 300)),
        ("qwen2_5_vl", (560, 420), [0, 0, 560, 420], (0, 0, 2000, 1500)),
        ("qwen2_5_vl", (560, 420), [10, 10, 50, 50], (35, 35, 179, 179)),  # 35.71 -> 35, 178.57 -> 179
    ],
)
def test_a_valid_box_maps_to_hand_computed_original_pixels(box_format, input_size, bbox, expected):
    assert map_crop_box(bbox, box_format, ORIGINAL, input_size) == (expected, "")


@pytest.mark.parametrize(
    ("box_format", "bbox", "reason"),
    [
        ("qwen2_5_vl", [140, 28, 28, 84], "x1 must be smaller"),  # x1 > x2
        ("qwen2_5_vl", [28, 28, 28, 84], "x1 must be smaller"),  # x1 == x2
        ("qwen2_5_vl", [28, 84, 140, 84], "x1 must be smaller"),  # y1 == y2
        ("qwen2_5_vl", [-1, 28, 140, 84], "outside"),  # negative
        ("qwen2_5_vl", [28, 28, 561, 84], "outside"),  # past the 560-pixel input width
        ("qwen2_5_vl", [28, 28, 140, 421], "outside"),  # past the 420-pixel input height
        ("qwen3_vl", [0, 0, 1001, 500], "outside"),  # past 1000
        ("qwen2_5_vl", [0, 0, 28, 84], "more than 28 pixels"),  # width exactly 28
        ("qwen2_5_vl", [0, 0, 84, 28], "more than 28 pixels"),  # height exactly 28
        ("qwen3_vl", [0, 0, 50, 500], "more than 28 pixels"),  # 50/1000 * 512 = 25.6 input pixels wide
        ("qwen2_5_vl", [0, 0, 29, 2950], "outside"),
        ("qwen2_5_vl", [0, 0, 3000, 29], "outside"),
        ("qwen2_5_vl", [1e300, 0, 2e300, 30], "outside"),
        ("qwen2_5_vl", [10**400, 0, 10**401, 30], "outside"),  # ints too large for a float
        ("qwen2_5_vl", [float("nan"), 0, 100, 100], "finite"),
        ("qwen2_5_vl", [0, 0, float("inf"), 100], "finite"),
        ("qwen2_5_vl", [0, 0, 100], "4 numbers"),
        ("qwen2_5_vl", [[0, 0, 100, 100]], "4 numbers"),
        ("qwen2_5_vl", "[0, 0, 100, 100]", "list of 4 numbers"),
        ("qwen2_5_vl", None, "list of 4 numbers"),
        ("qwen2_5_vl", {"x1": 0}, "list of 4 numbers"),
        ("qwen2_5_vl", [True, 0, 100, 100], "list of 4 numbers"),
        ("qwen2_5_vl", ["0", "0", "100", "100"], "list of 4 numbers"),
    ],
)
def test_an_invalid_box_gives_no_crop_and_a_reason(box_format, bbox, reason):
    input_size = (512, 384) if box_format == "qwen3_vl" else (560, 420)
    box, why = map_crop_box(bbox, box_format, ORIGINAL, input_size)
    assert box is None and reason in why


def test_an_aspect_ratio_of_100_is_invalid_and_just_below_is_valid():
    wide = (3000, 40)
    assert map_crop_box([0, 0, 2900, 29], "qwen2_5_vl", wide, wide)[0] is None  # 100.0
    assert map_crop_box([0, 0, 2899, 29], "qwen2_5_vl", wide, wide)[0] == (0, 0, 2899, 29)


def test_the_side_rule_is_in_input_pixels_for_0_1000_families():
    # 60/1000 of a 512-pixel input is 30.72 pixels (valid); 54/1000 is 27.6 (invalid)
    assert map_crop_box([0, 0, 60, 100], "qwen3_vl", ORIGINAL, (512, 384))[0] == (0, 0, 120, 150)
    assert map_crop_box([0, 0, 54, 100], "qwen3_vl", ORIGINAL, (512, 384))[0] is None


def test_the_crop_is_the_region_of_the_original_resized_within_the_crop_limits():
    pixels = np.zeros((1500, 2000, 3), dtype=np.uint8)
    pixels[300:600, 200:600] = (255, 0, 0)  # the region, red
    image = Image.fromarray(pixels)
    out = crop_region(image, [100, 200, 300, 400], "qwen3_vl", input_size=(512, 384))
    assert out.valid and out.box == (200, 300, 600, 600)
    assert out.image.size == grid_size((400, 300), "qwen3_vl", CROP_MIN_PIXELS, CROP_MAX_PIXELS) == (544, 416)
    assert CROP_MIN_PIXELS <= out.image.size[0] * out.image.size[1] <= CROP_MAX_PIXELS
    assert np.asarray(out.image)[..., 0].min() > 250 and np.asarray(out.image)[..., 1].max() < 5  # all red


def test_a_large_crop_is_scaled_down_to_the_max_pixels():
    out = crop_region(Image.new("RGB", (4000, 3000)), [0, 0, 1288, 966], "qwen2_5_vl", input_size=(1288, 966))
    w, h = out.image.size
    assert out.box == (0, 0, 4000, 3000) and w * h <= CROP_MAX_PIXELS and w % 28 == 0 and h % 28 == 0


def test_an_invalid_box_returns_the_fallback_image():
    seen = Image.new("RGB", (56, 56))
    out = crop_region(Image.new("RGB", (2000, 1500)), [5, 5, 1, 1], "qwen2_vl", (560, 420), fallback=seen)
    assert not out.valid and out.box is None and out.image is seen


def test_crop_limits_stay_within_the_processors():
    assert crop_pixel_limits() == (CROP_MIN_PIXELS, CROP_MAX_PIXELS)
    assert crop_pixel_limits(processor_limits=(3136, 12_845_056)) == (CROP_MIN_PIXELS, CROP_MAX_PIXELS)
    assert crop_pixel_limits(processor_limits=(300_000, 12_845_056)) == (300_000, CROP_MAX_PIXELS)
    with pytest.raises(ValueError, match="crop pixel limits"):
        crop_pixel_limits(10, 5)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]),
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(min_value=-(10**20), max_value=10**20),
            st.text(max_size=3),
            st.none(),
            st.booleans(),
        ),
        max_size=6,
    ),
)
def test_any_box_gives_a_crop_inside_the_image_or_a_reason(box_format, bbox):
    input_size = model_input_size(ORIGINAL, box_format)
    box, reason = map_crop_box(bbox, box_format, ORIGINAL, input_size)
    if box is None:
        assert reason
    else:
        x1, y1, x2, y2 = box
        assert reason == "" and 0 <= x1 < x2 <= ORIGINAL[0] and 0 <= y1 < y2 <= ORIGINAL[1]


def _row(text="What is the digit?", **extra):
    big = Image.new("RGB", ORIGINAL, (10, 20, 30))
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return {"prompt": prompt, "image": big.resize((112, 84)), "original_image": big, "input_size": [112, 84], **extra}


def test_the_environment_returns_the_instruction_and_crops_with_records():
    env = CropEnvironment("qwen2_5_vl", min_pixels=3136, max_pixels=12544)
    assert env.reset(**_row(target_box=[500, 500, 1500, 1500])) == crop_instruction("qwen2_5_vl")
    blocks = env.crop_image(bbox_2d=[28, 28, 84, 84])  # x * 2000 / 112, y * 1500 / 84
    assert [b["type"] for b in blocks] == ["image", "text"]
    assert blocks[0]["image"].size == (112, 112) and "What is the digit?" in blocks[1]["text"]
    (record,) = env.records
    assert record.valid and record.box == (500, 500, 1500, 1500) and record.iou == 1.0
    assert math.isclose(record.area_fraction, 1_000_000 / 3_000_000)


def test_the_environment_answers_an_invalid_box_with_the_image_the_model_saw():
    env = CropEnvironment("qwen3_vl", min_pixels=3136, max_pixels=12544)
    row = _row()
    env.reset(**row)
    blocks = env.crop_image(bbox_2d=[900, 900, 100, 100])
    assert blocks[0]["image"] is row["image"] and "could not be cropped" in blocks[1]["text"]
    assert not env.records[0].valid and env.records[0].iou is None


def test_the_environment_caps_the_crops_per_rollout_and_resets():
    env = CropEnvironment("qwen3_vl", min_pixels=3136, max_pixels=12544, max_crops=1)
    env.reset(**_row())
    env.crop_image(bbox_2d=[0, 0, 500, 500])
    blocks = env.crop_image(bbox_2d=[0, 0, 500, 500])
    assert [b["type"] for b in blocks] == ["text"] and env.records[1].reason == "crop limit reached"
    env.reset(**_row())
    assert env.records == []


def test_the_environment_without_an_original_crops_the_image_and_ignores_a_bad_target():
    env = CropEnvironment("qwen3_vl", min_pixels=3136, max_pixels=12544)
    row = _row(target_box=[5, 5, 1, 1])
    del row["original_image"]
    env.reset(**row)
    env.crop_image(bbox_2d=[0, 0, 500, 500])
    assert env.records[0].box == (0, 0, 56, 42) and env.records[0].iou is None


def test_the_environment_exposes_exactly_one_tool_to_trl():
    import inspect

    public = [n for n, _ in inspect.getmembers(CropEnvironment, predicate=inspect.isfunction) if not n.startswith("_")]
    assert sorted(public) == ["crop_image", "reset"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(JSON_VALUES, st.lists(st.floats(allow_nan=True), min_size=4, max_size=4)), JSON_VALUES)
def test_any_tool_arguments_give_an_image_and_a_text_and_one_record(bbox, label):
    env = CropEnvironment("qwen2_5_vl", min_pixels=3136, max_pixels=12544)
    env.reset(**_row())
    blocks = env.crop_image(bbox_2d=bbox, label=label)
    assert [b["type"] for b in blocks] == ["image", "text"] and len(env.records) == 1
    assert env.records[0].valid == (env.records[0].box is not None)
