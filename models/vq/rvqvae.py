"""Per-body-part RVQ-VAE (GestureLSM ``models.vq.model.RVQVAE``) and the checkpoint loader.

Shapes: input (B, T, D) -> encoder latent (B, T/4, 128) -> 6-layer residual VQ -> decoder -> (B, T, D).
The generator works in the continuous latent (``map2latent``) and snaps to codes only when decoding
(``latent2origin``).
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn

from geometry.skeleton import check_part, part_dim
from models.vq.encdec import Decoder, Encoder
from models.vq.residual_vq import ResidualVQ
from utils.io import load_torch

# Gumbel temperature used by the reference's training forward (``RVQVAE.forward`` passes 0.5).
GUMBEL_TEMPERATURE = 0.5


class RVQVAE(nn.Module):
    def __init__(self, input_width: int, nb_code: int = 1024, code_dim: int = 128, width: int = 512,
                 down_t: int = 2, stride_t: int = 2, depth: int = 3, dilation_growth_rate: int = 3,
                 activation: str = "relu", norm: str | None = None, num_quantizers: int = 6,
                 quantize_dropout_prob: float = 0.2, mu: float = 0.99, shared_codebook: bool = False,
                 quantize_dropout_cutoff_index: int = 0, dropout: float = 0.2,
                 gumbel_temperature: float = GUMBEL_TEMPERATURE) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            input_width=int(input_width), nb_code=int(nb_code), code_dim=int(code_dim), width=int(width),
            down_t=int(down_t), stride_t=int(stride_t), depth=int(depth),
            dilation_growth_rate=int(dilation_growth_rate), activation=str(activation), norm=norm,
            num_quantizers=int(num_quantizers), quantize_dropout_prob=float(quantize_dropout_prob), mu=float(mu),
            shared_codebook=bool(shared_codebook), quantize_dropout_cutoff_index=int(quantize_dropout_cutoff_index),
            dropout=float(dropout), gumbel_temperature=float(gumbel_temperature))
        self.input_width = int(input_width)
        self.code_dim = int(code_dim)
        self.num_code = int(nb_code)
        self.down_factor = int(stride_t) ** int(down_t)
        self.gumbel_temperature = float(gumbel_temperature)
        arch = dict(down_t=down_t, stride_t=stride_t, width=width, depth=depth,
                    dilation_growth_rate=dilation_growth_rate, activation=activation, norm=norm, dropout=dropout)
        self.encoder = Encoder(input_width, code_dim, **arch)
        self.decoder = Decoder(input_width, code_dim, **arch)
        self.quantizer = ResidualVQ(num_quantizers=num_quantizers, nb_code=nb_code, code_dim=code_dim, mu=mu,
                                    shared_codebook=shared_codebook, quantize_dropout_prob=quantize_dropout_prob,
                                    quantize_dropout_cutoff_index=quantize_dropout_cutoff_index)
        self.part: str | None = None

    # ----- helpers -----------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_width:
            raise ValueError(f"RVQVAE expects (B, T, {self.input_width}) input, got {tuple(x.shape)}")
        if x.shape[1] % self.down_factor:
            raise ValueError(f"sequence length {x.shape[1]} is not a multiple of the down-sampling factor "
                             f"{self.down_factor}")
        # (B, T, D) -> (B, D, T), float32 (upstream casts too: float64 trans_v statistics reach it as float64).
        return x.permute(0, 2, 1).float()

    def _check_latent(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 3 or z.shape[-1] != self.code_dim:
            raise ValueError(f"RVQVAE latent must be (B, T', {self.code_dim}), got {tuple(z.shape)}")
        return z.permute(0, 2, 1).float()

    def ema_state_dict(self) -> dict:
        """Quantiser EMA statistics and init flags (kept out of state_dict() to keep the released layout)."""
        return self.quantizer.ema_state_dict()

    def load_ema_state_dict(self, state: dict) -> None:
        self.quantizer.load_ema_state_dict(state)

    def checkpoint_payload(self) -> dict[str, Any]:
        """What our checkpoints store for the model: ``net`` (the released layout, so upstream code can load it too),
        the constructor config, the full quantiser EMA state and the body part."""
        return {"net": self.state_dict(), "rvq_config": dict(self.config), "quantizer_ema": self.ema_state_dict(),
                "part": self.part}

    # ----- API ---------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (reconstruction (B, T, D), commit loss, perplexity). Training mode: Gumbel selection at
        temperature 0.5, quantize dropout, EMA updates; eval mode: argmax on all layers."""
        x_enc = self.encoder(self._check_input(x))
        x_q, _, commit_loss, perplexity = self.quantizer(x_enc, sample_codebook_temp=self.gumbel_temperature)
        return self.decoder(x_q), commit_loss, perplexity

    def map2latent(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latent (B, T/4, code_dim)."""
        return self.encoder(self._check_input(x)).permute(0, 2, 1)

    def latent2origin(self, z: torch.Tensor, straight_through: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, T', code_dim) -> (reconstruction (B, 4T', D), commit loss, perplexity). Quantisation is always
        eval-mode (argmax, all layers, no EMA update); ``z`` is not modified (upstream overwrites it in place).
        ``straight_through``: the gradient reaches ``z`` as if quantisation were the identity (training losses on
        decoded motion); the forward value is the same up to rounding."""
        z_c = self._check_latent(z)
        z_q, _, commit_loss, perplexity = self.quantizer(z_c, eval_mode=True)
        if straight_through:  # identity gradient (the quantiser's own path would give num_quantizers x identity)
            z_q = z_c + (z_q - z_c).detach()
        return self.decoder(z_q), commit_loss, perplexity

    def quantised(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T', code_dim) -> its eval-mode quantisation (B, T', code_dim) (argmax, all layers, no EMA update),
        without gradient: the codes a decode of ``z`` uses."""
        with torch.no_grad():
            return self.quantizer(self._check_latent(z), eval_mode=True)[0].permute(0, 2, 1)

    def reconstruct(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode quantisation in one pass: {'rec' (B, T, D), 'indices' (B, T/4, Q), 'commit_loss',
        'perplexity'} (what validation needs: reconstruction and code usage together)."""
        x_enc = self.encoder(self._check_input(x))
        x_q, idx, commit_loss, perplexity = self.quantizer(x_enc, eval_mode=True)
        return {"rec": self.decoder(x_q), "indices": idx, "commit_loss": commit_loss, "perplexity": perplexity}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (code indices (B, T/4, Q), per-layer quantised vectors (Q, B, C, T/4)). Eval-mode
        quantisation (upstream would EMA-update the codebook if called in training mode)."""
        return self.quantizer.quantize(self.encoder(self._check_input(x)), return_latent=True)

    def forward_decoder(self, code_idx: torch.Tensor, reference_raw_codebook: bool = False) -> torch.Tensor:
        """Code indices (B, T', q<=Q; -1 = dropped) -> reconstruction (B, 4T', D): decode the sum of the codes.

        By default the codes are the projected ones the quantiser selects, so ``forward_decoder(encode(x)[0])``
        equals the eval-mode ``forward(x)`` reconstruction. ``reference_raw_codebook=True`` reproduces upstream,
        which sums the *unprojected* codebook rows here (see ResidualVQ.get_codes_from_indices).
        """
        latent = self.quantizer.get_codebook_entry(code_idx, raw_codebook=reference_raw_codebook)
        return self.decoder(latent)


# ----- loading ---------------------------------------------------------------------------------------------------

def _infer_config(sd: dict[str, torch.Tensor], path: str) -> dict[str, Any]:
    """Architecture of a released ``{'net': sd}`` file from its tensor shapes (dilation/activation are not stored in
    the file; the reference values 3/relu are assumed, overridable)."""
    try:
        w0 = sd["encoder.model.0.weight"]
        cb = sd["quantizer.layers.0.codebook"]
    except KeyError as e:
        raise KeyError(f"{path}: not an RVQ-VAE state dict (missing {e.args[0]!r})") from None

    def count(pattern: str) -> int:
        return len({m.group(1) for k in sd if (m := re.match(pattern, k))})

    return dict(input_width=int(w0.shape[1]), width=int(w0.shape[0]), nb_code=int(cb.shape[0]),
                code_dim=int(cb.shape[1]), down_t=count(r"encoder\.model\.(\d+)\.0\.weight$"),
                stride_t=int(sd["encoder.model.2.0.weight"].shape[-1]) // 2,  # kernel = 2 * stride
                depth=count(r"encoder\.model\.2\.1\.model\.(\d+)\.conv1\.weight$"),
                num_quantizers=count(r"quantizer\.layers\.(\d+)\.codebook$"))


def load_rvqvae(path: str | os.PathLike, part: str | None = None, map_location: str | torch.device = "cpu",
                **overrides: Any) -> RVQVAE:
    """Load an RVQ-VAE, in eval mode on ``map_location``, from a released ``{'net': state_dict}`` file
    (``net_300000_upper.pth`` ...) or from one of our checkpoints (``{'net', 'rvq_config', 'quantizer_ema', ...}``,
    e.g. a trainer's best.pt / last.pt). Strict loading.

    ``part`` (upper/hands/lower/lower_trans/face) checks the input width against geometry.skeleton. ``overrides`` set
    constructor arguments (e.g. ``dilation_growth_rate``) the file cannot tell.
    """
    path = str(path)
    ckpt = load_torch(path, map_location="cpu")
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise KeyError(f"{path}: expected a dict with key 'net' (RVQ-VAE checkpoint), got {keys}")
    sd = ckpt["net"]
    cfg = dict(ckpt["rvq_config"]) if "rvq_config" in ckpt else _infer_config(sd, path)
    cfg.update(overrides)
    file_part = ckpt.get("part")
    if part is not None:
        check_part(part)
        if file_part is not None and file_part != part:
            raise ValueError(f"{path}: checkpoint is for part {file_part!r}, requested {part!r}")
        if cfg["input_width"] != part_dim(part):
            raise ValueError(f"{path}: input width {cfg['input_width']} does not match part {part!r} "
                             f"({part_dim(part)} dims)")
    model = RVQVAE(**cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{path}: state dict does not match RVQVAE({cfg}): {e}") from e
    if "quantizer_ema" in ckpt:  # our checkpoints carry the full quantiser state; released files only codebooks
        model.load_ema_state_dict(ckpt["quantizer_ema"])
    model.part = part or file_part
    return model.to(torch.device(map_location)).eval()
