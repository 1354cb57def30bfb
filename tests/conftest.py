"""Shared test helpers: where ../shared lives, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GESTURELSM_SHARED", REPO_ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "upstream_compat"
BEAT2_SAMPLE = SHARED / "data" / "beat2_sample"

torch.set_num_threads(min(2, torch.get_num_threads()))


def need(path: Path) -> Path:
    """Skip the calling test when a file from ../shared is missing (a user's fresh clone has no ../shared)."""
    if not path.exists():
        pytest.skip(f"needs {path} (../shared is not present)")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return need(FIXTURES)


@pytest.fixture
def beat2_sample() -> Path:
    return need(BEAT2_SAMPLE)
