"""Rotation conversions: axis-angle <-> quaternion <-> matrix <-> rot6d.

Conventions (shared with the released checkpoints and the FGD autoencoder):
- quaternions are real-part first (w, x, y, z);
- rot6d is the first two *rows* of the rotation matrix, flattened (PyTorch3D convention);
- matrix -> quaternion uses the square-root formula of older PyTorch3D releases (w >= 0), which is what the
  upstream code (and hence ``../shared/fixtures/upstream_compat/rotations.npz``) uses.
All functions are batched over leading dimensions and differentiable.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_EPS_SMALL_ANGLE = 1e-6


def _sin_half_over_angle(angles: torch.Tensor, half_angles: torch.Tensor) -> torch.Tensor:
    small = angles.abs() < _EPS_SMALL_ANGLE
    safe = torch.where(small, torch.ones_like(angles), angles)
    # Taylor expansion near 0 keeps the gradient finite.
    return torch.where(small, 0.5 - angles * angles / 48, torch.sin(half_angles) / safe)


def axis_angle_to_quaternion(axis_angle: torch.Tensor) -> torch.Tensor:
    angles = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True)
    half = 0.5 * angles
    return torch.cat([torch.cos(half), axis_angle * _sin_half_over_angle(angles, half)], dim=-1)


def quaternion_to_axis_angle(quaternions: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(quaternions[..., 1:], dim=-1, keepdim=True)
    half = torch.atan2(norms, quaternions[..., :1])
    angles = 2 * half
    return quaternions[..., 1:] / _sin_half_over_angle(angles, half)


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    r, i, j, k = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    o = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        -1,
    )
    return o.reshape(quaternions.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(x, min=0.0)) * (x > 0)


def _copysign(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    signs_differ = (a < 0) != (b < 0)
    return torch.where(signs_differ, -a, a)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got {tuple(matrix.shape)}")
    m00, m11, m22 = matrix[..., 0, 0], matrix[..., 1, 1], matrix[..., 2, 2]
    o0 = 0.5 * _sqrt_positive_part(1 + m00 + m11 + m22)
    x = 0.5 * _sqrt_positive_part(1 + m00 - m11 - m22)
    y = 0.5 * _sqrt_positive_part(1 - m00 + m11 - m22)
    z = 0.5 * _sqrt_positive_part(1 - m00 - m11 + m22)
    o1 = _copysign(x, matrix[..., 2, 1] - matrix[..., 1, 2])
    o2 = _copysign(y, matrix[..., 0, 2] - matrix[..., 2, 0])
    o3 = _copysign(z, matrix[..., 1, 0] - matrix[..., 0, 1])
    return torch.stack((o0, o1, o2, o3), -1)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    return quaternion_to_matrix(axis_angle_to_quaternion(axis_angle))


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    return matrix[..., :2, :].reshape(matrix.shape[:-2] + (6,))


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt on the two stored rows; the third row is their cross product."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = F.normalize(b2, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def reortho_6d(d6: torch.Tensor) -> torch.Tensor:
    """6D -> matrix -> 6D: the FGD pre-processing that projects network output onto valid rotations."""
    return matrix_to_rotation_6d(rotation_6d_to_matrix(d6))


def axis_angle_to_rotation_6d(axis_angle: torch.Tensor) -> torch.Tensor:
    return matrix_to_rotation_6d(axis_angle_to_matrix(axis_angle))


def rotation_6d_to_axis_angle(d6: torch.Tensor) -> torch.Tensor:
    return matrix_to_axis_angle(rotation_6d_to_matrix(d6))


def poses_to_rot6d(poses: torch.Tensor) -> torch.Tensor:
    """(..., J*3) axis-angle -> (..., J*6) rot6d, joint order preserved."""
    *lead, d = poses.shape
    if d % 3:
        raise ValueError(f"last dim must be a multiple of 3, got {d}")
    return axis_angle_to_rotation_6d(poses.reshape(*lead, d // 3, 3)).reshape(*lead, d // 3 * 6)


def rot6d_to_poses(rot6d: torch.Tensor) -> torch.Tensor:
    """(..., J*6) rot6d -> (..., J*3) axis-angle."""
    *lead, d = rot6d.shape
    if d % 6:
        raise ValueError(f"last dim must be a multiple of 6, got {d}")
    return rotation_6d_to_axis_angle(rot6d.reshape(*lead, d // 6, 6)).reshape(*lead, d // 6 * 3)


def np_poses_to_rot6d(poses: np.ndarray) -> np.ndarray:
    """NumPy convenience wrapper around :func:`poses_to_rot6d` (float32 in, float32 out)."""
    return poses_to_rot6d(torch.as_tensor(np.asarray(poses, dtype=np.float32))).numpy()
