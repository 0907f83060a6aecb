"""Open-vocabulary detection (OVD) rows after VLM-R1: per image, a shuffled list of target phrases (the
categories present plus absent ones), from COCO-style annotations (COCO, LVIS, Objects365, OVDEval) or from
VLM-R1's own jsonl files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from ..formats import strip_wrappers
from .coco import _categories, load_coco
from .errors import ErrorPolicy, RecordError
from .images import ImageFolder, image_struct, read_image_size
from .io import load_json_records, loads_text
from .registry import register_builder
from .resize import check_box_format_options, check_image_size
from .rows import PromptCache, contract_dataset, select_rows
from .validators import check_xyxy, finite_numbers, positive_size, round_box

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["NEGATIVE_SAMPLING", "build_ovd"]

logger = logging.getLogger("trl_perception.data")

NEGATIVE_SAMPLING: tuple[str, ...] = ("random", "similar")
"""How absent phrases are drawn: uniformly, or first from the supercategories of the present ones."""


@register_builder("ovd")
def build_ovd(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    image_dir: str | os.PathLike | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    on_error: str = "raise",
    box_format: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    num_negatives: int | None = 3,
    negatives: str = "random",
    negative_only_rate: float = 0.0,
    max_positives: int | None = None,
    include_crowd: bool = False,
    keep_empty: bool = True,
    check_images: bool = True,
    template: str | None = None,
    system_prompt: str | None = None,
    think: bool = False,
    allow_outside_image_dir: bool = False,
) -> datasets.Dataset:
    """Open-vocabulary detection rows (`task == "ovd"`), one per image.

    **COCO-style annotations** (`instances_*.json` of COCO, LVIS, Objects365, OVDEval: `images`,
    `annotations` with `[x, y, w, h]` boxes, `categories`). Each row asks for a shuffled list of phrases: the
    category names present in the image plus `num_negatives` absent ones; `solution` holds the boxes (xyxy
    pixels, clipped, annotation order) of the phrases asked, `[]` when only absent phrases are asked. The
    draw is deterministic per `(seed, image)`. Absent phrases come from, in order of preference:

    - the image's own verified negatives when the file has them: LVIS's `neg_category_ids`, OVDEval's
      `neg_text` (its positives are `text`). Such federated files do not say that other categories are
      absent, so nothing else is drawn for them;
    - with `negatives="similar"`, categories sharing a supercategory with a present one (visually close
      hard negatives), then any other;
    - otherwise any category with no annotation in the image.

    Categories LVIS lists in `not_exhaustive_category_ids` are never asked (their boxes are incomplete), nor
    are categories whose only annotations are crowd regions (unless `include_crowd=True`). Images without
    annotations ask only absent phrases (`keep_empty=False` drops them); `negative_only_rate` turns that
    share of the other images into negative-only rows too, so that the model learns to answer `None`.
    Images on LVIS's COCO URLs without a `file_name` are looked up as `<split folder>/<file>` under
    `image_dir`.

    **VLM-R1 jsonl** (`{"id", "image", "conversations": [{"from": "human", "value": "<image>..."},
    {"from": "gpt", "value": answer}]}`, one per line or a JSON list): the human turn (without `<image>`) is
    the prompt, followed by `box_format`'s format instruction when one is given; the answer (`<answer>` tags
    and a ```` ```json ```` fence allowed) is a JSON list of `{"bbox_2d": [x1, y1, x2, y2], "label"}` in
    pixels of the image, or `None`. Image sizes are read from the image files.

    The prompt is VLM-R1's OVD wording, `TASK_TEMPLATES["ovd"]` ("Please carefully check the image and
    detect the following objects: {phrases}. If none of them is in the image, answer None."), plus the output
    format instruction of `box_format`.

    Args:
        source: a COCO-style annotation JSON, or a VLM-R1 `.jsonl` / JSON list.
        image_dir: the image folder (default: the source's folder).
        split: not used (one file per split); must be `None`.
        num_samples, seed, on_error, box_format, min_pixels, max_pixels, template, system_prompt: as in every
            builder (`{phrases}` is the template field).
        think (`bool`): ask for R1-style `<think>…</think><answer>…</answer>` (`data.prompts.THINK_INSTRUCTION`
            appended to the user text, also to a VLM-R1 jsonl `question`, after the template and the box format's instruction).
        num_negatives (`int | None`): absent phrases per image (`None`: every candidate, e.g. all of an
            OVDEval image's `neg_text`).
        negatives (`str`): `"random"` or `"similar"` (see above).
        negative_only_rate (`float`): share of images with objects asked only for absent phrases.
        max_positives (`int | None`): at most this many present phrases per image (drawn at random).
        include_crowd (`bool`): keep crowd regions as targets.
        keep_empty (`bool`): keep images without any annotation (negative-only rows).
        check_images (`bool`): check that each selected image file exists.
        allow_outside_image_dir (`bool`): accept image paths that leave `image_dir` (`../x.jpg`, absolute
            paths); by default such a record is a `DataError`.

    Bad input (an unknown image or category id, a bad box, a malformed record, a missing image) raises
    `DataError` naming the file and the record; `on_error="skip"` skips the record and counts it.

    Returns:
        `datasets.Dataset` in the row contract, `task == "ovd"`.

    Example:
    ```python
    >>> import json, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); _ = (root / "1.jpg").write_bytes(b"")
    >>> _ = (root / "instances.json").write_text(json.dumps({
    ...     "images": [{"id": 1, "file_name": "1.jpg", "width": 640, "height": 480}],
    ...     "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "dog"}],
    ...     "annotations": [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40]}]}))
    >>> ds = build_ovd(root / "instances.json", image_dir=root, num_negatives=1, seed=0)
    >>> row = ds.select_columns(["prompt", "task", "solution"])[0]  # without decoding the (empty) image
    >>> row["task"], row["solution"]
    ('ovd', [{'bbox_2d': [10.0, 20.0, 40.0, 60.0], 'label': 'dog'}])
    >>> row["prompt"][0]["content"][1]["text"]
    'Please carefully check the image and detect the following objects: dog, person. If none of them is in the image, answer None.'

    ```
    """
    check_box_format_options(box_format, min_pixels, max_pixels)
    if split is not None:
        raise ValueError(f"the ovd source is one file per split; it takes no split (got {split!r})")
    if num_negatives is not None and int(num_negatives) < 0:
        raise ValueError(f"num_negatives must be >= 0 or None, got {num_negatives}")
    if negatives not in NEGATIVE_SAMPLING:
        raise ValueError(f"negatives must be one of {NEGATIVE_SAMPLING}, got {negatives!r}")
    if not 0.0 <= float(negative_only_rate) <= 1.0:
        raise ValueError(f"negative_only_rate must be in [0, 1], got {negative_only_rate}")
    if max_positives is not None and int(max_positives) < 1:
        raise ValueError(f"max_positives must be >= 1 or None, got {max_positives}")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    folder = ImageFolder(image_dir if image_dir is not None else path.parent, allow_outside=allow_outside_image_dir)
    policy = ErrorPolicy(path, on_error)
    prompts = PromptCache("ovd", box_format, template, system_prompt, think=think)
    questions = PromptCache("ovd", box_format, "{question}", system_prompt, think=think)  # VLM-R1 jsonl
    if _is_coco(path):
        rows, total = _coco_rows(
            path, folder, policy, seed, num_negatives, negatives, float(negative_only_rate), max_positives,
            include_crowd, keep_empty,
        )  # fmt: skip
    else:
        rows, total = _jsonl_rows(path, folder, policy)

    def accept(i: int) -> bool:
        row = rows[i]
        try:
            if row.get("error") is False:
                return False
            if row.get("error") is not None:
                raise row["error"]
            if "lazy" in row:
                drawn = _coco_phrases(row)
                if drawn is None:
                    row["error"] = False  # nothing to ask of this image: not a bad record, not a row
                    return False
                row.update(drawn)
            if row["path"] is None:
                found = folder.find(*row["candidates"]) if check_images else None
                if check_images and found is None:
                    raise RecordError("missing image", f"{row['candidates'][0]} not found under {folder.root}")
                row["path"] = found or str(folder.root / row["candidates"][0])
            if row["size"] is None:
                row["size"] = list(read_image_size(row["path"]))
                row["solution"] = _clip_objects(row["solution"], row["size"])
            check_image_size(row["size"], box_format, min_pixels, max_pixels)
            return True
        except RecordError as err:
            policy.failed(row["where"], err, key=("record", i))
            return False

    chosen = select_rows(len(rows), accept, num_samples, seed)
    policy.finish(total)
    picked = [rows[i] for i in chosen]
    prompt_list = [
        prompts(phrases=", ".join(r["phrases"])) if r.get("question") is None else
        questions(question=r["question"])
        for r in picked
    ]  # fmt: skip
    dataset = contract_dataset(
        "ovd",
        prompt_list,
        image_struct([r["path"] for r in picked]),
        [r["solution"] for r in picked],
        [list(r["size"]) for r in picked],
        box_format,
        min_pixels,
        max_pixels,
    )
    return dataset


def _is_coco(path: Path) -> bool:
    """A COCO-style file is one JSON object; VLM-R1's files are JSON lines or a JSON list."""
    if path.suffix.lower() == ".jsonl":
        return False
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if not head.startswith(b"{"):
        return False
    # One record per line also starts with "{": a COCO file has "images" near the top or spans one object.
    first_line = head.split(b"\n", 1)[0]
    return b'"conversations"' not in first_line


# ----------------------------------------------------------------------------------- COCO-style


def _file_candidates(image: dict[str, Any]) -> list[str]:
    """Where an image may be under `image_dir`: its `file_name`, else (LVIS) the tail of its COCO URL."""
    name = image.get("file_name")
    if isinstance(name, str) and name:
        return [name, os.path.basename(name)]
    url = image.get("coco_url") or image.get("flickr_url")
    if isinstance(url, str) and url:
        parts = [p for p in urlparse(url).path.split("/") if p]
        if parts:
            return ["/".join(parts[-2:]), parts[-1]]
    raise RecordError("bad record", f"an image needs a file_name (or a coco_url), got {image!r:.120}")


def _id_list(image: dict[str, Any], key: str, cat_index: dict[Any, int]) -> list[int] | None:
    value = image.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RecordError("bad record", f"{key} must be a list of category ids, got {value!r:.80}")
    unknown = [v for v in value if v not in cat_index]
    if unknown:
        raise RecordError("unknown category", f"{key} names unknown category id(s) {unknown[:5]}")
    return [cat_index[v] for v in value]


def _text_list(image: dict[str, Any], key: str) -> list[str] | None:
    value = image.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RecordError("bad record", f"{key} must be a list of phrases, got {value!r:.80}")
    return [v.strip() for v in value]


def _coco_rows(
    path: Path,
    folder: ImageFolder,
    policy: ErrorPolicy,
    seed: int,
    num_negatives: int | None,
    negatives: str,
    negative_only_rate: float,
    max_positives: int | None,
    include_crowd: bool,
    keep_empty: bool,
) -> tuple[list[dict[str, Any]], int]:
    data = load_coco(path)
    cat_index, names = _categories(data, path)
    supercategory = [""] * len(names)
    for cat in data["categories"]:
        supercategory[cat_index[cat["id"]]] = str(cat.get("supercategory") or "")
    images = data["images"]
    n_images = len(images)
    id_to_row: dict[Any, int] = {}
    for i, im in enumerate(images):
        try:
            if isinstance(im, dict) and "id" in im and im["id"] not in id_to_row:
                id_to_row[im["id"]] = i
        except TypeError:  # an unhashable id: reported with the image below
            pass
    sizes = np.zeros((n_images, 2), dtype=np.float64)
    image_error: dict[int, RecordError] = {}
    for i, im in enumerate(images):
        try:
            if not isinstance(im, dict) or id_to_row.get(im.get("id")) != i:
                raise RecordError("bad record", f"an image needs a unique id, got {im!r:.120}")
            sizes[i] = positive_size(im.get("width"), im.get("height"))
        except (RecordError, TypeError) as err:
            image_error[i] = err if isinstance(err, RecordError) else RecordError("bad record", f"unusable image {im!r:.80}")

    # Annotations: one light pass to gather the fields, then the boxes are checked column-wise.
    anns = data["annotations"]
    n = len(anns)
    ann_row = np.full(n, -1, dtype=np.int64)
    ann_cat = np.full(n, -1, dtype=np.int64)
    crowd = np.zeros(n, dtype=bool)
    raw: list[Any] = [None] * n
    orphans = 0
    for k, ann in enumerate(anns):
        try:
            row = id_to_row.get(ann["image_id"], -1)
        except (TypeError, KeyError):
            row = -1
        if row < 0:
            orphans += 1
            detail = (
                f"image_id {ann.get('image_id')!r:.80} is not among the images"
                if isinstance(ann, dict) else f"not an annotation object: {ann!r:.80}"
            )  # fmt: skip
            policy.failed(
                f"annotation {k} (id {ann.get('id') if isinstance(ann, dict) else None})",
                RecordError("unknown image", detail),
                key=("ann", k),
            )
            continue
        ann_row[k] = row
        try:
            ann_cat[k] = cat_index.get(ann.get("category_id"), -1)
        except TypeError:
            ann_cat[k] = -1
        crowd[k] = bool(ann.get("iscrowd", 0))
        raw[k] = ann.get("bbox")
    xywh, well_formed = _box_columns(raw, ann_row >= 0)
    placed = ann_row >= 0
    known = placed & (ann_cat >= 0)
    bad_box = known & (~well_formed | (xywh[:, 2] < 0) | (xywh[:, 3] < 0))
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    bounds = np.tile(np.where(placed[:, None], sizes[np.maximum(ann_row, 0)], 0.0), 2)
    clipped = np.round(np.clip(xyxy, 0.0, bounds), 3) + 0.0
    zero = known & ~bad_box & ((xywh[:, 2] == 0) | (xywh[:, 3] == 0))
    outside = known & ~bad_box & ~zero & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    ok = known & ~bad_box & ~zero & ~outside
    # The first bad annotation of an image fails the image, naming the annotation.
    for k in np.flatnonzero(placed & (~known | bad_box | outside)).tolist():
        row = int(ann_row[k])
        if row in image_error:
            continue
        what = f"annotation {k} (id {anns[k].get('id')})"
        if ann_cat[k] < 0:
            err = RecordError("unknown category", f"{what}: category_id {anns[k].get('category_id')!r:.40} is not among the categories")
        elif bad_box[k]:
            err = RecordError("bad bbox", f"{what}: bbox [x, y, w, h] = {raw[k]!r:.80} is not 4 finite numbers with w, h >= 0")
        else:
            w, h = sizes[row]
            err = RecordError("bad bbox", f"{what}: bbox [x, y, w, h] = {raw[k]!r:.80} lies outside the {w:g}x{h:g} image")
        image_error[row] = err
    order = np.argsort(ann_row, kind="stable")
    starts = np.searchsorted(ann_row[order], np.arange(n_images + 1))
    context = (names, supercategory, cat_index, seed, num_negatives, negatives, negative_only_rate, max_positives)

    rows: list[dict[str, Any]] = []
    for i, im in enumerate(images):
        where = f"image {i} (id {im.get('id') if isinstance(im, dict) else None})"
        try:
            if i in image_error:
                raise image_error[i]
            candidates = _file_candidates(im)
        except RecordError as err:
            rows.append({"where": where, "error": err})
            continue
        members = order[starts[i] : starts[i + 1]]
        members = members[known[members]]
        if not keep_empty and len(members) == 0:
            continue
        targets = members[ok[members] & (include_crowd | ~crowd[members])]
        rows.append({
            "where": f"{where}, {candidates[0]}", "candidates": candidates, "path": None,
            "size": [int(sizes[i][0]), int(sizes[i][1])],
            # phrases and solution are drawn when the row is picked (`_coco_phrases`)
            "lazy": (i, im, set(ann_cat[members].tolist()), ann_cat[targets].tolist(), clipped[targets].tolist(), context),
        })  # fmt: skip
    return rows, n_images + orphans


def _box_columns(raw: list[Any], placed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[N, 4]` float64 boxes and whether each is 4 finite numbers; one numpy conversion for the usual file,
    item by item when some box is malformed."""
    blank = (0.0, 0.0, 0.0, 0.0)
    try:
        arr = np.array([b if p else blank for b, p in zip(raw, placed)], dtype=np.float64).reshape(len(raw), 4)
        plain = all(type(v) is not bool for b, p in zip(raw, placed) if p for v in b)
        if plain:
            return np.where(np.isfinite(arr), arr, 0.0), np.isfinite(arr).all(axis=1)
    except (ValueError, TypeError):
        pass
    arr = np.zeros((len(raw), 4), dtype=np.float64)
    good = np.zeros(len(raw), dtype=bool)
    for k in np.flatnonzero(placed).tolist():
        try:
            arr[k] = finite_numbers(raw[k], 4, "bbox")
            good[k] = True
        except RecordError:
            pass
    return arr, good


def _coco_phrases(row: dict[str, Any]) -> dict[str, Any] | None:
    """Draw the phrases and the solution of a picked COCO-style row (`None`: nothing to ask)."""
    i, im, present, target_cats, target_boxes, context = row.pop("lazy")
    names, supercategory, cat_index, seed, num_negatives, negatives, negative_only_rate, max_positives = context
    boxes = list(zip(target_cats, target_boxes))
    return _phrase_row(
        i, im, boxes, present, names, supercategory, cat_index, seed, num_negatives, negatives,
        negative_only_rate, max_positives,
    )  # fmt: skip


def _phrase_row(
    index: int,
    image: dict[str, Any],
    boxes: list[tuple[int, list[float]]],
    present: set[int],
    names: list[str],
    supercategory: list[str],
    cat_index: dict[Any, int],
    seed: int,
    num_negatives: int | None,
    negatives: str,
    negative_only_rate: float,
    max_positives: int | None,
) -> dict[str, Any] | None:
    """The phrases asked and the solution of one image; `None` when there is nothing to ask."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 15, index])
    not_exhaustive = set(_id_list(image, "not_exhaustive_category_ids", cat_index) or [])
    verified = _id_list(image, "neg_category_ids", cat_index)
    neg_text = _text_list(image, "neg_text")
    pos_text = _text_list(image, "text")
    targets = [(c, b) for c, b in boxes if c not in not_exhaustive]
    positives = list(dict.fromkeys(c for c, _ in targets))  # first-annotation order
    if max_positives is not None and len(positives) > max_positives:
        positives = [positives[int(k)] for k in np.sort(rng.permutation(len(positives))[: int(max_positives)])]
    negative_only = bool(positives) and negative_only_rate > 0 and rng.random() < negative_only_rate
    if negative_only:
        positives = []
    # Absent phrases: verified negatives when the file has them, else categories with no annotation.
    if verified is not None or neg_text is not None:
        pool = [names[c] for c in verified or [] if c not in present]
        pool += [t for t in neg_text or [] if t not in pool]
        pool = [t for t in pool if t not in {names[c] for c in present}]
        ordered = [pool[int(k)] for k in rng.permutation(len(pool))]
    else:
        absent = [c for c in range(len(names)) if c not in present and c not in not_exhaustive]
        shuffled = [absent[int(k)] for k in rng.permutation(len(absent))]
        if negatives == "similar":
            close = {supercategory[c] for c in present if supercategory[c]}
            shuffled = [c for c in shuffled if supercategory[c] in close] + [
                c for c in shuffled if supercategory[c] not in close
            ]
        ordered = [names[c] for c in shuffled]
    chosen_negatives = ordered if num_negatives is None else ordered[: int(num_negatives)]
    positive_names = [names[c] for c in positives]
    if pos_text is not None and not negative_only:  # OVDEval: phrases annotated positive for the image
        positive_names += [t for t in pos_text if t not in positive_names and t in {names[c] for c, _ in targets}]
    phrases = list(dict.fromkeys(positive_names + chosen_negatives))
    if not phrases:
        return None
    phrases = [phrases[int(k)] for k in rng.permutation(len(phrases))]
    asked = set(positive_names)
    solution = [{"bbox_2d": b, "label": names[c]} for c, b in targets if names[c] in asked]
    return {"phrases": phrases, "solution": solution}


def _clip_objects(objects: list[dict[str, Any]], size: list[int]) -> list[dict[str, Any]]:
    """Boxes clipped to the image; a box that lies outside it is a bad record."""
    out = []
    for obj in objects:
        x1, y1, x2, y2 = obj["bbox_2d"]
        box = round_box([min(max(x1, 0), size[0]), min(max(y1, 0), size[1]), min(max(x2, 0), size[0]), min(max(y2, 0), size[1])])
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RecordError("bad bbox", f"box {obj['bbox_2d']} of {obj['label']!r} lies outside the {size[0]}x{size[1]} image")
        out.append({"bbox_2d": box, "label": obj["label"]})
    return out


# ---------------------------------------------------------------------------------------- VLM-R1 jsonl


def _turn(conversations: Any, speaker: str) -> str:
    if not isinstance(conversations, list):
        raise RecordError("bad record", f"conversations must be a list of turns, got {conversations!r:.80}")
    for turn in conversations:
        if isinstance(turn, dict) and turn.get("from") == speaker and isinstance(turn.get("value"), str):
            return turn["value"]
    raise RecordError("bad record", f"conversations has no {speaker!r} turn with a text value")


def _answer_objects(text: str) -> list[dict[str, Any]]:
    body = strip_wrappers(text)
    if body.strip().rstrip(".").lower() in ("", "none", "null", "[]"):
        return []
    try:
        items = loads_text(body)
    except (ValueError, RecursionError) as err:
        raise RecordError("bad record", f"the gpt answer is neither None nor a JSON list of boxes ({err})") from None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise RecordError("bad record", f"the gpt answer must be a JSON list of boxes, got {type(items).__name__}")
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str) or not item["label"].strip():
            raise RecordError("bad record", f"answer object {k} needs bbox_2d and a label, got {item!r:.80}")
        out.append({"bbox_2d": check_xyxy(item.get("bbox_2d"), f"answer object {k} bbox_2d"), "label": item["label"].strip()})
    return out


def _jsonl_rows(path: Path, folder: ImageFolder, policy: ErrorPolicy) -> tuple[list[dict[str, Any]], int]:
    records = load_json_records(path)
    rows: list[dict[str, Any]] = []
    for where, record in records:
        try:
            if isinstance(record, RecordError):
                raise record
            if not isinstance(record, dict) or "image" not in record or "conversations" not in record:
                raise RecordError("bad record", f"expected {{'image', 'conversations'}}, got {record!r:.120}")
            image = record["image"]
            if isinstance(image, list):
                if len(image) != 1:
                    raise RecordError("bad record", f"OVD rows have one image, got {len(image)}")
                image = image[0]
            if not isinstance(image, str) or not image:
                raise RecordError("bad record", f"image must be a path, got {image!r:.80}")
            question = " ".join(_turn(record["conversations"], "human").replace("<image>", " ").split())
            if not question:
                raise RecordError("bad record", "the human turn has no text besides <image>")
            solution = _answer_objects(_turn(record["conversations"], "gpt"))
        except RecordError as err:
            rows.append({"where": where, "error": err})
            continue
        labels = list(dict.fromkeys(o["label"] for o in solution))
        rows.append(
            {"where": f"{where} ({image})", "candidates": [image], "path": None, "size": None,
             "solution": solution, "phrases": labels, "question": question}
        )  # fmt: skip
    return rows, len(records)

