from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The real data sets live beside the project (../shared/data), never inside it.
SHARED_DATA = ROOT.parent / "shared" / "data"
# Small excerpts of the same files, kept with the tests (see tests/data/README.md).
SAMPLE_DATA = ROOT / "tests" / "data"
# Where the full data sets are, when not at ../shared/data.
FULL_DATA_ENV = "REASONING_RL_DATA"


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """Excerpts (at most 50 rows) of each real data file, same names and formats; always present."""
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def full_data() -> Path:
    """The whole real data files: $REASONING_RL_DATA, else ../shared/data; the test is skipped without them."""
    path = Path(os.environ.get(FULL_DATA_ENV) or SHARED_DATA)
    if not path.is_dir():
        pytest.skip(f"the full data sets were not found at {path}; set {FULL_DATA_ENV} to the folder that holds them")
    return path


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One cache for the session, so the tiny embedded model is built once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def tiny_args(model_cache, tmp_path) -> list[str]:
    """Overrides for a run that takes seconds: a 2-layer, 32-wide Llama and a few hundred problems."""
    return [
        "--model.cache_dir", str(model_cache),
        "--model.embedded.hidden_size", "32",
        "--model.embedded.num_layers", "2",
        "--model.embedded.num_heads", "2",
        "--model.embedded.intermediate_size", "64",
        "--data.synthetic.num_train", "300",
        "--data.synthetic.num_val", "12",
        "--data.synthetic.num_test", "12",
        "--data.batch_size", "8",
        "--data.eval_batch_size", "12",
        "--trainer.max_new_tokens", "16",
        "--trainer.log_every_n_steps", "1",
        "--runs_dir", str(tmp_path / "runs"),
    ]
