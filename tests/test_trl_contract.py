"""The TRL internals `PerceptionGRPOTrainer` and `trl_perception.vllm` rely on. Each test names the hook it guards,
so a TRL upgrade that moves one fails here with a message saying what to re-check, not deep inside training.

`pyproject.toml` pins `trl` to the minors in `TESTED_TRL_MINORS`; bump both together after this file passes.
"""

from __future__ import annotations

import inspect

import pytest
import trl
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer
from trl.generation import vllm_generation

from trl_perception.trainer import PerceptionGRPOTrainer
from trl_perception.vllm import TESTED_TRL_MINORS

# private GRPOTrainer method -> the parameters our override receives and forwards to it
OVERRIDDEN = {
    "_generate": ["self", "prompts"],
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
    "_generate_and_score_completions": ["self", "inputs"],
    "_generate_single_turn": [
        "self", "prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images"
    ],
    "_tool_call_loop": [
        "self", "prompts", "prompt_ids", "completion_ids", "completions", "logprobs", "images", "multimodal_fields"
    ],
    "log": ["self", "logs", "start_time"],
    "create_model_card": ["self", "model_name", "dataset_name", "tags"],
}  # fmt: skip


def _source(obj) -> str:
    return inspect.getsource(obj)


def test_trl_version_is_a_tested_minor():
    version = Version(trl.__version__)
    assert (version.major, version.minor) in TESTED_TRL_MINORS, (
        f"trl {trl.__version__} is not a tested minor {TESTED_TRL_MINORS}: run tests/test_trl_contract.py and "
        "tests/test_vllm.py against it, then add it to trl_perception.vllm.TESTED_TRL_MINORS and pyproject.toml"
    )


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_overridden_grpo_trainer_methods_keep_their_signature(name):
    hook = getattr(GRPOTrainer, name, None)
    assert hook is not None, f"GRPOTrainer.{name} is gone; PerceptionGRPOTrainer.{name} overrides it"
    params = list(inspect.signature(hook).parameters)
    assert params == OVERRIDDEN[name], (
        f"GRPOTrainer.{name} now takes {params}, PerceptionGRPOTrainer.{name} forwards {OVERRIDDEN[name]}"
    )
    assert name in vars(PerceptionGRPOTrainer), (
        f"update OVERRIDDEN: PerceptionGRPOTrainer no longer overrides {name}"
    )


def test_trainer_state_we_write_into_exists():
    source = _source(GRPOTrainer.__init__)
    assert "self._metrics = " in source, (
        "GRPOTrainer._metrics (per-task reward metrics are appended to it) is gone"
    )
    assert '"images"' in _source(GRPOTrainer.__init__).split("self._logs = ", 1)[-1][:400], (
        'GRPOTrainer._logs["images"] (log_box_images writes drawings into it) is gone'
    )


def test_state_the_answer_injection_reads_exists():
    assert "self.eos_token_ids = " in _source(GRPOTrainer.__init__), (
        "GRPOTrainer.eos_token_ids is gone; PerceptionGRPOTrainer._answer_ids ends injected answers with it"
    )
    assert "return completion_ids, logprobs" in _source(GRPOTrainer._generate_single_turn), (
        "GRPOTrainer._generate_single_turn no longer returns (completion_ids, logprobs); "
        "PerceptionGRPOTrainer._generate_single_turn unpacks and returns that pair"
    )
    source = _source(GRPOTrainer._generate_and_score_completions)
    for key in (
        "sampling_per_token_logps",
        "old_per_token_logps",
        "importance_sampling_ratio",
        "completion_ids",
    ):
        assert f'"{key}"' in source, (
            f"GRPOTrainer._generate_and_score_completions no longer outputs {key!r}; "
            "PerceptionGRPOTrainer._finish_injection reads it"
        )


def test_completions_are_decoded_through_processing_class_batch_decode():
    assert "self.processing_class.batch_decode(" in _source(GRPOTrainer._generate), (
        "GRPOTrainer._generate no longer decodes with processing_class.batch_decode; "
        "PerceptionGRPOTrainer._generate swaps that method to keep Qwen2-VL box tokens"
    )


def test_colocated_llm_is_built_through_the_module_global_LLM():
    assert hasattr(vllm_generation, "VLLMGeneration"), "trl.generation.vllm_generation.VLLMGeneration is gone"
    source = _source(vllm_generation.VLLMGeneration._init_vllm)
    assert "self.llm = LLM(" in source, (
        "VLLMGeneration._init_vllm no longer builds `self.llm = LLM(...)` from the module global "
        "trl.generation.vllm_generation.LLM, which trl_perception.vllm.colocate_llm patches"
    )
    for key in ("mm_processor_kwargs", "limit_mm_per_prompt"):
        assert key not in source, (
            f"TRL now passes {key} to vllm.LLM itself: colocate_llm keeps TRL's value (setdefault); "
            "check it carries the trainer's pixel limits and drop ours"
        )


def test_vllm_generate_signature_and_discarded_prompt_ids():
    params = list(inspect.signature(vllm_generation.VLLMGeneration.generate).parameters)
    assert params[:4] == ["self", "prompts", "images", "num_generations"], (
        f"VLLMGeneration.generate now takes {params}; tests/test_vllm.py drives it directly"
    )
    assert "_, completion_ids, logprobs, _ = self.vllm_generation.generate(" in _source(
        GRPOTrainer._generate_single_turn
    ), (
        "GRPOTrainer._generate_single_turn may now use the prompt ids vLLM returns; CollapsingLLM hands vLLM "
        "collapsed image runs, which is only safe while TRL discards them"
    )


@pytest.mark.parametrize("field", ["use_vllm", "vllm_mode", "vllm_max_model_length", "max_completion_length",
                                   "max_tool_calling_iterations"])  # fmt: skip
def test_grpo_config_fields_we_read(field):
    assert field in GRPOConfig.__dataclass_fields__, (
        f"GRPOConfig.{field} is gone; PerceptionGRPOTrainer reads it"
    )


def test_state_crop_turns_rely_on_exists():
    loop = _source(GRPOTrainer._tool_call_loop)
    for needle, why in (
        ('tool_calls = [completion[0].get("tool_calls") for completion in completions]',
         "the forced second turn adds a tool call to the first message of a rollout"),
        ("self._sync_tool_dicts[idx_with_tool]", "the forced second turn swaps the rollout's crop tool"),
        ('part.get("type") == "image"', "the crop reaches generation and the loss as a tool-result image"),
        ("tool_mask[idx_with_tool] += [0] * tool_length", "the inserted turn is masked by tool_mask"),
    ):  # fmt: skip
        assert needle in loop, f"GRPOTrainer._tool_call_loop changed: {why}; re-check PerceptionGRPOTrainer"
    score = _source(GRPOTrainer._generate_and_score_completions)
    assert "observation = environment.reset(**reset_kwargs)" in score and "self.environments = []" in score, (
        "GRPOTrainer no longer resets one environment per rollout with the row and appends what reset returns; "
        "CropEnvironment's instruction and crop metrics rely on it"
    )
