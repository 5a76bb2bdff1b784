"""What every method shares: the policy, the optimiser, and validation by greedy decoding."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import ClassVar

import lightning as L
import torch
from torchmetrics import MeanMetric
from transformers import PreTrainedTokenizerBase

from lightning_modules.config import RunConfig
from lightning_modules.distributed import all_reduce_sum
from lightning_modules.evaluation import grade, respond, sampling_seed, seeded
from lightning_modules.policy import Policy
from lightning_modules.sharding import SHARDED, WORLD_SIZE_KEY, gathered, is_sharded, local, shard_policy


@dataclass
class NoKnobs:
    """This method has no knobs of its own."""


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str, min_ratio: float):
    """Linear warm-up to 1, then linear or cosine decay to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_ratio + (1.0 - min_ratio) * shape

    return factor


class TrainingDiverged(RuntimeError):
    """Too many optimizer updates in a row had a non-finite loss or gradient."""


class ReasoningModule(L.LightningModule):
    """Base of every method. Subclasses set ``name``, ``Config``, ``train_batches`` and ``training_step``."""

    name: ClassVar[str]
    Config: ClassVar[type] = NoKnobs
    train_batches: ClassVar[str] = "annotated"
    manual_optimization: ClassVar[bool] = False
    """Whether training_step steps the optimizer itself (the RL methods)."""

    @classmethod
    def validate_run(cls, config: RunConfig) -> None:
        """Refuse, with one sentence, settings this method cannot run (before anything loads)."""

    @classmethod
    def batch_kind(cls, config: RunConfig) -> str:
        """Which training batches the DataModule builds for this run (annotated, labeled, unlabeled)."""
        return cls.train_batches

    def __init__(self, config: RunConfig, tokenizer: PreTrainedTokenizerBase, model_path: str) -> None:
        super().__init__()
        self.automatic_optimization = not self.manual_optimization
        self.config, self.tokenizer = config, tokenizer
        self.policy = Policy.from_pretrained(model_path, config.model)
        names = ["accuracy", "response_length", "parse_rate"]
        sampled = [f"pass@{self.eval_samples}", f"maj@{self.eval_samples}", "sampled_accuracy"] if self.eval_samples else []
        # Sampled metrics on the validation split only: K samples of every test question would
        # cost K greedy test passes before and after training.
        self.eval_metrics = torch.nn.ModuleDict(
            {stage: torch.nn.ModuleDict({k: MeanMetric() for k in names + (sampled if stage == "val" else [])}) for stage in ("val", "test")}
        )
        self._step_started, self._step_tokens = time.perf_counter(), 0
        self._samples: list[str] = []
        self._gathered = ExitStack()
        self.skipped_updates, self.skipped_in_a_row = 0, 0
        """Updates skipped for a non-finite loss or gradient: in all, and since the last good one (checkpointed)."""

    # ---- sharding (trainer.strategy fsdp) --------------------------------------------------
    def configure_model(self) -> None:
        """Under FSDP2, shard the policy and its heads per decoder layer (once: Lightning calls
        this at every fit, validate and test)."""
        if self.config.trainer.strategy == SHARDED and not is_sharded(self.policy):
            for module in self.sharded_modules():
                shard_policy(module, self.device_mesh, bf16=self.config.trainer.precision == "bf16-mixed")

    def sharded_modules(self) -> list[Policy]:
        """The policies FSDP2 shards (the trained one; RL methods add their reference)."""
        return [self.policy]

    # ---- optimisation ------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        optim = self.config.optim
        heads = {id(p) for p in self.policy.heads.parameters()}
        groups = [
            {"params": [p for p in self.trainable_parameters() if id(p) not in heads], "lr": optim.lr},
            {"params": [p for p in self.trainable_parameters() if id(p) in heads], "lr": optim.lr * optim.head_lr_scale},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(optim.warmup_steps, self.config.trainer.max_steps, optim.schedule, optim.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- numerical guard ------------------------------------------------------------------
    def drop_update_if_not_finite(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
        """Check the loss and every gradient; if any is NaN or infinite on any rank, drop all
        gradients on every rank alike and return True. AdamW leaves parameters without a
        gradient untouched (weights and moments), so the coming ``step()`` changes nothing.
        After ``trainer.max_skipped_updates`` such updates in a row the run stops."""
        grads = [local(p.grad) for p in self.trainable_parameters() if p.grad is not None]  # this rank's shards
        bad = (~torch.isfinite(loss.detach().float())).any()
        if grads:
            bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True))
        bad = bool(all_reduce_sum(bad.float().reshape(1)).item() > 0)  # one verdict for every rank
        if not bad:
            self.skipped_in_a_row = 0
            return False
        optimizer.zero_grad(set_to_none=True)
        self.skipped_updates += 1
        self.skipped_in_a_row += 1
        limit = self.config.trainer.max_skipped_updates
        if self.skipped_in_a_row >= limit:
            raise TrainingDiverged(
                f"{self.skipped_in_a_row} optimizer updates in a row had a non-finite loss or gradient (the limit is "
                f"trainer.max_skipped_updates={limit}), at step {self.global_step}; lower optim.lr or resume from an earlier checkpoint"
            )
        return True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["method"] = self.name  # a resume with another method is refused
        checkpoint["skipped_updates"] = [self.skipped_updates, self.skipped_in_a_row]
        checkpoint[WORLD_SIZE_KEY] = self.trainer.world_size  # a resume must split the data and seeds alike

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_updates, self.skipped_in_a_row = checkpoint.get("skipped_updates", [0, 0])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started, self._step_tokens = time.perf_counter(), 0

    def count_tokens(self, num_tokens: int) -> None:
        """Tokens processed by this training step, for ``perf/tokens_per_s``."""
        self._step_tokens += num_tokens

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Measured here, after the backward pass and the optimizer step.
        seconds = time.perf_counter() - self._step_started
        self.log("perf/step_s", seconds)
        self.log("perf/tokens_per_s", self._step_tokens / max(seconds, 1e-9))
        self.log("train/skipped_updates", float(self.skipped_updates))

    # ---- seeded sampling ------------------------------------------------------------------
    def run_seed(self, index: int) -> int:
        """This rank's seed of draw ``index`` (see :func:`~lightning_modules.evaluation.sampling_seed`)."""
        return sampling_seed(self.config.seed, self.global_rank, index)

    @contextmanager
    def seeded(self, index: int):
        """Sample from the RNG seeded by :meth:`run_seed`, leaving the global RNG as it was."""
        with seeded(self.run_seed(index), self.device):
            yield

    # ---- evaluation by greedy decoding (and, if asked, k samples per question) -------------
    @property
    def eval_samples(self) -> int:
        """Responses sampled per held-out question for pass@k and maj@k; 0 evaluates greedily only."""
        return 0

    @property
    def eval_temperature(self) -> float:
        return 1.0

    def _evaluate(self, stage: str, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Greedy pass@1, parse rate and length; on the validation split also, with ``eval_samples``
        k, pass@k (any of the k right), maj@k and the mean accuracy of the k samples, drawn under
        the run's seed for this batch (every evaluation of a run draws alike)."""
        trainer_config, gold = self.config.trainer, batch["answer"].tolist()
        greedy = respond(self.policy, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"], trainer_config.max_new_tokens,
                         sampler=trainer_config.sampler)
        graded = grade(greedy.texts, gold, answer_style=self.config.data.answer_style, checker=self.config.data.answer_checker)
        metrics = self.eval_metrics[stage]
        metrics["accuracy"].update(graded.correct[:, 0].float())
        metrics["response_length"].update(greedy.lengths)
        metrics["parse_rate"].update(graded.parsed[:, 0].float())
        k = self.eval_samples
        if k and stage == "val":
            sampled = respond(
                self.policy, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"], trainer_config.max_new_tokens, n=k,
                temperature=self.eval_temperature, seed=self.run_seed(batch_idx), sampler=trainer_config.sampler,
                max_rows=self.config.data.eval_batch_size,
            )
            graded_k = grade(sampled.texts, gold, k, self.config.data.answer_style, self.config.data.answer_checker)
            metrics[f"pass@{k}"].update(graded_k.pass_at(k))
            metrics[f"maj@{k}"].update(graded_k.majority.float())
            metrics["sampled_accuracy"].update(graded_k.correct.float().mean(-1))
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=len(gold))
        if batch_idx == 0 and stage == "val":
            prompts = self.tokenizer.batch_decode(batch["prompt_ids"][:3], skip_special_tokens=True)
            self._samples = [
                f"**prompt**\n\n    {p.strip()}\n\n**response** (gold {float(g):g})\n\n    {t}"
                for p, t, g in zip(prompts, greedy.texts, gold)
            ]

    # Under FSDP2 the weights stay gathered for a whole evaluation: ranks may hold different
    # numbers of batches, and no forward pass inside may wait for another rank.
    def on_validation_epoch_start(self) -> None:
        self._gathered.enter_context(gathered(self.policy))

    on_test_epoch_start = on_validation_epoch_start

    def on_test_epoch_end(self) -> None:
        self._gathered.close()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._gathered.close()
        experiment = getattr(self.logger, "experiment", None)
        if self._samples and self.trainer.is_global_zero and hasattr(experiment, "add_text"):
            experiment.add_text("val/samples", "\n\n---\n\n".join(self._samples), self.global_step)
        self._samples = []
