"""A few hundred random corruptions of real data files through the loader: the only outcomes
allowed are a correct load or the clean one-sentence DataError that names the file."""

from __future__ import annotations

import json
import random

import pytest

from datamodules.formats import load_records
from datamodules.records import DataError, Record


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One of: flip, insert or delete bytes; cut the file; drop, repeat or swap lines; rename,
    retype or remove a field; write a non-number answer; add non-UTF-8 bytes."""
    kind = rng.randrange(10)
    if kind == 0:  # flip a few bytes
        data = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # insert junk
        at = rng.randrange(len(data))
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[at:]
    if kind == 2:  # delete a span
        at = rng.randrange(len(data))
        return data[:at] + data[at + rng.randint(1, 40) :]
    if kind == 3:  # truncate
        return data[: rng.randrange(len(data))]
    if kind == 4:  # line surgery
        lines = data.split(b"\n")
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        lines.insert(rng.randrange(len(lines)), lines[rng.randrange(len(lines))][: rng.randint(0, 30)])
        return b"\n".join(lines)
    text = data.decode("utf-8")
    if kind in (5, 6, 7, 8):  # field-level damage on one record of a JSON lines or JSON list file
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if text.lstrip()[0] != "[" else json.loads(text)
        row = rows[rng.randrange(len(rows))]
        key = rng.choice(list(row))
        if kind == 5:
            row[key + "_x"] = row.pop(key)  # misnamed
        elif kind == 6:
            row[key] = rng.choice([None, 3, 2.5, [], {}, True, "", " "])  # wrong type or empty
        elif kind == 7:
            del row[key]  # missing
        else:
            row[key] = rng.choice(["twelve", "#### twelve", "1/0", "nan", "inf", "Therefore, the answer is <x>"])
        if text.lstrip()[0] == "[":
            return json.dumps(rows).encode()
        return "\n".join(json.dumps(r) for r in rows).encode()
    return data + b"\n\xff\xfe\x80 not utf-8"


SOURCES = [("gsm8k/test.jsonl", 40), ("reft/svamp_nl.json", 40), ("svamp/SVAMP.json", 40)]


@pytest.mark.parametrize("relative, rows", SOURCES)
def test_random_corruptions_load_or_fail_cleanly(sample_data, tmp_path, relative, rows):
    source = sample_data / relative
    if source.suffix == ".jsonl":
        data = b"\n".join(source.read_bytes().split(b"\n")[:rows])
    else:
        data = json.dumps(json.loads(source.read_text())[:rows]).encode()
    rng = random.Random(relative)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(120):
        path = tmp_path / f"{trial}{source.suffix}"
        path.write_bytes(corrupt(data, rng))
        for on_error in ("raise", "skip"):
            try:
                records = load_records(str(path), on_error=on_error)
            except DataError as error:
                message = str(error)
                assert str(path) in message and "\n" not in message, message
                outcomes["refused"] += 1
                continue
            # Anything else (KeyError, TypeError, UnicodeDecodeError, ...) fails the test.
            assert records and all(isinstance(r, Record) for r in records)
            for r in records:
                assert r.question.strip() and isinstance(r.answer, float) and r.answer == r.answer and abs(r.answer) != float("inf")
            outcomes["loaded"] += 1
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0, outcomes
