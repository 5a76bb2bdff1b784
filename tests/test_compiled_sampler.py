"""``trainer.sampler compiled``: the lean decoder's static-shape step compiled once per process
draws exactly what Hugging Face's ``generate`` draws, compiles at most twice for any number of
rollouts (not once per rollout or per decoder), and falls back to the eager step, with one logged line, where it cannot compile."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from lightning_modules import decoder as decoder_module
from lightning_modules import generation
from lightning_modules.decoder import Compiler
from lightning_modules.generation import generate
from tests.test_sampler import EOS, PAD, grouped_prompts, left_padded_prompts, tiny_lm

TOKENIZER = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)


def sample(lm, ids, mask, sampler, sampling, max_new_tokens=24):
    torch.manual_seed(7)
    return generate(lm, ids, mask, TOKENIZER, max_new_tokens, sampler=sampler, **sampling)


@pytest.fixture
def compiler(monkeypatch):
    """A compiler of the test's own, with dynamo's compiled code forgotten, so that what it
    counts is what this test compiled."""
    torch._dynamo.reset()
    fresh = Compiler()
    monkeypatch.setattr(generation, "COMPILER", fresh)
    yield fresh
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_compiled_step_draws_the_same_tokens_as_generate(kind, compiler):
    """Greedy, temperature, top-k and top-p; prompts shared in groups (as rollouts have them) and
    distinct (as validation has them); the filtering and the draw stay outside the compiled step."""
    lm = tiny_lm(kind)
    samplings = [{}, {"do_sample": True, "temperature": 0.7}, {"do_sample": True, "temperature": 1.3, "top_k": 5},
                 {"do_sample": True, "temperature": 1.0, "top_p": 0.8}, {"do_sample": True, "temperature": 0.9, "top_k": 6, "top_p": 0.7}]
    for ids, mask in (grouped_prompts(3), left_padded_prompts()):
        for sampling in samplings:
            expected, expected_mask = sample(lm, ids, mask, "hf_generate", sampling)
            tokens, tokens_mask = sample(lm, ids, mask, "compiled", sampling)
            assert expected_mask.sum(-1).min() < expected_mask.size(1), "some row ended early (EOS)"
            assert torch.equal(tokens, expected) and torch.equal(tokens_mask, expected_mask), sampling
    assert compiler.failed is None
    # one static graph for the first shapes, one with the sizes symbolic when they changed; the
    # other eight rollouts and sampling settings compiled nothing more
    assert 1 <= compiler.compiles <= 2 and compiler.seconds > 0


def test_a_failed_compile_logs_one_line_and_samples_eagerly(compiler, monkeypatch, caplog):
    def broken(function):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nsecond line of the trace")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    lm = tiny_lm("llama")
    ids, mask = grouped_prompts(3)
    sampling = {"do_sample": True, "temperature": 0.9}
    expected = sample(lm, ids, mask, "hf_generate", sampling)
    with caplog.at_level(logging.WARNING, logger=decoder_module.__name__):
        first = sample(lm, ids, mask, "compiled", sampling)
        second = sample(lm, ids, mask, "compiled", sampling)
    lines = [record.getMessage() for record in caplog.records if record.name == decoder_module.__name__]
    assert lines == ["The decode step could not be compiled (RuntimeError: no C++ compiler found); sampling continues with the eager step."]
    assert torch.equal(first[0], expected[0]) and torch.equal(second[0], expected[0])
    assert compiler.failed is not None and compiler.compiles == 0


def test_a_model_the_lean_decoder_does_not_cover_samples_uncompiled_and_says_so_once(compiler, monkeypatch, caplog):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, pad_token_id=PAD, eos_token_id=EOS)).eval()
    monkeypatch.setattr(generation, "UNCOMPILED", set())
    ids, mask = left_padded_prompts()
    sampling = {"do_sample": True, "temperature": 0.9}
    expected = sample(lm, ids, mask, "hf_generate", sampling, max_new_tokens=8)
    with caplog.at_level(logging.WARNING, logger=generation.__name__):
        for _ in range(2):
            assert torch.equal(sample(lm, ids, mask, "compiled", sampling, max_new_tokens=8)[0], expected[0])
    lines = [record.getMessage() for record in caplog.records if record.name == generation.__name__]
    assert len(lines) == 1 and "not compiled: model type 'qwen3'" in lines[0]
    assert compiler.compiles == 0


def test_a_sharded_model_samples_with_the_eager_step_and_says_so_once(compiler, monkeypatch, caplog):
    """Under FSDP2 the rollout runs inside gathered units; the compiled step is not built for them."""
    monkeypatch.setattr(generation, "is_sharded", lambda lm: True)
    monkeypatch.setattr(generation, "UNCOMPILED", set())
    lm = tiny_lm("llama")
    ids, mask = grouped_prompts(3)
    sampling = {"do_sample": True, "temperature": 0.9}
    expected = sample(lm, ids, mask, "static_cache", sampling)
    with caplog.at_level(logging.WARNING, logger=generation.__name__):
        for _ in range(2):
            assert torch.equal(sample(lm, ids, mask, "compiled", sampling)[0], expected[0])
    lines = [record.getMessage() for record in caplog.records if record.name == generation.__name__]
    assert len(lines) == 1 and "not compiled: the model is sharded (FSDP2)" in lines[0]
    assert compiler.compiles == 0
