"""Crash safety: a real training process killed with SIGKILL at random moments (including
while a checkpoint is being written), resumed each time, ends exactly where an uninterrupted
run ends, and every kill leaves a loadable last.ckpt."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_resume import METHOD_ARGS, assert_same_state, full_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5


def launch(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(process: subprocess.Popen, checkpoints: Path, how: str, rng: random.Random, longest: float = 1.5) -> str:
    """SIGKILL the process while it writes its next checkpoint (``how='write'``: the temporary
    file exists; if a write is too quick to catch, right after it), or at a random moment up to
    ``longest`` seconds after its next checkpoint (``how='random'``). Returns when it was
    killed, or 'finished' if the process ended first."""
    def names() -> set[str]:
        return {p.name for p in checkpoints.iterdir()} if checkpoints.exists() else set()

    before, delay, due = names(), rng.uniform(0.0, longest), None
    while process.poll() is None:  # busy polling: a small checkpoint is written in milliseconds
        now = names()
        if how == "write" and any(n.endswith(".tmp") for n in now):
            when = "during a checkpoint write"
        elif how == "write" and now - before:
            when = "right after a checkpoint write"
        elif how == "random" and due is None and now - before:
            due = time.monotonic() + delay
            continue
        elif due is not None and time.monotonic() >= due:
            when = f"{delay:.2f} s after a checkpoint"
        else:
            continue
        process.kill()
        process.wait()
        return when
    return "finished"


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_sigkill_and_resume_ends_where_an_uninterrupted_run_ends(tiny_args, tmp_path, method):
    common = ["--method", method, "--trainer.max_steps", str(STEPS), "--trainer.checkpoint_every_n_steps", "1",
              "--trainer.val_every_n_steps", "2", *tiny_args, *METHOD_ARGS[method]]
    runs = tmp_path / "runs"
    assert launch(common + ["--run_name", "straight"]).wait() == 0

    crash_dir, rng, kills = runs / "crash", random.Random(method), []
    straight = full_checkpoint(runs / "straight" / "checkpoints" / "last.ckpt")
    plan, longest = ["write", "random"], 1.5
    for attempt in range(12):
        last = crash_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            assert full_checkpoint(last)["global_step"] >= 1  # every kill left a loadable checkpoint
            process = launch(["--resume", str(crash_dir), "--runs_dir", str(runs)])
        else:
            shutil.rmtree(crash_dir, ignore_errors=True)  # killed before its first checkpoint: start again
            process = launch(common + ["--run_name", "crash"])
        if len(kills) < len(plan):
            when = kill_when(process, crash_dir / "checkpoints", plan[len(kills)], rng, longest)
            if when != "finished":
                kills.append(when)
                continue
            # The run ended before the planned kill (its remaining steps took less than the
            # delay): it must still end where the uninterrupted run ends; then a fresh run
            # takes the rest of the plan, with delays half as long.
            assert process.returncode == 0
            assert_same_state(straight, full_checkpoint(last))
            shutil.rmtree(crash_dir)
            longest /= 2
            continue
        assert process.wait() == 0
        break
    assert len(kills) >= 2 and any("write" in k for k in kills), kills
    assert not list((crash_dir / "checkpoints").glob(".*.tmp")), "a killed write's temporary file was cleared"
    assert_same_state(straight, full_checkpoint(crash_dir / "checkpoints" / "last.ckpt"))
