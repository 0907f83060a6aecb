"""Specification of the jigsaw builder: sources, determinism, laziness, the stored permutation, question
types, masking, swapping, errors and the grid curriculum."""

import copy
import io
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from trl_perception.data import DataError, make_synthetic
from trl_perception.data.jigsaw import (
    GridCurriculum,
    crop_to_grid,
    jigsaw_spec,
    make_jigsaw,
    mask_borders,
    reassemble,
    shuffle_patches,
)
from trl_perception.formats import parse_jigsaw_grid, render_jigsaw_answer
from trl_perception.frames import TASKS
from trl_perception.rewards import jigsaw_format_reward, jigsaw_reward


def noise_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def scenes():
    return make_synthetic("detection", 6, seed=0)


@pytest.fixture
def folder(tmp_path):
    for i, size in enumerate([(64, 48), (81, 50), (40, 40)]):
        noise_image(*size, seed=i).save(tmp_path / f"img{i}.png")
    (tmp_path / "sub").mkdir()
    noise_image(30, 30, seed=9).save(tmp_path / "sub" / "deep.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def stored_images(dataset):
    return dataset.with_format(None).select_columns(["image"]).cast_column("image", _undecoded())["image"]


def _undecoded():
    import datasets

    return datasets.Image(decode=False)


def test_jigsaw_is_a_task_of_the_row_contract():
    assert "jigsaw" in TASKS


def test_a_folder_becomes_one_puzzle_per_image_found_recursively(folder):
    ds = make_jigsaw(folder, rows=2, cols=2)

    assert len(ds) == 4
    assert set(ds.column_names) >= {"prompt", "image", "task", "solution", "image_size", "grid", "question_type",
                                    "permutation"}
    row = ds[1]  # img1.png, 81x50
    assert row["task"] == "jigsaw" and row["grid"] == [2, 2] and row["question_type"] == "full"
    assert row["image_size"] == [80, 50] and row["image"].size == (80, 50)
    assert row["prompt"][-1]["content"][0]["type"] == "image"


def test_a_list_of_paths_and_a_relative_image_dir_give_the_same_puzzles(folder):
    by_path = make_jigsaw([str(folder / "img0.png")], rows=1, cols=2, seed=3)
    by_dir = make_jigsaw(["img0.png"], rows=1, cols=2, seed=3, image_dir=folder)

    assert by_path[0]["permutation"] == by_dir[0]["permutation"]
    assert np.array_equal(np.asarray(by_path[0]["image"]), np.asarray(by_dir[0]["image"]))


def test_a_dataset_with_an_image_column_is_a_source(scenes):
    ds = make_jigsaw(scenes, rows=2, cols=3, seed=0)

    assert len(ds) == len(scenes)
    row = ds[2]
    assert row["image_size"] == [111, 112] and row["image"].size == (111, 112)


def test_puzzles_are_cut_when_a_row_is_read_not_at_build_time(scenes):
    ds = make_jigsaw(scenes, rows=2, cols=2)

    source_bytes = [s["bytes"] for s in stored_images(scenes)]
    assert [s["bytes"] for s in stored_images(ds)] == source_bytes  # the source, untouched
    assert ds.format["type"] == "custom"


def test_the_same_seed_gives_the_same_puzzles_and_another_seed_others(scenes):
    a, b, c = (make_jigsaw(scenes, 3, 3, seed=s) for s in (0, 0, 1))

    assert a["permutation"] == b["permutation"] and a["prompt"] == b["prompt"]
    assert np.array_equal(np.asarray(a[4]["image"]), np.asarray(b[4]["image"]))
    assert a["permutation"] != c["permutation"]


@given(
    width=st.integers(2, 60),
    height=st.integers(2, 60),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_reassembling_with_the_true_answer_gives_back_the_cropped_original(width, height, rows, cols, seed):
    if rows * cols < 2 or width < cols or height < rows:
        return
    original = noise_image(width, height, seed=seed % 1000)
    permutation = jigsaw_spec(seed, 0, rows, cols)["permutation"]

    puzzle = shuffle_patches(original, rows, cols, permutation)
    answer = parse_jigsaw_grid(render_jigsaw_answer(permutation, cols=cols), rows * cols)  # the model's text
    restored = reassemble(puzzle, rows, cols, answer)

    assert np.array_equal(np.asarray(restored), np.asarray(crop_to_grid(original, rows, cols)))


def test_a_built_row_reassembles_to_its_source_pixel_for_pixel(folder):
    ds = make_jigsaw(folder, rows=3, cols=2, seed=5)
    for i, path in enumerate(sorted(str(p) for p in folder.rglob("*.*") if p.suffix in (".png", ".jpg"))):
        row = ds[i]
        original = crop_to_grid(Image.open(path).convert("RGB"), 3, 2)
        restored = reassemble(row["image"], 3, 2, row["permutation"])
        assert np.array_equal(np.asarray(restored), np.asarray(original))


def test_the_puzzle_is_really_shuffled():
    original = noise_image(40, 40)
    puzzle = shuffle_patches(original, 2, 2, [4, 3, 2, 1])
    top_left = np.asarray(puzzle)[:20, :20]
    assert np.array_equal(top_left, np.asarray(original)[20:, 20:])


def test_the_full_solution_is_the_permutation_and_its_rendering_earns_full_rewards(scenes):
    ds = make_jigsaw(scenes, rows=2, cols=2, seed=0)
    row = ds[0]
    answer = render_jigsaw_answer(row["permutation"], cols=2)

    assert jigsaw_reward([answer], [row["solution"]], task=["jigsaw"]) == [1.0]
    assert jigsaw_format_reward([answer], [row["solution"]], task=["jigsaw"]) == [1.0]


@pytest.mark.parametrize("question", ["pair", "single", "multiple"])
def test_every_question_type_has_an_answer_that_earns_full_reward(scenes, question):
    ds = make_jigsaw(scenes, rows=2, cols=2, question=question, seed=1, think=True)
    for row in ds.select_columns(["solution"]).with_format(None):
        import json

        answer = json.loads(row["solution"])["answer"]
        completion = render_jigsaw_answer(answer, think=True)
        assert jigsaw_reward([completion], [row["solution"]]) == [1.0]
        assert jigsaw_format_reward([completion], [row["solution"]]) == [1.0]


def relation(permutation, cols, k, other):
    """Where original patch of position k lies relative to that of `other`, computed independently."""
    kr, kc = divmod(permutation[k - 1] - 1, cols)
    lr, lc = divmod(permutation[other - 1] - 1, cols)
    vertical = "above" if kr < lr else "below" if kr > lr else ""
    horizontal = "left" if kc < lc else "right" if kc > lc else ""
    return vertical, horizontal


@pytest.mark.parametrize("grid", [(2, 2), (1, 3), (3, 1), (2, 3)])
def test_the_pair_answer_names_the_true_relation(grid):
    rows, cols = grid
    for index in range(30):
        spec = jigsaw_spec(0, index, rows, cols, "pair")
        phrase = spec["choices"][ord(spec["answer"]) - ord("A")]
        vertical, horizontal = relation(spec["permutation"], cols, spec["k"], spec["l"])
        assert (vertical == "above") == ("above" in phrase or "upper" in phrase)
        assert (vertical == "below") == ("below" in phrase or "lower" in phrase)
        assert (horizontal == "left") == ("left" in phrase)
        assert (horizontal == "right") == ("right" in phrase)
        assert len(spec["choices"]) == (2 if 1 in grid else 8)


def test_the_multiple_choice_candidates_are_distinct_and_the_answer_is_the_truth():
    for index in range(20):
        spec = jigsaw_spec(0, index, 2, 2, "multiple", num_options=4)
        assert len({tuple(c) for c in spec["choices"]}) == 4
        assert spec["choices"][ord(spec["answer"]) - ord("A")] == spec["permutation"]
    assert len(jigsaw_spec(0, 0, 2, 1, "multiple", num_options=4)["choices"]) == 2  # only 2 permutations exist


def test_the_single_answer_is_the_asked_patchs_original_position():
    for index in range(20):
        spec = jigsaw_spec(0, index, 2, 3, "single")
        assert spec["answer"] == spec["permutation"][spec["k"] - 1]


def test_permutations_are_uniform_over_all_arrangements():
    counts = {}
    for index in range(2400):
        key = tuple(jigsaw_spec(7, index, 2, 2)["permutation"])
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 24 and min(counts.values()) > 60 and max(counts.values()) < 140


def test_the_prompt_shows_the_index_grid_the_rule_and_the_answer_format(scenes):
    text = make_jigsaw(scenes, rows=2, cols=3)[0]["prompt"][-1]["content"][1]["text"]
    assert "divided into 2x3 patches" in text and "```\n1 2 3\n4 5 6\n```" in text
    assert 'place "Y" at position X' in text and "Directly output the final answer." in text
    thinking = make_jigsaw(scenes, rows=2, cols=3, think=True)[0]["prompt"][-1]["content"][1]["text"]
    assert "<think> </think>" in thinking and "<answer> </answer>" in thinking


def test_mask_ratio_blacks_out_patch_borders_and_says_so(scenes):
    ds = make_jigsaw(scenes, rows=2, cols=2, mask_ratio=0.2)
    row = ds[0]
    pixels = np.asarray(row["image"])
    assert (pixels[:11] == 0).all() and (pixels[:, :11] == 0).all()  # outer border: 0.2 * 56 = 11 px
    assert (pixels[56 - 5 : 56 + 5] == 0).all()  # inner seam: 5 px either side
    assert "masked out" in row["prompt"][-1]["content"][1]["text"]


def test_mask_borders_keeps_the_patch_centres():
    image = Image.new("RGB", (40, 40), "white")
    masked = np.asarray(mask_borders(image, 2, 2, 0.25))
    assert (masked[10, 10] == 255).all() and (masked[0, 0] == 0).all()


def test_swap_prob_one_swaps_rows_and_columns(scenes):
    ds = make_jigsaw(scenes, rows=2, cols=1, swap_prob=1.0)
    assert all(g == [1, 2] for g in ds.with_format(None)["grid"])
    mixed = make_jigsaw(make_synthetic("grounding", 40, seed=0), rows=2, cols=1, swap_prob=0.5)
    assert {tuple(g) for g in mixed.with_format(None)["grid"]} == {(2, 1), (1, 2)}


def test_num_samples_keeps_a_seeded_subset(scenes):
    a = make_jigsaw(scenes, 2, 2, num_samples=3, seed=4)
    assert len(a) == 3 and a.with_format(None)["jigsaw_index"] == make_jigsaw(
        scenes, 2, 2, num_samples=3, seed=4
    ).with_format(None)["jigsaw_index"]


def test_an_unreadable_image_raises_naming_the_file_or_is_skipped_and_counted(folder):
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        make_jigsaw(folder, 2, 2)
    with pytest.warns(UserWarning, match="skipped 1 of 5"):
        ds = make_jigsaw(folder, 2, 2, on_error="skip")
    assert len(ds) == 4


def test_an_image_smaller_than_the_grid_is_an_error(tmp_path):
    noise_image(3, 40).save(tmp_path / "thin.png")
    with pytest.raises(DataError, match="thin.png.*cannot be cut into 4x4"):
        make_jigsaw(tmp_path, 4, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rows=1, cols=1), "at least 2 patches"),
        (dict(question="box"), "unknown question"),
        (dict(mask_ratio=0.5), "mask_ratio"),
        (dict(swap_prob=2.0), "swap_prob"),
    ],
)
def test_bad_options_are_rejected(scenes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_jigsaw(scenes, **{"rows": 2, "cols": 2, **kwargs})


def test_a_source_without_an_image_column_or_a_missing_folder_is_an_error(tmp_path):
    import datasets

    with pytest.raises(DataError, match="no 'image' column"):
        make_jigsaw(datasets.Dataset.from_dict({"x": [1]}), 2, 2)
    with pytest.raises(DataError, match="not an image folder"):
        make_jigsaw(tmp_path / "missing", 2, 2)


def test_the_transform_survives_pickling_shuffle_and_select(scenes):
    ds = make_jigsaw(scenes, 2, 2, seed=0)
    picked = pickle.loads(pickle.dumps(ds)).shuffle(seed=1).select([0])
    index = picked.with_format(None)["jigsaw_index"][0]
    assert np.array_equal(np.asarray(picked[0]["image"]), np.asarray(ds[index]["image"]))


def test_curriculum_stages_are_validated():
    with pytest.raises(ValueError, match="start at step 0"):
        GridCurriculum([(5, (2, 2))])
    with pytest.raises(ValueError, match="at least 2 patches"):
        GridCurriculum([(0, (1, 1))])
    with pytest.raises(ValueError, match="same step"):
        GridCurriculum([(0, (2, 1)), (0, (2, 2))])


def test_a_curriculum_dataset_renders_rows_at_the_current_stage(scenes):
    curriculum = GridCurriculum([(0, (2, 1)), (10, (2, 2)), (20, (3, 3))])
    ds = make_jigsaw(scenes, curriculum=curriculum, seed=0)
    assert ds[0]["grid"] == [2, 1]

    curriculum.step = 15
    row = ds[0]
    assert row["grid"] == [2, 2] and "2x2" in row["prompt"][-1]["content"][1]["text"]
    assert sorted(row["permutation"]) == [1, 2, 3, 4]
    assert row["permutation"] == jigsaw_spec(0, 0, 2, 2)["permutation"]
    restored = reassemble(row["image"], 2, 2, row["permutation"])
    original = crop_to_grid(Image.open(io.BytesIO(stored_images(scenes)[0]["bytes"])).convert("RGB"), 2, 2)
    assert np.array_equal(np.asarray(restored), np.asarray(original))

    curriculum.step = 25
    assert ds.shuffle(seed=0)[0]["grid"] == [3, 3]  # copies of the dataset share the curriculum
    assert copy.deepcopy(curriculum) is curriculum


def test_box_format_fits_large_images_to_the_grid_before_cutting(folder):
    ds = make_jigsaw(folder, 2, 2, box_format="qwen2_5_vl", max_pixels=28 * 28 * 4)
    row = ds[0]  # 64x48 is fitted to 56x56 (on the 28-px grid, within 3136 pixels)
    assert row["image_size"] == [56, 56] and row["image"].size == (56, 56)
    with pytest.raises(ValueError, match="pass box_format"):
        make_jigsaw(folder, 2, 2, max_pixels=10_000)


def test_add_completions_renders_the_true_grid_for_sft(scenes):
    from trl_perception.data.completions import add_completions

    ds = add_completions(make_jigsaw(scenes, rows=2, cols=3, seed=0))
    row = ds[0]
    text = row["completion"][0]["content"][0]["text"]
    assert text == render_jigsaw_answer(row["permutation"], cols=3) and len(text.splitlines()) == 2
    assert jigsaw_reward([text], [row["solution"]]) == [1.0]
    assert ds.format["type"] == "custom"  # still lazy
