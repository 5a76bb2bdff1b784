"""RLSC end to end on the tiny embedded model: no labels in training, logged metrics, modes."""

import json
import math

import pytest
import torch

from datamodules.synthetic import SyntheticConfig, generate_splits
from lightning_modules.rlsc import RLSCModule
from lightning_modules.policy import Policy, resolve_model_path
from workflows.train import main, parse_config
from tests.runs import checkpoint_state, scalars

RLSC_ARGS = ["--method", "rlsc", "--warmup_run", "null", "--data.batch_size", "2", "--algo.samples_per_prompt", "3",
             "--optim.warmup_steps", "0", "--optim.lr", "1e-3", "--trainer.max_steps", "2"]


def write_gsm8k(path, records, answer=lambda r: r.answer):
    lines = [json.dumps({"question": r.question, "answer": f"{r.chain_of_thought}\n#### {answer(r):g}"}) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_rlsc_run_logs_its_metrics_and_sampled_evaluation(tiny_args, tmp_path):
    assert main([*RLSC_ARGS, "--run_name", "rlsc", "--trainer.val_every_n_steps", "2", *tiny_args]) == 0
    logged = scalars(tmp_path / "runs" / "rlsc")
    expected = ["train/seq_confidence", "train/token_confidence", "train/agreement", "train/majority_share",
                "train/response_length", "train/entropy", "train/loss", "train/grad_norm", "perf/generate_s",
                "val/accuracy", "val/pass@3", "val/maj@3", "val/sampled_accuracy", "test/accuracy"]
    for tag in expected:
        assert tag in logged, f"{tag} was not logged"
    for tag, points in logged.items():
        assert all(math.isfinite(v) for _, v in points), f"{tag} has a non-finite value"
    for step, share in logged["train/majority_share"]:
        assert 1 / 3 - 1e-6 <= share <= 1 or share == 0
    assert "train/accuracy" not in logged, "the training step must not know whether an answer is right"
    for (_, greedy), (_, any_of_k), (_, sampled) in zip(logged["val/accuracy"], logged["val/pass@3"], logged["val/sampled_accuracy"]):
        assert 0 <= sampled <= any_of_k <= 1 and 0 <= greedy <= 1


def test_rlsc_never_reads_a_label(tiny_args, tmp_path):
    """Training on a file whose every answer is wrong gives the same weights as on the true answers."""
    splits = generate_splits(SyntheticConfig(num_train=40, num_val=8, num_test=8))
    val = write_gsm8k(tmp_path / "val.jsonl", splits["val"])
    states = []
    for name, answer in (("right", lambda r: r.answer), ("wrong", lambda r: r.answer + 7)):
        data = write_gsm8k(tmp_path / f"{name}.jsonl", splits["train"], answer)
        argv = [*RLSC_ARGS, "--run_name", name, *tiny_args, "--data.path", data, "--data.val_path", val, "--data.test_path", val]
        assert main(argv) == 0
        states.append(checkpoint_state(tmp_path / "runs" / name / "checkpoints" / "last.ckpt"))
    right, wrong = states
    for key in right:
        torch.testing.assert_close(wrong[key], right[key], rtol=0, atol=0, msg=key)
    config = parse_config([*RLSC_ARGS, *tiny_args])[0]
    initial = Policy.from_pretrained(resolve_model_path(config.model), config.model).state_dict()
    assert any(not torch.equal(initial[k], right[f"policy.{k}"]) for k in initial), "the run did not train"


@pytest.mark.parametrize("mode", ["paper-sum", "normalized-length", "confidence", "majority"])
def test_rlsc_options_train_whole_groups(tiny_args, tmp_path, monkeypatch, mode):
    options = {
        "paper-sum": ["--algo.reduction", "sum"],
        "normalized-length": ["--algo.weighting", "normalized", "--algo.length_normalize", "true"],
        "confidence": ["--algo.reward", "confidence", "--algo.format_bonus", "0.1"],
        "majority": ["--algo.reward", "majority"],
    }[mode]
    seen, loss = [], RLSCModule.loss

    def recording_loss(self, rollout, scores):
        seen.append(rollout.question.tolist())
        return loss(self, rollout, scores)

    monkeypatch.setattr(RLSCModule, "loss", recording_loss)
    argv = [*RLSC_ARGS, "--run_name", mode, *options, "--algo.minibatches", "2", "--algo.eval_samples", "0", *tiny_args]
    assert main(argv) == 0
    assert len(seen) == 2 * 2, "two rollouts of two minibatches"
    for questions in seen:
        assert all(questions.count(q) == 3 for q in questions), "a question's samples were split across minibatches"
    logged = scalars(tmp_path / "runs" / mode)
    assert all(math.isfinite(v) for _, v in logged["train/loss"])
    if mode in ("confidence", "majority"):
        assert "train/reward" in logged
    assert "val/pass@3" not in logged and "val/accuracy" in logged
