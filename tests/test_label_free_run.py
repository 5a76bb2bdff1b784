"""The label-free family end to end on the tiny embedded model: each method trains on its own
reward, logs it, and ends with the same weights whether the data's answers are right or wrong."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.synthetic import SyntheticConfig, generate_splits
from lightning_modules.policy import Policy, resolve_model_path
from datamodules.answers import answer_entropy
from lightning_modules.rewards import AnswerFrequencyReward, EntropyReward, SelfCertaintyReward
from lightning_modules.rollout import Signals
from tests.runs import checkpoint_state, scalars
from tests.test_rewards import rollout
from tests.test_rlsc_run import write_gsm8k
from workflows.train import main, parse_config

ARGS = ["--warmup_run", "null", "--data.batch_size", "2", "--algo.samples_per_prompt", "3", "--optim.warmup_steps", "0",
        "--optim.lr", "1e-2", "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2"]
METHODS = {"ttrl": [], "intuitor": [], "rent": [], "em_rl": ["--algo.entropy_reduction", "sum"], "empo": ["--algo.max_answer_entropy", "1"]}
LOGGED = {"ttrl": "train/majority_share", "intuitor": "train/self_certainty", "rent": "train/reward", "em_rl": "train/reward",
          "empo": "train/answer_entropy"}


def method_argv(label: str) -> list[str]:
    return ["--method", "rent" if label == "em_rl" else label, *ARGS, *METHODS[label]]


@pytest.mark.parametrize("label", list(METHODS))
def test_every_label_free_method_never_reads_a_label(tiny_args, tmp_path, monkeypatch, label):
    """No rollout carries an answer; right and wrong answers in the training file give the same
    weights; and the weights moved where the untrained model earns a varying reward (it never
    writes a readable answer, so the majority and frequency rewards are 0 for every sample)."""
    from lightning_modules.rl_base import RLModule

    seen = []
    sample = RLModule.rollout

    def spy(self, batch, draw=0):
        out = sample(self, batch, draw)
        seen.append((out.answer, out.correct, out.target_ids))
        return out

    monkeypatch.setattr(RLModule, "rollout", spy)
    splits = generate_splits(SyntheticConfig(num_train=40, num_val=8, num_test=8))
    val = write_gsm8k(tmp_path / "val.jsonl", splits["val"])
    states = []
    for name, answer in (("right", lambda r: r.answer), ("wrong", lambda r: r.answer + 7)):
        data = write_gsm8k(tmp_path / f"{name}.jsonl", splits["train"], answer)
        argv = [*method_argv(label), "--run_name", name, *tiny_args, "--data.path", data, "--data.val_path", val, "--data.test_path", val]
        assert main(argv) == 0
        states.append(checkpoint_state(tmp_path / "runs" / name / "checkpoints" / "last.ckpt"))
    assert seen and all(item == (None, None, None) for item in seen), "a label reached the training step"
    right, wrong = states
    for key in right:
        torch.testing.assert_close(wrong[key], right[key], rtol=0, atol=0, msg=key)
    if label in ("intuitor", "rent", "em_rl"):
        config = parse_config([*method_argv(label), *tiny_args])[0]
        initial = Policy.from_pretrained(resolve_model_path(config.model), config.model).state_dict()
        assert any(not torch.equal(initial[k], right[f"policy.{k}"]) for k in initial), "the run did not train"
    logged = scalars(tmp_path / "runs" / "right")
    assert LOGGED[label] in logged and "train/reward" in logged and "train/accuracy" not in logged
    # RLSC's confidence measures, logged by every member of the family (section 4.5).
    for tag in ("train/majority_share", "train/seq_confidence", "train/token_confidence", "train/entropy"):
        assert tag in logged, tag
    assert all(0 < v <= 1 for _, v in logged["train/token_confidence"]) and all(0 <= v <= 1 for _, v in logged["train/seq_confidence"])
    for tag, points in logged.items():
        assert all(math.isfinite(v) for _, v in points), tag


def test_distribution_rewards_read_their_signals():
    r = rollout([1.0, 2.0], group=2)
    signals = Signals(self_certainty=torch.tensor([0.5, 0.1]), entropy=torch.tensor([1.0, 2.0]), entropy_sum=torch.tensor([3.0, 8.0]))
    assert SelfCertaintyReward()(r, signals).values.tolist() == pytest.approx([0.5, 0.1])
    assert EntropyReward("mean")(r, signals).values.tolist() == [-1.0, -2.0]
    assert EntropyReward("sum")(r, signals).values.tolist() == [-3.0, -8.0]
    assert EntropyReward("sum").needs == ("entropy_sum",)


def test_answer_entropy_and_empos_filter_by_hand():
    # Group 1: answers 5, 5, 5, 7 -> entropy -(3/4 ln 3/4 + 1/4 ln 1/4); group 2: four different -> ln 4.
    predictions = [5.0, 5.0, 5.0, 7.0, 1.0, 2.0, None, 4.0]
    entropy = answer_entropy(predictions, 4)
    assert entropy == pytest.approx([-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), math.log(4)])
    out = AnswerFrequencyReward(max_entropy=0.75)(rollout(predictions, group=4), Signals())
    # The second group (entropy ln 4 > 0.75 ln 4) is filtered: every sample earns 0.
    assert out.values.tolist() == pytest.approx([0.75, 0.75, 0.75, 0.25, 0.0, 0.0, 0.0, 0.0])
    assert out.metrics["frac_groups_high_entropy"].item() == 0.5
    kept = AnswerFrequencyReward(max_entropy=1.0)(rollout(predictions, group=4), Signals()).values
    assert kept.tolist() == pytest.approx([0.75, 0.75, 0.75, 0.25, 0.25, 0.25, 0.0, 0.25])


@pytest.mark.parametrize("argv, expected", [
    (["--method", "rent", "--algo.entropy_reduction", "max"], "algo.entropy_reduction must be mean or sum"),
    (["--method", "empo", "--algo.max_answer_entropy", "0"], "algo.max_answer_entropy must lie in (0, 1]"),
    (["--method", "ttrl", "--algo.reward", "rule"], "algo.reward must be one of majority, random, format"),
])
def test_bad_label_free_settings_get_one_sentence(capsys, tiny_args, argv, expected):
    assert main([*argv, "--warmup_run", "null", *tiny_args]) == 2
    assert expected in capsys.readouterr().err
