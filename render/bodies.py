"""What is drawn: the skinned mannequin-x wooden mesh, an SMPL-X mesh (model file), or a joint/bone skeleton.

Each body turns a ``Motion`` into per-frame geometry: ``joints(frames)`` (N,J,3) for framing and the skeleton, and
for meshes ``vertices(frames)`` (N,V,3) with ``faces`` (F,3) and per-face base colours.
"""

from __future__ import annotations

import numpy as np
import torch

from geometry.body_model import BodyModelUnavailable, find_smplx_model, get_fk, get_vertex_model
from geometry.skeleton import NUM_JOINTS, PARENTS
from render.motion import Motion, RenderError, smplx_local_rotations, world_fk

__all__ = ["MannequinRig", "MannequinBody", "SMPLXBody", "SkeletonBody", "make_body", "BODIES"]

BODIES = ("mannequin", "skeleton", "smplx")
WOOD = np.array([214, 168, 112], np.float32)
WOOD_DARK = np.array([150, 104, 62], np.float32)
# mannequin joint k <- SMPL-X joint: the mannequin inserts L_Hand/R_Hand (22, 23: fixed) and has no jaw/eyes
_SMPLX_OF_MANNEQUIN = np.array(list(range(22)) + [-1, -1] + list(range(25, 55)), np.int64)


class MannequinRig:
    """The mannequin-x wooden mesh bound to its SMPL-X-calibrated skeleton at given betas (first 10 used).

    Linear blend skinning: ``v = sum_k w_k (R_jk (v_rest - bind_jk) + p_jk)`` with world joint transforms from an
    SMPL-X-convention FK (root rotates about the pelvis, ``trans`` added). The rest mesh, bind positions and 4
    skin influences are the package's own (``Mannequin._identity`` etc.: no public accessor exists); the tests
    check this skinning against the package's public ``Mannequin.vertices``."""

    def __init__(self, betas: np.ndarray | None = None):
        try:
            from mannequin import Mannequin
        except ImportError as e:  # pragma: no cover - a core requirement
            raise RenderError(f"the mannequin body needs the `mannequin-x` package ({e})") from e
        shape = np.zeros(10, np.float32)
        if betas is not None:
            b = np.asarray(betas, np.float32).reshape(-1)[:10]
            shape[: b.size] = b
        m = Mannequin("wooden", shape=shape)
        self.mannequin = m
        self.shape = shape
        self.parents = tuple(int(p) for p in m.parents)
        self.joint_names = m.joint_names
        self.rest_vertices = np.asarray(m._identity["skin_vertices"], np.float32)  # (V,3)
        self.bind = np.asarray(m._identity["skin_bind_positions"], np.float64)  # (54,3), rest joints
        self.skin_joints = np.asarray(m._skin_joint_indices, np.int64)  # (V,4)
        self.skin_weights = np.asarray(m._skin_weights, np.float32)  # (V,4)
        self.faces = np.asarray(m.faces, np.int64)
        self.hand_mean = np.asarray(m._calibration.hand_mean, np.float64).reshape(30, 3)
        nj = len(self.parents)
        w = np.zeros((self.rest_vertices.shape[0], nj), np.float32)
        np.add.at(w, (np.arange(w.shape[0])[:, None], self.skin_joints), self.skin_weights)
        self._w = torch.from_numpy(w)
        self._rest = torch.from_numpy(self.rest_vertices)
        off = self.bind.copy()
        off[1:] -= self.bind[np.asarray(self.parents[1:])]
        self.offsets = off
        # per-face colour: the joint balls darker than the limbs
        colours = np.tile(WOOD, (self.faces.shape[0], 1))
        wts = m._weights
        for name, start, count in zip(wts.skin_part_names, wts.skin_part_face_starts, wts.skin_part_face_counts):
            if name.startswith("joint_"):
                colours[start : start + count] = WOOD_DARK
        self.face_colours = colours

    def local_rotations(self, poses: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        """(N,165) SMPL-X axis-angle -> (N,54,3,3) mannequin local rotations (hand mean added to the fingers)."""
        mean = np.zeros((NUM_JOINTS, 3))
        mean[25:] = self.hand_mean
        rot = smplx_local_rotations(poses, mean.reshape(-1), torch.float64)  # (N,55,3,3)
        out = torch.eye(3, dtype=torch.float64).repeat(rot.shape[0], len(self.parents), 1, 1)
        have = _SMPLX_OF_MANNEQUIN >= 0
        out[:, torch.from_numpy(np.flatnonzero(have))] = rot[:, torch.from_numpy(_SMPLX_OF_MANNEQUIN[have])]
        return out.to(dtype)

    def transforms(self, poses: np.ndarray, trans: np.ndarray, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
        """World rotations (N,54,3,3) and positions (N,54,3) of the mannequin joints."""
        rot = self.local_rotations(poses, torch.float64)
        root = torch.as_tensor(self.bind[0]) + torch.as_tensor(np.asarray(trans, np.float64))
        rw, pw = world_fk(rot, torch.as_tensor(self.offsets), self.parents, root)
        return rw.to(dtype), pw.to(dtype)

    def skin(self, rw: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
        """Posed vertices (N,V,3) from world joint transforms."""
        bind = torch.as_tensor(self.bind, dtype=rw.dtype)
        t = pw - (rw @ bind.unsqueeze(-1)).squeeze(-1)  # (N,J,3)
        n = rw.shape[0]
        a = torch.cat([rw, t.unsqueeze(-1)], -1).flatten(-2)  # (N,J,12)
        # one GEMM (V,J) @ (J,N*12) for all frames: the blended [R|t] per vertex and frame
        av = (self._w @ a.permute(1, 0, 2).reshape(a.shape[1], n * 12)).view(-1, n, 3, 4)
        r = self._rest.unsqueeze(1)  # (V,1,3)
        # elementwise rather than batched 3x3 matmuls (much faster on CPU for tiny matrices)
        v = av[..., 0] * r[..., 0:1] + av[..., 1] * r[..., 1:2] + av[..., 2] * r[..., 2:3] + av[..., 3]
        return v.permute(1, 0, 2)


class MannequinBody:
    name = "mannequin"
    cull = -1  # the wooden mesh is wound consistently: back faces have negative screen area (tested)

    def __init__(self, motion: Motion):
        self.motion = motion
        self.rig = MannequinRig(motion.betas)
        self.faces = torch.from_numpy(self.rig.faces)
        self.face_colours = torch.from_numpy(self.rig.face_colours)
        self.source = "mannequin-x wooden mesh (skinned, SMPL-X-calibrated skeleton, betas[:10])"

    def vertices(self, frames: np.ndarray) -> torch.Tensor:
        rw, pw = self.rig.transforms(self.motion.poses[frames], self.motion.trans[frames])
        return self.rig.skin(rw, pw)

    def joints(self, frames: np.ndarray) -> torch.Tensor:
        return self.rig.transforms(self.motion.poses[frames], self.motion.trans[frames])[1]


class SMPLXBody:
    """The SMPL-X mesh from a model file (``--smplx-model`` or ``$SMPLX_MODEL_PATH``), with expressions and jaw."""

    name = "smplx"
    cull = 0  # both windings: a model file's winding is not assumed

    def __init__(self, motion: Motion, model_path: str | None = None):
        try:
            path = find_smplx_model(model_path)
        except FileNotFoundError as e:
            raise RenderError(str(e)) from None
        if path is None:
            raise RenderError(
                "--body smplx needs an SMPL-X model file (SMPLX_NEUTRAL_2020.npz): pass --smplx-model PATH or set "
                "SMPLX_MODEL_PATH; --body mannequin needs no licence"
            )
        try:
            self.model = get_vertex_model(path)
        except BodyModelUnavailable as e:
            raise RenderError(str(e)) from None
        self.motion = motion
        self.faces = torch.as_tensor(np.asarray(self.model.model.faces, np.int64))
        self.face_colours = torch.from_numpy(np.tile(np.float32([170, 180, 205]), (self.faces.shape[0], 1)))
        self.source = f"SMPL-X mesh ({self.model.source})"
        self._jfk = get_fk(path, betas=motion.betas, source="smplx")

    def vertices(self, frames: np.ndarray) -> torch.Tensor:
        m = self.motion
        expr = None if m.expressions is None else m.expressions[frames]
        return self.model.vertices(m.poses[frames], m.betas, expr, m.trans[frames]).float()

    def joints(self, frames: np.ndarray) -> torch.Tensor:
        return self._jfk(torch.as_tensor(self.motion.poses[frames]), self.motion.trans[frames]).float()


class SkeletonBody:
    """55 SMPL-X joints and bones (rest skeleton: model file if found, else the mannequin calibration)."""

    name = "skeleton"
    faces = None

    def __init__(self, motion: Motion, model_path: str | None = None):
        self.motion = motion
        self._fk = get_fk(model_path, betas=motion.betas, source="auto")
        self.parents = PARENTS
        self.source = f"skeleton ({self._fk.source})"

    def joints(self, frames: np.ndarray) -> torch.Tensor:
        return self._fk(torch.as_tensor(self.motion.poses[frames]), self.motion.trans[frames]).float()


def make_body(kind: str, motion: Motion, model_path: str | None = None):
    """The body ``kind`` for ``motion``; a missing or unreadable model file is a RenderError naming it."""
    try:
        if kind == "mannequin":
            return MannequinBody(motion)
        if kind == "skeleton":
            return SkeletonBody(motion, model_path)
        if kind == "smplx":
            return SMPLXBody(motion, model_path)
    except (FileNotFoundError, BodyModelUnavailable) as e:
        raise RenderError(str(e)) from None
    raise RenderError(f"unknown body {kind!r}; expected one of {BODIES}")
