"""EMAGE-protocol evaluation: an in-memory ``Evaluator`` (training validation) and folder evaluation (test.py).

Per sequence (whole files, batch 1, 30 fps), following ../shared/spec/protocol.md §2:
- FGD features: axis-angle (T,165) -> rot6d -> re-orthonormalised rot6d (330, un-normalised), trimmed to a
  multiple of ``fgd_trim`` (32) frames, ``fgd_model.map2latent`` -> (T/16, 240) tokens, pooled over all sequences
  for prediction and for GT; Fréchet distance between the two Gaussians.
- BC and L1div: joints-only FK with GT betas (zero shape when absent), translation and expression zeroed, jaw and
  global orientation as given. BC uses the sequence's audio; see evaluation.metrics.BeatConsistency for the protocols.
  Both are also reported for GT (``bc_gt``, ``l1div_gt``) as the reference table does.
- Face MSE / LVD (only with an SMPL-X model file): vertices with only jaw + expressions, GT betas.
- Face parameter proxy (whenever prediction and GT carry expressions; no body model needed): MSE and LVD on
  [jaw axis-angle | expressions] and the jaw-opening correlation (``evaluation.metrics.face_param_metrics``); other
  names and units than the vertex metrics, never mixed with them.
95% CIs: percentile bootstrap over sequences (seeded); FGD is re-pooled exactly from per-sequence sums.

Motion dtype: FK runs in float32 when the protocol's ``BCOptions.float32_motion`` is set (emage2024: the reference
runs SMPL-X in float32), else in float64; BC and L1div both use these joints (L1div sums in float64).

Nothing is dropped silently: a sequence left out of a metric is listed in ``SequenceResult.excluded`` (folder mode:
metrics.json ``excluded`` and the console); audio shorter than the motion by more than
``AUDIO_SHORTFALL_TOLERANCE_S`` is an error, or an exclusion from BC when asked (``short_audio="exclude"``,
test.py ``--skip-missing-audio``); a multi-channel wav is averaged to mono with a note.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.metrics import (
    FACE_PARAM_METRICS,
    BeatConsistency,
    L1Diversity,
    face_param_metrics,
    frechet_from_moments,
    load_bc_audio,
    load_mean_vel,
)
from evaluation.protocols import DEFAULT_PROTOCOL, PLACEMENT_PROTOCOL, bc_options, check_protocol
from evaluation.realism import QUANTITIES, beat_placement_score, realism_stats
from geometry.body_model import JointsFK, SMPLXVertices, get_fk
from geometry.rotations import poses_to_rot6d, reortho_6d
from utils.device import blas_threads, torch_threads
from utils.io import ensure_writable_dir, load_torch, save_json, sha256_file

__all__ = [
    "Evaluator",
    "EvaluationError",
    "MetricsWriteError",
    "SequenceResult",
    "AUDIO_SHORTFALL_TOLERANCE_S",
    "evaluate_folder",
    "discover_pairs",
    "load_motion_npz",
    "format_table",
    "METRIC_SCALES",
]

# How papers print each raw metric (raw x scale): FGD "x1e-1", BC "x1e-1", MSE "x1e-8", LVD "x1e-5".
METRIC_SCALES = {"fgd": 10.0, "bc": 10.0, "bc_gt": 10.0, "l1div": 1.0, "l1div_gt": 1.0,
                 "face_mse": 1e8, "lvd_emage2024": 1e5, "lvd_evaltools": 1e5}  # fmt: skip
# Realism (evaluation.realism): upper-body speed (m/s), acceleration (m/s^2), jerk (m/s^3) of prediction and GT,
# their ratios, and the beat-placement score (corrected-protocol BC minus BC 0.5 s late); reported as they are.
REALISM_METRICS = tuple(f"{q}{suffix}" for q in QUANTITIES for suffix in ("", "_gt", "_ratio"))
METRIC_SCALES.update({k: 1.0 for k in (*REALISM_METRICS, "beat_placement", "beat_placement_gt", *FACE_PARAM_METRICS)})


# Audio may end this much before the motion (BEAT2 wavs and motion differ by a fraction of a second); beyond it BC
# would score only the part of the motion the audio covers, so the sequence is an error or excluded from BC.
AUDIO_SHORTFALL_TOLERANCE_S = 1.0
SHORT_AUDIO_POLICIES = ("error", "exclude")


class EvaluationError(ValueError):
    """Bad evaluation input (mismatched ids or lengths, NaN, missing audio, ...); the message names the file."""


class MetricsWriteError(EvaluationError):
    """The evaluation finished but metrics.json could not be written; ``report`` holds the results."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class SequenceResult:
    """One evaluated sequence (``Evaluator.sequences``).

    ``l1_sum``/``l1_sum_gt``: sum over frames and the 165 joint coordinates of |x - mean_t(x)| (prediction / GT);
    ``l1div = l1_sum / frames``. ``fgd_moments``: the FGD tokens' sufficient statistics ``(count, sum, outer)`` of
    the prediction then the GT (None when not computed). ``excluded``: ``(metric, reason)`` for each metric this
    sequence was left out of; ``notes``: every message about it (exclusion reasons included)."""

    id: str
    frames: int
    l1_sum: float
    l1_sum_gt: float
    bc: float | None = None
    bc_gt: float | None = None
    fgd_moments: tuple[Any, ...] | None = None
    face: Mapping[str, float] | None = None
    face_params: Mapping[str, float | None] | None = None  # vertex-free proxy (metrics.face_param_metrics)
    realism: Mapping[str, float] | None = None  # speed/acceleration/jerk of the prediction
    realism_gt: Mapping[str, float] | None = None
    beat_placement: float | None = None  # corrected-protocol BC minus BC of the motion 0.5 s late
    beat_placement_gt: float | None = None
    notes: tuple[str, ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def l1div(self) -> float:
        return self.l1_sum / self.frames

    @property
    def l1div_gt(self) -> float:
        return self.l1_sum_gt / self.frames

    def as_dict(self) -> dict[str, Any]:
        """The per-sequence metrics as ``Evaluator.add`` returns them."""
        out: dict[str, Any] = {"id": self.id, "frames": self.frames, "bc": self.bc, "bc_gt": self.bc_gt,
                               "l1div": self.l1div, "l1div_gt": self.l1div_gt}  # fmt: skip
        if self.face:
            out.update(self.face)
        if self.face_params:
            out.update(self.face_params)
        if self.realism is not None and self.realism_gt is not None:
            for q in QUANTITIES:
                out[q], out[f"{q}_gt"] = self.realism[q], self.realism_gt[q]
        out["beat_placement"], out["beat_placement_gt"] = self.beat_placement, self.beat_placement_gt
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# metric keys of SequenceResult.excluded -> how the notes name them
_METRIC_LABELS = {"bc": "BC", "fgd": "FGD", "face": "face metrics", "realism": "realism metrics"}


def _wav_channels(path: str | os.PathLike) -> int | None:
    """Channel count of an audio file (None when soundfile cannot read its header; librosa then reports)."""
    import soundfile

    try:
        return int(soundfile.info(str(path)).channels)
    except (RuntimeError, OSError):  # soundfile.LibsndfileError is a RuntimeError
        return None


def _as_poses(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != 165:
        raise EvaluationError(f"{name}: poses must be (T, 165) axis-angle, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise EvaluationError(f"{name}: poses contain NaN/inf")
    return a


def _digest(*arrays: np.ndarray | None) -> str:
    """Content key of arrays (dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"-")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _read_only(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, tuple):
        for v in value:
            _read_only(v)
    return value


class _GtMemo:
    """Results of pure functions of a sequence's ground-truth side (FK joints, FGD moments, audio, onsets, GT
    realism and beat placement), keyed by content: the learning check and the NFE table score every file's GT once
    per condition and seed (~15 times). Arrays come back read-only (a caller writing into one raises); a bounded LRU:
    ~8 entries per file, so scoring more than ~size/8 files round-robin gets no hits (slower, never wrong)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = 0

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        value = _read_only(compute())  # an exception stores nothing
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def _owned(y: np.ndarray, audio: Any) -> np.ndarray:
    """The memo's own copy when ``load_bc_audio`` handed back the caller's array (it does for float32 input), so
    marking it read-only never locks the caller's buffer."""
    return y.copy() if isinstance(audio, np.ndarray) and np.may_share_memory(y, audio) else y


def _audio_key(audio: str | os.PathLike | np.ndarray) -> tuple:
    if isinstance(audio, (str, os.PathLike)):
        try:
            st = os.stat(audio)
        except OSError:
            return ("path", os.fspath(audio), None)  # missing: load_bc_audio raises, nothing is stored
        return ("path", os.path.abspath(os.fspath(audio)), st.st_mtime_ns, st.st_size)
    return ("array", _digest(np.asarray(audio)))


class Evaluator:
    """Accumulates per-sequence metric state; ``compute()`` pools it; ``sequences`` lists the per-sequence results.

    ``fgd_model``: an object with ``map2latent(x (B,T,330)) -> (B,T/16,240)`` (``evaluation.fgd_autoencoder``), or None
    (FGD not computed). ``mean_vel``: (55,) array or .npy path for BC, or None (BC not computed). ``fk``: a
    ``JointsFK`` (its skeleton source is used with each sequence's betas); default ``get_fk()``.
    ``face_model``: an ``SMPLXVertices`` to compute face MSE/LVD, or None. ``num_threads``: torch threads used
    inside ``add`` (default 1: the per-sequence ops are small; None leaves torch's setting alone); the face
    metrics' vertex arrays are large and use the caller's setting.
    ``short_audio``: what to do when a sequence's audio ends more than ``audio_tolerance_s`` seconds before its
    motion: ``"error"`` (EvaluationError naming the sequence and file) or ``"exclude"`` (left out of BC, listed).
    ``bc_kwargs``: BeatConsistency settings and protocol option overrides (e.g. ``threshold=0.3``,
    ``float32_motion=False``).
    """

    def __init__(
        self,
        fgd_model: Any | None = None,
        mean_vel: np.ndarray | str | os.PathLike | None = None,
        fk: JointsFK | None = None,
        protocol: str = DEFAULT_PROTOCOL,
        fgd_trim: int = 32,
        face_model: SMPLXVertices | None = None,
        num_threads: int | None = 1,
        short_audio: str = "error",
        audio_tolerance_s: float = AUDIO_SHORTFALL_TOLERANCE_S,
        **bc_kwargs: Any,
    ) -> None:
        check_protocol(protocol)
        if short_audio not in SHORT_AUDIO_POLICIES:
            raise ValueError(f"short_audio must be one of {SHORT_AUDIO_POLICIES}, got {short_audio!r}")
        self.num_threads = num_threads
        self.fps = 30  # the protocol's pose rate (BC's pose_fps)
        self.fgd_model = fgd_model
        self.fk = fk if fk is not None else get_fk()
        self.protocol = protocol
        self.fgd_trim = int(fgd_trim)
        self.face_model = face_model
        self.short_audio = short_audio
        self.audio_tolerance_s = float(audio_tolerance_s)
        option_names = set(bc_options(protocol).__dataclass_fields__)
        options = bc_options(protocol, **{k: v for k, v in bc_kwargs.items() if k in option_names})
        # one FK dtype for every motion metric: the protocol's (float32 under emage2024, as the reference)
        self.motion_dtype = torch.float32 if options.float32_motion else torch.float64
        self.bc: BeatConsistency | None = None
        self.bc_gt: BeatConsistency | None = None
        self.bc_placement: BeatConsistency | None = None
        if mean_vel is not None:
            try:
                self.bc = BeatConsistency(mean_vel, protocol=protocol, **bc_kwargs)
            except ValueError as e:
                raise EvaluationError(str(e)) from e
            self.bc_gt = BeatConsistency(self.bc.mean_vel, protocol=protocol, **bc_kwargs)
            # beat placement is defined under the corrected protocol whatever this evaluator's protocol is
            self.bc_placement = BeatConsistency(self.bc.mean_vel, protocol=PLACEMENT_PROTOCOL)
        self.l1, self.l1_gt = L1Diversity(), L1Diversity()
        self._seqs: list[SequenceResult] = []
        self._memo = _GtMemo()

    @property
    def sequences(self) -> tuple[SequenceResult, ...]:
        """Every sequence added so far, in order (frozen results)."""
        return tuple(self._seqs)

    def reset(self) -> None:
        self._seqs.clear()
        for m in (self.bc, self.bc_gt, self.l1, self.l1_gt):
            if m is not None:
                m.reset()

    # -- per sequence ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _fgd_stats(self, poses: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
        n = poses.shape[0] - poses.shape[0] % self.fgd_trim  # reference: rec_pose[:, :n - n % 32]
        if n == 0:
            return None
        params = list(self.fgd_model.parameters()) if hasattr(self.fgd_model, "parameters") else []
        device = params[0].device if params else torch.device("cpu")
        x = reortho_6d(poses_to_rot6d(torch.from_numpy(poses[:n])).reshape(n, 55, 6)).reshape(1, n, 330)
        feats = self.fgd_model.map2latent(x.to(device))  # (1, n/16, 240)
        f = feats.reshape(-1, feats.shape[-1]).double().cpu().numpy()
        if not np.all(np.isfinite(f)):
            raise EvaluationError("FGD encoder produced NaN/inf features")
        return f.shape[0], f.sum(0), f.T @ f

    def _joints(self, poses: np.ndarray, betas: np.ndarray | None) -> np.ndarray:
        fk = self.fk.with_betas(betas)
        # FK output dtype follows the input: float32 poses give float32 joints (the reference's smplx dtype)
        return fk(torch.from_numpy(poses).to(self.motion_dtype)).numpy()  # translation zeroed: trans not passed

    def add(
        self,
        pred_poses: np.ndarray | torch.Tensor,
        gt_poses: np.ndarray | torch.Tensor,
        betas: np.ndarray | None = None,
        audio: str | os.PathLike | np.ndarray | None = None,
        id: str | None = None,  # noqa: A002 - the agreed API name
        pred_expressions: np.ndarray | None = None,
        gt_expressions: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Add one whole sequence (pred and GT (T,165) axis-angle at 30 fps, GT betas (300,), its audio: a wav
        path or a 1-D 16 kHz array). Returns the sequence's own metrics (``SequenceResult.as_dict()``)."""
        face_threads = torch.get_num_threads()  # the face vertices are large arrays: the caller's threads
        with torch_threads(self.num_threads):  # many small ops: 1 thread avoids costly barriers
            seq = self._add(pred_poses, gt_poses, betas, audio, id, pred_expressions, gt_expressions, face_threads)
        self._seqs.append(seq)
        return seq.as_dict()

    def _bc_audio(self, sid: str, n: int, audio: str | os.PathLike | np.ndarray, akey: tuple,
                  notes: list[str]) -> tuple[np.ndarray | None, str | None]:
        """(16 kHz mono audio, None) or (None, reason to exclude the sequence from BC)."""
        assert self.bc is not None
        label = "audio array"
        if isinstance(audio, (str, os.PathLike)):
            label = str(audio)
            channels = self._memo.get(("channels", akey), lambda: _wav_channels(audio))
            if channels is not None and channels > 1:
                notes.append(f"audio {label} has {channels} channels: averaged to mono for BC")
        y = self._audio(audio, akey, self.bc.options.audio_via_22k, self.bc.audio_sr)
        audio_s, motion_s = len(y) / self.bc.audio_sr, n / self.bc.pose_fps
        if motion_s - audio_s > self.audio_tolerance_s:
            what = (f"audio {label} lasts {audio_s:.2f} s but the motion {motion_s:.2f} s (shorter by more than "
                    f"{self.audio_tolerance_s:g} s): BC would score only the covered part")  # fmt: skip
            if self.short_audio == "error":
                raise EvaluationError(f"{sid}: {what}; fix the audio, or exclude such sequences from BC "
                                      "(Evaluator(short_audio='exclude'), test.py --skip-missing-audio)")  # fmt: skip
            return None, what
        return y, None

    def _add(self, pred_poses, gt_poses, betas, audio, id, pred_expressions, gt_expressions,  # noqa: A002
             face_threads: int) -> SequenceResult:  # fmt: skip
        sid = id if id is not None else f"seq{len(self._seqs)}"
        pred = _as_poses(pred_poses, f"{sid} (prediction)")
        gt = _as_poses(gt_poses, f"{sid} (ground truth)")
        n = pred.shape[0]
        if n != gt.shape[0]:
            raise EvaluationError(f"{sid}: prediction has {n} frames, ground truth {gt.shape[0]}")
        if betas is not None:
            betas = np.asarray(betas, np.float64).reshape(-1)
            if not np.all(np.isfinite(betas)):
                raise EvaluationError(f"{sid}: betas contain NaN/inf")
        notes: list[str] = []
        excluded: list[tuple[str, str]] = []

        def exclude(metric: str, reason: str) -> None:
            excluded.append((metric, reason))
            notes.append(f"{reason}: excluded from {_METRIC_LABELS[metric]}")

        gkey = _digest(gt, betas)  # the GT side's results are memoised by content (see _GtMemo)
        jp, jg = self._joints(pred, betas), self._memo.get(("joints", gkey), lambda: self._joints(gt, betas))
        res: dict[str, Any] = {}
        onsets = None
        if self.bc is not None:
            if audio is None:
                exclude("bc", "no audio")
            elif n <= 2 * self.bc.align_mask:
                exclude("bc", f"{n} frames <= {2 * self.bc.align_mask}")
            else:
                akey = _audio_key(audio)  # once per add: every audio-derived entry of this add shares it
                y, why = self._bc_audio(sid, n, audio, akey, notes)
                if why is not None:
                    exclude("bc", why)
                else:
                    onsets = self._memo.get(("onsets", akey, n), lambda: self.bc.onsets(y, n))
                    if onsets.size == 0:
                        onsets = None
                        exclude("bc", "no audio onsets in the evaluated window")
                    else:
                        res.update(self._beat_placement(jp, jg, audio, y, onsets, gkey, akey))
        if self.fgd_model is not None:
            sp, sg = self._fgd_stats(pred), self._memo.get(("fgd", gkey), lambda: self._fgd_stats(gt))
            if sp is None:
                exclude("fgd", f"{n} frames < {self.fgd_trim}")
            else:
                res["fgd_moments"] = (*sp, *sg)
        if pred_expressions is not None and gt_expressions is not None:
            try:
                res["face_params"] = face_param_metrics(pred, pred_expressions, gt, gt_expressions)
            except ValueError as e:
                raise EvaluationError(f"{sid}: {e}") from e
        if self.face_model is not None:
            if pred_expressions is None or gt_expressions is None:
                exclude("face", "no expressions")
            else:
                with torch_threads(face_threads):
                    res["face"] = self.face_model.face_metrics(pred, pred_expressions, gt, gt_expressions, betas)
        if n >= 4:  # jerk needs a third difference
            res["realism"] = realism_stats(jp, fps=self.fps, name=f"{sid} (prediction)")
            res["realism_gt"] = dict(self._memo.get(("realism", gkey), lambda: realism_stats(
                jg, fps=self.fps, name=f"{sid} (ground truth)")))
        else:
            exclude("realism", f"{n} frames < 4")
        # the metric objects' state changes last, once nothing above can fail: a rejected sequence leaves no trace
        self.l1.update(jp)
        self.l1_gt.update(jg)
        res["l1_sum"], res["l1_sum_gt"] = self.l1.sums[-1], self.l1_gt.sums[-1]  # exact sums, not per-frame x n
        if onsets is not None and self.bc is not None and self.bc_gt is not None:
            res["bc"] = self.bc.update(jp, onsets=onsets)
            res["bc_gt"] = self.bc_gt.update(jg, onsets=onsets)
        return SequenceResult(id=sid, frames=n, notes=tuple(notes), excluded=tuple(excluded), **res)

    def _audio(self, audio: Any, akey: tuple, via_22k: bool, sr: int) -> np.ndarray:
        """BC's mono audio at ``sr`` (memoised by content; never the caller's own array, see `_owned`)."""
        return self._memo.get(("audio", akey, via_22k, sr),
                              lambda: _owned(load_bc_audio(audio, via_22k=via_22k, sr=sr), audio))

    def _beat_placement(self, jp: np.ndarray, jg: np.ndarray, audio: Any, y: np.ndarray,
                        onsets: np.ndarray, gkey: str, akey: tuple) -> dict[str, float]:  # fmt: skip
        """Beat placement of prediction and GT, with the corrected protocol's onsets (its own audio loading)."""
        bp = self.bc_placement
        assert bp is not None and self.bc is not None
        n = jp.shape[0]
        if bp.options.audio_via_22k != self.bc.options.audio_via_22k:
            y = self._audio(audio, akey, bp.options.audio_via_22k, bp.audio_sr)
            onsets = self._memo.get(("placement_onsets", akey, n), lambda: bp.onsets(y, n))
        if onsets.size == 0:
            return {}

        def bc(j: np.ndarray) -> float:
            return bp.score(bp.motion_beats(j), onsets)

        gt_score = self._memo.get(("placement_gt", gkey, akey, n),
                                  lambda: beat_placement_score(jg, bc, fps=self.fps)["score"])
        return {"beat_placement": beat_placement_score(jp, bc, fps=self.fps)["score"], "beat_placement_gt": gt_score}

    # -- pooling -----------------------------------------------------------------------------------------------
    def _aggregate(self, w: np.ndarray, fast: bool = False) -> dict[str, float | None]:
        """Metrics over the sequences with multiplicities ``w`` (ones = the plain test set)."""
        seqs = self._seqs
        n = np.array([r.frames for r in seqs], np.float64)
        out: dict[str, float | None] = {}
        out["l1div"] = float((w * [r.l1_sum for r in seqs]).sum() / (w * n).sum())
        out["l1div_gt"] = float((w * [r.l1_sum_gt for r in seqs]).sum() / (w * n).sum())
        if self.bc is not None:
            m = np.array([r.bc is not None for r in seqs])
            bw = w * m * (n - 2 * self.bc.align_mask)
            if bw.sum() > 0:
                out["bc"] = float(np.sum(bw * [r.bc or 0.0 for r in seqs]) / bw.sum())
                out["bc_gt"] = float(np.sum(bw * [r.bc_gt or 0.0 for r in seqs]) / bw.sum())
            else:
                out["bc"] = out["bc_gt"] = None
        if self.fgd_model is not None:
            out["fgd"] = self._fgd(w, fast)
        rw = w * np.array([r.realism is not None for r in seqs])
        for q in QUANTITIES:  # means over sequences, and their ratio (a ratio of means: noisy files do not dominate)
            if rw.sum() == 0:
                out[q] = out[f"{q}_gt"] = out[f"{q}_ratio"] = None
                continue
            out[q] = float(np.sum(rw * [r.realism[q] if r.realism else 0.0 for r in seqs]) / rw.sum())
            out[f"{q}_gt"] = float(np.sum(rw * [r.realism_gt[q] if r.realism_gt else 0.0 for r in seqs]) / rw.sum())
            out[f"{q}_ratio"] = out[q] / out[f"{q}_gt"] if out[f"{q}_gt"] > 0 else None
        if self.bc is not None:
            m = np.array([r.beat_placement is not None for r in seqs])
            bw = w * m
            for k in ("beat_placement", "beat_placement_gt"):
                vals = [getattr(r, k) or 0.0 for r in seqs]
                out[k] = float(np.sum(bw * vals) / bw.sum()) if bw.sum() > 0 else None
        if self.face_model is not None:
            fm = np.array([r.face is not None for r in seqs])
            fw = w * fm * n
            for k in ("face_mse", "lvd_emage2024", "lvd_evaltools"):
                vals = [r.face[k] if r.face else 0.0 for r in seqs]
                out[k] = float(np.sum(fw * vals) / fw.sum()) if fw.sum() > 0 else None
        pm = np.array([r.face_params is not None for r in self._seqs])
        if pm.any():
            pw = w * pm * n  # per-frame means, as the vertex metrics
            for k in ("face_param_mse", "face_param_lvd"):
                vals = [r.face_params[k] if r.face_params else 0.0 for r in seqs]
                out[k] = float(np.sum(pw * vals) / pw.sum()) if pw.sum() > 0 else None
            cm = w * np.array([bool(r.face_params) and r.face_params.get("jaw_corr") is not None for r in seqs])
            vals = [(r.face_params or {}).get("jaw_corr") or 0.0 for r in seqs]
            out["jaw_corr"] = float(np.sum(cm * vals) / cm.sum()) if cm.sum() > 0 else None
        return out

    def _fgd(self, w: np.ndarray, fast: bool = False) -> float | None:
        idx = [i for i, r in enumerate(self._seqs) if r.fgd_moments is not None and w[i] > 0]
        if not idx:
            return None
        ww = w[idx]
        moments = []
        for off in (0, 3):
            cnt = sum(wi * self._seqs[i].fgd_moments[off] for wi, i in zip(ww, idx))
            if cnt < 2:
                return None
            s = sum(wi * self._seqs[i].fgd_moments[off + 1] for wi, i in zip(ww, idx))
            o = sum(wi * self._seqs[i].fgd_moments[off + 2] for wi, i in zip(ww, idx))
            mu = s / cnt
            cov = (o - cnt * np.outer(mu, mu)) / (cnt - 1)  # == np.cov(rowvar=False) of the pooled tokens
            moments.append((mu, cov))
        return frechet_from_moments(moments[0][0], moments[0][1], moments[1][0], moments[1][1], fast=fast)

    def compute(self, n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
        """Pooled metrics (None where not computable). With ``n_boot > 0`` also ``ci95``: percentile-bootstrap
        intervals over sequences (``seed`` fixes the resampling)."""
        if not self._seqs:
            raise EvaluationError("Evaluator.compute() before any add()")
        s = len(self._seqs)
        res: dict[str, Any] = dict(self._aggregate(np.ones(s)))
        res["n_sequences"] = s
        res["n_frames"] = int(sum(r.frames for r in self._seqs))
        if n_boot > 0:
            with blas_threads(1):  # 240x240 linear algebra: single-threaded BLAS avoids oversubscription stalls
                res.update(self._bootstrap(res, n_boot, seed))
        return res

    def _bootstrap(self, res: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
        s = len(self._seqs)
        rng = np.random.default_rng(seed)
        draws: dict[str, list[float]] = {k: [] for k, v in res.items() if k in METRIC_SCALES and v is not None}
        for _ in range(n_boot):
            w = rng.multinomial(s, np.full(s, 1.0 / s)).astype(np.float64)
            agg = self._aggregate(w, fast=True)  # Cholesky route for FGD replicates
            for k in draws:
                if agg.get(k) is not None:
                    draws[k].append(agg[k])
        ci = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None
              for k, v in draws.items()}  # fmt: skip
        return {"ci95": ci, "bootstrap": {"n": int(n_boot), "seed": int(seed), "unit": "sequence"}}


# ----------------------------------------------------------------------------------------------------------------
# Folder evaluation
# ----------------------------------------------------------------------------------------------------------------


def _ids_in(folder: Path, prefix: str, other_prefix: str) -> tuple[dict[str, Path], list[Path]]:
    """(id -> file, plain files left out). With ``<prefix><id>.npz`` files present those are used and plain
    ``<id>.npz`` files beside them are left out (reported by the caller, never dropped silently)."""
    files = sorted(folder.glob("*.npz"))
    pref = [f for f in files if f.name.startswith(prefix)]
    if pref:
        plain = [f for f in files if not f.name.startswith((prefix, other_prefix))]
        ids = {f.name[len(prefix) : -len(".npz")]: f for f in pref}
    else:
        plain, ids = [], {f.name[: -len(".npz")]: f for f in files if not f.name.startswith(other_prefix)}
    if "" in ids:  # "res_.npz" or ".npz" (Path.stem would even call the latter ".npz")
        raise EvaluationError(f"{ids['']}: no sequence id in the file name (expected {prefix}<id>.npz)")
    return ids, plain


def _discover(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    for d, what in ((pred_dir, "--pred-dir"), (gt_dir, "--gt-dir")):
        if not d.is_dir():
            raise EvaluationError(f"{what} {d} is not a folder")
    preds, plain_p = _ids_in(pred_dir, "res_", "gt_")
    gts, plain_g = _ids_in(gt_dir, "gt_", "res_")
    if not preds:
        raise EvaluationError(f"no prediction files (res_<id>.npz or <id>.npz) in {pred_dir}")
    only_pred, only_gt = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    if only_pred or only_gt:
        raise EvaluationError(
            f"prediction and ground-truth ids differ: without GT in {gt_dir}: {only_pred[:10]}"
            f"{' ...' if len(only_pred) > 10 else ''}; without prediction in {pred_dir}: {only_gt[:10]}"
            f"{' ...' if len(only_gt) > 10 else ''}"
        )
    ignored = sorted({f.resolve(): f for f in plain_p + plain_g}.values())  # one folder may be both
    return [(i, preds[i], gts[i]) for i in sorted(preds)], ignored


def discover_pairs(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(id, pred file, gt file) for ``res_<id>.npz`` / ``gt_<id>.npz`` (or plain ``<id>.npz``) in the folders.
    Ids present on one side only are an error. Plain ``<id>.npz`` files beside ``res_``/``gt_`` files are not
    paired: a warning names them (``evaluate_folder`` lists them in ``excluded``)."""
    pairs, ignored = _discover(Path(pred_dir), Path(gt_dir))
    if ignored:
        warnings.warn(f"not evaluated (plain <id>.npz beside res_/gt_ files): {[str(f) for f in ignored]}",
                      stacklevel=2)  # fmt: skip
    return pairs


def load_motion_npz(path: Path) -> dict[str, Any]:
    """poses (T,165) (required), betas, trans, expressions, gt_copied (optional); validated, no pickle."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise EvaluationError(f"{path}: cannot read npz ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array under an .npz name
        raise EvaluationError(f"{path}: not an npz archive (one .npy array?); expected at least the key 'poses'")
    with z:
        if "poses" not in z.files:
            raise EvaluationError(f"{path}: missing key 'poses' (has {z.files})")
        out: dict[str, Any] = {"poses": _as_poses(_npz_array(z, "poses", path, "iuf"), str(path))}
        t = out["poses"].shape[0]
        if t == 0:
            raise EvaluationError(f"{path}: 'poses' has no frames")
        for key, shape in (("betas", None), ("trans", (t, 3)), ("expressions", None)):
            if key in z.files:
                a = _npz_array(z, key, path, "iuf").astype(np.float64)
                if key == "betas" and a.ndim == 2 and a.shape[0] > 0:
                    a = a[0]  # per-frame copies of one shape
                if shape is not None and a.shape != shape:
                    raise EvaluationError(f"{path}: '{key}' has shape {a.shape}, expected {shape} (poses: {t} frames)")
                if key == "betas" and (a.ndim != 1 or a.size == 0):
                    raise EvaluationError(f"{path}: 'betas' has shape {a.shape}, expected (K,) or (T, K)")
                if key == "expressions" and (a.ndim != 2 or a.shape[0] != t):
                    raise EvaluationError(f"{path}: 'expressions' has shape {a.shape}, expected ({t}, K)")
                if not np.all(np.isfinite(a)):
                    raise EvaluationError(f"{path}: '{key}' contains NaN/inf")
                out[key] = a
        if "gt_copied" in z.files:
            names = _npz_array(z, "gt_copied", path, "U")
            out["gt_copied"] = [str(s) for s in np.atleast_1d(names).ravel().tolist()]
    return out


def _npz_array(z: Any, key: str, path: Path, kinds: str) -> np.ndarray:
    """``z[key]`` with every reading problem (object arrays, which are never unpickled; corrupt or truncated members)
    and a dtype outside ``kinds`` (numpy kind codes) reported as an EvaluationError naming the file and key."""
    try:
        a = np.asarray(z[key])
    except Exception as e:  # numpy/zipfile/zlib raise many types for a damaged member; all mean "unreadable"
        raise EvaluationError(f"{path}: cannot read '{key}' ({type(e).__name__}: {e})") from e
    if a.dtype.kind not in kinds:
        want = "strings" if kinds == "U" else "real numbers"
        raise EvaluationError(f"{path}: '{key}' has dtype {a.dtype} (expected {want})")
    return a


def _identical_fields(pred: dict[str, Any], gt: dict[str, Any]) -> list[str]:
    """Fields of the prediction that equal the ground truth exactly (GT substitution, as upstream's test does)."""
    same = []
    if np.array_equal(pred["poses"][:, 66:69], gt["poses"][:, 66:69]) and np.abs(gt["poses"][:, 66:69]).max() > 0:
        same.append("jaw")
    for key in ("expressions", "trans"):
        if key in pred and key in gt and np.array_equal(pred[key], gt[key]) and np.abs(gt[key]).max() > 0:
            same.append(key)
    if np.array_equal(pred["poses"], gt["poses"]):
        same.append("poses")
    elif pred["poses"].shape[0] >= 16 and np.array_equal(pred["poses"][:16], gt["poses"][:16]):
        same.append("poses[:16] (seed frames)")
    return same


def _versions() -> dict[str, str]:
    import librosa
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "librosa": librosa.__version__, "torch": torch.__version__}  # fmt: skip


def evaluate_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    audio_dir: str | os.PathLike | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    fgd_ckpt: str | os.PathLike | None = None,
    body_model: str | os.PathLike | None = None,
    mean_vel: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    skip_missing_audio: bool = False,
    face: bool = True,
    fgd_model: Any | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a folder of predictions against a folder of ground truth; write ``out_dir/metrics.json``.

    ``skip_missing_audio``: ids without a wav, or whose wav ends more than ``AUDIO_SHORTFALL_TOLERANCE_S`` before
    the motion, are excluded from BC (listed in ``excluded``) instead of being an error. ``out_dir`` is checked for
    writability before anything is evaluated; if writing metrics.json still fails at the end, MetricsWriteError
    carries the finished report."""
    from geometry.body_model import find_smplx_model, get_vertex_model

    if out_dir is not None:
        _check_writable(Path(out_dir))
    pairs, ignored = _discover(Path(pred_dir), Path(gt_dir))
    notes: list[str] = []
    excluded: list[dict[str, str]] = []
    for f in ignored:
        reason = (f"plain {f.name} beside res_/gt_ files in {f.parent}: not evaluated (name it res_<id>.npz / "
                  "gt_<id>.npz to include it)")  # fmt: skip
        excluded.append({"id": f.stem, "metric": "all", "reason": reason})
    if ignored:
        notes.append(f"{len(ignored)} plain <id>.npz file(s) beside res_/gt_ files not evaluated (see excluded)")
    # audio
    audio_paths: dict[str, Path | None] = {}
    if audio_dir is None:
        notes.append("BC not computed: no --audio-dir given")
    else:
        missing = []
        for sid, _, _ in pairs:
            p = Path(audio_dir) / f"{sid}.wav"
            audio_paths[sid] = p if p.is_file() else None
            if not p.is_file():
                missing.append(sid)
        if missing and not skip_missing_audio:
            raise EvaluationError(
                f"no audio <id>.wav in {audio_dir} for {missing[:10]}{' ...' if len(missing) > 10 else ''} "
                "(pass --skip-missing-audio to exclude them from BC, reported in metrics.json)"
            )
        excluded += [{"id": s, "metric": "bc", "reason": f"no {s}.wav in {audio_dir}"} for s in missing]
    if mean_vel is None:
        notes.append("BC not computed: no --mean-vel given (mean_vel_smplxflame_30.npy; BC depends on it)")
    else:
        try:  # a bad file is reported now, not after the sequences are read
            load_mean_vel(mean_vel)
        except ValueError as e:
            raise EvaluationError(str(e)) from e
    use_bc = audio_dir is not None and mean_vel is not None
    # FGD
    fgd_info: dict[str, Any] | None = None
    if fgd_model is None and fgd_ckpt is not None:
        fgd_model = _load_fgd(Path(fgd_ckpt), device)
    if fgd_ckpt is not None:
        fgd_info = {"path": str(fgd_ckpt), "sha256": sha256_file(fgd_ckpt)}
    elif fgd_model is not None:
        fgd_info = {"path": None, "sha256": None, "note": "in-memory FGD model (no checkpoint file)"}
    else:
        notes.append("FGD not computed: no --fgd-ckpt given (the EMAGE AE is AESKConv_240_100.bin)")
    # body model
    fk = get_fk(body_model)
    face_model = None
    if face and find_smplx_model(body_model) is not None:
        face_model = get_vertex_model(body_model, device)
    else:
        notes.append("face MSE/LVD not computed: needs the SMPL-X model file (--body-model or SMPLX_MODEL_PATH)")
    ev = Evaluator(fgd_model, mean_vel if use_bc else None, fk, protocol, face_model=face_model,
                   short_audio="exclude" if skip_missing_audio else "error")  # fmt: skip
    files = []
    copied_all: set[str] = set()
    iterator = pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(pairs, desc="evaluate", unit="seq")
    for sid, pp, gp in iterator:
        pred, gt = load_motion_npz(pp), load_motion_npz(gp)
        if pred["poses"].shape[0] != gt["poses"].shape[0]:
            raise EvaluationError(
                f"{sid}: {pp.name} has {pred['poses'].shape[0]} frames but {gp.name} has {gt['poses'].shape[0]}"
            )
        betas = gt.get("betas")
        info: dict[str, Any] = {"id": sid, "pred": str(pp), "gt": str(gp), "frames": int(pred["poses"].shape[0])}
        if betas is None:
            info["betas"] = "absent in GT file: zero shape used"
        declared = pred.get("gt_copied", [])
        identical = _identical_fields(pred, gt)
        if declared:
            info["gt_copied"] = declared
        if identical:
            info["identical_to_gt"] = identical
        copied_all.update(declared)
        copied_all.update(identical)
        audio = audio_paths.get(sid) if use_bc else None
        if audio is not None:
            info["audio"] = str(audio)
        try:
            seq = ev.add(pred["poses"], gt["poses"], betas, audio, sid, pred.get("expressions"), gt.get("expressions"))
        except EvaluationError:
            raise
        except ValueError as e:
            raise EvaluationError(f"{sid}: {e}") from e
        seq.pop("notes", None)
        result = ev.sequences[-1]
        already = {(e["id"], e["metric"]) for e in excluded}
        for metric, reason in result.excluded:
            if (sid, metric) not in already:  # e.g. a missing wav is already listed with its file name
                excluded.append({"id": sid, "metric": metric, "reason": reason})
        exclusion_notes = {f"{r}: excluded from {_METRIC_LABELS[m]}" for m, r in result.excluded}
        other = [n for n in result.notes if n not in exclusion_notes]
        if other:
            info["notes"] = other
            notes.extend(f"{sid}: {n}" for n in other)
        info.update({k: v for k, v in seq.items() if k not in ("id", "frames")})
        files.append(info)
    res = ev.compute(n_boot=n_boot, seed=seed)
    metric_names = [k for k in METRIC_SCALES if k in res]
    if copied_all & {"jaw", "expressions"}:
        notes.append("face metrics (vertex and parameter) compare GT-copied jaw/expressions: they are trivially ~0 "
                     "and not meaningful")
    report: dict[str, Any] = {
        "metrics": {k: res[k] for k in metric_names},
        "ci95": res.get("ci95", {}),
        "bootstrap": res.get("bootstrap"),
        "reported_scale": {k: METRIC_SCALES[k] for k in metric_names},
        "protocol": {
            "id": protocol,
            "bc": None if ev.bc is None else {
                "variant": ev.bc.protocol, "options": ev.bc.options.__dict__, "sigma": ev.bc.sigma,
                "order": ev.bc.order, "threshold": ev.bc.threshold, "joints": list(ev.bc.joints),
                "align_mask": ev.bc.align_mask, "audio_shortfall_tolerance_s": ev.audio_tolerance_s,
            },
            "fgd_trim": ev.fgd_trim,
            "motion_dtype": str(ev.motion_dtype).replace("torch.", ""),
        },
        "fgd_ae": fgd_info,
        "skeleton_source": fk.source,
        "face_model": None if face_model is None else face_model.source,
        "mean_vel": None if mean_vel is None else {"path": str(mean_vel), "sha256": sha256_file(mean_vel)},
        "n_sequences": res["n_sequences"],
        "n_frames": res["n_frames"],
        "seconds": res["n_frames"] / 30.0,
        "gt_copied_fields": sorted(copied_all),
        "files": files,
        "excluded": excluded,
        "notes": notes,
        "versions": _versions(),
    }
    if out_dir is not None:
        path = Path(out_dir) / "metrics.json"
        try:
            save_json(_json_clean(report), path)
        except OSError as e:
            raise MetricsWriteError(f"could not write {path} ({e}); the results are printed but not saved",
                                    report) from e  # fmt: skip
    return report


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and a temporary file in it, now, so a read-only --out is found before the evaluation."""
    try:
        ensure_writable_dir(folder)
    except OSError as e:
        raise EvaluationError(f"output folder {folder} is not writable ({e}); pass a writable --out") from e


def _load_fgd(path: Path, device: str) -> Any:
    """The FGD autoencoder from ``path``, or one EvaluationError naming the file and what was expected."""
    from evaluation.fgd_autoencoder import load_fgd_autoencoder

    expected = ("expected the EMAGE FGD autoencoder weights (AESKConv_240_100.bin or one saved by this project: a "
                "torch file holding {'model_state': VAESKConv state dict})")  # fmt: skip
    if not path.is_file():
        raise EvaluationError(f"FGD checkpoint {path}: not found; {expected}")
    if path.stat().st_size == 0:
        raise EvaluationError(f"FGD checkpoint {path}: the file is empty (0 bytes); {expected}")
    try:
        load_torch(path)  # probe (0.1 s for the 17 MB AE)
    except Exception as e:  # the weights-only unpickler raises assorted types (KeyError, EOFError, ...) on bad bytes
        detail = str(e).splitlines()[0] if str(e) else ""
        raise EvaluationError(f"FGD checkpoint {path}: unreadable: truncated, corrupted or not a weights-only torch "
                              f"file ({type(e).__name__}: {detail[:200]}); {expected}") from e  # fmt: skip
    try:
        return load_fgd_autoencoder(path, map_location=device)
    except (ValueError, RuntimeError) as e:  # CheckpointError (RuntimeError) and the key check name the keys
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvaluationError(f"FGD checkpoint {path}: wrong contents: {detail}; {expected}") from e


def _json_clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def format_table(report: dict[str, Any]) -> str:
    """A console table: metric, raw value, 95% CI, value at the papers' reporting scale."""
    rows = [f"{'metric':<15}{'raw':>12}{'95% CI':>26}{'reported':>12}"]
    for k, v in report["metrics"].items():
        ci = report.get("ci95", {}).get(k)
        ci_s = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-"
        val = "n/a" if v is None else f"{v:.4f}"
        scaled = "n/a" if v is None else f"{v * report['reported_scale'][k]:.4f}"
        rows.append(f"{k:<15}{val:>12}{ci_s:>26}{scaled:>12}")
    rows.append(f"{report['n_sequences']} sequences, {report['seconds']:.1f} s; protocol {report['protocol']['id']}; "
                f"skeleton {report['skeleton_source']}")  # fmt: skip
    for n in report.get("notes", []):
        rows.append(f"note: {n}")
    for e in report.get("excluded", []):
        rows.append(f"excluded: {e['id']} from {e['metric']}: {e['reason']}")
    if report.get("gt_copied_fields"):
        rows.append(f"GT-copied/identical fields in predictions: {report['gt_copied_fields']}")
    return "\n".join(rows)
