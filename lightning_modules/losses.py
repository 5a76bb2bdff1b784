"""The math of every method as pure functions of tensors (no model, trainer or I/O).

Equations follow ``spec/METHODS.md``; each function is tested against hand-worked
numbers or a naive loop in ``tests/test_losses.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from datamodules.answers import is_correct


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1; 0 where the mask is empty (no NaN)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens[:, t]) under ``logits[:, t] / temperature``; ``[B, T, V], [B, T] -> [B, T]``.

    Aligned inputs: the caller has already shifted so ``logits[:, t]`` scores ``tokens[:, t]``.
    ``cross_entropy`` computes the gathered log-softmax without keeping a second
    full-vocabulary float copy of the logits alive.
    """
    if temperature != 1.0:
        logits = logits / temperature
    flat = -F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tokens.reshape(-1), reduction="none")
    return flat.view(tokens.shape)


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the annotated target tokens only (spec section 1), token mean.

    ``logits[:, t]`` predicts ``input_ids[:, t + 1]``; ``loss_mask`` marks target tokens of
    ``input_ids`` (the prompt and the padding are 0).
    """
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(logp, loss_mask[:, 1:])


# ---- rewards (spec section 0) ----------------------------------------------------------------
CORRECT_REWARD, WRONG_ANSWER_REWARD, NO_ANSWER_REWARD = 1.0, 0.1, 0.0


def rule_reward(pred: float | None, gold: float) -> float:
    """ReFT/CARFT rule reward: 1.0 correct, 0.1 an answer was extracted but is wrong, 0.0 none."""
    if pred is None:
        return NO_ANSWER_REWARD
    return CORRECT_REWARD if is_correct(pred, gold) else WRONG_ANSWER_REWARD


def partial_reward(rule_reward: torch.Tensor, cos_sim: torch.Tensor) -> torch.Tensor:
    """CARFT's embedding-enhanced partial reward (spec section 3): a wrong but extracted answer
    (rule reward 0.1) earns ``0.1 * cos(z_ann, z) + 0.2``, in [0.1, 0.3]; other rewards stay."""
    is_partial = torch.isclose(rule_reward, torch.full_like(rule_reward, WRONG_ANSWER_REWARD))
    return torch.where(is_partial, 0.1 * cos_sim.to(rule_reward.dtype) + 0.2, rule_reward)


def last_token_rewards(sequence_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B], [B, T] -> [B, T]``: each reward on its response's last token (EOS, or the last
    token when the response was cut at the length limit), zero elsewhere."""
    last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask.bool()
    return last.to(sequence_rewards.dtype) * sequence_rewards[:, None]


# ---- PPO (spec section 2) ------------------------------------------------------------------
def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(pi || pi_ref) on sampled tokens: ``logp - logp_ref``."""
    return logp - logp_ref


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor, clamp: float = 20.0) -> torch.Tensor:
    """Per-token k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` (>= 0, unbiased for
    KL(pi || pi_ref) on samples of pi), with the log-ratio in float32 (or wider) clamped to +-``clamp`` (spec section 5)."""
    wide = torch.promote_types(logp.dtype, torch.float32)
    log_ratio = torch.clamp(logp_ref.to(wide) - logp.to(wide), -clamp, clamp)
    return torch.exp(log_ratio) - log_ratio - 1.0


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses (ReFT: gamma 1, lambda 0.95).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` zero after the last response token;
    ``A_t = sum_l (gamma * lam)^l delta_{t+l}``; returns ``R_t = A_t + V_t``. All ``[B, T]``,
    zero where ``mask`` is 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Masked mean 0 and (population) std 1 over the tokens where ``mask`` is 1; 0 elsewhere.

    ``all_reduce`` sums a tensor over ranks, so that under DDP the statistics are those of the
    global batch (spec section 2, step 4).
    """
    mask = mask.to(x.dtype)
    sums = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()])
    if all_reduce is not None:
        sums = all_reduce(sums)
    count = sums[2].clamp(min=1)
    mean = sums[0] / count
    var = (sums[1] / count - mean * mean).clamp(min=0)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def clipped_surrogate(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip_eps: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps))`` with ``ratio = exp(logp - logp_old)``,
    and where the clipped term is the larger (bool). The log-ratio is taken in float32 (or wider) and clamped
    to +-20, so a stale or corrupted log-prob cannot overflow the ratio to inf."""
    wide = torch.promote_types(logp.dtype, torch.float32)
    ratio = torch.exp((logp.to(wide) - logp_old.to(wide)).clamp(-20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "grpo", max_new_tokens: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` over response tokens (spec section 5):
    ``grpo`` mean over sequences of each sequence's token mean; ``dr_grpo`` sum / (B * max_new_tokens);
    ``dapo`` sum / number of response tokens in the batch."""
    if mode == "grpo":
        return masked_mean(per_token, mask, dim=-1).mean()
    total = (per_token * mask.to(per_token.dtype)).sum()
    if mode == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("dr_grpo aggregation needs max_new_tokens")
        return total / (per_token.size(0) * max_new_tokens)
    if mode == "dapo":
        return total / mask.sum().clamp(min=1)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected grpo, dr_grpo or dapo")


def ppo_policy_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: per-token ``max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps))``, a masked
    mean over each sequence's tokens, then a mean over sequences. Also the fraction of tokens
    where the clipped term is the larger (``clip_frac``)."""
    per_token, clipped = clipped_surrogate(logp, logp_old, advantages, clip_eps)
    return aggregate_loss(per_token, mask, "grpo"), masked_mean(clipped.to(logp.dtype), mask).detach()


def ppo_value_loss(
    values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """``0.5 * masked mean of max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``."""
    clipped = values_old + torch.clamp(values - values_old, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution; ``[B, T, V] -> [B, T]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` over masked tokens: 1 is a perfect critic, 0 a constant one."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1.0 - var_residual / var_returns.clamp(min=1e-8)


# ---- CARFT (spec section 3) ------------------------------------------------------------------
def pool_cot(embeddings: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, mode: str = "value_softmax") -> torch.Tensor:
    """One vector per chain of thought from its token embeddings; ``[B, T, d] -> [B, d]``.

    ``value_softmax`` (CARFT): ``sum_t softmax(scores)_t e_t`` over masked tokens; ``mean``;
    ``last`` (the last masked token). An empty mask gives a zero vector.
    """
    mask = mask.bool()
    if mode == "value_softmax":
        masked_scores = scores.float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(masked_scores, dim=-1).nan_to_num(0.0)  # an all--inf row gives NaN
        return (weights.unsqueeze(-1).to(embeddings.dtype) * embeddings).sum(1)
    if mode == "mean":
        weights = mask.to(embeddings.dtype)
        return (weights.unsqueeze(-1) * embeddings).sum(1) / weights.sum(-1, keepdim=True).clamp(min=1)
    if mode == "last":
        last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask
        return (last.unsqueeze(-1).to(embeddings.dtype) * embeddings).sum(1)
    raise ValueError(f"unknown pooling mode {mode!r}; expected value_softmax, mean or last")


def pairwise_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``; ``[n, d], [m, d] -> [n, m]``."""
    return F.normalize(a, dim=-1, eps=1e-8) @ F.normalize(b, dim=-1, eps=1e-8).T


def carft_positive_loss(
    z_annotated: torch.Tensor, z_sampled: torch.Tensor, correct: torch.Tensor, tau: float = 0.2, clamp: float = 0.9
) -> torch.Tensor:
    """CARFT's positive signal: for every correct sample i (one of the first B rows of ``z_sampled``)
    ``-log( exp(min(cos(z_ann_i, z_i), c) / tau) / sum_j exp(cos(z_ann_i, z_j) / tau) )``, j over all
    rows of ``z_sampled`` (this batch's samples, then those gathered from other ranks).
    Mean over correct samples; 0 if there are none."""
    rows = correct.nonzero().squeeze(-1)
    if rows.numel() == 0:
        return z_sampled.new_zeros(())
    cos_all = pairwise_cos(z_annotated[rows], z_sampled)  # [P, N]
    cos_own = cos_all.gather(1, rows[:, None]).squeeze(1)
    numerator = torch.clamp(cos_own, max=clamp) / tau
    return (torch.logsumexp(cos_all / tau, dim=-1) - numerator).mean()


def carft_negative_loss(
    z_unmatched_annotated: torch.Tensor,
    z_matched: torch.Tensor,
    z_unmatched_all: torch.Tensor,
    valid: torch.Tensor,
    tau: float = 0.2,
    clamp: float = 0.9,
) -> torch.Tensor:
    """CARFT's negative signal (spec section 3), for every valid incorrect sample i:
    ``-log( exp(min(cos(z1_i, z2_i), c) / tau) / sum_k exp(cos(z2_i, k) / tau) )`` with
    z1 = ``z_unmatched_annotated`` (annotated tokens outside the LCS), z2 = ``z_matched`` (the
    response's tokens in the LCS) and k over the valid rows of ``z_matched`` on this rank and
    ``z_unmatched_all`` (response tokens outside the LCS, every incorrect sample of every rank).
    ``valid``: incorrect, with a non-empty LCS and non-empty remainders. Mean over valid rows; 0 if none."""
    rows = valid.nonzero().squeeze(-1)
    if rows.numel() == 0:
        return z_matched.new_zeros(())
    z1, z2 = z_unmatched_annotated[rows], z_matched[rows]
    numerator = torch.clamp(F.cosine_similarity(z1, z2, dim=-1, eps=1e-8), max=clamp) / tau
    candidates = torch.cat([z2, z_unmatched_all])
    return (torch.logsumexp(pairwise_cos(z2, candidates) / tau, dim=-1) - numerator).mean()


def triplet_loss(
    z_annotated: torch.Tensor, z_sampled: torch.Tensor, correct: torch.Tensor, margin: float = 0.5, temperature: float = 0.07
) -> torch.Tensor:
    """The seed's triplet objective: anchor = annotated representation of a correct sample i,
    positive = that sample, negatives = every incorrect sample k (all ranks):
    mean over (i, k) of ``softplus(cos(z_ann_i, z_k) / T - cos(z_ann_i, z_i) / T + margin)``.
    ``correct`` covers every row of ``z_sampled``; the first len(z_annotated) rows are this
    rank's. 0 without a correct or an incorrect sample."""
    own = correct[: len(z_annotated)].nonzero().squeeze(-1)
    negatives = z_sampled[~correct]
    if own.numel() == 0 or negatives.size(0) == 0:
        return z_sampled.new_zeros(())
    cos_pos = F.cosine_similarity(z_annotated[own], z_sampled[own], dim=-1, eps=1e-8)
    cos_neg = pairwise_cos(z_annotated[own], negatives)
    return F.softplus(cos_neg / temperature - cos_pos[:, None] / temperature + margin).mean()


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) by label: for each anchor i with at
    least one other row of its label, ``-mean_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )``
    with ``s = cos / T``; mean over such anchors, 0 if none. Rows with no positive are left out
    (not divided by zero)."""
    n = z.size(0)
    if n < 2:
        return z.new_zeros(())
    logits = pairwise_cos(z, z) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=-1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(-1)
    anchors = counts > 0
    if not anchors.any():
        return z.new_zeros(())
    per_anchor = -(log_prob * positives).sum(-1)[anchors] / counts[anchors]
    return per_anchor.mean()


def lcs_masks(a_ids: torch.Tensor, b_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens of ``a`` and of ``b`` belong to one longest common subsequence; ``[n], [m]``."""
    a_in, b_in = lcs_masks_batch(a_ids[None], b_ids[None], torch.tensor([len(a_ids)]), torch.tensor([len(b_ids)]))
    return a_in[0], b_in[0]


@torch.no_grad()
def lcs_masks_batch(
    a_ids: torch.Tensor, b_ids: torch.Tensor, a_lengths: torch.Tensor, b_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """LCS membership masks for P pairs at once; ``[P, n], [P, m] -> [P, n], [P, m]`` (bool).

    The dynamic programme ``L[i][j]`` is filled one anti-diagonal at a time (cells with the same
    ``i + j`` do not depend on each other), so there are ``n + m`` vector steps for all pairs
    instead of ``P * n * m`` Python steps; the backtrack is also one vector step per position.
    Ties go up (drop a token of ``a``), then left; a match is always taken.
    Only the first ``a_lengths[p]`` / ``b_lengths[p]`` tokens of each row count.
    """
    a_ids, b_ids = a_ids.cpu().long(), b_ids.cpu().long()
    a_lengths, b_lengths = a_lengths.cpu().long(), b_lengths.cpu().long()
    pairs, n, m = a_ids.size(0), a_ids.size(1), b_ids.size(1)
    a_in = torch.zeros(pairs, n, dtype=torch.bool)
    b_in = torch.zeros(pairs, m, dtype=torch.bool)
    if pairs == 0 or n == 0 or m == 0:
        return a_in, b_in
    # Padding never matches: positions past a row's length compare unequal.
    a_valid = torch.arange(n)[None] < a_lengths[:, None]
    b_valid = torch.arange(m)[None] < b_lengths[:, None]
    equal = (a_ids[:, :, None] == b_ids[:, None, :]) & a_valid[:, :, None] & b_valid[:, None, :]
    table = torch.zeros(pairs, n + 1, m + 1, dtype=torch.int32)
    for diagonal in range(2, n + m + 1):
        i = torch.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        best = torch.maximum(table[:, i - 1, j], table[:, i, j - 1])
        table[:, i, j] = torch.where(equal[:, i - 1, j - 1], table[:, i - 1, j - 1] + 1, best)
    rows = torch.arange(pairs)
    i, j = a_lengths.clamp(max=n).clone(), b_lengths.clamp(max=m).clone()
    for _ in range(n + m):
        active = (i > 0) & (j > 0)
        if not active.any():
            break
        ii, jj = (i - 1).clamp(min=0), (j - 1).clamp(min=0)
        match = active & equal[rows, ii, jj]
        up = table[rows, ii, j] >= table[rows, i, jj]
        a_in[rows[match], ii[match]] = True
        b_in[rows[match], jj[match]] = True
        i = i - (active & (match | up)).long()
        j = j - (active & (match | ~up)).long()
    return a_in, b_in


def representation_mse(z_sampled: torch.Tensor, z_annotated: torch.Tensor) -> torch.Tensor:
    """The seed's regulariser: MSE between sampled and annotated representations (target constant)."""
    return F.mse_loss(z_sampled, z_annotated.detach())


def reinforce_loss(logp: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The seed's simpler policy gradient: ``-(log-prob x reward)`` averaged over each
    response's tokens, then over responses; ``[B, T], [B], [B, T] -> []``."""
    return -masked_mean(logp * rewards[:, None].to(logp.dtype), mask, dim=-1).mean()


# ---- GRPO (spec section 5) -------------------------------------------------------------------
def grpo_advantages(rewards: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """``[Q, G] -> [Q, G]``: ``r - mean_group(r)``, divided by ``std_group(r) + 1e-4`` (Bessel's
    correction) with ``scale="group"`` (GRPO) or not with ``"none"`` (Dr. GRPO). A group of equal
    rewards gets zero advantage; a group of one sample too."""
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "none":
        return centred
    if scale != "group":
        raise ValueError(f"unknown advantage scale {scale!r}; expected group or none")
    std = rewards.std(dim=-1, keepdim=True, unbiased=True) if rewards.size(-1) > 1 else torch.zeros_like(rewards[:, :1])
    return centred / (std + 1e-4)


def majority_answer(answers: list[float | None]) -> tuple[float | None, float]:
    """The most common extracted answer (equal within the checking tolerance) and its share of
    all samples, unparsed ones included; ties go to the first seen. ``(None, 0.0)`` if none parsed."""
    representatives: list[float] = []
    counts: list[int] = []
    for answer in answers:
        if answer is None:
            continue
        for index, representative in enumerate(representatives):
            if is_correct(answer, representative):
                counts[index] += 1
                break
        else:
            representatives.append(answer)
            counts.append(1)
    if not counts:
        return None, 0.0
    best = max(range(len(counts)), key=lambda i: (counts[i], -i))
    return representatives[best], counts[best] / len(answers)


def majority_agreement(answers: list[float | None], group: int) -> tuple[list[bool], list[float]]:
    """For consecutive groups of ``group`` answers: whether each answer agrees with its group's
    majority answer (an unparsed one never does), and each group's majority share."""
    agrees: list[bool] = []
    shares: list[float] = []
    for start in range(0, len(answers), group):
        members = answers[start : start + group]
        majority, share = majority_answer(members)
        shares.append(share)
        agrees += [a is not None and majority is not None and is_correct(a, majority) for a in members]
    return agrees, shares


# ---- RLSC (spec section 4) -------------------------------------------------------------------
def sequence_logp(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``s = sum_t log p(tokens[:, t])`` over positions where ``mask`` is 1; aligned inputs
    (``logits[:, t]`` scores ``tokens[:, t]``); ``[B, T, V], [B, T], [B, T] -> [B]``."""
    return (token_logprobs(logits, tokens, temperature) * mask.to(torch.float32)).sum(-1)


def rlsc_loss(seq_logp: torch.Tensor, alpha: float = 0.1, weighting: str = "paper", reduction: str = "mean") -> torch.Tensor:
    """RLSC's self-confidence loss on ``[Q, K]`` sequence log-probs: ``-(w_k + alpha) * s_k`` with
    ``w = sg(exp(s))`` (``paper``) or ``sg(softmax_k(s))`` (``normalized``, which stays meaningful
    when exp(s) underflows for long responses). ``mean``: averaged over all Q*K entries;
    ``sum``: summed over K, averaged over Q. Its gradient in s_k is ``-(w_k + alpha)`` / (Q*K or Q)."""
    if weighting == "paper":
        weights = torch.exp(seq_logp.detach())  # s <= 0, so this never overflows; it may underflow to 0
    elif weighting == "normalized":
        weights = torch.softmax(seq_logp.detach(), dim=-1)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected paper or normalized")
    per_sample = -(weights + alpha) * seq_logp
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum(-1).mean()
    raise ValueError(f"unknown reduction {reduction!r}; expected mean or sum")


@torch.no_grad()
def token_confidence(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of the largest next-token probability; ``[B, T, V] -> [B]``."""
    top = torch.softmax(logits.float(), dim=-1).amax(-1)
    return masked_mean(top, mask, dim=-1)


@torch.no_grad()
def agreement_confidence(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much K samples' next-token distributions agree: at each position, ``sum_v mean_k(p_k(v))^2``
    over the samples that reach it, averaged over positions any sample reaches; ``[K, T, V], [K, T] -> []``."""
    weights = mask.to(probs.dtype)
    reached = weights.sum(0)  # [T]
    mean_probs = (probs * weights.unsqueeze(-1)).sum(0) / reached.clamp(min=1).unsqueeze(-1)
    per_position = (mean_probs**2).sum(-1)
    return masked_mean(per_position, reached > 0)
