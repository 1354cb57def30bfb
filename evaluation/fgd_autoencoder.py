"""FGD feature extractor: the skeleton-convolution motion autoencoder ``VAESKConv`` of the EMAGE protocol.

Encoder (``LocalEncoder``): 4 strided ``SkeletonResidual`` blocks on the 55-edge SMPL-X tree, kernel 4, stride 2,
tanh, skeleton distance 2, mean pooling (55 -> 35 -> 20 edges), channels per edge 6 -> 6 -> 6 -> 12 -> 12.
(B, T, 330) rot6d -> (B, T/16, 240) features. Decoder (``VQDecoderV3``-style): 2 conv residual blocks and 4
(nearest x2 upsample, conv3, LeakyReLU 0.2) stages, then a final conv3: (B, T/16, 240) -> (B, T, 330).
``fc_mu``/``fc_logvar`` exist (they are in the released checkpoint) and are used only when ``variational``.

FGD uses ``map2latent`` (= encoder) on un-normalised, re-orthonormalised 55-joint rot6d, T a multiple of 32.
Released weights: ``AESKConv_240_100.bin`` = ``{'model_state': state_dict}`` -> ``load_fgd_autoencoder``, which
also reads our trainer's checkpoints (trainers.fgd_ae: ``{'format': TRAINER_CHECKPOINT_FORMAT, 'model': sd, ...}``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluation.skeleton_conv import SkeletonResidual, edge_neighbours, edges_from_parents, pooling_groups
from geometry.skeleton import PARENTS
from models.checkpoints import TRAINER_CHECKPOINT_FORMAT, extract_state_dict, map_upstream_keys
from utils.io import load_torch

__all__ = [
    "full_fp32",
    "LocalEncoder",
    "MotionDecoder",
    "VAESKConv",
    "load_fgd_autoencoder",
]


class LocalEncoder(nn.Module):
    """Stack of strided skeleton residual blocks; each halves time and (except the last) pools the skeleton."""

    def __init__(
        self,
        parents: Sequence[int] = PARENTS,
        num_layers: int = 4,
        grow: Sequence[int] = (1, 1, 2, 1),
        channel_base: int = 6,
        kernel_size: int = 4,
        skeleton_dist: int = 2,
        activation: str = "tanh",
        padding_mode: str = "constant",
        norm_groups: int = 10,
    ) -> None:
        super().__init__()
        if len(grow) < num_layers:
            raise ValueError(f"vae_grow needs {num_layers} entries, got {list(grow)}")
        edges = edges_from_parents(parents)
        self.in_channels = channel_base * len(edges)
        per_edge = [channel_base]
        for g in grow[:num_layers]:
            per_edge.append(per_edge[-1] * int(g))
        padding = (kernel_size - 1) // 2
        self.layers = nn.ModuleList()
        self.topologies = [edges]
        for i in range(num_layers):
            last = i == num_layers - 1
            neighbours = edge_neighbours(edges, skeleton_dist)
            block = SkeletonResidual(
                edges,
                neighbours,
                in_channels=per_edge[i] * len(edges),
                out_channels=per_edge[i + 1] * len(edges),
                kernel_size=kernel_size,
                stride=2,
                padding=padding,
                padding_mode=padding_mode,
                activation=activation,
                last_pool=last,
                norm_groups=norm_groups,
            )
            # Each block sits in its own Sequential: the reference keys are "layers.<i>.0.*".
            self.layers.append(nn.Sequential(block))
            self.out_channels = per_edge[i + 1] * block.out_edges
            edges = pooling_groups(edges, last)[1]
            self.topologies.append(edges)
        self.temporal_stride = 2**num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C_in) -> (B, T / 2**num_layers, C_out)."""
        out = x.transpose(1, 2)
        for layer in self.layers:
            out = layer(out)
        return out.transpose(1, 2)


class _ConvResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv1d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.model(x)


class MotionDecoder(nn.Module):
    """Latent (B, T', latent) -> motion (B, T' * 2**num_up, out_dim). Keys "main.<i>" follow the reference."""

    def __init__(self, latent_dim: int = 240, out_dim: int = 330, num_up: int = 4, num_res_blocks: int = 2) -> None:
        super().__init__()
        channels = [latent_dim] * num_up + [out_dim]
        layers: list[nn.Module] = [_ConvResBlock(latent_dim) for _ in range(num_res_blocks)]
        for i in range(num_up):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv1d(channels[i], channels[i + 1], 3, padding=1),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv1d(out_dim, out_dim, 3, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.main.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.transpose(1, 2)).transpose(1, 2)


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 for cuDNN convolutions and CUDA matmuls inside the block (no-op off CUDA).

    PyTorch enables TF32 for cuDNN convolutions by default; on an H100 that moves the FGD features by ~3e-3
    (vs ~2e-6 in fp32), enough to shift FGD digits, so feature extraction runs in true fp32.
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


class VAESKConv(nn.Module):
    """Skeleton-conv motion autoencoder used as the FGD feature extractor (defaults = the EMAGE FGD settings)."""

    def __init__(
        self,
        vae_layer: int = 4,
        vae_length: int = 240,
        vae_test_dim: int = 330,
        vae_grow: Sequence[int] = (1, 1, 2, 1),
        variational: bool = False,
        parents: Sequence[int] = PARENTS,
        channel_base: int = 6,
        kernel_size: int = 4,
        skeleton_dist: int = 2,
        activation: str = "tanh",
        padding_mode: str = "constant",
    ) -> None:
        super().__init__()
        self.encoder = LocalEncoder(
            parents, vae_layer, vae_grow, channel_base, kernel_size, skeleton_dist, activation, padding_mode
        )
        if self.encoder.in_channels != vae_test_dim:
            raise ValueError(
                f"vae_test_dim={vae_test_dim} but the skeleton has {len(parents)} edges x {channel_base} channels "
                f"= {self.encoder.in_channels}"
            )
        if self.encoder.out_channels != vae_length:
            raise ValueError(
                f"vae_length={vae_length} but the encoder ends with {self.encoder.out_channels} channels "
                f"(vae_grow={list(vae_grow)})"
            )
        self.decoder = MotionDecoder(vae_length, vae_test_dim, vae_layer)
        self.fc_mu = nn.Linear(vae_length, vae_length)
        self.fc_logvar = nn.Linear(vae_length, vae_length)
        self.variational = variational
        self.input_dim = vae_test_dim
        self.latent_dim = vae_length
        self.temporal_stride = self.encoder.temporal_stride
        # True fp32 on CUDA (no TF32) so features match CPU; the trainer may switch it off for speed.
        self.full_precision = True

    def _precision(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        return full_fp32(x.device) if self.full_precision else contextlib.nullcontext()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"expected motion of shape (B, T, {self.input_dim}), got {tuple(x.shape)}")
        if x.shape[1] == 0 or x.shape[1] % self.temporal_stride:
            raise ValueError(
                f"sequence length {x.shape[1]} must be a positive multiple of {self.temporal_stride} "
                "(trim it first; the FGD protocol trims to a multiple of 32)"
            )

    def _latent(self, pre_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not self.variational:
            return pre_latent, None, None
        mu, logvar = self.fc_mu(pre_latent), self.fc_logvar(pre_latent)
        # The reference samples in train and eval mode alike.
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return z, mu, logvar

    def map2latent(self, x: torch.Tensor) -> torch.Tensor:
        """FGD features: (B, T, 330) rot6d -> (B, T/16, 240)."""
        self._check_input(x)
        with self._precision(x):
            return self._latent(self.encoder(x))[0]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, T', 240) -> (B, 16 T', 330)."""
        if latent.dim() != 3 or latent.shape[-1] != self.latent_dim:
            raise ValueError(f"expected latent of shape (B, T', {self.latent_dim}), got {tuple(latent.shape)}")
        with self._precision(latent):
            return self.decoder(latent)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Full autoencoder pass; keys as the reference: poses_feat, rec_pose, pose_mu, pose_logvar."""
        self._check_input(x)
        with self._precision(x):
            z, mu, logvar = self._latent(self.encoder(x))
            rec = self.decoder(z)
        return {"poses_feat": z, "rec_pose": rec, "pose_mu": mu, "pose_logvar": logvar}


def load_fgd_autoencoder(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", **model_kwargs: Any
) -> VAESKConv:
    """Build ``VAESKConv(**model_kwargs)`` (FGD defaults), load ``path`` strictly, return it in eval mode on
    ``map_location``. Raises a ValueError naming the file and the offending keys on any mismatch.

    A trainer checkpoint (trainers.fgd_ae) gives its ``model`` entry and, under ``model_kwargs``, the architecture
    of its ``config.model``."""
    path = Path(path)
    obj = load_torch(path, map_location="cpu")
    if isinstance(obj, dict) and obj.get("format") == TRAINER_CHECKPOINT_FORMAT:
        if "model" not in obj:
            raise ValueError(f"{path}: trainer checkpoint without a 'model' entry")
        saved = (obj.get("config") or {}).get("model") or {}
        model_kwargs = {**saved, **model_kwargs}
        obj = obj["model"]
    # {'model_state': sd} (the released AESKConv_240_100.bin), {'model_state_dict': sd} or bare
    sd, _, _ = extract_state_dict(obj, path)
    sd, _, _ = map_upstream_keys(sd, path)
    try:
        model = VAESKConv(**model_kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot build VAESKConv with {sorted(model_kwargs)}: {e}") from e
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{path}: not a VAESKConv state dict for these settings; missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), shape mismatches {bad_shape[:5]}"
        )
    model.load_state_dict(sd, strict=True)
    return model.to(torch.device(map_location)).eval()


