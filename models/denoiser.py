"""GestureDenoiser: the velocity / x0 network shared by the shortcut (flow) and DDIM generators.

Input latent x (B, 384, 1, 32) = 3 parts x 128 channels over 32 latent steps (or already (B, 3, 128, 32)).
Pipeline (spec §4.2): per-part Linear(128->D) tokens (B, 3, 32, D); sinusoidal t (+ step size d through the
zero-initialised bias-free ``cond_proj``) -> MLP; seed latents (B, 4, 384) -> ``embed_text`` Linear(1536->D);
[emb | tokens] -> Linear(2D->D); RoPE over the 32 positions; 3 cross-attention blocks (width 3D) over the condition
``at_feat`` (B, 32, 3D); 8 spatial-temporal blocks; per-part Linear(D->128) -> (B, 384, 1, 32).

Attribute names reproduce the upstream state-dict keys, including modules upstream allocates but never calls
(``sequence_pos_encoder``, ``embed_timestep``), so released checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers.attention import JOINT_RESIDUALS, ROPE_MODES, CrossAttentionBlock, SpatialTemporalBlock
from models.layers.condition_cache import condition_projection
from models.layers.embeddings import (
    PositionalEncoding,
    RotaryEmbedding,
    SinusoidalTimesteps,
    TimestepEmbedder,
    TimestepEmbedding,
)

CROSS_ATTN_LAYOUTS = ("reference", "per_frame")


class InputProcess(nn.Module):
    def __init__(self, input_dim: int, latent_dim: int):
        super().__init__()
        self.poseEmbedding = nn.Linear(input_dim, latent_dim)  # noqa: N815 (upstream key name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.poseEmbedding(x)


class OutputProcess(nn.Module):
    def __init__(self, output_dim: int, latent_dim: int):
        super().__init__()
        self.poseFinal = nn.Linear(latent_dim, output_dim)  # noqa: N815 (upstream key name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.poseFinal(x)


class GestureDenoiser(nn.Module):
    """Latent gesture denoiser. Constructor arguments mirror the upstream config (`model.denoiser.params`).

    Extra options (defaults reproduce the released checkpoints):

    * ``cross_attn_layout``: ``"reference"`` reinterprets the contiguous part-major (B, P, T, D) buffer as
      (B, T, P*D) with a plain view, as upstream does, so each query row mixes 3 consecutive (part, frame) tokens;
      ``"per_frame"`` permutes to (B, T, P, D) first so each query row is one frame with all parts (the design the
      paper describes).
    * ``joint_residual``: ``"reference"`` (the rotated input is added inside the joint attention as well as by
      the block, counting the input twice) or ``"clean"`` (only the block residual); see ``JointAttention``.
    * ``n_parts``: 3 (upper, hands, lower+trans); 4 with ``use_exp`` (face).
    * ``seed_frames``: latent steps in the seed (4 = ``pre_frames``), giving Linear(seed_frames*P*input_dim -> D).
    * ``frame_cond``: the reference's only path from the condition to the motion tokens is cross-attention whose
      keys (``at_feat``) carry no positional information, so a token cannot tell *when* an audio event happens
      relative to its own frame. ``True`` adds a frame-aligned path: ``at_feat[:, i]`` is projected (zero-initialised
      Linear, ``frame_cond_proj``) and added to the tokens of frame i of every part. Off by default (the released
      checkpoints have no such weights).
    * ``rope``: ``"reference"`` rotates the token features themselves by their position (once before the
      cross-attention, and inside every joint attention), so the same audio event at two positions reaches the
      MLPs and the output as two different vectors; ``"qk"`` (needs ``joint_residual="clean"``) applies RoPE to the
      self-attentions' queries and keys only (standard RoPE); with ``cross_attn_layout="per_frame"`` as well the
      network has no absolute position, so a rule such as "a stroke where the onset is" can be the same at every
      position. Same parameters either way (released checkpoints load in both modes).
    """

    def __init__(
        self,
        input_dim: int = 128,
        latent_dim: int = 256,
        ff_size: int = 1024,
        num_layers: int = 8,
        num_heads: int = 4,
        dropout: float = 0.1,
        activation: str = "gelu",
        n_seed: int = 8,
        seq_len: int = 32,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
        cond_proj_dim: int | None = 256,
        use_exp: bool = False,
        num_cross_layers: int = 3,
        seed_frames: int = 4,
        cross_attn_layout: str = "reference",
        joint_residual: str = "reference",
        frame_cond: bool = False,
        rope: str = "reference",
    ):
        super().__init__()
        if cross_attn_layout not in CROSS_ATTN_LAYOUTS:
            raise ValueError(f"cross_attn_layout must be one of {CROSS_ATTN_LAYOUTS}, got {cross_attn_layout!r}")
        if joint_residual not in JOINT_RESIDUALS:
            raise ValueError(f"joint_residual must be one of {JOINT_RESIDUALS}, got {joint_residual!r}")
        if rope not in ROPE_MODES:
            raise ValueError(f"rope must be one of {ROPE_MODES}, got {rope!r}")
        if rope == "qk" and joint_residual != "clean":
            raise ValueError("rope='qk' needs joint_residual='clean' (the reference residual adds the rotated input)")
        if cond_proj_dim and cond_proj_dim != latent_dim:  # the step size is embedded with latent_dim channels
            raise ValueError(f"cond_proj_dim ({cond_proj_dim}) must equal latent_dim ({latent_dim}) (or be null: no "
                             "step-size input)")  # fmt: skip
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.n_parts = 4 if use_exp else 3
        self.seq_len = seq_len
        self.n_seed = n_seed  # kept for config compatibility; the seed width comes from seed_frames
        self.seed_frames = seed_frames
        self.cross_attn_layout = cross_attn_layout
        self.joint_residual = joint_residual
        self.rope = rope
        cond_dim = self.n_parts * latent_dim
        mlp_ratio = ff_size / latent_dim

        # learned unconditional condition, zero-initialised (classifier-free guidance / condition dropout)
        self.null_cond_embed = nn.Parameter(torch.zeros(seq_len, cond_dim))
        self.sequence_pos_encoder = PositionalEncoding(latent_dim, dropout)  # dead upstream; keys only
        self.cross_attn_blocks = nn.ModuleList(
            CrossAttentionBlock(cond_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=False, drop_path=dropout)
            for _ in range(num_cross_layers)
        )
        self.mytimmblocks = nn.ModuleList(
            SpatialTemporalBlock(latent_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=dropout,
                                 joint_residual=joint_residual, rope=rope)
            for _ in range(num_layers)
        )
        self.embed_timestep = TimestepEmbedder(latent_dim, self.sequence_pos_encoder)  # dead upstream; keys only
        self.embed_text = nn.Linear(seed_frames * self.n_parts * input_dim, latent_dim)  # seed-latent embedding
        self.output_process = OutputProcess(input_dim, latent_dim)
        self.rel_pos = RotaryEmbedding(latent_dim)
        self.input_process = InputProcess(input_dim, latent_dim)
        self.input_process2 = nn.Linear(2 * latent_dim, latent_dim)
        self.time_proj = SinusoidalTimesteps(latent_dim, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(latent_dim, latent_dim, act_fn=activation,
                                                cond_proj_dim=cond_proj_dim, zero_init_cond_proj=True)
        self.frame_cond_proj = None
        if frame_cond:
            self.frame_cond_proj = nn.Linear(cond_dim, cond_dim)
            nn.init.zeros_(self.frame_cond_proj.weight)
            nn.init.zeros_(self.frame_cond_proj.bias)

    # ----------------------------------------------------------------------------------------------- helpers
    def _batch_times(self, t: torch.Tensor | float | int, b: int, device: torch.device, name: str) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"{name} must be a scalar or shape ({b},), got {tuple(t.shape)}")
        return t

    def embed_time(self, timesteps: torch.Tensor, cond_time: torch.Tensor | None) -> torch.Tensor:
        """(B,) t and optional (B,) step size -> (B, D). Timesteps are used raw (float flow time or int step)."""
        t_emb = self.time_proj(timesteps)
        c_emb = None if cond_time is None else self.time_proj(cond_time)
        return self.time_embedding(t_emb, c_emb)

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p, c = self.n_parts, self.input_dim
        if x.ndim == 4 and x.shape[1:] == (p * c, 1, self.seq_len):
            x = x.reshape(b, p, c, self.seq_len)
        elif x.ndim != 4 or x.shape[1:] != (p, c, self.seq_len):
            raise ValueError(
                f"x must be (B, {p * c}, 1, {self.seq_len}) or (B, {p}, {c}, {self.seq_len}), got {tuple(x.shape)}")
        return self.input_process(x.permute(0, 1, 3, 2))  # (B, P, T, D)

    def _cross_attend(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, p, t, d = h.shape
        if self.cross_attn_layout == "reference":
            # upstream quirk: view the part-major buffer as (B, T, P*D) without permuting (row r <-> tokens 3r..3r+2)
            q = h.contiguous().view(b, t, p * d)
        else:
            q = h.permute(0, 2, 1, 3).reshape(b, t, p * d)
        for blk in self.cross_attn_blocks:
            q = blk(q, cond)
        if self.cross_attn_layout == "reference":
            return q.view(b, p, t, d)
        return q.view(b, t, p, d).permute(0, 2, 1, 3)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float | int,
        cond_time: torch.Tensor | float | None = None,
        seed: torch.Tensor | None = None,
        at_feat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B,384,1,32) or (B,3,128,32); timesteps (B,) or scalar, float in [0,1] or int step; cond_time (B,)
        step size or None; seed (B, 4, 384); at_feat (B, 32, 768) (use ``null_cond_embed`` for unconditional).
        Returns (B, 384, 1, 32)."""
        if seed is None or at_feat is None:
            raise ValueError("GestureDenoiser.forward needs seed (B, 4, 384) and at_feat (B, 32, 768)")
        b = x.shape[0]
        h = self._to_tokens(x)
        p, t, d = h.shape[1:]
        timesteps = self._batch_times(timesteps, b, x.device, "timesteps")
        if cond_time is not None:
            cond_time = self._batch_times(cond_time, b, x.device, "cond_time")
        emb = self.embed_time(timesteps, cond_time)
        seed_in = self.embed_text.in_features
        if seed.shape[0] != b or seed[0].numel() != seed_in:
            raise ValueError(f"seed must be (B={b}, {self.seed_frames}, {seed_in // self.seed_frames}), "
                             f"got {tuple(seed.shape)}")
        emb = emb + self.embed_text(seed.reshape(b, -1))
        cond_dim = self.null_cond_embed.shape[1]
        if at_feat.shape != (b, self.seq_len, cond_dim):
            raise ValueError(f"at_feat must be (B={b}, {self.seq_len}, {cond_dim}), got {tuple(at_feat.shape)}")

        h = torch.cat([emb[:, None, None, :].expand(b, p, t, d), h], dim=-1)  # [emb | tokens], as upstream
        h = self.input_process2(h)
        if self.frame_cond_proj is not None:  # (B, T, P*D) -> (B, P, T, D): condition of frame i to frame i
            h = h + condition_projection(self.frame_cond_proj, at_feat).view(b, t, p, d).permute(0, 2, 1, 3)
        if self.rope == "reference":
            h = self.rel_pos(h, seq_dim=2)
        h = self._cross_attend(h, at_feat)
        for blk in self.mytimmblocks:
            h = blk(h)
        out = self.output_process(h)  # (B, P, T, input_dim)
        return out.permute(0, 1, 3, 2).reshape(b, p * self.input_dim, 1, t)
