"""GRPO (docs/METHODS.md section 5): group-normalised advantages, clipped ratio, optional k3 KL.

With ``reward: majority`` it is label-free (TTRL-style): the training batches carry no
answers and each sample is rewarded for agreeing with its group's majority answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_modules.config import require
from lightning_modules.distributed import all_reduce_sum, world_size
from lightning_modules.losses import (
    aggregate_loss,
    clipped_surrogate,
    entropy_from_logits,
    entropy_reward,
    grpo_advantages,
    gspo_loss,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    overlong_penalty,
    self_certainty,
)
from lightning_modules.rewards import MajorityVoteReward, RuleReward
from lightning_modules.rl_base import EXTRA_DRAWS, RLConfig, RLModule, eval_mode, group_rows
from lightning_modules.rollout import Rollout, Rows, Signals


@dataclass
class GRPOConfig(RLConfig):
    """GRPO knobs; defaults from DeepSeekMath (Shao et al. 2024) unless noted."""

    samples_per_prompt: int = 8
    """G, responses per question (DeepSeekMath: 64; TRL's default: 8)."""
    ppo_epochs: int = 1
    """Passes over each rollout (DeepSeekMath: 1, so the ratio is 1 and the clip only matters with more)."""
    clip_eps: float = 0.2
    """Ratio clip (DeepSeekMath: 0.2)."""
    kl_coef: float = 0.04
    """Weight of the per-token k3 KL to the reference (DeepSeekMath: 0.04; Dr. GRPO and DAPO: 0, which drops the reference)."""
    scale: str = "group"
    """Advantage scale: group (divide by the group's std, GRPO) or none (Dr. GRPO)."""
    loss_aggregation: str = "grpo"
    """grpo (mean of sequence means), dr_grpo (sum / (B * max_new_tokens)) or dapo (sum / response tokens of the whole rollout, all ranks, as TRL)."""
    reward: str = "rule"
    """rule (1 / 0.1 / 0 against the gold answer), majority (label-free: 1 if the sample agrees with its group's majority answer, TTRL) or package.module:function."""
    clip_eps_high: float | None = None
    """Upper ratio clip 1 + this (DAPO's clip-higher: 0.28); null: clip_eps on both sides."""
    importance: str = "token"
    """token (GRPO: one ratio per token) or sequence (GSPO, arXiv 2507.18071: one length-normalised ratio per response, clipped by gspo_clip_low / gspo_clip_high)."""
    gspo_clip_low: float = 3e-4
    """GSPO's lower clip (GSPO: 3e-4)."""
    gspo_clip_high: float = 4e-4
    """GSPO's upper clip (GSPO: 4e-4)."""
    kl_estimator: str = "k3"
    """Per-token KL estimator of the kl_coef term: k1 (logp - ref), k2 (0.5 (logp - ref)^2) or k3 (DeepSeekMath's)."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss subtracts this times the mean token entropy (0 is off, as in DeepSeekMath)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong penalty: responses longer than max_new_tokens minus this lose up to 1 (DAPO: 4096 of 20480); 0 is off."""
    mask_truncated: bool = False
    """Leave responses cut at max_new_tokens out of the loss (DAPO's overlong filtering)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: groups whose rewards all match carry no signal and are dropped, and further questions
    of the training split are sampled until the batch is full of groups that do, for at most max_sampling_rounds."""
    max_sampling_rounds: int = 3
    """Sampling rounds of one step with dynamic_sampling (DAPO's recipe allows 10 for 8B-token budgets; 3 keeps a
    CPU step within 3x). A batch still short after them is topped up with dropped groups, whose advantages are 0,
    so every rank trains on the same number of rows and runs the same number of updates."""

    def validate(self) -> None:
        super().validate()
        require(self.clip_eps_high is None or self.clip_eps_high > 0, f"algo.clip_eps_high must be positive, got {self.clip_eps_high}")
        require(self.importance in ("token", "sequence"), f"algo.importance must be token or sequence, got {self.importance!r}")
        require(self.gspo_clip_low > 0 and self.gspo_clip_high > 0, "algo.gspo_clip_low and algo.gspo_clip_high must be positive")
        require(self.kl_estimator in ("k1", "k2", "k3"), f"algo.kl_estimator must be k1, k2 or k3, got {self.kl_estimator!r}")
        require(self.entropy_coef >= 0, f"algo.entropy_coef must be >= 0, got {self.entropy_coef}")
        require(self.overlong_buffer >= 0, f"algo.overlong_buffer must be >= 0, got {self.overlong_buffer}")
        require(self.samples_per_prompt >= 2, f"algo.samples_per_prompt must be at least 2: a group-normalised advantage needs a group, got {self.samples_per_prompt}")
        require(self.clip_eps > 0, f"algo.clip_eps must be positive, got {self.clip_eps}")
        require(self.kl_coef >= 0, f"algo.kl_coef must be >= 0, got {self.kl_coef}")
        require(self.scale in ("group", "none"), f"algo.scale must be group or none, got {self.scale!r}")
        require(self.max_sampling_rounds >= 1, f"algo.max_sampling_rounds must be at least 1, got {self.max_sampling_rounds}")
        require(not self.dynamic_sampling or self.reward != "random",
                "algo.dynamic_sampling keeps groups by their rewards, which the random control draws afresh for every batch; use it with another reward")
        require(self.loss_aggregation in ("grpo", "dr_grpo", "dapo"), f"algo.loss_aggregation must be grpo, dr_grpo or dapo, got {self.loss_aggregation!r}")


@dataclass
class GRPOScores(Rows):
    """What GRPO's scoring pass computed, one row per response."""

    advantages: torch.Tensor
    """[N] the group-normalised advantage of each response (the same for all its tokens)."""
    logp_old: torch.Tensor | None = None
    """[N, T] log-probs at sampling time; None with one update per rollout, whose own (detached) log-probs are the old ones."""
    logp_ref: torch.Tensor | None = None
    """[N, T] the reference policy's log-probs; None without a KL term."""
    truncated: torch.Tensor | None = None
    """[N] bool, responses cut at max_new_tokens (no EOS): DAPO's overlong filtering leaves them out of the loss."""
    rollout_tokens: int | None = None
    """Response tokens of the whole rollout summed over ranks, dapo's denominator; None for the other
    aggregations. Not a row field: every minibatch keeps it whole."""


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


class GRPOModule(RLModule):
    name = "grpo"
    Config = GRPOConfig
    rewards_offered = ("rule", "majority")
    sampling_metrics: dict[str, torch.Tensor] = {}
    """The last rollout's dynamic-sampling metrics (none without it)."""

    @classmethod
    def batch_kind(cls, config) -> str:
        return "unlabeled" if config.algo.reward == "majority" else "labeled"

    @property
    def uses_reference(self) -> bool:
        return self.config.algo.kl_coef > 0

    def named_reward(self, name: str):
        return MajorityVoteReward() if name == "majority" else RuleReward()

    def rollout(self, batch: dict[str, torch.Tensor], draw: int = 0) -> Rollout:
        """The batch's rollout; with dynamic sampling (DAPO), groups whose rewards all match are
        replaced by groups of further questions drawn at random from the training split, for at
        most ``max_sampling_rounds`` rounds, then topped up with dropped groups (advantage 0) so
        the rollout always has the batch's size."""
        first = super().rollout(batch, draw)
        self.sampling_metrics = {}
        if not self.algo.dynamic_sampling:
            return first
        group, wanted = first.group, len(first) // first.group
        kept, dropped, informative, seen = [], [], 0, 0
        part, rounds = first, 0
        while True:
            keep = self.informative_groups(part)
            kept.append(part.select(group_rows(keep.nonzero().flatten(), group)))
            dropped.append(part.select(group_rows((~keep).nonzero().flatten(), group)))
            informative, seen, rounds = informative + int(keep.sum()), seen + keep.numel(), rounds + 1
            if informative >= wanted or rounds == self.algo.max_sampling_rounds:
                break
            part = super().rollout(self.further_questions(rounds), draw=rounds)
        merged = Rollout.concat(kept + dropped, self.tokenizer.pad_token_id)
        self.sampling_metrics = {"frac_groups_filtered": torch.tensor((seen - informative) / seen),
                                 "sampling_rounds": torch.tensor(float(rounds))}
        return merged.select(torch.arange(len(first)))

    def informative_groups(self, rollout: Rollout) -> torch.Tensor:
        """[questions] bool: whether the reward part's rewards differ within each group."""
        needs = getattr(self.reward, "needs", ())
        logits = None
        if needs:
            with eval_mode(self.policy):
                logits, _ = self.forward_responses(self.policy, rollout)
        values = self.rewards(rollout, self.distribution_signals(logits, rollout.response_mask, needs)).values
        return values.view(-1, rollout.group).std(dim=-1) > 0

    def further_questions(self, draw: int) -> dict[str, torch.Tensor]:
        """A batch of training questions drawn at random (without replacement) for sampling round
        ``draw`` of this step, seeded by (seed, rank, step, round) so a resumed run draws alike."""
        datamodule = self.trainer.datamodule
        generator = torch.Generator().manual_seed(self.run_seed(self.global_step + draw * EXTRA_DRAWS))
        picks = torch.randperm(datamodule.train_size, generator=generator)[: self.config.data.batch_size]
        return {key: value.to(self.device) for key, value in datamodule.train_batch(picks.tolist()).items()}

    def score(self, rollout: Rollout) -> tuple[GRPOScores, dict[str, torch.Tensor]]:
        logits, logp_old, logp_ref = None, None, None
        needs = getattr(self.reward, "needs", ())
        if not self.single_update or needs:  # old log-probs, or a reward read off the policy's own distributions
            logits, _ = self.forward_responses(self.policy, rollout)
        if not self.single_update:
            logp_old = self.logprobs(logits, rollout.response_ids)
        metrics = self.rollout_metrics(rollout, logits)
        if self.uses_reference:
            logp_ref = self.logprobs(self.reference_logits(rollout), rollout.response_ids)
        rewards = self.rewards(rollout, self.distribution_signals(logits, rollout.response_mask, needs))
        values = rewards.values
        truncated = self.truncated(rollout)
        metrics["overlong_share"] = truncated.float().mean()
        if self.algo.overlong_buffer:
            lengths = rollout.response_mask.sum(-1)
            values = values + overlong_penalty(lengths, self.config.trainer.max_new_tokens, self.algo.overlong_buffer).to(values.dtype)
        grouped = values.view(-1, rollout.group)
        metrics |= rewards.metrics
        metrics["reward"] = grouped.mean()
        metrics["frac_reward_zero_std"] = (grouped.std(dim=-1) == 0).float().mean() if rollout.group > 1 else torch.ones(())
        metrics |= self.sampling_metrics
        rollout_tokens = None
        if self.algo.loss_aggregation == "dapo":  # the same on every rank, so every rank joins this all-reduce
            rollout_tokens = int(all_reduce_sum(rollout.response_mask.sum()).item())
        advantages = grpo_advantages(grouped, self.algo.scale).view(-1)
        return GRPOScores(advantages, logp_old, logp_ref, truncated=truncated, rollout_tokens=rollout_tokens), metrics

    def truncated(self, rollout: Rollout) -> torch.Tensor:
        """[N] bool: responses cut at max_new_tokens (no EOS)."""
        ended = (rollout.response_ids == self.tokenizer.eos_token_id) & rollout.response_mask.bool()
        return ~ended.any(-1)

    def distribution_signals(self, logits: torch.Tensor | None, mask: torch.Tensor, needs: tuple[str, ...]) -> Signals:
        """What a label-free reward reads off the policy's next-token distributions at the scoring
        temperature, computed only when the reward part asks for it."""
        signals = Signals()
        if not needs:
            return signals
        scaled = logits / self.score_temperature
        if "self_certainty" in needs:
            signals.self_certainty = self_certainty(scaled, mask)
        if "entropy" in needs:
            signals.entropy = -entropy_reward(scaled, mask, "mean")
        if "entropy_sum" in needs:
            signals.entropy_sum = -entropy_reward(scaled, mask, "sum")
        return signals

    def loss(self, rollout: Rollout, scores: GRPOScores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = rollout.response_mask
        if self.algo.mask_truncated:
            mask = mask * (~scores.truncated).to(mask.dtype)[:, None]
        logits, _ = self.forward_responses(self.policy, rollout)
        logp = self.logprobs(logits, rollout.response_ids)
        metrics = {}
        if self.single_update:  # the rollout was not scored: its log-probs and entropy are this pass's
            logp_old = logp.detach()
            metrics |= self.distribution_metrics(rollout, logits)
        else:
            logp_old = scores.logp_old
        if self.algo.importance == "sequence":
            loss, metrics["clip_frac"] = gspo_loss(logp, logp_old, scores.advantages, mask, self.algo.gspo_clip_low, self.algo.gspo_clip_high)
            per_token = torch.zeros_like(logp)
        else:
            per_token, clipped = clipped_surrogate(logp, logp_old, scores.advantages[:, None], self.algo.clip_eps, self.algo.clip_eps_high)
            metrics["clip_frac"] = masked_mean(clipped.float(), mask).detach()
            metrics |= self.clip_ratios(clipped, scores.advantages, mask)
        if self.uses_reference:
            kl = KL_ESTIMATORS[self.algo.kl_estimator](logp, scores.logp_ref)
            per_token = per_token + self.algo.kl_coef * kl
            metrics["kl"] = masked_mean(kl, mask).detach()
        if self.algo.entropy_coef:
            per_token = per_token - self.algo.entropy_coef * entropy_from_logits(logits / self.score_temperature)
        # dapo: this minibatch's token sum over the rollout's global token count, times the number
        # of ranks because DDP averages their gradients; summed over minibatches and ranks, the
        # update follows the gradient of one token mean over the whole rollout (TRL's normaliser).
        num_tokens = scores.rollout_tokens / world_size() if scores.rollout_tokens is not None else None
        token_terms = aggregate_loss(per_token, mask, self.algo.loss_aggregation, self.config.trainer.max_new_tokens, num_tokens)
        return (loss + token_terms if self.algo.importance == "sequence" else token_terms), metrics

    @staticmethod
    def clip_ratios(clipped: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shares of tokens clipped at the lower bound (negative advantage) and at the upper one (positive)."""
        negative = (advantages < 0)[:, None]
        return {"clip_ratio/low": masked_mean((clipped & negative).float(), mask).detach(),
                "clip_ratio/high": masked_mean((clipped & ~negative).float(), mask).detach()}
