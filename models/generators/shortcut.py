"""GestureLSM's latent shortcut model: flow matching + self-consistency (shortcut) training, few-step Euler sampling.

Spec: shared/spec/gesturelsm.md §4.3-4.5 (upstream ``models/LSM.py``, v2 ``GestureLSM.train_forward`` / ``forward``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.generators.base import (
    LatentGenerator,
    LinearFlowPath,
    NetFn,
    Objective,
    SampleOutput,
    Sampler,
    broadcast_like,
    drop_condition,
    guided_euler,
    rand,
    randn,
    sample_beta_time,
    time_gap,
)

FLOW_WEIGHTINGS = ("upstream_global", "per_sample", "none")
LOSS_SPACES = ("velocity", "data")
CONSISTENCY_TIMES = ("shared", "within")
CONSISTENCY_COND_SEMANTICS = ("v1", "v2")


class ShortcutObjective(Objective):
    """L = L_flow + L_cons on one batch split ⌊flow_fraction·B⌋ (flow, d = 0) / rest (self-consistency).

    * t ~ Beta(time_alpha, time_beta) rescaled to [time_eps, 1 − time_eps], shared by both parts (as upstream).
    * Flow part: v̂(x_t, t, d=0) regressed on x₁ − ε; condition replaced by the null embedding with p = cond_drop_prob.
    * Consistency part: d uniform over {2^-1 … 2^-max_log2_step}; no-grad target (s₁ + s₂)/2 with s₁ = v̂(x_t, t, d),
      x' = x_t + d·s₁, s₂ = v̂(x', t + d, d); prediction v̂(x_t, t, 2d). t + d is not clamped (upstream).

    Options that keep or drop upstream quirks:

    * ``flow_weighting``:
      - ``"upstream_global"`` (default, reproduces v2): upstream divides a scalar F.mse_loss by t and averages, which
        is MSE × mean(1/t) over the flow part — one global factor per batch, not a per-sample weight.
      - ``"per_sample"``: mean_i(MSE_i / t_i), the weighting upstream's code appears to intend.
      - ``"none"``: plain MSE.
    * ``consistency_cond``:
      - ``"v1"`` (default): 80% of consistency samples keep the condition, 20% get the null embedding (v1 code, and
        what the "keep" mask name means).
      - ``"v2"``: the v2 refactor passes the same p=[0.8, 0.2] mask to a function where True means *null*, so 80% of
        consistency samples are unconditional. Offered to reproduce v2 training exactly.
      ``consistency_null_prob`` overrides both with an explicit probability.
    * ``consistency_time``: ``"shared"`` (upstream) gives consistency rows the flow rows' t ∈ (0, 1), so the
      teacher's second half-step starts at t + d and the student's 2d-step may end past t = 1; ``"within"``
      rescales their t to t·(1 − 2d), so every step ends by t = 1 (as in the shortcut-model paper). A data
      prediction needs it: its velocity (x̂₁ − x)/(1 − t) is meaningless past t = 1.
    * ``derivative_weights`` [w₁, w₂, ...] (needs ``loss_space: data``): adds Σ_k w_k·mean((Δᵏ r)²), Δᵏ the k-th
      difference along the latent time axis of the data-space residual r = x̂₁ − x₁ (or its consistency analogue).
      The plain MSE weighs a rough, frame-to-frame error as little as a slow one; these terms make temporal
      roughness of the predicted latents (which decodes as jitter) cost what it costs in the motion.
    * ``loss_space``: ``"velocity"`` (upstream) compares velocities; ``"data"`` multiplies every residual by
      (1 − t) (clamped like `DataPrediction`), so a data-predicting network is trained on its endpoint error
      ‖x̂₁ − x₁‖² instead of that error / (1 − t)², which explodes near t = 1 (and past it for t + d).
    * The teacher passes run in whatever mode the network is in (upstream: train mode, DropPath active).
    """

    def __init__(
        self,
        flow_fraction: float = 0.75,
        time_alpha: float = 2.0,
        time_beta: float = 1.2,
        time_eps: float = 1e-5,
        max_log2_step: int = 7,
        cond_drop_prob: float = 0.1,
        consistency_cond: str = "v1",
        consistency_null_prob: float | None = None,
        flow_weighting: str = "upstream_global",
        consistency_weight: float = 1.0,
        loss_space: str = "velocity",
        consistency_time: str = "shared",
        derivative_weights: list[float] | tuple[float, ...] | None = None,
    ) -> None:
        if consistency_time not in CONSISTENCY_TIMES:
            raise ValueError(f"consistency_time must be one of {CONSISTENCY_TIMES}, got {consistency_time!r}")
        if loss_space not in LOSS_SPACES:
            raise ValueError(f"loss_space must be one of {LOSS_SPACES}, got {loss_space!r}")
        if flow_weighting not in FLOW_WEIGHTINGS:
            raise ValueError(f"flow_weighting must be one of {FLOW_WEIGHTINGS}, got {flow_weighting!r}")
        if consistency_cond not in CONSISTENCY_COND_SEMANTICS:
            raise ValueError(f"consistency_cond must be one of {CONSISTENCY_COND_SEMANTICS}, got {consistency_cond!r}")
        if not 0.0 <= flow_fraction <= 1.0:
            raise ValueError(f"flow_fraction must be in [0, 1], got {flow_fraction}")
        if max_log2_step < 1:
            raise ValueError(f"max_log2_step must be >= 1, got {max_log2_step}")
        self.path = LinearFlowPath()
        self.flow_fraction = flow_fraction
        self.time_alpha, self.time_beta, self.time_eps = time_alpha, time_beta, time_eps
        self.max_log2_step = max_log2_step
        self.cond_drop_prob = cond_drop_prob
        if consistency_null_prob is None:
            consistency_null_prob = 0.2 if consistency_cond == "v1" else 0.8
        self.consistency_null_prob = consistency_null_prob
        self.flow_weighting = flow_weighting
        self.consistency_weight = consistency_weight
        self.loss_space = loss_space
        self.consistency_time = consistency_time
        self.derivative_weights = [float(w) for w in (derivative_weights or [])]
        if any(w < 0 for w in self.derivative_weights):
            raise ValueError(f"derivative_weights must be >= 0, got {self.derivative_weights}")
        if any(self.derivative_weights) and loss_space != "data":
            raise ValueError("derivative_weights need loss_space='data' (differences of the predicted latents)")

    def split(self, batch: int) -> int:
        """Number of flow samples (the first ones); the rest are consistency samples. Upstream: ⌊3B/4⌋."""
        return math.floor(batch * self.flow_fraction)  # 0.75·B is exact in float, so this is ⌊3B/4⌋

    def sample_step_sizes(self, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """d uniform over {1/2, 1/4, ..., 2^-max_log2_step}."""
        k = torch.randint(1, self.max_log2_step + 1, (n,), generator=generator, device=device)
        return torch.pow(2.0, -k.float())

    def consistency_target(
        self, net: NetFn, x_t: Tensor, t: Tensor, d: Tensor, seed: Tensor, cond: Tensor
    ) -> Tensor:
        """(s₁ + s₂)/2: the average velocity of two d-steps, i.e. what one 2d-step should move by (no grad)."""
        with torch.no_grad():
            s1 = net(x_t, t, d, seed, cond)
            x_mid = x_t + broadcast_like(d, x_t) * s1
            s2 = net(x_mid, t + d, d, seed, cond)
        return (s1 + s2) / 2

    def _flow_loss(self, pred: Tensor, target: Tensor, t: Tensor) -> Tensor:
        if self.flow_weighting == "none":
            return F.mse_loss(pred, target)
        if self.flow_weighting == "upstream_global":
            # upstream: mean((F.mse_loss(pred, target) / t)) -> scalar MSE times mean(1/t)
            return F.mse_loss(pred, target) * (1.0 / t).mean()
        per_sample = (pred - target).pow(2).flatten(1).mean(1)
        return (per_sample / t).mean()

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
        n_flow = self.split(b)
        n_cons = b - n_flow
        if noise is None:
            noise = randn(tuple(data.shape), data, generator)
        t = sample_beta_time(b, self.time_alpha, self.time_beta, self.time_eps, dev, generator)
        d_cons = None
        if n_cons > 0 and self.consistency_time == "within":
            d_cons = self.sample_step_sizes(n_cons, dev, generator)
            t = torch.cat([t[:n_flow], t[n_flow:] * (1.0 - 2.0 * d_cons)])
        ps = self.path.sample(noise, data, t)

        # condition: flow part dropped with cond_drop_prob, consistency part with consistency_null_prob
        drop_p = torch.cat([
            torch.full((n_flow,), self.cond_drop_prob, device=dev),
            torch.full((n_cons,), self.consistency_null_prob, device=dev),
        ])
        cond = drop_condition(at_feat, null_cond, rand(b, dev, generator) < drop_p)

        d = torch.zeros(b, device=dev)
        target = ps.velocity
        if n_cons > 0:
            if d_cons is None:  # upstream draw order: after the condition dropout
                d_cons = self.sample_step_sizes(n_cons, dev, generator)
            c = slice(n_flow, b)
            cons_target = self.consistency_target(net, ps.x_t[c], t[c], d_cons, seed[c], cond[c])
            d = torch.cat([d[:n_flow], 2 * d_cons])  # the student takes one step of twice the size
            target = torch.cat([ps.velocity[:n_flow], cons_target])

        # one student pass over the whole batch (flow rows with d = 0, consistency rows with 2d)
        pred = net(ps.x_t, t, d, seed, cond)
        if self.loss_space == "data":
            gap = time_gap(t, pred)
            pred, target = pred * gap, target * gap
        zero = pred.sum() * 0.0  # keeps the graph when a part is empty (e.g. B = 1 has no flow rows)
        loss_flow = self._flow_loss(pred[:n_flow], target[:n_flow], t[:n_flow]) if n_flow > 0 else zero
        loss_cons = F.mse_loss(pred[n_flow:], target[n_flow:]) if n_cons > 0 else zero
        loss = loss_flow + self.consistency_weight * loss_cons
        out = {"loss": loss, "loss_flow": loss_flow.detach(), "loss_consistency": loss_cons.detach()}
        if any(self.derivative_weights):
            r = pred - target
            loss_d = zero
            for k, w in enumerate(self.derivative_weights, start=1):
                if w and r.shape[-1] > k:
                    loss_d = loss_d + w * torch.diff(r, n=k, dim=-1).pow(2).mean()
            out["loss"] = loss + loss_d
            out["loss_derivative"] = loss_d.detach()
        return out


class EulerShortcutSampler(Sampler):
    """n Euler steps on the grid linspace(t_min, 1 − t_min, n+1), feeding the step size d = 1/n as ``cond_time``.

    x ← x + (t_{k+1} − t_k)·v̂(x, t_k, 1/n), with CFG (doubled batch) at every step when guidance > 1.
    """

    def __init__(self, n_steps: int = 2, guidance_scale: float = 2.0, t_min: float = 1e-8) -> None:
        self.default_steps = n_steps
        self.default_guidance = guidance_scale
        self.t_min = t_min

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
        grid = torch.linspace(self.t_min, 1.0 - self.t_min, n + 1, device=noise.device)
        d = torch.full((b,), 1.0 / n, device=noise.device)
        x, rows = guided_euler(net, noise, grid, lambda k: d, seed, at_feat, null_cond, w)
        return SampleOutput(latents=x, nfe=n, nfe_rows=rows)


class ShortcutGenerator(LatentGenerator):
    """GestureLSM: `ShortcutObjective` for training, `EulerShortcutSampler` (default 2 steps, w = 2) for inference.

    ``objective`` / ``sampler`` take the keyword options of those classes (a dict from config). ``prediction``:
    ``velocity`` (upstream, the released checkpoints) or ``data`` (the denoiser predicts x̂₁; see `DataPrediction`).
    """

    objective_class: type[ShortcutObjective] = ShortcutObjective

    def __init__(
        self,
        modality_encoder: Any,
        denoiser: Any,
        objective: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
        prediction: str = "velocity",
    ) -> None:
        super().__init__(
            modality_encoder,
            denoiser,
            self.objective_class(**dict(objective or {})),
            EulerShortcutSampler(**dict(sampler or {})),
            prediction=prediction,
        )
        if prediction == "data" and self.objective.consistency_time == "shared":
            warnings.warn(f"{type(self).__name__}: prediction=data with objective.consistency_time=shared sends "
                          "consistency steps past t = 1, where a data prediction's velocity is clamped; use "
                          "consistency_time: within",
                          stacklevel=2)  # fmt: skip
