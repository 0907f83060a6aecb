"""Matching as an ablation (Perception-R1 Table 5, "w/o reward matching"): `matching="sequential"` pairs the
i-th prediction with the i-th ground truth in `count_reward` and `detection_reward`; hand-computed cases where
it and the Hungarian matching differ; recipes select it by name (`count_sequential`, `detection_sequential`) or
by `reward_kwargs`, and TRL logs it under a name of its own."""

import math
import pickle

import pytest

from trl_perception.rewards import (
    count_reward,
    detection_reward,
    get_reward,
    make_count_reward,
    make_detection_reward,
)
from trl_perception.scripts.grpo import PerceptionScriptArguments

D = 1000 * math.sqrt(2)  # the counting reward's distance normaliser
TRIANGLE = {"count": 3, "points": [[0, 0], [100, 0], [0, 100]]}


def points(*xy):
    return "[" + ", ".join(f'{{"point_2d": [{x}, {y}]}}' for x, y in xy) + "]"


def boxes(*xyxy, label="cat"):
    return "[" + ", ".join(f'{{"bbox_2d": {list(b)}, "label": "{label}"}}' for b in xyxy) + "]"


# --------------------------------------------------------------------------------------------------
# counting


def test_right_points_in_another_order_cost_distance_only_with_sequential_matching():
    rotated = points((100, 0), (0, 100), (0, 0))
    assert count_reward([rotated], [TRIANGLE]) == [1.0]
    # Sequential pairs: (100,0)-(0,0) = 100, (0,100)-(100,0) = 100√2, (0,0)-(0,100) = 100.
    mean = (200 + 100 * math.sqrt(2)) / 3
    expected = 1 - mean / D  # = 1 - (1 + √2) / 30
    assert expected == pytest.approx(1 - (1 + math.sqrt(2)) / 30)
    assert count_reward([rotated], [TRIANGLE], matching="sequential") == [pytest.approx(expected)]


def test_an_extra_point_costs_the_count_ratio_under_both_matchings():
    extra = points((0, 100), (0, 0), (100, 0), (50, 50))
    assert count_reward([extra], [TRIANGLE]) == [pytest.approx(3 / 4)]
    # Sequential: (0,100)-(0,0) = 100, (0,0)-(100,0) = 100, (100,0)-(0,100) = 100√2; (50,50) unmatched.
    expected = 3 / 4 * (1 - (200 + 100 * math.sqrt(2)) / 3 / D)
    assert count_reward([extra], [TRIANGLE], matching="sequential") == [pytest.approx(expected)]


def test_the_same_order_scores_the_same_under_both_matchings():
    same = points((0, 0), (100, 0), (0, 100))
    assert count_reward([same], [TRIANGLE]) == count_reward([same], [TRIANGLE], matching="sequential") == [1.0]


def test_count_only_ground_truth_ignores_the_matching():
    assert count_reward(["There are 3.", points((1, 1))], [3, 3], matching="sequential") == [1.0, 0.0]


def test_count_sequential_is_a_named_picklable_registry_entry():
    rotated = points((100, 0), (0, 100), (0, 0))
    expected = count_reward([rotated], [TRIANGLE], matching="sequential")
    for reward in (
        get_reward("count_sequential"),
        get_reward("count_sequential_reward"),
        get_reward("count", matching="sequential"),
        make_count_reward("sequential"),
    ):
        assert reward.__name__ == "count_sequential_reward" and reward.matching == "sequential"
        assert reward([rotated], [TRIANGLE]) == expected
        assert pickle.loads(pickle.dumps(reward))([rotated], [TRIANGLE]) == expected
    assert get_reward("count") is count_reward  # Hungarian, the default, stays the plain function
    assert make_count_reward().__name__ == "count_reward"
    assert make_count_reward("sequential", name="my_count").__name__ == "my_count"


def test_components_are_logged_under_the_rewards_own_name():
    logged = {}
    get_reward("count_sequential")(
        [points((0, 0))], [TRIANGLE], log_metric=lambda name, value: logged.__setitem__(name, value)
    )
    assert logged and all(name.startswith("count_sequential_reward/") for name in logged)


def test_an_unknown_matching_is_a_clear_error():
    with pytest.raises(ValueError, match="matching must be one of"):
        make_count_reward("greedy")
    with pytest.raises(ValueError, match="matching must be one of"):
        count_reward(["[]"], [0], matching="greedy")


# --------------------------------------------------------------------------------------------------
# detection

A, B = [0, 0, 10, 10], [5, 0, 15, 10]  # two cats; IoU(A, B) = 50 / 150 = 1/3
TWO_CATS = [{"bbox_2d": A, "label": "cat"}, {"bbox_2d": B, "label": "cat"}]


def test_overlapping_objects_listed_in_another_order():
    swapped = boxes(B, A)
    assert detection_reward([swapped], [TWO_CATS]) == [1.0]
    # Sequential: B against A and A against B, IoU 1/3 each (same class, below 0.5): TP = 0, F1 = 0,
    # location = 2 · (1/3 + 1/3) / (2 + 2) = 1/3; both boxes localise a cat, so classification = 2/2; format 1.
    expected = (0.25 * 1 + 0.75 * 0 + 1 / 3 + 1) / 3  # = 19/36
    assert expected == pytest.approx(19 / 36)
    assert detection_reward([swapped], [TWO_CATS], matching="sequential") == [pytest.approx(expected)]


def test_released_weighting_with_sequential_matching():
    swapped = boxes(B, A)
    assert make_detection_reward(released_code=True)([swapped], [TWO_CATS]) == [3.0]
    # Released pairs need IoU >= 0.5: none in this order, so 0.25 · format + 0.75 · 0 + cls 1 + IoU 0.
    released = make_detection_reward(released_code=True, matching="sequential")
    assert released.__name__ == "detection_released_sequential_reward"
    assert released([swapped], [TWO_CATS]) == [pytest.approx(1.25)]


def test_the_ith_box_is_judged_against_the_ith_object_only():
    # The first box matches the first object exactly; the second misses, though it would match nothing else.
    half = boxes(A, [40, 40, 50, 50])
    # TP = 1 either way: F1 = 2/4, location = 2 · 1 / 4, classification = 1/2, format 1.
    expected = (0.25 + 0.75 * 0.5 + 0.5 + 0.5) / 3
    assert detection_reward([half], [TWO_CATS]) == [pytest.approx(expected)]
    assert detection_reward([half], [TWO_CATS], matching="sequential") == [pytest.approx(expected)]


def test_detection_sequential_is_a_named_picklable_registry_entry():
    swapped = boxes(B, A)
    for reward in (get_reward("detection_sequential"), get_reward("detection", matching="sequential")):
        assert reward.__name__ == "detection_sequential_reward" and reward.matching == "sequential"
        assert pickle.loads(pickle.dumps(reward))([swapped], [TWO_CATS]) == [pytest.approx(19 / 36)]
    weighted = get_reward("detection_sequential", penalty_weight=1.0)
    assert weighted.matching == "sequential" and weighted.penalty_weight == 1.0


# --------------------------------------------------------------------------------------------------
# the GRPO script's arguments


@pytest.mark.parametrize(
    ("reward_funcs", "reward_kwargs"),
    [
        (["count_sequential", "format"], None),
        (["count", "format"], {"count": {"matching": "sequential"}}),
        (["detection_sequential"], None),
        (["detection"], '{"detection": {"matching": "sequential"}}'),
    ],
)
def test_the_script_resolves_sequential_matching_by_name_or_kwargs(reward_funcs, reward_kwargs):
    args = PerceptionScriptArguments(task="counting", reward_funcs=reward_funcs, reward_kwargs=reward_kwargs)
    name = args.reward_funcs[0]
    reward = get_reward(name, **args.reward_kwargs.get(name, {}))
    assert reward.matching == "sequential" and reward.__name__.endswith("_sequential_reward")


def test_the_script_rejects_an_unknown_matching_in_one_line():
    with pytest.raises(ValueError, match="reward 'count': matching must be one of"):
        PerceptionScriptArguments(task="counting", reward_funcs=["count"], reward_kwargs={"count": {"matching": "x"}})
