"""The paired bootstrap against a naive loop and against cases whose answer is known."""

from __future__ import annotations

import math
import random

import pytest
import torch

from workflows.statistics import Interval, paired_bootstrap, pooled_scores, quantile, standard_error


def test_equal_scores_give_a_zero_interval():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert paired_bootstrap(scores, scores) == Interval(0.0, 0.0, 0.0)


def test_a_constant_difference_is_certain():
    a = [1.0] * 50
    b = [0.0] * 50
    interval = paired_bootstrap(a, b, resamples=500)
    assert interval == Interval(1.0, 1.0, 1.0) and interval.excludes_zero()


def test_the_bootstrap_matches_a_naive_loop_over_the_same_draws():
    rng = random.Random(1)
    a = [float(rng.random() < 0.6) for _ in range(40)]
    b = [float(rng.random() < 0.5) for _ in range(40)]
    resamples, seed = 300, 7
    interval = paired_bootstrap(a, b, resamples=resamples, seed=seed)
    rows = torch.randint(40, (resamples, 40), generator=torch.Generator().manual_seed(seed)).tolist()
    means = sorted(sum(a[i] - b[i] for i in row) / 40 for row in rows)

    def naive_quantile(q):
        position = q * (resamples - 1)
        lo, hi = math.floor(position), math.ceil(position)
        return means[lo] + (position - lo) * (means[hi] - means[lo])

    assert interval.estimate == pytest.approx(sum(a) / 40 - sum(b) / 40)
    assert interval.low == pytest.approx(naive_quantile(0.025)) and interval.high == pytest.approx(naive_quantile(0.975))
    assert interval.low <= interval.estimate <= interval.high


def test_the_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(0)
    covered = 0
    for trial in range(200):
        a = [float(rng.random() < 0.55) for _ in range(200)]
        b = [float(rng.random() < 0.50) for _ in range(200)]
        covered += paired_bootstrap(a, b, resamples=400, seed=trial).low <= 0.05 <= paired_bootstrap(a, b, resamples=400, seed=trial).high
    assert 0.88 <= covered / 200 <= 0.99


def test_quantile_interpolates_like_numpy():
    values = torch.tensor([0.0, 1.0, 2.0, 10.0])
    assert quantile(values, 0.0) == 0.0 and quantile(values, 1.0) == 10.0
    assert quantile(values, 0.5) == pytest.approx(1.5) and quantile(values, 0.9) == pytest.approx(2 + 0.7 * 8)


def test_pooling_and_standard_error():
    assert pooled_scores([[1, 0, 1], [0, 0, 1]]) == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError):
        pooled_scores([[1, 0], [1]])
    assert standard_error(0.4, 200) == pytest.approx(math.sqrt(0.24 / 200))
    assert Interval(0.024, 0.006, 0.042).points() == "+2.4 [+0.6, +4.2]"


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 0.0]), ([], [])])
def test_bad_inputs_are_refused(a, b):
    with pytest.raises(ValueError):
        paired_bootstrap(a, b)


def test_ratio_interval_by_hand_and_for_equal_groups():
    from workflows.statistics import ratio_interval

    same = ratio_interval([10.0, 10.0], [10.0, 10.0], resamples=100)
    assert same == Interval(0.0, 0.0, 0.0)
    saving = ratio_interval([7.0, 7.0, 7.0], [10.0, 10.0, 10.0], resamples=100)
    assert saving.estimate == pytest.approx(0.3) and saving.low == pytest.approx(0.3) and saving.high == pytest.approx(0.3)
    spread = ratio_interval([5.0, 9.0], [10.0, 10.0], resamples=2000)
    assert spread.estimate == pytest.approx(0.3) and spread.low == pytest.approx(0.1) and spread.high == pytest.approx(0.5)
