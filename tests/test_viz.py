"""Specification of the drawing helpers: sizes, colours, and robustness to whatever objects come in."""

from __future__ import annotations

import io
import math
import unicodedata

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from trl_perception.formats import DetectedObject, ParsedOutput
from trl_perception.viz import (
    GT_COLOR,
    PRED_COLOR,
    display_text,
    draw_objects,
    image_grid,
    load_font,
    save_plot,
    to_pil,
)

# Characters Pillow 13's text layout (raqm) refuses, or that break a label over lines.
LAYOUT_BREAKERS = ["\r", "\n", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"]
# Any code point, lone surrogates and control characters included (what a model or a data file can hand us).
any_label = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)


def _blank(size=(96, 64), colour=(255, 255, 255)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _has(image: Image.Image, colour) -> bool:
    return bool((np.asarray(image) == np.asarray(colour, dtype=np.uint8)).all(axis=-1).any())


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------------------------------ draw_objects


def test_predictions_are_red_and_ground_truth_green():
    out = draw_objects(_blank(), [{"bbox_2d": [5, 5, 40, 40], "label": "cat"}], [[50, 10, 90, 60]])
    assert _has(out, PRED_COLOR) and _has(out, GT_COLOR)


def test_output_has_the_input_size_times_scale_and_leaves_the_input_alone():
    image = _blank((30, 20))
    before = image.tobytes()
    assert draw_objects(image, [[1, 1, 10, 10]]).size == (30, 20)
    assert draw_objects(image, [[1, 1, 10, 10]], scale=3).size == (90, 60)
    assert image.tobytes() == before


def test_scaled_boxes_land_on_scaled_pixels():
    out = draw_objects(_blank((20, 20)), [[10, 10, 20, 20]], scale=4, width=1, label=False)
    pixels = np.asarray(out)
    assert tuple(pixels[40, 60]) == PRED_COLOR  # top edge of the box at y = 10 * 4
    assert tuple(pixels[20, 20]) == (255, 255, 255)


@pytest.mark.parametrize(
    "objects",
    [
        None,
        [],
        "",
        "no boxes here",
        [{"bbox_2d": [float("nan"), 1, 5, 5]}],
        [{"bbox_2d": [1, 2, 3]}],
        [{"bbox_2d": "oops"}],
        [[math.inf, 0, 1, 1]],
        [{"point_2d": [None, 3]}],
        {"count": 0, "points": []},
        [[-50, -50, -10, -10]],
        [[200, 200, 300, 300]],
        [{"label": "orphan"}],
        object(),
    ],
)
def test_empty_invalid_or_off_image_objects_draw_nothing(objects):
    image = _blank()
    assert _same(draw_objects(image, objects, objects), image)


def test_boxes_reaching_outside_are_clipped_to_the_image():
    out = draw_objects(_blank((40, 30)), [[-100, -100, 1000, 1000]], width=1, label=False)
    pixels = np.asarray(out)
    assert tuple(pixels[0, 20]) == PRED_COLOR and tuple(pixels[29, 20]) == PRED_COLOR
    assert tuple(pixels[15, 0]) == PRED_COLOR and tuple(pixels[15, 39]) == PRED_COLOR


def test_reversed_corners_are_reordered():
    drawn = draw_objects(_blank(), [[40, 40, 5, 5]], label=False)
    assert _same(drawn, draw_objects(_blank(), [[5, 5, 40, 40]], label=False))


@pytest.mark.parametrize(
    "objects",
    [
        [{"bbox_2d": [5, 5, 40, 40], "label": "cat"}],
        [DetectedObject(bbox=(5, 5, 40, 40), label="cat")],
        ParsedOutput(objects=[DetectedObject(bbox=(5, 5, 40, 40), label="cat")], valid=True),
        '[{"bbox_2d": [5, 5, 40, 40], "label": "cat"}]',
        '```json\n[{"bbox_2d": [5, 5, 40, 40], "label": "cat"}]\n```',
        [{"bbox": [5, 5, 40, 40], "name": "cat"}],
        {"objects": [{"bbox_2d": [5, 5, 40, 40], "label": "cat"}]},
    ],
)
def test_every_object_representation_draws_the_same_picture(objects):
    expected = draw_objects(_blank(), [{"bbox_2d": [5, 5, 40, 40], "label": "cat"}])
    assert _same(draw_objects(_blank(), objects), expected)


def test_a_flat_box_and_numpy_boxes_are_accepted():
    expected = draw_objects(_blank(), [[5, 5, 40, 40]])
    assert _same(draw_objects(_blank(), [5, 5, 40, 40]), expected)
    assert _same(draw_objects(_blank(), np.array([[5, 5, 40, 40]])), expected)


def test_points_predicted_are_filled_and_ground_truth_rings():
    out = draw_objects(_blank(), points=[[20, 20]], gt_points={"count": 1, "points": [[60, 30]]}, width=2)
    pixels = np.asarray(out)
    assert tuple(pixels[20, 20]) == PRED_COLOR  # filled dot centre
    assert tuple(pixels[30, 60]) == (255, 255, 255)  # ring centre stays clear
    assert _has(out, GT_COLOR)


def test_point_objects_and_counting_solutions_are_drawn():
    assert _has(draw_objects(_blank(), [{"point_2d": [10, 10], "label": "dot"}]), PRED_COLOR)
    assert _same(
        draw_objects(_blank(), [[10, 10], [50, 40]]), draw_objects(_blank(), points=[[10, 10], [50, 40]])
    )
    assert _has(draw_objects(_blank(), None, {"count": 2, "points": [[10, 10], [50, 40]]}), GT_COLOR)


def test_legend_appears_only_when_both_sides_are_drawn():
    box = [[30, 30, 60, 50]]
    with_both = draw_objects(_blank(), box, box, label=False)
    without = draw_objects(_blank(), box, box, label=False, legend=False)
    assert not _same(with_both, without)
    assert _same(
        draw_objects(_blank(), box, label=False), draw_objects(_blank(), box, label=False, legend=False)
    )


def test_long_labels_are_truncated_and_stay_in_the_image():
    out = draw_objects(_blank((60, 40)), [{"bbox_2d": [50, 0, 60, 10], "label": "x" * 500}])
    assert out.size == (60, 40)


@pytest.mark.parametrize("char", [*LAYOUT_BREAKERS, "\x00", "\x7f", "\ud800", "\udfff", "\u200b", "\ufeff"])
def test_labels_with_control_characters_or_surrogates_are_drawn(char):
    out = draw_objects(_blank(), [{"bbox_2d": [5, 5, 40, 40], "label": f"cat{char}"}], [{"bbox_2d": [50, 5, 90, 40],
                       "label": f"{char}dog"}], points=[{"point_2d": [20, 50], "label": char * 3}])  # fmt: skip
    assert out.size == (96, 64) and _has(out, PRED_COLOR) and _has(out, GT_COLOR)


def test_a_label_is_drawn_on_one_line():
    # A line break inside a label would stack the tag over the box; it is drawn as a space.
    one_line = draw_objects(_blank((200, 100)), [{"bbox_2d": [5, 30, 100, 90], "label": "cat dog"}])
    broken = draw_objects(_blank((200, 100)), [{"bbox_2d": [5, 30, 100, 90], "label": "cat\r\ndog"}])
    assert _same(one_line, broken)


@settings(max_examples=300)
@given(text=any_label)
def test_display_text_is_one_drawable_line(text):
    line = display_text(text)
    assert line == line.strip() and "  " not in line
    line.encode("utf-8")  # raises on a lone surrogate
    assert all(ch == " " or not ch.isspace() for ch in line)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in line)
    assert display_text(line) == line


def test_display_text_keeps_ordinary_labels_and_cuts_long_ones():
    assert display_text("traffic light") == "traffic light"
    assert display_text("猫 cat") == "猫 cat"
    assert display_text("x" * 50, max_chars=10) == "xxxxxxx..."
    assert display_text(12.5) == "12.5"


def test_a_missing_font_file_is_named(tmp_path):
    with pytest.raises(OSError, match="nowhere.ttf"):
        load_font(12, path=str(tmp_path / "nowhere.ttf"))


def test_cjk_labels_draw_without_error():
    assert draw_objects(_blank(), [{"bbox_2d": [5, 5, 40, 40], "label": "猫"}]).size == (96, 64)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((20, 30), dtype=np.uint8),
        np.zeros((20, 30, 3), dtype=np.uint8),
        np.zeros((20, 30, 4), dtype=np.uint8),
        np.full((20, 30, 3), 0.5),
        np.zeros((20, 30), dtype=bool),
        Image.new("L", (30, 20)),
        Image.new("RGBA", (30, 20)),
    ],
)
def test_images_of_any_common_kind_are_accepted(image):
    out = draw_objects(image, [[1, 1, 10, 10]])
    assert out.mode == "RGB" and out.size == (30, 20)


def test_datasets_image_dicts_and_paths_are_accepted(tmp_path):
    buffer = io.BytesIO()
    _blank((30, 20)).save(buffer, format="PNG")
    assert to_pil({"bytes": buffer.getvalue(), "path": None}).size == (30, 20)
    _blank((30, 20)).save(tmp_path / "a.png")
    assert to_pil(str(tmp_path / "a.png")).size == (30, 20)


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**12), 10**12),
    st.none(),
    st.text(max_size=3),
)


@settings(max_examples=150)
@given(
    boxes=st.lists(st.lists(finite_or_not, min_size=0, max_size=5), max_size=6),
    points=st.lists(st.lists(finite_or_not, min_size=0, max_size=3), max_size=4),
    labels=st.lists(any_label, max_size=6),
    scale=st.sampled_from([1.0, 0.5, 2.0, float("nan"), -1.0]),
    width=st.integers(1, 10),
)
@example(boxes=[[1, 1, 20, 20]] * len(LAYOUT_BREAKERS), points=[[5, 5]], labels=[f"cat{c}dog" for c in LAYOUT_BREAKERS],
         scale=1.0, width=1)  # fmt: skip
@example(boxes=[[1, 1, 20, 20]], points=[], labels=["cat\ud800"], scale=2.0, width=2)
def test_draw_objects_never_fails_on_arbitrary_boxes(boxes, points, labels, scale, width):
    objects = [{"bbox_2d": b, "label": lab} for b, lab in zip(boxes, labels + [None] * len(boxes))]
    out = draw_objects(
        _blank((40, 30)), objects, boxes, points=points, gt_points=points, scale=scale, width=width
    )
    expected = (40, 30) if not (scale > 0) else (max(1, round(40 * scale)), max(1, round(30 * scale)))
    assert out.size == expected and out.mode == "RGB"


json_like = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150)
@given(objects=json_like)
def test_draw_objects_never_fails_on_arbitrary_structures(objects):
    assert draw_objects(_blank((40, 30)), objects, objects).size == (40, 30)


# ------------------------------------------------------------------------------------------ image_grid


def test_grid_lays_out_cells_in_columns():
    tiles = [_blank((32, 24)) for _ in range(5)]
    grid = image_grid(tiles, ncols=2, padding=4)
    assert grid.size == (2 * 32 + 3 * 4, 3 * 24 + 4 * 4)


def test_grid_scales_images_into_the_cell_size():
    grid = image_grid([_blank((10, 10), (255, 0, 0)), _blank((200, 50))], ncols=2, cell_size=40, padding=0)
    assert grid.size == (80, 40)
    assert tuple(np.asarray(grid)[20, 20]) == (255, 0, 0)  # upscaled to fill its cell


def test_long_captions_are_wrapped_and_truncated():
    tiles = [_blank((64, 64))] * 2
    short = image_grid(tiles, ncols=2, captions=["a", "b"])
    three_lines = image_grid(
        tiles, ncols=2, captions=["one two three four five six " * 2, "b"], max_caption_lines=3
    )
    huge = image_grid(tiles, ncols=2, captions=["word " * 1000, "x" * 5000], max_caption_lines=3)
    assert short.height < three_lines.height == huge.height
    assert huge.width == short.width


@settings(max_examples=60, deadline=None)
@given(captions=st.lists(any_label | st.none() | st.integers(), max_size=4))
def test_grid_never_fails_on_arbitrary_captions(captions):
    tiles = [_blank((20, 20))] * max(1, len(captions))
    assert image_grid(tiles, ncols=2, captions=captions).mode == "RGB"


def test_grid_handles_empty_missing_and_unreadable_images():
    assert image_grid([]).size == (64, 64)
    grid = image_grid([None, _blank((20, 20)), "/nonexistent.png", np.zeros((5,))], ncols=4, captions=[None])
    assert grid.width == 4 * 20 + 5 * 4


def test_grid_ncols_is_kept_within_sensible_bounds():
    tiles = [_blank((10, 10))] * 3
    assert image_grid(tiles, ncols=0, padding=0).size == (10, 30)
    assert image_grid(tiles, ncols=10, padding=0).size == (30, 10)


# ------------------------------------------------------------------------------------------ save_plot


def test_save_plot_writes_a_png(tmp_path):
    path = save_plot(
        [0, 1, 2, 3], {"iou": [0.1, 0.4, 0.6, 0.7], "format": [1, 1, 1, 1]}, tmp_path / "a" / "r.png"
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_save_plot_tolerates_gaps_mismatched_lengths_and_no_data(tmp_path):
    save_plot([0, 1, 2], {"a": [1, None, float("nan"), 4, 5], "b": ["x", 2]}, tmp_path / "g.png", smooth=2)
    save_plot(None, {"a": [0.5, 0.6]}, tmp_path / "n.png", title="reward", xlabel="step", ylabel="r")
    save_plot([], {}, tmp_path / "e.png")
    assert all((tmp_path / name).stat().st_size > 0 for name in ("g.png", "n.png", "e.png"))


def test_save_plot_draws_sparse_series_through_their_points(tmp_path):
    from matplotlib.figure import Figure

    drawn = {}
    original = Figure.savefig

    def capture(self, *args, **kwargs):
        for line in self.axes[0].get_lines():
            drawn[line.get_label()] = list(line.get_xdata())
        return original(self, *args, **kwargs)

    Figure.savefig = capture
    try:
        save_plot([1, 2, 3, 4, 5], {"reward": [0.1, 0.2, 0.3, 0.4, 0.5], "held-out": [None, 0.5, None, None, 0.6]},
                  tmp_path / "p.png")  # fmt: skip
    finally:
        Figure.savefig = original
    assert drawn["reward"] == [1, 2, 3, 4, 5]
    assert drawn["held-out"] == [2, 5]
