"""Procedure C (pipeline/calibration.py): the checked model's guidance chosen on val by the selection margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.calibration import (
    calibrated_overrides,
    calibration_markdown,
    check_calibration,
    choose,
    point_estimates,
)
from pipeline.learning_check import judge, selection_margin
from utils.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
PIPE = REPO / "configs/pipeline/synthetic_cpu.yaml"


def _row(g: float, margin: float, meets_a: bool = True) -> dict:
    return {"guidance": g, "margin": margin, "meets_a": meets_a}


def test_choose_takes_the_largest_margin_among_rows_meeting_a():
    rows = [_row(1.0, 0.30, meets_a=False), _row(1.25, 0.05), _row(1.5, 0.08), _row(2.0, -0.1)]
    assert choose(rows, prefer=1.375) == 1.5  # 1.0 has the larger margin but misses (a)
    assert choose([_row(1.0, -0.2, False), _row(2.0, -0.1, False)], prefer=1.0) == 2.0  # none meets (a): all rows
    with pytest.raises(ValueError):
        choose([], prefer=1.375)
    assert choose([_row(1.0, float("nan")), _row(1.5, -0.3)], prefer=1.0) == 1.5  # a NaN margin never wins


def test_an_unknown_checked_generator_is_refused():
    from pipeline.main import all_stage_names

    with pytest.raises(ConfigError, match="learning_check.generator"):
        all_stage_names(load_config(PIPE, ["learning_check.generator=shortcutt"]))


def test_choose_breaks_ties_towards_prefer_then_the_smaller():
    rows = [_row(1.0, 0.05), _row(1.25, 0.05), _row(1.5, 0.05), _row(2.0, 0.01)]
    assert choose(rows, prefer=1.375) == 1.25  # 1.25 and 1.5 are both 0.125 from prefer: the smaller
    assert choose(rows, prefer=1.6) == 1.5
    assert choose(rows, prefer=0.0) == 1.0


def test_point_estimates_equal_the_checks_own_values():
    rng = np.random.default_rng(3)
    n = 7
    keys = ("bc", "fgd_file", "speed", "acceleration", "jerk", "beat_placement")
    per_file = {c: {k: list(rng.uniform(0.1, 2.0, n)) for k in keys} for c in ("own", "audio_swapped", "delayed", "gt")}
    full = judge(per_file, n_boot=10)["statistics"]
    mine = point_estimates(per_file["own"], per_file["gt"])
    assert set(mine) == {"speed_ratio", "acceleration_ratio", "jerk_ratio", "beat_placement", "bc_own_minus_gt"}
    for k, v in mine.items():
        assert v["value"] == full[k]["value"], k  # bit-equal: the same float operations
    # hand check of one ratio and the gap
    own, gt = per_file["own"], per_file["gt"]
    assert mine["speed_ratio"]["value"] == pytest.approx(np.mean(own["speed"]) / np.mean(gt["speed"]), rel=1e-12)
    assert mine["bc_own_minus_gt"]["value"] == pytest.approx(np.mean(own["bc"]) - np.mean(gt["bc"]), abs=1e-12)
    margin, _ = selection_margin(mine)
    assert margin == pytest.approx(min(mine["beat_placement"]["value"] - 0.15,
                                       0.1 - abs(mine["bc_own_minus_gt"]["value"])))  # fmt: skip


def test_check_calibration_names_the_bad_key():
    cfg = load_config(PIPE)
    check_calibration(cfg)  # the main job's node is valid
    bad = {
        "calibration.split=test": "calibration.split",
        "calibration.guidance=[]": "calibration.guidance",
        "calibration.guidance=[1.0,true]": "calibration.guidance",
        "calibration.prefer=high": "calibration.prefer",
        "calibration.runs=[shortcut_n3]": "shortcut_n3",
        "calibration.runs=[diffusion_20]": "diffusion_20",  # another generator's run
        "calibration=true": "calibration must be a mapping",
        "calibration.guidance=1.5": "calibration.guidance",  # a number, not a list
        "+calibration.grid=[1.0]": "grid",  # an unknown key
    }
    for override, key in bad.items():
        with pytest.raises(ConfigError, match=key):
            check_calibration(load_config(PIPE, [override]))
    check_calibration(load_config(PIPE, ["calibration=null"]))  # off: nothing to check


def test_calibrated_overrides_only_for_the_check_and_the_named_runs():
    off = load_config(PIPE, ["calibration=null"])
    assert calibrated_overrides(off, "learning_check") == [] and calibrated_overrides(off, "shortcut_n2") == []
    on = load_config(PIPE)
    assert calibrated_overrides(on, "shortcut_n20") == []  # not named in calibration.runs
    with pytest.raises(RuntimeError, match="calibrate"):  # named, but no calibrate record in this output_dir
        calibrated_overrides(load_config(PIPE, ["output_dir=/nonexistent/pipe"]), "shortcut_n2")


def test_calibration_markdown_marks_the_choice():
    res = {"generator": "shortcut", "split": "val", "n_files": 12, "seeds": 3, "guidance": 1.5, "rows": [
        {"guidance": g, "margin": m, "meets_a": True,
         "statistics": {"speed_ratio": 0.8, "acceleration_ratio": 0.7, "jerk_ratio": 0.6, "beat_placement": 0.2,
                        "bc_own_minus_gt": 0.01}} for g, m in ((1.25, 0.01), (1.5, 0.05))]}  # fmt: skip
    md = calibration_markdown(res)
    assert "g* = 1.5, used by the learning check and the test runs it names." in md
    assert "in place of the configured 1.375" in calibration_markdown({**res, "configured": 1.375})
    assert "g* = 1.5" in md and "| 1.5 (chosen) | +0.0500 | yes | 0.80 / 0.70 / 0.60 | 0.2000 | +0.0100 |" in md
    assert "| 1.25 | +0.0100 |" in md


def test_calibration_rows_equal_the_learning_check_on_the_same_files(pipe):
    """Procedure C generates and scores only the own condition and GT; its numbers equal the full check's (what
    benchmarks/val_check.py prints) at the same guidance, sampling seeds and files."""
    from pipeline.calibration import calibrate_guidance
    from pipeline.learning_check import check_inputs, run_learning_check

    cfg = load_config(REPO / "configs/pipeline/ci_tiny.yaml", [f"output_dir={pipe['out']}"])
    inputs = check_inputs(cfg, ["model.generator.params.sampler.guidance_scale=1.5"], split="val", calibrated=False)
    before = inputs["model"].sampler.settings()["guidance"]
    full = run_learning_check(**inputs, seeds=1, n_boot=10)["statistics"]
    keep = ("model", "codec", "items", "opts", "mean_vel", "fk", "device", "copy_gt")
    cal = calibrate_guidance(**{k: inputs[k] for k in keep}, guidance=[1.5, 1.0], prefer=1.375, seeds=1)
    assert inputs["model"].sampler.settings()["guidance"] == before == cal["configured"]  # restored, and recorded
    assert [r["guidance"] for r in cal["rows"]] == [1.5, 1.0] and cal["guidance"] in (1.0, 1.5)
    for k, v in cal["rows"][0]["statistics"].items():
        assert v == full[k]["value"], k
    assert cal["rows"][0]["statistics"] != cal["rows"][1]["statistics"]  # guidance reaches the sampler
    # the row at a guidance set on the built model equals the check of a model built at that guidance
    at_1 = check_inputs(cfg, ["model.generator.params.sampler.guidance_scale=1.0"], split="val", calibrated=False)
    full_1 = run_learning_check(**at_1, seeds=1, n_boot=10)["statistics"]
    for k, v in cal["rows"][1]["statistics"].items():
        assert v == full_1[k]["value"], k
