"""GRPO's variants as options: clip-higher, GSPO's sequence ratio, the KL estimator, an entropy
bonus, DAPO's overlong penalty and overlong filtering. Each trains and logs; the math is in
tests/test_label_free_losses.py and tests/test_grpo_losses.py."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.losses import kl_k2
from tests.runs import scalars
from workflows.train import main

ARGS = ["--method", "grpo", "--warmup_run", "null", "--data.batch_size", "2", "--algo.samples_per_prompt", "2", "--trainer.max_steps", "2",
        "--trainer.val_every_n_steps", "2", "--optim.lr", "1e-2", "--algo.reward", "tests.rewards:alternating"]


def test_k2_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert kl_k2(logp, ref).tolist() == pytest.approx([0.125, 0.0])


@pytest.mark.parametrize("name, options, logged", [
    ("dapo", ["--algo.clip_eps_high", "0.28", "--algo.overlong_buffer", "4", "--algo.mask_truncated", "true",
              "--algo.loss_aggregation", "dapo", "--algo.kl_estimator", "k2", "--algo.entropy_coef", "0.01"],
     ["train/clip_ratio/low", "train/clip_ratio/high", "train/overlong_share", "train/kl"]),
    ("gspo", ["--algo.importance", "sequence", "--algo.kl_estimator", "k1", "--algo.ppo_epochs", "2"], ["train/clip_frac", "train/kl"]),
])
def test_grpo_variants_train_and_log(tiny_args, tmp_path, name, options, logged):
    assert main([*ARGS, "--run_name", name, *options, *tiny_args]) == 0
    curves = scalars(tmp_path / "runs" / name)
    for tag in logged:
        assert tag in curves, tag
    for tag, points in curves.items():
        assert all(math.isfinite(v) for _, v in points), tag
    assert all(0.0 <= v <= 1.0 for _, v in curves["train/overlong_share"])


def test_truncated_responses_are_left_out_when_asked(tiny_args, tmp_path):
    """The untrained tiny model never ends a response within 4 tokens: with mask_truncated every
    response is left out, so no gradient reaches the policy and its weights stay."""
    argv = [*ARGS, "--run_name", "masked", "--algo.mask_truncated", "true", "--algo.kl_coef", "0", "--trainer.max_new_tokens", "4", *tiny_args]
    assert main(argv) == 0
    assert all(v == 1.0 for _, v in scalars(tmp_path / "runs" / "masked")["train/overlong_share"])
    assert all(v == 0.0 for _, v in scalars(tmp_path / "runs" / "masked")["train/grad_norm"])


@pytest.mark.parametrize("argv, expected", [
    (["--algo.importance", "tokens"], "algo.importance must be token or sequence"),
    (["--algo.kl_estimator", "k4"], "algo.kl_estimator must be k1, k2 or k3"),
    (["--algo.overlong_buffer", "-1"], "algo.overlong_buffer must be >= 0"),
    (["--algo.clip_eps_high", "0"], "algo.clip_eps_high must be positive"),
])
def test_bad_variant_values_get_one_sentence(capsys, tiny_args, argv, expected):
    assert main([*ARGS, *argv, *tiny_args]) == 2
    assert expected in capsys.readouterr().err
