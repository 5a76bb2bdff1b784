"""How varied a set of worked solutions is, with the numbers masked (docs/METHODS.md, "Data: the
embedded generator's solutions").

Pure functions over solution texts (``Record.chain_of_thought``). Every number becomes ``N``, so
two solutions that differ only in their numbers count as the same; words are lowercased runs of
letters, digits and underscores, and each other non-space character is a token of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def skeleton(text: str) -> str:
    """``text`` with every number (``12``, ``1,000``, ``2.5``) replaced by ``N``."""
    return _NUMBER.sub("N", text)


def tokens(text: str) -> list[str]:
    """The lowercased word and punctuation tokens of ``text``'s skeleton."""
    return _TOKEN.findall(skeleton(text).lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams of ``texts`` (n-grams do not cross from one text to the
    next); 0.0 when no text has ``n`` tokens."""
    if n < 1:
        raise ValueError(f"distinct_n needs n of at least 1, got {n}")
    grams = [tuple(words[i : i + n]) for words in map(tokens, texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_skeleton_share(texts: Sequence[str]) -> float:
    """The share of ``texts`` whose skeleton no earlier text has (distinct skeletons / texts)."""
    if not texts:
        raise ValueError("unique_skeleton_share needs at least one text")
    return len({skeleton(t) for t in texts}) / len(texts)


def step_openings(text: str) -> list[str]:
    """The first two tokens of each non-empty line of ``text``, as one string per line."""
    return [" ".join(words[:2]) for words in map(tokens, text.split("\n")) if words]


def mean_distinct_openings(texts: Sequence[str]) -> float:
    """The mean, over ``texts``, of how many distinct step openings a solution has."""
    if not texts:
        raise ValueError("mean_distinct_openings needs at least one text")
    return sum(len(set(step_openings(t))) for t in texts) / len(texts)


def distinct_openings(texts: Sequence[str]) -> int:
    """How many distinct step openings all of ``texts`` have together."""
    return len({opening for t in texts for opening in step_openings(t)})


def summary(texts: Sequence[str]) -> dict[str, float]:
    """The measures above for one set of solutions, keyed by short names."""
    return {
        "solutions": len(texts),
        "mean_lines": sum(len(step_openings(t)) for t in texts) / len(texts),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "unique_skeletons": unique_skeleton_share(texts),
        "mean_distinct_openings": mean_distinct_openings(texts),
        "distinct_openings": distinct_openings(texts),
    }
