"""The one smooth-random-motion helper of the tests (poses, joint positions, any trailing shape)."""

from __future__ import annotations

import numpy as np


def smooth_random_motion(shape: tuple[int, ...], seed: int, step: float = 0.02, offset: float = 0.0) -> np.ndarray:
    """A random walk along the first (time) axis: cumulative sum of N(0, step) increments, plus one constant
    N(0, offset) pose per channel (drawn after the increments) when ``offset`` > 0. float64.

    Consecutive frames differ by ~``step``, so at 30 fps it reads as smooth motion, e.g. axis-angle poses
    ``smooth_random_motion((T, 165), seed, 0.02, offset=0.1)`` or joint positions ``((T, 55, 3), seed, 0.01)``."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0.0, step, shape), axis=0)
    if offset > 0:
        x = x + rng.normal(0.0, offset, shape[1:])
    return x


def random_rvq_files(parts, folder, seed: int) -> dict:
    """Tiny random RVQ-VAE checkpoints (code_dim 128, spread codebooks so decoding is not constant), one per part:
    {part: path}. Part i is seeded with ``seed + i``."""
    import torch

    from geometry.skeleton import part_dim
    from models.vq.rvqvae import RVQVAE
    from utils.io import save_torch

    paths = {}
    for i, part in enumerate(parts):
        torch.manual_seed(seed + i)
        m = RVQVAE(part_dim(part), nb_code=16, code_dim=128, width=16, depth=1, num_quantizers=2)
        with torch.no_grad():  # codebooks start at zero
            for layer in m.quantizer.layers:
                layer.codebook.normal_(0.0, 0.5)
        m.part = part
        paths[part] = str(save_torch(m.checkpoint_payload(), folder / f"{part}.pt"))
    return paths
