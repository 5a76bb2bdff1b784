"""Nothing lost: exact resume for every method, atomic checkpoints, refused resumes, and the
guard that skips non-finite updates."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks import AtomicCheckpointIO
from workflows.train import main, parse_config, train
from tests.conftest import ROOT
from tests.runs import StopAt, scalars

STRATEGIES = ROOT / "configs" / "strategies"

RL_ARGS = ["--warmup_run", "null", "--data.batch_size", "4", "--optim.warmup_steps", "2", "--optim.lr", "1e-3"]
METHOD_ARGS = {
    "sft": ["--optim.warmup_steps", "2", "--optim.lr", "3e-3"],
    "ppo": RL_ARGS + ["--algo.minibatches", "2"],
    "carft": RL_ARGS + ["--algo.minibatches", "2"],
    "grpo": RL_ARGS + ["--data.batch_size", "2", "--algo.samples_per_prompt", "2", "--algo.minibatches", "2"],
    "rlsc": RL_ARGS + ["--data.batch_size", "2", "--algo.samples_per_prompt", "2", "--algo.eval_samples", "2"],
}


def full_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][name], b["state_dict"][name], rtol=0, atol=0, msg=name)
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for key in sa["state"]:
            for field in sa["state"][key]:
                torch.testing.assert_close(sa["state"][key][field], sb["state"][key][field], rtol=0, atol=0)
        assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["ReasoningDataModule"] == b["ReasoningDataModule"]


@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tiny_args, tmp_path, method):
    common = ["--method", method, "--trainer.max_steps", "4", "--trainer.checkpoint_every_n_steps", "2",
              "--trainer.val_every_n_steps", "2", *tiny_args, *METHOD_ARGS[method]]
    config, _, _, _ = parse_config(common + ["--run_name", "straight"])
    train(config)
    config, _, _, _ = parse_config(common + ["--run_name", "interrupted"])
    train(config, callbacks=[StopAt(3)])  # a step past the checkpoint at 2: its points must not stay twice
    runs = tmp_path / "runs"
    assert main(["--resume", str(runs / "interrupted"), "--runs_dir", str(runs)]) == 0

    assert_same_state(full_checkpoint(runs / "straight" / "checkpoints" / "last.ckpt"),
                      full_checkpoint(runs / "interrupted" / "checkpoints" / "last.ckpt"))
    full, split = scalars(runs / "straight"), scalars(runs / "interrupted")
    for tag in full:
        if tag.startswith("perf/") or tag.endswith("_s"):
            continue  # timings (perf/*, train/lcs_s)
        # Sorted: TensorBoard orders event files by name, which is not always the order written.
        ours, theirs = sorted(split[tag]), sorted(full[tag])
        assert [s for s, _ in ours] == [s for s, _ in theirs], f"{tag}: one curve, no gap, no repeat"
        for (_, a), (_, b) in zip(theirs, ours):
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), tag


def test_a_write_that_dies_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def dies_half_way(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no stray temporary file"


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def two_runs(tiny_args, tmp_path):
    """A 2-step SFT run and a 2-step PPO run, finished."""
    for method in ("sft", "ppo"):
        config, _, _, _ = parse_config(["--method", method, "--run_name", method, "--trainer.max_steps", "2",
                                        "--trainer.val_every_n_steps", "2", *tiny_args, *METHOD_ARGS[method]])
        train(config)
    return tmp_path / "runs"


class Payload:
    """Pickles as a call to os.system: what a malicious checkpoint would carry."""

    def __reduce__(self):
        import os

        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("case, expected", [
    ("truncated", "is not a readable checkpoint"),
    ("pickled code", "is not a readable checkpoint"),
    ("other method", "was written by --method sft, not ppo"),
    ("other model", "holds a different model than this run builds"),
    ("not a checkpoint", "is not a readable checkpoint"),
])
def test_a_resume_that_cannot_work_says_why_and_changes_nothing(capsys, two_runs, tmp_path, case, expected):
    runs, ckpt = two_runs, two_runs / "ppo" / "checkpoints" / "last.ckpt"
    argv = ["--resume", str(runs / "ppo"), "--runs_dir", str(runs), "--trainer.max_steps", "4"]
    if case == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif case == "pickled code":
        state = full_checkpoint(ckpt)
        state["callbacks"] = Payload()
        torch.save(state, tmp_path / "evil.ckpt")
        argv += ["--ckpt_path", str(tmp_path / "evil.ckpt")]
    elif case == "other method":
        argv += ["--ckpt_path", str(runs / "sft" / "checkpoints" / "last.ckpt")]
    elif case == "other model":
        state = full_checkpoint(ckpt)
        state["method"] = "ppo"
        state["state_dict"]["policy.lm.model.embed_tokens.weight"] = torch.zeros(3, 3)
        torch.save(state, tmp_path / "other.ckpt")
        argv += ["--ckpt_path", str(tmp_path / "other.ckpt")]
    else:
        (tmp_path / "notes.ckpt").write_text("not a checkpoint")
        argv += ["--ckpt_path", str(tmp_path / "notes.ckpt")]
    before = tree_digest(runs / "ppo")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err[-1]
    assert tree_digest(runs / "ppo") == before


class Poison(L.Callback):
    """Makes every loss of the chosen steps NaN, as a numerical blow-up would."""

    def __init__(self, module_cls, steps: set[int] | None) -> None:
        self.steps, self.module_cls = steps, module_cls

    def setup(self, trainer, pl_module, stage) -> None:
        original = pl_module.loss if hasattr(pl_module, "loss") else None
        poison = self

        if original is not None:  # RL: the minibatch loss
            def loss(rollout, scores):
                value, metrics = original(rollout, scores)
                bad = poison.steps is None or pl_module.global_step in poison.steps
                return (value * float("nan") if bad else value), metrics
            pl_module.loss = loss
        else:  # SFT: the training step's loss
            step = pl_module.training_step

            def training_step(batch, batch_idx):
                value = step(batch, batch_idx)
                bad = poison.steps is None or pl_module.global_step in poison.steps
                return value * float("nan") if bad else value
            pl_module.training_step = training_step


class Trace(L.Callback):
    """The trainable parameters and optimizer moments after every training step."""

    def __init__(self) -> None:
        self.params, self.moments = [], []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad})
        state = trainer.optimizers[0].state
        self.moments.append({id(p): {k: v.clone() for k, v in s.items()} for p, s in state.items()})


# RLSC stands for every RL method (the guard is in their shared update loop): on the untrained
# tiny model PPO and GRPO rewards are all 0, so their gradients are 0 and nothing would move.
@pytest.mark.parametrize("method", ["sft", "rlsc"])
def test_a_non_finite_update_is_skipped_counted_and_training_goes_on(tiny_args, tmp_path, method):
    config, _, _, _ = parse_config(["--method", method, "--run_name", "nan", "--trainer.max_steps", "4",
                                    "--trainer.val_every_n_steps", "4", *tiny_args, *METHOD_ARGS[method]])
    trace = Trace()
    train(config, callbacks=[Poison(None, {2}), trace])  # the third step's updates are all NaN
    before, after = trace.params[1], trace.params[2]
    assert all(torch.equal(before[n], after[n]) for n in before), "the poisoned step changed no weight"
    assert trace.moments[1].keys() == trace.moments[2].keys()
    for key in trace.moments[1]:
        for field, value in trace.moments[1][key].items():
            assert torch.equal(value, trace.moments[2][key][field]), "nor any optimizer moment"
    assert any(not torch.equal(after[n], trace.params[3][n]) for n in after), "the next step trained again"
    for n in after:
        assert torch.isfinite(trace.params[3][n]).all()
    logged = dict(scalars(tmp_path / "runs" / "nan")["train/skipped_updates"])
    updates = 1  # SFT: one per step; RLSC: ppo_epochs 1 x minibatches 1
    assert logged[1] == 0 and logged[2] == updates and logged[3] == updates


def test_a_diverged_run_stops_with_one_sentence_and_exit_1(capsys, tiny_args, tmp_path, monkeypatch):
    from workflows import train as run

    monkeypatch.setattr(run, "build_trainer", _with_callback(run.build_trainer, Poison(None, None)))
    code = main(["--method", "ppo", "--run_name", "diverged", "--trainer.max_steps", "6",
                 "--trainer.max_skipped_updates", "3", *tiny_args, *METHOD_ARGS["ppo"]])  # 4 updates a step
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "3 optimizer updates in a row had a non-finite loss or gradient" in err[-1]


def _with_callback(build, callback):
    def build_with(config, run_dir, callbacks=(), *args, **kwargs):
        return build(config, run_dir, [*callbacks, callback], *args, **kwargs)
    return build_with


@pytest.mark.parametrize("argv, expected", [
    (["--method", "grpo", "--algo.samples_per_prompt", "1"], "algo.samples_per_prompt must be at least 2"),
    (["--method", "rlsc", "--algo.temperature", "0"], "algo.temperature must be positive"),
    (["--method", "sft", "--trainer.accelerator", "gpu"], "trainer settings cannot run here"),
    (["--method", "sft", "--trainer.strategy", "deepspeed_stage_2"], "trainer.strategy deepspeed_stage_2 is not supported"),
    *[(["--method", "sft", "--config", str(STRATEGIES / f"{name}.yaml")], "trainer settings cannot run here")
      for name in ("ddp", "fsdp")],
    (["--method", "grpo", "--trainer.strategy", "fsdp_cpu_offload"], "trainer.strategy fsdp_cpu_offload is not supported; fsdp (FSDP2"),
    (["--method", "sft", "--trainer.max_skipped_updates", "0"], "trainer.max_skipped_updates must be positive"),
    (["--method", "ppo", "--trainer.precision", "16-mixed"], "RL methods clip gradients by hand"),
    (["--method", "rlsc", "--data.batch_size", "2", "--algo.minibatches", "3"], "algo.minibatches (3) is more than the questions of a rollout (2)"),
    (["--method", "ppo", "--trainer.max_new_tokens", "400"], "data.max_prompt_tokens (256) + trainer.max_new_tokens (400) is more than the model's context of 512"),
])
def test_impossible_settings_stop_before_a_model_is_loaded(capsys, tiny_args, monkeypatch, argv, expected):
    from lightning_modules import base

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(base.Policy, "from_pretrained", no_model)
    assert main([*tiny_args, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err[-1]
