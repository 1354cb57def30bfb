"""Motion <-> generator latent codec: the frozen per-part RVQ-VAEs plus the normalisation statistics.

Spec: ../shared/spec/gesturelsm.md §2.3-2.4, §4.1, §7.1 (per batch) and §7.3-7.4 (decoding).

encode: poses (B,T,165) axis-angle + trans_v (B,T,3)
    -> per-part rot6d (upper 78, hands 180, lower 54), normalised with the 330-D rot6d mean/std
    -> lower ⊕ normalised trans_v (57)
    -> ``map2latent`` per part (B,T/4,128), concatenated in GENERATOR_PARTS order -> ÷ latent_scale -> (B,T/4,384)
decode: latents (B,T',384) -> × latent_scale -> ``latent2origin`` per part -> denormalise -> rot6d -> axis-angle
    -> scattered into 165-D (joints 22-24 = 0 unless a GT jaw is given) and the decoded trans_v (B,4T',3).

With a ``face_jaw`` RVQ-VAE (issue 18) the codec has 4 parts: the face part's input is [normalised jaw rot6d (6) |
100 raw expressions] (the frame-vector layout, see geometry.skeleton), its latents follow the body's (channels
384-511), and decode also returns the generated jaw (in the poses) and expressions. The latent width is the sum of
the parts' code dims, never a constant.

The codec is an nn.Module only so that ``.to(device)`` moves the RVQ-VAEs and statistics together; it is frozen
(``requires_grad`` off, eval mode) and never part of a trained model or its checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from geometry.normalisation import DEFAULT_MIN_STD, denormalise, normalise, safe_std
from geometry.rotations import poses_to_rot6d, rot6d_to_poses
from geometry.skeleton import (
    FACE_PART,
    GENERATOR_PARTS,
    HANDS_JOINTS,
    JAW_JOINT,
    LOWER_JOINTS,
    UPPER_JOINTS,
    axis_angle_indices,
    generator_parts,
    part_dim,
    rot6d_indices,
)
from models.vq.rvqvae import RVQVAE, load_rvqvae

LATENT_SCALE = 5.0  # upstream vqvae_latent_scale
PART_JOINTS: dict[str, tuple[int, ...]] = {"upper": UPPER_JOINTS, "hands": HANDS_JOINTS, "lower_trans": LOWER_JOINTS,
                                           FACE_PART: (JAW_JOINT,)}
N_EXPRESSIONS = 100
JAW_DIMS = slice(3 * JAW_JOINT, 3 * JAW_JOINT + 3)  # 66:69 in the 165-D axis-angle vector


def _as_tensor(x: Any, name: str, size: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32).reshape(-1)
    if t.numel() != size:
        raise ValueError(f"{name} must have {size} values, got {t.numel()}")
    return t.clone()


def trans_from_trans_v(trans_v: torch.Tensor, init_xz: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded translation from the generator's trans_v (B,T,3): x/z integrate the per-frame deltas (cumulative sum,
    starting at ``init_xz`` (B,2), default 0), y is already the absolute height (spec §2.2, §7.3)."""
    xz = torch.cumsum(trans_v[..., [0, 2]], dim=-2)
    if init_xz is not None:
        xz = xz + init_xz.unsqueeze(-2)
    return torch.stack([xz[..., 0], trans_v[..., 1], xz[..., 1]], dim=-1)


class MotionCodec(nn.Module):
    """Frozen encoder/decoder between SMPL-X motion and the (B,T/4,D) generator latent (D = 384, or 512 with a face).

    ``vqs``: RVQ-VAEs keyed ``upper``, ``hands``, ``lower_trans`` (input widths 78, 180, 57; code_dim 128 each), and
    optionally ``face_jaw`` (106: jaw rot6d + 100 expressions), which turns the face on.
    Statistics: ``rot6d_mean``/``rot6d_std`` (330,), ``trans_v_mean``/``trans_v_std`` (3,) (speaker-2 files upstream;
    no epsilon, as upstream). ``latent_scale``: the generator latent is the encoder output ÷ this (upstream 5).
    """

    def __init__(
        self,
        vqs: Mapping[str, RVQVAE],
        rot6d_mean: Any,
        rot6d_std: Any,
        trans_v_mean: Any,
        trans_v_std: Any,
        latent_scale: float = LATENT_SCALE,
    ) -> None:
        super().__init__()
        missing = [p for p in GENERATOR_PARTS if p not in vqs]
        if missing:
            raise ValueError(f"MotionCodec needs RVQ-VAEs for {list(GENERATOR_PARTS)}; missing {missing}")
        unknown = sorted(set(vqs) - set(generator_parts(True)))
        if unknown:
            raise ValueError(f"MotionCodec: unknown part(s) {unknown}; expected {list(generator_parts(True))}")
        self.parts = generator_parts(FACE_PART in vqs)
        self.vqs = nn.ModuleDict({p: vqs[p] for p in self.parts})
        for p, vq in self.vqs.items():
            if vq.input_width != part_dim(p):
                raise ValueError(f"RVQ-VAE for {p!r} has input width {vq.input_width}, expected {part_dim(p)}")
        self.code_dims = [int(self.vqs[p].code_dim) for p in self.parts]
        self.latent_dim = sum(self.code_dims)
        self.latent_scale = float(latent_scale)
        self.register_buffer("rot6d_mean", _as_tensor(rot6d_mean, "rot6d_mean", 330), persistent=False)
        self.register_buffer("rot6d_std", _as_tensor(rot6d_std, "rot6d_std", 330), persistent=False)
        self.register_buffer("trans_v_mean", _as_tensor(trans_v_mean, "trans_v_mean", 3), persistent=False)
        self.register_buffer("trans_v_std", _as_tensor(trans_v_std, "trans_v_std", 3), persistent=False)
        self._r6 = {p: torch.from_numpy(rot6d_indices(PART_JOINTS[p])) for p in self.parts}
        self._aa = {p: torch.from_numpy(axis_angle_indices(PART_JOINTS[p])) for p in self.parts}
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_paths(
        cls,
        paths: Mapping[str, str | os.PathLike],
        stats: Any,
        latent_scale: float = LATENT_SCALE,
        map_location: str | torch.device = "cpu",
    ) -> MotionCodec:
        """Load the part RVQ-VAEs (``load_rvqvae``: released ``{'net': sd}`` files or our checkpoints).

        ``paths``: {upper, hands, lower_trans} (``lower`` accepted as an alias of ``lower_trans``, the upstream file
        name), plus ``face_jaw`` for the 4-part codec (a missing or empty ``face_jaw`` entry: no face).
        ``stats``: an object with rot6d_mean/rot6d_std/trans_v_mean/trans_v_std (e.g. dataloaders Stats).
        """
        paths = {k: v for k, v in dict(paths).items() if not (k == FACE_PART and not v)}
        if "lower_trans" not in paths and "lower" in paths:
            paths["lower_trans"] = paths.pop("lower")
        vqs = {}
        for p in generator_parts(FACE_PART in paths):
            if not paths.get(p):
                raise ValueError(f"no RVQ-VAE checkpoint path for part {p!r} (got keys {sorted(paths)})")
            if not os.path.isfile(paths[p]):
                raise FileNotFoundError(f"RVQ-VAE checkpoint for {p!r} not found: {paths[p]}")
            vqs[p] = load_rvqvae(paths[p], part=p, map_location=map_location)
        # safe_std: std below stats.min_std (constant dims, e.g. in a synthetic corpus) -> 1, never a division by 0;
        # the official speaker-2 files have no such dims (smallest used body std ~1.4e-3; the jaw's, used only by
        # the face part, goes down to 1.5e-5, matching how little the jaw moves), so they pass unchanged.
        min_std = float(getattr(stats, "min_std", DEFAULT_MIN_STD))
        return cls(vqs, stats.rot6d_mean, safe_std(stats.rot6d_std, min_std), stats.trans_v_mean,
                   safe_std(stats.trans_v_std, min_std), latent_scale)

    def train(self, mode: bool = True) -> MotionCodec:
        # Always eval: the RVQ-VAEs are frozen (no quantiser dropout / EMA updates), whatever the caller's mode.
        return super().train(False)

    # ------------------------------------------------------------------------------------------------ encode
    @property
    def has_face(self) -> bool:
        return FACE_PART in self.parts

    def normalise_parts(self, poses: torch.Tensor, trans_v: torch.Tensor,
                        expressions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-part normalised RVQ inputs: {upper (B,T,78), hands (B,T,180), lower_trans (B,T,57)} and, with the
        face, face_jaw (B,T,106) = [jaw rot6d normalised | ``expressions`` (B,T,100) raw]."""
        if poses.shape[-1] != 165:
            raise ValueError(f"poses must be (B,T,165) axis-angle, got {tuple(poses.shape)}")
        if trans_v.shape[:-1] != poses.shape[:-1] or trans_v.shape[-1] != 3:
            raise ValueError(f"trans_v must be (B,T,3) matching poses {tuple(poses.shape)}, got {tuple(trans_v.shape)}")
        r6 = poses_to_rot6d(poses.float())
        r6n = normalise(r6, self.rot6d_mean, self.rot6d_std)
        out = {p: r6n[..., self._r6[p].to(r6n.device)] for p in self.parts}
        tv = normalise(trans_v.float(), self.trans_v_mean, self.trans_v_std)
        out["lower_trans"] = torch.cat([out["lower_trans"], tv], dim=-1)
        if self.has_face:
            if expressions is None:
                raise ValueError("this codec has a face part: encode needs the expressions (B,T,100) too")
            if expressions.shape[:-1] != poses.shape[:-1] or expressions.shape[-1] != N_EXPRESSIONS:
                raise ValueError(f"expressions must be (B,T,{N_EXPRESSIONS}) matching poses {tuple(poses.shape)}, "
                                 f"got {tuple(expressions.shape)}")  # fmt: skip
            out[FACE_PART] = torch.cat([out[FACE_PART], expressions.to(out[FACE_PART])], dim=-1)
        return out

    @torch.no_grad()
    def encode(self, poses: torch.Tensor, trans_v: torch.Tensor,
               expressions: torch.Tensor | None = None) -> torch.Tensor:
        """poses (B,T,165), trans_v (B,T,3) [, expressions (B,T,100): needed with the face] with T a multiple of 4
        -> generator latents (B,T/4,latent_dim)."""
        parts = self.normalise_parts(poses, trans_v, expressions)
        z = torch.cat([self.vqs[p].map2latent(parts[p]) for p in self.parts], dim=-1)
        return z / self.latent_scale

    @torch.no_grad()
    def mean_latent(self, batch: int, n_latents: int, device: torch.device | None = None) -> torch.Tensor:
        """Latents (batch, n_latents, latent_dim) of the mean pose held still (all-zero normalised RVQ input; with
        the face: mean jaw, neutral expressions): a neutral seed when the ground truth must not be used."""
        device = device or self.rot6d_mean.device
        zs = []
        for p in self.parts:
            x = torch.zeros(batch, n_latents * self.vqs[p].down_factor, self.vqs[p].input_width, device=device)
            zs.append(self.vqs[p].map2latent(x))
        return torch.cat(zs, dim=-1) / self.latent_scale

    # ------------------------------------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode_parts(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """latents (B,T',latent_dim) -> de-normalised part rot6d {upper, hands, lower_trans (B,4T',6J)} and
        trans_v (B,4T',3); with the face also face_jaw (B,4T',6) (jaw rot6d) and expressions (B,4T',100)."""
        if latents.dim() != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"latents must be (B,T',{self.latent_dim}), got {tuple(latents.shape)}")
        z = latents.float() * self.latent_scale
        out: dict[str, torch.Tensor] = {}
        start = 0
        for p, cd in zip(self.parts, self.code_dims):
            rec = self.vqs[p].latent2origin(z[..., start : start + cd])[0]
            start += cd
            idx = self._r6[p].to(rec.device)
            n = idx.numel()
            out[p] = denormalise(rec[..., :n], self.rot6d_mean[idx], self.rot6d_std[idx])
            if p == "lower_trans":
                out["trans_v"] = denormalise(rec[..., n:], self.trans_v_mean, self.trans_v_std)
            elif p == FACE_PART:
                out["expressions"] = rec[..., n:]
        return out

    def _check_parts(self, latents: torch.Tensor, parts: tuple[str, ...], caller: str) -> None:
        if latents.dim() != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"{caller}: latents must be (B,T',{self.latent_dim}), got {tuple(latents.shape)}")
        unknown = sorted(set(parts) - set(self.parts))
        if unknown:
            raise ValueError(f"{caller}: unknown part(s) {unknown}; this codec has {list(self.parts)}")

    def decode_rot6d(self, latents: torch.Tensor, parts: tuple[str, ...] = ("upper", "lower_trans")
                     ) -> dict[str, torch.Tensor]:
        """Differentiable decode for training losses on the decoded motion: latents (B,T',latent_dim) ->
        de-normalised rot6d {part: (B,4T',6J)} of ``parts``. The codes are straight-through: the forward pass is
        `decode_parts`' up to rounding, the gradient flows to the latents as if quantisation were the identity."""
        self._check_parts(latents, parts, "decode_rot6d")
        z = latents.float() * self.latent_scale
        out: dict[str, torch.Tensor] = {}
        start = 0
        for p, cd in zip(self.parts, self.code_dims):
            if p in parts:
                rec = self.vqs[p].latent2origin(z[..., start : start + cd], straight_through=True)[0]
                idx = self._r6[p].to(rec.device)
                out[p] = denormalise(rec[..., : idx.numel()], self.rot6d_mean[idx], self.rot6d_std[idx])
            start += cd
        return out

    def code_residual(self, latents: torch.Tensor, parts: tuple[str, ...] = ("upper", "lower_trans")
                      ) -> torch.Tensor:
        """latents (B,T',latent_dim) -> the mean squared distance of the ``parts``' latents (in the codec's scale) to
        their eval-mode quantisation, which is held fixed: differentiable, its gradient pulls the latents toward the
        codes they decode to (a VQ commitment term for latents the codec did not encode)."""
        self._check_parts(latents, parts, "code_residual")
        z = latents.float() * self.latent_scale
        sq, n, start = z.new_zeros(()), 0, 0
        for p, cd in zip(self.parts, self.code_dims):
            if p in parts:
                zp = z[..., start : start + cd]
                sq = sq + (zp - self.vqs[p].quantised(zp)).pow(2).sum()
                n += zp.numel()
            start += cd
        return sq / max(n, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, jaw: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """latents (B,T',latent_dim) -> {poses (B,4T',165) axis-angle, trans_v (B,4T',3), trans (B,4T',3),
        expressions (B,4T',100) or None}.

        Joints never generated (eyes 23-24; the jaw 22 without a face part) are 0 and expressions None without a face
        part; ``jaw`` (B,≥4T',3) (e.g. the GT jaw, as upstream's test does) overrides dims 66:69. ``trans`` is the
        decoded trans_v integrated (``trans_from_trans_v``).
        """
        parts = self.decode_parts(latents)
        b, t = parts["upper"].shape[:2]
        poses = parts["upper"].new_zeros(b, t, 165)
        for p in self.parts:
            poses[..., self._aa[p].to(poses.device)] = rot6d_to_poses(parts[p])
        if jaw is not None:
            if jaw.shape[0] != b or jaw.shape[1] < t or jaw.shape[-1] != 3:
                raise ValueError(f"jaw must be (B={b}, >= {t}, 3), got {tuple(jaw.shape)}")
            poses[..., JAW_DIMS] = jaw[:, :t].to(poses)
        return {"poses": poses, "trans_v": parts["trans_v"], "trans": trans_from_trans_v(parts["trans_v"]),
                "expressions": parts.get("expressions")}


__all__ = ["JAW_DIMS", "LATENT_SCALE", "N_EXPRESSIONS", "PART_JOINTS", "MotionCodec", "trans_from_trans_v"]
