"""Dataset preview: a grid with the ground truth drawn on each row's image (the CLI's `data preview`)."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from trl_perception.data.preview import caption_for, render_preview
from trl_perception.data.prompts import build_prompt
from trl_perception.data.rows import rows_to_dataset
from trl_perception.data.synthetic import make_synthetic
from trl_perception.viz import GT_COLOR


def _green_pixels(path):
    pixels = np.asarray(PILImage.open(path).convert("RGB")).reshape(-1, 3)
    return int((pixels == np.array(GT_COLOR)).all(axis=1).sum())


def _row(task, solution, size=(120, 90), **fields):
    return {
        "prompt": build_prompt(task, **fields),
        "image": PILImage.new("RGB", size, "white"),
        "task": task,
        "solution": solution,
        "image_size": list(size),
    }


def test_preview_draws_the_ground_truth(tmp_path):
    boxed = rows_to_dataset([_row("grounding", [10.0, 10.0, 60.0, 50.0], question="thing")])
    empty = rows_to_dataset([_row("ocr", "no boxes here")])
    assert _green_pixels(render_preview(boxed, tmp_path / "a.png")) > 50
    assert _green_pixels(render_preview(empty, tmp_path / "b.png")) == 0


@pytest.mark.parametrize("task", ["grounding", "counting", "ocr", "detection", "mixed"])
def test_preview_of_every_task_writes_a_grid(tmp_path, task):
    ds = make_synthetic(task, 6, seed=1)
    out = render_preview(ds, tmp_path / "sub" / "preview.png", n=5, ncols=3)
    assert out == str(tmp_path / "sub" / "preview.png")
    image = PILImage.open(out)
    assert image.format == "PNG"
    assert image.width > image.height  # 3 columns, 2 rows of small square images
    if task != "ocr":
        assert _green_pixels(out) > 0


def test_captions_summarise_each_task():
    assert caption_for(
        _row("detection", [{"bbox_2d": [0, 0, 1, 1], "label": "cat"}] * 2, categories="cat")
    ) == ("detection 120x90: 2 objects: cat×2")
    assert caption_for(_row("ocr", "Hello\n  world", size=(10, 20))) == "ocr 10x20: Hello world"
    mixed = {**_row("counting", json.dumps({"count": 2, "points": [[1, 1], [2, 2]]}), label="dots")}
    assert caption_for(mixed) == "counting 120x90: Output all the bounding boxes of the dots -> 2"
    assert len(caption_for(_row("ocr", "x" * 500), max_chars=50)) == 50


def test_preview_rejects_nonpositive_n(tmp_path):
    with pytest.raises(ValueError, match="n must be positive"):
        render_preview(rows_to_dataset([_row("ocr", "x")]), tmp_path / "a.png", n=0)


# ------------------------------------------------------------------------------------------------
# The command line


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


def test_cli_data_preview_writes_the_grid(tmp_path, capsys):
    from trl_perception.cli import main

    path = _coco(tmp_path)
    out = tmp_path / "preview.png"
    assert (
        main(["data", "preview", "--task", "detection", "--source", str(path), "--out", str(out), "--n", "4"])
        == 0
    )
    assert _green_pixels(out) > 0
    assert "Wrote" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Hostile category names and output paths


# Arrow (so every dataset) refuses lone surrogates: a dataset's names can hold every other character.
HOSTILE_NAMES = ["cat\r", "a\x1cb\x1dc\x1e", "cat\x85dog", "cat\u2029", "line\nbreak", "\x00\x1b[2J", "\u2028"]


def _coco_named(tmp_path, names):
    PILImage.new("RGB", (64, 48), "white").save(tmp_path / "a.jpg")
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    annotations = [{"id": i + 1, "image_id": 1, "category_id": i + 1, "bbox": [2 + i, 2, 20, 20], "area": 400,
                    "iscrowd": 0} for i in range(len(names))]  # fmt: skip
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
                                "categories": categories, "annotations": annotations}))  # fmt: skip
    return path


def test_preview_draws_category_names_with_any_characters(tmp_path):
    rows = [_row("detection", [{"bbox_2d": [5.0, 5.0, 60.0, 50.0], "label": name}], categories=name) for name in HOSTILE_NAMES]
    out = render_preview(rows_to_dataset(rows), tmp_path / "hostile.png", n=len(rows))
    assert _green_pixels(out) > 0


def test_captions_are_one_drawable_line():
    caption = caption_for({"task": "detection", "solution": [{"bbox_2d": [1, 1, 5, 5], "label": "cat\r\x1c\u2029\ud800"}],
                           "image_size": [8, 8]})  # fmt: skip
    assert caption == "detection 8x8: 1 objects: cat \ufffd" and caption.encode("utf-8")


def test_cli_data_preview_of_a_coco_file_with_hostile_category_names(tmp_path, capsys):
    from trl_perception.cli import main

    out = tmp_path / "p.png"
    status = main(["data", "preview", "--task", "detection", "--source", str(_coco_named(tmp_path, HOSTILE_NAMES)),
                   "--image-dir", str(tmp_path), "--out", str(out)])  # fmt: skip
    assert status == 0 and _green_pixels(out) > 0


def test_an_output_without_extension_is_a_png(tmp_path):
    ds = rows_to_dataset([_row("grounding", [10.0, 10.0, 60.0, 50.0], question="thing")])
    out = render_preview(ds, tmp_path / "preview")
    assert PILImage.open(out).format == "PNG"


def test_an_unknown_output_extension_is_refused_before_drawing(tmp_path):
    ds = rows_to_dataset([_row("grounding", [10.0, 10.0, 60.0, 50.0], question="thing")])
    with pytest.raises(ValueError, match=r"unknown image extension '\.txt'"):
        render_preview(ds, tmp_path / "preview.txt")
