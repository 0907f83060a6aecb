"""Specification of `ocr_reward`: 1 - normalised character edit distance after whitespace normalisation."""

import json
import logging
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trl_perception.rewards import _common, ocr_reward
from trl_perception.rewards.ocr import normalize_whitespace


@pytest.fixture(autouse=True)
def fresh_warning_counts():
    _common._WARN_COUNTS.clear()


def levenshtein_dp(a, b):
    """Textbook dynamic programme, the reference for the C implementation."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def test_exact_text_scores_one():
    assert ocr_reward(["The quick brown fox."], ["The quick brown fox."]) == [1.0]


def test_kitten_sitting_is_one_minus_three_sevenths():
    assert ocr_reward(["kitten"], ["sitting"]) == [pytest.approx(1 - 3 / 7)]


def test_whitespace_runs_and_ends_do_not_count():
    assert ocr_reward(["  Hello \n\n world\t"], ["Hello world"]) == [1.0]


def test_padding_tokens_are_removed():
    assert ocr_reward(["Hello world<|im_end|><|endoftext|><|endoftext|>"], ["Hello world"]) == [1.0]


def test_both_empty_score_one_and_one_empty_scores_zero():
    assert ocr_reward(["", "   ", "", "text"], ["", "\n", "text", ""]) == [1.0, 1.0, 0.0, 0.0]


def test_conversational_completion_and_json_string_solution():
    completion = [{"role": "assistant", "content": "Page one"}]
    assert ocr_reward([completion], [json.dumps("Page one")]) == [1.0]


def test_quoted_text_that_is_not_a_json_literal_is_kept_as_is():
    text = '"Hello," she said. "Bye"'
    assert ocr_reward([text], [text]) == [1.0]


def test_other_tasks_get_none():
    assert ocr_reward(["a", "a"], ["a", "a"], task=["ocr", "grounding"]) == [1.0, None]


@pytest.mark.parametrize("solution", [None, 42, ["a"], {"text": "a"}])
def test_non_text_solution_gives_none_and_a_warning(solution, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_perception.rewards"):
        assert ocr_reward(["a", "a"], [solution, "a"]) == [None, 1.0]
    assert any("ocr_reward: row 0 skipped" in r.getMessage() for r in caplog.records)


def test_edit_distance_is_logged():
    metrics, extra = {}, {}
    ocr_reward(
        ["kitten", "abc"],
        ["sitting", "abc"],
        log_metric=lambda name, value: metrics.__setitem__(name, value),
        log_extra=lambda column, values: extra.__setitem__(column, values),
    )
    assert metrics == {"ocr_reward/edit_distance": pytest.approx(3 / 14)}
    assert extra == {"ocr_reward/edit_distance": [pytest.approx(3 / 7), 0.0]}


@given(pred=st.text(max_size=60), gt=st.text(max_size=60))
def test_reward_matches_the_textbook_edit_distance(pred, gt):
    assume(not gt.strip().startswith('"'))  # a JSON string literal is decoded first
    a, b = normalize_whitespace(pred), normalize_whitespace(gt)
    expected = 1.0 if not (a or b) else 1 - levenshtein_dp(a, b) / max(len(a), len(b))
    assert ocr_reward([pred], [gt]) == [pytest.approx(expected)]


@given(pred=st.text(), gt=st.text())
def test_any_text_gives_a_finite_reward_in_range(pred, gt):
    (reward,) = ocr_reward([pred], [gt])
    assert math.isfinite(reward) and 0.0 <= reward <= 1.0


def test_only_the_answer_is_read_after_thinking():
    # With R1-style thinking the transcription is inside <answer>; the thinking must not cost edit distance.
    text = "<think>The page says Hello world, I think.</think><answer>Hello  world</answer><|im_end|>"
    assert ocr_reward([text, [{"role": "assistant", "content": text}]], ["Hello world"] * 2) == [1.0, 1.0]
    # Without tags nothing changes.
    assert ocr_reward(["Hello world<|endoftext|>"], ["Hello world"]) == [1.0]
