"""Bytes per GPU of a training run, part by part: ``python scripts/memory_plan.py --model qwen2.5-7b --method rlsc --strategy fsdp --gpus 8``
(``--table``: docs/PERFORMANCE.md's table; ``--check``: the plan against measured peaks on this CPU)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workflows.memory import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
