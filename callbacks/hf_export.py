"""Write the final policy in Hugging Face format, so any tool can load it."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lightning_modules.policy import staged_folder


class HuggingFaceExport(L.Callback):
    """``save_pretrained`` of the policy and tokenizer into ``folder`` when training ends.

    Written beside the target and renamed into place: an export cut short never replaces
    a good one.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            with staged_folder(self.folder, replace=True) as staging:
                pl_module.policy.lm.save_pretrained(staging)
                pl_module.tokenizer.save_pretrained(staging)
