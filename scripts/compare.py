"""The comparison study: ``python scripts/compare.py`` (see docs/RESULTS.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workflows.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
