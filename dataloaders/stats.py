"""Normalisation statistics and the 433-D frame vector.

``load_stats(data_cfg)`` (a getter): with ``data.stats_dir`` the official speaker-2 files are read
(``beatx_2_330_{mean,std}.npy``, ``beatx_2_trans_{mean,std}.npy``, ``mean_vel_smplxflame_30.npy``); otherwise the
statistics that ``compute_and_save_stats(data_cfg)`` (an explicit step) computed from the cached training split and
stored (atomically, .npy) under the cache folder:
* rot6d (330): mean/std over all training frames of the 55-joint rot6d (first two rows of each rotation matrix);
* trans_v (3): mean/std of trans_v (x,z deltas, absolute y);
* mean_vel (55): mean joint speed in m/s (central differences x 30) of FK joint positions *with* world
  translation, as the official ``mean_vel_smplxflame_30.npy`` (used to normalise velocities in BC).

Tiny std: upstream divides by the std with no epsilon (its smallest used std is ~1.4e-3; jaw and eyes, down to
1.5e-5, are never normalised by any part). ``min_std`` (default 1e-8) only replaces a std below it by 1, so the
official statistics behave exactly as upstream and a constant dimension of a synthetic corpus cannot divide by 0.
The arithmetic lives in :mod:`geometry.normalisation`, shared with ``models/motion_codec.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geometry.normalisation import DEFAULT_MIN_STD, denormalise, normalise, safe_std
from geometry.rotations import np_poses_to_rot6d, poses_to_rot6d, rot6d_to_poses
from geometry.skeleton import EXPR_SLICE, FRAME_DIM, ROT6D_SLICE, TRANS_V_SLICE
from utils.io import save_npy
from utils.paths import resolve_path

OFFICIAL_FILES = {
    "rot6d_mean": "beatx_2_330_mean.npy",
    "rot6d_std": "beatx_2_330_std.npy",
    "trans_v_mean": "beatx_2_trans_mean.npy",
    "trans_v_std": "beatx_2_trans_std.npy",
    "mean_vel": "mean_vel_smplxflame_30.npy",
}
SHAPES = {"rot6d_mean": (330,), "rot6d_std": (330,), "trans_v_mean": (3,), "trans_v_std": (3,), "mean_vel": (55,)}


@dataclass
class Stats:
    rot6d_mean: np.ndarray  # (330,)
    rot6d_std: np.ndarray
    trans_v_mean: np.ndarray  # (3,)
    trans_v_std: np.ndarray
    mean_vel: np.ndarray  # (55,)
    source: str = ""
    min_std: float = DEFAULT_MIN_STD

    def safe(self, std: np.ndarray) -> np.ndarray:
        return safe_std(std, self.min_std)

    def save(self, folder: str | Path) -> Path:
        for k, name in OFFICIAL_FILES.items():
            save_npy(np.asarray(getattr(self, k)), Path(folder) / name)
        return Path(folder)


def load_stats_dir(folder: str | Path) -> Stats:
    folder = Path(folder)
    arrays = {}
    for k, name in OFFICIAL_FILES.items():
        p = folder / name
        if not p.is_file():
            raise FileNotFoundError(f"statistics file not found: {p}")
        a = np.load(p, allow_pickle=False)
        if a.shape != SHAPES[k]:
            raise ValueError(f"{p}: shape {a.shape}, expected {SHAPES[k]}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{p}: holds NaN/inf")
        arrays[k] = a
    return Stats(**arrays, source=str(folder))


def joint_speeds(poses: np.ndarray, trans: np.ndarray | None, betas: np.ndarray | None = None) -> np.ndarray:
    """(T, 55) joint speeds in m/s (central differences, one-sided at the ends, x30)."""
    joints = fk_joints(poses, trans, betas)
    return np.linalg.norm(np.gradient(joints, axis=0) * 30.0, axis=-1)


def fk_joints(poses: np.ndarray, trans: np.ndarray | None = None, betas: np.ndarray | None = None) -> np.ndarray:
    """(T, 55, 3) joint positions from the evaluator's forward kinematics (the same FK BC uses)."""
    from geometry.body_model import get_fk

    fk = get_fk(betas=None if betas is None else np.asarray(betas)[:10])
    with torch.no_grad():
        j = fk(torch.as_tensor(np.asarray(poses, dtype=np.float32)), None if trans is None else np.asarray(trans))
    return j.double().numpy()


def compute_stats(entries: list[Any]) -> Stats:
    """Statistics over cache entries (``dataloaders.cache.CacheEntry``) of the training split."""
    if not entries:
        raise ValueError("no training files to compute statistics from")
    s1 = np.zeros(330)
    s2 = np.zeros(330)
    t1 = np.zeros(3)
    t2 = np.zeros(3)
    v1 = np.zeros(55)
    n = 0
    for e in entries:
        pose = np.asarray(e.load("pose"), dtype=np.float64)
        r6 = np_poses_to_rot6d(pose).astype(np.float64)
        tv = np.asarray(e.load("trans_v"), dtype=np.float64)
        # world translation for mean_vel: undo the x/z re-zeroing is not needed (speeds use differences only)
        speeds = joint_speeds(pose, np.asarray(e.load("trans"), dtype=np.float64), np.asarray(e.load("betas")))
        s1 += r6.sum(0)
        s2 += (r6**2).sum(0)
        t1 += tv.sum(0)
        t2 += (tv**2).sum(0)
        v1 += speeds.sum(0)
        n += pose.shape[0]
    mean = s1 / n
    tmean = t1 / n
    return Stats(
        rot6d_mean=mean.astype(np.float32),
        rot6d_std=np.sqrt(np.maximum(s2 / n - mean**2, 0.0)).astype(np.float32),
        trans_v_mean=tmean,
        trans_v_std=np.sqrt(np.maximum(t2 / n - tmean**2, 0.0)),
        mean_vel=(v1 / n).astype(np.float32),
        source=f"computed from {len(entries)} training files",
    )


def stats_folder(index: Any) -> Path:
    """Where statistics computed from a training-split cache index live (``<cache>/stats/train_<n files>``)."""
    return Path(index.folder) / "stats" / f"train_{len(index.entries)}"


def load_stats(data_cfg: Any) -> Stats:
    """Official files from ``data.stats_dir`` when set, else the statistics computed from the cached training split.

    A getter: statistics that were never computed raise ``DataNotPreparedError`` naming the folder and the command;
    :func:`compute_and_save_stats` (or ``python -m dataloaders.prepare``) computes them."""
    from dataloaders.cache import DataNotPreparedError, _how_to_build, cfg_get, open_cache

    stats_dir = cfg_get(data_cfg, "stats_dir")
    if stats_dir:
        return load_stats_dir(resolve_path(stats_dir))
    folder = stats_folder(open_cache(data_cfg, "train"))
    if not all((folder / f).is_file() for f in OFFICIAL_FILES.values()):
        raise DataNotPreparedError(f"normalisation statistics not found in {folder}: {_how_to_build()}")
    st = load_stats_dir(folder)
    st.source = f"computed ({folder})"
    return st


def compute_and_save_stats(data_cfg: Any, recompute: bool = False) -> Stats:
    """Explicit step: compute the statistics from the cached training split (which must be built) and store them
    atomically; kept when present unless ``recompute``. With ``data.stats_dir`` the official files are only read."""
    from dataloaders.cache import cfg_get, open_cache

    if cfg_get(data_cfg, "stats_dir"):
        return load_stats(data_cfg)
    index = open_cache(data_cfg, "train")
    folder = stats_folder(index)
    if not recompute and all((folder / f).is_file() for f in OFFICIAL_FILES.values()):
        return load_stats(data_cfg)
    print(f"[data] computing normalisation statistics from {len(index.entries)} training files -> {folder}")
    st = compute_stats(index.entries)
    st.save(folder)
    return st


# ----------------------------------------------------------------------------------------------------------------
# Thin wrappers over geometry.normalisation (the one implementation models/motion_codec.py uses too).
def normalise_rot6d(r6: Any, stats: Stats) -> Any:
    return normalise(r6, stats.rot6d_mean, stats.safe(stats.rot6d_std))


def denormalise_rot6d(r6n: Any, stats: Stats) -> Any:
    return denormalise(r6n, stats.rot6d_mean, stats.safe(stats.rot6d_std))


def normalise_trans_v(tv: Any, stats: Stats) -> Any:
    return normalise(tv, stats.trans_v_mean, stats.safe(stats.trans_v_std))


def denormalise_trans_v(tvn: Any, stats: Stats) -> Any:
    return denormalise(tvn, stats.trans_v_mean, stats.safe(stats.trans_v_std))


def frame_vector(pose: Any, trans_v: Any, expressions: Any, stats: Stats) -> Any:
    """(..., 433) = [330 rot6d normalised | 3 trans_v normalised | 100 expressions raw] from (..., 165) axis-angle.

    Works on numpy arrays (float32 out) and torch tensors (dtype of ``pose``)."""
    if isinstance(pose, torch.Tensor):
        r6 = poses_to_rot6d(pose)
        tv = torch.as_tensor(trans_v, dtype=pose.dtype, device=pose.device)
        ex = torch.as_tensor(expressions, dtype=pose.dtype, device=pose.device)
        return torch.cat([normalise_rot6d(r6, stats), normalise_trans_v(tv, stats), ex], dim=-1)
    r6 = np_poses_to_rot6d(np.asarray(pose, dtype=np.float32)).astype(np.float64)
    out = np.concatenate(
        [
            normalise_rot6d(r6, stats),
            normalise_trans_v(np.asarray(trans_v, np.float64), stats),
            np.asarray(expressions, np.float64),
        ],
        axis=-1,
    )
    return out.astype(np.float32)


def split_frame_vector(x: Any, stats: Stats) -> dict[str, Any]:
    """Inverse of :func:`frame_vector`: pose (...,165) axis-angle, rot6d (...,330), trans_v (...,3), expressions."""
    if x.shape[-1] != FRAME_DIM:
        raise ValueError(f"frame vector must end in {FRAME_DIM}, got {tuple(x.shape)}")
    r6 = denormalise_rot6d(x[..., ROT6D_SLICE], stats)
    tv = denormalise_trans_v(x[..., TRANS_V_SLICE], stats)
    r6_t = r6 if isinstance(r6, torch.Tensor) else torch.as_tensor(np.asarray(r6, dtype=np.float32))
    pose = rot6d_to_poses(r6_t)
    if not isinstance(x, torch.Tensor):
        pose = pose.numpy()
    return {"pose": pose, "rot6d": r6, "trans_v": tv, "expressions": x[..., EXPR_SLICE]}
