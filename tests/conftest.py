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
