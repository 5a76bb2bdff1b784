"""The one evaluation engine, for in-run validation and ``scripts/evaluate.py`` alike.

:func:`respond` answers a batch of left-padded prompts greedily (``n = 0``) or with ``n``
seeded samples each, and can score the model's confidence in what it wrote;
:func:`grade` reads and checks the answers and gives the per-question measures every
report is made of (accuracy, parse rate, pass@k, maj@k). Sampling is seeded by one rule,
:func:`sampling_seed`, which rollouts use as well.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from datamodules.answers import check_answer, extract_answer
from lightning_modules.generation import decode, generate, response_logits
from lightning_modules.losses import sequence_logp, token_confidence
from lightning_modules.metrics import majority_correct, pass_at_k


def sampling_seed(seed: int, rank: int, index: int) -> int:
    """The seed of draw ``index`` (a step, or an evaluation batch) on ``rank`` of a run seeded
    ``seed``: ranks draw differently, and the same index draws alike in every run with this
    seed, resumed or not."""
    return (seed * 1_000_003 + rank) * 1_000_003 + index


@contextmanager
def seeded(seed: int, device: torch.device):
    """Draw from the RNG seeded with ``seed``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@dataclass
class Responses:
    """Responses to a batch of questions, ``max(n, 1)`` per question, question-major."""

    texts: list[str]
    lengths: torch.Tensor
    """[Q * n] tokens, EOS included."""
    seq_confidence: torch.Tensor | None = None
    """[Q * n] exp(s), s the summed token log-probs at the sampling temperature (with ``confidence``)."""
    token_confidence: torch.Tensor | None = None
    """[Q * n] mean top-token probability (with ``confidence``)."""


CONFIDENCE_ROWS = 16  # rows scored at once for the confidence metrics: bounds their [rows, T, V] logits


@torch.no_grad()
def respond(
    policy,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    n: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    sampler: str = "static_cache",
    max_rows: int | None = None,
    confidence: bool = False,
) -> Responses:
    """Greedy responses (``n = 0``) or ``n`` samples per prompt drawn under ``seed``, generated
    at most ``max_rows`` sequences at a time (whole questions), and with ``confidence`` the
    model's confidence in each response (one more forward pass)."""
    per_prompt = max(n, 1)
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(per_prompt, 0), prompt_mask.repeat_interleave(per_prompt, 0)
    rows = prompt_ids.size(0)
    chunk = rows if max_rows is None else max(per_prompt, max_rows // per_prompt * per_prompt)
    temperature = temperature if n else 1.0
    texts, lengths, seq_conf, tok_conf = [], [], [], []
    with seeded(seed, prompt_ids.device):
        for start in range(0, rows, chunk):
            ids, mask = prompt_ids[start : start + chunk], prompt_mask[start : start + chunk]
            responses, response_mask = generate(
                policy.lm, ids, mask, tokenizer, max_new_tokens, do_sample=n > 0, temperature=temperature, top_p=top_p, sampler=sampler,
            )
            texts += decode(tokenizer, responses, response_mask)
            lengths.append(response_mask.sum(-1).float().cpu())
            if confidence:  # scored a few rows at a time: never the logits of the whole chunk at once
                full_ids, full_mask = torch.cat([ids, responses], 1), torch.cat([mask, response_mask], 1)
                for part in range(0, ids.size(0), CONFIDENCE_ROWS):
                    some = slice(part, part + CONFIDENCE_ROWS)
                    logits, _ = response_logits(policy, full_ids[some], full_mask[some], responses.size(1))
                    seq_conf.append(sequence_logp(logits, responses[some], response_mask[some], temperature).exp().cpu())
                    tok_conf.append(token_confidence(logits, response_mask[some], temperature).cpu())
    return Responses(texts, torch.cat(lengths), torch.cat(seq_conf) if confidence else None, torch.cat(tok_conf) if confidence else None)


@dataclass
class Graded:
    """Answers read off ``n`` responses to each of Q questions, and whether they are right."""

    predictions: list[float | None]
    """[Q * n] extracted answers, None where none could be read."""
    correct: torch.Tensor
    """[Q, n] bool."""
    parsed: torch.Tensor
    """[Q, n] bool, whether an answer could be read."""
    majority: torch.Tensor
    """[Q] bool, whether the question's most common answer is right (maj@n)."""

    def pass_at(self, k: int) -> torch.Tensor:
        """[Q] the unbiased chance that at least one of k of the n responses is right (pass@k)."""
        n = self.correct.size(1)
        return torch.tensor([pass_at_k(n, int(c), k) for c in self.correct.sum(-1)], dtype=torch.float)


def grade(texts: list[str], gold: list[float], n: int = 0, answer_style: str = "reft", checker: str = "rule") -> Graded:
    """Read (by ``answer_style``) and check (by ``checker``) ``max(n, 1)`` responses per question
    against each question's ``gold`` answer."""
    per_prompt = max(n, 1)
    predictions = [extract_answer(text, answer_style) for text in texts]
    correct = torch.tensor([check_answer(t, p, float(gold[i // per_prompt]), checker) for i, (t, p) in enumerate(zip(texts, predictions))],
                           dtype=torch.bool)
    parsed = torch.tensor([p is not None for p in predictions], dtype=torch.bool)
    majority = torch.tensor(
        [majority_correct(predictions[q * per_prompt : (q + 1) * per_prompt], float(g)) for q, g in enumerate(gold)], dtype=torch.bool
    )
    return Graded(predictions, correct.view(-1, per_prompt), parsed.view(-1, per_prompt), majority)


def pass_at_ks(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... and n itself."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else ks + [n]
