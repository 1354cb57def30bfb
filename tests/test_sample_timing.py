"""trainers.timing: the timing loss on generated samples (issue 13), and LatentGenerator.loss's sample_loss hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataloaders.stats import Stats
from geometry.body_model import get_fk
from geometry.rotations import poses_to_rot6d, rotation_6d_to_axis_angle
from geometry.skeleton import BC_JOINTS, axis_angle_indices, generator_parts, part_dim
from models.generators import ShortcutGenerator
from models.generators.base import to_generator_layout
from models.motion_codec import PART_JOINTS, MotionCodec
from models.vq.rvqvae import RVQVAE
from tests.test_generators import ToyDenoiser, ToyEncoder, toy_inputs
from trainers.timing import (
    SampleTimingLoss,
    band_amplitudes,
    by_mean,
    highpass,
    log_level_mse,
    one_minus_r,
    relative_mse,
    sorted_mse,
    window_acceleration,
)
from utils.config import ConfigError


def _codec(seed: int = 0) -> MotionCodec:
    """Tiny random RVQ-VAEs (2 quantisers) around the rest pose: rot6d mean = identity, std 0.3."""
    torch.manual_seed(seed)
    vqs = {p: RVQVAE(part_dim(p), nb_code=8, code_dim=16, width=8, depth=1, num_quantizers=2)
           for p in generator_parts(face=False)}  # fmt: skip
    for vq in vqs.values():  # random codebooks (a fresh one is all zeros: every token the same code)
        for name, buf in vq.named_buffers():
            if name.endswith("codebook"):
                buf.normal_()
    ident = poses_to_rot6d(torch.zeros(1, 165))[0].numpy().astype(np.float32)
    st = Stats(rot6d_mean=ident, rot6d_std=np.full(330, 0.3, np.float32), trans_v_mean=np.zeros(3),
               trans_v_std=np.full(3, 0.01), mean_vel=np.ones(55, np.float32))  # fmt: skip
    return MotionCodec(vqs, st.rot6d_mean, st.rot6d_std, st.trans_v_mean, st.trans_v_std, latent_scale=1.0)


def test_highpass_and_correlation_by_hand():
    t = torch.arange(40, dtype=torch.float64)
    assert torch.allclose(highpass(torch.full((2, 40), 3.0), 5), torch.zeros(2, 40))
    ramp = highpass((2 * t + 1)[None], 5)[0]
    assert torch.allclose(ramp[2:-2], torch.zeros(36, dtype=torch.float64), atol=1e-12)  # linear: its own average
    assert ramp[0] == pytest.approx(2.0 * 0 + 1 - (3 * 1 + 3 + 5) / 5)  # replicated edge: (1, 1, 1, 3, 5) / 5
    assert torch.equal(highpass(t[None], 0), t[None]) and torch.equal(highpass(t[None], 1), t[None])
    x = torch.tensor([[1.0, 2.0, 4.0, 3.0], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[2.0, 1.0, 5.0, 5.0], [1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    r0 = np.corrcoef(x[0], y[0])[0, 1]
    assert float(one_minus_r(x, y)) == pytest.approx(((1 - r0) + 2.0) / 2)  # row 2: r = -1
    assert float(one_minus_r(x, 3 * x + 7)) == pytest.approx(0.0, abs=1e-12)  # scale-free: timing, not amplitude
    assert float(one_minus_r(x, torch.ones_like(x))) == pytest.approx(1.0)  # a still target counts r = 0


def test_relative_mse_ignores_overall_speed_but_not_dip_depth():
    x = torch.tensor([[1.0, 1.0, 0.2, 1.0]], dtype=torch.float64)  # a dip to 0.2
    y = torch.tensor([[1.0, 1.0, 0.6, 1.0]], dtype=torch.float64)  # GT's dip only to 0.6
    assert float(relative_mse(by_mean(3 * y), by_mean(y))) == pytest.approx(0.0, abs=1e-15)  # livelier, same shape
    xm, ym = x / 0.8, y / 0.9  # means 0.8 and 0.9
    assert float(relative_mse(by_mean(x), by_mean(y))) == pytest.approx(float((xm - ym).pow(2).mean()))
    assert float(relative_mse(by_mean(x), by_mean(y))) > 0.05  # the deeper dip costs
    assert float(one_minus_r(x, y)) == pytest.approx(0.0, abs=1e-12)  # ... which the correlation form cannot see
    assert torch.equal(by_mean(torch.zeros(1, 4)), torch.zeros(1, 4))  # a still curve stays 0, no division by 0
    still = torch.full((1, 4), 1e-7, requires_grad=True)  # an almost still sample: the floor bounds its gradient
    relative_mse(by_mean(still), by_mean(y)).backward()
    assert float(still.grad.abs().max()) < 1e5


def test_the_forms_normalise_by_their_own_or_by_gts_mean():
    """``relmse`` divides each curve by its own mean (a 3x livelier sample of GT's shape costs 0); ``scaled`` divides
    both by GT's mean (the same sample costs mean((3y − y)²)/mean(y)² = 4·mean(y²)/mean(y)²)."""
    y = torch.tensor([[1.0, 1.0, 0.6, 1.0]], dtype=torch.float64)
    loss = SampleTimingLoss(_codec(), get_fk(None, flat_hand_mean=True), weight=1.0)
    loss.speed = lambda z: z.squeeze(1).squeeze(1)  # curves given directly as (B, 1, 1, T) "latents"
    curves = {"sample": (3 * y)[:, None, None], "data": y[:, None, None]}
    loss.form = "relmse"
    assert float(loss(curves["sample"], curves["data"])) == pytest.approx(0.0, abs=1e-12)
    loss.form = "scaled"
    want = 4 * float(y.pow(2).mean()) / float(y.mean()) ** 2
    assert float(loss(curves["sample"], curves["data"])) == pytest.approx(want)
    _, gt = loss.curves(curves["sample"], curves["data"])
    torch.testing.assert_close(gt, y / y.mean())  # GT's curve over its own mean


def test_band_amplitudes_are_phase_free_and_see_the_tempo():
    t = torch.arange(128, dtype=torch.float64)
    slow = 1 + 0.5 * torch.sin(2 * torch.pi * 6 * t / 128)  # 6 cycles: rfft bin 6 -> band 1 (bins 5-8)
    late = 1 + 0.5 * torch.sin(2 * torch.pi * 6 * (t - 7) / 128)  # the same curve 7 frames late
    fast = 1 + 0.5 * torch.sin(2 * torch.pi * 12 * t / 128)  # twice the tempo: bin 12 -> band 2 (bins 9-12)
    a = band_amplitudes(torch.stack([slow, late, fast]))
    assert a.shape == (3, 16)  # 64 non-constant bins (1..64) in bands of 4
    # sum over t of 0.25 sin² = 16, half of it in the kept half spectrum's one bin (orthonormal): band power 8 / 4
    assert float(a[0, 1]) == pytest.approx(2**0.5) and float(a[2, 2]) == pytest.approx(2**0.5)
    assert float(a[0].pow(2).sum() - a[0, 1] ** 2) < 1e-9
    torch.testing.assert_close(a[0], a[1])  # phase-free: a late curve has the same spectrum
    torch.testing.assert_close(band_amplitudes(slow[None] * 3 + 2), 3 * a[:1], atol=1e-5, rtol=1e-9)  # mean off
    loss = SampleTimingLoss(_codec(), get_fk(None, flat_hand_mean=True), weight=1.0, spectrum=2.0)
    loss.speed = lambda z: z.squeeze(1).squeeze(1)  # curves given directly as (B, 1, 1, T) "latents"
    as_latents = lambda c: c[None, None, None]  # noqa: E731
    relmse = float(relative_mse(by_mean(late[None]), by_mean(slow[None])))
    assert float(loss(as_latents(late), as_latents(slow))) == pytest.approx(relmse)  # same tempo: the term is 0
    want = float(relative_mse(by_mean(fast[None]), by_mean(slow[None]))) + 2.0 * (2 + 2) / 16
    assert float(loss(as_latents(fast), as_latents(slow))) == pytest.approx(want)  # two bands of 16 differ by √2


def test_sorted_mse_sees_holds_and_peaks_not_their_timing():
    hold = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0, 2.0]])  # holds at 0, strokes at 2 (mean 1)
    late = hold.roll(2, dims=1)  # the same values elsewhere in time
    blur = torch.ones(1, 6)  # the MSE-optimal curve under uncertain timing: never still, never fast
    assert float(sorted_mse(late, hold)) == 0.0 and float(relative_mse(late, hold)) > 0
    assert float(sorted_mse(blur, hold)) == pytest.approx(1.0)  # every sorted value 1 off
    x = blur.clone().requires_grad_(True)
    sorted_mse(x, hold).backward()  # d/dx of mean((sort(x) - sort(hold))^2) at a tie: the sort's order, ±1/3
    assert sorted(x.grad[0].tolist()) == pytest.approx([-1 / 3] * 3 + [1 / 3] * 3)
    loss = SampleTimingLoss(_codec(), get_fk(None, flat_hand_mean=True), weight=1.0, quantiles=0.5)
    loss.speed = lambda z: z.squeeze(1).squeeze(1)  # curves given directly as (B, 1, 1, T) "latents"
    as_latents = lambda c: c[None, None]  # noqa: E731
    want = float(relative_mse(by_mean(blur), by_mean(hold))) + 0.5 * float(sorted_mse(by_mean(blur), by_mean(hold)))
    assert float(loss(as_latents(blur), as_latents(hold))) == pytest.approx(want)
    assert float(loss(as_latents(late), as_latents(hold))) == pytest.approx(float(relative_mse(late, hold)))


def test_log_level_mse_sees_how_fast_not_when():
    """The level term: (log mean(x) - log mean(y))^2 per row, then the mean; the relmse form is blind to it."""
    t = torch.arange(64, dtype=torch.float64)
    gt = 1 + 0.5 * torch.sin(2 * torch.pi * 4 * t / 64)  # mean 1
    assert float(log_level_mse(2 * gt[None], gt[None])) == pytest.approx(np.log(2) ** 2)
    assert float(log_level_mse(gt.roll(5)[None], gt[None])) == pytest.approx(0.0, abs=1e-12)  # late: same level
    both = log_level_mse(torch.stack([gt, 0.5 * gt]), torch.stack([gt, gt]))  # rows 0 and (log 2)^2
    assert float(both) == pytest.approx(np.log(2) ** 2 / 2)
    still = torch.zeros(1, 64)  # floored at 1e-4: finite (a still sample's term carries no gradient)
    assert float(log_level_mse(still, 1e-4 * torch.ones(1, 64))) == pytest.approx(0.0, abs=1e-12)
    x = (0.5 * gt[None]).requires_grad_(True)
    log_level_mse(x, gt[None]).backward()  # d/dx_i = 2 log(0.5) / (T mean(x)) < 0: faster lowers the loss
    torch.testing.assert_close(x.grad, torch.full_like(x, 2 * np.log(0.5) / (64 * 0.5)))
    loss = SampleTimingLoss(_codec(), get_fk(None, flat_hand_mean=True), weight=1.0, level=3.0)
    loss.speed = lambda z: z.squeeze(1).squeeze(1)  # curves given directly as (B, 1, 1, T) "latents"
    as_latents = lambda c: c[None, None, None]  # noqa: E731
    # relmse is 0 for a scaled copy; the level term sees the raw means (before relmse's division)
    assert float(loss(as_latents(2 * gt), as_latents(gt))) == pytest.approx(3.0 * np.log(2) ** 2)
    loss.level = 0.0
    assert float(loss(as_latents(2 * gt), as_latents(gt))) == pytest.approx(0.0, abs=1e-12)


def test_accel_level_sees_chatter():
    """accel_level: (log mean |second difference| of the sample's positions − GT's)² per window. Hand-built positions
    (B, T, J, 3) given directly: a copy moving twice as far gives (log 2)² (and relmse 0); GT's path with a 2 mm
    side step on every other frame (chatter) accelerates more than 3x GT and costs more than the 2x copy; GT itself
    gives 0."""
    t = torch.arange(64, dtype=torch.float64)
    x = 0.01 * torch.sin(2 * torch.pi * 2 * t / 64)  # a smooth stroke along x, one joint
    gt = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1)[None, :, None]  # (1, T, 1, 3)
    acc = window_acceleration(gt)
    torch.testing.assert_close(acc[0, 0], gt.diff(n=2, dim=1).norm(dim=-1).mean())
    loss = SampleTimingLoss(_codec(), get_fk(None, flat_hand_mean=True), weight=1.0, accel_level=1.0)
    loss.positions = lambda z: z  # positions given directly as the "latents"
    assert float(loss(2 * gt, gt)) == pytest.approx(np.log(2) ** 2, rel=1e-5)
    assert float(loss(gt, gt)) == pytest.approx(0.0, abs=1e-10)
    zig = gt.clone()
    zig[:, 1::2, :, 1] = 0.002  # a side-to-side chatter on every other frame
    assert float(window_acceleration(zig)) > 3 * float(acc)
    assert float(loss(zig, gt)) > float(loss(2 * gt, gt))
    loss.accel_level = 0.0  # off: the relmse term only, the same as with the term's positions path unused
    assert float(loss(2 * gt, gt)) == pytest.approx(0.0, abs=1e-10)


def test_level_scope_window_compares_the_joint_averaged_level():
    """level_scope: with per_joint the curves come as (B·J, T), joint by joint; ``joint`` compares every joint's
    mean, ``window`` the mean of the joints' average. Hand-built: 13 joints with GT's curve, the sample's first
    joint twice as fast (the others exact): joint scope (log 2)²/13, window scope (log(14/13))² (float32 inside:
    rel 1e-5)."""
    j = len(BC_JOINTS)
    t = torch.arange(64, dtype=torch.float64)
    gt = (1 + 0.5 * torch.sin(2 * torch.pi * 4 * t / 64)).repeat(j, 1)  # (J, T): one window
    sample = gt.clone()
    sample[0] *= 2
    loss = SampleTimingLoss(_codec(), get_fk(None, flat_hand_mean=True), weight=1.0, per_joint=True, level=1.0)
    loss.speed = lambda z: z.reshape(-1, z.shape[-1])  # curves given directly as (B·J, 1, 1, T) "latents"
    relmse = float(relative_mse(by_mean(sample), by_mean(gt)))  # 0: the doubled joint keeps its shape
    assert relmse == pytest.approx(0.0, abs=1e-12)
    assert float(loss(sample[:, None, None], gt[:, None, None])) == pytest.approx(np.log(2) ** 2 / j, rel=1e-5)
    loss.level_scope = "window"
    assert float(loss(sample[:, None, None], gt[:, None, None])) == pytest.approx(np.log((j + 1) / j) ** 2, rel=1e-5)
    two = torch.cat([sample, 0.5 * gt])  # a second window, every joint at half speed: (log 0.5)²
    want = (np.log((j + 1) / j) ** 2 + np.log(0.5) ** 2) / 2
    assert float(loss(two[:, None, None], torch.cat([gt, gt])[:, None, None])) == pytest.approx(want, rel=1e-5)
    loss.per_joint = False  # curves already joint-averaged: window and joint scopes agree
    assert float(loss(sample[:1, None, None], gt[:1, None, None])) == pytest.approx(np.log(2) ** 2, rel=1e-5)


def test_commit_pulls_the_sample_toward_the_codes_it_decodes_to():
    """commit: the mean squared distance of the timing parts' latents to their eval-mode quantisation q(z), q held
    fixed. Against ``RVQVAE.quantised`` (itself checked: its codes are what ``latent2origin`` decodes) on random
    latents: the value is mean((z − q(z))²) over the upper and pelvis parts' elements in the codec's scale (latent_scale
    x z), its gradient 2(z − q(z))/n there and 0 on the hands (whose latents never count); the loss adds commit x it."""
    codec = _codec()
    z = torch.randn(2, 6, codec.latent_dim, generator=torch.Generator().manual_seed(5))
    start = dict(zip(codec.parts, np.cumsum([0, *codec.code_dims]).tolist()))
    size = dict(zip(codec.parts, codec.code_dims))
    timing = ("upper", "lower_trans")
    diff = {p: z[..., start[p] : start[p] + size[p]] - codec.vqs[p].quantised(z[..., start[p] : start[p] + size[p]])
            for p in timing}  # fmt: skip
    n = sum(d.numel() for d in diff.values())
    want = sum(float(d.pow(2).sum()) for d in diff.values()) / n
    zz = z.clone().requires_grad_(True)
    value = codec.code_residual(zz)
    assert float(value.detach()) == pytest.approx(want, rel=1e-5) and want > 0.01
    value.backward()
    grad = torch.zeros_like(z)
    for p in timing:
        grad[..., start[p] : start[p] + size[p]] = 2 * diff[p] / n
    torch.testing.assert_close(zz.grad, grad, atol=1e-8, rtol=1e-5)
    hands = z.clone()
    hands[..., start["hands"] : start["hands"] + size["hands"]] += 5.0  # far off the hands' codes: not counted
    assert float(codec.code_residual(hands)) == pytest.approx(want, rel=1e-5)
    assert float(codec.code_residual(z, ("upper",))) == pytest.approx(float(diff["upper"].pow(2).mean()), rel=1e-5)
    loss = SampleTimingLoss(codec, get_fk(None, flat_hand_mean=True), weight=1.0)
    sample, data = to_generator_layout(z), to_generator_layout(torch.randn(2, 6, codec.latent_dim))
    base = float(loss(sample, data))
    loss.commit = 2.0
    assert float(loss(sample, data)) == pytest.approx(base + 2.0 * want, rel=1e-5)
    with pytest.raises(ValueError, match="unknown part"):
        codec.code_residual(z, ("arms",))
    vq, zp = codec.vqs["upper"], z[..., : size["upper"]]  # quantised gives the codes a decode uses
    torch.testing.assert_close(vq.decoder(vq.quantised(zp).permute(0, 2, 1)), vq.latent2origin(zp)[0])
    codec.latent_scale = 2.0  # the residual is taken in the codec's scale
    scaled = sum(float((2 * z[..., start[p] : start[p] + size[p]]
                        - codec.vqs[p].quantised(2 * z[..., start[p] : start[p] + size[p]])).pow(2).sum())
                 for p in timing) / n  # fmt: skip
    assert float(codec.code_residual(z)) == pytest.approx(scaled, rel=1e-5) and abs(scaled - want) > 0.01


def test_straight_through_gives_the_decoders_gradient_at_the_codes():
    """latent2origin(straight_through=True): the gradient w.r.t. the latents is the decoder's gradient at the chosen
    codes (identity through quantisation); without it the quantiser's own path gives num_quantizers x that."""
    codec = _codec()
    vq = codec.vqs["upper"]
    z = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    w = torch.randn(2, 20, vq.input_width, generator=torch.Generator().manual_seed(4))
    zq = vq.quantizer(z.permute(0, 2, 1), eval_mode=True)[0].detach().requires_grad_(True)
    (vq.decoder(zq) * w).sum().backward()
    want = zq.grad.permute(0, 2, 1)
    grads = {}
    for st in (True, False):
        zz = z.clone().requires_grad_(True)
        rec = vq.latent2origin(zz, straight_through=st)[0]
        torch.testing.assert_close(rec, vq.decoder(zq).detach(), atol=1e-5, rtol=1e-5)  # same forward value
        (rec * w).sum().backward()
        grads[st] = zz.grad
    torch.testing.assert_close(grads[True], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[False], 2 * want, atol=1e-5, rtol=1e-5)  # 2 quantisers


def test_speed_equals_fk_of_the_decoded_poses():
    """The differentiable path (rot6d -> matrices, BC chains only) matches the evaluator's path (axis-angle,
    Rodrigues, full FK) on the same decoded rot6d; the straight-through decode's forward is decode_parts'."""
    codec = _codec()
    z = torch.randn(2, 5, codec.latent_dim, generator=torch.Generator().manual_seed(1))
    fk = get_fk(None, flat_hand_mean=True)
    loss = SampleTimingLoss(codec, fk, weight=1.0, highpass=0)
    r6 = codec.decode_rot6d(z)
    ref = codec.decode_parts(z)
    for p in ("upper", "lower_trans"):
        torch.testing.assert_close(r6[p], ref[p], atol=1e-6, rtol=1e-6)
    poses = torch.zeros(2, 20, 165, dtype=torch.float64)  # float64: float32 axis-angle loses ~3e-4 at small angles
    for p in ("upper", "lower_trans"):
        aa = rotation_6d_to_axis_angle(r6[p].double().reshape(2, 20, -1, 6)).reshape(2, 20, -1)
        poses[..., axis_angle_indices(PART_JOINTS[p])] = aa
    want = fk(poses)[..., BC_JOINTS, :].diff(dim=1).norm(dim=-1)  # (B, T-1, J)
    got = loss.speed(to_generator_layout(z))
    assert got.shape == (2, 19) and float(want.mean()) > 1e-3
    torch.testing.assert_close(got.double(), want.mean(-1), atol=1e-6, rtol=1e-4)
    loss.per_joint = True
    torch.testing.assert_close(loss.speed(to_generator_layout(z)).double(),
                               want.transpose(1, 2).reshape(-1, 19), atol=1e-6, rtol=1e-4)  # fmt: skip


def test_loss_is_zero_on_gt_positive_when_late_and_differentiable():
    codec = _codec()
    g = torch.Generator().manual_seed(2)
    data = to_generator_layout(torch.randn(3, 8, codec.latent_dim, generator=g))
    for form, per_joint in (("relmse", False), ("corr", False), ("corr", True), ("relmse", True), ("scaled", False)):
        loss = SampleTimingLoss(codec, get_fk(None, flat_hand_mean=True), weight=1.0, form=form, highpass=9,
                                per_joint=per_joint)  # fmt: skip
        assert float(loss(data, data)) == pytest.approx(0.0, abs=1e-5)
        late = data.roll(2, dims=-1).clone().requires_grad_(True)  # the same motion 8 frames late
        value = loss(late, data)
        assert float(value.detach()) > (0.1 if form == "corr" else 0.01)
        value.backward()
        assert late.grad is not None and torch.isfinite(late.grad).all() and late.grad.abs().sum() > 0


def test_generator_loss_adds_the_weighted_sample_loss_with_gradient():
    class Recording:
        weight, steps, guidance, rows = 2.5, 2, 1.0, 0

        def __init__(self) -> None:
            self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def __call__(self, sample: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
            self.seen.append((sample, data))
            return (sample - data).pow(2).mean()

    torch.manual_seed(0)
    model = ShortcutGenerator(ToyEncoder(dim=6), ToyDenoiser(dim=6), prediction="data",
                              objective={"consistency_time": "within"})  # fmt: skip
    audio, word, seed = toy_inputs(b=4)
    z = torch.randn(4, 32, 384, generator=torch.Generator().manual_seed(5))
    plain = model.loss(z, audio, word, seed, generator=torch.Generator().manual_seed(9))
    rec = Recording()
    out = model.loss(z, audio, word, seed, generator=torch.Generator().manual_seed(9), sample_loss=rec)
    assert "sample_loss" not in plain and len(rec.seen) == 1
    sample, data = rec.seen[0]
    assert torch.equal(data, to_generator_layout(z)) and sample.shape == data.shape
    assert float(out["sample_loss"]) == pytest.approx(float((sample - data).pow(2).mean().detach()))
    assert float(out["loss"].detach()) == pytest.approx(float(plain["loss"].detach()) + 2.5 * float(out["sample_loss"]),
                                                rel=1e-6)
    # the sample is the sampler's output from noise drawn after the objective's draws, through the same network
    g = torch.Generator().manual_seed(9)
    model.loss(z, audio, word, seed, generator=g)
    x0 = torch.randn(data.shape, generator=g)
    with torch.no_grad():
        want = model.sampler(model.sampling_net, x0, seed, model.encode(audio, word), model.null_cond, 2, 1.0).latents
    torch.testing.assert_close(sample.detach(), want)
    model.zero_grad()
    (out["loss"] - plain["loss"]).backward()  # only the sample term: its gradient reaches the denoiser
    assert model.denoiser.a.grad is not None and float(model.denoiser.a.grad.abs()) > 0
    # rows = 2: the sample is drawn for the batch's first two rows only, from a (2, ...) noise draw
    rec.rows, rec.seen = 2, []
    out2 = model.loss(z, audio, word, seed, generator=torch.Generator().manual_seed(9), sample_loss=rec)
    sample2, data2 = rec.seen[0]
    assert torch.equal(data2, to_generator_layout(z)[:2]) and sample2.shape == data2.shape
    torch.testing.assert_close(out2["loss"] - out2["sample_loss"] * 2.5, plain["loss"])
    g = torch.Generator().manual_seed(9)
    model.loss(z, audio, word, seed, generator=g)
    x0 = torch.randn(data2.shape, generator=g)
    with torch.no_grad():
        want = model.sampler(model.sampling_net, x0, seed[:2], model.encode(audio, word)[:2], model.null_cond, 2,
                             1.0).latents  # fmt: skip
    torch.testing.assert_close(sample2.detach(), want)


def test_from_config():
    codec, fk = _codec(), None  # from_config's third argument: the body model (None: SMPL-X if found, else mannequin)
    assert SampleTimingLoss.from_config(None, codec, fk) is None
    assert SampleTimingLoss.from_config({"weight": 0.0, "steps": 2}, codec, fk) is None
    with pytest.raises(ConfigError, match="must be a mapping"):
        SampleTimingLoss.from_config(8, codec, fk)
    with pytest.raises(ConfigError, match="weight"):
        SampleTimingLoss.from_config({"weight": 1, "guidance": float("nan")}, codec, fk)
    loss = SampleTimingLoss.from_config({"weight": 4, "guidance": 2, "highpass": 30, "per_joint": True}, codec, fk)
    assert (loss.weight, loss.steps, loss.guidance, loss.form, loss.highpass, loss.per_joint) == (
        4.0, 2, 2.0, "relmse", 30, True)  # fmt: skip
    assert SampleTimingLoss.from_config({"weight": 1, "form": "corr"}, codec, fk).form == "corr"
    assert SampleTimingLoss.from_config({"weight": 1}, codec, fk).rows == 0  # every row
    assert SampleTimingLoss.from_config({"weight": 1, "rows": 8}, codec, fk).rows == 8
    with pytest.raises(ConfigError, match="rows -1"):
        SampleTimingLoss.from_config({"weight": 1, "rows": -1}, codec, fk)
    with pytest.raises(ConfigError, match="form"):
        SampleTimingLoss.from_config({"weight": 1, "form": "l2"}, codec, fk)
    with pytest.raises(ConfigError, match="unknown key.*'wieght'"):
        SampleTimingLoss.from_config({"wieght": 1}, codec, fk)
    with pytest.raises(ConfigError, match="steps"):
        SampleTimingLoss.from_config({"weight": 1, "steps": 0}, codec, fk)
    with pytest.raises(ConfigError, match="weight"):
        SampleTimingLoss.from_config({"weight": -1}, codec, fk)
    for key, value in (("spectrum", 0.5), ("quantiles", 2.0), ("level", 2.0), ("accel_level", 2.0), ("commit", 0.1)):
        assert getattr(SampleTimingLoss.from_config({"weight": 1}, codec, fk), key) == 0.0  # the weights default to off
        assert getattr(SampleTimingLoss.from_config({"weight": 1, key: value}, codec, fk), key) == value
        with pytest.raises(ConfigError, match=f"{key} -1"):
            SampleTimingLoss.from_config({"weight": 1, key: -1}, codec, fk)
    assert SampleTimingLoss.from_config({"weight": 1}, codec, fk).level_scope == "joint"
    assert SampleTimingLoss.from_config({"weight": 1, "level_scope": "window"}, codec, fk).level_scope == "window"
    with pytest.raises(ConfigError, match="level_scope must be one of .*'frame'"):
        SampleTimingLoss.from_config({"weight": 1, "level_scope": "frame"}, codec, fk)
