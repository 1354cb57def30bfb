"""BC, L1div, Fréchet distance and face metrics on cases whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import soundfile as sf
import torch

from evaluation.metrics import (
    BeatConsistency,
    L1Diversity,
    face_mse,
    frechet_distance,
    frechet_from_moments,
    lvd_emage2024,
    lvd_evaltools,
)
from tests.conftest import BEAT2_SAMPLE, need
from tests.motion import smooth_random_motion

SR = 16000
ONES = np.ones(55)
# Speeds are multiples of 15/64 so that positions are exact binary fractions: "constant" speed is then exactly
# constant (float noise would otherwise create spurious strict minima on plateaus, in the reference as here).
Q = 15 / 64
PLATEAU, BEAT, LOW = 8 * Q, 2 * Q, 1 * Q  # 1.875, 0.469 (> 0.3 threshold), 0.234 (< 0.3)


def positions_from_speed(v: np.ndarray) -> np.ndarray:
    """(T,55,3) joints all moving along x so that the central-difference speed (x30) equals v[:-1] exactly."""
    n = len(v)
    x = np.zeros(n)
    x[1] = v[0] / 30.0  # one-sided difference at frame 0
    for i in range(1, n - 1):
        x[i + 1] = x[i - 1] + v[i] / 15.0  # (x[i+1] - x[i-1]) / 2 * 30 = v[i]
    j = np.zeros((n, 55, 3))
    j[:, :, 0] = x[:, None]
    return j


def dip(v: np.ndarray, centre: int, depth: float) -> None:
    v[centre - 2 : centre + 3] = np.minimum(v[centre - 2 : centre + 3], [6 * Q, 4 * Q, depth, 4 * Q, 6 * Q])


def click_audio(times: np.ndarray, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.normal(0, 1e-4, int(seconds * SR)).astype(np.float32)
    for t in times:
        i = int(t * SR)
        y[i : i + 160] += rng.normal(0, 0.5, 160).astype(np.float32)
    return y


# ---------------------------------------------------------------------------------------------------------------
# BC


def test_bc_minima_at_clicks_scores_one_and_flat_motion_scores_zero():
    n = 330  # 11 s
    click_times = np.arange(2.5, 9.0, 0.5)
    audio = click_audio(click_times, 11.0)
    v = np.full(n, PLATEAU)
    for t in click_times:
        dip(v, int(round(t * 30)), BEAT)  # minima above the 0.3 threshold, exactly at the clicks
    bc = BeatConsistency(ONES, protocol="corrected")
    s = bc.update(positions_from_speed(v), audio)
    assert s > 0.97
    # the same motion shifted by 0.25 s (half the click period) scores far lower
    v_shift = np.full(n, PLATEAU)
    for t in click_times:
        dip(v_shift, int(round((t + 0.25) * 30)), BEAT)
    assert bc.update(positions_from_speed(v_shift), audio) < 0.8
    # constant speed / static motion: no strict minima anywhere -> 0
    assert bc.update(positions_from_speed(np.full(n, PLATEAU)), audio) == 0.0
    assert bc.update(np.zeros((n, 55, 3)), audio) == 0.0
    # minima below the threshold are not beats
    v_low = np.full(n, PLATEAU)
    for t in click_times:
        dip(v_low, int(round(t * 30)), LOW)
    assert bc.update(positions_from_speed(v_low), audio) == 0.0


def test_bc_emage2024_threshold_index_quirk_hand_case():
    n = 200  # evaluated window: frames [60, 140) -> relative 0..79
    v = np.full(n, PLATEAU)
    dip(v, 60 + 20, BEAT)  # a real beat (0.47 > 0.3) at relative 20 ...
    v[20] = LOW  # ... but the reference tests absolute frame 20 (outside the window): dropped there
    dip(v, 60 + 50, LOW)  # not a beat (0.23 < 0.3) at relative 50 ...
    # ... but the reference tests absolute frame 50 (v = 1.875 > 0.3): kept there
    joints = positions_from_speed(v)
    ref = BeatConsistency(ONES, protocol="emage2024", fold_l1div=False).motion_beats(joints)
    fixed = BeatConsistency(ONES, protocol="corrected").motion_beats(joints)
    assert len(ref) == len(fixed) == 13
    for r, f in zip(ref, fixed):
        np.testing.assert_allclose(r, [50 / 30])
        np.testing.assert_allclose(f, [20 / 30])


def test_bc_emage2024_folds_positions_like_l1div():
    joints = smooth_random_motion((300, 55, 3), seed=0, step=0.01)
    # float64 here so the fold is compared exactly (emage2024's float32 rounding is tested on the real sample)
    ref = BeatConsistency(ONES, protocol="emage2024", float32_motion=False)
    raw = BeatConsistency(ONES, protocol="emage2024", fold_l1div=False, float32_motion=False)
    folded = np.abs(joints - joints.mean(0))
    np.testing.assert_allclose(ref.normalised_speed(joints), raw.normalised_speed(folded))
    assert np.abs(ref.normalised_speed(joints) - raw.normalised_speed(joints)).max() > 1e-3
    # mean_vel divides per joint
    mv = np.linspace(0.5, 2.0, 55)
    np.testing.assert_allclose(
        BeatConsistency(mv, protocol="corrected").normalised_speed(joints),
        BeatConsistency(ONES, protocol="corrected").normalised_speed(joints) / mv,
    )


def test_bc_score_and_weighted_aggregate_hand_computed():
    bc = BeatConsistency(ONES, sigma=0.3, joints=(3, 6))
    g = math.exp(-(0.3**2) / (2 * 0.3**2))
    # joint 3 has a beat at 1.0 s; joint 6 none -> (mean(1, g) + 0) / 2
    assert bc.score([np.array([1.0]), np.array([])], np.array([1.0, 1.3])) == pytest.approx((1 + g) / 4)
    with pytest.raises(ValueError, match="no audio onsets"):
        bc.score([np.array([1.0])], np.array([]))
    # aggregate: weights n - 120
    flat = np.zeros((200, 55, 3))
    v = np.full(300, PLATEAU)
    dip(v, 100, BEAT)
    s1 = bc.update(flat, onsets=np.array([1.0]))  # 0
    s2 = bc.update(positions_from_speed(v), onsets=np.array([(100 - 60) / 30]))  # beat exactly on the onset
    assert s1 == 0.0 and s2 == pytest.approx(1.0)
    assert bc.compute() == pytest.approx((0 * 80 + 1.0 * 180) / (200 + 300 - 2 * 120))


def test_bc_audio_window_emage2024_end_quirk_and_timing(tmp_path):
    # motion 8 s (240 frames); audio 12 s with clicks at 3 s (inside), 6.8 s (in the last 2 s of the motion)
    # and 8.5 s / 10 s (past the motion end, cut away by int(16000/30*n))
    audio = click_audio(np.array([3.0, 6.8, 8.5, 10.0]), 12.0)
    n = 240
    ref = BeatConsistency(ONES, protocol="emage2024")
    on_ref = ref.onsets(audio, n)
    on_fix = BeatConsistency(ONES, protocol="corrected", audio_end_uncut=False).onsets(audio, n)
    # onset times are relative to the 2 s mark, where the motion window starts too
    assert any(abs(t - 1.0) < 0.05 for t in on_ref)
    assert any(abs(t - 4.8) < 0.05 for t in on_ref)  # the end refers to the uncut audio: kept
    assert not any(t > 6.0 for t in on_ref)  # beyond the motion: cut
    assert any(abs(t - 1.0) < 0.05 for t in on_fix)
    assert not any(t > 3.9 for t in on_fix)  # window ends at n/30 - 2 s = 6 s absolute
    # a path is loaded through librosa (22.05 kHz then 16 kHz for emage2024): onsets agree with the array ones
    wav = tmp_path / "a.wav"
    sf.write(wav, audio, SR)
    on_file = ref.onsets(wav, n)
    assert len(on_file) == len(on_ref) and np.abs(on_file - on_ref).max() < 0.05


def test_bc_bad_input():
    with pytest.raises(ValueError, match=r"mean_vel \(array\): expected 55 per-joint speeds .*got shape \(54,\)"):
        BeatConsistency(np.ones(54))
    with pytest.raises(ValueError, match=r"got shape \(55, 3\)"):  # not reshaped before the message
        BeatConsistency(np.ones((55, 3)))
    with pytest.raises(ValueError, match=r"1 speeds <= 0 at joints \[4\]"):
        BeatConsistency(np.where(np.arange(55) == 4, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"NaN/inf at joints \[0\]"):
        BeatConsistency(np.where(np.arange(55) == 0, np.nan, 1.0))
    assert BeatConsistency(np.ones((1, 55))).mean_vel.shape == (55,)
    with pytest.raises(ValueError, match="unknown BC protocol"):
        BeatConsistency(ONES, protocol="rag")
    with pytest.raises(TypeError, match="unknown BC options"):
        BeatConsistency(ONES, fold=False)
    # the motion dtype comes from the protocol registry, and can be overridden like any option
    assert BeatConsistency(ONES, protocol="emage2024").normalised_speed(np.zeros((5, 55, 3))).dtype == np.float32
    assert BeatConsistency(ONES, protocol="corrected").normalised_speed(np.zeros((5, 55, 3))).dtype == np.float64
    assert BeatConsistency(ONES, protocol="emage2024", float32_motion=False).motion_dtype is np.float64
    bc = BeatConsistency(ONES)
    with pytest.raises(ValueError, match="too short"):
        bc.update(np.zeros((100, 55, 3)), onsets=np.array([1.0]))
    bad = np.zeros((200, 55, 3))
    bad[5, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bc.update(bad, onsets=np.array([1.0]))
    with pytest.raises(FileNotFoundError):
        bc.update(np.zeros((200, 55, 3)), "/nonexistent/x.wav")
    with pytest.raises(ValueError, match="1-D"):
        bc.update(np.zeros((200, 55, 3)), np.zeros((2, 16000 * 8)))
    with pytest.raises(ValueError, match="before any update"):
        BeatConsistency(ONES).compute()


# ---------------------------------------------------------------------------------------------------------------
# L1div


def test_l1div_hand_computed():
    a = np.zeros((3, 165))
    a[:, 0] = [0.0, 1.0, 2.0]  # |x - 1| sums to 2
    b = np.zeros((2, 55, 3))
    b[:, 5, 2] = [1.0, -1.0]  # |x - 0| sums to 2
    b[:, 7, 1] = [3.0, 3.0]  # constant: 0
    l1 = L1Diversity()
    assert l1.update(a) == pytest.approx(2 / 3)
    assert l1.update(b) == pytest.approx(2 / 2)
    assert l1.compute() == pytest.approx(4 / 5)
    assert l1.sums == [2.0, 2.0] and l1.lengths == [3, 2]  # per sequence, for re-weighting (bootstrap)
    l1.reset()
    assert l1.sums == [] and l1.lengths == []
    with pytest.raises(ValueError, match="before any update"):
        l1.compute()
    with pytest.raises(ValueError):
        l1.update(np.zeros((3, 164)))


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance


def _reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _nuclear_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Independent exact formula: with S = X^T X (X centred / sqrt(N-1)), Tr sqrt(S1 S2) = ||X1 X2^T||_*."""
    x1 = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    x2 = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    nuc = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (x1**2).sum() + (x2**2).sum() - 2 * nuc)


def test_frechet_matches_reference_on_well_conditioned_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (400, 8)) @ rng.normal(0, 1, (8, 8))
    b = rng.normal(0.3, 1.2, (500, 8))
    ours = frechet_distance(a, b)
    assert ours == pytest.approx(_reference_fd(a, b), rel=1e-8)
    assert ours == pytest.approx(_nuclear_fd(a, b), rel=1e-8)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert frechet_from_moments(mu1, s1, mu2, s2, fast=True) == pytest.approx(ours, rel=1e-8)
    # fast path on a singular S1 falls back to the robust method
    x = rng.normal(0, 1, (10, 50))
    sx = np.cov(x, rowvar=False)
    assert frechet_from_moments(x.mean(0), sx, mu1[:1].repeat(50), np.eye(50), fast=True) == pytest.approx(
        frechet_from_moments(x.mean(0), sx, mu1[:1].repeat(50), np.eye(50)), rel=1e-9
    )
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    x, y = rng.normal(1, 2, (1000, 1)), rng.normal(-1, 0.5, (800, 1))
    s1, s2 = x.std(ddof=1), y.std(ddof=1)
    assert frechet_distance(x, y) == pytest.approx((x.mean() - y.mean()) ** 2 + (s1 - s2) ** 2, rel=1e-9)


def test_frechet_identical_and_degenerate_sets():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (300, 16))
    assert abs(frechet_distance(a, a)) < 1e-9
    # fewer samples than dimensions: singular covariances; still finite, >= 0 and exact
    a, b = rng.normal(0, 1, (10, 50)), rng.normal(0.5, 1, (12, 50))
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0
    assert d == pytest.approx(_nuclear_fd(a, b), rel=1e-7)
    # nearly singular (rank-2 data in 240-D) identical sets -> ~0, not 1e10
    low = rng.normal(0, 1, (500, 2)) @ rng.normal(0, 1, (2, 240))
    assert abs(frechet_distance(low, low)) < 1e-6
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :10])
    with pytest.raises(ValueError):
        frechet_from_moments(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------------------------------
# Face metrics


def test_face_metrics():
    rng = np.random.default_rng(2)
    tar = rng.normal(0, 1, (6, 20, 3))
    rec = tar + 0.5  # constant offset: same velocities
    assert face_mse(rec, tar) == pytest.approx(0.25)
    assert lvd_evaltools(rec, tar) == pytest.approx(0.0, abs=1e-12)
    # old LVD is mean|rec[1:] - tar[1:]| in disguise
    assert lvd_emage2024(rec, tar) == pytest.approx(0.5)
    rec2 = tar + rng.normal(0, 0.1, tar.shape)
    assert lvd_emage2024(rec2, tar) == pytest.approx(np.abs(rec2[1:] - tar[1:]).mean())
    assert lvd_evaltools(rec2, tar) == pytest.approx(np.abs(np.diff(rec2, axis=0) - np.diff(tar, axis=0)).mean())
    with pytest.raises(ValueError):
        face_mse(rec[:3], tar)


# ---------------------------------------------------------------------------------------------------------------
# Real BEAT2 sample vs profile.md (mannequin skeleton, zero shape)


def test_bc_and_l1div_on_real_sample_match_profile():
    root = need(BEAT2_SAMPLE / "smplxflame_30" / "2_scott_0_1_1.npz").parent.parent
    from geometry.body_model import get_fk

    poses = np.load(root / "smplxflame_30" / "2_scott_0_1_1.npz")["poses"]
    mean_vel = np.load(root / "stats" / "mean_vel_smplxflame_30.npy")
    joints = get_fk(source="mannequin")(torch.tensor(poses)).numpy()
    own, other = root / "wave16k" / "2_scott_0_1_1.wav", root / "wave16k" / "2_scott_0_5_5.wav"
    expected = {"emage2024": (0.727, 0.716), "corrected": (0.445, 0.427)}
    for protocol, (e_own, e_other) in expected.items():
        bc = BeatConsistency(mean_vel, protocol=protocol)
        assert bc.update(joints, own) == pytest.approx(e_own, abs=2e-3)
        assert bc.update(joints, other) == pytest.approx(e_other, abs=2e-3)
    # profile's L1div (13.8) was measured with flat hands; the smplx default adds the hand mean (13.58)
    flat = get_fk(source="mannequin", flat_hand_mean=True)(torch.tensor(poses)).numpy()
    assert L1Diversity().update(flat) == pytest.approx(13.8, abs=0.05)
    assert L1Diversity().update(joints) == pytest.approx(13.58, abs=0.05)
