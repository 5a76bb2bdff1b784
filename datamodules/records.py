"""The one record shape every data source is read into."""

from __future__ import annotations

import math
from dataclasses import dataclass


class DataError(ValueError):
    """Bad input data. The message is one sentence that names the file (and line) at fault."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    one-sentence report."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@dataclass(frozen=True)
class Record:
    """A math word problem.

    ``chain_of_thought`` is the annotated reasoning without the final answer sentence
    (``None`` when the source has no worked solution, e.g. SVAMP.json); ``answer`` is the
    gold number. ``uid`` is stable across runs (file name and row, or generator seed and
    position) so a sample can be traced back to its source.
    """

    uid: str
    question: str
    answer: float
    chain_of_thought: str | None = None


def format_number(value: float) -> str:
    """Render a gold number the way the annotated targets write it: ``72``, ``0.5``, ``-3``."""
    if not math.isfinite(value):
        raise ValueError(f"cannot format the non-finite number {value!r}")
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")
