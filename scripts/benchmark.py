"""Measure speed: ``python scripts/benchmark.py [--trl] [--sweep samples=2,4,8]`` (see docs/PERFORMANCE.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workflows.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
