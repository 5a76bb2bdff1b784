"""PPO and CARFT end to end on the tiny embedded model: updates, logging, checkpoints, resume."""

import math
import shutil

import lightning as L
import pytest
import torch

from workflows.train import main, parse_config, train
from tests.runs import StopAt, checkpoint_state, scalars

# Start from the tiny embedded model itself (configs/<method>.yaml would train an SFT warm-up first).
RL_ARGS = ["--warmup_run", "null", "--data.batch_size", "4", "--optim.warmup_steps", "0", "--optim.weight_decay", "0", "--optim.lr", "1e-3"]


class Snapshot(L.Callback):
    """Keeps the trainable parameters and the reference policy at the start and the end of fit."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        self.reference_start = {n: p.detach().clone() for n, p in pl_module.reference.named_parameters()}

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        self.reference_end = {n: p.detach().clone() for n, p in pl_module.reference.named_parameters()}
        self.module = pl_module


@pytest.mark.parametrize("head", ["shared", "separate", "mlp"])
def test_one_carft_step_moves_every_trainable_parameter_but_not_the_reference(tiny_args, tmp_path, head):
    argv = ["--method", "carft", "--run_name", "one", "--trainer.max_steps", "1", "--algo.head", head, *RL_ARGS, *tiny_args]
    config, _, _, _ = parse_config(argv)
    snapshot = Snapshot()
    train(config, callbacks=[snapshot])
    assert any(n.startswith("policy.heads.cot.") for n in snapshot.start), "the CoT head is trainable"
    for name, before in snapshot.start.items():
        assert not torch.equal(before, snapshot.end[name]), f"{name} did not change after one CARFT step"
    for name, before in snapshot.reference_start.items():
        assert torch.equal(before, snapshot.reference_end[name]), f"reference {name} changed"
    assert not any(p.requires_grad for p in snapshot.module.reference.parameters())


def test_carft_checkpoint_holds_one_policy_its_head_and_optimizer_state(tiny_args, tmp_path):
    argv = ["--method", "carft", "--run_name", "ckpt", "--trainer.max_steps", "2", "--trainer.checkpoint_every_n_steps", "2",
            *RL_ARGS, *tiny_args]
    config, _, _, _ = parse_config(argv)
    snapshot = Snapshot()
    train(config, callbacks=[snapshot])
    checkpoint = torch.load(tmp_path / "runs" / "ckpt" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trainable = sum(p.numel() for p in snapshot.end.values())
    reference = sum(p.numel() for p in snapshot.reference_end.values())
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    assert not any("reference" in k for k in checkpoint["state_dict"]), "the reference policy must not be saved"
    # One policy plus its head (tied embeddings are stored once per name, as in the module).
    assert sum(v.numel() for v in weights.values()) == sum(p.numel() for p in snapshot.module.policy.state_dict().values())
    assert sum(v.numel() for v in weights.values()) < trainable + 0.5 * reference, "a second policy was saved"
    moments = sum(t.numel() for state in checkpoint["optimizer_states"][0]["state"].values() for t in state.values() if t.dim() > 0)
    assert moments == 2 * trainable, "AdamW keeps two moments per trainable parameter, nothing for the reference"


@pytest.mark.parametrize("method", ["ppo", "carft", "grpo"])
def test_rl_run_logs_finite_metrics_and_checkpoints_rollout_steps(tiny_args, tmp_path, method):
    argv = ["--method", method, "--run_name", "e2e", "--trainer.max_steps", "4", "--trainer.val_every_n_steps", "2",
            "--trainer.checkpoint_every_n_steps", "2", "--algo.minibatches", "2", "--algo.ppo_epochs", "2", *RL_ARGS, *tiny_args]
    if method in ("grpo", "carft"):
        argv += ["--algo.samples_per_prompt", "2"]  # CARFT scores each annotation once for its samples
    assert main(argv) == 0
    run_dir = tmp_path / "runs" / "e2e"
    logged = scalars(run_dir)
    expected = ["train/reward", "train/accuracy", "train/kl", "train/entropy", "train/response_length", "train/clip_frac",
                "train/grad_norm", "train/lr", "perf/generate_s", "perf/score_s", "perf/update_s", "perf/tokens_per_s", "val/accuracy", "test/accuracy"]
    if method in ("ppo", "carft"):
        expected += ["train/value_loss", "train/policy_loss", "train/explained_variance"]
    if method == "grpo":
        expected += ["train/frac_reward_zero_std"]
    if method == "carft":
        expected += ["train/loss_pos", "train/loss_neg", "train/cos_correct", "train/cos_incorrect", "train/partial_rewards_changed"]
    for tag in expected:
        assert tag in logged, f"{tag} was not logged"
    for tag, points in logged.items():
        assert all(math.isfinite(v) for _, v in points), f"{tag} has a non-finite value"
    # One step is one rollout (2 epochs x 2 minibatches = 4 updates each): 4 steps, 4 points.
    assert [s for s, _ in logged["train/reward"]] == [0, 1, 2, 3]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"step000002.ckpt", "step000004.ckpt", "last.ckpt"}


def test_resumed_carft_run_equals_uninterrupted_run(tiny_args, tmp_path):
    common = ["--method", "carft", "--trainer.max_steps", "4", "--trainer.checkpoint_every_n_steps", "2",
              "--trainer.val_every_n_steps", "2", *RL_ARGS, *tiny_args]
    config, _, _, _ = parse_config(common + ["--run_name", "straight"])
    train(config)
    config, _, _, _ = parse_config(common + ["--run_name", "interrupted"])
    train(config, callbacks=[StopAt(2)])
    runs = tmp_path / "runs"
    assert main(["--resume", str(runs / "interrupted"), "--runs_dir", str(runs)]) == 0

    straight = checkpoint_state(runs / "straight" / "checkpoints" / "last.ckpt")
    resumed = checkpoint_state(runs / "interrupted" / "checkpoints" / "last.ckpt")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)
    full, split = scalars(runs / "straight"), scalars(runs / "interrupted")
    assert [s for s, _ in split["train/reward"]] == [s for s, _ in full["train/reward"]], "one curve, no gap, no repeat"
    for (_, a), (_, b) in zip(full["train/loss"], split["train/loss"]):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def test_warmup_run_is_trained_once_and_reused(tiny_args, tmp_path, capsys, monkeypatch):
    from workflows import train as run

    parse = run.parse_config
    # The warm-up reads configs/sft.yaml (1400 steps); two steps are enough here.
    monkeypatch.setattr(run, "parse_config", lambda argv: parse([*argv, "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2", "--trainer.max_new_tokens", "16"]))
    argv = ["--method", "carft", "--run_name", "rl", "--trainer.max_steps", "1", *RL_ARGS, *tiny_args, "--warmup_run", "warm"]
    train(parse(argv)[0])
    warm = tmp_path / "runs" / "warm"
    assert (warm / "hf" / "config.json").is_file()
    assert "training it first" in capsys.readouterr().err
    stamp = (warm / "hf" / "model.safetensors").stat().st_mtime_ns
    train(parse([*argv[:3], "rl2", *argv[4:]])[0])
    assert (warm / "hf" / "model.safetensors").stat().st_mtime_ns == stamp, "the warm-up was trained again"
    assert "training it first" not in capsys.readouterr().err
    first, second = (checkpoint_state(tmp_path / "runs" / name / "checkpoints" / "last.ckpt") for name in ("rl", "rl2"))
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0, msg=f"{name}: training the warm-up first changed the run")


def test_a_finished_sft_run_with_the_warmups_settings_serves_as_the_warmup(tiny_args, tmp_path, capsys, monkeypatch):
    """`--method sft` then an RL method: the warm-up is not trained a second time."""
    from workflows import train as run

    parse = run.parse_config
    short = ["--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2", "--trainer.max_new_tokens", "16"]
    monkeypatch.setattr(run, "parse_config", lambda argv: parse([*argv, *short]))
    sft_argv = ["--method", "sft", "--run_name", "my-sft", *tiny_args, "--data.batch_size", "16"]  # configs/sft.yaml's batch
    assert run.main(sft_argv) == 0
    sft_export = tmp_path / "runs" / "my-sft" / "hf"
    stamp = (sft_export / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    argv = ["--method", "grpo", "--run_name", "rl", "--trainer.max_steps", "1", *RL_ARGS, *tiny_args, "--warmup_run", "sft-warmup"]
    train(parse(argv)[0])
    err = capsys.readouterr().err
    assert "serves as sft-warmup" in err and "training it first" not in err
    assert not (tmp_path / "runs" / "sft-warmup").exists()
    assert (sft_export / "model.safetensors").stat().st_mtime_ns == stamp
    # A run with other SFT settings is not taken for the warm-up.
    assert run.main([*sft_argv[:3], "other-sft", *sft_argv[4:], "--optim.lr", "0.5"]) == 0
    assert run.main([*sft_argv[:3], "logged-more", *sft_argv[4:], "--trainer.log_every_n_steps", "3"]) == 0
    shutil.rmtree(tmp_path / "runs" / "my-sft")
    train(parse([*argv[:3], "rl2", *argv[4:]])[0])
    assert "logged-more was trained with the warm-up's settings" in capsys.readouterr().err, "logging cadence does not shape the weights"
    shutil.rmtree(tmp_path / "runs" / "logged-more")
    train(parse([*argv[:3], "rl3", *argv[4:]])[0])
    assert "training it first" in capsys.readouterr().err


def test_unfinished_warmup_run_is_reported_not_overwritten(tiny_args, tmp_path):
    (tmp_path / "runs" / "warm").mkdir(parents=True)
    argv = ["--method", "carft", "--run_name", "rl", *RL_ARGS, *tiny_args, "--warmup_run", "warm"]
    assert main(argv) == 2
    assert not (tmp_path / "runs" / "rl").exists()


def test_heads_get_their_own_learning_rate(tiny_args):
    from lightning_modules import METHODS
    from lightning_modules.policy import load_tokenizer, resolve_model_path

    config, _, _, _ = parse_config(["--method", "carft", *RL_ARGS, *tiny_args, "--optim.head_lr_scale", "20"])
    path = resolve_model_path(config.model)
    module = METHODS["carft"](config, load_tokenizer(path), path)
    optimizer = module.configure_optimizers()["optimizer"]
    head_ids = {id(p) for p in module.policy.heads.parameters()}
    lm_group, head_group = optimizer.param_groups
    assert {id(p) for p in head_group["params"]} == head_ids
    assert not head_ids & {id(p) for p in lm_group["params"]}
    assert math.isclose(head_group["lr"], 20 * lm_group["lr"])
    assert len(lm_group["params"]) + len(head_group["params"]) == len(list(module.parameters()))


def test_label_free_grpo_trains_on_batches_without_answers(tiny_args, tmp_path):
    argv = ["--method", "grpo", "--run_name", "ttrl", "--trainer.max_steps", "2", "--algo.reward", "majority",
            "--algo.samples_per_prompt", "2", *RL_ARGS, *tiny_args]
    config, _, _, _ = parse_config(argv)
    seen = []

    class Keys(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(set(batch))

    train(config, callbacks=[Keys()])
    assert seen and all("answer" not in keys and "target_ids" not in keys for keys in seen)
    logged = scalars(tmp_path / "runs" / "ttrl")
    assert "train/majority_share" in logged and "train/accuracy" not in logged


def test_value_loss_norm_is_reft_by_default_and_the_token_mean_in_the_embedded_configs(tiny_args, tmp_path, capsys, monkeypatch):
    from lightning_modules import ppo
    from lightning_modules.carft import CARFTConfig

    assert ppo.PPOConfig().value_loss_norm == CARFTConfig().value_loss_norm == "response"
    for method in ("ppo", "carft"):  # configs/ppo.yaml and configs/carft.yaml: vf_coef 0.2 was chosen with it
        config, _, _, _ = parse_config(["--method", method, *RL_ARGS, *tiny_args])
        assert config.algo.value_loss_norm == "token"
    assert main(["--method", "ppo", *RL_ARGS, *tiny_args, "--algo.value_loss_norm", "sequence"]) == 2
    assert "algo.value_loss_norm must be response or token, got 'sequence'" in capsys.readouterr().err

    norms = []
    real = ppo.ppo_value_loss
    monkeypatch.setattr(ppo, "ppo_value_loss", lambda *args: norms.append(args[5]) or real(*args))
    argv = ["--method", "ppo", "--run_name", "norm", "--trainer.max_steps", "1", *RL_ARGS, *tiny_args, "--algo.value_loss_norm", "response"]
    train(parse_config(argv)[0])
    assert norms and set(norms) == {"response"}


def test_grpo_dapo_divides_every_minibatch_by_the_rollouts_token_count(tiny_args, tmp_path, monkeypatch):
    from lightning_modules import grpo

    calls = []
    real = grpo.aggregate_loss

    def spy(per_token, mask, mode, max_new_tokens, num_tokens):
        calls.append((int(mask.sum()), num_tokens))
        return real(per_token, mask, mode, max_new_tokens, num_tokens)

    monkeypatch.setattr(grpo, "aggregate_loss", spy)
    argv = ["--method", "grpo", "--run_name", "dapo", "--trainer.max_steps", "2", "--algo.loss_aggregation", "dapo",
            "--algo.minibatches", "2", "--algo.samples_per_prompt", "2", "--algo.kl_coef", "0", *RL_ARGS, *tiny_args]
    assert main(argv) == 0
    assert len(calls) == 4  # 2 rollouts x 2 minibatches
    for rollout in (calls[:2], calls[2:]):
        (tokens_a, count_a), (tokens_b, count_b) = rollout
        assert count_a == count_b == tokens_a + tokens_b, "one process: the rollout's tokens, the same for both minibatches"
    logged = scalars(tmp_path / "runs" / "dapo")
    assert all(math.isfinite(v) for _, v in logged["train/loss"])
