"""benchmarks/conv_denoiser.py (issue 13 experiment): the denoiser call contract and frame locality."""

from __future__ import annotations

import torch

from benchmarks.conv_denoiser import GatedConvDenoiser


def test_contract_zero_init_and_locality():
    torch.manual_seed(0)
    net = GatedConvDenoiser(latent_dim=32, frame_cond=True)  # a reference option, accepted and ignored
    x, seed, at = torch.randn(2, 384, 1, 32), torch.randn(2, 4, 384), torch.randn(2, 32, 96)
    assert net.null_cond_embed.shape == (32, 96)
    out = net(x, torch.rand(2), torch.rand(2), seed, at)
    assert out.shape == (2, 384, 1, 32) and not out.any()  # zero-initialised head
    torch.nn.init.normal_(net.head[-1].weight)
    t, d = torch.rand(2), torch.rand(2)
    base = net(x, t, d, seed, at)
    at2 = at.clone()
    at2[:, 31] += 1.0  # change the condition of the last latent step only
    diff = (net(x, t, d, seed, at2) - base).abs().amax(dim=(0, 1, 2))
    reach = 1 + 2 * 2 * (1 + 2 + 4 + 8)  # receptive field of 8 layers, kernel 3, dilations 1,2,4,8 twice
    assert diff[31] > 0 and torch.all(diff[: 32 - (reach + 1) // 2] == 0)  # far steps untouched
