"""Answer extraction and checking (METHODS.md section 0): hand cases and the real data."""

from __future__ import annotations

import json

import pytest

from datamodules.answers import extract_answer, is_correct, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72", 72.0),
        ("  72\n", 72.0),
        ("-3", -3.0),
        ("\u22123", -3.0),  # unicode minus
        ("3.25", 3.25),
        (".5", 0.5),
        ("-.5", -0.5),
        ("3.", 3.0),
        ("7.", 7.0),  # trailing full stop
        ("$1,234.50", 1234.5),
        ("1,234,567", 1234567.0),
        ("<203>", 203.0),
        ("<203>.", 203.0),
        ("$5$", 5.0),
        ("\\boxed{5}", 5.0),
        ("\\boxed{\\frac{1}{2}}", 0.5),
        ("1/2", 0.5),
        ("-3/4", -0.75),
        ("1.5/0.5", 3.0),
        ("\\frac{1}{4}", 0.25),
        ("\\dfrac{-3}{4}", -0.75),
        ("-\\frac{1}{2}", -0.5),
    ],
)
def test_parse_number_accepts(text, expected):
    assert parse_number(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "abc", "3 apples", "5%", "1,2", "12,34", "1/0", "\\frac{1}{0}", "1e5", "inf", "nan",
     "0x1f", "--5", "1 2", "9" * 400, "\u0663", "<1> and <2>", "\\boxed{1", "{", "$", "."],
)
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_parse_number_never_raises_on_odd_input():
    for text in ["\\frac{", "\\frac{}{}", "/", "-/-", "<<>>", "\\boxed{}", "\x00", "1/-0", "$-$"]:
        assert parse_number(text) is None
    assert parse_number(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # rule 1: the ReFT/CARFT marker, colon optional, to the end of that line
        ("So 29 * 7 = 203.\n\nTherefore, the answer is <203>.", 203.0),
        ("Therefore, the answer is: 17", 17.0),
        ("Therefore, the answer is: $1,234.50", 1234.5),
        ("Therefore, the answer is \\boxed{5}", 5.0),
        ("therefore, the answer is -2.5\nextra line 99", -2.5),
        ("Therefore, the answer is 1\nTherefore, the answer is 2", 2.0),  # the LAST marker
        ("Therefore, the answer is: 1/2", 0.5),
        # rule 1 beats rule 2 beats rule 3
        ("#### 5\nTherefore, the answer is: 6", 6.0),
        ("\\boxed{7}\n#### 5", 5.0),
        ("#### 1\n#### 1,200", 1200.0),  # the LAST ####
        # rule 3: the last \boxed{...}, nested braces
        ("x = \\boxed{3} or \\boxed{\\frac{1}{2}}.", 0.5),
        ("The result is $\\boxed{-4}$.", -4.0),
    ],
)
def test_extract_answer_rules(text, expected):
    assert extract_answer(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "Therefore, the answer is 3 apples.",  # strict: the whole rest of the line must be a number
        "Therefore, the answer is <6%>.",
        "Therefore, the answer is\n42",  # nothing on the marker's line
        "#### 12 apples \\boxed{12}",  # #### present but garbage: no fall-through to \boxed
        "Therefore, the answer is unclear. #### 5 \\boxed{5}",  # marker garbage: None
        "\\boxed{2} and \\boxed{x}",  # the last box decides
        "\\boxed{3",  # unclosed box
        "I think it is 3 or 4.",  # a bare number only counts with the fallback
        "",
    ],
)
def test_extract_answer_unparseable_is_none(text):
    assert extract_answer(text) is None


def test_extract_answer_lenient_style_only_when_asked():
    text = "She has 3 apples and 1,250 pears left."
    assert extract_answer(text) is None
    assert extract_answer(text, "lenient") == 1250.0  # rule 5: the last number
    assert extract_answer("So -7.5 degrees.", "lenient") == -7.5
    assert extract_answer("no digits at all", "lenient") is None
    # Rule 4: after the last answer phrase, the whole line or its first number.
    assert extract_answer("3 + 4 = 7. The answer is: 17", "lenient") == 17.0
    assert extract_answer("The final answer is 52 apples, not 60.", "lenient") == 52.0
    assert extract_answer("Answer: $1,200.\nCheck: 2 * 600 = 1200 and 9", "lenient") == 1200.0
    assert extract_answer("The answer is 4.\nThe answer is: 9", "lenient") == 9.0
    assert extract_answer("#### 52\nThe answer is: 17", "lenient") == 52.0  # #### (rule 2) comes first
    assert extract_answer("The answer is unclear. 5", "lenient") == 5.0  # the first number on the phrase's line
    assert extract_answer("The answer is unclear.\n5", "lenient") is None
    # neither style overrides a present-but-garbage anchor of the papers' format
    assert extract_answer("Therefore, the answer is x. 5", "lenient") is None
    with pytest.raises(ValueError, match="unknown answer style"):
        extract_answer("5", "loose")


def test_is_correct_tolerance_edges():
    assert is_correct(1.01, 1.0)  # exactly tol (1.01 - 1.0 > 0.01 in binary floats) is inside
    assert is_correct(0.99, 1.0)
    assert is_correct(72.0, 72)
    assert not is_correct(1.011, 1.0)
    assert not is_correct(0.989, 1.0)
    assert not is_correct(None, 1.0)
    assert not is_correct(float("nan"), 1.0)
    assert not is_correct(float("inf"), 1.0)
    assert is_correct(1.5, 1.0, tol=0.5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_gold_answer_parses(full_data, split):
    lines = (full_data / "gsm8k" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    assert len(rows) == {"train": 7473, "test": 1319}[split]
    for row in rows:
        after_hashes = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert extract_answer(row["answer"]) == float(after_hashes), row["answer"][-60:]


def test_reft_svamp_cots_agree_with_answer_value(full_data):
    rows = json.loads((full_data / "reft" / "svamp_nl.json").read_text(encoding="utf-8"))
    exceptions = [
        (row["item_id"], row["answer_value"], extract_answer(row["answer_cot"]), row["answer_cot"][-50:])
        for row in rows
        if not is_correct(extract_answer(row["answer_cot"]), float(row["answer_value"]))
    ]
    print(f"{len(exceptions)} of {len(rows)} svamp_nl cots disagree with answer_value:")
    for item in exceptions:
        print("  ", item)
    # 17 of 3076 rows (99.45% agree). Three kinds:
    # - 7 percent answers, strictly unparseable: svamp_338 "Therefore, the answer is <6%>." (gold 6.0),
    #   likewise svamp_834, 1115, 1222, 1592, 2000 (<69.32%> vs gold 69.4), 2925;
    # - 9 "duplicate question" cots with no marker: svamp_852 "This question was already answered
    #   earlier. The answer is <4>.", likewise 993, 1085, 1650, 1753, 2033, 2109, 2636, 2697;
    # - 1 wrong annotation: svamp_929 "Therefore, the answer is <9>." (trucks rounded up) vs gold 8.9333.
    assert len(exceptions) == 17
    assert 1 - len(exceptions) / len(rows) >= 0.99


@pytest.mark.parametrize("split", ["train", "test"])
def test_excerpt_gsm8k_gold_answers_parse(sample_data, split):
    """The same check on the excerpts, which keep the rows with commas and minus signs."""
    lines = (sample_data / "gsm8k" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    assert len(rows) == 50
    finals = [row["answer"].rsplit("####", 1)[1].strip() for row in rows]
    assert sum("," in f for f in finals) == {"train": 7, "test": 8}[split]
    assert sum(f.startswith("-") for f in finals) == {"train": 3, "test": 2}[split]
    for row, final in zip(rows, finals):
        assert extract_answer(row["answer"]) == float(final.replace(",", "")), row["answer"][-60:]


def test_excerpt_reft_svamp_cots_agree_but_for_the_known_rows(sample_data):
    rows = json.loads((sample_data / "reft" / "svamp_nl.json").read_text(encoding="utf-8"))
    disagree = {
        row["item_id"] for row in rows if not is_correct(extract_answer(row["answer_cot"]), float(row["answer_value"]))
    }
    # two percent answers, three "duplicate question" rows, the one wrong annotation (see above)
    assert disagree == {"svamp_338", "svamp_2000", "svamp_852", "svamp_993", "svamp_2109", "svamp_929"}
    assert len(rows) == 46


def test_the_math_verify_checker_reads_latex_and_falls_back_off_the_main_thread():
    pytest.importorskip("math_verify")
    import threading

    from datamodules.answers import check_answer

    text = "The pears cost $\\frac{3}{2}$ each, so \\boxed{\\frac{3}{2}}."
    assert check_answer(text, extract_answer(text), 1.5, "math_verify")  # the box holds a LaTeX fraction
    assert not check_answer("\\boxed{\\frac{3}{4}}", None, 1.5, "math_verify")
    assert check_answer("Therefore, the answer is 12", 12.0, 12.0, "rule") and not check_answer("no number", None, 12.0, "rule")
    # math-verify's own timeouts need the main thread (signal.alarm); elsewhere the check runs without them.
    verdicts = []
    worker = threading.Thread(target=lambda: verdicts.append(check_answer("so \\boxed{52}", None, 52.0, "math_verify")))
    worker.start()
    worker.join()
    assert verdicts == [True]
    with pytest.raises(ValueError, match="unknown answer checker"):
        check_answer("5", 5.0, 5.0, "exact")


def test_the_rule_reward_follows_the_checkers_verdict():
    from datamodules.answers import rule_reward

    assert [rule_reward(3.0, 3.0), rule_reward(4.0, 3.0), rule_reward(None, 3.0)] == [1.0, 0.1, 0.0]
    assert rule_reward(None, 1.5, correct=True) == 1.0 and rule_reward(1.5, 1.5, correct=False) == 0.1
