"""Specification of `trl_perception.metrics`: grounding, counting, OCR and COCO detection metrics."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_perception import metrics
from trl_perception.boxes import box_iou
from trl_perception.metrics import (
    COCO_STAT_NAMES,
    coco_metrics,
    counting_metrics,
    grounding_metrics,
    objects_to_coco_results,
    ocr_metrics,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "coco"
VAL2014_GT = FIXTURES / "instances_val2014_100.json"
VAL2014_DT = FIXTURES / "instances_val2014_fakebbox100_results.json"
SYNTH_GT = FIXTURES / "synthetic_gt.json"
SYNTH_DT = FIXTURES / "synthetic_dt.json"
EXPECTED = FIXTURES / "expected_bbox_stats.json"


def load_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tiny_gt() -> dict:
    """Two images, three categories (one without any annotation), ids non-contiguous."""
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 5, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 50, 80], "area": 4000, "iscrowd": 0},
        ],
    }


def perfect_results(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
        if not a.get("iscrowd", 0)
    ]


def stats(result: dict) -> list[float]:
    return [result[name] for name in COCO_STAT_NAMES]


# ------------------------------------------------------------------------------------------------
# Grounding
# ------------------------------------------------------------------------------------------------


class TestGroundingMetrics:
    def test_partial_overlap_has_the_hand_computed_iou(self):
        # intersection 5x5 = 25, union 100 + 100 - 25 = 175
        result = grounding_metrics([[5, 5, 15, 15]], [[0, 0, 10, 10]])
        assert result["mean_iou"] == pytest.approx(25 / 175)
        assert result["acc@0.5"] == 0.0

    def test_identical_boxes_score_one_everywhere(self):
        result = grounding_metrics([[1, 2, 30, 40]], [[1, 2, 30, 40]])
        assert result == {
            "mean_iou": 1.0,
            "acc@0.5": 1.0,
            "acc@0.75": 1.0,
            "acc@0.95": 1.0,
            "acc_avg": 1.0,
            "center_acc": 1.0,
            "num_samples": 1,
            "num_missing": 0,
        }

    def test_iou_exactly_at_threshold_counts_as_hit(self):
        # [0,0,10,5] vs [0,0,10,10]: 50 / 100 = 0.5 exactly; [0,0,10,7.5]: 75 / 100 = 0.75 exactly.
        result = grounding_metrics([[0, 0, 10, 5], [0, 0, 10, 7.5]], [[0, 0, 10, 10]] * 2)
        assert result["acc@0.5"] == 1.0
        assert result["acc@0.75"] == 0.5
        assert result["acc@0.95"] == 0.0

    def test_iou_just_below_threshold_is_a_miss(self):
        result = grounding_metrics([[0, 0, 10, 4.99]], [[0, 0, 10, 10]])
        assert result["acc@0.5"] == 0.0

    def test_acc_avg_is_the_mean_of_the_threshold_accuracies(self):
        preds = [[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 6], [50, 50, 60, 60]]
        result = grounding_metrics(preds, [[0, 0, 10, 10]] * 4)
        # IoUs 1.0, 0.8, 0.6, 0.0
        assert result["acc@0.5"] == 0.75
        assert result["acc@0.75"] == 0.5
        assert result["acc@0.95"] == 0.25
        assert result["acc_avg"] == pytest.approx((0.75 + 0.5 + 0.25) / 3)
        assert result["mean_iou"] == pytest.approx(2.4 / 4)

    def test_custom_thresholds_name_their_keys(self):
        result = grounding_metrics([[0, 0, 10, 2]], [[0, 0, 10, 10]], thresholds=(0.1, 0.3))
        assert result["acc@0.1"] == 1.0
        assert result["acc@0.3"] == 0.0
        assert result["acc_avg"] == 0.5
        assert "acc@0.5" not in result

    def test_missing_prediction_counts_as_iou_zero_and_miss(self):
        result = grounding_metrics([None, [0, 0, 10, 10]], [[0, 0, 10, 10]] * 2)
        assert result["mean_iou"] == 0.5
        assert result["acc@0.5"] == 0.5
        assert result["center_acc"] == 0.5
        assert result["num_missing"] == 1

    @pytest.mark.parametrize(
        "bad", [[1, 2, 3], [0, 0, float("nan"), 10], [0, 0, float("inf"), 10], "0 0 10 10", {"x": 1}, []]
    )
    def test_malformed_prediction_counts_as_missing(self, bad):
        result = grounding_metrics([bad], [[0, 0, 10, 10]])
        assert result["mean_iou"] == 0.0
        assert result["center_acc"] == 0.0
        assert result["num_missing"] == 1

    def test_centre_inside_gt_counts_even_when_iou_is_low(self):
        result = grounding_metrics([[4, 4, 6, 6]], [[0, 0, 10, 10]])
        assert result["mean_iou"] == pytest.approx(4 / 100)
        assert result["center_acc"] == 1.0

    def test_centre_on_the_gt_border_counts(self):
        # centre (10, 5) lies on the right edge of the GT box
        assert grounding_metrics([[8, 0, 12, 10]], [[0, 0, 10, 10]])["center_acc"] == 1.0

    def test_centre_outside_gt_is_a_miss(self):
        assert grounding_metrics([[11, 11, 20, 20]], [[0, 0, 10, 10]])["center_acc"] == 0.0

    def test_inverted_prediction_has_iou_zero(self):
        assert grounding_metrics([[10, 10, 0, 0]], [[0, 0, 10, 10]])["mean_iou"] == 0.0

    def test_degenerate_boxes_give_zero_not_nan(self):
        result = grounding_metrics([[5, 5, 5, 5]], [[5, 5, 5, 5]])
        assert result["mean_iou"] == 0.0

    def test_numpy_arrays_are_accepted(self):
        pred = np.array([[0.0, 0.0, 10.0, 10.0]])
        result = grounding_metrics(pred, np.array([[0.0, 0.0, 10.0, 10.0]]))
        assert result["mean_iou"] == 1.0

    def test_agrees_with_the_diagonal_of_box_iou(self):
        rng = np.random.default_rng(0)
        xy = rng.uniform(0, 100, size=(20, 2))
        pred = np.concatenate([xy, xy + rng.uniform(1, 50, size=(20, 2))], axis=1)
        gt = np.concatenate([xy + 5, xy + 5 + rng.uniform(1, 50, size=(20, 2))], axis=1)
        expected = np.diag(box_iou(pred, gt)).mean()
        assert grounding_metrics(pred, gt)["mean_iou"] == pytest.approx(expected)

    def test_no_samples_gives_undefined_averages(self):
        result = grounding_metrics([], [])
        assert result["mean_iou"] is None and result["acc_avg"] is None
        assert result["num_samples"] == 0

    def test_length_mismatch_raises(self):
        with pytest.raises(ValueError, match="paired"):
            grounding_metrics([[0, 0, 1, 1]], [])

    def test_invalid_ground_truth_raises(self):
        with pytest.raises(ValueError, match="ground-truth box 0"):
            grounding_metrics([[0, 0, 1, 1]], [[0, 0, 1]])

    def test_empty_thresholds_raise(self):
        with pytest.raises(ValueError, match="threshold"):
            grounding_metrics([[0, 0, 1, 1]], [[0, 0, 1, 1]], thresholds=())

    @given(
        data=st.lists(
            st.tuples(
                st.one_of(
                    st.none(),
                    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
                    st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=6),
                ),
                st.lists(st.floats(-1e4, 1e4), min_size=4, max_size=4),
            ),
            min_size=1,
            max_size=20,
        )
    )
    def test_values_are_finite_and_in_range_for_any_input(self, data):
        preds = [p for p, _ in data]
        gts = [g for _, g in data]
        result = grounding_metrics(preds, gts, thresholds=(0.5, 0.75, 0.95))
        for key in ("mean_iou", "acc@0.5", "acc@0.75", "acc@0.95", "acc_avg", "center_acc"):
            assert math.isfinite(result[key]) and 0.0 <= result[key] <= 1.0, key
        assert result["acc@0.5"] >= result["acc@0.75"] >= result["acc@0.95"]
        assert 0 <= result["num_missing"] <= result["num_samples"] == len(data)


# ------------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------------


class TestCountingMetrics:
    def test_accuracy_and_mae(self):
        result = counting_metrics([3, 5, 2, 7], [3, 4, 4, 7])
        assert result == {"accuracy": 0.5, "mae": 0.75, "num_samples": 4, "num_missing": 0}

    def test_missing_prediction_counts_as_zero_objects(self):
        result = counting_metrics([None, None], [0, 3])
        assert result["accuracy"] == 0.5  # GT 0 with an empty answer is correct (unlike PR1)
        assert result["mae"] == 1.5
        assert result["num_missing"] == 2

    def test_zero_predictions_on_zero_ground_truth_are_correct(self):
        assert counting_metrics([0, 0], [0, 0])["accuracy"] == 1.0

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), "many", [1, 2], True])
    def test_non_numeric_prediction_counts_as_missing(self, bad):
        result = counting_metrics([bad], [2])
        assert result["num_missing"] == 1
        assert result["mae"] == 2.0

    def test_float_predictions_compare_by_value(self):
        assert counting_metrics([2.0, 2.5], [2, 2])["accuracy"] == 0.5

    def test_ground_truth_may_be_the_row_contract_dict(self):
        gts = [{"count": 2, "points": [[1, 1], [2, 2]]}, {"count": 0}]
        assert counting_metrics([2, None], gts)["accuracy"] == 1.0

    def test_no_samples_gives_undefined_averages(self):
        assert counting_metrics([], []) == {"accuracy": None, "mae": None, "num_samples": 0, "num_missing": 0}

    def test_length_mismatch_raises(self):
        with pytest.raises(ValueError, match="paired"):
            counting_metrics([1, 2], [1])

    def test_missing_ground_truth_raises(self):
        with pytest.raises(ValueError, match="ground-truth count 0"):
            counting_metrics([1], [None])

    @given(
        st.lists(
            st.tuples(st.one_of(st.none(), st.integers(-(10**6), 10**6)), st.integers(0, 10**6)),
            min_size=1,
            max_size=30,
        )
    )
    def test_values_are_finite_and_in_range_for_any_counts(self, pairs):
        preds = [p for p, _ in pairs]
        gts = [g for _, g in pairs]
        result = counting_metrics(preds, gts)
        assert 0.0 <= result["accuracy"] <= 1.0
        assert math.isfinite(result["mae"]) and result["mae"] >= 0.0
        expected_mae = np.mean([abs((p or 0) - g) for p, g in pairs])
        assert result["mae"] == pytest.approx(expected_mae)


# ------------------------------------------------------------------------------------------------
# OCR
# ------------------------------------------------------------------------------------------------


class TestOcrMetrics:
    def test_golden_english_page(self):
        result = ocr_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])
        assert result["edit_distance"] == pytest.approx(3 / 22)  # "the" -> "a": 3 edits, 22 characters
        # token sets: H = {the, cat, sat, on, mat}, R = {the, cat, sat, on, a, mat}
        assert result["precision"] == 1.0
        assert result["recall"] == pytest.approx(5 / 6)
        assert result["f1"] == pytest.approx(10 / 11)
        # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; brevity penalty 1
        assert result["bleu"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
        assert result["num_samples"] == 1

    def test_identical_pages_are_perfect(self):
        text = "FREEDOM OF INFORMATION ACT request number 42"
        result = ocr_metrics([text], [text])
        assert result["edit_distance"] == 0.0
        assert result["f1"] == result["precision"] == result["recall"] == 1.0
        assert result["bleu"] == pytest.approx(1.0)

    def test_token_metrics_use_sets(self):
        result = ocr_metrics(["a a a b"], ["a b"])
        assert result["f1"] == 1.0
        assert result["edit_distance"] == pytest.approx(4 / 7)

    def test_edit_distance_is_normalised_by_the_longer_string(self):
        assert ocr_metrics(["abc"], ["abcd"])["edit_distance"] == 0.25
        assert ocr_metrics(["abcd"], ["abc"])["edit_distance"] == 0.25

    def test_scores_are_per_page_means(self):
        result = ocr_metrics(["x y z w", "a b"], ["x y z w", "c d"])
        assert result["f1"] == 0.5
        assert result["edit_distance"] == pytest.approx((0 + 2 / 3) / 2)

    def test_both_empty_is_a_perfect_page(self):
        result = ocr_metrics([""], [""])
        assert result["edit_distance"] == 0.0
        assert result["f1"] == result["precision"] == result["recall"] == 1.0
        assert result["bleu"] == 1.0

    def test_empty_prediction_scores_zero(self):
        result = ocr_metrics([""], ["some words here"])
        assert result["edit_distance"] == 1.0
        assert result["f1"] == result["precision"] == result["recall"] == 0.0
        assert result["bleu"] == 0.0

    def test_none_prediction_is_empty_text(self):
        assert ocr_metrics([None], ["text"]) == ocr_metrics([""], ["text"])

    def test_prediction_on_empty_reference_scores_zero(self):
        result = ocr_metrics(["hallucinated text"], [""])
        assert result["edit_distance"] == 1.0
        assert result["f1"] == 0.0
        assert result["bleu"] == 0.0

    def test_cjk_page_is_tokenized_per_character_without_jieba(self):
        result = ocr_metrics(["猫坐在垫子上"], ["猫坐在桌子上"], cjk_tokenizer="char")
        # one substitution of six characters; character sets share 5 of 6
        assert result["edit_distance"] == pytest.approx(1 / 6)
        assert result["precision"] == result["recall"] == result["f1"] == pytest.approx(5 / 6)

    def test_cjk_in_either_string_switches_both_to_cjk_tokens(self):
        # "ab" alone would be one whitespace token; per-character CJK tokens are {"ab", "中"} here.
        result = ocr_metrics(["ab"], ["ab中"], cjk_tokenizer="char")
        assert result["precision"] == 1.0
        assert result["recall"] == 0.5

    def test_char_tokenizer_keeps_latin_runs_whole(self):
        assert metrics._ocr_tokens("OCR 结果 ok", True, "char") == ["OCR", "结", "果", "ok"]

    def test_auto_tokenizer_falls_back_to_characters_without_jieba(self, monkeypatch):
        monkeypatch.setattr(metrics, "_jieba_lcut", lambda: None)
        auto = ocr_metrics(["猫坐在垫子上"], ["猫坐在桌子上"], cjk_tokenizer="auto")
        char = ocr_metrics(["猫坐在垫子上"], ["猫坐在桌子上"], cjk_tokenizer="char")
        assert auto == char

    def test_jieba_tokenizer_without_jieba_raises(self, monkeypatch):
        monkeypatch.setattr(metrics, "_jieba_lcut", lambda: None)
        with pytest.raises(ImportError, match="jieba"):
            ocr_metrics(["猫"], ["猫"], cjk_tokenizer="jieba")

    def test_jieba_tokens_are_used_when_available(self):
        jieba = pytest.importorskip("jieba")
        pred, ref = "我们今天去公园散步", "我们明天去公园散步"
        hyp, gt = set(jieba.lcut(pred)), set(jieba.lcut(ref))
        common = len(hyp & gt)
        result = ocr_metrics([pred], [ref], cjk_tokenizer="jieba")
        assert result["precision"] == pytest.approx(common / len(hyp))
        assert result["recall"] == pytest.approx(common / len(gt))

    def test_bleu_is_unsmoothed_like_pr1(self):
        # Three tokens have no 4-gram, so unsmoothed 4-gram BLEU is ~0 even for a perfect page.
        result = ocr_metrics(["one two three"], ["one two three"])
        assert result["bleu"] < 1e-10
        assert result["f1"] == 1.0

    def test_meteor_is_none_and_listed_when_wordnet_is_missing(self, monkeypatch):
        monkeypatch.setattr(metrics, "_meteor_unavailable_reason", lambda: "NLTK WordNet corpus not found")
        result = ocr_metrics(["a b c d"], ["a b c d"])
        assert result["meteor"] is None
        assert result["unavailable"] == {"meteor": "NLTK WordNet corpus not found"}
        assert result["bleu"] == pytest.approx(1.0)

    def test_bleu_and_meteor_are_none_without_nltk(self, monkeypatch):
        monkeypatch.setattr(metrics, "_nltk_unavailable_reason", lambda: "nltk is not installed")
        monkeypatch.setattr(metrics, "_meteor_unavailable_reason", lambda: "nltk is not installed")
        result = ocr_metrics(["a b c d"], ["a b c d"])
        assert result["bleu"] is None and result["meteor"] is None
        assert set(result["unavailable"]) == {"bleu", "meteor"}
        assert result["f1"] == 1.0 and result["edit_distance"] == 0.0

    def test_meteor_matches_nltk_when_wordnet_is_installed(self):
        if metrics._meteor_unavailable_reason() is not None:
            pytest.skip("NLTK WordNet corpus is not installed")
        from nltk.translate.meteor_score import meteor_score

        pred, ref = "the cat sat on the mat", "the cat sat on a mat"
        result = ocr_metrics([pred], [ref])
        assert result["meteor"] == pytest.approx(meteor_score([ref.split()], pred.split()))
        assert "meteor" not in result["unavailable"]

    def test_no_pages_gives_undefined_means(self):
        result = ocr_metrics([], [])
        assert result["f1"] is None and result["edit_distance"] is None
        assert result["num_samples"] == 0

    def test_length_mismatch_raises(self):
        with pytest.raises(ValueError, match="paired"):
            ocr_metrics(["a"], [])

    def test_non_text_raises(self):
        with pytest.raises(TypeError, match="reference 0"):
            ocr_metrics(["a"], [3])

    def test_unknown_tokenizer_raises(self):
        with pytest.raises(ValueError, match="cjk_tokenizer"):
            ocr_metrics(["a"], ["a"], cjk_tokenizer="spacy")

    @settings(max_examples=100)
    @given(
        st.lists(
            st.tuples(
                st.one_of(
                    st.none(), st.text(alphabet=st.sampled_from("ab c\n猫坐子上é"), max_size=30), st.text()
                ),
                st.one_of(st.text(alphabet=st.sampled_from("ab c\n猫坐子上é"), max_size=30), st.text()),
            ),
            min_size=1,
            max_size=5,
        )
    )
    def test_values_are_finite_and_in_range_for_any_text(self, pairs):
        result = ocr_metrics([p for p, _ in pairs], [r for _, r in pairs], cjk_tokenizer="char")
        for key in ("edit_distance", "f1", "precision", "recall", "bleu", "meteor"):
            value = result[key]
            if value is None:
                assert key in result["unavailable"]
            else:
                assert math.isfinite(value) and 0.0 <= value <= 1.0, key

    @given(st.text(max_size=40))
    def test_a_page_matches_itself(self, text):
        result = ocr_metrics([text], [text], cjk_tokenizer="char")
        assert result["edit_distance"] == 0.0
        assert result["f1"] == 1.0


# ------------------------------------------------------------------------------------------------
# COCO detection
# ------------------------------------------------------------------------------------------------


class TestCocoParity:
    @pytest.mark.parametrize(
        ("gt_path", "dt_path"),
        [(VAL2014_GT, VAL2014_DT), (SYNTH_GT, SYNTH_DT)],
        ids=["val2014_100", "synthetic"],
    )
    def test_reproduces_pycocotools_stats(self, gt_path, dt_path):
        expected = load_json(EXPECTED)["expected"][f"{gt_path.name} + {dt_path.name}"]
        result = coco_metrics(gt_path, load_json(dt_path))
        assert np.max(np.abs(np.array(stats(result)) - np.array(expected))) <= 1e-9
        assert result["num_predictions"] == len(load_json(dt_path))

    def test_ground_truth_as_path_str_dict_or_coco_object_agree(self):
        from pycocotools.coco import COCO

        dts = load_json(VAL2014_DT)
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(VAL2014_GT))
        by_path = stats(coco_metrics(VAL2014_GT, dts))
        assert stats(coco_metrics(str(VAL2014_GT), dts)) == by_path
        assert stats(coco_metrics(load_json(VAL2014_GT), dts)) == by_path
        assert stats(coco_metrics(coco, dts)) == by_path

    def test_per_class_ap_averages_to_ap(self):
        result = coco_metrics(VAL2014_GT, load_json(VAL2014_DT))
        per_class = result["per_class_AP"]
        gt = load_json(VAL2014_GT)
        assert set(per_class) == {c["name"] for c in gt["categories"]}
        with_gt = {a["category_id"] for a in gt["annotations"] if not a["iscrowd"]}
        names_with_gt = {c["name"] for c in gt["categories"] if c["id"] in with_gt}
        assert all(per_class[name] >= 0 for name in names_with_gt)
        assert all(v == -1.0 for name, v in per_class.items() if name not in names_with_gt)
        assert np.mean([per_class[name] for name in names_with_gt]) == pytest.approx(result["AP"], abs=1e-12)

    def test_perfect_predictions_give_ap_one(self):
        gt = load_json(VAL2014_GT)
        result = coco_metrics(gt, perfect_results(gt))
        # AR1 / AR10 stay below 1: many images hold more than 1 / 10 objects.
        assert stats(result) == pytest.approx(
            [1, 1, 1, 1, 1, 1, 0.6046959118084726, 0.9841385369802442, 1, 1, 1, 1]
        )

    def test_empty_predictions_give_pycocotools_no_detection_stats(self):
        result = coco_metrics(SYNTH_GT, [])
        # the synthetic set has no small objects: those entries are -1, all others 0
        assert stats(result) == [0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0]
        assert result["num_predictions"] == 0
        assert set(result["per_class_AP"].values()) == {0.0}

    def test_does_not_modify_its_inputs(self):
        gt, dts = load_json(SYNTH_GT), load_json(SYNTH_DT)
        gt_before, dts_before = copy.deepcopy(gt), copy.deepcopy(dts)
        coco_metrics(gt, dts)
        assert gt == gt_before
        assert dts == dts_before


class TestCocoMetrics:
    def test_per_class_ap_golden(self):
        dts = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
        result = coco_metrics(tiny_gt(), dts)
        assert result["per_class_AP"] == pytest.approx({"cat": 1.0, "dog": 0.0, "toothbrush": -1.0})
        assert result["AP"] == pytest.approx(0.5)

    def test_perfect_predictions_give_ap_one(self):
        gt = tiny_gt()
        assert coco_metrics(gt, perfect_results(gt))["AP"] == pytest.approx(1.0)

    def test_empty_predictions_do_not_crash(self):
        result = coco_metrics(tiny_gt(), [])
        assert result["AP"] == 0.0 and result["AR100"] == 0.0
        assert result["num_predictions"] == 0

    def test_unknown_image_id_is_dropped_with_a_counted_warning(self):
        gt = tiny_gt()
        good = perfect_results(gt)
        stray = {"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.99}
        with pytest.warns(
            UserWarning, match=r"dropped 1 predictions with unknown image id \(e\.g\. \[999\]\)"
        ):
            result = coco_metrics(gt, [*good, stray])
        assert result["num_dropped"] == {"invalid": 0, "unknown_image_id": 1, "unknown_category_id": 0}
        assert result["num_predictions"] == len(good)
        assert stats(result) == stats(coco_metrics(gt, good))

    def test_unknown_category_id_is_dropped_with_a_counted_warning(self):
        gt = tiny_gt()
        good = perfect_results(gt)
        stray = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.99}] * 2
        with pytest.warns(UserWarning, match="dropped 2 predictions with unknown category id"):
            result = coco_metrics(gt, [*good, *stray])
        assert result["num_dropped"]["unknown_category_id"] == 2
        assert stats(result) == stats(coco_metrics(gt, good))

    def test_only_unknown_predictions_equal_no_predictions(self):
        stray = [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
        with pytest.warns(UserWarning):
            result = coco_metrics(tiny_gt(), stray)
        assert stats(result) == stats(coco_metrics(tiny_gt(), []))

    def test_missing_score_defaults_to_one(self):
        gt = tiny_gt()
        dts = [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"image_id": 1, "category_id": 1, "bbox": [0, 50, 20, 20], "score": 0.5},
        ]
        explicit = [{**dts[0], "score": 1.0}, dts[1]]
        assert stats(coco_metrics(gt, dts)) == stats(coco_metrics(gt, explicit))

    @pytest.mark.parametrize(
        "bad",
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40], "score": 0.5},
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, float("nan"), 40], "score": 0.5},
            {"image_id": 1, "category_id": 1, "score": 0.5},
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": float("nan")},
            {"image_id": [1], "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.5},
            "not a dict",
        ],
    )
    def test_invalid_predictions_are_dropped(self, bad):
        with pytest.warns(UserWarning, match="invalid"):
            result = coco_metrics(tiny_gt(), [bad])
        assert result["num_dropped"]["invalid"] == 1
        assert result["num_predictions"] == 0

    def test_negative_size_box_is_kept_as_a_false_positive(self):
        gt = tiny_gt()
        inverted = {"image_id": 1, "category_id": 1, "bbox": [50, 50, -40, -40], "score": 1.0}
        with pytest.warns(UserWarning, match="clamped 1 boxes"):
            result = coco_metrics(gt, [inverted, *perfect_results(gt)])
        assert result["num_clamped"] == 1
        assert result["num_predictions"] == 4
        assert result["per_class_AP"]["cat"] < 1.0

    def test_ground_truth_without_annotations_gives_minus_one(self):
        gt = {**tiny_gt(), "annotations": []}
        result = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])
        assert stats(result) == [-1.0] * 12

    def test_ground_truth_missing_images_raises(self):
        with pytest.raises(ValueError, match="'images'"):
            coco_metrics({"categories": []}, [])

    def test_only_bbox_is_supported(self):
        with pytest.raises(ValueError, match="bbox"):
            coco_metrics(tiny_gt(), [], iou_type="segm")

    def test_no_pycocotools_output_is_printed(self, capsys):
        coco_metrics(tiny_gt(), perfect_results(tiny_gt()))
        assert capsys.readouterr().out == ""

    @settings(max_examples=40)
    @given(
        st.lists(
            st.fixed_dictionaries(
                {
                    "image_id": st.sampled_from([1, 5]),
                    "category_id": st.sampled_from([1, 3, 90]),
                    "bbox": st.lists(st.floats(0, 100), min_size=4, max_size=4),
                    "score": st.floats(0, 1),
                }
            ),
            max_size=15,
        )
    )
    def test_stats_are_finite_and_in_range_for_any_predictions(self, dts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = coco_metrics(tiny_gt(), dts)
        for value in [*stats(result), *result["per_class_AP"].values()]:
            assert math.isfinite(value) and (value == -1.0 or 0.0 <= value <= 1.0)


class TestObjectsToCocoResults:
    def test_converts_xyxy_to_xywh_with_the_category_id(self):
        results, counts = objects_to_coco_results(
            42, [{"bbox_2d": [10, 20, 50, 80], "label": "cat"}], {"cat": 17}
        )
        assert results == [
            {"image_id": 42, "category_id": 17, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 1.0}
        ]
        assert counts == {"unknown_label": 0, "no_box": 0, "invalid_box": 0, "inverted_box": 0}

    def test_accepts_detected_objects(self):
        from trl_perception.formats import DetectedObject

        objs = [DetectedObject(bbox=(0.0, 0.0, 4.0, 2.0), label="dog")]
        results, _ = objects_to_coco_results(1, objs, {"dog": 18}, score=0.5)
        assert results == [{"image_id": 1, "category_id": 18, "bbox": [0.0, 0.0, 4.0, 2.0], "score": 0.5}]

    def test_unknown_labels_are_dropped_and_counted(self):
        objs = [
            {"bbox_2d": [0, 0, 1, 1], "label": "unicorn"},
            {"bbox_2d": [0, 0, 1, 1], "label": "Cat"},  # names are case-sensitive, as in PR1
            {"bbox_2d": [0, 0, 1, 1]},
            {"bbox_2d": [0, 0, 1, 1], "label": " cat "},  # surrounding spaces are ignored
        ]
        results, counts = objects_to_coco_results(1, objs, {"cat": 17})
        assert len(results) == 1
        assert counts["unknown_label"] == 3

    def test_objects_without_usable_boxes_are_dropped_and_counted(self):
        from trl_perception.formats import DetectedObject

        objs = [
            DetectedObject(point=(3.0, 4.0), label="cat"),
            {"bbox_2d": [0, 0, 1], "label": "cat"},
            {"bbox_2d": [0, 0, float("inf"), 1], "label": "cat"},
        ]
        results, counts = objects_to_coco_results(1, objs, {"cat": 17})
        assert results == []
        assert counts == {"unknown_label": 0, "no_box": 1, "invalid_box": 2, "inverted_box": 0}

    def test_inverted_box_becomes_a_zero_size_box(self):
        results, counts = objects_to_coco_results(
            1, [{"bbox_2d": [50, 50, 10, 60], "label": "cat"}], {"cat": 1}
        )
        assert results[0]["bbox"] == [50.0, 50.0, 0.0, 10.0]
        assert counts["inverted_box"] == 1

    def test_round_trip_of_ground_truth_objects_scores_ap_one(self):
        gt = tiny_gt()
        name_to_id = {c["name"]: c["id"] for c in gt["categories"]}
        id_to_name = {v: k for k, v in name_to_id.items()}
        results = []
        for image in gt["images"]:
            objs = [
                {"bbox_2d": [x, y, x + w, y + h], "label": id_to_name[a["category_id"]]}
                for a in gt["annotations"]
                if a["image_id"] == image["id"]
                for x, y, w, h in [a["bbox"]]
            ]
            results += objects_to_coco_results(image["id"], objs, name_to_id)[0]
        assert coco_metrics(gt, results)["AP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# COCO detection: hand-built ground truth
# ------------------------------------------------------------------------------------------------


def _pycocotools_stats(gt: dict, dts: list[dict]) -> list[float]:
    """COCOeval run directly (no wrapper), the reference for parity."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dts)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def _some_predictions(gt: dict) -> list[dict]:
    shifted = [
        {"image_id": a["image_id"], "category_id": a["category_id"],
         "bbox": [a["bbox"][0] + 3, a["bbox"][1] - 2, a["bbox"][2], a["bbox"][3] + 4], "score": 0.5 + 0.1 * i}
        for i, a in enumerate(gt["annotations"])
    ]  # fmt: skip
    return shifted + [{"image_id": 1, "category_id": 90, "bbox": [1, 1, 5, 5], "score": 0.3}]


class TestCocoHandBuiltGroundTruth:
    @pytest.mark.parametrize("missing", [("iscrowd",), ("area",), ("id",), ("iscrowd", "area", "id")])
    def test_standard_defaults_are_filled_with_pycocotools_parity(self, missing):
        full = tiny_gt()
        stripped = copy.deepcopy(full)
        for ann in stripped["annotations"]:
            for key in missing:
                del ann[key]
        dts = _some_predictions(full)
        result = coco_metrics(stripped, dts)
        assert stats(result) == _pycocotools_stats(full, dts)  # exactly, as pycocotools on the complete file

    def test_only_some_annotations_lacking_an_id_get_fresh_ones(self):
        gt = tiny_gt()
        del gt["annotations"][0]["id"]  # ids 2 and 3 remain; the filled one must not collide (nor be 0)
        dts = _some_predictions(tiny_gt())
        assert stats(coco_metrics(gt, dts)) == _pycocotools_stats(tiny_gt(), dts)

    def test_string_iscrowd_is_read_as_a_number(self):
        gt = tiny_gt()
        for ann in gt["annotations"]:
            ann["iscrowd"] = "0"
        assert coco_metrics(gt, perfect_results(tiny_gt()))["AP"] == 1.0

    def test_the_callers_incomplete_dict_is_left_alone(self):
        gt = tiny_gt()
        for ann in gt["annotations"]:
            del ann["area"], ann["id"]
        before = copy.deepcopy(gt)
        coco_metrics(gt, perfect_results(gt))
        assert gt == before

    def test_an_incomplete_coco_object_is_completed_on_a_copy(self):
        from pycocotools.coco import COCO

        gt = tiny_gt()
        for ann in gt["annotations"]:
            del ann["iscrowd"]
        coco = COCO()
        coco.dataset = gt
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        assert coco_metrics(coco, perfect_results(gt))["AP"] == 1.0
        assert all("iscrowd" not in ann for ann in coco.dataset["annotations"])

    @pytest.mark.parametrize(
        ("where", "key", "message"),
        [
            ("images", "id", r"images\[1\] has no 'id'"),
            ("categories", "id", r"categories\[0\] has no 'id'"),
            ("annotations", "image_id", r"annotations\[1\] has no 'image_id'"),
            ("annotations", "category_id", r"annotations\[1\] has no 'category_id'"),
            ("annotations", "bbox", r"annotations\[1\] has bbox None"),
        ],
    )
    def test_a_key_that_cannot_be_filled_is_named(self, where, key, message):
        gt = tiny_gt()
        del gt[where][1 if where != "categories" else 0][key]
        with pytest.raises(ValueError, match=message):
            coco_metrics(gt, [])

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (lambda gt: gt["annotations"][2].update(id=1), r"annotations\[2\] repeats id 1"),
            (lambda gt: gt["images"][1].update(id=1), r"images\[1\] repeats id 1"),
            (lambda gt: gt["annotations"][0].update(iscrowd="maybe"), "iscrowd 'maybe'"),
            (lambda gt: gt["annotations"][0].update(area="big"), "area 'big'"),
            (lambda gt: gt["annotations"][0].update(id=[1]), r"id \[1\]"),
            (lambda gt: gt.update(annotations=5), "'annotations' must be a list"),
            (lambda gt: gt["annotations"].append("x"), r"annotations\[3\] must be an object"),
        ],
    )
    def test_malformed_records_are_named_not_keyerrors(self, change, message):
        gt = tiny_gt()
        change(gt)
        with pytest.raises(ValueError, match=message):
            coco_metrics(gt, [])

    @settings(max_examples=40, deadline=None)
    @given(drops=st.lists(st.sets(st.sampled_from(["iscrowd", "area", "id"])), min_size=3, max_size=3))
    def test_any_mix_of_left_out_keys_gives_the_complete_files_stats(self, drops):
        gt = tiny_gt()
        for ann, keys in zip(gt["annotations"], drops):
            for key in keys:
                del ann[key]
        dts = _some_predictions(tiny_gt())
        assert stats(coco_metrics(gt, dts)) == _pycocotools_stats(tiny_gt(), dts)
