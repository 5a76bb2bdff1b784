"""scripts/evaluate.py: metrics against hand-worked values, the baseline comparison, the
result file's schema, every kind of model source, the real GSM8K path, and bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml

from datamodules.records import Record
from workflows.evaluate import (
    SCHEMA,
    EvalError,
    _base_model_path,
    EvalSettings,
    Responses,
    compare,
    format_table,
    load_model,
    main,
    pass_at_ks,
    summarise,
)
from workflows.train import parse_config, train


def responses(texts: list[str], lengths: list[int]) -> Responses:
    n = len(texts)
    return Responses(texts, torch.tensor(lengths, dtype=torch.float), torch.full((n,), 0.5), torch.full((n,), 0.9))


def answer(x) -> str:
    return f"so\nTherefore, the answer is: {x}"


def test_pass_at_ks_are_powers_of_two_and_n():
    assert pass_at_ks(8) == [1, 2, 4, 8]
    assert pass_at_ks(6) == [1, 2, 4, 6]
    assert pass_at_ks(2) == [1, 2]


def test_sampled_metrics_by_hand():
    records = [Record("a", "q1", 4.0), Record("b", "q2", 7.0)]
    # q1: 2 of 4 correct, the majority (5, twice vs 4 twice: tie to the first seen, 5) is wrong.
    # q2: 1 of 4 correct (7), majority is 7 (unparsed never wins: 7 once, the rest None).
    texts = [answer(5), answer(4), answer(5), answer(4), answer(7), "no answer", "nothing", "still nothing"]
    metrics, details = summarise(responses(texts, [10, 20, 10, 20, 30, 40, 50, 60]), records, n=4)
    assert metrics["sampled/pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert metrics["sampled/pass@2"] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6)) / 2)  # 1 - C(2,2)/C(4,2); 1 - C(3,2)/C(4,2)
    assert metrics["sampled/pass@4"] == pytest.approx(1.0)
    assert metrics["sampled/maj@4"] == pytest.approx(0.5)
    assert metrics["sampled/parse_rate"] == pytest.approx(5 / 8)
    assert metrics["sampled/response_length"] == pytest.approx(30.0)
    assert metrics["sampled/seq_confidence"] == pytest.approx(0.5)
    assert details[1]["answers"] == [7.0, None, None, None] and details[0]["correct"] == [False, True, False, True]


def test_greedy_metrics_by_hand():
    records = [Record("a", "q1", 4.0), Record("b", "q2", 7.0), Record("c", "q3", 1.5)]
    metrics, _ = summarise(responses([answer(4), answer(7.004), "x"], [3, 5, 7]), records, n=0)
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # 7.004 is within the 1e-2 tolerance
    assert metrics["parse_rate"] == pytest.approx(2 / 3)
    assert metrics["response_length"] == pytest.approx(5.0)


def result(settings: dict, **metrics) -> dict:
    return {"schema": SCHEMA, "model": "m", "settings": settings, "metrics": {"questions": 10, **metrics}}


def test_baseline_comparison_difference_and_efficiency_gain():
    ours = result({"a": 1}, accuracy=0.45, response_length=30.0)
    base = result({"a": 1}, accuracy=0.40, response_length=40.0)
    out = compare(ours, base)
    assert out["accuracy_difference"] == pytest.approx(0.05)
    assert out["response_length_difference"] == pytest.approx(-10.0)
    assert out["efficiency_gain"] == pytest.approx(1 - 30 / 40)  # the run writes a quarter less
    table = format_table(ours, base)
    assert "+5.0" in table and "+25.0%" in table
    with pytest.raises(EvalError, match="different settings"):
        compare(ours, result({"a": 2}, accuracy=0.4, response_length=40.0))


def test_a_comparison_on_the_same_questions_has_paired_intervals_per_question_metric():
    from workflows.statistics import paired_bootstrap

    def details(greedy, samples, answers):
        return [{"uid": f"q{i}", "gold": 2.0, "correct": [g], "sample_correct": s, "sample_answers": a}
                for i, (g, s, a) in enumerate(zip(greedy, samples, answers))]

    settings = {"samples": 3}
    ours = result(settings, accuracy=0.75, response_length=10.0) | {"details": details(
        [True, True, True, False], [[True, True, False], [True, False, False], [False, False, False], [True, True, True]],
        [[2, 2, 5], [2, 5, 5], [1, 3, None], [2, 2, 2]])}
    base = result(settings, accuracy=0.25, response_length=10.0) | {"details": details(
        [False, True, False, False], [[False, False, False], [True, False, False], [False, False, False], [True, False, False]],
        [[4, 4, 4], [2, 5, 5], [None, None, None], [2, 3, 3]])}
    out = compare(ours, base)
    # by hand, per question: greedy +1, 0, +1, 0; pass@1 +2/3, 0, 0, +2/3; pass@3 1, 0, 0, 0; maj@3 +1, 0, 0, +1
    for key, a, b in (("accuracy", [1, 1, 1, 0], [0, 1, 0, 0]), ("sampled/pass@1", [2 / 3, 1 / 3, 0, 1], [0, 1 / 3, 0, 1 / 3]),
                      ("sampled/pass@3", [1, 1, 0, 1], [0, 1, 0, 1]), ("sampled/maj@3", [1, 0, 0, 1], [0, 0, 0, 0])):
        interval = paired_bootstrap(a, b)
        assert out[f"{key}_difference_interval"] == pytest.approx([interval.low, interval.high]), key
    assert out["sampled/maj@3_difference_interval"] == pytest.approx([0.0, 1.0])
    assert "+50.0 [+0.0, +100.0]" in format_table(ours, base)  # greedy: +1 on two of four questions
    other = base | {"details": [d | {"uid": "x" + d["uid"]} for d in base["details"]]}
    assert not any(k.endswith("_interval") for k in compare(ours, other))  # different questions: no pairing


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, model_cache):
    """A 2-step SFT run of the tiny model: run folder, checkpoint and hf/ export."""
    runs = tmp_path_factory.mktemp("eval-runs")
    argv = ["--method", "sft", "--run_name", "tiny", "--runs_dir", str(runs), "--model.cache_dir", str(model_cache),
            "--model.embedded.hidden_size", "32", "--model.embedded.num_layers", "2", "--model.embedded.num_heads", "2",
            "--model.embedded.intermediate_size", "64", "--data.synthetic.num_train", "200", "--data.synthetic.num_val", "6",
            "--data.synthetic.num_test", "6", "--data.batch_size", "4", "--data.eval_batch_size", "6",
            "--trainer.max_new_tokens", "10", "--trainer.max_steps", "2", "--trainer.val_every_n_steps", "2", "--optim.lr", "3e-3"]
    config, _, _, _ = parse_config(argv)
    train(config)
    return runs / "tiny"


def test_a_checkpoint_is_rebuilt_with_the_trained_weights(tiny_run):
    from_ckpt = load_model(str(tiny_run / "checkpoints" / "last.ckpt")).policy.lm.state_dict()
    from_hf = load_model(str(tiny_run / "hf")).policy.lm.state_dict()
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    base = load_model(_base_model_path(tiny_run, config)).policy.lm.state_dict()  # what the run started from
    assert from_ckpt.keys() == from_hf.keys()
    assert all(torch.equal(from_ckpt[k], from_hf[k]) for k in from_hf)
    assert any(not torch.equal(from_ckpt[k], base[k]) for k in base if base[k].shape == from_ckpt[k].shape)


def evaluate_cli(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_result_file_schema_and_same_figures_from_run_checkpoint_and_export(capsys, tiny_run, tmp_path):
    outputs = {}
    for name, source in {"run": tiny_run, "ckpt": tiny_run / "checkpoints" / "last.ckpt", "hf": tiny_run / "hf"}.items():
        code, out, err = evaluate_cli(capsys, [str(source), "--samples", "3", "--temperature", "0.8", "--output", str(tmp_path / f"{name}.json")])
        assert code == 0, err
        assert "pass@2" in out and "maj@3" in out
        outputs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    saved = outputs["run"]
    assert set(saved) == {"schema", "model", "settings", "metrics", "seconds", "details"}
    assert saved["schema"] == SCHEMA
    assert set(saved["settings"]) == set(EvalSettings().__dict__)
    # A run's own generation budget and generator knobs are used unless given.
    assert saved["settings"]["max_new_tokens"] == 10 and saved["settings"]["synthetic"]["num_test"] == 6
    expected = {"questions", "accuracy", "parse_rate", "response_length", "seq_confidence", "token_confidence", "prompts_truncated",
                "sampled/parse_rate", "sampled/response_length", "sampled/seq_confidence", "sampled/token_confidence",
                "sampled/pass@1", "sampled/pass@2", "sampled/pass@3", "sampled/maj@3"}
    assert set(saved["metrics"]) == expected
    for key, value in saved["metrics"].items():
        assert isinstance(value, (int, float)) and math.isfinite(value), key
        if key not in ("questions", "prompts_truncated", "response_length", "sampled/response_length"):
            assert 0.0 <= value <= 1.0, key
    assert saved["metrics"]["questions"] == len(saved["details"]) == 6
    assert all(len(d["samples"]) == 3 and len(d["responses"]) == 1 for d in saved["details"])
    assert 0 < saved["metrics"]["response_length"] <= 10
    # The checkpoint holds the same weights as the export: the same responses, the same figures.
    for name in ("ckpt", "hf"):
        assert outputs[name]["metrics"] == saved["metrics"], name
        assert [d["samples"] for d in outputs[name]["details"]] == [d["samples"] for d in saved["details"]]


def test_baseline_from_a_model_or_a_result_file(capsys, tiny_run, tmp_path):
    base_json = tmp_path / "base.json"
    code, _, err = evaluate_cli(capsys, [str(tiny_run / "hf"), "--output", str(base_json), "--max_new_tokens", "10",
                                         "--prompt_style", "reft"] + ["--samples", "2"])
    assert code == 0, err
    # The hf/ folder of a run is evaluated as that run, so its settings match the run's own.
    for baseline in (str(tiny_run), str(base_json)):
        out_json = tmp_path / "cmp.json"
        code, out, err = evaluate_cli(capsys, [str(tiny_run), "--samples", "2", "--baseline", baseline, "--output", str(out_json)])
        assert code == 0, err
        saved = json.loads(out_json.read_text())
        assert saved["comparison"]["accuracy_difference"] == 0.0 and saved["comparison"]["efficiency_gain"] == 0.0
        assert saved["baseline"]["metrics"] == saved["metrics"]
        assert "efficiency_gain" in out and "difference" in out
    code, _, err = evaluate_cli(capsys, [str(tiny_run), "--samples", "4", "--baseline", str(base_json), "--output", str(tmp_path / "x.json")])
    assert code == 2 and "different settings (samples)" in err


def test_real_gsm8k_file_runs_end_to_end_with_the_parse_rate(capsys, tiny_run, sample_data, tmp_path):
    out_json = tmp_path / "gsm8k.json"
    code, out, err = evaluate_cli(capsys, [str(tiny_run), "--data", str(sample_data / "gsm8k" / "test.jsonl"), "--limit", "12",
                                           "--max_new_tokens", "8", "--samples", "2", "--output", str(out_json)])
    assert code == 0, err
    saved = json.loads(out_json.read_text())
    assert saved["metrics"]["questions"] == 12 and 0.0 <= saved["metrics"]["parse_rate"] <= 1.0
    assert saved["settings"]["data"].endswith("test.jsonl") and "parse_rate" in out


def test_lenient_answers_and_the_math_verify_checker_are_options_of_a_run_evaluation(capsys, tiny_run, tmp_path):
    pytest.importorskip("math_verify")
    results = {}
    for name, extra in (("plain", []), ("lenient", ["--answer_style", "lenient", "--answer_checker", "math_verify"])):
        out_json = tmp_path / f"{name}.json"
        code, _, err = evaluate_cli(capsys, [str(tiny_run), "--limit", "12", "--max_new_tokens", "8", *extra, "--output", str(out_json)])
        assert code == 0, err
        results[name] = json.loads(out_json.read_text())
    assert results["plain"]["settings"]["answer_style"] == "reft" and results["plain"]["settings"]["answer_checker"] == "rule"
    assert results["lenient"]["settings"]["answer_checker"] == "math_verify"
    # The lenient style reads at least every answer the papers' format does.
    assert results["lenient"]["metrics"]["parse_rate"] >= results["plain"]["metrics"]["parse_rate"]
    code, _, err = evaluate_cli(capsys, [str(tiny_run), "--answer_checker", "exact"])
    assert code == 2


@pytest.mark.parametrize("case", ["truncated ckpt", "not a ckpt", "missing", "empty folder", "loose ckpt", "bad samples", "bad data"])
def test_bad_requests_get_one_sentence_and_exit_2(capsys, tiny_run, tmp_path, case):
    source, extra = str(tiny_run), []
    if case == "truncated ckpt":
        broken = tmp_path / "run"
        shutil.copytree(tiny_run, broken)
        ckpt = broken / "checkpoints" / "last.ckpt"
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
        source = str(ckpt)
    elif case == "not a ckpt":
        (tmp_path / "weights.txt").write_text("hello")
        source = str(tmp_path / "weights.txt")
    elif case == "missing":
        source = str(tmp_path / "nothing-here.ckpt")
    elif case == "empty folder":
        source = str(tmp_path)
    elif case == "loose ckpt":
        shutil.copy(tiny_run / "checkpoints" / "last.ckpt", tmp_path / "loose.ckpt")
        source = str(tmp_path / "loose.ckpt")
    elif case == "bad samples":
        extra = ["--samples", "1"]
    elif case == "bad data":
        (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "no final line"}\n')
        extra = ["--data", str(tmp_path / "bad.jsonl")]
    code, out, err = evaluate_cli(capsys, [source, *extra, "--output", str(tmp_path / "out.json")])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.json").exists()


def test_confidence_scored_a_few_rows_at_a_time_equals_scoring_all_rows(tiny_run, monkeypatch):
    """The evaluation scores its responses' confidence in slices of rows (bounded logits); the
    figures do not depend on the slice."""
    from lightning_modules import evaluation

    from workflows.evaluate import evaluate

    model = load_model(str(tiny_run))
    settings = EvalSettings(data="synthetic", limit=6, samples=2, temperature=0.7, max_new_tokens=10)
    results = []
    for rows in (1, 1000):
        monkeypatch.setattr(evaluation, "CONFIDENCE_ROWS", rows)
        results.append(evaluate(model, settings, batch_size=12)["metrics"])
    for key in ("seq_confidence", "token_confidence", "sampled/seq_confidence", "sampled/token_confidence"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-5), key
