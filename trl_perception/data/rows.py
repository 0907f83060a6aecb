"""The row contract as `datasets` features, the assembly of builder rows into a `datasets.Dataset`, and
the deterministic choice of rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..frames import TASKS
from .images import image_struct
from .prompts import build_prompt
from .resize import box_format_columns, finalize

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pyarrow as pa

__all__ = [
    "PromptCache",
    "contract_dataset",
    "prompt_feature",
    "row_features",
    "rows_to_dataset",
    "sample_indices",
    "select_rows",
    "solution_feature",
]


def sample_indices(n: int, num_samples: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of a deterministic random subset of `range(n)`, in increasing order.

    `num_samples=None` (or at least `n`) keeps everything; the same `seed` always gives the same subset.

    Example:
    ```python
    >>> sample_indices(5).tolist()
    [0, 1, 2, 3, 4]
    >>> sample_indices(10, 3, seed=0).tolist() == sample_indices(10, 3, seed=0).tolist()
    True
    >>> len(sample_indices(10, 3, seed=1))
    3

    ```
    """
    if num_samples is None or num_samples >= n:
        return np.arange(n)
    if num_samples < 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:num_samples])


def select_rows(
    n: int, accept: Callable[[int], bool], num_samples: int | None = None, seed: int = 0
) -> list[int]:
    """Pick rows `i` of `range(n)` for which `accept(i)` is true: all of them, or `num_samples` drawn in a
    seeded random order (rejected rows are replaced by the next ones in that order). Sorted result.

    Expensive checks (image files) thus run only on the rows examined, not on the whole source.

    Example:
    ```python
    >>> select_rows(6, lambda i: i != 2)
    [0, 1, 3, 4, 5]
    >>> len(select_rows(100, lambda i: i % 2 == 0, num_samples=10, seed=0))
    10

    ```
    """
    if num_samples is not None and num_samples < 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if num_samples is None or num_samples >= n:
        return [i for i in range(n) if accept(i)]
    chosen: list[int] = []
    for i in np.random.default_rng(seed).permutation(n).tolist():
        if len(chosen) >= num_samples:
            break
        if accept(i):
            chosen.append(i)
    return sorted(chosen)


def prompt_feature() -> Any:
    """The `datasets` feature of a conversational prompt column.

    Example:
    ```python
    >>> list(prompt_feature().feature)
    ['role', 'content']

    ```
    """
    from datasets import List, Value

    return List(
        {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
    )


def solution_feature(task: str) -> Any:
    """The `datasets` feature of `solution` for one task (see the row contract).

    Example:
    ```python
    >>> solution_feature("ocr"), solution_feature("grounding")
    (Value('string'), List(Value('float64')))

    ```
    """
    from datasets import List, Value

    if task == "grounding":
        return List(Value("float64"))
    if task == "counting":
        return {"count": Value("int64"), "points": List(List(Value("float64")))}
    if task == "ocr":
        return Value("string")
    if task in ("detection", "ovd"):  # OVD: the boxes of the phrases asked ([] when none is present)
        return List({"bbox_2d": List(Value("float64")), "label": Value("string")})
    if task == "jigsaw":
        return Value("string")  # JSON: {"question", "grid", "answer", "think"[, "options"]}
    if task == "vqa":
        return Value("string")  # the answer: a letter of `options`, a number or a short text
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def row_features(task: str | None, with_box_format: bool = False) -> datasets.Features:
    """Features of a builder's rows: `prompt`, `image`, `task`, `solution`, `image_size`, and with
    `with_box_format=True` also `box_format` and `input_size`. `task=None` stores `solution` as JSON strings
    (mixed-task datasets). VQA rows also carry `options` (the choices, `[]` for a short-answer question) and
    `target_box` (`[x1, y1, x2, y2]` in pixels of `image` of the region that answers it, `[]` when unknown).

    Example:
    ```python
    >>> list(row_features("detection", with_box_format=True))
    ['prompt', 'image', 'task', 'solution', 'image_size', 'box_format', 'input_size']
    >>> row_features(None)["solution"]
    Value('string')
    >>> list(row_features("vqa"))[-2:]
    ['options', 'target_box']

    ```
    """
    from datasets import Features, Image, List, Value

    features = {
        "prompt": prompt_feature(),
        "image": Image(),
        "task": Value("string"),
        "solution": solution_feature(task) if task is not None else Value("string"),
        "image_size": List(Value("int64")),
    }
    if with_box_format:
        features["box_format"] = Value("string")
        features["input_size"] = List(Value("int64"))
    if task == "vqa":
        features["options"] = List(Value("string"))
        features["target_box"] = List(Value("float64"))
    return Features(features)


def _to_arrow(values: Any, feature: Any) -> pa.Array:
    import pyarrow as pa
    from datasets import Image

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(feature, Image):
        encoded = [
            None
            if v is None
            else v
            if isinstance(v, dict) and set(v) <= {"bytes", "path"}
            else feature.encode_example(v)
            for v in values
        ]
        return image_struct([e and e.get("path") for e in encoded], [e and e.get("bytes") for e in encoded])
    return pa.array(values, type=_arrow_type(feature))


def _arrow_type(feature: Any) -> pa.DataType:
    from datasets import Features

    return Features({"x": feature}).arrow_schema.field("x").type


def rows_to_dataset(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], features: datasets.Features | None = None
) -> datasets.Dataset:
    """Assemble builder rows into a `datasets.Dataset` with the row-contract features.

    `rows` is a list of row dicts or a dict of columns (lists or pyarrow arrays). Without `features`,
    the contract columns get their standard features (`solution` by the rows' task; JSON strings when
    tasks are mixed) and other columns are inferred. Images may be paths, bytes, PIL images or
    `{"bytes", "path"}` dicts; paths stay paths (decoded lazily on access).

    Example:
    ```python
    >>> ds = rows_to_dataset([{"prompt": build_prompt("ocr"), "image": "page.png", "task": "ocr",
    ...                        "solution": "Hello", "image_size": [640, 480]}])
    >>> ds.features["solution"], ds.features["image"].decode
    (Value('string'), True)
    >>> ds.select_columns(["solution", "image_size"])[0]
    {'solution': 'Hello', 'image_size': [640, 480]}

    ```
    """
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, Features, Value

    if isinstance(rows, Mapping):
        columns = dict(rows)
    else:
        names: list[str] = []
        for row in rows:
            names.extend(k for k in row if k not in names)
        columns = {name: [row.get(name) for row in rows] for name in names}
    if features is None:
        tasks = (
            set(columns["task"])
            if "task" in columns and not isinstance(columns["task"], (pa.Array, pa.ChunkedArray))
            else set()
        )
        single = next(iter(tasks)) if len(tasks) == 1 and next(iter(tasks)) in TASKS else None
        standard = row_features(single, with_box_format=True)
        if single is None and "solution" in columns:
            columns["solution"] = [
                v if isinstance(v, str) or v is None else json.dumps(v) for v in columns["solution"]
            ]
        inferred: dict[str, Any] = {}
        for name, values in columns.items():
            if name in standard:
                inferred[name] = standard[name]
            else:
                array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
                inferred[name] = Features.from_arrow_schema(pa.schema([pa.field(name, array.type)]))[name]
                columns[name] = array
        if single is None and "solution" in columns:
            inferred["solution"] = Value("string")
        features = Features(inferred)
    arrays = [_to_arrow(columns[name], features[name]) for name in features]
    table = pa.Table.from_arrays(arrays, names=list(features)).cast(features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features))


class PromptCache:
    """Builds each distinct prompt once (detection prompts repeat on every row): the one place where a
    builder's prompt options (`box_format`, `template`, `system_prompt`, `think`) reach `build_prompt`.

    `think=True` appends `THINK_INSTRUCTION` to the user text, after the template (the task's or yours) and the
    box format's output instruction; a system prompt stays a separate turn, unchanged.

    Example:
    ```python
    >>> prompts = PromptCache("counting", None, None, None)
    >>> prompts(label="cats") is prompts(label="cats")
    True
    >>> PromptCache("ocr", None, None, None, think=True)()[0]["content"][1]["text"].endswith("</answer> tags.")
    True

    ```
    """

    def __init__(
        self,
        task: str,
        box_format: str | None,
        template: str | None,
        system_prompt: str | None,
        think: bool = False,
    ):
        self.task, self.box_format, self.template, self.system_prompt = (
            task,
            box_format,
            template,
            system_prompt,
        )
        self.think = bool(think)
        self._cache: dict[tuple, list[dict[str, Any]]] = {}

    def __call__(self, **fields: Any) -> list[dict[str, Any]]:
        key = tuple(sorted(fields.items()))
        if key not in self._cache:
            self._cache[key] = build_prompt(
                self.task,
                box_format=self.box_format,
                template=self.template,
                system_prompt=self.system_prompt,
                think=self.think,
                **fields,
            )
        return self._cache[key]


def contract_dataset(
    task: str,
    prompts: list[Any],
    image: Any,
    solutions: list[Any],
    image_sizes: list[list[int]],
    box_format: str | None,
    min_pixels: int | None,
    max_pixels: int | None,
) -> datasets.Dataset:
    """A builder's last step: the row-contract dataset of one task from its picked rows, with the box-format
    options applied (`box_format_columns`), the contract features, and the lazy resize transform (`finalize`).

    Example:
    ```python
    >>> prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR this image."}]}]
    >>> images = image_struct(["page.png"])  # decoded lazily, on access
    >>> ds = contract_dataset("ocr", [prompt], images, ["hi"], [[640, 480]], "qwen2_vl", None, None)
    >>> ds.column_names
    ['prompt', 'image', 'task', 'solution', 'image_size', 'box_format', 'input_size']
    >>> list(ds["task"]), list(ds["solution"]), list(ds["image_size"]), list(ds["input_size"])
    (['ocr'], ['hi'], [[640, 480]], [[644, 476]])

    ```
    """
    solutions, image_sizes, extra = box_format_columns(
        task, solutions, image_sizes, box_format, min_pixels, max_pixels
    )
    columns = {
        "prompt": prompts,
        "image": image,
        "task": [task] * len(prompts),
        "solution": solutions,
        "image_size": image_sizes,
        **extra,
    }
    dataset = rows_to_dataset(columns, row_features(task, with_box_format=box_format is not None))
    return finalize(dataset, box_format, min_pixels, max_pixels)
