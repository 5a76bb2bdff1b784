"""DAPO's dynamic sampling: groups whose rewards all match are replaced by groups of further
questions, within a bound, so a rollout keeps its size and every rank its number of updates."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.config import EmbeddedModelConfig, ModelConfig
from lightning_modules.generation import response_logits
from lightning_modules.policy import Policy, resolve_model_path
from lightning_modules.rollout import Rollout
from tests.runs import scalars
from workflows.train import main

ARGS = ["--method", "grpo", "--warmup_run", "null", "--data.batch_size", "4", "--algo.samples_per_prompt", "2", "--trainer.max_steps", "3",
        "--trainer.val_every_n_steps", "3", "--optim.lr", "1e-2", "--algo.reward", "tests.rewards:odd_questions_differ",
        "--algo.dynamic_sampling", "true"]


def part(prompts: list[list[int]], responses: list[list[int]], question: int) -> Rollout:
    """A rollout of the given token lists, prompts left-padded and responses right-padded with 0."""
    width, length = max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    response_ids = torch.tensor([r + [0] * (length - len(r)) for r in responses])
    response_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in responses])
    n = len(prompts)
    return Rollout(torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1), response_ids, response_mask,
                   torch.full((n,), question), [f"r{question}"] * n, [None] * n, group=n, step=3,
                   answer=torch.full((n,), float(question), dtype=torch.float64), correct=torch.zeros(n, dtype=torch.bool),
                   target_ids=torch.tensor([[5] * (question + 1)] * n), target_mask=torch.ones(n, question + 1, dtype=torch.long))


def test_concatenated_rollouts_keep_every_token_and_score_alike(model_cache):
    tiny = EmbeddedModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    policy = Policy.from_pretrained(resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=tiny)), ModelConfig()).eval()
    a = part([[3, 4, 5], [6, 7]], [[8, 9], [10]], question=1)
    b = part([[11], [12, 13, 14, 15]], [[16, 17, 18], [19, 20, 21]], question=2)
    both = Rollout.concat([a, b], pad_id=0)
    assert both.input_ids.shape == (4, 4 + 3) and both.prompt_length == 4 and both.target_ids.shape == (4, 3)
    assert both.texts == ["r1", "r1", "r2", "r2"] and both.question.tolist() == [1, 1, 2, 2] and both.group == 2 and both.step == 3
    assert both.target_mask.sum(-1).tolist() == [2, 2, 3, 3]
    for source, rows in ((a, [0, 1]), (b, [2, 3])):
        for i, row in enumerate(rows):
            kept = both.input_ids[row][both.attention_mask[row].bool()]
            assert kept.tolist() == source.input_ids[i][source.attention_mask[i].bool()].tolist()
            assert both.response_mask[row].sum() == source.response_mask[i].sum()
        # The extra padding changes no log-prob of a response token.
        alone, _ = response_logits(policy, source.input_ids, source.attention_mask, source.response_ids.size(1))
        joined, _ = response_logits(policy, both.input_ids[rows], both.attention_mask[rows], both.response_ids.size(1))
        mask = source.response_mask.bool()
        torch.testing.assert_close(joined[:, : alone.size(1)][mask], alone[mask], rtol=1e-5, atol=1e-5)


def test_dynamic_sampling_trains_on_informative_groups_and_logs_the_filter(tiny_args, tmp_path):
    from tests.rewards import SEEN

    assert main([*tiny_args, *ARGS, "--run_name", "dynamic", "--algo.max_sampling_rounds", "4"]) == 0
    curves = scalars(tmp_path / "runs" / "dynamic")
    filtered = [v for _, v in curves["train/frac_groups_filtered"]]
    rounds = [v for _, v in curves["train/sampling_rounds"]]
    assert len(filtered) == 3 and all(0.0 <= v < 1.0 for v in filtered) and all(1 <= r <= 4 for r in rounds)
    assert any(v > 0 for v in filtered) and max(rounds) > 1, "even questions' groups (all 0) were never dropped"
    assert all(math.isfinite(v) for tag, points in curves.items() for _, v in points)
    # The rollout that was scored (the last reward call) has the batch's size, 4 questions x 2
    # samples: informative groups (odd questions) first, dropped ones only as top-ups, and none of
    # those unless the rounds ran out.
    scored = SEEN["rollout"]
    assert len(scored) == 8
    odd = (scored.question.view(-1, 2)[:, 0] % 2 == 1).tolist()
    assert odd == sorted(odd, reverse=True)
    assert all(odd) or rounds[-1] == 4


def test_without_dynamic_sampling_nothing_is_filtered_or_logged(tiny_args, tmp_path):
    argv = [a if a != "true" else "false" for a in ARGS]
    assert main([*tiny_args, *argv, "--run_name", "plain"]) == 0
    curves = scalars(tmp_path / "runs" / "plain")
    assert "train/frac_groups_filtered" not in curves and "train/frac_reward_zero_std" in curves


@pytest.mark.parametrize("argv, expected", [
    (["--algo.max_sampling_rounds", "0"], "algo.max_sampling_rounds must be at least 1"),
    (["--algo.reward", "random"], "algo.dynamic_sampling keeps groups by their rewards"),
])
def test_bad_dynamic_sampling_settings_get_one_sentence(capsys, tiny_args, argv, expected):
    assert main([*tiny_args, *ARGS, *argv]) == 2
    assert expected in capsys.readouterr().err
