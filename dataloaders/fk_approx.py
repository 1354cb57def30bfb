"""Joints-only forward kinematics on the SMPL-X-calibrated rest skeleton of ``mannequin-x`` (zero shape).

A fallback for data statistics and data checks when ``utils.body_model.get_fk`` is not available. It uses the
rest joint positions of the SMPL-X neutral body at zero shape that ``mannequin`` ships (54 joints: 55 SMPL-X
joints without jaw/eyes, plus two duplicated hand roots); jaw and eye offsets are approximated from the head.
Positions are in metres, y up, 55 joints in SMPL-X order.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from utils.skeleton import NUM_JOINTS, PARENTS


@lru_cache(maxsize=1)
def rest_joints() -> np.ndarray:
    """(55, 3) rest joint positions of SMPL-X at zero shape (jaw and eyes approximated)."""
    from mannequin import _io  # private module, but the only place the calibration table lives

    rest54 = np.asarray(_io.load_calibration().joint_rest, dtype=np.float64)
    out = np.zeros((NUM_JOINTS, 3))
    out[:22] = rest54[:22]
    head = rest54[15]
    out[22] = head + np.array([0.0, -0.02, 0.04])  # jaw: approximated
    out[23] = head + np.array([0.03, 0.06, 0.08])  # eyes: approximated
    out[24] = head + np.array([-0.03, 0.06, 0.08])
    out[25:55] = rest54[24:54]
    return out


def _aa_to_mat(aa: np.ndarray) -> np.ndarray:
    """Rodrigues' formula on (..., 3) axis-angle arrays -> (..., 3, 3)."""
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    small = theta < 1e-8
    axis = aa / np.where(small, 1.0, theta)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zeros = np.zeros_like(x)
    k = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], axis=-1).reshape(*aa.shape[:-1], 3, 3)
    th = theta[..., None]
    eye = np.broadcast_to(np.eye(3), k.shape)
    r = eye + np.sin(th) * k + (1 - np.cos(th)) * (k @ k)
    return np.where(small[..., None], eye, r)


def approx_fk(poses: np.ndarray, trans: np.ndarray | None = None) -> np.ndarray:
    """(T, 165) axis-angle poses (+ optional (T, 3) translation) -> (T, 55, 3) joint positions in metres."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != 165:
        raise ValueError(f"approx_fk expects poses of shape (T, 165), got {poses.shape}")
    rest = rest_joints()
    rots = _aa_to_mat(poses.reshape(-1, NUM_JOINTS, 3))
    n = poses.shape[0]
    glob_r = np.zeros((n, NUM_JOINTS, 3, 3))
    pos = np.zeros((n, NUM_JOINTS, 3))
    for j, p in enumerate(PARENTS):
        if p < 0:
            glob_r[:, j] = rots[:, j]
            pos[:, j] = rest[j]
        else:
            glob_r[:, j] = glob_r[:, p] @ rots[:, j]
            pos[:, j] = pos[:, p] + glob_r[:, p] @ (rest[j] - rest[p])
    if trans is not None:
        pos = pos + np.asarray(trans, dtype=np.float64)[:, None, :]
    return pos
