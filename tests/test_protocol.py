"""scripts/compare.py (the papers' protocol) --quick: the warm-up is the start of the SFT run,
every run stops at its plateau or budget and is tested at its best-validation checkpoint, and
the table carries paired intervals against SFT and PPO."""

from __future__ import annotations

import json

import pytest
import torch

from workflows.compare import main, split_protocol
from workflows.protocol import smoothed

LABELS = ["base model (start of every SFT run)", "warm-up (SFT, start of every RL run)", "SFT (converged)", "PPO (ReFT)", "CARFT", "control: random reward"]
QUICK = ["--quick", "--methods", "[ppo,carft]", "--controls", "[random]"]  # every kind of run, fewest runs


def test_protocol_is_the_default_and_matched_is_an_option():
    assert split_protocol(["--quick"]) == ("papers", ["--quick"])
    assert split_protocol(["--protocol", "matched", "--seeds", "2"]) == ("matched", ["--seeds", "2"])
    assert split_protocol(["--protocol=matched", "--", "--protocol", "x"]) == ("matched", ["--", "--protocol", "x"])


def test_an_unknown_protocol_gets_one_sentence(capsys):
    assert main(["--protocol", "mine"]) == 2
    assert capsys.readouterr().err.strip() == "error: --protocol must be one of papers, matched, label_free, got 'mine'"


def test_smoothing_is_a_trailing_mean():
    assert smoothed([0.0, 1.0, 2.0, 3.0], window=2) == [0.0, 0.5, 1.5, 2.5]


@pytest.mark.slow
def test_quick_protocol_runs_every_method_and_control_and_writes_intervals(tmp_path, model_cache, capsys):
    out = tmp_path / "protocol"
    assert main([*QUICK, "--out", str(out), "--", "--model.cache_dir", str(model_cache)]) == 0
    capsys.readouterr()
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:5] == ["method", "seeds", "test acc. at best val", "vs SFT [95% CI]", "vs PPO [95% CI]"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == LABELS
    for row in rows[3:]:
        assert row[3].startswith(("+", "-")) and "[" in row[3], row  # every RL run has an interval against SFT
    for run in ["sft-s0", "ppo-s0", "carft-s0", "random-s0"]:
        assert (out / "runs" / run / "checkpoints" / "best.ckpt").is_file(), run
        result = json.loads((out / "eval" / f"{run}.json").read_text())
        assert result["model"].endswith("best.ckpt") and result["metrics"]["questions"] == 8
    # The warm-up is the SFT run's first epoch: the same weights at that step.
    warmup = torch.load(out / "runs" / "sft-warmup" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    steps = warmup["global_step"]
    early = torch.load(out / "runs" / "sft-s0" / "checkpoints" / f"step{steps:06d}.ckpt", map_location="cpu", weights_only=True)
    for name, tensor in warmup["state_dict"].items():
        assert torch.equal(tensor, early["state_dict"][name]), name
    commands = (out / "commands.sh").read_text()
    assert "--algo.reward random" in commands and "--method rlsc" not in commands
    for image in ("protocol_accuracy.png", "protocol_reward.png"):
        assert (out / image).stat().st_size > 10_000
    assert main([*QUICK, "--out", str(out), "--", "--model.cache_dir", str(model_cache)]) == 0
    assert "started" not in capsys.readouterr().out, "a second invocation found the work done"
