"""Reading a motion npz (poses, trans, betas) with clear errors, and SMPL-X forward kinematics with world rotations.

The FK follows SMPL-X (and ``geometry.body_model.JointsFK``): the root rotates about the pelvis rest joint and
``trans`` is added afterwards; the relaxed hand mean is added to the hand poses (``flat_hand_mean=False``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geometry.body_model import get_fk
from geometry.rotations import axis_angle_to_matrix
from geometry.skeleton import NUM_JOINTS, PARENTS

__all__ = ["RenderError", "Motion", "load_motion", "world_fk", "smplx_rest_skeleton"]


class RenderError(ValueError):
    """A user-facing error (bad input file, unwritable output): one line that names the file."""


@dataclass
class Motion:
    """One motion: ``poses`` (T,165) axis-angle, ``trans`` (T,3) metres, ``betas`` (B,), optional expressions."""

    path: Path
    poses: np.ndarray
    trans: np.ndarray
    betas: np.ndarray
    fps: float
    expressions: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _finite(path: Path, name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise RenderError(f"{path}: '{name}' holds {int(bad.sum())} NaN/inf values (first at index {first})")


def load_motion(path: str | os.PathLike, default_fps: float = 30.0) -> Motion:
    """Read and validate a result npz (``poses`` required; ``trans``, ``betas``, ``expressions``,
    ``mocap_frame_rate`` optional). Never unpickles: object arrays are refused."""
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {}
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError:  # object array: skipped, never unpickled
                    continue
    except (OSError, ValueError, EOFError) as e:
        raise RenderError(f"{path}: not a readable npz file ({e})") from None
    if "poses" not in arrays:
        raise RenderError(f"{path}: no 'poses' array (keys: {sorted(arrays)}); expected poses (T,165) axis-angle")
    poses = np.asarray(arrays["poses"])
    if poses.ndim == 3 and poses.shape[1:] == (NUM_JOINTS, 3):
        poses = poses.reshape(poses.shape[0], -1)
    if poses.ndim != 2 or poses.shape[1] != NUM_JOINTS * 3 or poses.shape[0] < 1:
        raise RenderError(f"{path}: 'poses' has shape {poses.shape}, expected (T,165) with T >= 1")
    if not np.issubdtype(poses.dtype, np.number):
        raise RenderError(f"{path}: 'poses' is not numeric ({poses.dtype})")
    poses = poses.astype(np.float64)
    _finite(path, "poses", poses)
    t = poses.shape[0]
    trans = np.asarray(arrays.get("trans", np.zeros((t, 3))), np.float64)
    if trans.shape != (t, 3):
        raise RenderError(f"{path}: 'trans' has shape {trans.shape}, expected ({t}, 3) to match poses")
    _finite(path, "trans", trans)
    betas = np.asarray(arrays.get("betas", np.zeros(10)), np.float64).reshape(-1)
    if betas.ndim != 1:
        raise RenderError(f"{path}: 'betas' must be a vector")
    _finite(path, "betas", betas)
    expr = arrays.get("expressions")
    if expr is not None:
        expr = np.asarray(expr, np.float64)
        if expr.ndim != 2 or expr.shape[0] != t:
            raise RenderError(f"{path}: 'expressions' has shape {expr.shape}, expected ({t}, E)")
        _finite(path, "expressions", expr)
    fps = float(arrays["mocap_frame_rate"]) if "mocap_frame_rate" in arrays else default_fps
    if not np.isfinite(fps) or fps <= 0:
        raise RenderError(f"{path}: 'mocap_frame_rate' is {fps}, expected > 0")
    return Motion(path, poses, trans, betas, fps, expr)


def world_fk(
    local_rot: torch.Tensor, offsets: torch.Tensor, parents: tuple[int, ...], root_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World rotations (N,J,3,3) and positions (N,J,3) from local rotations (N,J,3,3), rest offsets (J,3: from the
    parent; the root's is ignored) and the root's world position (N,3). Joints must be topologically ordered."""
    n, j = local_rot.shape[:2]
    rw = [local_rot[:, 0]]
    pw = [root_pos]
    for k in range(1, j):
        p = parents[k]
        rw.append(rw[p] @ local_rot[:, k])
        pw.append(pw[p] + (rw[p] @ offsets[k].unsqueeze(-1)).squeeze(-1))
    return torch.stack(rw, 1), torch.stack(pw, 1)


def smplx_rest_skeleton(betas: np.ndarray | None, source: str = "auto", model_path: str | None = None):
    """(rest joints (55,3), pose mean (165,), source description) of the project's FK (``geometry.body_model``)."""
    fk = get_fk(model_path, betas=betas, source=source)
    return fk.rest_joints.copy(), fk.pose_mean, fk.source


def smplx_local_rotations(poses: np.ndarray, pose_mean: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """(T,165) axis-angle + pose mean -> (T,55,3,3) local rotation matrices."""
    aa = torch.as_tensor(poses, dtype=dtype).reshape(-1, NUM_JOINTS, 3)
    aa = aa + torch.as_tensor(pose_mean, dtype=dtype).reshape(NUM_JOINTS, 3)
    return axis_angle_to_matrix(aa)


def smplx_offsets(rest: np.ndarray) -> np.ndarray:
    off = rest.copy()
    off[1:] -= rest[np.asarray(PARENTS[1:])]
    return off
