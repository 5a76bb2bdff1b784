"""Rewards as parts: small callables a method is given, from a rollout to one reward per response.

A reward part is called as ``reward(rollout, signals)`` and returns :class:`Rewards` (the
values and the metrics it wants logged). ``uses_labels`` says whether it reads the gold
answers; a label-free method refuses one that does, and its rollouts carry no answers
anyway. The parts here:

- :class:`RuleReward`: ReFT's 1 / 0.1 / 0 against the gold answer (docs/METHODS.md section 0);
- :class:`PartialReward`: CARFT's embedding-enhanced reward for wrong answers (section 3);
- :class:`MajorityVoteReward`: 1 if the answer is its group's majority answer (TTRL, section 6);
- :class:`ConfidenceReward`: RLSC's confidence exp(s_k), optionally only for majority answers (section 4);
- :class:`SelfCertaintyReward`, :class:`EntropyReward` and :class:`AnswerFrequencyReward`: the
  label-free family's rewards (INTUITOR, RENT / EM-RL, EMPO; docs/METHODS.md section 9);
- :class:`FunctionReward`: any function named on the command line as ``package.module:function``;
- the controls every RL method accepts, which tell whether a gain comes from the reward's
  content: :class:`RandomReward` (the spurious-reward control, Shao et al. 2025, arXiv
  2506.10947) and :class:`FormatReward` (1 if an answer can be read, whatever it is).

A user function takes the :class:`~lightning_modules.rollout.Rollout` (``texts``,
``predictions``, ``answer`` when labeled, ``question``, ``group``) and returns one float per
response (a list or a tensor), or a pair ``(rewards, metrics)`` with a dict of scalars.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from datamodules.answers import answer_entropy, answer_frequency_reward, majority_agreement, rule_reward
from datamodules.config import ConfigError
from lightning_modules.losses import partial_reward
from lightning_modules.rollout import Rewards, Rollout, Signals


@dataclass
class RuleReward:
    """1.0 for a correct answer, 0.1 for a wrong one, 0.0 for none (ReFT / CARFT)."""

    uses_labels: bool = field(default=True, init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        gold = rollout.answer.tolist()
        verdicts = rollout.correct.tolist() if rollout.correct is not None else [None] * len(gold)  # the run's checker decided them
        values = [rule_reward(p, g, c) for p, g, c in zip(rollout.predictions, gold, verdicts)]
        return Rewards(torch.tensor(values, device=rollout.response_ids.device), {})


@dataclass
class PartialReward:
    """CARFT: a wrong but parsed answer (rule reward 0.1) earns ``0.1 * cos(z_ann, z) + 0.2``."""

    base: RuleReward = field(default_factory=RuleReward)
    uses_labels: bool = field(default=True, init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        if signals.cos_annotated is None:
            raise ValueError("the partial reward needs each response's cosine to its annotated CoT (Signals.cos_annotated)")
        rule = self.base(rollout, signals)
        enhanced = partial_reward(rule.values, signals.cos_annotated)
        return Rewards(enhanced, {**rule.metrics, "partial_rewards_changed": (enhanced != rule.values).sum().float()})


@dataclass
class MajorityVoteReward:
    """Label-free (TTRL): 1 if the response's answer agrees with its group's majority answer, else 0."""

    uses_labels: bool = field(default=False, init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        agrees, shares = majority_agreement(rollout.predictions, rollout.group)
        values = torch.tensor([float(a) for a in agrees], device=rollout.response_ids.device)
        return Rewards(values, {"majority_share": torch.tensor(shares).mean()})


@dataclass
class ConfidenceReward:
    """Label-free (RLSC's seed trainer): the sequence confidence exp(s_k); with ``majority_only``,
    0 unless the answer is its group's majority answer; ``format_bonus`` is added if an answer
    parses and subtracted if not."""

    majority_only: bool = False
    format_bonus: float = 0.0
    uses_labels: bool = field(default=False, init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        if signals.seq_logp is None:
            raise ValueError("the confidence reward needs each response's summed log-prob (Signals.seq_logp)")
        values = signals.seq_logp.exp()
        if self.majority_only:
            agrees, _ = majority_agreement(rollout.predictions, rollout.group)
            values = values * torch.tensor(agrees, device=values.device, dtype=values.dtype)
        if self.format_bonus:
            parsed = torch.tensor([p is not None for p in rollout.predictions], device=values.device, dtype=values.dtype)
            values = values + self.format_bonus * (2 * parsed - 1)
        return Rewards(values, {})


@dataclass
class FunctionReward:
    """A user's function of the rollout (see the module docstring), named ``package.module:function``."""

    function: Callable
    name: str
    uses_labels: bool = False
    """Whether the function may read gold answers; a label-free method hands it none either way."""

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        out = self.function(rollout)
        values, metrics = out if isinstance(out, tuple) else (out, {})
        device = rollout.response_ids.device
        values = torch.as_tensor(values, dtype=torch.float32).to(device).reshape(-1)
        if values.numel() != len(rollout):
            raise ValueError(f"reward function {self.name} returned {values.numel()} rewards for {len(rollout)} responses")
        if not torch.isfinite(values).all():
            raise ValueError(f"reward function {self.name} returned a non-finite reward")
        return Rewards(values, {k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()})


@dataclass
class SelfCertaintyReward:
    """Label-free (INTUITOR): the response's self-certainty, the mean over its tokens of
    KL(uniform || p_t); confident responses earn more."""

    uses_labels: bool = field(default=False, init=False)
    needs: tuple[str, ...] = field(default=("self_certainty",), init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        return Rewards(signals.self_certainty, {"self_certainty": signals.self_certainty.mean()})


@dataclass
class EntropyReward:
    """Label-free: minus the response's token entropy, its mean (RENT) or its sum (EM-RL)."""

    reduction: str = "mean"
    uses_labels: bool = field(default=False, init=False)

    @property
    def needs(self) -> tuple[str, ...]:
        return ("entropy",) if self.reduction == "mean" else ("entropy_sum",)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        entropy = signals.entropy if self.reduction == "mean" else signals.entropy_sum
        return Rewards(-entropy, {})


@dataclass
class AnswerFrequencyReward:
    """Label-free (EMPO): the share of the question's samples that give this sample's answer
    (unparsed: 0). A question whose answers are too spread out, entropy of their distribution
    above ``max_entropy`` x log(group), earns 0 on every sample: it carries no signal."""

    max_entropy: float = 0.75
    uses_labels: bool = field(default=False, init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        values = answer_frequency_reward(rollout.predictions, rollout.group).to(rollout.response_ids.device)
        groups = values.view(-1, rollout.group)
        entropy = torch.tensor(answer_entropy(rollout.predictions, rollout.group), device=values.device)
        kept = entropy <= self.max_entropy * math.log(rollout.group)
        values = (groups * kept[:, None]).view(-1)
        return Rewards(values, {"answer_entropy": entropy.mean(), "frac_groups_high_entropy": 1 - kept.float().mean()})


@dataclass
class RandomReward:
    """Control: an independent Bernoulli(``p``) reward per response, whatever it says. Drawn from
    (seed, step, the batch's first question), so a resumed run draws the same rewards."""

    seed: int = 0
    p: float = 0.5
    uses_labels: bool = field(default=False, init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        first_question = int(rollout.question[0]) if len(rollout) else 0
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + rollout.step) * 1_000_003 + first_question)
        values = (torch.rand(len(rollout), generator=generator) < self.p).float()
        return Rewards(values.to(rollout.response_ids.device), {})


@dataclass
class FormatReward:
    """Control: 1 if an answer can be read from the response, else 0, whether or not it is right."""

    uses_labels: bool = field(default=False, init=False)

    def __call__(self, rollout: Rollout, signals: Signals) -> Rewards:
        values = torch.tensor([float(p is not None) for p in rollout.predictions], device=rollout.response_ids.device)
        return Rewards(values, {})


CONTROLS = ("random", "format")
"""Reward names every RL method accepts besides its own."""


def control_reward(name: str, seed: int):
    return RandomReward(seed) if name == "random" else FormatReward()


def is_function_spec(spec: str) -> bool:
    return ":" in spec


def load_function_reward(spec: str, uses_labels: bool) -> FunctionReward:
    """``package.module:function`` as a reward part; one sentence if it cannot be found."""
    module_name, _, attribute = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"algo.reward {spec!r} names no importable function ({type(error).__name__}: {error})") from None
    if not callable(function):
        raise ConfigError(f"algo.reward {spec!r} is not callable")
    return FunctionReward(function, spec, uses_labels)


def check_reward_name(spec: str, offered: tuple[str, ...]) -> None:
    """Refuse a reward that is neither one of ``offered``, a control, nor an importable ``package.module:function``."""
    if is_function_spec(spec):
        load_function_reward(spec, uses_labels=False)
    elif spec not in offered + CONTROLS:
        raise ConfigError(f"algo.reward must be one of {', '.join(offered + CONTROLS)} or package.module:function, got {spec!r}")
