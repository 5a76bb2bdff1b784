"""Preemption: SIGTERM, or SIGUSR1 (what SLURM sends ahead of a time limit with
``#SBATCH --signal=USR1@120``, to every task), ends the step in progress, writes ``last.ckpt`` and stops.

The checkpoint is written where the regular checkpoints are, after the step's updates, so
``train.py --resume RUN`` continues it as exactly as any checkpoint. Under DDP the process
that receives the signal passes it on to the ranks it launched, and the ranks agree through
an all-reduce after every step, so they all stop after the same step. A validation under
way finishes first. Under SLURM, a SIGUSR1 also requeues the job (``scontrol requeue``); the
job script resumes the run when it finds ``last.ckpt`` (README, "Several nodes").
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; the message is one sentence."""


class Preemption(L.Callback):
    """Turn SIGTERM / SIGUSR1 into a checkpoint at the end of the current step, then stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.received: signal.Signals | None = None
        self._previous: dict[int, object] = {}
        self._launcher = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not at fit start: the Trainer installs its own handlers after on_fit_start. They
        # are replaced (and put back at the end), because Lightning's would stop a validation
        # half-way and SLURM's requeue handler saves a checkpoint in the middle of a step.
        self._launcher = trainer.strategy.launcher
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = signal.Signals(signum)
        kill = getattr(self._launcher, "kill", None)
        if first and kill is not None:
            kill(signum)  # the DDP ranks this process launched (none in the ranks themselves)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        trainer.save_checkpoint(self.checkpoint)  # every rank takes part (under FSDP2 each writes its shards), atomically
        name = self.received.name if self.received is not None else "a signal to another rank"
        requeued = ""
        if trainer.is_global_zero and self.received == signal.SIGUSR1 and "SLURM_JOB_ID" in os.environ:
            job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            job = job or os.environ["SLURM_JOB_ID"]
            try:
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
                why = done.stderr.strip() or f"exit {done.returncode}"
            except (OSError, subprocess.TimeoutExpired) as error:
                done, why = None, str(error)
            requeued = f"; SLURM job {job} requeued" if done is not None and done.returncode == 0 else f"; requeuing SLURM job {job} failed ({why})"
        raise Preempted(f"stopped by {name} after step {trainer.global_step}, checkpoint written to {self.checkpoint}{requeued}; "
                        f"continue with: python scripts/train.py --resume {self.checkpoint.parent.parent}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
