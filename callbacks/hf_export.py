"""Write the final policy in Hugging Face format, so any tool can load it."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lightning_modules.policy import staged_folder


class HuggingFaceExport(L.Callback):
    """``save_pretrained`` of the policy and tokenizer into ``folder`` when training ends.

    With LoRA the export is a plain model with the adapters merged in, or with
    ``adapters_only`` the adapter files alone (peft's format, small, needing the base model).
    Written beside the target and renamed into place: an export cut short never replaces
    a good one.
    """

    def __init__(self, folder: str | Path, adapters_only: bool = False) -> None:
        self.folder = Path(folder)
        self.adapters_only = adapters_only

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            policy = pl_module.policy
            with staged_folder(self.folder, replace=True) as staging:
                (policy.lm if self.adapters_only else policy.merged_lm()).save_pretrained(staging)
                pl_module.tokenizer.save_pretrained(staging)
