"""FSDP2 on two CPU processes (gloo): every method ends where DDP ends from the same seed
(and DDP's two ranks agree), with the ranks' responses of different lengths; the weights are
sharded; a sharded resume after SIGKILL or SIGTERM is bit-exact; a resume on another world
size or strategy is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lightning_modules.sharding import is_sharded_checkpoint, load_sharded_checkpoint
from tests.test_preemption import signal_after_first_checkpoint, start
from tests.test_resume import assert_same_state

ROOT = Path(__file__).resolve().parents[1]

# torchrun starts both processes, which then train every run of argv[2] (a JSON list of
# argument lists) one after the other in the same process group. Rank 1 decodes at most half
# the tokens rank 0 does, so the ranks' responses differ in length and their sampling loops
# run different numbers of forward passes.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    from lightning_modules import generation
    from lightning_modules.sharding import full_state_dict, is_sharded
    from workflows.train import close_process_group, parse_config, train

    sample = generation.sample_with_static_cache
    def uneven(lm, prompt_ids, prompt_mask, max_new_tokens, *args, **kwargs):
        rank = torch.distributed.get_rank()
        tokens = sample(lm, prompt_ids, prompt_mask, max_new_tokens // (1 + rank), *args, **kwargs)
        SHARDED.setdefault("lengths", []).append(tokens.size(1))
        SHARDED["sampled_in"] = str(next(lm.parameters()).dtype)  # the weights the sampler ran on
        return tokens
    generation.sample_with_static_cache = uneven
    SHARDED = {}

    def weights(module):
        if is_sharded(module.policy):
            SHARDED["sharded"] = True
            return full_state_dict(module)  # every rank takes part; rank 0 receives
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    class SaveWeights(L.Callback):
        def __init__(self, out):
            self.out = out
        def on_train_start(self, trainer, pl_module):
            self.start = weights(pl_module)
            shard = next(pl_module.policy.lm.parameters())
            SHARDED["local_rows"] = shard.to_local().size(0) if hasattr(shard, "to_local") else shard.size(0)
        def on_train_end(self, trainer, pl_module):
            end = weights(pl_module)
            record = {"start": self.start, "end": end, "step": trainer.global_step, **SHARDED}
            torch.save(record, f"{self.out}.rank{trainer.global_rank}.pt")
            SHARDED.clear()

    out = sys.argv[1]
    for name, argv in json.loads(sys.argv[2]):
        config, ckpt, _, _ = parse_config(argv)
        train(config, ckpt, callbacks=[SaveWeights(f"{out}/{name}")])
    close_process_group(wait=True)
    """
)

EVERY_METHOD = {
    "sft": ["--data.batch_size", "2"],
    "ppo": ["--data.batch_size", "2", "--algo.minibatches", "2", "--algo.reward", "tests.rewards:alternating"],
    "carft": ["--data.batch_size", "2"],
    "grpo": ["--data.batch_size", "1", "--algo.samples_per_prompt", "2", "--algo.reward", "tests.rewards:alternating"],
    "rlsc": ["--data.batch_size", "1", "--algo.samples_per_prompt", "2", "--algo.eval_samples", "0"],
    "ttrl": ["--data.batch_size", "1", "--algo.samples_per_prompt", "2", "--algo.reward", "tests.rewards:alternating"],
    "intuitor": ["--data.batch_size", "1", "--algo.samples_per_prompt", "2"],
    "rent": ["--data.batch_size", "1", "--algo.samples_per_prompt", "2"],
    "empo": ["--data.batch_size", "1", "--algo.samples_per_prompt", "2", "--algo.max_answer_entropy", "1", "--algo.reward", "tests.rewards:alternating"],
}
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
"""FSDP2 reduce-scatters where DDP all-reduces, so sums run in another order: after two AdamW
steps at lr 1e-3 the weights agree to this, not bit for bit."""


def torchrun(tmp_path: Path, runs: list[tuple[str, list[str]]]) -> None:
    script = tmp_path / "runs_in_one_group.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(tmp_path), json.dumps(runs)]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_every_method_under_fsdp2_ends_with_the_weights_it_ends_with_under_ddp(tiny_args, tmp_path):
    runs = []
    for method, extra in EVERY_METHOD.items():
        for strategy in ("ddp", "fsdp"):
            argv = ["--method", method, "--run_name", f"{method}-{strategy}", "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2",
                    "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", strategy, *tiny_args, *extra,
                    "--optim.lr", "1e-3", *(["--warmup_run", "null"] if method != "sft" else [])]
            runs.append((f"{method}-{strategy}", argv))
    lora = ["--method", "carft", "--warmup_run", "null", *EVERY_METHOD["carft"], "--model.lora.r", "4", "--algo.kl_coef", "0.05"]
    for strategy in ("ddp", "fsdp"):
        runs.append((f"lora-{strategy}", ["--run_name", f"lora-{strategy}", *lora, "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2",
                                          "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", strategy, *tiny_args, "--optim.lr", "1e-3"]))
    for strategy in ("ddp", "fsdp"):  # gradient checkpointing, as configs/real trains 7B models
        runs.append((f"checkpointed-{strategy}", ["--run_name", f"checkpointed-{strategy}", "--method", "ppo", "--warmup_run", "null",
                                                  *EVERY_METHOD["ppo"], "--model.gradient_checkpointing", "true", "--trainer.max_steps", "2",
                                                  "--trainer.val_every_n_steps", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                                                  "--trainer.strategy", strategy, *tiny_args, "--optim.lr", "1e-3"]))
    runs.append(("adapters-fsdp", ["--run_name", "adapters-fsdp", *lora, "--model.lora.export", "adapter", "--trainer.max_steps", "2",
                                   "--trainer.val_every_n_steps", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                                   "--trainer.strategy", "fsdp", *tiny_args, "--optim.lr", "1e-3"]))
    runs.append(("bf16-fsdp", ["--run_name", "bf16-fsdp", "--method", "grpo", "--warmup_run", "null", *EVERY_METHOD["grpo"], "--trainer.max_steps", "2",
                               "--trainer.val_every_n_steps", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "fsdp",
                               "--trainer.precision", "bf16-mixed", *tiny_args, "--optim.lr", "1e-3"]))
    runs.append(("bf16true-fsdp", ["--run_name", "bf16true-fsdp", "--method", "carft", "--warmup_run", "null", *EVERY_METHOD["carft"],
                                   "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2", "--trainer.accelerator", "cpu",
                                   "--trainer.devices", "2", "--trainer.strategy", "fsdp", "--trainer.precision", "bf16-true", *tiny_args,
                                   "--optim.lr", "1e-3"]))
    torchrun(tmp_path, runs)
    for method in [*EVERY_METHOD, "lora", "checkpointed"]:
        ddp, fsdp = (torch.load(tmp_path / f"{method}-{s}.rank0.pt", weights_only=True) for s in ("ddp", "fsdp"))
        assert ddp["step"] == fsdp["step"] == 2
        assert fsdp.get("sharded") and not ddp.get("sharded")
        assert fsdp["local_rows"] * 2 == ddp["local_rows"], "FSDP2 should keep half of each weight's rows per rank"
        lengths = [torch.load(tmp_path / f"{method}-fsdp.rank{r}.pt", weights_only=True)["lengths"] for r in (0, 1)]
        if method != "sft":
            assert all(a != b for a, b in zip(*lengths)), f"{method}: the ranks' responses should differ in length: {lengths}"
        ddp1 = torch.load(tmp_path / f"{method}-ddp.rank1.pt", weights_only=True)
        for name, value in ddp["end"].items():  # DDP's ranks sampled differently and still agree
            assert torch.equal(value, ddp1["end"][name]), f"{method}: the DDP ranks differ in {name}"
        end, start = fsdp["end"], ddp["start"]
        assert end.keys() <= ddp["end"].keys()
        moved = [name for name in end if not torch.equal(ddp["end"][name], start[name])]
        assert moved, f"{method}: no weight moved under DDP"
        for name, value in end.items():
            torch.testing.assert_close(value, ddp["end"][name], **TOLERANCE, msg=f"{method}: {name} differs between FSDP2 and DDP")
            torch.testing.assert_close(fsdp["start"][name], start[name], rtol=0, atol=0, msg=f"{method}: {name} started elsewhere")

    # With LoRA the base stays as loaded and only adapters and heads move, under both.
    for strategy in ("ddp", "fsdp"):
        lora = torch.load(tmp_path / f"lora-{strategy}.rank0.pt", weights_only=True)
        moved = {n for n, v in lora["end"].items() if not torch.equal(v, lora["start"][n])}
        assert any("lora_" in n for n in moved) and all("lora_" in n or n.startswith("policy.heads.") for n in moved), sorted(moved)[:3]
    # Under bf16-mixed the sampler ran on gathered bfloat16 weights; the master weights stay float32.
    bf16 = torch.load(tmp_path / "bf16-fsdp.rank0.pt", weights_only=True)
    assert bf16["sampled_in"] == "torch.bfloat16" and fsdp["sampled_in"] == "torch.float32"
    assert all(v.dtype == torch.float32 for v in bf16["end"].values())
    # Under bf16-true the sharded weights themselves are bfloat16, and they train.
    true = torch.load(tmp_path / "bf16true-fsdp.rank0.pt", weights_only=True)
    assert all(v.dtype == torch.bfloat16 and torch.isfinite(v).all() for v in true["end"].values())
    assert any(not torch.equal(v, true["start"][n]) for n, v in true["end"].items())
    # The Hugging Face exports hold the final weights, gathered whole (adapters merged with LoRA).
    from transformers import AutoModelForCausalLM

    for name in ("grpo-fsdp", "lora-fsdp"):
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / name / "hf").state_dict()
        ddp_name = name.replace("fsdp", "ddp")
        reference = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / ddp_name / "hf").state_dict()
        assert exported.keys() == reference.keys()
        for key, value in exported.items():
            torch.testing.assert_close(value, reference[key], **TOLERANCE, msg=f"{name}: exported {key}")
    # With adapters_only the export is peft's adapter files, holding the trained adapters.
    from safetensors.torch import load_file

    adapters = load_file(tmp_path / "runs" / "adapters-fsdp" / "hf" / "adapter_model.safetensors")
    trained = {n: v for n, v in torch.load(tmp_path / "adapters-fsdp.rank0.pt", weights_only=True)["end"].items() if "lora_" in n}
    assert adapters and len(adapters) == len(trained)
    for name, value in adapters.items():
        match = [n for n in trained if n.replace(".default", "").endswith(name.removeprefix("base_model.model."))]
        assert len(match) == 1 and torch.equal(value, trained[match[0]]), name
    grpo = torch.load(tmp_path / "grpo-fsdp.rank0.pt", weights_only=True)["end"]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "grpo-fsdp" / "hf").state_dict()
    assert all(torch.equal(value, grpo[f"policy.lm.{key}"]) for key, value in exported.items())


STEPS = 9  # a multiple of the checkpoint interval: last.ckpt holds the final state
FSDP_ARGS = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "fsdp"]


def whole(path: Path) -> dict:
    assert is_sharded_checkpoint(path), f"{path} is not a sharded checkpoint"
    return load_sharded_checkpoint(path)


@pytest.mark.slow
def test_a_sharded_resume_after_sigkill_or_sigterm_is_bit_exact(tiny_args, tmp_path):
    runs = tmp_path / "runs"
    common = ["--method", "grpo", "--warmup_run", "null", "--trainer.max_steps", str(STEPS), "--trainer.checkpoint_every_n_steps", "3",
              "--trainer.val_every_n_steps", str(STEPS), *FSDP_ARGS, *tiny_args, "--data.batch_size", "2", "--algo.samples_per_prompt", "2",
              "--algo.minibatches", "2", "--algo.reward", "tests.rewards:alternating", "--optim.lr", "1e-3"]
    straight = start(common + ["--run_name", "straight"])
    assert straight.wait(timeout=900) == 0, straight.stderr.read()[-3000:]
    expected = whole(runs / "straight" / "checkpoints" / "last.ckpt")
    assert expected["global_step"] == STEPS and expected["world_size"] == 2

    # SIGKILL to both processes once the first checkpoint exists: no handler runs.
    killed = start(common + ["--run_name", "killed"])
    checkpoints = runs / "killed" / "checkpoints"
    while not (checkpoints / "last.ckpt").exists():
        assert killed.poll() is None, killed.stderr.read()[-3000:]
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert whole(checkpoints / "last.ckpt")["global_step"] < STEPS

    # SIGTERM to the launching process: both ranks stop after the same step and write last.ckpt.
    stopped = start(common + ["--run_name", "stopped"])
    err = signal_after_first_checkpoint(stopped, runs / "stopped" / "checkpoints", signal.SIGTERM)
    assert stopped.returncode == 143, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("stopped by SIGTERM after step ")], err[-3000:]

    for name in ("killed", "stopped"):
        resumed = start(["--resume", str(runs / name), "--runs_dir", str(runs)])
        assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-3000:]
        assert_same_state(expected, whole(runs / name / "checkpoints" / "last.ckpt"))

    # Another world size, or another strategy, is refused before anything changes on disk.
    before = {p: p.stat().st_mtime_ns for p in (runs / "stopped").rglob("*")}
    for override, sentence in ((["--trainer.devices", "1"], "was written by 2 processes and this run has 1"),
                                (["--trainer.strategy", "ddp"], "is sharded (written under trainer.strategy fsdp); resume it with")):
        refused = start(["--resume", str(runs / "stopped"), "--runs_dir", str(runs), *override])
        _, err = refused.communicate(timeout=600)
        assert refused.returncode == 2 and sentence in err, err[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (runs / "stopped").rglob("*")} == before

    # evaluate.py reads a sharded checkpoint as it reads a single file.
    from workflows.evaluate import load_model

    loaded = load_model(str(runs / "killed" / "checkpoints" / "last.ckpt"))
    for name, value in loaded.policy.lm.state_dict().items():
        assert torch.equal(value, expected["state_dict"][f"policy.lm.{name}"]), name


class Payload:
    """Unpickling this runs a command: what a hostile checkpoint index could hold."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_sharded_checkpoint_whose_index_holds_code_is_refused_unrun(tmp_path, monkeypatch):
    import pickle

    from workflows.train import UsageError, read_checkpoint

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    torch.save({"global_step": 3}, folder / "meta.pt")
    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UsageError, match="is not a readable checkpoint .*posix.system is not part of a checkpoint index"):
        read_checkpoint(str(folder))
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_moved_aside_for_its_successor_is_put_back(tmp_path):
    from lightning_modules.sharding import recover_checkpoint, staging_names

    path = tmp_path / "last.ckpt"
    staging, previous = staging_names(path)
    previous.mkdir()
    (previous / "meta.pt").write_text("step 3")
    staging.mkdir()  # the successor, not yet renamed into place
    recover_checkpoint(path)
    assert (path / "meta.pt").read_text() == "step 3" and not previous.exists()
    recover_checkpoint(path)  # nothing to do once it is in place
    assert (path / "meta.pt").read_text() == "step 3"


def test_a_resume_on_another_world_size_is_refused_before_anything_changes(tiny_args, tmp_path, capsys):
    from workflows.train import main

    argv = ["--method", "sft", "--run_name", "one", "--trainer.max_steps", "1", "--trainer.val_every_n_steps", "1",
            "--trainer.checkpoint_every_n_steps", "1", *tiny_args]
    assert main(argv) == 0
    run = tmp_path / "runs" / "one"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["world_size"] == 1
    checkpoint["world_size"] = 2  # as if two processes had written it
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    assert main(["--resume", str(run), "--runs_dir", str(tmp_path / "runs"), "--trainer.max_steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "was written by 2 processes and this run has 1" in err[-1], err[-1]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
