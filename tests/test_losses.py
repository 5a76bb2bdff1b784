import math

import torch

from lightning_modules.losses import masked_mean, sft_loss, token_logprobs


def test_token_logprobs_matches_a_naive_loop():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    got = token_logprobs(logits, tokens, temperature=0.5)
    for b in range(2):
        for t in range(3):
            scaled = [x / 0.5 for x in logits[b, t].tolist()]
            log_z = math.log(sum(math.exp(x) for x in scaled))
            assert math.isclose(got[b, t].item(), scaled[tokens[b, t]] - log_z, rel_tol=1e-5)


def test_sft_loss_counts_only_target_tokens_by_hand():
    # Vocabulary of 2; uniform logits give log 2 per token, a confident right logit gives ~0.
    input_ids = torch.tensor([[0, 1, 1, 0]])
    logits = torch.zeros(1, 4, 2)
    logits[0, 1, 1] = 100.0  # predicts input_ids[0, 2] = 1 perfectly
    loss_mask = torch.tensor([[0, 1, 1, 0]])  # targets: positions 1 and 2 (position 3 is padding)
    # position 1 is scored by logits[0, 0] (uniform: log 2), position 2 by logits[0, 1] (~0)
    assert math.isclose(sft_loss(logits, input_ids, loss_mask).item(), math.log(2) / 2, rel_tol=1e-6)


def test_sft_loss_ignores_prompt_and_padding_values():
    torch.manual_seed(1)
    logits, input_ids = torch.randn(2, 6, 7), torch.randint(0, 7, (2, 6))
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    changed = logits.clone()
    changed[:, 5] += 50.0  # logits at the last position score nothing
    changed[0, 0] += 50.0  # logits[0, 0] score the prompt token input_ids[0, 1]
    assert torch.allclose(sft_loss(logits, input_ids, loss_mask), sft_loss(changed, input_ids, loss_mask))
    naive = []
    for b in range(2):
        for t in range(1, 6):
            if loss_mask[b, t]:
                naive.append(-torch.log_softmax(logits[b, t - 1], -1)[input_ids[b, t]])
    assert torch.allclose(sft_loss(logits, input_ids, loss_mask), torch.stack(naive).mean())


def test_masked_mean_of_an_empty_mask_is_zero_not_nan():
    assert masked_mean(torch.ones(3), torch.zeros(3)).item() == 0.0
    rows = masked_mean(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[1, 1], [0, 0]]), dim=1)
    assert rows.tolist() == [2.0, 0.0]
