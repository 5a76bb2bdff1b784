"""Answer extraction and checking, and the rewards and votes built on them (docs/METHODS.md section 0).

Pure functions over model or data text and the answers extracted from it. Nothing here ever evaluates text: numbers are
recognised with regular expressions and converted with ``float`` only.
"""

from __future__ import annotations

import math
import re

import torch

# One number: integer (thousands commas only in proper groups of three, so "1,2" is not a
# number), decimal (".5", "3.", "3.25"), optional sign. ASCII digits only.
_NUM = r"-?(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+)"
_NUMBER = re.compile(_NUM)
_FRACTION = re.compile(rf"({_NUM})\s*/\s*({_NUM})")
_LATEX_FRACTION = re.compile(rf"(-?)\\d?frac\s*\{{\s*({_NUM})\s*\}}\s*\{{\s*({_NUM})\s*\}}")
# Wrappers around an answer that carry no meaning: "<203>" (ReFT targets), "\boxed{5}".
_ANGLE = re.compile(r"<(.*)>", re.S)
_BOXED_WHOLE = re.compile(r"\\boxed\s*\{(.*)\}", re.S)

# Spec section 0, rule 1: the ReFT/CARFT answer sentence, colon optional.
_MARKER = re.compile(r"therefore,?\s*the answer is:?", re.I)
_BOXED = re.compile(r"\\boxed\s*\{")
# The lenient style's anchors, for models not trained on the ReFT format: "The answer is: 17",
# "The final answer is 52", "Answer: 8".
_PHRASE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|\banswer\s*:)\s*:?", re.I)

ANSWER_STYLES = ("reft", "lenient")
"""reft: rules 1-3 of docs/METHODS.md section 0.2 only (the papers' format); lenient: also rules 4 and 5."""


def _to_float(text: str) -> float | None:
    value = float(text.replace(",", ""))
    return value if math.isfinite(value) else None


def parse_number(text: str) -> float | None:
    """The number that the WHOLE of ``text`` is, after stripping wrappers; else ``None``."""
    if not isinstance(text, str):
        return None
    # Spec section 0: strip "$", "," (in _to_float) and a trailing "."; unicode minus is a minus.
    s = text.replace("\u2212", "-").replace("$", "")
    previous = None
    while s != previous:  # peel wrappers in any order: "<203>.", "\boxed{5}.", "<\boxed{5}>"
        previous = s
        s = s.strip()
        if s.endswith(".") and not _NUMBER.fullmatch(s):
            s = s[:-1]
        for wrapper in (_ANGLE, _BOXED_WHOLE):
            if m := wrapper.fullmatch(s):
                s = m.group(1)
    if _NUMBER.fullmatch(s):
        return _to_float(s)
    if m := _FRACTION.fullmatch(s):
        num, den = _to_float(m.group(1)), _to_float(m.group(2))
    elif m := _LATEX_FRACTION.fullmatch(s):
        num, den = _to_float(m.group(2)), _to_float(m.group(3))
        num = -num if (m.group(1) and num is not None) else num
    else:
        return None
    if num is None or not den:  # den None or 0: a/0 is not a number
        return None
    value = num / den
    return value if math.isfinite(value) else None


def _boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced; ``None`` if absent or unclosed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth = 1
    for i in range(starts[-1], len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[starts[-1] : i]
    return None


def extract_answer(text: str, style: str = "reft") -> float | None:
    """The predicted answer in ``text`` by the rules of docs/METHODS.md section 0.2, in priority
    order; ``style`` "lenient" adds rules 4 and 5 for models not trained on the ReFT format.

    The first rule whose anchor is present decides: a present but unparseable answer is
    ``None``, never a fall-through to a weaker rule.
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; expected one of {', '.join(ANSWER_STYLES)}")
    if not isinstance(text, str):
        return None
    markers = list(_MARKER.finditer(text))
    if markers:  # rule 1: after the last "Therefore, the answer is", to the end of that line
        return parse_number(text[markers[-1].end() :].split("\n", 1)[0])
    if "####" in text:  # rule 2: the number after the last "####" (GSM8K gold format)
        return parse_number(text.rsplit("####", 1)[1].split("\n", 1)[0])
    if _BOXED.search(text):  # rule 3: the last \boxed{...}
        content = _boxed_content(text)
        return None if content is None else parse_number(content)
    if style == "reft":
        return None
    clean = text.replace("\u2212", "-").replace("$", "")
    phrases = list(_PHRASE.finditer(clean))
    if phrases:  # rule 4: after the last "the (final) answer is" / "Answer:", the first number on that line
        line = clean[phrases[-1].end() :].split("\n", 1)[0]
        whole = parse_number(line)
        if whole is not None:
            return whole
        first = _NUMBER.search(line)
        return parse_number(first.group()) if first else None
    numbers = _NUMBER.findall(clean)  # rule 5: the last number anywhere
    return parse_number(numbers[-1]) if numbers else None


def is_correct(pred: float | None, gold: float, tol: float = 1e-2) -> bool:
    """CARFT's rule (docs/METHODS.md section 0): correct when |pred - gold| <= tol."""
    if pred is None or not math.isfinite(pred):
        return False
    # The 1e-9 slack absorbs binary rounding so that an error of exactly tol counts as inside
    # (1.01 - 1.0 is 0.010000000000000009 in floating point).
    return abs(pred - gold) <= tol + 1e-9


# ---- rewards and votes over extracted answers ---------------------------------------------
CORRECT_REWARD, WRONG_ANSWER_REWARD, NO_ANSWER_REWARD = 1.0, 0.1, 0.0


def rule_reward(pred: float | None, gold: float, correct: bool | None = None) -> float:
    """ReFT/CARFT rule reward: 1.0 correct, 0.1 an answer was extracted but is wrong, 0.0 none.
    ``correct`` is the checker's verdict when another checker than ``is_correct`` decided it."""
    if correct is None:
        correct = is_correct(pred, gold)
    if correct:
        return CORRECT_REWARD
    return NO_ANSWER_REWARD if pred is None else WRONG_ANSWER_REWARD


# ---- checkers --------------------------------------------------------------------------------
ANSWER_CHECKERS = ("rule", "math_verify")
"""rule: the extracted number against the gold one (is_correct); math_verify: Hugging Face's
math-verify on the whole response (LaTeX, \\boxed{}, fractions, expressions), as TRL, verl and open-r1 use."""


def check_answer(text: str, prediction: float | None, gold: float, checker: str = "rule") -> bool:
    """Whether a response is right, by ``checker``."""
    if checker == "rule":
        return is_correct(prediction, gold)
    if checker == "math_verify":
        return math_verify_correct(text, gold)
    raise ValueError(f"unknown answer checker {checker!r}; expected one of {', '.join(ANSWER_CHECKERS)}")


def math_verify_correct(text: str, gold: float, timeout: int = 5) -> bool:
    """math-verify's verdict on ``text`` against the number ``gold``. Its timeouts use
    ``signal.alarm``, which works on the main thread only (elsewhere math-verify raises): off the
    main thread the check runs without them. Any failure inside it counts as wrong."""
    import logging
    import threading

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its warning that a disabled timeout is the caller's to handle
    seconds = timeout if threading.current_thread() is threading.main_thread() else None
    number = f"{gold:.10g}"
    try:
        return bool(verify(parse(f"${number}$", parsing_timeout=seconds), parse(text, parsing_timeout=seconds), timeout_seconds=seconds))
    except Exception:  # math-verify raises on some malformed LaTeX despite raise_on_error=False
        return False


def answer_clusters(answers: list[float | None]) -> tuple[list[float], list[int]]:
    """The parsed answers grouped as equal: each joins the first earlier representative within the
    checking tolerance, else starts its own. Representatives in order of first appearance, and counts."""
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
    return representatives, counts


def answer_entropy(answers: list[float | None], group: int) -> list[float]:
    """For consecutive groups of ``group`` answers, the entropy of the group's answer distribution:
    answers clustered as :func:`answer_clusters` does, every unparsed answer an outcome of its own
    (EMPO's semantic entropy with the answer as the meaning)."""
    out = []
    for start in range(0, len(answers), group):
        members = answers[start : start + group]
        _, counts = answer_clusters(members)
        counts += [1] * sum(a is None for a in members)
        out.append(-sum(c / len(members) * math.log(c / len(members)) for c in counts))
    return out


def majority_answer(answers: list[float | None]) -> tuple[float | None, float]:
    """The most common extracted answer (equal within the checking tolerance) and its share of
    all samples, unparsed ones included; ties go to the first seen. ``(None, 0.0)`` if none parsed."""
    representatives, counts = answer_clusters(answers)
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


def answer_frequency_reward(answers: list[float | None], group: int) -> torch.Tensor:
    """EMPO's semantic-entropy reward (arXiv 2504.05812, docs/METHODS.md section 9): for consecutive
    groups of ``group`` answers, each answer's share of its group (the whole group, unparsed answers
    included, as denominator; the answer itself counts) whose answer equals its own by
    ``is_correct``; an unparsed answer gets 0. ``[N]`` float32. The comparison is pairwise, not a
    clustering: within 0.01 is not transitive, so 1.0, 1.008 and 1.016 get 2/3, 1 and 2/3."""
    if group < 1:
        raise ValueError(f"group must be at least 1, got {group}")
    rewards: list[float] = []
    for start in range(0, len(answers), group):
        members = answers[start : start + group]
        for own in members:
            if own is None:
                rewards.append(0.0)
            else:
                rewards.append(sum(is_correct(other, own) for other in members) / len(members))
    return torch.tensor(rewards, dtype=torch.float32)
