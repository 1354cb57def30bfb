"""MeanFlow generator: upstream sampler fixture, the MeanFlow target (toy and real denoiser), JVP attention path,
a toy 2-D one-step generation check, option errors, state-dict keys, DDP gradient sync (gloo)."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from models.denoiser import GestureDenoiser
from models.generators import GENERATORS, MeanFlowGenerator, MeanFlowObjective, MeanFlowSampler, build_generator
from models.generators.meanflow import path_coefficients
from models.generators.upstream import generator_node_from_upstream
from models.layers.attention import CrossAttention, MultiheadSelfAttention, math_attention
from tests.test_generators import ATOL, Recorder, _load_fixture_generator, _t
from utils.config import ConfigError

# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------

TINY_DENOISER = {"latent_dim": 32, "ff_size": 64, "num_layers": 2, "cond_proj_dim": 32}


def tiny_node(objective: dict | None = None, sampler: dict | None = None) -> dict:
    """The tiny generator (the sizes of the upstream fixture and configs/generator_tiny_overrides.yaml)."""
    return {"name": "meanflow", "params": {
        "modality_encoder": {"target": "models.modality_encoder.ModalityEncoder",
                             "params": {"vocab_size": 64, "audio_dim": 32, "latent_dim": 32}},
        "denoiser": {"target": "models.denoiser.GestureDenoiser", "params": dict(TINY_DENOISER)},
        "objective": dict(objective or {}), "sampler": dict(sampler or {})}}  # fmt: skip


def tiny_denoiser(seed: int = 0) -> GestureDenoiser:
    torch.manual_seed(seed)
    den = GestureDenoiser(**TINY_DENOISER)
    with torch.no_grad():  # the step-size projection is zero-initialised; give r a path into the network
        den.time_embedding.cond_proj.weight.normal_(0.0, 0.1)
    return den


def denoiser_inputs(b: int, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 384, 1, 32, generator=g, dtype=dtype)
    v = torch.randn(b, 384, 1, 32, generator=g, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=dtype) * 0.8 + 0.1
    r = t * torch.rand(b, generator=g, dtype=dtype)
    s = torch.randn(b, 4, 384, generator=g, dtype=dtype)
    at = torch.randn(b, 32, 96, generator=g, dtype=dtype)
    return z, v, r, t, s, at


class AnalyticU:
    """u(z, r, t) = a·z + b·t + c·r + the condition's mean: du/dt along (v, 0, 1) is a·v + b."""

    def __init__(self, a=0.7, b=-1.3, c=0.4):
        self.a, self.b, self.c = a, b, c

    def __call__(self, x, t, r, seed, at_feat):
        bc = lambda s: s.reshape(-1, 1, 1, 1).to(x.dtype)  # noqa: E731
        return self.a * x + self.b * bc(t) + self.c * bc(r) + bc(at_feat.mean(dim=(1, 2)))


# --------------------------------------------------------------------------------------------------------------
# sampler: upstream fixture and call pattern
# --------------------------------------------------------------------------------------------------------------


def test_meanflow_sampler_matches_upstream_fixture():
    gen, d = _load_fixture_generator("sampler_meanflow_small_v2")
    assert isinstance(gen, MeanFlowGenerator)
    # exactly the shared encoder/denoiser keys, so a released meanflow.pth of this shape loads strictly
    assert all(k.startswith(("modality_encoder.", "denoiser.")) for k in gen.state_dict())
    audio, word, seed = _t(d, "audio_onset"), _t(d, "word"), _t(d, "seed")
    with torch.no_grad():
        torch.testing.assert_close(gen.encode(audio, word), _t(d, "at_feat"), atol=1e-6, rtol=0)
    outs = {}
    for tag, n, w in [("n1_w1", 1, 1.0), ("n1_w2", 1, 2.0), ("n2_w1", 2, 1.0), ("n4_w2", 4, 2.0)]:
        out = gen.sample_with_stats(audio, word, seed, n_steps=n, guidance=w, noise=_t(d, f"{tag}_init_noise"))
        torch.testing.assert_close(out.latents, _t(d, f"{tag}_latents"), atol=ATOL, rtol=0)
        assert out.nfe == n and out.nfe_rows == n * (2 if w > 1 else 1)
        outs[tag] = out.latents
    assert (outs["n1_w1"] - outs["n1_w2"]).abs().max() > 100 * ATOL
    # the upstream objective keys were carried into ours (their translation is the mapping's job)
    ob = gen.objective
    assert (ob.path_type, ob.weighting, ob.adaptive_p, ob.data_proportion) == ("cosine", "adaptive", 0.5, 0.5)
    assert (ob.cfg_omega, ob.cfg_kappa, ob.cfg_min_t, ob.cfg_max_t) == (0.5, 0.5, 0.0, 0.9)


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_released_format_checkpoint_round_trips(tmp_path, layout):
    """A MeanFlow model written in upstream's file layout (meanflow.pth) loads strictly and samples identically."""
    from models.checkpoints import export_upstream_checkpoint, load_generator_checkpoint

    gen, d = _load_fixture_generator("sampler_meanflow_small_v2")
    path = export_upstream_checkpoint(gen, tmp_path / "meanflow.pth", layout=layout)
    fresh, _ = _load_fixture_generator("sampler_meanflow_small_v2")
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_generator_checkpoint(fresh, path)
    args = (_t(d, "audio_onset"), _t(d, "word"), _t(d, "seed"))
    a = gen.sample(*args, n_steps=2, guidance=2.0, noise=_t(d, "n4_w2_init_noise"))
    b = fresh.eval().sample(*args, n_steps=2, guidance=2.0, noise=_t(d, "n4_w2_init_noise"))
    assert torch.equal(a, b)


def test_sampler_calls_time_pairs_and_settings():
    s = MeanFlowSampler()
    assert s.settings() == {"sampler": "MeanFlowSampler", "n_steps": 1, "guidance": 1.0, "nfe_per_window": 1,
                            "nfe_rows_per_window": 1}  # fmt: skip
    net = Recorder()
    noise = torch.randn(3, 4, 1, 5)
    seed, feat, null = torch.zeros(3, 2, 2), torch.randn(3, 5, 6), torch.zeros(5, 6)
    out = s(net, noise, seed, feat, null)
    (call,) = net.calls
    assert call["t"].tolist() == [1.0] * 3 and call["d"].tolist() == [0.0] * 3  # timesteps = t = 1, cond_time = r = 0
    expected = noise - net(noise, torch.ones(3), torch.zeros(3), seed, feat)
    torch.testing.assert_close(out.latents, expected.detach())
    assert (out.nfe, out.nfe_rows) == (1, 1)
    net = Recorder()
    out = s(net, noise, seed, feat, null, n_steps=4, guidance=2.0)
    grid = torch.linspace(1 - 1e-8, 0, 5)
    assert [c["t"][0].item() for c in net.calls] == grid[:4].tolist()
    assert [c["d"][0].item() for c in net.calls] == grid[1:].tolist()
    assert all(c["x"].shape[0] == 6 for c in net.calls)  # CFG: doubled batch, conditional half first
    torch.testing.assert_close(net.calls[0]["at_feat"][:3], feat)
    assert (out.nfe, out.nfe_rows) == (4, 8)
    assert s.configure(n_steps=2, guidance=3.0).settings()["nfe_rows_per_window"] == 4


# --------------------------------------------------------------------------------------------------------------
# the objective
# --------------------------------------------------------------------------------------------------------------


def test_target_on_an_analytic_average_velocity():
    ob = MeanFlowObjective()
    z, v, r, t, s, at = denoiser_inputs(4)
    r[0] = t[0]  # one row with r = t
    net = AnalyticU()
    u, u_tgt = ob.prediction_and_target(net, z, r, t, v, s, at)
    torch.testing.assert_close(u, net(z, t, r, s, at))
    gap = (t - r).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(u_tgt, v - gap * (net.a * v + net.b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u_tgt[0], v[0], rtol=0, atol=0)  # r = t: the instantaneous velocity
    assert not u_tgt.requires_grad


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_target_is_the_velocity_when_r_equals_t_on_the_real_denoiser(path_type):
    den = tiny_denoiser().train()  # dropout/DropPath active
    ob = MeanFlowObjective(path_type=path_type, data_proportion=1.0)
    g = torch.Generator().manual_seed(0)
    r, t = ob.sample_times(5, torch.device("cpu"), g)
    assert torch.equal(r, t)
    data, noise = torch.randn(5, 384, 1, 32, generator=g), torch.randn(5, 384, 1, 32, generator=g)
    z_t, v = ob.path(data, noise, t)
    _, _, s, at = denoiser_inputs(5)[2:]
    u, u_tgt = ob.prediction_and_target(den, z_t, r, t, v, s, at)
    assert torch.equal(u_tgt, v) and u.requires_grad
    if path_type == "linear":
        torch.testing.assert_close(v, noise - data)
        torch.testing.assert_close(z_t, (1 - t).reshape(-1, 1, 1, 1) * data + t.reshape(-1, 1, 1, 1) * noise)


def test_cosine_path_derivative_and_endpoints():
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    a, s, da, ds = path_coefficients("cosine", t)
    torch.testing.assert_close(a[[0, -1]], torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(s[[0, -1]], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    h = 1e-6
    a2, s2, _, _ = path_coefficients("cosine", t + h)
    a1, s1, _, _ = path_coefficients("cosine", t - h)
    torch.testing.assert_close(da, (a2 - a1) / (2 * h), atol=1e-8, rtol=0)
    torch.testing.assert_close(ds, (s2 - s1) / (2 * h), atol=1e-8, rtol=0)


def test_jvp_is_the_total_time_derivative_of_the_same_random_draw():
    """du/dt from the JVP equals a central difference along (v, 0, 1) taken with the same dropout/DropPath draw
    (train mode, float64): the primal used as the prediction and its derivative see the same randomness.

    The sinusoidal time embedding computes in float32 (as upstream), so t's part is float32-accurate: h = 1e-3."""
    den = tiny_denoiser().double().train()
    den.time_proj.register_forward_hook(lambda mod, inp, out: out.double())
    z, v, r, t, s, at = denoiser_inputs(3, dtype=torch.float64)
    ob = MeanFlowObjective()
    torch.manual_seed(7)
    u, u_tgt = ob.prediction_and_target(den, z, r, t, v, s, at)
    dudt = (v - u_tgt) / (t - r).reshape(-1, 1, 1, 1)
    torch.manual_seed(7)
    # the same draw as a plain forward (which uses fused attention, hence not bitwise)
    torch.testing.assert_close(u.detach(), den(z, t, r, s, at).detach(), atol=1e-9, rtol=0)
    h = 1e-3
    torch.manual_seed(7)
    up = den(z + h * v, t + h, r, s, at)
    torch.manual_seed(7)
    um = den(z - h * v, t - h, r, s, at)
    fd = ((up - um) / (2 * h)).detach()
    assert fd.abs().max() > 1e-3  # the check is not vacuous
    torch.testing.assert_close(dudt, fd, atol=1e-4, rtol=1e-3)


def test_math_attention_equals_fused_attention():
    torch.manual_seed(0)
    x, ctx = torch.randn(3, 10, 32), torch.randn(3, 7, 32)
    for mod, args in [(MultiheadSelfAttention(32, 4), (x,)), (CrossAttention(32, 4), (x, ctx))]:
        fused = mod(*args)
        with math_attention():
            math_out = mod(*args)
        torch.testing.assert_close(math_out, fused, atol=1e-6, rtol=1e-5)
    den = tiny_denoiser().eval()
    z, _, r, t, s, at = denoiser_inputs(2)
    fused = den(z, t, r, s, at)
    with math_attention():
        math_out = den(z, t, r, s, at)
    torch.testing.assert_close(math_out, fused, atol=1e-5, rtol=1e-5)


def test_loss_weighting_guidance_and_condition_dropout():
    """Adaptive weighting by hand; ṽ = ω v + κ u(z,t,t|c) + (1−ω−κ) u(z,t,t|∅) on guided rows only."""
    net = AnalyticU(a=0.0, b=0.0, c=0.0)  # u = mean of the condition: 1 with the condition, 0 with the null one
    b = 64
    data = torch.randn(b, 384, 1, 32)
    at, null, seed = torch.ones(b, 32, 96), torch.zeros(32, 96), torch.zeros(b, 4, 384)
    ob = MeanFlowObjective(cfg_omega=0.3, cfg_kappa=0.5, cfg_min_t=0.2, cfg_max_t=0.8, cond_drop_prob=0.25,
                           data_proportion=1.0, adaptive_p=0.5)  # fmt: skip
    out = ob(net, data, seed, at, null, torch.Generator().manual_seed(3))
    # replay the draws of __call__ with the same generator
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(data.shape, generator=g)
    r, t = ob.sample_times(b, data.device, g)
    dropped = torch.rand((b,), generator=g) < 0.25
    z_t, v = ob.path(data, noise, t)
    guided = (~dropped) & (t >= 0.2) & (t <= 0.8)
    assert 0 < int(guided.sum()) < b and 0 < int(dropped.sum())
    # guided rows: 0.3 v + 0.5·1 + 0.2·0; others v. r = t, so u_tgt = ṽ; u = 1 (kept) or 0 (dropped)
    v_tilde = torch.where(guided.reshape(-1, 1, 1, 1), 0.3 * v + 0.5, v)
    u = (~dropped).float().reshape(-1, 1, 1, 1).expand_as(v)
    per_row = (u - v_tilde).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(out["loss"], (per_row / (per_row + 1e-3).sqrt()).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss_mse"], per_row.mean(), rtol=1e-5, atol=0)
    uniform = MeanFlowObjective(weighting="uniform", data_proportion=1.0, cond_drop_prob=0.0)
    o2 = uniform(net, data, seed, at, null, torch.Generator().manual_seed(3))
    torch.testing.assert_close(o2["loss"], o2["loss_mse"])


def test_time_sampling():
    ob = MeanFlowObjective(time_mu=-0.4, time_sigma=1.0, data_proportion=0.75)
    r, t = ob.sample_times(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(r[:3000], t[:3000]) and bool((r[3000:] < t[3000:]).all())
    assert bool(((t > 0) & (t < 1) & (r >= 0)).all())
    # both draws are sigmoid(N(-0.4, 1)); t is their maximum: P(t < 0.5) = Φ(0.4)² ≈ 0.429
    assert abs(float((t < 0.5).float().mean()) - 0.4289) < 0.03
    lo = MeanFlowObjective(noise_dist="uniform", time_min=0.2, time_max=0.6, data_proportion=0.0)
    r, t = lo.sample_times(1000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert bool(((r >= 0.2) & (t <= 0.6) & (r <= t)).all())


@pytest.mark.parametrize(
    ("opts", "match"),
    [({"path_type": "vp"}, "path_type"), ({"weighting": "lpips"}, "weighting"), ({"flow_mode": "x1"}, "flow_mode"),
     ({"noise_dist": "beta"}, "noise_dist"), ({"cfg_kappa": 1.0}, "cfg_kappa"), ({"cfg_omega": 0.0}, "cfg_omega"),
     ({"data_proportion": 1.5}, "data_proportion"), ({"time_min": 0.7, "time_max": 0.2}, "time_min"),
     ({"cfg_min_t": 0.9, "cfg_max_t": 0.1}, "cfg_min_t"), ({"adaptive_p": -1}, "adaptive_p"),
     ({"bogus": 1}, "bogus")],
)  # fmt: skip
def test_unknown_or_invalid_option_is_an_error(opts, match):
    with pytest.raises(ConfigError, match=match):
        build_generator(tiny_node(objective=opts))


def test_registration_config_and_upstream_errors():
    assert GENERATORS["meanflow"] == "models.generators.meanflow.MeanFlowGenerator"
    with pytest.raises(ConfigError, match="unknown option"):
        build_generator(tiny_node(sampler={"eta": 0.0}))
    cfg = {"model_name": "MeanFlow", "g_name": "GestureMF", "n_steps": 1, "guidance_scale": 1.0, "path_type": "vp",
           "modality_encoder": {"target": "models.layers.modality_encoder.ModalityEncoder", "params": {}},
           "denoiser": {"target": "models.denoiser.GestureDenoiser", "params": {}}}  # fmt: skip
    node = generator_node_from_upstream(cfg, vocab_size=10)
    assert node["params"]["objective"] == {"path_type": "vp"} and node["params"]["sampler"]["n_steps"] == 1
    with pytest.raises(ConfigError, match="path_type"):
        build_generator(node)


def test_bf16_autocast_on_cpu_trains_through_the_jvp():
    """`amp: bf16` on CPU: the JVP target and the loss run under autocast (another loss than float32's), the loss and
    gradients stay finite and the loss stays close to float32's (bf16 rounding only)."""
    g = torch.Generator().manual_seed(0)
    latents, seed = torch.randn(3, 32, 384, generator=g), torch.randn(3, 4, 384, generator=g)
    at = torch.randn(3, 32, 96, generator=g)
    losses = {}
    for amp in (False, True):
        gen = build_generator(tiny_node()).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = gen.loss(latents, None, None, seed, generator=torch.Generator().manual_seed(1), at_feat=at)
        out["loss"].backward()
        grads = [p.grad for p in gen.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        losses[amp] = float(out["loss"])
    assert losses[True] != losses[False] and abs(losses[True] - losses[False]) < 0.05 * abs(losses[False])


def test_generator_loss_backpropagates_and_samples():
    gen = build_generator(tiny_node())
    assert sorted({k.split(".")[0] for k in gen.state_dict()}) == ["denoiser", "modality_encoder"]
    gen.train()
    g = torch.Generator().manual_seed(0)
    latents, seed = torch.randn(3, 32, 384, generator=g), torch.randn(3, 4, 384, generator=g)
    at = torch.randn(3, 32, 96, generator=g, requires_grad=True)
    out = gen.loss(latents, None, None, seed, generator=g, at_feat=at)
    assert set(out) == {"loss", "loss_mse"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert at.grad is not None and float(at.grad.abs().sum()) > 0
    assert sum(float(p.grad.abs().sum()) for p in gen.denoiser.parameters() if p.grad is not None) > 0
    s = gen.eval().sample_with_stats(None, None, seed, at_feat=at.detach())
    assert s.latents.shape == (3, 384, 1, 32) and (s.nfe, s.nfe_rows) == (1, 1)


# --------------------------------------------------------------------------------------------------------------
# toy 2-D problem: a MeanFlow-trained MLP generates the data distribution in one step
# --------------------------------------------------------------------------------------------------------------


class ToyMLP(nn.Module):
    """u(x, r, t) for 2-D points laid out as (B, 2, 1, 1), with the denoiser's call signature."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))  # fmt: skip

    def forward(self, x, timesteps, cond_time, seed, at_feat):
        h = torch.cat([x.flatten(1), timesteps[:, None], (timesteps - cond_time)[:, None]], dim=1)
        return self.net(h).view_as(x)


CENTRES = torch.tensor([[-2.0, 1.0], [2.0, 1.0]])
MODE_STD = 0.3


def _toy_data(n: int, g: torch.Generator) -> torch.Tensor:
    mode = torch.randint(0, 2, (n,), generator=g)
    x = CENTRES[mode] + MODE_STD * torch.randn(n, 2, generator=g)
    return x.view(n, 2, 1, 1)


def _exact_velocity(x, timesteps, cond_time, seed, at_feat):
    """The toy mixture's true instantaneous velocity E[ε − x | z_t] on the linear path z_t = (1 − t)·x + t·ε (closed
    form: per mode, z_t ~ N((1 − t)·c, ((1 − t)²·s² + t²)·I)); float64 inside."""
    z, t, c, s2 = x.flatten(1).double(), timesteps.double()[:, None], CENTRES.double(), MODE_STD**2
    var = (1 - t) ** 2 * s2 + t * t  # (n, 1)
    d = z[:, None] - (1 - t)[:, None] * c[None]  # (n, modes, 2)
    w = torch.softmax(-(d**2).sum(-1) / (2 * var), dim=1)
    e_eps, e_x = (t / var)[:, :, None] * d, c[None] + ((1 - t) * s2 / var)[:, :, None] * d
    return (w[:, :, None] * (e_eps - e_x)).sum(1).float().view_as(x)


def test_sampler_with_the_true_velocity_reproduces_the_toy_data():
    """Control for the toy check below: with the exact velocity field (u(z, r, t) = v(z, t), right for small steps)
    the multi-step sampler lands on the data (std 0.3 per mode), so the harness (noise, time grid, update, the
    statistics) is not what under-disperses the trained model's samples. Measured: 0.29-0.30 at 200 steps."""
    n = 4000
    noise = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(2))
    zero = torch.zeros(n, 1, 1)
    x = MeanFlowSampler(n_steps=200)(_exact_velocity, noise, zero, zero, torch.zeros(1, 1)).latents.view(n, 2)
    stats = _toy_stats(x)  # the statistics of the check below
    assert stats["frac_close"] >= 0.98  # true distribution: 99.6%
    for m in range(2):
        assert all(abs(a - c) <= 0.05 for a, c in zip(stats[f"mean{m}"], CENTRES[m].tolist(), strict=True)), stats
        assert all(0.27 <= v <= 0.33 for v in stats[f"std{m}"]), stats
    # and one step of the instantaneous field is not a one-step generator (what MeanFlow's average velocity is for)
    one = MeanFlowSampler(n_steps=1)(_exact_velocity, noise, zero, zero, torch.zeros(1, 1)).latents.view(n, 2)
    assert float((torch.cdist(one, CENTRES).min(1).values < 1.0).float().mean()) < 0.5


def test_adaptive_weighting_does_not_fit_the_conditional_mean():
    """Why the paper's adaptive weighting (p = 1) can under-disperse a low-dimensional toy: with the weight
    sg(1/(‖Δ‖² + c)) the loss is IRLS for E[log(‖Δ‖² + c)], a robust, mode-seeking fit, whose minimiser is not the
    conditional mean that flow matching needs. Hand-built case: a constant net u = θ (1-D), every row r = t at t ≈ 1,
    data x = −3 (70%) or +3 (30%), so the regressed field is v = ε − x and E[v] = −E[x] = 1.2. At θ = 1.2 plain MSE
    (p = 0) has zero expected gradient; p = 1 pulls θ towards the majority's mode (v ≈ 3)."""
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(n, generator=g) < 0.7, -3.0, 3.0).view(n, 1, 1, 1)
    zero = torch.zeros(n, 1, 1)
    grads = {}
    for p in (0.0, 1.0):
        theta = torch.tensor(1.2, requires_grad=True)
        ob = MeanFlowObjective(adaptive_p=p, data_proportion=1.0, time_min=0.999, cond_drop_prob=0.0)
        loss = ob(lambda z, *_, th=theta: th.expand_as(z), x, zero, zero, torch.zeros(1, 1),
                  torch.Generator().manual_seed(1))
        (grads[p],) = torch.autograd.grad(loss["loss"], theta)
    # p = 0: d/dθ mean (θ − v)² = 2(θ − mean v), mean v = 1.2 within 4 standard errors (std of v: sqrt(1 + 8.64))
    assert abs(float(grads[0.0])) < 4 * 2 * 3.1 / math.sqrt(n)
    assert float(grads[1.0]) < -0.1  # descent moves θ up, towards the 70% mode


@pytest.mark.xfail(
    strict=True,
    reason=(
        "criteria fixed before the first run; measured (600 steps, 1 thread): 93.2% within 1.0, 47.8% right mode, "
        "means within 0.08 of the centres, but mode stds [0.195, 0.200] and [0.283, 0.207] vs >= 0.2: the one-step "
        "samples are under-dispersed (after 2000 steps: 0.17-0.24; with 2 or 8 sampler steps: 0.13-0.21; after "
        "10000 steps 0.14-0.28: p = 1 weighting is mode-seeking, see the test above and the README)"
    ),
)
def test_toy_mixture_one_step_samples_land_on_the_data():
    """Data: ½N((−2, 1), 0.3²I) + ½N((2, 1), 0.3²I). Train ToyMLP with MeanFlowObjective (paper defaults: linear
    path, adaptive p = 1, logit-normal(−0.4, 1), 75% r = t; no condition) for 600 Adam steps of batch 256, then
    draw 4000 one-step samples x = ε − u(ε, 0, 1).

    Pass criteria, fixed before the first run (not to be loosened after seeing results):
      (a) at least 85% of samples lie within distance 1.0 of the nearest centre (true distribution: 99.6%);
      (b) the fraction nearer the right centre is in [0.4, 0.6];
      (c) for each mode, the samples within 1.0 of its centre have a mean within 0.15 of the centre in each
          coordinate and a per-coordinate std in [0.2, 0.45] (true: 0.3).
    """
    _assert_toy_criteria(_train_toy_one_thread(adaptive_p=1.0))


@pytest.mark.xfail(
    strict=True,
    reason=(
        "pre-registered (session 21) and run once: 94.4% within 1.0, 53.4% right mode, means within 0.09, but mode "
        "stds [0.324, 0.173] and [0.275, 0.120] vs >= 0.2: plain MSE under-disperses too (y most), so p = 1's "
        "mode-seeking is not the only cause"
    ),
)
def test_toy_mixture_one_step_samples_land_on_the_data_with_plain_mse():
    """The same recipe, seeds and pass criteria as the paper-default check above, with one change: adaptive_p = 0
    (plain MSE, whose minimiser is the conditional mean, see test_adaptive_weighting_does_not_fit_the_conditional_mean).
    Pre-registered (session 21) before its first and only run: criteria (a)-(c) of the test above, unchanged."""
    _assert_toy_criteria(_train_toy_one_thread(adaptive_p=0.0))


@pytest.mark.xfail(
    strict=True,
    reason=(
        "pre-registered (session 22, R8) and run once: 4x the training (2400 steps), p = 1: 96.2% within 1.0, 52.6% "
        "right mode, but mode 0's mean x -2.195 (> 0.15 off) and stds [0.155, 0.221] / [0.223, 0.159] vs >= 0.2"
    ),
)
def test_toy_mixture_one_step_samples_land_on_the_data_after_4x_training():
    """The paper-default check above trained 4x longer (2400 steps, the LR drop at the same 2/3 point); its seeds
    and criteria unchanged. Pre-registered (session 22, docs/prereg/session22.md R8) before its only run."""
    _assert_toy_criteria(_train_toy_one_thread(adaptive_p=1.0, steps=2400))


@pytest.mark.xfail(
    strict=True,
    reason=(
        "pre-registered (session 22, R8) and run once: 4x the training (2400 steps), p = 0: 91.3% within 1.0, 54.3% "
        "right mode, means within 0.09, but mode 0's x std 0.177 vs >= 0.2 (stds [0.177, 0.265] / [0.213, 0.229])"
    ),
)
def test_toy_mixture_one_step_samples_land_on_the_data_with_plain_mse_after_4x_training():
    """The plain-MSE check above trained 4x longer (2400 steps); seeds and criteria unchanged. Pre-registered
    (session 22, R8) before its only run."""
    _assert_toy_criteria(_train_toy_one_thread(adaptive_p=0.0, steps=2400))


def test_toy_mixture_one_step_samples_land_on_the_data_with_plain_mse_and_a_16x_batch():
    """The plain-MSE check after 4x training above with one change, a 16x batch (4096 instead of 256): the
    one-sample target's variance, which the exact-velocity diagnostic below names as the shortfall, averaged over 16x
    the rows per update. Pre-registered (session 28, docs/prereg/session28.md T1) before its only run; seeds and
    criteria (a)-(c) unchanged."""
    _assert_toy_criteria(_train_toy_one_thread(adaptive_p=0.0, steps=2400, batch=4096))


class _ExactVelocityObjective(MeanFlowObjective):
    """MeanFlowObjective regressing the toy's exact conditional velocity v*(z_t, t) = E[ε − x | z_t] instead of the
    one-sample ε − x: the same identity target, JVP and weighting, without the target's sampling variance."""

    def path(self, data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_t, _ = super().path(data, noise, t)
        return z_t, _exact_velocity(z_t, t, None, None, None)


class _NoJvpObjective(_ExactVelocityObjective):
    """Control: the identity's JVP term dropped (u_tgt = v* on every row), i.e. plain flow matching for u."""

    def prediction_and_target(self, net: Callable[..., torch.Tensor], z_t: torch.Tensor, r: torch.Tensor,
                              t: torch.Tensor, v_tilde: torch.Tensor, seed: torch.Tensor, cond: torch.Tensor,
                              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        # the JVP still runs (the same code path and random draws as the objective); only its term is dropped
        u, _ = super().prediction_and_target(net, z_t, r, t, v_tilde, seed, cond)
        return u, v_tilde.detach()


def test_toy_one_step_samples_land_on_the_data_with_the_exact_velocity() -> None:
    """Diagnostic for the four expected failures above (issue 19; session 24): the same recipe, seeds and criteria
    (a)-(c) with plain MSE and 2400 steps, but regressing the exact conditional velocity instead of ε − x, lands on
    the data, and dropping the identity's JVP term does not. So the objective's identity target, its JVP and the
    one-step sampler are right, and the plain-MSE checks (p = 0) fail on the one-sample target's variance at this
    budget (with p = 1 the exact target still under-disperses: stds down to 0.189, so not only that there).
    Not a pre-registered check: measured before this test was written (Intel AVX-512: 98.6% within 1.0, 50.7%
    right mode, stds [0.327, 0.249] / [0.360, 0.234]; without the JVP term 0.9% within 1.0)."""
    _assert_toy_criteria(_train_toy_one_thread(adaptive_p=0.0, steps=2400, objective=_ExactVelocityObjective))
    control = _train_toy_one_thread(adaptive_p=0.0, steps=2400, objective=_NoJvpObjective)
    assert control["frac_close"] < 0.5, control  # one step of an instantaneous field is not a one-step generator


def _train_toy_one_thread(adaptive_p: float, steps: int = 600,
                          objective: type[MeanFlowObjective] = MeanFlowObjective, batch: int = 256) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: on a busy 2-core machine 2 threads are ~100x slower than 1
    try:
        return _train_toy_and_sample(adaptive_p, steps, objective, batch)
    finally:
        torch.set_num_threads(threads)


def _assert_toy_criteria(stats: dict) -> None:
    assert stats["frac_close"] >= 0.85, stats
    assert 0.4 <= stats["frac_right"] <= 0.6, stats
    for m in range(2):
        assert all(abs(a - c) <= 0.15 for a, c in zip(stats[f"mean{m}"], CENTRES[m].tolist(), strict=True)), stats
        assert all(0.2 <= s <= 0.45 for s in stats[f"std{m}"]), stats


def _train_toy_and_sample(adaptive_p: float, steps: int, objective: type[MeanFlowObjective] = MeanFlowObjective,
                          batch: int = 256) -> dict:  # fmt: skip
    torch.manual_seed(0)
    net = ToyMLP()
    ob = objective(cond_drop_prob=0.0, adaptive_p=adaptive_p)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[steps * 2 // 3], gamma=0.25)
    g = torch.Generator().manual_seed(1)
    b = batch
    seed, at, null = torch.zeros(b, 1, 1), torch.zeros(b, 1, 1), torch.zeros(1, 1)
    for _ in range(steps):
        loss = ob(net, _toy_data(b, g), seed, at, null, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    n = 4000
    net.eval()
    with torch.no_grad():
        noise = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(2))
        x = MeanFlowSampler()(net, noise, torch.zeros(n, 1, 1), torch.zeros(n, 1, 1), null).latents.view(n, 2)
    return _toy_stats(x)


def _toy_stats(x: torch.Tensor) -> dict:
    """(n, 2) samples -> the check's statistics: fraction within 1.0 of a centre, fraction nearer the right one,
    and per mode the mean and per-coordinate std of the samples within 1.0 of its centre."""
    dist = torch.cdist(x, CENTRES)
    nearest = dist.argmin(1)
    close = dist.min(1).values < 1.0
    frac_close, frac_right = float(close.float().mean()), float((nearest == 1).float().mean())
    stats = {"frac_close": frac_close, "frac_right": frac_right}
    for m in range(2):
        pts = x[close & (nearest == m)]
        stats[f"mean{m}"], stats[f"std{m}"] = pts.mean(0).tolist(), pts.std(0).tolist()
    return stats


# --------------------------------------------------------------------------------------------------------------
# DDP: the JVP runs inside DDP's forward (on the wrapped module's denoiser); gradients must still be synchronised
# --------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    return (torch.randn(4, 32, 384, generator=g), torch.randn(4, 8000, 2, generator=g),
            torch.randint(0, 64, (4, 128), generator=g), torch.randn(4, 4, 384, generator=g))  # fmt: skip


# condition dropout 0.5 so that both ranks drop some rows (their draws are fixed) and null_cond_embed gets a gradient
DDP_OBJECTIVE = {"cfg_omega": 0.5, "cfg_kappa": 0.3, "cond_drop_prob": 0.5}


def _ddp_grad_worker(rank: int, world: int, port: int, tmp: str) -> None:
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trainers.distributed import MethodCaller

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        gen = build_generator(tiny_node(objective=DDP_OBJECTIVE)).train()
        # as the trainer builds it under configs/generator_base.yaml (ddp_find_unused_parameters: true)
        ddp = DistributedDataParallel(MethodCaller(gen), find_unused_parameters=True)
        latents, audio, word, seed = _ddp_batch(rank)
        out = ddp(latents, audio, word, seed, generator=torch.Generator().manual_seed(rank), method="loss")
        out["loss"].backward()
        grads = {k: p.grad.clone() for k, p in gen.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "state": gen.state_dict(), "loss": out["loss"].detach()}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_are_synchronised_across_two_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_grad_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2))
    assert not torch.equal(r0["loss"], r1["loss"])  # the ranks saw different data
    assert r0["grads"].keys() == r1["grads"].keys() and "denoiser.null_cond_embed" in r0["grads"]
    for k, g0 in r0["grads"].items():
        assert torch.equal(g0, r1["grads"][k]), k
    # and they are the average of the two ranks' local gradients (recomputed here without DDP)
    local = []
    for rank in range(2):
        torch.manual_seed(rank)  # as the worker: build, then the same RNG stream for that rank's dropout draws
        gen = build_generator(tiny_node(objective=DDP_OBJECTIVE)).train()
        gen.load_state_dict(r0["state"])
        latents, audio, word, seed = _ddp_batch(rank)
        gen.loss(latents, audio, word, seed, generator=torch.Generator().manual_seed(rank))["loss"].backward()
        local.append({k: p.grad for k, p in gen.named_parameters() if p.grad is not None})
    assert r0["grads"].keys() == local[0].keys() == local[1].keys()  # (the allocated-but-unused norm1 have none)
    k = "denoiser.mytimmblocks.0.mlp.fc1.weight"
    assert not torch.allclose(local[0][k], local[1][k])
    torch.testing.assert_close(r0["grads"][k], (local[0][k] + local[1][k]) / 2, atol=1e-5, rtol=1e-4)
    assert math.isfinite(float(r0["loss"]))
