"""Jigsaw puzzles (after Jigsaw-R1): any image becomes a self-supervised perception task. The image is cut
into a rows×cols grid, the patches are shuffled when a row is read, and the model recovers the arrangement."""

from __future__ import annotations

import bisect
import json
import math
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..formats import JIGSAW_QUESTIONS
from ..frames import check_box_format, fit_to_grid, grid_size
from .errors import DataError, ErrorPolicy, RecordError
from .images import read_image_size
from .registry import register_builder
from .rows import prompt_feature, rows_to_dataset, sample_indices
from .synthetic import make_synthetic

if TYPE_CHECKING:
    import datasets
    from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "JIGSAW_QUESTIONS",
    "GridCurriculum",
    "JigsawTransform",
    "build_jigsaw",
    "concatenate_jigsaw",
    "crop_to_grid",
    "jigsaw_prompt_text",
    "jigsaw_spec",
    "make_jigsaw",
    "mask_borders",
    "reassemble",
    "shuffle_patches",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

_QUESTION_IDS = {q: i for i, q in enumerate(JIGSAW_QUESTIONS)}
_LETTERS = string.ascii_uppercase


# --------------------------------------------------------------------------------------------------
# Pixels: crop, shuffle, reassemble, mask


def _as_array(image: Any) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def _patches(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """`[rows * cols, ph, pw, C]` patches of an array whose sides are multiples of the grid, row-major."""
    h, w, c = array.shape
    ph, pw = h // rows, w // cols
    return array.reshape(rows, ph, cols, pw, c).transpose(0, 2, 1, 3, 4).reshape(rows * cols, ph, pw, c)


def _tile(patches: np.ndarray, rows: int, cols: int) -> np.ndarray:
    _, ph, pw, c = patches.shape
    return patches.reshape(rows, cols, ph, pw, c).transpose(0, 2, 1, 3, 4).reshape(rows * ph, cols * pw, c)


def _to_image(array: np.ndarray) -> Image.Image:
    from PIL import Image

    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def crop_to_grid(image: Image.Image, rows: int, cols: int) -> Image.Image:
    """The top-left `(W // cols · cols) × (H // rows · rows)` part of `image`, so that every patch has the
    same size (as Jigsaw-R1 crops).

    Example:
    ```python
    >>> from PIL import Image
    >>> crop_to_grid(Image.new("RGB", (101, 50)), rows=3, cols=2).size
    (100, 48)

    ```
    """
    w, h = image.size
    return image.crop((0, 0, (w // cols) * cols, (h // rows) * rows))


def shuffle_patches(image: Image.Image, rows: int, cols: int, permutation: Sequence[int]) -> Image.Image:
    """The puzzle: position `x` (1-based, row-major) shows the patch whose original position is
    `permutation[x - 1]`. The image is first cropped with `crop_to_grid`.

    Example:
    ```python
    >>> from PIL import Image
    >>> image = Image.new("RGB", (4, 2)); image.putpixel((0, 0), (255, 0, 0))
    >>> shuffle_patches(image, 1, 2, [2, 1]).getpixel((2, 0))
    (255, 0, 0)

    ```
    """
    array = _as_array(crop_to_grid(image, rows, cols))
    order = np.asarray(permutation, dtype=np.int64) - 1
    return _to_image(_tile(_patches(array, rows, cols)[order], rows, cols))


def reassemble(puzzle: Image.Image, rows: int, cols: int, answer: Sequence[int] | None) -> Image.Image:
    """Undo a puzzle with an answer: the patch at position `x` goes to position `answer[x - 1]`.

    An answer that is not a permutation of `1..rows·cols` still renders: entries out of range are
    dropped, a position claimed twice shows the last patch, and unclaimed positions stay black. With
    `answer=None` (unparseable) the result is all black.

    Example:
    ```python
    >>> from PIL import Image
    >>> original = Image.new("RGB", (4, 2)); original.putpixel((3, 1), (0, 255, 0))
    >>> puzzle = shuffle_patches(original, 1, 2, [2, 1])
    >>> list(reassemble(puzzle, 1, 2, [2, 1]).getdata()) == list(original.getdata())
    True

    ```
    """
    array = _as_array(crop_to_grid(puzzle, rows, cols))
    patches = _patches(array, rows, cols)
    out = np.zeros_like(patches)
    if answer is not None:
        n = rows * cols
        for source, target in enumerate(list(answer)[:n]):
            if isinstance(target, (int, np.integer)) and 1 <= target <= n:
                out[int(target) - 1] = patches[source]
    return _to_image(_tile(out, rows, cols))


def mask_borders(image: Image.Image, rows: int, cols: int, mask_ratio: float) -> Image.Image:
    """Black out each patch's borders, so that edges cannot be matched pixel by pixel: `mask_ratio` of
    the patch side on the image's outer edges, half of it on each side of an inner seam (the seam as a
    whole loses `mask_ratio`, like the outer edge).

    Example:
    ```python
    >>> from PIL import Image
    >>> masked = mask_borders(Image.new("RGB", (20, 10), "white"), 1, 2, 0.2)
    >>> masked.getpixel((0, 5)), masked.getpixel((9, 5)), masked.getpixel((5, 5))
    ((0, 0, 0), (0, 0, 0), (255, 255, 255))

    ```
    """
    if mask_ratio <= 0:
        return image
    array = _as_array(image).copy()
    h, w = array.shape[:2]
    ph, pw = h // rows, w // cols
    by, bx = int(ph * mask_ratio), int(pw * mask_ratio)
    for i in range(rows):
        top, bottom = i * ph, (i + 1) * ph
        array[top : top + (by if i == 0 else by // 2)] = 0
        array[bottom - (by if i == rows - 1 else by // 2) : bottom] = 0
    for j in range(cols):
        left, right = j * pw, (j + 1) * pw
        array[:, left : left + (bx if j == 0 else bx // 2)] = 0
        array[:, right - (bx if j == cols - 1 else bx // 2) : right] = 0
    return _to_image(array)


# --------------------------------------------------------------------------------------------------
# Puzzle specification (no pixels): grid, permutation, question, answer


def _pair_relations(rows: int, cols: int) -> list[tuple[str, int, int]]:
    """`(phrase, drow, dcol)`: where patch k lies relative to patch l (signs of the row/col offsets)."""
    horizontal = [("directly to the left of", 0, -1), ("directly to the right of", 0, 1)]
    vertical = [("directly above", -1, 0), ("directly below", 1, 0)]
    diagonal = [
        ("on the upper left of", -1, -1),
        ("on the upper right of", -1, 1),
        ("on the lower left of", 1, -1),
        ("on the lower right of", 1, 1),
    ]
    if rows == 1:
        return horizontal
    if cols == 1:
        return vertical
    return horizontal + vertical + diagonal


def _grid_text(values: Sequence[int], cols: int) -> str:
    return "\n".join(" ".join(str(v) for v in values[i : i + cols]) for i in range(0, len(values), cols))


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(k) & 0xFFFFFFFF for k in keys)])


def jigsaw_spec(
    seed: int,
    index: int,
    rows: int,
    cols: int,
    question: str = "full",
    *,
    swap_prob: float = 0.0,
    num_options: int = 4,
) -> dict[str, Any]:
    """Everything about puzzle `index` but its pixels, from `(seed, index)` alone: the grid (rows and
    columns swapped with probability `swap_prob`), the permutation (`permutation[x - 1]` is the original
    position of the patch shown at position `x`, uniform over all permutations), the question and its
    answer.

    Returns a dict with `rows`, `cols`, `permutation`, `question`, `answer` (the permutation for `full`,
    a number for `single`, a letter for `pair`/`multiple`), and `k`, `l`, `choices` where they apply
    (`choices`: relation phrases for `pair`, candidate permutations for `multiple`).

    Example:
    ```python
    >>> spec = jigsaw_spec(0, 7, 2, 2)
    >>> sorted(spec["permutation"]), spec["answer"] == spec["permutation"]
    ([1, 2, 3, 4], True)
    >>> jigsaw_spec(0, 7, 2, 2) == spec
    True
    >>> sorted(jigsaw_spec(0, 7, 1, 2, "pair")["choices"])
    ['directly to the left of', 'directly to the right of']

    ```
    """
    if question not in _QUESTION_IDS:
        raise ValueError(f"unknown question {question!r}; expected one of {JIGSAW_QUESTIONS}")
    rows, cols = int(rows), int(cols)
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise ValueError(f"a jigsaw grid needs at least 2 patches, got {rows}x{cols}")
    if not 0.0 <= swap_prob <= 1.0:
        raise ValueError(f"swap_prob must be in [0, 1], got {swap_prob}")
    if swap_prob > 0 and rows != cols and _rng(seed, index, 1).random() < swap_prob:
        rows, cols = cols, rows
    n = rows * cols
    rng = _rng(seed, index, 2, rows, cols, _QUESTION_IDS[question])
    permutation = (rng.permutation(n) + 1).tolist()
    spec: dict[str, Any] = {"rows": rows, "cols": cols, "permutation": permutation, "question": question}
    if question == "full":
        spec["answer"] = permutation
    elif question == "single":
        k = int(rng.integers(1, n + 1))
        spec.update(k=k, answer=permutation[k - 1])
    elif question == "pair":
        k, other = (int(v) + 1 for v in rng.choice(n, size=2, replace=False))
        ko, lo = permutation[k - 1] - 1, permutation[other - 1] - 1
        drow = int(np.sign(ko // cols - lo // cols))
        dcol = int(np.sign(ko % cols - lo % cols))
        relations = _pair_relations(rows, cols)
        truth = next(i for i, (_, dr, dc) in enumerate(relations) if (dr, dc) == (drow, dcol))
        order = rng.permutation(len(relations)).tolist()
        spec.update(k=k, l=other, choices=[relations[i][0] for i in order], answer=_LETTERS[order.index(truth)])
    else:  # multiple
        count = max(2, min(int(num_options), math.factorial(n), len(_LETTERS)))
        candidates = [permutation]
        seen = {tuple(permutation)}
        while len(candidates) < count:
            candidate = (rng.permutation(n) + 1).tolist()
            if tuple(candidate) not in seen:
                seen.add(tuple(candidate))
                candidates.append(candidate)
        order = rng.permutation(count).tolist()
        spec.update(choices=[candidates[i] for i in order], answer=_LETTERS[order.index(0)])
    return spec


def jigsaw_prompt_text(spec: dict[str, Any], *, think: bool = False, masked: bool = False) -> str:
    """The user prompt of a puzzle, after Jigsaw-R1's: the grid and its position indices (the index grid
    shown), the question, the placement rule for full answers, then the thinking or direct-answer
    instruction and the answer format.

    Example:
    ```python
    >>> print(jigsaw_prompt_text(jigsaw_spec(0, 0, 2, 2)))  # doctest: +NORMALIZE_WHITESPACE
    The input image is divided into 2x2 patches that have been randomly permuted from their original
    positions. Your task is to solve this 2x2 jigsaw puzzle and reconstruct the original image.
    <BLANKLINE>
    Consider a 2x2 grid, where each number represents a position index ranging from 1 (top-left) to 4
    (bottom-right):
    <BLANKLINE>
    ```
    1 2
    3 4
    ```
    <BLANKLINE>
    For each patch, determine its correct position index in the original image. If a patch currently at
    position X should belong at position Y, place "Y" at position X.
    <BLANKLINE>
    Directly output the final answer. The final answer should be the position indexes arranged in a 2x2
    grid.

    ```
    """
    rows, cols, question = spec["rows"], spec["cols"], spec["question"]
    n = rows * cols
    first, last = ("left", "right") if rows == 1 else ("top", "bottom") if cols == 1 else ("top-left", "bottom-right")
    mask_note = " To make the task harder, the borders of each patch have been masked out." if masked else ""
    rule = (
        "For each patch, determine its correct position index in the original image. If a patch currently "
        'at position X should belong at position Y, place "Y" at position X.'
    )
    parts = [
        f"The input image is divided into {rows}x{cols} patches that have been randomly permuted from their "
        f"original positions. Your task is to solve this {rows}x{cols} jigsaw puzzle and reconstruct the "
        f"original image.{mask_note}",
        f"Consider a {rows}x{cols} grid, where each number represents a position index ranging from 1 "
        f"({first}) to {n} ({last}):",
        f"```\n{_grid_text(list(range(1, n + 1)), cols)}\n```",
    ]
    if question == "full":
        parts.append(rule)
        answer_format = f"The final answer should be the position indexes arranged in a {rows}x{cols} grid."
    elif question == "single":
        parts.append(
            f"For the patch currently at position {spec['k']}, determine its correct position index in the "
            "original image."
        )
        answer_format = "The final answer should be a single number."
    elif question == "pair":
        k, other = spec["k"], spec["l"]
        choices = "\n".join(f"({_LETTERS[i]}) {k} is {phrase} {other}" for i, phrase in enumerate(spec["choices"]))
        parts.append(
            f"For patches currently at positions {k} and {other}, determine their relative position in the "
            f"original image.\n\nSelect the correct answer from the following {len(spec['choices'])} "
            f"choices:\n\n{choices}"
        )
        answer_format = "The final answer should be a single letter."
    else:
        choices = "\n\n".join(f"({_LETTERS[i]})\n{_grid_text(c, cols)}" for i, c in enumerate(spec["choices"]))
        parts.append(
            f"{rule}\n\nSelect the correct answer from the following {len(spec['choices'])} choices:\n\n{choices}"
        )
        answer_format = "The final answer should be a single letter."
    instruction = (
        "First, output the thinking process within <think> </think> tags. Then, provide the final answer "
        "within <answer> </answer> tags."
        if think
        else "Directly output the final answer."
    )
    parts.append(f"{instruction} {answer_format}")
    return "\n\n".join(parts)


def _solution(spec: dict[str, Any], think: bool) -> str:
    solution = {
        "question": spec["question"],
        "grid": [spec["rows"], spec["cols"]],
        "answer": spec["answer"],
        "think": bool(think),
    }
    if "choices" in spec:
        solution["options"] = len(spec["choices"])
    return json.dumps(solution)


# --------------------------------------------------------------------------------------------------
# Curriculum


class GridCurriculum:
    """Grid sizes that grow with training progress: `stages` is `[(first_step, (rows, cols)), ...]`.

    The trainer-side `callbacks.JigsawCurriculumCallback` sets `step` from `TrainerState.global_step` at
    the start of training (so a resumed run continues at its stage) and before every step; a dataset
    built with `make_jigsaw(..., curriculum=...)` renders each row read at the current stage's grid.
    Copies share one state (`copy.deepcopy` returns the same object), because `datasets` copies a
    dataset's transform when it is shuffled or selected. Processes do not share it: keep
    `dataloader_num_workers=0` (TRL's default) when training with a curriculum.

    Example:
    ```python
    >>> curriculum = GridCurriculum([(0, (2, 1)), (100, (2, 2)), (300, (3, 3))])
    >>> curriculum.grid, curriculum.grid_at(150), curriculum.grid_at(10_000)
    ((2, 1), (2, 2), (3, 3))
    >>> curriculum.step = 120; curriculum.grid
    (2, 2)

    ```
    """

    def __init__(self, stages: Sequence[tuple[int, Sequence[int]]]):
        parsed = []
        for entry in stages:
            try:
                first, (rows, cols) = entry
            except (TypeError, ValueError):
                raise ValueError(f"curriculum stages are (first_step, (rows, cols)) pairs, got {entry!r}") from None
            if int(rows) * int(cols) < 2 or int(rows) < 1 or int(cols) < 1:
                raise ValueError(f"a jigsaw grid needs at least 2 patches, got {rows}x{cols}")
            parsed.append((int(first), (int(rows), int(cols))))
        if not parsed:
            raise ValueError("a curriculum needs at least one stage")
        parsed.sort(key=lambda s: s[0])
        if parsed[0][0] != 0:
            raise ValueError(f"the first curriculum stage must start at step 0, got {parsed[0][0]}")
        if len({s[0] for s in parsed}) != len(parsed):
            raise ValueError(f"two curriculum stages start at the same step: {parsed}")
        self.stages: list[tuple[int, tuple[int, int]]] = parsed
        self._starts = [s[0] for s in parsed]
        self.step = 0

    def grid_at(self, step: int) -> tuple[int, int]:
        """The `(rows, cols)` of the stage that contains `step`."""
        return self.stages[max(bisect.bisect_right(self._starts, int(step)) - 1, 0)][1]

    @property
    def grid(self) -> tuple[int, int]:
        """The current stage's `(rows, cols)`."""
        return self.grid_at(self.step)

    def __deepcopy__(self, memo: dict) -> GridCurriculum:
        return self

    def __repr__(self) -> str:
        return f"GridCurriculum({self.stages!r}, step={self.step})"


# --------------------------------------------------------------------------------------------------
# The lazy transform


class JigsawTransform:
    """`Dataset.with_transform` function that turns the source image of each row read into its puzzle.

    The stored columns hold the source image and the puzzle's specification; this cuts and shuffles the
    patches (and masks borders) only when a row is read. With a `GridCurriculum`, rows are re-specified at
    the current stage's grid (prompt, solution, grid, permutation, image size), deterministically from
    `(seed, jigsaw_index, grid)`. Picklable.
    """

    def __init__(
        self,
        *,
        seed: int,
        question: str,
        think: bool,
        mask_ratio: float,
        swap_prob: float,
        num_options: int,
        system_prompt: str | None,
        curriculum: GridCurriculum | None = None,
        template: str | None = None,
        box_format: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        self.seed, self.question, self.think = seed, question, think
        self.mask_ratio, self.swap_prob, self.num_options = mask_ratio, swap_prob, num_options
        self.system_prompt, self.curriculum, self.template = system_prompt, curriculum, template
        self.box_format, self.min_pixels, self.max_pixels = box_format, min_pixels, max_pixels

    def fitted_size(self, source_size: Sequence[int]) -> tuple[int, int]:
        """The source image's size after fitting it to the box format's grid (unchanged without one)."""
        if self.box_format is None:
            return int(source_size[0]), int(source_size[1])
        return grid_size(source_size, self.box_format, self.min_pixels, self.max_pixels)

    def spec(self, index: int, rows: int, cols: int) -> dict[str, Any]:
        return jigsaw_spec(
            self.seed, index, rows, cols, self.question, swap_prob=self.swap_prob, num_options=self.num_options
        )

    def columns(self, spec: dict[str, Any], source_size: Sequence[int]) -> dict[str, Any]:
        """The row's spec-dependent columns."""
        rows, cols = spec["rows"], spec["cols"]
        if self.template is not None:
            text = self.template.format(
                rows=rows, cols=cols, n=rows * cols, k=spec.get("k"), l=spec.get("l"), choices=spec.get("choices")
            )
        else:
            text = jigsaw_prompt_text(spec, think=self.think, masked=self.mask_ratio > 0)
        prompt = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": text}]}]
        if self.system_prompt:
            prompt.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        w, h = self.fitted_size(source_size)
        return {
            "prompt": prompt,
            "solution": _solution(spec, self.think),
            "image_size": [(w // cols) * cols, (h // rows) * rows],
            "grid": [rows, cols],
            "question_type": spec["question"],
            "permutation": spec["permutation"],
        }

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        n = len(next(iter(batch.values()))) if batch else 0
        if self.curriculum is not None and "jigsaw_index" in batch and "source_size" in batch:
            rows, cols = self.curriculum.grid
            if any(list(g) != [rows, cols] for g in batch.get("grid", [None] * n)) or self.swap_prob > 0:
                updates = [
                    self.columns(self.spec(i, rows, cols), size)
                    for i, size in zip(batch["jigsaw_index"], batch["source_size"])
                ]
                for name in updates[0] if updates else ():
                    if name in batch:
                        batch[name] = [u[name] for u in updates]
        if "image" in batch and "grid" in batch and "permutation" in batch:
            batch["image"] = [
                None
                if image is None
                else mask_borders(shuffle_patches(self._fit(image), g[0], g[1], p), g[0], g[1], self.mask_ratio)
                for image, g, p in zip(batch["image"], batch["grid"], batch["permutation"])
            ]
        return batch

    def _fit(self, image: Image.Image) -> Image.Image:
        if self.box_format is None:
            return image
        return fit_to_grid(image.convert("RGB"), self.box_format, self.min_pixels, self.max_pixels)

    def __repr__(self) -> str:
        return (
            f"JigsawTransform(seed={self.seed}, question={self.question!r}, think={self.think}, "
            f"mask_ratio={self.mask_ratio}, swap_prob={self.swap_prob}, curriculum={self.curriculum!r})"
        )


# --------------------------------------------------------------------------------------------------
# The builder


def _list_folder(folder: Path) -> list[str]:
    return sorted(
        str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _source_images(images: Any, image_dir: str | os.PathLike | None) -> tuple[str, list[dict[str, Any]], list | None]:
    """`(source name, [{"bytes", "path"}, ...], image sizes from an `image_size` column or None)`."""
    import datasets

    if isinstance(images, datasets.Dataset):
        if "image" not in images.column_names:
            raise DataError(f"the dataset has no 'image' column (columns: {images.column_names})")
        plain = images.with_format(None)
        sizes = list(plain.select_columns(["image_size"])["image_size"]) if "image_size" in plain.column_names else None
        stored = plain.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))["image"]
        return "dataset", [dict(s) if s is not None else None for s in stored], sizes
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(f"{folder}: not an image folder")
        paths = _list_folder(folder)
        if not paths:
            raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return str(folder), [{"bytes": None, "path": p} for p in paths], None
    if isinstance(images, Sequence):
        root = Path(image_dir) if image_dir is not None else None
        entries = []
        for p in images:
            path = Path(p)
            if root is not None and not path.is_absolute():
                path = root / path
            entries.append({"bytes": None, "path": str(path)})
        return "image list", entries, None
    raise TypeError(f"images must be a folder, a list of paths or a dataset with an 'image' column, got {images!r}")


def make_jigsaw(
    images: str | os.PathLike | Sequence[str | os.PathLike] | datasets.Dataset,
    rows: int = 2,
    cols: int = 2,
    question: str = "full",
    *,
    num_samples: int | None = None,
    seed: int = 0,
    mask_ratio: float = 0.0,
    swap_prob: float = 0.0,
    think: bool = False,
    num_options: int = 4,
    curriculum: GridCurriculum | Sequence[tuple[int, Sequence[int]]] | None = None,
    image_dir: str | os.PathLike | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    box_format: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    on_error: str = "raise",
) -> datasets.Dataset:
    """Jigsaw puzzles from any images, in the row contract (`task="jigsaw"`), after Jigsaw-R1.

    Each image is cropped to a multiple of the grid (`crop_to_grid`), cut into `rows × cols` patches and
    shuffled by a uniformly random permutation that depends only on `(seed, row)`. Nothing is cut at
    build time: the stored `image` is the source (a path, or the source dataset's bytes) and a
    `JigsawTransform` renders the puzzle when a row is read, so the row's `image` is the puzzle that
    `GRPOTrainer` hands to the processor.

    Columns: `prompt`, `image` (the puzzle, on read), `task` (`"jigsaw"`), `solution` (JSON:
    `{"question", "grid": [rows, cols], "answer", "think"[, "options"]}`; the answer is the list of
    original positions for `full`, a number for `single`, a letter for `pair` and `multiple`),
    `image_size` (the puzzle's `[width, height]`), `grid` (`[rows, cols]`), `question_type`,
    `permutation` (`permutation[x - 1]` = original position of the patch shown at position `x`, so the
    image can be reassembled with `reassemble`), `jigsaw_index` and `source_size`.

    Args:
        images: an image folder (searched recursively), a list of image paths, `"synthetic"` (`num_samples`
            `make_synthetic` detection scenes, default 16), or a `datasets.Dataset` with an
            `image` column (e.g. `build_coco_detection` or `make_synthetic` output; its images are taken as
            stored, before any transform of that dataset).
        rows, cols: the grid (at least 2 patches).
        question: `"full"`, `"pair"`, `"single"` or `"multiple"` (see `JIGSAW_QUESTIONS`).
        num_samples: keep a seeded random subset of this many images.
        seed: random seed of the subset and of every puzzle.
        mask_ratio: black out this fraction of each patch side at its borders (`mask_borders`); the
            prompt says so.
        swap_prob: with this probability a row's grid is `cols × rows` instead (Jigsaw-R1's random swap).
        think: ask for `<think>…</think><answer>…</answer>` instead of a direct answer.
        num_options: candidate grids of a `multiple` question (capped by the number of permutations).
        curriculum: a `GridCurriculum` (or its stages, `[(first_step, (rows, cols)), ...]`): rows are rendered
            at its current stage's grid (then `rows`/`cols` are ignored); pair it with
            `callbacks.JigsawCurriculumCallback` (the recipe script does).
        image_dir: folder that relative paths in a list are resolved against.
        template: a `str.format` template replacing the Jigsaw-R1 prompt, with fields `rows`, `cols`, `n`
            (patches), `k`, `l` and `choices` (short prompts for tiny models, other wordings).
        system_prompt: adds a system turn.
        box_format, min_pixels, max_pixels: fit each source image to this model family's grid within the pixel
            limits before cutting it (`frames.fit_to_grid`), so that large images (COCO) stay within the
            processor's budget; the puzzle is then cropped to a multiple of the grid. Jigsaw answers have no
            coordinates, so no `box_format` column is added.
        on_error: `"raise"` (a `DataError` naming the file) or `"skip"` unreadable or too small images with
            a counted warning.

    Example:
    ```python
    >>> from trl_perception.data import make_synthetic
    >>> scenes = make_synthetic("detection", 4, seed=0)
    >>> ds = make_jigsaw(scenes, rows=2, cols=2, seed=0)
    >>> row = ds[0]
    >>> row["task"], row["grid"], row["question_type"], row["image"].size, row["image_size"]
    ('jigsaw', [2, 2], 'full', (112, 112), [112, 112])
    >>> sorted(row["permutation"])
    [1, 2, 3, 4]

    ```
    """
    import datasets

    if question not in _QUESTION_IDS:
        raise ValueError(f"unknown question {question!r}; expected one of {JIGSAW_QUESTIONS}")
    if box_format is not None:
        check_box_format(box_format)
    elif min_pixels is not None or max_pixels is not None:
        raise ValueError("min_pixels/max_pixels fit images to a model family's grid: pass box_format= too")
    if not 0.0 <= float(mask_ratio) < 0.5:
        raise ValueError(f"mask_ratio must be in [0, 0.5), got {mask_ratio}")
    if curriculum is not None:
        if not isinstance(curriculum, GridCurriculum):
            curriculum = GridCurriculum(curriculum)  # [(first_step, (rows, cols)), ...], e.g. from a YAML recipe
        rows, cols = curriculum.grid
    spec = jigsaw_spec(seed, 0, rows, cols, question, swap_prob=swap_prob)  # validates the grid and options
    if template is not None:
        try:
            template.format(rows=rows, cols=cols, n=rows * cols, k=1, l=2, choices=[])
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"jigsaw template {template!r} has an unknown field or bad syntax: {err}") from None
    del spec
    if isinstance(images, str) and images == "synthetic":  # the registry's synthetic source: detection scenes
        images, num_samples = make_synthetic("detection", num_samples or 16, seed=seed), None
    source, entries, sizes = _source_images(images, image_dir)
    policy = ErrorPolicy(source, on_error)
    transform = JigsawTransform(
        seed=seed,
        question=question,
        think=think,
        mask_ratio=float(mask_ratio),
        swap_prob=float(swap_prob),
        num_options=num_options,
        system_prompt=system_prompt,
        curriculum=curriculum,
        template=template,
        box_format=box_format,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    max_side = max(rows, cols)  # a swap may exchange them
    columns: dict[str, list[Any]] = {
        name: []
        for name in ("prompt", "image", "task", "solution", "image_size", "grid", "question_type", "permutation")
    }
    columns["jigsaw_index"], columns["source_size"] = [], []
    for index in sample_indices(len(entries), num_samples, seed).tolist():
        entry = entries[index]
        where = f"image {index}" + (f" ({entry['path']})" if entry and entry.get("path") else "")
        try:
            if entry is None or (entry.get("bytes") is None and not entry.get("path")):
                raise RecordError("missing image", "no image")
            if sizes is not None and sizes[index] is not None:
                size = [int(v) for v in sizes[index]]
            else:
                size = list(read_image_size(entry["bytes"] if entry.get("bytes") is not None else entry["path"]))
            fitted = transform.fitted_size(size)
            if min(fitted) < max_side:
                raise RecordError("image too small", f"{fitted[0]}x{fitted[1]} pixels cannot be cut into {rows}x{cols}")
        except RecordError as err:
            policy.failed(where, err)
            continue
        row = transform.columns(transform.spec(index, rows, cols), size)
        for name, value in row.items():
            columns[name].append(value)
        columns["image"].append(entry)
        columns["task"].append("jigsaw")
        columns["jigsaw_index"].append(index)
        columns["source_size"].append(size)
    policy.finish(len(entries))
    int_list = datasets.List(datasets.Value("int64"))
    features = datasets.Features(
        {
            "prompt": prompt_feature(),
            "image": datasets.Image(),
            "task": datasets.Value("string"),
            "solution": datasets.Value("string"),
            "image_size": int_list,
            "grid": int_list,
            "question_type": datasets.Value("string"),
            "permutation": int_list,
            "jigsaw_index": datasets.Value("int64"),
            "source_size": int_list,
        }
    )
    dataset = rows_to_dataset(columns, features)
    return dataset.with_transform(transform)


def concatenate_jigsaw(parts: Sequence[datasets.Dataset]) -> datasets.Dataset:
    """One dataset of the rows of several `make_jigsaw` datasets (e.g. several grid sizes), still rendered
    lazily. The parts must share `mask_ratio` and have no curriculum; rows keep their own grid, question,
    prompt and permutation.

    Example:
    ```python
    >>> from trl_perception.data import make_synthetic
    >>> scenes = make_synthetic("grounding", 2, seed=0)
    >>> mixed = concatenate_jigsaw([make_jigsaw(scenes, 2, 1), make_jigsaw(scenes, 2, 2)])
    >>> [row["grid"] for row in mixed], mixed[3]["image"].size
    ([[2, 1], [2, 1], [2, 2], [2, 2]], (112, 112))

    ```
    """
    import datasets

    transforms = [part.format.get("format_kwargs", {}).get("transform") for part in parts]
    if not parts or not all(isinstance(t, JigsawTransform) for t in transforms):
        raise ValueError("concatenate_jigsaw takes datasets built by make_jigsaw")
    if any(t.curriculum is not None for t in transforms):
        raise ValueError("concatenate_jigsaw cannot mix datasets that follow a curriculum")
    if len({t.mask_ratio for t in transforms}) > 1:
        raise ValueError(f"the parts have different mask_ratio values: {sorted({t.mask_ratio for t in transforms})}")
    plain = datasets.concatenate_datasets([part.with_format(None) for part in parts])
    return plain.with_transform(transforms[0])


@register_builder("jigsaw")
def build_jigsaw(
    source: str | os.PathLike | Sequence[str | os.PathLike] | datasets.Dataset,
    *,
    split: str | None = None,
    image_dir: str | os.PathLike | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    on_error: str = "raise",
    box_format: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    **options: Any,
) -> datasets.Dataset:
    """The registry's jigsaw builder (`build_dataset("jigsaw", source, ...)`): `make_jigsaw` with the options
    every builder shares; `options` are `make_jigsaw`'s own (`rows`, `cols`, `question`, `curriculum`, ...).
    Images have no split.

    Example:
    ```python
    >>> build_jigsaw("synthetic", num_samples=2, rows=2, cols=1)[0]["grid"]
    [2, 1]

    ```
    """
    if split is not None:
        raise ValueError(f"jigsaw puzzles are cut from images, which have no split (got split={split!r})")
    return make_jigsaw(source, num_samples=num_samples, seed=seed, on_error=on_error, box_format=box_format,
                       min_pixels=min_pixels, max_pixels=max_pixels, image_dir=image_dir, **options)  # fmt: skip
