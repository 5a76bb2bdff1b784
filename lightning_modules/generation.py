"""Generation: batched sampling with a KV cache, response masks, decoding, and the logits that score a response."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedTokenizerBase

from lightning_modules.decoder import COMPILER, GraphedStep, lean_decoder, shared_rows
from lightning_modules.policy import position_ids
from lightning_modules.sharding import is_sharded

log = logging.getLogger(__name__)
UNCOMPILED: set[str] = set()
"""Reasons already logged for sampling uncompiled under ``compiled`` (each said once a process)."""


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
    sampler: str = "static_cache",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses ``[B, T]`` for left-padded prompts, and their mask (EOS included).

    ``static_cache`` is the loop of :func:`sample_with_static_cache`, ``compiled`` the same
    loop with its decode step compiled once per process; ``hf_generate`` is
    Hugging Face's ``generate`` (for a model whose code cannot use a static cache). All
    draw alike: the same filtered distribution, one ``torch.multinomial`` per token.
    """
    if sampler in ("static_cache", "compiled"):
        responses = sample_with_static_cache(
            lm, prompt_ids, prompt_mask, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
            do_sample, temperature, top_k, top_p, compiled=sampler == "compiled",
        )
    else:
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


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus filtering, in the order and with the ties of
    Hugging Face's logits warpers (the most likely token always survives)."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(logits, descending=False)
        remove = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[:, -1] = False
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return logits


@torch.no_grad()
def sample_with_static_cache(
    lm,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    check_every: int = 8,
    static_shapes: bool = False,
    compiled: bool = False,
) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` for every left-padded prompt; ``[B, T]``, padded after EOS.

    Keys and values go into a cache allocated once for the whole length (no concatenation
    per token), each step feeds one token per row, and whether every row has finished is read
    back only every ``check_every`` tokens (one host sync there, none otherwise). Llama-family
    models decode through :class:`~lightning_modules.decoder.LeanDecoder`, others through
    their ``forward``. With ``static_shapes`` (lean decoder only) every step has the same
    shapes, and on a GPU the step is captured once per rollout as a CUDA graph and replayed.
    ``compiled`` (lean decoder only, implies ``static_shapes``) runs that step compiled once per
    process (:class:`~lightning_modules.decoder.Compiler`); a model the lean decoder does not
    cover, or one sharded by FSDP2, samples uncompiled, said once in the log.
    """
    rows, prompt_length = prompt_ids.shape
    device = prompt_ids.device
    decoder, why = lean_decoder(lm)
    if compiled and (decoder is None or is_sharded(lm)):
        why = why or "the model is sharded (FSDP2), and the compiled step is not built for its gathered units"
        if why not in UNCOMPILED:
            UNCOMPILED.add(why)
            log.warning("The decode step is not compiled: %s; sampling runs uncompiled.", why)
        compiled = False
    if decoder is not None:
        logits = decoder.prefill(prompt_ids, prompt_mask, max_new_tokens)
        step = COMPILER.step(decoder) if compiled else decoder.static_step
        static_shapes = static_shapes or compiled
        if static_shapes and device.type == "cuda":
            next_logits = GraphedStep(decoder, step)
        elif static_shapes:
            next_logits = lambda token, t: step(token, torch.tensor(t, device=device))  # noqa: E731
        else:
            next_logits = decoder.step
    else:
        next_logits, logits = library_decoder(lm, prompt_ids, prompt_mask, max_new_tokens)
    tokens = prompt_ids.new_full((rows, max_new_tokens), pad_token_id)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    noise = torch.empty(logits.shape, dtype=torch.float32, device=device) if do_sample and device.type == "cpu" else None  # draw's buffer
    for t in range(max_new_tokens):
        if do_sample:
            token = draw(filter_logits(logits, temperature, top_k, top_p).softmax(-1), noise)
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(finished, pad_token_id)
        tokens[:, t] = token
        finished |= token == eos_token_id
        if (t + 1) % check_every == 0 and bool(finished.all()):
            break
        if t + 1 < max_new_tokens:
            logits = next_logits(token, t)
    longest = int(response_mask(tokens, eos_token_id).sum(-1).max())  # as long as the longest response, like generate
    return tokens[:, :longest]


def draw(probs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from ``probs`` ``[B, V]``: ``torch.multinomial(probs, 1)``. On the CPU
    the same draw is made without its input checks: ``argmax(probs / q)`` with ``q ~ Exp(1)``
    taken from the generator as multinomial takes it, so the tokens and the generator's state
    after are multinomial's (tests/test_sampler.py). ``noise``, a float32 buffer of ``probs``'
    shape reused across a rollout's steps, holds ``q`` and the quotient: at a 49k or 152k
    vocabulary a fresh ``[B, V]`` tensor per token costs more than the division itself."""
    if probs.device.type != "cpu":
        return torch.multinomial(probs, 1).squeeze(1)
    noise = torch.empty_like(probs) if noise is None else noise
    return torch.div(probs, noise.exponential_(), out=noise).argmax(-1)


def library_decoder(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
    """Decoding through the model's own ``forward`` and a library cache, for models
    :mod:`~lightning_modules.decoder` does not cover: the prompts' next-token logits ``[B, V]``
    and a function of ``(tokens, t)`` that feeds response token ``t`` and returns the next logits."""
    from transformers import DynamicCache, StaticCache

    rows, prompt_length = prompt_ids.shape
    device = prompt_ids.device
    if torch.is_autocast_enabled(device.type):
        # Under autocast (bf16-mixed) keys leave the rotary embedding in fp32 and values stay in
        # bf16, which one preallocated buffer per layer cannot hold: a growing cache is used.
        cache = DynamicCache(config=lm.config)
    else:
        cache = StaticCache(config=lm.config, max_cache_len=prompt_length + max_new_tokens)
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(rows, max_new_tokens)], dim=1)
    positions = position_ids(prompt_mask)
    out = lm(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, past_key_values=cache, use_cache=True,
             cache_position=torch.arange(prompt_length, device=device), logits_to_keep=1)
    position = positions[:, -1:]

    def next_logits(tokens: torch.Tensor, t: int) -> torch.Tensor:
        nonlocal position
        position = position + 1
        out = lm(input_ids=tokens[:, None], attention_mask=mask[:, : prompt_length + t + 1], position_ids=position,
                 past_key_values=cache, use_cache=True, cache_position=torch.tensor([prompt_length + t], device=device))
        return out.logits[:, -1]

    return next_logits, out.logits[:, -1]


def response_logits(
    policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int, hidden: bool = False,
    hidden_at_tokens: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``[N, T, V]`` that score the last ``response_length`` tokens of ``input_ids``
    (``logits[:, t]`` scores response token t) and, if asked, the hidden states they come from,
    ``[N, T, H]``; with ``hidden_at_tokens`` also the state at the last token, ``[N, T + 1, H]``
    (``states[:, 1:]`` are then the states at the response tokens themselves). Only the
    response positions go through the vocabulary projection, and rows that share a prompt (a
    rollout's groups) run it once (:meth:`~lightning_modules.policy.Policy.forward_shared_prompts`)."""
    prompt_length = input_ids.size(1) - response_length
    share = shared_rows(input_ids[:, :prompt_length], attention_mask[:, :prompt_length]) if prompt_length > 0 else 1
    if share > 1 and policy.can_share_prompts():
        logits, states = policy.forward_shared_prompts(input_ids, attention_mask, prompt_length, share, return_hidden=hidden)
    else:
        logits, states = policy(input_ids, attention_mask, return_hidden=hidden, logits_to_keep=response_length + 1)
    logits = logits[:, :-1]
    if states is not None:
        states = states[:, -response_length - 1 :] if hidden_at_tokens else states[:, -response_length - 1 : -1]
    return logits, states


def decode(tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(response_ids, mask)]
