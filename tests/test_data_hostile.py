"""Hostile data files: every builder either builds or raises `DataError` naming the file and record (or
skips and counts the record), never hangs, never reads outside its image folder, and never reads ground
truth in the wrong frame."""

import contextlib
import json
import pickle
import signal
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from trl_perception.data.coco import build_coco_detection, load_coco
from trl_perception.data.errors import DataError, DataWarning, RecordError
from trl_perception.data.images import ImageFolder, check_inside
from trl_perception.data.io import load_pickle
from trl_perception.data.pageocr import build_pageocr
from trl_perception.data.pixmo_count import build_pixmo_count
from trl_perception.data.refcoco import build_refcoco
from trl_perception.data.synthetic import make_synthetic


@contextlib.contextmanager
def never_hangs(seconds=60):
    """Fail (instead of hanging the suite) if the block runs for minutes; no timing is asserted."""

    def hang(*_):
        raise AssertionError(f"still running after {seconds} s: the input makes the code hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _builds_or_data_error(build, **kwargs):
    """Both error modes: a dataset, or a DataError (never another exception)."""
    for mode in ("raise", "skip"):
        with warnings.catch_warnings(), contextlib.suppress(DataError):
            warnings.simplefilter("ignore", DataWarning)
            assert isinstance(build(on_error=mode, **kwargs), Dataset)


# ------------------------------------------------------------------------------------------------
# Pickles that never finish


def _self_containing(kind):
    if kind == "list":
        value = []
        value.append(value)
    elif kind == "dict":
        value = {}
        value["self"] = value
    else:  # a cycle through two containers
        inner = {"refs": []}
        value = [inner]
        inner["refs"].append(value)
    return value


@pytest.mark.parametrize("kind", ["list", "dict", "two-step"])
def test_cyclic_pickle_is_a_data_error(kind):
    with never_hangs(), pytest.raises(DataError, match="contains itself"):
        load_pickle(pickle.dumps(_self_containing(kind), protocol=2))


@pytest.mark.parametrize("container", [list, tuple, dict])
def test_pickle_of_exponentially_many_shared_references_is_a_data_error(container):
    value = ["leaf"]
    for _ in range(70):
        value = {"a": value, "b": value} if container is dict else container([value, value, value])
    with never_hangs(), pytest.raises(DataError, match="more than"):
        load_pickle(pickle.dumps(value, protocol=2))


def test_shared_references_within_the_bound_still_load():
    sentence = {"sent": "the dog on the left", "tokens": ["the", "dog"]}
    refs = [{"ref_id": i, "sentences": [sentence, sentence]} for i in range(50)]
    assert load_pickle(pickle.dumps(refs, protocol=2)) == refs


def test_cyclic_refs_pickle_fails_the_builder_in_both_modes(tmp_path):
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(_self_containing("two-step"), protocol=2))
    (tmp_path / "instances.json").write_text('{"images": [], "annotations": []}')
    for mode in ("raise", "skip"):
        with never_hangs(), pytest.raises(DataError, match=r"refs\(unc\)\.p: not a plain-data pickle"):
            build_refcoco(tmp_path, split="val", image_dir=tmp_path, on_error=mode)


# ------------------------------------------------------------------------------------------------
# Regex on malformed polygon text


def _coco_text(segmentation_text, n_annotations=1):
    anns = ",".join(
        f'{{"id": {i}, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "segmentation": {segmentation_text}}}'
        for i in range(n_annotations)
    )
    return (
        '{"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}], '
        f'"categories": [{{"id": 1, "name": "cat"}}], "annotations": [{anns}]}}'
    )


@pytest.mark.parametrize(
    "segmentation",
    [
        "[" + " ".join(["[1.5, 2, 3, 4]"] * 40) + "]",  # polygons without commas
        "[" + "  ".join(["[1, 2]"] * 40),  # ... and never closed
        "[" + ", ".join(["[1, 2]"] * 40) + ", ]",  # a trailing comma
        "[" + " , ".join(["[1, 2]"] * 40) + " {",  # a brace where the list should close
    ],
)
def test_malformed_segmentation_is_a_data_error(tmp_path, segmentation):
    path = tmp_path / "instances.json"
    path.write_text(_coco_text(segmentation, n_annotations=30))
    with never_hangs(), pytest.raises(DataError, match="not valid JSON"):
        load_coco(path)


def test_well_formed_segmentations_are_dropped(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(_coco_text("[ [1, 2, 3, 4] ,\n [5, 6, 7, 8] ]", n_annotations=3))
    data = load_coco(path)
    assert [sorted(a) for a in data["annotations"]] == [["bbox", "category_id", "id", "image_id"]] * 3


# ------------------------------------------------------------------------------------------------
# Paths that leave image_dir


OUTSIDE = ["../outside.jpg", "sub/../../outside.jpg", "..\\outside.jpg", "/abs/outside.jpg", "C:\\x\\outside.jpg"]


@pytest.mark.parametrize("name", OUTSIDE)
def test_check_inside_refuses_paths_that_leave_the_folder(name):
    with pytest.raises(RecordError, match="leaves the image folder"):
        check_inside(name)


def test_image_folder_refuses_outside_candidates_unless_allowed(tmp_path):
    (tmp_path / "images").mkdir()
    PILImage.new("RGB", (4, 4)).save(tmp_path / "outside.jpg")
    with pytest.raises(RecordError, match="path outside|leaves the image folder"):
        ImageFolder(tmp_path / "images").find("../outside.jpg")
    assert ImageFolder(tmp_path / "images", allow_outside=True).find(str(tmp_path / "outside.jpg"))


@pytest.fixture
def escape(tmp_path):
    """An image folder, and a real image right outside it that a hostile record points at."""
    images = tmp_path / "images"
    images.mkdir()
    PILImage.new("RGB", (20, 10)).save(images / "in.jpg")
    PILImage.new("RGB", (20, 10)).save(tmp_path / "outside.jpg")
    return tmp_path, images


def _expect_outside(build, source, images, where, **kwargs):
    with pytest.raises(DataError, match=rf"{where}: .*leaves the image folder"):
        build(source, image_dir=images, **kwargs)
    with pytest.warns(DataWarning, match=r"skipped 1 of 2 records .*1 path outside image_dir"):
        ds = build(source, image_dir=images, on_error="skip", **kwargs)
    assert len(ds) == 1


@pytest.mark.parametrize("name", ["../outside.jpg", "{root}/outside.jpg"])
def test_coco_file_name_outside_image_dir(escape, name):
    root, images = escape
    path = root / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "in.jpg", "width": 20, "height": 10},
                    {"id": 2, "file_name": name.format(root=root), "width": 20, "height": 10},
                ],
                "categories": [{"id": 1, "name": "cat"}],
                "annotations": [],
            }
        )
    )
    _expect_outside(build_coco_detection, path, images, r"image 1")
    allowed = build_coco_detection(path, image_dir=images, allow_outside_image_dir=True)
    assert len(allowed) == 2  # the opt-in reads both


@pytest.mark.parametrize("name", ["../outside.jpg", "{root}/outside.jpg"])
def test_pr1_image_outside_image_dir(escape, name):
    root, images = escape
    path = root / "refcoco_val.json"
    records = [
        {"image": "in.jpg", "problem": "left", "solution": [1, 1, 5, 5], "normalized_solution": [50, 100, 250, 500]},
        {"image": name.format(root=root), "problem": "right", "solution": [1, 1, 5, 5],
         "normalized_solution": [50, 100, 250, 500]},
    ]  # fmt: skip
    path.write_text(json.dumps(records))
    _expect_outside(build_refcoco, path, images, r"record 1", split="val")
    if name.startswith("{root}"):
        assert len(build_refcoco(path, split="val", image_dir=images, allow_outside_image_dir=True)) == 2


def test_refer_file_name_outside_image_dir(escape):
    root, images = escape
    folder = root / "refcoco"
    folder.mkdir()
    refs = [
        {"ref_id": i, "ann_id": 10 + i, "image_id": 1 + i, "split": "val", "sentences": [{"sent": "dog"}]}
        for i in range(2)
    ]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "in.jpg", "width": 20, "height": 10},
                    {"id": 2, "file_name": "../outside.jpg", "width": 20, "height": 10},
                ],
                "annotations": [{"id": 10 + i, "image_id": 1 + i, "bbox": [1, 1, 4, 4]} for i in range(2)],
            }
        )
    )
    _expect_outside(build_refcoco, folder, images, r"record 1 \(ref_id 1\)", split="val")


def test_pixmo_image_path_outside_image_dir(escape):
    root, images = escape
    path = root / "pixmo_count_val540.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"image_path": p, "question": "dogs", "ground_truth": 2}) for p in ("in.jpg", "../outside.jpg")
        )
    )
    _expect_outside(build_pixmo_count, path, images, r"line 2")


def test_pageocr_image_outside_image_dir(escape):
    root, images = escape
    path = root / "en_page_ocr.json"
    turns = [{"from": "human", "value": "OCR"}, {"from": "gpt", "value": "text"}]
    path.write_text(json.dumps([{"image": n, "conversations": turns} for n in ("in.jpg", "/etc/passwd")]))
    _expect_outside(build_pageocr, path, images, r"record 1")


# ------------------------------------------------------------------------------------------------
# Malformed values: DataError naming file and record, or a counted skip


def _coco_file(tmp_path, image=None, annotation=None, **top):
    PILImage.new("RGB", (20, 10)).save(tmp_path / "in.jpg")
    data = {
        "images": [{"id": 1, "file_name": "in.jpg", "width": 20, "height": 10}, image or {"id": 2, "file_name": "in.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}]
        + ([annotation] if annotation else []),
        **top,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "image",
    [
        {"id": 2, "file_name": "in.jpg", "width": 1e20, "height": 10},
        {"id": 2, "file_name": "in.jpg", "width": 10**30, "height": 10},
        {"id": [2], "file_name": "in.jpg", "width": 20, "height": 10},
        {"id": {"x": 2}, "file_name": "in.jpg", "width": 20, "height": 10},
        {"id": 2, "file_name": ["in.jpg"], "width": 20, "height": 10},
    ],
)
def test_coco_malformed_image_both_modes(tmp_path, image):
    path = _coco_file(tmp_path, image=image)
    with pytest.raises(DataError, match=r"instances\.json: image 1: "):
        build_coco_detection(path, image_dir=tmp_path)
    with pytest.warns(DataWarning, match=r"skipped 1 of 2 records .*1 bad record"):
        assert len(build_coco_detection(path, image_dir=tmp_path, on_error="skip")) == 1


@pytest.mark.parametrize(
    "annotation",
    [
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10**400, 5]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 1e300, 5], "iscrowd": "yes"},
        {"id": 2, "image_id": 2, "category_id": [1], "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": "1 1 5 5"},
    ],
)
def test_coco_malformed_annotation_both_modes(tmp_path, annotation):
    path = _coco_file(tmp_path, annotation=annotation)
    with pytest.raises(DataError, match=r"instances\.json: image 1 \(in\.jpg\): annotation 1 \(id 2\)"):
        build_coco_detection(path, image_dir=tmp_path)
    with pytest.warns(DataWarning, match=r"skipped 1 of 2 records"):
        assert len(build_coco_detection(path, image_dir=tmp_path, on_error="skip")) == 1


def test_coco_string_iscrowd_is_read_as_its_value(tmp_path):
    annotation = {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": "0"}
    ds = build_coco_detection(_coco_file(tmp_path, annotation=annotation), image_dir=tmp_path)
    assert len(ds) == 2  # "0" is not a crowd region: image 2 keeps its box
    assert ds.select_columns(["solution"])[1]["solution"] == [{"bbox_2d": [1.0, 1.0, 6.0, 6.0], "label": "cat"}]
    annotation["iscrowd"] = "1"
    assert len(build_coco_detection(_coco_file(tmp_path, annotation=annotation), image_dir=tmp_path)) == 1


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
@pytest.mark.parametrize("value", [5, "x", {"a": 1}, None])
def test_coco_sections_that_are_not_lists(tmp_path, key, value):
    path = _coco_file(tmp_path, **{key: value})
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=rf"instances\.json: expected a COCO object with a '{key}' list"):
            build_coco_detection(path, image_dir=tmp_path, on_error=mode)


def _refer(tmp_path, refs, images=None, annotations=None):
    folder = tmp_path / "refcoco"
    folder.mkdir(exist_ok=True)
    PILImage.new("RGB", (20, 10)).save(folder / "in.jpg")
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_text(
        json.dumps(
            {
                "images": images if images is not None else [{"id": 1, "file_name": "in.jpg", "width": 20, "height": 10}],
                "annotations": annotations
                if annotations is not None
                else [{"id": 10, "image_id": 1, "bbox": [1, 1, 4, 4]}],
            }
        )
    )
    return folder


GOOD_REF = {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "sentences": [{"sent": "dog"}]}


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD_REF, "ref_id": 1, "ann_id": [10]},
        {**GOOD_REF, "ref_id": 1, "ann_id": {"id": 10}},
        {**GOOD_REF, "ref_id": 1, "sentences": 5},
        {k: v for k, v in GOOD_REF.items() if k != "split"},
        [1, 2, 3],
    ],
)
def test_refer_malformed_ref_both_modes(tmp_path, bad):
    folder = _refer(tmp_path, [GOOD_REF, bad])
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: record 1"):
        build_refcoco(folder, split="val", image_dir=folder)
    with pytest.warns(DataWarning, match=r"skipped 1 of 2 records .*1 bad record"):
        assert len(build_refcoco(folder, split="val", image_dir=folder, on_error="skip")) == 1


@pytest.mark.parametrize(
    "images, annotations",
    [
        ([{"id": [1], "file_name": "in.jpg", "width": 20, "height": 10}], None),
        (None, [{"id": [10], "image_id": 1, "bbox": [1, 1, 4, 4]}]),
        ([{"id": 1, "file_name": "in.jpg", "width": 1e20, "height": 10}], None),
        (None, [{"id": 10, "image_id": 1, "bbox": [1, 1, 10**400, 4]}]),
    ],
)
def test_refer_malformed_instances_both_modes(tmp_path, images, annotations):
    folder = _refer(tmp_path, [GOOD_REF], images, annotations)
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: record 0"):
        build_refcoco(folder, split="val", image_dir=folder)
    with pytest.warns(DataWarning, match=r"skipped 1 of 1 records"):
        assert len(build_refcoco(folder, split="val", image_dir=folder, on_error="skip")) == 0


@pytest.mark.parametrize("value", [5, "x", None])
def test_refer_instances_sections_that_are_not_lists(tmp_path, value):
    folder = _refer(tmp_path, [GOOD_REF], annotations=value if value is not None else None)
    data = json.loads((folder / "instances.json").read_text())
    data["annotations"] = value
    (folder / "instances.json").write_text(json.dumps(data))
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=r"instances\.json: expected a COCO-style object"):
            build_refcoco(folder, split="val", image_dir=folder, on_error=mode)


@pytest.mark.parametrize("count", [1e300, 10**30, -1, 2.5, "3", [3]])
def test_pixmo_malformed_count_both_modes(tmp_path, count):
    PILImage.new("RGB", (20, 10)).save(tmp_path / "in.jpg")
    path = tmp_path / "pixmo_count_val540.jsonl"
    path.write_text(
        "\n".join(json.dumps({"image_path": "in.jpg", "question": "dogs", "ground_truth": c}) for c in (2, count))
    )
    with pytest.raises(DataError, match=r"pixmo_count_val540\.jsonl: line 2: count must be an integer"):
        build_pixmo_count(path, image_dir=tmp_path)
    with pytest.warns(DataWarning, match=r"skipped 1 of 2 records .*1 bad record"):
        assert len(build_pixmo_count(path, image_dir=tmp_path, on_error="skip")) == 1


def test_skip_summary_never_counts_more_skipped_than_seen(tmp_path):
    # Refs without a split cannot be told apart from the requested split's: they are examined and counted.
    folder = _refer(tmp_path, [{"ref_id": 0}, {"ref_id": 1}, {**GOOD_REF, "split": "train"}])
    with pytest.warns(DataWarning, match=r"skipped 2 of 2 records"):
        build_refcoco(folder, split="val", image_dir=folder, on_error="skip")


# ------------------------------------------------------------------------------------------------
# Fuzz: any file content builds or raises DataError

hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([1e20, 1e300, -1e300, 10**400, -(10**30), "0", "1", "", "../in.jpg", "/in.jpg", "in.jpg"]),
    st.floats(),
    st.text(max_size=4),
    st.lists(st.integers(-5, 30), max_size=5),
    st.dictionaries(st.sampled_from(["id", "x", "counts"]), st.integers(), max_size=2),
)


def maybe(valid):
    """The valid value, or a hostile one."""
    return st.one_of(st.just(valid), hostile)


def _json_text(value):
    return json.dumps(value, allow_nan=True)


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    PILImage.new("RGB", (20, 10)).save(folder / "in.jpg")
    return folder


@FUZZ
@given(
    images=st.lists(
        st.fixed_dictionaries(
            {"id": maybe(1), "file_name": maybe("in.jpg"), "width": maybe(20), "height": maybe(10)}
        ),
        max_size=3,
    ),
    annotations=st.lists(
        st.fixed_dictionaries(
            {
                "id": maybe(1),
                "image_id": maybe(1),
                "category_id": maybe(1),
                "bbox": st.one_of(st.just([1, 1, 5, 5]), st.lists(hostile, max_size=5), hostile),
                "iscrowd": maybe(0),
            }
        )
        | hostile,
        max_size=4,
    ),
    categories=st.one_of(st.just([{"id": 1, "name": "cat"}]), st.lists(hostile, max_size=2), hostile),
)
def test_any_coco_content_builds_or_raises_data_error(image_dir, images, annotations, categories):
    path = image_dir / "instances.json"
    path.write_text(_json_text({"images": images, "annotations": annotations, "categories": categories}))
    _builds_or_data_error(lambda **kw: build_coco_detection(path, image_dir=image_dir, **kw))


@FUZZ
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {"image": maybe("in.jpg"), "problem": maybe("dog"), "solution": maybe([1, 1, 5, 5])},
            optional={"normalized_solution": maybe([50, 100, 250, 500])},
        )
        | hostile,
        max_size=4,
    ),
    frame=st.sampled_from([None, "pixels", "qwen2_vl"]),
)
def test_any_pr1_content_builds_or_raises_data_error(image_dir, records, frame):
    path = image_dir / "refcoco_val.json"
    path.write_text(_json_text(records))
    _builds_or_data_error(lambda **kw: build_refcoco(path, split="val", image_dir=image_dir, solution_frame=frame, **kw))


@FUZZ
@given(
    refs=st.lists(
        st.fixed_dictionaries(
            {"ref_id": maybe(0), "ann_id": maybe(10), "split": maybe("val"), "sentences": maybe([{"sent": "dog"}])}
        )
        | hostile,
        max_size=3,
    ),
    images=st.lists(
        st.fixed_dictionaries({"id": maybe(1), "file_name": maybe("in.jpg"), "width": maybe(20), "height": maybe(10)}),
        max_size=2,
    ),
    annotations=st.lists(
        st.fixed_dictionaries({"id": maybe(10), "image_id": maybe(1), "bbox": maybe([1, 1, 4, 4])}), max_size=2
    )
    | hostile,
)
def test_any_refer_content_builds_or_raises_data_error(tmp_path_factory, refs, images, annotations):
    folder = tmp_path_factory.mktemp("refer")
    PILImage.new("RGB", (20, 10)).save(folder / "in.jpg")
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_text(_json_text({"images": images, "annotations": annotations}))
    _builds_or_data_error(lambda **kw: build_refcoco(folder, split="val", image_dir=folder, **kw))


@FUZZ
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {"image_path": maybe("in.jpg"), "question": maybe("dogs"), "ground_truth": maybe(3)}
        )
        | hostile,
        max_size=4,
    )
)
def test_any_pixmo_jsonl_content_builds_or_raises_data_error(image_dir, records):
    path = image_dir / "pixmo_count_val540.jsonl"
    path.write_text("\n".join(_json_text(r) for r in records))
    _builds_or_data_error(lambda **kw: build_pixmo_count(path, image_dir=image_dir, **kw))


@FUZZ
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {
                "image": maybe("in.jpg"),
                "conversations": st.one_of(
                    st.just([{"from": "human", "value": "OCR"}, {"from": "gpt", "value": "text"}]),
                    st.lists(st.fixed_dictionaries({"from": maybe("gpt"), "value": maybe("text")}), max_size=2),
                    hostile,
                ),
            }
        )
        | hostile,
        max_size=4,
    )
)
def test_any_fox_content_builds_or_raises_data_error(image_dir, records):
    path = image_dir / "en_page_ocr.json"
    path.write_text(_json_text(records))
    _builds_or_data_error(lambda **kw: build_pageocr(path, image_dir=image_dir, **kw))


# ------------------------------------------------------------------------------------------------
# Ground truth in the right frame (Perception-R1's training vs evaluation files)


@pytest.fixture
def pr1(tmp_path):
    PILImage.new("RGB", (200, 100)).save(tmp_path / "a.jpg")
    pixels = [20.0, 10.0, 100.0, 60.0]
    qwen2_vl = [100, 100, 500, 600]  # the same box in 0-1000 of a 200x100 image
    return tmp_path, pixels, qwen2_vl


def test_eval_layout_with_normalized_solution_is_read_as_pixels(pr1):
    root, pixels, qwen2_vl = pr1
    path = root / "refcoco_val.json"
    path.write_text(json.dumps([{"image": "a.jpg", "problem": "cat", "solution": pixels, "normalized_solution": qwen2_vl}]))
    assert build_refcoco(path, split="val", image_dir=root)[0]["solution"] == pixels


@pytest.mark.parametrize("as_text", [True, False])
def test_training_layout_in_qwen2_vl_frame_is_converted_to_pixels(pr1, as_text):
    root, pixels, qwen2_vl = pr1
    path = root / "refcoco_train.json"
    solution = str(qwen2_vl) if as_text else qwen2_vl  # refcoco_320k stores the list as text
    path.write_text(json.dumps([{"image": "a.jpg", "problem": "cat", "solution": solution}]))
    ds = build_refcoco(path, split="train", image_dir=root, solution_frame="qwen2_vl")
    assert ds[0]["solution"] == pixels


def test_training_layout_without_a_stated_frame_is_refused(pr1):
    root, _, qwen2_vl = pr1
    path = root / "refcoco_train.json"
    path.write_text(json.dumps([{"image": "a.jpg", "problem": "cat", "solution": str(qwen2_vl)}]))
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=r"refcoco_train\.json: record 0: the frame of `solution` is not stated"):
            build_refcoco(path, split="train", image_dir=root, on_error=mode)


def test_a_frame_that_contradicts_the_file_is_refused(pr1):
    root, pixels, qwen2_vl = pr1
    path = root / "refcoco_val.json"
    path.write_text(json.dumps([{"image": "a.jpg", "problem": "cat", "solution": pixels, "normalized_solution": qwen2_vl}]))
    with pytest.raises(DataError, match="has normalized_solution, so its solution is in pixels"):
        build_refcoco(path, split="val", image_dir=root, solution_frame="qwen2_vl")


def test_qwen2_vl_values_beyond_1000_are_bad_boxes(pr1):
    root, _, _ = pr1
    path = root / "refcoco_train.json"
    path.write_text(json.dumps([{"image": "a.jpg", "problem": "cat", "solution": [10, 10, 1200, 500]}]))
    with pytest.raises(DataError, match="outside Qwen2-VL's 0-1000 frame"):
        build_refcoco(path, split="train", image_dir=root, solution_frame="qwen2_vl")


def test_a_wrong_explicit_pixel_frame_is_hinted(pr1):
    root, _, _ = pr1
    path = root / "refcoco_train.json"
    path.write_text(json.dumps([{"image": "a.jpg", "problem": "cat", "solution": [300, 200, 500, 600]}]))
    with pytest.raises(DataError, match=r"lies outside the 200x100 image \(a box in Qwen2-VL's 0-1000 frame\?"):
        build_refcoco(path, split="train", image_dir=root, solution_frame="pixels")
    assert build_refcoco(path, split="train", image_dir=root, solution_frame="qwen2_vl")[0]["solution"] == [
        60.0, 20.0, 100.0, 60.0
    ]


@pytest.mark.parametrize("embedded", [True, False])
def test_refcoco_320k_parquet_layout(pr1, embedded):
    root, pixels, qwen2_vl = pr1
    data = root / "data"
    data.mkdir()
    if embedded:
        image = pa.array([{"bytes": (root / "a.jpg").read_bytes(), "path": "a.jpg"}],
                         pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    else:
        image = pa.array(["a.jpg"])
    table = pa.table({"image": image, "problem": ["cat"], "solution": [str(qwen2_vl)]})
    pq.write_table(table, data / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match="the frame of `solution` is not stated"):
        build_refcoco(root, split="train", image_dir=root)
    row = build_refcoco(root, split="train", image_dir=None if embedded else root, solution_frame="qwen2_vl")[0]
    assert row["solution"] == pixels and row["image"].size == (200, 100)


# ------------------------------------------------------------------------------------------------
# Smaller ones


def test_missing_font_file_is_named():
    with pytest.raises(FileNotFoundError, match="no-such-font.ttf"):
        make_synthetic("ocr", 1, font="/nowhere/no-such-font.ttf")


@FUZZ
@given(
    solutions=st.lists(st.one_of(st.just("[100, 100, 500, 600]"), st.text(max_size=12), st.just("[1e400, 0, 1, 1]")), min_size=1, max_size=3),
    images=st.lists(st.one_of(st.just("a.jpg"), st.just("../a.jpg"), st.text(max_size=6)), min_size=3, max_size=3),
)
def test_any_refcoco_320k_parquet_content_builds_or_raises_data_error(tmp_path_factory, solutions, images):
    root = tmp_path_factory.mktemp("r320k")
    PILImage.new("RGB", (20, 10)).save(root / "a.jpg")
    n = len(solutions)
    table = pa.table({"image": images[:n], "problem": ["cat"] * n, "solution": solutions})
    pq.write_table(table, root / "train-00000-of-00001.parquet")
    _builds_or_data_error(
        lambda **kw: build_refcoco(
            root / "train-00000-of-00001.parquet", image_dir=root, solution_frame="qwen2_vl", **kw
        )
    )
