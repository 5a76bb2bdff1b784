"""Preemption with real signals on real processes: SIGTERM (or SLURM's SIGUSR1) ends the
step in progress, writes last.ckpt, prints one line and exits 143; resuming it ends where an
uninterrupted run ends, on one process and under two-process DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_crash import ROOT
from tests.test_ddp import DDP_ARGS
from tests.test_resume import METHOD_ARGS, assert_same_state, full_checkpoint

STEPS = 8


def start(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *argv], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def signal_after_first_checkpoint(process: subprocess.Popen, checkpoints: Path, signum: int) -> str:
    """Send ``signum`` to the process (only the launching one under DDP) once its first regular
    checkpoint exists; return its stderr after it exits."""
    deadline = time.monotonic() + 600
    while not (checkpoints / "step000003.ckpt").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in 10 minutes"
        time.sleep(0.01)
    process.send_signal(signum)
    _, err = process.communicate(timeout=600)
    return err


def stopped_at(err: str, checkpoints: Path, signame: str) -> int:
    """The step the one line names; last.ckpt holds it, and the run stopped before its end."""
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"stopped by {signame} after step ") and "continue with: python scripts/train.py --resume" in lines[0]
    step = int(lines[0].split("after step ")[1].split(",")[0])
    assert full_checkpoint(checkpoints / "last.ckpt")["global_step"] == step
    assert 3 <= step < STEPS, step
    return step


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_its_resume_is_exact(tiny_args, tmp_path, method="sft"):
    runs = tmp_path / "runs"
    common = ["--method", method, "--trainer.max_steps", str(STEPS), "--trainer.checkpoint_every_n_steps", "3",
              "--trainer.val_every_n_steps", str(STEPS), *tiny_args, *METHOD_ARGS[method]]
    straight = start(common + ["--run_name", "straight"])
    assert straight.wait() == 0, straight.stderr.read()[-3000:]

    process = start(common + ["--run_name", "stopped"])
    checkpoints = runs / "stopped" / "checkpoints"
    err = signal_after_first_checkpoint(process, checkpoints, signal.SIGTERM)
    assert process.returncode == 143, err[-3000:]
    stopped_at(err, checkpoints, "SIGTERM")
    assert not (runs / "stopped" / "hf").exists()  # a stopped run is not exported as finished

    resumed = start(["--resume", str(runs / "stopped"), "--runs_dir", str(runs)])
    assert resumed.wait() == 0, resumed.stderr.read()[-3000:]
    assert_same_state(full_checkpoint(runs / "straight" / "checkpoints" / "last.ckpt"), full_checkpoint(checkpoints / "last.ckpt"))


@pytest.mark.slow
def test_slurm_sigusr1_writes_a_checkpoint_and_requeues_the_job(tiny_args, tmp_path):
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    scontrol.chmod(0o755)
    runs = tmp_path / "runs"
    argv = ["--method", "sft", "--run_name", "slurm", "--trainer.max_steps", str(STEPS), "--trainer.checkpoint_every_n_steps", "3",
            "--trainer.val_every_n_steps", str(STEPS), *tiny_args, *METHOD_ARGS["sft"]]
    process = start(argv, env={"SLURM_JOB_ID": "4242", "PATH": f"{scontrol.parent}:{os.environ['PATH']}"})
    err = signal_after_first_checkpoint(process, runs / "slurm" / "checkpoints", signal.SIGUSR1)
    assert process.returncode == 143, err[-3000:]
    stopped_at(err, runs / "slurm" / "checkpoints", "SIGUSR1")
    assert "SLURM job 4242 requeued" in err
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]


@pytest.mark.slow
def test_sigterm_to_the_launching_process_stops_both_ddp_ranks_and_the_resume_is_exact(tiny_args, tmp_path):
    runs = tmp_path / "runs"
    common = ["--method", "grpo", "--trainer.max_steps", str(STEPS), "--trainer.checkpoint_every_n_steps", "3",
              "--trainer.val_every_n_steps", str(STEPS), *DDP_ARGS, *tiny_args, *METHOD_ARGS["grpo"]]
    straight = start(common + ["--run_name", "straight"])
    assert straight.wait(timeout=900) == 0, straight.stderr.read()[-3000:]

    process = start(common + ["--run_name", "stopped"])
    checkpoints = runs / "stopped" / "checkpoints"
    err = signal_after_first_checkpoint(process, checkpoints, signal.SIGTERM)
    assert process.returncode == 143, err[-3000:]
    stopped_at(err, checkpoints, "SIGTERM")

    resumed = start(["--resume", str(runs / "stopped"), "--runs_dir", str(runs), *DDP_ARGS])
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-3000:]
    assert_same_state(full_checkpoint(runs / "straight" / "checkpoints" / "last.ckpt"), full_checkpoint(checkpoints / "last.ckpt"))
