"""The static-cache sampler draws exactly what Hugging Face's ``generate`` draws."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lightning_modules.generation import filter_logits, generate

EOS, PAD = 1, 0


def tiny_lm(kind: str) -> torch.nn.Module:
    """A random 2-layer model over 16 tokens, so that EOS comes often and rows end early."""
    torch.manual_seed(0)
    shape = dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)
    model = LlamaForCausalLM(LlamaConfig(**shape)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**shape))
    return model.eval()


def left_padded_prompts(rows: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [3, 7, 5, 7, 1, 4][:rows]
    width = max(lengths)
    ids = torch.full((rows, width), PAD)
    mask = torch.zeros((rows, width), dtype=torch.long)
    generator = torch.Generator().manual_seed(1)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(2, 16, (length,), generator=generator)
        mask[row, width - length :] = 1
    return ids, mask


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize(
    "sampling",
    [{}, {"do_sample": True, "temperature": 0.7}, {"do_sample": True, "temperature": 1.3, "top_k": 5},
     {"do_sample": True, "temperature": 1.0, "top_p": 0.8}, {"do_sample": True, "temperature": 0.9, "top_k": 6, "top_p": 0.7}],
    ids=["greedy", "t0.7", "top_k", "top_p", "top_k+top_p"],
)
def test_static_cache_sampler_draws_the_same_tokens_as_generate(kind, sampling):
    lm = tiny_lm(kind)
    ids, mask = left_padded_prompts()
    tokenizer = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)
    out = {}
    for sampler in ("hf_generate", "static_cache"):
        torch.manual_seed(7)
        out[sampler] = generate(lm, ids, mask, tokenizer, 24, sampler=sampler, **sampling)
    (hf_ids, hf_mask), (ids_ours, mask_ours) = out["hf_generate"], out["static_cache"]
    assert hf_mask.sum(-1).min() < hf_mask.size(1), "some row ended early (EOS), so padding after EOS is exercised"
    assert torch.equal(ids_ours, hf_ids)
    assert torch.equal(mask_ours, hf_mask)


def test_sampler_stops_when_every_row_has_ended():
    lm = tiny_lm("llama")
    with torch.no_grad():
        lm.lm_head.weight.zero_()  # every logit 0: greedy picks token 0, which is EOS here (and PAD, as in many hub models)
    ids, mask = left_padded_prompts()
    tokenizer = SimpleNamespace(eos_token_id=PAD, pad_token_id=PAD)
    responses, response_mask = generate(lm, ids, mask, tokenizer, 64, sampler="static_cache")
    reference, reference_mask = generate(lm, ids, mask, tokenizer, 64, sampler="hf_generate")
    assert responses.shape == (6, 1) and torch.equal(responses, reference) and torch.equal(response_mask, reference_mask)
    assert response_mask.sum().item() == 6  # the EOS itself counts as a response token


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # top-k 2 keeps 0.5 and 0.3
    kept = filter_logits(logits, 1.0, 2, 1.0).softmax(-1)
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top-p 0.7: the ascending cumulative sums are 0.05, 0.20, 0.50, 1.0; those <= 0.3 go (0.05 and 0.15)
    kept = filter_logits(logits, 1.0, 0, 0.7).softmax(-1)
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top-p so small that nothing would survive: the most likely token is kept
    kept = filter_logits(logits, 1.0, 0, 0.01).softmax(-1)
    torch.testing.assert_close(kept, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    # temperature 2 halves the log-probs: p ~ sqrt(p)
    expected = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    torch.testing.assert_close(filter_logits(logits, 2.0, 0, 1.0).softmax(-1), (expected / expected.sum())[None])


def test_sampler_under_bf16_autocast_draws_the_same_tokens_as_generate():
    """bf16-mixed: keys and values reach the cache in different dtypes (a growing cache is used)."""
    lm = tiny_lm("llama")
    ids, mask = left_padded_prompts()
    tokenizer = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)
    out = {}
    for sampler in ("hf_generate", "static_cache"):
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[sampler] = generate(lm, ids, mask, tokenizer, 16, sampler=sampler, do_sample=True, temperature=0.8)
    assert torch.equal(out["static_cache"][0], out["hf_generate"][0])
