"""Shared test helpers: where ../shared lives, and skipping cleanly when it is absent (failing under CI)."""

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


# Set by .ci/run: there a missing ../shared fails the test, so CI cannot go green with the upstream-compatibility
# proof (fixtures, real BEAT2 sample) skipped. A user's fresh clone has no ../shared and skips cleanly.
REQUIRE_SHARED_ENV = "GESTURELSM_REQUIRE_SHARED"


def need(path: Path) -> Path:
    """``path`` (a file from ../shared) when it exists; else skip the calling test, or fail it when the environment
    variable GESTURELSM_REQUIRE_SHARED is set to 1 (as in CI)."""
    if not path.exists():
        msg = f"needs {path} (../shared is not present; set GESTURELSM_SHARED to its folder)"
        if os.environ.get(REQUIRE_SHARED_ENV, "") not in ("", "0"):
            pytest.fail(f"{msg}; {REQUIRE_SHARED_ENV}=1 forbids skipping", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return need(FIXTURES)


@pytest.fixture
def beat2_sample() -> Path:
    return need(BEAT2_SAMPLE)
