"""Text-only rows (`data.build_text`, task `"text"`): prompt-answer records from a JSON or JSON-lines file become
TRL conversational prompt-completion rows without an image; bad records raise a `DataError` naming the file and
record, or are skipped and counted."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_perception.data import DataError, DataWarning, build_dataset, build_text


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_records_become_prompt_completion_rows(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "1+1?", "completion": "2"}, {"prompt": "2+2?", "solution": "4"}])
    rows = build_dataset("text", path, system_prompt="Answer briefly.", template="Q: {prompt}")
    assert rows.column_names == ["prompt", "completion", "task", "solution"]
    assert rows[1]["prompt"] == [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "text", "text": "Q: 2+2?"}]},
    ]
    assert rows[1]["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": "4"}]}]
    assert list(rows["solution"]) == ["2", "4"] and set(rows["task"]) == {"text"}


def test_a_json_list_file_and_a_seeded_subset(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"prompt": f"p{i}", "completion": f"a{i}"} for i in range(10)]))
    a, b = build_text(path, num_samples=4, seed=3), build_text(path, num_samples=4, seed=3)
    assert len(a) == 4 and list(a["solution"]) == list(b["solution"])


@pytest.mark.parametrize(
    ("record", "message"),
    [({"prompt": "x"}, "lacks key"), ({"prompt": "", "completion": "a"}, "non-empty text"),
     ({"prompt": "x", "completion": 3}, "non-empty text"), ([1, 2], "record")],
)  # fmt: skip
def test_a_bad_record_names_the_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "ok", "completion": "a"}, record])
    with pytest.raises(DataError, match=rf"t\.jsonl: line 2: .*{message}"):
        build_text(path)


def test_bad_records_can_be_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "ok", "completion": "a"}, {"prompt": "x"}])
    with pytest.warns(DataWarning, match="skipped 1 of 2 records"):
        rows = build_text(path, on_error="skip")
    assert len(rows) == 1


def test_image_options_do_not_apply(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "ok", "completion": "a"}])
    with pytest.raises(ValueError, match="box_format"):
        build_text(path, box_format="qwen2_vl")
    with pytest.raises(ValueError, match="{prompt}"):
        build_text(path, template="no placeholder")


@given(records=st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["prompt", "completion", "solution", "x"]),
                    st.one_of(st.text(max_size=20), st.integers(), st.none()), max_size=3),
    st.text(max_size=5), st.integers()), max_size=6))  # fmt: skip
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_records_give_rows_or_a_data_error(tmp_path, records):
    path = write_jsonl(tmp_path / "fuzz.jsonl", records)
    try:
        rows = build_text(path, on_error="skip")
    except ValueError as err:  # DataError is a ValueError; so is "no usable records"
        assert "fuzz.jsonl" in str(err)
        return
    assert all(isinstance(s, str) and s.strip() for s in rows["solution"])
