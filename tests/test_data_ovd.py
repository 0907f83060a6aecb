"""Specification of the open-vocabulary detection builder (`data.ovd.build_ovd`)."""

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trl_perception.data import DataError, DataWarning, build_dataset
from trl_perception.data.ovd import build_ovd
from trl_perception.formats import render_objects
from trl_perception.rewards import od_ap_reward, od_length_reward

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 2, "name": "cat", "supercategory": "animal"},
    {"id": 3, "name": "dog", "supercategory": "animal"},
    {"id": 4, "name": "horse", "supercategory": "animal"},
    {"id": 5, "name": "car", "supercategory": "vehicle"},
    {"id": 6, "name": "bus", "supercategory": "vehicle"},
    {"id": 7, "name": "cup", "supercategory": "kitchen"},
]


def write_images(root, names, size=(64, 48)):
    for name in names:
        Image.new("RGB", size, (120, 120, 120)).save(root / name)


def coco_file(tmp_path, images=None, annotations=None, categories=CATEGORIES, write=True):
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        {"id": 3, "file_name": "c.png", "width": 64, "height": 48},
    ]  # fmt: skip
    annotations = annotations if annotations is not None else [
        {"id": 10, "image_id": 1, "category_id": 2, "bbox": [1, 2, 10, 10], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20, 5, 10, 20], "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 2, "bbox": [40, 30, 8, 8], "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 5, "bbox": [0, 0, 30, 20], "iscrowd": 0},
    ]  # fmt: skip
    if write:
        write_images(tmp_path, [im["file_name"] for im in images if "file_name" in im])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def meta(ds):
    return ds.select_columns([c for c in ds.column_names if c != "image"])[:]


def phrases_of(prompt):
    text = prompt[-1]["content"][1]["text"]
    listed = text.split("following objects: ", 1)[1].split(". If none", 1)[0]
    return listed.split(", ")


# ------------------------------------------------------------------------------------------ COCO-style


def test_rows_ask_present_and_absent_phrases_and_solve_only_the_asked(tmp_path):
    ds = build_ovd(coco_file(tmp_path), image_dir=tmp_path, num_negatives=2, seed=0)
    rows = meta(ds)
    assert rows["task"] == ["ovd"] * 3
    first = phrases_of(rows["prompt"][0])
    assert {"cat", "dog"} <= set(first) and len(first) == 4
    assert not {"cat", "dog"} & (set(first) - {"cat", "dog"})
    assert rows["solution"][0] == [
        {"bbox_2d": [1.0, 2.0, 11.0, 12.0], "label": "cat"},
        {"bbox_2d": [20.0, 5.0, 30.0, 25.0], "label": "dog"},
        {"bbox_2d": [40.0, 30.0, 48.0, 38.0], "label": "cat"},
    ]
    # image 3 has no annotation: only absent phrases, solution []
    assert len(phrases_of(rows["prompt"][2])) == 2 and rows["solution"][2] == []
    assert rows["image_size"] == [[64, 48]] * 3


def test_the_draw_is_deterministic_per_seed(tmp_path):
    path = coco_file(tmp_path)
    a = meta(build_ovd(path, image_dir=tmp_path, num_negatives=3, seed=1))["prompt"]
    b = meta(build_ovd(path, image_dir=tmp_path, num_negatives=3, seed=1))["prompt"]
    others = [meta(build_ovd(path, image_dir=tmp_path, num_negatives=3, seed=s))["prompt"] for s in range(2, 8)]
    assert a == b
    assert any(o != a for o in others)


@given(st.integers(0, 1000), st.integers(0, 6))
@settings(max_examples=25)
def test_negatives_are_never_present_categories(tmp_path_factory, seed, k):
    root = tmp_path_factory.mktemp("ovd")
    rows = meta(build_ovd(coco_file(root), image_dir=root, num_negatives=k, seed=seed))
    present = [{"cat", "dog"}, {"car"}, set()]
    for prompt, solution, here in zip(rows["prompt"], rows["solution"], present):
        phrases = set(phrases_of(prompt))
        assert here <= phrases
        assert len(phrases - here) == min(k, 7 - len(here))
        assert {o["label"] for o in solution} == here


def test_similar_negatives_come_from_the_supercategories_present(tmp_path):
    rows = meta(build_ovd(coco_file(tmp_path), image_dir=tmp_path, num_negatives=1, negatives="similar", seed=3))
    assert set(phrases_of(rows["prompt"][0])) - {"cat", "dog"} == {"horse"}  # the other animal
    assert set(phrases_of(rows["prompt"][1])) - {"car"} == {"bus"}  # the other vehicle


def test_negative_only_rate_and_keep_empty(tmp_path):
    path = coco_file(tmp_path)
    rows = meta(build_ovd(path, image_dir=tmp_path, num_negatives=2, negative_only_rate=1.0))
    assert rows["solution"] == [[], [], []]
    for prompt, present in zip(rows["prompt"], [{"cat", "dog"}, {"car"}, set()]):
        assert not present & set(phrases_of(prompt))
    assert len(build_ovd(path, image_dir=tmp_path, keep_empty=False)) == 2


def test_num_negatives_none_lists_every_absent_category(tmp_path):
    rows = meta(build_ovd(coco_file(tmp_path), image_dir=tmp_path, num_negatives=None))
    assert sorted(phrases_of(rows["prompt"][0])) == sorted(c["name"] for c in CATEGORIES)


def test_max_positives_caps_the_present_phrases(tmp_path):
    rows = meta(build_ovd(coco_file(tmp_path), image_dir=tmp_path, num_negatives=0, max_positives=1))
    assert len(phrases_of(rows["prompt"][0])) == 1
    assert {o["label"] for o in rows["solution"][0]} == set(phrases_of(rows["prompt"][0]))


def test_crowd_only_categories_are_not_asked(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "iscrowd": 1},
    ]
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    rows = meta(build_ovd(coco_file(tmp_path, images, anns), image_dir=tmp_path, num_negatives=None))
    assert "person" not in phrases_of(rows["prompt"][0])  # present (crowd) but not boxable: neither side
    assert "cat" in phrases_of(rows["prompt"][0])


def test_lvis_verified_negatives_and_not_exhaustive_categories(tmp_path):
    images = [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/a.png", "width": 64, "height": 48,
               "neg_category_ids": [6, 7], "not_exhaustive_category_ids": [3]}]  # fmt: skip
    anns = [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [10, 10, 5, 5]},
    ]
    (tmp_path / "val2017").mkdir()
    write_images(tmp_path / "val2017", ["a.png"])
    path = coco_file(tmp_path, images, anns, write=False)
    rows = meta(build_ovd(path, image_dir=tmp_path, num_negatives=None))
    assert sorted(phrases_of(rows["prompt"][0])) == ["bus", "cat", "cup"]  # dog: not exhaustive; others unknown
    assert rows["solution"][0] == [{"bbox_2d": [1.0, 1.0, 6.0, 6.0], "label": "cat"}]


def test_ovdeval_text_and_neg_text(tmp_path):
    cats = [{"id": 0, "name": "computer with screen on"}, {"id": 1, "name": "computer without screen on"}]
    images = [{"id": 0, "file_name": "a.png", "width": 64, "height": 48,
               "text": ["computer without screen on"], "neg_text": ["computer with screen on", "a laptop made of wood"]}]  # fmt: skip
    anns = [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [3, 4, 20, 10], "iscrowd": 0, "area": 200}]
    rows = meta(build_ovd(coco_file(tmp_path, images, anns, cats), image_dir=tmp_path, num_negatives=None))
    assert sorted(phrases_of(rows["prompt"][0])) == sorted(
        ["computer without screen on", "computer with screen on", "a laptop made of wood"]
    )
    assert [o["label"] for o in rows["solution"][0]] == ["computer without screen on"]


def test_bad_records_raise_naming_file_and_record(tmp_path):
    anns = [{"id": 7, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]}]
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    with pytest.raises(DataError, match=r"instances\.json: image 0 \(id 1.*annotation 0 \(id 7\).*category_id 99"):
        build_ovd(coco_file(tmp_path, images, anns), image_dir=tmp_path)
    anns = [{"id": 8, "image_id": 1, "category_id": 2, "bbox": [1, 1, "x", 5]}]
    with pytest.raises(DataError, match=r"annotation 0 \(id 8\).*bbox"):
        build_ovd(coco_file(tmp_path, images, anns), image_dir=tmp_path)
    anns = [{"id": 9, "image_id": 5, "category_id": 2, "bbox": [1, 1, 5, 5]}]
    with pytest.raises(DataError, match=r"annotation 0 \(id 9\).*image_id 5"):
        build_ovd(coco_file(tmp_path, images, anns), image_dir=tmp_path)


def test_missing_image_raises_or_is_skipped_and_counted(tmp_path):
    path = coco_file(tmp_path)
    (tmp_path / "b.png").unlink()
    with pytest.raises(DataError, match=r"image 1 \(id 2\), b\.png: b\.png not found"):
        build_ovd(path, image_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_ovd(path, image_dir=tmp_path, on_error="skip")
    assert len(ds) == 2
    assert any(issubclass(w.category, DataWarning) and "1 missing image" in str(w.message) for w in caught)


def test_options_are_checked(tmp_path):
    path = coco_file(tmp_path)
    with pytest.raises(ValueError, match="negatives"):
        build_ovd(path, image_dir=tmp_path, negatives="hard")
    with pytest.raises(ValueError, match="split"):
        build_ovd(path, image_dir=tmp_path, split="val")
    with pytest.raises(DataError, match="COCO object"):
        (tmp_path / "bad.json").write_text('{"images": []}')
        build_ovd(tmp_path / "bad.json", image_dir=tmp_path)


# --------------------------------------------------------------------------------------- VLM-R1 jsonl


def test_vlm_r1_jsonl_rows(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"], size=(80, 60))
    lines = [
        {"id": 1, "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>Please carefully check the image and detect the following objects: cat, dog."},
            {"from": "gpt", "value": '```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}]\n```'}]},
        {"id": 2, "image": ["b.png"], "conversations": [
            {"from": "human", "value": "<image>\nFind: zebra."}, {"from": "gpt", "value": "<answer>None</answer>"}]},
    ]  # fmt: skip
    path = tmp_path / "ovd.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    rows = meta(build_ovd(path, image_dir=tmp_path, box_format="qwen2_5_vl"))
    assert rows["solution"] == [[{"bbox_2d": [1.0, 2.0, 30.0, 40.0], "label": "cat"}], []]
    assert rows["image_size"] == [[80, 60], [80, 60]]
    text = rows["prompt"][1][-1]["content"][1]["text"]
    assert text.startswith("Find: zebra.") and "bbox_2d" in text


def test_vlm_r1_jsonl_bad_lines_name_the_line(tmp_path):
    write_images(tmp_path, ["a.png"])
    path = tmp_path / "ovd.jsonl"
    path.write_text(json.dumps({"image": ["a.png", "a.png"], "conversations": []}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"ovd\.jsonl: line 1: OVD rows have one image"):
        build_ovd(path, image_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(build_ovd(path, image_dir=tmp_path, on_error="skip")) == 0


# ------------------------------------------------------------------------------- frames and rewards


@pytest.mark.parametrize("box_format", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_rows_fit_the_grid_and_the_rewards_read_them(tmp_path, box_format):
    ds = build_ovd(coco_file(tmp_path), image_dir=tmp_path, num_negatives=2, box_format=box_format, min_pixels=1024, max_pixels=40_000)
    rows = meta(ds)
    assert rows["box_format"] == [box_format] * 3
    assert ds[0]["image"].size == tuple(rows["image_size"][0]) == tuple(rows["input_size"][0])
    assert "bbox_2d" in rows["prompt"][0][-1]["content"][1]["text"] or "box_start" in rows["prompt"][0][-1]["content"][1]["text"]
    answers = [
        render_objects(sol, box_format, size, inp) if sol else "None"
        for sol, size, inp in zip(rows["solution"], rows["image_size"], rows["input_size"])
    ]
    columns = {k: rows[k] for k in ("task", "box_format", "image_size", "input_size")}
    assert min(od_ap_reward(answers, rows["solution"], **columns)) > 0.85
    assert od_length_reward(["None"] * 3, rows["solution"], **columns) == [0.0, 0.0, 1.0]


def test_mixed_task_datasets_concatenate_and_route(tmp_path):
    from datasets import concatenate_datasets

    from trl_perception.data import make_synthetic

    ovd = build_ovd(coco_file(tmp_path), image_dir=tmp_path)
    det = make_synthetic("detection", 2, seed=0)
    parts = [d.map(lambda row: {"solution": json.dumps(row["solution"])}) for d in (ovd, det)]
    mixed = concatenate_datasets(parts)
    rows = meta(mixed)
    rewards = od_ap_reward(["None"] * len(mixed), rows["solution"], task=rows["task"])
    assert rewards == [0.0, 0.0, 1.0, None, None]


def test_build_dataset_dispatches_ovd(tmp_path):
    ds = build_dataset("ovd", coco_file(tmp_path), image_dir=tmp_path, num_samples=2, seed=0)
    assert len(ds) == 2 and set(ds["task"]) == {"ovd"}


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_ovd_rows_ask_present_and_absent_shapes():
    from trl_perception.data.synthetic import _Options, _sample, _sample_rng, make_synthetic

    ds = make_synthetic("ovd", 40, seed=0, box_format="qwen2_5_vl")
    rows = meta(ds)
    assert set(rows["task"]) == {"ovd"}
    negative_only = 0
    for prompt, solution in zip(rows["prompt"], rows["solution"]):
        phrases = phrases_of(prompt)
        assert {o["label"] for o in solution} <= set(phrases)
        negative_only += solution == []
    assert 0 < negative_only < 40
    # the absent phrases are absent from the picture: every drawn shape's label is either asked with its box
    # or not asked at all
    opts = _Options((112, 112), None, None, None, None, None, 0.0, ("square", "circle", "triangle"),
                    ("red", "green", "blue", "yellow"), "mixed", "en", None, True)  # fmt: skip
    for i in range(20):
        _, solution, fields, objects = _sample("ovd", _sample_rng(0, "ovd", i), opts)
        drawn = {o["label"] for o in objects}
        asked = set(fields["phrases"].split(", "))
        solved = {o["label"] for o in solution}
        assert solved == (asked & drawn) or (solved == set() and not asked & drawn)
        assert len(asked - drawn) == 2
    assert meta(make_synthetic("ovd", 5, seed=3)) == meta(make_synthetic("ovd", 5, seed=3))


def test_synthetic_mixed_stays_the_four_paper_tasks():
    from trl_perception.data.synthetic import make_synthetic

    assert set(make_synthetic("mixed", 30, seed=0)["task"]) == {"grounding", "counting", "ocr", "detection"}
    assert set(make_synthetic(["ovd", "detection"], 10, seed=0)["task"]) == {"ovd", "detection"}


hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
    st.lists(st.one_of(st.integers(-5, 80), st.floats(allow_nan=True), st.text(max_size=2)), max_size=5),
)  # fmt: skip


@given(st.lists(st.fixed_dictionaries({"id": hostile, "image_id": st.one_of(st.sampled_from([1, 2]), hostile),
                                       "category_id": st.one_of(st.sampled_from([1, 2, 3]), hostile),
                                       "bbox": st.one_of(st.lists(st.integers(-5, 80), min_size=4, max_size=4), hostile),
                                       "iscrowd": st.sampled_from([0, 1])}), max_size=6))  # fmt: skip
@settings(max_examples=60)
def test_hostile_annotations_raise_data_error_or_build(tmp_path_factory, annotations):
    root = tmp_path_factory.mktemp("hostile")
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}, {"id": 2, "file_name": "b.png", "width": 64, "height": 48}]
    path = coco_file(root, images, annotations)
    try:
        ds = build_ovd(path, image_dir=root, num_negatives=2)
    except DataError as err:
        assert "instances.json" in str(err)
        return
    for solution, size in zip(meta(ds)["solution"], meta(ds)["image_size"]):
        for obj in solution:
            x1, y1, x2, y2 = obj["bbox_2d"]
            assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_ovd(path, image_dir=root, num_negatives=2, on_error="skip")
