"""Read every supported data source (local .jsonl / .json file or Hugging Face hub set) into
``list[Record]``.

Formats: ``gsm8k`` (question, answer = worked solution
ending ``#### N``), ``reft`` (question, answer_value, optional answer_cot), ``svamp``
(Body, Question, Answer). Bad input raises ``DataError`` with one sentence naming the file and
row; with ``on_error="skip"`` bad rows are skipped, counted and reported in one warning.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datamodules.answers import parse_number
from datamodules.records import DataError, Record, first_line

log = logging.getLogger(__name__)

FORMATS = ("gsm8k", "reft", "svamp")

# GSM8K calculator annotations such as "<<48/2=24>>": tool-use markup, not reasoning text.
_CALCULATOR_NOTE = re.compile(r"<<.*?>>")
# The ReFT answer sentence(s) at the very end of answer_cot ("Therefore, the answer is <203>.",
# and the few "... The answer is <4>." rows); the project re-appends its own uniform line.
_FINAL_ANSWER = re.compile(
    r"(?:^|(?<=[.!?:])[ \t]+)(?:therefore,?[ \t]*)?the answer is\b[^\n]*\s*\Z", re.I | re.M
)

Row = tuple[str, str, Any]  # (where, default uid, row object or the DataError that row is)
Parsed = tuple[str, float, str | None, str | None]  # (question, answer, chain_of_thought, uid)


class _BadRow(ValueError):
    """A row-level problem; the loader prefixes the file and row."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(row: dict, name: str) -> Any:
    if name not in row:
        raise _BadRow(f"has no field {name!r} (fields found: {', '.join(map(str, row)) or 'none'})")
    return row[name]


def _text(row: dict, name: str) -> str:
    value = _field(row, name)
    if not isinstance(value, str) or not value.strip():
        raise _BadRow(f"has field {name!r} that is not a non-empty string: {_short(value)}")
    return value.strip()


def _number(row: dict, name: str) -> float:
    value = _field(row, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if math.isfinite(value) else None
    else:
        number = parse_number(value) if isinstance(value, str) else None
    if number is None:
        raise _BadRow(f"has field {name!r} that is not a number: {_short(value)}")
    return number


def _uid(row: dict, name: str) -> str | None:
    return str(row[name]) if row.get(name) is not None else None


def _parse_gsm8k(row: dict, keep_calculator_notes: bool) -> Parsed:
    question, solution = _text(row, "question"), _text(row, "answer")
    if "####" not in solution:
        raise _BadRow(f"has an 'answer' without the final '#### N' line: {_short(solution[-40:])}")
    reasoning, _, final = solution.rpartition("####")
    answer = parse_number(final)
    if answer is None:
        raise _BadRow(f"has an 'answer' whose value after '####' is not a number: {_short(final.strip())}")
    if not keep_calculator_notes:
        reasoning = _CALCULATOR_NOTE.sub("", reasoning)
    return question, answer, reasoning.strip() or None, None


def _parse_reft(row: dict, keep_calculator_notes: bool) -> Parsed:
    question, answer = _text(row, "question"), _number(row, "answer_value")
    cot = row.get("answer_cot")
    if cot is not None:
        if not isinstance(cot, str):
            raise _BadRow(f"has field 'answer_cot' that is not a string: {_short(cot)}")
        cot = _FINAL_ANSWER.sub("", cot).rstrip() or None
    return question, answer, cot, _uid(row, "item_id")


def _parse_svamp(row: dict, keep_calculator_notes: bool) -> Parsed:
    question = f"{_text(row, 'Body')} {_text(row, 'Question')}"
    return question, _number(row, "Answer"), None, _uid(row, "ID")


_PARSERS: dict[str, Callable[[dict, bool], Parsed]] = {
    "gsm8k": _parse_gsm8k,
    "reft": _parse_reft,
    "svamp": _parse_svamp,
}


def _detect(row: dict) -> str:
    keys = set(row)
    if "answer_value" in keys:
        return "reft"
    if {"Body", "Question", "Answer"} <= keys:
        return "svamp"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    raise _BadRow(
        f"has fields ({', '.join(map(str, row)) or 'none'}) of no known format; expected gsm8k "
        "(question, answer), reft (question, answer_value) or svamp (Body, Question, Answer)"
    )


def _decode(path: Path, src: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{src} is not valid UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None


def _read_jsonl(path: Path, src: str) -> Iterator[Row]:
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and similar.
    for number, line in enumerate(_decode(path, src).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{src} line {number}"
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as err:
            row = DataError(f"{where} is not valid JSON: {err.msg}")
        yield where, f"{path.name}:{number}", row


def _read_json(path: Path, src: str) -> Iterator[Row]:
    try:
        rows = json.loads(_decode(path, src))
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise DataError(f"{src} is not valid JSON: {err.msg} ({where})") from None
    if not isinstance(rows, list):
        raise DataError(f"{src} is not a JSON list of objects (it holds a {type(rows).__name__})")
    for index, row in enumerate(rows):
        yield f"{src} row {index}", f"{path.name}:{index}", row


def _read_hub(source: str, hub_config: str | None, split: str) -> Iterator[Row]:
    try:
        import datasets

        rows = datasets.load_dataset(source, hub_config, split=split)
    except Exception as err:  # no network, unknown name, bad config: all mean "cannot load"
        reason = first_line(err)
        raise DataError(
            f"data source {source!r} is neither a local file nor a loadable hub data set ({reason})"
        ) from err
    for index, row in enumerate(rows):
        yield f"{source} ({split}) row {index}", f"{source}:{split}:{index}", row


def load_records(
    source: str,
    *,
    split: str = "train",
    hub_config: str | None = None,
    fmt: str = "auto",
    on_error: str = "raise",
    keep_calculator_notes: bool = False,
    limit: int | None = None,
) -> list[Record]:
    """Read ``source`` (a local .jsonl/.json file, else a hub data set name) into records.

    ``fmt`` is "auto" (detected from the first good row's fields) or one of ``FORMATS``;
    ``limit`` keeps the first ``limit`` records.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"fmt must be 'auto' or one of {FORMATS}, not {fmt!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of records or None, not {limit!r}")

    path = Path(source)
    src = str(source)
    if path.is_file():
        readers = {".jsonl": _read_jsonl, ".json": _read_json}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{src} has the extension {path.suffix!r}; expected .jsonl or .json")
        rows = reader(path, src)
    elif path.suffix.lower() in (".jsonl", ".json"):  # a mistyped path: skip ~25 s of hub retries
        raise DataError(
            f"data source {src!r} is neither a local file nor a loadable hub data set (no such file)"
        )
    else:
        rows = _read_hub(src, hub_config, split)

    records: list[Record] = []
    skipped: list[str] = []
    kind = None if fmt == "auto" else fmt
    for where, default_uid, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, dict):
                raise _BadRow(f"is not a JSON object (it is a {type(row).__name__})")
            kind = kind or _detect(row)
            question, answer, cot, uid = _PARSERS[kind](row, keep_calculator_notes)
        except (_BadRow, DataError) as err:
            reason = str(err) if isinstance(err, DataError) else f"{where} {err}"
            if on_error == "raise":
                raise DataError(reason) from None
            skipped.append(reason)
            continue
        records.append(Record(uid or default_uid, question, answer, cot))
        if limit is not None and len(records) >= limit:
            break

    if skipped:
        log.warning("skipped %d bad rows of %s; the first: %s", len(skipped), src, skipped[0])
    if not records:
        detail = f" ({len(skipped)} bad rows skipped; the first: {skipped[0]})" if skipped else ""
        raise DataError(f"{src} contains no records{detail}")
    return records
