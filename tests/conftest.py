"""Shared test fixtures.

`../shared/` (beside the checkout) holds test material that users do not have; tests that need it
skip with a reason when it is absent. Set CORUN_SHARED to point elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CORUN_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"test material not found at {SHARED} (set CORUN_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def _few_threads():
    # CI has two cores; keep every test deterministic and inside them.
    torch.set_num_threads(2)
    yield


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """With ``-m "not slow"`` (``make test-fast``), do not even import a test file that is slow as a whole
    (``pytestmark = pytest.mark.slow``): importing them (notebooks, papermill, selenium) is seconds."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if config.getoption("markexpr", "").replace(" ", "") != "notslow":
        return None
    try:
        text = collection_path.read_text()
    except OSError:
        return None
    return True if "\npytestmark = pytest.mark.slow" in text else None
