"""Issue 13 experiment (not used by any config): a DiffWave-style gated dilated-convolution denoiser.

    python benchmarks/oracle_timing.py --signal real --updates 12000 --steps 2,20 --probe \
        denoiser.target=benchmarks.conv_denoiser.GatedConvDenoiser

Same call as `models.denoiser.GestureDenoiser` (x (B,384,1,32), t, step size, seed (B,4,384), at_feat (B,32,3D)) and a
``null_cond_embed``; the reference's other constructor options are accepted and ignored, so the main job's
denoiser node can be pointed at it. Layers: input 1x1 conv of [x | seed latents at steps 0-3 | seed mask]; 8 gated
residual layers (tanh . sigmoid) of kernel-3 convolutions dilated 1, 2, 4, 8, 1, ..., with the condition of latent
step i projected into the gate at step i and the t/step-size embedding added before each convolution; summed skips
-> 1x1 convs (the last zero-initialised). Flow time t is scaled x1000 into its sinusoid. Results: README "What this
says".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.layers.embeddings import timestep_embedding


class GatedResidual(nn.Module):
    def __init__(self, ch: int, cond_dim: int, emb_dim: int, dilation: int, kernel: int = 3):
        super().__init__()
        self.emb = nn.Linear(emb_dim, ch)
        self.conv = nn.Conv1d(ch, 2 * ch, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.cond = nn.Conv1d(cond_dim, 2 * ch, 1)
        self.out = nn.Conv1d(ch, 2 * ch, 1)

    def forward(self, h, emb, cond):
        y = self.conv(h + self.emb(emb)[:, :, None]) + self.cond(cond)
        a, g = y.chunk(2, dim=1)
        res, skip = self.out(torch.tanh(a) * torch.sigmoid(g)).chunk(2, dim=1)
        return (h + res) / math.sqrt(2.0), skip


class GatedConvDenoiser(nn.Module):
    def __init__(self, input_dim: int = 128, latent_dim: int = 32, seq_len: int = 32, use_exp: bool = False,
                 conv_channels: int = 64, conv_layers: int = 8, dilation_cycle: int = 4, emb_dim: int = 128,
                 seed_frames: int = 4, time_scale: float = 1000.0, **_reference_options):
        super().__init__()
        self.input_dim, self.latent_dim, self.seq_len = input_dim, latent_dim, seq_len
        self.n_parts = 4 if use_exp else 3
        self.seed_frames, self.emb_dim, self.time_scale = seed_frames, emb_dim, time_scale
        c_in = self.n_parts * input_dim
        cond_dim = self.n_parts * latent_dim
        self.null_cond_embed = nn.Parameter(torch.zeros(seq_len, cond_dim))
        self.inp = nn.Conv1d(2 * c_in + 1, conv_channels, 1)  # [x | seed latents at 0..3 | seed mask]
        self.emb_mlp = nn.Sequential(nn.Linear(2 * emb_dim, 4 * emb_dim), nn.SiLU(), nn.Linear(4 * emb_dim, emb_dim))
        self.layers = nn.ModuleList(GatedResidual(conv_channels, cond_dim, emb_dim, 2 ** (i % dilation_cycle))
                                    for i in range(conv_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(conv_channels, conv_channels, 1), nn.ReLU(),
                                  nn.Conv1d(conv_channels, c_in, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x, timesteps, cond_time=None, seed=None, at_feat=None):
        b = x.shape[0]
        c_in = self.n_parts * self.input_dim
        h = x.reshape(b, c_in, self.seq_len)
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        scale = self.time_scale if torch.is_floating_point(t) else 1.0
        e_t = timestep_embedding(t.float() * scale, self.emb_dim, True, 0.0, 1e4)
        if cond_time is None:
            e_d = torch.zeros_like(e_t)
        else:
            d = torch.as_tensor(cond_time, device=x.device)
            d = d.expand(b) if d.ndim == 0 else d
            e_d = timestep_embedding(d.float() * self.time_scale, self.emb_dim, True, 0.0, 1e4)
        emb = self.emb_mlp(torch.cat([e_t, e_d], dim=1))
        s = seed.reshape(b, self.seed_frames, c_in).transpose(1, 2)
        seed_ch = torch.zeros(b, c_in, self.seq_len, device=x.device, dtype=x.dtype)
        seed_ch[:, :, : self.seed_frames] = s
        mask = torch.zeros(b, 1, self.seq_len, device=x.device, dtype=x.dtype)
        mask[:, :, : self.seed_frames] = 1.0
        h = self.inp(torch.cat([h, seed_ch, mask], dim=1))
        cond = at_feat.transpose(1, 2)
        skip = 0.0
        for layer in self.layers:
            h, sk = layer(h, emb, cond)
            skip = skip + sk
        out = self.head(skip / math.sqrt(len(self.layers)))
        return out.reshape(b, c_in, 1, self.seq_len)
