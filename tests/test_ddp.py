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
