"""The math of every method as pure functions of tensors: no model, trainer or I/O, and no
import but torch. One module per paper (``ppo``, ``carft``, ``grpo``, ``rlsc``, ``sft``,
``label_free``) and the pieces they share (``common``); docs/METHODS.md gives every equation.
Each function is tested against hand-worked numbers or a naive loop (``tests/test_*losses.py``).

Every name is importable from here, ``from lightning_modules.losses import gae``. The rule
reward, the majority vote and the answer-frequency reward work on extracted answers, not
tensors, and live beside the answer checker in :mod:`datamodules.answers`; they are
re-exported here for code written against that import path.
"""

from datamodules.answers import answer_frequency_reward, majority_agreement, majority_answer, rule_reward
from lightning_modules.losses.carft import (
    carft_negative_loss,
    carft_positive_loss,
    lcs_masks,
    lcs_masks_batch,
    negative_rows,
    pairwise_cos,
    partial_reward,
    pool_cot,
    representation_mse,
    supcon_loss,
    triplet_loss,
)
from lightning_modules.losses.common import (
    aggregate_loss,
    clipped_surrogate,
    entropy_from_logits,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    reinforce_loss,
    sequence_logp,
    token_logprobs,
)
from lightning_modules.losses.grpo import grpo_advantages, gspo_loss, overlong_penalty
from lightning_modules.losses.label_free import entropy_reward, self_certainty, token_entropy
from lightning_modules.losses.ppo import explained_variance, gae, last_token_rewards, ppo_policy_loss, ppo_value_loss, whiten
from lightning_modules.losses.rlsc import agreement_confidence, rlsc_loss, token_confidence
from lightning_modules.losses.sft import sft_loss

__all__ = [
    "aggregate_loss", "agreement_confidence", "answer_frequency_reward", "carft_negative_loss", "carft_positive_loss",
    "clipped_surrogate", "entropy_from_logits", "entropy_reward", "explained_variance", "gae", "grpo_advantages",
    "gspo_loss", "kl_k1", "kl_k2", "kl_k3", "last_token_rewards", "lcs_masks", "lcs_masks_batch", "majority_agreement",
    "majority_answer", "masked_mean", "negative_rows", "overlong_penalty", "pairwise_cos", "partial_reward", "pool_cot",
    "ppo_policy_loss", "ppo_value_loss", "reinforce_loss", "representation_mse", "rlsc_loss", "rule_reward",
    "self_certainty", "sequence_logp", "sft_loss", "supcon_loss", "token_confidence", "token_entropy", "token_logprobs", "triplet_loss",
    "whiten",
]
