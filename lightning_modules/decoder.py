"""A lean decode loop for Llama-family models (Llama, Qwen2, Mistral without a sliding window).

Sampling a rollout is hundreds of one-token forward passes, each a few small matrix products.
Through the library's ``forward`` each pass also builds a 4-D mask, updates a cache object,
recomputes the rotary angles and returns output classes, and its attention runs over the whole
preallocated cache: at the embedded model's size that machinery, not arithmetic, is most of the
time. :class:`LeanDecoder` runs the same model a step at a time with none of it:

- keys and values go into one buffer per layer, allocated for the prompt and response budget
  when the rollout starts, and a step attends only to the positions written so far;
- the rotary angles of every position are computed once per rollout (by the model's own
  rotary module, so its scaling is kept) and a step looks its rows up;
- the norms, projections and MLPs are the model's own modules, called directly, so LoRA
  adapters, gathered FSDP2 weights and autocast apply as in ``forward``.

The arithmetic is the model's; only the order of a few floating-point sums differs (the
attention of a step is two batched products instead of the fused kernel), so the sampler draws
the tokens ``generate`` draws (tests/test_sampler.py). A model it does not cover decodes through
``forward`` with a static cache, as before: :func:`lean_decoder` says why in its return value.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from lightning_modules.policy import position_ids

log = logging.getLogger(__name__)

FAMILIES = ("llama", "qwen2", "mistral")
"""Decoder-only models whose layers are: RMSNorm, q/k/v projections, rotary embedding of q and
k (rotate-half convention), attention, output projection, residual, RMSNorm, MLP, residual."""
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
"""Rotary scalings whose angles depend on the position alone (not on the sequence length)."""


def lean_decoder(lm: nn.Module) -> tuple["LeanDecoder | None", str]:
    """A :class:`LeanDecoder` for ``lm`` (a causal LM, or a peft model around one), or None
    and the reason it does not apply."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    config = base.config
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return None, f"model type {kind!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "sliding_window", None) is not None and (kind == "mistral" or getattr(config, "use_sliding_window", False)):
        return None, "the model attends through a sliding window"
    model = base.model
    rope_type = getattr(model.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE:
        return None, f"rotary scaling {rope_type!r} depends on the sequence length"
    if any(isinstance(p, DTensor) for p in base.parameters()):
        return None, "the model's weights are sharded (not gathered)"
    attention = model.layers[0].self_attn
    if not all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")) or hasattr(attention, "q_norm"):
        return None, f"{type(attention).__name__} is not the attention this loop implements"
    return LeanDecoder(base), ""


class LeanDecoder:
    """Prefill a batch of left-padded prompts, then decode one token per row per step.

    Rows that share a prompt (a group of samples of one question, laid out one after another
    as rollouts repeat their prompts) share its keys and values: the prompt runs once per
    group, its cache is kept once per group, and a step's attention reads it once per group
    for all the group's queries, then the rows' own response keys (a shared-prefix attention,
    as in Hydragen, arXiv 2402.05099). With eight samples per question that is an eighth of
    the prefill and of the prompt's share of every step's cache reads, which at these sizes are
    what a step's attention is made of.
    """

    def __init__(self, lm: nn.Module) -> None:
        self.lm, self.model = lm, lm.model
        attention = self.model.layers[0].self_attn
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.heads = lm.config.num_attention_heads
        self.kv_heads = getattr(lm.config, "num_key_value_heads", None) or self.heads
        self.group_heads = self.heads // self.kv_heads

    @torch.no_grad()
    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Run the prompts (each distinct one once), cache their keys and values, and return
        the logits ``[B, V]`` of every row's next token."""
        rows, length = prompt_ids.shape
        device = prompt_ids.device
        self.share = shared_rows(prompt_ids, prompt_mask)
        prompts = rows // self.share
        prompt_ids, prompt_mask = prompt_ids[::self.share], prompt_mask[::self.share]
        self.rows, self.prompts, self.length = rows, prompts, length
        positions = position_ids(prompt_mask)
        self.position = positions[:, -1:].repeat_interleave(self.share, 0)  # the last prompt position; step t is at + 1 + t
        h = self.model.embed_tokens(prompt_ids)
        # cos | sin of every position a row can reach (a prompt position is at most its index)
        cos, sin = self.model.rotary_emb(h, torch.arange(length + max_new_tokens, device=device)[None])
        self.angles = torch.cat([cos[0], sin[0]], dim=-1)
        # A step's prompt scores are [prompts x kv_heads, share x group_heads, length]; this bias hides padding.
        bias = torch.zeros(prompts, self.kv_heads, 1, length, device=device, dtype=self.angles.dtype)
        self.bias = bias.masked_fill_(~prompt_mask.bool()[:, None, None, :], float("-inf")).view(prompts * self.kv_heads, 1, length)
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        # Padding queries see themselves only, so that no row of the softmax is empty.
        mask = (causal & prompt_mask.bool()[:, None, None, :]) | torch.eye(length, dtype=torch.bool, device=device)
        self.prompt_keys, self.prompt_values, self.keys, self.values = [], [], [], []
        self.capacity = max_new_tokens
        cos_sin = self.angles[positions].unsqueeze(1)
        for index, layer in enumerate(self.model.layers):
            h = self.layer(layer, index, h, cos_sin, prefill_mask=mask)
        return self.logits(h[:, -1:]).repeat_interleave(self.share, 0)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """Feed ``tokens`` ``[B]`` as response token ``t`` and return the next logits ``[B, V]``."""
        return self.forward_step(tokens, t, t + 1, None)

    @torch.no_grad()
    def static_step(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """:meth:`step` with ``t`` a 0-dim tensor on the device and every shape fixed for the
        rollout: the step attends over the whole response buffer, the slots not yet written
        hidden by the mask. The same step can then be captured once as a CUDA graph and
        replayed (:class:`GraphedStep`)."""
        hidden = torch.arange(self.capacity, device=t.device) > t
        own_bias = torch.zeros(self.capacity, device=t.device, dtype=self.angles.dtype).masked_fill(hidden, float("-inf"))
        return self.forward_step(tokens, t, self.capacity, own_bias)

    def forward_step(self, tokens: torch.Tensor, t, seen: int, own_bias: torch.Tensor | None) -> torch.Tensor:
        position = self.position + 1 + t
        h = self.model.embed_tokens(tokens[:, None])
        cos_sin = self.angles[position].unsqueeze(1)
        for index, layer in enumerate(self.model.layers):
            h = self.layer(layer, index, h, cos_sin, t=t, seen=seen, own_bias=own_bias)
        return self.logits(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm.lm_head(rms_norm(self.model.norm, h))[:, -1]

    def layer(self, layer: nn.Module, index: int, h: torch.Tensor, cos_sin: torch.Tensor, prefill_mask=None, t=0, seen: int = 0,
              own_bias: torch.Tensor | None = None) -> torch.Tensor:
        attention = layer.self_attn
        rows, length, _ = h.shape
        x = rms_norm(layer.input_layernorm, h)
        q = attention.q_proj(x).view(rows, length, self.heads, self.head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(rows, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attention.v_proj(x).view(rows, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(torch.cat([q, k], dim=1), cos_sin).split([self.heads, self.kv_heads], dim=1)  # one rotation for both
        if prefill_mask is not None:
            self.prompt_keys.append(k.contiguous())
            self.prompt_values.append(v.contiguous())
            # zeros, not uninitialised memory: a static step reads slots not yet written (weight 0)
            self.keys.append(k.new_zeros(self.rows, self.kv_heads, self.capacity, self.head_dim))
            self.values.append(v.new_zeros(self.rows, self.kv_heads, self.capacity, self.head_dim))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=prefill_mask, scale=self.scaling, enable_gqa=self.group_heads > 1)
        else:
            keys, values = self.keys[index], self.values[index]
            if isinstance(t, torch.Tensor):
                keys.index_copy_(2, t.view(1), k)
                values.index_copy_(2, t.view(1), v)
            else:
                keys[:, :, t], values[:, :, t] = k[:, :, 0], v[:, :, 0]
            out = self.attend(q, index, seen, own_bias)
        h = h + attention.o_proj(out.transpose(1, 2).reshape(rows, length, self.heads * self.head_dim))
        return h + layer.mlp(rms_norm(layer.post_attention_layernorm, h))

    def attend(self, q: torch.Tensor, index: int, seen: int, own_bias: torch.Tensor | None = None) -> torch.Tensor:
        """One step's attention, ``[B, heads, 1, head_dim]``: each query over its prompt's keys
        (read once per prompt) and its first ``seen`` response keys (``own_bias`` added to
        their scores), under one softmax."""
        prompts, share, kv, group, dim = self.prompts, self.share, self.kv_heads, self.group_heads, self.head_dim
        length = self.length
        # the prompt part: [prompts x kv, share x group, length], a query block per prompt
        by_prompt = q.view(prompts, share, kv, group, dim).transpose(1, 2).reshape(prompts * kv, share * group, dim)
        prompt_keys = self.prompt_keys[index].view(prompts * kv, length, dim)
        prompt_scores = torch.baddbmm(self.bias.to(q.dtype), by_prompt, prompt_keys.transpose(1, 2), alpha=self.scaling)
        prompt_scores = prompt_scores.view(prompts, kv, share, group, length).transpose(1, 2).reshape(self.rows * kv, group, length)
        # the response part: [rows x kv, group, seen]
        keys = self.keys[index][:, :, :seen].reshape(self.rows * kv, seen, dim)
        own_scores = torch.bmm(q.reshape(self.rows * kv, group, dim), keys.transpose(1, 2)).mul_(self.scaling)
        if own_bias is not None:
            own_scores = own_scores + own_bias
        weights = torch.cat([prompt_scores, own_scores.to(prompt_scores.dtype)], dim=-1).softmax(-1)
        values = self.values[index]
        prompt_weights = weights[..., :length].reshape(prompts, share, kv, group, length).transpose(1, 2).reshape(prompts * kv, share * group, length)
        prompt_out = torch.bmm(prompt_weights.to(values.dtype), self.prompt_values[index].view(prompts * kv, length, dim))
        own_out = torch.bmm(weights[..., length:].to(values.dtype), values[:, :, :seen].reshape(self.rows * kv, seen, dim))
        out = prompt_out.view(prompts, kv, share, group, dim).transpose(1, 2).reshape(self.rows, kv, group, dim) + own_out.view(self.rows, kv, group, dim)
        return out.view(self.rows, self.heads, 1, dim)


def shared_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> int:
    """How many consecutive rows share each prompt: the n of prompts repeated with
    ``repeat_interleave(n)``, or 1."""
    rows = prompt_ids.size(0)
    if rows < 2:
        return 1
    distinct = 1 + int((prompt_ids[1:] != prompt_ids[:-1]).any(-1).sum())
    if distinct == rows or rows % distinct:
        return 1
    share = rows // distinct
    both = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1).view(distinct, share, -1)
    return share if bool((both == both[:, :1]).all()) else 1


RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
"""The families' RMSNorm modules: ``weight * x / sqrt(mean(x^2) + eps)``, computed in fp32."""


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` in one fused operator where ``norm`` is one of :data:`RMS_NORMS` in full
    precision, outside autocast (the same values; the module's own code is seven operators),
    else ``norm(x)``."""
    if (type(norm).__name__ in RMS_NORMS and x.dtype == torch.float32 and norm.weight.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)):
        return F.rms_norm(x, (x.size(-1),), norm.weight, norm.variance_epsilon)
    return norm(x)


def rotate(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding in the rotate-half convention; ``cos_sin`` is ``[B, 1, T, 2 x head_dim]``."""
    cos, sin = cos_sin.chunk(2, dim=-1)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class GraphedStep:
    """:meth:`LeanDecoder.static_step` (or ``step``, a function of the same signature, such as
    the one :meth:`Compiler.step` returns) captured once per rollout as a CUDA graph and
    replayed for every token: one launch per step instead of one per operation, which is what a
    step of a small model costs on a GPU. Call it as ``step(tokens, t)``; the returned logits
    are a buffer the next call overwrites."""

    def __init__(self, decoder: LeanDecoder, step: Callable | None = None) -> None:
        device = decoder.angles.device
        step = step or decoder.static_step
        self.tokens = torch.zeros(decoder.rows, dtype=torch.long, device=device)
        self.t = torch.zeros((), dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture (it writes slot 0, which step 0 rewrites)
            step(self.tokens, self.t)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.tokens, self.t)

    def __call__(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.t.fill_(t)
        self.graph.replay()
        return self.logits


class Compiler:
    """:meth:`LeanDecoder.static_step` compiled once per process (``torch.compile``), shared by
    every rollout and every decoder of the process.

    The step has the same shapes at every token of a rollout, so it is compiled at the first
    rollout and replayed after. Rollouts whose prompts are of another length, or validation
    batches of another size, compile once more, with those sizes symbolic (``torch.compile``'s
    automatic dynamic shapes), and then no more. Inductor keeps what it compiled on disk
    (``TORCHINDUCTOR_CACHE_DIR``, by default under the system's temporary folder), so the next
    process compiles from that cache in a few seconds. ``seconds`` counts the time spent in
    calls that compiled. If compiling fails (no C++ compiler, an operator inductor cannot
    lower), one line is logged and every step after runs eagerly: the same step, the same
    tokens.
    """

    def __init__(self) -> None:
        self.function: Callable | None = None
        self.failed: str | None = None
        self.seconds = 0.0
        self.compiles = 0

    def step(self, decoder: LeanDecoder) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``step(tokens, t)`` for ``decoder``, with ``t`` a 0-dim tensor on the device."""
        from torch._dynamo.utils import counters

        if self.function is None and self.failed is None:
            self.function = torch.compile(LeanDecoder.static_step)

        def step(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if self.failed is not None:
                return decoder.static_step(tokens, t)
            graphs, start = counters["stats"]["unique_graphs"], time.perf_counter()
            try:
                logits = self.function(decoder, tokens, t)
            except Exception as error:  # the compiler's failure: the same step runs eagerly (a model's own error raises there again)
                self.failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                log.warning("The decode step could not be compiled (%s); sampling continues with the eager step.", self.failed)
                return decoder.static_step(tokens, t)
            if counters["stats"]["unique_graphs"] > graphs:
                seconds = time.perf_counter() - start
                self.compiles, self.seconds = self.compiles + 1, self.seconds + seconds
                log.info("Compiled the decode step (%d rows) in %.1f s.", decoder.rows, seconds)
            return logits

        return step


COMPILER = Compiler()
"""The process's compiled decode step (``trainer.sampler compiled``)."""
