"""Mistakes get one sentence on stderr and exit code 2; --print_config shows the whole run."""

import pytest

from workflows.train import main


def run_cli(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--method", "dpo"], "unknown method 'dpo'; choose one of sft"),
        ([], "--method is required"),
        (["--method", "sft", "--trainer.max_steps", "abc"], "trainer.max_steps"),
        (["--method", "sft", "--trainer.maxsteps", "3"], "unrecognized arguments: --trainer.maxsteps"),
        (["--method", "sft", "--trainer.max_steps", "0"], "trainer.max_steps must be positive, got 0"),
        (["--method", "sft", "--data.batch_size", "-4"], "data.batch_size must be positive, got -4"),
        (["--method", "sft", "--trainer.precision", "64"], "trainer.precision must be one of"),
        (["--method", "sft", "--data.synthetic.max_steps", "9"], "max_steps"),
        (["--method", "sft", "--optim.schedule", "step"], "optim.schedule must be linear, cosine or constant"),
        (["--method", "sft", "--resume", "no-such-run"], "no-such-run is not a run folder"),
        (["--method", "sft", "--run_name", "../escape"], "must be a plain folder name"),
    ],
)
def test_bad_requests_get_one_sentence_and_exit_2(capsys, tiny_args, argv, expected):
    argv = argv[:2] + tiny_args + argv[2:] if argv[:2] == ["--method", "sft"] else argv
    code, message = run_cli(capsys, argv)
    assert code == 2
    assert message.startswith("error: ") and expected in message


def test_unreadable_data_gets_one_sentence_and_exit_2(capsys, tiny_args, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "answer": "1 + 1 = 2\\n#### 2"}\n{"question": "oops"\n')
    code, message = run_cli(capsys, ["--method", "sft", "--data.path", str(bad), *tiny_args])
    assert code == 2 and "bad.jsonl" in message and "line 2" in message
    code, message = run_cli(capsys, ["--method", "sft", "--data.path", str(tmp_path / "missing.jsonl"), *tiny_args])
    assert code == 2 and "missing.jsonl" in message
    assert not (tmp_path / "runs").exists(), "nothing is written for a run that cannot start"


def test_print_config_shows_the_whole_run(capsys, tiny_args):
    with pytest.raises(SystemExit) as exit_info:
        main(["--method", "sft", "--print_config", "--optim.lr", "0.01", *tiny_args])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for key in ("method: sft", "lr: 0.01", "name_or_path: embedded", "max_steps:", "synthetic:", "precision:"):
        assert key in out


def test_help_without_a_method_lists_the_methods_and_the_shared_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "sft, ppo, carft, grpo, rlsc" in out and "--trainer.max_steps" in out and "--algo." not in out
    with pytest.raises(SystemExit) as exit_:
        main(["--method", "carft", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--algo.lambda_cl" in out
    assert "Weight of the contrastive loss" in out, "field docstrings are the help"


@pytest.mark.parametrize("workflow", ["evaluate", "compare", "benchmark"])
def test_every_workflow_shares_the_cli_style(capsys, workflow, tmp_path):
    import importlib

    module = importlib.import_module(f"workflows.{workflow}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--config" in out and "--print_config" in out
    config = tmp_path / "settings.yaml"
    config.write_text("seed: x\n" if workflow == "evaluate" else "no_such_option: 1\n")
    argv = (["embedded"] if workflow == "evaluate" else []) + ["--config", str(config)]
    assert module.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
