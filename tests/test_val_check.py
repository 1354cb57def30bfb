"""benchmarks/val_check.py: the selection margin it ranks checked settings by, and its refusal of the test split."""

from __future__ import annotations

import pytest

from benchmarks.val_check import all_right_side, main, selection_margin


def _stats(**v: float) -> dict:
    base = {"speed_ratio": 0.9, "acceleration_ratio": 0.7, "jerk_ratio": 0.6, "beat_placement": 0.2,
            "bc_own_minus_delayed": 0.2, "fgd_swapped_minus_own": 0.004, "bc_own_minus_gt": 0.08}  # fmt: skip
    return {k: {"value": x, "ci95": [x - 0.1, x + 0.1]} for k, x in {**base, **v}.items()}


def test_margin_is_the_smaller_of_the_placement_and_bc_gap_slacks():
    m, ok = selection_margin(_stats())  # placement slack 0.05, gap slack 0.1 - 0.08 = 0.02
    assert ok and m == pytest.approx(0.02)
    m, ok = selection_margin(_stats(bc_own_minus_gt=-0.01, beat_placement=0.17))  # |gap| counts; placement 0.02
    assert ok and m == pytest.approx(0.02)
    m, _ = selection_margin(_stats(bc_own_minus_gt=0.13))  # over the bound: negative
    assert m == pytest.approx(-0.03)


@pytest.mark.parametrize("bad", [{"speed_ratio": 0.6}, {"speed_ratio": 1.6}, {"acceleration_ratio": 1.51},
                                 {"jerk_ratio": 2.0}])  # fmt: skip
def test_settings_outside_a_do_not_meet_a(bad):
    assert selection_margin(_stats(**bad))[1] is False
    assert all_right_side(_stats(**bad)) is False


def test_all_right_side_needs_every_point_estimate():
    assert all_right_side(_stats())
    for bad in ({"beat_placement": 0.149}, {"bc_own_minus_delayed": 0.0}, {"fgd_swapped_minus_own": -0.001},
                {"bc_own_minus_gt": -0.101}):  # fmt: skip
        assert not all_right_side(_stats(**bad)), bad


def test_the_test_split_is_refused_without_allow_test(capsys):
    with pytest.raises(SystemExit):
        main(["--split", "test"])
    assert "choose settings on val" in capsys.readouterr().err


def test_pipeline_set_overrides_the_pipeline_config_and_names_a_bad_key(tmp_path, monkeypatch):
    import benchmarks.val_check as vc
    from utils.config import ConfigError

    # a key the pipeline config does not have fails at load, naming it, before any model is read
    with pytest.raises(ConfigError, match="no_such_key"):
        main(["--output-dir", str(tmp_path), "--pipeline-set", "data.no_such_key=1"])
    seen = []

    def stop(cfg, *args, **kwargs):
        seen.append((str(cfg.output_dir), cfg.data.audio_rep))
        raise KeyboardInterrupt

    monkeypatch.setattr(vc, "check_inputs", stop)
    for extra, rep in (([], "onset+amplitude"), (["--pipeline-set", "data.audio_rep=mel"], "mel")):
        with pytest.raises(KeyboardInterrupt):
            main(["--output-dir", str(tmp_path), *extra])
        assert seen.pop() == (str(tmp_path), rep)


def test_the_calibrated_guidance_only_for_the_pipelines_own_model_at_the_checks_setting(tmp_path, monkeypatch):
    """Without --guidance the check's guidance is the calibrate stage's choice (procedure C) for the pipeline's own
    model; an explicit guidance or another checkpoint needs no calibration record (an older output folder works)."""
    import benchmarks.val_check as vc

    seen = []

    def stop(cfg, sets, split, checkpoint, calibrated=True):
        seen.append((calibrated, [s for s in sets if "guidance" in s]))
        raise KeyboardInterrupt

    monkeypatch.setattr(vc, "check_inputs", stop)
    for extra, want in (([], (True, [])),
                        (["--guidance", "1.5"], (False, ["model.generator.params.sampler.guidance_scale=1.5"])),
                        (["--checkpoint", str(tmp_path / "other.pt")], (False, []))):  # fmt: skip
        with pytest.raises(KeyboardInterrupt):
            main(["--output-dir", str(tmp_path), *extra])
        assert seen.pop() == want, extra
