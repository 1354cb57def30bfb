"""Shared test helpers: where ../shared lives, and skipping cleanly when it is absent (failing under CI)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------------------------------------------- a tiny model
TINY_STAGES = "[corpus,cache,fgd_ae,rvq_upper,rvq_hands,rvq_lower_trans,gen_shortcut]"


@pytest.fixture(scope="session")
def pipe(tmp_path_factory) -> dict:
    """The ci_tiny pipeline's stages up to the shortcut generator (the tiny training tests/test_pipeline.py runs;
    ~1-2 min), built once per test session for every module that generates from audio (CLI, web demo)."""
    from pipeline.main import main as pipeline_main

    out = tmp_path_factory.mktemp("inference_pipe") / "pipe"
    argv = ["-c", str(REPO_ROOT / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}", f"stages={TINY_STAGES}"]
    assert pipeline_main(argv) == 0
    rec = lambda name: json.loads((out / "stages" / f"{name}.json").read_text())  # noqa: E731
    return {"out": out, "gen": rec("gen_shortcut")["paths"], "cache": rec("cache")["paths"],
            "corpus": Path(rec("corpus")["paths"]["root"]), "rvq": rec("rvq_upper")["paths"],
            "fgd": rec("fgd_ae")["paths"]}  # fmt: skip


def speech(seconds: float, seed: int = 0) -> tuple[np.ndarray, list]:
    """Synthetic speech (16 kHz float32) and its phrases, from the synthetic corpus's voice model."""
    from dataloaders.synthetic import SR, make_script, make_style, synth_audio

    rng = np.random.default_rng(seed)
    phrases = make_script(seconds, make_style(2, rng), rng)
    return synth_audio(phrases, int(seconds * SR), rng), phrases
