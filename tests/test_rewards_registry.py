"""Specification of the reward registry and of the TRL conventions every reward follows: signature, extra
kwargs, pickling, worker threads, task routing, one value per completion, logging hooks."""

import functools
import json
import math
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from trl.trainer.utils import get_callable_name

import trl_perception.rewards as rewards_module
from trl_perception.rewards import (
    count_reward,
    detection_reward,
    format_reward,
    get_reward,
    grounding_format_reward,
    iou_reward,
    json_format_reward,
    list_rewards,
    make_detection_reward,
    make_iou_reward,
    ocr_reward,
    qwen2_vl_format_reward,
    register_reward,
)

DET_GT = [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "dog"}]
# (reward, task, completions, solution or None, expected __name__)
CASES = [
    (
        iou_reward,
        "grounding",
        ["[0, 0, 10, 5]", "nothing", '[{"bbox_2d": [0, 0, 10, 10]}]'],
        [[0, 0, 10, 10]] * 3,
        "iou_reward",
    ),
    (
        make_iou_reward(squared=True),
        "grounding",
        ["[0, 0, 10, 5]", "x", "[0, 0, 10, 10]"],
        [[0, 0, 10, 10]] * 3,
        "iou_squared_reward",
    ),
    (
        grounding_format_reward,
        "grounding",
        ["<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>", "<x", ""],
        None,
        "grounding_format_reward",
    ),
    (
        count_reward,
        "counting",
        ['[{"point_2d": [1, 1]}]', "3", "[]"],
        [{"count": 2, "points": [[1, 1], [5, 5]]}, 3, 0],
        "count_reward",
    ),
    (ocr_reward, "ocr", ["hello", "hallo", ""], ["hello", "hello", "hello"], "ocr_reward"),
    (
        detection_reward,
        "detection",
        [json.dumps(DET_GT), json.dumps(DET_GT[:1]), "[]"],
        [DET_GT, DET_GT, []],
        "detection_reward",
    ),
    (
        make_detection_reward(released_code=True),
        "detection",
        [json.dumps(DET_GT), "oops", "[]"],
        [DET_GT, DET_GT, []],
        "detection_released_reward",
    ),
    (format_reward, "detection", [json.dumps(DET_GT), "oops", "[]"], None, "format_reward"),
    (
        qwen2_vl_format_reward,
        "counting",
        ["<|box_start|>(1,2),(3,4)<|box_end|>", "oops", "[]"],
        None,
        "qwen2_vl_format_reward",
    ),
    (json_format_reward, "grounding", [json.dumps(DET_GT), "oops", "[]"], None, "json_format_reward"),
]
IDS = [case[4] for case in CASES]


def call(reward, completions, solution, **kwargs):
    if solution is None:
        return reward(completions, **kwargs)
    return reward(completions, solution, **kwargs)


def conversational(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


# ------------------------------------------------------------------------------------- TRL conventions


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_trl_reads_the_reward_name(reward, task, completions, solution, name):
    assert get_callable_name(reward) == name


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_one_finite_value_in_range_per_completion(reward, task, completions, solution, name):
    values = call(reward, completions, solution)
    upper = 3.0 if "released" in name else 1.0
    assert len(values) == len(completions)
    assert all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= upper for v in values)


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_conversational_completions_score_like_plain_ones(reward, task, completions, solution, name):
    assert call(reward, conversational(completions), solution) == call(reward, completions, solution)


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_extra_kwargs_are_ignored(reward, task, completions, solution, name):
    n = len(completions)
    extra = {
        "prompts": [[{"role": "user", "content": "hi"}]] * n,
        "completion_ids": [[1, 2, 3]] * n,
        "trainer_state": object(),
        "image": [None] * n,
        "environments": None,
        "some_column": list(range(n)),
    }
    assert call(reward, completions, solution, **extra) == call(reward, completions, solution)


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_rewards_pickle(reward, task, completions, solution, name):
    clone = pickle.loads(pickle.dumps(reward))
    assert get_callable_name(clone) == name
    assert call(clone, completions, solution) == call(reward, completions, solution)


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_rewards_work_from_worker_threads(reward, task, completions, solution, name):
    expected = call(reward, completions, solution)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: call(reward, completions, solution), range(8)))
    assert all(r == expected for r in results)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", call(reward, completions, solution)))
    thread.start()
    thread.join()
    assert box["r"] == expected


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_rows_of_other_tasks_get_none(reward, task, completions, solution, name):
    other = "ocr" if task != "ocr" else "detection"
    tasks = [task, other, task]
    values = call(reward, completions, solution, task=tasks)
    judged = call(reward, completions, solution)
    assert values == [judged[0], None, judged[2]]
    assert call(reward, completions, solution, task=task) == judged  # one task for the whole batch


@pytest.mark.parametrize(("reward", "task", "completions", "solution", "name"), CASES, ids=IDS)
def test_logging_hooks_get_one_value_per_completion(reward, task, completions, solution, name):
    metrics, extra = [], {}
    call(
        reward,
        completions,
        solution,
        task=[task, "none_of_ours", task],
        log_metric=lambda key, value: metrics.append((key, value)),
        log_extra=lambda column, values: extra.setdefault(column, []).append(values),
    )
    for key, value in metrics:
        assert key.startswith(name + "/") and math.isfinite(value)
    for column, calls in extra.items():
        assert column.startswith(name + "/") and len(calls) == 1 and len(calls[0]) == len(completions)
        assert calls[0][1] is None


def test_solution_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one solution per completion"):
        iou_reward(["a", "b"], [[0, 0, 1, 1]])


def test_empty_batch_gives_empty_list():
    assert iou_reward([], []) == []
    assert format_reward([]) == []


# -------------------------------------------------------------------------------------------- registry


@pytest.fixture
def clean_registry():
    saved = dict(rewards_module._REGISTRY)
    yield
    rewards_module._REGISTRY.clear()
    rewards_module._REGISTRY.update(saved)


@register_reward("test_short_answer")
def short_answer_reward(completions, max_chars=10, **kwargs):
    """A user reward at module level, as users write them."""
    return [1.0 if len(str(c)) <= max_chars else 0.0 for c in completions]


def test_builtin_names_are_listed():
    expected = {
        "iou",
        "iou_squared",
        "grounding_format",
        "count",
        "ocr",
        "detection",
        "detection_released",
        "format",
        "qwen2_vl_format",
        "json_format",
    }
    assert expected <= set(list_rewards())
    assert list_rewards() == sorted(list_rewards())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("iou", iou_reward),
        ("iou_reward", iou_reward),
        ("IoU", iou_reward),
        ("count", count_reward),
        ("counting", count_reward),
        ("ocr", ocr_reward),
        ("detection", detection_reward),
        ("format", format_reward),
        ("grounding-format", grounding_format_reward),
        ("json_format", json_format_reward),
        ("qwen2_vl_format_reward", qwen2_vl_format_reward),
    ],
)
def test_get_reward_by_name(name, expected):
    assert get_reward(name) is expected


def test_get_reward_with_parameters_uses_the_factory():
    assert get_reward("iou", squared=True).squared is True
    strict = get_reward("detection", iou_threshold=0.75)
    assert strict.iou_threshold == 0.75 and strict.__name__ == "detection_reward"
    released = get_reward("detection_released", penalty_weight=0.5)
    assert released.released_code and released.penalty_weight == 0.5
    assert get_reward("iou_squared", name="rec").__name__ == "rec"


def test_unknown_names_and_parameters_raise():
    with pytest.raises(KeyError, match="no reward named"):
        get_reward("nope")
    with pytest.raises(TypeError):
        get_reward("ocr", squared=True)
    with pytest.raises(TypeError):
        get_reward("detection", bogus=1)


def test_registered_user_reward_is_found_and_pickles():
    reward = get_reward("test_short_answer")
    assert reward is short_answer_reward
    assert pickle.loads(pickle.dumps(reward)) is short_answer_reward


def test_parameters_of_a_user_reward_are_bound_with_partial():
    reward = get_reward("test_short_answer", max_chars=3)
    assert isinstance(reward, functools.partial)
    assert get_callable_name(reward) == "short_answer_reward"
    assert reward(["abc", "abcd"]) == [1.0, 0.0]
    assert pickle.loads(pickle.dumps(reward))(["abcd"]) == [0.0]


def test_register_reward_bare_and_name_inference(clean_registry):
    @register_reward
    def my_box_reward(completions, **kwargs):
        return [0.0] * len(completions)

    assert get_reward("my_box") is my_box_reward
    assert get_reward("my_box_reward") is my_box_reward


def test_register_reward_class_as_factory(clean_registry):
    @register_reward("constant")
    class ConstantReward:
        def __init__(self, value=1.0):
            self.value = value
            self.__name__ = "constant_reward"

        def __call__(self, completions, **kwargs):
            return [self.value] * len(completions)

    assert get_reward("constant")(["a"]) == [1.0]
    assert get_reward("constant", value=0.5)(["a"]) == [0.5]


def test_taken_names_need_overwrite(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_reward("iou")(lambda completions, **kwargs: [])

    def replacement(completions, **kwargs):
        return [0.5] * len(completions)

    register_reward("iou", overwrite=True)(replacement)
    assert get_reward("iou") is replacement


def test_re_registering_the_same_reward_is_harmless():
    register_reward("test_short_answer")(short_answer_reward)
    assert get_reward("test_short_answer") is short_answer_reward
