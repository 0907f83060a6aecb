"""Thinking as an ablation (Perception-R1 Table 5, "w/ thinking"): `think=True` on every builder asks for
`<think>…</think><answer>…</answer>`; SFT answers carry an empty think block; `think_answer_format_reward`
checks the structure; every other reward scores the answer after the thinking exactly as it scores the bare
answer, and nothing written while thinking ever pays."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from trl_perception.data import add_completions, build_dataset, make_synthetic
from trl_perception.data.coco import build_coco_detection
from trl_perception.data.ovd import build_ovd
from trl_perception.data.pageocr import build_pageocr
from trl_perception.data.pixmo_count import build_pixmo_count
from trl_perception.data.prompts import THINK_INSTRUCTION, build_prompt
from trl_perception.data.refcoco import build_refcoco
from trl_perception.formats import answer_text, strip_thinking
from trl_perception.rewards import get_reward, list_rewards, think_answer_format_reward
from trl_perception.rewards.format import is_think_answer

# --------------------------------------------------------------------------------------------------
# Builders: think=True through PromptCache


def _user_text(row):
    return next(part["text"] for part in row["prompt"][-1]["content"] if part["type"] == "text")


def _sources(tmp_path):
    """One tiny source per builder: name -> (builder, source, options)."""
    PILImage.new("RGB", (64, 48), "white").save(tmp_path / "1.jpg")
    coco = tmp_path / "instances_val2017.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
                "categories": [{"id": 3, "name": "car"}, {"id": 4, "name": "bus"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0}],
            }
        )
    )
    refcoco = tmp_path / "refcoco_val.json"
    refcoco.write_text(json.dumps([{"image": "1.jpg", "problem": "car", "solution": [1, 2, 30, 40]}]))
    fox = tmp_path / "en_page_ocr.json"
    fox.write_text(
        json.dumps(
            [{"image": "1.jpg", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "hi"}]}]
        )
    )
    pixmo = tmp_path / "pixmo_count_val540.jsonl"
    pixmo.write_text(json.dumps({"image_path": "1.jpg", "question": "dots", "ground_truth": 2}))
    return {
        "detection": (build_coco_detection, coco, {"image_dir": tmp_path}),
        "ovd": (build_ovd, coco, {"image_dir": tmp_path}),
        "grounding": (build_refcoco, refcoco, {"image_dir": tmp_path, "solution_frame": "pixels"}),
        "ocr": (build_pageocr, fox, {}),
        "counting": (build_pixmo_count, pixmo, {}),
    }


@pytest.mark.parametrize("task", ["grounding", "counting", "ocr", "detection", "ovd"])
def test_every_builder_asks_for_thinking_with_think_true(tmp_path, task):
    builder, source, options = _sources(tmp_path)[task]
    plain = _user_text(builder(source, **options)[0])
    thinking = _user_text(builder(source, think=True, **options)[0])
    assert THINK_INSTRUCTION not in plain
    body = plain if plain[-1] in ".?!:" else plain + "."
    assert thinking == f"{body} {THINK_INSTRUCTION}"
    # The registry passes it through too.
    assert _user_text(build_dataset(task, source, think=True, **options)[0]) == thinking


@pytest.mark.parametrize("task", ["grounding", "counting", "ocr", "detection", "ovd"])
@pytest.mark.parametrize("box_format", [None, "qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_synthetic_rows_ask_for_thinking_after_the_format_instruction(task, box_format):
    rows = build_dataset(task, "synthetic", num_samples=2, seed=0, think=True, box_format=box_format)
    plain = build_dataset(task, "synthetic", num_samples=2, seed=0, box_format=box_format)
    for thinking, row in zip(rows, plain):
        text = _user_text(row)
        body = text if text[-1] in ".?!:" else text + "."
        assert _user_text(thinking) == f"{body} {THINK_INSTRUCTION}"
        assert thinking["solution"] == row["solution"]  # only the prompt changes


def test_think_composes_with_a_template_and_a_system_prompt(tmp_path):
    builder, source, options = _sources(tmp_path)["ocr"]
    row = builder(source, template="Read the page", system_prompt="Be brief.", think=True, **options)[0]
    assert row["prompt"][0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert _user_text(row) == f"Read the page. {THINK_INSTRUCTION}"
    assert row["prompt"][0]["content"][0]["text"] == "Be brief."  # the system turn is not touched
    expected = build_prompt("ocr", template="Read the page", system_prompt="Be brief.", think=True)
    assert _user_text({"prompt": expected}) == _user_text(row) and expected[0] == row["prompt"][0]


def test_jigsaw_keeps_its_own_thinking_prompt():
    row = build_dataset("jigsaw", "synthetic", num_samples=1, rows=2, cols=1, think=True)[0]
    assert "<think> </think>" in _user_text(row) and json.loads(row["solution"])["think"] is True


# --------------------------------------------------------------------------------------------------
# SFT answers under think=True: an empty think block, then the answer


@pytest.mark.parametrize(
    ("task", "reward", "box_format"),
    [
        ("grounding", "iou", "qwen2_5_vl"),
        ("counting", "count", "qwen3_vl"),
        ("ocr", "ocr", None),
        ("detection", "detection", "qwen2_vl"),
        ("ovd", "od_ap", "qwen2_5_vl"),
    ],
)
def test_thinking_sft_answers_score_as_the_bare_answers(task, reward, box_format):
    rows = make_synthetic(task, 6, seed=1, box_format=box_format, think=True)
    texts = [r["completion"][0]["content"][0]["text"] for r in add_completions(rows, think=True)]
    bare = [r["completion"][0]["content"][0]["text"] for r in add_completions(rows)]
    assert texts == [f"<think>\n</think>\n<answer>{b}</answer>" for b in bare]
    columns = {c: rows[c] for c in rows.column_names if c not in ("prompt", "image")}
    assert think_answer_format_reward(texts) == [1.0] * 6
    assert think_answer_format_reward(bare) == [0.0] * 6
    scores = get_reward(reward)(texts, **columns)
    assert scores == get_reward(reward)(bare, **columns)
    assert min(scores) > 0.99  # the rendered ground truth (coordinates rounded to the family's integers)
    if task != "ocr":
        assert get_reward("format")(texts, **columns) == [1.0] * 6


# --------------------------------------------------------------------------------------------------
# think_answer_format_reward

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_free = st.text(alphabet=st.characters(codec="utf-8"), max_size=40).filter(lambda s: not any(t in s for t in _TAGS))


def _unpadded(text: str) -> str:
    for pad in ("<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|eot_id|>"):
        text = text.replace(pad, "")
    return text


def _oracle(text: str) -> float:
    """The definition, written as a (slow, backtracking) regular expression on short strings."""
    text = _unpadded(text)
    free = r"(?:(?!<think>|</think>|<answer>|</answer>).)*"
    match = re.fullmatch(rf"\s*<think>{free}</think>\s*<answer>({free})</answer>\s*", text, re.DOTALL)
    return 1.0 if match and match.group(1).strip() else 0.0


@settings(max_examples=300, deadline=None)
@given(_free, _free, _free.filter(lambda s: _unpadded(s).strip()))  # padding tokens alone are no answer
def test_one_think_block_then_one_answer_pays(before, thought, answer):
    text = f"<think>{thought}</think>{before if not before.strip() else ''}<answer>{answer}</answer>"
    assert think_answer_format_reward([text]) == [1.0] == [_oracle(text)]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([*_TAGS, "x", " ", "\n", "[1, 2]", "<|im_end|>", "<think", "answer>"]), max_size=12))
def test_think_answer_format_matches_its_definition(parts):
    text = "".join(parts)
    assert think_answer_format_reward([text]) == [_oracle(text)]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.none(), st.integers(), st.lists(st.dictionaries(st.text(), st.text()), max_size=2)))
def test_think_answer_format_is_defined_for_anything(completion):
    assert think_answer_format_reward([completion]) in ([0.0], [1.0])


@pytest.mark.parametrize(
    "text",
    [
        "<think>x</think>[1, 2, 3, 4]",  # no answer tags
        "[1, 2, 3, 4]",  # no thinking
        "<answer>[1, 2, 3, 4]</answer>",
        "<think>x</think><answer>  </answer>",  # empty answer
        "<think>x</think><answer>A</answer><answer>A</answer>",
        "<think>x <answer>A</answer></think><answer>A</answer>",  # a decoy answer inside the thinking
        "<think>x</think><think>y</think><answer>A</answer>",
        "<think>x</think>Sure!<answer>A</answer>",
        "Sure! <think>x</think><answer>A</answer>",
        "<think>x</think><answer>A</answer> and more",
        "<think>x<answer>A</answer>",  # unclosed thinking
        "x</think><answer>A</answer>",  # the opening tag is required
    ],
)
def test_anything_but_the_structure_earns_nothing(text):
    assert think_answer_format_reward([text]) == [0.0]


def test_think_answer_format_allows_padding_whitespace_and_empty_thinking():
    assert think_answer_format_reward(
        ["  <think></think><answer>3</answer><|im_end|><|endoftext|>", "<think>a\nb</think>\n\n<answer>\n3\n</answer>"]
    ) == [1.0, 1.0]
    assert is_think_answer("<think>" + "x" * 1_000_000 + "</think><answer>3</answer>")
    assert not is_think_answer("<think>" * 200_000)  # adversarial: counting, not backtracking


def test_trl_think_format_reward_accepts_what_ours_rejects():
    # Why ours exists: TRL's checks only the thinking block and reads nothing after it.
    from trl.rewards import think_format_reward

    loose = ["<think>x</think>[1, 2, 3, 4]", "<think>x</think></think><answer>A</answer>"]
    assert think_format_reward([[{"content": t}] for t in loose]) == [1.0, 1.0]
    assert think_answer_format_reward(loose) == [0.0, 0.0]


def test_the_registry_has_it():
    reward = get_reward("think_answer_format")
    assert reward is think_answer_format_reward and reward.__name__ == "think_answer_format_reward"


# --------------------------------------------------------------------------------------------------
# Every reward: thinking changes nothing, and nothing written while thinking pays

_JIGSAW = json.dumps({"question": "full", "grid": [2, 2], "answer": [2, 1, 4, 3], "think": False})
_DET_GT = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 0, 30, 10], "label": "cat"}]
_DET = '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [0, 0, 9, 10], "label": "cat"}]'
_QWEN2 = "<|object_ref_start|>car<|object_ref_end|><|box_start|>(10,10),(50,60)<|box_end|>"
_POINTS = '[{"point_2d": [50, 50]}, {"point_2d": [10, 10]}, {"point_2d": [90, 90]}]'
_COUNT_GT = {"count": 2, "points": [[10, 10], [50, 50]]}
# name -> (task, an imperfect answer, solution); None: a format reward (no solution)
CASES = {
    "iou": ("grounding", "[10, 10, 50, 60]", [10, 10, 50, 50]),
    "iou_squared": ("grounding", "[10, 10, 50, 60]", [10, 10, 50, 50]),
    "grounding_format": ("grounding", _QWEN2, None),
    "qwen2_vl_format": ("grounding", _QWEN2, None),
    "count": ("counting", _POINTS, _COUNT_GT),
    "count_sequential": ("counting", _POINTS, _COUNT_GT),
    "ocr": ("ocr", "Hello wrld", "Hello world"),
    "detection": ("detection", _DET, _DET_GT),
    "detection_released": ("detection", _DET, _DET_GT),
    "detection_sequential": ("detection", _DET, _DET_GT),
    "format": ("detection", _DET, None),
    "json_format": ("detection", _DET, None),
    "od_ap": ("ovd", _DET, _DET_GT),
    "od_ap50": ("ovd", _DET, _DET_GT),
    "od_length": ("ovd", _DET, _DET_GT),
    "od_weighted": ("ovd", _DET, _DET_GT),
    "jigsaw": ("jigsaw", "2 1\n3 4", _JIGSAW),
    "jigsaw_connections": ("jigsaw", "2 1\n3 4", _JIGSAW),
    "vqa": ("vqa", "\\boxed{B}", "B"),
    "vqa_choice": ("vqa", "\\boxed{B}", "B"),
    "vqa_number": ("vqa", "\\boxed{42}", "42"),
    "vqa_text": ("vqa", "\\boxed{red}", "red"),
}
# Rewards that judge the structure itself, so a bare answer and a thinking one must differ.
STRUCTURE = {"think_answer_format", "jigsaw_format"}
# VLM-R1's rewards reproduced with their parsing: the answer must be in `<answer>` tags (the last ones in
# the whole text, thinking included, as VLM-R1 reads them).
VLM_R1 = {"od_ap_vlm_r1", "od_ap50_vlm_r1", "od_length_vlm_r1", "od_weighted_vlm_r1"}
_VLM_R1_CASE = ("ovd", "```json\n" + _DET + "\n```", _DET_GT)


def _score(name, text):
    task, _, solution = CASES.get(name, _VLM_R1_CASE)
    kwargs = {"task": [task]} if solution is None else {"solution": [solution], "task": [task]}
    return get_reward(name)([text], **kwargs)[0]


def test_every_built_in_reward_has_a_thinking_case():
    built_in = {n for n in list_rewards() if getattr(get_reward(n), "__module__", "").startswith("trl_perception.")}
    missing = built_in - set(CASES) - STRUCTURE - VLM_R1
    assert not missing, f"add a case to CASES for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_thinking_first_scores_the_same_as_the_bare_answer(name):
    answer = CASES[name][1]
    bare = _score(name, answer)
    assert bare is not None
    for text in (
        f"<think>x</think><answer>{answer}</answer>",
        f"<think>let me look [0, 0, 99, 99]</think>\n<answer>{answer}</answer><|im_end|>",
        f"x</think><answer>{answer}</answer>",  # the opening tag was in the prompt
        f"<think>no. <answer>[5, 5, 6, 6]</answer> 7 <answer>wrong</answer></think><answer>{answer}</answer>",
    ):
        assert _score(name, text) == pytest.approx(bare), text


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_answer_written_while_thinking_does_not_pay(name):
    answer = CASES[name][1]
    assert _score(name, answer) > 0
    for text in (
        f"<think>{answer}</think>",
        f"<think><answer>{answer}</answer></think>",
        f"<think>{answer}",  # thinking cut off by the length limit
        f"<think><answer>{answer}</answer>",
    ):
        assert _score(name, text) == 0.0, text


@pytest.mark.parametrize("name", sorted(VLM_R1))
def test_vlm_r1_rewards_score_thinking_first_as_their_tagged_answer(name):
    answer = _VLM_R1_CASE[1]
    assert _score(name, f"<think>x</think><answer>{answer}</answer>") == pytest.approx(
        _score(name, f"<answer>{answer}</answer>")
    )


@pytest.mark.parametrize(
    ("name", "solution", "task"),
    [("detection", [], "detection"), ("count", 0, "counting"), ("od_ap", [], "ovd"), ("iou", [], "grounding")],
)
def test_thinking_without_an_answer_is_not_the_empty_answer(name, solution, task):
    reward = get_reward(name)
    assert reward(["<think>x</think><answer>[]</answer>"], [solution], task=[task]) == [1.0]
    for text in ("<think>nothing here</think>", "<think>[]</think>", "<think><answer>[]</answer></think>", "<think>"):
        assert reward([text], [solution], task=[task]) == [0.0], text


def test_a_blank_page_is_not_read_from_the_thinking():
    ocr = get_reward("ocr")
    assert ocr(["<think>blank</think><answer></answer>", "<think>blank</think>"], ["", ""]) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "[1, 2]"),
        ("<think>a</think><answer>[1, 2]</answer>", "[1, 2]"),
        ("<think>a</think>[1, 2]", "[1, 2]"),  # no tags after the thinking: the rest is the answer
        ("<answer>[1, 2]</answer><think>more", "[1, 2]"),
        ("<think>a</think>", ""),
        ("<think><answer>[1, 2]</answer>", ""),
    ],
)
def test_answer_text_skips_the_thinking(text, expected):
    assert answer_text(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "a", " ", "["]), max_size=12).map("".join))
def test_strip_thinking_leaves_no_thinking(text):
    rest = strip_thinking(text)
    if rest is None:
        assert "<think>" in text or "</think>" in text
    else:
        assert "</think>" not in rest and "<think>" not in rest
        close = text.rfind("</think>")
        assert (text[close + len("</think>") :] if close >= 0 else text).startswith(rest)
