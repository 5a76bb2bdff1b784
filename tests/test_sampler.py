"""The static-cache sampler draws exactly what Hugging Face's ``generate`` draws, through the
lean decoder (lightning_modules/decoder.py) and through the library's forward, with distinct
prompts and with groups of rows sharing a prompt (as rollouts have them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lightning_modules import generation
from lightning_modules.decoder import lean_decoder, shared_rows
from lightning_modules.generation import filter_logits, generate

EOS, PAD = 1, 0


def tiny_lm(kind: str) -> torch.nn.Module:
    """A random 2-layer model over 16 tokens, so that EOS comes often and rows end early."""
    torch.manual_seed(0)
    shape = dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)
    if kind == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        return MistralForCausalLM(MistralConfig(**shape, sliding_window=None)).eval()
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


def grouped_prompts(share: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four of the prompts, each repeated ``share`` times in a row, as a rollout lays them out."""
    ids, mask = left_padded_prompts()
    return ids[1:5].repeat_interleave(share, 0), mask[1:5].repeat_interleave(share, 0)


def sample_both(lm, ids, mask, sampling, max_new_tokens=24):
    tokenizer = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)
    out = {}
    for sampler in ("hf_generate", "static_cache"):
        torch.manual_seed(7)
        out[sampler] = generate(lm, ids, mask, tokenizer, max_new_tokens, sampler=sampler, **sampling)
    return out["hf_generate"], out["static_cache"]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("share", [1, 3], ids=["distinct-prompts", "shared-prompts"])
@pytest.mark.parametrize(
    "sampling",
    [{}, {"do_sample": True, "temperature": 0.7}, {"do_sample": True, "temperature": 1.3, "top_k": 5},
     {"do_sample": True, "temperature": 1.0, "top_p": 0.8}, {"do_sample": True, "temperature": 0.9, "top_k": 6, "top_p": 0.7}],
    ids=["greedy", "t0.7", "top_k", "top_p", "top_k+top_p"],
)
def test_static_cache_sampler_draws_the_same_tokens_as_generate(kind, share, sampling):
    lm = tiny_lm(kind)
    assert lean_decoder(lm)[0] is not None, "this family decodes through the lean decoder"
    ids, mask = left_padded_prompts() if share == 1 else grouped_prompts(share)
    assert shared_rows(ids, mask) == share
    (hf_ids, hf_mask), (ids_ours, mask_ours) = sample_both(lm, ids, mask, sampling)
    assert hf_mask.sum(-1).min() < hf_mask.size(1), "some row ended early (EOS), so padding after EOS is exercised"
    if share > 1 and sampling:
        assert not torch.equal(ids_ours[0], ids_ours[1]), "rows sharing a prompt drew their own responses"
    assert torch.equal(ids_ours, hf_ids)
    assert torch.equal(mask_ours, hf_mask)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_the_static_shape_step_draws_the_same_tokens_as_generate(kind):
    """The step a GPU captures as a CUDA graph: every step attends over the whole response buffer."""
    from lightning_modules.generation import sample_with_static_cache

    lm = tiny_lm(kind)
    ids, mask = grouped_prompts(3)
    (hf_ids, _), _ = sample_both(lm, ids, mask, {"do_sample": True, "temperature": 0.9})
    torch.manual_seed(7)
    tokens = sample_with_static_cache(lm, ids, mask, 24, EOS, PAD, temperature=0.9, static_shapes=True)
    assert torch.equal(tokens, hf_ids)


@pytest.mark.parametrize("share", [1, 3], ids=["distinct-prompts", "shared-prompts"])
def test_the_library_decoder_draws_the_same_tokens_as_generate(share, monkeypatch):
    """A model the lean decoder does not cover decodes through the model's forward and a static cache."""
    monkeypatch.setattr(generation, "lean_decoder", lambda lm: (None, "not covered"))
    lm = tiny_lm("llama")
    ids, mask = left_padded_prompts() if share == 1 else grouped_prompts(share)
    (hf_ids, hf_mask), (ids_ours, mask_ours) = sample_both(lm, ids, mask, {"do_sample": True, "temperature": 0.9})
    assert torch.equal(ids_ours, hf_ids) and torch.equal(mask_ours, hf_mask)


def test_the_lean_decoder_covers_mistral_without_a_window_and_names_what_it_does_not_cover():
    from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

    shape = dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    assert "sliding window" in lean_decoder(MistralForCausalLM(MistralConfig(**shape, sliding_window=8)))[1]
    lm = tiny_lm("mistral")
    assert lean_decoder(lm)[0] is not None
    ids, mask = grouped_prompts(3)
    (hf_ids, hf_mask), (ids_ours, mask_ours) = sample_both(lm, ids, mask, {"do_sample": True, "temperature": 0.9})
    assert torch.equal(ids_ours, hf_ids) and torch.equal(mask_ours, hf_mask)
    assert "qwen3" in lean_decoder(Qwen3ForCausalLM(Qwen3Config(**shape)))[1]


def test_shared_rows_finds_runs_of_one_prompt():
    ids, mask = left_padded_prompts()
    assert shared_rows(ids, mask) == 1
    assert shared_rows(ids[:1], mask[:1]) == 1 and shared_rows(ids[:0], mask[:0]) == 1
    assert shared_rows(ids[:4].repeat_interleave(2, 0), mask[:4].repeat_interleave(2, 0)) == 2
    assert shared_rows(ids[:2].repeat(3, 1), mask[:2].repeat(3, 1)) == 1  # repeated, but not in runs
    padded_alike = mask[:2].repeat_interleave(2, 0).clone()
    padded_alike[1, 0] = 1 - padded_alike[1, 0]  # same ids, one mask differs: not shared
    assert shared_rows(ids[:2].repeat_interleave(2, 0), padded_alike) == 1


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


def test_the_cpu_draw_is_multinomials_draw_and_leaves_the_generator_as_multinomial_does():
    from lightning_modules.generation import draw

    probs = torch.softmax(torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3, -1)
    for seed in range(50):
        torch.manual_seed(seed)
        expected, after = torch.multinomial(probs, 1).squeeze(1), torch.rand(3)
        for noise in (None, torch.full_like(probs, 7.0)):  # a fresh tensor, or a rollout's reused buffer
            torch.manual_seed(seed)
            drawn, after_ours = draw(probs, noise), torch.rand(3)
            assert torch.equal(drawn, expected) and torch.equal(after_ours, after)
