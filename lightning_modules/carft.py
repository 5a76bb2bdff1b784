"""CARFT (docs/METHODS.md section 3): PPO plus a learned representation of each chain of thought
and contrastive signals between the annotated CoT and the sampled ones (Zhu et al. 2025).

The whole objective is in :meth:`CARFTModule.loss`: PPO's policy and value terms plus
``lambda_cl`` times the contrastive term. Scoring adds what the contrastive term and the
partial reward need (:class:`ContrastTargets`) to PPO's own targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_modules.config import ConfigError, require
from lightning_modules.distributed import gather_rows
from lightning_modules.generation import response_logits
from lightning_modules.heads import build_head
from lightning_modules.losses import (
    carft_negative_loss,
    carft_positive_loss,
    lcs_masks_batch,
    masked_mean,
    negative_rows,
    pool_cot,
    reinforce_loss,
    representation_mse,
    supcon_loss,
    triplet_loss,
)
from lightning_modules.ppo import PPOConfig, PPOModule, PPOScores
from lightning_modules.rewards import PartialReward, RuleReward
from lightning_modules.rollout import Rollout, Rows, Signals


@dataclass
class CARFTConfig(PPOConfig):
    """CARFT knobs; defaults are the authors' final choices unless marked as a seed option."""

    head: str = "shared"
    """CoT head: shared (V read from the embedding, the authors' final head), separate, or mlp (the seed's encoder)."""
    embed_dim: int = 64
    """Width d of the CoT embedding e_t (CARFT: 64; the mlp head uses its own 256)."""
    pooling: str = "value_softmax"
    """How token embeddings become one vector: value_softmax (CARFT), mean or last."""
    pooled_states: str = "at"
    """Which hidden states a CoT's embeddings come from: at (the state at each CoT token, as the authors' code) or predicting (the state that predicts it, which includes the last prompt token's, shared by every sample of a question)."""
    objective: str = "infonce"
    """Contrastive objective: infonce (CARFT's positive and negative signals), triplet or supcon (seed options)."""
    lambda_cl: float = 0.1
    """Weight of the contrastive loss (CARFT swept 0.001 to 1; 0.1 is its default)."""
    positive: bool = True
    """Use the positive signal (annotated CoT vs correct samples)."""
    negative: bool = True
    """Use the negative signal (LCS pieces of incorrect samples)."""
    tau: float = 0.2
    """InfoNCE temperature (CARFT: 0.2)."""
    clamp: float = 0.9
    """Cap on the numerator's cosine: stop pulling once this similar (CARFT: 0.9)."""
    partial_reward: bool = True
    """Embedding-enhanced partial reward for wrong answers: 0.1 * cos(z_ann, z) + 0.2 (CARFT)."""
    mse_weight: float = 0.0
    """Weight of the seed's MSE regulariser between sampled and annotated representations (seed: 0.1; off in CARFT)."""
    triplet_margin: float = 0.5
    """Margin of the triplet objective (seed: 0.5)."""
    seed_temperature: float = 0.07
    """Temperature of the triplet and supcon objectives (seed: 0.07)."""
    rl: str = "ppo"
    """ppo (CARFT) or reinforce (the seed's -(log-prob x reward) averaged over response tokens)."""

    def validate(self) -> None:
        super().validate()
        require(self.head in ("shared", "separate", "mlp"), f"algo.head must be shared, separate or mlp, got {self.head!r}")
        require(self.embed_dim > 0, f"algo.embed_dim must be positive, got {self.embed_dim}")
        require(self.pooling in ("value_softmax", "mean", "last"), f"algo.pooling must be value_softmax, mean or last, got {self.pooling!r}")
        require(self.pooled_states in ("at", "predicting"), f"algo.pooled_states must be at or predicting, got {self.pooled_states!r}")
        require(self.objective in ("infonce", "triplet", "supcon"), f"algo.objective must be infonce, triplet or supcon, got {self.objective!r}")
        require(self.lambda_cl >= 0, f"algo.lambda_cl must be >= 0, got {self.lambda_cl}")
        require(self.positive or self.negative, "algo.positive and algo.negative are both off; set algo.lambda_cl 0 to drop the contrastive loss")
        require(self.tau > 0, f"algo.tau must be positive, got {self.tau}")
        require(-1 <= self.clamp <= 1, f"algo.clamp must lie in [-1, 1], got {self.clamp}")
        require(self.mse_weight >= 0, f"algo.mse_weight must be >= 0, got {self.mse_weight}")
        require(self.seed_temperature > 0, f"algo.seed_temperature must be positive, got {self.seed_temperature}")
        require(self.rl in ("ppo", "reinforce"), f"algo.rl must be ppo or reinforce, got {self.rl!r}")
        require(
            not self.partial_reward or self.reward == "rule",
            f"algo.partial_reward rewrites the rule reward of a wrong answer, so it needs algo.reward rule, got {self.reward!r}; "
            "set algo.partial_reward false to use another reward",
        )


@dataclass
class ContrastTargets(Rows):
    """What the contrastive term and the partial reward need, computed once per rollout (token
    ids and the annotated representation do not change across the updates)."""

    z_annotated: torch.Tensor
    """[N, d] pooled representation of the response's annotated CoT: a constant target."""
    cos_annotated: torch.Tensor
    """[N] cosine of the sampled response's representation with ``z_annotated`` at sampling time."""
    lcs_response: torch.Tensor
    """[N, T] bool, response tokens in the LCS with the annotated CoT (incorrect responses only)."""
    z_unmatched_annotated: torch.Tensor
    """[N, d] z1: the annotated tokens outside that LCS, pooled."""
    negative_valid: torch.Tensor
    """[N] bool, the rows of L_neg: incorrect with a non-empty LCS and non-empty remainders on both sides."""
    matched_candidate: torch.Tensor
    """[N] bool, incorrect with a non-empty LCS: its z2 is a candidate of L_neg on this rank."""
    unmatched_candidate: torch.Tensor
    """[N] bool, incorrect with response tokens outside the LCS: its z3 is a candidate of L_neg on every rank."""


@dataclass
class CoTTokens:
    """Per-token CoT embeddings ``[N, T, d]`` and the scores that weight them in pooling ``[N, T]``
    (the value head's output at the same states)."""

    embeddings: torch.Tensor
    scores: torch.Tensor


@dataclass
class CARFTScores(Rows):
    ppo: PPOScores
    contrast: ContrastTargets


class CARFTModule(PPOModule):
    name = "carft"
    Config = CARFTConfig
    head_key = "cot"

    def build_heads(self) -> None:
        self.policy.heads[self.head_key] = build_head(self.algo.head, self.policy.hidden_size, self.algo.embed_dim)

    def named_reward(self, name: str):
        return PartialReward() if self.algo.partial_reward else RuleReward()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None:
            missing = sum(not e.has_chain_of_thought for e in datamodule.examples["train"])
            if missing:
                raise ConfigError(
                    f"CARFT needs an annotated chain of thought for every training question, and {missing} have none "
                    f"(data.path {self.config.data.path}); use annotated data such as ReFT's files"
                )

    def pool(self, tokens: CoTTokens, mask: torch.Tensor) -> torch.Tensor:
        return pool_cot(tokens.embeddings, tokens.scores, mask, self.algo.pooling)

    def cot_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, CoTTokens]:
        """One forward pass over the last ``length`` tokens: logits ``[N, T, V]``, the critic's values
        ``[N, T]`` (at the states that predict each token, as PPO's) and the CoT tokens to pool,
        from the states ``algo.pooled_states`` names."""
        at_tokens = self.algo.pooled_states == "at"
        logits, hidden = response_logits(self.policy, input_ids, attention_mask, length, hidden=True, hidden_at_tokens=at_tokens)
        values, embeddings = self.head(hidden)
        if not at_tokens:
            return logits, values, CoTTokens(embeddings, values)
        return logits, values[:, :-1], CoTTokens(embeddings[:, 1:], values[:, 1:])

    # ---- scoring (no gradient) ------------------------------------------------------------
    def score(self, rollout: Rollout) -> tuple[CARFTScores, dict[str, torch.Tensor]]:
        logits, values_old, tokens = self.cot_pass(rollout.input_ids, rollout.attention_mask, rollout.response_ids.size(1))
        logp_old = self.logprobs(logits, rollout.response_ids)
        contrast, metrics = self.contrast_targets(rollout, tokens)
        rewards = self.rewards(rollout, Signals(cos_annotated=contrast.cos_annotated))
        ppo, ppo_metrics = self.ppo_scores(rollout, logits, logp_old, values_old, rewards)
        return CARFTScores(ppo, contrast), {**metrics, **ppo_metrics}

    def contrast_targets(self, rollout: Rollout, tokens: CoTTokens) -> tuple[ContrastTargets, dict[str, torch.Tensor]]:
        """The annotated representations, the cosines the partial reward reads, and the LCS pieces
        of every incorrect response."""
        target_ids, target_mask, response_mask = rollout.target_ids, rollout.target_mask, rollout.response_mask
        # One forward per question, not per sample: the samples of a question share its annotation.
        n, prompt_length = rollout.group, rollout.prompt_length
        input_ids = torch.cat([rollout.input_ids[::n, :prompt_length], target_ids[::n]], dim=1)
        attention_mask = torch.cat([rollout.attention_mask[::n, :prompt_length], target_mask[::n]], dim=1)
        _, _, annotated = self.cot_pass(input_ids, attention_mask, target_ids.size(1))
        annotated = CoTTokens(annotated.embeddings.repeat_interleave(n, 0), annotated.scores.repeat_interleave(n, 0))
        z_annotated = self.pool(annotated, target_mask)
        cos_annotated = F.cosine_similarity(z_annotated, self.pool(tokens, response_mask), dim=-1, eps=1e-8)
        correct = rollout.correct
        metrics = {
            "cos_correct": masked_mean(cos_annotated, correct),
            "cos_incorrect": masked_mean(cos_annotated, ~correct),
        }
        started = time.perf_counter()
        lcs_annotated = torch.zeros_like(target_mask, dtype=torch.bool)
        lcs_response = torch.zeros_like(response_mask, dtype=torch.bool)
        rows = (~correct).nonzero().squeeze(-1)
        if self.algo.objective == "infonce" and self.algo.negative and rows.numel():
            in_a, in_b = lcs_masks_batch(target_ids[rows], rollout.response_ids[rows], target_mask[rows].sum(-1), response_mask[rows].sum(-1))
            lcs_annotated[rows], lcs_response[rows] = in_a.to(self.device), in_b.to(self.device)
        metrics["lcs_s"] = torch.tensor(time.perf_counter() - started)
        # Every incorrect response offers its existing pieces as candidates (section 3.5); only
        # those with all three pieces are rows of the loss.
        negative = negative_rows(~correct, lcs_response, response_mask, lcs_annotated, target_mask)
        unmatched_annotated = target_mask.bool() & ~lcs_annotated
        z_unmatched_annotated = self.pool(annotated, unmatched_annotated)
        return ContrastTargets(z_annotated, cos_annotated, lcs_response, z_unmatched_annotated, *negative), metrics

    # ---- the CARFT objective (with gradient) ------------------------------------------------
    def loss(self, rollout: Rollout, scores: CARFTScores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L = L_policy + vf_coef * L_value + lambda_cl * L_contrastive`` (docs/METHODS.md section 3);
        with the seed's ``rl reinforce``, ``-(log-prob x reward)`` replaces PPO's two terms."""
        logits, values, tokens = self.cot_pass(rollout.input_ids, rollout.attention_mask, rollout.response_ids.size(1))
        logp = self.logprobs(logits, rollout.response_ids)
        if self.algo.rl == "ppo":
            policy_loss, value_loss, metrics = self.ppo_terms(rollout, scores.ppo, logp, values)
            rl_loss = policy_loss + self.algo.vf_coef * value_loss
        else:
            rl_loss = reinforce_loss(logp, scores.ppo.rewards, rollout.response_mask)
            metrics = {"policy_loss": rl_loss.detach()}
        contrastive, keep_collectives, cl_metrics = self.contrastive_loss(rollout, scores.contrast, tokens)
        extra = self.algo.lambda_cl * contrastive + keep_collectives
        if self.algo.mse_weight > 0:
            mse = representation_mse(self.pool(tokens, rollout.response_mask.bool()), scores.contrast.z_annotated)
            cl_metrics["loss_mse"] = mse.detach()
            extra = extra + self.algo.mse_weight * mse
        return rl_loss + extra, {**metrics, **cl_metrics}

    def contrastive_loss(
        self, rollout: Rollout, targets: ContrastTargets, tokens: CoTTokens
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The contrastive term (InfoNCE's 0.5 * (L_pos + L_neg), or the seed's triplet or supcon),
        a zero that ties every gathered tensor into this rank's loss, and the terms' metrics."""
        algo, mask, correct = self.algo, rollout.response_mask.bool(), rollout.correct
        z = self.pool(tokens, mask)
        use_negative = algo.objective == "infonce" and algo.negative
        parts = [z]
        if use_negative:
            z_matched = self.pool(tokens, mask & targets.lcs_response)
            z_unmatched = self.pool(tokens, mask & ~targets.lcs_response)
            parts.append(z_unmatched[targets.unmatched_candidate])
        # With gradient: other ranks' samples are candidates too, and their gradients go home.
        gathered = gather_rows(*parts)
        z_all = gathered[0]
        # Every rank's loss must reach the gathered tensors (their backward is a collective),
        # also when this rank has no correct or no incorrect sample.
        keep_collectives = 0.0 * sum(g.sum() for g in gathered)
        metrics: dict[str, torch.Tensor] = {}
        if algo.objective == "infonce":
            terms = []
            if algo.positive:
                loss_pos = carft_positive_loss(targets.z_annotated, z_all, correct, algo.tau, algo.clamp)
                terms.append(loss_pos)
                metrics["loss_pos"] = loss_pos.detach()
            if use_negative:
                loss_neg = carft_negative_loss(
                    targets.z_unmatched_annotated, z_matched, gathered[1], targets.negative_valid, algo.tau, algo.clamp,
                    matched_candidates=targets.matched_candidate,
                )
                terms.append(loss_neg)
                metrics["loss_neg"] = loss_neg.detach()
            contrastive = sum(terms) / len(terms)  # 0.5 * (L_pos + L_neg) when both are on
        elif algo.objective == "triplet":
            (correct_all,) = gather_rows(correct.float())
            contrastive = triplet_loss(targets.z_annotated, z_all, correct_all.bool(), algo.triplet_margin, algo.seed_temperature)
        else:
            correct_all, z_annotated_all = gather_rows(correct.float()), gather_rows(targets.z_annotated)
            labels = torch.cat([correct_all[0], torch.ones(len(z_annotated_all[0]), device=z.device)])
            contrastive = supcon_loss(torch.cat([z_all, z_annotated_all[0]]), labels, algo.seed_temperature)
        metrics["loss_cl"] = contrastive.detach()
        return contrastive, keep_collectives, metrics
