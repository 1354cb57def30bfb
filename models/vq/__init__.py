"""Per-body-part RVQ-VAE: encoder/decoder, EMA-reset residual VQ, loader for released and own checkpoints."""

from models.vq.rvqvae import RVQVAE, load_rvqvae

__all__ = ["RVQVAE", "load_rvqvae"]
