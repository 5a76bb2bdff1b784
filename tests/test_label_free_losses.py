"""Label-free rewards and GRPO variants against naive loops and hand-worked numbers (docs/METHODS.md section 9)."""

import math
import random

import pytest
import torch

import lightning_modules.losses as losses
from lightning_modules.losses import (
    answer_frequency_reward,
    clipped_surrogate,
    entropy_reward,
    gspo_loss,
    overlong_penalty,
    self_certainty,
)


# ---- naive references over Python floats --------------------------------------------------
def _naive_kl_uniform(row: list[float]) -> float:
    top = max(row)
    lse = top + math.log(sum(math.exp(x - top) for x in row))
    return lse - sum(row) / len(row) - math.log(len(row))


def _naive_entropy(row: list[float]) -> float:
    top = max(row)
    z = sum(math.exp(x - top) for x in row)
    probs = [math.exp(x - top) / z for x in row]
    return -sum(p * math.log(p) for p in probs if p > 0)


def _naive_per_response(logits, mask, fn, reduce="mean"):
    out = []
    for b in range(logits.size(0)):
        values = [fn(logits[b, t].tolist()) for t in range(logits.size(1)) if mask[b, t]]
        if reduce == "sum":
            out.append(sum(values))
        else:
            out.append(sum(values) / len(values) if values else 0.0)
    return out


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11) * 3
    mask = torch.ones(4, 6)
    mask[0, 4:] = 0  # padded
    mask[1] = 0  # empty response
    mask[2, 1:] = 0  # one-token response
    return logits, mask


# ---- self-certainty (INTUITOR) --------------------------------------------------------------
def test_self_certainty_matches_a_naive_loop():
    logits, mask = _batch()
    got = self_certainty(logits, mask)
    expected = _naive_per_response(logits, mask, _naive_kl_uniform)
    assert got.shape == (4,)
    for g, e in zip(got.tolist(), expected):
        assert math.isclose(g, e, rel_tol=1e-5, abs_tol=1e-6)
    assert got[1].item() == 0.0, "an empty mask gives 0"
    assert math.isclose(got[2].item(), _naive_kl_uniform(logits[2, 0].tolist()), rel_tol=1e-5), "one token"


def test_self_certainty_by_hand_and_zero_for_uniform_logits():
    # V = 2, p = (1/4, 3/4): KL(U || p) = 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75) = log 2 - 0.5 log 3
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert math.isclose(self_certainty(logits, torch.ones(1, 1)).item(), math.log(2) - 0.5 * math.log(3), rel_tol=1e-6)
    uniform = torch.full((2, 3, 50), 3.7)
    torch.testing.assert_close(self_certainty(uniform, torch.ones(2, 3)), torch.zeros(2), atol=1e-6, rtol=0)


def test_self_certainty_grows_as_the_distribution_sharpens():
    base = torch.randn(1, 1, 20, generator=torch.Generator().manual_seed(1))
    values = [self_certainty(base / temperature, torch.ones(1, 1)).item() for temperature in (4.0, 1.0, 0.25)]
    assert values[0] < values[1] < values[2]


# ---- entropy reward (RENT mean, EM-RL sum) ---------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_entropy_reward_matches_a_naive_loop(reduction):
    logits, mask = _batch()
    got = entropy_reward(logits, mask, reduction=reduction)
    expected = [-v for v in _naive_per_response(logits, mask, _naive_entropy, reduction)]
    for g, e in zip(got.tolist(), expected):
        assert math.isclose(g, e, rel_tol=1e-5, abs_tol=1e-6)
    assert got[1].item() == 0.0, "an empty mask gives 0"


def test_entropy_reward_of_uniform_logits_is_minus_log_v():
    uniform, mask = torch.zeros(2, 4, 32), torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(entropy_reward(uniform, mask, "mean"), torch.full((2,), -math.log(32)))
    torch.testing.assert_close(entropy_reward(uniform, mask, "sum"), torch.tensor([-3 * math.log(32), -math.log(32)]))


def test_entropy_reward_one_token_response_sum_equals_mean():
    logits = torch.randn(1, 3, 9, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 0, 0]])
    torch.testing.assert_close(entropy_reward(logits, mask, "sum"), entropy_reward(logits, mask, "mean"))
    assert math.isclose(entropy_reward(logits, mask).item(), -_naive_entropy(logits[0, 0].tolist()), rel_tol=1e-5)


def test_entropy_reward_gives_zero_not_nan_for_a_minus_inf_logit():
    logits = torch.tensor([[[0.0, 0.0, -math.inf, -math.inf]]])  # top-k style: two tokens possible
    assert math.isclose(entropy_reward(logits, torch.ones(1, 1)).item(), -math.log(2), rel_tol=1e-6)


def test_entropy_reward_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        entropy_reward(torch.zeros(1, 1, 3), torch.ones(1, 1), reduction="max")


# ---- chunking: equal to the unchunked formula, whatever the chunk size -----------------------
def _unchunked(logits, mask):
    flat = logits.float()
    kl = torch.logsumexp(flat, -1) - flat.mean(-1) - math.log(flat.size(-1))
    logp = torch.log_softmax(flat, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    m = mask.float()
    n = m.sum(-1).clamp(min=1)
    return (kl * m).sum(-1) / n, -(entropy * m).sum(-1) / n, -(entropy * m).sum(-1)


def test_chunked_results_equal_the_unchunked_formula_for_any_chunk_size():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 17, 257, generator=generator) * 2
    mask = (torch.rand(3, 17, generator=generator) > 0.3).float()
    certainty, entropy_mean, entropy_sum = _unchunked(logits, mask)
    for chunk_size in (1, 3, 16, 50, 10_000):
        torch.testing.assert_close(self_certainty(logits, mask, chunk_size=chunk_size), certainty, atol=1e-6, rtol=0)
        torch.testing.assert_close(entropy_reward(logits, mask, "mean", chunk_size), entropy_mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(entropy_reward(logits, mask, "sum", chunk_size), entropy_sum, atol=1e-5, rtol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        self_certainty(logits, mask, chunk_size=0)


def test_padding_logits_are_never_read_and_bf16_logits_are_cast_per_chunk():
    logits, mask = _batch()
    poisoned = logits.clone()
    poisoned[mask == 0] = float("nan")
    torch.testing.assert_close(self_certainty(poisoned, mask), self_certainty(logits, mask))
    torch.testing.assert_close(entropy_reward(poisoned, mask), entropy_reward(logits, mask))
    half = logits.to(torch.bfloat16)
    assert self_certainty(half, mask).dtype == torch.float32
    torch.testing.assert_close(self_certainty(half, mask, chunk_size=2), self_certainty(half.float(), mask))


def test_rewards_carry_no_gradient():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    assert not self_certainty(logits, torch.ones(2, 3)).requires_grad
    assert not entropy_reward(logits, torch.ones(2, 3)).requires_grad


# ---- answer-frequency reward (EMPO) ----------------------------------------------------------
def test_answer_frequency_reward_by_hand():
    answers = [1.0, 1.0, 2.0, None, 5.0, 5.004, 5.0, 5.0]
    expected = [0.5, 0.5, 0.25, 0.0, 1.0, 1.0, 1.0, 1.0]
    got = answer_frequency_reward(answers, group=4)
    assert got.dtype == torch.float32 and got.shape == (8,)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_answer_frequency_reward_is_zero_for_a_group_with_every_answer_none():
    torch.testing.assert_close(answer_frequency_reward([None, None, None, 3.0, 3.0, 4.0], 3), torch.tensor([0, 0, 0, 2 / 3, 2 / 3, 1 / 3]))


def test_answer_frequency_reward_compares_pairwise_within_the_tolerance():
    # 1.0 ~ 1.008 ~ 1.016 but 1.0 !~ 1.016: each answer counts the answers within 0.01 of its own
    torch.testing.assert_close(answer_frequency_reward([1.0, 1.008, 1.016], 3), torch.tensor([2 / 3, 1.0, 2 / 3]))


def test_answer_frequency_reward_matches_a_naive_loop():
    rng = random.Random(4)
    answers = [rng.choice([None, 1.0, 2.0, 2.005, 3.5, -1.0]) for _ in range(40)]
    got = answer_frequency_reward(answers, 8).tolist()
    for i, own in enumerate(answers):
        block = answers[i // 8 * 8 : i // 8 * 8 + 8]
        same = 0 if own is None else sum(1 for other in block if other is not None and abs(other - own) <= 1e-2 + 1e-9)
        assert math.isclose(got[i], same / 8, rel_tol=1e-6)
    with pytest.raises(ValueError, match="group"):
        answer_frequency_reward(answers, 0)


# ---- GSPO ------------------------------------------------------------------------------------
def _naive_gspo(logp, logp_old, advantages, mask, clip_low, clip_high):
    total, clipped_count = 0.0, 0
    for i in range(logp.size(0)):
        diffs = [logp[i, t].item() - logp_old[i, t].item() for t in range(logp.size(1)) if mask[i, t]]
        s = math.exp(sum(diffs) / len(diffs)) if diffs else 1.0
        a = advantages[i].item()
        unclipped, clipped = -a * s, -a * min(max(s, 1 - clip_low), 1 + clip_high)
        total += max(unclipped, clipped)
        clipped_count += clipped > unclipped
    return total / logp.size(0), clipped_count / logp.size(0)


@pytest.mark.parametrize("clip_low, clip_high", [(3e-4, 4e-4), (0.2, 0.2), (0.05, 0.3)])
def test_gspo_loss_matches_a_naive_loop(clip_low, clip_high):
    generator = torch.Generator().manual_seed(5)
    logp = -torch.rand(6, 7, generator=generator, dtype=torch.float64)
    logp_old = logp + 0.01 * torch.randn(6, 7, generator=generator, dtype=torch.float64)
    advantages = torch.randn(6, generator=generator, dtype=torch.float64)
    mask = torch.ones(6, 7)
    mask[1, 3:] = 0
    mask[2, 1:] = 0  # one-token response
    mask[3] = 0  # empty: s = 1
    loss, clip_frac = gspo_loss(logp, logp_old, advantages, mask, clip_low, clip_high)
    expected_loss, expected_frac = _naive_gspo(logp, logp_old, advantages, mask, clip_low, clip_high)
    assert math.isclose(loss.item(), expected_loss, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(clip_frac.item(), expected_frac)


def test_gspo_loss_clips_a_sequence_from_either_side_and_stops_its_gradient():
    # A > 0 with s = exp(0.01) above 1 + clip_high: the loss is -A * (1 + clip_high), clipped.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, clip_frac = gspo_loss(logp, logp.detach() - 0.01, torch.tensor([2.0]), torch.ones(1, 2))
    assert math.isclose(loss.item(), -2.0 * (1 + 4e-4), rel_tol=1e-6) and clip_frac.item() == 1.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    # A < 0 with s = exp(-0.01) below 1 - clip_low: the loss is -A * (1 - clip_low), clipped.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, clip_frac = gspo_loss(logp, logp.detach() + 0.01, torch.tensor([-3.0]), torch.ones(1, 2))
    assert math.isclose(loss.item(), 3.0 * (1 - 3e-4), rel_tol=1e-6) and clip_frac.item() == 1.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    # A > 0 with s below 1 - clip_low is not clipped (the unclipped term is the larger).
    loss, clip_frac = gspo_loss(torch.tensor([[-1.0]]), torch.tensor([[-0.99]]), torch.tensor([1.0]), torch.ones(1, 1))
    assert math.isclose(loss.item(), -math.exp(-0.01), rel_tol=1e-6) and clip_frac.item() == 0.0


def test_gspo_loss_gradient_by_hand_and_by_finite_differences():
    generator = torch.Generator().manual_seed(6)
    logp_old = -torch.rand(3, 4, generator=generator, dtype=torch.float64)
    logp = (logp_old + 1e-5 * torch.randn(3, 4, generator=generator, dtype=torch.float64)).requires_grad_()
    advantages = torch.tensor([1.5, -0.5, 0.8], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    loss, clip_frac = gspo_loss(logp, logp_old, advantages, mask)
    assert clip_frac.item() == 0.0, "ratios near 1: nothing clipped"
    loss.backward()
    # unclipped: L = (1/B) sum_i -A_i s_i, dL/dlogp_{i,t} = -(1/B) A_i s_i m_{i,t} / n_i
    n = mask.sum(-1)
    s = torch.exp(((logp.detach() - logp_old) * mask).sum(-1) / n)
    by_hand = -(advantages * s / n)[:, None] * mask / 3
    torch.testing.assert_close(logp.grad, by_hand, rtol=1e-9, atol=1e-12)
    h = 1e-7
    for i, t in [(0, 0), (0, 3), (1, 1), (1, 3), (2, 0)]:
        plus, minus = logp.detach().clone(), logp.detach().clone()
        plus[i, t] += h
        minus[i, t] -= h
        numeric = (gspo_loss(plus, logp_old, advantages, mask)[0] - gspo_loss(minus, logp_old, advantages, mask)[0]) / (2 * h)
        assert math.isclose(logp.grad[i, t].item(), numeric.item(), rel_tol=1e-5, abs_tol=1e-9)


def test_gspo_loss_log_ratio_is_float32_and_clamped():
    logp = torch.tensor([[0.0]], dtype=torch.bfloat16)
    loss, _ = gspo_loss(logp, torch.tensor([[-100.0]], dtype=torch.bfloat16), torch.tensor([-1.0]), torch.ones(1, 1), 0.2, 0.2)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), math.exp(20.0), rel_tol=1e-5), "A < 0, s = exp(clamp(100)) = exp(20), unclipped"


# ---- clipped_surrogate with DAPO's clip-higher -----------------------------------------------
def _old_clipped_surrogate(logp, logp_old, advantages, clip_eps=0.2):
    ratio = torch.exp((logp.float() - logp_old.float()).clamp(-20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return torch.maximum(unclipped, clipped), clipped > unclipped


@pytest.mark.parametrize("clip_eps", [0.1, 0.2, 0.28])
def test_clipped_surrogate_without_clip_eps_high_is_the_old_behaviour(clip_eps):
    generator = torch.Generator().manual_seed(7)
    logp = -torch.rand(5, 9, generator=generator)
    logp_old = logp + 0.4 * torch.randn(5, 9, generator=generator)
    advantages = torch.randn(5, 1, generator=generator)
    old = _old_clipped_surrogate(logp, logp_old, advantages, clip_eps)
    for new in (
        clipped_surrogate(logp, logp_old, advantages, clip_eps),
        clipped_surrogate(logp, logp_old, advantages, clip_eps, None),
        clipped_surrogate(logp, logp_old, advantages, clip_eps, clip_eps),
    ):
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


@pytest.mark.parametrize(
    "advantage, ratio, expected_loss, expected_clipped",
    [
        (1.0, 1.25, -1.25, False),  # inside 1 + 0.28: not clipped (it would be at eps 0.2)
        (1.0, 1.4, -1.28, True),  # clipped at the higher bound
        (-1.0, 0.7, 0.8, True),  # the lower bound stays 1 - clip_eps
        (-1.0, 1.4, 1.4, False),  # A < 0: a large ratio is never clipped
    ],
)
def test_clipped_surrogate_clip_higher_by_hand(advantage, ratio, expected_loss, expected_clipped):
    logp_old = torch.tensor([-1.0])
    logp = logp_old + math.log(ratio)
    loss, clipped = clipped_surrogate(logp, logp_old, torch.tensor([advantage]), 0.2, clip_eps_high=0.28)
    assert math.isclose(loss.item(), expected_loss, rel_tol=1e-6)
    assert clipped.item() is expected_clipped


# ---- DAPO overlong penalty -------------------------------------------------------------------
def test_overlong_penalty_at_the_three_boundaries():
    lengths = torch.tensor([0, 80, 81, 90, 99, 100, 101, 500])
    expected = [0.0, 0.0, -1 / 20, -0.5, -19 / 20, -1.0, -1.0, -1.0]
    got = overlong_penalty(lengths, max_new_tokens=100, buffer=20)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected))


def test_overlong_penalty_matches_a_naive_loop_and_accepts_a_zero_buffer():
    for max_new_tokens, buffer in [(64, 16), (10, 10), (10, 0), (7, 1)]:
        lengths = list(range(0, max_new_tokens + 5))
        got = overlong_penalty(torch.tensor(lengths), max_new_tokens, buffer).tolist()
        for length, value in zip(lengths, got):
            if length <= max_new_tokens - buffer:
                expected = 0.0
            elif length <= max_new_tokens:
                expected = (max_new_tokens - buffer - length) / buffer
            else:
                expected = -1.0
            assert math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-7), (max_new_tokens, buffer, length)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(torch.tensor([1]), 10, -1)


# ---- exports ---------------------------------------------------------------------------------
def test_all_is_sorted_complete_and_importable():
    assert losses.__all__ == sorted(losses.__all__)
    assert len(set(losses.__all__)) == len(losses.__all__)
    public = {name for name, value in vars(losses).items() if callable(value) and not name.startswith("_")}
    assert public == set(losses.__all__)


def test_logged_token_entropy_and_confidence_match_a_full_softmax():
    """The chunked metrics (no float copy of [B, T, V]) equal the plain formulas."""
    from lightning_modules.losses import entropy_from_logits, token_confidence, token_entropy

    torch.manual_seed(0)
    logits, mask = torch.randn(3, 5, 11) * 3, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    expected = entropy_from_logits(logits) * mask
    for chunk in (1, 4, 256):
        torch.testing.assert_close(token_entropy(logits, mask, chunk), expected)
    top = torch.softmax(logits, -1).amax(-1)
    want = torch.stack([(top[i] * mask[i]).sum() / mask[i].sum().clamp(min=1) for i in range(3)])
    torch.testing.assert_close(token_confidence(logits, mask), want)
    hot = torch.softmax(logits / 0.5, -1).amax(-1)  # the temperature is applied per chunk, as if to the whole tensor
    want = torch.stack([(hot[i] * mask[i]).sum() / mask[i].sum().clamp(min=1) for i in range(3)])
    torch.testing.assert_close(token_confidence(logits, mask, 0.5), want)
