"""Specification of the VQA ("look again") data: the synthetic V*-style rows and the JSON builder."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trl_perception.data import DataError, DataWarning, build_dataset
from trl_perception.data.synthetic import COLORS, VQA_IMAGE_SIZE, make_sample, make_synthetic
from trl_perception.data.vqa import build_vqa, split_choices
from trl_perception.formats import CHOICE_LETTERS
from trl_perception.frames import model_input_size

MGPO_MAX_PIXELS = 1_003_520  # MGPO's pixel budget for the whole image (and the crop's upper limit)
CROP_MIN_PIXELS = 200_704  # MGPO's smallest crop area


def meta(ds, *columns):
    columns = columns or ("solution", "options", "target_box", "image_size")
    return ds.select_columns(list(columns))[:]


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_vqa_rows_follow_the_contract():
    ds = make_synthetic("vqa", 6, seed=0, image_size=(600, 450), box_format="qwen2_5_vl", max_pixels=50_176)
    assert ds.column_names == ["prompt", "image", "task", "solution", "image_size", "box_format", "input_size",
                               "options", "target_box"]  # fmt: skip
    for row in ds:
        assert row["task"] == "vqa" and len(row["options"]) == 4 and len(set(row["options"])) == 4
        assert row["solution"] in CHOICE_LETTERS[:4]
        # The image keeps its resolution (crops need it); input_size is what the model sees at the budget.
        assert row["image"].size == (600, 450) and row["image_size"] == [600, 450]
        assert row["input_size"] == list(model_input_size((600, 450), "qwen2_5_vl", max_pixels=50_176))
        text = row["prompt"][0]["content"][1]["text"]
        for letter, option in zip("ABCD", row["options"]):
            assert f"({letter}) {option}" in text
        assert text.endswith("\\boxed{}.")
        x1, y1, x2, y2 = row["target_box"]
        assert 0 <= x1 < x2 <= 600 and 0 <= y1 < y2 <= 450


def test_synthetic_vqa_is_deterministic_and_extends():
    a = make_synthetic("vqa", 3, seed=4, image_size=(400, 300))
    b = make_synthetic("vqa", 5, seed=4, image_size=(400, 300))
    assert meta(a) == {k: v[:3] for k, v in meta(b).items()}
    assert a[2]["image"].tobytes() == b[2]["image"].tobytes()
    assert meta(make_synthetic("vqa", 3, seed=5, image_size=(400, 300))) != meta(a)


def test_the_answer_names_what_is_drawn_in_the_target_box():
    for seed in range(12):
        sample = make_sample("vqa", np.random.default_rng(seed), image_size=(500, 400),
                             vqa_questions=["color", "shape"])  # fmt: skip
        truth = sample["fields"]["options"][CHOICE_LETTERS.index(sample["solution"])]
        x1, y1, x2, y2 = (int(v) for v in sample["target_box"])
        pixels = np.asarray(sample["image"])[y1:y2, x1:x2].reshape(-1, 3)
        target = next(o for o in sample["objects"] if o.get("target"))
        color = target["label"].split()[0]
        share = (pixels == COLORS[color]).all(axis=1).mean()
        assert share > 0.4  # the box is tight around the drawn shape
        question = sample["fields"]["question"]
        if "colour" in question:
            assert truth == color
        else:
            assert truth == target["label"].split()[1] and color in question
        # Every other object differs from the target in colour and in shape: the question names one thing.
        for other in sample["objects"]:
            if other is not target:
                assert (
                    other["label"].split()[0] != color
                    and other["label"].split()[1] != target["label"].split()[1]
                )


def test_digit_signs_show_their_digits_among_three_wrong_readings():
    ds = make_synthetic("vqa", 4, seed=1, image_size=(800, 600), vqa_questions=["digits"])
    for row in ds:
        options, answer = row["options"], row["solution"]
        truth = options[CHOICE_LETTERS.index(answer)]
        assert (
            all(len(o) == 3 and o.isdigit() for o in options)
            and truth in row["prompt"][0]["content"][1]["text"]
        )
        x1, y1, x2, y2 = (int(v) for v in row["target_box"])
        sign = np.asarray(row["image"])[y1:y2, x1:x2]
        assert (sign == COLORS["white"]).all(axis=2).mean() > 0.4 and (sign == COLORS["black"]).all(
            axis=2
        ).any()


def test_the_target_is_tiny_at_the_pixel_budget_and_legible_in_a_crop():
    """V*'s premise: at MGPO's budget the target shrinks to a few pixels; a crop around it, resized to MGPO's
    smallest crop area, shows it many times larger."""
    ds = make_synthetic("vqa", 8, seed=0)  # the default 2000x1500
    assert VQA_IMAGE_SIZE == (2000, 1500)
    width, height = model_input_size(VQA_IMAGE_SIZE, "qwen2_5_vl", max_pixels=MGPO_MAX_PIXELS)
    scale = width / 2000
    for row in meta(ds, "target_box")["target_box"]:
        x1, y1, x2, y2 = row
        side, long_side = min(x2 - x1, y2 - y1), max(x2 - x1, y2 - y1)
        # A few pixels for the model: a shape's side, or a sign's height (its digits are shorter still).
        assert side * scale < 7 and long_side * scale < 15


def test_a_crop_around_the_target_shows_it_large():
    """The crop turn's view: a 64-input-pixel box around the target (MGPO's smallest valid box is 28), cropped
    from the original and resized to MGPO's crop limits, shows the target many times larger than the model saw
    it at the budget."""
    from trl_perception.crop import CROP_MAX_PIXELS, crop_region

    ds = make_synthetic("vqa", 6, seed=2, vqa_questions=["color", "shape"], background="grey")
    input_size = model_input_size(VQA_IMAGE_SIZE, "qwen2_5_vl", max_pixels=MGPO_MAX_PIXELS)
    scale = input_size[0] / VQA_IMAGE_SIZE[0]
    for row in ds:
        x1, y1, x2, y2 = row["target_box"]
        cx, cy = (x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale
        left = min(max(cx - 32, 0), input_size[0] - 64)
        top = min(max(cy - 32, 0), input_size[1] - 64)
        box = [left, top, left + 64, top + 64]
        result = crop_region(row["image"], box, "qwen2_5_vl", input_size,
                             min_pixels=CROP_MIN_PIXELS, max_pixels=CROP_MAX_PIXELS)  # fmt: skip
        assert result.valid
        crop = np.asarray(result.image).astype(int)
        background = crop[0, 0]
        ys, xs = np.nonzero(np.abs(crop - background).max(axis=2) > 40)
        seen = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        assert seen >= 4 * (x2 - x1) * scale and seen >= 20


def test_vqa_needs_its_own_dataset_and_a_known_question_kind():
    with pytest.raises(ValueError, match="alone"):
        make_synthetic(["vqa", "ocr"], 2)
    with pytest.raises(ValueError, match="vqa_questions"):
        make_synthetic("vqa", 2, vqa_questions=["size"])
    assert len(build_dataset("vqa", "synthetic", num_samples=2, image_size=[300, 200])) == 2


# ------------------------------------------------------------------------------------------------ builder


def write(path, records, jsonl=True):
    text = "\n".join(json.dumps(r) for r in records) + "\n" if jsonl else json.dumps(records)
    path.write_text(text)
    return path


@pytest.fixture()
def images(tmp_path):
    (tmp_path / "direct_attributes").mkdir()
    Image.new("RGB", (640, 480)).save(tmp_path / "direct_attributes" / "sa_1.jpg")
    Image.new("RGB", (320, 240)).save(tmp_path / "b.png")
    return tmp_path


VSTAR = {
    "image": "direct_attributes/sa_1.jpg",
    "text": "What is the color of the woman's bag?\n(A) black\n(B) red\n(C) white\n(D) blue\n"
    "Answer with the option's letter from the given choices directly.",
    "category": "direct_attributes",
    "question_id": 0,
    "label": "B",
}


def test_vstar_layout_with_its_sidecar_annotation(images):
    json.dump({"target_object": ["bag"], "bbox": [[100, 50, 40, 30], [150, 60, 20, 20]]},
              open(images / "direct_attributes" / "sa_1.json", "w"))  # fmt: skip
    row = build_vqa(write(images / "test_questions.jsonl", [VSTAR]), box_format="qwen3_vl")[0]
    assert row["solution"] == "B" and row["options"] == ["black", "red", "white", "blue"]
    assert row["target_box"] == [100.0, 50.0, 170.0, 80.0]  # the union of the xywh boxes
    assert row["image"].size == (640, 480) and row["input_size"] == list(
        model_input_size((640, 480), "qwen3_vl")
    )
    text = row["prompt"][0]["content"][1]["text"]
    assert text.startswith("What is the color of the woman's bag?\n(A) black") and "directly" not in text


def test_mgpo_layout_inline_choices_and_reward_model(images):
    records = [
        {"image_path": "b.png", "question": "<image>Which is it?", "choices": "(A) cat (B) dog (C) bird",
         "reward_model": {"ground_truth": "C"}},
        {"image": "b.png", "problem": "How many?", "answer": 12},
        {"image": "b.png", "question": "Which?", "options": {"A": "x", "B": "y"}, "answer": "y",
         "target_box": [1, 2, 30, 40]},
    ]  # fmt: skip
    ds = build_vqa(write(images / "train.json", records, jsonl=False))
    rows = meta(ds, "prompt", "solution", "options", "target_box")
    assert rows["solution"] == ["C", "12", "B"]
    assert rows["options"] == [["cat", "dog", "bird"], [], ["x", "y"]]
    assert rows["target_box"] == [[], [], [1.0, 2.0, 30.0, 40.0]]
    assert rows["prompt"][0][0]["content"][1]["text"].startswith("Which is it?\n(A) cat\n(B) dog\n(C) bird")
    assert rows["prompt"][1][0]["content"][1]["text"] == (
        "How many?\nAnswer with a single word or number, enclosed within \\boxed{}."
    )


def test_split_choices():
    assert split_choices("Q?\n(A) 1\n(B) 2") == ("Q?", ["1", "2"])
    assert split_choices("Q? (A) 1 (B) 2\nAnswer directly.") == ("Q?", ["1", "2"])
    assert split_choices("Q (B) only (A) wrong order") == ("Q (B) only (A) wrong order", [])
    assert split_choices("Q?\nA. 1\nB. 2\nC) 3") == ("Q?", ["1", "2", "3"])


@pytest.mark.parametrize(
    "record, message",
    [
        ({**VSTAR, "image": "../outside.jpg"}, "leaves the image folder"),
        ({**VSTAR, "image": "/etc/passwd"}, "leaves the image folder"),
        ({**VSTAR, "label": "E"}, "neither a letter"),
        ({**VSTAR, "text": ""}, "non-empty text"),
        ({k: v for k, v in VSTAR.items() if k != "label"}, "no answer"),
        ({**VSTAR, "image": "missing.jpg"}, "not found"),
        ({**VSTAR, "bbox": [1, 2, 3]}, "4 finite numbers"),
        ({**VSTAR, "target_box": [900, 900, 950, 950]}, "outside"),
        ({**VSTAR, "options": "no letters here"}, "cannot read options"),
        ("just text", "expected a record"),
    ],
)
def test_bad_records_raise_naming_file_and_record_or_are_skipped(images, record, message):
    path = write(images / "q.jsonl", [VSTAR, record])
    with pytest.raises(DataError, match=rf"q\.jsonl: line 2: .*{message}"):
        build_vqa(path)
    with pytest.warns(DataWarning, match=r"skipped 1 of 2 records"):
        assert len(build_vqa(path, on_error="skip")) == 1


def test_a_malformed_line_and_outside_paths_when_allowed(images):
    path = images / "q.jsonl"
    path.write_text(json.dumps(VSTAR) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        build_vqa(path)
    Image.new("RGB", (10, 10)).save(images.parent / "outside_vqa.png")
    path = write(images / "o.jsonl", [{**VSTAR, "image": "../outside_vqa.png"}])
    assert build_vqa(path, allow_outside_image_dir=True)[0]["image_size"] == [10, 10]


def test_the_registry_and_num_samples(images):
    path = write(images / "q.jsonl", [VSTAR] * 5)
    assert len(build_dataset("vqa", path, num_samples=3, seed=1)) == 3


hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 700), st.text(max_size=3), st.none()), max_size=5),
    st.dictionaries(st.sampled_from(["A", "B", "ground_truth", "x"]), st.text(max_size=4), max_size=3),
)  # fmt: skip


@given(st.lists(st.fixed_dictionaries({}, optional={
    "image": st.one_of(st.sampled_from(["b.png", "direct_attributes/sa_1.jpg", "../x.png", "nope.png"]), hostile),
    "question": hostile, "text": st.one_of(st.just(VSTAR["text"]), hostile), "options": hostile, "choices": hostile,
    "answer": st.one_of(st.sampled_from(["A", "(B)", "red", "7"]), hostile), "label": hostile,
    "reward_model": hostile, "target_box": hostile, "bbox": hostile}), max_size=5))  # fmt: skip
@settings(max_examples=80)
def test_hostile_records_raise_data_error_or_build(tmp_path_factory, records):
    root = tmp_path_factory.mktemp("hostile")
    (root / "direct_attributes").mkdir()
    Image.new("RGB", (640, 480)).save(root / "direct_attributes" / "sa_1.jpg")
    Image.new("RGB", (320, 240)).save(root / "b.png")
    path = write(root / "hostile.jsonl", records)
    try:
        ds = build_vqa(path)
    except DataError as err:
        assert "hostile.jsonl" in str(err)
        return
    for solution, options, box, size in zip(*meta(ds).values()):
        assert isinstance(solution, str) and solution
        assert not options or solution in CHOICE_LETTERS[: len(options)]
        assert box == [] or (0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_vqa(path, on_error="skip")


def test_fitting_a_vqa_dataset_to_the_grid_scales_its_target_box():
    from trl_perception.data import fit_dataset_to_grid

    ds = make_synthetic("vqa", 2, seed=0, image_size=(640, 480))
    fitted = fit_dataset_to_grid(ds, "qwen2_5_vl", max_pixels=50_176)
    for before, after in zip(meta(ds, "target_box")["target_box"], fitted.select_columns(["target_box", "image_size"])):
        sx, sy = after["image_size"][0] / 640, after["image_size"][1] / 480
        assert after["target_box"] == pytest.approx([before[0] * sx, before[1] * sy, before[2] * sx, before[3] * sy])
    assert fitted[0]["image"].size == tuple(fitted[0]["image_size"])


def test_preview_and_fine_tuning_answers(tmp_path):
    from trl_perception.data import add_completions
    from trl_perception.data.preview import render_preview
    from trl_perception.rewards import vqa_reward

    ds = make_synthetic("vqa", 2, seed=0, image_size=(400, 300))
    assert render_preview(ds, tmp_path / "preview.png", n=2).endswith("preview.png")
    completions = add_completions(ds).select_columns(["completion", "solution", "options"])[:]
    answers = [c[0]["content"][0]["text"] for c in completions["completion"]]  # TRL's conversational form
    assert answers == [f"\\boxed{{{s}}}" for s in completions["solution"]]
    assert vqa_reward(answers, completions["solution"], options=completions["options"]) == [1.0, 1.0]
