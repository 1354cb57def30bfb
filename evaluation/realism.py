"""Motion-realism metrics: how fast, how jerky, and how well-placed on the speech beats a motion is.

Why: FGD and BC do not see jitter. Decoded or generated motion can score a BC *above* ground truth because
high-frequency chatter creates velocity minima everywhere; these numbers expose it. Everything here is pure numpy on
plain arrays (FK joint positions, global orientation kept, translation zeroed), so the evaluator, the pipeline and
benchmarks can share it without importing each other.

* :func:`realism_stats` -- mean joint speed, acceleration and jerk magnitude of the upper-body BC joints
  (finite differences of order 1, 2, 3 times ``fps**k``; L2 norm over xyz; mean over frames and joints).
* :func:`realism_ratios` / :func:`pooled_realism` -- generated / GT ratios per file, and pooled as a ratio of means
  over files with a seeded percentile-bootstrap 95% CI (files resampled, generated and GT paired).
* :func:`beat_placement_score` -- BC of a motion with its own audio minus BC of the same motion delayed by 0.5 s
  (:func:`delay_motion`). BC itself is passed in as a callable, so this module does not depend on the evaluator.
* :func:`beat_lag_curve` -- BC of a motion shifted by each of several lags (:func:`shift_motion`): motion timed on
  the beats peaks at lag 0, motion timed with a constant offset peaks at minus that offset, motion without timing is
  flat. It tells an alignment bug from a model that does not place strokes at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "REALISM_JOINTS",
    "QUANTITIES",
    "realism_stats",
    "realism_ratios",
    "pooled_realism",
    "delay_motion",
    "beat_placement_score",
    "shift_motion",
    "beat_lag_curve",
]

# The upper-body BC joints (SMPL-X indices: spine1-3, neck, collars, head, shoulders, elbows, wrists); the same
# tuple as geometry.skeleton.BC_JOINTS (a test checks it), kept literal so this module imports nothing from the repo.
REALISM_JOINTS: tuple[int, ...] = (3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21)
# Order of the finite difference behind each quantity (units: m/s, m/s^2, m/s^3).
QUANTITIES: dict[str, int] = {"speed": 1, "acceleration": 2, "jerk": 3}


def _joint_positions(joints: np.ndarray, select: Sequence[int] | None, name: str) -> np.ndarray:
    """(T, J, 3) or (T, 3J) float array -> (T, len(select), 3) float64, with shape/finiteness checks."""
    x = np.asarray(joints, dtype=np.float64)
    if x.ndim == 2 and x.shape[1] % 3 == 0 and x.shape[1] > 0:
        x = x.reshape(x.shape[0], -1, 3)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"{name}: joint positions must be (T, J, 3) or (T, 3J), got shape {np.shape(joints)}")
    if x.shape[0] < 4:
        raise ValueError(f"{name}: needs T >= 4 frames for the third difference (jerk), got T={x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: joint positions contain NaN/inf")
    if select is not None:
        sel = np.asarray(tuple(select), dtype=np.int64)
        if sel.size == 0 or sel.min() < 0 or sel.max() >= x.shape[1]:
            raise ValueError(f"{name}: joint indices {tuple(sel.tolist())} out of range for J={x.shape[1]} joints")
        x = x[:, sel]
    return x


def realism_stats(
    joints: np.ndarray, fps: float = 30.0, select: Sequence[int] | None = REALISM_JOINTS, name: str = "joints"
) -> dict[str, float]:
    """Mean speed, acceleration and jerk magnitude of one sequence.

    ``joints``: FK positions (T, J, 3) (J = 55 SMPL-X joints for the default ``select``; ``select=None`` uses every
    given joint). The k-th finite difference along time times ``fps**k`` estimates the k-th derivative; its L2 norm
    over xyz is averaged over the valid frames and the selected joints. Raises ValueError on a wrong shape, T < 4,
    NaN/inf or out-of-range joint indices (the message names ``name``)."""
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"{name}: fps must be a positive number, got {fps}")
    x = _joint_positions(joints, select, name)
    out = {}
    for q, k in QUANTITIES.items():
        d = np.diff(x, n=k, axis=0) * float(fps) ** k
        out[q] = float(np.linalg.norm(d, axis=-1).mean())
    return out


def realism_ratios(generated: Mapping[str, float], gt: Mapping[str, float]) -> dict[str, float]:
    """Generated / GT ratio of each quantity (1 = as lively and as smooth as GT; jerk ratio >> 1 = jitter)."""
    out = {}
    for q in QUANTITIES:
        g, r = float(generated[q]), float(gt[q])
        if not r > 0:
            raise ValueError(f"ground-truth {q} is {r}: a still GT sequence gives no ratio")
        out[q] = g / r
    return out


def pooled_realism(
    generated: Sequence[Mapping[str, float]],
    gt: Sequence[Mapping[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float | list[float]]]:
    """Pool per-file stats (paired lists, one dict per file from :func:`realism_stats`).

    Per quantity: mean over files of generated and of GT, their ratio (a ratio of means, so long or lively files do
    not dominate through a per-file ratio's noise), and a percentile-bootstrap CI of that ratio over files (files
    resampled with replacement, the generated/GT pair kept together; ``numpy.random.default_rng(seed)``, so the CI
    is deterministic for a seed). With one file the CI collapses to the point estimate."""
    if len(generated) != len(gt):
        raise ValueError(f"generated has {len(generated)} files but gt has {len(gt)}: pass paired per-file stats")
    if len(gt) == 0:
        raise ValueError("no files to pool")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(gt)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n)) if n_boot > 0 else np.zeros((0, n), dtype=np.int64)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, dict[str, float | list[float]]] = {}
    for q in QUANTITIES:
        g = np.array([float(s[q]) for s in generated])
        r = np.array([float(s[q]) for s in gt])
        if not r.mean() > 0:
            raise ValueError(f"ground-truth {q} is zero over all files: no ratio")
        ratio = float(g.mean() / r.mean())
        if idx.shape[0]:
            den = r[idx].mean(1)
            boots = g[idx].mean(1) / np.where(den > 0, den, np.nan)
            boots = boots[np.isfinite(boots)]
            ci = [float(np.percentile(boots, lo_q)), float(np.percentile(boots, hi_q))] if boots.size else [ratio] * 2
        else:
            ci = [ratio, ratio]
        out[q] = {"generated": float(g.mean()), "gt": float(r.mean()), "ratio": ratio, "ci": ci,
                  "per_file_ratio": (g / np.where(r > 0, r, np.nan)).tolist()}  # fmt: skip
    return out


def delay_motion(x: np.ndarray, frames: int) -> np.ndarray:
    """``x`` delayed by ``frames`` along axis 0: the first frame repeated ``frames`` times in front, the end cropped,
    so the result has the length of ``x`` (a motion that starts ``frames`` late against its audio)."""
    a = np.asarray(x)
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"delay_motion needs a non-empty sequence (time on axis 0), got shape {a.shape}")
    if int(frames) != frames or frames < 0:
        raise ValueError(f"delay_motion: frames must be a non-negative integer, got {frames!r}")
    frames = int(frames)
    if frames >= a.shape[0]:
        raise ValueError(f"delay_motion: a delay of {frames} frames leaves nothing of a {a.shape[0]}-frame sequence")
    if frames == 0:
        return a.copy()
    return np.concatenate([np.repeat(a[:1], frames, axis=0), a[:-frames]], axis=0)


def beat_placement_score(
    joints: np.ndarray, bc: Callable[[np.ndarray], float], fps: float = 30.0, delay_s: float = 0.5
) -> dict[str, float]:
    """BC with the motion's own timing minus BC of the same motion delayed by ``delay_s`` (default 0.5 s).

    Why: a BC that comes from strokes landing on the speech beats drops when the motion is moved off them; a BC that
    comes from velocity minima everywhere (jitter) does not. ``bc`` maps a joint sequence (the same array layout as
    ``joints``, e.g. FK positions (T, 55, 3)) to its BC against the file's own audio; with the evaluator's objects:
    ``lambda j: bc.score(bc.motion_beats(j), onsets)`` for a ``evaluation.metrics.BeatConsistency(mean_vel,
    protocol="corrected")`` and the file's ``bc.onsets(wav, T)``. Returns ``{bc_own, bc_delayed, score}``."""
    frames = int(round(float(delay_s) * float(fps)))
    if frames <= 0:
        raise ValueError(f"delay_s * fps must be at least one frame, got {delay_s} s at {fps} fps")
    j = np.asarray(joints)
    own = float(bc(j))
    delayed = float(bc(delay_motion(j, frames)))
    return {"bc_own": own, "bc_delayed": delayed, "score": own - delayed}


def shift_motion(x: np.ndarray, frames: int) -> np.ndarray:
    """``x`` shifted by ``frames`` along axis 0, keeping its length: positive = delayed (:func:`delay_motion`, the
    first frame repeated in front), negative = advanced (the first ``-frames`` frames dropped, the last repeated)."""
    if int(frames) != frames:
        raise ValueError(f"shift_motion: frames must be an integer, got {frames!r}")
    frames = int(frames)
    n = np.asarray(x).shape[0] if np.ndim(x) else 0
    if abs(frames) >= n:
        raise ValueError(f"shift_motion: a shift of {frames} frames leaves nothing of a {n}-frame sequence")
    if frames >= 0:
        return delay_motion(x, frames)
    return delay_motion(np.asarray(x)[::-1], -frames)[::-1].copy()


def beat_lag_curve(joints: np.ndarray, bc: Callable[[np.ndarray], float], lags: Sequence[int]) -> np.ndarray:
    """BC of ``joints`` shifted by each lag in ``lags`` (frames; positive = motion late against its audio).

    ``bc`` maps a joint sequence to its BC against the file's own audio, as for :func:`beat_placement_score`.
    Returns an array of ``len(lags)`` BC values (``beat_placement_score`` is the lag-0 value minus the 0.5-s one)."""
    j = np.asarray(joints)
    return np.array([float(bc(shift_motion(j, lag))) for lag in lags])
