"""Write the final policy in Hugging Face format, so any tool can load it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from transformers import AutoModelForCausalLM

from lightning_modules.policy import Policy, add_lora, staged_folder
from lightning_modules.sharding import full_state_dict, is_sharded


class HuggingFaceExport(L.Callback):
    """``save_pretrained`` of the policy and tokenizer into ``folder`` when training ends.

    With LoRA the export is a plain model with the adapters merged in, or with
    ``adapters_only`` the adapter files alone (peft's format, small, needing the base model).
    Under FSDP2 every rank sends its shards to rank 0, which writes the whole model. Written
    beside the target and renamed into place: an export cut short never replaces a good one.
    """

    def __init__(self, folder: str | Path, adapters_only: bool = False) -> None:
        self.folder = Path(folder)
        self.adapters_only = adapters_only

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy = pl_module.policy
        if is_sharded(policy):
            state = full_state_dict(policy.lm)  # a collective: every rank takes part
            policy = unsharded_policy(policy, state, pl_module.config.model) if trainer.is_global_zero else None
        if trainer.is_global_zero:
            with staged_folder(self.folder, replace=True) as staging:
                (policy.lm if self.adapters_only else policy.merged_lm()).save_pretrained(staging)
                pl_module.tokenizer.save_pretrained(staging)


def unsharded_policy(sharded: Policy, state: dict, model_config) -> Policy:
    """A plain (unsharded) policy built like ``sharded`` and holding the whole ``state`` of its language model."""
    base = sharded.lm.get_base_model() if sharded.has_adapters else sharded.lm
    lm = AutoModelForCausalLM.from_config(base.config, dtype=next(iter(state.values())).dtype, trust_remote_code=model_config.trust_remote_code)
    lm.generation_config = base.generation_config
    if sharded.has_adapters:
        lm = add_lora(lm, model_config.lora)
    lm.load_state_dict(state)
    return Policy(lm)
