"""Rebuild the excerpts in tests/data from the full data sets (see README.md here).

    python tests/data/make_excerpts.py [FULL_DATA_DIR]

FULL_DATA_DIR defaults to $REASONING_RL_DATA, else ../shared/data beside the project. Rows keep
their order in the full file and their exact text: JSON lines are copied byte for byte, JSON
lists are written back the way the full files are (indent 2 or 4, non-ASCII kept).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

FIRST = list(range(40))  # the first 40 rows of a file (tests/test_fuzz.py corrupts the first 40)
# 0-based row indices taken from each full file, beyond its first 40 rows.
EXTRA = {
    # line 2584 ends "#### 1,200"; three negative answers; six answers with thousands commas
    "gsm8k/train.jsonl": [2583, 5715, 5844, 6189, 345, 367, 462, 497, 643, 644],
    # both negative answers (-10, -3); eight answers with thousands commas
    "gsm8k/test.jsonl": [489, 1113, 146, 201, 230, 249, 505, 610, 611, 640],
    # the same GSM8K test questions as gsm8k/test.jsonl (gsm8k_489 is -10)
    "reft/gsm8k_test_set.json": [489, 1113, 146, 201, 230, 249, 505, 610, 611, 640],
    # rows whose chain of thought disagrees with answer_value: percent answers svamp_338 (<6%>)
    # and svamp_2000 (<69.32%> vs 69.4), "duplicate question" rows svamp_852, svamp_993 (3.333)
    # and svamp_2109 (17408), the wrong annotation svamp_929 (<9> vs 8.9333333333)
    "reft/svamp_nl.json": [336, 1961, 837, 973, 2068, 914],
    "reft/svamp_test_set.json": [],
    "svamp/SVAMP.json": [],
}
INDENT = {"reft/gsm8k_test_set.json": 2, "reft/svamp_nl.json": 2, "reft/svamp_test_set.json": 2, "svamp/SVAMP.json": 4}


def main(full: Path) -> None:
    for relative, extra in EXTRA.items():
        rows = sorted(set(FIRST + extra))
        assert len(rows) <= 50, relative
        source, target = full / relative, HERE / relative
        target.parent.mkdir(exist_ok=True)
        if source.suffix == ".jsonl":
            lines = [line for line in source.read_text(encoding="utf-8").split("\n") if line.strip()]
            target.write_text("".join(lines[i] + "\n" for i in rows), encoding="utf-8")
        else:
            data = json.loads(source.read_text(encoding="utf-8"))
            text = json.dumps([data[i] for i in rows], indent=INDENT[relative], ensure_ascii=False)
            target.write_text(text, encoding="utf-8")
        shutil.copyfile(source.parent / "LICENSE", target.parent / "LICENSE")
        print(f"{relative}: {len(rows)} rows")


if __name__ == "__main__":
    default = os.environ.get("REASONING_RL_DATA") or ROOT.parent / "shared" / "data"
    main(Path(sys.argv[1] if len(sys.argv) > 1 else default))
