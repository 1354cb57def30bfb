"""Residual VQ: a stack of EMA-reset quantisers, each quantising what the previous ones left (MoMask layout).

Difference from the reference, on purpose: upstream updates the residual in place (``residual -= q.detach()``),
which overwrites the caller's tensor (e.g. the latent passed to ``latent2origin``). Here the residual is a new
tensor each layer; values and gradients are the same.
"""

from __future__ import annotations

import torch
from torch import nn

from models.vq.quantizer import QuantizeEMAReset


class ResidualVQ(nn.Module):
    def __init__(self, num_quantizers: int = 6, nb_code: int = 1024, code_dim: int = 128, mu: float = 0.99,
                 shared_codebook: bool = False, quantize_dropout_prob: float = 0.2,
                 quantize_dropout_cutoff_index: int = 0) -> None:
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        if not 0 <= quantize_dropout_cutoff_index < num_quantizers or quantize_dropout_prob < 0:
            raise ValueError(f"bad quantize dropout settings: cutoff {quantize_dropout_cutoff_index}, "
                             f"prob {quantize_dropout_prob}, num_quantizers {num_quantizers}")
        self.num_quantizers = int(num_quantizers)
        self.nb_code = int(nb_code)
        self.code_dim = int(code_dim)
        if shared_codebook:
            layer = QuantizeEMAReset(nb_code, code_dim, mu)
            self.layers = nn.ModuleList([layer for _ in range(num_quantizers)])
        else:
            self.layers = nn.ModuleList([QuantizeEMAReset(nb_code, code_dim, mu) for _ in range(num_quantizers)])
        self.quantize_dropout_prob = float(quantize_dropout_prob)
        self.quantize_dropout_cutoff_index = int(quantize_dropout_cutoff_index)

    # ----- EMA state (not in state_dict; see quantizer.py) -------------------------------------------------------
    def ema_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {str(i): layer.ema_state_dict() for i, layer in enumerate(self.layers)}

    def load_ema_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        if len(state) != len(self.layers):
            raise KeyError(f"quantiser EMA state has {len(state)} layers, model has {len(self.layers)}")
        for i, layer in enumerate(self.layers):
            layer.load_ema_state_dict(state[str(i)])

    # ----- look-ups ----------------------------------------------------------------------------------------------
    @property
    def codebooks(self) -> torch.Tensor:
        """Projected codebooks (Q, nb_code, C): what the quantiser actually looks up."""
        return torch.stack([layer.projected_codebook() for layer in self.layers], dim=0)

    @property
    def raw_codebooks(self) -> torch.Tensor:
        """Codebook buffers before ``embedding_proj`` (Q, nb_code, C)."""
        return torch.stack([layer.codebook for layer in self.layers], dim=0)

    def get_codes_from_indices(self, indices: torch.Tensor, raw_codebook: bool = False) -> torch.Tensor:
        """indices (B, T, q<=Q), -1 = dropped layer -> per-layer codes (Q, B, T, C), zeros where dropped.

        ``raw_codebook=True`` reproduces a reference defect: upstream's look-up (MoMask's ResidualVQ, unchanged)
        reads the codebook buffers *without* ``embedding_proj``, although quantisation uses the projected codes, so
        its ``forward_decoder(encode(x))`` does not reproduce ``forward(x)``. Default: projected codes (consistent).
        """
        if indices.shape[-1] > self.num_quantizers:
            raise ValueError(f"indices have {indices.shape[-1]} layers, the RVQ has {self.num_quantizers}")
        if indices.shape[-1] < self.num_quantizers:  # coarse codes: missing layers count as dropped
            pad = indices.new_full((*indices.shape[:-1], self.num_quantizers - indices.shape[-1]), -1)
            indices = torch.cat([indices, pad], dim=-1)
        books = self.raw_codebooks if raw_codebook else self.codebooks
        codes = []
        for q in range(self.num_quantizers):
            idx = indices[..., q].long()
            dropped = idx < 0
            code = books[q][idx.clamp(min=0)]
            codes.append(code.masked_fill(dropped.unsqueeze(-1), 0.0))
        return torch.stack(codes, dim=0)

    def get_codebook_entry(self, indices: torch.Tensor, raw_codebook: bool = False) -> torch.Tensor:
        """indices (B, T, q) -> summed latent (B, C, T)."""
        return self.get_codes_from_indices(indices, raw_codebook).sum(0).permute(0, 2, 1)

    # ----- quantisation ------------------------------------------------------------------------------------------
    def draw_dropout_index(self) -> int:
        """Layers with index > the returned k are skipped; k = num_quantizers means no dropout. Uses the torch RNG
        (saved by checkpoints), with probability quantize_dropout_prob, k uniform in [cutoff, Q-1]."""
        if float(torch.rand(())) >= self.quantize_dropout_prob:
            return self.num_quantizers
        return int(torch.randint(self.quantize_dropout_cutoff_index, self.num_quantizers, ()))

    def forward(self, x: torch.Tensor, sample_codebook_temp: float | None = None, force_dropout_index: int = -1,
                eval_mode: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, T) -> (quantised sum (B, C, T), indices (B, T, Q) with -1 for dropped layers,
        commit loss mean over active layers, perplexity mean over active layers).

        ``eval_mode`` (default ``not self.training``): argmax, no dropout, no EMA update.
        ``force_dropout_index`` >= 0 keeps only layers 0..k (any mode).
        """
        if eval_mode is None:
            eval_mode = not self.training
        last = self.num_quantizers if eval_mode else self.draw_dropout_index()
        if force_dropout_index >= 0:
            last = force_dropout_index
        quantized_out = torch.zeros_like(x, dtype=torch.float32)
        residual = x
        indices, losses, perplexities = [], [], []
        b, _, t = x.shape
        for q, layer in enumerate(self.layers):
            if q > last:
                indices.append(torch.full((b, t), -1, dtype=torch.long, device=x.device))
                continue
            quantized, idx, loss, perplexity = layer(residual, temperature=sample_codebook_temp, eval_mode=eval_mode)
            residual = residual - quantized.detach()
            quantized_out = quantized_out + quantized
            indices.append(idx)
            losses.append(loss)
            perplexities.append(perplexity)
        return (quantized_out, torch.stack(indices, dim=-1), sum(losses) / len(losses),
                sum(perplexities) / len(perplexities))

    @torch.no_grad()
    def quantize(self, x: torch.Tensor, return_latent: bool = False):
        """Eval-mode quantisation of x (B, C, T) on all layers -> indices (B, T, Q) [, per-layer codes (Q, B, C, T)]."""
        residual = x
        indices, codes = [], []
        for layer in self.layers:
            quantized, idx, _, _ = layer(residual, eval_mode=True)
            residual = residual - quantized
            indices.append(idx)
            codes.append(quantized)
        code_idx = torch.stack(indices, dim=-1)
        return (code_idx, torch.stack(codes, dim=0)) if return_latent else code_idx
