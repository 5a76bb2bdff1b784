"""SFT warm-up (docs/METHODS.md section 1): cross-entropy on the annotated chain of thought."""

from __future__ import annotations

from lightning_modules.base import ReasoningModule
from lightning_modules.losses import sft_loss


class SFTModule(ReasoningModule):
    name = "sft"
    train_batches = "annotated"

    def training_step(self, batch, batch_idx: int):
        logits, _ = self.policy(batch["input_ids"], batch["attention_mask"])
        loss = sft_loss(logits, batch["input_ids"], batch["loss_mask"])
        batch_size = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        self.count_tokens(int(batch["attention_mask"].sum()))
        self._loss = loss.detach()
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.drop_update_if_not_finite(optimizer, self._loss)
