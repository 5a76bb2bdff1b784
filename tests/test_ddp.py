"""Multi-process DDP on the CPU (gloo): SFT shards the data, CARFT gathers with gradients, a NaN
on one rank is skipped on both, dynamic sampling and DAPO's token count keep the ranks in step.
Every method's ranks agreeing, with LoRA too, is tested in tests/test_fsdp.py, beside FSDP2."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runs import scalars

ROOT = Path(__file__).resolve().parents[1]

# Lightning's DDP launcher re-runs this script for rank 1, so the recording callback lives in it.
SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import lightning as L
    from workflows.train import parse_config, train

    class RecordBatches(L.Callback):
        def __init__(self):
            self.seen = []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(batch["index"].tolist())
        def on_train_end(self, trainer, pl_module):
            with open(f"{sys.argv[1]}/seen{trainer.global_rank}.json", "w") as f:
                json.dump(self.seen, f)

    config, ckpt, _, _ = parse_config(sys.argv[2:])
    train(config, ckpt, callbacks=[RecordBatches()])
    """
)


DDP_ARGS = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def run_ddp(tmp_path: Path, name: str, script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``script`` (which Lightning re-runs for rank 1) with ``tmp_path`` and ``args``; it must succeed."""
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(path), str(tmp_path), *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_process_ddp_sft_shards_the_data(tiny_args, tmp_path):
    argv = ["--method", "sft", "--run_name", "ddp", "--trainer.max_steps", "4", "--trainer.val_every_n_steps", "4",
            *DDP_ARGS, *tiny_args]
    result = run_ddp(tmp_path, "ddp_sft", SCRIPT, argv)
    seen = [json.loads((tmp_path / f"seen{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    for step in range(4):
        assert not set(seen[0][step]) & set(seen[1][step]), f"both ranks trained on the same example at step {step}"
    assert "held-out accuracy" in result.stdout.lower()
    assert "train/loss" in scalars(tmp_path / "runs" / "ddp")


CARFT_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import lightning as L
    import torch
    from lightning_modules import carft
    from lightning_modules.distributed import gather_rows
    from workflows.train import parse_config, train

    out, mode = sys.argv[1], sys.argv[2]
    if mode == "blocked":
        # The authors' gather: other ranks' representations arrive without their gradients.
        def gather_without_grad(*parts):
            return [torch.cat([p, g[len(p):].detach()]) for p, g in zip(parts, gather_rows(*parts))]
        carft.gather_rows = gather_without_grad

    sample = carft.CARFTModule.rollout
    def uneven_rollout(self, batch):
        # Rank 1 keeps half of every response, so the ranks' response lengths differ.
        rollout = sample(self, batch)
        if self.global_rank == 1:
            keep = rollout.response_ids.size(1) // 2
            prompt = rollout.prompt_length
            rollout = dataclasses.replace(
                rollout,
                response_ids=rollout.response_ids[:, :keep],
                response_mask=rollout.response_mask[:, :keep],
                input_ids=rollout.input_ids[:, : prompt + keep],
                attention_mask=rollout.attention_mask[:, : prompt + keep],
            )
        self.lengths = self.__dict__.get("lengths", []) + [rollout.response_ids.size(1)]
        return rollout
    carft.CARFTModule.rollout = uneven_rollout

    class FirstGradient(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not hasattr(self, "saved"):
                self.saved = True
                grads = {n: p.grad.clone() for n, p in pl_module.policy.heads.named_parameters()}
                torch.save(grads, f"{out}/{mode}-grad{trainer.global_rank}.pt")
        def on_train_end(self, trainer, pl_module):
            with open(f"{out}/{mode}-lengths{trainer.global_rank}.json", "w") as f:
                json.dump(pl_module.lengths, f)

    config, ckpt, _, _ = parse_config(sys.argv[3:])
    train(config, ckpt, callbacks=[FirstGradient()])
    """
)


@pytest.mark.slow
def test_two_process_carft_gathers_representations_with_gradients(tiny_args, tmp_path):
    import torch

    for mode in ("with-grad", "blocked"):
        argv = ["--method", "carft", "--warmup_run", "null", "--run_name", mode, "--trainer.max_steps", "2",
                "--trainer.val_every_n_steps", "2", "--data.batch_size", "4", *DDP_ARGS, *tiny_args]
        run_ddp(tmp_path, "ddp_carft", CARFT_SCRIPT, [mode, *argv])
        lengths = [json.loads((tmp_path / f"{mode}-lengths{rank}.json").read_text()) for rank in (0, 1)]
        assert len(lengths[0]) == len(lengths[1]) == 2
        assert all(a != b for a, b in zip(*lengths)), f"the ranks' responses should differ in length: {lengths}"
    with_grad = torch.load(tmp_path / "with-grad-grad0.pt", weights_only=True)
    blocked = torch.load(tmp_path / "blocked-grad0.pt", weights_only=True)
    assert with_grad.keys() == blocked.keys()
    differs = [name for name in with_grad if not torch.allclose(with_grad[name], blocked[name], rtol=1e-4, atol=1e-7)]
    assert differs, "blocking the gathered gradients changed nothing: the other rank's samples carried no gradient"


NAN_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L
    import torch
    from workflows.train import parse_config, train

    class PoisonRankZero(L.Callback):
        # Rank 0's losses at step 1 are NaN; rank 1's are fine. Both ranks must skip alike.
        def setup(self, trainer, pl_module, stage):
            original = pl_module.loss
            def loss(rollout, scores):
                value, metrics = original(rollout, scores)
                if trainer.global_rank == 0 and pl_module.global_step == 1:
                    value = value * float("nan")
                return value, metrics
            pl_module.loss = loss
        def on_train_end(self, trainer, pl_module):
            weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save({"weights": weights, "skipped": pl_module.skipped_updates}, f"{sys.argv[1]}/rank{trainer.global_rank}.pt")

    config, ckpt, _, _ = parse_config(sys.argv[2:])
    train(config, ckpt, callbacks=[PoisonRankZero()])
    """
)


@pytest.mark.slow
def test_a_non_finite_update_on_one_rank_is_skipped_on_every_rank(tiny_args, tmp_path):
    argv = ["--method", "rlsc", "--warmup_run", "null", "--run_name", "nan", "--trainer.max_steps", "3", "--trainer.val_every_n_steps", "3",
            *DDP_ARGS, *tiny_args, "--data.batch_size", "2", "--algo.samples_per_prompt", "2", "--algo.eval_samples", "0", "--optim.lr", "1e-3"]
    run_ddp(tmp_path, "ddp_nan", NAN_SCRIPT, argv)
    import torch

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1
    for name, value in ranks[0]["weights"].items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value, ranks[1]["weights"][name]), f"ranks differ in {name}"
    assert dict(scalars(tmp_path / "runs" / "nan")["train/skipped_updates"])[2] == 1


WEIGHTS_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L
    import torch
    from workflows.train import parse_config, train

    class SaveWeights(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        def on_train_end(self, trainer, pl_module):
            weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save({"weights": weights, "start": self.start, "step": trainer.global_step}, f"{sys.argv[1]}/rank{trainer.global_rank}.pt")

    config, ckpt, _, _ = parse_config(sys.argv[2:])
    train(config, ckpt, callbacks=[SaveWeights()])
    """
)

@pytest.mark.slow
def test_dynamic_sampling_on_two_processes_does_not_hang_and_the_ranks_agree(tiny_args, tmp_path):
    """Only odd questions' groups carry a signal, so the ranks need different numbers of sampling
    rounds; each still trains on a full batch with the same number of updates."""
    import torch

    argv = ["--method", "grpo", "--warmup_run", "null", "--run_name", "dynamic", "--trainer.max_steps", "3", "--trainer.val_every_n_steps", "3",
            *DDP_ARGS, *tiny_args, "--data.batch_size", "2", "--algo.samples_per_prompt", "2", "--algo.ppo_epochs", "2", "--algo.minibatches", "2",
            "--algo.reward", "tests.rewards:odd_questions_differ", "--algo.dynamic_sampling", "true", "--optim.lr", "1e-3"]
    run_ddp(tmp_path, "ddp_dynamic", WEIGHTS_SCRIPT, argv)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), f"ranks differ in {name}"
    assert any(not torch.equal(v, ranks[0]["start"][n]) for n, v in ranks[0]["weights"].items()), "no weight moved"
    assert "train/frac_groups_filtered" in scalars(tmp_path / "runs" / "dynamic")


DAPO_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import lightning as L
    from lightning_modules import grpo
    from workflows.train import parse_config, train

    sample, score = grpo.GRPOModule.rollout, grpo.GRPOModule.score
    def uneven_rollout(self, batch):
        # Rank 1 keeps a quarter of every response, so the ranks hold different token counts.
        rollout = sample(self, batch)
        if self.global_rank == 1:
            keep = rollout.response_ids.size(1) // 4
            rollout = dataclasses.replace(
                rollout,
                response_ids=rollout.response_ids[:, :keep],
                response_mask=rollout.response_mask[:, :keep],
                input_ids=rollout.input_ids[:, : rollout.prompt_length + keep],
                attention_mask=rollout.attention_mask[:, : rollout.prompt_length + keep],
            )
        return rollout
    def recorded_score(self, rollout):
        # Each rank's own response tokens and the count that scoring gave the loss, per rollout.
        scores, metrics = score(self, rollout)
        self.__dict__.setdefault("seen", []).append([int(rollout.response_mask.sum()), scores.rollout_tokens])
        return scores, metrics
    grpo.GRPOModule.rollout, grpo.GRPOModule.score = uneven_rollout, recorded_score

    class SaveTokens(L.Callback):
        def on_train_end(self, trainer, pl_module):
            with open(f"{sys.argv[1]}/tokens{trainer.global_rank}.json", "w") as f:
                json.dump(pl_module.seen, f)

    config, ckpt, _, _ = parse_config(sys.argv[2:])
    train(config, ckpt, callbacks=[SaveTokens()])
    """
)


@pytest.mark.slow
def test_grpo_dapo_counts_the_rollouts_tokens_over_both_ranks(tiny_args, tmp_path):
    argv = ["--method", "grpo", "--warmup_run", "null", "--run_name", "dapo", "--trainer.max_steps", "2",
            "--trainer.val_every_n_steps", "2", *DDP_ARGS, *tiny_args, "--data.batch_size", "2", "--algo.samples_per_prompt", "2",
            "--algo.minibatches", "2", "--algo.loss_aggregation", "dapo", "--algo.kl_coef", "0", "--optim.lr", "1e-3"]
    run_ddp(tmp_path, "ddp_dapo", DAPO_SCRIPT, argv)
    seen = [json.loads((tmp_path / f"tokens{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2, seen
    for (own0, count0), (own1, count1) in zip(*seen):
        assert own0 != own1, "the ranks should hold different token counts"
        assert count0 == count1 == own0 + own1
