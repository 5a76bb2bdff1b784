"""The DataModule: records -> token ids -> annotated, labeled or unlabeled batches."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from datamodules.config import DataConfig
from datamodules.formats import load_records
from datamodules.prompts import format_prompt, format_target
from datamodules.records import DataError, Record
from datamodules.sampling import ResumableBatchSampler
from datamodules.synthetic import generate_splits

log = logging.getLogger(__name__)

TrainBatches = Literal["annotated", "labeled", "unlabeled"]
"""annotated: prompt + target with a loss mask (SFT). labeled: left-padded prompts with gold
answers and annotated targets (PPO, CARFT, GRPO). unlabeled: left-padded prompts only (RLSC)."""


def pad_sequences(sequences: list[list[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one ``[B, W]`` tensor padded on ``side`` (left for prompts to generate
    from, right for targets) and its attention mask; ``W`` is the longest length (at least 1)."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


@dataclass(frozen=True)
class Example:
    index: int
    prompt_ids: list[int]
    target_ids: list[int]  # annotated target + EOS; empty when the source has no chain of thought
    answer: float
    has_chain_of_thought: bool


def load_split_records(config: DataConfig) -> dict[str, list[Record]]:
    """Train, val and test records from ``config`` (a DataConfig), questions never shared."""
    if config.path == "synthetic":
        splits = generate_splits(config.synthetic)
        return {
            "train": splits["train"],
            "val": load_records_from(config, config.val_path, "validation") if config.val_path else splits["val"],
            "test": load_records_from(config, config.test_path, "test") if config.test_path else splits["test"],
        }
    train = load_records_from(config, config.path, "train")
    if config.val_path:
        val = load_records_from(config, config.val_path, "validation")
    else:
        # A stable hash of the question picks the held-out set, independent of file order.
        ranked = sorted(train, key=lambda r: hashlib.sha1(r.question.encode()).hexdigest())
        val = ranked[: config.val_size]
    held_out = {r.question for r in val}
    test = load_records_from(config, config.test_path, "test") if config.test_path else []
    held_out |= {r.question for r in test}
    train = [r for r in train if r.question not in held_out]
    if not train:
        raise DataError(f"no training questions remain in {config.path} once validation and test questions are removed")
    return {"train": train, "val": val, "test": test}


def load_records_from(config: DataConfig, source: str, hub_split: str) -> list[Record]:
    """``hub_split`` is the split a hub data set is asked for; local files ignore it."""
    return load_records(
        source,
        split=hub_split,
        hub_config=config.hub_config,
        fmt=config.format,
        on_error=config.on_error,
        keep_calculator_notes=config.keep_calculator_notes,
    )


class ReasoningDataModule(L.LightningDataModule):
    def __init__(self, config: DataConfig, tokenizer: PreTrainedTokenizerBase, train_batches: TrainBatches, seed: int = 0) -> None:
        super().__init__()
        self.config, self.tokenizer, self.train_batches, self.seed = config, tokenizer, train_batches, seed
        self.examples: dict[str, list[Example]] = {}
        self.overlong_counts: dict[str, int] = {}
        """Examples over the token limits, per split and kind (``train_prompt``, ...)."""
        self.consumed_batches = 0
        """Training batches handed to the model so far; saved in checkpoints to resume exactly."""

    # ---- text -> ids -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        records = load_split_records(self.config)
        if self.train_batches == "annotated" and not any(r.chain_of_thought for r in records["train"]):
            raise DataError(f"{self.config.path} has no chains of thought, and SFT needs annotated data (e.g. reft/svamp_nl.json or gsm8k/train.jsonl)")
        for split, split_records in records.items():
            if split == "val":
                split_records = split_records[: self.config.max_val_examples]
            self.examples[split] = self._tokenize(split, split_records)
        if not self.examples["train"]:
            raise DataError(f"every training example of {self.config.path} is longer than the token limits")

    def _tokenize(self, split: str, records: list[Record]) -> list[Example]:
        cfg, tok = self.config, self.tokenizer
        if not records:
            return []
        prompts = tok([format_prompt(r.question, tok, cfg.prompt_style) for r in records], add_special_tokens=False)["input_ids"]
        targets = tok([format_target(r) for r in records], add_special_tokens=False)["input_ids"]
        examples, too_long = [], {"prompt": 0, "target": 0}
        for index, (record, prompt, target) in enumerate(zip(records, prompts, targets)):
            target = target + [tok.eos_token_id] if record.chain_of_thought else []
            over = [kind for kind, ids, limit in (("prompt", prompt, cfg.max_prompt_tokens), ("target", target, cfg.max_target_tokens)) if len(ids) > limit]
            for kind in over:
                too_long[kind] += 1
            if over:
                if cfg.overlong == "error" and cfg.on_error == "raise":
                    kind = over[0]
                    length = len(prompt if kind == "prompt" else target)
                    limit = getattr(cfg, f"max_{kind}_tokens")
                    raise DataError(
                        f"{self._source(split)} record {record.uid} has a {kind} of {length} tokens, over data.max_{kind}_tokens={limit}; "
                        f"raise the limit, or set data.overlong drop or truncate (or data.on_error skip)"
                    )
                if cfg.overlong != "truncate":
                    continue
                # Truncation keeps the end of a prompt (the question) and the start of a target.
                prompt, target = prompt[-cfg.max_prompt_tokens :], target[: cfg.max_target_tokens]
            examples.append(Example(index, prompt, target, record.answer, bool(record.chain_of_thought)))
        for kind, count in too_long.items():
            if count:
                action = "truncated" if cfg.overlong == "truncate" else ("dropped" if cfg.overlong == "drop" else "skipped")
                log.warning(
                    "%s %d of %d %s examples whose %s exceeds data.max_%s_tokens=%d",
                    action, count, len(records), split, kind, kind, getattr(cfg, f"max_{kind}_tokens"),
                )
        self.overlong_counts |= {f"{split}_{k}": v for k, v in too_long.items()}
        return examples

    def _source(self, split: str) -> str:
        cfg = self.config
        return {"val": cfg.val_path, "test": cfg.test_path}.get(split) or cfg.path

    # ---- batches -----------------------------------------------------------------------
    def _pad(self, sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_sequences(sequences, self.tokenizer.pad_token_id, side)

    def collate_annotated(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = self._pad([e.prompt_ids + e.target_ids for e in examples], "right")
        loss_mask = torch.zeros_like(attention_mask)
        for row, e in enumerate(examples):
            loss_mask[row, len(e.prompt_ids) : len(e.prompt_ids) + len(e.target_ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask, "index": self._index(examples)}

    def collate_prompts(self, examples: list[Example], with_labels: bool) -> dict[str, torch.Tensor]:
        """Left-padded prompts for generation; answers and targets only when labels are allowed."""
        prompt_ids, prompt_mask = self._pad([e.prompt_ids for e in examples], "left")
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "index": self._index(examples)}
        if with_labels:
            batch["answer"] = torch.tensor([e.answer for e in examples], dtype=torch.float64)
            batch["target_ids"], batch["target_mask"] = self._pad([e.target_ids for e in examples], "right")
        return batch

    @staticmethod
    def _index(examples: list[Example]) -> torch.Tensor:
        return torch.tensor([e.index for e in examples], dtype=torch.long)

    def _collate_train(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        if self.train_batches == "annotated":
            return self.collate_annotated(examples)
        return self.collate_prompts(examples, with_labels=self.train_batches == "labeled")

    def _collate_eval(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return self.collate_prompts(examples, with_labels=True)

    @property
    def train_size(self) -> int:
        """Examples in the training split."""
        return len(self.examples["train"])

    def train_batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The training examples at ``indices`` as the training loader batches them."""
        return self._collate_train([self.examples["train"][i] for i in indices])

    # ---- loaders -----------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = ResumableBatchSampler(
            num_items=len(self.examples["train"]),
            batch_size=self.config.batch_size,
            seed=self.seed,
            start_batch=lambda: self.consumed_batches,
            num_batches=self.num_train_batches(trainer.max_steps if trainer else 1),
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            lengths=[len(e.prompt_ids) + len(e.target_ids) for e in self.examples["train"]],
            bucket_batches=self.config.bucket_batches,
        )
        return DataLoader(self.examples["train"], batch_sampler=sampler, collate_fn=self._collate_train, num_workers=self.config.num_workers)

    def num_train_batches(self, max_steps: int) -> int:
        """Batches a run of ``max_steps`` optimizer steps consumes (one per step unless a method says otherwise)."""
        return max_steps

    def _eval_loader(self, split: str) -> DataLoader:
        # Each rank evaluates every world_size-th question; unlike DistributedSampler nothing
        # is repeated to even out the shards, so synced metrics count each question once.
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        shard = list(range(rank, len(self.examples[split]), world))
        return DataLoader(self.examples[split], batch_size=self.config.eval_batch_size, sampler=shard,
                          collate_fn=self._collate_eval, num_workers=self.config.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self.consumed_batches += 1
        return batch

    def state_dict(self) -> dict:
        return {"consumed_batches": self.consumed_batches}

    def load_state_dict(self, state_dict: dict) -> None:
        self.consumed_batches = int(state_dict["consumed_batches"])
