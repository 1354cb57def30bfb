"""benchmarks/flow_edit.py: the sampler that starts the flow at t0 from given latents (issue 13 diagnostic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.flow_edit import EditSampler, curve_correlation, fine_part, speed_curve, window_latents
from models.generators.base import null_condition
from models.generators.shortcut import EulerShortcutSampler


def _net(x, t, d, seed, cond):
    """A toy field that depends on every input per row (t scales, d shifts, so swapping them changes the result)."""
    b = x.shape[0]
    row = lambda v: v.reshape(b, -1).mean(1).view(b, 1, 1, 1)  # noqa: E731
    return -x * (1.0 + row(t)) + 3.0 * row(d) + row(seed) + row(cond)


def _inputs(b: int = 2, c: int = 3, n: int = 8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, c, 1, n, generator=g), torch.randn(b, 4, c, generator=g), torch.randn(b, n, 5, generator=g),
            torch.randn(n, 5, generator=g))  # fmt: skip


def test_window_latents_slices_holds_the_last_latent_and_lays_out_for_the_denoiser():
    z = torch.arange(30, dtype=torch.float32).view(1, 10, 3)  # latent i = [3i, 3i+1, 3i+2]
    w = window_latents(z, 2, 4)
    assert w.shape == (1, 3, 1, 4)
    assert torch.equal(w[0, :, 0].T, z[0, 2:6])
    tail = window_latents(z, 8, 4)[0, :, 0].T  # latents 8, 9, then 9 held
    assert torch.equal(tail, z[0, [8, 9, 9, 9]])
    with pytest.raises(ValueError, match="past the 10 latents"):
        window_latents(z, 10, 4)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_t0_zero_is_the_plain_sampler_bit_for_bit(guidance):
    noise, seed, cond, null = _inputs()
    base = EulerShortcutSampler(n_steps=2, guidance_scale=guidance)
    plain = base(_net, noise, seed, cond, null)
    edit = EditSampler(base, torch.randn(2, 20, 3), 0.0, stride=7)(_net, noise, seed, cond, null)
    assert torch.equal(edit.latents, plain.latents) and (edit.nfe, edit.nfe_rows) == (plain.nfe, plain.nfe_rows)


def test_t0_one_returns_each_windows_latents_without_a_network_call():
    noise, seed, cond, null = _inputs(b=1)
    z = torch.randn(1, 20, 3)
    calls = []
    edit = EditSampler(EulerShortcutSampler(), z, 1.0, stride=7)
    for k in range(3):
        out = edit(lambda *a: calls.append(1), noise, seed, cond, null)
        assert torch.equal(out.latents, window_latents(z, 7 * k, 8)) and out.nfe == 0
    assert not calls
    edit.reset(z * 2)  # a new file starts at window 0 again
    assert torch.equal(edit(_net, noise, seed, cond, null).latents, window_latents(z * 2, 0, 8))


def test_intermediate_t0_is_euler_from_the_mixed_start():
    """t0 = 0.2, two steps: x = 0.2 z + 0.8 ε, then Euler at t = 0.2 and 0.6 with step-size input d = 0.4."""
    noise, seed, cond, null = _inputs(b=1)
    z = torch.randn(1, 20, 3)
    start = 0.2 * window_latents(z, 0, 8) + 0.8 * noise
    d = torch.tensor([0.4])

    def euler(f):
        x = start + 0.4 * f(start, torch.tensor([0.2]))
        return x + (1.0 - 1e-8 - 0.6) * f(x, torch.tensor([0.6]))

    out = EditSampler(EulerShortcutSampler(n_steps=2, guidance_scale=1.0), z, 0.2, stride=7)(
        _net, noise, seed, cond, null)  # fmt: skip
    torch.testing.assert_close(out.latents, euler(lambda x, t: _net(x, t, d, seed, cond)))
    assert (out.nfe, out.nfe_rows) == (2, 2)
    # guidance mixes the conditional and the null-condition fields at each step
    g = EditSampler(EulerShortcutSampler(n_steps=2, guidance_scale=3.0), z, 0.2, stride=7)(
        _net, noise, seed, cond, null)  # fmt: skip
    uncond = null_condition(null, 1, cond)

    def guided(x, t):
        f_c, f_u = _net(x, t, d, seed, cond), _net(x, t, d, seed, uncond)
        return f_u + 3.0 * (f_c - f_u)

    torch.testing.assert_close(g.latents, euler(guided))
    assert g.nfe_rows == 4


def test_bad_settings_are_refused():
    z = torch.zeros(1, 10, 3)
    with pytest.raises(ValueError, match="t0 must be in"):
        EditSampler(EulerShortcutSampler(), z, 1.5, stride=7)
    with pytest.raises(ValueError, match="stride"):
        EditSampler(EulerShortcutSampler(), z, 0.5, stride=0)
    with pytest.raises(TypeError, match="Euler shortcut sampler"):
        EditSampler(object(), z, 0.5, stride=7)  # type: ignore[arg-type]
    noise, seed, cond, null = _inputs(b=2)  # one file's latents, two rows of noise: refused, not broadcast
    with pytest.raises(ValueError, match="noise batch of 2"):
        EditSampler(EulerShortcutSampler(), torch.zeros(1, 20, 3), 0.5, stride=7)(_net, noise, seed, cond, null)


def test_t0_one_through_the_windowing_gives_back_the_files_latents():
    """With t0 = 1 every window is the file's own latents at the windowing's stride, so the stitched output is the
    encoded ground truth (the diagnostic's t0 = 1 row is the codec round trip)."""
    from inference.windowed import WindowOptions, generate_windowed
    from tests.test_windowed import _fixture, _t

    gen, codec, d = _fixture()
    n = 383
    pose, tv = _t(d, "in_pose")[:, :n], _t(d, "in_trans_v")[:, :n]
    audio, word = _t(d, "in_audio_onset")[:, : int(n / 30 * 16000)], _t(d, "in_word")[:, :n].long()
    z = codec.encode(pose[:, :380], tv[:, :380])
    opts = WindowOptions(drop_tail=False, audio_indexing="exact")
    gen.sampler = EditSampler(gen.sampler, z, 1.0, stride=(opts.window_frames - opts.overlap_frames) // opts.squeeze)
    out = generate_windowed(gen, codec, audio, word, pose, tv, opts=opts)
    assert out.n_windows == 4 and out.nfe == 0
    torch.testing.assert_close(out.latents[:, : z.shape[1]], z)


def test_speed_curve_and_its_correlation_on_hand_built_motion():
    t = np.arange(60) / 30.0
    # two joints: one moving at 1 unit/frame along x, one still -> mean speed 0.5 per frame
    lin = np.stack([np.stack([np.arange(60.0), np.zeros(60), np.zeros(60)], -1), np.zeros((60, 3))], 1)
    np.testing.assert_allclose(speed_curve(lin), np.full(59, 0.5))
    # a joint on a circle whose angular speed follows a 1 Hz envelope: its speed curve is that envelope
    def circle(envelope):
        ang = np.cumsum(envelope) * 0.05
        return np.stack([np.cos(ang), np.sin(ang), np.zeros(60)], -1)[:, None]

    circ = circle(1.0 + 0.5 * np.sin(2 * np.pi * t))
    late = circle(1.0 + 0.5 * np.sin(2 * np.pi * (t - 0.5)))  # half a period late: anti-correlated speeds
    assert curve_correlation(speed_curve(circ), speed_curve(circ) * 3 + 1) > 0.999
    assert curve_correlation(speed_curve(circ), speed_curve(late)) < -0.9
    assert np.isnan(curve_correlation(speed_curve(lin), speed_curve(circ)))  # a constant curve has no correlation
    assert curve_correlation(np.arange(5.0), np.arange(8.0)) == pytest.approx(1.0)  # common length only


def test_fine_part_removes_the_phrase_scale_level_and_keeps_strokes():
    n = 300
    t = np.arange(n) / 30.0
    slow = 2.0 + np.sin(2 * np.pi * 0.1 * t)  # a 10-s loudness/phrase level
    fast = 0.3 * np.sin(2 * np.pi * 2.0 * t)  # 2 Hz strokes
    np.testing.assert_allclose(fine_part(np.full(n, 5.0)), 0.0, atol=1e-12)  # a constant has no fine part, edges too
    f = fine_part(slow + fast)
    # a 31-frame mean removes most of the 10-s component and leaves the 2-Hz one (31 frames ~ 2 of its periods)
    assert curve_correlation(f[31:-31], fast[31:-31]) > 0.99
    assert abs(curve_correlation(f[31:-31], slow[31:-31])) < 0.1
    with pytest.raises(ValueError, match="odd"):
        fine_part(slow, 30)
