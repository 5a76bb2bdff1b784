"""LoRA through peft: only the adapters and heads train, the reference policy is the same base
with its adapters off (held once), exports load, bad values get a sentence, runs resume."""

from __future__ import annotations

import sys

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from workflows.evaluate import load_model
from lightning_modules.policy import Policy, resolve_model_path
from lightning_modules.rl_base import eval_mode
from lightning_modules.generation import response_logits
from workflows.train import main, parse_config, train
from tests import rewards
from tests.runs import StopAt, checkpoint_state

LORA_ARGS = ["--model.lora.r", "4", "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2", "--optim.lr", "1e-3"]
RL_ARGS = ["--warmup_run", "null", "--data.batch_size", "2", "--algo.samples_per_prompt", "2"]
METHOD_ARGS = {  # the KL term to the reference on wherever the method has one
    "ppo": ["--algo.kl_coef", "0.05"],
    "carft": ["--algo.kl_coef", "0.05"],
    "grpo": ["--algo.kl_coef", "0.04"],
    "rlsc": ["--algo.eval_samples", "0"],  # RLSC has no reference policy
}


class Watch(L.Callback):
    """The module and its parameters when training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.module = pl_module
        self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.checkpointing = pl_module.policy.lm.is_gradient_checkpointing


ALTERNATING = ["--algo.reward", "tests.rewards:alternating"]
"""The rule reward is 0 everywhere for the untrained tiny model (no answer), so the policy gradient
would be zero: a reward part of 0, 1, 0, 1, ... differs within every question's samples."""
ALTERNATING_ARGS = {  # RLSC trains on its own confidence, CARFT's partial reward rewrites the rule reward only
    "ppo": ALTERNATING,
    "carft": [*ALTERNATING, "--algo.partial_reward", "false"],
    "grpo": ALTERNATING,
    "rlsc": [],
}


@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_lora_trains_adapters_and_heads_only_and_references_the_base_held_once(tiny_args, method):
    config, _, _, _ = parse_config(["--method", method, "--run_name", "lora", *LORA_ARGS, *RL_ARGS, *METHOD_ARGS[method], *ALTERNATING_ARGS[method], *tiny_args])
    watch = Watch()
    train(config, callbacks=[watch])
    module = watch.module

    moved = {n for n, p in module.named_parameters() if not torch.equal(p, watch.start[n])}
    unexpected = sorted(n for n in moved if "lora_" not in n and not n.startswith("policy.heads."))
    assert not unexpected, f"base weights changed: {unexpected[:3]}"
    assert any("lora_" in n for n in moved), "no adapter moved"
    assert not module.policy.heads or any(n.startswith("policy.heads.") for n in moved), "no head moved"

    # One copy of the base weights: no reference policy beside the policy, no weight stored twice.
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model)).eval()
    adapters = [p for n, p in module.named_parameters() if "lora_" in n]
    assert module._reference == []
    storages = {p.data_ptr() for p in module.parameters()}
    assert len(storages) == len(list(base.parameters())) + len(adapters) + len(list(module.policy.heads.parameters()))

    assert module.uses_reference == (method != "rlsc")
    if module.uses_reference:
        rollout = rewards.SEEN["rollout"]  # the run's last rollout; the adapters have moved by now
        response_ids = rollout.response_ids
        inputs = (rollout.input_ids, rollout.attention_mask, response_ids.size(1))
        logp_ref = module.logprobs(module.reference_logits(rollout), response_ids)
        with torch.no_grad(), eval_mode(module.policy):
            logp_base = module.logprobs(response_logits(Policy(base), *inputs)[0], response_ids)
            logp_adapted = module.logprobs(response_logits(module.policy, *inputs)[0], response_ids)
        torch.testing.assert_close(logp_ref, logp_base, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(logp_adapted, logp_ref, rtol=1e-4, atol=1e-4), "the adapters changed nothing"


def test_merged_export_loads_without_peft_and_gives_the_policys_logits(tiny_args, tmp_path):
    config, _, _, _ = parse_config(["--method", "sft", "--run_name", "merged", *LORA_ARGS, *tiny_args])
    watch = Watch()
    train(config, callbacks=[watch])
    export = tmp_path / "runs" / "merged" / "hf"
    assert not (export / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(export).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = torch.randint(3, merged.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad(), eval_mode(watch.module.policy):
        expected, _ = watch.module.policy(ids, mask)
        logits, _ = Policy(merged)(ids, mask)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert watch.module.policy.has_adapters, "exporting left the training model as it was"


def test_adapter_export_with_checkpointing_evaluates_like_the_checkpoint(tiny_args, tmp_path):
    argv = ["--method", "sft", "--run_name", "adapter", "--model.lora.export", "adapter", "--model.gradient_checkpointing", "true"]
    config, _, _, _ = parse_config(argv + LORA_ARGS + tiny_args)
    watch = Watch()
    train(config, callbacks=[watch])
    run = tmp_path / "runs" / "adapter"
    assert watch.checkpointing
    # Two steps move every adapter (B leaves zero in the first, A follows in the second): gradients
    # reach them through the recomputed, frozen layers.
    adapters = {n: p for n, p in watch.module.named_parameters() if "lora_" in n}
    assert adapters and all(not torch.equal(p, watch.start[n]) for n, p in adapters.items())
    assert (run / "hf" / "adapter_config.json").is_file() and (run / "hf" / "adapter_model.safetensors").is_file()
    assert not (run / "hf" / "config.json").exists(), "an adapter export holds no base weights"

    from_export, from_checkpoint = load_model(str(run)), load_model(str(run / "checkpoints" / "last.ckpt"))
    assert from_export.description.endswith("hf") and from_checkpoint.description.endswith("last.ckpt")
    ids = torch.randint(3, 100, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(from_export.policy(ids, mask)[0], from_checkpoint.policy(ids, mask)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model.lora.r", "-1"], "model.lora.r must be >= 0 (0 is off), got -1"),
        (["--model.lora.export", "full"], "model.lora.export must be merged or adapter, got 'full'"),
        (["--model.lora.target_modules", "q_proj,,v_proj"], "model.lora.target_modules must be all-linear or comma-separated"),
    ],
)
def test_bad_lora_values_get_one_sentence_and_exit_2(capsys, tiny_args, argv, expected):
    assert main(["--method", "sft", *tiny_args, *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {expected}")


def test_lora_without_peft_is_refused_with_one_sentence(capsys, tiny_args, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    assert main(["--method", "sft", "--model.lora.r", "4", *tiny_args]) == 2
    assert "pip install peft" in capsys.readouterr().err


def test_lora_run_resumes_from_its_checkpoint(tiny_args, tmp_path):
    argv = ["--method", "grpo", "--run_name", "resume", "--trainer.checkpoint_every_n_steps", "1", *LORA_ARGS, *RL_ARGS, *ALTERNATING, *tiny_args]
    config, _, _, _ = parse_config(argv)
    train(config, callbacks=[StopAt(1)])
    checkpoints = tmp_path / "runs" / "resume" / "checkpoints"
    first = checkpoint_state(checkpoints / "last.ckpt")
    assert any("lora_" in k for k in first)
    assert main(["--resume", str(tmp_path / "runs" / "resume"), "--runs_dir", str(tmp_path / "runs")]) == 0
    resumed = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 2 and resumed["state_dict"].keys() == first.keys()
    assert any(not torch.equal(resumed["state_dict"][k], v) for k, v in first.items() if "lora_" in k), "the resumed run trained on"


def test_lora_warmup_exports_a_whole_model_that_the_run_adapts(tiny_args, tmp_path, monkeypatch):
    from workflows import train as run

    parse = run.parse_config
    # The warm-up reads configs/sft.yaml (1400 steps); two steps are enough here.
    monkeypatch.setattr(run, "parse_config", lambda argv: parse([*argv, "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2", "--trainer.max_new_tokens", "16"]))
    argv = ["--method", "grpo", "--run_name", "rl", "--model.lora.export", "adapter", *LORA_ARGS, *RL_ARGS, *tiny_args, "--warmup_run", "warm"]
    train(parse(argv)[0])
    runs = tmp_path / "runs"
    assert (runs / "warm" / "hf" / "config.json").is_file(), "the warm-up is exported merged: the run starts from it"
    assert (runs / "rl" / "hf" / "adapter_config.json").is_file()
    model = load_model(str(runs / "rl"))  # the warm-up's export plus the run's adapters
    assert not model.policy.has_adapters and model.description.endswith("hf")
