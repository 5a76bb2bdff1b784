"""The benchmark measures every phase it reports, and the TRL comparison runs from one command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from workflows.benchmark import main

TINY = ["--width", "32", "--layers", "2", "--batch_size", "2", "--samples", "2", "--max_new_tokens", "8", "--steps", "2", "--warmup_steps", "1"]


@pytest.mark.slow
def test_benchmark_times_each_phase_and_prints_the_trl_ratio(tmp_path, model_cache, capsys):
    out = tmp_path / "bench.json"
    assert main(["--methods", "sft,grpo", "--trl", *TINY, "--cache_dir", str(model_cache), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["label"]: r for r in result["results"]}
    assert result["schema"] == "reasoning-rl/benchmark/v1"
    assert list(rows) == ["sft", "grpo", "grpo (as TRL)", "TRL GRPOTrainer"]
    for row in rows.values():
        assert row["measured_steps"] == 2 and row["batch_size"] * row["samples_per_prompt"] == 4
        for key in ("step_s", "samples_per_s", "peak_memory_mb"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["label"], key)
        assert row["peak_memory_mb"] > 100  # a process holding torch; RSS is in MiB, not KiB
        if row["engine"] == "ours":  # resident at the first step, and the high-water mark of the steps after it
            assert 100 < row["start_memory_mb"] <= row["step_peak_memory_mb"] <= row["peak_memory_mb"] + 1, row
        assert row["parameters"] == rows["sft"]["parameters"]  # one model for all
    for label in ("grpo", "grpo (as TRL)"):
        phases = [rows[label][k] for k in ("generate_s", "score_s", "update_s")]
        assert all(p >= 0 for p in phases) and rows[label]["generate_s"] > 0
        assert sum(phases) <= rows[label]["step_s"]  # the phases lie inside the step
        assert rows[label]["generated_tokens_per_s"] > 0
    assert rows["sft"]["generate_s"] is None
    trl = rows["TRL GRPOTrainer"]
    assert 0 < trl["generate_s"] < trl["step_s"]
    ratio = result["trl_ratio"][0]["ours_over_trl"]
    assert ratio == pytest.approx(rows["grpo (as TRL)"]["samples_per_s"] / trl["samples_per_s"])
    printed = capsys.readouterr().out
    assert f"GRPO samples/s, ours / TRL's: {ratio:.2f}x" in printed and "| TRL GRPOTrainer |" in printed


@pytest.mark.slow
def test_the_benchmark_reports_the_compiled_steps_compile_time(tmp_path, model_cache, capsys):
    """With -- --trainer.sampler compiled the decode step compiles in the warm-up steps; the
    seconds it took are in the JSON and printed, apart from the measured steps."""
    out = tmp_path / "bench.json"
    tiny = [*TINY[:-4], "--steps", "1", "--warmup_steps", "1"]
    assert main(["--methods", "grpo", *tiny, "--cache_dir", str(model_cache), "--out", str(out), "--", "--trainer.sampler", "compiled"]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["compile_s"] > 0 and row["measured_steps"] == 1 and row["generate_s"] > 0
    assert f"grpo: the decode step compiled in {row['compile_s']:.1f} s" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--methods", "dpo"], "unknown method 'dpo'"),
    (["--sweep", "depth=1,2"], "--sweep must look like KEY=V1,V2"),
    (["--sweep", "samples=2,x"], "--sweep values must be whole numbers"),
    (["--steps", "0"], "--steps must be positive"),
    (["--vocab", "4096"], "--vocab needs --model to name a model folder"),
    (["--sweep", "vocab=1000,2000"], "--vocab needs --model to name a model folder"),
])
def test_bad_benchmark_requests_get_one_sentence_and_exit_2(argv, expected, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1]
    assert not (tmp_path / "b.json").exists()


def test_a_grown_vocabulary_leaves_the_model_alone_and_its_new_tokens_at_logit_zero(tmp_path, model_cache):
    import torch
    from transformers import AutoModelForCausalLM

    from lightning_modules.config import ModelConfig
    from lightning_modules.policy import resolve_model_path
    from workflows.benchmark import BenchmarkError, grown_vocabulary

    source = resolve_model_path(ModelConfig(cache_dir=str(model_cache)))
    grown = grown_vocabulary(source, 1000, tmp_path)
    assert grown == tmp_path / "vocab" / f"{Path(source).name}-1000"
    assert list((tmp_path / "vocab").iterdir()) == [grown]  # the staging folder was renamed into place
    before, after = AutoModelForCausalLM.from_pretrained(source), AutoModelForCausalLM.from_pretrained(grown)
    old = before.config.vocab_size
    assert after.config.vocab_size == 1000 > old
    ids = torch.randint(0, old, (2, 7))
    with torch.no_grad():
        a, b = before(ids).logits, after(ids).logits
    torch.testing.assert_close(b[..., :old], a, rtol=0, atol=1e-5)
    assert torch.all(b[..., old:] == 0)
    assert grown_vocabulary(source, 1000, tmp_path) == grown  # written once
    with pytest.raises(BenchmarkError, match="can only grow"):
        grown_vocabulary(source, old - 1, tmp_path)


def test_the_gpu_check_runs_its_quick_form_on_the_cpu(tmp_path, model_cache, capsys):
    """scripts/gpu_check.py is prepared for a GPU session; its quick form runs it end to end here."""
    from workflows.gpu_check import main as gpu_check

    out = tmp_path / "gpu_check.json"
    assert gpu_check(["--quick", "--trl", "false", "--cache_dir", str(model_cache), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    eager, library = result["sampler"]["ours, eager"], result["sampler"]["generate"]
    assert eager["rows"] == library["rows"] == 64 and eager["new_tokens"] >= 1
    assert eager["generated_tokens_per_s"] > 0 and library["generated_tokens_per_s"] > 0
    (grpo,) = result["grpo"]
    assert grpo["label"] == "grpo (as TRL)" and grpo["update_s"] > 0 and grpo["update_tokens"] > 64
    assert math.isfinite(result["update_tflops"]) and result["update_tflops"] > 0
    assert "| ours, eager |" in capsys.readouterr().out


def test_model_flops_count_a_qwen2_5_0_5b_shape_by_hand(tmp_path):
    from transformers import Qwen2Config

    from workflows.gpu_check import QWEN25_05B, model_flops

    Qwen2Config(**QWEN25_05B).save_pretrained(tmp_path)
    # per layer: q and o 896 x 896, k and v 896 x 128, MLP 3 x 896 x 4864; then the head 896 x 151936
    per_layer = 2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864
    assert model_flops(tmp_path, 10) == 6 * (24 * per_layer + 896 * 151936) * 10
    assert 24 * per_layer + 896 * 151936 == pytest.approx(494e6, rel=0.01)  # Qwen2.5-0.5B's 0.49B parameters
