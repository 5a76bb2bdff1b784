"""CARFT (docs/METHODS.md section 3): the partial reward, pooled CoT representations, the positive and negative InfoNCE signals with their LCS pieces, and the seed's alternative objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_reward(rule_reward: torch.Tensor, cos_sim: torch.Tensor, wrong_answer_reward: float = 0.1) -> torch.Tensor:
    """CARFT's embedding-enhanced partial reward (docs/METHODS.md section 3): a wrong but extracted answer
    (rule reward ``wrong_answer_reward``, ReFT's 0.1) earns ``0.1 * cos(z_ann, z) + 0.2``, in [0.1, 0.3]; other rewards stay."""
    is_partial = torch.isclose(rule_reward, torch.full_like(rule_reward, wrong_answer_reward))
    return torch.where(is_partial, 0.1 * cos_sim.to(rule_reward.dtype) + 0.2, rule_reward)


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


def negative_rows(
    incorrect: torch.Tensor,
    response_in_lcs: torch.Tensor,
    response_mask: torch.Tensor,
    annotated_in_lcs: torch.Tensor,
    annotated_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which rows take part in CARFT's negative signal (docs/METHODS.md section 3.5); ``[N]``, ``[N, T]``,
    ``[N, T]``, ``[N, S]``, ``[N, S]`` -> three ``[N]`` bool masks:

    - ``loss_rows``: incorrect, with a non-empty LCS and non-empty remainders on both sides
      (z1, z2 and z3 all exist), the rows ``L_neg`` averages over;
    - ``matched_candidates``: incorrect with a non-empty LCS (z2 exists), candidates on this rank;
    - ``unmatched_candidates``: incorrect with response tokens outside the LCS (z3 exists),
      candidates on every rank.

    A piece that does not exist would pool to the zero vector, whose cosine with everything is 0;
    it is left out rather than counted as a candidate."""
    incorrect = incorrect.bool()
    response_mask, annotated_mask = response_mask.bool(), annotated_mask.bool()
    matched = (response_mask & response_in_lcs.bool()).any(-1)
    unmatched_response = (response_mask & ~response_in_lcs.bool()).any(-1)
    unmatched_annotated = (annotated_mask & ~annotated_in_lcs.bool()).any(-1)
    matched_candidates = incorrect & matched
    unmatched_candidates = incorrect & unmatched_response
    return matched_candidates & unmatched_candidates & unmatched_annotated, matched_candidates, unmatched_candidates


def carft_negative_loss(
    z_unmatched_annotated: torch.Tensor,
    z_matched: torch.Tensor,
    z_unmatched_all: torch.Tensor,
    valid: torch.Tensor,
    tau: float = 0.2,
    clamp: float = 0.9,
    matched_candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """CARFT's negative signal (docs/METHODS.md section 3.5), for every valid incorrect sample i:
    ``-log( exp(min(cos(z1_i, z2_i), c) / tau) / sum_k exp(cos(z2_i, k) / tau) )`` with
    z1 = ``z_unmatched_annotated`` (annotated tokens outside the LCS), z2 = ``z_matched`` (the
    response's tokens in the LCS) and k over the rows of ``z_matched`` marked ``matched_candidates``
    (this rank's) and every row of ``z_unmatched_all`` (z3, response tokens outside the LCS, gathered
    from every rank). ``valid``: the loss rows (``negative_rows``'s ``loss_rows``).
    ``matched_candidates``: ``negative_rows``'s, every incorrect sample of this rank with a non-empty
    LCS; None takes the rows of ``valid``. Mean over valid rows; 0 if none."""
    rows = valid.nonzero().squeeze(-1)
    if rows.numel() == 0:
        return z_matched.new_zeros(())
    if matched_candidates is None:
        matched_candidates = valid
    z1, z2 = z_unmatched_annotated[rows], z_matched[rows]
    numerator = torch.clamp(F.cosine_similarity(z1, z2, dim=-1, eps=1e-8), max=clamp) / tau
    candidates = torch.cat([z_matched[matched_candidates.bool()], z_unmatched_all])
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
