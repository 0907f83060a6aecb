"""Specification of the VQA answer rewards and their parsers (letter, `\\boxed{}`, number, short text), and of
reading the final turn of a multi-turn (crop-turn) completion."""

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import token_soup
from trl_perception.formats import (
    boxed_content,
    final_turn_text,
    normalize_answer,
    parse_choice,
    parse_number,
    vqa_answer_body,
)
from trl_perception.rewards import _common, get_reward, list_rewards, make_vqa_reward, vqa_reward
from trl_perception.rewards.vqa import vqa_answer

OPTIONS = ["red", "blue", "green", "yellow"]


@pytest.fixture(autouse=True)
def fresh_warning_counts():
    _common._WARN_COUNTS.clear()


def crop_conversation(answer, tool_content=None):
    """What TRL passes a reward with tools on: the tool-calling turn, the tool's result, the answer turn."""
    return [
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "crop_image", "arguments": {"bbox_2d": [1, 2, 30, 40]}}}]},
        {"role": "tool", "name": "crop_image",
         "content": tool_content or [{"type": "image", "image": None}, {"type": "text", "text": "(A) red \\boxed{A}"}]},
        {"role": "assistant", "content": answer},
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- letters


@pytest.mark.parametrize(
    "text",
    ["B", "b", "(B)", "(b)", "B.", "B)", "Answer: B", "The answer is (B).", "The final answer is B", "\\boxed{B}",
     "I zoomed in; it is blue. \\boxed{B}", "\\boxed{(B) blue}", "\\boxed{\\text{B}}", "B. blue", "(B) blue",
     "blue", "<think>A or B?</think><answer>B</answer>", "Option B", "B<|im_end|>"],
)  # fmt: skip
def test_letter_answers_in_every_usual_form(text):
    assert parse_choice(text, OPTIONS) == "B"
    assert vqa_reward([text], ["B"], options=[OPTIONS]) == [1.0]


@pytest.mark.parametrize(
    "text",
    ["A B C D", "A, B, C, D", "A or B", "(A) (B) (C) (D)", "\\boxed{A, B}", "ABCD", "B. red", "E", "",
     "The answer could be B or C.", "\\boxed{}", "B because the sign is blue and A is red"],
)  # fmt: skip
def test_listing_options_or_contradicting_them_reads_no_letter(text):
    assert parse_choice(text, OPTIONS) is None
    assert vqa_reward([text], ["B"], options=[OPTIONS]) == [0.0]


def test_only_the_last_boxed_answer_counts():
    assert parse_choice("\\boxed{A} ... no, \\boxed{C}", OPTIONS) == "C"
    assert vqa_reward(["\\boxed{A}\\boxed{B}\\boxed{C}\\boxed{D}"], ["B"], options=[OPTIONS]) == [0.0]


def test_spraying_every_option_earns_less_than_one_honest_guess():
    letters = ["A", "B", "C", "D"]
    sprays = ["A B C D", "\\boxed{A B C D}", "A/B/C/D", "(A)(B)(C)(D)", "A, B, C or D"]
    for truth in letters:
        assert vqa_reward(sprays, [truth] * len(sprays), options=[OPTIONS] * len(sprays)) == [0.0] * len(
            sprays
        )
    # Always answering "A" earns exactly the share of rows whose answer is A (chance).
    assert vqa_reward(["A"] * 4, letters, options=[OPTIONS] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_without_options_a_letter_solution_still_reads_letters():
    assert vqa_reward(["(C)", "C. a cat", "C. A or B"], ["C"] * 3) == [1.0, 1.0, 0.0]


def test_a_solution_given_as_the_option_text_is_its_letter():
    assert vqa_reward(["\\boxed{B}"], ["blue"], options=[OPTIONS]) == [1.0]


# ------------------------------------------------------------------------------------- numbers and text


@pytest.mark.parametrize(
    "text, value",
    [("42", 42.0), ("\\boxed{1,000}", 1000.0), ("Answer: -2.5.", -2.5), ("+.5", 0.5), ("\\boxed{12}", 12.0),
     ("The answer is 7", 7.0), ("3 or 4", None), ("1,00", None), ("12 apples", None), ("", None),
     ("1e5", None), ("9" * 40, None)],
)  # fmt: skip
def test_numbers(text, value):
    assert parse_number(text) == value


def test_number_rewards_compare_values():
    assert make_vqa_reward("number")(["\\boxed{1,000}", "1000.0", "999", "many"], ["1000"] * 4) == [
        1.0,
        1.0,
        0.0,
        0.0,
    ]
    assert vqa_reward(["\\boxed{3}", "3.0", "three"], ["3"] * 3) == [
        1.0,
        1.0,
        0.0,
    ]  # auto: the solution is a number


def test_short_text_is_normalised_exact_match():
    completions = ["\\boxed{The Eiffel Tower.}", "eiffel   tower", 'Answer: "eiffel tower"', "a tower", ""]
    assert vqa_reward(completions, ["Eiffel Tower"] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert normalize_answer("  A  Cat! ") == "cat"


def test_modes_force_the_comparison():
    assert make_vqa_reward("text")(["\\boxed{b}"], ["B"]) == [1.0]
    assert make_vqa_reward("choice")(["blue"], ["B"], options=[OPTIONS]) == [1.0]
    with pytest.raises(ValueError, match="mode"):
        make_vqa_reward("fuzzy")


# ------------------------------------------------------------------------------------------ multi-turn


def test_the_final_turn_of_a_crop_conversation_is_read():
    assert vqa_reward([crop_conversation("It is blue. \\boxed{B}")], ["B"], options=[OPTIONS]) == [1.0]
    # The tool's text (it may quote options and a boxed example) and the first turn are never the answer.
    assert vqa_reward([crop_conversation("I cannot tell.")], ["A"], options=[OPTIONS]) == [0.0]
    first_turn_only = crop_conversation("x")[:2]
    first_turn_only[0]["content"] = "\\boxed{A}"
    assert final_turn_text(first_turn_only) == ""
    assert vqa_reward([first_turn_only], ["A"], options=[OPTIONS]) == [0.0]  # the answer was cut off


def test_a_single_assistant_turn_and_plain_strings():
    assert vqa_reward([[{"role": "assistant", "content": "\\boxed{D}"}], "D"], ["D", "D"]) == [1.0, 1.0]
    assert final_turn_text([{"type": "text", "text": "A"}]) == "A"
    assert final_turn_text([{"role": "assistant", "content": [{"type": "text", "text": "C"}]}]) == "C"


# --------------------------------------------------------------------------------------------- routing


def test_other_tasks_and_malformed_solutions_get_none():
    rewards = vqa_reward(["B", "B", "B", "B"], ["B", "B", "", None], options=[OPTIONS, OPTIONS, OPTIONS, None],
                         task=["vqa", "ocr", "vqa", "vqa"])  # fmt: skip
    assert rewards == [1.0, None, None, None]


def test_a_letter_beyond_the_options_is_malformed():
    assert vqa_reward(["Z"], ["Z"], options=[OPTIONS]) == [None]


def test_logging_hooks_receive_accuracy_and_parse_failures():
    logged, extra = {}, {}
    vqa_reward(["B", "A B", "C"], ["B", "B", "B"], options=[OPTIONS] * 3,
               log_metric=logged.__setitem__, log_extra=extra.__setitem__)  # fmt: skip
    assert logged == {
        "vqa_reward/accuracy": pytest.approx(1 / 3),
        "vqa_reward/parse_failure": pytest.approx(1 / 3),
    }
    assert extra["vqa_reward/accuracy"] == [1.0, 0.0, 0.0]


def test_registry_names_factories_and_pickling():
    assert {"vqa", "vqa_choice", "vqa_number", "vqa_text"} <= set(list_rewards())
    assert get_reward("vqa") is vqa_reward
    assert get_reward("vqa_number")(["1,000"], ["1000"]) == [1.0]
    assert get_reward("vqa", mode="text")(["\\boxed{B}"], ["b"]) == [1.0]
    restored = pickle.loads(pickle.dumps(make_vqa_reward("choice")))
    assert restored.__name__ == "vqa_choice_reward" and restored(["B"], ["B"]) == [1.0]


def test_vqa_answer_reports_the_prediction_it_judged():
    assert vqa_answer("\\boxed{(c)}", "C", OPTIONS) == ("C", True)
    assert vqa_answer("\\boxed{1,000}", "1000") == ("1000", True)
    assert vqa_answer("A B", "A", OPTIONS) == (None, False)
    with pytest.raises(ValueError):
        vqa_answer("A", "", OPTIONS)


# ------------------------------------------------------------------------------------------ properties

ANSWER_TOKENS = ("A", "B", "C", "D", "(", ")", ".", ",", " ", "\\boxed{", "}", "{", "Answer:", "<answer>",
                 "</answer>", "1", "0", ",000", "-", "red", "blue", "\n", "<|im_end|>", "or")  # fmt: skip
completion_text = st.one_of(st.text(max_size=60), token_soup(ANSWER_TOKENS, 30))


@given(completion_text, st.sampled_from(["A", "B", "C", "D", "12", "1,000", "blue", "the cat"]),
       st.sampled_from([None, OPTIONS]))  # fmt: skip
def test_any_text_gets_a_defined_binary_reward(text, truth, options):
    for completion in (text, [{"role": "assistant", "content": text}], crop_conversation(text)):
        reward = vqa_reward([completion], [truth], options=[options])
        assert reward in ([0.0], [1.0], [None])
    if options is None or truth in "ABCD":
        assert vqa_reward([text], [truth], options=[options])[0] in (0.0, 1.0)


@given(completion_text)
def test_a_parsed_letter_is_a_single_option_letter(text):
    letter = parse_choice(text, OPTIONS)
    assert letter is None or letter in "ABCD"
    # At most one letter can pay: the reward of all four solutions sums to at most 1.
    assert sum(vqa_reward([text] * 4, list("ABCD"), options=[OPTIONS] * 4)) <= 1.0


@given(st.integers(-(10**9), 10**9), st.booleans())
def test_numbers_round_trip_with_thousands_separators(value, commas):
    text = f"{value:,}" if commas else str(value)
    assert parse_number(f"\\boxed{{{text}}}") == float(value)
    assert vqa_reward([f"Answer: {text}"], [str(value)]) == [1.0]


@given(st.text(max_size=40))
def test_boxed_content_round_trips_balanced_text(inner):
    if inner.count("{") == inner.count("}") and all(
        inner[: i + 1].count("{") >= inner[: i + 1].count("}") for i in range(len(inner))
    ):
        assert boxed_content(f"so \\boxed{{{inner}}} done") == inner


def test_huge_and_hostile_completions_are_handled_in_one_pass():
    # Linear-time parsing (no timing asserted): megabyte inputs of the worst patterns come back with a value.
    for text in ("\\boxed{" * 200_000, "{" * 500_000 + "\\boxed{B", "(A) " * 200_000, " " * 500_000 + "B",
                 "Answer: " * 100_000 + "B", "1," * 300_000):  # fmt: skip
        assert vqa_reward([text], ["B"], options=[OPTIONS])[0] in (0.0, 1.0)
        assert vqa_answer_body(text) is not None
    assert vqa_reward([None, 42, {"role": "user", "content": "B"}], ["B"] * 3) == [0.0, 0.0, 0.0]
