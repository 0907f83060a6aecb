"""Specification of `trl_perception.boxes`: box formats, IoU/GIoU against torchvision, the Qwen-VL resize rule
against transformers and the real image processors, and coordinate frames."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_perception.boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    paired_box_iou,
)
from trl_perception.frames import (
    BOX_FORMATS,
    FRAMES,
    convert_frame,
    default_pixel_limits,
    frame_of,
    model_input_size,
    patch_factor,
    smart_resize,
)

# --------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------

coord = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
extent = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def xyxy_boxes(draw, min_size=0, max_size=6, degenerate_ok=True):
    """[N, 4] well-ordered boxes (x1 <= x2, y1 <= y2); zero width/height is allowed when `degenerate_ok`."""
    n = draw(st.integers(min_size, max_size))
    sizes = extent if degenerate_ok else st.floats(1e-3, 1e4)
    rows = []
    for _ in range(n):
        x, y, w, h = draw(coord), draw(coord), draw(sizes), draw(sizes)
        rows.append([x, y, x + w, y + h])
    return np.array(rows, dtype=np.float64).reshape(n, 4)


@st.composite
def any_boxes(draw, min_size=0, max_size=6):
    """[N, 4] arbitrary boxes, inverted and degenerate ones included."""
    n = draw(st.integers(min_size, max_size))
    return np.array([[draw(coord) for _ in range(4)] for _ in range(n)], dtype=np.float64).reshape(n, 4)


@st.composite
def image_sizes(draw, lo=1, hi=5000, max_ratio=200):
    """(height, width) with both sides in [lo, hi] and aspect ratio <= max_ratio (the processors' limit)."""
    height = draw(st.integers(lo, hi))
    width = draw(st.integers(max(lo, math.ceil(height / max_ratio)), min(hi, height * max_ratio)))
    return height, width


def _torch():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    return torch, ops


# --------------------------------------------------------------------------------------------------
# box_convert
# --------------------------------------------------------------------------------------------------


def test_box_convert_golden_values():
    box = [[10.0, 20.0, 40.0, 60.0]]
    assert box_convert(box, "xyxy", "xywh").tolist() == [[10.0, 20.0, 30.0, 40.0]]
    assert box_convert(box, "xyxy", "cxcywh").tolist() == [[25.0, 40.0, 30.0, 40.0]]
    assert box_convert([[10, 20, 30, 40]], "xywh", "xyxy").tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert box_convert([[25, 40, 30, 40]], "cxcywh", "xyxy").tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert box_convert([[10, 20, 30, 40]], "xywh", "cxcywh").tolist() == [[25.0, 40.0, 30.0, 40.0]]


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
@given(boxes=xyxy_boxes(min_size=1))
@settings(max_examples=15)
def test_box_convert_round_trips(in_fmt, out_fmt, boxes):
    start = box_convert(boxes, "xyxy", in_fmt)
    back = box_convert(box_convert(start, in_fmt, out_fmt), out_fmt, in_fmt)
    np.testing.assert_allclose(back, start, rtol=0, atol=1e-8 * (1 + np.abs(start).max()))


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
@given(boxes=xyxy_boxes(min_size=1))
@settings(max_examples=10)
def test_box_convert_matches_torchvision(in_fmt, out_fmt, boxes):
    torch, ops = _torch()
    start = box_convert(boxes, "xyxy", in_fmt)
    expected = ops.box_convert(torch.from_numpy(start), in_fmt, out_fmt).numpy()
    np.testing.assert_allclose(box_convert(start, in_fmt, out_fmt), expected, rtol=0, atol=1e-6)


def test_box_convert_keeps_leading_dimensions_and_returns_a_copy():
    boxes = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    out = box_convert(boxes, "xyxy", "xyxy")
    assert out.shape == (2, 3, 4) and out.dtype == np.float64
    out[0, 0, 0] = -1
    assert boxes[0, 0, 0] == 0
    assert box_convert(boxes, "xyxy", "cxcywh").shape == (2, 3, 4)


def test_box_convert_empty_input_has_shape_0_by_4():
    assert box_convert([], "xyxy", "xywh").shape == (0, 4)


def test_box_convert_rejects_unknown_formats_and_bad_shapes():
    with pytest.raises(ValueError):
        box_convert([[0, 0, 1, 1]], "xyxy", "yxyx")
    with pytest.raises(ValueError):
        box_convert([[0, 0, 1]], "xyxy", "xywh")


# --------------------------------------------------------------------------------------------------
# box_area and clip_boxes
# --------------------------------------------------------------------------------------------------


def test_box_area_of_degenerate_and_inverted_boxes_is_zero():
    assert box_area([[0, 0, 10, 5], [3, 3, 3, 9], [5, 5, 1, 9], [5, 5, 9, 1], [5, 5, 1, 1]]).tolist() == [
        50.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]


@given(boxes=xyxy_boxes(min_size=1))
@settings(max_examples=50)
def test_box_area_matches_torchvision(boxes):
    torch, ops = _torch()
    np.testing.assert_allclose(
        box_area(boxes), ops.box_area(torch.from_numpy(boxes)).numpy(), rtol=1e-12, atol=0
    )


@given(boxes=any_boxes())
def test_box_area_is_never_negative(boxes):
    assert (box_area(boxes) >= 0).all()


def test_clip_boxes_golden():
    out = clip_boxes([[-5, 10, 120, 40], [-10, -10, -5, -5], [150, 60, 200, 90]], width=100, height=50)
    assert out.tolist() == [[0.0, 10.0, 100.0, 40.0], [0.0, 0.0, 0.0, 0.0], [100.0, 50.0, 100.0, 50.0]]


@given(boxes=any_boxes(), width=st.floats(1, 5000), height=st.floats(1, 5000))
def test_clip_boxes_lands_inside_the_canvas_and_is_idempotent(boxes, width, height):
    clipped = clip_boxes(boxes, width, height)
    assert clipped.shape == boxes.shape
    assert (clipped[:, 0::2] >= 0).all() and (clipped[:, 0::2] <= width).all()
    assert (clipped[:, 1::2] >= 0).all() and (clipped[:, 1::2] <= height).all()
    np.testing.assert_array_equal(clip_boxes(clipped, width, height), clipped)


@given(boxes=xyxy_boxes(), width=st.floats(1, 5000), height=st.floats(1, 5000))
def test_clip_boxes_never_grows_a_box_and_keeps_inside_boxes(boxes, width, height):
    clipped = clip_boxes(boxes, width, height)
    assert (box_area(clipped) <= box_area(boxes) * (1 + 1e-12) + 1e-9).all()
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
    np.testing.assert_array_equal(clipped[inside], boxes[inside])


def test_clip_boxes_does_not_modify_its_input():
    boxes = np.array([[-5.0, -5.0, 500.0, 500.0]])
    clip_boxes(boxes, 100, 100)
    assert boxes.tolist() == [[-5.0, -5.0, 500.0, 500.0]]


# --------------------------------------------------------------------------------------------------
# IoU / GIoU
# --------------------------------------------------------------------------------------------------


def test_box_iou_golden_values():
    iou = box_iou([[0, 0, 10, 10]], [[5, 5, 15, 15], [0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 10, 5]])
    np.testing.assert_allclose(iou, [[25 / 175, 1.0, 0.0, 0.5]])


def test_box_iou_shape_is_n_by_m_and_empty_sets_give_empty_matrices():
    assert box_iou(np.zeros((3, 4)), np.zeros((5, 4))).shape == (3, 5)
    assert box_iou([], [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou([[0, 0, 1, 1]], []).shape == (1, 0)
    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]).shape == (1, 1)  # a single box counts as one row
    assert generalized_box_iou([], []).shape == (0, 0)


@given(b1=xyxy_boxes(), b2=xyxy_boxes())
def test_box_iou_matches_torchvision(b1, b2):
    torch, ops = _torch()
    expected = ops.box_iou(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
    ours = box_iou(b1, b2)
    assert ours.shape == expected.shape
    # torchvision divides 0 by 0 when both boxes are degenerate; we define that IoU as 0.
    np.testing.assert_allclose(ours, np.where(np.isnan(expected), 0.0, expected), rtol=0, atol=1e-6)


@given(b1=xyxy_boxes(), b2=xyxy_boxes())
def test_generalized_box_iou_matches_torchvision(b1, b2):
    torch, ops = _torch()
    expected = ops.generalized_box_iou(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
    ours = generalized_box_iou(b1, b2)
    assert ours.shape == expected.shape
    finite = np.isfinite(expected)  # torchvision: NaN when a union or the enclosing box has area 0
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=0, atol=1e-6)
    assert np.isfinite(ours).all()


@given(b1=any_boxes(), b2=any_boxes())
def test_iou_and_giou_are_finite_and_bounded_for_any_boxes(b1, b2):
    iou, giou = box_iou(b1, b2), generalized_box_iou(b1, b2)
    assert np.isfinite(iou).all() and np.isfinite(giou).all()
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    assert ((giou >= -1 - 1e-12) & (giou <= 1 + 1e-12)).all()
    assert (giou <= iou + 1e-12).all()


@given(b1=any_boxes(), b2=any_boxes())
def test_box_iou_is_symmetric(b1, b2):
    np.testing.assert_allclose(box_iou(b1, b2), box_iou(b2, b1).T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(generalized_box_iou(b1, b2), generalized_box_iou(b2, b1).T, rtol=0, atol=1e-12)


@given(boxes=xyxy_boxes(min_size=1, degenerate_ok=False))
def test_a_box_has_iou_one_with_itself(boxes):
    np.testing.assert_allclose(np.diag(box_iou(boxes, boxes)), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.diag(generalized_box_iou(boxes, boxes)), 1.0, atol=1e-9)


@pytest.mark.parametrize(
    "box",
    [
        [5, 5, 5, 5],  # a point
        [5, 5, 5, 9],  # zero width
        [5, 5, 9, 5],  # zero height
        [9, 5, 5, 9],  # inverted x
        [5, 9, 9, 5],  # inverted y
        [9, 9, 1, 1],  # inverted both
    ],
)
def test_degenerate_and_inverted_boxes_have_iou_zero_never_nan(box):
    others = [box, [0, 0, 10, 10], [5, 5, 5, 5], [9, 9, 1, 1]]
    iou = box_iou([box], others)
    assert iou.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert paired_box_iou([box] * 4, others).tolist() == [0.0, 0.0, 0.0, 0.0]
    giou = generalized_box_iou([box], others)
    assert np.isfinite(giou).all() and (giou <= 0).all() and (giou >= -1).all()


def test_identical_degenerate_boxes_have_giou_zero():
    assert generalized_box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]]).tolist() == [[0.0]]


def test_generalized_box_iou_golden_values():
    giou = generalized_box_iou([[0, 0, 1, 1]], [[2, 0, 3, 1], [0, 0, 1, 1], [0, 0, 2, 2]])
    np.testing.assert_allclose(giou, [[-1 / 3, 1.0, 0.25]])


@given(b1=any_boxes(min_size=1, max_size=1), b2=any_boxes(min_size=1, max_size=1))
def test_paired_box_iou_equals_the_diagonal_of_box_iou(b1, b2):
    b1 = np.repeat(b1, 3, axis=0) + np.arange(3)[:, None]
    b2 = np.repeat(b2, 3, axis=0) - np.arange(3)[:, None]
    np.testing.assert_allclose(paired_box_iou(b1, b2), np.diag(box_iou(b1, b2)), rtol=0, atol=1e-12)


def test_paired_box_iou_requires_equal_lengths():
    with pytest.raises(ValueError):
        paired_box_iou([[0, 0, 1, 1]], [[0, 0, 1, 1], [0, 0, 1, 1]])


# --------------------------------------------------------------------------------------------------
# smart_resize and model_input_size
# --------------------------------------------------------------------------------------------------

# (factor, min_pixels, max_pixels): the real checkpoints' defaults and small settings used in tests.
PIXEL_SETTINGS = [
    (28, 3136, 12845056),  # Qwen2-VL / Qwen2.5-VL checkpoints
    (32, 65536, 16777216),  # Qwen3-VL checkpoints
    (28, 56 * 56, 28 * 28 * 1280),  # transformers' Qwen2VLImageProcessor defaults
    (28, 112 * 112, 112 * 112),
    (32, 112 * 112, 112 * 112),
    (28, 3136, 448 * 448),
    (32, 32 * 32, 256 * 256),
    (28, 256 * 28 * 28, 1280 * 28 * 28),  # a common training setting
    (32, 65536, 1024 * 1024),
]


def _hf_smart_resize():
    module = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    return module.smart_resize


@given(size=image_sizes(), setting=st.sampled_from(PIXEL_SETTINGS))
@settings(max_examples=300)
def test_smart_resize_is_identical_to_transformers(size, setting):
    hf_smart_resize = _hf_smart_resize()
    factor, lo, hi = setting
    height, width = size
    expected = hf_smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)
    assert smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi) == expected


@given(
    size=image_sizes(),
    factor=st.sampled_from([28, 32]),
    lo=st.integers(1, 1024 * 1024),
    span=st.integers(0, 16 * 1024 * 1024),
)
@settings(max_examples=200)
def test_smart_resize_is_identical_to_transformers_for_arbitrary_limits(size, factor, lo, span):
    hf_smart_resize = _hf_smart_resize()
    height, width = size
    expected = hf_smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=lo + span)
    assert smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=lo + span) == expected


@given(size=image_sizes(), setting=st.sampled_from(PIXEL_SETTINGS))
def test_smart_resize_gives_sides_on_the_grid(size, setting):
    factor, lo, hi = setting
    h, w = smart_resize(*size, factor=factor, min_pixels=lo, max_pixels=hi)
    assert h % factor == 0 and w % factor == 0 and h >= factor and w >= factor


def test_smart_resize_golden_values():
    assert smart_resize(480, 640) == (476, 644)  # a COCO image through Qwen2.5-VL (spec §2)
    assert smart_resize(480, 640, factor=32, min_pixels=65536, max_pixels=16777216) == (480, 640)
    assert smart_resize(1000, 1000, max_pixels=112 * 112) == (112, 112)
    assert smart_resize(10, 10) == (56, 56)  # scaled up to min_pixels
    assert smart_resize(1, 200) == (28, 812)  # scaled up, and the short side is at least one patch


def test_smart_resize_rejects_extreme_aspect_ratios_like_transformers():
    hf_smart_resize = _hf_smart_resize()
    smart_resize(1, 200)  # exactly 200 is allowed
    for height, width in [(1, 201), (201, 1), (10, 2001)]:
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(height, width)
        with pytest.raises(ValueError, match="aspect ratio"):
            hf_smart_resize(height, width)


@pytest.mark.parametrize("height, width", [(0, 10), (10, 0), (-3, 10)])
def test_smart_resize_rejects_empty_images(height, width):
    with pytest.raises(ValueError):
        smart_resize(height, width)


def test_family_constants():
    assert BOX_FORMATS == ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    assert [patch_factor(f) for f in BOX_FORMATS] == [28, 28, 32]
    assert [frame_of(f) for f in BOX_FORMATS] == ["norm1000", "input", "norm1000"]
    assert default_pixel_limits("qwen2_vl") == (3136, 12845056)
    assert default_pixel_limits("qwen2_5_vl") == (3136, 12845056)
    assert default_pixel_limits("qwen3_vl") == (65536, 16777216)


@pytest.mark.parametrize("function", [patch_factor, default_pixel_limits, frame_of])
def test_unknown_family_is_a_value_error(function):
    with pytest.raises(ValueError, match="unknown box_format"):
        function("llava")


def test_model_input_size_golden_values():
    assert model_input_size((640, 480), "qwen2_5_vl") == (644, 476)
    assert model_input_size((640, 480), "qwen2_vl") == (644, 476)
    assert model_input_size((640, 480), "qwen3_vl") == (640, 480)
    assert model_input_size((640, 480), "qwen3_vl", max_pixels=112 * 112) == (128, 96)
    assert model_input_size((100, 50), "qwen3_vl") == (384, 192)  # below Qwen3-VL's 65536 minimum


@given(size=image_sizes(hi=3000), family=st.sampled_from(BOX_FORMATS))
@settings(max_examples=100)
def test_model_input_size_is_smart_resize_with_width_first(size, family):
    height, width = size
    lo, hi = default_pixel_limits(family)
    h, w = smart_resize(height, width, factor=patch_factor(family), min_pixels=lo, max_pixels=hi)
    assert model_input_size((width, height), family) == (w, h)
    h, w = smart_resize(height, width, factor=patch_factor(family), min_pixels=3136, max_pixels=112 * 112)
    assert model_input_size([width, height], family, min_pixels=3136, max_pixels=112 * 112) == (w, h)


# The real image processors: Qwen2-VL / Qwen2.5-VL use patch 14, Qwen3-VL patch 16, all merge 2.
_FAMILY_PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
_PROCESSOR_LIMITS = [(3136, 112 * 112), (112 * 112, 256 * 256), (3136, 448 * 448), (65536, 320 * 320)]


@functools.cache
def _image_processor(patch_size: int, min_pixels: int, max_pixels: int):
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2VLImageProcessor(
        patch_size=patch_size,
        merge_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )


def _processor_input_size(family: str, image_size: tuple[int, int], min_pixels: int, max_pixels: int):
    from PIL import Image

    processor = _image_processor(_FAMILY_PATCH[family], min_pixels, max_pixels)
    out = processor(images=[Image.new("RGB", image_size)], return_tensors="np")
    t, grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0])
    patch = _FAMILY_PATCH[family]
    assert t == 1
    assert out["pixel_values"].shape[0] == grid_h * grid_w
    return grid_w * patch, grid_h * patch


@pytest.mark.parametrize("family", BOX_FORMATS)
def test_real_image_processor_agrees_with_model_input_size_on_a_coco_image(family):
    lo, hi = default_pixel_limits(family)
    expected = {"qwen2_vl": (644, 476), "qwen2_5_vl": (644, 476), "qwen3_vl": (640, 480)}[family]
    assert model_input_size((640, 480), family) == expected
    assert _processor_input_size(family, (640, 480), lo, hi) == expected


@pytest.mark.parametrize("family", BOX_FORMATS)
@pytest.mark.parametrize("image_size", [(3, 3), (1, 200), (200, 1), (13, 2600), (641, 479), (999, 37)])
def test_real_image_processor_agrees_with_model_input_size_on_odd_sizes(family, image_size):
    for lo, hi in _PROCESSOR_LIMITS:
        expected = model_input_size(image_size, family, min_pixels=lo, max_pixels=hi)
        assert _processor_input_size(family, image_size, lo, hi) == expected


@given(
    size=image_sizes(hi=1500),
    family=st.sampled_from(BOX_FORMATS),
    limits=st.sampled_from(_PROCESSOR_LIMITS),
)
@settings(max_examples=40)
def test_real_image_processor_agrees_with_model_input_size_off_grid(size, family, limits):
    height, width = size
    lo, hi = limits
    expected = model_input_size((width, height), family, min_pixels=lo, max_pixels=hi)
    assert _processor_input_size(family, (width, height), lo, hi) == expected


# --------------------------------------------------------------------------------------------------
# coordinate frames
# --------------------------------------------------------------------------------------------------


def test_convert_frame_golden_values_for_a_coco_image_through_qwen2_5_vl():
    image_size, input_size = (640, 480), (644, 476)
    centre = {"pixels": [320, 240], "input": [322, 238], "norm1000": [500, 500], "norm1": [0.5, 0.5]}
    for src, src_value in centre.items():
        for dst, dst_value in centre.items():
            out = convert_frame(src_value, src, dst, image_size, input_size)
            np.testing.assert_allclose(out, dst_value, rtol=1e-12)
    box = convert_frame([[64, 24, 192, 72]], "pixels", "norm1000", image_size)
    np.testing.assert_allclose(box, [[100, 50, 300, 150]])
    box = convert_frame([[64, 24, 192, 72]], "pixels", "input", image_size, input_size)
    np.testing.assert_allclose(box, [[64 * 644 / 640, 24 * 476 / 480, 192 * 644 / 640, 72 * 476 / 480]])
    corner = convert_frame([640, 480, 640, 480], "pixels", "input", image_size, input_size)
    np.testing.assert_allclose(corner, [644, 476, 644, 476])


@st.composite
def frame_cases(draw):
    width, height = draw(st.integers(1, 5000)), draw(st.integers(1, 5000))
    input_size = (draw(st.integers(1, 5000)), draw(st.integers(1, 5000)))
    k = draw(st.sampled_from([1, 2, 3]))  # points, boxes, or triples of points
    n = draw(st.integers(0, 4))
    coords = np.array([[draw(coord) for _ in range(2 * k)] for _ in range(n)], dtype=np.float64)
    coords = coords.reshape(n, 2 * k)
    return (width, height), input_size, coords


@given(case=frame_cases(), src=st.sampled_from(FRAMES), dst=st.sampled_from(FRAMES))
def test_convert_frame_round_trips(case, src, dst):
    image_size, input_size, coords = case
    there = convert_frame(coords, src, dst, image_size, input_size)
    assert there.shape == coords.shape
    back = convert_frame(there, dst, src, image_size, input_size)
    np.testing.assert_allclose(back, coords, rtol=1e-9, atol=1e-9)


@given(case=frame_cases(), a=st.sampled_from(FRAMES), b=st.sampled_from(FRAMES), c=st.sampled_from(FRAMES))
def test_convert_frame_composes(case, a, b, c):
    image_size, input_size, coords = case
    direct = convert_frame(coords, a, c, image_size, input_size)
    via = convert_frame(convert_frame(coords, a, b, image_size, input_size), b, c, image_size, input_size)
    np.testing.assert_allclose(via, direct, rtol=1e-9, atol=1e-9)


@given(case=frame_cases())
def test_convert_frame_scales_x_by_width_and_y_by_height(case):
    (width, height), _, coords = case
    out = convert_frame(coords, "pixels", "norm1", (width, height))
    np.testing.assert_allclose(out[:, 0::2], coords[:, 0::2] / width, rtol=1e-12)
    np.testing.assert_allclose(out[:, 1::2], coords[:, 1::2] / height, rtol=1e-12)


def test_convert_frame_keeps_leading_dimensions():
    coords = np.ones((2, 3, 4))
    assert convert_frame(coords, "norm1", "pixels", (10, 20)).shape == (2, 3, 4)
    assert convert_frame(coords, "norm1", "pixels", (10, 20))[1, 2].tolist() == [10.0, 20.0, 10.0, 20.0]
    assert convert_frame([], "norm1", "pixels", (10, 20)).size == 0


def test_convert_frame_does_not_modify_its_input():
    coords = np.array([[1.0, 2.0, 3.0, 4.0]])
    out = convert_frame(coords, "pixels", "pixels", (10, 10))
    out[0, 0] = 99
    assert coords[0, 0] == 1.0


def test_input_frame_needs_input_size():
    with pytest.raises(ValueError, match="input_size"):
        convert_frame([1, 2], "input", "pixels", (640, 480))
    with pytest.raises(ValueError, match="input_size"):
        convert_frame([1, 2], "norm1000", "input", (640, 480))


def test_unknown_frame_and_odd_coordinates_are_value_errors():
    with pytest.raises(ValueError, match="unknown frame"):
        convert_frame([1, 2], "pixels", "percent", (640, 480))
    with pytest.raises(ValueError, match="even"):
        convert_frame([1, 2, 3], "pixels", "norm1", (640, 480))
