"""Write the final policy in Hugging Face format, so any tool can load it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import lightning as L


class HuggingFaceExport(L.Callback):
    """``save_pretrained`` of the policy and tokenizer into ``folder`` when training ends.

    Written beside the target and renamed into place: an export cut short never replaces
    a good one.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            export(pl_module, self.folder)


def export(pl_module: L.LightningModule, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        pl_module.policy.lm.save_pretrained(staging)
        pl_module.tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
