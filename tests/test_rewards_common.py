"""Specification of the row handling the rewards share: frames,
ground-truth caching within a GRPO group, empty answers and label normalisation."""

import numpy as np
import pytest

from trl_perception.frames import Frame, convert_frame, model_input_size
from trl_perception.rewards import count_reward, detection_reward, iou_reward
from trl_perception.rewards._common import (
    MalformedSolution,
    SolutionCache,
    frame_for,
    is_empty_answer,
    normalize_label,
)

# ---------------------------------------------------------------------------------------------- frames


def test_frame_maps_qwen2_vl_0_1000_to_pixels_and_clips():
    frame = frame_for("qwen2_vl", [640, 480], None)
    assert frame.to_pixels(np.array([[0, 0, 500, 500], [-10, -10, 2000, 2000]])).tolist() == [
        [0, 0, 320, 240],
        [0, 0, 640, 480],
    ]


def test_frame_for_qwen2_5_vl_defaults_to_the_released_pixel_limits():
    frame = frame_for("qwen2_5_vl", [640, 480], None)
    expected = convert_frame(
        [644, 476], "input", "pixels", (640, 480), model_input_size((640, 480), "qwen2_5_vl")
    )
    assert frame.to_pixels(np.array([644.0, 476.0])).tolist() == pytest.approx(expected.tolist())


def test_frame_without_columns_keeps_coordinates_as_written():
    frame = frame_for(None, None, None)
    assert frame.to_pixels(np.array([[-5.0, 1, 5000, 2]])).tolist() == [[-5.0, 1, 5000, 2]]


def test_stack_to_pixels_matches_rowwise_conversion():
    frames = [
        frame_for("qwen2_vl", [640, 480], None),
        frame_for(None, None, None),
        frame_for(None, [10, 10], None),
    ]
    coords = np.array([[100.0, 100, 2000, 900], [-5, -5, 50, 50], [-5, -5, 50, 50]])
    expected = [f.to_pixels(c).tolist() for f, c in zip(frames, coords)]
    assert Frame.stack_to_pixels(coords, frames).tolist() == expected


def test_norm1000_of_pixels():
    frame = frame_for(None, [2000, 1000], None)
    assert frame.to_norm1000(np.array([[200.0, 500.0]])).tolist() == [[100.0, 500.0]]


@pytest.mark.parametrize(
    ("family", "size", "input_size"),
    [("llava", [10, 10], None), (5, [10, 10], None), (None, [0, 10], None), (None, [10], None),
     (None, "abc", None), (None, [float("inf"), 1], None), (None, [True, 4], None), ("qwen2_5_vl", [1, 5000], None),
     (None, [10, 10], [0, 1])],
)  # fmt: skip
def test_malformed_frame_values_raise_malformed_solution(family, size, input_size):
    with pytest.raises(MalformedSolution):
        frame_for(family, size, input_size)


def test_empty_box_format_means_no_family():
    assert frame_for("", [640, 480], None) == frame_for(None, [640, 480], None)


def test_frame_values_may_be_numpy_arrays_or_json_strings():
    assert frame_for("qwen2_vl", np.array([640, 480]), None) == frame_for("qwen2_vl", "[640, 480]", None)


# --------------------------------------------------------------------------------------- solution cache


def test_solution_cache_decodes_each_run_of_equal_solutions_once():
    calls = []

    def decode(raw):
        calls.append(raw)
        return len(raw)

    cache = SolutionCache(decode)
    assert [cache(s) for s in ([1, 2], [1, 2], [1, 2], [3], [1, 2])] == [2, 2, 2, 1, 2]
    assert calls == [[1, 2], [3], [1, 2]]


def test_solution_cache_replays_malformed_errors():
    def decode(raw):
        raise MalformedSolution("bad")

    cache = SolutionCache(decode)
    for _ in range(2):
        with pytest.raises(MalformedSolution):
            cache("x")


def test_solution_cache_compares_arrays_safely():
    cache = SolutionCache(lambda raw: raw.sum())
    assert cache(np.array([1, 2])) == 3
    assert cache(np.array([1, 2, 3])) == 6


# ------------------------------------------------------------------------------------ small helpers


@pytest.mark.parametrize("text", ["", "[]", " [ ] ", "```json\n[]\n```", "None", "null", "No objects.", "nothing",
                                  "no object found", "<answer>[]</answer><|im_end|>"])  # fmt: skip
def test_empty_answers(text):
    assert is_empty_answer(text)


@pytest.mark.parametrize(
    "text", ["I cannot find it.", "[0, 0, 1, 1]", "0 objects? maybe", "none of them are cats"]
)
def test_not_empty_answers(text):
    assert not is_empty_answer(text)


def test_label_normalisation():
    assert normalize_label("  Hot   Dog\n") == "hot dog"
    assert normalize_label(5) == "5"
    assert normalize_label(None) is None and normalize_label("   ") is None and normalize_label(["a"]) is None


@pytest.mark.parametrize("column", ["image_size", "input_size"])
def test_a_malformed_size_cell_is_named_as_that_column(column, caplog):
    from trl_perception.rewards import iou_reward

    sizes = {"image_size": [[640, 480]], "input_size": [[644, 476]]}
    sizes[column] = ["[640, 480"]
    with caplog.at_level("WARNING", logger="trl_perception.rewards"):
        assert iou_reward([[{"content": "[1, 2, 3, 4]"}]], solution=[[1, 2, 3, 4]], box_format=["qwen2_5_vl"], **sizes) == [None]
    assert f"{column} is not valid JSON" in caplog.text and "solution is not valid JSON" not in caplog.text
# ------------------------------------------------------------------------------ frame columns


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("size", [[640, 480], (640, 480), np.array([640, 480])])
def test_a_flat_image_size_is_refused_the_same_way_for_any_batch(n, size):
    # It used to raise for 1 completion and silently give None for 2.
    for reward, solution in ((iou_reward, [0, 0, 1, 1]), (count_reward, 1), (detection_reward, [])):
        with pytest.raises(
            ValueError, match=r"one \[width, height\] per completion.*image_size=\[\[640, 480\]\]"
        ):
            reward(["[]"] * n, [solution] * n, image_size=size)
    with pytest.raises(ValueError, match="input_size"):
        iou_reward(["[]"] * n, [[0, 0, 1, 1]] * n, input_size=size)


def test_one_size_per_completion_is_read():
    assert iou_reward(["[0, 0, 10, 10]"] * 2, [[0, 0, 10, 10]] * 2, image_size=[[640, 480]] * 2) == [1.0, 1.0]
    sizes = np.array([[640, 480], [320, 240]])
    assert iou_reward(["[0, 0, 10, 10]"] * 2, [[0, 0, 10, 10]] * 2, image_size=sizes) == [1.0, 1.0]


def test_solution_cache_compares_numpy_ground_truth():
    calls = []
    cache = SolutionCache(lambda raw: calls.append(1) or len(raw))
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert cache(a) == cache(a.copy()) == 2
    assert cache(np.array([[1.0, 2.0]])) == 1
    assert len(calls) == 2
