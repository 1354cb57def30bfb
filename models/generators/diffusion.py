"""The DDIM diffusion baseline over the same latents and networks (upstream ``models/Diffusion.py``, spec §5).

The noise schedule is a diffusers scheduler built from a {target, params} node, so the baseline follows diffusers'
tables exactly (the fixture records diffusers 0.32.0). The denoiser predicts x₀ (``prediction_type: sample``) from the
integer timestep with ``cond_time=None``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.generators.base import (
    LatentGenerator,
    NetFn,
    Objective,
    SampleOutput,
    Sampler,
    drop_condition,
    guided_prediction,
    rand,
    randn,
)
from utils.config import ConfigError, instantiate_from_config

# upstream configs_new/diffusion_rvqvae_128.yaml (beta_start/beta_end are ignored by squaredcos_cap_v2)
DEFAULT_SCHEDULER: dict[str, Any] = {
    "target": "diffusers.DDIMScheduler",
    "params": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "sample",
        "clip_sample": False,
        "timestep_spacing": "leading",
        "set_alpha_to_one": True,
        "steps_offset": 0,
    },
}


def build_scheduler(node: Any = None) -> Any:
    """A diffusers scheduler from a {target, params} node (default: the upstream DDIM configuration)."""
    if node is None:
        node = DEFAULT_SCHEDULER
    if hasattr(node, "config") and hasattr(node, "set_timesteps"):
        return node  # already a scheduler
    return instantiate_from_config(node, "scheduler")


def fresh_scheduler(scheduler: Any) -> Any:
    """An independent copy: ``set_timesteps`` mutates a scheduler, and objective/sampler/other callers share one."""
    if hasattr(type(scheduler), "from_config"):
        return type(scheduler).from_config(scheduler.config)
    return copy.deepcopy(scheduler)


class DiffusionObjective(Objective):
    """Uniform integer t ∈ [0, T), x_t = add_noise(x₀, ε, t), MSE to the scheduler's prediction target.

    The target follows ``scheduler.config.prediction_type``: x₀ for ``sample`` (upstream), ε for ``epsilon``,
    the diffusers velocity for ``v_prediction``. The condition is replaced by the null embedding with p =
    cond_drop_prob.
    """

    def __init__(self, scheduler: Any = None, cond_drop_prob: float = 0.1) -> None:
        self.scheduler = build_scheduler(scheduler)
        self.cond_drop_prob = cond_drop_prob
        kind = self.scheduler.config.prediction_type
        if kind not in ("sample", "epsilon", "v_prediction"):
            raise ConfigError(f"scheduler.params.prediction_type {kind!r} is not supported")

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
        n_train = int(self.scheduler.config.num_train_timesteps)
        if noise is None:
            noise = randn(tuple(data.shape), data, generator)
        t = torch.randint(0, n_train, (b,), generator=generator, device=dev)
        x_t = self.scheduler.add_noise(data, noise, t)
        cond = drop_condition(at_feat, null_cond, rand(b, dev, generator) < self.cond_drop_prob)
        pred = net(x_t, t, None, seed, cond)
        kind = self.scheduler.config.prediction_type
        if kind == "sample":
            target = data
        elif kind == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(data, noise, t)
        loss = F.mse_loss(pred, target)
        return {"loss": loss, "loss_diffusion": loss.detach()}


class DDIMSampler(Sampler):
    """DDIM (eta 0 by default) from x = add_noise(0, ε, timesteps[0]) = sqrt(1 − ᾱ_{t0})·ε, as upstream.

    Every step evaluates the denoiser at the integer timestep (``cond_time=None``), with CFG on a doubled batch when
    guidance > 1, and a single plain call when guidance <= 1 (upstream crashes on that path; see spec §5).
    """

    def __init__(
        self, scheduler: Any = None, n_steps: int = 20, guidance_scale: float = 1.5, eta: float = 0.0
    ) -> None:
        self.scheduler = build_scheduler(scheduler)
        self.default_steps = n_steps
        self.default_guidance = guidance_scale
        self.eta = eta

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
        sched = fresh_scheduler(self.scheduler)
        sched.set_timesteps(n, device=noise.device)
        timesteps = sched.timesteps
        b = noise.shape[0]
        x = sched.add_noise(torch.zeros_like(noise), noise, timesteps[:1].expand(b))
        rows = 0
        for t in timesteps:
            x0, r = guided_prediction(net, x, t.expand(b), None, seed, at_feat, null_cond, w)
            # a python int: the scheduler indexes its CPU tables with it, whatever device x lives on
            x = sched.step(x0, int(t), x, eta=self.eta, generator=generator).prev_sample
            rows += r
        return SampleOutput(latents=x, nfe=n, nfe_rows=rows // b)

    def timesteps(self, n_steps: int | None = None) -> Tensor:
        """The inference timesteps for ``n_steps`` (default: this sampler's), e.g. 950, 900, ..., 0 for 20."""
        sched = fresh_scheduler(self.scheduler)
        sched.set_timesteps(int(n_steps or self.default_steps))
        return sched.timesteps


class DiffusionGenerator(LatentGenerator):
    """The DDIM baseline: `DiffusionObjective` for training, `DDIMSampler` (20 steps, w = 1.5) for inference.

    ``scheduler`` is a {target, params} node (default: upstream's DDIMScheduler settings) shared by both; ``objective``
    and ``sampler`` take the keyword options of those classes.
    """

    def __init__(
        self,
        modality_encoder: Any,
        denoiser: Any,
        scheduler: Any = None,
        objective: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
    ) -> None:
        sched = build_scheduler(scheduler)
        super().__init__(
            modality_encoder,
            denoiser,
            DiffusionObjective(sched, **dict(objective or {})),
            DDIMSampler(sched, **dict(sampler or {})),
        )
        self.scheduler = sched
