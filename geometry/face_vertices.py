"""Face-metric vertices of SMPL-X without the whole mesh: only the vertices the jaw and the expressions can move.

EMAGE's face metrics pose SMPL-X with everything zeroed but the jaw and the expressions (`SMPLXVertices.face_vertices`)
and average over all ~10k vertices. Under that pose most vertices never move: every rotation is constant except the
jaw's (the hands keep their mean pose, ``flat_hand_mean=False``), and the expressions displace only the vertices their
blend shapes touch. A vertex that no time-varying quantity reaches is the same in prediction and ground truth (same
betas), so it adds exactly 0 to face MSE and to both LVDs, and only the count of vertices matters for their means.

Per frame, with J(t) = J_regressor·v_shaped(t) = J0 + JE·e(t) (JE = J_regressor·expr_dirs, precomputed), the
linear blend skinning of ``smplx.lbs`` restricted to the moving set S is

    v_posed(t) = C + E·e(t) + P_jaw·vec(R_jaw(t) − I)         C: template + shape + constant pose blend shapes
    v(t)       = (Tc + Σ_{k ∈ K_var} w_k·A_k(t))·[v_posed(t); 1]

where K_var are the joints whose skinning transform A_k can change (the jaw, and a joint under a non-identity rotation
whose chain has a joint that is both rotated and moved by the expressions: A_k's translation is
Σ_{i ∈ chain} P_i·(I − R_i)·J_i with P_i the rotation above joint i) and Tc = Σ_{k ∉ K_var} w_k·A_k is constant. S holds
every vertex with an expression direction, a jaw pose-blend direction or a skinning weight on a joint of K_var. Same
arithmetic as smplx (its Rodrigues with the 1e-8 inside the norm included), transforms in float64, the blend-shape
products and the per-vertex work in float32 on displacements from the rest pose (see `displacements`): the metrics
agree with smplx run in float64 to ~1e-8 relative and with its float32 path to its rounding (~4e-7; tested on toy
models of the general and the real model's layout). With the real model's layout (expressions on the head only)
K_var is the jaw alone and S the head region, so the face metrics cost a fraction of a full forward per frame;
the sizes are in ``vertices`` and ``var_joints``. Runs on the CPU whatever device the model is on.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from geometry.skeleton import NUM_JOINTS

JAW = 22


def rodrigues(rot_vecs: torch.Tensor) -> torch.Tensor:
    """(N, 3) axis-angle -> (N, 3, 3), as ``smplx.lbs.batch_rodrigues`` (angle = |v + 1e-8|, so 0 gives I exactly)."""
    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
    d = rot_vecs / angle
    cos, sin = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]
    z = torch.zeros_like(d[:, :1])
    k = torch.cat([z, -d[:, 2:3], d[:, 1:2], d[:, 2:3], z, -d[:, 0:1], -d[:, 1:2], d[:, 0:1], z], 1).view(-1, 3, 3)
    return torch.eye(3, dtype=rot_vecs.dtype) + sin * k + (1 - cos) * torch.bmm(k, k)


def rigid_transforms(rot: torch.Tensor, joints: torch.Tensor, parents: list[int],
                     only: list[int] | None = None) -> torch.Tensor:  # fmt: skip
    """(B, J, 3, 3) rotations, (B, J, 3) rest joints -> (B, J, 4, 4) skinning transforms A_k, as
    ``smplx.lbs.batch_rigid_transform``'s ``rel_transforms``. ``only``: joints (with all their ancestors, in
    increasing order) to compute; the others are left zero."""
    b, n = joints.shape[:2]
    rel = joints.clone()
    rel[:, 1:] -= joints[:, parents[1:]]
    local = torch.zeros(b, n, 4, 4, dtype=joints.dtype)
    local[:, :, :3, :3], local[:, :, :3, 3], local[:, :, 3, 3] = rot, rel, 1.0
    g = torch.zeros_like(local)
    for i in range(n) if only is None else only:
        g[:, i] = local[:, 0] if i == 0 else g[:, parents[i]] @ local[:, i]
    out = g.clone()
    out[:, :, :3, 3] -= (g[:, :, :3, :3] @ joints[..., None])[..., 0]
    return out


class FaceVertexSubset:
    """The moving vertices of the face-metric pose of one SMPL-X module (``smplx.SMPLX``, built by
    ``geometry.body_model``), and face MSE / LVD computed on them, chunk by chunk over frames."""

    def __init__(self, model: torch.nn.Module) -> None:
        f64 = torch.float64
        self.n_vertices = int(model.v_template.shape[0])
        self.parents = [int(p) for p in model.parents.tolist()]
        if len(self.parents) != NUM_JOINTS:
            raise ValueError(f"expected an SMPL-X model with {NUM_JOINTS} joints, got {len(self.parents)}")
        self.num_betas = int(model.shapedirs.shape[-1])
        v_template = model.v_template.detach().cpu().to(f64)
        shapedirs = model.shapedirs.detach().cpu().to(f64)  # (V, 3, n_betas)
        expr = model.expr_dirs.detach().cpu().to(f64)  # (V, 3, n_expr)
        posedirs = model.posedirs.detach().cpu().to(f64).view(-1, self.n_vertices, 3)  # ((J-1)*9, V, 3)
        j_reg = model.J_regressor.detach().cpu().to(f64)  # (J, V)
        weights = model.lbs_weights.detach().cpu().to(f64)  # (V, J)
        self.pose_mean = model.pose_mean.detach().cpu().to(f64).view(NUM_JOINTS, 3)  # hand means (flat_hand_mean=False)
        self.n_expr = int(expr.shape[-1])

        # joints whose transform can change with the jaw or the expressions (module docstring)
        jaw_rows = slice((JAW - 1) * 9, JAW * 9)
        je = torch.einsum("jv,vcd->jcd", j_reg, expr)  # (J, 3, n_expr)
        j_moves = je.abs().amax(dim=(1, 2)) > 0
        rotated = self.pose_mean.abs().amax(1) > 0
        var = []
        for k in range(NUM_JOINTS):
            chain, i = [], k
            while i >= 0:
                chain.append(i)
                i = self.parents[i] if i > 0 else -1
            if JAW in chain or any(bool(rotated[i]) and bool(j_moves[i]) for i in chain):
                var.append(k)
        self.var_joints = var
        need = set()
        for k in var:
            while k >= 0:
                need.add(k)
                k = self.parents[k] if k > 0 else -1
        self._chain = sorted(need)  # the moving joints and their ancestors (parents precede children in SMPL-X)
        moving = (expr.abs().amax(dim=(1, 2)) > 0) | (posedirs[jaw_rows].abs().amax(dim=(0, 2)) > 0)
        moving |= weights[:, var].abs().amax(1) > 0
        self.vertices = torch.nonzero(moving).flatten()
        s = self.vertices
        self._template, self._shapedirs = v_template[s], shapedirs[s]
        self._expr32 = expr[s].permute(2, 0, 1).reshape(self.n_expr, -1).float()  # (n_expr, S*3)
        self._pjaw32 = posedirs[jaw_rows][:, s].reshape(9, -1).float()  # (9, S*3)
        self._pother = posedirs[:, s]  # constant pose blend shapes (every joint but the jaw is fixed)
        self._weights = weights[s]  # (S, J)
        self._weights_var = self._weights[:, var].contiguous()  # (S, K)
        self._weights_var32 = self._weights_var.float()
        self._j_reg_shape = torch.einsum("jv,vcd->jcd", j_reg, shapedirs)  # (J, 3, n_betas)
        self._j_template = j_reg @ v_template  # (J, 3)
        self._je = je.permute(2, 0, 1).reshape(self.n_expr, -1)  # (n_expr, J*3)
        self._const_rot = rodrigues(self.pose_mean)  # (J, 3, 3): the rotations of every joint but the jaw
        self._cache: tuple[bytes, tuple[torch.Tensor, ...]] | None = None

    def _constants(self, betas: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Per-betas constants: J0 (J,3), C (S,3), Tc (S,3,4), the moving joints' rest transforms A0 (K,3,4)."""
        key = betas.tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        b = torch.from_numpy(betas)
        j0 = self._j_template + self._j_reg_shape @ b
        feat = (self._const_rot[1:] - torch.eye(3, dtype=torch.float64)).reshape(-1)
        feat[(JAW - 1) * 9 : JAW * 9] = 0.0  # the jaw's part is added per frame
        c = self._template + self._shapedirs @ b + torch.einsum("p,psc->sc", feat, self._pother)
        a = rigid_transforms(self._const_rot[None], j0[None], self.parents)[0]  # the rest pose (jaw and e at 0)
        fixed = [k for k in range(NUM_JOINTS) if k not in self.var_joints]
        tc = torch.einsum("sk,kab->sab", self._weights[:, fixed], a[fixed])[:, :3]
        self._cache = (key, (j0, c, tc, a[self.var_joints, :3]))
        return self._cache[1]

    def _frames(self, poses: np.ndarray, expressions: np.ndarray | None, betas: np.ndarray | None):
        """Inputs of a chunk: constants, expressions (T,E) f64, jaw rotations (T,3,3) f64, the moving joints'
        transforms (T,K,3,4) f64 and the blend-shape offsets (T,S,3) float32 (centimetres on the real model:
        float32, the model files' own precision, keeps ~1e-6 of them, at half the float64 cost)."""
        poses = np.asarray(poses, np.float64).reshape(-1, NUM_JOINTS * 3)
        t = poses.shape[0]
        e = np.zeros((t, self.n_expr))
        if expressions is not None:
            ex = np.asarray(expressions, np.float64).reshape(t, -1)[:, : self.n_expr]
            e[:, : ex.shape[1]] = ex
        b = np.zeros(self.num_betas)
        if betas is not None:
            bb = np.asarray(betas, np.float64).reshape(-1)[: self.num_betas]
            b[: bb.size] = bb
        consts = self._constants(b)
        e_t = torch.from_numpy(e)
        r_jaw = rodrigues(torch.from_numpy(poses[:, 66:69]) + self.pose_mean[JAW])
        jaw_feat = (r_jaw - torch.eye(3, dtype=torch.float64)).reshape(t, 9).float()
        offsets = (e_t.float() @ self._expr32 + jaw_feat @ self._pjaw32).view(t, -1, 3)
        a = None
        if self.var_joints:
            joints = consts[0] + (e_t @ self._je).view(t, NUM_JOINTS, 3)
            rot = self._const_rot.expand(t, -1, -1, -1).clone()
            rot[:, JAW] = r_jaw
            a = rigid_transforms(rot, joints, self.parents, self._chain)[:, self.var_joints, :3]  # (T, K, 3, 4)
        return consts, offsets, a

    def positions(self, poses: np.ndarray, expressions: np.ndarray | None, betas: np.ndarray | None) -> torch.Tensor:
        """(T,165) poses (only the jaw is used), (T,E) expressions, betas -> (T, S, 3) float64 moving vertices."""
        (_, c, tc, _), offsets, a = self._frames(poses, expressions, betas)
        v_posed = c + offsets.double()
        out = tc[:, :, 3] + torch.einsum("sab,tsb->tsa", tc[:, :, :3], v_posed)
        for i in range(len(self.var_joints)):
            moved = v_posed @ a[:, i, :, :3].transpose(1, 2) + a[:, None, i, :, 3]
            out = out + self._weights_var[:, i, None] * moved
        return out

    def displacements(self, poses: np.ndarray, expressions: np.ndarray | None,
                      betas: np.ndarray | None) -> torch.Tensor:  # fmt: skip
        """`positions` minus the rest pose's (jaw and expressions at 0), float32: the metrics need only differences
        of prediction and GT, and small displacements keep float32's rounding ~1e-9 m (whole coordinates of ~1 m
        would lose ~1e-7 m, as smplx's float32 path does). With A0 the rest transform of a moving joint:

            v(t) − v0 = Tc_R·δ(t) + Σ_k w_k·((R_k(t) − R_k0)·C + R_k(t)·δ(t) + t_k(t) − t_k0),   δ = offsets
        """
        (_, c, tc, a0), offsets, a = self._frames(poses, expressions, betas)
        tc_r, c32 = tc[:, :, :3].float(), c.float()
        out = offsets[..., 0:1] * tc_r[:, :, 0]  # three multiply-adds, never a (T, S, 3, 3) array
        out.addcmul_(offsets[..., 1:2], tc_r[:, :, 1]).addcmul_(offsets[..., 2:3], tc_r[:, :, 2])
        for i in range(len(self.var_joints)):
            rot, d_rot = a[:, i, :, :3].float(), (a[:, i, :, :3] - a0[i, :, :3]).float()
            moved = (a[:, i, :, 3] - a0[i, :, 3]).float()[:, None].expand_as(offsets).clone()
            for b in range(3):  # 3x3 products as multiply-adds: a (T·S) batch of 3x3 matmuls is slow on CPU
                moved.addcmul_(c32[None, :, b : b + 1], d_rot[:, None, :, b]).addcmul_(offsets[..., b : b + 1],
                                                                                       rot[:, None, :, b])  # fmt: skip
            out.addcmul_(moved, self._weights_var32[:, i, None])
        return out

    def metrics(
        self, pred_poses: np.ndarray, pred_expressions: np.ndarray | None, gt_poses: np.ndarray,
        gt_expressions: np.ndarray | None, betas: np.ndarray | None, chunk: int = 64,
    ) -> dict[str, float]:  # fmt: skip
        """Face MSE and both LVDs (`evaluation.metrics` definitions, means over all the model's vertices) of the
        prediction against GT, both posed with ``betas``; frames in chunks of ``chunk`` (one frame overlap;
        small chunks stay in the CPU cache: 64 was fastest here)."""
        t = int(np.asarray(pred_poses).reshape(-1, NUM_JOINTS * 3).shape[0])
        if t < 2 or np.asarray(gt_poses).reshape(-1, NUM_JOINTS * 3).shape[0] != t:
            raise ValueError(f"face metrics need matching sequences of >= 2 frames, got {t} and "
                             f"{np.asarray(gt_poses).reshape(-1, NUM_JOINTS * 3).shape[0]}")  # fmt: skip
        sq = l1 = lv = 0.0
        prev: torch.Tensor | None = None
        for s0, s1 in _chunks(t, chunk):
            r = self.displacements(_rows(pred_poses, s0, s1), _rows(pred_expressions, s0, s1), betas)
            g = self.displacements(_rows(gt_poses, s0, s1), _rows(gt_expressions, s0, s1), betas)
            d = r - g  # both LVDs are functions of d: (r[1:] − g[:-1]) − (g[1:] − g[:-1]) = d[1:], Δr − Δg = Δd
            sq += float(torch.linalg.vector_norm(d, dtype=torch.float64) ** 2)
            if prev is not None:  # the previous chunk's last frame starts this chunk's differences
                d = torch.cat([prev, d])
            l1 += float(d[1:].abs().sum(dtype=torch.float64))
            lv += float((d[1:] - d[:-1]).abs().sum(dtype=torch.float64))
            prev = d[-1:]
        n = self.n_vertices * 3
        return {"face_mse": sq / (t * n), "lvd_emage2024": l1 / ((t - 1) * n), "lvd_evaltools": lv / ((t - 1) * n)}


def _chunks(t: int, chunk: int) -> Iterator[tuple[int, int]]:
    for s in range(0, t, chunk):
        yield s, min(t, s + chunk)


def _rows(x: np.ndarray | None, s0: int, s1: int) -> np.ndarray | None:
    if x is None:
        return None
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1)[s0:s1]


__all__ = ["FaceVertexSubset", "rigid_transforms", "rodrigues"]
