"""evaluation.realism: speed / acceleration / jerk with known answers, bootstrap ratios, beat placement."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.realism import (
    QUANTITIES,
    REALISM_JOINTS,
    beat_lag_curve,
    beat_placement_score,
    delay_motion,
    pooled_realism,
    realism_ratios,
    realism_stats,
    shift_motion,
)

MEAN_ABS_SIN = 2 / np.pi  # mean |sin| (and |cos|) over whole periods
MEAN_CHI3 = 2 * np.sqrt(2 / np.pi)  # E||n|| for n ~ N(0, I_3)
DIFF_VAR = {1: 2.0, 2: 6.0, 3: 20.0}  # variance of the k-th difference of iid unit noise: sum of squared binomials


def _sine(fps: float, f: float, amp: float, seconds: float, joints: int = 55) -> np.ndarray:
    t = np.arange(int(round(seconds * fps))) / fps
    x = np.zeros((t.size, joints, 3))
    x[:, :, 0] = amp * np.sin(2 * np.pi * f * t)[:, None]
    return x


def test_joints_are_the_bc_joints():
    from geometry.skeleton import BC_JOINTS

    assert tuple(BC_JOINTS) == REALISM_JOINTS


@pytest.mark.parametrize("f,amp", [(1.0, 0.2), (2.5, 0.05)])
def test_sine_closed_form(f, amp):
    """x = A sin(2 pi f t): mean |d^k x / dt^k| = A (2 pi f)^k * 2/pi, at a fine frame rate."""
    s = realism_stats(_sine(fps=2000.0, f=f, amp=amp, seconds=4.0), fps=2000.0)
    for q, k in QUANTITIES.items():
        assert s[q] == pytest.approx(amp * (2 * np.pi * f) ** k * MEAN_ABS_SIN, rel=2e-3), q


def test_sine_at_30fps_is_close_and_units_scale_with_fps():
    """At 30 fps a slow (1 Hz) sine is still within 2% of the closed form; the same samples read at twice the
    frame rate have 2^k times the k-th derivative."""
    x = _sine(fps=30.0, f=1.0, amp=0.1, seconds=20.0)
    s30, s60 = realism_stats(x, fps=30.0), realism_stats(x, fps=60.0)
    for q, k in QUANTITIES.items():
        assert s30[q] == pytest.approx(0.1 * (2 * np.pi) ** k * MEAN_ABS_SIN, rel=0.02), q
        assert s60[q] == pytest.approx(2**k * s30[q], rel=1e-12)


def test_white_noise_on_a_still_pose():
    """iid N(0, sigma^2) per axis: the k-th difference has variance c_k sigma^2 per axis (c = 2, 6, 20), so the
    mean magnitude is fps^k sqrt(c_k) sigma E||N(0, I_3)||."""
    rng = np.random.default_rng(0)
    sigma, fps = 0.002, 30.0
    x = np.ones((20000, 55, 3)) * 0.7 + rng.normal(0.0, sigma, (20000, 55, 3))
    s = realism_stats(x, fps=fps)
    for q, k in QUANTITIES.items():
        assert s[q] == pytest.approx(fps**k * np.sqrt(DIFF_VAR[k]) * sigma * MEAN_CHI3, rel=0.01), q
    assert s["jerk"] / s["speed"] == pytest.approx(fps**2 * np.sqrt(10.0), rel=0.01)  # jitter: jerk-heavy


def test_white_noise_raises_jerk_predictably():
    """A smooth sine plus noise: per frame E||s + n|| lies between max(||s||, E||n||) and ||s|| + E||n||, and the
    mean-square jerk adds exactly (checked with the closed forms, not the function under test)."""
    rng = np.random.default_rng(1)
    fps, sigma = 30.0, 0.0005
    clean = _sine(fps=fps, f=1.0, amp=0.1, seconds=60.0)
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    jc, jn = realism_stats(clean, fps)["jerk"], realism_stats(noisy, fps)["jerk"]
    noise_only = fps**3 * np.sqrt(20.0) * sigma * MEAN_CHI3
    assert max(jc, noise_only) * 0.99 < jn < (jc + noise_only) * 1.01
    assert jn > 1.5 * jc  # 0.5 mm noise at 30 fps already dominates a 10 cm, 1 Hz sine's jerk
    # mean-square version: E||s + n||^2 = ||s||^2 + 3 * 20 sigma^2 fps^6
    d3 = np.diff(noisy[:, REALISM_JOINTS], n=3, axis=0) * fps**3
    d3c = np.diff(clean[:, REALISM_JOINTS], n=3, axis=0) * fps**3
    ms, msc = (d3**2).sum(-1).mean(), (d3c**2).sum(-1).mean()
    assert ms == pytest.approx(msc + 3 * 20 * sigma**2 * fps**6, rel=0.02)


def test_only_the_selected_joints_count():
    x = np.zeros((50, 55, 3))
    x[:, 0, 0] = np.linspace(0, 10, 50)  # pelvis moves: not an upper-body joint
    assert realism_stats(x)["speed"] == 0.0
    x[:, 21, 0] = np.linspace(0, 1, 50) * 49 / 30  # right wrist at 1 m/s
    assert realism_stats(x)["speed"] == pytest.approx(1.0 / len(REALISM_JOINTS))
    assert realism_stats(x[:, [21]], select=None)["speed"] == pytest.approx(1.0)
    assert realism_stats(x.reshape(50, 165))["speed"] == pytest.approx(1.0 / len(REALISM_JOINTS))


def test_ratios():
    g = {"speed": 2.0, "acceleration": 3.0, "jerk": 40.0}
    r = {"speed": 1.0, "acceleration": 1.0, "jerk": 2.0}
    assert realism_ratios(g, r) == {"speed": 2.0, "acceleration": 3.0, "jerk": 20.0}
    with pytest.raises(ValueError, match="ground-truth speed"):
        realism_ratios(g, {**r, "speed": 0.0})


def test_pooled_bootstrap():
    rng = np.random.default_rng(2)
    gt = [{q: float(v) for q, v in zip(QUANTITIES, rng.uniform(0.5, 2.0, 3))} for _ in range(12)]
    gen = [{q: v * rng.uniform(1.0, 3.0) for q, v in s.items()} for s in gt]
    a = pooled_realism(gen, gt, n_boot=500, seed=7)
    b = pooled_realism(gen, gt, n_boot=500, seed=7)
    c = pooled_realism(gen, gt, n_boot=500, seed=8)
    assert a == b  # deterministic for a seed
    assert a != c
    for q in QUANTITIES:
        lo, hi = a[q]["ci"]
        assert lo < a[q]["ratio"] < hi  # the CI contains the point estimate
        assert a[q]["ratio"] == pytest.approx(np.mean([s[q] for s in gen]) / np.mean([s[q] for s in gt]))
        assert len(a[q]["per_file_ratio"]) == 12
        assert 1.0 < lo  # every file is livelier than GT
    one = pooled_realism(gen[:1], gt[:1], n_boot=100)
    assert one["jerk"]["ci"] == [one["jerk"]["ratio"]] * 2
    with pytest.raises(ValueError, match="paired"):
        pooled_realism(gen, gt[:3])
    with pytest.raises(ValueError, match="no files"):
        pooled_realism([], [])


def test_delay_motion():
    x = np.arange(10.0)[:, None] * np.ones((1, 2))
    d = delay_motion(x, 3)
    assert d.shape == x.shape
    np.testing.assert_array_equal(d[:, 0], [0, 0, 0, 0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(delay_motion(x, 0), x)
    assert delay_motion(x, 0) is not x
    for bad in (-1, 10, 1.5):
        with pytest.raises(ValueError, match="delay_motion"):
            delay_motion(x, bad)


def _stroke_motion(period_s: float, seconds: float, fps: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Every joint moves along x with speed 1 + 0.9 cos(2 pi (t - P/2) / P): speed minima at P, 2P, ... ."""
    t = np.arange(int(seconds * fps)) / fps
    w = 2 * np.pi / period_s
    pos = t + 0.9 / w * np.sin(w * (t - period_s / 2))
    x = np.zeros((t.size, 55, 3))
    x[:, :, 0] = pos[:, None]
    return x, np.arange(period_s, seconds, period_s)


def test_beat_placement_with_beat_consistency():
    """Strokes whose speed minima sit on the onsets: high own BC; 0.5 s late they miss -> a large positive score.
    A BC that ignores timing scores 0."""
    from evaluation.metrics import BeatConsistency

    bc = BeatConsistency(np.full(55, 0.1), protocol="corrected")
    x, onsets_abs = _stroke_motion(period_s=1.5, seconds=20.0)
    onsets = onsets_abs[(onsets_abs > 2.0) & (onsets_abs < 18.0)] - 2.0  # relative to the evaluated window
    res = beat_placement_score(x, lambda j: bc.score(bc.motion_beats(j), onsets))
    assert res["bc_own"] > 0.95
    assert res["bc_delayed"] == pytest.approx(np.exp(-(0.5**2) / (2 * 0.3**2)), abs=0.05)
    assert res["score"] == pytest.approx(res["bc_own"] - res["bc_delayed"]) and res["score"] > 0.6
    calls = []
    flat = beat_placement_score(x, lambda j: calls.append(j.shape) or 0.4)
    assert flat["score"] == 0.0 and calls == [x.shape, x.shape]
    with pytest.raises(ValueError, match="at least one frame"):
        beat_placement_score(x, lambda j: 0.0, delay_s=0.0)


def test_shift_motion_both_ways():
    x = np.arange(6.0)[:, None]
    np.testing.assert_array_equal(shift_motion(x, 2)[:, 0], [0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(shift_motion(x, -2)[:, 0], [2, 3, 4, 5, 5, 5])
    np.testing.assert_array_equal(shift_motion(x, 0), x)
    for bad, match in ((6, "shift of 6 frames"), (-6, "shift of -6 frames"), (0.5, "must be an integer")):
        with pytest.raises(ValueError, match=match):
            shift_motion(x, bad)


def test_beat_lag_curve_peaks_where_the_strokes_are():
    """Strokes on the onsets peak at lag 0; the same strokes 9 frames late peak at lag -9 (advancing them back onto
    the beats); a motion at constant speed has no beats and a flat curve."""
    from evaluation.metrics import BeatConsistency

    bc = BeatConsistency(np.full(55, 0.1), protocol="corrected")
    x, onsets_abs = _stroke_motion(period_s=1.5, seconds=20.0)
    onsets = onsets_abs[(onsets_abs > 2.0) & (onsets_abs < 18.0)] - 2.0
    score = lambda j: bc.score(bc.motion_beats(j), onsets)  # noqa: E731
    lags = list(range(-21, 22, 3))
    on_beat = beat_lag_curve(x, score, lags)
    assert lags[int(np.argmax(on_beat))] == 0 and on_beat.max() > 0.95
    late = beat_lag_curve(delay_motion(x, 9), score, lags)
    assert lags[int(np.argmax(late))] == -9
    np.testing.assert_allclose(late[lags.index(-9)], on_beat[lags.index(0)], atol=0.02)  # only the edge differs
    assert late[lags.index(0)] == pytest.approx(on_beat[lags.index(9)], abs=0.02)
    steady = np.zeros_like(x)
    steady[:, :, 0] = np.arange(x.shape[0])[:, None] / 30.0
    np.testing.assert_array_equal(beat_lag_curve(steady, score, lags), np.zeros(len(lags)))
    with pytest.raises(ValueError, match="must be an integer"):  # a fractional lag is refused, not truncated
        beat_lag_curve(x, score, [0, 1.5])


@pytest.mark.parametrize(
    "arr,match",
    [
        (np.zeros((3, 55, 3)), "T >= 4"),
        (np.zeros((10, 55, 2)), r"\(T, J, 3\)"),
        (np.zeros(10), r"\(T, J, 3\)"),
        (np.zeros((10, 5, 3)), "out of range"),
        (np.full((10, 55, 3), np.nan), "NaN"),
    ],
)
def test_bad_inputs(arr, match):
    with pytest.raises(ValueError, match=match):
        realism_stats(arr, fps=30.0, name="gen")
    with pytest.raises(ValueError, match="gen"):
        realism_stats(arr, fps=30.0, name="gen")


def test_bad_fps():
    with pytest.raises(ValueError, match="fps"):
        realism_stats(np.zeros((10, 55, 3)), fps=0.0)
