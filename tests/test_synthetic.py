from __future__ import annotations

import operator
import random
import re
import time

import pytest

from datamodules import synthetic
from datamodules.records import format_number
from datamodules.synthetic import NAMES, SyntheticConfig, generate_problem, generate_splits

SMALL = dict(num_train=300, num_val=20, num_test=30)
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def check_record(record, config: SyntheticConfig) -> list[str]:
    """Re-derives the worked solution line by line (regex + operator, never eval); returns its operators."""
    lines = record.chain_of_thought.split("\n")
    assert config.min_steps <= len(lines) <= config.max_steps, record
    assert "Therefore" not in record.chain_of_thought
    used, previous = [], None
    for line in lines:
        found = EQUATION.findall(line)
        assert len(found) == 1 and len(re.findall(r"\d+", line)) == 3, line
        a, op, b, c = found[0]
        a, b, c = int(a), int(b), int(c)
        assert APPLY[op](a, b) == c, line
        assert all(0 <= v <= config.max_value for v in (a, b, c)), line
        # Every step builds on the one before, either as the running quantity or as the added one.
        assert previous is None or previous in (a, b), record
        used.append(op)
        previous = c
    assert record.answer == float(previous)
    assert format_number(record.answer) == str(previous)
    assert all(1 <= int(n) <= config.max_operand for n in re.findall(r"\d+", record.question)), record.question
    return used


def all_records(splits):
    return [r for name in ("train", "val", "test") for r in splits[name]]


def test_splits_have_exact_sizes_disjoint_questions_and_stable_uids():
    config = SyntheticConfig(**SMALL)
    splits = generate_splits(config)
    assert {name: len(records) for name, records in splits.items()} == {"train": 300, "val": 20, "test": 30}
    questions = {name: {r.question for r in records} for name, records in splits.items()}
    assert all(len(questions[name]) == len(splits[name]) for name in splits)
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    assert splits["val"][3].uid == "synthetic-1234-val-3"
    assert all(r.uid == f"synthetic-1234-{name}-{i}" for name, rs in splits.items() for i, r in enumerate(rs))


def test_same_seed_gives_identical_splits_and_another_seed_differs():
    first = generate_splits(SyntheticConfig(**SMALL))
    assert first == generate_splits(SyntheticConfig(**SMALL))
    other = generate_splits(SyntheticConfig(seed=99, **SMALL))
    assert [r.question for r in other["test"]] != [r.question for r in first["test"]]
    assert {r.question for r in other["train"]} != {r.question for r in first["train"]}


def test_test_and_val_membership_do_not_depend_on_num_train():
    small = generate_splits(SyntheticConfig(num_train=100, num_val=20, num_test=30))
    large = generate_splits(SyntheticConfig(num_train=2000, num_val=20, num_test=30))
    assert small["test"] == large["test"]
    assert small["val"] == large["val"]


def test_every_worked_solution_checks_out():
    config = SyntheticConfig(**SMALL)
    operators = set()
    for record in all_records(generate_splits(config)):
        operators.update(check_record(record, config))
    assert operators == {"+", "-", "*", "/"}


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_step_count_is_exact(steps):
    config = SyntheticConfig(min_steps=steps, max_steps=steps, **SMALL)
    for record in all_records(generate_splits(config)):
        assert len(check_record(record, config)) == steps


def test_a_single_operation_is_respected():
    for name, symbol in [("add", "+"), ("mul", "*")]:
        config = SyntheticConfig(operations=(name,), min_steps=1, max_steps=2, **SMALL)
        assert {op for r in all_records(generate_splits(config)) for op in check_record(r, config)} == {symbol}
    config = SyntheticConfig(operations=["sub", "div"], min_steps=2, max_steps=2, **SMALL)
    assert config.operations == ("sub", "div") and hash(config)
    assert {op for r in all_records(generate_splits(config)) for op in check_record(r, config)} == {"-", "/"}


def test_small_numbers_are_respected():
    config = SyntheticConfig(max_operand=4, max_value=30, min_steps=1, max_steps=4, **SMALL)
    for record in all_records(generate_splits(config)):
        check_record(record, config)  # question numbers <= 4, every value <= 30


def test_many_scenarios_and_names_show_up():
    records = generate_splits(SyntheticConfig(num_train=500, num_val=1, num_test=1))["train"]
    # Each scenario opens with its own verb right after the protagonist's name.
    verbs = {r.question.split()[1] for r in records}
    assert len(verbs) >= 5, verbs
    names = {word.strip(".,?") for r in records for word in r.question.split()} & set(NAMES)
    assert len(names) >= 25
    assert len(NAMES) >= 30 and len(synthetic.SCENARIOS) >= 5
    final_questions = {r.question.rsplit(". ", 1)[-1].split(" does ")[0] for r in records}
    assert len(final_questions) >= 10


def test_generate_problem_alone_is_deterministic_and_leaves_uid_empty():
    config = SyntheticConfig()
    first = [generate_problem(random.Random(7), config, k) for k in (1, 2, 3, 4)]
    assert first == [generate_problem(random.Random(7), config, k) for k in (1, 2, 3, 4)]
    for k, record in enumerate(first, start=1):
        assert record.uid == ""
        assert len(check_record(record, SyntheticConfig(min_steps=1, max_steps=4))) == k


@pytest.mark.parametrize(
    ("knobs", "key"),
    [
        ({"max_steps": 7}, "synthetic.max_steps must be between min_steps and 4, got 7"),
        ({"min_steps": 0}, "synthetic.min_steps"),
        ({"min_steps": 3, "max_steps": 2}, "synthetic.max_steps"),
        ({"num_train": -1}, "synthetic.num_train"),
        ({"num_val": 0}, "synthetic.num_val"),
        ({"num_test": 0}, "synthetic.num_test"),
        ({"max_operand": 1}, "synthetic.max_operand"),
        ({"max_value": 5}, "synthetic.max_value"),
        ({"operations": ()}, "synthetic.operations"),
        ({"operations": ("add", "pow")}, "synthetic.operations"),
        ({"operations": "add"}, "synthetic.operations"),
    ],
)
def test_impossible_knobs_are_refused_in_one_sentence(knobs, key):
    with pytest.raises(ValueError) as error:
        SyntheticConfig(**knobs)
    assert str(error.value).startswith(key) and "\n" not in str(error.value)


def test_knobs_that_cannot_make_a_problem_raise_instead_of_spinning():
    # Four exact divisions by 2 or more need a start of at least 16, above max_operand.
    config = SyntheticConfig(operations=("div",), min_steps=4, max_steps=4, **SMALL)
    with pytest.raises(ValueError, match="cannot make a 4-step problem"):
        generate_splits(config)
    with pytest.raises(ValueError, match="between 1 and 4 steps"):
        generate_problem(random.Random(0), SyntheticConfig(), 5)


def test_running_out_of_draws_raises(monkeypatch):
    monkeypatch.setattr(synthetic, "DRAWS_PER_PROBLEM", 1)
    with pytest.raises(ValueError, match="too few distinct problems"):
        generate_splits(SyntheticConfig(**SMALL))


def test_default_size_is_fast():
    start = time.process_time()
    splits = generate_splits(SyntheticConfig())
    assert len(splits["train"]) == 20000
    # About 1 s on a slow core; the margin is for busy CI machines, not for slack in the code.
    assert time.process_time() - start < 6.0
