"""Attention building blocks of the gesture denoiser (state-dict keys as upstream; compute via fused SDPA).

* ``Mlp`` (fc1 -> GELU -> fc2), ``DropPath`` (stochastic depth, per sample).
* ``CrossAttention`` / ``CrossAttentionBlock``: pre-LN timm-style cross-attention of tokens over a condition.
* ``MultiheadSelfAttention``: self-attention with ``nn.MultiheadAttention``'s parameter names (``in_proj_weight``,
  ``in_proj_bias``, ``out_proj``) so released checkpoints load, computed with ``scaled_dot_product_attention``.
* ``JointAttention``: temporal attention (per part, over frames) then spatial attention (per frame, over parts).
* ``SpatialTemporalBlock``: pre-LN ``JointAttention`` + residual, pre-LN MLP + residual.

Every attention goes through `scaled_dot_product`: fused SDPA, or inside ``with math_attention():`` the explicit
softmax(QKᵀ/√d)V. The fused CPU kernel has no forward-mode AD formula, so ``torch.func.jvp`` through the denoiser
(the MeanFlow objective) runs under `math_attention`; both paths agree within float tolerance.

The cross-attention's key/value projection of the condition goes through `condition_projection`, so a sampler
computes it once per window (`models.layers.condition_cache`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.condition_cache import condition_projection
from models.layers.embeddings import RotaryEmbedding

JOINT_RESIDUALS = ("reference", "clean")
# "reference": RoPE rotates the features themselves (q = k = v = the rotated input), as the released models do;
# "qk": standard RoPE (Su et al. 2021), only queries and keys are rotated, so attention sees relative positions and
# the features carry no rotation by position.
ROPE_MODES = ("reference", "qk")

_MATH_ATTENTION: contextvars.ContextVar[bool] = contextvars.ContextVar("math_attention", default=False)


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Inside this block every attention of these layers is the explicit softmax(QKᵀ/√d)V (forward-AD capable)."""
    token = _MATH_ATTENTION.set(True)
    try:
        yield
    finally:
        _MATH_ATTENTION.reset(token)


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ / √d) v over (..., N, d) inputs: fused SDPA, or the explicit math inside `math_attention`."""
    if not _MATH_ATTENTION.get():
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    weights = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


class DropPath(nn.Module):
    """Zero whole samples' residual branches with probability ``p`` in training (rescaled by 1/(1-p))."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, H, N, C/H)."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    """Queries from ``x`` (B, N, C), keys/values from ``context`` (B, M, C); q/kv without bias, proj with bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(x), self.num_heads)
        k, v = condition_projection(self.kv, context).chunk(2, dim=-1)
        k, v = _heads(k.contiguous(), self.num_heads), _heads(v.contiguous(), self.num_heads)
        out = scaled_dot_product(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(_merge(out)))


class CrossAttentionBlock(nn.Module):
    """x + DropPath(CrossAttn(LN(x), context)); x + DropPath(MLP(LN(x))). The context is not normalised."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.cross_attn(self.norm1(x), context))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MultiheadSelfAttention(nn.Module):
    """Batch-first self-attention with ``nn.MultiheadAttention`` parameter names and init; fused SDPA compute."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, C) -> q, k, v each (B, H, N, C/H)."""
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return tuple(_heads(t.contiguous(), self.num_heads) for t in (q, k, v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = scaled_dot_product(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(_merge(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.project(x))


class JointAttention(nn.Module):
    """Temporal attention (each part over its frames) then spatial attention (each frame over the parts).

    Input/output (B, P, T, C). ``residual``:

    * ``"reference"`` (released checkpoints): RoPE (over each head's channels) rotates the *input* of each
      sub-attention; q = k = v = the rotated input, and each sub-attention returns rotated input + attention. The
      caller's block adds its own residual on top, so the input is counted twice.
    * ``"clean"``: the same rotated-input attention, but the module returns only the two attention updates
      (temporal update + spatial update, the spatial one computed on input + temporal update), so the block's
      residual is the only skip path.

    ``rope="qk"`` (needs ``residual="clean"``) rotates only each sub-attention's queries and keys (standard RoPE);
    values and updates carry no position-dependent rotation.
    """

    def __init__(self, dim: int, num_heads: int, residual: str = "reference", attn_drop: float = 0.0,
                 rope: str = "reference"):
        super().__init__()
        if residual not in JOINT_RESIDUALS:
            raise ValueError(f"joint_residual must be one of {JOINT_RESIDUALS}, got {residual!r}")
        if rope not in ROPE_MODES:
            raise ValueError(f"rope must be one of {ROPE_MODES}, got {rope!r}")
        if rope == "qk" and residual != "clean":
            raise ValueError("rope='qk' needs residual='clean' (the reference residual adds the rotated input)")
        self.residual = residual
        self.rope = rope
        self.num_heads = num_heads
        self.temporal_attention = MultiheadSelfAttention(dim, num_heads, dropout=attn_drop)
        self.spatial_attention = MultiheadSelfAttention(dim, num_heads, dropout=attn_drop)
        self.temporal_pos = RotaryEmbedding(dim // num_heads)
        self.spatial_pos = RotaryEmbedding(dim // num_heads)

    def _rotate(self, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        """x (N, L, C): rotate each head's C/H channels by position along L."""
        n, length, c = x.shape
        return rope(x.view(n, length, self.num_heads, c // self.num_heads), seq_dim=1).view(n, length, c)

    def _attend_qk(self, x: torch.Tensor, attn: MultiheadSelfAttention, rope: RotaryEmbedding) -> torch.Tensor:
        q, k, v = attn.project(x)  # (N, H, L, C/H)
        return attn.attend(rope(q, seq_dim=2), rope(k, seq_dim=2), v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, t, c = x.shape
        if self.rope == "qk":
            upd_t = self._attend_qk(x.reshape(b * p, t, c), self.temporal_attention, self.temporal_pos)
            upd_t = upd_t.view(b, p, t, c)
            xs = (x + upd_t).transpose(1, 2).reshape(b * t, p, c)
            upd_s = self._attend_qk(xs, self.spatial_attention, self.spatial_pos)
            return upd_t + upd_s.view(b, t, p, c).transpose(1, 2)
        xt = self._rotate(x.reshape(b * p, t, c), self.temporal_pos)
        upd_t = self.temporal_attention(xt)
        if self.residual == "reference":
            h = (xt + upd_t).view(b, p, t, c)
        else:
            h = x + upd_t.view(b, p, t, c)
        xs = self._rotate(h.transpose(1, 2).reshape(b * t, p, c), self.spatial_pos)
        upd_s = self.spatial_attention(xs)
        if self.residual == "reference":
            return (xs + upd_s).view(b, t, p, c).transpose(1, 2)
        return upd_t.view(b, p, t, c) + upd_s.view(b, t, p, c).transpose(1, 2)


class SpatialTemporalBlock(nn.Module):
    """x + DropPath(JointAttention(norm2(x))); x + DropPath(Mlp(norm3(x))).

    Key naming follows upstream: the attention pre-norm is ``norm2``, the MLP pre-norm ``norm3``; ``norm1`` is
    allocated but unused (kept so released state dicts load strictly).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 joint_residual: str = "reference", rope: str = "reference"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # unused, as upstream
        self.spatial_temporal_attn = JointAttention(dim, num_heads, residual=joint_residual, rope=rope)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.spatial_temporal_attn(self.norm2(x)))
        return x + self.drop_path(self.mlp(self.norm3(x)))
