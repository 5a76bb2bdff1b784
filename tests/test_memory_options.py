"""Memory switches change how the work is done, not its result."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from workflows.train import parse_config, train
from tests.runs import checkpoint_state

RL_ARGS = ["--warmup_run", "null", "--data.batch_size", "2", "--algo.samples_per_prompt", "2", "--algo.eval_samples", "0"]


class Watch(L.Callback):
    """Whether the policy recomputes activations, and its weights when training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.checkpointing = pl_module.policy.lm.is_gradient_checkpointing
        self.start = {f"policy.{n}": p.detach().clone() for n, p in pl_module.policy.named_parameters()}


@pytest.mark.parametrize("method", ["sft", "rlsc"])
def test_gradient_checkpointing_trains_to_the_same_weights(tiny_args, tmp_path, method):
    states, watches = {}, {}
    for switch in ("false", "true"):
        argv = ["--method", method, "--run_name", f"gc-{switch}", "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2",
                "--model.gradient_checkpointing", switch, "--optim.lr", "1e-3", *tiny_args]
        config, _, _, _ = parse_config(argv + (RL_ARGS if method == "rlsc" else []))
        watches[switch] = Watch()
        train(config, callbacks=[watches[switch]])
        states[switch] = checkpoint_state(tmp_path / "runs" / f"gc-{switch}" / "checkpoints" / "last.ckpt")
    assert watches["true"].checkpointing and not watches["false"].checkpointing
    assert any(not torch.equal(states["true"][n], v) for n, v in watches["true"].start.items()), "training moved the weights"
    assert states["false"].keys() == states["true"].keys()
    for name, value in states["false"].items():
        torch.testing.assert_close(states["true"][name], value, rtol=1e-5, atol=1e-6, msg=name)
