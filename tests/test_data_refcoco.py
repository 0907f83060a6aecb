"""RefCOCO builder: the four layouts (refer pickles, lmms-lab parquet, jxu124 parquet, Perception-R1 JSON)
written as the real releases are, giving identical rows; splits, options and bad input."""

import contextlib
import io
import json
import pickle
import warnings

import numpy as np
import pytest
from datasets import Dataset, Features, Image, List, Value
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from trl_perception.data.errors import DataError, DataWarning
from trl_perception.data.refcoco import build_refcoco, detect_refcoco_layout
from trl_perception.frames import grid_size

# Three COCO train2014 images, their annotations (COCO xywh) and refs across splits.
IMAGES = [
    {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 64, "height": 48},
    {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "width": 80, "height": 60},
    {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "width": 56, "height": 72},
]
ANNS = [
    {
        "id": 101,
        "image_id": 9,
        "category_id": 1,
        "bbox": [10.25, 5.5, 20.33, 12.71],
        "area": 1.0,
        "iscrowd": 0,
    },
    {
        "id": 102,
        "image_id": 9,
        "category_id": 18,
        "bbox": [40.0, 20.0, 15.5, 20.0],
        "area": 1.0,
        "iscrowd": 0,
    },
    {"id": 103, "image_id": 25, "category_id": 1, "bbox": [0.0, 0.0, 79.99, 59.5], "area": 1.0, "iscrowd": 0},
    {"id": 104, "image_id": 30, "category_id": 3, "bbox": [3.1, 4.2, 10.3, 30.7], "area": 1.0, "iscrowd": 0},
]
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def _sent(sent_id, text):
    return {"tokens": text.split(), "raw": text.capitalize() + ".", "sent": text, "sent_id": sent_id}


REFS = [
    {"ref_id": 0, "ann_id": 101, "image_id": 9, "category_id": 1, "split": "val",
     "file_name": "COCO_train2014_000000000009_101.jpg", "sent_ids": [0, 1],
     "sentences": [_sent(0, "man on the left"), _sent(1, "guy in red shirt")]},
    {"ref_id": 1, "ann_id": 102, "image_id": 9, "category_id": 18, "split": "val",
     "file_name": "COCO_train2014_000000000009_102.jpg", "sent_ids": [2],
     "sentences": [_sent(2, "brown dog")]},
    {"ref_id": 2, "ann_id": 103, "image_id": 25, "category_id": 1, "split": "testA",
     "file_name": "COCO_train2014_000000000025_103.jpg", "sent_ids": [3, 4],
     "sentences": [_sent(3, "woman"), _sent(4, "lady holding umbrella")]},
    {"ref_id": 3, "ann_id": 104, "image_id": 30, "category_id": 3, "split": "testB",
     "file_name": "COCO_train2014_000000000030_104.jpg", "sent_ids": [5],
     "sentences": [_sent(5, "white car")]},
    {"ref_id": 4, "ann_id": 101, "image_id": 9, "category_id": 1, "split": "train",
     "file_name": "COCO_train2014_000000000009_101.jpg", "sent_ids": [6],
     "sentences": [_sent(6, "left man")]},
]  # fmt: skip

FEATURES_LMMS = Features(
    {
        "question_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answer": List(Value("string")),
        "segmentation": List(Value("float32")),
        "bbox": List(Value("float32")),
        "iscrowd": Value("int8"),
        "file_name": Value("string"),
    }
)
FEATURES_JXU = Features(
    {
        "sent_ids": List(Value("int64")),
        "file_name": Value("string"),
        "ann_id": Value("int64"),
        "ref_id": Value("int64"),
        "image_id": Value("int64"),
        "split": Value("string"),
        "sentences": List(
            {
                "raw": Value("string"),
                "sent": Value("string"),
                "sent_id": Value("int64"),
                "tokens": List(Value("string")),
            }
        ),
        "category_id": Value("int64"),
        "raw_anns": Value("string"),
        "raw_image_info": Value("string"),
        "raw_sentences": Value("string"),
        "image_path": Value("string"),
        "bbox": List(Value("float64")),
        "captions": List(Value("string")),
        "global_image_id": Value("string"),
        "anns_id": Value("string"),
    }
)
JXU_SPLIT_FILES = {"train": "train", "val": "validation", "testA": "test", "testB": "testB"}


def _xyxy(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _write_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for im in IMAGES:
        pixels = rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)
        PILImage.fromarray(pixels).save(folder / im["file_name"], quality=90)


def _write_refer(root, refs=REFS, name="refs(unc).p", anns=ANNS):
    root.mkdir(parents=True, exist_ok=True)
    (root / "instances.json").write_text(
        json.dumps({"images": IMAGES, "annotations": anns, "categories": CATEGORIES})
    )
    (root / name).write_bytes(pickle.dumps(refs, protocol=2))
    return root


def _write_lmms(folder, images_dir):
    folder.mkdir(parents=True, exist_ok=True)
    anns = {a["id"]: a for a in ANNS}
    images = {im["id"]: im for im in IMAGES}
    for split in ("val", "testA", "testB"):
        rows = [r for r in REFS if r["split"] == split]
        data = {
            "question_id": [str(r["ann_id"]) for r in rows],
            "image": [
                {"bytes": (images_dir / images[r["image_id"]]["file_name"]).read_bytes(), "path": None}
                for r in rows
            ],
            "question": ["Please carefully observe the area circled in the image and come up with a caption."]
            * len(rows),
            "answer": [[s["sent"] for s in r["sentences"]] for r in rows],
            "segmentation": [[0.0, 0.0, 1.0, 1.0] for _ in rows],
            "bbox": [anns[r["ann_id"]]["bbox"] for r in rows],
            "iscrowd": [0 for _ in rows],
            "file_name": [images[r["image_id"]]["file_name"] for r in rows],
        }
        Dataset.from_dict(data, features=FEATURES_LMMS).to_parquet(
            folder / "data" / f"{split}-00000-of-00001.parquet"
        )
    return folder


def _write_jxu(folder):
    folder.mkdir(parents=True, exist_ok=True)
    anns = {a["id"]: a for a in ANNS}
    images = {im["id"]: im for im in IMAGES}
    for split, file_split in JXU_SPLIT_FILES.items():
        rows = [r for r in REFS if r["split"] == split]
        data = {
            "sent_ids": [r["sent_ids"] for r in rows],
            "file_name": [r["file_name"] for r in rows],
            "ann_id": [r["ann_id"] for r in rows],
            "ref_id": [r["ref_id"] for r in rows],
            "image_id": [r["image_id"] for r in rows],
            "split": [r["split"] for r in rows],
            "sentences": [r["sentences"] for r in rows],
            "category_id": [r["category_id"] for r in rows],
            "raw_anns": [json.dumps(anns[r["ann_id"]]) for r in rows],
            "raw_image_info": [json.dumps(images[r["image_id"]]) for r in rows],
            "raw_sentences": [json.dumps(r["sentences"]) for r in rows],
            "image_path": [f"coco/train2014/{images[r['image_id']]['file_name']}" for r in rows],
            "bbox": [_xyxy(anns[r["ann_id"]]["bbox"]) for r in rows],
            "captions": [[s["sent"] for s in r["sentences"]] for r in rows],
            "global_image_id": [f"coco.{r['image_id']}" for r in rows],
            "anns_id": [str(r["ann_id"]) for r in rows],
        }
        Dataset.from_dict(data, features=FEATURES_JXU).to_parquet(
            folder / "data" / f"{file_split}-00000-of-00001.parquet"
        )
    return folder


def _write_pr1(path, split):
    anns = {a["id"]: a for a in ANNS}
    images = {im["id"]: im for im in IMAGES}
    records = []
    for r in REFS:
        if r["split"] != split:
            continue
        im = images[r["image_id"]]
        box = _xyxy(anns[r["ann_id"]]["bbox"])
        norm = [round(box[0] / im["width"] * 1000), round(box[1] / im["height"] * 1000),
                round(box[2] / im["width"] * 1000), round(box[3] / im["height"] * 1000)]  # fmt: skip
        for s in r["sentences"]:
            records.append(
                {
                    "image": f"train2014/{im['file_name']}",
                    "problem": s["sent"],
                    "solution": box,
                    "normalized_solution": norm,
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcoco")
    images = root / "coco" / "train2014"
    _write_images(images)
    return {
        "root": root,
        "images": images,
        "refer": _write_refer(root / "refcoco"),
        "lmms": _write_lmms(root / "lmms-lab-RefCOCO", images),
        "jxu": _write_jxu(root / "jxu124-refcoco"),
        "pr1": {s: _write_pr1(root / "pr1" / f"refcoco_{s}.json", s) for s in ("val", "testA", "testB")},
    }


def _comparable(ds):
    rows = ds.select_columns(["prompt", "task", "solution", "image_size"]).to_list()
    pixels = [np.asarray(img) for img in ds["image"]]
    return rows, pixels


def _text(row):
    return row["prompt"][-1]["content"][1]["text"]


def test_refer_layout_gives_one_row_per_sentence_with_xyxy_pixels(layouts):
    ds = build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"])
    assert ds.column_names == ["prompt", "image", "task", "solution", "image_size"]
    rows = ds.select_columns(["prompt", "task", "solution", "image_size"]).to_list()
    assert [_text(r) for r in rows] == [
        "Output the bounding box of the man on the left in the image.",
        "Output the bounding box of the guy in red shirt in the image.",
        "Output the bounding box of the brown dog in the image.",
    ]
    assert rows[0]["prompt"] == [
        {
            "role": "user",
            "content": [
                {"type": "image", "text": None},
                {"type": "text", "text": "Output the bounding box of the man on the left in the image."},
            ],
        }
    ]
    assert [r["solution"] for r in rows] == [[10.25, 5.5, 30.58, 18.21]] * 2 + [[40.0, 20.0, 55.5, 40.0]]
    assert [r["image_size"] for r in rows] == [[64, 48]] * 3
    assert {r["task"] for r in rows} == {"grounding"}
    assert ds[0]["image"].size == (64, 48)


def test_image_column_stores_paths_and_decodes_lazily(layouts):
    ds = build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"])
    stored = ds.cast_column("image", Image(decode=False))[0]["image"]
    assert stored["bytes"] is None
    assert stored["path"] == str(layouts["images"] / "COCO_train2014_000000000009.jpg")


@pytest.mark.parametrize("split", ["val", "testA", "testB"])
def test_all_layouts_of_the_same_refs_give_identical_rows(layouts, split):
    refer = build_refcoco(layouts["refer"], split=split, image_dir=layouts["images"])
    lmms = build_refcoco(layouts["lmms"], split=split)
    jxu = build_refcoco(layouts["jxu"], split=split, image_dir=layouts["root"])
    pr1 = build_refcoco(layouts["pr1"][split], split=split, image_dir=layouts["root"] / "coco")
    expected_rows, expected_pixels = _comparable(refer)
    assert len(refer) > 0
    for other in (lmms, jxu, pr1):
        rows, pixels = _comparable(other)
        assert rows == expected_rows
        assert all(np.array_equal(a, b) for a, b in zip(pixels, expected_pixels))


def test_lmms_images_stay_embedded(layouts):
    ds = build_refcoco(layouts["lmms"], split="val")
    stored = ds.cast_column("image", Image(decode=False))[0]["image"]
    assert stored["bytes"] == (layouts["images"] / "COCO_train2014_000000000009.jpg").read_bytes()


def test_layout_is_detected_from_the_path(layouts):
    assert detect_refcoco_layout(layouts["refer"]) == "refer"
    assert detect_refcoco_layout(layouts["refer"] / "refs(unc).p") == "refer"
    assert detect_refcoco_layout(layouts["lmms"]) == "lmms-lab"
    assert detect_refcoco_layout(layouts["jxu"]) == "jxu124"
    assert detect_refcoco_layout(layouts["jxu"] / "data" / "testB-00000-of-00001.parquet") == "jxu124"
    assert detect_refcoco_layout(layouts["pr1"]["val"]) == "pr1"
    assert detect_refcoco_layout(layouts["root"] / "pr1") == "pr1"


def test_unknown_parquet_schema_is_a_data_error(tmp_path):
    Dataset.from_dict({"a": [1]}).to_parquet(tmp_path / "val-00000-of-00001.parquet")
    with pytest.raises(DataError, match="match none of lmms-lab"):
        build_refcoco(tmp_path, split="val")


def test_per_object_gives_one_row_per_referred_object_with_its_first_sentence(layouts):
    for ds in (
        build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"], per="object"),
        build_refcoco(layouts["lmms"], split="val", per="object"),
        build_refcoco(layouts["jxu"], split="val", image_dir=layouts["root"], per="object"),
        build_refcoco(layouts["pr1"]["val"], split="val", image_dir=layouts["root"] / "coco", per="object"),
    ):
        assert [_text(r) for r in ds.select_columns(["prompt"]).to_list()] == [
            "Output the bounding box of the man on the left in the image.",
            "Output the bounding box of the brown dog in the image.",
        ]


def test_sentence_key_raw_uses_the_original_text(layouts):
    ds = build_refcoco(layouts["refer"], split="testB", image_dir=layouts["images"], sentence_key="raw")
    assert (
        _text(ds.select_columns(["prompt"])[0]) == "Output the bounding box of the White car. in the image."
    )


def test_splits_match_exactly_not_by_substring(tmp_path, layouts):
    refs = [*REFS, {**REFS[2], "ref_id": 9, "split": "testAB", "sentences": [_sent(9, "not testA")]}]
    root = _write_refer(tmp_path / "refcoco", refs)
    ds = build_refcoco(root, split="testA", image_dir=layouts["images"])
    assert [_text(r) for r in ds.select_columns(["prompt"]).to_list()] == [
        "Output the bounding box of the woman in the image.",
        "Output the bounding box of the lady holding umbrella in the image.",
    ]
    assert len(build_refcoco(root, split="train", image_dir=layouts["images"])) == 1


def test_split_names_are_mapped_per_layout(layouts):
    assert len(build_refcoco(layouts["jxu"], split="validation", image_dir=layouts["root"])) == 3
    assert len(build_refcoco(layouts["jxu"], split="testA", image_dir=layouts["root"])) == 2
    with pytest.raises(ValueError, match="hold testA"):
        build_refcoco(layouts["jxu"], split="test", image_dir=layouts["root"])
    with pytest.raises(FileNotFoundError, match="no parquet files for split 'train'"):
        build_refcoco(layouts["lmms"], split="train")
    with pytest.raises(ValueError, match="unknown split"):
        build_refcoco(layouts["refer"], split="dev", image_dir=layouts["images"])
    with pytest.raises(ValueError, match="holds split 'val', not 'testA'"):
        build_refcoco(layouts["pr1"]["val"], split="testA", image_dir=layouts["root"] / "coco")


def test_refcocog_jxu_test_split_is_the_real_test(tmp_path, layouts):
    folder = _write_jxu(tmp_path / "jxu")
    (folder / "data" / "testB-00000-of-00001.parquet").unlink()
    # Without testB (refcocog), `test` is the test split itself.
    assert len(build_refcoco(folder, split="test", image_dir=layouts["root"])) == 2


def test_refer_pickle_is_chosen_by_split_by(tmp_path, layouts):
    root = _write_refer(tmp_path / "refcocog", REFS, name="refs(google).p")
    (root / "refs(umd).p").write_bytes(pickle.dumps(REFS[:1], protocol=2))
    assert len(build_refcoco(root, split="val", image_dir=layouts["images"])) == 2  # umd before google
    assert len(build_refcoco(root, split="val", image_dir=layouts["images"], split_by="google")) == 3
    with pytest.raises(FileNotFoundError, match=r"no refs\(unc\)\.p"):
        build_refcoco(root, split="val", image_dir=layouts["images"], split_by="unc")


def test_python2_pickle_with_latin1_bytes_loads(tmp_path, layouts):
    refs = [dict(REFS[0])]
    payload = pickle.dumps(refs, protocol=2)
    # Re-encode the 'raw' sentence as a Python 2 byte string holding a latin-1 character.
    raw = refs[0]["sentences"][0]["raw"].encode()
    py2 = payload.replace(
        b"X" + len(raw).to_bytes(4, "little") + raw, b"U" + bytes([len(raw) + 1]) + raw + b"\xe9"
    )
    assert py2 != payload
    root = _write_refer(tmp_path / "refcoco", refs)
    (root / "refs(unc).p").write_bytes(py2)
    ds = build_refcoco(root, split="val", image_dir=layouts["images"], sentence_key="raw")
    assert (
        _text(ds.select_columns(["prompt"])[0])
        == "Output the bounding box of the Man on the left.é in the image."
    )


def test_refs_pickle_with_code_is_refused(tmp_path, layouts):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    root = _write_refer(tmp_path / "refcoco")
    (root / "refs(unc).p").write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(
        DataError,
        match=r"refs\(unc\)\.p: not a plain-data pickle: refusing to load global (__builtin__|builtins)\.print",
    ):
        build_refcoco(root, split="val", image_dir=layouts["images"])


def test_family_adds_format_instruction_and_columns(layouts):
    ds = build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"], box_format="qwen2_5_vl")
    assert ds.column_names[-2:] == ["box_format", "input_size"]
    row = ds.select_columns(["prompt", "box_format", "input_size", "solution"])[0]
    assert _text(row).startswith("Output the bounding box of the man on the left in the image. ")
    assert len(_text(row)) > len("Output the bounding box of the man on the left in the image. ")
    assert row["box_format"] == "qwen2_5_vl"
    assert row["input_size"] == [56, 56]  # 64x48 on the 28 grid
    assert row["solution"] == [10.25, 5.5, 30.58, 18.21]  # unchanged without pixel limits


def test_template_and_system_prompt_override(layouts):
    ds = build_refcoco(
        layouts["refer"],
        split="testB",
        image_dir=layouts["images"],
        template="Find {question}.",
        system_prompt="Be exact.",
    )
    assert ds.select_columns(["prompt"])[0]["prompt"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be exact."}]},
        {
            "role": "user",
            "content": [{"type": "image", "text": None}, {"type": "text", "text": "Find white car."}],
        },
    ]


def test_pixel_limits_resize_images_and_scale_boxes(layouts):
    plain = build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"])
    fitted = build_refcoco(
        layouts["refer"],
        split="val",
        image_dir=layouts["images"],
        box_format="qwen2_vl",
        min_pixels=784,
        max_pixels=2000,
    )
    row = fitted[0]
    target = grid_size((64, 48), "qwen2_vl", min_pixels=784, max_pixels=2000)
    assert target == (28, 28)
    assert row["image"].size == tuple(row["image_size"]) == tuple(row["input_size"]) == target
    sx, sy = 28 / 64, 28 / 48
    back = [v / s for v, s in zip(row["solution"], (sx, sy, sx, sy))]
    assert np.allclose(back, plain[0]["solution"], atol=1.0)


def test_sampling_is_deterministic(layouts):
    a = build_refcoco(layouts["jxu"], split="val", image_dir=layouts["root"], num_samples=2, seed=3)
    b = build_refcoco(layouts["jxu"], split="val", image_dir=layouts["root"], num_samples=2, seed=3)
    assert len(a) == 2
    assert a.select_columns(["prompt"]).to_list() == b.select_columns(["prompt"]).to_list()
    assert len(build_refcoco(layouts["jxu"], split="val", image_dir=layouts["root"], num_samples=50)) == 3


# ------------------------------------------------------------------------------------------------
# Bad input: a clear DataError by default, a counted skip with on_error="skip".


def test_missing_image_raises_naming_file_and_record(tmp_path, layouts):
    images = tmp_path / "images"
    _write_images(images)
    (images / "COCO_train2014_000000000009.jpg").unlink()
    with pytest.raises(
        DataError, match=r"refs\(unc\)\.p: record 0 \(ref_id 0\): image not found .*000000000009\.jpg"
    ):
        build_refcoco(layouts["refer"], split="val", image_dir=images)


def test_missing_image_is_skipped_and_counted(tmp_path, layouts):
    images = tmp_path / "images"
    _write_images(images)
    (images / "COCO_train2014_000000000009.jpg").unlink()
    with pytest.warns(DataWarning, match=r"skipped 2 of 2 records from .*refs\(unc\)\.p: 2 missing image"):
        ds = build_refcoco(layouts["refer"], split="val", image_dir=images, on_error="skip")
    assert len(ds) == 0


def test_negative_width_bbox_both_modes(tmp_path, layouts):
    anns = [dict(a) for a in ANNS]
    anns[1]["bbox"] = [40.0, 20.0, -15.5, 20.0]
    root = _write_refer(tmp_path / "refcoco", anns=anns)
    with pytest.raises(DataError, match=r"record 1 \(ref_id 1\): bbox of ann_id 102 .* non-positive width"):
        build_refcoco(root, split="val", image_dir=layouts["images"])
    with pytest.warns(DataWarning, match=r"skipped 1 of 2 records from .*: 1 bad bbox"):
        ds = build_refcoco(root, split="val", image_dir=layouts["images"], on_error="skip")
    assert len(ds) == 2


def test_unknown_annotation_both_modes(tmp_path, layouts):
    refs = [dict(r) for r in REFS]
    refs[0]["ann_id"] = 999
    root = _write_refer(tmp_path / "refcoco", refs)
    with pytest.raises(DataError, match="record 0 \\(ref_id 0\\): ann_id 999 is not in instances.json"):
        build_refcoco(root, split="val", image_dir=layouts["images"])
    with pytest.warns(DataWarning, match="1 bad record"):
        assert len(build_refcoco(root, split="val", image_dir=layouts["images"], on_error="skip")) == 1


def test_malformed_json_line_both_modes(tmp_path, layouts):
    good = json.loads(layouts["pr1"]["val"].read_text())
    path = tmp_path / "refcoco_val.jsonl"
    path.write_text(
        "\n".join([json.dumps(good[0]), '{"image": "train2014/x.jpg", "problem": ', json.dumps(good[2])])
        + "\n"
    )
    with pytest.raises(DataError, match=r"refcoco_val\.jsonl: line 2: not valid JSON"):
        build_refcoco(path, split="val", image_dir=layouts["root"] / "coco")
    with pytest.warns(DataWarning, match="skipped 1 of 3 records .*: 1 bad json"):
        assert len(build_refcoco(path, split="val", image_dir=layouts["root"] / "coco", on_error="skip")) == 2


def test_truncated_files_raise_in_both_modes(tmp_path, layouts):
    root = _write_refer(tmp_path / "refcoco")
    data = (root / "refs(unc).p").read_bytes()
    (root / "refs(unc).p").write_bytes(data[: len(data) // 2])
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=r"refs\(unc\)\.p: not a plain-data pickle"):
            build_refcoco(root, split="val", image_dir=layouts["images"], on_error=mode)
    pr1 = tmp_path / "refcoco_val.json"
    pr1.write_text(layouts["pr1"]["val"].read_text()[:-40])
    with pytest.raises(DataError, match=r"refcoco_val\.json: not valid JSON \(truncated file\?\)"):
        build_refcoco(pr1, split="val", image_dir=layouts["root"] / "coco", on_error="skip")
    parquet = tmp_path / "lmms" / "val-00000-of-00001.parquet"
    parquet.parent.mkdir()
    source = (layouts["lmms"] / "data" / "val-00000-of-00001.parquet").read_bytes()
    parquet.write_bytes(source[: len(source) // 2])
    with pytest.raises(DataError, match="not a readable parquet file"):
        build_refcoco(parquet, split="val", on_error="skip")


def test_unreadable_embedded_image_both_modes(tmp_path, layouts):
    folder = tmp_path / "lmms"
    ds = Dataset.from_parquet(str(layouts["lmms"] / "data" / "val-00000-of-00001.parquet"))
    ds = ds.cast_column("image", Image(decode=False))
    rows = ds.to_list()
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    Dataset.from_list(rows, features=FEATURES_LMMS).to_parquet(folder / "val-00000-of-00001.parquet")
    with pytest.raises(DataError, match="row 1: image bytes cannot be read"):
        build_refcoco(folder, split="val")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_refcoco(folder, split="val", on_error="skip")
    assert len(ds) == 2
    assert [str(w.message).split(": ", 1)[1] for w in caught if w.category is DataWarning] == [
        "1 unreadable image"
    ]


def test_box_outside_the_image_is_a_bad_bbox(tmp_path, layouts):
    anns = [dict(a) for a in ANNS]
    anns[1]["bbox"] = [100.0, 100.0, 5.0, 5.0]
    root = _write_refer(tmp_path / "refcoco", anns=anns)
    with pytest.raises(DataError, match="lies outside the 64x48 image"):
        build_refcoco(root, split="val", image_dir=layouts["images"])


def test_box_slightly_past_the_border_is_clipped(tmp_path, layouts):
    anns = [dict(a) for a in ANNS]
    anns[1]["bbox"] = [40.0, 20.0, 30.0, 30.0]
    root = _write_refer(tmp_path / "refcoco", anns=anns)
    ds = build_refcoco(root, split="val", image_dir=layouts["images"])
    assert ds[2]["solution"] == [40.0, 20.0, 64.0, 48.0]


def test_bad_options_are_value_errors(layouts):
    with pytest.raises(ValueError, match="per must be"):
        build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"], per="image")
    with pytest.raises(ValueError, match="pass box_format"):
        build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"], max_pixels=1000)
    with pytest.raises(ValueError, match="on_error"):
        build_refcoco(layouts["refer"], split="val", image_dir=layouts["images"], on_error="ignore")
    with pytest.raises(ValueError, match="pass image_dir"):
        build_refcoco(layouts["jxu"], split="val")


def test_embedded_image_bytes_are_what_the_row_decodes(layouts):
    ds = build_refcoco(layouts["lmms"], split="testB")
    buf = io.BytesIO((layouts["images"] / "COCO_train2014_000000000030.jpg").read_bytes())
    assert np.array_equal(np.asarray(ds[0]["image"]), np.asarray(PILImage.open(buf)))


scalars = (
    st.none() | st.booleans() | st.integers(-3, 100) | st.floats() | st.text(max_size=4) | st.just("a.jpg")
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=8,
)
pr1_like = (
    st.fixed_dictionaries(
        {"image": scalars, "problem": scalars, "solution": st.lists(scalars, max_size=5) | values}
    )
    | values
)


@settings(max_examples=60)
@given(st.lists(pr1_like, max_size=4), st.sampled_from(["sentence", "object"]))
def test_any_flat_json_content_builds_or_raises_data_error(tmp_path_factory, records, per):
    folder = tmp_path_factory.mktemp("pr1")
    PILImage.new("RGB", (16, 12)).save(folder / "a.jpg")
    path = folder / "refcoco_val.json"
    path.write_text(json.dumps(records))
    for mode in ("raise", "skip"):
        with warnings.catch_warnings(), contextlib.suppress(DataError):
            warnings.simplefilter("ignore", DataWarning)
            build_refcoco(path, split="val", image_dir=folder, per=per, on_error=mode)


@settings(max_examples=60)
@given(st.lists(values, max_size=4))
def test_any_refs_pickle_content_builds_or_raises_data_error(tmp_path_factory, refs):
    root = _write_refer(tmp_path_factory.mktemp("refer") / "refcoco")
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    for mode in ("raise", "skip"):
        with warnings.catch_warnings(), contextlib.suppress(DataError):
            warnings.simplefilter("ignore", DataWarning)
            build_refcoco(root, split="val", image_dir=root, on_error=mode)


def test_lmms_rows_without_embedded_bytes_are_found_by_file_name(tmp_path, layouts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(layouts["lmms"] / "data" / "testB-00000-of-00001.parquet")
    image = table.column("image").combine_chunks()
    no_bytes = pa.StructArray.from_arrays(
        [pa.nulls(len(image), pa.binary()), pa.nulls(len(image), pa.string())], names=["bytes", "path"]
    )
    table = table.set_column(table.schema.get_field_index("image"), "image", no_bytes)
    pq.write_table(table, tmp_path / "testB-00000-of-00001.parquet")
    with pytest.raises(DataError, match="row 0: image not found"):
        build_refcoco(tmp_path / "testB-00000-of-00001.parquet", split="testB")
    built = build_refcoco(tmp_path / "testB-00000-of-00001.parquet", split="testB", image_dir=layouts["images"])
    stored = built.cast_column("image", Image(decode=False))[0]["image"]
    assert stored == {"bytes": None, "path": str(layouts["images"] / "COCO_train2014_000000000030.jpg")}
    assert (
        _comparable(built)[0]
        == _comparable(build_refcoco(layouts["refer"], split="testB", image_dir=layouts["images"]))[0]
    )


def test_lone_surrogates_in_sentences_become_the_replacement_character(tmp_path, layouts):
    refs = [dict(REFS[1], sentences=[_sent(2, "brown\ud800 dog")])]
    root = _write_refer(tmp_path / "refcoco", refs)  # the pickle stores the surrogate as bytes ED A0 80
    ds = build_refcoco(root, split="val", image_dir=layouts["images"])
    assert _text(ds.select_columns(["prompt"])[0]) == "Output the bounding box of the brown\ufffd dog in the image."
    # Perception-R1's flat JSON, where the sentence is a JSON escape.
    path = tmp_path / "pr1" / "refcoco_val.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"image": "train2014/" + IMAGES[0]["file_name"], "problem": "left\udfff man",
                                 "solution": [1, 2, 30, 40], "normalized_solution": [1, 2, 300, 400]}]))  # fmt: skip
    ds = build_refcoco(path, image_dir=layouts["root"] / "coco")
    assert "left\ufffd man" in _text(ds.select_columns(["prompt"])[0])
