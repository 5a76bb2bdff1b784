"""Typed records that flow one way: sampling makes a :class:`Rollout`, scoring returns a
method's own record of what it computed, and the loss reads both, a minibatch at a time.

Every tensor field has one row per sampled response; a question's samples are consecutive
rows. :meth:`Rows.select` takes the same rows of every field, so a minibatch of a rollout
and of its scores is one call each and no field can be forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


class Rows:
    """Mixin for a dataclass whose tensor, list and nested :class:`Rows` fields hold one row per response."""

    def select(self, rows: torch.Tensor):
        """The same dataclass with only ``rows`` (a 1-D index tensor) of every per-response field."""
        index = rows.tolist()

        def take(value):
            if isinstance(value, torch.Tensor):
                return value[rows.to(value.device)]
            if isinstance(value, Rows):
                return value.select(rows)
            if isinstance(value, list):
                return [value[i] for i in index]
            return value

        return replace(self, **{f.name: take(getattr(self, f.name)) for f in fields(self) if f.init})


@dataclass
class Rollout(Rows):
    """One rollout batch: ``N = questions x group`` sampled responses and what can be read off them.

    ``answer`` is None for unlabeled batches (RLSC and the other label-free rewards): a reward
    that needs a gold answer cannot get one there.
    """

    input_ids: torch.Tensor
    """[N, P + T] prompt (left-padded to P columns) then response (right-padded)."""
    attention_mask: torch.Tensor
    """[N, P + T] 1 on real prompt and response tokens."""
    response_ids: torch.Tensor
    """[N, T] the sampled tokens, padded after EOS."""
    response_mask: torch.Tensor
    """[N, T] 1 up to and including EOS (or the last token of a response cut at the length limit)."""
    question: torch.Tensor
    """[N] index of the response's question in the training split."""
    texts: list[str]
    """[N] the decoded responses."""
    predictions: list[float | None]
    """[N] the extracted answers (None: no answer could be read); extraction needs no label."""
    group: int
    """Responses per question (``algo.samples_per_prompt``)."""
    step: int = 0
    """The training step that drew it (a reward that draws at random seeds itself with it)."""
    answer: torch.Tensor | None = None
    """[N] gold answers (float64), or None for unlabeled batches."""
    correct: torch.Tensor | None = None
    """[N] bool, whether each extracted answer is right; None for unlabeled batches."""
    target_ids: torch.Tensor | None = None
    """[N, S] the annotated chain of thought of the response's question (right-padded), labeled batches only."""
    target_mask: torch.Tensor | None = None
    """[N, S] 1 on annotated tokens."""

    def __len__(self) -> int:
        return self.response_ids.size(0)

    @property
    def prompt_length(self) -> int:
        """P, the prompt columns of ``input_ids``."""
        return self.input_ids.size(1) - self.response_ids.size(1)

    @property
    def labeled(self) -> bool:
        return self.answer is not None

    @classmethod
    def concat(cls, parts: list["Rollout"], pad_id: int) -> "Rollout":
        """The rollouts' rows one after another, prompts padded on the left and responses and
        targets on the right to the widest part (positions follow the attention mask, so the
        extra padding changes no log-prob). The parts share ``group`` and ``step``."""
        prompt = max(part.prompt_length for part in parts)
        response = max(part.response_ids.size(1) for part in parts)

        def widen(x: torch.Tensor, width: int, left: bool, value: int) -> torch.Tensor:
            pad = (width - x.size(1), 0) if left else (0, width - x.size(1))
            return torch.nn.functional.pad(x, pad, value=value)

        def joined(part: Rollout, tensor: torch.Tensor, value: int) -> torch.Tensor:
            cut = part.prompt_length
            return torch.cat([widen(tensor[:, :cut], prompt, True, value), widen(tensor[:, cut:], response, False, value)], dim=1)

        labeled = parts[0].target_ids is not None
        target = max(part.target_ids.size(1) for part in parts) if labeled else 0
        optional = {}
        for name in ("answer", "correct"):
            if getattr(parts[0], name) is not None:
                optional[name] = torch.cat([getattr(part, name) for part in parts])
        if labeled:
            optional["target_ids"] = torch.cat([widen(part.target_ids, target, False, pad_id) for part in parts])
            optional["target_mask"] = torch.cat([widen(part.target_mask, target, False, 0) for part in parts])
        return cls(
            input_ids=torch.cat([joined(part, part.input_ids, pad_id) for part in parts]),
            attention_mask=torch.cat([joined(part, part.attention_mask, 0) for part in parts]),
            response_ids=torch.cat([widen(part.response_ids, response, False, pad_id) for part in parts]),
            response_mask=torch.cat([widen(part.response_mask, response, False, 0) for part in parts]),
            question=torch.cat([part.question for part in parts]),
            texts=[text for part in parts for text in part.texts],
            predictions=[prediction for part in parts for prediction in part.predictions],
            group=parts[0].group,
            step=parts[0].step,
            **optional,
        )


@dataclass
class Signals(Rows):
    """What the scoring pass measured per response that a reward may read; None where the
    method does not compute it."""

    seq_logp: torch.Tensor | None = None
    """[N] s = the response's summed token log-probs at the scoring temperature (RLSC's s_k)."""
    cos_annotated: torch.Tensor | None = None
    """[N] cosine of the response's pooled representation with its annotated CoT's (CARFT)."""
    self_certainty: torch.Tensor | None = None
    """[N] mean over the response's tokens of KL(uniform || p_t) at the scoring temperature (INTUITOR)."""
    entropy: torch.Tensor | None = None
    """[N] mean over the response's tokens of the entropy of p_t at the scoring temperature (RENT)."""
    entropy_sum: torch.Tensor | None = None
    """[N] the same entropies summed over the response's tokens (EM-RL)."""


@dataclass
class Rewards:
    """What a reward part returns: one reward per response and metrics to log (``train/<name>``)."""

    values: torch.Tensor
    """[N] float rewards."""
    metrics: dict[str, torch.Tensor]
