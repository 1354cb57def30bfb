"""benchmarks/oracle_timing.py's IMLE selection (the script itself needs a main job; its runs are in the README)."""

from __future__ import annotations

import torch

from benchmarks.oracle_timing import nearest_noise


def test_nearest_noise_picks_the_candidate_whose_output_is_closest_per_row():
    b, k = 5, 7
    target = torch.randn(b, 3, 1, 4, generator=torch.Generator().manual_seed(0))
    # a per-row input the generator repeats, large and distinct per row: a wrong repeat order changes the picks
    offset = 10.0 * torch.arange(b, dtype=torch.float32)[:, None].expand(b, 2) - 20.0
    seen = {}

    def generate(noise, rep):
        seen["rep"] = rep(offset)
        return 2.0 * noise + rep(offset).mean(1).view(-1, 1, 1, 1)

    chosen = nearest_noise(generate, target, k, torch.Generator().manual_seed(2))
    assert chosen.shape == target.shape
    assert all(torch.equal(seen["rep"].view(k, b, 2)[j], offset) for j in range(k))  # candidate j, rows in order
    cands = torch.randn(k * b, 3, 1, 4, generator=torch.Generator().manual_seed(2)).view(k, b, 3, 1, 4)
    for i in range(b):
        dist = [float((2.0 * cands[j, i] + offset[i].mean() - target[i]).pow(2).mean()) for j in range(k)]
        best = min(range(k), key=dist.__getitem__)
        assert torch.equal(chosen[i], cands[best, i]), (i, best)
    # k = 1 is the plain one-step generator: the single noise, whatever its output
    one = nearest_noise(generate, target, 1, torch.Generator().manual_seed(3))
    assert torch.equal(one, torch.randn(b, 3, 1, 4, generator=torch.Generator().manual_seed(3)))
