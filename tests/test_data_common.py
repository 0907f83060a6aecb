"""What the builders share (`data.errors`, `data.io`, `data.images`, `data.validators`, `data.resize`,
`data.rows`): error policy, sampling, safe readers (property-tested), the resize-to-grid
step and dataset assembly."""

import io
import json
import logging
import pickle
import pickletools  # noqa: F401  (documents that payloads below are hand-assembled opcodes)

import numpy as np
import pytest
from datasets import Dataset, Image
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image as PILImage

from trl_perception.data.errors import DataError, DataWarning, ErrorPolicy, RecordError
from trl_perception.data.images import ImageFolder, read_image_size
from trl_perception.data.io import iter_jsonl, load_json, load_json_records, load_pickle
from trl_perception.data.prompts import build_prompt
from trl_perception.data.resize import GridImageTransform, fit_dataset_to_grid, scale_solution
from trl_perception.data.rows import rows_to_dataset, sample_indices, select_rows
from trl_perception.frames import BOX_FORMATS, fit_to_grid, grid_size, model_input_size

# ------------------------------------------------------------------------------------------------
# Error policy


def test_raise_mode_names_file_record_and_problem():
    with pytest.raises(DataError, match=r"^a\.json: record 4: bbox has a negative width$"):
        ErrorPolicy("a.json").failed("record 4", RecordError("bad bbox", "bbox has a negative width"))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_skip_mode_counts_by_reason_and_reports_once(caplog):
    policy = ErrorPolicy("a.json", on_error="skip")
    policy.failed("record 1", RecordError("missing image", "x"))
    policy.failed("record 2", RecordError("bad bbox", "y"))
    policy.failed("record 3", RecordError("missing image", "z"))
    policy.failed("record 3", RecordError("missing image", "z"))  # the same record again: counted once
    assert policy.summary(120) == "skipped 3 of 120 records from a.json: 2 missing image, 1 bad bbox"
    with caplog.at_level(logging.WARNING, logger="trl_perception.data"):
        with pytest.warns(
            DataWarning, match="^skipped 3 of 120 records from a.json: 2 missing image, 1 bad bbox$"
        ):
            policy.finish(120)
    assert "skipped 3 of 120 records" in caplog.text
    assert "a.json: record 1: x" in caplog.text  # the first failure, for context


def test_nothing_is_reported_when_nothing_was_skipped(recwarn):
    ErrorPolicy("a.json", on_error="skip").finish(10)
    assert not [w for w in recwarn if w.category is DataWarning]


def test_unknown_on_error_is_rejected():
    with pytest.raises(ValueError, match="on_error must be one of"):
        ErrorPolicy("a.json", on_error="warn")


# ------------------------------------------------------------------------------------------------
# Sampling


@given(st.integers(0, 300), st.one_of(st.none(), st.integers(0, 400)), st.integers(0, 2**32 - 1))
def test_sample_indices_is_a_sorted_deterministic_subset(n, k, seed):
    a = sample_indices(n, k, seed)
    assert a.tolist() == sample_indices(n, k, seed).tolist()
    assert len(a) == (n if k is None else min(n, k))
    assert a.tolist() == sorted(set(a.tolist()))
    assert all(0 <= i < n for i in a.tolist())


@given(st.integers(0, 200), st.integers(1, 50), st.integers(0, 1000), st.integers(2, 5))
def test_select_rows_replaces_rejected_rows(n, k, seed, modulo):
    chosen = select_rows(n, lambda i: i % modulo != 0, num_samples=k, seed=seed)
    valid = [i for i in range(n) if i % modulo != 0]
    assert len(chosen) == min(k, len(valid))
    assert set(chosen) <= set(valid)
    assert chosen == sorted(chosen)
    assert chosen == select_rows(n, lambda i: i % modulo != 0, num_samples=k, seed=seed)


def test_select_rows_examines_only_what_it_needs():
    seen = []
    select_rows(10_000, lambda i: seen.append(i) or True, num_samples=5, seed=0)
    assert len(seen) == 5


# ------------------------------------------------------------------------------------------------
# Restricted unpickler


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_unpickler(data):
    try:
        value = load_pickle(data)
    except DataError:
        return
    pickle.dumps(value)  # whatever loads is plain data


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
        | st.tuples(children, children)
    ),
    max_leaves=20,
)


@given(plain, st.integers(3, pickle.HIGHEST_PROTOCOL))
def test_plain_data_round_trips(value, protocol):
    assert load_pickle(pickle.dumps(value, protocol=protocol)) == value


plain_py2 = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
        | st.tuples(children, children)
    ),
    max_leaves=20,
)


@given(plain_py2, st.integers(0, 2))
def test_python2_era_protocols_round_trip(value, protocol):
    # Protocols 0-2 spell Python 3 bytes as a call to a global (codecs.encode), which is refused;
    # refer's Python 2 pickles hold str, list, dict, int and float only.
    assert load_pickle(pickle.dumps(value, protocol=protocol)) == value


def _payloads(marker):
    """Pickles that would run code (each creates `marker`) through every opcode that resolves a global."""
    cmd = f"touch {marker}".encode()
    n = len(cmd).to_bytes(1, "little")
    return {
        "GLOBAL+REDUCE": b"cos\nsystem\n(" + b"S'" + cmd + b"'\ntR.",
        "STACK_GLOBAL": b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + n + cmd + b"\x85R.",
        "INST": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "OBJ": b"(cos\nsystem\nS'" + cmd + b"'\no.",
        "NEWOBJ": b"\x80\x02cbuiltins\nobject\n)\x81.",
        "EXT1": b"\x80\x02\x82\x01.",
        "persistent id": b"\x80\x02X\x01\x00\x00\x00xQ.",
        "builtins.eval": b"\x80\x02cbuiltins\neval\nX" + len(b"1+1").to_bytes(4, "little") + b"1+1\x85R.",
    }


@pytest.mark.parametrize("name", list(_payloads("x")))
def test_restricted_unpickler_never_executes_anything(tmp_path, name):
    marker = tmp_path / "pwned"
    with pytest.raises(DataError, match="not a plain-data pickle"):
        load_pickle(_payloads(marker)[name])
    assert not marker.exists()


def test_plain_pickle_gadget_check_reaches_real_pickle_machinery(tmp_path):
    # Sanity check of the payload: plain pickle would run it.
    marker = tmp_path / "pwned"
    pickle.loads(_payloads(marker)["STACK_GLOBAL"])
    assert marker.exists()


# ------------------------------------------------------------------------------------------------
# JSON readers


@given(st.binary(max_size=200))
def test_jsonl_reader_turns_any_bytes_into_values_or_record_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("jsonl") / "x.jsonl"
    path.write_bytes(data)
    for number, value in iter_jsonl(path):
        assert number >= 1
        assert not isinstance(value, Exception) or isinstance(value, RecordError)


@given(st.binary(max_size=200))
def test_json_record_reader_raises_only_data_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("json") / "x.json"
    path.write_bytes(data)
    try:
        records = load_json_records(path)
    except DataError:
        return
    assert all(isinstance(where, str) for where, _ in records)


def test_truncated_json_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"a": 1}, {"b": 2}])[:-3])
    with pytest.raises(DataError, match=r"a\.json: not valid JSON \(truncated file\?\)"):
        load_json(path)


def test_missing_source_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_json(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------------
# Images


def _jpeg(size, orientation=None):
    buf = io.BytesIO()
    exif = PILImage.Exif()
    if orientation:
        exif[0x0112] = orientation
    PILImage.new("RGB", size, (200, 10, 10)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8])
def test_image_size_matches_what_datasets_decodes(orientation):
    data = _jpeg((40, 30), orientation)
    decoded = Image().decode_example({"bytes": data, "path": None})
    assert read_image_size(data) == decoded.size


@given(st.binary(max_size=200))
def test_unreadable_image_bytes_are_record_errors(data):
    try:
        size = read_image_size(data)
    except RecordError as err:
        assert err.reason == "unreadable image"
        return
    assert len(size) == 2


def test_image_folder_finds_relative_and_nested_candidates(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    folder = ImageFolder(tmp_path)
    assert folder.find("coco/a/x.jpg", "a/x.jpg") == str(tmp_path / "a" / "x.jpg")
    assert folder.find("x.jpg") is None
    assert ImageFolder(None).find("a/x.jpg") is None


# ------------------------------------------------------------------------------------------------
# Resizing to the grid and scaling ground truth


sizes = st.tuples(st.integers(8, 3000), st.integers(8, 3000)).filter(lambda s: max(s) / min(s) < 150)
limits = st.one_of(st.none(), st.integers(4_000, 4_000_000))


@given(sizes, st.sampled_from(BOX_FORMATS), limits, limits)
def test_grid_size_is_left_unchanged_by_the_processor(size, family, min_pixels, max_pixels):
    try:
        grid = grid_size(size, family, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as err:
        assert "exceeds max_pixels" in str(err) or "grid size lies within" in str(err)
        return
    factor = 32 if family == "qwen3_vl" else 28
    assert grid[0] % factor == 0 and grid[1] % factor == 0
    assert model_input_size(grid, family, min_pixels=min_pixels, max_pixels=max_pixels) == grid


def test_grid_size_is_the_processors_size_when_that_is_stable():
    assert grid_size((640, 480), "qwen2_5_vl") == model_input_size((640, 480), "qwen2_5_vl") == (644, 476)


def test_tiny_image_under_tight_limits_gets_a_stable_grid_size():
    # smart_resize upsizes 8x9 to 56x84 (4704 px), which max_pixels=4000 would shrink again.
    assert model_input_size((8, 9), "qwen2_vl", max_pixels=4000) == (56, 84)
    assert grid_size((8, 9), "qwen2_vl", max_pixels=4000) == (56, 56)


def test_conflicting_effective_limits_are_rejected():
    with pytest.raises(ValueError, match="exceeds max_pixels"):
        grid_size((640, 480), "qwen3_vl", max_pixels=50_000)  # qwen3_vl's default min is 65536


@given(sizes, st.sampled_from(BOX_FORMATS))
def test_fit_to_grid_resizes_to_the_grid_size(size, family):
    image = PILImage.new("RGB", (size[0] // 4 + 2, size[1] // 4 + 2))
    fitted = fit_to_grid(image, family, max_pixels=100_000)
    assert fitted.size == grid_size(image.size, family, max_pixels=100_000)
    assert fit_to_grid(fitted, family, max_pixels=100_000) is fitted


coords = st.floats(0, 5000, allow_nan=False)
scales = st.floats(0.05, 20, allow_nan=False)


@given(st.lists(coords, min_size=4, max_size=4), scales, scales)
def test_scaling_round_trips(box, sx, sy):
    there = scale_solution("grounding", box, sx, sy)
    back = scale_solution("grounding", there, 1 / sx, 1 / sy)
    assert np.allclose(back, box, atol=1e-6)
    det = [{"bbox_2d": box, "label": "cat"}, {"point_2d": box[:2], "label": "dog"}]
    det_back = scale_solution(
        "detection", scale_solution("detection", json.dumps(det), sx, sy), 1 / sx, 1 / sy
    )
    assert np.allclose(json.loads(det_back)[0]["bbox_2d"], box, atol=1e-6)
    assert np.allclose(json.loads(det_back)[1]["point_2d"], box[:2], atol=1e-6)
    count = {"count": 2, "points": [box[:2], box[2:]]}
    assert np.allclose(
        scale_solution("counting", scale_solution("counting", count, sx, sy), 1 / sx, 1 / sy)["points"],
        [box[:2], box[2:]],
    )


def test_counts_and_text_are_not_scaled():
    assert scale_solution("counting", 5, 2, 2) == 5
    assert scale_solution("counting", {"count": 3, "points": None}, 2, 2) == {"count": 3, "points": None}
    assert scale_solution("ocr", "[1, 2]", 2, 2) == "[1, 2]"


def _rows(image, solution, task="grounding", size=(640, 480)):
    fields = {
        "grounding": {"question": "cat"},
        "counting": {"label": "cats"},
        "ocr": {},
        "detection": {"categories": "cat"},
    }
    return {
        "prompt": build_prompt(task, **fields[task]),
        "image": image,
        "task": task,
        "solution": solution,
        "image_size": list(size),
    }


def test_fit_dataset_to_grid_round_trips_within_one_pixel():
    box = [13.7, 201.2, 377.9, 455.5]
    ds = rows_to_dataset([_rows(PILImage.new("RGB", (640, 480)), box)])
    fitted = fit_dataset_to_grid(ds, "qwen2_vl", max_pixels=100_000)
    row = fitted[0]
    w, h = row["image_size"]
    assert (
        row["image"].size
        == (w, h)
        == tuple(row["input_size"])
        == grid_size((640, 480), "qwen2_vl", max_pixels=100_000)
    )
    back = scale_solution("grounding", row["solution"], 640 / w, 480 / h)
    assert np.allclose(back, box, atol=1.0)
    again = fit_dataset_to_grid(fitted, "qwen2_vl", max_pixels=100_000)[0]
    assert again["solution"] == row["solution"] and again["image_size"] == row["image_size"]


def test_reading_other_columns_of_a_fitted_dataset_decodes_no_image(tmp_path):
    ds = rows_to_dataset([_rows(str(tmp_path / "missing.jpg"), [1.0, 2.0, 30.0, 40.0])])
    fitted = fit_dataset_to_grid(ds, "qwen2_5_vl", max_pixels=100_000)
    w, h = grid_size((640, 480), "qwen2_5_vl", max_pixels=100_000)
    assert fitted.select_columns(["solution"])["solution"] == [
        scale_solution("grounding", [1.0, 2.0, 30.0, 40.0], w / 640, h / 480)
    ]
    with pytest.raises(FileNotFoundError):
        fitted[0]  # the row needs the image, which does not exist


def test_fitted_dataset_survives_shuffle_select_and_pickle():
    ds = rows_to_dataset([_rows(PILImage.new("RGB", (640, 480)), [1.0, 2.0, 3.0, 4.0]) for _ in range(3)])
    fitted = fit_dataset_to_grid(ds, "qwen3_vl", max_pixels=80_000)
    picked = fitted.shuffle(seed=0).select([1])
    assert picked[0]["image"].size == tuple(picked[0]["image_size"])
    transform = pickle.loads(pickle.dumps(GridImageTransform("qwen3_vl", None, 80_000)))
    assert transform({"image": [PILImage.new("RGB", (640, 480))]})["image"][0].size == tuple(
        picked[0]["image_size"]
    )


# ------------------------------------------------------------------------------------------------
# Dataset assembly


def test_mixed_tasks_store_solutions_as_json_strings():
    ds = rows_to_dataset(
        [
            _rows("a.jpg", [1.0, 2.0, 3.0, 4.0], "grounding"),
            _rows("b.jpg", {"count": 2, "points": [[1.0, 2.0], [3.0, 4.0]]}, "counting"),
            _rows("c.jpg", "hello", "ocr"),
        ]
    )
    assert ds["solution"] == [
        "[1.0, 2.0, 3.0, 4.0]",
        '{"count": 2, "points": [[1.0, 2.0], [3.0, 4.0]]}',
        "hello",
    ]


def test_rows_keep_extra_columns_and_encode_images():
    ds = rows_to_dataset([{**_rows(PILImage.new("RGB", (8, 6)), "hi", "ocr", (8, 6)), "source": "synthetic"}])
    assert ds.features["image"] == Image()
    assert ds[0]["source"] == "synthetic"
    assert ds[0]["image"].size == (8, 6)
    assert isinstance(ds, Dataset)


def test_fitted_dataset_feeds_a_torch_dataloader():
    from torch.utils.data import DataLoader

    ds = rows_to_dataset([_rows(PILImage.new("RGB", (640, 480)), [1.0, 2.0, 3.0, 4.0]) for _ in range(4)])
    fitted = fit_dataset_to_grid(ds, "qwen2_vl", max_pixels=100_000)
    batches = list(DataLoader(fitted, batch_size=2, collate_fn=lambda rows: rows))
    assert [row["image"].size for batch in batches for row in batch] == [tuple(fitted[0]["image_size"])] * 4


# ------------------------------------------------------------------------------------------------
# Field validators: any value gives a clean result or a RecordError


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@given(anything)
def test_box_validators_accept_boxes_or_raise_record_errors(value):
    from trl_perception.data.validators import check_xyxy, xywh_to_xyxy

    for validate in (check_xyxy, xywh_to_xyxy):
        try:
            box = validate(value)
        except RecordError as err:
            assert err.reason == "bad bbox"
            continue
        assert len(box) == 4 and box[0] < box[2] and box[1] < box[3]
        assert all(np.isfinite(box))


@given(anything, anything)
def test_size_validator(width, height):
    from trl_perception.data.validators import positive_size

    try:
        w, h = positive_size(width, height)
    except RecordError as err:
        assert err.reason == "bad record"
        return
    assert w > 0 and h > 0 and isinstance(w, int) and isinstance(h, int)
