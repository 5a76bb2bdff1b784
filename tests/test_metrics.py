"""pass@k against enumeration of every k-subset, and maj@k ties."""

import itertools
import math

import pytest

from lightning_modules.metrics import majority_correct, pass_at_k


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 0, 3), (6, 6, 2), (7, 3, 7), (8, 5, 4)])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_response(n, c, k):
    responses = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(responses, k))
    expected = sum(any(s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_pass_at_k_by_hand_and_with_k_equal_n():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(16, 1, 16) == 1.0 and pass_at_k(16, 0, 16) == 0.0


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_correct_ties_unparsed_and_tolerance():
    assert majority_correct([3.0, 4.0, 4.0, None, None, None], 4.0)  # unparsed responses never win
    assert not majority_correct([3.0, 4.0, 4.0], 3.0)
    assert majority_correct([3.0, 4.0], 3.0) and not majority_correct([3.0, 4.0], 4.0)  # a tie goes to the first seen
    assert majority_correct([2.001, 2.0, 7.0], 2.0)  # equal within the 1e-2 tolerance
    assert not majority_correct([None, None], 2.0)


def test_pass_at_k_equals_the_closed_form_for_every_small_case():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert math.isclose(pass_at_k(n, c, k), closed, rel_tol=1e-12, abs_tol=1e-12), (n, c, k)
