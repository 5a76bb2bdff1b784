"""Train a policy: ``python scripts/train.py --method sft`` (see README)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workflows.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
