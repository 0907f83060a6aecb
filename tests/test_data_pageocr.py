"""PageOCR builder: Fox page-OCR JSON (English and Chinese), image lookup in Fox's folders, prompts,
resizing, and bad input in both error modes."""

import contextlib
import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from trl_perception.data.errors import DataError, DataWarning
from trl_perception.data.pageocr import build_pageocr
from trl_perception.frames import grid_size

EN_TEXT = "FREEDOM OF INFORMATION ACT\nThe request was received on 12 May."
CN_TEXT = "中华人民共和国\n第一章 总则"


def _record(image, text, human="<image>\nOCR this image: "):
    return {
        "image": image,
        "len": len(text),
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": text}],
    }


@pytest.fixture
def fox(tmp_path):
    """Fox's zip layout: the JSON files next to en_pdf_png/ and cn_pdf_png/."""
    for lang, size in (("en", (60, 80)), ("cn", (50, 70))):
        (tmp_path / f"{lang}_pdf_png").mkdir()
        for i in (1, 2):
            PILImage.new("RGB", size, "white").save(tmp_path / f"{lang}_pdf_png" / f"{lang}_{i}.png")
    (tmp_path / "en_page_ocr.json").write_text(
        json.dumps([_record("en_1.png", EN_TEXT), _record("en_2.png", "Second page.")])
    )
    (tmp_path / "cn_page_ocr.json").write_text(
        json.dumps([_record("cn_1.png", CN_TEXT), _record("cn_2.png", "第二页")], ensure_ascii=False),
        encoding="utf-8",
    )
    return tmp_path


def _rows(ds):
    return ds.select_columns(["prompt", "task", "solution", "image_size"]).to_list()


PROMPT = [
    {
        "role": "user",
        "content": [{"type": "image", "text": None}, {"type": "text", "text": "OCR this image."}],
    }
]


def test_english_pages(fox):
    rows = _rows(build_pageocr(fox / "en_page_ocr.json", image_dir=fox / "en_pdf_png"))
    assert rows == [
        {"prompt": PROMPT, "task": "ocr", "solution": EN_TEXT, "image_size": [60, 80]},
        {"prompt": PROMPT, "task": "ocr", "solution": "Second page.", "image_size": [60, 80]},
    ]


def test_chinese_pages_found_in_fox_folder_by_default(fox):
    rows = _rows(build_pageocr(fox / "cn_page_ocr.json"))
    assert [r["solution"] for r in rows] == [CN_TEXT, "第二页"]
    assert rows[0]["prompt"] == PROMPT and rows[0]["image_size"] == [50, 70]


def test_image_dir_may_be_the_fox_root(fox):
    ds = build_pageocr(fox / "en_page_ocr.json", image_dir=fox)
    assert ds[0]["image"].size == (60, 80)


def test_perception_r1_eval_prompt_as_template(fox):
    ds = build_pageocr(
        fox / "en_page_ocr.json",
        template="<image>\nOCR this image: ",
        system_prompt="You are a helpful assistant.",
    )
    assert ds.select_columns(["prompt"])[0]["prompt"] == [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "text": None},
                {"type": "text", "text": "<image>\nOCR this image: "},
            ],
        },
    ]


def test_family_adds_columns_but_no_instruction_and_resizing_keeps_text(fox):
    ds = build_pageocr(fox / "en_page_ocr.json", box_format="qwen2_5_vl")
    row = ds.select_columns(["prompt", "box_format", "input_size", "image_size"])[0]
    assert row["prompt"] == PROMPT
    assert (
        row["box_format"] == "qwen2_5_vl" and row["input_size"] == [56, 84] and row["image_size"] == [60, 80]
    )
    fitted = build_pageocr(fox / "en_page_ocr.json", box_format="qwen2_vl", min_pixels=784, max_pixels=2000)
    row = fitted[0]
    assert row["solution"] == EN_TEXT
    assert (
        row["image"].size
        == tuple(row["image_size"])
        == grid_size((60, 80), "qwen2_vl", min_pixels=784, max_pixels=2000)
    )


def test_sampling_is_deterministic(fox):
    a = build_pageocr(fox / "en_page_ocr.json", num_samples=1, seed=4)
    assert len(a) == 1 and _rows(a) == _rows(build_pageocr(fox / "en_page_ocr.json", num_samples=1, seed=4))


# ------------------------------------------------------------------------------------------------
# Bad input


def _both_modes(path, error, summary, n_rows, image_dir=None):
    with pytest.raises(DataError, match=error):
        build_pageocr(path, image_dir=image_dir)
    with pytest.warns(DataWarning, match=summary):
        ds = build_pageocr(path, image_dir=image_dir, on_error="skip")
    assert len(ds) == n_rows


def test_missing_image(fox):
    (fox / "en_pdf_png" / "en_2.png").unlink()
    _both_modes(
        fox / "en_page_ocr.json",
        r"en_page_ocr\.json: record 1: image 'en_2\.png' not found",
        "skipped 1 of 2 records .*: 1 missing image",
        1,
    )


def test_record_without_answer_turn(fox):
    records = [
        _record("en_1.png", EN_TEXT),
        {"image": "en_2.png", "conversations": [{"from": "human", "value": "x"}]},
    ]
    (fox / "en_page_ocr.json").write_text(json.dumps(records))
    _both_modes(fox / "en_page_ocr.json", r"record 1: conversations hold no 'gpt' turn", "1 bad record", 1)


def test_record_that_is_not_an_object(fox):
    (fox / "en_page_ocr.json").write_text(json.dumps([_record("en_1.png", EN_TEXT), ["en_2.png"]]))
    _both_modes(fox / "en_page_ocr.json", r"record 1: expected a record object", "1 bad record", 1)


def test_unreadable_image(fox):
    (fox / "en_pdf_png" / "en_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _both_modes(
        fox / "en_page_ocr.json", r"record 0: image .*en_1\.png cannot be read", "1 unreadable image", 1
    )


def test_truncated_json_raises_in_both_modes(fox):
    text = (fox / "en_page_ocr.json").read_text()
    (fox / "en_page_ocr.json").write_text(text[:-30])
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=r"en_page_ocr\.json: not valid JSON \(truncated file\?\)"):
            build_pageocr(fox / "en_page_ocr.json", on_error=mode)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | st.just("en_1.png"),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["image", "conversations", "from", "value", "gpt"]), children, max_size=3
        )
    ),
    max_leaves=12,
)


@settings(max_examples=40)
@given(st.lists(anything, max_size=4))
def test_any_json_content_builds_or_raises_data_error(tmp_path_factory, records):
    folder = tmp_path_factory.mktemp("fox")
    PILImage.new("RGB", (8, 8)).save(folder / "en_1.png")
    path = folder / "en_page_ocr.json"
    path.write_text(json.dumps(records))
    try:
        build_pageocr(path)
    except DataError:
        pass
    with warnings.catch_warnings(), contextlib.suppress(DataError):  # file-level errors raise in both modes
        warnings.simplefilter("ignore", DataWarning)
        build_pageocr(path, on_error="skip")
