"""Evaluation metrics for the four perception tasks, as pure functions over predictions and ground truth.

Grounding (IoU, Acc@τ, centre accuracy), counting (accuracy, MAE), page OCR (Fox / Perception-R1 metrics)
and COCO detection (pycocotools `COCOeval` stats, per-class AP).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from trl_perception.boxes import paired_box_iou

__all__ = [
    "COCO_STAT_NAMES",
    "coco_metrics",
    "counting_metrics",
    "CROP_COUNTS",
    "crop_counts",
    "crop_metrics",
    "crop_rates",
    "grounding_metrics",
    "objects_to_coco_results",
    "ocr_metrics",
    "ovd_metrics",
    "vqa_metrics",
]

# Order of `COCOeval.stats` for iou_type "bbox" / "segm".
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


# --------------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------------


def _paired(metric: str, preds: Iterable[Any], gts: Iterable[Any], what: str) -> tuple[list[Any], list[Any]]:
    """Predictions and ground truth as lists, which must pair one to one."""
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(
            f"{metric}: got {len(preds)} predictions but {len(gts)} {what}; they must be paired one to one"
        )
    return preds, gts


def _as_box(value: Any) -> np.ndarray | None:
    """A finite length-4 float array, or None for anything else (None, wrong length, NaN, text...)."""
    if value is None:
        return None
    try:
        box = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        return None
    return box


def _threshold_key(threshold: float) -> str:
    return f"acc@{threshold:g}"


def grounding_metrics(
    pred_boxes: Sequence[Sequence[float] | None] | np.ndarray,
    gt_boxes: Sequence[Sequence[float]] | np.ndarray,
    thresholds: Sequence[float] = (0.5, 0.75, 0.95),
) -> dict[str, float | int | None]:
    r"""Visual-grounding metrics of paired predicted / ground-truth boxes (Perception-R1 §2.1 protocol).

    All boxes are `[x1, y1, x2, y2]` in the same frame (the evaluation runner maps predictions back to
    original pixels first). Per sample `i`:

    * `IoU_i = area(p ∩ g) / area(p ∪ g)` (continuous, no +1 pixel, no epsilon; 0 when the union is empty;
      an inverted or zero-size prediction has area 0 and so IoU 0);
    * `hit_i(τ) = [IoU_i >= τ]` — the PR1 evaluation convention (`>=`, whereas VLM-R1 uses `> 0.5`).
      Unlike PR1, whose IoU adds 1e-10 to the denominator, an IoU of exactly τ counts as a hit;
    * `centre_i = [x1_g <= (x1_p + x2_p)/2 <= x2_g and y1_g <= (y1_p + y2_p)/2 <= y2_g]` (boundary
      inclusive, as PR1 `compute_center_accuracy`).

    A missing prediction (`None`, or anything that is not four finite numbers) counts as IoU 0, a miss at
    every τ and a centre miss.

    Returns fractions in [0, 1] (the paper shows them ×100):
    `mean_iou` = mean IoU_i; `acc@τ` = mean hit_i(τ) for each τ (key formatted with `:g`, e.g.
    `acc@0.5`); `acc_avg` = mean over τ of `acc@τ` (the paper's "Avg" for τ ∈ {0.5, 0.75, 0.95});
    `center_acc` = mean centre_i; plus `num_samples` and `num_missing`. With no samples every average
    is `None`.

    Args:
        pred_boxes: N predicted boxes, each `[x1, y1, x2, y2]` or `None`.
        gt_boxes: N ground-truth boxes `[x1, y1, x2, y2]` (finite numbers).
        thresholds: IoU thresholds τ for `acc@τ`; at least one.

    Raises:
        ValueError: when the lengths differ, `thresholds` is empty, or a ground-truth box is not four finite
            numbers.

    Example:
    ```python
    >>> m = grounding_metrics([[0, 0, 10, 10], [5, 5, 15, 15], None], [[0, 0, 10, 10]] * 3)
    >>> round(m["mean_iou"], 4), m["acc@0.5"], round(m["acc_avg"], 4), m["num_missing"]
    (0.381, 0.3333333333333333, 0.3333, 1)
    >>> round(m["center_acc"], 4)
    0.6667

    ```
    """
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds:
        raise ValueError("grounding_metrics: `thresholds` must hold at least one IoU threshold")
    preds, gts = _paired("grounding_metrics", pred_boxes, gt_boxes, "ground-truth boxes")
    n = len(gts)
    keys = ["mean_iou", *(_threshold_key(t) for t in thresholds), "acc_avg", "center_acc"]
    if n == 0:
        return {**dict.fromkeys(keys), "num_samples": 0, "num_missing": 0}

    gt = np.empty((n, 4), dtype=float)
    for i, box in enumerate(gts):
        parsed = _as_box(box)
        if parsed is None:
            raise ValueError(
                f"grounding_metrics: ground-truth box {i} is {box!r}; expected [x1, y1, x2, y2] as 4 finite numbers"
            )
        gt[i] = parsed
    pred = np.zeros((n, 4), dtype=float)
    valid = np.zeros(n, dtype=bool)
    for i, box in enumerate(preds):
        parsed = _as_box(box)
        if parsed is not None:
            pred[i] = parsed
            valid[i] = True

    # Clipped because float rounding can leave inter/union a hair above 1 for near-identical boxes.
    with np.errstate(over="ignore", invalid="ignore"):  # huge finite coordinates overflow areas to inf
        iou = np.where(valid, np.clip(paired_box_iou(pred, gt), 0.0, 1.0), 0.0)
    cx = (pred[:, 0] + pred[:, 2]) / 2.0
    cy = (pred[:, 1] + pred[:, 3]) / 2.0
    with np.errstate(invalid="ignore", over="ignore"):
        centre_in = (gt[:, 0] <= cx) & (cx <= gt[:, 2]) & (gt[:, 1] <= cy) & (cy <= gt[:, 3])
    centre_in &= valid

    result: dict[str, float | int | None] = {"mean_iou": float(iou.mean())}
    accs = []
    for t in thresholds:
        acc = float(np.mean(iou >= t))
        result[_threshold_key(t)] = acc
        accs.append(acc)
    result["acc_avg"] = float(np.mean(accs))
    result["center_acc"] = float(centre_in.mean())
    result["num_samples"] = n
    result["num_missing"] = int(n - valid.sum())
    return result


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------


def _as_count(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        count = float(value)
    except (TypeError, ValueError):
        return None
    return count if math.isfinite(count) else None


def counting_metrics(
    pred_counts: Sequence[int | float | None],
    gt_counts: Sequence[int | float | Mapping[str, Any]],
) -> dict[str, float | int | None]:
    r"""Counting metrics of paired predicted / ground-truth object counts (PixMo-Count protocol).

    `accuracy = mean_i [pred_i == gt_i]` (exact match) and `MAE = mean_i |pred_i - gt_i|`.

    A missing prediction (`None`, or anything that is not a finite number) counts as **0 objects**: an
    empty answer on an image whose ground truth is 0 is correct. This differs from the PR1 evaluation, which
    maps "no boxes" to `None` so that a GT of 0 can never score. `num_missing` reports how many
    predictions were missing.

    Returns `accuracy` in [0, 1], `mae` >= 0, `num_samples` and `num_missing`; with no samples
    `accuracy` and `mae` are `None`.

    Args:
        pred_counts: N predicted counts (`None` when nothing was parsed).
        gt_counts: N ground-truth counts, as numbers or as the row-contract dict `{"count": n, ...}`.

    Raises:
        ValueError: when the lengths differ or a ground-truth count is not a finite number.

    Example:
    ```python
    >>> counting_metrics([3, None, 5, 2], [3, 0, 4, 4])
    {'accuracy': 0.5, 'mae': 0.75, 'num_samples': 4, 'num_missing': 1}

    ```
    """
    preds, gts = _paired("counting_metrics", pred_counts, gt_counts, "ground-truth counts")
    n = len(gts)
    if n == 0:
        return {"accuracy": None, "mae": None, "num_samples": 0, "num_missing": 0}

    gt = np.empty(n, dtype=float)
    for i, value in enumerate(gts):
        count = _as_count(value.get("count") if isinstance(value, Mapping) else value)
        if count is None:
            raise ValueError(
                f"counting_metrics: ground-truth count {i} is {value!r}; expected a finite number"
            )
        gt[i] = count
    pred = np.zeros(n, dtype=float)
    missing = 0
    for i, value in enumerate(preds):
        count = _as_count(value)
        if count is None:
            missing += 1
        else:
            pred[i] = count
    with np.errstate(over="ignore"):
        abs_err = np.abs(pred - gt)
    return {
        "accuracy": float(np.mean(pred == gt)),
        "mae": float(np.mean(abs_err)),
        "num_samples": n,
        "num_missing": missing,
    }


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------

# The CJK range PR1 / Fox test for (`contain_chinese_string`): CJK Unified Ideographs U+4E00–U+9FA5.
_CJK_RE = re.compile(r"[\u4e00-\u9fa5]")
# Fallback tokenizer: one token per CJK character, whitespace-separated runs for everything else.
_CHAR_TOKEN_RE = re.compile(r"[\u4e00-\u9fa5]|[^\s\u4e00-\u9fa5]+")

_OCR_KEYS = ("edit_distance", "f1", "precision", "recall", "bleu", "meteor")


@functools.lru_cache(maxsize=1)
def _jieba_lcut() -> Any:
    try:
        import jieba
    except ImportError:
        return None
    import logging

    jieba.setLogLevel(logging.WARNING)  # silence "Building prefix dict..." on first use
    return jieba.lcut


def _nltk_unavailable_reason() -> str | None:
    try:
        import nltk.translate.bleu_score  # noqa: F401
    except ImportError:
        return "nltk is not installed (pip install nltk)"
    return None


@functools.lru_cache(maxsize=1)
def _meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot be computed here (nltk or its WordNet corpus missing), or None when it can."""
    reason = _nltk_unavailable_reason()
    if reason is not None:
        return reason
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except (LookupError, OSError):  # nltk raises LookupError when the corpus is not on nltk.data.path
        return "NLTK WordNet corpus not found on nltk.data.path (install it with nltk.download('wordnet'))"
    return None


def _ocr_tokens(text: str, use_cjk: bool, cjk_tokenizer: str) -> list[str]:
    if not use_cjk:
        return text.split()
    if cjk_tokenizer == "jieba" or (cjk_tokenizer == "auto" and _jieba_lcut() is not None):
        lcut = _jieba_lcut()
        if lcut is None:
            raise ImportError("ocr_metrics(cjk_tokenizer='jieba') needs jieba (pip install jieba)")
        return list(lcut(text))
    return _CHAR_TOKEN_RE.findall(text)


def _page_metrics(
    pred: str, ref: str, cjk_tokenizer: str, with_bleu: bool, with_meteor: bool
) -> dict[str, float | None]:
    import Levenshtein

    max_len = max(len(pred), len(ref))
    page: dict[str, float | None] = {
        "edit_distance": Levenshtein.distance(pred, ref) / max_len if max_len else 0.0
    }
    use_cjk = bool(_CJK_RE.search(pred) or _CJK_RE.search(ref))
    hyp_tokens = _ocr_tokens(pred, use_cjk, cjk_tokenizer)
    ref_tokens = _ocr_tokens(ref, use_cjk, cjk_tokenizer)
    hyp_set, ref_set = set(hyp_tokens), set(ref_tokens)

    if not hyp_set and not ref_set:
        precision = recall = f1 = 1.0
    elif not hyp_set or not ref_set:
        precision = recall = f1 = 0.0
    else:
        common = len(hyp_set & ref_set)
        precision = common / len(hyp_set)
        recall = common / len(ref_set)
        f1 = 2 * precision * recall / (precision + recall) if common else 0.0
    page.update(f1=f1, precision=precision, recall=recall)

    both_empty, one_empty = not hyp_tokens and not ref_tokens, not hyp_tokens or not ref_tokens
    page["bleu"] = page["meteor"] = None
    if with_bleu:
        if both_empty or one_empty:
            page["bleu"] = 1.0 if both_empty else 0.0
        else:
            from nltk.translate.bleu_score import sentence_bleu

            with warnings.catch_warnings():
                # nltk warns whenever an n-gram order has no overlap (always for pages < 4 tokens).
                warnings.simplefilter("ignore")
                page["bleu"] = float(sentence_bleu([ref_tokens], hyp_tokens))
    if with_meteor:
        if both_empty or one_empty:
            page["meteor"] = 1.0 if both_empty else 0.0
        else:
            from nltk.translate.meteor_score import meteor_score

            page["meteor"] = float(meteor_score([ref_tokens], hyp_tokens))
    return page


def ocr_metrics(
    preds: Sequence[str | None],
    refs: Sequence[str | None],
    *,
    cjk_tokenizer: Literal["auto", "jieba", "char"] = "auto",
) -> dict[str, Any]:
    r"""Page-OCR metrics (Fox / Perception-R1 `cal_per_metrics`), averaged over pages.

    Per page, with `pred` the model's text and `ref` the ground truth:

    * `edit_distance = Levenshtein(pred, ref) / max(len(pred), len(ref))` on characters (lower is better);
    * tokens: if either string contains a CJK ideograph (U+4E00–U+9FA5, PR1's test) both are tokenized with
      `jieba.lcut` when jieba is importable (PR1), otherwise one token per CJK character plus
      whitespace-separated runs for the rest (`cjk_tokenizer="char"`; results then differ from PR1's).
      Text without CJK is split on whitespace;
    * on the token **sets** H (prediction) and R (reference): `precision = |H∩R| / |H|`,
      `recall = |H∩R| / |R|`, `f1 = 2PR / (P + R)` (0 when nothing overlaps);
    * `bleu`: `nltk.translate.bleu_score.sentence_bleu([ref_tokens], pred_tokens)` with the default
      4-gram weights and **no smoothing**, exactly as PR1 calls `nltk.translate.bleu`. So a page with any
      n-gram order without overlap (e.g. fewer than 4 tokens) scores ~0;
    * `meteor`: `nltk.translate.meteor_score.meteor_score([ref_tokens], pred_tokens)`; needs NLTK's
      WordNet corpus.

    Empty text (`None` counts as ""): when both are empty the page is perfect (edit distance 0,
    P = R = F1 = BLEU = METEOR = 1); when exactly one token list is empty, P = R = F1 = BLEU = METEOR = 0 and
    the edit distance is 1 if only one string is empty. PR1 raises on these cases.

    The result holds the per-page means (fractions; the paper shows ×100) under `edit_distance`, `f1`,
    `precision`, `recall`, `bleu`, `meteor`, plus `num_samples` and `unavailable`: a dict
    `{metric: reason}` of metrics that could not be computed here (`bleu` and `meteor` when nltk is
    missing, `meteor` when WordNet is missing). Those are reported as `None`, never as 0. With no pages
    every mean is `None`.

    Args:
        preds: N predicted page texts (`None` when nothing was generated).
        refs: N reference page texts.
        cjk_tokenizer: `"auto"` (jieba if importable, else per character), `"jieba"` (raises ImportError
            when missing) or `"char"`.

    Raises:
        ValueError: when the lengths differ or `cjk_tokenizer` is unknown.
        TypeError: when a text is neither `str` nor `None`.

    Example:
    ```python
    >>> m = ocr_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])
    >>> round(m["edit_distance"], 4), m["precision"], round(m["recall"], 4), round(m["f1"], 4)
    (0.1364, 1.0, 0.8333, 0.9091)
    >>> round(m["bleu"], 4)
    0.5373
    >>> m["meteor"] is None or 0.0 <= m["meteor"] <= 1.0  # None when WordNet is not installed
    True
    >>> ocr_metrics([""], [""])["f1"], ocr_metrics([None], ["text"])["edit_distance"]
    (1.0, 1.0)

    ```
    """
    if cjk_tokenizer not in ("auto", "jieba", "char"):
        raise ValueError(
            f"ocr_metrics: cjk_tokenizer must be 'auto', 'jieba' or 'char', got {cjk_tokenizer!r}"
        )
    preds, refs = _paired("ocr_metrics", preds, refs, "references")
    for name, texts in (("prediction", preds), ("reference", refs)):
        for i, text in enumerate(texts):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"ocr_metrics: {name} {i} is a {type(text).__name__}; expected str or None")

    unavailable: dict[str, str] = {}
    nltk_reason = _nltk_unavailable_reason()
    if nltk_reason is not None:
        unavailable["bleu"] = nltk_reason
    meteor_reason = _meteor_unavailable_reason()
    if meteor_reason is not None:
        unavailable["meteor"] = meteor_reason

    pages = [
        _page_metrics(
            pred or "",
            ref or "",
            cjk_tokenizer,
            with_bleu="bleu" not in unavailable,
            with_meteor="meteor" not in unavailable,
        )
        for pred, ref in zip(preds, refs)
    ]
    result: dict[str, Any] = {}
    for key in _OCR_KEYS:
        if key in unavailable or not pages:
            result[key] = None
        else:
            result[key] = float(np.mean([page[key] for page in pages]))
    result["num_samples"] = len(pages)
    result["unavailable"] = unavailable
    return result


# --------------------------------------------------------------------------------------------------
# Detection (COCO)
# --------------------------------------------------------------------------------------------------


def _load_coco_gt(coco_gt: str | os.PathLike | Mapping[str, Any] | Any) -> Any:
    """A pycocotools `COCO` index of the ground truth, completed (`_complete_ground_truth`) and built
    without printing."""
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        dataset = copy.deepcopy(coco_gt.dataset)
        if not _complete_ground_truth(dataset, "the COCO object's dataset"):
            return coco_gt  # complete already: used as is
    elif isinstance(coco_gt, (str, os.PathLike)):
        with open(coco_gt, encoding="utf-8") as f:
            dataset = json.load(f)
        _complete_ground_truth(dataset, os.fspath(coco_gt))
    elif isinstance(coco_gt, Mapping):
        # COCOeval writes an "ignore" flag into every GT annotation: never touch the caller's dict.
        dataset = copy.deepcopy(dict(coco_gt))
        _complete_ground_truth(dataset, "the ground-truth dict")
    else:
        raise TypeError(
            f"coco_metrics: coco_gt must be a path, a COCO-format dict or a pycocotools COCO, got {type(coco_gt).__name__}"
        )
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _id_key(value: Any) -> Any:
    """An id as pycocotools indexes it (hashable), or `None` when it cannot be one."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return value


def _complete_ground_truth(dataset: Any, source: str) -> bool:
    """Check a COCO ground truth in place and fill the keys hand-built ones often leave out, with COCO's
    standard meanings: `annotations` `[]`, an annotation's `iscrowd` 0 (`"0"` / `"1"` read as numbers),
    its `area` the box's `w * h`, its `id` the next free integer. Anything that cannot be filled raises a
    `ValueError` naming the record and the key (pycocotools would raise a bare `KeyError` or silently
    merge records sharing an id). Returns whether anything was filled."""
    if not isinstance(dataset, dict):
        raise ValueError(f"coco_metrics: {source} must hold a JSON object, got {type(dataset).__name__}")
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(
                f"coco_metrics: {source} has no {key!r} list; expected a COCO-format annotation file"
            )
    changed = "annotations" not in dataset
    dataset.setdefault("annotations", [])
    if not isinstance(dataset["annotations"], list):
        raise ValueError(f"coco_metrics: {source}: 'annotations' must be a list")
    for key in ("images", "categories"):
        seen: set = set()
        for i, record in enumerate(dataset[key]):
            what = f"coco_metrics: {source}: {key}[{i}]"
            if not isinstance(record, dict):
                raise ValueError(f"{what} must be an object, got {type(record).__name__}")
            if "id" not in record:
                raise ValueError(f"{what} has no 'id'")
            ident = _id_key(record["id"])
            if ident is None:
                raise ValueError(f"{what} has id {record['id']!r}; expected an integer or a string")
            if ident in seen:
                raise ValueError(f"{what} repeats id {ident!r}; ids must be unique")
            seen.add(ident)
    annotations = dataset["annotations"]
    next_id = (
        max((a["id"] for a in annotations if isinstance(a, dict) and type(a.get("id")) is int), default=0) + 1
    )
    seen = set()
    for i, ann in enumerate(annotations):
        what = f"coco_metrics: {source}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{what} must be an object, got {type(ann).__name__}")
        for key in ("image_id", "category_id"):
            # An id absent from `images` / `categories` is left to pycocotools, which ignores the annotation.
            if key not in ann:
                raise ValueError(f"{what} has no {key!r}")
        box = _as_box(ann.get("bbox"))
        if box is None:
            raise ValueError(
                f"{what} has bbox {ann.get('bbox')!r}; expected [x, y, width, height] (4 finite numbers)"
            )
        if "id" not in ann:
            ann["id"] = next_id  # COCOeval treats id 0 as "unmatched": fill from max(id) + 1 >= 1
            next_id += 1
            changed = True
        ident = _id_key(ann["id"])
        if ident is None:
            raise ValueError(f"{what} has id {ann['id']!r}; expected an integer or a string")
        if ident in seen:
            raise ValueError(f"{what} repeats id {ident!r}; annotation ids must be unique")
        seen.add(ident)
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            changed = True
        elif ann["iscrowd"] not in (0, 1):  # True/False and 0.0/1.0 compare equal to 0/1 and are kept
            if isinstance(ann["iscrowd"], str) and ann["iscrowd"].strip() in ("0", "1"):
                ann["iscrowd"] = int(
                    ann["iscrowd"]
                )  # pycocotools would read "0" as crowd (a non-empty string)
                changed = True
            else:
                raise ValueError(f"{what} has iscrowd {ann['iscrowd']!r}; expected 0 or 1")
        if "area" not in ann:
            ann["area"] = float(box[2] * box[3])  # the box's area, as pycocotools' loadRes gives results
            changed = True
        elif _as_count(ann["area"]) is None:
            raise ValueError(f"{what} has area {ann['area']!r}; expected a finite number")
    return changed


def _clean_predictions(
    predictions: Iterable[Mapping[str, Any]], image_ids: set, category_ids: set
) -> tuple[list[dict[str, Any]], dict[str, int], int, dict[str, list]]:
    """Keep evaluable predictions (copies, bbox as 4 floats, score defaulting to 1.0) and count the rest."""
    kept: list[dict[str, Any]] = []
    dropped = {"invalid": 0, "unknown_image_id": 0, "unknown_category_id": 0}
    examples: dict[str, list] = {key: [] for key in dropped}
    clamped = 0

    def drop(reason: str, example: Any) -> None:
        dropped[reason] += 1
        if len(examples[reason]) < 3:
            examples[reason].append(example)

    for pred in predictions:
        if not isinstance(pred, Mapping):
            drop("invalid", pred)
            continue
        box = _as_box(pred.get("bbox"))
        score = pred.get("score", 1.0)
        score = 1.0 if score is None else _as_count(score)
        if box is None or score is None:
            drop("invalid", dict(pred))
            continue
        image_id, category_id = pred.get("image_id"), pred.get("category_id")
        try:
            known_image = image_id in image_ids
            known_category = category_id in category_ids
        except TypeError:  # unhashable id
            drop("invalid", dict(pred))
            continue
        if not known_image:
            drop("unknown_image_id", image_id)
            continue
        if not known_category:
            drop("unknown_category_id", category_id)
            continue
        if box[2] < 0 or box[3] < 0:
            # A negative size (e.g. an inverted xyxy box) becomes a zero-area box: an unmatched false positive.
            clamped += 1
            box[2:] = np.clip(box[2:], 0.0, None)
        cleaned = dict(pred)
        cleaned["bbox"] = [float(v) for v in box]
        cleaned["score"] = score
        kept.append(cleaned)
    return kept, dropped, clamped, examples


def _empty_results(coco_gt: Any) -> Any:
    """What `COCO.loadRes` would return for zero detections (it raises IndexError on `[]` instead)."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {
        "info": copy.deepcopy(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    res.createIndex()
    return res


def coco_metrics(
    coco_gt: str | os.PathLike | Mapping[str, Any],
    predictions: Iterable[Mapping[str, Any]],
    *,
    iou_type: Literal["bbox"] = "bbox",
) -> dict[str, Any]:
    r"""COCO detection metrics of `predictions` against `coco_gt`, computed by pycocotools `COCOeval`.

    The twelve values `AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl` are
    `COCOeval(gt, dt, "bbox").stats` after `evaluate(); accumulate(); summarize()`, as Python floats,
    never re-derived (AP averaged over IoU 0.50:0.05:0.95 and 101 recall points; -1 where the ground truth
    has nothing to evaluate, e.g. no small objects). pycocotools' prints are silenced.

    `per_class_AP` maps each category name to its AP read from `COCOeval.eval["precision"]` the standard
    way: the mean over IoU thresholds and recall points at area "all" and maxDets 100, ignoring -1 entries;
    -1.0 for a category without ground truth. Its mean over categories with ground truth equals `AP`.

    Robustness (pycocotools itself would crash or silently ignore these):

    * no predictions (or none left after the checks below): evaluated as an empty result set, which is what
      pycocotools gives for a model that detects nothing — AP/AR 0 where ground truth exists, -1 where it
      does not (`COCO.loadRes([])` would raise IndexError);
    * a prediction whose `image_id` is not in the ground truth (`loadRes` would raise AssertionError) or
      whose `category_id` is not a ground-truth category is dropped, and so is one that is not a dict or
      whose `bbox` is not 4 finite numbers or whose `score` is not finite; one `UserWarning` reports the
      counts;
    * a missing `score` defaults to 1.0 (as PR1's evaluator assigns);
    * a negative width or height (e.g. an inverted xyxy box converted to xywh) is clamped to 0, so the box is
      kept as an unmatched false positive (counted in `num_clamped`).

    Hand-built ground truth may leave out an annotation's `iscrowd` (0), `area` (the box's `w * h`) and `id`
    (numbered after the largest id); other missing or malformed keys (an image or category without `id`, an
    annotation without `image_id`, `category_id` or a 4-number `bbox`, repeated ids) raise a `ValueError`
    naming the record and the key.

    Neither the ground-truth dict (nor a given `COCO` object) nor the prediction dicts are modified.

    Args:
        coco_gt: COCO-format ground truth: a path to an annotation JSON, a loaded dict with `images`,
            `categories` (and `annotations`), or a `pycocotools.coco.COCO` object (used as is).
        predictions: COCO result dicts `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` in the
            ground truth's pixel frame.
        iou_type: only `"bbox"` is supported.

    Returns:
        The 12 stats (see `COCO_STAT_NAMES`), `per_class_AP`, `num_predictions` (evaluated),
        `num_dropped` (`{"invalid", "unknown_image_id", "unknown_category_id"}` counts) and
        `num_clamped`.

    Example:
    ```python
    >>> gt = {
    ...     "images": [{"id": 1, "width": 100, "height": 100}],
    ...     "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    ...     "annotations": [
    ...         {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
    ...         {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0},
    ...     ],
    ... }
    >>> m = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}])
    >>> round(m["AP"], 6), round(m["AP50"], 6), {k: round(v, 6) for k, v in m["per_class_AP"].items()}
    (0.5, 0.5, {'cat': 1.0, 'dog': 0.0})
    >>> coco_metrics(gt, [])["AP"]
    0.0

    ```
    """
    if iou_type != "bbox":
        raise ValueError(f"coco_metrics: only iou_type='bbox' is supported, got {iou_type!r}")
    from pycocotools.cocoeval import COCOeval

    gt = _load_coco_gt(coco_gt)
    results, dropped, clamped, examples = _clean_predictions(
        predictions, set(gt.getImgIds()), set(gt.getCatIds())
    )
    if any(dropped.values()) or clamped:
        parts = [
            f"dropped {count} predictions with {reason.replace('_', ' ')} (e.g. {examples[reason]!r})"
            for reason, count in dropped.items()
            if count
        ]
        if clamped:
            parts.append(f"clamped {clamped} boxes with negative width/height to zero size")
        warnings.warn("coco_metrics: " + "; ".join(parts), UserWarning, stacklevel=2)

    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results) if results else _empty_results(gt)
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    metrics: dict[str, Any] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    metrics["per_class_AP"] = _per_class_ap(gt, evaluator)
    metrics["num_predictions"] = len(results)
    metrics["num_dropped"] = dropped
    metrics["num_clamped"] = clamped
    return metrics


def _per_class_ap(gt: Any, evaluator: Any) -> dict[str, float]:
    params = evaluator.params
    # Shape [T iou thresholds, R recall points, K classes, A area ranges, M maxDets].
    precision = evaluator.eval["precision"]
    area = params.areaRngLbl.index("all")
    max_det = params.maxDets.index(100) if 100 in params.maxDets else len(params.maxDets) - 1
    per_class: dict[str, float] = {}
    for k, category_id in enumerate(params.catIds):
        category = gt.cats.get(category_id, {})
        name = str(category.get("name", category_id))
        if name in per_class:
            name = f"{name} (id {category_id})"
        values = precision[:, :, k, area, max_det]
        values = values[values > -1]
        per_class[name] = float(np.mean(values)) if values.size else -1.0
    return per_class


def objects_to_coco_results(
    image_id: int,
    objects: Iterable[Any],
    label_to_category_id: Mapping[str, int],
    score: float = 1.0,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    r"""Convert parsed objects (xyxy boxes + labels in original pixels) into COCO result dicts.

    Each object is a `trl_perception.formats.DetectedObject` (`bbox`, `label`) or a dict in the
    row-contract style (`{"bbox_2d": [x1, y1, x2, y2], "label": name}`; `"bbox"` is read when
    `"bbox_2d"` is absent). Its box becomes `[x1, y1, x2 - x1, y2 - y1]` (xywh) with category
    `label_to_category_id[label.strip()]` (exact, case-sensitive names, as PR1) and the given `score`
    (PR1 gives every box 1.0). The caller maps boxes to original pixels first.

    Objects that cannot be evaluated are dropped and counted: `unknown_label` (label missing or not in the
    mapping), `no_box` (e.g. a point-only object) and `invalid_box` (not 4 finite numbers). An inverted
    box (x2 < x1 or y2 < y1) is kept with its negative size clamped to 0 — a zero-area false positive — and
    counted under `inverted_box`.

    Args:
        image_id: the COCO image id of these objects.
        objects: parsed objects of one image.
        label_to_category_id: category name -> COCO category id.
        score: detection score given to every box.

    Returns:
        `(results, counts)`: the result dicts, and `{"unknown_label", "no_box", "invalid_box",
        "inverted_box"}` counts.

    Example:
    ```python
    >>> objs = [{"bbox_2d": [10, 20, 50, 80], "label": "cat"}, {"bbox_2d": [0, 0, 5, 5], "label": "unicorn"}]
    >>> results, counts = objects_to_coco_results(7, objs, {"cat": 17})
    >>> results
    [{'image_id': 7, 'category_id': 17, 'bbox': [10.0, 20.0, 40.0, 60.0], 'score': 1.0}]
    >>> counts
    {'unknown_label': 1, 'no_box': 0, 'invalid_box': 0, 'inverted_box': 0}

    ```
    """
    counts = {"unknown_label": 0, "no_box": 0, "invalid_box": 0, "inverted_box": 0}
    results: list[dict[str, Any]] = []
    for obj in objects:
        if isinstance(obj, Mapping):
            raw_box = obj.get("bbox_2d", obj.get("bbox"))
            label = obj.get("label")
        else:
            raw_box = getattr(obj, "bbox", None)
            label = getattr(obj, "label", None)
        if raw_box is None:
            counts["no_box"] += 1
            continue
        box = _as_box(raw_box)
        if box is None:
            counts["invalid_box"] += 1
            continue
        category_id = label_to_category_id.get(label.strip()) if isinstance(label, str) else None
        if category_id is None:
            counts["unknown_label"] += 1
            continue
        width, height = box[2] - box[0], box[3] - box[1]
        if width < 0 or height < 0:
            counts["inverted_box"] += 1
        results.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [float(box[0]), float(box[1]), float(max(width, 0.0)), float(max(height, 0.0))],
                "score": float(score),
            }
        )
    return results, counts


# ======================================================================================================
# Open-vocabulary detection: COCO metrics over phrase categories, plus hallucination rates.


def _phrase(label: Any) -> str | None:
    """A phrase compared the way the OD rewards compare labels: trimmed, inner whitespace collapsed,
    lower-cased."""
    if not isinstance(label, str):
        return None
    return " ".join(label.split()).lower() or None


def ovd_metrics(
    predictions: Sequence[Iterable[Any]],
    solutions: Sequence[Iterable[Mapping[str, Any]] | None],
    image_sizes: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    r"""Open-vocabulary detection metrics of a whole set: COCO AP / AR over the phrase categories, computed
    by pycocotools (`coco_metrics`), and how often the model boxes a phrase that is not in the image.

    Row `i` has the predicted objects `predictions[i]` (`{"bbox_2d": [x1, y1, x2, y2], "label"}` dicts or
    `DetectedObject`s in original pixels) and the ground truth `solutions[i]` (the boxes of the phrases asked
    that are present; `None` / `[]` when none is). Phrases are compared trimmed, whitespace-collapsed and
    lower-cased. The categories are the phrases with ground truth somewhere in the set; every image is
    evaluated, negative ones included, so a box for an absent phrase is a false positive of that phrase.
    All boxes score 1.0 (COCOeval then ranks an image's boxes in the order written).

    Hallucination:

    * `hallucination_rate`: the share of predicted boxes whose phrase is absent from their image (asked and
      absent, or never asked); 0.0 without predictions;
    * `negative_image_fp_rate`: the share of images with no phrase present (the answer should be `None`) whose
      answer boxes something; `None` without such images.

    Returns:
        the `coco_metrics` result (`AP`, `AP50`, `AP75`, ..., `AR100`, `per_class_AP`, ...) plus
        `hallucination_rate`, `hallucinated_boxes`, `predicted_boxes`, `negative_images`,
        `negative_image_fp_rate`, `num_samples` and `objects_dropped` (unknown phrase, no box, invalid box,
        inverted box).

    Example:
    ```python
    >>> preds = [[{"bbox_2d": [0, 0, 10, 10], "label": "Cat"}, {"bbox_2d": [20, 20, 30, 30], "label": "dog"}], []]
    >>> gts = [[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}], None]
    >>> out = ovd_metrics(preds, gts)
    >>> round(out["AP"], 3), out["hallucination_rate"], out["negative_image_fp_rate"]
    (1.0, 0.5, 0.0)

    ```
    """
    if len(predictions) != len(solutions):
        raise ValueError(f"ovd_metrics: {len(predictions)} predictions for {len(solutions)} solutions")
    names: dict[str, int] = {}
    images, annotations = [], []
    present_per_image: list[set[str]] = []
    for i, solution in enumerate(solutions):
        if image_sizes is not None:
            width, height = (int(v) for v in image_sizes[i])
        else:
            width, height = 1, 1
        images.append({"id": i + 1, "width": width, "height": height, "file_name": str(i)})
        present: set[str] = set()
        for obj in solution or []:
            label = _phrase(obj.get("label")) if isinstance(obj, Mapping) else None
            box = _as_box(obj.get("bbox_2d", obj.get("bbox"))) if isinstance(obj, Mapping) else None
            if label is None or box is None:
                continue
            present.add(label)
            category = names.setdefault(label, len(names) + 1)
            w, h = max(float(box[2] - box[0]), 0.0), max(float(box[3] - box[1]), 0.0)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": category,
                 "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        present_per_image.append(present)
    results: list[dict[str, Any]] = []
    dropped = {"unknown_label": 0, "no_box": 0, "invalid_box": 0, "inverted_box": 0}
    predicted = hallucinated = negative = negative_fp = 0
    for i, objects in enumerate(predictions):
        normalized = []
        for obj in objects or []:
            if isinstance(obj, Mapping):
                label, box = obj.get("label"), obj.get("bbox_2d", obj.get("bbox"))
            else:
                label, box = getattr(obj, "label", None), getattr(obj, "bbox", None)
            if box is None:
                dropped["no_box"] += 1
                continue
            phrase = _phrase(label)
            predicted += 1
            hallucinated += phrase not in present_per_image[i]
            normalized.append({"bbox_2d": box, "label": phrase or ""})
        if not present_per_image[i]:
            negative += 1
            negative_fp += bool(normalized)
        image_results, counts = objects_to_coco_results(i + 1, normalized, names)
        results.extend(image_results)
        for key, value in counts.items():
            dropped[key] += value
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": name, "supercategory": ""} for name, k in names.items()],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = dict(coco_metrics(gt, results))
    result.update(
        hallucination_rate=hallucinated / predicted if predicted else 0.0,
        hallucinated_boxes=hallucinated,
        predicted_boxes=predicted,
        negative_images=negative,
        negative_image_fp_rate=negative_fp / negative if negative else None,
        num_samples=len(solutions),
        objects_dropped=dropped,
    )
    return result


# --------------------------------------------------------------------------------------------------
# VQA and crop turns
# --------------------------------------------------------------------------------------------------


def vqa_metrics(correct: Sequence[bool | float | None]) -> dict[str, float | int | None]:
    """Accuracy of VQA answers: `correct[i]` is whether row `i` was answered right (`None` or anything
    false-like counts as wrong).

    Example:
    ```python
    >>> vqa_metrics([True, False, None, 1.0])
    {'accuracy': 0.5, 'num_samples': 4}
    >>> vqa_metrics([])
    {'accuracy': None, 'num_samples': 0}

    ```
    """
    n = len(correct)
    if n == 0:
        return {"accuracy": None, "num_samples": 0}
    return {"accuracy": float(sum(1.0 for c in correct if c) / n), "num_samples": n}


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


CROP_COUNTS: tuple[str, ...] = (
    "rows", "called", "calls", "invalid_calls", "forced", "crops", "area_sum", "iou_n", "iou_sum", "inside_n",
    "inside_sum",
)  # fmt: skip
"""The sums behind `crop_metrics`, in the order of `crop_counts`' vector (sums add up over processes)."""


def crop_counts(
    records: Sequence[Sequence[Any]], target_boxes: Sequence[Sequence[float] | None] | None = None
) -> np.ndarray:
    """The sums of `CROP_COUNTS` over rows (or rollouts): `records[i]` holds row `i`'s crop calls
    (`crop.CropRecord`s or dicts with `valid`, `box`, `area_fraction`, `iou`, `forced`; empty when none was
    made), `target_boxes[i]` its target region in original pixels (`None`/`[]`: unknown). A float64 vector, so
    that processes can add theirs before `crop_rates` divides.

    Example:
    ```python
    >>> dict(zip(CROP_COUNTS, crop_counts([[{"valid": True, "box": [0, 0, 9, 9], "area_fraction": 0.5, "iou": 0.2}], []]).tolist()))
    {'rows': 2.0, 'called': 1.0, 'calls': 1.0, 'invalid_calls': 0.0, 'forced': 0.0, 'crops': 1.0, 'area_sum': 0.5, 'iou_n': 1.0, 'iou_sum': 0.2, 'inside_n': 0.0, 'inside_sum': 0.0}

    ```
    """
    n = len(records)
    if target_boxes is not None and len(target_boxes) != n:
        raise ValueError(f"crop_counts: {len(target_boxes)} target boxes for {n} rows")
    sums = dict.fromkeys(CROP_COUNTS, 0.0)
    for i, calls in enumerate(records):
        calls = list(calls or [])
        own = [r for r in calls if not _field(r, "forced")]
        sums["rows"] += 1
        sums["called"] += bool(own)
        sums["calls"] += len(own)
        sums["invalid_calls"] += sum(not _field(r, "valid") for r in own)
        sums["forced"] += any(_field(r, "forced") for r in calls)
        target = None if target_boxes is None else target_boxes[i]
        for r in calls:
            if not _field(r, "valid"):
                continue
            sums["crops"] += 1
            area, iou, box = _field(r, "area_fraction"), _field(r, "iou"), _field(r, "box")
            sums["area_sum"] += float(area or 0.0)
            if iou is not None:
                sums["iou_n"] += 1
                sums["iou_sum"] += float(iou)
            if box is not None and target is not None and len(target) == 4:
                x1, y1, x2, y2 = (float(v) for v in box)
                t1, u1, t2, u2 = (float(v) for v in target)
                sums["inside_n"] += 1
                sums["inside_sum"] += float(x1 <= t1 and y1 <= u1 and t2 <= x2 and u2 <= y2)
    return np.array([sums[k] for k in CROP_COUNTS], dtype=np.float64)


def crop_rates(counts: Sequence[float]) -> dict[str, float | None]:
    """`crop_metrics` from summed `crop_counts`: the one definition used by evaluation and by the trainer's
    per-step `crop/*` logs. `None` where the denominator is 0.

    Example:
    ```python
    >>> crop_rates([4, 2, 2, 1, 1, 1, 0.25, 1, 0.5, 0, 0])["invalid_rate"]
    0.5

    ```
    """
    c = dict(zip(CROP_COUNTS, (float(v) for v in counts), strict=True))

    def ratio(num: str, den: str) -> float | None:
        return c[num] / c[den] if c[den] else None

    return {
        "call_rate": ratio("called", "rows"),
        "forced_rate": ratio("forced", "rows"),
        "invalid_rate": ratio("invalid_calls", "calls"),
        "crop_rate": ratio("crops", "rows"),
        "mean_crop_area": ratio("area_sum", "crops"),
        "mean_iou": ratio("iou_sum", "iou_n"),
        "target_inside": ratio("inside_sum", "inside_n"),
    }


def crop_metrics(
    records: Sequence[Sequence[Any]], target_boxes: Sequence[Sequence[float] | None] | None = None
) -> dict[str, float | int | None]:
    """Statistics of crop turns ("look again") over rows (or rollouts); see `crop_counts` for `records` and
    `target_boxes`:
    - `call_rate`: rows where the model called the crop tool itself;
    - `forced_rate`: rows given MGPO's forced second turn (the model answered without calling the tool);
    - `invalid_rate`: the model's calls whose box MGPO's rules refused (of its calls);
    - `crop_rate`: rows that got a crop;
    - `mean_crop_area`: crop area / image area, over crops;
    - `mean_iou`: IoU of the crop with the row's `target_box`, over crops of rows that know it;
    - `target_inside`: the share of those crops holding the whole target (needs `target_boxes`), the grounding
      signal that matters for a small target (its IoU with any readable crop stays small).

    The trainer logs the same numbers per step as `crop/<name>`.

    Example:
    ```python
    >>> records = [[{"valid": True, "box": [0, 0, 100, 100], "area_fraction": 0.25, "iou": 0.04}],
    ...            [{"valid": False, "box": None, "area_fraction": None, "iou": None}], []]
    >>> crop_metrics(records, [[10, 10, 30, 30], [0, 0, 5, 5], None])
    {'call_rate': 0.6666666666666666, 'forced_rate': 0.0, 'invalid_rate': 0.5, 'crop_rate': 0.3333333333333333, 'mean_crop_area': 0.25, 'mean_iou': 0.04, 'target_inside': 1.0, 'num_samples': 3}

    ```
    """
    result: dict[str, float | int | None] = dict(crop_rates(crop_counts(records, target_boxes)))
    result["num_samples"] = len(records)
    return result
