"""The label-free family on the GRPO base (docs/METHODS.md sections 6 and 9): each method is GRPO
with a reward part that reads no label, and training batches that carry none.

- ``ttrl``: the majority-vote reward (TTRL, Zuo et al. 2025, arXiv 2504.16084);
- ``intuitor``: self-certainty (INTUITOR, Zhao et al. 2025, arXiv 2505.19590);
- ``rent``: minus the mean token entropy (RENT, Prabhudesai et al. 2025, arXiv 2505.22660), or
  with ``entropy_reduction sum`` minus the summed entropy (EM-RL, Agarwal et al. 2025,
  arXiv 2505.15134);
- ``empo``: the share of the question's samples giving the same answer, with questions of too
  spread-out answers filtered (EMPO, Zhang et al. 2025, arXiv 2504.05812).

Group size, temperature, clip, KL and loss aggregation are GRPO's (section 5); the papers train
multi-billion-parameter models with their own values, which configs/<method>.yaml does not
copy: on the embedded model every method shares the GRPO config, so they differ only in their
reward. RLSC (section 4) is the family's fifth member with a loss of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodules.answers import majority_agreement
from lightning_modules.config import require
from lightning_modules.grpo import GRPOConfig, GRPOModule
from lightning_modules.losses import sequence_logp, token_confidence
from lightning_modules.rewards import AnswerFrequencyReward, EntropyReward, MajorityVoteReward, SelfCertaintyReward
from lightning_modules.rollout import Rollout


class LabelFreeModule(GRPOModule):
    """GRPO whose training batches carry no answers: the reward part cannot read a label. Every
    member logs RLSC's confidence measures beside its own reward (section 4.5): the majority
    answer's share, and with the policy's distributions the sequence and token confidence."""

    train_batches = "unlabeled"
    progress_metrics = ("train/reward", "train/majority_share")

    @classmethod
    def batch_kind(cls, config) -> str:
        return "unlabeled"

    def rollout_metrics(self, rollout: Rollout, logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        _, shares = majority_agreement(rollout.predictions, rollout.group)
        return {**super().rollout_metrics(rollout, logits), "majority_share": torch.tensor(shares).mean()}

    def distribution_metrics(self, rollout: Rollout, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, mask = logits.detach(), rollout.response_mask
        seq_logp = sequence_logp(logits, rollout.response_ids, mask, self.score_temperature)
        return {**super().distribution_metrics(rollout, logits), "seq_confidence": seq_logp.exp().mean(),
                "token_confidence": token_confidence(logits, mask, self.score_temperature).mean()}


@dataclass
class TTRLConfig(GRPOConfig):
    """TTRL's knobs: GRPO's, rewarded by the majority vote."""

    reward: str = "majority"
    """majority (TTRL: 1 if the sample's answer is its group's majority answer), a control, or package.module:function."""


class TTRLModule(LabelFreeModule):
    name = "ttrl"
    Config = TTRLConfig
    rewards_offered = ("majority",)

    def named_reward(self, name: str):
        return MajorityVoteReward()


@dataclass
class IntuitorConfig(GRPOConfig):
    """INTUITOR's knobs: GRPO's, rewarded by self-certainty."""

    reward: str = "self_certainty"
    """self_certainty (INTUITOR: mean over the response's tokens of KL(uniform || p_t)), a control, or package.module:function."""


class IntuitorModule(LabelFreeModule):
    name = "intuitor"
    Config = IntuitorConfig
    rewards_offered = ("self_certainty",)
    progress_metrics = ("train/reward", "train/self_certainty")

    def named_reward(self, name: str):
        return SelfCertaintyReward()


@dataclass
class RENTConfig(GRPOConfig):
    """RENT's knobs: GRPO's, rewarded by minus the response's token entropy."""

    reward: str = "entropy"
    """entropy (RENT / EM-RL: minus the response's token entropy), a control, or package.module:function."""
    entropy_reduction: str = "mean"
    """mean over the response's tokens (RENT) or sum (EM-RL)."""

    def validate(self) -> None:
        super().validate()
        require(self.entropy_reduction in ("mean", "sum"), f"algo.entropy_reduction must be mean or sum, got {self.entropy_reduction!r}")


class RENTModule(LabelFreeModule):
    name = "rent"
    Config = RENTConfig
    rewards_offered = ("entropy",)

    def named_reward(self, name: str):
        return EntropyReward(self.algo.entropy_reduction)


@dataclass
class EMPOConfig(GRPOConfig):
    """EMPO's knobs: GRPO's, rewarded by the frequency of the sample's answer in its group."""

    reward: str = "answer_frequency"
    """answer_frequency (EMPO: the share of the question's samples giving this sample's answer), a control, or package.module:function."""
    max_answer_entropy: float = 0.75
    """Questions whose answer distribution has an entropy above this share of log(G) earn nothing (EMPO filters such
    questions; its threshold is for its own models, this share is chosen: at G = 8 it keeps four answers given twice each,
    entropy log 4 = 1.39, and drops one answer given three times beside five given once, 1.67 > 0.75 log 8 = 1.56)."""

    def validate(self) -> None:
        super().validate()
        require(0 < self.max_answer_entropy <= 1, f"algo.max_answer_entropy must lie in (0, 1], got {self.max_answer_entropy}")


class EMPOModule(LabelFreeModule):
    name = "empo"
    Config = EMPOConfig
    rewards_offered = ("answer_frequency",)

    def named_reward(self, name: str):
        return AnswerFrequencyReward(self.algo.max_answer_entropy)
