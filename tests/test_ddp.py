"""SFT with 2-process DDP on the CPU (gloo): it finishes and the ranks see different examples."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runs import scalars

ROOT = Path(__file__).resolve().parents[1]

# Lightning's DDP launcher re-runs this script for rank 1, so the recording callback lives in it.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    from lightning_modules.run import parse_config, train

    class RecordBatches(L.Callback):
        def __init__(self):
            self.seen = []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(batch["index"].tolist())
        def on_train_end(self, trainer, pl_module):
            with open(f"{sys.argv[1]}/seen{trainer.global_rank}.json", "w") as f:
                json.dump(self.seen, f)

    config, ckpt, _, _ = parse_config(sys.argv[2:])
    train(config, ckpt, callbacks=[RecordBatches()])
    """
)


@pytest.mark.slow
def test_two_process_ddp_sft_shards_the_data(tiny_args, tmp_path):
    script = tmp_path / "ddp_sft.py"
    script.write_text(SCRIPT)
    argv = ["--method", "sft", "--run_name", "ddp", "--trainer.max_steps", "4", "--trainer.val_every_n_steps", "4",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", *tiny_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *argv], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    for step in range(4):
        assert not set(seen[0][step]) & set(seen[1][step]), f"both ranks trained on the same example at step {step}"
    assert "held-out accuracy" in result.stdout.lower()
    assert "train/loss" in scalars(tmp_path / "runs" / "ddp")


CARFT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    from lightning_modules import carft
    from lightning_modules.distributed import gather_rows
    from lightning_modules.run import parse_config, train

    out, mode = sys.argv[1], sys.argv[2]
    if mode == "blocked":
        # The authors' gather: other ranks' representations arrive without their gradients.
        def gather_without_grad(*parts):
            return [torch.cat([p, g[len(p):].detach()]) for p, g in zip(parts, gather_rows(*parts))]
        carft.gather_rows = gather_without_grad

    sample = carft.CARFTModule.rollout
    def uneven_rollout(self, batch):
        # Rank 1 keeps half of every response, so the ranks' response lengths differ.
        rollout = sample(self, batch)
        if self.global_rank == 1:
            keep = rollout["response_ids"].size(1) // 2
            for key in ("response_ids", "response_mask"):
                rollout[key] = rollout[key][:, :keep]
            for key in ("input_ids", "attention_mask"):
                rollout[key] = rollout[key][:, : rollout.prompt_length + keep]
        self.lengths = self.__dict__.get("lengths", []) + [rollout["response_ids"].size(1)]
        return rollout
    carft.CARFTModule.rollout = uneven_rollout

    class FirstGradient(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not hasattr(self, "saved"):
                self.saved = True
                grads = {n: p.grad.clone() for n, p in pl_module.policy.heads.named_parameters()}
                torch.save(grads, f"{out}/{mode}-grad{trainer.global_rank}.pt")
        def on_train_end(self, trainer, pl_module):
            with open(f"{out}/{mode}-lengths{trainer.global_rank}.json", "w") as f:
                json.dump(pl_module.lengths, f)

    config, ckpt, _, _ = parse_config(sys.argv[3:])
    train(config, ckpt, callbacks=[FirstGradient()])
    """
)


@pytest.mark.slow
def test_two_process_carft_gathers_representations_with_gradients(tiny_args, tmp_path):
    import torch

    script = tmp_path / "ddp_carft.py"
    script.write_text(CARFT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for mode in ("with-grad", "blocked"):
        argv = ["--method", "carft", "--warmup_run", "null", "--run_name", mode, "--trainer.max_steps", "2",
                "--trainer.val_every_n_steps", "2", "--data.batch_size", "4", "--trainer.accelerator", "cpu",
                "--trainer.devices", "2", "--trainer.strategy", "ddp", *tiny_args]
        result = subprocess.run([sys.executable, str(script), str(tmp_path), mode, *argv], env=env,
                                cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        lengths = [json.loads((tmp_path / f"{mode}-lengths{rank}.json").read_text()) for rank in (0, 1)]
        assert len(lengths[0]) == len(lengths[1]) == 2
        assert all(a != b for a, b in zip(*lengths)), f"the ranks' responses should differ in length: {lengths}"
    with_grad = torch.load(tmp_path / "with-grad-grad0.pt", weights_only=True)
    blocked = torch.load(tmp_path / "blocked-grad0.pt", weights_only=True)
    assert with_grad.keys() == blocked.keys()
    differs = [name for name in with_grad if not torch.allclose(with_grad[name], blocked[name], rtol=1e-4, atol=1e-7)]
    assert differs, "blocking the gathered gradients changed nothing: the other rank's samples carried no gradient"
