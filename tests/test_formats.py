"""Specification of `trl_perception.formats`: what each model family's answer looks like, how it is parsed
(golden cases for every syntax), what is rejected, how the parser behaves on hostile input, and that
rendering ground truth and parsing it back round-trips."""

from __future__ import annotations

import builtins
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trl_perception
from trl_perception.formats import (
    MAX_ABS_COORD,
    MAX_OBJECTS,
    DetectedObject,
    ParsedOutput,
    _parse_exact_json_list,
    _parse_general,
    answer_text,
    completion_text,
    format_instruction,
    parse_boxes,
    parse_boxes_batch,
    parse_count,
    parse_objects,
    render_objects,
    strip_wrappers,
)
from trl_perception.frames import BOX_FORMATS, convert_frame, frame_of, model_input_size

BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"


def box(x1, y1, x2, y2, label=None):
    return DetectedObject(bbox=(float(x1), float(y1), float(x2), float(y2)), label=label)


def point(x, y, label=None):
    return DetectedObject(point=(float(x), float(y)), label=label)


def qwen2_box(x1, y1, x2, y2, ref=None):
    prefix = f"{REF_START}{ref}{REF_END}" if ref is not None else ""
    return f"{prefix}{BOX_START}({x1},{y1}),({x2},{y2}){BOX_END}"


def assert_parsed(text, objects, *, truncated=False, family=None):
    out = parse_objects(text, family)
    assert out.objects == objects
    assert out.valid is True
    assert out.truncated is truncated


def assert_invalid(text, family=None):
    out = parse_objects(text, family)
    assert out.objects == [] and out.valid is False


# --------------------------------------------------------------------------------------------------
# golden cases: Qwen2-VL box tokens
# --------------------------------------------------------------------------------------------------


def test_qwen2_vl_single_box_with_reference():
    text = qwen2_box(100, 50, 300, 150, ref="the man in red") + "<|im_end|>"
    assert_parsed(text, [box(100, 50, 300, 150, "the man in red")])


def test_qwen2_vl_box_without_reference_has_no_label():
    assert_parsed(qwen2_box(1, 2, 3, 4), [box(1, 2, 3, 4)])


def test_qwen2_vl_repeated_boxes_each_with_its_reference():
    text = qwen2_box(1, 2, 3, 4, ref="cat") + qwen2_box(5, 6, 7, 8, ref="dog")
    assert_parsed(text, [box(1, 2, 3, 4, "cat"), box(5, 6, 7, 8, "dog")])


def test_qwen2_vl_counting_style_one_reference_then_many_boxes():
    text = qwen2_box(1, 2, 3, 4, ref="person") + qwen2_box(5, 6, 7, 8) + qwen2_box(9, 10, 11, 12)
    text += "<|im_end|><|endoftext|><|endoftext|>"
    assert_parsed(text, [box(1, 2, 3, 4, "person"), box(5, 6, 7, 8, "person"), box(9, 10, 11, 12, "person")])


def test_qwen2_vl_boxes_separated_by_commas_and_spaces():
    text = qwen2_box(1, 2, 3, 4, ref="a") + ", " + qwen2_box(5, 6, 7, 8) + "\n" + qwen2_box(9, 9, 9, 9)
    assert_parsed(text, [box(1, 2, 3, 4, "a"), box(5, 6, 7, 8, "a"), box(9, 9, 9, 9, "a")])


def test_qwen2_vl_spaces_inside_a_box_and_points():
    text = f"{BOX_START}( 1 , 2 ) , ( 3 , 4 ){BOX_END}{REF_START}b{REF_END}{BOX_START}(5,6){BOX_END}"
    assert_parsed(text, [box(1, 2, 3, 4), point(5, 6, "b")])


def test_qwen2_vl_box_tokens_are_found_outside_answer_tags():
    text = "<think>the left one</think><answer>" + qwen2_box(1, 2, 3, 4, ref="x") + "</answer>"
    assert_parsed(text, [box(1, 2, 3, 4, "x")])
    assert_parsed(qwen2_box(1, 2, 3, 4), [box(1, 2, 3, 4)], family="qwen2_5_vl")


def test_qwen2_vl_box_with_wrong_arity_is_rejected_but_others_kept():
    text = f"{BOX_START}(1,2),(3){BOX_END}" + qwen2_box(5, 6, 7, 8)
    out = parse_objects(text)
    assert out.objects == [box(5, 6, 7, 8)] and out.valid and out.rejected == 1


def test_qwen2_vl_reference_without_box_is_not_an_answer():
    assert_invalid(f"{REF_START}the man{REF_END}")


def test_qwen2_vl_truncated_after_a_complete_box():
    text = qwen2_box(1, 2, 3, 4, ref="a") + f"{BOX_START}(5,6),(7"
    assert_parsed(text, [box(1, 2, 3, 4, "a")], truncated=True)


# --------------------------------------------------------------------------------------------------
# golden cases: Qwen2.5-VL / Qwen3-VL JSON
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [None, *BOX_FORMATS])
def test_json_list_of_bbox_2d_in_a_fence(family):
    text = (
        "```json\n[\n"
        '\t{"bbox_2d": [135, 114, 211, 286], "label": "person"},\n'
        '\t{"bbox_2d": [0, 0, 640.5, 480], "label": "dining table"}\n'
        "]\n```<|im_end|>"
    )
    assert_parsed(
        text, [box(135, 114, 211, 286, "person"), box(0, 0, 640.5, 480, "dining table")], family=family
    )


def test_json_point_2d_items():
    text = '[{"point_2d": [5, 6], "label": "apple"}, {"point_2d": [7.5, 8]}]'
    assert_parsed(text, [point(5, 6, "apple"), point(7.5, 8)])


def test_json_mixed_boxes_and_points_keep_their_order():
    text = '[{"point_2d": [5, 6]}, {"bbox_2d": [1, 2, 3, 4], "label": "x"}]'
    assert_parsed(text, [point(5, 6), box(1, 2, 3, 4, "x")])


def test_json_key_order_and_extra_keys_do_not_matter():
    text = '[{"label": "cat", "score": 0.9, "bbox_2d": [1, 2, 3, 4]}]'
    assert_parsed(text, [box(1, 2, 3, 4, "cat")])


def test_json_alternative_box_and_label_keys():
    text = '[{"bbox": [1, 2, 3, 4], "name": "cat"}, {"box_2d": [5, 6, 7, 8], "category": "dog"}]'
    assert_parsed(text, [box(1, 2, 3, 4, "cat"), box(5, 6, 7, 8, "dog")])


def test_json_box_as_two_corner_points():
    assert_parsed('[{"bbox_2d": [[1, 2], [3, 4]], "label": "a"}]', [box(1, 2, 3, 4, "a")])


def test_json_numbers_written_as_strings_are_read():
    assert_parsed('[{"bbox_2d": ["1", "2.5", "3", "4"]}]', [box(1, 2.5, 3, 4)])


def test_json_single_object_instead_of_a_list():
    assert_parsed('{"bbox_2d": [1, 2, 3, 4], "label": "cat"}', [box(1, 2, 3, 4, "cat")])
    assert_parsed('<answer>{"point_2d": [5, 6], "label": "x"}</answer>', [point(5, 6, "x")])


def test_json_list_of_bare_boxes_and_of_bare_points():
    assert_parsed("[[1, 2, 3, 4], [5, 6, 7, 8]]", [box(1, 2, 3, 4), box(5, 6, 7, 8)])
    assert_parsed("[[1, 2], [3, 4]]", [point(1, 2), point(3, 4)])


def test_json_malformed_items_are_rejected_and_well_formed_ones_kept():
    text = '[{"bbox_2d": [1, 2, 3]}, {"bbox_2d": [1, 2, 3, 4]}, {"label": "no box"}, {"bbox_2d": [true, 2, 3, 4]}]'
    out = parse_objects(text)
    assert out.objects == [box(1, 2, 3, 4)] and out.valid and not out.truncated and out.rejected == 3


def test_json_list_where_every_item_is_malformed_is_not_an_answer():
    out = parse_objects('[{"bbox_2d": [1, 2, 3]}, {}]')
    assert out.objects == [] and not out.valid and out.rejected == 2


# --------------------------------------------------------------------------------------------------
# golden cases: plain coordinates in prose
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[10, 20, 30, 40]",
        "The box is [10, 20, 30, 40].",
        "[10,20,30,40]",
        "(10, 20, 30, 40)",
        "The answer is (10,20),(30,40).",
        "(10,20) , (30,40)",
        "<answer>[10, 20, 30, 40]</answer>",
        "<answer>(10,20),(30,40)</answer>",
        "Sure! ```\n[10, 20, 30, 40]\n``` Hope this helps.",
    ],
)
def test_plain_box_syntaxes(text):
    assert_parsed(text, [box(10, 20, 30, 40)])


def test_plain_floats_negatives_and_exponents():
    assert_parsed("[-1.5, 2.25, 3e2, .5]", [box(-1.5, 2.25, 300, 0.5)])
    assert_parsed("The answer is (10.5, -2), (30, +40.25)!", [box(10.5, -2, 30, 40.25)])
    assert_parsed("[0.1, 0.2, 0.5, 0.6]", [box(0.1, 0.2, 0.5, 0.6)])  # normalised floats come back as written


def test_plain_several_pairs_in_prose():
    assert_parsed("first (1,2),(3,4) then (5,6),(7,8)", [box(1, 2, 3, 4), box(5, 6, 7, 8)])


def test_prose_around_a_json_answer_and_a_non_answer_bracket_before_it():
    text = 'Looking at the image [see left], the answer is [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]. Done.'
    assert_parsed(text, [box(1, 2, 3, 4, "cat")])
    assert_parsed('I counted [1] object: {"bbox_2d": [1, 2, 3, 4]}', [box(1, 2, 3, 4)])


def test_answer_tag_wins_over_boxes_in_the_thinking():
    text = "<think>maybe [1, 2, 3, 4]</think>\n<answer>[5, 6, 7, 8]</answer>"
    assert_parsed(text, [box(5, 6, 7, 8)])
    assert_invalid("<think>maybe [1, 2, 3, 4]</think>\n<answer>no box</answer>")


def test_last_answer_tag_is_the_answer():
    assert_parsed("<answer>[1, 2, 3, 4]</answer> wait <answer>[5, 6, 7, 8]</answer>", [box(5, 6, 7, 8)])


def test_a_lone_closing_answer_tag_ends_the_answer():
    assert_parsed("[1, 2, 3, 4]</answer> and later [5, 6, 7, 8]", [box(1, 2, 3, 4)])


@pytest.mark.parametrize(
    "text", ["", "   ", "no idea", "There are 3 cats", "[1, 2, 3]", "[1, 2, 3, 4, 5]", "[1, 2"]
)
def test_text_without_an_answer_structure_is_invalid(text):
    assert_invalid(text)


# --------------------------------------------------------------------------------------------------
# truncation and empty answers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, n",
    [
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6', 1),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}', 1),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"},', 1),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}, {"bbox', 2),
        (
            '```json\n[\n  {"bbox_2d": [1, 2, 3, 4], "label": "a"},\n  {"bbox_2d": [5, 6, 7, 8], "label": "b"},\n  {"la',
            2,
        ),
        ('<answer>[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}, {', 2),
    ],
)
def test_truncated_json_list_keeps_complete_items(text, n):
    expected = [box(1, 2, 3, 4, "a"), box(5, 6, 7, 8, "b")][:n]
    for family in (None, "qwen2_5_vl", "qwen3_vl"):
        assert_parsed(text, expected, truncated=True, family=family)


def test_complete_json_list_is_not_truncated():
    out = parse_objects('[{"bbox_2d": [1, 2, 3, 4]}]')
    assert out.valid and not out.truncated


@pytest.mark.parametrize(
    "text",
    ["[]", "[ ]", "[\n]", "```json\n[]\n```", "<answer>[]</answer>", "There is no such object: []<|im_end|>"],
)
def test_explicit_empty_list_is_a_valid_empty_answer(text):
    out = parse_objects(text)
    assert out.valid is True and out.objects == [] and out.empty and out.truncated is False


def test_parsed_output_defaults():
    out = ParsedOutput()
    assert (out.objects, out.valid, out.truncated, out.rejected, out.empty) == ([], False, False, 0, True)


def test_detected_object_center():
    assert box(0, 0, 10, 20).center == (5.0, 10.0)
    assert point(3, 4).center == (3.0, 4.0)
    assert DetectedObject(label="x").center is None


def test_more_than_max_objects_are_cut_at_max_objects():
    text = json.dumps([{"bbox_2d": [1, 2, 3, 4]}] * (MAX_OBJECTS + 5))
    assert len(parse_objects(text).objects) == MAX_OBJECTS
    assert len(parse_objects(qwen2_box(1, 2, 3, 4) * (MAX_OBJECTS + 5)).objects) == MAX_OBJECTS


# --------------------------------------------------------------------------------------------------
# safety: non-finite and absurd numbers, no evaluation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[NaN, 1, 2, 3]",
        "[Infinity, 1, 2, 3]",
        "[-Infinity, 1, 2, 3]",
        "[1e309, 1, 2, 3]",
        "[1, 2, 3, 1e400]",
        "[1, 2, 3, 100001]",
        "[1, 2, 3, -100000.5]",
        "[1, 2, 3, 123456789012]",
        '[{"bbox_2d": [NaN, 1, 2, 3], "label": "a"}]',
        '[{"bbox_2d": [Infinity, 1, 2, 3]}]',
        '{"bbox_2d": [-Infinity, 1, 2, 3]}',
        '[{"point_2d": [1e309, 1]}]',
        "(1e309,2),(3,4)",
        "(nan,2),(3,4)",
        "(inf, 1, 2, 3)",
        f"{BOX_START}(1e309,2),(3,4){BOX_END}",
        f"{BOX_START}(nan,1),(2,3){BOX_END}",
        f"{BOX_START}(99999999,1),(2,3){BOX_END}",
        f"{BOX_START}(12345678901234567890,1),(2,3){BOX_END}",
    ],
)
def test_non_finite_and_absurd_numbers_are_rejected(text):
    out = parse_objects(text)
    assert out.objects == [] and out.valid is False


def test_the_coordinate_limit_itself_is_accepted():
    assert_parsed(f"[1, 2, 3, {MAX_ABS_COORD:g}]", [box(1, 2, 3, MAX_ABS_COORD)])


def test_a_non_finite_item_in_a_json_list_rejects_only_that_item():
    # Decoding NaN used to abort the list, dropping the items after it and reporting truncation.
    text = '[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [NaN, 1, 2, 3]}, {"bbox_2d": [5, 6, 7, 8]}]'
    out = parse_objects(text)
    assert out.objects == [box(1, 2, 3, 4), box(5, 6, 7, 8)]
    assert out.valid and not out.truncated and out.rejected == 1
    out = parse_objects('[{"bbox_2d": [1, 2, 3, 4], "label": NaN}]')
    assert out.objects == [box(1, 2, 3, 4)]


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/pwned')",
        "[__import__('os'), 1, 2, 3]",
        "<answer>eval('1+1')</answer>",
        'exec("import os")',
        "[{'bbox_2d': __import__('os').getcwd()}]",
        f"{BOX_START}(__import__('os'),1),(2,3){BOX_END}",
    ],
)
def test_code_in_the_output_is_inert(monkeypatch, text):
    def forbidden(*args, **kwargs):
        raise AssertionError("model output must never be evaluated")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr("ast.literal_eval", forbidden)
    out = parse_objects(text)
    assert out.objects == [] and out.valid is False
    parse_count(text)  # may read a lone digit, never evaluates


def test_code_in_a_label_is_just_text():
    label = "__import__('os').system('rm -rf /')"
    assert_parsed(json.dumps({"bbox_2d": [1, 2, 3, 4], "label": label}), [box(1, 2, 3, 4, label)])


# --------------------------------------------------------------------------------------------------
# hostile input: bounded time, never raises
# --------------------------------------------------------------------------------------------------

# Run in a child process so that a regression to super-linear regex backtracking (which holds the GIL
# and ignores signals) is killed by the timeout instead of hanging the test session.
_ADVERSARIAL_SCRIPT = textwrap.dedent(
    """
    import json, random, sys, time
    from trl_perception.formats import MAX_ABS_COORD, parse_count, parse_objects

    PIECES = {
        "digits": "1234567890",
        "open_brackets": "[",
        "close_brackets": "]",
        "braces": "{",
        "nested": "[{",
        "quotes": '"',
        "string_list": '["aaaaaaaaaa',
        "number_list": "[1,",
        "box_list": "[1,2,3,",
        "bad_quads": "[1, 2, 3, ",
        "quads": "[1, 2, 3, 4] ",
        "box_token_flood": "<|box_start|>(1,2),(3,4)<|box_end|>",
        "unclosed_box_tokens": "<|box_start|>(1,2),(3,4)",
        "box_start_only": "<|box_start|>",
        "ref_flood": "<|object_ref_start|>a",
        "partial_pairs": "(1,2),(",
        "pairs_and_spaces": "(1,2) ",
        "paren_spaces": "( ",
        "long_numbers": "(11111111111111111111111,",
        "answer_tags": "<answer>",
        "closing_answer_tags": "</answer>",
        "fences": "```json",
        "json_items": '{"bbox_2d": [1, 2, 3, 4], "label": "x"}, ',
        "bad_json_items": '{"bbox_2d": [1, 2, 3], "label": "x"}, ',
        "open_dicts": '{"bbox_2d": [',
        "nan": "NaN, ",
        "huge": "1e309,",
        "spaces": " ",
    }

    def payload(kind, size):
        if kind == "random_mix":
            rng = random.Random(0)
            tokens = list("[]{}(),1.-e\\" ") + ["<|box_start|>", "<|box_end|>", "<answer>", "NaN"]
            out, n = [], 0
            while n < size:
                out.append(rng.choice(tokens))
                n += len(out[-1])
            return "".join(out)[:size]
        if kind == "pair_then_spaces":
            return "(1,2)" + " " * size + "x"
        if kind == "deep_then_answer":
            return "[" * (size - 40) + ' [{"bbox_2d": [1, 2, 3, 4]}]'
        piece = PIECES[kind]
        body = piece * (size // len(piece) + 1)
        return ("[" + body if kind in ("json_items", "bad_json_items") else body)[:size]

    kinds = [*PIECES, "random_mix", "pair_then_spaces", "deep_then_answer"]
    results = {}
    for kind in kinds:
        row = {}
        for size in (100_000, 1_000_000):
            text = payload(kind, size)
            start = time.perf_counter()
            out = parse_objects(text)
            row[size] = time.perf_counter() - start
        coords = [v for o in out.objects for v in (o.bbox or ()) + (o.point or ())]
        ok = all(v == v and abs(v) <= MAX_ABS_COORD for v in coords)
        count = parse_count(payload(kind, 100_000))
        results[kind] = {"t_small": row[100_000], "t_large": row[1_000_000], "n": len(out.objects),
                         "valid": out.valid, "finite": ok, "count": count}
        print(kind, file=sys.stderr, flush=True)
    print(json.dumps(results))
    """
)


def test_one_megabyte_adversarial_completions_parse_in_linear_time():
    try:
        package_root = str(Path(trl_perception.__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.run(
            [sys.executable, "-c", _ADVERSARIAL_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,  # a hang guard only: the whole run takes a few seconds
        )
    except subprocess.TimeoutExpired as err:
        done = (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"parsing adversarial input hung; finished payloads: {done.split()}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for kind, row in results.items():
        assert row["finite"], kind
        assert row["count"] is None or row["count"] >= 0, kind
        # 10x the input may cost at most ~10x the time; the slack absorbs noise on a loaded machine.
        assert row["t_large"] <= 30 * row["t_small"] + 2.0, (kind, row)
    assert results["box_token_flood"]["n"] == MAX_OBJECTS
    assert results["json_items"]["n"] == MAX_OBJECTS
    assert results["deep_then_answer"]["n"] == 1


def test_the_pair_regex_does_not_backtrack_quadratically_on_spaces():
    # (1,2) followed by many spaces used to take O(k^2): ~20 minutes for 1 MB.
    assert parse_objects("(1,2)" + " " * 200_000 + "(3,4)").objects == [point(1, 2), point(3, 4)]
    assert parse_objects("(1,2)" + " " * 200_000 + "," + " " * 200_000 + "(3,4)").objects == [box(1, 2, 3, 4)]


# Pieces that reach every parser branch, mixed with arbitrary text.
_TOKENS = st.sampled_from(
    [
        "[", "]", "{", "}", "(", ")", ",", ":", '"', "'", " ", "\n", "-", ".",
        '"bbox_2d"', '"point_2d"', '"label"', '"bbox"', "true", "null",
        BOX_START, BOX_END, REF_START, REF_END, "<answer>", "</answer>", "<think>", "</think>",
        "```json", "```", "<|im_end|>", "<|endoftext|>",
        "NaN", "Infinity", "-Infinity", "nan", "inf", "1e309", "1e-400", "100001", "99999.9", "0", "12",
        "__import__('os')",
    ]
)  # fmt: skip
_NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(-2e5, 2e5).map(lambda v: f"{v:.3f}"),
)
hostile_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(_TOKENS, _NUMBER_TEXT, st.text(max_size=5)), max_size=60).map("".join),
)


def _assert_well_formed(out):
    assert isinstance(out, ParsedOutput)
    assert isinstance(out.valid, bool) and isinstance(out.truncated, bool)
    assert len(out.objects) <= MAX_OBJECTS
    assert out.valid or not out.objects
    for obj in out.objects:
        assert isinstance(obj, DetectedObject)
        assert (obj.bbox is None) != (obj.point is None)
        coords = obj.bbox if obj.bbox is not None else obj.point
        assert len(coords) == (4 if obj.bbox is not None else 2)
        assert all(isinstance(v, float) and math.isfinite(v) and abs(v) <= MAX_ABS_COORD for v in coords)
        assert obj.label is None or (isinstance(obj.label, str) and obj.label and len(obj.label) <= 300)


@given(text=hostile_text, family=st.sampled_from([None, *BOX_FORMATS]))
@settings(max_examples=400)
def test_any_text_parses_to_a_well_formed_output(text, family):
    _assert_well_formed(parse_objects(text, family))
    count = parse_count(text, family)
    assert count is None or (isinstance(count, int) and count >= 0)


@given(text=hostile_text)
@settings(max_examples=100)
def test_parsing_is_deterministic_and_does_not_depend_on_the_message_wrapper(text):
    conversational = [{"role": "assistant", "content": text}]
    assert parse_objects(conversational) == parse_objects(text) == parse_objects(text)


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        3.5,
        b"[1, 2, 3, 4]",
        {"content": "[1, 2, 3, 4]"},
        [[[[]]]],
        [{"role": "assistant"}],
        object(),
    ],
)
def test_non_string_completions_never_raise(value):
    _assert_well_formed(parse_objects(value))
    parse_count(value)


def test_unknown_family_is_a_value_error():
    with pytest.raises(ValueError, match="unknown box_format"):
        parse_objects("[1, 2, 3, 4]", box_format="llava")


# --------------------------------------------------------------------------------------------------
# render_objects -> parse_objects -> convert_frame round trip
# --------------------------------------------------------------------------------------------------


def test_render_golden_values():
    objects = [{"bbox_2d": [64, 24, 192, 72], "label": "cat"}]
    assert render_objects(objects, "qwen2_vl", (640, 480)) == qwen2_box(100, 50, 300, 150, ref="cat")
    assert (
        render_objects(objects, "qwen3_vl", (640, 480))
        == '[{"bbox_2d": [100, 50, 300, 150], "label": "cat"}]'
    )
    assert (
        render_objects(objects, "qwen2_5_vl", (640, 480), (644, 476))
        == '[{"bbox_2d": [64, 24, 193, 71], "label": "cat"}]'
    )
    fenced = render_objects(objects, "qwen3_vl", (640, 480), fence=True)
    assert fenced == '```json\n[{"bbox_2d": [100, 50, 300, 150], "label": "cat"}]\n```'


def test_render_qwen2_vl_shares_one_reference_between_consecutive_equal_labels():
    objects = [
        {"bbox_2d": [0, 0, 10, 10], "label": "a"},
        {"bbox_2d": [10, 10, 20, 20], "label": "a"},
        {"point_2d": [5, 5], "label": "b"},
        {"bbox_2d": [0, 0, 1000, 1000], "label": "a"},
    ]
    text = render_objects(objects, "qwen2_vl", (1000, 1000))
    assert text == (
        qwen2_box(0, 0, 10, 10, ref="a")
        + qwen2_box(10, 10, 20, 20)
        + f"{REF_START}b{REF_END}{BOX_START}(5,5){BOX_END}"
        + qwen2_box(0, 0, 1000, 1000, ref="a")
    )


def test_render_accepts_detected_objects_and_bare_boxes_and_skips_empty_objects():
    objects = [box(0, 0, 10, 10, "x"), [0, 0, 5, 5], DetectedObject(label="nothing")]
    assert render_objects(objects, "qwen3_vl", (10, 10)) == (
        '[{"bbox_2d": [0, 0, 1000, 1000], "label": "x"}, {"bbox_2d": [0, 0, 500, 500]}]'
    )
    assert render_objects([], "qwen3_vl", (10, 10)) == "[]"
    assert parse_objects(render_objects([], "qwen3_vl", (10, 10))).valid


def test_render_for_qwen2_5_vl_needs_input_size():
    with pytest.raises(ValueError, match="input_size"):
        render_objects([[0, 0, 1, 1]], "qwen2_5_vl", (640, 480))


_LABEL = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC XYZ0123456789-_'éü猫", min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)


@st.composite
def scenes(draw):
    family = draw(st.sampled_from(BOX_FORMATS))
    height = draw(st.integers(1, 3000))
    width = draw(st.integers(max(1, math.ceil(height / 150)), min(3000, height * 150)))
    input_size = model_input_size((width, height), family)
    labelled = draw(st.booleans())
    objects = []
    for _ in range(draw(st.integers(0, 6))):
        label = draw(_LABEL) if labelled else None
        xs = sorted(draw(st.floats(0, width)) for _ in range(2))
        ys = sorted(draw(st.floats(0, height)) for _ in range(2))
        if draw(st.booleans()):
            objects.append(DetectedObject(bbox=(xs[0], ys[0], xs[1], ys[1]), label=label))
        else:
            objects.append(DetectedObject(point=(xs[0], ys[0]), label=label))
    return family, (width, height), input_size, objects


@given(scene=scenes(), fence=st.booleans(), hint=st.booleans())
@settings(max_examples=300)
def test_render_parse_convert_round_trips_within_quantization(scene, fence, hint):
    family, image_size, input_size, objects = scene
    text = render_objects(objects, family, image_size, input_size, fence=fence)
    out = parse_objects(text, family if hint else None)
    # Qwen2-VL's box tokens cannot spell "no objects": an empty scene renders as "" (not an answer).
    assert out.valid is (bool(objects) or family != "qwen2_vl")
    assert not out.truncated and out.rejected == 0
    assert len(out.objects) == len(objects)
    frame = frame_of(family)
    frame_size = {"norm1000": (1000, 1000), "input": input_size}[frame]
    # Rounding to integers in the family's frame moves a coordinate by at most half a frame unit.
    tol = 0.5 * np.array([image_size[0] / frame_size[0], image_size[1] / frame_size[1]]) + 1e-6
    for original, parsed in zip(objects, out.objects):
        assert parsed.label == original.label
        assert (parsed.bbox is None) == (original.bbox is None)
        coords = parsed.bbox if parsed.bbox is not None else parsed.point
        expected = original.bbox if original.bbox is not None else original.point
        back = convert_frame(coords, frame, "pixels", image_size, input_size)
        error = np.abs(back - np.asarray(expected)).reshape(-1, 2)
        assert (error <= tol).all() and (error <= 1.0 + tol).all()


@given(scene=scenes())
@settings(max_examples=100)
def test_rendered_text_parses_the_same_under_every_family_hint(scene):
    family, image_size, input_size, objects = scene
    text = render_objects(objects, family, image_size, input_size)
    results = [parse_objects(text, hint) for hint in (None, *BOX_FORMATS)]
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize("family", BOX_FORMATS)
def test_coco_box_round_trip_golden(family):
    image_size = (640, 480)
    input_size = model_input_size(image_size, family)
    gt = [64.3, 24.7, 192.2, 71.9]
    text = render_objects([{"bbox_2d": gt, "label": "cat"}], family, image_size, input_size)
    parsed = parse_objects(text, family).objects[0]
    back = convert_frame(parsed.bbox, frame_of(family), "pixels", image_size, input_size)
    frame_w, frame_h = input_size if family == "qwen2_5_vl" else (1000, 1000)
    error = np.abs(back - gt)
    assert (error[0::2] <= 0.5 * 640 / frame_w + 1e-9).all() and (
        error[1::2] <= 0.5 * 480 / frame_h + 1e-9
    ).all()


# --------------------------------------------------------------------------------------------------
# parse_count
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, count",
    [
        ('[{"point_2d": [1, 2]}, {"point_2d": [3, 4]}]', 2),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```', 1),
        (qwen2_box(1, 2, 3, 4, ref="car") + qwen2_box(5, 6, 7, 8) + qwen2_box(9, 9, 9, 9), 3),
        ("[]", 0),
        ("<answer>[]</answer>", 0),
        ("There are 7.", 7),
        ("<answer>5</answer>", 5),
        ("0", 0),
        ("999999", 999999),
        ("There are 2 boxes: [1, 2, 3, 4]", 1),  # listed objects win over a stated number
        ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6', 1),  # truncated: complete items count
        ("no idea", None),
        ("", None),
        ("I count 3 apples and 4 pears", None),  # ambiguous
        ("3.5", None),
        ("1000000", None),
        ("x" * 1000 + "7", None),
    ],
)
def test_parse_count(text, count):
    assert parse_count(text) == count


def test_parse_count_reads_conversational_completions():
    assert parse_count([{"role": "assistant", "content": "There are 12 cars."}]) == 12
    assert (
        parse_count([{"role": "assistant", "content": [{"type": "text", "text": "[[1, 2], [3, 4]]"}]}]) == 2
    )


# --------------------------------------------------------------------------------------------------
# completion_text and strip_wrappers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, text",
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "[1, 2, 3, 4]"}], "[1, 2, 3, 4]"),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "ab",
        ),
        ({"role": "assistant", "content": "x"}, "x"),
        ([{"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"}], "answer"),
        ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "ab"),
        ([{"type": "text", "text": "part"}], "part"),
        ([{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "t"}]}], "t"),
        (None, ""),
        ([], ""),
    ],
)
def test_completion_text(completion, text):
    assert completion_text(completion) == text


@pytest.mark.parametrize(
    "raw, stripped",
    [
        ("<answer>```json\n[1, 2]\n```</answer><|im_end|><|endoftext|>", "[1, 2]"),
        ("  [1, 2]  ", "[1, 2]"),
        ("<think>hmm</think><answer>[1, 2]</answer>", "[1, 2]"),
        ("<answer>a</answer> then <answer>b</answer>", "b"),
        ("<think>hmm</think><answer>[1, 2", "[1, 2"),  # unclosed: runs to the end
        ("[1, 2]</answer>trailing", "[1, 2]"),  # the opening tag was in the prompt
        ("```python\ncode\n```", "code"),
        ("```\n[1]\n```", "[1]"),
        ("<|im_start|>x<|eot_id|><|endoftext|><|endoftext|>", "x"),
        ("a<|endoftext|>b", "ab"),
        ("", ""),
    ],
)
def test_strip_wrappers(raw, stripped):
    assert strip_wrappers(raw) == stripped


def test_strip_wrappers_reads_conversational_completions():
    assert strip_wrappers([{"role": "assistant", "content": "<answer>7</answer>"}]) == "7"


@given(text=st.text(max_size=200))
def test_strip_wrappers_is_idempotent_on_answers_without_tags(text):
    once = strip_wrappers(text)
    if "<answer>" not in once and "</answer>" not in once:
        assert strip_wrappers(once) == once


# --------------------------------------------------------------------------------------------------
# format_instruction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["grounding", "counting", "detection"])
def test_format_instruction_describes_each_familys_syntax_and_frame(task):
    qwen2 = format_instruction("qwen2_vl", task)
    assert f"{REF_START}name{REF_END}" in qwen2 and f"{BOX_START}(x1,y1),(x2,y2){BOX_END}" in qwen2
    assert "0-1000" in qwen2
    qwen25 = format_instruction("qwen2_5_vl", task)
    assert '"bbox_2d": [x1, y1, x2, y2]' in qwen25 and "absolute pixel" in qwen25 and "0-1000" not in qwen25
    qwen3 = format_instruction("qwen3_vl", task)
    assert '"bbox_2d": [x1, y1, x2, y2]' in qwen3 and "0-1000" in qwen3
    for family in BOX_FORMATS:
        text = format_instruction(family, task)
        assert text.startswith("Answer with") and text.endswith(".") and "{" not in text.replace('{"', "")


def test_format_instruction_golden():
    assert format_instruction("qwen3_vl", "detection") == (
        'Answer with a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": name} for each object, '
        "with coordinates scaled to 0-1000."
    )


@pytest.mark.parametrize("family", [None, *BOX_FORMATS])
def test_format_instruction_is_empty_for_ocr_and_without_a_family(family):
    assert format_instruction(family, "ocr") == ""
    assert format_instruction(None, "grounding") == ""


def test_format_instruction_rejects_unknown_families_for_box_tasks():
    with pytest.raises(ValueError, match="unknown box_format"):
        format_instruction("llava", "grounding")


# ---------------------------------------------------------------- fast path for exact JSON lists


def _general(text, family):
    return _parse_general(text, strip_wrappers(text), family)


NUMBER = st.one_of(
    st.integers(-200_000, 200_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(10**400),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
COORDS = st.one_of(
    st.lists(NUMBER, min_size=0, max_size=5), NUMBER, st.lists(st.lists(NUMBER, max_size=2), max_size=2)
)
ITEM = st.one_of(
    st.dictionaries(
        st.sampled_from(["bbox_2d", "point_2d", "label", "name", "bbox", "score"]),
        st.one_of(COORDS, st.text(max_size=8), st.just("  cat  ")),
        max_size=3,
    ),
    COORDS,
    st.text(max_size=5),
)
WRAPPERS = st.sampled_from(
    ["{}", "```json\n{}\n```", "<answer>{}</answer>", "{}<|im_end|>", "  {}\n", "x {}", "{}]"]
)


@given(
    items=st.lists(ITEM, max_size=6),
    wrapper=WRAPPERS,
    family=st.sampled_from([None, "qwen2_5_vl", "qwen3_vl"]),
)
def test_fast_path_equals_the_general_parsers(items, wrapper, family):
    text = wrapper.format(json.dumps(items))
    assert parse_objects(text, family) == _general(text, family)


@given(
    boxes=st.lists(st.lists(st.integers(0, 2000), min_size=4, max_size=4), max_size=40),
    label=st.sampled_from(["cat", " Dog ", "traffic light", ""]),
)
def test_fast_path_equals_the_general_parsers_on_well_formed_lists(boxes, label):
    text = json.dumps([{"bbox_2d": b, "label": label} for b in boxes])
    assert _parse_exact_json_list(strip_wrappers(text)) is not None
    assert parse_objects(text, "qwen2_5_vl") == _general(text, "qwen2_5_vl")


def test_fast_path_leaves_box_tokens_to_the_full_parser():
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    assert parse_objects(text, "qwen2_vl") == _general(text, "qwen2_vl")


# --------------------------------------------------------------------------------------------------
# hardening (#12): points without tokens, negative counts, answers after many brackets, thinking
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "objects"),
    [
        # skip_special_tokens=True leaves Qwen2-VL points as consecutive pairs: each is a point.
        ("bird(16,21)(116,121)(216,221)(316,321)", [point(16, 21), point(116, 121), point(216, 221), point(316, 321)]),
        ("(1,2) (3,4)", [point(1, 2), point(3, 4)]),
        ("bird(16,21),(116,121)", [box(16, 21, 116, 121)]),
        ("(1,2),(3,4)(5,6),(7,8)", [box(1, 2, 3, 4), box(5, 6, 7, 8)]),
        ("(1,2)(3,4),(5,6)(7,8)", [point(1, 2), box(3, 4, 5, 6), point(7, 8)]),
        ("At (1,2), and (3,4).", [point(1, 2), point(3, 4)]),
        ("Sure, (1,2)(3,4)", [point(1, 2), point(3, 4)]),
    ],
)  # fmt: skip
def test_pairs_in_prose_are_boxes_when_joined_by_a_comma_else_points(text, objects):
    assert_parsed(text, objects)


@pytest.mark.parametrize(
    ("text", "objects", "rejected"),
    [
        ("(nan,2),(3,4)", [], 1),  # half of a malformed box is not a point
        ("(1,2),(nan,3)(5,6)", [point(5, 6)], 1),
        ("(1,2), (3,4), (5,6)", [box(1, 2, 3, 4)], 1),
    ],
)
def test_a_pair_joined_to_a_malformed_one_is_rejected(text, objects, rejected):
    out = parse_objects(text)
    assert out.objects == objects and out.rejected == rejected


def test_a_lone_box_beside_points_keeps_quadruples_first():
    # Quadruples are read before bare points, as before points were read at all.
    assert_parsed("[10, 20, 30, 40] near (1,2)", [box(10, 20, 30, 40)])


@pytest.mark.parametrize("text", ["-3", "\u22123", "There are -3 birds.", "-0", "count: \u20133"])
def test_a_negative_number_is_not_a_count(text):
    assert parse_count(text) is None


@given(st.integers(0, 999_999), st.sampled_from(["{}", "There are {} birds.", "<answer>{}</answer>", "{} "]))
def test_a_lone_non_negative_integer_is_the_count(k, template):
    assert parse_count(template.format(k)) == k
    assert parse_count(template.format(f"-{k}")) is None


_PHRASES = st.sampled_from(
    ["[see left]", "[1]", "[a b]", "[the red car]", "[2, 3, 4]", "[x]", "{a}", "[1, 2, 3, 4, 5]"]
)


@settings(deadline=None)
@given(phrases=st.lists(_PHRASES, min_size=0, max_size=120), family=st.sampled_from([None, "qwen2_5_vl"]))
def test_a_json_answer_after_any_number_of_bracketed_phrases_is_found(phrases, family):
    text = " ".join(phrases) + ' so the answer is [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]'
    assert parse_objects(text, family).objects == [box(1, 2, 3, 4, "cat")]


def test_a_json_answer_after_sixteen_bracketed_phrases_is_found():
    text = " ".join(f"[phrase {i}]" for i in range(16)) + ' [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]'
    assert_parsed(text, [box(1, 2, 3, 4, "cat")])
    text = " ".join(f"[{i}]" for i in range(40)) + ' {"bbox_2d": [5, 6, 7, 8]}'
    assert_parsed(text, [box(5, 6, 7, 8)])


def test_only_the_answer_is_read_after_thinking():
    thinking = "<think>" + qwen2_box(1, 2, 3, 4, ref="x") + " maybe (9,9),(8,8) or [1, 1, 2, 2]</think>"
    assert_parsed(thinking + "<answer>[5, 6, 7, 8]</answer>", [box(5, 6, 7, 8)])
    assert_parsed(
        thinking + "<answer>" + qwen2_box(5, 6, 7, 8, ref="y") + "</answer>", [box(5, 6, 7, 8, "y")]
    )
    assert_invalid(thinking + "<answer>I do not know.</answer>")
    assert answer_text(thinking + "<answer> [] </answer><|im_end|>") == " [] "


# Answers the lean path reads: JSON lists of boxes and points, with or without labels, in any layout, plus
# near misses (extra keys, bools, strings, NaN, huge numbers) that must fall through to the general parsers.
_ITEM = st.one_of(
    st.builds(lambda b, lab: {"bbox_2d": b, "label": lab},
              st.lists(st.integers(-10, 10**6), min_size=4, max_size=4), st.text(max_size=8)),
    st.builds(lambda b: {"bbox_2d": b}, st.lists(st.floats(-1e6, 1e6), min_size=4, max_size=4)),
    st.builds(lambda p, lab: {"point_2d": p, "label": lab},
              st.lists(st.integers(-5, 50), min_size=2, max_size=2), st.sampled_from(["bird", "  ", ""])),
    st.builds(lambda b: {"bbox_2d": b, "label": "x", "score": 1}, st.lists(st.integers(0, 9), min_size=4, max_size=4)),
    st.builds(lambda b: {"bbox_2d": b, "label": True}, st.lists(st.integers(0, 9), min_size=4, max_size=4)),
    st.builds(lambda b: {"bbox_2d": b, "label": "x"}, st.lists(st.sampled_from([1, True, "2", None, 1e400, 10**400]),
                                                                 min_size=4, max_size=4)),
)  # fmt: skip


@given(
    items=st.lists(_ITEM, max_size=6),
    indent=st.sampled_from([None, 1]),
    wrapper=st.sampled_from(["{}", "```json\n{}\n```", "<answer>{}</answer>"]),
    require_label=st.booleans(),
)
def test_parse_boxes_equals_filtering_the_general_parse(items, indent, wrapper, require_label):
    text = wrapper.format(json.dumps(items, indent=indent))
    scope = answer_text(text)
    general = _parse_general(scope, scope.replace("```json", "").replace("```", "").strip(), None)
    kept = [o for o in general.objects if o.bbox is not None and (o.label is not None or not require_label)]
    out = parse_boxes(text, require_label=require_label)
    assert [tuple(b) for b in out.boxes] == [o.bbox for o in kept]
    assert out.labels == [o.label for o in kept]
    assert out.rejected == general.rejected + len(general.objects) - len(kept)
    assert out.valid == general.valid and out.truncated == general.truncated



# ------------------------------------------------------------------ parse_boxes_batch equals parse_boxes (#12)

# Numbers as text, JSON-valid or not: what the canonical split lets through must be decided exactly as the
# decoder decides it (leading zeros, a lone point, "+", "-0", huge, just beyond MAX_ABS_COORD, exponents).
_NUMBER_TEXT = st.one_of(
    st.integers(-120_000, 120_000).map(str),
    st.floats(-1.2e5, 1.2e5, allow_nan=False).map(repr),
    st.sampled_from(["-0", "-0.0", "0", "01", "1.", ".5", "+1", "1e5", "1E-3", "1e400", "-1e400", "100000",
                     "100000.00000000001", "-100000", "1e", "1.5e+2", "2e-400", "10" * 30, "1_0", "NaN",
                     "Infinity", "true", "null", "", " 7 ", "\t8\n", "1 2", "--1", "0x10", "1,5"]),
)  # fmt: skip
_LABEL_TEXT = st.one_of(
    st.sampled_from(["cat", " Dog ", "", "   ", "traffic light", "a\\\"b", "tab\\tx", "\\u00e9t\\u00e9", "x" * 305,
                     "cat\\ud800", "\\ud83d\\ude00", "]", "}, {", '", "label": "', "\u2028", "\u00a0cat"]),
    st.text(max_size=6),
)  # fmt: skip
_SEPARATOR = st.sampled_from([", ", ",", ",\n\t", " ,\n", "\n, ", ",\r\n  ", ";", ", ,", " "])


_CANONICAL = '{"bbox_2d": [%s], "label": "%s"}'
_NEAR_CANONICAL = ['{"bbox_2d":[%s],"label":"%s"}', '{"label": "%s", "bbox_2d": [%s]}',
                   '{"bbox_2d": [%s], "label": "%s", "score": 1}', '{"point_2d": [%s], "label": "%s"}']  # fmt: skip
_GOOD_NUMBER = st.one_of(st.integers(-2000, 2000).map(str), st.floats(-2000, 2000, allow_nan=False).map(repr))


@st.composite
def canonical_answers(draw):
    """Answers in (or near) the canonical layout, assembled as text: mostly canonical, so that the bulk path
    runs, with near misses in the numbers, labels, item layout, separators and ends."""
    clean = draw(st.integers(0, 9)) < 7
    items = []
    for _ in range(draw(st.integers(0, 8))):
        count = 4 if clean or draw(st.booleans()) else draw(st.sampled_from([3, 5]))
        numbers = ", ".join(draw(_GOOD_NUMBER if draw(st.integers(0, 9)) else _NUMBER_TEXT) for _ in range(count))
        label = draw(st.sampled_from(["cat", " Dog ", "", "\u00e9t\u00e9"]) if draw(st.integers(0, 5)) else _LABEL_TEXT)
        inner = _CANONICAL if clean or draw(st.booleans()) else draw(st.sampled_from(_NEAR_CANONICAL))
        items.append(inner % ((label, numbers) if inner.startswith('{"label"') else (numbers, label)))
    separator = draw(st.sampled_from([", ", ",\n  ", ",\r\n\t"]) if clean else _SEPARATOR)
    text = "[" + draw(st.sampled_from(["", "\n  ", " "])) + separator.join(items)
    text += draw(st.sampled_from(["]", "\n]", " ]"] if clean else ["]", "", ",]", "]]", "] x"]))
    if not clean and draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] if draw(st.booleans()) else text[:cut] + draw(st.text(max_size=3)) + text[cut:]
    wrappers = ["{}", "```json\n{}\n```", "<answer>{}</answer>", "{}<|im_end|>"] + ([] if clean else ["x {}"])
    return draw(st.sampled_from(wrappers)).format(text)


def _assert_batch_equals_one_by_one(texts, require_label=True, box_format=None):
    batch = parse_boxes_batch(texts, box_format, require_label=require_label)
    assert batch.coords.dtype == np.float64 and batch.coords.shape == (len(batch.labels), 4)
    formats = [box_format] * len(texts) if box_format is None or isinstance(box_format, str) else box_format
    for i, (text, family) in enumerate(zip(texts, formats)):
        expected = parse_boxes(text, family, require_label=require_label)
        got = batch.parsed(i)
        assert got == expected, (text, got, expected)
        assert [math.copysign(1, v) for b in got.boxes for v in b] == [
            math.copysign(1, v) for b in expected.boxes for v in b
        ]  # the same floats, down to the sign of zero


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(canonical_answers(), min_size=1, max_size=6), require_label=st.booleans())
def test_parse_boxes_batch_equals_parse_boxes_on_near_canonical_answers(texts, require_label):
    _assert_batch_equals_one_by_one(texts, require_label)


@settings(deadline=None)
@given(
    texts=st.lists(st.one_of(st.text(max_size=40), canonical_answers(), st.builds(json.dumps, st.lists(
        st.fixed_dictionaries({"bbox_2d": st.lists(st.integers(-5, 2000), min_size=4, max_size=4),
                               "label": st.text(max_size=5)}), max_size=5))), max_size=8),
    family=st.sampled_from([None, "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]),
)  # fmt: skip
def test_parse_boxes_batch_equals_parse_boxes_on_any_text(texts, family):
    mixed = [family if k % 2 else None for k in range(len(texts))]
    _assert_batch_equals_one_by_one(texts, box_format=mixed)
    _assert_batch_equals_one_by_one(texts + [qwen2_box(1, 2, 3, 4, ref="cat"), "(1,2),(3,4)", "[]", ""])


def test_parse_boxes_batch_on_duplicates_huge_numbers_and_megabyte_answers():
    one = {"bbox_2d": [1, 2, 3, 4], "label": "cat"}
    texts = [
        json.dumps([one] * 5),  # duplicates
        json.dumps([one, {"bbox_2d": [1, 2, 3, 10**400], "label": "dog"}]),  # an int too large for a float
        json.dumps([one, {"bbox_2d": [1, 2, 3, 1e300], "label": "dog"}]),  # beyond MAX_ABS_COORD
        json.dumps([{"bbox_2d": [0, 0, MAX_ABS_COORD, -MAX_ABS_COORD], "label": "edge"}]),
        json.dumps([one] * (MAX_OBJECTS + 5)),  # more than MAX_OBJECTS: the general parser's cap applies
        json.dumps([one] * 30_000),  # 1 MB
        json.dumps([one] * 30_000)[:-2],  # 1 MB, truncated
        '[{"bbox_2d": [' + "1" * 1_000_000 + "]",  # 1 MB of digits
        '{"bbox_2d": [1, 2, 3, 4], "label": "x"} ' * 25_000,  # 1 MB of objects outside a list
    ]
    assert len(texts[5]) > 1_000_000
    _assert_batch_equals_one_by_one(texts)
    batch = parse_boxes_batch(texts[:1])
    assert batch.coords.tolist() == [[1.0, 2.0, 3.0, 4.0]] * 5 and batch.labels == ["cat"] * 5


def test_parse_boxes_batch_checks_its_box_formats():
    with pytest.raises(ValueError, match="box_format"):
        parse_boxes_batch(["[]"], "qwen9")
    with pytest.raises(ValueError, match="2 values for 1"):
        parse_boxes_batch(["[]"], [None, None])
