"""Time and position embeddings used by the gesture denoiser.

* ``timestep_embedding`` / ``SinusoidalTimesteps``: the diffusers ``get_timestep_embedding`` formula
  (``flip_sin_to_cos``, ``freq_shift``, ``max_period`` 1e4). Timesteps are used as given: a float in [0, 1] for
  flow models, an integer step for diffusion (upstream applies no x1000 scaling).
* ``TimestepEmbedding``: Linear -> act -> Linear with an optional bias-free ``cond_proj`` whose output is added to
  the input first (diffusers' module of the same name; key names match it).
* ``RotaryEmbedding``: rotary position helper holding the ``inv_freq`` buffer that upstream state dicts carry.
* ``PositionalEncoding`` / ``TimestepEmbedder``: MDM-style modules that upstream allocates but never calls; they
  exist so that released state dicts load strictly (their ``pe`` buffer is shared, as upstream).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Sinusoidal embedding (N,) -> (N, dim), float32. Frequencies exp(-ln(max_period) * i / (dim/2 - freq_shift))."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (N,), got shape {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half - freq_shift)
    args = timesteps[:, None].float() * torch.exp(exponent)[None, :] * scale
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalTimesteps(nn.Module):
    """Parameter-free module wrapper around :func:`timestep_embedding` (diffusers ``Timesteps``)."""

    def __init__(self, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0, max_period: float = 1e4):
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.max_period = max_period

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.dim, self.flip_sin_to_cos, self.freq_shift, self.max_period)


_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "mish": nn.Mish}


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class TimestepEmbedding(nn.Module):
    """Linear(in, dim) -> act -> Linear(dim, out); ``cond_proj`` (no bias) adds a projected condition to the input."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None,
                 cond_proj_dim: int | None = None, zero_init_cond_proj: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim else None
        if self.cond_proj is not None and zero_init_cond_proj:
            # upstream zero-initialises it so a fresh model ignores the step size until trained
            nn.init.zeros_(self.cond_proj.weight)
        self.act = make_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim or time_embed_dim)

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("TimestepEmbedding got a condition but was built without cond_proj_dim")
            sample = sample + self.cond_proj(condition)
        return self.linear_2(self.act(self.linear_1(sample)))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the last ``dim`` channels; ``inv_freq[i] = base^(-2i/dim)``.

    Channel pairing is half-split (channel i rotates with channel i + dim/2), the convention of the released
    models. ``apply(x, positions_dim)`` rotates ``x`` whose dimension ``positions_dim`` indexes positions 0..N-1.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim must be even, got {dim}")
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq)

    def cos_sin(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(n, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # (n, dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: torch.Tensor, seq_dim: int = -2) -> torch.Tensor:
        """Rotate ``x`` (..., N at ``seq_dim``, ..., dim): last dim is channels."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"RotaryEmbedding(dim={self.dim}) got last dim {x.shape[-1]}")
        seq_dim = seq_dim % x.ndim
        n = x.shape[seq_dim]
        cos, sin = self.cos_sin(n, x.device, x.dtype)
        shape = [1] * x.ndim
        shape[seq_dim] = n
        shape[-1] = self.dim
        cos, sin = cos.view(shape), sin.view(shape)
        return x * cos + rotate_half(x) * sin


class PositionalEncoding(nn.Module):
    """MDM sinusoidal table ``pe`` (max_len, 1, dim): sin at even channels, cos at odd. Unused upstream (dead)."""

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe[:, None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B, dim)
        return self.dropout(x + self.pe[: x.shape[0]])


class TimestepEmbedder(nn.Module):
    """MDM time embedder (pe lookup -> Linear -> SiLU -> Linear). Allocated but unused upstream (dead)."""

    def __init__(self, dim: int, sequence_pos_encoder: PositionalEncoding):
        super().__init__()
        self.sequence_pos_encoder = sequence_pos_encoder
        self.time_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.time_embed(self.sequence_pos_encoder.pe[timesteps]).permute(1, 0, 2)
