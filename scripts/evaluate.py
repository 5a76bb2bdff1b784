"""Evaluate a model: ``python scripts/evaluate.py runs/my-run --samples 8`` (see README)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workflows.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
