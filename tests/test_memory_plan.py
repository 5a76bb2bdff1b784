"""scripts/memory_plan.py: parameter counts of the presets against the published models, every
part of a plan worked by hand, and the plan against a measured peak."""

from __future__ import annotations

import sys

import pytest

from workflows.memory import CHECKS, PRESETS, Architecture, Setting, main, measure, plan


@pytest.mark.parametrize("name, parameters", [
    ("qwen2.5-0.5b", 494_032_768), ("qwen2.5-1.5b", 1_543_714_304), ("qwen2.5-3b", 3_085_938_688), ("qwen2.5-7b", 7_615_616_512),
    ("smollm2-135m", 134_515_008)])
def test_preset_parameter_counts_are_the_published_models(name, parameters):
    assert PRESETS[name].parameters() == parameters


def test_a_plan_worked_by_hand():
    # 2 layers, h 4, I 8, 2 heads of 2, 1 kv head (kv 2), V 10, untied.
    arch = Architecture(layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10, tied=False)
    per_layer = 2 * 16 + 2 * 4 * 2 + 3 * 4 * 8 + 2 * 4  # q, o; k, v; gate, up, down; norms = 152
    assert arch.layer_parameters() == per_layer and arch.parameters() == 2 * per_layer + 2 * 40 + 4  # 388
    setting = Setting(method="grpo", precision="bf16-mixed", micro_batch=2, prompt_tokens=3, response_tokens=5, rollout_rows=4)
    parts = plan(arch, setting)
    assert parts["weights"] == 388 * 4 and parts["gradients"] == 388 * 4 and parts["optimizer"] == 2 * 388 * 4
    assert parts["reference"] == 388 * 4  # GRPO's KL term keeps the starting policy
    tokens, layer_bytes = 2 * 8, (6 * 4 + 2 * 2 + 4 * 8) * 2 + 2 * 4 * 4  # (6h + 2kv + 4I) bf16 values + the float32 residual
    assert parts["activations"] == tokens * 2 * layer_bytes and parts["activations (other)"] == tokens * (2 * 4 * 4 + layer_bytes)
    assert parts["logits"] == 2 * 5 * 10 * (2 + 8)  # the response positions only
    assert parts["rollout"] == 2 * 2 * 2 * 4 * 8 * 2 + 4 * 10 * 4
    assert parts["peak"] == 5 * 388 * 4 + max(parts["activations"] + parts["logits"], parts["rollout"])
    # FSDP2 over 2 GPUs: a half of each sharded part, plus the gathered bf16 root unit (84
    # parameters: two embeddings and the final norm) and two layers; sampling gathers the
    # whole policy in bf16.
    sharded = plan(arch, Setting(**{**vars(setting), "strategy": "fsdp", "gpus": 2}))
    assert sharded["weights"] == 388 * 4 // 2 + (84 + 2 * 152) * 2 and sharded["optimizer"] == 388 * 4
    assert sharded["rollout"] == parts["rollout"] + 388 * 2
    assert sharded["gradients"] == 388 * 4 // 2 + 2 * 152 * 2  # a layer is the largest unit: its whole gradient, twice
    # LoRA r 1: no reference, gradients and moments for the adapters only.
    lora = plan(arch, Setting(**{**vars(setting), "lora_r": 1}))
    adapters = 2 * ((4 + 4) + 2 * (4 + 2) + (4 + 4) + 2 * (4 + 8) + (8 + 4))
    assert arch.lora_parameters(1) == adapters and lora["reference"] == 0 and lora["gradients"] == adapters * 4
    assert plan(arch, Setting(**{**vars(setting), "method": "rlsc"}))["reference"] == 0


def test_bad_requests_get_one_sentence(capsys, tmp_path):
    assert main(["--model", str(tmp_path)]) == 2
    assert "--model must be a preset" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert main(["--model", str(tmp_path)]) == 2
    assert "has no 'num_attention_heads' field" in capsys.readouterr().err
    assert main(["--gpus", "0"]) == 2 and "--gpus must be at least 1" in capsys.readouterr().err


def test_the_docs_table_and_a_model_folder_print(capsys, model_cache):
    assert main(["--table"]) == 0
    assert "qwen2.5-7b, 8 GPUs, FSDP2" in capsys.readouterr().out
    from lightning_modules.config import EmbeddedModelConfig, ModelConfig
    from lightning_modules.policy import resolve_model_path

    folder = resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=EmbeddedModelConfig(hidden_size=32, num_layers=2, num_heads=2,
                                                                                                   intermediate_size=64)))
    assert main(["--model", folder, "--method", "ppo", "--lora_r", "4"]) == 0
    assert "ppo, ddp, 1 GPU(s)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_plan_is_near_the_measured_peak():
    """Two SFT steps on the CPU: the larger model, whose fixed overheads matter least, within 15%."""
    small, large = CHECKS
    setting = Setting(method="sft", precision="32", micro_batch=8, prompt_tokens=0, response_tokens=128)
    ratio = measure(large, 8, 128) / plan(large, setting)["peak"]
    assert 0.85 <= ratio <= 1.15, ratio
    assert measure(small, 8, 128) >= plan(small, setting)["peak"] * 0.85


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_sharded_plan_is_near_the_measured_peak_of_the_larger_rank():
    """The same steps under FSDP2 on 2 gloo processes: the larger model within 15% (the root
    unit held gathered and the largest unit's whole gradient are what the plan must count)."""
    large = CHECKS[1]
    setting = Setting(method="sft", precision="32", micro_batch=8, prompt_tokens=0, response_tokens=128, strategy="fsdp", gpus=2)
    ratio = measure(large, 8, 128, processes=2) / plan(large, setting)["peak"]
    assert 0.85 <= ratio <= 1.15, ratio
