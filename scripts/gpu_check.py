"""The GPU check: ``python scripts/gpu_check.py`` (see workflows/gpu_check.py and docs/PERFORMANCE.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workflows.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
