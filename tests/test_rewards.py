"""Reward parts: each against values worked by hand, a user's function named on the command
line, and the refusals that keep a reward from being misused."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.config import ConfigError
from lightning_modules.rewards import (
    ConfidenceReward,
    MajorityVoteReward,
    PartialReward,
    RuleReward,
    check_reward_name,
    load_function_reward,
)
from lightning_modules.rollout import Rollout, Signals
from tests import rewards as user_rewards
from tests.runs import scalars
from workflows.train import main


def rollout(predictions, gold=None, group=2) -> Rollout:
    n = len(predictions)
    ids = torch.ones(n, 3, dtype=torch.long)
    return Rollout(
        input_ids=torch.ones(n, 5, dtype=torch.long), attention_mask=torch.ones(n, 5, dtype=torch.long),
        response_ids=ids, response_mask=torch.ones_like(ids), question=torch.arange(n) // group,
        texts=[f"answer {p}" for p in predictions], predictions=list(predictions), group=group,
        answer=None if gold is None else torch.tensor(gold, dtype=torch.float64),
    )


def test_rule_reward_is_one_a_tenth_or_zero():
    out = RuleReward()(rollout([3.0, 4.0, None, 2.999], gold=[3.0, 3.0, 3.0, 3.0]), Signals())
    assert out.values.tolist() == pytest.approx([1.0, 0.1, 0.0, 1.0])
    assert RuleReward().uses_labels


def test_partial_reward_rewrites_only_wrong_parsed_answers():
    cos = torch.tensor([0.5, -0.2, 0.9, 1.0])
    out = PartialReward()(rollout([3.0, 4.0, None, 5.0], gold=[3.0, 3.0, 3.0, 3.0]), Signals(cos_annotated=cos))
    # 0.1 * cos + 0.2 for the two wrong but parsed answers; 1 and 0 stay.
    assert out.values.tolist() == pytest.approx([1.0, 0.18, 0.0, 0.3])
    assert out.metrics["partial_rewards_changed"].item() == 2
    with pytest.raises(ValueError, match="cosine"):
        PartialReward()(rollout([3.0, 4.0], gold=[3.0, 3.0]), Signals())


def test_majority_vote_needs_no_label():
    # Groups of 3: (5, 5, 7) -> majority 5; (None, None, 2) -> majority 2.
    out = MajorityVoteReward()(rollout([5.0, 5.0, 7.0, None, None, 2.0], group=3), Signals())
    assert out.values.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert out.metrics["majority_share"].item() == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert not MajorityVoteReward().uses_labels


def test_confidence_reward_with_majority_and_format_bonus():
    s = torch.log(torch.tensor([0.5, 0.25, 0.1, 0.2]))
    r = rollout([1.0, 1.0, 2.0, None], group=4)
    plain = ConfidenceReward()(r, Signals(seq_logp=s)).values
    assert plain.tolist() == pytest.approx([0.5, 0.25, 0.1, 0.2])
    shaped = ConfidenceReward(majority_only=True, format_bonus=0.1)(r, Signals(seq_logp=s)).values
    assert shaped.tolist() == pytest.approx([0.6, 0.35, 0.1, -0.1])  # exp(s) * agrees, +-0.1 for an answer or none


def test_a_users_function_is_a_reward_part():
    part = load_function_reward("tests.rewards:answer_length", uses_labels=False)
    r = rollout([1.0, 22.0])
    out = part(r, Signals())
    assert out.values.tolist() == pytest.approx([-len("answer 1.0") / 100, -len("answer 22.0") / 100])
    assert out.metrics["mean_chars"].item() == pytest.approx((10 + 11) / 2)
    assert user_rewards.SEEN["rollout"] is r


@pytest.mark.parametrize("spec, expected", [("tests.rewards:nothing", "names no importable function"),
                                            ("no_such_module:f", "names no importable function"),
                                            ("tests.rewards:SEEN", "not callable")])
def test_a_function_that_cannot_be_found_is_refused_in_one_sentence(spec, expected):
    with pytest.raises(ConfigError, match=expected):
        load_function_reward(spec, uses_labels=False)


def test_a_function_returning_the_wrong_count_is_refused():
    part = load_function_reward("tests.rewards:alternating", uses_labels=False)
    part.function = lambda r: [1.0]
    with pytest.raises(ValueError, match="returned 1 rewards for 2 responses"):
        part(rollout([1.0, 2.0]), Signals())


def test_unknown_reward_names_are_refused():
    check_reward_name("rule", ("rule",))
    check_reward_name("tests.rewards:alternating", ("rule",))
    with pytest.raises(ConfigError, match="algo.reward must be one of rule"):
        check_reward_name("majority", ("rule",))


def test_ppo_trains_on_a_function_reward_named_on_the_command_line(tiny_args, tmp_path):
    argv = ["--method", "ppo", "--run_name", "fn", "--warmup_run", "null", "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2",
            "--data.batch_size", "4", "--algo.reward", "tests.rewards:answer_length", *tiny_args]
    assert main(argv) == 0
    logged = scalars(tmp_path / "runs" / "fn")
    assert "train/mean_chars" in logged and "train/reward" in logged
    assert all(math.isfinite(v) and v <= 0 for _, v in logged["train/reward"])


@pytest.mark.parametrize("method, extra, expected", [
    ("ppo", ["--algo.reward", "majority"], "algo.reward must be one of rule"),
    ("carft", ["--algo.reward", "tests.rewards:alternating"], "algo.partial_reward rewrites the rule reward"),
    ("rlsc", ["--algo.reward", "rule"], "algo.reward must be one of self_confidence, confidence, majority"),
    ("grpo", ["--algo.reward", "tests.rewards:missing"], "names no importable function"),
])
def test_bad_rewards_stop_the_run_with_one_sentence(capsys, tiny_args, method, extra, expected):
    assert main(["--method", method, "--warmup_run", "null", *extra, *tiny_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
