"""PixMo-Count builder: the Hugging Face parquet schema (points as a struct of lists) with images found
by sha256 or file name, Perception-R1's jsonl files, resizing, and bad input in both error modes."""

import contextlib
import hashlib
import json
import warnings

import numpy as np
import pytest
from datasets import Dataset, Features, List, Value
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from trl_perception.data.errors import DataError, DataWarning, RecordError
from trl_perception.data.pixmo_count import _points, build_pixmo_count
from trl_perception.formats import format_instruction
from trl_perception.frames import grid_size

FEATURES = Features(
    {
        "image_url": Value("string"),
        "image_sha256": Value("string"),
        "count": Value("int32"),
        "points": {"x": List(Value("float32")), "y": List(Value("float32"))},
        "label": Value("string"),
    }
)


def _image(path, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", size, color).save(path, format="JPEG")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pixmo(tmp_path):
    """Three train rows and one validation row; images saved by sha256 (nested) or by URL file name."""
    images = tmp_path / "images"
    # Named after their sha256, the way download scripts keep them: rename after hashing.
    rows = []
    for i, (size, color) in enumerate([((64, 48), "red"), ((80, 60), "green")]):
        tmp = tmp_path / f"tmp{i}.jpg"
        sha = _image(tmp, size, color)
        target = images / ("sub" if i else "") / f"{sha}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
        rows.append((sha, f"https://example.com/photos/p{i}.jpg", size))
    sha = _image(images / "kitten%201.jpg".replace("%20", " "), (50, 40), "blue")
    rows.append((sha, "https://example.org/a/kitten%201.jpg?x=1", (50, 40)))
    train = {
        "image_url": [r[1] for r in rows],
        "image_sha256": [r[0] for r in rows],
        "count": [2, 3, 1],
        "points": [
            {"x": [10.5, 40.0], "y": [20.0, 30.25]},
            {"x": [1.0, 2.0, 79.5], "y": [1.0, 2.0, 59.5]},
            {"x": [25.0], "y": [20.0]},
        ],
        "label": ["apples", "people", "kittens"],
    }
    data = tmp_path / "pixmo-count" / "data"
    Dataset.from_dict(train, features=FEATURES).to_parquet(data / "train-00000-of-00001.parquet")
    validation = {key: values[:1] for key, values in train.items()}
    validation["points"] = [{"x": [], "y": []}]
    validation["count"] = [4]
    Dataset.from_dict(validation, features=FEATURES).to_parquet(data / "validation-00000-of-00001.parquet")
    return {
        "root": tmp_path,
        "images": images,
        "hf": tmp_path / "pixmo-count",
        "train": data / "train-00000-of-00001.parquet",
    }


def _rows(ds):
    return ds.select_columns(["prompt", "task", "solution", "image_size"]).to_list()


def _text(row):
    return row["prompt"][-1]["content"][1]["text"]


def test_hf_rows_have_counting_prompt_and_pixel_points(pixmo):
    rows = _rows(build_pixmo_count(pixmo["hf"], image_dir=pixmo["images"], split="train"))
    assert [_text(r) for r in rows] == [
        "Output all the bounding boxes of the apples",
        "Output all the bounding boxes of the people",
        "Output all the bounding boxes of the kittens",
    ]
    assert rows[0]["prompt"] == [
        {
            "role": "user",
            "content": [
                {"type": "image", "text": None},
                {"type": "text", "text": "Output all the bounding boxes of the apples"},
            ],
        }
    ]
    assert [r["solution"] for r in rows] == [
        {"count": 2, "points": [[10.5, 20.0], [40.0, 30.25]]},
        {"count": 3, "points": [[1.0, 1.0], [2.0, 2.0], [79.5, 59.5]]},
        {"count": 1, "points": [[25.0, 20.0]]},
    ]
    assert [r["image_size"] for r in rows] == [[64, 48], [80, 60], [50, 40]]
    assert {r["task"] for r in rows} == {"counting"}


def test_images_are_found_by_sha256_anywhere_under_the_folder_or_by_url_name(pixmo):
    ds = build_pixmo_count(pixmo["train"], image_dir=pixmo["images"])
    colors = [ds[i]["image"].getpixel((5, 5)) for i in range(3)]
    assert [np.argmax(c) for c in colors] == [0, 1, 2]  # red, green, blue


def test_eval_split_without_points_gives_points_none(pixmo):
    for split in ("validation", "val"):
        rows = _rows(build_pixmo_count(pixmo["hf"], image_dir=pixmo["images"], split=split))
        assert [r["solution"] for r in rows] == [{"count": 4, "points": None}]


def test_a_folder_with_several_splits_needs_split(pixmo):
    with pytest.raises(ValueError, match=r"holds splits \['train', 'validation'\]; pass split="):
        build_pixmo_count(pixmo["hf"], image_dir=pixmo["images"])
    with pytest.raises(FileNotFoundError, match="no parquet files for split 'test'"):
        build_pixmo_count(pixmo["hf"], image_dir=pixmo["images"], split="test")


def test_perception_r1_jsonl_rows(pixmo):
    path = pixmo["root"] / "pixmo_count_val540.jsonl"
    _image(pixmo["root"] / "images" / "pixmo-count" / "a.jpg", (30, 20), "white")
    path.write_text(
        json.dumps({"image_path": "pixmo-count/a.jpg", "question": "cars", "ground_truth": 5}) + "\n"
    )
    rows = _rows(build_pixmo_count(path, image_dir=pixmo["images"]))
    assert rows == [
        {
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "text": None},
                        {"type": "text", "text": "Output all the bounding boxes of the cars"},
                    ],
                }
            ],
            "task": "counting",
            "solution": {"count": 5, "points": None},
            "image_size": [30, 20],
        }
    ]


def test_family_instruction_and_resized_points_round_trip(pixmo):
    plain = _rows(build_pixmo_count(pixmo["train"], image_dir=pixmo["images"]))
    ds = build_pixmo_count(pixmo["train"], image_dir=pixmo["images"], box_format="qwen2_vl")
    text = _text(ds.select_columns(["prompt"])[0])
    assert text.startswith("Output all the bounding boxes of the apples")
    assert text.endswith(format_instruction("qwen2_vl", "counting"))
    fitted = build_pixmo_count(
        pixmo["train"], image_dir=pixmo["images"], box_format="qwen2_5_vl", min_pixels=784, max_pixels=5000
    )
    for i, row in enumerate(fitted):
        size = plain[i]["image_size"]
        w, h = grid_size(size, "qwen2_5_vl", min_pixels=784, max_pixels=5000)
        assert row["image"].size == (w, h) == tuple(row["image_size"]) == tuple(row["input_size"])
        back = [[x * size[0] / w, y * size[1] / h] for x, y in row["solution"]["points"]]
        assert np.allclose(back, plain[i]["solution"]["points"], atol=1.0)
        assert row["solution"]["count"] == plain[i]["solution"]["count"]


def test_sampling_is_deterministic(pixmo):
    a = build_pixmo_count(pixmo["train"], image_dir=pixmo["images"], num_samples=2, seed=5)
    b = build_pixmo_count(pixmo["train"], image_dir=pixmo["images"], num_samples=2, seed=5)
    assert len(a) == 2 and _rows(a) == _rows(b)


# ------------------------------------------------------------------------------------------------
# Bad input


def _write_rows(path, rows):
    Dataset.from_dict({k: [r[k] for r in rows] for k in FEATURES}, features=FEATURES).to_parquet(path)
    return path


def _train_rows(pixmo):
    return Dataset.from_parquet(str(pixmo["train"])).to_list()


def _both_modes(path, images, error, summary, n_rows, **kwargs):
    with pytest.raises(DataError, match=error):
        build_pixmo_count(path, image_dir=images, **kwargs)
    with pytest.warns(DataWarning, match=summary):
        ds = build_pixmo_count(path, image_dir=images, on_error="skip", **kwargs)
    assert len(ds) == n_rows


def test_missing_image(pixmo):
    rows = _train_rows(pixmo)
    rows[1]["image_sha256"] = "0" * 64
    rows[1]["image_url"] = "https://example.com/gone.jpg"
    path = _write_rows(pixmo["root"] / "bad.parquet", rows)
    _both_modes(
        path,
        pixmo["images"],
        r"bad\.parquet: row 1: image not found .*sha256 0000",
        "skipped 1 of 3 records .*: 1 missing image",
        2,
    )


def test_points_that_do_not_match_the_count_or_the_image(pixmo):
    rows = _train_rows(pixmo)
    rows[0]["count"] = 3
    rows[2]["points"] = {"x": [250.0], "y": [20.0]}  # 0-100 percentages would look like this on a big image
    path = _write_rows(pixmo["root"] / "bad.parquet", rows)
    _both_modes(
        path,
        pixmo["images"],
        r"row 0: 2 points for a count of 3",
        "skipped 2 of 3 records .*: 2 bad points",
        1,
    )


def test_negative_count(pixmo):
    rows = _train_rows(pixmo)
    rows[0]["count"] = -1
    rows[0]["points"] = {"x": [], "y": []}
    path = _write_rows(pixmo["root"] / "bad.parquet", rows)
    _both_modes(
        path, pixmo["images"], r"row 0: count must be an integer in \[0, 2147483647\], got -1", "1 bad record", 2
    )


def test_sha256_mismatch_when_verifying(pixmo):
    rows = _train_rows(pixmo)
    path = _write_rows(pixmo["root"] / "ok.parquet", rows)
    assert len(build_pixmo_count(path, image_dir=pixmo["images"], verify_sha256=True)) == 3
    rows[2]["image_sha256"] = "f" * 64  # found by its URL name, but not the file the release means
    path = _write_rows(pixmo["root"] / "bad.parquet", rows)
    assert len(build_pixmo_count(path, image_dir=pixmo["images"])) == 3
    _both_modes(
        path,
        pixmo["images"],
        r"row 2: .*kitten 1\.jpg does not match image_sha256 ffff",
        "1 bad image",
        2,
        verify_sha256=True,
    )


def test_malformed_and_truncated_jsonl(pixmo):
    _image(pixmo["images"] / "a.jpg", (30, 20), "white")
    good = json.dumps({"image_path": "a.jpg", "question": "cars", "ground_truth": 5})
    path = pixmo["root"] / "pixmo_count_test540.jsonl"
    path.write_text(
        "\n".join([good, '{"image_path": "a.jpg", "question": ', good, good[:20]])
    )  # last line cut
    _both_modes(
        path,
        pixmo["images"],
        r"pixmo_count_test540\.jsonl: line 2: not valid JSON",
        "skipped 2 of 4 records .*: 2 bad json",
        2,
    )
    path.write_text(json.dumps({"image_path": "a.jpg", "question": "cars"}) + "\n")
    _both_modes(path, pixmo["images"], r"line 1: record lacks key\(s\) \['ground_truth'\]", "1 bad record", 0)


def test_truncated_parquet_raises_in_both_modes(pixmo):
    data = pixmo["train"].read_bytes()
    path = pixmo["root"] / "cut.parquet"
    path.write_bytes(data[: len(data) // 2])
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=r"cut\.parquet: not a readable parquet file"):
            build_pixmo_count(path, image_dir=pixmo["images"], on_error=mode)


def test_wrong_schema_is_a_data_error(pixmo):
    Dataset.from_dict({"image": ["a"], "n": [1]}).to_parquet(pixmo["root"] / "other.parquet")
    with pytest.raises(DataError, match="not the allenai/pixmo-count schema"):
        build_pixmo_count(pixmo["root"] / "other.parquet", image_dir=pixmo["images"])


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["x", "y", "z"]), children, max_size=3)
    ),
    max_leaves=12,
)


@given(anything, st.integers(0, 5))
def test_points_parser_gives_pixel_pairs_none_or_record_errors(value, count):
    try:
        points = _points(value, count)
    except RecordError as err:
        assert err.reason == "bad points"
        return
    assert points is None or (
        len(points) == count and all(len(p) == 2 and all(np.isfinite(p)) for p in points)
    )


@settings(max_examples=30)
@given(st.lists(anything, max_size=4))
def test_any_jsonl_content_builds_or_raises_data_error(tmp_path_factory, records):
    folder = tmp_path_factory.mktemp("pixmo")
    PILImage.new("RGB", (8, 8)).save(folder / "a.jpg")
    path = folder / "pixmo_count_val540.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        build_pixmo_count(path, image_dir=folder)
    except DataError:
        pass
    with warnings.catch_warnings(), contextlib.suppress(DataError):  # file-level errors raise in both modes
        warnings.simplefilter("ignore", DataWarning)
        build_pixmo_count(path, image_dir=folder, on_error="skip")
