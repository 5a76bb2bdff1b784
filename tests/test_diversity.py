"""The diversity measures on tiny inputs worked out by hand."""

import pytest

from datamodules.diversity import (
    distinct_n,
    distinct_openings,
    mean_distinct_openings,
    skeleton,
    step_openings,
    summary,
    tokens,
    unique_skeleton_share,
)


def test_numbers_are_masked_and_text_is_split_into_lowercased_words_and_marks():
    text = "Tom pays 1,000 dollars, then 2.5 more: 3 + 4 = 7."
    assert skeleton(text) == "Tom pays N dollars, then N more: N + N = N."
    assert tokens("Tom has 12 + 3 = 15 cards.") == ["tom", "has", "n", "+", "n", "=", "n", "cards", "."]


def test_distinct_n_counts_unique_n_grams_over_all_n_grams_within_each_text():
    # Bigrams: ab ba ab | ab bc -> 3 unique of 5. Trigrams: aba bab | abc -> 3 of 3.
    assert distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)
    assert distinct_n(["a b a b", "a b c"], 3) == 1.0
    assert distinct_n(["a b a b", "a b c"], 1) == pytest.approx(3 / 7)
    # Numbers are masked: both texts are "x N y", so 2 unique bigrams of 4.
    assert distinct_n(["x 1 y", "x 22 y"], 2) == 0.5
    # No text has two tokens: no bigrams at all.
    assert distinct_n(["a", ""], 2) == 0.0
    with pytest.raises(ValueError, match="at least 1"):
        distinct_n(["a b"], 0)


def test_unique_skeleton_share():
    assert unique_skeleton_share(["Tom has 3.", "Tom has 4.", "Ann has 3."]) == pytest.approx(2 / 3)
    assert unique_skeleton_share(["a", "b"]) == 1.0
    with pytest.raises(ValueError):
        unique_skeleton_share([])


def test_step_openings_are_the_first_two_tokens_of_each_line():
    assert step_openings("Tom has 3 + 4 = 7.\n\nSo Tom has 7.\n12 / 3 = 4") == ["tom has", "so tom", "n /"]
    texts = ["Tom has 1.\nTom has 2.", "A b.\nC d.\nA b c."]
    # {tom has} -> 1; {a b, c d} -> 2; mean 1.5; all together {tom has, a b, c d} -> 3.
    assert mean_distinct_openings(texts) == 1.5
    assert distinct_openings(texts) == 3


def test_summary_collects_the_measures():
    result = summary(["Tom has 1.\nTom has 2.", "A b.\nC d.\nA b c."])
    assert result["solutions"] == 2 and result["mean_lines"] == 2.5
    assert result["distinct_openings"] == 3 and result["unique_skeletons"] == 1.0
    assert result["distinct_2"] == distinct_n(["Tom has 1.\nTom has 2.", "A b.\nC d.\nA b c."], 2)
