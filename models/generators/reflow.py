"""Shortcut-ReFlow: the shortcut objective on a trained model's own noise → sample couplings (spec §4.6).

A first shortcut model maps each noise draw ε to a sample x̂ along curved paths (independent pairs (ε, x₁) cross).
Refitting straight lines between the *coupled* pairs (ε, x̂) — the same flow and self-consistency losses as
`ShortcutObjective`, with ε given instead of drawn — straightens those paths, so 1-2 Euler steps land where many did.
The couplings come from ``trainers.reflow.make_couplings``; sampling is unchanged (`EulerShortcutSampler`, n = 2).

Upstream (v1 ``LSM.train_reflow``): no classifier-free condition dropout (its mask is computed but unused), so the
null embedding keeps the teacher's value; the condition features are the stored encoder output (encoder frozen).
Both are the defaults here; ``cond_drop_prob`` / ``consistency_null_prob`` turn dropout back on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.generators.base import NetFn
from models.generators.shortcut import ShortcutGenerator, ShortcutObjective


class ReflowObjective(ShortcutObjective):
    """`ShortcutObjective` on given couplings: ``noise`` is required (the teacher's starting noise for ``data``)."""

    needs_couplings = True  # trainers check it: only one that supplies coupled noise may train this objective

    def __init__(self, cond_drop_prob: float = 0.0, consistency_null_prob: float | None = 0.0, **kwargs: Any) -> None:
        super().__init__(cond_drop_prob=cond_drop_prob, consistency_null_prob=consistency_null_prob, **kwargs)

    def __call__(
        self,
        net: NetFn,
        data: Tensor,
        seed: Tensor,
        at_feat: Tensor,
        null_cond: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if noise is None:
            raise ValueError("ReflowObjective needs the coupled noise (the teacher's starting draw for each latent); "
                             "train it on couplings from trainers.reflow.make_couplings")  # fmt: skip
        return super().__call__(net, data, seed, at_feat, null_cond, generator, noise=noise)


class ReflowGenerator(ShortcutGenerator):
    """`ReflowObjective` for training, `EulerShortcutSampler` (default 2 steps, w = 2) for inference.

    Same state dict as `ShortcutGenerator` (``modality_encoder.*`` + ``denoiser.*``), so the released
    ``shortcut_reflow.bin`` loads into it, and a shortcut checkpoint initialises it.
    """

    objective_class = ReflowObjective
