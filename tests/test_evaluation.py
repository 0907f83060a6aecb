"""Specification of trl_perception.evaluation and PerceptionEvalCallback: running a model over a perception
dataset, mapping its answers back to original pixels, scoring each task and writing the report."""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
import warnings

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from trl_perception import evaluation
from trl_perception.callbacks import PerceptionEvalCallback
from trl_perception.data.prompts import build_prompt
from trl_perception.data.synthetic import make_synthetic
from trl_perception.evaluation import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationRequest,
    _clean_generation,
    _load_solution,
    add_eval_arguments,
    build_coco_ground_truth,
    evaluate,
    run_eval_from_args,
    vllm_engine_kwargs,
    vllm_sampling_kwargs,
)
from trl_perception.formats import parse_objects, render_objects
from trl_perception.frames import box_format_of, model_input_size, resolve_box_format
from trl_perception.metrics import coco_metrics, grounding_metrics, objects_to_coco_results
from trl_perception.testing import tiny_vlm

TASK_FAMILY = {
    "grounding": "qwen2_vl",
    "counting": "qwen3_vl",
    "ocr": "qwen2_5_vl",
    "detection": "qwen2_5_vl",
}
BOX_FORMATS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _finite_numbers(metrics: dict) -> list[float]:
    return [v for v in metrics.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _perfect(rows, family):
    """A generate_fn that answers every row with its ground truth, written in the model's frame."""

    def generate(requests: list[GenerationRequest]) -> list[str]:
        texts = []
        for r in requests:
            row = rows[r.index]
            solution = _load_solution(r.task, row["solution"])
            if r.task == "ocr":
                texts.append(solution)
                continue
            if r.task == "grounding":
                objects = [solution]
            elif r.task == "counting":
                objects = [{"point_2d": p} for p in solution["points"]]
            else:
                objects = solution
            texts.append(render_objects(objects, family, r.image_size, r.input_size))
        return texts

    return generate


def _scene_rows(task: str) -> list[dict]:
    """Rows of different sizes (and aspect ratios) with large objects, so rounding in any frame stays tiny."""
    rows = []
    for width, height in ((333, 250), (180, 400), (500, 240)):
        image = Image.new("RGB", (width, height), "grey")
        boxes = [
            [0.1 * width, 0.1 * height, 0.5 * width, 0.45 * height],
            [0.55 * width, 0.5 * height, 0.95 * width, 0.9 * height],
        ]
        boxes = [[round(v, 1) for v in box] for box in boxes]
        if task == "grounding":
            solution, prompt = boxes[0], build_prompt("grounding", question="grey box")
        else:
            solution = [{"bbox_2d": box, "label": name} for box, name in zip(boxes, ("cat", "dog"))]
            prompt = build_prompt("detection", categories="cat, dog")
        rows.append(
            {
                "prompt": prompt,
                "image": image,
                "task": task,
                "solution": solution,
                "image_size": [width, height],
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# End to end with tiny offline models


@pytest.mark.parametrize("task", list(TASK_FAMILY))
def test_tiny_model_evaluation_writes_all_outputs_and_finite_metrics(task, tmp_path):
    family = TASK_FAMILY[task]
    dataset = make_synthetic(task, 3, seed=0, box_format=family)

    result = evaluate(tiny_vlm(family), dataset, max_new_tokens=6, output_dir=tmp_path, progress=False)

    assert set(result.metrics) == {task}
    assert result.metrics[task]["num_samples"] == 3
    assert all(math.isfinite(v) for v in _finite_numbers(result.metrics[task]))
    assert set(result.files) == {"predictions", "metrics", "report", "report_image"}
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(r["task"] == task and isinstance(r["text"], str) and "solution" in r for r in records)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"][task]["num_samples"] == 3
    assert saved["config"]["box_format"] == family and saved["config"]["backend"] == "transformers"
    report = (tmp_path / "report.md").read_text()
    assert f"## {task}" in report and "| metric | value |" in report and "(report.png)" in report
    assert Image.open(tmp_path / "report.png").size[0] > 0


def test_box_format_is_read_from_the_model_config():
    assert box_format_of(tiny_vlm("qwen3_vl")) == "qwen3_vl"
    assert resolve_box_format("qwen2_5_vl", tiny_vlm("qwen2_vl")) == "qwen2_5_vl"
    with pytest.raises(ValueError, match="box_format"):
        resolve_box_format("llava")


def test_image_is_fed_at_its_grid_size_within_the_processor_limits():
    # the tiny processors cap images at 112*112 pixels: a 300x200 image is fitted once, and the processor
    # then feeds it unchanged (no "fed the image at" warning), so the recorded model frame is exact
    rows = [{"prompt": build_prompt("grounding", question="x"), "image": Image.new("RGB", (300, 200)),
             "task": "grounding", "solution": [10, 10, 50, 50], "image_size": [300, 200]}]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = evaluate(tiny_vlm("qwen2_5_vl"), rows, max_new_tokens=2, progress=False)

    expected = model_input_size((300, 200), "qwen2_5_vl", min_pixels=28 * 28, max_pixels=112 * 112)
    assert result.predictions[0]["input_size"] == list(expected)
    assert (result.config["min_pixels"], result.config["max_pixels"]) == (28 * 28, 112 * 112)


def test_transformers_backend_keeps_qwen2_vl_box_tokens_and_left_pads_the_batch(monkeypatch):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_vlm("qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    rows = [
        {"prompt": build_prompt("grounding", question=q), "image": Image.new("RGB", size), "task": "grounding",
         "solution": [0.1 * size[0], 0.2 * size[1], 0.5 * size[0], 0.6 * size[1]], "image_size": list(size)}
        for q, size in (("cat", (200, 100)), ("the dog on the left of the red car", (90, 160)))
    ]  # fmt: skip
    answer = "<|object_ref_start|>x<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|><|im_end|>"
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    seen = {}

    def fake_generate(input_ids, attention_mask, **kwargs):
        seen.update(kwargs, attention_mask=attention_mask)
        pad = torch.zeros((input_ids.shape[0], 2), dtype=input_ids.dtype)  # <|endoftext|> padding after eos
        return torch.cat([input_ids, answer_ids.expand(input_ids.shape[0], -1), pad], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    result = evaluate(model, rows, processor=processor, max_new_tokens=30, progress=False, num_visual=0)

    assert result.predictions[0]["text"] == answer.removesuffix("<|im_end|>")
    assert result.metrics["grounding"]["mean_iou"] == pytest.approx(1.0)
    mask = seen["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()  # left padding: every prompt ends at the last column
    assert seen["do_sample"] is False and seen["max_new_tokens"] == 30


def test_generation_kwargs_and_per_task_token_budgets_reach_generate(monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_vlm("qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(path)
    calls = []
    original = model.generate

    def spy(**kwargs):
        calls.append({k: v for k, v in kwargs.items() if k in ("max_new_tokens", "do_sample", "top_p")})
        kwargs["max_new_tokens"] = 1
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    rows = [dict(r) for r in make_synthetic("ocr", 1, box_format="qwen2_5_vl")]
    evaluate(model, rows, processor=AutoProcessor.from_pretrained(path), progress=False,
             generation_kwargs={"do_sample": True, "top_p": 0.5})  # fmt: skip

    assert calls == [{"max_new_tokens": DEFAULT_MAX_NEW_TOKENS["ocr"], "do_sample": True, "top_p": 0.5}]


def test_cli_arguments_evaluate_a_synthetic_source(tmp_path, capsys):
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", tiny_vlm("qwen3_vl"), "--task", "grounding", "--source", "synthetic", "--num-samples", "2",
         "--max-new-tokens", "3", "--output-dir", str(tmp_path), "--no-progress", "--num-visual", "1"]
    )  # fmt: skip

    result = run_eval_from_args(args)

    assert result.metrics["grounding"]["num_samples"] == 2
    assert "grounding/acc@0.5" in capsys.readouterr().out
    assert (tmp_path / "metrics.json").exists()


# --------------------------------------------------------------------------------------------------
# Bad output never crashes


@pytest.mark.parametrize("task", list(TASK_FAMILY))
@pytest.mark.parametrize("answer", ["", "I cannot tell.", '[{"bbox_2d": [1, 2', "<|box_start|>(1,2"])
def test_empty_or_unparseable_answers_score_zero(task, answer):
    dataset = make_synthetic(task, 2, seed=1, box_format=TASK_FAMILY[task])

    result = evaluate(None, dataset, generate_fn=lambda requests: [answer] * len(requests), progress=False)

    metrics = result.metrics[task]
    if task == "grounding":
        assert metrics["mean_iou"] == metrics["acc@0.5"] == metrics["center_acc"] == 0.0
    elif task == "counting":
        assert metrics["accuracy"] == 0.0 and metrics["num_unparsed"] == 2
    elif task == "ocr":
        assert metrics["f1"] == 0.0 and metrics["edit_distance"] > 0.5
    else:
        assert metrics["AP"] == metrics["AP50"] == 0.0 and metrics["num_predictions"] == 0


_TOKENS = st.sampled_from(
    ["<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|im_end|>", "[", "]", "{",
     "}", '"bbox_2d":', '"label":', '"point_2d":', "(", ")", ",", "-3", "1e400", "NaN", "12", "999", "cat", "```"]
)  # fmt: skip
_HYPOTHESIS_ROWS = [
    dict(row)
    for task in ("grounding", "counting", "detection", "ocr")
    for row in make_synthetic(task, 1, seed=3)
]


@settings(max_examples=40)
@given(st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=30).map("".join))
def test_any_model_text_gives_bounded_metrics(text):
    result = evaluate(
        None, _HYPOTHESIS_ROWS, box_format="qwen2_5_vl", generate_fn=lambda r: [text] * len(r), progress=False
    )

    assert 0.0 <= result.metrics["grounding"]["mean_iou"] <= 1.0
    assert result.metrics["counting"]["mae"] >= 0.0
    assert 0.0 <= result.metrics["ocr"]["edit_distance"] <= 1.0
    assert -1.0 <= result.metrics["detection"]["AP"] <= 1.0


@given(st.text(max_size=40), st.sampled_from(["<|im_end|>", "<|endoftext|>"]), st.text(max_size=20))
def test_decoded_text_is_cut_at_the_first_end_of_turn(head, stop, tail):
    assume("<|" not in head)

    assert _clean_generation(head + stop + tail) == head.strip()


def test_mixed_task_json_solutions_are_decoded_and_scored_per_task():
    dataset = make_synthetic("mixed", 12, seed=0, box_format="qwen3_vl")
    rows = list(dataset)

    result = evaluate(None, dataset, generate_fn=_perfect(rows, "qwen3_vl"), progress=False)

    assert set(result.metrics) == {r["task"] for r in rows}
    assert result.metrics.get("counting", {"accuracy": 1.0})["accuracy"] == 1.0
    assert result.metrics.get("ocr", {"f1": 1.0})["f1"] == 1.0


def test_ocr_solution_of_a_mixed_dataset_is_unquoted():
    assert _load_solution("ocr", json.dumps("STOP here")) == "STOP here"
    assert _load_solution("ocr", "plain page text") == "plain page text"


# --------------------------------------------------------------------------------------------------
# Frames: answers in the model's frame are mapped back to original pixels


@pytest.mark.parametrize("family", BOX_FORMATS)
def test_perfect_answers_in_the_model_frame_score_full_marks_after_mapping_back(family):
    detection, grounding = _scene_rows("detection"), _scene_rows("grounding")
    limits = {"max_pixels": 200 * 200} if family != "qwen3_vl" else {"min_pixels": 256 * 256}

    det = evaluate(
        None, detection, box_format=family, generate_fn=_perfect(detection, family), progress=False, **limits
    )
    ground = evaluate(None, grounding, box_format=family, generate_fn=_perfect(grounding, family), progress=False, **limits)  # fmt: skip

    assert len({tuple(p["input_size"]) for p in det.predictions}) == 3  # three different model frames
    assert any(p["input_size"] != p["image_size"] for p in det.predictions)
    assert det.metrics["detection"]["AP"] == pytest.approx(1.0)
    assert ground.metrics["grounding"]["mean_iou"] > 0.98
    assert ground.metrics["grounding"]["acc@0.95"] == 1.0


@pytest.mark.parametrize("family", BOX_FORMATS)
def test_the_same_answers_left_unmapped_would_not_score_full_marks(family):
    detection, grounding = _scene_rows("detection"), _scene_rows("grounding")
    limits = {"max_pixels": 200 * 200} if family != "qwen3_vl" else {"min_pixels": 256 * 256}
    det = evaluate(
        None, detection, box_format=family, generate_fn=_perfect(detection, family), progress=False, **limits
    )
    ground = evaluate(None, grounding, box_format=family, generate_fn=_perfect(grounding, family), progress=False, **limits)  # fmt: skip

    gt, label_to_id = build_coco_ground_truth(detection)
    unmapped = []
    for p in det.predictions:
        unmapped += objects_to_coco_results(
            p["index"] + 1, parse_objects(p["text"], family).objects, label_to_id
        )[0]
    raw_boxes = [parse_objects(p["text"], family).objects[0].bbox for p in ground.predictions]

    assert coco_metrics(gt, unmapped)["AP"] < 0.5
    assert grounding_metrics(raw_boxes, [r["solution"] for r in grounding])["acc@0.95"] == 0.0


def test_row_input_size_follows_the_resize_the_evaluation_applied():
    rows = _scene_rows("grounding")
    result = evaluate(None, rows, box_format="qwen2_5_vl", max_pixels=100 * 100,
                      generate_fn=lambda r: [""] * len(r), progress=False)  # fmt: skip

    for row, prediction in zip(rows, result.predictions):
        assert prediction["image_size"] == row["image_size"]
        assert prediction["input_size"] == list(
            model_input_size(row["image_size"], "qwen2_5_vl", max_pixels=100 * 100)
        )


# --------------------------------------------------------------------------------------------------
# Detection ground truth (no dropped image)


def test_every_detection_image_is_in_the_coco_ground_truth():
    rows = _scene_rows("detection")

    gt, label_to_id = build_coco_ground_truth(rows)

    assert [image["id"] for image in gt["images"]] == [1, 2, 3]
    assert len(gt["annotations"]) == 6 and label_to_id == {"cat": 1, "dog": 2}


def test_missing_the_last_image_costs_recall():
    # PR1's evaluator dropped the last image; here its objects count, so answering nothing for it costs AP
    rows = _scene_rows("detection")
    perfect = _perfect(rows, "qwen2_vl")

    def all_but_last(requests):
        return [text if r.index < len(rows) - 1 else "[]" for r, text in zip(requests, perfect(requests))]

    result = evaluate(None, rows, box_format="qwen2_vl", generate_fn=all_but_last, progress=False)

    assert result.metrics["detection"]["AR100"] == pytest.approx(4 / 6)


def test_category_ids_follow_a_given_list_then_unlisted_labels():
    gt, label_to_id = build_coco_ground_truth(_scene_rows("detection"), categories=["person", "dog"])

    assert label_to_id == {"person": 1, "dog": 2, "cat": 3}
    assert [c["name"] for c in gt["categories"]] == ["person", "dog", "cat"]


def test_category_list_carried_by_the_dataset_sets_the_ids():
    import datasets

    rows = _scene_rows("detection")
    info = datasets.DatasetInfo(description=json.dumps({"categories": ["dog", "bird", "cat"]}))
    dataset = datasets.Dataset.from_list(
        [{k: v for k, v in r.items() if k != "image"} for r in rows], info=info
    )

    _, label_to_id = build_coco_ground_truth(list(dataset), dataset=dataset)

    assert label_to_id == {"dog": 1, "bird": 2, "cat": 3}


def test_crowd_regions_and_mask_areas_of_the_rows_reach_the_coco_ground_truth():
    rows = [{"task": "detection", "image_size": [100, 100], "solution": [
        {"bbox_2d": [0, 0, 50, 50], "label": "person", "iscrowd": 1, "area": 1234.5}]}]  # fmt: skip

    gt, _ = build_coco_ground_truth(rows)

    assert (gt["annotations"][0]["iscrowd"], gt["annotations"][0]["area"]) == (1, 1234.5)


def test_labels_outside_the_vocabulary_are_counted_not_scored():
    rows = _scene_rows("detection")
    answer = '[{"bbox_2d": [1, 1, 50, 50], "label": "unicorn"}]'

    result = evaluate(
        None, rows, box_format="qwen2_5_vl", generate_fn=lambda r: [answer] * len(r), progress=False
    )

    assert result.metrics["detection"]["objects_dropped"]["unknown_label"] == 3
    assert result.metrics["detection"]["num_predictions"] == 0


# --------------------------------------------------------------------------------------------------
# vLLM (not installed here: a stand-in module records what we pass)


class _FakeVLLM(types.ModuleType):
    def __init__(self):
        super().__init__("vllm")
        self.engine_kwargs, self.sampling = None, []
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.engine_kwargs = kwargs

            def generate(self, inputs, sampling_params, use_tqdm=False):
                assert len(inputs) == len(sampling_params)
                assert all(set(i) == {"prompt", "multi_modal_data"} for i in inputs)
                fake.images = [i["multi_modal_data"]["image"] for i in inputs]
                output = types.SimpleNamespace(text="<|box_start|>(0,0),(500,500)<|box_end|>")
                return [types.SimpleNamespace(outputs=[output]) for _ in inputs]

        class SamplingParams:
            def __init__(self, **kwargs):
                fake.sampling.append(kwargs)

        self.LLM, self.SamplingParams = LLM, SamplingParams


def test_vllm_backend_gets_our_pixel_limits_and_greedy_sampling(monkeypatch):
    import trl  # noqa: F401  (imported before the stand-in: trl probes vllm's import spec once)

    tiny_vlm("qwen2_vl")  # built before the stand-in too
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    dataset = make_synthetic("grounding", 3, seed=0, box_format="qwen2_vl", image_size=(150, 90))

    result = evaluate(tiny_vlm("qwen2_vl"), dataset, backend="vllm", max_pixels=56 * 56, max_new_tokens=64, progress=False)  # fmt: skip

    assert fake.engine_kwargs["model"] == tiny_vlm("qwen2_vl")
    assert fake.engine_kwargs["mm_processor_kwargs"] == {"size": {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}}
    assert fake.sampling == [{"temperature": 0.0, "max_tokens": 64, "skip_special_tokens": False}] * 3
    assert all(image.size[0] * image.size[1] <= 56 * 56 for image in fake.images)
    assert result.config["backend"] == "vllm" and result.metrics["grounding"]["num_missing"] == 0


def test_auto_backend_picks_vllm_only_when_it_is_importable(monkeypatch):
    import trl_perception.evaluation as evaluation

    assert evaluation._choose_backend("auto", "some/path") == (
        "vllm" if evaluation.importlib.util.find_spec("vllm") else "transformers"
    )
    monkeypatch.setattr(evaluation.importlib.util, "find_spec", lambda name: object())
    assert evaluation._choose_backend("auto", "some/path") == "vllm"
    assert evaluation._choose_backend("auto", object()) == "transformers"  # a loaded model stays in-process
    with pytest.raises(ValueError, match="checkpoint path"):
        evaluation._choose_backend("vllm", object())


def test_vllm_sampling_keeps_special_tokens_only_where_box_tokens_live():
    assert vllm_sampling_kwargs("qwen2_vl", "counting", 8)["skip_special_tokens"] is False
    assert vllm_sampling_kwargs("qwen2_vl", "ocr", 8)["skip_special_tokens"] is True
    assert vllm_sampling_kwargs("qwen2_5_vl", "detection", 8)["skip_special_tokens"] is True
    sampled = vllm_sampling_kwargs(
        "qwen3_vl", "grounding", 8, {"do_sample": True, "temperature": 0.7, "top_k": 5}
    )
    assert (sampled["temperature"], sampled["top_k"], sampled["max_tokens"]) == (0.7, 5, 8)
    assert vllm_engine_kwargs("m", None, None) == {"model": "m", "limit_mm_per_prompt": {"image": 1, "video": 0}}


# --------------------------------------------------------------------------------------------------
# PerceptionEvalCallback


def test_callback_evaluates_every_n_steps_with_the_trainer_model_and_restores_train_mode():
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerControl, TrainerState

    path = tiny_vlm("qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(path).train()
    processor = AutoProcessor.from_pretrained(path)
    dataset = make_synthetic("grounding", 5, seed=0, box_format="qwen2_5_vl")
    callback = PerceptionEvalCallback(dataset, eval_steps=2, num_samples=2, max_new_tokens=2)
    state = TrainerState()

    with pytest.warns(UserWarning, match="no trainer"):
        for step in (1, 2, 3):
            state.global_step = step
            callback.on_step_end(None, state, TrainerControl(), model=model, processing_class=processor)

    assert [h["step"] for h in callback.history] == [2]
    assert "eval_perception/grounding/acc@0.5" in callback.history[0]
    assert callback.history[0]["eval_perception/grounding/num_samples"] == 2.0
    assert state.log_history[-1]["step"] == 2
    assert model.training


def test_perception_trainer_hands_itself_to_its_eval_callbacks(tmp_path):
    from trl_perception.trainer import PerceptionGRPOConfig, PerceptionGRPOTrainer

    holdout = make_synthetic("counting", 2, seed=1)
    given, added = PerceptionEvalCallback(holdout), PerceptionEvalCallback(holdout)
    args = PerceptionGRPOConfig(str(tmp_path), use_cpu=True, report_to="none", num_generations=2,
                                per_device_train_batch_size=2, max_completion_length=4, max_pixels=56 * 56)  # fmt: skip
    trainer = PerceptionGRPOTrainer(tiny_vlm("qwen2_5_vl"), completion_length_reward, args,
                                    train_dataset=make_synthetic("grounding", 2), callbacks=[given])  # fmt: skip
    trainer.add_callback(added)

    assert given.trainer is trainer and added.trainer is trainer


def test_peft_wrapped_model_is_evaluated_with_its_base_family():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_vlm("qwen3_vl")
    base = AutoModelForImageTextToText.from_pretrained(path)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))

    result = evaluate(model, make_synthetic("counting", 2, box_format="qwen3_vl"),
                      processor=AutoProcessor.from_pretrained(path), max_new_tokens=2, progress=False)  # fmt: skip

    assert box_format_of(model) == "qwen3_vl"
    assert result.config["box_format"] == "qwen3_vl" and result.metrics["counting"]["num_samples"] == 2


def completion_length_reward(completions, **kwargs):
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


@pytest.mark.slow
def test_callback_logs_metrics_during_a_two_step_grpo_run(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    train = make_synthetic("grounding", 2, seed=0, box_format="qwen2_5_vl")
    holdout = make_synthetic("counting", 4, seed=1, box_format="qwen2_5_vl")
    callback = PerceptionEvalCallback(holdout, eval_steps=1, num_samples=2, max_new_tokens=3,
                                      output_dir=tmp_path / "evals")  # fmt: skip
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=2, num_generations=2,
        per_device_train_batch_size=2, max_completion_length=4, logging_steps=1, save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=tiny_vlm("qwen2_5_vl"), reward_funcs=completion_length_reward, args=args,
                          train_dataset=train, callbacks=[callback])  # fmt: skip
    callback.bind(trainer)  # a plain GRPOTrainer does not hand itself to the callback

    trainer.train()

    logged = [log for log in trainer.state.log_history if "eval_perception/counting/accuracy" in log]
    assert [log["step"] for log in logged] == [1, 2]
    assert all("epoch" in log for log in logged)  # logged by Trainer.log, not appended behind its back
    assert [h["step"] for h in callback.history] == [1, 2]
    # GRPO's own logs are untouched: a training log at every step, evaluation steps included.
    assert [log["step"] for log in trainer.state.log_history if "reward" in log] == [1, 2]
    assert (tmp_path / "evals" / "step-2" / "report.md").exists()


# --------------------------------------------------------------------------------------------------
# A model's answer never loses a run's outputs


# Characters that broke predictions.jsonl (lone surrogates) or Pillow's text layout (the rest).
HOSTILE_LABELS = ["cat\ud800", "\udfffdog", "cat\rdog", "a\x1cb\x1dc\x1e", "cat\x85", "cat\u2029dog", "cat\u2028",
                  "\x00\x07\x1b[31mred", "tab\tcat\n", "pipe | cat", "😀\u200d"]  # fmt: skip


def _detection_rows(n: int = 2, label: str = "cat") -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({"prompt": build_prompt("detection", categories="cat, dog"), "image": Image.new("RGB", (64, 48)),
                     "task": "detection", "image_size": [64, 48],
                     "solution": [{"bbox_2d": [4.0 + i, 4.0, 40.0, 30.0], "label": label}]})  # fmt: skip
    return rows


def _answer_with_label(label: str):
    # As a model writes it: JSON text, so "\ud800" arrives as the six characters `\ud800`.
    text = json.dumps([{"bbox_2d": [4, 4, 40, 30], "label": label}])
    return lambda requests: [text] * len(requests)


def _assert_every_output_written(out, rows: int) -> list[dict]:
    raw = (out / "predictions.jsonl").read_bytes().decode("utf-8")  # strict UTF-8: no lone surrogate
    assert len(raw.splitlines()) == rows  # no Unicode line break left raw inside a record
    records = [json.loads(line) for line in raw.splitlines()]
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["config"]["num_samples"] == rows
    assert (out / "report.md").is_file()
    return records


@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_hostile_labels_in_answers_and_ground_truth_keep_every_output(label, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a picture is lost: no warning either
        result = evaluate(None, _detection_rows(2, label), box_format="qwen2_5_vl",
                          generate_fn=_answer_with_label(label), output_dir=tmp_path, progress=False)  # fmt: skip

    records = _assert_every_output_written(tmp_path, 2)
    assert Image.open(tmp_path / "report.png").size[0] > 0
    assert result.files["report_image"] == str(tmp_path / "report.png")
    written = records[0]["objects"][0]["label"]
    assert written.encode("utf-8") and written.replace("\ufffd", "") == label.encode("utf-8", "ignore").decode().strip()
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    for line in report.splitlines():  # every table row stays one row with its two cells
        if line.startswith("| ") and "AP |" not in line and "value |" not in line:
            assert line.replace("\\|", "").count("|") == 3, line


def test_a_lone_surrogate_label_matches_no_category_but_scores_the_rest(tmp_path):
    answer = json.dumps([{"bbox_2d": [4, 4, 40, 30], "label": "cat\ud800"}, {"bbox_2d": [4, 4, 40, 30], "label": "cat"}])
    result = evaluate(None, _detection_rows(1), box_format="qwen2_5_vl", generate_fn=lambda r: [answer] * len(r),
                      output_dir=tmp_path, progress=False)  # fmt: skip
    assert result.metrics["detection"]["objects_dropped"]["unknown_label"] == 1
    assert result.metrics["detection"]["AP50"] == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(label=st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12),
       text=st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20))  # fmt: skip
def test_any_label_or_text_leaves_every_output_written(tmp_path_factory, label, text):
    out = tmp_path_factory.mktemp("eval")
    answers = [json.dumps([{"bbox_2d": [4, 4, 40, 30], "label": label}]), text]
    result = evaluate(None, _detection_rows(2, label), box_format="qwen2_5_vl",
                      generate_fn=lambda requests: answers[: len(requests)], output_dir=out, batch_size=2,
                      progress=False)  # fmt: skip
    _assert_every_output_written(out, 2)
    assert "report_image" in result.files


def test_a_picture_that_fails_is_a_warning_and_nothing_else_is_lost(tmp_path, monkeypatch):
    def broken_grid(*args, **kwargs):
        raise RuntimeError("raqm_layout() failed")

    monkeypatch.setattr(evaluation, "image_grid", broken_grid)
    with pytest.warns(UserWarning, match="report.png could not be written"):
        result = evaluate(None, _detection_rows(2), box_format="qwen2_5_vl", generate_fn=_answer_with_label("cat"),
                          output_dir=tmp_path, progress=False)  # fmt: skip

    _assert_every_output_written(tmp_path, 2)
    assert not (tmp_path / "report.png").exists() and "report_image" not in result.files
    assert "report.png" not in (tmp_path / "report.md").read_text()
    assert result.metrics["detection"]["AP50"] == pytest.approx(1.0)


def test_one_row_that_cannot_be_drawn_leaves_an_empty_cell(tmp_path, monkeypatch):
    calls = []

    def draw_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("cannot draw")
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(evaluation, "draw_objects", draw_once)
    with pytest.warns(UserWarning, match="row 0 could not be drawn"):
        evaluate(None, _detection_rows(2), box_format="qwen2_5_vl", generate_fn=_answer_with_label("cat"),
                 output_dir=tmp_path, progress=False)  # fmt: skip
    assert (tmp_path / "report.png").is_file()


def test_an_output_dir_that_is_a_file_fails_before_any_generation(tmp_path):
    calls = []
    target = tmp_path / "taken"
    target.write_text("not a folder")

    def generate(requests):
        calls.append(len(requests))
        return [""] * len(requests)

    with pytest.raises(NotADirectoryError, match="taken"):
        evaluate(None, _detection_rows(2), generate_fn=generate, output_dir=target, progress=False)
    assert calls == [] and target.read_text() == "not a folder"


def test_rows_scored_before_a_crash_are_already_in_predictions_jsonl(tmp_path):
    def generate(requests):
        if requests[0].index >= 2:
            raise RuntimeError("CUDA out of memory")
        return [json.dumps([{"bbox_2d": [4, 4, 40, 30], "label": "cat"}])] * len(requests)

    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate(None, _detection_rows(4), box_format="qwen2_5_vl", generate_fn=generate, batch_size=2,
                 output_dir=tmp_path, progress=False)  # fmt: skip
    lines = (tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]


def test_every_task_has_an_evaluation_and_a_generation_budget():
    # The one table new tasks are added to (scoring, metrics, caption, picture) and their token budget.
    assert set(evaluation._TASK_EVALUATIONS) <= set(DEFAULT_MAX_NEW_TOKENS)
    assert {"grounding", "counting", "ocr", "detection"} <= set(evaluation._TASK_EVALUATIONS)


def test_rows_of_a_task_without_an_evaluation_are_refused_by_name():
    row = dict(_detection_rows(1)[0], task="segmentation")
    with pytest.raises(ValueError, match="no evaluation for task 'segmentation'"):
        evaluate(None, [row], generate_fn=lambda r: [""] * len(r), progress=False)
