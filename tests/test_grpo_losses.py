"""GRPO's math against hand-worked numbers and naive loops (docs/METHODS.md section 5)."""

import math
import statistics

import pytest
import torch

from lightning_modules.losses import aggregate_loss, clipped_surrogate, grpo_advantages, kl_k3, majority_answer


def test_grpo_advantages_match_a_naive_loop_with_bessels_std():
    torch.manual_seed(0)
    rewards = torch.rand(5, 4)
    got = grpo_advantages(rewards, "group")
    for q in range(5):
        row = rewards[q].tolist()
        mean, std = statistics.mean(row), statistics.stdev(row)  # stdev uses n - 1
        for g in range(4):
            assert math.isclose(got[q, g].item(), (row[g] - mean) / (std + 1e-4), rel_tol=1e-5)


def test_dr_grpo_advantages_are_only_centred():
    rewards = torch.tensor([[1.0, 0.0, 0.1, 1.0]])
    expected = [1.0 - 0.525, -0.525, 0.1 - 0.525, 1.0 - 0.525]
    torch.testing.assert_close(grpo_advantages(rewards, "none")[0], torch.tensor(expected))


def test_a_group_with_equal_rewards_gets_zero_advantage_without_nan():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.1, 0.1, 0.1]])
    for scale in ("group", "none"):
        got = grpo_advantages(rewards, scale)
        assert torch.isfinite(got).all()
        assert torch.equal(got, torch.zeros_like(got))
    assert torch.equal(grpo_advantages(torch.tensor([[0.7], [0.2]]), "group"), torch.zeros(2, 1)), "a group of one"


def test_kl_k3_by_hand_and_clamped():
    logp, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.2)])
    # ref - logp = log 0.5 on the first token: 0.5 - log 0.5 - 1; equal log-probs give 0.
    expected = torch.tensor([0.5 - math.log(0.5) - 1.0, 0.0])
    torch.testing.assert_close(kl_k3(logp, ref), expected)
    huge = kl_k3(torch.tensor([0.0]), torch.tensor([100.0]))
    assert math.isclose(huge.item(), math.exp(20.0) - 20.0 - 1.0, rel_tol=1e-6)
    assert (kl_k3(torch.randn(50), torch.randn(50)) >= 0).all()


def test_loss_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert math.isclose(aggregate_loss(per_token, mask, "grpo").item(), (2.0 + 4.0) / 2)
    assert math.isclose(aggregate_loss(per_token, mask, "dr_grpo", max_new_tokens=5).item(), 10.0 / (2 * 5))
    assert math.isclose(aggregate_loss(per_token, mask, "dapo").item(), 10.0 / 4)
    with pytest.raises(ValueError):
        aggregate_loss(per_token, mask, "nope")


def _rank_batch(lengths: list[int], T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    return torch.randn(len(lengths), T, generator=g, dtype=torch.float64), mask


def test_dapo_with_the_rollouts_token_count_is_one_token_mean_over_ranks():
    """Two simulated ranks with 14 and 24 response tokens. DDP averages the ranks' gradients, so
    each rank divides its token sum by 38 / 2: the mean over ranks is the token mean of all 38
    tokens, as if one process held the whole rollout (TRL). Each rank's own token mean does not
    give that: its 14 tokens would weigh 24/14 times as much as the other rank's."""
    T = 8
    ranks = [_rank_batch([4, 6, 4], T, 0), _rank_batch([8, 5, 7, 4], T, 1)]
    assert [int(m.sum()) for _, m in ranks] == [14, 24]
    per_token = torch.cat([p for p, _ in ranks])
    mask = torch.cat([m for _, m in ranks])
    single_process = (per_token * mask).sum().item() / 38  # a naive token mean of the concatenation
    world = len(ranks)
    global_form = sum(aggregate_loss(p, m, "dapo", num_tokens=38 / world) for p, m in ranks) / world
    per_rank_form = sum(aggregate_loss(p, m, "dapo") for p, m in ranks) / world
    assert math.isclose(global_form.item(), single_process, rel_tol=1e-12)
    assert abs(per_rank_form.item() - single_process) > 5e-3  # 1.3e-2 here


def test_dapo_over_minibatches_and_ranks_follows_the_gradient_of_one_token_mean():
    """Each rank's rollout split into two minibatches: the sum over minibatches of the ranks'
    mean loss, and its gradient, are those of the token mean over the whole rollout."""
    T = 8
    ranks = [_rank_batch([4, 6, 4, 3], T, 2), _rank_batch([8, 5, 7, 4], T, 3)]
    leaves = [p.clone().requires_grad_(True) for p, _ in ranks]
    count = sum(int(m.sum()) for _, m in ranks)
    world = len(ranks)
    total = 0.0
    for leaf, (_, mask) in zip(leaves, ranks):
        for rows in (slice(0, 2), slice(2, 4)):  # minibatches of 2 responses
            total = total + aggregate_loss(leaf[rows], mask[rows], "dapo", num_tokens=count / world) / world
    total.backward()
    expected = sum((p * m).sum().item() for p, m in ranks) / count
    assert math.isclose(total.item(), expected, rel_tol=1e-12)
    for leaf, (_, mask) in zip(leaves, ranks):
        torch.testing.assert_close(leaf.grad, mask.double() / count)


def test_dapo_on_one_process_and_one_minibatch_is_unchanged():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    default = aggregate_loss(per_token, mask, "dapo")
    assert aggregate_loss(per_token, mask, "dapo", num_tokens=float(mask.sum())).item() == default.item() == 10.0 / 4
    per_token, mask = _rank_batch([4, 6, 1], 8, 4)
    assert aggregate_loss(per_token, mask, "dapo", num_tokens=int(mask.sum()) / 1).item() == aggregate_loss(per_token, mask, "dapo").item()
    # no response token on any rank: zero, not NaN
    assert aggregate_loss(per_token, torch.zeros_like(mask), "dapo", num_tokens=0.0).item() == 0.0


def test_clipped_surrogate_by_hand():
    logp_old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))
    advantages = torch.tensor([1.0, -1.0, -1.0, 2.0])
    loss, clipped = clipped_surrogate(logp, logp_old, advantages, clip_eps=0.2)
    # A > 0, ratio 1.5: clipped to 1.2 -> -1.2. A < 0, ratio 1.5: max(1.5, 1.2) = 1.5.
    # A < 0, ratio 0.5: max(0.5, 0.8) = 0.8 (clipped). Inside the range: -2 * 1.1.
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, 0.8, -2.2]))
    assert clipped.tolist() == [True, False, True, False]


def test_majority_answer_counts_within_tolerance_and_unparsed_samples():
    assert majority_answer([3.0, 3.001, 4.0, None]) == (3.0, 0.5)
    assert majority_answer([None, None]) == (None, 0.0)
    assert majority_answer([]) == (None, 0.0)
    assert majority_answer([5.0, 6.0, 6.0, 5.0]) == (5.0, 0.5), "ties go to the first seen"
    assert majority_answer([7.0]) == (7.0, 1.0)


# ---- RLSC's pure functions (docs/METHODS.md section 4) ----
from lightning_modules.losses import agreement_confidence, rlsc_loss, sequence_logp, token_confidence  # noqa: E402


def test_sequence_logp_sums_masked_token_logprobs_by_hand():
    logits = torch.zeros(1, 3, 2)
    logits[0, 0, 1] = math.log(3.0)  # p(1) = 3/4 at position 0
    tokens, mask = torch.tensor([[1, 0, 1]]), torch.tensor([[1, 1, 0]])
    assert math.isclose(sequence_logp(logits, tokens, mask).item(), math.log(0.75) + math.log(0.5), rel_tol=1e-6)
    # temperature 2 halves the logits: p(1) at position 0 becomes sqrt(3) / (1 + sqrt(3))
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(3))) + math.log(0.5)
    assert math.isclose(sequence_logp(logits, tokens, mask, temperature=2.0).item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("weighting", ["paper", "normalized"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_rlsc_loss_value_and_gradient_match_the_formula(weighting, reduction):
    torch.manual_seed(0)
    s = (-torch.rand(3, 4) * 3).requires_grad_(True)
    loss = rlsc_loss(s, alpha=0.1, weighting=weighting, reduction=reduction)
    loss.backward()
    Q, K = s.shape
    expected, grads = 0.0, torch.zeros(Q, K)
    for q in range(Q):
        row = s[q].tolist()
        z = sum(math.exp(x) for x in row)
        for k in range(K):
            w = math.exp(row[k]) if weighting == "paper" else math.exp(row[k]) / z
            norm = Q * K if reduction == "mean" else Q
            expected += -(w + 0.1) * row[k] / norm
            grads[q, k] = -(w + 0.1) / norm  # the weights are constants (stop-gradient)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    torch.testing.assert_close(s.grad, grads)


def test_rlsc_loss_with_one_sample_identical_samples_and_underflow():
    one = torch.tensor([[-2.0]])
    assert math.isclose(rlsc_loss(one, weighting="normalized").item(), -(1.0 + 0.1) * -2.0, rel_tol=1e-6)
    same = torch.full((2, 4), -1.5)
    torch.testing.assert_close(rlsc_loss(same, weighting="normalized"), torch.tensor(-(0.25 + 0.1) * -1.5))
    # Very long responses: exp(s) underflows to 0. "paper" stays finite (only alpha is left);
    # "normalized" still ranks the samples.
    long = torch.tensor([[-900.0, -1000.0, -1100.0]], requires_grad=True)
    paper = rlsc_loss(long, weighting="paper")
    paper.backward()
    assert torch.isfinite(paper) and torch.allclose(long.grad, torch.full((1, 3), -0.1 / 3))
    long.grad = None
    normalized = rlsc_loss(long, weighting="normalized")
    normalized.backward()
    assert torch.isfinite(normalized) and torch.isfinite(long.grad).all()
    assert long.grad[0, 0] < long.grad[0, 1] <= long.grad[0, 2], "the most likely sample gets the largest push"


def test_token_confidence_is_the_mean_max_probability_by_hand():
    logits = torch.log(torch.tensor([[[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]]]))
    assert math.isclose(token_confidence(logits, torch.tensor([[1, 1, 0]])).item(), (0.7 + 0.6) / 2, rel_tol=1e-6)


def test_agreement_confidence_by_hand():
    probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])  # K=2, T=2, V=2
    mask = torch.tensor([[1, 1], [1, 0]])
    # position 0: mean (0.5, 0.5) -> 0.5; position 1: only sample 0 -> (0.5, 0.5) -> 0.5
    assert math.isclose(agreement_confidence(probs, mask).item(), 0.5, rel_tol=1e-6)
    identical = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    assert math.isclose(agreement_confidence(identical, torch.ones(2, 1)).item(), 1.0)


def test_majority_agreement_per_group_by_hand():
    from lightning_modules.losses import majority_agreement

    agrees, shares = majority_agreement([2.0, 2.004, 5.0, None, None, None, 7.0, 8.0], group=4)
    assert agrees == [True, True, False, False, False, False, True, False]  # a tie goes to the first seen
    assert shares == [0.5, 0.25]
