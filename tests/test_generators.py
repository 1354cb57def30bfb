"""Generators: objectives and samplers on toy velocity fields, and equivalence with the upstream sampler fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import stats

from models.denoiser import GestureDenoiser
from models.generators import (
    DDIMSampler,
    DiffusionGenerator,
    DiffusionObjective,
    EulerShortcutSampler,
    ShortcutGenerator,
    ShortcutObjective,
    build_generator,
    guided_prediction,
)
from models.generators.base import DataPrediction, LinearFlowPath, drop_condition, sample_beta_time, to_generator_layout
from models.generators.upstream import generator_node_from_upstream
from models.layers.condition_cache import condition_projection, reuse_condition
from tests.conftest import FIXTURES, need
from utils.config import ConfigError

# --------------------------------------------------------------------------------------------------------------
# toy networks with the denoiser's call signature net(x, timesteps, cond_time, seed, at_feat)
# --------------------------------------------------------------------------------------------------------------


class OracleVelocity:
    """Exact marginal velocity when every data latent equals ``c``: x_t = t c + (1-t) ε  =>  v = (c - x_t)/(1-t).

    ``scale`` != 1 gives a perturbed (wrong) field.
    """

    def __init__(self, c: torch.Tensor, scale: float = 1.0, shift: float = 0.0):
        self.c, self.scale, self.shift = c, scale, shift

    def __call__(self, x, t, d, seed, at_feat):
        tb = t.reshape(-1, 1, 1, 1).to(x.dtype)
        return self.scale * (self.c - x) / (1.0 - tb) + self.shift


class Recorder:
    """Records every call and answers with a fixed linear field v = a·x + b·t + cond-term (differentiable in a)."""

    def __init__(self, a: float = 0.3, b: float = 0.7):
        self.a = torch.tensor(a, requires_grad=True)
        self.b = b
        self.calls: list[dict] = []

    def __call__(self, x, t, d, seed, at_feat):
        self.calls.append(dict(x=x.detach().clone(), t=t.clone(), d=None if d is None else d.clone(),
                               seed=seed.clone(), at_feat=at_feat.detach().clone()))
        out = self.a * x + self.b * t.reshape(-1, 1, 1, 1).to(x.dtype) + at_feat.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return out


class ToyEncoder(nn.Module):
    def __init__(self, dim: int = 6):
        super().__init__()
        self.proj = nn.Linear(2, dim)

    def forward(self, audio, word):
        return self.proj(audio[:, :32]) + word[:, :32, None].float() * 0.01


class ToyDenoiser(nn.Module):
    def __init__(self, dim: int = 6):
        super().__init__()
        self.null_cond_embed = nn.Parameter(torch.zeros(32, dim))
        self.a = nn.Parameter(torch.tensor(0.5))
        self.w = nn.Parameter(torch.tensor(0.1))

    def forward(self, x, timesteps, cond_time, seed, at_feat):
        t = timesteps.float().reshape(-1, 1, 1, 1)
        return self.a * x + self.w * at_feat.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + 0.001 * t


def toy_inputs(b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 40, 2, generator=g), torch.randint(0, 10, (b, 128), generator=g),
            torch.randn(b, 4, 384, generator=g))


def _recorder_output(call: dict, a: float, b: float = 0.7) -> torch.Tensor:
    """What `Recorder` answered for a recorded call."""
    x = call["x"]
    cond_term = call["at_feat"].mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
    return a * x + b * call["t"].reshape(-1, 1, 1, 1).to(x.dtype) + cond_term


def _null_rows(at_feat: torch.Tensor) -> torch.Tensor:
    """Rows equal to the all-zero null embedding (the conditions below are all-ones)."""
    return (at_feat == 0).flatten(1).all(1)


# --------------------------------------------------------------------------------------------------------------
# path, time sampling, layouts
# --------------------------------------------------------------------------------------------------------------


def test_linear_path_endpoints_and_velocity():
    noise, data = torch.randn(4, 384, 1, 32), torch.randn(4, 384, 1, 32)
    ps = LinearFlowPath().sample(noise, data, torch.tensor([0.0, 1.0, 0.25, 0.5]))
    torch.testing.assert_close(ps.x_t[0], noise[0])  # t = 0 is noise
    torch.testing.assert_close(ps.x_t[1], data[1])  # t = 1 is data
    torch.testing.assert_close(ps.x_t[2], 0.25 * data[2] + 0.75 * noise[2])
    torch.testing.assert_close(ps.velocity, data - noise)


def test_beta_time_statistics_and_range():
    t = sample_beta_time(200_000, 2.0, 1.2, 1e-5, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (200_000,)
    assert float(t.min()) >= 1e-5 and float(t.max()) <= 1 - 1e-5
    assert abs(float(t.mean()) - 0.625) < 3e-3  # Beta(2, 1.2) mean = 2 / 3.2
    assert abs(float(t.median()) - 0.654) < 5e-3
    assert abs(float((t < 0.2).float().mean()) - stats.beta(2, 1.2).cdf(0.2)) < 3e-3
    # a generator fully determines the draw
    a = sample_beta_time(16, 2.0, 1.2, 1e-5, torch.device("cpu"), torch.Generator().manual_seed(5))
    b = sample_beta_time(16, 2.0, 1.2, 1e-5, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_latent_layouts():
    z = torch.randn(2, 32, 384)
    x = to_generator_layout(z)
    assert x.shape == (2, 384, 1, 32)
    assert x[1, 200, 0, 7] == z[1, 7, 200]
    assert to_generator_layout(x) is x
    with pytest.raises(ValueError, match="latents must be"):
        to_generator_layout(torch.randn(2, 384))


# --------------------------------------------------------------------------------------------------------------
# shortcut objective
# --------------------------------------------------------------------------------------------------------------


def test_flow_loss_is_minimised_by_the_true_velocity():
    torch.manual_seed(0)
    c = torch.randn(1, 384, 1, 32, dtype=torch.float64)
    data = c.expand(64, -1, -1, -1).clone()
    seed, at_feat, null = torch.zeros(64, 4, 384), torch.ones(64, 32, 8), torch.zeros(32, 8)
    for weighting in ("upstream_global", "per_sample", "none"):
        obj = ShortcutObjective(flow_fraction=1.0, flow_weighting=weighting)

        def loss(net, obj=obj):
            return float(obj(net, data, seed, at_feat, null, torch.Generator().manual_seed(1))["loss"])

        exact = loss(OracleVelocity(c))
        assert exact < 1e-12, (weighting, exact)
        for wrong in (OracleVelocity(c, scale=1.05), OracleVelocity(c, scale=0.95), OracleVelocity(c, shift=0.05)):
            assert loss(wrong) > 1e-4 + exact


def test_consistency_loss_vanishes_for_a_straight_flow():
    # the exact field of a point mass is straight, so two d-steps equal one 2d-step and L_cons = 0
    c = torch.randn(1, 384, 1, 32, dtype=torch.float64)
    data = c.expand(16, -1, -1, -1).clone()
    obj = ShortcutObjective(flow_fraction=0.0, time_alpha=1.0, time_beta=4.0)  # keep t + d away from 1
    out = obj(OracleVelocity(c), data, torch.zeros(16, 4, 384), torch.ones(16, 32, 8), torch.zeros(32, 8),
              torch.Generator().manual_seed(3))
    assert float(out["loss_flow"]) == 0.0
    assert float(out["loss_consistency"]) < 1e-10


def test_consistency_target_equals_two_half_steps_of_a_linear_field():
    net = Recorder(a=0.3, b=0.7)
    x = torch.randn(5, 384, 1, 32)
    t = torch.tensor([0.1, 0.2, 0.5, 0.9, 0.99])
    d = torch.tensor([0.5, 0.25, 0.125, 1 / 64, 1 / 128])
    seed, cond = torch.zeros(5, 4, 384), torch.zeros(5, 32, 8)
    target = ShortcutObjective().consistency_target(net, x, t, d, seed, cond)
    assert not target.requires_grad  # the teacher carries no gradient
    tb, db = t.reshape(-1, 1, 1, 1), d.reshape(-1, 1, 1, 1)
    s1 = 0.3 * x + 0.7 * tb
    x_mid = x + db * s1
    s2 = 0.3 * x_mid + 0.7 * (tb + db)
    torch.testing.assert_close(target, (s1 + s2) / 2)
    # one step of 2d with the target lands where two Euler d-steps land
    torch.testing.assert_close(x + 2 * db * target, x_mid + db * s2)
    # the teacher was called at (x, t, d) and (x', t + d, d)
    assert len(net.calls) == 2
    torch.testing.assert_close(net.calls[1]["t"], t + d)
    torch.testing.assert_close(net.calls[1]["d"], d)


def test_shortcut_objective_split_steps_and_hand_computed_losses():
    b = 10
    n_flow = (3 * b) // 4  # 7
    net = Recorder()
    data = torch.randn(b, 384, 1, 32)
    seed, at_feat, null = torch.randn(b, 4, 384), torch.ones(b, 32, 8), torch.zeros(32, 8)
    obj = ShortcutObjective(flow_weighting="upstream_global")
    out = obj(net, data, seed, at_feat, null, torch.Generator().manual_seed(0))
    teacher1, teacher2, student = net.calls
    # teacher passes: consistency rows only, d in {1/2..1/128}
    assert teacher1["x"].shape[0] == b - n_flow
    allowed = {2.0 ** -k for k in range(1, 8)}
    assert set(teacher1["d"].tolist()) <= allowed
    torch.testing.assert_close(teacher2["t"], teacher1["t"] + teacher1["d"])
    # student pass: flow rows with d = 0, consistency rows with 2d
    assert student["x"].shape[0] == b
    assert torch.all(student["d"][:n_flow] == 0)
    torch.testing.assert_close(student["d"][n_flow:], 2 * teacher1["d"])
    torch.testing.assert_close(student["x"][n_flow:], teacher1["x"])
    torch.testing.assert_close(student["seed"], seed)
    # recompute both losses by hand from the recorded x_t and t
    x_t, t = student["x"], student["t"]
    tb = t.reshape(-1, 1, 1, 1)
    v = data - (x_t - tb * data) / (1 - tb)  # x1 - eps, eps recovered from x_t
    pred = _recorder_output(student, float(net.a.detach()))
    mse_flow = ((pred[:n_flow] - v[:n_flow]) ** 2).mean()
    torch.testing.assert_close(out["loss_flow"], mse_flow * (1 / t[:n_flow]).mean(), rtol=1e-4, atol=0)
    target = (_recorder_output(teacher1, 0.3) + _recorder_output(teacher2, 0.3)) / 2
    mse_cons = ((pred[n_flow:] - target) ** 2).mean()
    torch.testing.assert_close(out["loss_consistency"], mse_cons, rtol=1e-4, atol=0)
    torch.testing.assert_close(out["loss"].detach(), out["loss_flow"] + out["loss_consistency"])
    out["loss"].backward()
    assert net.a.grad is not None and float(net.a.grad.abs()) > 0


def test_flow_weighting_options_differ_as_documented():
    c = torch.zeros(1, 384, 1, 32)
    data = c.expand(8, -1, -1, -1).clone() + 1.0
    args = (torch.zeros(8, 4, 384), torch.ones(8, 32, 8), torch.zeros(32, 8))
    net = OracleVelocity(c, scale=1.0)  # wrong (data is 1, not 0): non-zero loss with per-sample structure
    res = {}
    for w in ("upstream_global", "per_sample", "none"):
        rec = Recorder()
        wrapped = lambda *a, _r=rec: (_r(*a), net(*a))[1]  # noqa: E731
        res[w] = float(ShortcutObjective(flow_fraction=1.0, flow_weighting=w)(
            wrapped, data, *args, torch.Generator().manual_seed(2))["loss"])
        x_t, t = rec.calls[0]["x"], rec.calls[0]["t"]
    per = ((net(x_t, t, None, None, None) - (data - (x_t - t.reshape(-1, 1, 1, 1) * data) /
                                              (1 - t.reshape(-1, 1, 1, 1)))) ** 2).flatten(1).mean(1)
    assert res["none"] == pytest.approx(float(per.mean()), rel=1e-4)
    assert res["upstream_global"] == pytest.approx(float(per.mean() * (1 / t).mean()), rel=1e-4)
    assert res["per_sample"] == pytest.approx(float((per / t).mean()), rel=1e-4)
    assert res["per_sample"] != pytest.approx(res["upstream_global"], rel=1e-3)
    with pytest.raises(ValueError, match="flow_weighting"):
        ShortcutObjective(flow_weighting="bogus")


def _constant_guess(b: int):
    """Data latents, a fixed guess x̂₁, a Recorder of the calls, the data-predicting net answering the guess, and the
    (seed, condition, null condition) arguments of an objective call."""
    data = torch.randn(b, 384, 1, 32, dtype=torch.float64)
    guess = torch.randn(1, 384, 1, 32, dtype=torch.float64)
    rec = Recorder()
    net = DataPrediction(lambda *a: (rec(*a), guess.expand(b, -1, -1, -1))[1])
    return data, guess, rec, net, (torch.zeros(b, 4, 384), torch.ones(b, 32, 8), torch.zeros(32, 8))


def test_data_loss_space_is_the_endpoint_error_of_a_data_prediction():
    # loss_space=data with a data-predicting net: residuals × (1 − t), i.e. x̂₁ − x₁ wherever 1 − t >= 0.05
    b = 64
    data, guess, rec, net, args = _constant_guess(b)
    kw = dict(flow_fraction=1.0, flow_weighting="none", time_alpha=1.0, time_beta=1.0)
    out = ShortcutObjective(loss_space="data", **kw)(net, data, *args, torch.Generator().manual_seed(3))
    x_t, t = rec.calls[0]["x"], rec.calls[0]["t"].double().reshape(-1, 1, 1, 1)
    gap = (1 - t).clamp_min(0.05)
    v_target = (data - x_t) / (1 - t)  # x₁ − ε
    residual = (guess - x_t) - v_target * gap  # (v̂ − v)·gap with v̂ = (x̂₁ − x_t)/gap
    torch.testing.assert_close(out["loss_flow"], (residual**2).mean(), rtol=1e-6, atol=0)
    inside = (t.flatten() <= 0.95)
    assert 0 < int(inside.sum()) < b  # both regimes drawn
    torch.testing.assert_close(residual[inside], (guess - data).expand(b, -1, -1, -1)[inside])
    # the velocity-space loss of the same predictions is the same residual / gap²: large near t = 1
    vel = ShortcutObjective(**kw)(net, data, *args, torch.Generator().manual_seed(3))
    torch.testing.assert_close(vel["loss_flow"], ((residual / gap) ** 2).mean(), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="loss_space"):
        ShortcutObjective(loss_space="noise")


def test_derivative_weights_penalise_the_temporal_differences_of_the_error():
    b = 16
    data, guess, rec, net, args = _constant_guess(b)
    obj = ShortcutObjective(flow_fraction=1.0, flow_weighting="none", loss_space="data", derivative_weights=[2.0, 3.0])
    out = obj(net, data, *args, torch.Generator().manual_seed(4))
    x_t, t = rec.calls[0]["x"], rec.calls[0]["t"].double().reshape(-1, 1, 1, 1)
    r = (guess - x_t) - (data - x_t) / (1 - t) * (1 - t).clamp_min(0.05)  # data-space residual, by hand
    d1, d2 = r[..., 1:] - r[..., :-1], r[..., 2:] - 2 * r[..., 1:-1] + r[..., :-2]
    torch.testing.assert_close(out["loss_derivative"], 2.0 * (d1**2).mean() + 3.0 * (d2**2).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out["loss"].detach(), out["loss_flow"] + out["loss_derivative"])
    assert "loss_derivative" not in ShortcutObjective(flow_fraction=1.0, loss_space="data")(net, data, *args)
    with pytest.raises(ValueError, match="need loss_space='data'"):
        ShortcutObjective(derivative_weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        ShortcutObjective(loss_space="data", derivative_weights=[-1.0])


def test_consistency_time_within_keeps_every_step_inside_the_path():
    b = 4000
    data = torch.randn(b, 2, 1, 4)
    args = (torch.zeros(b, 4, 2), torch.ones(b, 4, 3), torch.zeros(4, 3))
    n_flow = (3 * b) // 4
    ends = {}
    for mode in ("shared", "within"):
        net = Recorder()
        ShortcutObjective(consistency_time=mode, time_alpha=1.0, time_beta=1.0)(
            net, data, *args, torch.Generator().manual_seed(0))
        student = net.calls[-1]
        ends[mode] = student["t"][n_flow:] + student["d"][n_flow:]  # where the student's 2d-step ends
        assert torch.all(student["d"][:n_flow] == 0)
        teacher1 = net.calls[0]
        torch.testing.assert_close(teacher1["t"], student["t"][n_flow:])
    assert float(ends["shared"].max()) > 1.2  # upstream: a step of 1 from t ~ U(0,1) often ends far past 1
    assert float(ends["within"].max()) <= 1.0 + 1e-6
    # the flow rows are untouched by the option
    with pytest.raises(ValueError, match="consistency_time"):
        ShortcutObjective(consistency_time="late")


@pytest.mark.parametrize(("semantics", "cons_null"), [("v1", 0.2), ("v2", 0.8)])
def test_condition_dropout_rates(semantics, cons_null):
    b = 8000
    net = Recorder()
    data = torch.randn(b, 2, 1, 4)
    obj = ShortcutObjective(consistency_cond=semantics)
    obj(net, data, torch.zeros(b, 4, 2), torch.ones(b, 4, 3), torch.zeros(4, 3), torch.Generator().manual_seed(0))
    student = net.calls[-1]["at_feat"]
    n_flow = (3 * b) // 4
    null = _null_rows(student)
    assert abs(float(null[:n_flow].float().mean()) - 0.1) < 0.015
    assert abs(float(null[n_flow:].float().mean()) - cons_null) < 0.03
    # the teacher sees the same (dropped) condition as the student
    assert torch.equal(_null_rows(net.calls[0]["at_feat"]), null[n_flow:])


def test_objective_handles_tiny_batches():
    for b in (1, 2):
        out = ShortcutObjective()(Recorder(), torch.randn(b, 384, 1, 32), torch.zeros(b, 4, 384),
                                  torch.ones(b, 32, 8), torch.zeros(32, 8))
        assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


# --------------------------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------------------------


def test_euler_one_step_lands_on_data_for_the_exact_straight_field():
    c = torch.randn(1, 384, 1, 32, dtype=torch.float64)
    noise = torch.randn(3, 384, 1, 32, dtype=torch.float64)
    for n in (1, 2, 4):
        out = EulerShortcutSampler()(OracleVelocity(c), noise, torch.zeros(3, 4, 384), torch.ones(3, 32, 8),
                                     torch.zeros(32, 8), n_steps=n, guidance=1.0)
        torch.testing.assert_close(out.latents, c.expand(3, -1, -1, -1), atol=1e-6, rtol=0)


class ConstantData:
    """A data-prediction network that always answers x̂₁ = c (and records its calls' x)."""

    def __init__(self, c: torch.Tensor):
        self.c = c
        self.seen: list[torch.Tensor] = []

    def __call__(self, x, t, d, seed, at_feat):
        self.seen.append(x)
        return self.c.expand_as(x)


def test_data_prediction_is_the_velocity_towards_the_predicted_endpoint():
    c = torch.randn(1, 384, 1, 32, dtype=torch.float64)
    x = torch.randn(2, 384, 1, 32, dtype=torch.float64)
    v = DataPrediction(ConstantData(c))(x, torch.tensor([0.0, 0.75]), None, None, None)
    torch.testing.assert_close(v[0], (c[0] - x[0]) / 1.0)
    torch.testing.assert_close(v[1], (c[0] - x[1]) / 0.25)
    near_one = DataPrediction(ConstantData(c), min_gap=0.05)(x, torch.tensor([0.99, 1.5]), None, None, None)
    torch.testing.assert_close(near_one, (c - x) / 0.05)  # 1 - t clamped, never divided by ~0 or a negative
    with pytest.raises(ValueError, match="min_gap"):
        DataPrediction(ConstantData(c), min_gap=0.0)


def test_data_prediction_sampler_output_is_the_last_prediction_whatever_the_noise():
    # the jitter fix in one line: the sampled latent is what the network predicted, the input noise is cancelled
    c = torch.randn(1, 384, 1, 32, dtype=torch.float64)
    noise = 10 * torch.randn(3, 384, 1, 32, dtype=torch.float64)
    for n in (1, 2, 5):
        out = EulerShortcutSampler()(DataPrediction(ConstantData(c)), noise, torch.zeros(3, 4, 384),
                                     torch.ones(3, 32, 8), torch.zeros(32, 8), n_steps=n, guidance=2.0)
        torch.testing.assert_close(out.latents, c.expand(3, -1, -1, -1), atol=1e-6, rtol=0)


def test_generator_prediction_option():
    params = {"modality_encoder": ToyEncoder(), "denoiser": ToyDenoiser()}
    gen = build_generator({"name": "shortcut", "params": {**params, "prediction": "data"}}).eval()
    assert isinstance(gen.net, DataPrediction) and gen.net.net is gen.denoiser
    audio, word, seed = toy_inputs()
    noise = torch.randn(3, 384, 1, 32)
    # one step from t≈0: x̂₁ = denoiser(noise) exactly (ToyDenoiser's output), not noise + velocity
    out = gen.sample(audio, word, seed, n_steps=1, guidance=1.0, noise=noise)
    expected = gen.denoiser(noise, torch.full((3,), 1e-8), torch.ones(3), seed, gen.encode(audio, word))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # many steps too: the training clamp of 1 − t (0.05) must not stop the last steps short of x̂₁
    c = torch.randn(1, 384, 1, 32)
    const = ShortcutGenerator(ToyEncoder(), ToyDenoiser(), prediction="data").eval()
    const.denoiser.forward = lambda x, *a: c.expand_as(x)
    for n in (20, 21, 50):
        torch.testing.assert_close(const.sample(audio, word, seed, n_steps=n, guidance=2.0, noise=noise),
                                   c.expand(3, -1, -1, -1), atol=1e-4, rtol=0)
    assert build_generator({"name": "shortcut", "params": dict(params)}).net is not None
    with pytest.raises(ConfigError, match="prediction must be one of"):
        build_generator({"name": "shortcut", "params": {**params, "prediction": "epsilon"}})


def test_euler_grid_step_size_and_nfe():
    net = Recorder()
    noise = torch.randn(2, 384, 1, 32)
    out = EulerShortcutSampler()(net, noise, torch.zeros(2, 4, 384), torch.ones(2, 32, 8), torch.zeros(32, 8),
                                 n_steps=4, guidance=2.0)
    assert (out.nfe, out.nfe_rows) == (4, 8)
    grid = torch.linspace(1e-8, 1 - 1e-8, 5)
    for k, call in enumerate(net.calls):
        assert call["x"].shape[0] == 4  # doubled batch
        torch.testing.assert_close(call["t"], grid[k].expand(4))
        torch.testing.assert_close(call["d"], torch.full((4,), 0.25))
        assert not _null_rows(call["at_feat"][:2]).any() and _null_rows(call["at_feat"][2:]).all()
    net2 = Recorder()
    out = EulerShortcutSampler()(net2, noise, torch.zeros(2, 4, 384), torch.ones(2, 32, 8), torch.zeros(32, 8),
                                 n_steps=3, guidance=1.0)
    assert (out.nfe, out.nfe_rows) == (3, 3) and all(c["x"].shape[0] == 2 for c in net2.calls)


def test_guided_prediction_formula():
    def net(x, t, d, seed, at_feat):
        return x + at_feat.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) * 3.0

    x = torch.randn(2, 4, 1, 5)
    cond, null = torch.full((2, 5, 3), 2.0), torch.full((5, 3), -1.0)
    t, seed = torch.zeros(2), torch.zeros(2, 4, 4)
    out, rows = guided_prediction(net, x, t, t, seed, cond, null, 2.5)
    v_c, v_u = x + 6.0, x - 3.0
    torch.testing.assert_close(out, v_u + 2.5 * (v_c - v_u))
    assert rows == 4
    out, rows = guided_prediction(net, x, t, None, seed, cond, null, 1.0)
    torch.testing.assert_close(out, v_c)
    assert rows == 2


def test_drop_condition_replaces_only_masked_rows():
    at = torch.ones(3, 4, 2, requires_grad=True)
    out = drop_condition(at, torch.zeros(4, 2), torch.tensor([False, True, False]))
    assert torch.equal(_null_rows(out), torch.tensor([False, True, False]))
    out.sum().backward()
    assert torch.equal(at.grad[:, 0, 0], torch.tensor([1.0, 0.0, 1.0]))


def test_ddim_sampler_recovers_a_constant_x0_and_runs_without_guidance():
    c = torch.randn(1, 384, 1, 32)
    net = lambda x, t, d, seed, at: c.expand(x.shape[0], -1, -1, -1)  # noqa: E731  (perfect x0 prediction)
    sampler = DDIMSampler()
    noise = torch.randn(2, 384, 1, 32)
    for w in (0.5, 1.0, 1.5):
        out = sampler(net, noise, torch.zeros(2, 4, 384), torch.ones(2, 32, 8), torch.zeros(32, 8), guidance=w)
        torch.testing.assert_close(out.latents, c.expand(2, -1, -1, -1), atol=1e-5, rtol=0)
        assert out.nfe == 20 and out.nfe_rows == (40 if w > 1 else 20)
    assert sampler.timesteps().tolist() == list(range(950, -1, -50))


def test_ddim_sampler_calls_with_integer_timesteps_and_no_step_size():
    net = Recorder()
    sampler = DDIMSampler(n_steps=5)
    noise = torch.randn(2, 384, 1, 32)
    sampler(net, noise, torch.zeros(2, 4, 384), torch.ones(2, 32, 8), torch.zeros(32, 8), guidance=1.0)
    assert [int(c["t"][0]) for c in net.calls] == [800, 600, 400, 200, 0]
    assert all(c["d"] is None and c["t"].dtype == torch.int64 for c in net.calls)
    ab = sampler.scheduler.alphas_cumprod
    torch.testing.assert_close(net.calls[0]["x"], (1 - ab[800]).sqrt() * noise)  # start = add_noise(0, ε, t0)


def test_diffusion_objective_noising_and_target():
    net = Recorder()
    b = 6
    data = torch.randn(b, 384, 1, 32)
    obj = DiffusionObjective()
    out = obj(net, data, torch.zeros(b, 4, 384), torch.ones(b, 32, 8), torch.zeros(32, 8),
              torch.Generator().manual_seed(0))
    call = net.calls[0]
    t = call["t"]
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999 and call["d"] is None
    ab = obj.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    noise = (call["x"] - ab.sqrt() * data) / (1 - ab).sqrt()
    assert abs(float(noise.std()) - 1.0) < 0.05  # x_t is sqrt(ab) x0 + sqrt(1-ab) ε with ε ~ N(0, 1)
    pred = 0.3 * call["x"] + 0.7 * t.reshape(-1, 1, 1, 1) + call["at_feat"].mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out["loss"].detach(), ((pred - data) ** 2).mean())


def test_diffusion_condition_dropout_rate():
    net = Recorder()
    b = 8000
    DiffusionObjective()(net, torch.randn(b, 2, 1, 4), torch.zeros(b, 4, 2), torch.ones(b, 4, 3), torch.zeros(4, 3),
                         torch.Generator().manual_seed(1))
    assert abs(float(_null_rows(net.calls[0]["at_feat"]).float().mean()) - 0.1) < 0.015


# --------------------------------------------------------------------------------------------------------------
# the generator module and the factory
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shortcut", "diffusion"])
def test_generator_module_api(name):
    gen = build_generator({"name": name, "params": {"modality_encoder": ToyEncoder(), "denoiser": ToyDenoiser()}})
    assert isinstance(gen, ShortcutGenerator if name == "shortcut" else DiffusionGenerator)
    assert {k.split(".")[0] for k in gen.state_dict()} == {"modality_encoder", "denoiser"}
    audio, word, seed = toy_inputs()
    out = gen.loss(torch.randn(3, 32, 384), audio, word, seed, generator=torch.Generator().manual_seed(0))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert gen.denoiser.a.grad is not None and gen.modality_encoder.proj.weight.grad is not None
    gen.eval()
    s1 = gen.sample(audio, word, seed, generator=torch.Generator().manual_seed(7))
    s2 = gen.sample(audio, word, seed, generator=torch.Generator().manual_seed(7))
    s3 = gen.sample(audio, word, seed, generator=torch.Generator().manual_seed(8))
    assert s1.shape == (3, 384, 1, 32) and torch.equal(s1, s2) and not torch.equal(s1, s3)
    # precomputed condition gives the same result as audio + word
    at = gen.encode(audio, word).detach()
    torch.testing.assert_close(gen.sample(None, None, seed, noise=torch.zeros(3, 384, 1, 32), at_feat=at),
                               gen.sample(audio, word, seed, noise=torch.zeros(3, 384, 1, 32)))
    stats_ = gen.sample_with_stats(audio, word, seed, n_steps=3, guidance=1.0)
    assert (stats_.nfe, stats_.nfe_rows) == (3, 3)
    with pytest.raises(ValueError, match="audio and word"):
        gen.sample(None, None, seed)


@pytest.mark.parametrize("name,n,w", [("diffusion", 20, 1.5), ("shortcut", 2, 2.0), ("shortcut", 3, 1.0)])
def test_sampling_projects_the_condition_once_per_window_bit_identically(name, n, w):
    """Inside sampling the condition's projections (cross-attention keys/values, the frame-aligned path) run once
    per window, not once per step, and the latents are bit-identical to a sampler run without the cache."""
    torch.manual_seed(0)
    den = GestureDenoiser(latent_dim=8, ff_size=16, num_layers=1, num_heads=2, cond_proj_dim=8, frame_cond=True)
    with torch.no_grad():
        den.frame_cond_proj.weight.normal_(0.0, 0.2)  # zero-initialised: make the path matter
        den.null_cond_embed.normal_()
    gen = build_generator({"name": name, "params": {"modality_encoder": ToyEncoder(24), "denoiser": den}}).eval()
    calls = []
    projections = [blk.cross_attn.kv for blk in den.cross_attn_blocks] + [den.frame_cond_proj]
    for m in projections:
        m.register_forward_hook(lambda mod, args, out: calls.append(mod))
    at, noise, seed = torch.randn(2, 32, 24), torch.randn(2, 384, 1, 32), torch.randn(2, 4, 384)
    cached = gen.sample_with_stats(None, None, seed, n_steps=n, guidance=w, noise=noise, at_feat=at)
    assert len(calls) == len(projections)  # one distinct condition (doubled with guidance): one call each
    calls.clear()
    with torch.no_grad():
        plain = gen.sampler(gen.sampling_net, noise, seed, at, gen.null_cond, n, w)
    assert len(calls) == n * len(projections)
    assert torch.equal(cached.latents, plain.latents)
    # a new window (another condition) is projected afresh, and with autograd on nothing is cached
    calls.clear()
    gen.sample_with_stats(None, None, seed, n_steps=n, guidance=w, noise=noise, at_feat=at + 1.0)
    assert len(calls) == len(projections)
    with reuse_condition():
        den(noise, torch.zeros(2), None, seed, at).sum()
        den(noise, torch.zeros(2), None, seed, at).sum()
    assert len(calls) == 3 * len(projections)


def test_condition_cache_keys_on_identity_version_and_autocast():
    """A stored projection is returned only for the same tensor, unedited, under the same autocast state; outside
    the block or with autograd on nothing is stored."""
    lin = nn.Linear(4, 3)
    calls = []
    lin.register_forward_hook(lambda mod, args, out: calls.append(1))
    x = torch.randn(2, 4)
    with torch.no_grad(), reuse_condition():
        a = condition_projection(lin, x)
        assert condition_projection(lin, x) is a and len(calls) == 1
        y = x.clone()  # equal values, another tensor: computed (identity, not values)
        torch.testing.assert_close(condition_projection(lin, y), a, rtol=0, atol=0)
        assert len(calls) == 2
        x.add_(1.0)  # an in-place edit is a miss, never a stale hit
        torch.testing.assert_close(condition_projection(lin, x), lin(x), rtol=0, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert condition_projection(lin, x).dtype == torch.bfloat16
    n = len(calls)
    with torch.no_grad():
        condition_projection(lin, x), condition_projection(lin, x)
    with reuse_condition():  # autograd on (training): never stored
        condition_projection(lin, x), condition_projection(lin, x)
    assert len(calls) == n + 4


def test_factory_errors():
    with pytest.raises(ConfigError, match="not a known generator"):
        build_generator({"name": "nope", "params": {}})
    with pytest.raises(ConfigError, match="null_cond_embed"):
        ShortcutGenerator(ToyEncoder(), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="unknown key"):
        build_generator({"name": "shortcut", "params": {"modality_encoder": ToyEncoder(), "denoiser": ToyDenoiser(),
                                                        "bogus": 1}})


# --------------------------------------------------------------------------------------------------------------
# upstream fixtures: sd/* loaded strictly; from the recorded noise, reproduce upstream latents
# --------------------------------------------------------------------------------------------------------------

ATOL = 2e-5  # the float32 denoiser itself differs from upstream by ~3e-6 (fixture README precision table)


def _load_fixture_generator(name: str):
    path = need(FIXTURES / f"{name}.npz")
    d = np.load(path)
    sd = {k[3:]: torch.from_numpy(d[k]) for k in d.files if k.startswith("sd/")}
    model_cfg = json.loads(str(d["ctor_json"]))["model_cfg"]
    vocab = sd["modality_encoder.text_pre_encoder_body.weight"].shape[0]
    gen = build_generator(generator_node_from_upstream(model_cfg, vocab_size=vocab))
    gen.load_state_dict(sd, strict=True)
    assert list(gen.state_dict()) == json.loads(str(d["sd_keys_json"]))
    return gen.eval(), d


def _t(d, key):
    return torch.from_numpy(d[key])


def test_shortcut_sampler_matches_upstream_fixture():
    gen, d = _load_fixture_generator("sampler_shortcut_small_v2")
    assert isinstance(gen, ShortcutGenerator)
    audio, word, seed = _t(d, "audio_onset"), _t(d, "word"), _t(d, "seed")
    with torch.no_grad():
        at_feat = gen.encode(audio, word)
    torch.testing.assert_close(at_feat, _t(d, "at_feat"), atol=1e-6, rtol=0)
    expected = {}
    for tag, n, w in [("n2_w2", 2, 2.0), ("n4_w2", 4, 2.0), ("n2_w1", 2, 1.0), ("n1_w3.5", 1, 3.5)]:
        out = gen.sample_with_stats(audio, word, seed, n_steps=n, guidance=w, noise=_t(d, f"{tag}_init_noise"))
        torch.testing.assert_close(out.latents, _t(d, f"{tag}_latents"), atol=ATOL, rtol=0)
        assert out.nfe == n and out.nfe_rows == n * (2 if w > 1 else 1)
        expected[tag] = out.latents
    # defaults are the v2 config (2 steps, w = 2)
    torch.testing.assert_close(gen.sample(audio, word, seed, noise=_t(d, "n2_w2_init_noise")), expected["n2_w2"])
    # the tolerance is far below what separates the settings
    assert (expected["n2_w2"] - expected["n2_w1"]).abs().max() > 100 * ATOL


def test_ddim_sampler_matches_upstream_fixture():
    gen, d = _load_fixture_generator("sampler_ddim_small_v2")
    assert isinstance(gen, DiffusionGenerator)
    assert gen.sampler.timesteps().tolist() == d["timesteps"].tolist()
    torch.testing.assert_close(gen.scheduler.alphas_cumprod, _t(d, "alphas_cumprod"), atol=0, rtol=0)
    audio, word, seed, noise = _t(d, "audio_onset"), _t(d, "word"), _t(d, "seed"), _t(d, "init_noise")
    out = gen.sample_with_stats(audio, word, seed, noise=noise)  # defaults: 20 steps, w = 1.5
    torch.testing.assert_close(out.latents, _t(d, "latents"), atol=ATOL, rtol=0)
    assert (out.nfe, out.nfe_rows) == (20, 40)
    w25 = gen.sample(audio, word, seed, guidance=2.5, noise=noise)
    torch.testing.assert_close(w25, _t(d, "w2.5_latents"), atol=ATOL, rtol=0)
    # w <= 1 (upstream crashes there): one plain conditional call per step
    w1 = gen.sample_with_stats(audio, word, seed, guidance=1.0, noise=noise)
    assert torch.isfinite(w1.latents).all() and w1.nfe_rows == 20
    assert (w1.latents - out.latents).abs().max() > 100 * ATOL


def test_fixture_generator_trains_one_step():
    gen, d = _load_fixture_generator("sampler_shortcut_small_v2")
    gen.train()
    latents = torch.randn(4, 32, 384, generator=torch.Generator().manual_seed(0))
    audio = _t(d, "audio_onset").repeat(2, 1, 1)
    word = _t(d, "word").repeat(2, 1)
    out = gen.loss(latents, audio, word, latents[:, :4], generator=torch.Generator().manual_seed(1))
    assert set(out) == {"loss", "loss_flow", "loss_consistency"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    for part in (gen.denoiser, gen.modality_encoder):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None) > 0
