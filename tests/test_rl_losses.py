"""Rewards, PPO, CARFT and contrastive losses against naive loops or hand-worked numbers.

Every expected value is derived from ``docs/METHODS.md`` (sections 0, 2 and 3) or, for the
seed options, from the documented definitions, with plain Python loops over floats; none of
it reuses the vectorised code under test.
"""

import math
import random

import pytest
import torch

from lightning_modules.losses import (
    carft_negative_loss,
    carft_positive_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    last_token_rewards,
    lcs_masks,
    lcs_masks_batch,
    negative_rows,
    pairwise_cos,
    partial_reward,
    pool_cot,
    ppo_policy_loss,
    ppo_value_loss,
    representation_mse,
    rule_reward,
    supcon_loss,
    triplet_loss,
    whiten,
)

TOL = dict(rel_tol=1e-6, abs_tol=1e-6)


# ---- pure-Python helpers ---------------------------------------------------------------------
def _cos(u, v) -> float:
    u, v = [float(x) for x in u], [float(x) for x in v]
    dot = sum(x * y for x, y in zip(u, v))
    nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(y * y for y in v))
    return dot / (nu * nv)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _length(mask_row) -> int:
    """Number of response tokens of a right-padded mask row."""
    return int(sum(int(m) for m in mask_row))


def _last_index(mask_row) -> int | None:
    last = None
    for t, m in enumerate(mask_row):
        if int(m):
            last = t
    return last


def _assert_rows_close(got: torch.Tensor, expected, **tol) -> None:
    tol = tol or TOL
    got = got.tolist()
    assert len(got) == len(expected)
    for g_row, e_row in zip(got, expected):
        g_row = g_row if isinstance(g_row, list) else [g_row]
        e_row = e_row if isinstance(e_row, list) else [e_row]
        assert len(g_row) == len(e_row)
        for g, e in zip(g_row, e_row):
            assert math.isclose(g, e, **tol), (got, expected)


# ---- rewards (docs/METHODS.md section 0 and 3) ----------------------------------------------------------
def test_rule_reward_is_one_for_a_correct_answer_within_the_tolerance():
    assert rule_reward(18.0, 18.0) == 1.0
    assert rule_reward(18.004, 18.0) == 1.0
    assert rule_reward(17.995, 18.0) == 1.0
    # |pred - gold| <= 1e-2 is inclusive (CARFT's rule), despite binary rounding of 1.01 - 1.0
    assert rule_reward(1.01, 1.0) == 1.0
    assert rule_reward(0.99, 1.0) == 1.0
    assert rule_reward(-3.0, -3.0) == 1.0


def test_rule_reward_is_a_tenth_for_a_wrong_extracted_answer():
    assert math.isclose(rule_reward(1.011, 1.0), 0.1)
    assert math.isclose(rule_reward(17.0, 18.0), 0.1)
    assert math.isclose(rule_reward(0.0, 18.0), 0.1)  # 0 is an answer, not "no answer"
    assert math.isclose(rule_reward(-18.0, 18.0), 0.1)


def test_rule_reward_is_zero_without_an_answer():
    assert rule_reward(None, 18.0) == 0.0
    assert rule_reward(None, 0.0) == 0.0


def test_partial_reward_rescales_only_wrong_extracted_answers():
    rule = torch.tensor([1.0, 0.1, 0.0, 0.1, 0.1, 0.1])
    cos = torch.tensor([0.5, 0.5, 0.5, -1.0, 1.0, 0.0])
    got = partial_reward(rule, cos)
    # 0.1 -> 0.1 * cos + 0.2, in [0.1, 0.3]; 1.0 and 0.0 stay whatever the cosine
    expected = [1.0, 0.25, 0.0, 0.1, 0.3, 0.2]
    _assert_rows_close(got, expected)


def test_partial_reward_stays_in_its_range_for_random_cosines():
    torch.manual_seed(0)
    cos = torch.rand(50) * 2 - 1
    got = partial_reward(torch.full((50,), 0.1), cos)
    for g, c in zip(got.tolist(), cos.tolist()):
        assert 0.1 - 1e-6 <= g <= 0.3 + 1e-6
        assert math.isclose(g, 0.1 * c + 0.2, **TOL)


def test_last_token_rewards_places_each_reward_on_the_last_response_token():
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # EOS at position 2, then padding
            [1, 1, 1, 1, 1],  # cut at the length limit: the last token carries the reward
            [1, 0, 0, 0, 0],  # a single-token response
            [0, 0, 0, 0, 0],  # no response token at all: no reward anywhere
        ]
    )
    rewards = torch.tensor([1.0, 0.1, 0.5, 1.0])
    got = last_token_rewards(rewards, mask)
    expected = []
    for b in range(4):
        row = [0.0] * 5
        last = _last_index(mask[b].tolist())
        if last is not None:
            row[last] = rewards[b].item()
        expected.append(row)
    assert expected[0] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert expected[1][4] == pytest.approx(0.1)
    assert expected[2][0] == 0.5
    _assert_rows_close(got, expected)


# ---- GAE (docs/METHODS.md section 2, step 4) ------------------------------------------------------------
def _naive_gae(rewards, values, mask, gamma, lam):
    advantages, returns = [], []
    for r_row, v_row, m_row in zip(rewards, values, mask):
        T, L = len(m_row), _length(m_row)

        def v(t):  # V is zero after the last response token
            return v_row[t] if t < L else 0.0

        deltas = [r_row[t] + gamma * v(t + 1) - v(t) for t in range(L)]
        a_row = [sum((gamma * lam) ** l * deltas[t + l] for l in range(L - t)) for t in range(L)]
        advantages.append(a_row + [0.0] * (T - L))
        returns.append([a_row[t] + v(t) for t in range(L)] + [0.0] * (T - L))
    return advantages, returns


def test_gae_by_hand_on_a_two_token_response():
    # gamma 1, lambda 0.5: delta_1 = 1 + 0 - 0.2 = 0.8, delta_0 = 0 + 0.2 - 0.5 = -0.3,
    # A_1 = 0.8, A_0 = -0.3 + 0.5 * 0.8 = 0.1; R = A + V = [0.6, 1.0]
    adv, ret = gae(
        torch.tensor([[0.0, 1.0]], dtype=torch.float64),
        torch.tensor([[0.5, 0.2]], dtype=torch.float64),
        torch.tensor([[1, 1]]),
        gamma=1.0,
        lam=0.5,
    )
    _assert_rows_close(adv, [[0.1, 0.8]])
    _assert_rows_close(ret, [[0.6, 1.0]])


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_matches_a_naive_loop(gamma, lam):
    torch.manual_seed(1)
    lengths = [7, 3, 1, 5]
    T = 7
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    rewards = torch.randn(4, T, dtype=torch.float64) * mask  # per-token KL-like rewards
    for b, n in enumerate(lengths):
        rewards[b, n - 1] += 1.0  # rule reward on the last token
    # Garbage in the padding must be ignored: values there are not V after the response.
    values = torch.randn(4, T, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    exp_adv, exp_ret = _naive_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    _assert_rows_close(adv, exp_adv, rel_tol=1e-9, abs_tol=1e-9)
    _assert_rows_close(ret, exp_ret, rel_tol=1e-9, abs_tol=1e-9)


def test_gae_uses_default_gamma_one_and_lambda_095():
    torch.manual_seed(2)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    rewards, values = torch.randn(2, 6, dtype=torch.float64) * mask, torch.randn(2, 6, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask)
    exp_adv, exp_ret = _naive_gae(rewards.tolist(), values.tolist(), mask.tolist(), 1.0, 0.95)
    _assert_rows_close(adv, exp_adv, rel_tol=1e-9, abs_tol=1e-9)
    _assert_rows_close(ret, exp_ret, rel_tol=1e-9, abs_tol=1e-9)


# ---- whitening -------------------------------------------------------------------------------
def _naive_whiten(x, mask):
    flat = [v for row, m_row in zip(x, mask) for v, m in zip(row, m_row) if m]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / len(flat))  # population std
    return [[(v - mean) / std if m else 0.0 for v, m in zip(row, m_row)] for row, m_row in zip(x, mask)]


def test_whiten_gives_masked_mean_zero_and_population_std_one():
    torch.manual_seed(3)
    x = torch.randn(3, 6, dtype=torch.float64) * 4 + 2
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    got = whiten(x, mask)
    _assert_rows_close(got, _naive_whiten(x.tolist(), mask.tolist()))
    kept = [g for row, m_row in zip(got.tolist(), mask.tolist()) for g, m in zip(row, m_row) if m]
    mean = sum(kept) / len(kept)
    assert math.isclose(mean, 0.0, abs_tol=1e-9)
    assert math.isclose(math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept)), 1.0, rel_tol=1e-6)
    assert all(g == 0.0 for row, m_row in zip(got.tolist(), mask.tolist()) for g, m in zip(row, m_row) if not m)


def test_whiten_with_all_reduce_matches_whitening_the_global_batch():
    # Two simulated ranks: an all-reduce (sum) of whatever statistics whiten reduces. Each
    # rank's statistics are recorded first, then each rank is given its own plus the other's.
    torch.manual_seed(4)
    x = torch.randn(5, 6, dtype=torch.float64) * 3 - 1
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in [6, 2, 4, 1, 3]])
    halves = [(x[:2], mask[:2]), (x[2:], mask[2:])]

    recorded = []
    for xs, ms in halves:
        whiten(xs, ms, all_reduce=lambda s: recorded.append(s.clone()) or s)
    assert len(recorded) == 2

    per_rank = [
        whiten(xs, ms, all_reduce=lambda s, other=recorded[1 - rank]: s + other)
        for rank, (xs, ms) in enumerate(halves)
    ]
    torch.testing.assert_close(torch.cat(per_rank), whiten(x, mask))
    _assert_rows_close(torch.cat(per_rank), _naive_whiten(x.tolist(), mask.tolist()))
    # and it is not the same as whitening each half alone
    assert not torch.allclose(whiten(*halves[0]), per_rank[0])


# ---- PPO losses (docs/METHODS.md section 2, step 5) -----------------------------------------------------
def _naive_policy_loss(logp, logp_old, adv, mask, eps):
    per_sequence, clipped_tokens, tokens = [], 0, 0
    for lp_row, lo_row, a_row, m_row in zip(logp, logp_old, adv, mask):
        terms = []
        for lp, lo, a, m in zip(lp_row, lo_row, a_row, m_row):
            if not m:
                continue
            ratio = math.exp(lp - lo)
            unclipped = -a * ratio
            clipped = -a * min(max(ratio, 1 - eps), 1 + eps)
            terms.append(max(unclipped, clipped))
            clipped_tokens += clipped > unclipped
            tokens += 1
        per_sequence.append(sum(terms) / len(terms))
    return sum(per_sequence) / len(per_sequence), clipped_tokens / tokens


@pytest.mark.parametrize(
    "advantage,ratio,expected_loss,expected_clip_frac,expected_grad",
    [
        # A > 0, ratio above 1 + eps: the clipped term -1.2 > -1.5 wins, no gradient
        (1.0, 1.5, -1.2, 1.0, 0.0),
        # A < 0, ratio above 1 + eps: the unclipped 1.5 > 1.2 wins, d/dlogp (-A * ratio) = 1.5
        (-1.0, 1.5, 1.5, 0.0, 1.5),
        # A > 0, ratio below 1 - eps: the unclipped -0.5 > -0.8 wins, gradient -A * ratio = -0.5
        (1.0, 0.5, -0.5, 0.0, -0.5),
        # A < 0, ratio below 1 - eps: the clipped 0.8 > 0.5 wins, no gradient
        (-1.0, 0.5, 0.8, 1.0, 0.0),
        # inside the range nothing is clipped
        (2.0, 1.1, -2.2, 0.0, -2.2),
    ],
)
def test_ppo_policy_loss_by_hand_on_one_token(advantage, ratio, expected_loss, expected_clip_frac, expected_grad):
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, clip_frac = ppo_policy_loss(
        logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[advantage]], dtype=torch.float64),
        torch.ones(1, 1), clip_eps=0.2,
    )
    assert math.isclose(loss.item(), expected_loss, **TOL)
    assert math.isclose(clip_frac.item(), expected_clip_frac, **TOL)
    loss.backward()
    assert math.isclose(logp.grad.item(), expected_grad, **TOL)


@pytest.mark.parametrize("clip_eps", [0.2, 0.1])
def test_ppo_policy_loss_matches_a_naive_loop(clip_eps):
    torch.manual_seed(5)
    T = 6
    # Different lengths: a per-sequence token mean then a batch mean differs from a global token mean.
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in [6, 1, 3, 4]])
    logp_old = torch.randn(4, T, dtype=torch.float64)
    logp = logp_old + torch.randn(4, T, dtype=torch.float64) * 0.4
    adv = torch.randn(4, T, dtype=torch.float64)
    loss, clip_frac = ppo_policy_loss(logp, logp_old, adv, mask, clip_eps=clip_eps)
    exp_loss, exp_frac = _naive_policy_loss(logp.tolist(), logp_old.tolist(), adv.tolist(), mask.tolist(), clip_eps)
    assert math.isclose(loss.item(), exp_loss, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(clip_frac.item(), exp_frac, rel_tol=1e-9, abs_tol=1e-9)
    assert 0.0 < exp_frac < 1.0  # the case exercises both branches


def _naive_value_loss(values, values_old, returns, mask, clip):
    total, count = 0.0, 0
    for v_row, o_row, r_row, m_row in zip(values, values_old, returns, mask):
        for v, o, r, m in zip(v_row, o_row, r_row, m_row):
            if m:
                v_clipped = min(max(v, o - clip), o + clip)
                total += max((v - r) ** 2, (v_clipped - r) ** 2)
                count += 1
    return 0.5 * total / count


def test_ppo_value_loss_by_hand():
    def one(v, v_old, r):
        t = lambda x: torch.tensor([[x]], dtype=torch.float64)  # noqa: E731
        return ppo_value_loss(t(v), t(v_old), t(r), torch.ones(1, 1), clip=0.2).item()

    # V=1, V_old=0.5, R=0: clipped V = 0.7; max(1.0, 0.49) = 1.0; times 0.5
    assert math.isclose(one(1.0, 0.5, 0.0), 0.5, **TOL)
    # V=0.9, V_old=0.5, R=1: clipped V = 0.7; max(0.01, 0.09) = 0.09 -> the clipped error wins
    assert math.isclose(one(0.9, 0.5, 1.0), 0.045, **TOL)
    # inside the clip range: plain 0.5 * (V - R)^2
    assert math.isclose(one(0.6, 0.5, 1.0), 0.5 * 0.16, **TOL)


def test_ppo_value_loss_matches_a_naive_loop_over_all_tokens_of_the_batch():
    torch.manual_seed(6)
    T = 5
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in [5, 1, 2]])
    values_old = torch.randn(3, T, dtype=torch.float64)
    values = values_old + torch.randn(3, T, dtype=torch.float64) * 0.5
    returns = torch.randn(3, T, dtype=torch.float64)
    for clip in (0.2, 0.05):
        got = ppo_value_loss(values, values_old, returns, mask, clip=clip)
        expected = _naive_value_loss(values.tolist(), values_old.tolist(), returns.tolist(), mask.tolist(), clip)
        assert math.isclose(got.item(), expected, rel_tol=1e-9, abs_tol=1e-9)


def _naive_value_loss_per_response(values, values_old, returns, mask, clip):
    means = []
    for v_row, o_row, r_row, m_row in zip(values, values_old, returns, mask):
        errors = [max((v - r) ** 2, (min(max(v, o - clip), o + clip) - r) ** 2) for v, o, r, m in zip(v_row, o_row, r_row, m_row) if m]
        means.append(sum(errors) / len(errors))
    return 0.5 * sum(means) / len(means)


def test_ppo_value_loss_token_and_response_norms_by_hand():
    """Responses of 1 and 3 tokens, squared errors [4] and [0, 0, 0] (no clipping: V = V_old).
    Per response (ReFT): 0.5 * (4/1 + 0/3) / 2 = 1.0. Per token: 0.5 * 4 / 4 = 0.5."""
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    returns = torch.zeros(2, 3, dtype=torch.float64)
    values = torch.tensor([[2.0, 9.0, 9.0], [0.0, 0.0, 0.0]], dtype=torch.float64)  # padding values must not count
    assert math.isclose(ppo_value_loss(values, values, returns, mask, clip=0.2, norm="response").item(), 1.0, **TOL)
    assert math.isclose(ppo_value_loss(values, values, returns, mask, clip=0.2, norm="token").item(), 0.5, **TOL)
    assert ppo_value_loss(values, values, returns, mask, clip=0.2).item() == ppo_value_loss(values, values, returns, mask, 0.2, "token").item()
    with pytest.raises(ValueError, match="expected token or response"):
        ppo_value_loss(values, values, returns, mask, norm="sequence")


def test_ppo_value_loss_per_response_matches_a_naive_loop():
    torch.manual_seed(7)
    T = 5
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in [5, 1, 2]])
    values_old = torch.randn(3, T, dtype=torch.float64)
    values = values_old + torch.randn(3, T, dtype=torch.float64) * 0.5
    returns = torch.randn(3, T, dtype=torch.float64)
    for clip in (0.2, 0.05):
        got = ppo_value_loss(values, values_old, returns, mask, clip=clip, norm="response")
        expected = _naive_value_loss_per_response(values.tolist(), values_old.tolist(), returns.tolist(), mask.tolist(), clip)
        assert math.isclose(got.item(), expected, rel_tol=1e-9, abs_tol=1e-9)
        token_mean = _naive_value_loss(values.tolist(), values_old.tolist(), returns.tolist(), mask.tolist(), clip)
        assert not math.isclose(expected, token_mean, rel_tol=1e-3)  # unequal lengths: the two norms differ


def test_entropy_from_logits_by_hand_and_against_a_naive_sum():
    uniform = torch.zeros(1, 1, 8)
    assert math.isclose(entropy_from_logits(uniform).item(), math.log(8), **TOL)
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert math.isclose(entropy_from_logits(peaked).item(), 0.0, abs_tol=1e-6)

    torch.manual_seed(7)
    logits = torch.randn(2, 3, 5)
    got = entropy_from_logits(logits)
    assert got.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            z = sum(math.exp(x) for x in logits[b, t].tolist())
            p = [math.exp(x) / z for x in logits[b, t].tolist()]
            assert math.isclose(got[b, t].item(), -sum(q * math.log(q) for q in p), rel_tol=1e-5)


def test_explained_variance_is_one_for_a_perfect_critic_and_zero_for_a_constant_one():
    torch.manual_seed(8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    returns = torch.randn(2, 4, dtype=torch.float64)
    assert math.isclose(explained_variance(returns, returns, mask).item(), 1.0, abs_tol=1e-9)
    constant = torch.full((2, 4), 0.3, dtype=torch.float64)
    assert math.isclose(explained_variance(constant, returns, mask).item(), 0.0, abs_tol=1e-9)

    values = torch.randn(2, 4, dtype=torch.float64)
    kept = [(v, r) for v_row, r_row, m_row in zip(values.tolist(), returns.tolist(), mask.tolist())
            for v, r, m in zip(v_row, r_row, m_row) if m]

    def var(xs):
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / len(xs)

    expected = 1 - var([r - v for v, r in kept]) / var([r for _, r in kept])
    assert math.isclose(explained_variance(values, returns, mask).item(), expected, rel_tol=1e-9)


# ---- CoT pooling (docs/METHODS.md section 3) ------------------------------------------------------------
def _naive_pool(emb, scores, mask, mode):
    out = []
    for e_rows, s_row, m_row in zip(emb, scores, mask):
        d = len(e_rows[0])
        idx = [t for t, m in enumerate(m_row) if m]
        if not idx:
            out.append([0.0] * d)
            continue
        if mode == "value_softmax":
            top = max(s_row[t] for t in idx)
            w = {t: math.exp(s_row[t] - top) for t in idx}
            z = sum(w.values())
            out.append([sum(w[t] / z * e_rows[t][k] for t in idx) for k in range(d)])
        elif mode == "mean":
            out.append([sum(e_rows[t][k] for t in idx) / len(idx) for k in range(d)])
        else:  # last
            out.append(list(e_rows[idx[-1]]))
    return out


@pytest.mark.parametrize("mode", ["value_softmax", "mean", "last"])
def test_pool_cot_matches_a_naive_loop_and_gives_zeros_for_an_empty_mask(mode):
    torch.manual_seed(9)
    emb = torch.randn(4, 5, 3, dtype=torch.float64)
    scores = torch.randn(4, 5, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    got = pool_cot(emb, scores, mask, mode=mode)
    assert got.shape == (4, 3)
    assert torch.isfinite(got).all()
    assert got[2].abs().max().item() == 0.0
    _assert_rows_close(got, _naive_pool(emb.tolist(), scores.tolist(), mask.tolist(), mode), rel_tol=1e-5, abs_tol=1e-6)


def test_pool_cot_value_softmax_by_hand():
    # scores [0, log 3] -> weights [1/4, 3/4]; the third (masked) token's huge score is ignored
    emb = torch.tensor([[[4.0, 0.0], [0.0, 4.0], [100.0, 100.0]]])
    scores = torch.tensor([[0.0, math.log(3.0), 50.0]])
    got = pool_cot(emb, scores, torch.tensor([[1, 1, 0]]), mode="value_softmax")
    _assert_rows_close(got, [[1.0, 3.0]])


def test_pool_cot_value_softmax_sends_gradients_to_embeddings_and_scores_without_nan():
    torch.manual_seed(10)
    emb = torch.randn(3, 4, 2, requires_grad=True)
    scores = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])  # includes an empty row
    out = pool_cot(emb, scores, mask, mode="value_softmax")
    (out * torch.randn(3, 2)).sum().backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(scores.grad).all()
    for b in range(3):
        for t in range(4):
            if mask[b, t]:
                assert emb.grad[b, t].abs().sum() > 0
                assert scores.grad[b, t].abs() > 0
            else:
                assert emb.grad[b, t].abs().sum() == 0
                assert scores.grad[b, t] == 0
    with pytest.raises(ValueError):
        pool_cot(emb, scores, mask, mode="max")


def test_pairwise_cos_matches_a_naive_loop():
    torch.manual_seed(11)
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    got = pairwise_cos(a, b)
    assert got.shape == (3, 5)
    _assert_rows_close(got, [[_cos(u, v) for v in b.tolist()] for u in a.tolist()], rel_tol=1e-9, abs_tol=1e-9)
    # scale-invariant, and a zero vector gives a finite value rather than NaN
    torch.testing.assert_close(pairwise_cos(a * 7.0, b * 0.1), got)
    assert torch.isfinite(pairwise_cos(torch.zeros(1, 4), b.float())).all()


# ---- CARFT contrastive signals (docs/METHODS.md section 3) ----------------------------------------------
def _naive_positive(z_ann, z_s, correct, tau, clamp):
    losses = []
    for i, ok in enumerate(correct):
        if not ok:
            continue
        numerator = min(_cos(z_ann[i], z_s[i]), clamp) / tau
        denominator = sum(math.exp(_cos(z_ann[i], z_j) / tau) for z_j in z_s)  # all N rows, i included
        losses.append(-math.log(math.exp(numerator) / denominator))
    return sum(losses) / len(losses) if losses else 0.0


def _near(z: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return z + noise * torch.randn(z.shape, generator=g, dtype=z.dtype)


@pytest.mark.parametrize(
    "correct",
    [[True, False, True, False], [True, True, True, True], [False, False, False, True]],
)
def test_carft_positive_loss_matches_a_naive_loop_with_gathered_rows(correct):
    torch.manual_seed(12)
    B, N, d = 4, 7, 5  # rows B..N-1 come from other ranks
    z_ann = torch.randn(B, d, dtype=torch.float64)
    z_s = torch.randn(N, d, dtype=torch.float64)
    got = carft_positive_loss(z_ann, z_s, torch.tensor(correct), tau=0.2, clamp=0.9)
    expected = _naive_positive(z_ann.tolist(), z_s.tolist(), correct, 0.2, 0.9)
    assert math.isclose(got.item(), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_carft_positive_loss_is_zero_without_a_correct_sample():
    z_ann, z_s = torch.randn(3, 4), torch.randn(5, 4, requires_grad=True)
    got = carft_positive_loss(z_ann, z_s, torch.tensor([False, False, False]))
    assert got.item() == 0.0


def test_carft_positive_loss_clamps_the_numerator_only():
    torch.manual_seed(13)
    B, N, d = 3, 5, 6
    z_ann = torch.randn(B, d, dtype=torch.float64)
    z_s = torch.randn(N, d, dtype=torch.float64)
    z_s[:B] = _near(z_ann, 0.05, 0)  # own samples very close to the annotated ones: cos > 0.9
    correct = [True, True, False]
    assert all(_cos(z_ann[i].tolist(), z_s[i].tolist()) > 0.95 for i in range(B))

    clamped = carft_positive_loss(z_ann, z_s, torch.tensor(correct), tau=0.2, clamp=0.9)
    unclamped = carft_positive_loss(z_ann, z_s, torch.tensor(correct), tau=0.2, clamp=1.0)
    exp_clamped = _naive_positive(z_ann.tolist(), z_s.tolist(), correct, 0.2, 0.9)
    exp_unclamped = _naive_positive(z_ann.tolist(), z_s.tolist(), correct, 0.2, 1.0)
    assert math.isclose(clamped.item(), exp_clamped, rel_tol=1e-9)
    assert math.isclose(unclamped.item(), exp_unclamped, rel_tol=1e-9)
    assert clamped.item() > unclamped.item() + 0.1  # the clamp is active here
    # with a clamp far above every cosine it changes nothing
    far = carft_positive_loss(z_ann, z_s, torch.tensor(correct), tau=0.5, clamp=5.0)
    assert math.isclose(far.item(), _naive_positive(z_ann.tolist(), z_s.tolist(), correct, 0.5, 1.0), rel_tol=1e-9)


def test_carft_positive_loss_sends_gradients_to_gathered_rows():
    torch.manual_seed(14)
    B, N, d = 2, 5, 4
    z_ann = torch.randn(B, d)
    z_s = torch.randn(N, d, requires_grad=True)
    carft_positive_loss(z_ann, z_s, torch.tensor([True, False])).backward()
    assert torch.isfinite(z_s.grad).all()
    for j in range(B, N):  # rows from other ranks appear in the denominator
        assert z_s.grad[j].abs().sum() > 0
    assert z_s.grad[0].abs().sum() > 0


def _naive_negative(z1, z2, z3_all, valid, tau, clamp):
    rows = [i for i, ok in enumerate(valid) if ok]
    candidates = [z2[k] for k in rows] + list(z3_all)
    losses = []
    for i in rows:
        numerator = min(_cos(z1[i], z2[i]), clamp) / tau
        denominator = sum(math.exp(_cos(z2[i], k) / tau) for k in candidates)
        losses.append(-math.log(math.exp(numerator) / denominator))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize(
    "valid,tau,clamp",
    [
        ([True, False, True, True], 0.2, 0.9),
        ([True, True, True, True], 0.2, 0.9),
        ([False, False, True, False], 0.3, 0.5),
    ],
)
def test_carft_negative_loss_matches_a_naive_loop(valid, tau, clamp):
    torch.manual_seed(15)
    B, M, d = 4, 6, 5
    z2 = torch.randn(B, d, dtype=torch.float64)
    z1 = _near(z2, 0.3, 1)  # some cosines above the clamp, some below
    z1[1] = torch.randn(d, dtype=torch.float64)
    z3_all = torch.randn(M, d, dtype=torch.float64)
    got = carft_negative_loss(z1, z2, z3_all, torch.tensor(valid), tau=tau, clamp=clamp)
    expected = _naive_negative(z1.tolist(), z2.tolist(), z3_all.tolist(), valid, tau, clamp)
    assert math.isclose(got.item(), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_carft_negative_loss_ignores_invalid_rows_and_is_zero_if_none_is_valid():
    torch.manual_seed(16)
    z1, z2, z3 = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    valid = torch.tensor([True, False, True])
    base = carft_negative_loss(z1, z2, z3, valid)
    z1b, z2b = z1.clone(), z2.clone()
    z1b[1], z2b[1] = torch.randn(4), torch.randn(4)  # with the default candidates an invalid row is neither loss nor candidate
    torch.testing.assert_close(carft_negative_loss(z1b, z2b, z3, valid), base)
    assert carft_negative_loss(z1, z2, z3, torch.tensor([False, False, False])).item() == 0.0


def _naive_negative_spec(z1, z2, z3_all, loss_rows, matched_candidates, tau, clamp):
    """Section 3.5: loss rows as given; candidates = z2 of every marked row of this rank, then every z3."""
    candidates = [z2[k] for k, ok in enumerate(matched_candidates) if ok] + list(z3_all)
    losses = []
    for i, ok in enumerate(loss_rows):
        if not ok:
            continue
        numerator = min(_cos(z1[i], z2[i]), clamp) / tau
        denominator = sum(math.exp(_cos(z2[i], k) / tau) for k in candidates)
        losses.append(numerator - math.log(denominator))
    return -sum(losses) / len(losses) if losses else 0.0


def test_negative_rows_by_hand():
    """Loss rows need all three pieces; a candidate only needs its own piece (docs/METHODS.md section 3.5)."""
    annotated = torch.tensor([[5, 6, 7]] * 5)
    annotated_mask = torch.ones(5, 3, dtype=torch.long)
    responses = torch.tensor([
        [5, 9, 7, 0],  # incorrect, LCS {5, 7}: every piece exists -> loss row, z2 and z3 candidates
        [5, 6, 8, 7],  # incorrect, holds the whole annotated CoT: no z1 -> not a loss row, z2 and z3 candidates
        [5, 6, 7, 0],  # incorrect, equal to the annotation: no z1, no z3 -> z2 candidate only
        [8, 9, 0, 0],  # incorrect, nothing shared: no z2 -> z3 candidate only
        [5, 9, 7, 0],  # correct: takes no part
    ])
    response_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    annotated_in_lcs, response_in_lcs = lcs_masks_batch(annotated, responses, annotated_mask.sum(-1), response_mask.sum(-1))
    incorrect = torch.tensor([True, True, True, True, False])
    loss_rows, matched, unmatched = negative_rows(incorrect, response_in_lcs, response_mask, annotated_in_lcs, annotated_mask)
    assert loss_rows.tolist() == [True, False, False, False, False]
    assert matched.tolist() == [True, True, True, False, False]
    assert unmatched.tolist() == [True, True, False, True, False]


def test_carft_negative_loss_takes_the_pieces_of_a_response_holding_the_whole_annotation_as_candidates():
    """The cross-check's case: an incorrect response that contains the whole annotated CoT has no
    z1, so it is not a row of L_neg, but its z2 and z3 are candidates of every other row's
    denominator (docs/METHODS.md section 3.5). The cross-check reported 4.8218 (old rule) against
    4.8415 (spec) on inputs that could not be recovered; this is our own example of the same case,
    worked by hand, from token ids through the LCS and mean pooling.

    2-D token embeddings: e5 = (1, 0), e6 = (1, 1), e7 = (1, 0), e8 = (-1, 0), e9 = (0, 1).
    Annotation 5 6 7. Row 0, incorrect, 5 9 7: LCS 5 7, z1 = e6 = (1, 1), z2 = (1, 0), z3 = e9 = (0, 1).
    Row 1, incorrect, 5 6 8 7: LCS 5 6 7, no z1, z2 = (1, 1/3), z3 = e8 = (-1, 0). Row 2 is correct.
    The only loss row is row 0: numerator cos((1, 1), (1, 0)) / tau = (1/sqrt 2) / 0.2 = 5/sqrt 2.
    Old rule, candidates z2_0, z3_0 (cosines 1, 0):
        L = log(e^5 + 1) - 5/sqrt 2 = 1.471181
    Spec, candidates z2_0, z2_1, z3_0, z3_1 (cosines 1, 3/sqrt 10, 0, -1):
        L = log(e^5 + e^(15/sqrt 10) + 1 + e^-5) - 5/sqrt 2 = 2.041346
    """
    table = {5: (1.0, 0.0), 6: (1.0, 1.0), 7: (1.0, 0.0), 8: (-1.0, 0.0), 9: (0.0, 1.0), 0: (0.0, 0.0)}
    embed = lambda ids: torch.tensor([[table[t] for t in row] for row in ids.tolist()], dtype=torch.float64)  # noqa: E731
    annotated = torch.tensor([[5, 6, 7]] * 3)
    annotated_mask = torch.ones(3, 3, dtype=torch.long)
    responses = torch.tensor([[5, 9, 7, 0], [5, 6, 8, 7], [5, 9, 7, 0]])
    response_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    incorrect = torch.tensor([True, True, False])
    annotated_in_lcs, response_in_lcs = lcs_masks_batch(annotated, responses, annotated_mask.sum(-1), response_mask.sum(-1))
    valid, matched, unmatched = negative_rows(incorrect, response_in_lcs, response_mask, annotated_in_lcs, annotated_mask)
    scores = torch.zeros(3, 4, dtype=torch.float64)
    pool = lambda ids, mask: pool_cot(embed(ids), scores[:, : ids.size(1)], mask, "mean")  # noqa: E731
    z1 = pool(annotated, annotated_mask.bool() & ~annotated_in_lcs)
    z2 = pool(responses, response_mask.bool() & response_in_lcs)
    z3 = pool(responses, response_mask.bool() & ~response_in_lcs)
    torch.testing.assert_close(z2[1], torch.tensor([1.0, 1 / 3], dtype=torch.float64))

    numerator = 5 / math.sqrt(2)
    old_rule = carft_negative_loss(z1, z2, z3[valid], valid)  # candidates: only the loss rows' pieces
    spec = carft_negative_loss(z1, z2, z3[unmatched], valid, matched_candidates=matched)
    assert math.isclose(old_rule.item(), math.log(math.exp(5) + 1) - numerator, rel_tol=1e-9)
    assert math.isclose(spec.item(), math.log(math.exp(5) + math.exp(15 / math.sqrt(10)) + 1 + math.exp(-5)) - numerator, rel_tol=1e-9)
    assert round(old_rule.item(), 6) == 1.471181 and round(spec.item(), 6) == 2.041346


@pytest.mark.parametrize("tau,clamp", [(0.2, 0.9), (0.3, 0.5)])
def test_carft_negative_loss_with_every_candidate_matches_a_naive_loop(tau, clamp):
    torch.manual_seed(17)
    B, M, d = 6, 5, 4  # z3 rows: this rank's and other ranks', gathered
    z1, z2 = torch.randn(B, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64)
    z3_all = torch.randn(M, d, dtype=torch.float64)
    loss_rows = [True, False, True, False, False, True]
    matched = [True, True, True, False, True, True]  # every loss row, and rows without a z1 or a z3
    got = carft_negative_loss(z1, z2, z3_all, torch.tensor(loss_rows), tau=tau, clamp=clamp, matched_candidates=torch.tensor(matched))
    expected = _naive_negative_spec(z1.tolist(), z2.tolist(), z3_all.tolist(), loss_rows, matched, tau, clamp)
    assert math.isclose(got.item(), expected, rel_tol=1e-9, abs_tol=1e-9)
    # the default (candidates = the loss rows) differs once a candidate is not a loss row
    assert not math.isclose(carft_negative_loss(z1, z2, z3_all, torch.tensor(loss_rows), tau=tau, clamp=clamp).item(), expected, rel_tol=1e-6)


def test_carft_negative_loss_sends_gradients_to_candidates_that_are_not_loss_rows():
    torch.manual_seed(18)
    z1 = torch.randn(3, 4)
    z2 = torch.randn(3, 4, requires_grad=True)
    z3_all = torch.randn(4, 4, requires_grad=True)
    loss_rows, matched = torch.tensor([True, False, False]), torch.tensor([True, True, False])
    carft_negative_loss(z1, z2, z3_all, loss_rows, matched_candidates=matched).backward()
    assert z2.grad[1].abs().sum() > 0, "a z2 candidate without a loss row of its own still gets a gradient"
    assert z2.grad[2].abs().sum() == 0, "a row that is no candidate gets none"
    assert (z3_all.grad.abs().sum(-1) > 0).all()


# ---- seed objectives (docs/METHODS.md section 6) --------------------------------------------------------
def _naive_triplet(z_ann, z_s, correct, margin, T):
    B = len(z_ann)
    anchors = [i for i in range(B) if correct[i]]
    negatives = [k for k in range(len(z_s)) if not correct[k]]
    terms = [
        _softplus(_cos(z_ann[i], z_s[k]) / T - _cos(z_ann[i], z_s[i]) / T + margin)
        for i in anchors
        for k in negatives
    ]
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize(
    "correct",
    [
        [True, False, True, False, False, True],  # a correct gathered row (5) is no anchor
        [True, True, True, False, True, False],  # negatives only among gathered rows
        [False, True, False, True, True, True],
    ],
)
@pytest.mark.parametrize("margin,temperature", [(0.5, 0.07), (0.0, 1.0)])
def test_triplet_loss_matches_a_naive_loop(correct, margin, temperature):
    torch.manual_seed(17)
    B, N, d = 3, 6, 4
    z_ann, z_s = torch.randn(B, d, dtype=torch.float64), torch.randn(N, d, dtype=torch.float64)
    got = triplet_loss(z_ann, z_s, torch.tensor(correct), margin=margin, temperature=temperature)
    expected = _naive_triplet(z_ann.tolist(), z_s.tolist(), correct, margin, temperature)
    assert math.isclose(got.item(), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_triplet_loss_is_zero_without_an_anchor_or_a_negative():
    torch.manual_seed(18)
    z_ann, z_s = torch.randn(2, 3), torch.randn(4, 3)
    # no correct sample among this rank's rows (a correct gathered row is not an anchor)
    assert triplet_loss(z_ann, z_s, torch.tensor([False, False, True, False])).item() == 0.0
    # no incorrect sample anywhere
    assert triplet_loss(z_ann, z_s, torch.tensor([True, True, True, True])).item() == 0.0
    # a single row: either no anchor or no negative
    assert triplet_loss(z_ann[:1], z_s[:1], torch.tensor([True])).item() == 0.0
    assert triplet_loss(z_ann[:1], z_s[:1], torch.tensor([False])).item() == 0.0


def test_triplet_loss_by_hand_for_one_anchor_and_one_negative():
    # cos_pos = 1, cos_neg = 0: softplus(0 - 1/T + margin) with T = 1, margin 0.5
    z_ann = torch.tensor([[1.0, 0.0]])
    z_s = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    got = triplet_loss(z_ann, z_s, torch.tensor([True, False]), margin=0.5, temperature=1.0)
    assert math.isclose(got.item(), math.log1p(math.exp(-0.5)), **TOL)


def _naive_supcon(z, labels, T):
    n = len(z)
    s = [[_cos(z[i], z[j]) / T for j in range(n)] for i in range(n)]
    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue  # rows without a positive are left out
        log_den = math.log(sum(math.exp(s[i][a]) for a in range(n) if a != i))
        per_anchor.append(-sum(s[i][p] - log_den for p in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


@pytest.mark.parametrize(
    "labels",
    [
        [0, 0, 1, 1, 1, 2],  # row 5 has no positive
        [1, 0, 1, 1, 0, 1],  # bool-like correctness labels, several positives per row
        [3, 3, 3, 3, 3, 3],  # every other row is a positive
    ],
)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_loss_matches_a_naive_loop(labels, temperature):
    torch.manual_seed(19)
    z = torch.randn(6, 4, dtype=torch.float64)
    got = supcon_loss(z, torch.tensor(labels), temperature=temperature)
    expected = _naive_supcon(z.tolist(), labels, temperature)
    assert math.isclose(got.item(), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_supcon_loss_accepts_boolean_labels_and_handles_rows_without_positives():
    torch.manual_seed(20)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([True, False, True, True])  # the single False row has no positive
    loss = supcon_loss(z, labels)
    assert math.isclose(loss.item(), _naive_supcon(z.tolist(), labels.tolist(), 0.07), rel_tol=1e-9)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_supcon_loss_is_zero_without_positives_or_with_a_single_row():
    torch.manual_seed(21)
    z = torch.randn(4, 3)
    assert supcon_loss(z, torch.tensor([0, 1, 2, 3])).item() == 0.0
    assert supcon_loss(z[:1], torch.tensor([0])).item() == 0.0


def test_representation_mse_stops_the_gradient_at_the_annotated_argument():
    torch.manual_seed(22)
    z_s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z_a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = representation_mse(z_s, z_a)
    expected = sum((s - a) ** 2 for rs, ra in zip(z_s.tolist(), z_a.tolist()) for s, a in zip(rs, ra)) / 12
    assert math.isclose(loss.item(), expected, rel_tol=1e-9)
    loss.backward()
    assert z_a.grad is None or z_a.grad.abs().sum().item() == 0.0
    torch.testing.assert_close(z_s.grad, 2 * (z_s - z_a).detach() / 12)


# ---- LCS (docs/METHODS.md section 3, negative signal) ---------------------------------------------------
def _naive_lcs(a, b):
    """O(n*m) table and backtrack: a match is taken when the tokens are equal; otherwise up
    (drop a token of a) when L[i-1][j] >= L[i][j-1], else left."""
    n, m = len(a), len(b)
    L = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            L[i][j] = L[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(L[i - 1][j], L[i][j - 1])
    a_in, b_in = [False] * n, [False] * m
    i, j = n, m
    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1]:
            a_in[i - 1] = b_in[j - 1] = True
            i, j = i - 1, j - 1
        elif L[i - 1][j] >= L[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return L[n][m], a_in, b_in


def _check_lcs(a, b, a_in, b_in):
    length, exp_a, exp_b = _naive_lcs(a, b)
    a_in, b_in = a_in.tolist(), b_in.tolist()
    sub_a = [t for t, k in zip(a, a_in) if k]
    sub_b = [t for t, k in zip(b, b_in) if k]
    assert sub_a == sub_b, (a, b)
    assert len(sub_a) == length, (a, b)
    assert a_in == exp_a and b_in == exp_b, (a, b)


def test_lcs_masks_by_hand():
    a, b = [1, 2, 3, 2, 4], [2, 3, 4, 1]
    a_in, b_in = lcs_masks(torch.tensor(a), torch.tensor(b))
    # LCS 2 3 4: a's tokens 1, 2, 4 and b's tokens 0, 1, 2
    assert a_in.tolist() == [False, True, True, False, True]
    assert b_in.tolist() == [True, True, True, False]
    _check_lcs(a, b, a_in, b_in)


def test_lcs_masks_match_a_naive_dp_on_random_sequences():
    rng = random.Random(23)
    for _ in range(60):
        a = [rng.randrange(4) for _ in range(rng.randint(1, 12))]
        b = [rng.randrange(4) for _ in range(rng.randint(1, 12))]
        a_in, b_in = lcs_masks(torch.tensor(a), torch.tensor(b))
        assert a_in.dtype == torch.bool and a_in.shape == (len(a),) and b_in.shape == (len(b),)
        _check_lcs(a, b, a_in, b_in)


def test_lcs_masks_edge_cases():
    cases = [
        ([1, 2, 3], [4, 5]),  # disjoint tokens: empty LCS
        ([5, 6, 7, 5], [5, 6, 7, 5]),  # identical: everything is in the LCS
        ([3], [1, 3, 3]),  # a single token with two possible partners
        ([1, 3, 3], [3]),
        ([9], [1, 2]),  # a single token with none
        ([2, 2, 2], [2, 2]),
    ]
    for a, b in cases:
        _check_lcs(a, b, *lcs_masks(torch.tensor(a), torch.tensor(b)))
    a_in, b_in = lcs_masks(torch.tensor([5, 6, 7, 5]), torch.tensor([5, 6, 7, 5]))
    assert a_in.all() and b_in.all()
    a_in, b_in = lcs_masks(torch.tensor([1, 2, 3]), torch.tensor([4, 5]))
    assert not a_in.any() and not b_in.any()


def test_lcs_masks_with_empty_inputs():
    empty = torch.tensor([], dtype=torch.long)
    a_in, b_in = lcs_masks(empty, torch.tensor([1, 2]))
    assert a_in.shape == (0,) and b_in.tolist() == [False, False]
    a_in, b_in = lcs_masks(torch.tensor([1, 2, 3]), empty)
    assert a_in.tolist() == [False, False, False] and b_in.shape == (0,)
    a_in, b_in = lcs_masks(empty, empty)
    assert a_in.shape == (0,) and b_in.shape == (0,)


def test_lcs_masks_batch_ignores_padding_that_would_otherwise_match():
    # Padding 7 in a matches real 7s of b and padding 0 matches 0s; neither may count.
    rows = [
        ([7, 1, 2], [1, 7, 2, 7]),
        ([0, 0], [0, 1, 0]),
        ([3, 4, 5, 6, 1], [6, 1]),
        ([1], [2]),
        ([4, 4], []),
    ]
    n, m = 5, 4
    a = torch.tensor([ra + [7] * (n - len(ra)) for ra, _ in rows])
    b = torch.tensor([rb + [0] * (m - len(rb)) for _, rb in rows])
    a_len = torch.tensor([len(ra) for ra, _ in rows])
    b_len = torch.tensor([len(rb) for _, rb in rows])
    a_in, b_in = lcs_masks_batch(a, b, a_len, b_len)
    assert a_in.shape == (5, n) and b_in.shape == (5, m)
    for p, (ra, rb) in enumerate(rows):
        _check_lcs(ra, rb, a_in[p, : len(ra)], b_in[p, : len(rb)])
        assert not a_in[p, len(ra):].any() and not b_in[p, len(rb):].any()


def test_lcs_masks_batch_matches_per_row_naive_dp_on_random_padded_rows():
    rng = random.Random(24)
    P, n, m = 12, 10, 9
    a_rows = [[rng.randrange(3) for _ in range(rng.randint(0, n))] for _ in range(P)]
    b_rows = [[rng.randrange(3) for _ in range(rng.randint(0, m))] for _ in range(P)]
    # padding drawn from the same vocabulary, so that it would match if it were not excluded
    a = torch.tensor([r + [rng.randrange(3) for _ in range(n - len(r))] for r in a_rows])
    b = torch.tensor([r + [rng.randrange(3) for _ in range(m - len(r))] for r in b_rows])
    a_in, b_in = lcs_masks_batch(a, b, torch.tensor([len(r) for r in a_rows]), torch.tensor([len(r) for r in b_rows]))
    for p in range(P):
        ra, rb = a_rows[p], b_rows[p]
        _check_lcs(ra, rb, a_in[p, : len(ra)], b_in[p, : len(rb)])
        assert not a_in[p, len(ra):].any() and not b_in[p, len(rb):].any()
