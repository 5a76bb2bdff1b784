"""The shared RL base: rollout, scoring, a fixed number of updates per rollout, and logging.

One training step of an RL method is one rollout batch followed by ``ppo_epochs x
minibatches`` optimizer updates; ``trainer.max_steps``, validation, checkpoints, the
learning-rate schedule and the TensorBoard x-axis all count rollouts. The step, in order:

1. :meth:`RLModule.rollout` samples responses and reads their answers (a typed
   :class:`~lightning_modules.rollout.Rollout`);
2. :meth:`score` (the method's, no gradient) returns its own record of what the loss needs
   (old log-probs, values, advantages, ...) and the rollout's metrics;
3. :meth:`update` runs the fixed number of optimizer updates, each on
   ``loss(rollout.select(rows), scores.select(rows))`` (the method's, with gradient);
4. :meth:`log_step` averages the metrics over ranks and logs them.

A method says only what differs: its heads (:meth:`build_heads`), its reward part
(:meth:`build_reward`), :meth:`score` and :meth:`loss`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datamodules.answers import check_answer, extract_answer
from lightning_modules.base import ReasoningModule
from lightning_modules.config import require
from lightning_modules.distributed import all_reduce_mean
from lightning_modules.generation import decode, generate, response_logits
from lightning_modules.losses import masked_mean, token_entropy, token_logprobs
from lightning_modules.policy import Policy
from lightning_modules.sharding import full, gathered, is_sharded
from lightning_modules.rewards import CONTROLS, check_reward_name, control_reward, is_function_spec, load_function_reward
from lightning_modules.rollout import Rewards, Rollout, Rows, Signals


EXTRA_DRAWS = 1_000_000_000
"""Seed offset of a step's further sampling rounds: round r of step s draws as index s + r * this."""


@dataclass
class RLConfig:
    """Rollout and update settings every RL method shares."""

    samples_per_prompt: int = 1
    """Responses sampled per question (ReFT / CARFT: 1)."""
    temperature: float = 1.0
    """Sampling temperature (ReFT / CARFT: 1.0)."""
    top_k: int = 0
    """Top-k sampling; 0 is off (ReFT)."""
    top_p: float = 1.0
    """Nucleus sampling; 1.0 is off (ReFT)."""
    score_temperature: float | None = None
    """Temperature of the log-probs used in the loss; null means the sampling temperature (docs/METHODS.md section 0)."""
    ppo_epochs: int = 2
    """Passes over each rollout batch (ReFT: 2)."""
    minibatches: int = 1
    """Optimizer updates per pass; the rollout's samples are split into this many parts."""
    reward: str = "rule"
    """Reward part: rule (1 / 0.1 / 0 against the gold answer, ReFT), another name the method offers, a control (random: Bernoulli(0.5) from the run's seed; format: 1 if an answer parses), or a function of the rollout given as package.module:function."""

    def validate(self) -> None:
        require(self.samples_per_prompt >= 1, f"algo.samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        require(self.temperature > 0, f"algo.temperature must be positive, got {self.temperature}")
        require(self.top_k >= 0, f"algo.top_k must be >= 0, got {self.top_k}")
        require(0 < self.top_p <= 1, f"algo.top_p must lie in (0, 1], got {self.top_p}")
        require(self.score_temperature is None or self.score_temperature > 0, f"algo.score_temperature must be positive, got {self.score_temperature}")
        require(self.ppo_epochs >= 1, f"algo.ppo_epochs must be >= 1, got {self.ppo_epochs}")
        require(self.minibatches >= 1, f"algo.minibatches must be >= 1, got {self.minibatches}")


def group_rows(groups: torch.Tensor, group: int) -> torch.Tensor:
    """Row indices of whole groups of ``group`` consecutive rows: ``groups`` [K] -> [K * group]."""
    return (groups[:, None] * group + torch.arange(group, device=groups.device)).flatten()


@contextmanager
def eval_mode(module: nn.Module):
    """Sampling and scoring run in eval mode (no dropout), then the previous mode returns."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class RLModule(ReasoningModule):
    """Base of PPO, CARFT, GRPO and RLSC; manual optimisation with a fixed update count."""

    Config = RLConfig
    train_batches = "labeled"
    manual_optimization = True
    progress_metrics: tuple[str, ...] = ("train/reward", "train/accuracy")
    """Shown on the progress bar."""
    uses_reference: bool = False
    """Whether :meth:`score` needs the frozen reference policy (see :meth:`reference_logits`)."""
    rewards_offered: tuple[str, ...] = ("rule",)
    """The reward parts this method offers by name for ``algo.reward`` (besides package.module:function)."""

    def __init__(self, config, tokenizer, model_path: str) -> None:
        super().__init__(config, tokenizer, model_path)
        self.algo = config.algo
        self.step_timings: dict[str, float] = {}
        """The last step's seconds of generation, scoring and update, and its sample and token counts."""
        self.build_heads()
        self.reward = self.build_reward()
        # Kept in a list so that it is not a submodule: no optimizer state, not in checkpoints,
        # not wrapped by DDP. It is the starting policy (docs/METHODS.md section 0), loaded again
        # from disk; with LoRA the policy's own frozen base is the starting policy, and no copy is loaded.
        self._reference: list[Policy] = []
        if self.uses_reference and not self.policy.has_adapters:
            reference = Policy.from_pretrained(model_path, config.model).eval().requires_grad_(False)
            self._reference.append(reference)

    # ---- what a method says -------------------------------------------------------------
    def build_heads(self) -> None:
        """Add heads to ``self.policy.heads`` (none by default)."""

    def build_reward(self):
        """The reward part named by ``algo.reward``: one of :attr:`rewards_offered` (made by
        :meth:`named_reward`) or a user's ``package.module:function``."""
        spec = self.algo.reward
        if is_function_spec(spec):
            return load_function_reward(spec, uses_labels=self.batch_kind(self.config) != "unlabeled")
        if spec in CONTROLS:
            return control_reward(spec, self.config.seed)
        return self.named_reward(spec)

    def named_reward(self, name: str):
        """The part for one of :attr:`rewards_offered`."""
        raise NotImplementedError

    def score(self, rollout: Rollout) -> tuple[Rows, dict[str, torch.Tensor]]:
        """What the loss needs (old log-probs, advantages, ...) as the method's own record, and the
        rollout's metrics; called under no gradient, in eval mode."""
        raise NotImplementedError

    def loss(self, rollout: Rollout, scores: Rows) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one minibatch (the same rows of the rollout and of its scores), with
        gradient, and metrics to average over the updates."""
        raise NotImplementedError

    @classmethod
    def group_rows(cls, config) -> int:
        """Rows that must stay in one minibatch (a question's samples, when the loss compares them)."""
        return 1

    @property
    def minibatch_group(self) -> int:
        return self.group_rows(self.config)

    @classmethod
    def validate_run(cls, config) -> None:
        require(
            not config.trainer.precision.startswith("16"),
            f"RL methods clip gradients by hand, which fp16 loss scaling does not support; use bf16-mixed, not {config.trainer.precision}",
        )
        check_reward_name(config.algo.reward, cls.rewards_offered)
        group = cls.group_rows(config)
        rows = config.data.batch_size * config.algo.samples_per_prompt // group
        require(
            rows >= config.algo.minibatches,
            f"algo.minibatches ({config.algo.minibatches}) is more than the {'questions' if group > 1 else 'samples'} "
            f"of a rollout ({rows}), so some updates would see nothing",
        )

    # ---- shared machinery -----------------------------------------------------------------
    @property
    def reference(self) -> Policy:
        return self._reference[0]

    @property
    def single_update(self) -> bool:
        """One optimizer update per rollout, on the policy that sampled it: the old log-probs
        are the update's own, detached (the ratio is exactly 1), so no scoring pass is needed."""
        return self.algo.ppo_epochs * self.algo.minibatches == 1

    @property
    def score_temperature(self) -> float:
        return self.algo.score_temperature or self.algo.temperature

    def place_reference(self, device: torch.device) -> None:
        """The frozen reference on the policy's device and in its dtype."""
        dtype = next(self.policy.parameters()).dtype
        for reference in self._reference:
            if not is_sharded(reference):  # a sharded one was placed before it was sharded
                reference.to(device=device, dtype=dtype)

    def on_fit_start(self) -> None:
        self.place_reference(self.device)

    def sharded_modules(self) -> list[Policy]:
        return [self.policy, *self._reference]

    def configure_model(self) -> None:
        self.place_reference(self.trainer.strategy.root_device)  # sharded where it will run
        super().configure_model()

    def sampling_seed(self) -> int:
        """Sampling depends only on (seed, rank, step): ranks differ, and a resumed run draws
        the same responses an uninterrupted one would have."""
        return self.run_seed(self.global_step)

    @torch.no_grad()
    def rollout(self, batch: dict[str, torch.Tensor], draw: int = 0) -> Rollout:
        """Sample ``samples_per_prompt`` responses for every question of the batch (no gradient,
        eval mode) and read their answers; gold answers and annotations only if the batch has them.
        ``draw`` > 0 numbers a further sampling round of the same step (DAPO's dynamic sampling),
        seeded apart from the first."""
        n = self.algo.samples_per_prompt
        prompt_ids = batch["prompt_ids"].repeat_interleave(n, 0)
        prompt_mask = batch["prompt_mask"].repeat_interleave(n, 0)
        with eval_mode(self.policy), self.seeded(self.global_step + draw * EXTRA_DRAWS):
            response_ids, mask = generate(
                self.policy.lm, prompt_ids, prompt_mask, self.tokenizer, self.config.trainer.max_new_tokens, do_sample=True,
                temperature=self.algo.temperature, top_k=self.algo.top_k, top_p=self.algo.top_p, sampler=self.config.trainer.sampler,
            )
        texts = decode(self.tokenizer, response_ids, mask)
        predictions = [extract_answer(text, self.config.data.answer_style) for text in texts]  # needs no label
        labels = {key: batch[key].repeat_interleave(n, 0) for key in ("answer", "target_ids", "target_mask") if key in batch}
        correct = None
        if "answer" in labels:
            gold = labels["answer"].tolist()
            checker = self.config.data.answer_checker
            correct = torch.tensor([check_answer(t, p, g, checker) for t, p, g in zip(texts, predictions, gold)], device=self.device)
        return Rollout(
            input_ids=torch.cat([prompt_ids, response_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, mask], dim=1),
            response_ids=response_ids,
            response_mask=mask,
            question=batch["index"].repeat_interleave(n, 0),
            texts=texts,
            predictions=predictions,
            group=n,
            step=self.global_step,
            correct=correct,
            **labels,
        )

    def forward_responses(self, policy: Policy, rollout: Rollout, hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (and, if asked, hidden states) that score the rollout's response tokens; see
        :func:`~lightning_modules.generation.response_logits`."""
        return response_logits(policy, rollout.input_ids, rollout.attention_mask, rollout.response_ids.size(1), hidden)

    def rewards(self, rollout: Rollout, signals: Signals | None = None) -> Rewards:
        """The reward part's rewards for the rollout, given what scoring measured."""
        return self.reward(rollout, signals or Signals())

    def entropy(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean per-token entropy of the scoring distribution over the response tokens."""
        return masked_mean(token_entropy(logits.detach() / self.score_temperature, mask), mask)

    def reference_logits(self, rollout: Rollout) -> torch.Tensor:
        """Logits of the reference policy at the response positions: the frozen copy, or with
        LoRA this policy with its adapters bypassed."""
        if self._reference:
            return self.forward_responses(self.reference, rollout)[0]
        with torch.no_grad(), eval_mode(self.policy), self.policy.lm.disable_adapter():
            return self.forward_responses(self.policy, rollout)[0]

    def logprobs(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return token_logprobs(logits, tokens, self.score_temperature)

    def rollout_metrics(self, rollout: Rollout, logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Length, accuracy (labeled batches) and, given the rollout's logits, entropy of the sampled responses."""
        mask = rollout.response_mask
        metrics = {"response_length": mask.sum(-1).float().mean()}
        if logits is not None:
            metrics |= self.distribution_metrics(rollout, logits)
        if rollout.correct is not None:
            metrics["accuracy"] = rollout.correct.float().mean()
        return metrics

    def distribution_metrics(self, rollout: Rollout, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of the policy's next-token distributions over the rollout's responses (no gradient)."""
        return {"entropy": self.entropy(logits, rollout.response_mask)}

    def clock(self) -> float:
        """Wall time after the device has finished its queued work (phase timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # ---- the step -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        started = self.clock()
        # Under FSDP2 sampling and scoring run on the policy's gathered weights (lightning_modules/sharding.py);
        # the reference stays sharded and gathers layer by layer, in its one forward pass per step on every rank.
        with gathered(self.policy):
            rollout = self.rollout(batch)
            generated = self.clock()
            with torch.no_grad(), eval_mode(self.policy):
                scores, rollout_metrics = self.score(rollout)
        tokens = int(rollout.attention_mask.sum())
        self.count_tokens(tokens)
        scored = self.clock()
        update_metrics = self.update(rollout, scores)
        updated = self.clock()
        self.step_timings = {
            "generate_s": generated - started,
            "score_s": scored - generated,
            "update_s": updated - scored,
            "generated_tokens": int(rollout.response_mask.sum()),
            "tokens": tokens,  # prompts and responses, what a full forward pass over the rollout covers
            "samples": len(rollout),
        }
        self.log_step({**rollout_metrics, **update_metrics}, len(rollout))

    def minibatch_rows(self, rows: int, generator: torch.Generator) -> list[torch.Tensor]:
        """One epoch's minibatches: row indices, whole groups of :attr:`minibatch_group` together,
        shuffled when there is more than one minibatch."""
        group = self.minibatch_group
        groups = rows // group
        order = torch.randperm(groups, generator=generator) if self.algo.minibatches > 1 else torch.arange(groups)
        return list(torch.tensor_split(group_rows(order, group), self.algo.minibatches))

    def update(self, rollout: Rollout, scores: Rows) -> dict[str, torch.Tensor]:
        """``ppo_epochs x minibatches`` optimizer updates; the metrics averaged over those applied."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        updates = self.algo.ppo_epochs * self.algo.minibatches
        generator = torch.Generator().manual_seed(self.sampling_seed())
        # Every rank runs exactly `updates` optimizer steps: a data-dependent skip would leave
        # the other ranks waiting in the gradient all-reduce (DDP hangs).
        done, applied = 0, 0
        for _ in range(self.algo.ppo_epochs):
            for part in self.minibatch_rows(len(rollout), generator):
                rows = part.to(self.device)
                loss, metrics = self.loss(rollout.select(rows), scores.select(rows))
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                done += 1
                if self.drop_update_if_not_finite(optimizer, loss):
                    self.optimizer_update(optimizer, last=done == updates)  # a no-op step: it still counts
                    continue
                metrics = {"loss": loss.detach(), **metrics}
                clip = self.config.trainer.gradient_clip_val or float("inf")
                metrics["grad_norm"] = full(torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), clip)).detach()
                self.optimizer_update(optimizer, last=done == updates)
                applied += 1
                for key, value in metrics.items():
                    sums[key] = sums[key] + value.detach().float()
        scheduler.step()
        # Averages over the updates that were applied (every rank applied the same ones).
        return {k: v / max(applied, 1) for k, v in sums.items()}

    def log_step(self, metrics: dict[str, torch.Tensor], samples: int) -> None:
        logged = {f"train/{k}": v for k, v in metrics.items()}
        for key in ("generate_s", "score_s", "update_s"):
            logged[f"perf/{key}"] = torch.tensor(self.step_timings[key])
        self.log_metrics(logged)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=samples)

    def optimizer_update(self, optimizer, last: bool) -> None:
        """Lightning counts one step per ``LightningOptimizer.step``. One RL step is one rollout,
        so the earlier updates step the wrapped optimizer through the strategy (same precision
        handling) and only the last update of the rollout is counted."""
        if last:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None, model=self)

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Average over ranks with one all-reduce, then log (every rank logs the same keys)."""
        keys = sorted(metrics)
        values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32, device=self.device).reshape(()) for k in keys])
        values = all_reduce_mean(values).cpu()
        for key, value in zip(keys, values.tolist()):
            self.log(key, value, prog_bar=key in self.progress_metrics, batch_size=1)
