"""COCO detection builder: category order with non-contiguous ids, crowd regions, negatives, the real
100-image val2014 fixture, resizing, and bad input in both error modes."""

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from trl_perception.data.coco import _parse_without_segmentation, build_coco_detection
from trl_perception.data.errors import DataError, DataWarning
from trl_perception.data.prompts import COCO_CATEGORIES
from trl_perception.frames import grid_size

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VAL2014_100 = FIXTURES / "coco" / "instances_val2014_100.json"

CATEGORIES = [  # listed out of id order, with gaps
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
]
IMAGES = [
    {"id": 42, "file_name": "000000000042.jpg", "width": 640, "height": 480},
    {"id": 7, "file_name": "000000000007.jpg", "width": 320, "height": 240},  # no annotations: a negative
    {"id": 9, "file_name": "000000000009.jpg", "width": 100, "height": 100},  # crowd only
]
ANNOTATIONS = [
    {"id": 1, "image_id": 42, "category_id": 18, "bbox": [10.5, 20.25, 100.0, 50.0], "iscrowd": 0, "area": 1,
     "segmentation": [[10.5, 20.25, 110.5, 20.25, 110.5, 70.25]]},
    {"id": 2, "image_id": 42, "category_id": 1, "bbox": [300, 100, 200, 300], "iscrowd": 1, "area": 1,
     "segmentation": {"counts": [1, 2], "size": [480, 640]}},
    {"id": 3, "image_id": 42, "category_id": 90, "bbox": [600, 400, 50, 100], "iscrowd": 0, "area": 1},
    {"id": 4, "image_id": 9, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1, "area": 1},
]  # fmt: skip


def _write(tmp_path, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES, stub_images=True):
    folder = tmp_path / "val2017"
    folder.mkdir(exist_ok=True)
    if stub_images:
        for im in images:
            if isinstance(im, dict) and isinstance(im.get("file_name"), str):
                (folder / im["file_name"]).write_bytes(b"")
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, folder


def _rows(ds):
    return ds.select_columns(["prompt", "task", "solution", "image_size"]).to_list()


def test_rows_have_prompt_in_id_order_and_xyxy_targets_without_crowd(tmp_path):
    ds = _build(*_write(tmp_path))
    rows = _rows(ds)
    assert len(rows) == 2  # the crowd-only image is dropped, the empty one kept
    assert rows[0]["prompt"] == [
        {
            "role": "user",
            "content": [
                {"type": "image", "text": None},
                {
                    "type": "text",
                    "text": "Please output bbox coordinates and names of person, dog, toothbrush.",
                },
            ],
        }
    ]
    assert rows[0]["solution"] == [
        {"bbox_2d": [10.5, 20.25, 110.5, 70.25], "label": "dog"},
        {"bbox_2d": [600.0, 400.0, 640.0, 480.0], "label": "toothbrush"},  # clipped to the image
    ]
    assert rows[0]["image_size"] == [640, 480]
    assert rows[1] == {**rows[0], "solution": [], "image_size": [320, 240]}
    assert {r["task"] for r in rows} == {"detection"}
    stored = ds.cast_column("image", __import__("datasets").Image(decode=False))[1]["image"]
    assert stored == {"bytes": None, "path": str((tmp_path / "val2017" / "000000000007.jpg").resolve())}


def test_include_crowd_keeps_crowd_regions_as_targets(tmp_path):
    rows = _rows(_build(*_write(tmp_path), include_crowd=True))
    assert len(rows) == 3
    assert [o["label"] for o in rows[0]["solution"]] == ["dog", "person", "toothbrush"]
    assert rows[2]["solution"] == [{"bbox_2d": [0.0, 0.0, 50.0, 50.0], "label": "person"}]


def test_keep_empty_false_drops_negatives(tmp_path):
    rows = _rows(_build(*_write(tmp_path), keep_empty=False))
    assert [r["image_size"] for r in rows] == [[640, 480]]


def test_crowd_exclusion_is_logged(tmp_path, caplog):
    with caplog.at_level("INFO", logger="trl_perception.data"):
        _build(*_write(tmp_path))
    assert "excluded 2 crowd annotation(s)" in caplog.text
    assert "dropped 1 image(s) whose only annotations are crowd regions" in caplog.text
    assert "1 image(s) without annotations kept as negative samples" in caplog.text


def test_zero_size_boxes_are_dropped_and_logged(tmp_path, caplog):
    anns = [*ANNOTATIONS, {"id": 5, "image_id": 42, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0}]
    with caplog.at_level("WARNING", logger="trl_perception.data"):
        rows = _rows(_build(*_write(tmp_path, annotations=anns)))
    assert len(rows[0]["solution"]) == 2
    assert "dropped 1 annotation(s) with a zero-size box" in caplog.text


def test_image_size_comes_from_the_json_not_the_files(tmp_path):
    path, folder = _write(tmp_path)
    PILImage.new("RGB", (10, 10)).save(folder / "000000000042.jpg", format="JPEG")
    assert _rows(build_coco_detection(path, image_dir=folder))[0]["image_size"] == [640, 480]


def test_real_val2014_fixture_builds_with_the_right_counts(tmp_path):
    data = json.loads(VAL2014_100.read_text())
    folder = tmp_path / "val2014"
    folder.mkdir()
    for im in data["images"]:
        (folder / im["file_name"]).write_bytes(b"")
    ds = build_coco_detection(VAL2014_100, image_dir=folder)
    rows = _rows(ds)
    assert len(rows) == 100
    assert sum(len(r["solution"]) for r in rows) == 839 - 9
    assert len(_rows(build_coco_detection(VAL2014_100, image_dir=folder, include_crowd=True))[0]["solution"]) >= 1
    assert (
        sum(len(r["solution"]) for r in _rows(build_coco_detection(VAL2014_100, image_dir=folder, include_crowd=True)))
        == 839
    )
    expected = "Please output bbox coordinates and names of " + ", ".join(COCO_CATEGORIES) + "."
    assert rows[0]["prompt"][0]["content"][1]["text"] == expected
    # Row order follows the file's images; boxes follow its annotations, converted to xyxy.
    first = data["images"][0]
    anns = [a for a in data["annotations"] if a["image_id"] == first["id"] and not a["iscrowd"]]
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert rows[0]["image_size"] == [first["width"], first["height"]]
    assert rows[0]["solution"] == [
        {"bbox_2d": [round(v, 3) for v in (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])],
         "label": names[a["category_id"]]}
        for a in anns
    ]  # fmt: skip


def test_family_columns_and_resizing_scale_boxes(tmp_path):
    path, folder = _write(tmp_path)
    plain = _rows(build_coco_detection(path, image_dir=folder))
    family = build_coco_detection(path, image_dir=folder, box_format="qwen2_5_vl")
    row = family.select_columns(["prompt", "solution", "image_size", "box_format", "input_size"])[0]
    assert (
        row["input_size"] == [644, 476]
        and row["image_size"] == [640, 480]
        and row["box_format"] == "qwen2_5_vl"
    )
    assert row["solution"] == plain[0]["solution"]
    assert row["prompt"][0]["content"][1]["text"].startswith(
        "Please output bbox coordinates and names of person, dog, toothbrush. "
    )

    fitted = build_coco_detection(path, image_dir=folder, box_format="qwen2_vl", max_pixels=100_000)
    row = fitted.select_columns(["solution", "image_size", "input_size"])[0]
    w, h = grid_size((640, 480), "qwen2_vl", max_pixels=100_000)
    assert row["image_size"] == row["input_size"] == [w, h]
    for got, want in zip(row["solution"], plain[0]["solution"]):
        back = [v * s for v, s in zip(got["bbox_2d"], (640 / w, 480 / h) * 2)]
        assert np.allclose(back, want["bbox_2d"], atol=1.0)
        assert got["label"] == want["label"]


def test_resized_images_are_fitted_on_access(tmp_path):
    path, folder = _write(tmp_path)
    PILImage.new("RGB", (640, 480), "gray").save(folder / "000000000042.jpg", format="JPEG")
    fitted = build_coco_detection(path, image_dir=folder, box_format="qwen3_vl", max_pixels=300_000)
    row = fitted[0]
    assert (
        row["image"].size
        == tuple(row["image_size"])
        == grid_size((640, 480), "qwen3_vl", max_pixels=300_000)
    )


def test_sampling_is_deterministic(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(50)]
    path, folder = _write(tmp_path, images=images, annotations=[])
    a = build_coco_detection(path, image_dir=folder, num_samples=7, seed=1)
    b = build_coco_detection(path, image_dir=folder, num_samples=7, seed=1)
    c = build_coco_detection(path, image_dir=folder, num_samples=7, seed=2)
    paths = [d.cast_column("image", __import__("datasets").Image(decode=False))["image"] for d in (a, b, c)]
    assert len(a) == 7 and paths[0] == paths[1] and paths[0] != paths[2]


# ------------------------------------------------------------------------------------------------
# Bad input


def _build(path, folder, **kwargs):
    return build_coco_detection(path, image_dir=folder, **kwargs)


def _both_modes(path, folder, error, summary, n_rows, **kwargs):
    with pytest.raises(DataError, match=error):
        build_coco_detection(path, image_dir=folder, **kwargs)
    with pytest.warns(DataWarning, match=summary):
        ds = build_coco_detection(path, image_dir=folder, on_error="skip", **kwargs)
    assert len(ds) == n_rows
    return ds


def test_negative_width_bbox(tmp_path):
    anns = [dict(a) for a in ANNOTATIONS]
    anns[2] = {**anns[2], "bbox": [600, 400, -50, 100]}
    _both_modes(
        *_write(tmp_path, annotations=anns),
        error=r"instances_val2017\.json: image 0 \(000000000042\.jpg\): annotation 2 \(id 3\): bbox \[x, y, w, h\] = \[600, 400, -50, 100\] has a negative",
        summary=r"skipped 1 of 3 records from .*instances_val2017\.json: 1 bad bbox",
        n_rows=1,
    )


def test_non_finite_and_malformed_bboxes(tmp_path):
    anns = [dict(a) for a in ANNOTATIONS]
    anns[0] = {**anns[0], "bbox": [1, 2, 3]}
    _both_modes(
        *_write(tmp_path, annotations=anns),
        error="annotation 0 \\(id 1\\): bbox",
        summary="1 bad bbox",
        n_rows=1,
    )
    anns[0] = {**anns[0], "bbox": [1, 2, float("nan"), 4]}
    path, folder = _write(tmp_path, annotations=anns)
    path.write_text(path.read_text().replace("NaN", "1e999"))
    _both_modes(path, folder, error="negative or non-finite", summary="1 bad bbox", n_rows=1)


def test_unknown_category_id(tmp_path):
    anns = [dict(a) for a in ANNOTATIONS]
    anns[0] = {**anns[0], "category_id": 12}  # a gap in COCO's ids
    _both_modes(
        *_write(tmp_path, annotations=anns),
        error=r"annotation 0 \(id 1\): category_id 12 is not among the categories",
        summary="skipped 1 of 3 records .*: 1 unknown category",
        n_rows=1,
    )


def test_annotation_of_an_unknown_image(tmp_path):
    anns = [*ANNOTATIONS, {"id": 77, "image_id": 1234, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0}]
    _both_modes(
        *_write(tmp_path, annotations=anns),
        error=r"annotation 4 \(id 77\): image_id 1234 is not among the images",
        summary="skipped 1 of 4 records .*: 1 unknown image",
        n_rows=2,
    )


def test_malformed_records(tmp_path):
    images = [*IMAGES, {"id": 5, "file_name": "5.jpg", "width": -3, "height": 10}, "not an image"]
    _both_modes(
        *_write(tmp_path, images=images),
        error=r"image 3: image size must be positive",
        summary="2 bad record",
        n_rows=2,
    )
    anns = [*ANNOTATIONS, {"id": 8, "image_id": 42, "bbox": [0, 0, 1, 1]}]
    _both_modes(
        *_write(tmp_path, annotations=anns),
        error="an annotation needs image_id, category_id and bbox",
        summary="1 bad record",
        n_rows=1,
    )


def test_missing_image_file(tmp_path):
    path, folder = _write(tmp_path)
    (folder / "000000000007.jpg").unlink()
    _both_modes(
        path,
        folder,
        error=r"image 1 \(id 7, 000000000007\.jpg\): .*000000000007\.jpg not found",
        summary="skipped 1 of 3 records .*: 1 missing image",
        n_rows=1,
    )
    assert len(build_coco_detection(path, image_dir=folder, check_images=False)) == 2


def test_truncated_or_wrong_files_raise_in_both_modes(tmp_path):
    path, folder = _write(tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=r"instances_val2017\.json: not valid JSON \(truncated file\?\)"):
            build_coco_detection(path, image_dir=folder, on_error=mode)
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="a 'categories' list"):
        build_coco_detection(path, image_dir=folder)
    with pytest.raises(FileNotFoundError):
        build_coco_detection(tmp_path / "nope.json", image_dir=folder)


def test_skip_mode_reports_every_reason_once(tmp_path):
    anns = [dict(a) for a in ANNOTATIONS]
    anns[0] = {**anns[0], "category_id": 12}
    anns.append({"id": 77, "image_id": 1234, "category_id": 1, "bbox": [0, 0, 1, 1]})
    path, folder = _write(tmp_path, annotations=anns)
    (folder / "000000000007.jpg").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_coco_detection(path, image_dir=folder, on_error="skip")
    messages = [str(w.message) for w in caught if w.category is DataWarning]
    assert len(ds) == 0
    assert len(messages) == 1
    assert messages[0].endswith(
        "skipped 3 of 4 records from " + str(path) + ": 1 missing image, 1 unknown category, 1 unknown image"
    )


# ------------------------------------------------------------------------------------------------
# Reading the annotation file without its segmentations


segmentations = st.one_of(
    st.lists(st.lists(st.floats(0, 1000, allow_nan=False), max_size=8), max_size=3),
    st.fixed_dictionaries(
        {"counts": st.one_of(st.lists(st.integers(0, 99), max_size=6), st.text("0123456789:;<=>?@ABCabco", max_size=12)),
         "size": st.tuples(st.integers(1, 9), st.integers(1, 9))}
    ),
)  # fmt: skip
fields = st.dictionaries(
    st.sampled_from(["id", "area", "bbox", "iscrowd", "note"]), st.integers() | st.text(max_size=8)
)


@given(
    st.lists(st.tuples(fields, segmentations, st.integers(0, 6)), max_size=5), st.sampled_from([None, 0, 2])
)
def test_segmentations_are_cut_wherever_they_appear(annotations, indent):
    objects = []
    for base, seg, position in annotations:
        items = list(base.items())
        items.insert(min(position, len(items)), ("segmentation", seg))
        objects.append(dict(items))
    text = json.dumps(
        {"annotations": objects, "info": {"segmentation": "a string, not a mask"}}, indent=indent
    )
    parsed = _parse_without_segmentation(text)
    expected = json.loads(text)
    for obj in expected["annotations"]:
        obj.pop("segmentation")
    expected["info"] = {"segmentation": "a string, not a mask"}
    assert parsed == expected


scalars = (
    st.none() | st.booleans() | st.integers(-3, 100) | st.floats() | st.text(max_size=4) | st.just("1.jpg")
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=8,
)
image_like = (
    st.fixed_dictionaries({"id": scalars, "file_name": scalars, "width": scalars, "height": scalars}) | values
)
ann_like = (
    st.fixed_dictionaries(
        {
            "id": scalars,
            "image_id": scalars,
            "category_id": scalars,
            "bbox": st.lists(scalars, max_size=5) | values,
        },
        optional={"iscrowd": scalars, "segmentation": values},
    )
    | values
)
cat_like = st.fixed_dictionaries({"id": st.integers(0, 5), "name": st.text(max_size=4)})


@settings(max_examples=60)
@given(st.lists(image_like, max_size=3), st.lists(ann_like, max_size=4), st.lists(cat_like, max_size=3))
def test_any_coco_content_builds_or_raises_data_error(tmp_path_factory, images, annotations, categories):
    folder = tmp_path_factory.mktemp("coco")
    (folder / "1.jpg").write_bytes(b"")
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    for mode in ("raise", "skip"):
        with warnings.catch_warnings(), contextlib.suppress(DataError):
            warnings.simplefilter("ignore", DataWarning)
            build_coco_detection(path, image_dir=folder, on_error=mode)


def test_boxes_thinner_than_the_rounding_count_as_zero_size(tmp_path, caplog):
    anns = [*ANNOTATIONS, {"id": 6, "image_id": 42, "category_id": 1, "bbox": [5, 5, 1e-9, 10], "iscrowd": 0}]
    with caplog.at_level("WARNING", logger="trl_perception.data"):
        rows = _rows(_build(*_write(tmp_path, annotations=anns)))
    assert len(rows[0]["solution"]) == 2
    assert "dropped 1 annotation(s) with a zero-size box" in caplog.text


def test_the_category_list_travels_with_the_dataset_for_evaluation(tmp_path):
    from PIL import Image

    from trl_perception.evaluation import build_coco_ground_truth

    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    (tmp_path / "i.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
                "categories": [
                    {"id": 1, "name": "person"},
                    {"id": 18, "name": "dog"},
                    {"id": 90, "name": "toothbrush"},
                ],
                "annotations": [
                    {"id": 5, "image_id": 1, "category_id": 18, "bbox": [1, 2, 10, 10], "iscrowd": 0}
                ],
            }
        )
    )
    dataset = build_coco_detection(tmp_path / "i.json", image_dir=tmp_path)
    assert json.loads(dataset.info.description) == {"categories": ["person", "dog", "toothbrush"]}
    gt, label_to_id = build_coco_ground_truth(list(dataset), dataset=dataset)
    assert [c["name"] for c in gt["categories"]] == ["person", "dog", "toothbrush"]
    assert label_to_id == {"person": 1, "dog": 2, "toothbrush": 3}


def test_lone_surrogates_in_names_become_the_replacement_character(tmp_path):
    # `json.dumps` writes "dog\ud800" as the escape "dog\\ud800"; `json.loads` gives back a lone surrogate,
    # which Arrow cannot store: the builder reads it as U+FFFD instead of crashing.
    categories = [{"id": 18, "name": "dog\ud800"}, {"id": 1, "name": "per\udc00son"}, {"id": 90, "name": "\ud83d\ude00"}]
    path, folder = _write(tmp_path, categories=categories)
    assert "\\ud800" in path.read_text()
    rows = _rows(_build(path, folder))
    assert [o["label"] for o in rows[0]["solution"]] == ["dog\ufffd", "\U0001f600"]  # a split pair is joined
    assert "dog\ufffd" in rows[0]["prompt"][-1]["content"][1]["text"]
