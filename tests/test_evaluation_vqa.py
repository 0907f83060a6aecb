"""Evaluation of the VQA ("look again") task: single-turn accuracy, the two-turn loop with a crop turn (greedy,
transformers), the crop statistics, and `trl-perception eval --task vqa --crop-turns 1`."""

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.test_cli import run
from trl_perception.crop import CropRecord
from trl_perception.data.synthetic import make_synthetic
from trl_perception.evaluation import CropTurnsOutput, evaluate
from trl_perception.frames import model_input_size
from trl_perception.metrics import crop_metrics
from trl_perception.testing import tiny_vlm

BUDGET = {"min_pixels": 1024, "max_pixels": 16384}
CROP = {"crop_min_pixels": 1024, "crop_max_pixels": 16384}


def rows(box_format="qwen3_vl", n=4, seed=0):
    return make_synthetic("vqa", n, seed=seed, image_size=(512, 384), box_format=box_format)


def answers(ds):
    return ds.select_columns(["solution"])["solution"]


def test_single_turn_accuracy_is_the_rewards_judgement():
    ds = rows()
    truth = answers(ds)
    texts = [f"\\boxed{{{truth[0]}}}", "A B C D", f"Answer: ({truth[2].lower()})", "I cannot see it."]
    result = evaluate(None, ds, box_format="qwen3_vl", generate_fn=lambda reqs: texts[: len(reqs)], progress=False,
                      batch_size=4, **BUDGET)  # fmt: skip
    metrics = result.metrics["vqa"]
    assert metrics["accuracy"] == 0.5 and metrics["num_samples"] == 4 and metrics["num_unparsed"] == 2
    assert [p["correct"] for p in result.predictions] == [True, False, True, False]
    assert "crop_accuracy" not in metrics and "crop" not in result.predictions[0]


def test_crop_turn_metrics_from_a_scripted_two_turn_generator(tmp_path):
    ds = rows(n=4)
    truth = answers(ds)
    boxes = ds.select_columns(["target_box"])["target_box"]

    def two_turns(items):
        out = []
        for item in items:
            i = item.request.index
            x1, y1, x2, y2 = item.target_box
            if i == 0:  # a crop around the target, then the right answer
                records = [
                    CropRecord(True, (int(x1) - 30, int(y1) - 30, int(x2) + 30, int(y2) + 30), "", 0.05, 0.02)
                ]
                text = f"\\boxed{{{truth[i]}}}"
            elif i == 1:  # a crop beside the target
                records = [CropRecord(True, (0, 0, 40, 40), "", 0.01, 0.0)]
                text = "\\boxed{A}"
            elif i == 2:  # an invalid box
                records = [CropRecord(False, None, "coordinates outside the image", None, None)]
                text = f"\\boxed{{{truth[i]}}}"
            else:  # no tool call: MGPO's forced second turn
                records = [CropRecord(False, None, "no box was given", None, None, forced=True)]
                text = "no idea"
            out.append(CropTurnsOutput(text=text, turns=["turn 1", text], records=records))
        return out

    result = evaluate(None, ds, box_format="qwen3_vl", generate_fn=lambda reqs: ["\\boxed{Z}"] * len(reqs),
                      crop_turns=1, crop_generate_fn=two_turns, progress=False, output_dir=tmp_path, **BUDGET)  # fmt: skip
    metrics = result.metrics["vqa"]
    expected_two_turn = (1 + (truth[1] == "A") + 1 + 0) / 4
    assert metrics["accuracy"] == 0.0 and metrics["crop_accuracy"] == expected_two_turn
    assert metrics["crop_accuracy_gain"] == expected_two_turn
    assert metrics["crop_rate"] == 0.5 and metrics["call_rate"] == 0.75 and metrics["forced_rate"] == 0.25
    assert metrics["invalid_rate"] == pytest.approx(1 / 3)  # row 2's box, of the model's 3 calls
    assert metrics["mean_crop_area"] == pytest.approx(0.03) and metrics["mean_iou"] == pytest.approx(0.01)
    assert metrics["target_inside"] == 0.5  # row 0's crop holds its target, row 1's does not
    assert metrics == {**metrics, **{k: v for k, v in crop_metrics(
        [p["crop"]["records"] for p in result.predictions], boxes).items() if k != "num_samples"}}  # fmt: skip
    lines = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert (
        lines[0]["crop"]["turns"] == ["turn 1", f"\\boxed{{{truth[0]}}}"]
        and lines[0]["objects"][0]["label"] == "crop"
    )
    assert "crop_accuracy" in (tmp_path / "report.md").read_text()


def test_crop_turns_are_checked():
    ds = rows(n=1)
    with pytest.raises(ValueError, match="crop_generate_fn"):
        evaluate(None, ds, generate_fn=lambda reqs: ["A"], crop_turns=1, progress=False)
    for turns in (-1, 2, True):
        with pytest.raises(ValueError, match="0 or 1"):
            evaluate(None, ds, generate_fn=lambda reqs: ["A"], crop_turns=turns, progress=False)


def load(box_format):
    path = tiny_vlm(box_format)
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


@pytest.mark.parametrize("box_format", ["qwen3_vl", "qwen2_5_vl"])
def test_the_two_turn_loop_runs_a_real_model_and_forces_the_second_turn(box_format):
    model, processor = load(box_format)
    result = evaluate(model, rows(box_format, n=2), processor=processor, max_new_tokens=8, crop_turns=1,
                      progress=False, batch_size=2, **BUDGET, **CROP)  # fmt: skip
    with_call = 0
    for record in result.predictions:
        crop = record["crop"]
        assert crop["text"] == crop["turns"][-1].strip()
        # A second turn follows a call: the model's own, or MGPO's forced one after a first turn that ended
        # without a call; a first turn cut at max_new_tokens has no room for one, as in training.
        assert len(crop["turns"]) == 1 + len(crop["records"]) and len(crop["records"]) <= 1
        with_call += len(crop["records"])
    metrics = result.metrics["vqa"]
    assert metrics["call_rate"] + metrics["forced_rate"] == with_call / 2


class ScriptedGenerate:
    """Replaces `model.generate`: appends scripted token ids (turn 1: a crop_image call; turn 2: an answer)."""

    def __init__(self, model, tokenizer, turns):
        self.model, self.tokenizer, self.turns, self.calls, self.images = model, tokenizer, turns, 0, []

    def __call__(self, input_ids, **kwargs):
        texts = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        self.images.append(
            None if kwargs.get("image_grid_thw") is None else kwargs["image_grid_thw"].shape[0]
        )
        new = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        width = max(len(ids) for ids in new)
        pad = self.tokenizer.pad_token_id
        tail = torch.tensor([ids + [pad] * (width - len(ids)) for ids in new])
        return torch.cat([input_ids, tail], dim=1)


@pytest.mark.parametrize("box_format", ["qwen3_vl", "qwen2_5_vl"])
def test_a_scripted_crop_reaches_the_second_turn_and_is_scored(box_format):
    """Turn 1 calls crop_image with a box around the target in the family's frame (0-1000 for Qwen3-VL, input
    pixels for Qwen2.5-VL with the library's tool template); the crop and the turn-2 text go back to the model with
    the image; turn 2 answers. Greedy, deterministic."""
    model, processor = load(box_format)
    ds = rows(box_format, n=2, seed=3)
    truth, boxes = answers(ds), ds.select_columns(["target_box"])["target_box"]
    width, height = (1000, 1000) if box_format == "qwen3_vl" else model_input_size((512, 384), box_format, **BUDGET)
    calls = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2 / 512 * width, (y1 + y2) / 2 / 384 * height
        side_x, side_y = width // 2, height // 2  # well over 28 input pixels a side
        left = int(min(max(cx - side_x / 2, 0), width - side_x))
        top = int(min(max(cy - side_y / 2, 0), height - side_y))
        call = json.dumps({"name": "crop_image", "arguments": {"bbox_2d": [left, top, left + side_x, top + side_y]}})
        calls.append(f"<tool_call>\n{call}\n</tool_call><|im_end|>")
    single = ["\\boxed{Z}<|im_end|>"] * 2
    final = [f"It is clear now. \\boxed{{{t}}}<|im_end|>" for t in truth]
    scripted = ScriptedGenerate(model, processor.tokenizer, [single, calls, final])
    model.generate = scripted
    result = evaluate(model, ds, processor=processor, max_new_tokens=64, crop_turns=1, progress=False, batch_size=2,
                      **BUDGET, **CROP)  # fmt: skip
    metrics = result.metrics["vqa"]
    assert metrics["accuracy"] == 0.0 and metrics["crop_accuracy"] == 1.0 and metrics["crop_rate"] == 1.0
    assert metrics["target_inside"] == 1.0 and metrics["invalid_rate"] == 0.0 and metrics["call_rate"] == 1.0
    assert scripted.images == [2, 2, 4]  # turn 2 sees each row's image and its crop
    assert processor.chat_template == AutoProcessor.from_pretrained(tiny_vlm(box_format)).chat_template  # untouched
    for record, target in zip(result.predictions, boxes):
        (crop,) = record["crop"]["records"]
        x1, y1, x2, y2 = crop["box"]
        assert x1 <= target[0] and y1 <= target[1] and target[2] <= x2 and target[3] <= y2
        assert crop["area_fraction"] == pytest.approx((x2 - x1) * (y2 - y1) / (512 * 384))


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "grounding", "--crop-turns", "1"], "--crop-turns applies to --task vqa"),
        (["--task", "vqa", "--crop-turns", "-1"], "--crop-turns must be 0 or 1"),
        (["--task", "vqa", "--crop-turns", "2"], "--crop-turns must be 0 or 1"),
        (["--task", "vqa", "--crop-turns", "1", "--backend", "vllm"], "--backend"),
        (["--task", "vqa", "--crop-min-pixels", "5000"], "need --crop-turns"),
        (
            ["--task", "vqa", "--crop-turns", "1", "--crop-min-pixels", "9000", "--crop-max-pixels", "4000"],
            "exceeds",
        ),
    ],
)
def test_cli_crop_errors_are_one_line(capsys, tmp_path, extra, message):
    model = tiny_vlm("qwen3_vl")
    capsys.readouterr()  # building the tiny checkpoint may print progress
    status, _, err = run(capsys, "eval", "--model", model, "--output-dir", str(tmp_path), *extra)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_evaluates_vqa_with_a_crop_turn(capsys, tmp_path):
    status, out, _ = run(capsys, "eval", "--model", tiny_vlm("qwen3_vl"), "--task", "vqa", "--num-samples", "2",
                         "--source-option", "image_size=[512, 384]", "--min-pixels", "1024", "--max-pixels", "16384",
                         "--crop-turns", "1", "--crop-min-pixels", "1024", "--crop-max-pixels", "16384",
                         "--max-new-tokens", "4", "--output-dir", str(tmp_path), "--no-progress")  # fmt: skip
    assert status == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"accuracy", "crop_accuracy", "crop_rate", "invalid_rate"} <= set(metrics["metrics"]["vqa"])
    assert metrics["config"]["crop_turns"] == 1 and "vqa/crop_accuracy" in out


def test_the_eval_callback_of_a_trainer_with_crop_turns_evaluates_with_them():
    from types import SimpleNamespace

    from trl_perception.callbacks import PerceptionEvalCallback

    args = SimpleNamespace(crop_turns=1, crop_min_pixels=3136, crop_max_pixels=50176)
    callback = PerceptionEvalCallback([], eval_steps=1).bind(SimpleNamespace(args=args))
    assert callback.evaluate_kwargs == {"crop_turns": 1, "crop_min_pixels": 3136, "crop_max_pixels": 50176}
    own = PerceptionEvalCallback([], eval_steps=1, crop_turns=0).bind(SimpleNamespace(args=args))
    assert own.evaluate_kwargs == {"crop_turns": 0}  # the user's choice stands
    plain = PerceptionEvalCallback([], eval_steps=1).bind(SimpleNamespace(args=SimpleNamespace(crop_turns=0)))
    assert plain.evaluate_kwargs == {}
