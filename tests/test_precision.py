"""bf16 on the CPU: every method trains in bf16-mixed (fp32 weights) and bf16-true (bf16 weights)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from workflows.train import parse_config, train
from tests.test_lora import ALTERNATING_ARGS

RL_ARGS = ["--warmup_run", "null", "--data.batch_size", "2", "--algo.samples_per_prompt", "2"]


class Watch(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.module = pl_module
        self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
@pytest.mark.parametrize("method", ["sft", "ppo", "carft", "grpo", "rlsc", "carft+lora"])
def test_every_method_trains_in_bf16(tiny_args, method, precision, dtype):
    method, _, lora = method.partition("+")
    argv = ["--method", method, "--run_name", "bf16", "--trainer.precision", precision, "--trainer.max_steps", "2",
            "--trainer.val_every_n_steps", "2", "--optim.lr", "1e-2", *tiny_args, *(["--model.lora.r", "4"] if lora else [])]
    config, _, _, _ = parse_config(argv + (RL_ARGS + ALTERNATING_ARGS[method] if method != "sft" else []) + (["--algo.eval_samples", "0"] if method == "rlsc" else []))
    watch = Watch()
    metrics = train(config, callbacks=[watch])
    module = watch.module
    assert {p.dtype for p in module.policy.parameters()} == {dtype}
    for reference in getattr(module, "_reference", []):
        assert {p.dtype for p in reference.parameters()} == {dtype}
    moved = [n for n, p in module.named_parameters() if n in watch.start and not torch.equal(p, watch.start[n])]
    assert len(moved) > len(watch.start) // 2, f"only {len(moved)} of {len(watch.start)} trainable tensors moved"
    assert all(torch.isfinite(p).all() for p in module.parameters())
    logged = {k: float(v) for k, v in module.trainer.callback_metrics.items()}
    assert "val/accuracy" in metrics and all(math.isfinite(v) for v in logged.values()), logged
