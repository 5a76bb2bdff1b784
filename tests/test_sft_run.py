"""SFT end to end on the tiny embedded model: it learns, logs, checkpoints, exports and resumes."""

import math

import torch
from transformers import AutoModelForCausalLM

from workflows.train import main, parse_config, train
from lightning_modules.policy import resolve_model_path
from tests.runs import StopAt, checkpoint_state, scalars


def test_sft_moves_every_parameter_and_logs_finite_metrics(tiny_args, tmp_path):
    argv = ["--method", "sft", "--run_name", "e2e", "--trainer.max_steps", "6", "--trainer.val_every_n_steps", "3",
            "--trainer.checkpoint_every_n_steps", "3", "--optim.weight_decay", "0", *tiny_args]
    config, _, _, _ = parse_config(argv)
    initial = AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model)).state_dict()
    assert main(argv) == 0
    run_dir = tmp_path / "runs" / "e2e"

    final = checkpoint_state(run_dir / "checkpoints" / "last.ckpt")
    lm_state = {k.removeprefix("policy.lm."): v for k, v in final.items() if k.startswith("policy.lm.")}
    trainable = dict(AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model)).named_parameters())
    for name in trainable:
        assert not torch.equal(lm_state[name], initial[name]), f"{name} did not change"

    logged = scalars(run_dir)
    for tag in ("train/loss", "train/lr", "perf/tokens_per_s", "val/accuracy", "val/response_length", "val/parse_rate"):
        assert tag in logged, f"{tag} was not logged"
    for tag, points in logged.items():
        assert all(math.isfinite(v) for _, v in points), f"{tag} has a non-finite value"
    # Lightning's x-axis is the 0-based batch index: validation after updates 3 and 6 sits at 2 and 5.
    assert [s for s, _ in logged["val/accuracy"]] == [0, 2, 5], "validated before training and every 3 steps"
    assert logged["train/loss"][-1][1] < logged["train/loss"][0][1]

    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"step000003.ckpt", "step000006.ckpt", "last.ckpt"}
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    for name, value in exported.state_dict().items():
        assert torch.equal(value, lm_state[name]), f"HF export differs from the checkpoint at {name}"


def test_resumed_run_equals_uninterrupted_run(tiny_args, tmp_path):
    common = ["--method", "sft", "--trainer.max_steps", "8", "--trainer.checkpoint_every_n_steps", "4",
              "--trainer.val_every_n_steps", "4", "--optim.warmup_steps", "2", *tiny_args]
    config, _, _, _ = parse_config(common + ["--run_name", "straight"])
    train(config)

    config, _, _, _ = parse_config(common + ["--run_name", "interrupted"])
    train(config, callbacks=[StopAt(4)])
    runs = tmp_path / "runs"
    assert checkpoint_state(runs / "interrupted" / "checkpoints" / "last.ckpt") is not None
    assert main(["--resume", str(runs / "interrupted"), "--runs_dir", str(runs)]) == 0

    straight = checkpoint_state(runs / "straight" / "checkpoints" / "last.ckpt")
    resumed = checkpoint_state(runs / "interrupted" / "checkpoints" / "last.ckpt")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)
    full, split = scalars(runs / "straight"), scalars(runs / "interrupted")
    assert [s for s, _ in split["train/loss"]] == [s for s, _ in full["train/loss"]], "one curve, no gap, no repeat"
    for (_, a), (_, b) in zip(full["train/loss"], split["train/loss"]):
        assert math.isclose(a, b, rel_tol=1e-5)
