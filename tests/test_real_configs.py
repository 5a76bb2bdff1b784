"""configs/real/: each names its method, strategy and GPUs, parses on top of its method, and
its method settings (algo, optim) train a step of the tiny model on this CPU once the model,
data and hardware are overridden."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.runs import scalars
from workflows.train import parse_config, train

REAL = sorted((ROOT / "configs" / "real").glob("*_*_*.yaml"))
HERE = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.precision", "32",
        "--model.lora.r", "0", "--model.gradient_checkpointing", "false", "--data.path", "synthetic", "--data.test_path", "null",
        "--data.hub_config", "null", "--data.prompt_style", "reft", "--data.answer_style", "reft", "--data.max_prompt_tokens", "200",
        "--data.max_target_tokens", "100", "--trainer.max_new_tokens", "16", "--trainer.max_steps", "1", "--trainer.val_every_n_steps", "1",
        "--trainer.checkpoint_every_n_steps", "1", "--data.eval_batch_size", "4", "--data.max_val_examples", "4"]


def method_of(path: Path) -> str:
    return path.name.split("_")[0]


def test_every_method_of_the_papers_has_a_real_config():
    assert {method_of(p) for p in REAL} == {"sft", "ppo", "carft", "grpo", "rlsc", "ttrl", "intuitor", "rent", "empo"}


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_a_real_config_names_its_strategy_and_gpus_and_its_settings_train_a_step(path, tiny_args, tmp_path):
    method = method_of(path)
    config, _, _, _ = parse_config(["--method", method, "--config", str(path)])
    assert config.trainer.accelerator == "gpu" and config.trainer.devices == 8 and config.trainer.strategy in ("ddp", "fsdp")
    assert config.trainer.precision == "bf16-mixed"
    text = path.read_text()
    assert "arXiv" in text and "GB" in text  # the paper it follows, and the memory it was sized for
    model = ["--model.name_or_path", "embedded"]
    few = ["--data.batch_size", "2"] + (["--algo.samples_per_prompt", "2", "--algo.minibatches", "1"] if method not in ("sft", "ppo", "carft") else [])
    config, _, _, _ = parse_config(["--method", method, "--config", str(path), "--run_name", method, *tiny_args, *model, *HERE, *few])
    assert config.optim.lr == parse_config(["--method", method, "--config", str(path)])[0].optim.lr  # the paper's settings stay
    train(config)
    for tag, points in scalars(tmp_path / "runs" / method).items():
        assert all(math.isfinite(v) for _, v in points), tag
