"""Every data source path of load_records, on the real files and on small broken ones."""

from __future__ import annotations

import json
import logging

import pytest

from datamodules.formats import load_records
from datamodules.records import DataError, Record

GSM8K_ROW = {"question": "What is 2+3?", "answer": "2+3 = <<2+3=5>>5 apples.\n#### 5"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- the real files: the whole files (skipped without them) -------------------------------


@pytest.mark.parametrize(
    ("relative", "count"),
    [
        ("gsm8k/train.jsonl", 7473),
        ("gsm8k/test.jsonl", 1319),
        ("reft/svamp_nl.json", 3076),
        ("reft/svamp_test_set.json", 1000),
        ("svamp/SVAMP.json", 1000),
        ("reft/gsm8k_test_set.json", 1319),
    ],
)
def test_real_files_row_counts(full_data, relative, count):
    records = load_records(str(full_data / relative))
    assert len(records) == count
    assert all(isinstance(r, Record) and r.question for r in records)
    assert len({r.uid for r in records}) == count


def assert_gsm8k_cots_clean(records):
    assert not any("<<" in r.chain_of_thought or ">>" in r.chain_of_thought for r in records)
    assert not any("####" in r.chain_of_thought for r in records)


def assert_reft_cots_clean(records):
    assert not any("Therefore, the answer is" in r.chain_of_thought for r in records)
    assert all(r.chain_of_thought == r.chain_of_thought.rstrip() for r in records)


def test_whole_gsm8k_train_loses_its_markup(full_data):
    records = load_records(str(full_data / "gsm8k" / "train.jsonl"))
    assert records[2583].answer == 1200.0  # line 2584 ends "#### 1,200"
    assert_gsm8k_cots_clean(records)


def test_whole_reft_svamp_nl_loses_its_answer_lines(full_data):
    records = load_records(str(full_data / "reft" / "svamp_nl.json"))
    assert_reft_cots_clean(records)
    dup = next(r for r in records if r.uid == "svamp_852")
    assert dup.chain_of_thought == "This question was already answered earlier."


# ---- the real files: excerpts in tests/data ------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "count"),
    [
        ("gsm8k/train.jsonl", 50),
        ("gsm8k/test.jsonl", 50),
        ("reft/svamp_nl.json", 46),
        ("reft/svamp_test_set.json", 40),
        ("svamp/SVAMP.json", 40),
        ("reft/gsm8k_test_set.json", 50),
    ],
)
def test_sample_files_row_counts(sample_data, relative, count):
    records = load_records(str(sample_data / relative))
    assert len(records) == count
    assert all(isinstance(r, Record) and r.question for r in records)
    assert len({r.uid for r in records}) == count


def test_gsm8k_train(sample_data):
    records = load_records(str(sample_data / "gsm8k" / "train.jsonl"))
    first = records[0]
    assert first.uid == "train.jsonl:1"
    assert first.question.startswith("Natalia sold clips to 48 of her friends")
    assert first.answer == 72.0
    assert first.chain_of_thought == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert records[46].answer == 1200.0  # line 47 (line 2584 of the whole file) ends "#### 1,200"
    assert [r.answer for r in records[47:]] == [-7.0, -47.0, -12.0]
    assert_gsm8k_cots_clean(records)


def test_gsm8k_keep_calculator_notes(sample_data):
    first = load_records(str(sample_data / "gsm8k" / "train.jsonl"), keep_calculator_notes=True, limit=1)[0]
    assert first.chain_of_thought.startswith("Natalia sold 48/2 = <<48/2=24>>24 clips in May.")


def test_reft_svamp_nl(sample_data):
    records = load_records(str(sample_data / "reft" / "svamp_nl.json"))
    first = records[0]
    assert first.uid == "svamp_0"
    assert first.question.startswith("tyler an animal rights advocate")
    assert first.answer == 203.0
    assert first.chain_of_thought.endswith(
        "Therefore, Tyler has a total of 203 pairs of birds in the bird sanctuary."
    )
    # the excerpt keeps the odd endings too: "<6%>", "<69.32%>", "<9>" (gold 8.9333333333)
    assert_reft_cots_clean(records)
    # the "duplicate question" rows end "... The answer is <4>." instead; that goes too
    dup = next(r for r in records if r.uid == "svamp_852")
    assert dup.chain_of_thought == "This question was already answered earlier."


def test_reft_test_sets(sample_data):
    svamp = load_records(str(sample_data / "reft" / "svamp_test_set.json"))
    assert svamp[0] == Record("svamp_3735", svamp[0].question, 14.0, None)
    gsm8k = {r.uid: r for r in load_records(str(sample_data / "reft" / "gsm8k_test_set.json"))}
    assert gsm8k["gsm8k_0"].answer == 18.0 and gsm8k["gsm8k_0"].question.startswith("Janet")
    assert gsm8k["gsm8k_489"].answer == -10.0


def test_svamp(sample_data):
    first = load_records(str(sample_data / "svamp" / "SVAMP.json"))[0]
    assert first == Record(
        "chal-1",
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?",
        51.0,
        None,
    )


def test_forced_format_and_bad_fmt(sample_data):
    path = str(sample_data / "reft" / "svamp_test_set.json")
    assert len(load_records(path, fmt="reft", limit=3)) == 3
    with pytest.raises(DataError, match=r"svamp_test_set\.json row 0 has no field 'answer'"):
        load_records(path, fmt="gsm8k")
    with pytest.raises(ValueError, match="fmt"):
        load_records(path, fmt="csv")


def test_limit(sample_data):
    records = load_records(str(sample_data / "gsm8k" / "test.jsonl"), limit=5)
    assert [r.uid for r in records] == [f"test.jsonl:{i}" for i in range(1, 6)]
    with pytest.raises(ValueError, match="limit"):
        load_records(str(sample_data / "gsm8k" / "test.jsonl"), limit=0)


# ---- the hub path --------------------------------------------------------------------------


def test_hub_path(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([GSM8K_ROW, {"question": "Q2", "answer": "x\n#### 1,234"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_records("openai/gsm8k", hub_config="main")
    assert calls == [(("openai/gsm8k", "main"), {"split": "train"})]
    assert records == [
        Record("openai/gsm8k:train:0", "What is 2+3?", 5.0, "2+3 = 5 apples."),
        Record("openai/gsm8k:train:1", "Q2", 1234.0, "x"),
    ]


def test_hub_failure_message(monkeypatch):
    import datasets

    def failing(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nope/nothing' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError) as err:
        load_records("nope/nothing")
    assert str(err.value) == (
        "data source 'nope/nothing' is neither a local file nor a loadable hub data set "
        "(Couldn't reach 'nope/nothing' on the Hub (LocalEntryNotFoundError))"
    )


def test_missing_local_file_does_not_try_the_hub(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub was called"))
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"nope\.jsonl' is neither a local file nor a loadable hub data set \(no such file\)"):
        load_records(missing)


# ---- bad input -----------------------------------------------------------------------------


def test_malformed_json_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K_ROW) + "\n\n" + '{"question": "q" "answer": "#### 1"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records(str(path))
    assert str(err.value) == f"{path} line 3 is not valid JSON: Expecting ',' delimiter"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["not", "an", "object"]], "line 1 is not a JSON object (it is a list)"),
        ([{"questio": "q", "answer": "#### 1"}], "line 1 has fields (questio, answer) of no known format"),
        ([GSM8K_ROW, {"question": "q", "answr": "#### 1"}], "line 2 has no field 'answer' (fields found: question, answr)"),
        ([{"question": 7, "answer": "#### 1"}], "line 1 has field 'question' that is not a non-empty string: 7"),
        ([{"question": "  ", "answer": "#### 1"}], "line 1 has field 'question' that is not a non-empty string"),
        ([{"question": "q", "answer": "so 5"}], "line 1 has an 'answer' without the final '#### N' line"),
        ([{"question": "q", "answer": "x\n#### five"}], "line 1 has an 'answer' whose value after '####' is not a number: 'five'"),
        ([{"question": "q", "answer_value": "abc"}], "line 1 has field 'answer_value' that is not a number: 'abc'"),
        ([{"question": "q", "answer_value": True}], "line 1 has field 'answer_value' that is not a number: True"),
        ([{"question": "q", "answer_value": "3", "answer_cot": 5}], "line 1 has field 'answer_cot' that is not a string"),
        ([{"Body": "b", "Question": "q", "Answer": None}], "line 1 has field 'Answer' that is not a number: None"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_records(str(path))
    assert str(err.value).startswith(f"{path} {message}")


def test_bad_json_containers(tmp_path):
    not_list = tmp_path / "obj.json"
    not_list.write_text('{"question": "q"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"obj\.json is not a JSON list of objects \(it holds a dict\)"):
        load_records(str(not_list))

    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "q",}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json is not valid JSON: .* \(line 1 column 19\)"):
        load_records(str(broken))

    row_not_object = tmp_path / "rows.json"
    row_not_object.write_text(json.dumps([{"Body": "b", "Question": "q", "Answer": 1.0}, "text"]), encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.json row 1 is not a JSON object \(it is a str\)"):
        load_records(str(row_not_object))


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", "\n  \n"), ("empty.json", "[]")])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records(str(path))
    assert str(err.value) == f"{path} contains no records"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(DataError) as err:
        load_records(str(path))
    assert str(err.value) == f"{path} is not valid UTF-8 text (byte 0xe9 at offset 17)"


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.csv has the extension '\.csv'; expected \.jsonl or \.json"):
        load_records(str(path))


def test_bad_on_error_value(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        load_records(str(write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW])), on_error="ignore")


# ---- on_error="skip" -----------------------------------------------------------------------


def test_skip_counts_and_logs_once(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join([
            json.dumps({"question": "q", "answer": "no hashes"}),  # line 1: detected gsm8k, bad
            json.dumps(GSM8K_ROW),
            "{not json",
            json.dumps({"question": "q2", "answer": "#### 2"}),
            json.dumps([1]),
        ]),
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="datamodules.formats"):
        records = load_records(str(path), on_error="skip")
    assert [(r.uid, r.answer) for r in records] == [("mixed.jsonl:2", 5.0), ("mixed.jsonl:4", 2.0)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert message.startswith(f"skipped 3 bad rows of {path}; the first: {path} line 1 has an 'answer' without")


def test_skip_with_nothing_left_still_raises(tmp_path, caplog):
    path = write_jsonl(tmp_path / "allbad.jsonl", [{"question": "q"}, {"x": 1}])
    with pytest.raises(DataError, match=r"allbad\.jsonl contains no records \(2 bad rows skipped; the first: .*line 1"):
        load_records(str(path), on_error="skip")
