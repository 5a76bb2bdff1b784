from __future__ import annotations

import hashlib
import operator
import random
import re
import time
from collections import Counter, defaultdict

import pytest

from datamodules import synthetic
from datamodules.answers import extract_answer
from datamodules.prompts import format_target, tokenizer_corpus
from datamodules.records import format_number
from datamodules.synthetic import (
    NAMES,
    SOLUTION_STYLES,
    SyntheticConfig,
    generate_problem,
    generate_splits,
    write_solution,
)

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
        ({"solution_styles": 0}, "synthetic.solution_styles must be between 1 and 8, got 0"),
        ({"solution_styles": 9}, "synthetic.solution_styles"),
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


# ---- solution styles ---------------------------------------------------------------------------
# Equations as the styles write them: "3 * 4 = 12" or "3 times 4 is 12".
ANY_EQUATION = re.compile(r"(\d+) ([-+*/]|plus|minus|times|divided by) (\d+) (?:=|is) (\d+)")
WORDS = {"plus": "+", "minus": "-", "times": "*", "divided by": "/"}
FRACTION_WORDS = {"half": 2, "a third": 3, "a quarter": 4}


def check_styled_record(record, config: SyntheticConfig) -> list[tuple[int, str, int, int]]:
    """Re-derives a solution in any style by data flow: each line holds one right equation whose
    operands are numbers of the story or results of earlier lines, every result but the last is
    used later, and the last one is the answer. Returns the equations."""
    lines = record.chain_of_thought.split("\n")
    assert config.min_steps <= len(lines) <= config.max_steps, record
    assert "therefore" not in record.chain_of_thought.lower() and "####" not in record.chain_of_thought
    told = {int(n) for n in re.findall(r"\d+", record.question)}
    told |= {v for word, v in FRACTION_WORDS.items() if f" {word} as many" in record.question}
    results, unused, equations = set(), [], []
    for line in lines:
        found = ANY_EQUATION.findall(line)
        assert len(found) == 1, line
        a, op, b, c = found[0]
        a, op, b, c = int(a), WORDS.get(op, op), int(b), int(c)
        assert APPLY[op](a, b) == c, line
        assert set(map(int, re.findall(r"\d+", line))) <= {a, b, c}, line  # the result may be repeated
        assert all(0 <= v <= config.max_value for v in (a, b, c)), line
        for operand in (a, b):
            assert operand in told or operand in results, (operand, record)
            if operand in unused:
                unused.remove(operand)
        results.add(c)
        unused.append(c)
        equations.append((a, op, b, c))
    assert unused == [equations[-1][3]], record  # no dangling result
    assert record.answer == float(equations[-1][3])
    assert extract_answer(format_target(record)) == record.answer
    return equations


def _digest(records) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(repr((r.uid, r.question, r.chain_of_thought, r.answer)).encode())
    return h.hexdigest()


def test_one_style_writes_the_records_of_before_styles_existed_byte_for_byte():
    # Digests of the generator's output at the commit before solution_styles, computed there.
    splits = generate_splits(SyntheticConfig(num_train=200, num_val=20, num_test=20))
    assert _digest(splits["train"] + splits["val"] + splits["test"]) == (
        "6e3a7ac7aeac41b0bedbfd5aaadb7be74b360708f51b89b4bbd5cb2d4b0c04d2")
    wide = SyntheticConfig(seed=7, num_train=200, num_val=20, num_test=20, min_steps=2, max_steps=4,
                           max_operand=20, max_value=500)
    splits = generate_splits(wide)
    assert _digest(splits["train"] + splits["val"] + splits["test"]) == (
        "da18b4f84caf5042dc10b194d03970602d263324e6cdbbbd8b07847bc55330fa")
    problems = [generate_problem(random.Random(7), SyntheticConfig(), k) for k in (1, 2, 3, 4)]
    assert _digest(problems) == "28372f96666e2c37f1961d84c40d1662613c374ffcfa9306d0e225cdc1505409"
    # The embedded tokenizer is trained on this text, so it stays the same too.
    corpus = hashlib.sha256()
    for text in tokenizer_corpus():
        corpus.update(text.encode() + b"\0")
    assert corpus.hexdigest() == "91fcf44c48abe70210ec39a250d027f8e79c37376b8a69b37eda2fff3072c6a6"


@pytest.mark.parametrize("steps", [(1, 3), (4, 4)])
def test_every_styled_solution_checks_out_and_only_the_solutions_change(steps):
    knobs = dict(SMALL, min_steps=steps[0], max_steps=steps[1])
    plain = all_records(generate_splits(SyntheticConfig(**knobs)))
    styled = all_records(generate_splits(SyntheticConfig(solution_styles=8, **knobs)))
    assert [(r.uid, r.question, r.answer) for r in styled] == [(r.uid, r.question, r.answer) for r in plain]
    config = SyntheticConfig(solution_styles=8, **knobs)
    for record in styled:
        check_styled_record(record, config)
    changed = sum(a.chain_of_thought != b.chain_of_thought for a, b in zip(plain, styled))
    assert changed > len(styled) / 2
    # Some styled solutions keep the original template (style 0 is among those drawn).
    assert changed < len(styled)


def test_styles_reorder_independent_steps_and_commutative_operands():
    config = SyntheticConfig(solution_styles=8, min_steps=3, max_steps=4, **SMALL)
    late_independent = swapped = 0
    for record in all_records(generate_splits(config)):
        told = {int(n) for n in re.findall(r"\d+", record.question)}
        equations = check_styled_record(record, config)
        results = [c for _, _, _, c in equations]
        # A line after the first whose operands are both from the story: grouped, then moved.
        late_independent += any(a in told and b in told and a not in results[:i] and b not in results[:i]
                                for i, (a, _, b, _) in enumerate(equations) if i > 0)
        # The running quantity written second, as in "4 + 15 = 19".
        swapped += any(b == results[i - 1] and a != results[i - 1] for i, (a, _, b, _) in enumerate(equations) if i)
    assert late_independent >= 5 and swapped >= 20


def test_styled_solutions_are_deterministic_per_seed_and_question():
    config = SyntheticConfig(solution_styles=8, **SMALL)
    first = generate_splits(config)
    assert first == generate_splits(SyntheticConfig(solution_styles=8, **SMALL))
    # The same question gets the same solution whatever else is drawn around it.
    bigger = generate_splits(SyntheticConfig(solution_styles=8, num_train=600, num_val=20, num_test=30))
    assert bigger["test"] == first["test"] and bigger["train"][:300] == first["train"]
    problems = [generate_problem(random.Random(7), config, k) for k in (1, 2, 3, 4)]
    assert problems == [generate_problem(random.Random(7), config, k) for k in (1, 2, 3, 4)]


def _masked(text: str) -> str:
    text = re.sub(r"\d+", "N", text)
    return re.sub(r"\b(" + "|".join(NAMES) + r")\b", "P", text)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_problems_of_one_structure_get_at_least_k_distinct_solutions(k):
    knobs = dict(num_train=5000, num_val=1, num_test=1)
    plain = generate_splits(SyntheticConfig(**knobs))["train"]
    styled = generate_splits(SyntheticConfig(solution_styles=k, **knobs))["train"]
    # A structure: the original solution with numbers and names masked (scenario, steps, wording).
    solutions = defaultdict(set)
    for a, b in zip(plain, styled):
        solutions[_masked(a.chain_of_thought)].add(_masked(b.chain_of_thought))
    largest = Counter(_masked(r.chain_of_thought) for r in plain).most_common(3)
    assert all(len(solutions[key]) >= k for key, _ in largest), [solutions[key] for key, _ in largest]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_every_style_writes_a_problem_differently_and_style_zero_is_the_template(steps):
    config = SyntheticConfig(solution_styles=8)
    rng = random.Random(3)
    for _ in range(40):
        question, solution, answer, work = synthetic._draw(rng, config, steps)
        texts = [write_solution(work, style, random.Random(0)) for style in SOLUTION_STYLES]
        assert texts[0] == solution
        assert len(set(texts)) == len(SOLUTION_STYLES), texts
        for text in texts:
            record = synthetic.Record(uid="", question=question, answer=float(answer), chain_of_thought=text)
            check_styled_record(record, SyntheticConfig(min_steps=1, max_steps=4))


def test_train_offset_takes_the_next_problems_of_the_stream():
    """The protocol's training set comes after the base model's problems: disjoint from them,
    the continuation of one longer stream, with the same val and test problems."""
    from datamodules.synthetic import SyntheticConfig, generate_splits

    first = generate_splits(SyntheticConfig(num_train=300, num_val=20, num_test=20))
    after = generate_splits(SyntheticConfig(num_train=100, train_offset=300, num_val=20, num_test=20))
    longer = generate_splits(SyntheticConfig(num_train=400, num_val=20, num_test=20))
    assert [r.question for r in after["train"]] == [r.question for r in longer["train"][300:]]
    assert not {r.question for r in first["train"]} & {r.question for r in after["train"]}
    assert after["val"] == first["val"] and after["test"] == first["test"]
    with pytest.raises(ValueError, match="train_offset must be at least 0"):
        SyntheticConfig(train_offset=-1)
