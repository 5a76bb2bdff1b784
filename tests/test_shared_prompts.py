"""Rows that share a prompt run it once when they are scored (Policy.forward_shared_prompts):
the logits, hidden states and gradients are those of the full forward pass."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.generation import response_logits
from lightning_modules.policy import Policy
from tests.test_sampler import PAD, grouped_prompts, tiny_lm


def rollout_like(share: int = 3, response_length: int = 6):
    """Four left-padded prompts, each with ``share`` responses of different lengths (padding after them)."""
    prompt_ids, prompt_mask = grouped_prompts(share)
    rows = prompt_ids.size(0)
    generator = torch.Generator().manual_seed(3)
    responses = torch.randint(2, 16, (rows, response_length), generator=generator)
    lengths = torch.randint(1, response_length + 1, (rows,), generator=generator)
    response_mask = (torch.arange(response_length)[None] < lengths[:, None]).long()
    responses = responses.masked_fill(response_mask == 0, PAD)
    return torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, response_mask], 1), response_length


def scored(policy: Policy, share: bool, hidden_at_tokens: bool):
    input_ids, attention_mask, length = rollout_like()
    policy.zero_grad(set_to_none=True)
    if not share:
        policy.can_share_prompts = lambda: False
    logits, states = response_logits(policy, input_ids, attention_mask, length, hidden=True, hidden_at_tokens=hidden_at_tokens)
    if not share:
        del policy.can_share_prompts
    mask = attention_mask[:, -length:].float()
    (logits.log_softmax(-1).amax(-1) * mask).sum().add((states ** 2).mean()).backward()
    return logits.detach(), states.detach(), {name: p.grad.clone() for name, p in policy.named_parameters()}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("hidden_at_tokens", [False, True])
def test_shared_prompts_score_as_the_full_pass_does(kind, hidden_at_tokens, monkeypatch):
    policy = Policy(tiny_lm(kind)).train()
    calls = []
    original = Policy.forward_shared_prompts
    monkeypatch.setattr(Policy, "forward_shared_prompts", lambda self, *a, **k: calls.append(a[3]) or original(self, *a, **k))
    shared = scored(policy, share=True, hidden_at_tokens=hidden_at_tokens)
    assert calls == [3], "the rows came in runs of 3 and were scored through the shared pass"
    full = scored(policy, share=False, hidden_at_tokens=hidden_at_tokens)
    assert calls == [3]
    torch.testing.assert_close(shared[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared[1], full[1], rtol=1e-5, atol=1e-5)
    assert set(shared[2]) == set(full[2])
    for name in full[2]:
        torch.testing.assert_close(shared[2][name], full[2][name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in full[2].values())


def test_checkpointed_models_score_through_the_full_pass():
    lm = tiny_lm("llama")
    lm.gradient_checkpointing_enable()
    assert not Policy(lm).can_share_prompts()
