"""Specification of the jigsaw rewards: hand-computed golden values, no pay beyond chance for trivial
answers, the format reward, task routing, the registry, the per-grid summary and fuzzing."""

import itertools
import json
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import token_soup
from trl_perception.data.jigsaw import jigsaw_spec
from trl_perception.formats import parse_jigsaw_choice, parse_jigsaw_grid
from trl_perception.rewards import get_reward, jigsaw_format_reward, jigsaw_reward, make_jigsaw_reward
from trl_perception.rewards.jigsaw import connection_accuracy, jigsaw_metrics, jigsaw_scores, jigsaw_target

connections_reward = make_jigsaw_reward("connections")


def full(answer, rows, cols, think=False):
    return json.dumps({"question": "full", "grid": [rows, cols], "answer": answer, "think": think})


def choice(question, answer, options=None, rows=2, cols=2, think=False):
    solution = {"question": question, "grid": [rows, cols], "answer": answer, "think": think}
    if options is not None:
        solution["options"] = options
    return json.dumps(solution)


# ------------------------------------------------------------------------------------------ golden values


def test_golden_positions_2x2():
    # truth: position 1 shows original 3, 2 shows 1, 3 shows 4, 4 shows 2
    solution = full([3, 1, 4, 2], 2, 2)
    completions = ["3 1\n4 2", "3 1\n2 4", "1 2\n3 4", "4 2\n3 1"]
    # matches:      4/4        2/4         0/4        0/4
    assert jigsaw_reward(completions, [solution] * 4) == [1.0, 0.5, 0.0, 0.0]


def test_golden_connections_2x2():
    solution = full([3, 1, 4, 2], 2, 2)
    # "3 1 / 2 4": puzzle patch 3 (true 4) goes to 2 and patch 4 (true 2) to 4 -> reassembled cells hold
    # true positions [1, 4, 3, 2]: top 1|4 no, bottom 3|2 no, left 1/3 yes, right 4/2 no -> 1/4
    # "1 2 / 3 4" (identity): cells hold [3, 1, 4, 2]: 3|1 no, 4|2 no, 3/4 no, 1/2 no -> 0
    # "4 3 / 2 1": cells hold true [2, 4, 1, 3]... patch 1 (true 3) -> 4, 2 (true 1) -> 3, 3 (true 4) -> 2,
    #   4 (true 2) -> 1: cells [2, 4, 1, 3]: 2|4 no, 1|3 no, 2/1 no, 4/3 no -> 0
    # "1 3 / 2 4": patch 1 (3)->1, 2 (1)->3, 3 (4)->2, 4 (2)->4: cells [3, 4, 1, 2]: 3|4 yes, 1|2 yes,
    #   3/1 no, 4/2 no -> 2/4 (the two rows swapped)
    completions = ["3 1\n4 2", "3 1\n2 4", "1 2\n3 4", "4 3\n2 1", "1 3\n2 4"]
    assert connections_reward(completions, [solution] * 5) == [1.0, 0.25, 0.0, 0.0, 0.5]


def test_golden_connections_2x3():
    truth = [1, 2, 3, 4, 5, 6]
    # swapping the two rows keeps the 4 horizontal pairs of 7 (2*6-2-3) -> 4/7
    assert connection_accuracy([4, 5, 6, 1, 2, 3], truth, 2, 3) == pytest.approx(4 / 7)
    # shifting each row by one column (3 1 2 / 6 4 5) keeps 1|2, 4|5 and the three verticals -> 5/7
    assert connection_accuracy([2, 3, 1, 5, 6, 4], truth, 2, 3) == pytest.approx(5 / 7)
    assert connection_accuracy(truth, truth, 2, 3) == 1.0


def test_golden_exact_match_for_letters_and_numbers():
    single = choice("single", 3)
    pair = choice("pair", "C", options=8)
    assert jigsaw_reward(["3", "(3)", "4", "3 4", "03"], [single] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert jigsaw_reward(["C", "c", "(C).", "B", "C D"], [pair] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert connections_reward(["C"], [pair]) == [1.0]  # exact match whatever the metric


def test_answers_inside_tags_and_fences_are_read():
    solution = full([2, 1], 1, 2, think=True)
    text = "<think>the left patch is the sky</think><answer>```\n2 1\n```</answer><|im_end|>"
    assert jigsaw_reward([text], [solution]) == [1.0]
    assert jigsaw_format_reward([text.replace("```\n", "").replace("\n```", "")], [solution]) == [1.0]


@pytest.mark.parametrize("text", ["", "2", "2 1 3", "2 x", "0 1", "2 3", "2,,", "twenty one", "2.0 1.0"])
def test_unparseable_or_wrong_length_answers_score_zero(text):
    assert jigsaw_reward([text], [full([2, 1], 1, 2)]) == [0.0]


# ------------------------------------------------------------------------------------ no pay beyond chance


def all_truths(rows, cols):
    return [list(p) for p in itertools.permutations(range(1, rows * cols + 1))]


@pytest.mark.parametrize("grid", [(2, 2), (1, 3), (3, 1), (1, 4)])
def test_every_fixed_answer_earns_exactly_chance_over_uniform_puzzles(grid):
    rows, cols = grid
    truths = all_truths(rows, cols)  # permutations are uniform over these (tested with the builder)
    solutions = [full(t, rows, cols) for t in truths]
    means = {"positions": [], "connections": []}
    for fixed in truths:  # the identity and every other constant answer
        text = " ".join(map(str, fixed))
        means["positions"].append(np.mean(jigsaw_reward([text] * len(truths), solutions)))
        means["connections"].append(np.mean(connections_reward([text] * len(truths), solutions)))
    n = rows * cols
    assert means["positions"] == pytest.approx([1 / n] * len(truths))
    # each fixed answer earns the same as a uniformly random guess: the mean over all answers
    assert np.ptp(means["connections"]) == pytest.approx(0.0)
    identity = truths[0]
    assert identity == list(range(1, n + 1))


@pytest.mark.parametrize("text", ["1 1 1 1", "2 2 2 2", "4 4\n4 4", "1 2 2 1"])
def test_repeating_an_index_earns_nothing_although_it_would_hit_one_position_on_every_puzzle(text):
    solutions = [full(t, 2, 2) for t in all_truths(2, 2)]
    assert set(jigsaw_reward([text] * 24, solutions)) == {0.0}
    assert set(connections_reward([text] * 24, solutions)) == {0.0}
    assert set(jigsaw_format_reward([text] * 24, solutions)) == {0.0}


@pytest.mark.parametrize("text", ["A B C D E F G H", "ABCDEFGH", "A, B", "(A) (B)", "A or B", "1 2 3 4"])
def test_listing_several_options_earns_nothing(text):
    assert jigsaw_reward([text], [choice("pair", "A", options=8)]) == [0.0]
    assert jigsaw_reward([text], [choice("single", 1)]) == [0.0]
    assert jigsaw_format_reward([text], [choice("pair", "A", options=8)]) == [0.0]


@pytest.mark.parametrize("question, options", [("pair", 8), ("multiple", 4)])
def test_always_answering_one_letter_earns_chance(question, options):
    specs = [jigsaw_spec(0, i, 2, 2, question, num_options=options) for i in range(2000)]
    solutions = [choice(question, s["answer"], options=options) for s in specs]
    for letter in "AB":
        mean = np.mean(jigsaw_reward([letter] * len(specs), solutions))
        assert abs(mean - 1 / options) < 0.035


def test_always_answering_one_number_earns_chance():
    specs = [jigsaw_spec(0, i, 2, 2, "single") for i in range(2000)]
    solutions = [choice("single", s["answer"]) for s in specs]
    assert abs(np.mean(jigsaw_reward(["1"] * len(specs), solutions)) - 0.25) < 0.035


# ----------------------------------------------------------------------------------------------- format


def test_format_with_thinking_needs_exactly_one_think_and_one_answer():
    solution = full([2, 1], 1, 2, think=True)
    texts = [
        "<think>x</think><answer>2 1</answer>",
        "<think>x</think>\n<answer>1 2</answer><|im_end|>",
        "<answer>2 1</answer>",
        "<think>x</think><answer>2 1</answer><answer>2 1</answer>",
        "<think>x</think><think>y</think><answer>2 1</answer>",
        "2 1",
        "<think>x</think><answer>2 1 1</answer>",
        "junk <think>x</think><answer>2 1</answer>",
    ]
    assert jigsaw_format_reward(texts, [solution] * len(texts)) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_format_without_thinking_is_the_bare_answer():
    pair = choice("pair", "A", options=2, rows=1, cols=2)
    assert jigsaw_format_reward(["A", "B", "C", "<answer>A</answer>", "a."], [pair] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]
    single = choice("single", 2)
    assert jigsaw_format_reward(["4", "5", "0", "two"], [single] * 4) == [1.0, 0.0, 0.0, 0.0]


# -------------------------------------------------------------------------------------- routing and safety


def test_rows_of_other_tasks_and_malformed_solutions_get_none():
    good = full([2, 1], 1, 2)
    solutions = [good, [1, 2, 3, 4], good, "{not json", json.dumps({"question": "full", "grid": [1, 2], "answer": [1, 1]})]
    tasks = ["jigsaw", "grounding", "jigsaw", "jigsaw", "jigsaw"]
    completions = ["2 1"] * 5
    assert jigsaw_reward(completions, solutions, task=tasks) == [1.0, None, 1.0, None, None]
    assert jigsaw_format_reward(completions, solutions, task=tasks) == [1.0, None, 1.0, None, None]


def test_conversational_completions_and_component_logs():
    logged = {}
    solution = full([2, 1], 1, 2)
    completions = [[{"role": "assistant", "content": "2 1"}], [{"role": "assistant", "content": "junk"}]]
    rewards = jigsaw_reward(completions, [solution] * 2, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert rewards == [1.0, 0.0]
    assert logged == {"jigsaw_reward/exact": 0.5, "jigsaw_reward/parse_failure": 0.5}


def test_the_registry_has_both_metrics_and_the_format_reward_and_they_pickle():
    assert get_reward("jigsaw") is jigsaw_reward
    assert get_reward("jigsaw", metric="connections").__name__ == "jigsaw_connections_reward"
    assert get_reward("jigsaw_connections").metric == "connections"
    assert get_reward("jigsaw_format") is jigsaw_format_reward
    restored = pickle.loads(pickle.dumps(get_reward("jigsaw_connections")))
    assert restored(["1 2"], [full([1, 2], 1, 2)]) == [1.0]
    with pytest.raises(ValueError, match="metric"):
        make_jigsaw_reward("edges")


def test_a_megabyte_answer_is_scored_without_trouble():
    solution = full([2, 1], 1, 2)
    for text in ("1 " * 500_000, "9" * 1_000_000, "<answer>" * 100_000, "(" * 1_000_000):
        assert jigsaw_reward([text], [solution]) == [0.0]
        assert jigsaw_format_reward([text], [solution]) == [0.0]


def test_the_per_grid_summary_reports_exact_positions_and_connections():
    records = []
    for truth, text in [([2, 1], "2 1"), ([2, 1], "1 2"), ([3, 1, 4, 2], "3 1 4 2")]:
        target = jigsaw_target(full(truth, 1 if len(truth) == 2 else 2, 2 if len(truth) == 2 else 2))
        records.append({"grid": [target.rows, target.cols], **jigsaw_scores(text, target)})
    summary = jigsaw_metrics(records)
    assert summary["1x2"] == {"n": 2, "exact": 0.5, "positions": 0.5, "connections": 0.5}
    assert summary["2x2"] == {"n": 1, "exact": 1.0, "positions": 1.0, "connections": 1.0}
    assert summary["all"]["n"] == 3 and summary["all"]["exact"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------- fuzzing

JIGSAW_TOKENS = ("1", "2", "3", "4", "9", "0", " ", "\n", ",", "[", "]", "(", ")", "`", "A", "b", ".",
                 "<think>", "</think>", "<answer>", "</answer>", "<|im_end|>", "-1", "1e9", "٣")


@given(token_soup(JIGSAW_TOKENS, 40), st.sampled_from([(1, 2), (2, 2), (3, 1)]))
def test_fuzzed_grid_answers_parse_to_none_or_in_range_indices(text, grid):
    n = grid[0] * grid[1]
    parsed = parse_jigsaw_grid(text, n)
    assert parsed is None or (len(parsed) == n and all(1 <= v <= n for v in parsed))
    choice_ = parse_jigsaw_choice(text)
    assert choice_ is None or (len(choice_) <= 6 and (choice_.isalpha() or choice_.isdigit()))


@given(st.one_of(token_soup(JIGSAW_TOKENS, 40), st.text(max_size=200)), st.booleans())
def test_fuzzed_completions_get_rewards_in_the_unit_interval(text, think):
    solutions = [full([3, 1, 4, 2], 2, 2, think), choice("pair", "B", 8, think=think), choice("single", 4, think=think)]
    for reward in (jigsaw_reward, connections_reward, jigsaw_format_reward):
        values = reward([text] * 3, solutions)
        assert all(v is not None and 0.0 <= v <= 1.0 for v in values)
