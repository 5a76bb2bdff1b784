"""Generation: batched sampling with a KV cache, response masks, decoding and scoring."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.answers import extract_answer, is_correct


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on generated tokens up to and including the first EOS, 0 after it (padding)."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos
    return (eos_before == 0).long()


@torch.no_grad()
def generate(
    lm,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses ``[B, T]`` for left-padded prompts, and their mask (EOS included)."""
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {"do_sample": False}
    sequences = lm.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **sampling,
    )
    responses = sequences[:, prompt_ids.size(1) :]
    return responses, response_mask(responses, tokenizer.eos_token_id)


def response_logits(
    policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int, hidden: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``[N, T, V]`` that score the last ``response_length`` tokens of ``input_ids``
    (``logits[:, t]`` scores response token t) and, if asked, the hidden states they come from,
    ``[N, T, H]``. Only those positions go through the vocabulary projection."""
    logits, states = policy(input_ids, attention_mask, return_hidden=hidden, logits_to_keep=response_length + 1)
    logits = logits[:, :-1]
    if states is not None:
        states = states[:, -response_length - 1 : -1]
    return logits, states


def decode(tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(response_ids, mask)]


def check_answers(texts: list[str], gold: torch.Tensor) -> tuple[list[float | None], torch.Tensor]:
    """Extracted answers and a bool tensor of which are correct (spec section 0)."""
    predictions = [extract_answer(text) for text in texts]
    correct = torch.tensor([is_correct(p, float(g)) for p, g in zip(predictions, gold)], dtype=torch.bool)
    return predictions, correct
