"""EMAGE-protocol metrics: beat consistency (BC), L1 diversity, Fréchet distance (FGD), face MSE / LVD.

All of these operate on plain arrays (FK joint positions, audio, feature matrices, vertices); the evaluator
(evaluation/evaluator.py) produces those. See ../shared/spec/protocol.md §2 and gesturelsm.md §8 for the reference
definitions; every reference quirk kept here sits behind a named option with a comment.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.signal import argrelextrema

from evaluation.protocols import BC_PROTOCOLS, DEFAULT_PROTOCOL, BCOptions, bc_options
from geometry.skeleton import BC_JOINTS, NUM_JOINTS

__all__ = [
    "BeatConsistency",
    "BCOptions",
    "BC_PROTOCOLS",
    "L1Diversity",
    "frechet_distance",
    "frechet_from_moments",
    "gaussian_moments",
    "load_bc_audio",
    "load_mean_vel",
    "face_mse",
    "lvd_emage2024",
    "lvd_evaltools",
    "face_param_metrics",
    "FACE_PARAM_METRICS",
]


# ----------------------------------------------------------------------------------------------------------------
# Beat consistency
# ----------------------------------------------------------------------------------------------------------------


def load_bc_audio(audio: str | os.PathLike | np.ndarray, via_22k: bool = True, sr: int = 16000) -> np.ndarray:
    """Mono float audio at ``sr``. A path is read with librosa; an array is used as given (1-D, already at ``sr``).

    ``via_22k`` reproduces the reference: ``librosa.load(path)`` (default 22.05 kHz) then resample to ``sr``."""
    if isinstance(audio, (str, os.PathLike)):
        import librosa

        path = Path(audio)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        if via_22k:
            y, file_sr = librosa.load(str(path))  # librosa's default sr (22050), as the reference
            return librosa.resample(y, orig_sr=file_sr, target_sr=sr)
        y, _ = librosa.load(str(path), sr=sr)
        return y
    y = np.asarray(audio)
    if y.ndim != 1:
        raise ValueError(f"audio array must be 1-D mono at {sr} Hz, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("audio array contains NaN/inf")
    return y.astype(np.float32, copy=False)


def _as_joints(joints: np.ndarray, name: str = "joints", dtype: type = np.float64) -> np.ndarray:
    j = np.asarray(joints, dtype=dtype)
    if j.ndim == 2 and j.shape[1] == NUM_JOINTS * 3:
        j = j.reshape(j.shape[0], NUM_JOINTS, 3)
    if j.ndim != 3 or j.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"{name} must be (T, 55, 3) or (T, 165), got {np.shape(joints)}")
    if not np.all(np.isfinite(j)):
        raise ValueError(f"{name} contain NaN/inf")
    return j


def load_mean_vel(mean_vel: np.ndarray | str | os.PathLike) -> np.ndarray:
    """BC's per-joint mean speed as a (55,) float64 array, from an array or a ``.npy`` file (no pickle).

    Shape (55,) (the official file, float32) or with singleton axes ((1, 55), (55, 1)). Another shape, a
    non-numeric file, NaN/inf or a value <= 0 (BC divides by it) is a ValueError that names the file and states
    the actual shape or the offending joints."""
    where = "mean_vel (array)"
    if isinstance(mean_vel, (str, os.PathLike)):
        where = f"mean_vel file {mean_vel}"
        path = Path(mean_vel)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: not found")
        try:
            raw = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{where}: cannot read it as a .npy array ({e})") from e
        if not isinstance(raw, np.ndarray):  # an .npz archive
            raw.close()
            raise ValueError(f"{where}: expected a .npy array of 55 per-joint speeds, got an .npz archive")
    else:
        raw = np.asarray(mean_vel)
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{where}: expected 55 numeric per-joint speeds, got dtype {raw.dtype}, shape {raw.shape}")
    if np.squeeze(raw).shape != (NUM_JOINTS,):
        raise ValueError(f"{where}: expected 55 per-joint speeds (shape (55,)), got shape {raw.shape}")
    mv = raw.astype(np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(mv))
    if bad.size:
        raise ValueError(f"{where}: NaN/inf at joints {bad.tolist()[:10]} (shape {raw.shape})")
    bad = np.flatnonzero(mv <= 0)
    if bad.size:
        raise ValueError(f"{where}: {bad.size} speeds <= 0 at joints {bad.tolist()[:10]} (values "
                         f"{mv[bad][:5].tolist()}); BC divides by them, every entry must be > 0")
    return mv


class BeatConsistency:
    """Audio-to-motion beat consistency ("BC", "align score").

    ``update(joints (T,55,3), audio) -> score`` for one whole sequence at ``pose_fps``; ``compute()`` returns the
    (T - 2*align_mask)-weighted mean over sequences, as the reference:
    ``sum(score * (n - 120)) / (sum(n) - 120 * #files)``.

    ``protocol``: ``"emage2024"`` (the reference, quirks included, see :class:`BCOptions`) or ``"corrected"``.
    Individual options can be overridden by keyword.
    """

    def __init__(
        self,
        mean_vel: np.ndarray | str | os.PathLike,
        sigma: float = 0.3,
        order: int = 7,
        threshold: float = 0.3,
        joints: tuple[int, ...] | list[int] | None = None,
        protocol: str = DEFAULT_PROTOCOL,
        align_mask: int = 60,
        pose_fps: int = 30,
        audio_sr: int = 16000,
        hop_length: int = 512,
        **overrides: bool,
    ) -> None:
        if protocol not in BC_PROTOCOLS:
            raise ValueError(f"unknown BC protocol {protocol!r}; expected one of {sorted(BC_PROTOCOLS)}")
        self.options = bc_options(protocol, **overrides)
        extra = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        self.protocol = f"{protocol}+{extra}" if overrides else protocol
        self.mean_vel = load_mean_vel(mean_vel)  # float64; cast to the motion dtype where it divides
        # float32 under emage2024 (the reference's dtypes), float64 otherwise; see BCOptions.float32_motion
        self.motion_dtype: type = np.float32 if self.options.float32_motion else np.float64
        self.sigma, self.order, self.threshold = float(sigma), int(order), float(threshold)
        self.joints = tuple(BC_JOINTS if joints is None else joints)
        self.align_mask, self.pose_fps, self.audio_sr, self.hop_length = align_mask, pose_fps, audio_sr, hop_length
        self.scores: list[float] = []
        self.lengths: list[int] = []

    def reset(self) -> None:
        self.scores.clear()
        self.lengths.clear()

    # -- audio ---------------------------------------------------------------------------------------------------
    def onsets(self, audio: str | os.PathLike | np.ndarray, n_frames: int) -> np.ndarray:
        """Audio onset times (s), relative to the start of the evaluated window (``align_mask`` frames in)."""
        import librosa

        y = load_bc_audio(audio, via_22k=self.options.audio_via_22k, sr=self.audio_sr)
        per_frame = self.audio_sr / self.pose_fps
        cut = y[: int(per_frame * n_frames)]  # reference: in_audio[:int(audio_sr / pose_fps * n)]
        start = int(self.align_mask * per_frame)  # 32000 samples = 2 s
        # reference quirk (audio_end_uncut): the end is len(uncut audio) - offset, not len(cut) - offset
        end = (len(y) if self.options.audio_end_uncut else len(cut)) - start
        short = cut[start:end]
        if short.size == 0:
            return np.zeros(0)
        return librosa.onset.onset_detect(y=short, sr=self.audio_sr, hop_length=self.hop_length, units="time")

    # -- motion --------------------------------------------------------------------------------------------------
    def normalised_speed(self, joints: np.ndarray) -> np.ndarray:
        """(T,55) speed / mean_vel: central differences (one-sided at the ends) x fps, L2 over xyz, in
        ``motion_dtype`` (float32 joints are not widened, float64 ones are rounded, under float32_motion)."""
        j = _as_joints(joints, dtype=self.motion_dtype)
        if self.options.fold_l1div:
            # reference quirk: L1div.run() overwrote the joints with |x - mean_t(x)| before BC saw them
            j = np.abs(j - j.mean(axis=0, keepdims=True))
        # a Python-float spacing keeps float32 input in float32 (NumPy 2 scalar promotion)
        vel = np.gradient(j, 1.0 / self.pose_fps, axis=0, edge_order=1)
        return np.linalg.norm(vel, axis=-1) / self.mean_vel.astype(self.motion_dtype)

    def motion_beats(self, joints: np.ndarray) -> list[np.ndarray]:
        """Per BC joint, motion-beat times (s) relative to frame ``align_mask``."""
        speed = self.normalised_speed(joints)
        n = speed.shape[0]
        t0, t1 = self.align_mask, n - self.align_mask
        beats = []
        for jt in self.joints:
            minima = argrelextrema(speed[t0:t1, jt], np.less, order=self.order)[0]  # relative to t0
            # reference quirk (absolute_mask_index): the >threshold test reads frame j instead of t0 + j
            at = minima if self.options.absolute_mask_index else minima + t0
            keep = minima[speed[at, jt] > self.threshold]
            beats.append(keep / self.pose_fps)
        return beats

    def score(self, beats: list[np.ndarray], onsets: np.ndarray) -> float:
        """Mean over joints of mean over onsets of exp(-d^2 / 2 sigma^2); a joint without beats scores 0."""
        onsets = np.asarray(onsets, dtype=np.float64)
        if onsets.size == 0:
            raise ValueError("no audio onsets in the evaluated audio window: BC is undefined for this sequence")
        per_joint = []
        for b in beats:
            if b.size == 0:
                per_joint.append(0.0)
                continue
            d = np.abs(onsets[:, None] - b[None, :]).min(axis=1)
            per_joint.append(float(np.mean(np.exp(-(d**2) / (2 * self.sigma**2)))))
        return float(np.mean(per_joint))

    def update(
        self, joints: np.ndarray, audio: str | os.PathLike | np.ndarray | None = None, onsets: np.ndarray | None = None
    ) -> float:
        """Score one sequence (joints (T,55,3) FK positions; audio a path or 1-D 16 kHz array, or precomputed
        ``onsets`` from :meth:`onsets`), record it for :meth:`compute`, return it."""
        j = _as_joints(joints, dtype=self.motion_dtype)
        n = j.shape[0]
        if n <= 2 * self.align_mask:
            raise ValueError(f"sequence of {n} frames is too short for BC (needs > {2 * self.align_mask})")
        if onsets is None:
            if audio is None:
                raise ValueError("BeatConsistency.update needs audio or onsets")
            onsets = self.onsets(audio, n)
        s = self.score(self.motion_beats(j), onsets)
        self.scores.append(s)
        self.lengths.append(n)
        return s

    def compute(self) -> float:
        if not self.scores:
            raise ValueError("BeatConsistency.compute() before any update()")
        w = np.asarray(self.lengths, dtype=np.float64) - 2 * self.align_mask
        return float(np.sum(np.asarray(self.scores) * w) / np.sum(w))


# ----------------------------------------------------------------------------------------------------------------
# L1 diversity
# ----------------------------------------------------------------------------------------------------------------


class L1Diversity:
    """Sum over frames and the 165 joint coordinates of |x - mean_t(x)|, divided by the total frame count.

    Measures motion amplitude around each sequence's own mean (not cross-sample diversity). float64 sums.
    ``sums`` / ``lengths`` hold each sequence's sum and frame count (for re-weighting, e.g. bootstrap)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.frames = 0
        self.sums: list[float] = []
        self.lengths: list[int] = []

    def reset(self) -> None:
        self.total, self.frames = 0.0, 0
        self.sums.clear()
        self.lengths.clear()

    def update(self, joints: np.ndarray) -> float:
        """Add one sequence; returns its own per-frame value."""
        j = _as_joints(joints).reshape(-1, NUM_JOINTS * 3)
        s = float(np.abs(j - j.mean(axis=0, keepdims=True)).sum())
        self.total += s
        self.frames += j.shape[0]
        self.sums.append(s)
        self.lengths.append(j.shape[0])
        return s / j.shape[0]

    def compute(self) -> float:
        if self.frames == 0:
            raise ValueError("L1Diversity.compute() before any update()")
        return self.total / self.frames


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------------------------


def gaussian_moments(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and ``np.cov(rowvar=False)`` (ddof 1) of an (N, D) feature matrix, in float64."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N, D) feature matrix with N >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN/inf")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_moments(
    mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, fast: bool = False
) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).

    Tr sqrt(S1 S2) = sum of sqrt(eigenvalues of sqrt(S1) S2 sqrt(S1)) (symmetric PSD, similar to S1 S2), computed
    as the sum of singular values of sqrt(S1) sqrt(S2) (the same numbers, without squaring them first, so tiny
    eigenvalues do not turn into sqrt(rounding noise)). Finite and real even for singular covariances or fewer
    samples than dimensions, where the reference's ``scipy.linalg.sqrtm(S1 @ S2)`` can return complex/inf values
    (its wrapper then answers 1e10).

    ``fast=True`` (bootstrap replicates): with a Cholesky factor S1 = L L^T, Tr sqrt(S1 S2) = sum sqrt(eig(L^T S2 L))
    (about 4x cheaper; eigenvalues below rounding level contribute ~sqrt(eps) each); falls back to the default
    method when S1 is not positive definite."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"moment shapes differ: mu {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    tr_sqrt = None
    if fast:
        try:
            low = np.linalg.cholesky(s1)
            tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(low.T @ s2 @ low), 0, None)).sum())
        except np.linalg.LinAlgError:
            tr_sqrt = None
    if tr_sqrt is None:
        tr_sqrt = float(np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D) (FGD's formula)."""
    mu1, s1 = gaussian_moments(a)
    mu2, s2 = gaussian_moments(b)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dims differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    return frechet_from_moments(mu1, s1, mu2, s2)


# ----------------------------------------------------------------------------------------------------------------
# Face metrics (vertices from SMPL-X with only jaw + expressions, see geometry.body_model.SMPLXVertices.face_vertices)
# ----------------------------------------------------------------------------------------------------------------


def _pair(rec: np.ndarray, tar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, t = np.asarray(rec, np.float64), np.asarray(tar, np.float64)
    if r.shape != t.shape or r.ndim < 2 or r.shape[0] < 2:
        raise ValueError(f"face vertices must be matching (T>=2, V, 3) arrays, got {r.shape} vs {t.shape}")
    return r, t


def face_mse(rec: np.ndarray, tar: np.ndarray) -> float:
    """Mean squared vertex error (the reference's nn.MSELoss over all vertex coordinates); reported x1e8."""
    r, t = _pair(rec, tar)
    return float(np.mean((r - t) ** 2))


def lvd_emage2024(rec: np.ndarray, tar: np.ndarray) -> float:
    """Old EMAGE LVD: L1(rec[1:] - tar[:-1], tar[1:] - tar[:-1]) (sic). Algebraically mean|rec[1:] - tar[1:]|,
    i.e. a vertex L1 error, not a velocity difference; kept as written for comparability. Reported x1e5."""
    r, t = _pair(rec, tar)
    return float(np.mean(np.abs((r[1:] - t[:-1]) - (t[1:] - t[:-1]))))


def lvd_evaltools(rec: np.ndarray, tar: np.ndarray) -> float:
    """New emage_evaltools LVD: mean |Δrec - Δtar| of frame-to-frame vertex displacements. Reported x1e5."""
    r, t = _pair(rec, tar)
    return float(np.mean(np.abs(np.diff(r, axis=0) - np.diff(t, axis=0))))


# ----------------------------------------------------------------------------------------------------------------
# Face proxy without a body model: on the parameters themselves (jaw axis-angle + FLAME expressions). Never mixed with
# the vertex metrics above (other units, other names).
# ----------------------------------------------------------------------------------------------------------------
FACE_PARAM_METRICS = ("face_param_mse", "face_param_lvd", "jaw_corr")


def _face_params(poses: np.ndarray, expressions: np.ndarray, name: str) -> np.ndarray:
    p, e = np.asarray(poses, np.float64), np.asarray(expressions, np.float64)
    if p.ndim != 2 or p.shape[1] != 165 or e.ndim != 2 or e.shape[0] != p.shape[0]:
        raise ValueError(f"{name}: need poses (T,165) and expressions (T,K) with the same T, got {p.shape}, {e.shape}")
    return np.concatenate([p[:, 66:69], e], axis=1)


def face_param_metrics(pred_poses: np.ndarray, pred_expressions: np.ndarray, gt_poses: np.ndarray,
                       gt_expressions: np.ndarray) -> dict[str, float | None]:
    """Vertex-free face metrics on x = [jaw axis-angle (3) | expressions (K)] per frame:
    ``face_param_mse`` = mean (x̂ - x)^2; ``face_param_lvd`` = mean |Δx̂ - Δx| (the evaltools LVD on parameters);
    ``jaw_corr`` = Pearson correlation over frames of the jaw opening |jaw axis-angle| of prediction and GT (does the
    jaw move when the speaker's does), None when either is constant."""
    x, y = _face_params(pred_poses, pred_expressions, "prediction"), _face_params(gt_poses, gt_expressions, "GT")
    if x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(f"face parameters must match with T >= 2, got {x.shape} vs {y.shape}")
    a, b = np.linalg.norm(x[:, :3], axis=1), np.linalg.norm(y[:, :3], axis=1)
    corr = None
    if a.std() > 1e-12 and b.std() > 1e-12:
        corr = float(np.corrcoef(a, b)[0, 1])
    return {"face_param_mse": float(np.mean((x - y) ** 2)),
            "face_param_lvd": float(np.mean(np.abs(np.diff(x, axis=0) - np.diff(y, axis=0)))), "jaw_corr": corr}
