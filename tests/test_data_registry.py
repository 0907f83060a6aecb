"""The task → builder registry: `build_dataset` picks the registered builder for a task, each builder finds
its images where its source usually keeps them, `"synthetic"` makes rows, and a new task registers with
one decorator."""

import json
import pickle

import pytest
from PIL import Image as PILImage

from trl_perception.data import BUILDERS, build_dataset, register_builder
from trl_perception.data.coco import build_coco_detection
from trl_perception.data.pageocr import build_pageocr
from trl_perception.data.pixmo_count import build_pixmo_count
from trl_perception.data.refcoco import build_refcoco


def test_every_task_has_its_builder():
    assert BUILDERS["grounding"] is build_refcoco
    assert BUILDERS["counting"] is build_pixmo_count
    assert BUILDERS["ocr"] is build_pageocr
    assert BUILDERS["detection"] is build_coco_detection


@pytest.mark.parametrize("task", sorted(BUILDERS))
def test_every_builder_takes_the_same_options(task):
    import inspect

    shared = ["split", "image_dir", "num_samples", "seed", "on_error", "box_format", "min_pixels", "max_pixels"]
    parameters = inspect.signature(BUILDERS[task]).parameters
    assert list(parameters)[0] == "source"
    assert all(name in parameters and parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in shared)


def test_a_new_task_registers_with_one_decorator(tmp_path):
    calls = []

    @register_builder("toy")
    def build_toy(source, *, num_samples=None, seed=0, **options):
        calls.append((source, num_samples, seed, options))
        return "dataset"

    try:
        assert build_dataset("toy", tmp_path, num_samples=3, seed=1, on_error="skip") == "dataset"
        assert calls == [(tmp_path, 3, 1, {"on_error": "skip"})]
        with pytest.raises(ValueError, match="already has a builder"):
            register_builder("toy")(lambda source, **options: None)
    finally:
        del BUILDERS["toy"]


def test_synthetic_source_makes_rows():
    ds = build_dataset("detection", "synthetic", num_samples=3, seed=0, on_error="raise")
    assert len(ds) == 3 and set(ds["task"]) == {"detection"}
    assert len(build_dataset("grounding", "synthetic")) == 16


def _coco(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    PILImage.new("RGB", (64, 48), "white").save(tmp_path / "val2017" / "1.jpg")
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
                "categories": [{"id": 3, "name": "car"}],
                "annotations": [
                    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0}
                ],
            }
        )
    )
    return path


def test_detection_source_finds_the_coco_image_folder(tmp_path):
    ds = build_dataset("detection", _coco(tmp_path))
    assert ds.select_columns(["solution"])[0]["solution"] == [
        {"bbox_2d": [1.0, 2.0, 11.0, 22.0], "label": "car"}
    ]
    assert ds[0]["image"].size == (64, 48)


def test_grounding_source_takes_the_split_from_a_perception_r1_file_name(tmp_path):
    PILImage.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    path = tmp_path / "refcoco_testB.json"
    path.write_text(json.dumps([{"image": "a.jpg", "problem": "car", "solution": [1, 2, 30, 40], "normalized_solution": [15, 41, 468, 833]}]))
    ds = build_dataset(
        "grounding", path, image_dir=tmp_path, box_format="qwen2_vl", num_samples=4, seed=0
    )
    assert ds.select_columns(["solution", "box_format"])[0] == {
        "solution": [1.0, 2.0, 30.0, 40.0],
        "box_format": "qwen2_vl",
    }


def test_grounding_source_in_the_refer_layout(tmp_path):
    PILImage.new("RGB", (64, 48)).save(tmp_path / "COCO_train2014_000000000001.jpg")
    (tmp_path / "instances.json").write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64, "height": 48}
                ],
                "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
            }
        )
    )
    refs = [{"ref_id": 0, "ann_id": 9, "image_id": 1, "split": "testA", "sentences": [{"sent": "it"}]}]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    assert len(build_dataset("grounding", tmp_path, split="testA", image_dir=tmp_path)) == 1
    assert len(build_dataset("grounding", tmp_path, image_dir=tmp_path)) == 0  # val by default


def test_ocr_and_counting_sources_default_to_the_files_folder(tmp_path):
    PILImage.new("RGB", (30, 40)).save(tmp_path / "en_1.png")
    fox = [
        {
            "image": "en_1.png",
            "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "hi"}],
        }
    ]
    (tmp_path / "en_page_ocr.json").write_text(json.dumps(fox))
    assert build_dataset("ocr", tmp_path / "en_page_ocr.json").select_columns(["solution"])[0] == {
        "solution": "hi"
    }
    (tmp_path / "pixmo_count_val540.jsonl").write_text(
        json.dumps({"image_path": "en_1.png", "question": "dots", "ground_truth": 2})
    )
    ds = build_dataset("counting", tmp_path / "pixmo_count_val540.jsonl")
    assert ds.select_columns(["solution"])[0] == {"solution": {"count": 2, "points": None}}


def test_bad_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        build_dataset("segmentation", "synthetic")
    with pytest.raises(FileNotFoundError):
        build_dataset("ocr", tmp_path / "missing.json")
    with pytest.raises(ValueError, match="takes no split"):
        build_dataset("detection", _coco(tmp_path), split="val")
    with pytest.raises(ValueError, match="synthetic source takes no"):
        build_dataset("ocr", "synthetic", image_dir=tmp_path)


