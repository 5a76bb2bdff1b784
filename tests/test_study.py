"""scripts/compare.py --quick: every method trains and is evaluated, and the table, plots,
commands and result files are produced and well-formed; a second invocation finds the work done."""

from __future__ import annotations

import json
import re
import struct

import pytest

from workflows.evaluate import SCHEMA
from workflows.compare import first_reaching, main

RUNS = ["sft-continued-s0", "ppo-s0", "carft-s0", "grpo-s0", "rlsc-s0"]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_first_reaching_takes_the_first_point_at_or_above_the_target():
    curve = [(0, 0.30, 0.0), (640, 0.33, 10.0), (1280, 0.36, 20.0), (1920, 0.35, 30.0)]
    assert first_reaching(curve, 0.35) == (1280, 20.0)
    assert first_reaching(curve, 0.33) == (640, 10.0)
    assert first_reaching(curve, 0.40) is None


@pytest.mark.slow
def test_quick_study_writes_table_plots_commands_and_results(tmp_path, model_cache, capsys):
    out = tmp_path / "study"
    argv = ["--protocol", "matched", "--quick", "--out", str(out), "--", "--model.cache_dir", str(model_cache)]
    assert main(argv) == 0
    printed = capsys.readouterr().out

    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:5] == ["method", "seeds", "pass@1 (greedy)", "vs warm-up [95% CI]", "pass@2"] and "maj@2" in header
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["warm-up (start of every run)", "SFT-continued", "PPO (ReFT)", "CARFT", "GRPO", "RLSC"]
    for row in rows:
        assert len(row) == len(header)
        for cell in (row[2], row[4], row[5], row[6]):  # percentages in [0, 100]
            assert 0.0 <= float(cell.split(" ")[0]) <= 100.0
        assert 0.0 <= float(row[7]) <= 1.0 and float(row[8]) >= 0.0  # majority share (0 when no answer parses), answer entropy
        assert float(row[9]) > 0  # mean response length
    assert rows[0][3] == "" and all(re.fullmatch(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]( \*)?", r[3]) for r in rows[1:])
    assert all(re.fullmatch(r"not reached \(0/1\)|[\d,]+ \([\d.]+ min; 1/1\)", r[11]) for r in rows[1:])

    for name in ("accuracy.png", "training.png"):
        width, height = png_size(out / name)
        assert width >= 600 and height >= 400
    commands = (out / "commands.sh").read_text().splitlines()
    assert sum("scripts/train.py" in c for c in commands) == 6 and sum("scripts/evaluate.py" in c for c in commands) == 6
    for run in RUNS + ["sft-warmup"]:
        assert (out / "runs" / run / "config.yaml").is_file() and (out / "runs" / run / "hf" / "config.json").is_file()
        result = json.loads((out / "eval" / f"{run}.json").read_text())
        assert result["schema"] == SCHEMA and result["metrics"]["questions"] == 8 and "sampled/maj@2" in result["metrics"]
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["rows"]) == {"warmup", "sft", "ppo", "carft", "grpo", "rlsc"}
    # Matched budgets: every run learned from the same number of responses.
    budgets = {run: f["per_step"] * f["steps"] for run, f in summary["facts"].items() if f["per_step"]}
    assert set(budgets.values()) == {8}, budgets
    assert "Written to" in printed

    # The same command again finds every task done and only rewrites the report.
    assert main(argv) == 0
    assert "started" not in capsys.readouterr().out


@pytest.mark.slow
def test_quick_label_free_study_runs_the_family_and_the_random_control(tmp_path, model_cache, capsys):
    out = tmp_path / "label_free"
    argv = ["--protocol", "label_free", "--quick", "--methods", "[intuitor,empo,random]", "--out", str(out), "--",
            "--model.cache_dir", str(model_cache)]
    assert main(argv) == 0
    capsys.readouterr()
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["warm-up (start of every run)", "INTUITOR", "EMPO", "control: random reward (GRPO)"]
    commands = (out / "commands.sh").read_text()
    assert "--method grpo" in commands and "--algo.reward random" in commands and "--method empo" in commands


def test_the_label_free_study_defaults_to_the_family(tmp_path):
    from workflows.compare import CompareSettings

    settings = CompareSettings()
    settings.study = "label_free"
    settings.validate()
    assert settings.methods == ["rlsc", "ttrl", "intuitor", "rent", "empo", "random"] and settings.out == "results/label_free"


def test_answer_spread_by_hand():
    import math

    from workflows.compare import answer_spread

    result = {"details": [{"sample_answers": [5.0, 5.0, 7.0, None]}, {"sample_answers": [1.0, 2.0, 3.0, 4.0]}]}
    spread = answer_spread(result, 4)
    assert spread["majority share"] == [pytest.approx((0.5 + 0.25) / 2)]
    first = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # 5 twice, 7 once, one unparsed answer its own outcome
    assert spread["answer entropy"] == [pytest.approx((first + math.log(4)) / 2)]
