"""SMPL-X forward kinematics for evaluation: a fast joints-only FK, and full vertices for face metrics.

Joints-only FK is exact for the 55 SMPL-X joints: SMPL-X computes joint positions from the *rest* joints
``J = J_regressor @ (v_template + shapedirs @ [betas, expression])`` pushed through the kinematic chain; pose blend
shapes and skinning only move vertices. So ``joints[:, :55]`` of ``smplx.SMPLX`` equals

    p_root = J_root,  p_j = p_parent(j) + R_world(parent) (J_j - J_parent),  R_world(j) = R_world(parent) R_j,

plus ``transl``, with ``R_j`` from ``poses + pose_mean`` (``pose_mean`` = SMPL-X's relaxed hand mean, added by
``smplx`` because the reference creates the model with the default ``flat_hand_mean=False``). Expression is taken
as zero (the evaluation protocol zeroes it; SMPL-X's expression dirs move rest joints slightly).

Rest-joint sources (``get_fk(source=...)``):
- ``"smplx"``: an SMPL-X model file (``SMPLX_NEUTRAL_2020.npz``) loaded with the ``smplx`` package; exact for any
  betas. Found from ``model_path`` or the env var ``SMPLX_MODEL_PATH`` (a file, or a folder holding it).
- ``"mannequin"``: the SMPL-X-calibrated skeleton of the ``mannequin-x`` package (Apache-2.0,
  ``mannequin/assets/smplx_calibration.npz``: rest joints linear in the first 10 betas, plus the SMPL-X hand mean).
  It has no jaw/eye joints; those are placed at fixed offsets from the head (approximate: they move only joints
  22-24, which BC does not use). Betas beyond the first 10 are ignored.
- ``"auto"``: ``"smplx"`` when a model file is found, else ``"mannequin"``.

``write_toy_smplx_model`` writes a small but valid SMPL-X-format npz (random geometry) that ``smplx.SMPLX`` loads;
the tests use it to prove the fast FK equals ``smplx``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from geometry.rotations import rotation_6d_to_matrix
from geometry.skeleton import NUM_JOINTS, PARENTS
from utils.io import sha256_file

if TYPE_CHECKING:
    from geometry.face_vertices import FaceVertexSubset

__all__ = [
    "JointsFK",
    "get_fk",
    "find_smplx_model",
    "SMPLXVertices",
    "get_vertex_model",
    "BodyModelUnavailable",
    "write_toy_smplx_model",
    "read_model_npz",
    "trust_pickle_models",
    "MANNEQUIN_JAW_EYE_OFFSETS",
]

SMPLX_MODEL_FILES = ("SMPLX_NEUTRAL_2020.npz", "SMPLX_NEUTRAL.npz", "SMPLX_NEUTRAL.pkl")
# What smplx.SMPLX reads from a model file (face contour off).
SMPLX_REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights",
                       "hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr", "lmk_faces_idx",
                       "lmk_bary_coords")  # fmt: skip
NUM_SMPLX_BETAS = 300
NUM_SMPLX_EXPRESSIONS = 100

# Approximate rest offsets (metres, y up, z forward) of jaw and eyes from the head joint, used only by the
# mannequin source, which has no face joints. Joints 22-24 are leaves, so these move nothing else.
MANNEQUIN_JAW_EYE_OFFSETS = np.array(
    [[0.0, -0.02, 0.04], [0.032, 0.045, 0.075], [-0.032, 0.045, 0.075]], dtype=np.float64
)
_HEAD = 15
# SMPL-X joint index -> mannequin calibration index (mannequin inserts L_Hand/R_Hand at 22/23 and has no face).
_MANNEQUIN_INDEX = np.array(list(range(22)) + [-1, -1, -1] + list(range(24, 54)), dtype=np.int64)


class BodyModelUnavailable(RuntimeError):
    """Raised when a computation needs the SMPL-X model file (vertices) and none was found."""


def find_smplx_model(model_path: str | os.PathLike | None = None) -> Path | None:
    """The SMPL-X model file from ``model_path`` or ``$SMPLX_MODEL_PATH`` (a file or a folder), else None.

    An explicitly given path that does not exist is an error (a typo must not silently fall back)."""
    explicit = model_path is not None
    if model_path is None:
        model_path = os.environ.get("SMPLX_MODEL_PATH") or None
    if model_path is None:
        return None
    p = Path(os.path.expandvars(os.path.expanduser(str(model_path))))
    if p.is_file():
        return p
    if p.is_dir():
        for name in SMPLX_MODEL_FILES:
            for cand in (p / name, p / "smplx" / name):
                if cand.is_file():
                    return cand
    where = "model_path" if explicit else "$SMPLX_MODEL_PATH"
    raise FileNotFoundError(f"{where}={str(model_path)!r}: no SMPL-X model file there (looked for {SMPLX_MODEL_FILES})")


_TRUST_PICKLE = False


def trust_pickle_models(enabled: bool = True) -> None:
    """Allow ``.pkl`` SMPL-X model files. Unpickling runs code stored in the file: only for files you trust
    (``test.py --trust-pickle``). npz model files never need it."""
    global _TRUST_PICKLE
    _TRUST_PICKLE = bool(enabled)


def read_model_npz(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The plain arrays of an SMPL-X ``.npz`` read with ``allow_pickle=False``, and the names of the entries skipped
    because they hold pickled objects (the official files carry two such dicts, ``joint2num``/``part2num``, that
    nothing uses). Reading an object entry this way raises instead of running its code."""
    arrays, skipped = {}, []
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                try:
                    arrays[name] = z[name]
                except ValueError:  # "Object arrays cannot be loaded when allow_pickle=False"
                    skipped.append(name)
    except (OSError, ValueError, EOFError) as e:
        raise BodyModelUnavailable(f"{path}: cannot read the SMPL-X model npz ({e})") from e
    missing = [k for k in SMPLX_REQUIRED_KEYS if k not in arrays]
    if missing:
        note = f" (entries holding pickled objects were not read: {skipped})" if skipped else ""
        raise BodyModelUnavailable(f"{path}: not an SMPL-X model file: missing plain arrays {missing}{note}")
    return arrays, skipped


def _load_smplx_module(path: Path, num_betas: int = NUM_SMPLX_BETAS, dtype: torch.dtype = torch.float32):
    """``smplx.SMPLX`` built without unpickling the user's file: smplx itself reads npz files with
    pickling allowed and pkl files with pickle, so we read the arrays safely and hand smplx a copy that holds
    nothing but plain arrays."""
    import tempfile
    import warnings

    import smplx  # imported lazily: only needed with a model file

    kwargs = dict(num_betas=num_betas, num_expression_coeffs=NUM_SMPLX_EXPRESSIONS, use_pca=False,
                  flat_hand_mean=False, use_face_contour=False, batch_size=1, dtype=dtype)  # fmt: skip
    if path.suffix == ".pkl":
        if not _TRUST_PICKLE:
            raise BodyModelUnavailable(
                f"{path}: a .pkl model is read with pickle, which can run code stored in the file; use the .npz "
                "release (SMPLX_NEUTRAL_2020.npz), or pass --trust-pickle if you trust this file"
            )
        warnings.warn(f"unpickling the SMPL-X model {path} (--trust-pickle)", stacklevel=2)
        return smplx.SMPLX(str(path), ext="pkl", **kwargs)
    arrays, _ = read_model_npz(path)
    with tempfile.TemporaryDirectory(prefix="smplx_") as tmp:
        clean = Path(tmp) / "SMPLX_NEUTRAL.npz"
        np.savez(clean, **arrays)
        return smplx.SMPLX(str(clean), ext="npz", **kwargs)


class _LinearSkeleton:
    """Rest joints linear in betas: ``J(b) = j_template + j_dirs @ b`` (float64), plus the pose mean."""

    def __init__(self, j_template: np.ndarray, j_dirs: np.ndarray, pose_mean: np.ndarray, parents, source: str):
        self.j_template = np.asarray(j_template, np.float64)  # (55, 3)
        self.j_dirs = np.asarray(j_dirs, np.float64)  # (55, 3, K)
        self.pose_mean = np.asarray(pose_mean, np.float64).reshape(NUM_JOINTS * 3)
        self.parents = tuple(int(p) for p in parents)
        self.source = source

    def rest_joints(self, betas: np.ndarray | torch.Tensor | None) -> np.ndarray:
        if betas is None:
            return self.j_template.copy()
        b = np.asarray(betas.detach().cpu() if isinstance(betas, torch.Tensor) else betas, np.float64).reshape(-1)
        if not np.all(np.isfinite(b)):
            raise ValueError("betas contain NaN/inf")
        k = self.j_dirs.shape[-1]
        b = b[:k] if b.size >= k else np.pad(b, (0, k - b.size))
        return self.j_template + self.j_dirs @ b


def _smplx_skeleton(path: Path) -> _LinearSkeleton:
    model = _load_smplx_module(path, dtype=torch.float64)
    jreg = model.J_regressor.detach().numpy().astype(np.float64)  # (55, V)
    if jreg.shape[0] != NUM_JOINTS:
        raise ValueError(f"{path}: J_regressor has {jreg.shape[0]} joints, expected {NUM_JOINTS}")
    parents = model.parents.detach().numpy().tolist()
    if tuple(parents) != PARENTS:
        raise ValueError(f"{path}: kintree_table parents differ from the SMPL-X 55-joint tree")
    j_template = jreg @ model.v_template.detach().numpy()
    j_dirs = np.einsum("jv,vck->jck", jreg, model.shapedirs.detach().numpy())
    pose_mean = model.pose_mean.detach().numpy()
    src = f"smplx:{path.name} sha256:{sha256_file(path)[:16]} (betas {j_dirs.shape[-1]}, hand mean added)"
    return _LinearSkeleton(j_template, j_dirs, pose_mean, parents, src)


def _mannequin_skeleton() -> _LinearSkeleton:
    try:
        from importlib.metadata import version

        import mannequin  # noqa: F401  (only to locate its assets and report the version)

        ver = version("mannequin-x")
    except Exception as e:  # pragma: no cover - depends on the environment
        raise BodyModelUnavailable(
            "no SMPL-X model file (set SMPLX_MODEL_PATH or pass --body-model) and the `mannequin-x` package "
            f"is not importable ({e}); install it with `pip install mannequin-x`"
        ) from e
    asset = resources.files("mannequin") / "assets" / "smplx_calibration.npz"
    with asset.open("rb") as f, np.load(f, allow_pickle=False) as z:
        joint_rest = z["joint_rest"].astype(np.float64)  # (54, 3)
        joint_dirs = z["joint_dirs"].astype(np.float64)  # (54, 3, 10)
        hand_mean = z["hand_mean"].astype(np.float64).reshape(-1)  # (90,)
    j_template = np.zeros((NUM_JOINTS, 3))
    j_dirs = np.zeros((NUM_JOINTS, 3, joint_dirs.shape[-1]))
    have = _MANNEQUIN_INDEX >= 0
    j_template[have] = joint_rest[_MANNEQUIN_INDEX[have]]
    j_dirs[have] = joint_dirs[_MANNEQUIN_INDEX[have]]
    for k, j in enumerate((22, 23, 24)):  # jaw/eyes ride on the head: same shape response, fixed offset
        j_template[j] = j_template[_HEAD] + MANNEQUIN_JAW_EYE_OFFSETS[k]
        j_dirs[j] = j_dirs[_HEAD]
    pose_mean = np.zeros(NUM_JOINTS * 3)
    pose_mean[75:] = hand_mean
    src = f"mannequin-x {ver} smplx_calibration (betas[:10], jaw/eyes approximated, hand mean added)"
    return _LinearSkeleton(j_template, j_dirs, pose_mean, PARENTS, src)


def _rodrigues(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3): R = cos I + sin [k]x + (1 - cos) k k^T (as smplx's
    batch_rodrigues); fewer ops than the quaternion route, which matters for ~1e6 rotations per test set."""
    theta = torch.linalg.vector_norm(aa, dim=-1, keepdim=True)
    k = aa / theta.clamp_min(1e-12)  # zero rotation -> k = 0 -> R = I
    c, s = torch.cos(theta), torch.sin(theta)
    t = 1 - c
    kx, ky, kz = k.unbind(-1)
    c, s, t = c[..., 0], s[..., 0], t[..., 0]
    rows = (
        c + t * kx * kx, t * kx * ky - s * kz, t * kx * kz + s * ky,
        t * kx * ky + s * kz, c + t * ky * ky, t * ky * kz - s * kx,
        t * kx * kz - s * ky, t * ky * kz + s * kx, c + t * kz * kz,
    )  # fmt: skip
    return torch.stack(rows, -1).reshape(*aa.shape[:-1], 3, 3)


def _depths(parents: tuple[int, ...]) -> list[int]:
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    return depth


def _depth_levels(parents: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    depth = _depths(parents)
    levels = []
    for d in range(1, max(depth) + 1):
        idx = [j for j in range(len(parents)) if depth[j] == d]
        levels.append((torch.tensor(idx), torch.tensor([parents[j] for j in idx])))
    return levels


class JointsFK:
    """Joints-only SMPL-X forward kinematics at fixed betas. ``fk(poses (...,165), trans=None) -> (...,55,3)``.

    ``poses`` is axis-angle in SMPL-X order (global, 21 body, jaw, 2 eyes, 15+15 hand joints); ``trans`` (...,3)
    is added to every joint. Output dtype and device follow ``poses``. ``.source`` names the rest skeleton.
    """

    def __init__(
        self, skeleton: _LinearSkeleton, betas: np.ndarray | torch.Tensor | None = None, flat_hand_mean: bool = False
    ):
        self._skeleton = skeleton
        self.flat_hand_mean = bool(flat_hand_mean)
        # smplx adds the relaxed hand mean unless flat_hand_mean (the reference uses the default: added)
        self._pose_mean = np.zeros_like(skeleton.pose_mean) if flat_hand_mean else skeleton.pose_mean.copy()
        self.betas = None if betas is None else np.asarray(
            betas.detach().cpu() if isinstance(betas, torch.Tensor) else betas, np.float64
        ).reshape(-1)
        self.rest_joints = skeleton.rest_joints(self.betas)  # (55, 3) float64
        parents = np.asarray(skeleton.parents)
        offsets = self.rest_joints.copy()
        offsets[1:] -= self.rest_joints[parents[1:]]
        self._offsets = offsets  # root: its rest position; others: offset from the parent
        self._levels = _depth_levels(skeleton.parents)
        self._depth = _depths(skeleton.parents)
        self.source = skeleton.source.replace("hand mean added", "flat hands") if flat_hand_mean else skeleton.source

    def with_betas(self, betas: np.ndarray | torch.Tensor | None) -> JointsFK:
        """The same skeleton source at other betas (cheap: a (55,3,K) @ (K,) product)."""
        return JointsFK(self._skeleton, betas, self.flat_hand_mean)

    @property
    def pose_mean(self) -> np.ndarray:
        return self._pose_mean.copy()

    def __call__(
        self, poses: torch.Tensor | np.ndarray, trans: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        poses = torch.as_tensor(poses)
        if not poses.is_floating_point():
            poses = poses.float()
        if poses.shape[-1] != NUM_JOINTS * 3:
            raise ValueError(f"poses must end in {NUM_JOINTS * 3} (55 joints axis-angle), got {tuple(poses.shape)}")
        lead = poses.shape[:-1]
        dtype, device = poses.dtype, poses.device
        full = poses.reshape(-1, NUM_JOINTS, 3) + torch.as_tensor(
            self._pose_mean, dtype=dtype, device=device
        ).reshape(NUM_JOINTS, 3)
        pos = self.from_matrices(_rodrigues(full)).reshape(*lead, NUM_JOINTS, 3)
        if trans is not None:
            if isinstance(trans, np.ndarray):  # e.g. a read-only memmap from the cache: copy, never alias
                trans = np.array(trans)
            trans = torch.as_tensor(trans, dtype=dtype, device=device)
            if trans.shape[-1] != 3:
                raise ValueError(f"trans must end in 3, got {tuple(trans.shape)}")
            pos = pos + trans.unsqueeze(-2)
        return pos

    def from_matrices(self, rot: torch.Tensor, joints: list[int] | tuple[int, ...] | None = None) -> torch.Tensor:
        """(N, 55, 3, 3) local rotation matrices, the mean pose already applied -> (N, 55, 3) joint positions
        (no translation); with ``joints``, (N, len(joints), 3) computed on their chains only (cheaper: a training
        loss on a few joints' positions goes through here, and it is differentiable)."""
        if rot.ndim != 4 or rot.shape[-3:] != (NUM_JOINTS, 3, 3):
            raise ValueError(f"rot must be (N, {NUM_JOINTS}, 3, 3), got {tuple(rot.shape)}")
        dtype, device = rot.dtype, rot.device
        offsets = torch.as_tensor(self._offsets, dtype=dtype, device=device)
        if joints is not None:
            joints = [int(j) for j in joints]
            if not joints or not all(0 <= j < NUM_JOINTS for j in joints):
                raise ValueError(f"joints must be a non-empty list of indices in [0, {NUM_JOINTS}), got {joints}")
            parents = self._skeleton.parents
            chain: set[int] = set()
            for j in joints:
                while j >= 0 and j not in chain:
                    chain.add(j)
                    j = parents[j] if j > 0 else -1
            r_w: dict[int, torch.Tensor] = {}
            p_w: dict[int, torch.Tensor] = {}
            for j in sorted(chain, key=self._depth.__getitem__):  # parents before children
                if j == 0:
                    r_w[0], p_w[0] = rot[:, 0], offsets[0].expand(rot.shape[0], 3)
                    continue
                par = parents[j]
                r_w[j] = r_w[par] @ rot[:, j]
                p_w[j] = p_w[par] + (r_w[par] @ offsets[j].unsqueeze(-1)).squeeze(-1)
            return torch.stack([p_w[j] for j in joints], dim=1)
        n = rot.shape[0]
        r_world = torch.empty_like(rot)
        pos = torch.empty(n, NUM_JOINTS, 3, dtype=dtype, device=device)
        r_world[:, 0] = rot[:, 0]
        pos[:, 0] = offsets[0]
        for idx, par in self._levels:  # one batched step per tree depth (15 for SMPL-X)
            idx, par = idx.to(device), par.to(device)
            r_par = r_world[:, par]
            r_world[:, idx] = r_par @ rot[:, idx]
            pos[:, idx] = pos[:, par] + (r_par @ offsets[idx].unsqueeze(-1)).squeeze(-1)
        return pos

    def positions_at_rest(self, rot6d: Mapping[tuple[int, ...], torch.Tensor],
                          joints: list[int] | tuple[int, ...]) -> torch.Tensor:  # fmt: skip
        """{joint indices: their rot6d (N, len(indices), 6)} -> (N, len(joints), 3) positions of ``joints``, every
        other joint at rest (identity rotation; the root at its rest position), the mean pose not added (build this
        FK with ``flat_hand_mean=True``). Differentiable: training losses on decoded motion go through here."""
        first = next(iter(rot6d.values()))
        rot = torch.eye(3, dtype=first.dtype, device=first.device).expand(first.shape[0], NUM_JOINTS, 3, 3).clone()
        for idx, r6 in rot6d.items():
            rot[:, list(idx)] = rotation_6d_to_matrix(r6)
        return self.from_matrices(rot, joints)

    def __repr__(self) -> str:
        return f"JointsFK(source={self.source!r})"


_SKELETON_CACHE: dict[str, _LinearSkeleton] = {}


def get_fk(
    model_path: str | os.PathLike | None = None,
    betas: np.ndarray | torch.Tensor | None = None,
    source: str = "auto",
    flat_hand_mean: bool = False,
) -> JointsFK:
    """Joints-only FK. ``source``: ``"auto"`` (SMPL-X file if found, else mannequin), ``"smplx"``, ``"mannequin"``.

    ``model_path`` (or ``$SMPLX_MODEL_PATH``) is an SMPL-X model file or a folder holding one. ``flat_hand_mean``
    as in ``smplx``: False (the default there and in the reference evaluator) adds the relaxed hand mean."""
    if source not in ("auto", "smplx", "mannequin"):
        raise ValueError(f"unknown FK source {source!r}; expected 'auto', 'smplx' or 'mannequin'")
    path = find_smplx_model(model_path) if source in ("auto", "smplx") else None
    if source == "smplx" and path is None:
        raise BodyModelUnavailable(
            "source='smplx' needs an SMPL-X model file: pass model_path or set SMPLX_MODEL_PATH "
            "(SMPLX_NEUTRAL_2020.npz from https://smpl-x.is.tue.mpg.de)"
        )
    key = f"smplx:{path.resolve()}:{path.stat().st_mtime_ns}" if path is not None else "mannequin"
    if key not in _SKELETON_CACHE:
        _SKELETON_CACHE[key] = _smplx_skeleton(path) if path is not None else _mannequin_skeleton()
    return JointsFK(_SKELETON_CACHE[key], betas, flat_hand_mean)


class SMPLXVertices:
    """Full SMPL-X forward (vertices) through the ``smplx`` package, chunked over frames."""

    def __init__(self, model_path: Path, device: str | torch.device = "cpu"):
        self.path = Path(model_path)
        self.device = torch.device(device)
        self.model = _load_smplx_module(self.path).to(self.device).eval()
        self.num_betas = int(self.model.num_betas)
        self.num_expressions = int(self.model.num_expression_coeffs)
        self.source = f"smplx:{self.path.name} sha256:{sha256_file(self.path)[:16]}"
        self._face_subset: FaceVertexSubset | None = None

    @torch.no_grad()
    def vertices(
        self,
        poses: np.ndarray | torch.Tensor,
        betas: np.ndarray | torch.Tensor | None = None,
        expressions: np.ndarray | torch.Tensor | None = None,
        trans: np.ndarray | torch.Tensor | None = None,
        chunk: int = 256,
    ) -> torch.Tensor:
        """(T,165) poses, (B,) betas, (T,E) expressions, (T,3) trans -> (T, V, 3) float32 vertices."""
        dev = self.device
        poses = torch.as_tensor(np.asarray(poses, np.float32) if not isinstance(poses, torch.Tensor) else poses)
        poses = poses.to(dev, torch.float32).reshape(-1, NUM_JOINTS * 3)
        t = poses.shape[0]
        b = torch.zeros(1, self.num_betas, device=dev)
        if betas is not None:
            bb = torch.as_tensor(np.asarray(betas, np.float32)).reshape(-1)[: self.num_betas]
            b[0, : bb.numel()] = bb.to(dev)
        e = torch.zeros(t, self.num_expressions, device=dev)
        if expressions is not None:
            ee = torch.as_tensor(np.asarray(expressions, np.float32)).reshape(t, -1)[:, : self.num_expressions]
            e[:, : ee.shape[1]] = ee.to(dev)
        tr = torch.zeros(t, 3, device=dev) if trans is None else torch.as_tensor(np.asarray(trans, np.float32)).to(dev)
        out = []
        for s in range(0, t, chunk):
            p = poses[s : s + chunk]
            m = p.shape[0]
            res = self.model(
                betas=b.expand(m, -1), global_orient=p[:, :3], body_pose=p[:, 3:66], jaw_pose=p[:, 66:69],
                leye_pose=p[:, 69:72], reye_pose=p[:, 72:75], left_hand_pose=p[:, 75:120],
                right_hand_pose=p[:, 120:165], expression=e[s : s + chunk], transl=tr[s : s + chunk],
                return_verts=True,
            )
            out.append(res.vertices)
        return torch.cat(out, 0)

    def face_vertices(
        self, poses: np.ndarray | torch.Tensor, expressions: np.ndarray | torch.Tensor | None,
        betas: np.ndarray | torch.Tensor | None = None, chunk: int = 256,
    ) -> torch.Tensor:
        """The EMAGE face-metric vertices: body pose, global orient, eyes and translation zeroed; jaw and
        expressions kept; given betas."""
        p = torch.as_tensor(np.asarray(poses, np.float32) if not isinstance(poses, torch.Tensor) else poses)
        only_jaw = torch.zeros_like(p.reshape(-1, NUM_JOINTS * 3), dtype=torch.float32)
        only_jaw[:, 66:69] = p.reshape(-1, NUM_JOINTS * 3)[:, 66:69]
        return self.vertices(only_jaw, betas, expressions, None, chunk)

    def face_metrics(
        self, pred_poses: np.ndarray, pred_expressions: np.ndarray | None, gt_poses: np.ndarray,
        gt_expressions: np.ndarray | None, betas: np.ndarray | None = None,
    ) -> dict[str, float]:  # fmt: skip
        """Face MSE and both LVDs (`evaluation.metrics` definitions) on the `face_vertices` pose of prediction and
        GT, computed on the vertices that pose can move only (`geometry.face_vertices.FaceVertexSubset`: the others
        add exactly 0); equal to the metrics of the full meshes up to float rounding (tested). On the CPU, whatever
        ``device`` this model is on."""
        if self._face_subset is None:
            from geometry.face_vertices import FaceVertexSubset

            self._face_subset = FaceVertexSubset(self.model)
        return self._face_subset.metrics(pred_poses, pred_expressions, gt_poses, gt_expressions, betas)


def get_vertex_model(model_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> SMPLXVertices:
    """SMPL-X vertices (face metrics). Raises ``BodyModelUnavailable`` with a clear message without a model file."""
    path = find_smplx_model(model_path)
    if path is None:
        raise BodyModelUnavailable(
            "SMPL-X vertices (face MSE/LVD) need the SMPL-X model file SMPLX_NEUTRAL_2020.npz "
            "(register at https://smpl-x.is.tue.mpg.de); pass --body-model PATH or set SMPLX_MODEL_PATH. "
            "The mannequin skeleton gives joints only."
        )
    return SMPLXVertices(path, device)


def write_toy_smplx_model(
    path: str | os.PathLike, num_betas: int = NUM_SMPLX_BETAS, num_expressions: int = NUM_SMPLX_EXPRESSIONS,
    seed: int = 0, num_vertices: int = 9930, active_vertices: int = 660, face_region: int = 0,
) -> Path:
    """Write a small, valid SMPL-X-format model npz (random geometry) that ``smplx.SMPLX`` loads.

    ``smplx`` reads fixed vertex ids (nose, eyes, ears, feet, finger tips; the largest is 9929), so the toy needs
    9930 vertices; only the first ``active_vertices`` carry shape/pose directions and joint regression (the rest are
    zeros, which compress away). Joints sit on the SMPL-X skeleton of the mannequin source at zero shape.
    ``face_region`` > 0 lays the expressions out as the real model does: only that many vertices (after the active
    ones) carry expression directions and the jaw's pose blend shapes, skinned to the head and the jaw; otherwise
    every active vertex has expression directions.
    """
    if num_vertices < 9930:
        raise ValueError("smplx indexes vertex 9929 for its extra joints: num_vertices must be >= 9930")
    rng = np.random.default_rng(seed)
    v, a, k = num_vertices, active_vertices, NUM_JOINTS
    per = a // k
    rest = _mannequin_skeleton().j_template
    v_template = rng.normal(0, 0.3, (v, 3))
    owner = np.full(v, -1)
    j_reg = np.zeros((k, v))
    weights = np.zeros((v, k))
    for j in range(k):
        ids = np.arange(j * per, (j + 1) * per)
        v_template[ids] = rest[j] + rng.normal(0, 0.01, (per, 3))
        w = rng.uniform(0.5, 1.5, per)
        j_reg[j, ids] = w / w.sum()
        owner[ids] = j
    weights[owner >= 0, owner[owner >= 0]] = 1.0
    rest_ids = np.flatnonzero(owner < 0)
    weights[rest_ids, rng.integers(0, k, rest_ids.size)] = 1.0
    shapedirs = np.zeros((v, 3, num_betas + num_expressions), np.float32)
    shapedirs[:a] = rng.normal(0, 0.01, (a, 3, num_betas + num_expressions))
    posedirs = np.zeros((v, 3, (k - 1) * 9), np.float32)
    posedirs[:a] = rng.normal(0, 0.002, (a, 3, (k - 1) * 9))
    if face_region:
        if a + face_region > v:
            raise ValueError(f"active_vertices + face_region must be <= num_vertices ({v})")
        face = np.arange(a, a + face_region)
        shapedirs[:, :, num_betas:] = 0.0
        shapedirs[face, :, num_betas:] = rng.normal(0, 0.002, (face_region, 3, num_expressions))
        posedirs[face, :, 21 * 9 : 22 * 9] = rng.normal(0, 0.002, (face_region, 3, 9))  # the jaw (joint 22) block
        share = rng.uniform(0.0, 1.0, face_region)  # jaw share of each face vertex's skinning; the rest the head's
        weights[face] = 0.0
        weights[face, 22], weights[face, 15] = share, 1.0 - share
        v_template[face] = rest[15] + rng.normal(0, 0.06, (face_region, 3))
    kintree = np.array([[4294967295] + list(PARENTS[1:]), list(range(k))], dtype=np.int64)
    faces = rng.integers(0, v, (4000, 3)).astype(np.int64)
    lmk_bary = rng.uniform(0.1, 1.0, (51, 3))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, v_template=v_template.astype(np.float64), shapedirs=shapedirs, posedirs=posedirs,
        J_regressor=j_reg, weights=weights, kintree_table=kintree, f=faces,
        lmk_faces_idx=rng.integers(0, faces.shape[0], 51).astype(np.int64),
        lmk_bary_coords=lmk_bary / lmk_bary.sum(1, keepdims=True),
        hands_meanl=rng.normal(0, 0.2, 45), hands_meanr=rng.normal(0, 0.2, 45),
        hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
    )
    return path
