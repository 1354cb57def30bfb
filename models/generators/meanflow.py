"""MeanFlow: a network for the *average* velocity u(z_t, r, t) over [r, t], trained with the MeanFlow identity, so
that one step x = ε − u(ε, r=0, t=1) generates a sample.

Source: Geng, Deng, Bai, Kolter, He (2025), "Mean Flows for One-step Generative Modeling" (below "the paper").
Upstream GestureLSM ships only the sampler (`models/MeanFlow.py`, spec shared/spec/gesturelsm.md §4.7, §1.4); the
objective here is built from the paper, with the option names of upstream's MeanFlow config.

Time runs as in the paper and upstream's MeanFlow: **t = 1 is noise, t = 0 is data** (the reverse of
`LinearFlowPath`). The denoiser is called with ``timesteps = t`` and ``cond_time = r`` (r goes through the step-size
embedding). It predicts u (velocity units); there is no data-prediction variant.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor

from models.generators.base import (
    LatentGenerator,
    NetFn,
    Objective,
    SampleOutput,
    Sampler,
    broadcast_like,
    drop_condition,
    guided_euler,
    rand,
    randn,
)
from models.layers.attention import math_attention
from utils.config import ConfigError

PATH_TYPES = ("linear", "cosine")
WEIGHTINGS = ("adaptive", "uniform")
NOISE_DISTS = ("logit_normal", "uniform")
FLOW_MODES = ("v",)


def path_coefficients(path_type: str, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """z_t = α(t)·x + σ(t)·ε and the derivatives (α'(t), σ'(t)), with α(0) = σ(1) = 1, α(1) = σ(0) = 0.

    * ``linear`` (the paper): α = 1 − t, σ = t, so v = dz_t/dt = ε − x.
    * ``cosine`` (the variance-preserving "GVP" interpolant of SiT, Ma et al. 2024; named in upstream's config):
      α = cos(πt/2), σ = sin(πt/2), v = −(π/2)·sin(πt/2)·x + (π/2)·cos(πt/2)·ε.
    The MeanFlow identity needs only z_t and its time derivative v, so both paths use the same objective, and the
    sampler (z_r = z_t − (t − r)·u, from the definition of u) is the same for both.
    """
    if path_type == "linear":
        one = torch.ones_like(t)
        return 1.0 - t, t, -one, one
    if path_type == "cosine":
        a = 0.5 * math.pi * t
        half_pi = 0.5 * math.pi
        return torch.cos(a), torch.sin(a), -half_pi * torch.sin(a), half_pi * torch.cos(a)
    raise ConfigError(f"path_type must be one of {PATH_TYPES}, got {path_type!r}")


class MeanFlowObjective(Objective):
    """The MeanFlow loss (the paper, Eq. 9-10 and Alg. 1), in the reversed time convention (t = 1 noise):

        z_t = α(t)·x + σ(t)·ε,   v = α'(t)·x + σ'(t)·ε   (linear: z_t = (1 − t)·x + t·ε, v = ε − x)
        u, du/dt = jvp(u_θ(·, r, t), (z_t, r, t), (ṽ, 0, 1))        (``torch.func.jvp``; one forward pass)
        u_tgt = sg(ṽ − (t − r)·du/dt),   L = mean_i  sg(w_i)·‖u_i − u_tgt,i‖²

    where ṽ = v without training-time guidance. Choices and their source:

    * **(r, t) sampling** (the paper §4.3, "Time samplers" and Table 1): two independent draws from ``noise_dist``
      — ``logit_normal``: sigmoid(N(``time_mu``, ``time_sigma``²)), or ``uniform`` — rescaled to
      [``time_min``, ``time_max``]; the larger is t, the smaller r. The first ⌊``data_proportion``·B⌋ rows (rows
      are i.i.d., so which rows does not matter) get r = t: there u_tgt = ṽ and the loss is plain flow matching.
      The paper's best setting is 25% r ≠ t, i.e. ``data_proportion`` 0.75; upstream's config has 0.5.
    * **du/dt** is the total derivative d/dt u(z_t, r, t) = ṽ·∂_z u + ∂_t u: a JVP with tangent (ṽ, 0, 1) for
      (z, r, t) (the paper, Eq. 8 and Alg. 1). It runs with `math_attention` (the fused CPU attention kernel has
      no forward-mode derivative). The JVP also returns the primal u, which is the prediction in the loss, so the
      prediction and du/dt see the same dropout/DropPath draws.
    * **Adaptive loss weighting** (the paper §4.3, "Loss metrics"): w = 1/(‖Δ‖² + ``adaptive_eps``)^p with
      p = ``adaptive_p`` (stop-gradient), i.e. the loss ‖Δ‖^{2(1−p)}: p = 0.5 is a pseudo-Huber-like loss, p = 0
      plain MSE. ``weighting: uniform`` is plain MSE. Deviation: ‖Δ‖² is the *mean* over the latent's elements
      rather than the sum, so ``adaptive_eps`` (the paper's c = 1e-3) is relative to a per-element MSE and the
      loss scale does not depend on the latent size.
    * **Training-time guidance** (the paper §4.2 Eq. 13-16 and App. B.1 "improved CFG"): the field regressed is
      ṽ = ω·v + κ·u(z_t, t, t | c) + (1 − ω − κ)·u(z_t, t, t | ∅), with ω = ``cfg_omega``, κ = ``cfg_kappa`` and
      both u's evaluated without gradient (u(z, t, t) = v is the instantaneous velocity); the effective guidance
      scale is ω/(1 − κ), so a model trained this way samples with guidance 1 (one network call). It applies to
      rows with t in [``cfg_min_t``, ``cfg_max_t``] (the paper's guidance interval) whose condition was not
      dropped; other rows use ṽ = v. ω = 1, κ = 0 (the defaults) is no training-time guidance and costs no extra
      network calls. The guidance evaluations run in the network's current mode (as the shortcut teacher).
    * **Condition dropout** for classifier-free guidance: each row's condition is replaced by the null embedding
      with probability ``cond_drop_prob`` (0.1, as the shortcut objective and the paper's class dropout).
    * ``path_type``: ``linear`` (the paper) or ``cosine`` (see `path_coefficients`). ``flow_mode``: only ``v``
      (upstream's key; velocity/average-velocity prediction). Any other value of an option is an error here.
    """

    def __init__(
        self,
        path_type: str = "linear",
        weighting: str = "adaptive",
        adaptive_p: float = 1.0,
        adaptive_eps: float = 1e-3,
        noise_dist: str = "logit_normal",
        time_mu: float = -0.4,
        time_sigma: float = 1.0,
        time_min: float = 0.0,
        time_max: float = 1.0,
        data_proportion: float = 0.75,
        cfg_omega: float = 1.0,
        cfg_kappa: float = 0.0,
        cfg_min_t: float = 0.0,
        cfg_max_t: float = 1.0,
        cond_drop_prob: float = 0.1,
        flow_mode: str = "v",
    ) -> None:
        if path_type not in PATH_TYPES:
            raise ConfigError(f"path_type must be one of {PATH_TYPES}, got {path_type!r}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if noise_dist not in NOISE_DISTS:
            raise ConfigError(f"noise_dist must be one of {NOISE_DISTS}, got {noise_dist!r}")
        if flow_mode not in FLOW_MODES:
            raise ConfigError(f"flow_mode must be one of {FLOW_MODES} (average-velocity prediction), got {flow_mode!r}")
        if adaptive_p < 0:
            raise ConfigError(f"adaptive_p must be >= 0, got {adaptive_p}")
        if adaptive_eps <= 0:
            raise ConfigError(f"adaptive_eps must be > 0, got {adaptive_eps}")
        if time_sigma <= 0:
            raise ConfigError(f"time_sigma must be > 0, got {time_sigma}")
        if not 0.0 <= time_min < time_max <= 1.0:
            raise ConfigError(f"need 0 <= time_min < time_max <= 1, got time_min={time_min}, time_max={time_max}")
        if not 0.0 <= data_proportion <= 1.0:
            raise ConfigError(f"data_proportion must be in [0, 1], got {data_proportion}")
        if cfg_omega <= 0:
            raise ConfigError(f"cfg_omega must be > 0, got {cfg_omega}")
        if not 0.0 <= cfg_kappa < 1.0:
            raise ConfigError(f"cfg_kappa must be in [0, 1), got {cfg_kappa}")
        if not 0.0 <= cfg_min_t <= cfg_max_t <= 1.0:
            raise ConfigError(
                f"need 0 <= cfg_min_t <= cfg_max_t <= 1, got cfg_min_t={cfg_min_t}, cfg_max_t={cfg_max_t}"
            )
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ConfigError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        self.path_type, self.weighting, self.flow_mode = path_type, weighting, flow_mode
        self.adaptive_p, self.adaptive_eps = float(adaptive_p), float(adaptive_eps)
        self.noise_dist, self.time_mu, self.time_sigma = noise_dist, float(time_mu), float(time_sigma)
        self.time_min, self.time_max = float(time_min), float(time_max)
        self.data_proportion = float(data_proportion)
        self.cfg_omega, self.cfg_kappa = float(cfg_omega), float(cfg_kappa)
        self.cfg_min_t, self.cfg_max_t = float(cfg_min_t), float(cfg_max_t)
        self.cond_drop_prob = float(cond_drop_prob)

    @property
    def guided(self) -> bool:
        """Whether training-time guidance changes the target (ω ≠ 1 or κ ≠ 0)."""
        return self.cfg_omega != 1.0 or self.cfg_kappa != 0.0

    # ------------------------------------------------------------------------------------------------ pieces
    def _draw_times(self, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        if self.noise_dist == "logit_normal":
            g = torch.randn((n,), generator=generator, device=device)
            s = torch.sigmoid(self.time_mu + self.time_sigma * g)
        else:
            s = rand(n, device, generator)
        return self.time_min + (self.time_max - self.time_min) * s

    def sample_times(self, n: int, device: torch.device, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """(r, t), each (n,) float32 with r <= t; the first ⌊data_proportion·n⌋ rows have r = t."""
        a = self._draw_times(n, device, generator)
        b = self._draw_times(n, device, generator)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        n_eq = math.floor(n * self.data_proportion)
        r = torch.cat([t[:n_eq], r[n_eq:]])
        return r, t

    def path(self, data: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(z_t, v): the point at time t and its time derivative on the chosen path."""
        a, s, da, ds = (broadcast_like(c, data) for c in path_coefficients(self.path_type, t.to(data.dtype)))
        return a * data + s * noise, da * data + ds * noise

    def guided_velocity(
        self, net: NetFn, z_t: Tensor, t: Tensor, v: Tensor, seed: Tensor, cond: Tensor, null_cond: Tensor,
        dropped: Tensor,
    ) -> Tensor:  # fmt: skip
        """ṽ (see the class docstring): v on unguided rows, the guided mix on the others (no gradient)."""
        if not self.guided:
            return v
        rows = (~dropped) & (t >= self.cfg_min_t) & (t <= self.cfg_max_t)
        if not bool(rows.any()):
            return v
        idx = rows.nonzero().squeeze(1)
        zi, ti, si = z_t[idx], t[idx], seed[idx]
        mix = self.cfg_omega * v[idx]
        w_u = 1.0 - self.cfg_omega - self.cfg_kappa
        with torch.no_grad():
            if self.cfg_kappa != 0.0:
                mix = mix + self.cfg_kappa * net(zi, ti, ti, si, cond[idx])
            if w_u != 0.0:
                null = null_cond.to(dtype=cond.dtype, device=cond.device).unsqueeze(0).expand(len(idx), -1, -1)
                mix = mix + w_u * net(zi, ti, ti, si, null)
        return v.index_copy(0, idx, mix.to(v.dtype))

    def prediction_and_target(
        self, net: NetFn, z_t: Tensor, r: Tensor, t: Tensor, v_tilde: Tensor, seed: Tensor, cond: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(u, u_tgt): u = u_θ(z_t, r, t) (with gradient) and sg(ṽ − (t − r)·du/dt), du/dt by one JVP."""

        def u_fn(z: Tensor, r_: Tensor, t_: Tensor) -> Tensor:
            return net(z, t_, r_, seed, cond)

        with math_attention():
            u, dudt = torch.func.jvp(u_fn, (z_t, r, t), (v_tilde, torch.zeros_like(r), torch.ones_like(t)))
        u_tgt = (v_tilde - broadcast_like(t - r, u) * dudt).detach()
        return u, u_tgt

    # ------------------------------------------------------------------------------------------------ the loss
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
        b, dev = data.shape[0], data.device
        if noise is None:
            noise = randn(tuple(data.shape), data, generator)
        r, t = self.sample_times(b, dev, generator)
        dropped = rand(b, dev, generator) < self.cond_drop_prob
        cond = drop_condition(at_feat, null_cond, dropped)
        z_t, v = self.path(data, noise, t)
        v_tilde = self.guided_velocity(net, z_t, t, v, seed, cond, null_cond, dropped)
        u, u_tgt = self.prediction_and_target(net, z_t, r, t, v_tilde, seed, cond)
        per_row = (u - u_tgt).pow(2).flatten(1).mean(1)
        if self.weighting == "adaptive":
            weight = (per_row.detach() + self.adaptive_eps).pow(-self.adaptive_p)
            loss = (weight * per_row).mean()
        else:
            loss = per_row.mean()
        return {"loss": loss, "loss_mse": per_row.mean().detach()}


class MeanFlowSampler(Sampler):
    """Average-velocity steps from t = 1 (noise) to t = 0 (data), as upstream's MeanFlow sampler (spec §4.7):

    grid t_k = linspace(1 − 1e-8, 0, n + 1) in float32 (its first value is exactly 1.0), and per step
    x ← x − (t_k − t_{k+1})·u(x, r=t_{k+1}, t=t_k), called as net(x, timesteps=t_k, cond_time=t_{k+1}, ...).
    One step is x = ε − u(ε, r=0, t=1). Classifier-free guidance (w > 1) on a doubled batch at every step.
    """

    def __init__(self, n_steps: int = 1, guidance_scale: float = 1.0, t_max_offset: float = 1e-8) -> None:
        self.default_steps = n_steps
        self.default_guidance = guidance_scale
        self.t_max_offset = t_max_offset

    def __call__(
        self,
        net: NetFn,
        noise: Tensor,
        seed: Tensor,
        at_feat: Tensor,
        null_cond: Tensor,
        n_steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        n, w = self.resolve(n_steps, guidance)
        b = noise.shape[0]
        grid = torch.linspace(1.0 - self.t_max_offset, 0.0, n + 1, dtype=torch.float32, device=noise.device)
        # x ← x − (t_k − t_{k+1})·u(x, r=t_{k+1}, t=t_k): an Euler step down the reversed grid
        x, rows = guided_euler(net, noise, grid, lambda k: grid[k + 1].expand(b), seed, at_feat, null_cond, w)
        return SampleOutput(latents=x, nfe=n, nfe_rows=rows)


class MeanFlowGenerator(LatentGenerator):
    """MeanFlow: `MeanFlowObjective` for training, `MeanFlowSampler` (default 1 step, no guidance) for inference.

    ``objective`` / ``sampler`` take the keyword options of those classes (a dict from config). The denoiser
    predicts the average velocity u; the state dict is the shared ``modality_encoder.*`` + ``denoiser.*``.
    """

    def __init__(
        self,
        modality_encoder: Any,
        denoiser: Any,
        objective: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
    ) -> None:
        for node, cls in ((objective, MeanFlowObjective), (sampler, MeanFlowSampler)):
            unknown = sorted(set(node or {}) - set(inspect.signature(cls).parameters))
            if unknown:
                raise ConfigError(f"{cls.__name__}: unknown option(s) {unknown}; known: "
                                  f"{sorted(inspect.signature(cls).parameters)}")  # fmt: skip
        super().__init__(
            modality_encoder,
            denoiser,
            MeanFlowObjective(**dict(objective or {})),
            MeanFlowSampler(**dict(sampler or {})),
            prediction="velocity",
        )
