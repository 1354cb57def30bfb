"""The shared shape of every latent gesture generator: a probability path, an objective, a sampler, one nn.Module.

Three pieces, kept apart the way flow-matching libraries separate the path from the solver:

* **Path** (`LinearFlowPath`): how a data latent and a noise draw are mixed at time t, and what the regression
  target is there. Only flow objectives use it.
* **Objective** (`Objective.__call__(net, data, seed, at_feat, null_cond, generator, noise) -> dict`): one training
  loss. Every objective has the same signature, so the generator module and the trainer never branch on the method.
  ``noise`` is the coupling's noise end: None draws it independently (flow matching, diffusion); ReFlow passes the
  noise its teacher started from.
* **Sampler** (`Sampler.__call__(net, noise, seed, at_feat, null_cond, n_steps, guidance, generator) -> SampleOutput`):
  the inference loop, from a noise draw to a latent.

Both objectives and samplers are model-agnostic: they see the network only as a callable with the denoiser's forward
signature ``net(x, timesteps, cond_time, seed, at_feat) -> out`` (`NetFn`), so toy velocity fields plug in for
tests. Neither holds parameters, so a generator's state dict is exactly ``modality_encoder.*`` + ``denoiser.*``.

`LatentGenerator` is the nn.Module. A concrete generator (shortcut, reflow, meanflow, diffusion) is a small
subclass in its own file that only chooses an objective and a sampler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from scipy.special import betaincinv
from torch import Tensor

from models.layers.condition_cache import reuse, reuse_condition
from utils.config import ConfigError, instantiate_from_config

# net(x (B,C,1,T), timesteps (B,), cond_time (B,) or None, seed (B,4,C), at_feat (B,T,D)) -> (B,C,1,T)
NetFn = Callable[[Tensor, Tensor, "Tensor | None", Tensor, Tensor], Tensor]

LATENT_CHANNELS = 384  # upper 128 | hands 128 | lower+trans 128 (+ face 128 with use_exp: see latent_channels)
LATENT_FRAMES = 32  # 128 motion frames / 4 (RVQ temporal downsampling)


# --------------------------------------------------------------------------------------------------------------
# Small helpers shared by objectives and samplers
# --------------------------------------------------------------------------------------------------------------


def broadcast_like(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample vector (B,) reshaped to (B, 1, ..., 1) so it broadcasts against x."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1))).to(dtype=x.dtype)


def to_generator_layout(latents: Tensor) -> Tensor:
    """(B,32,384) (time, channel) or (B,384,1,32) -> (B,384,1,32), the layout the denoiser sees."""
    if latents.dim() == 4:
        return latents
    if latents.dim() == 3:
        return latents.permute(0, 2, 1).unsqueeze(2)
    raise ValueError(f"latents must be (B,T,C) or (B,C,1,T), got shape {tuple(latents.shape)}")


def randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian noise on ``like``'s device/dtype, from ``generator`` or the global RNG (so trainer resume is exact)."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def rand(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand((n,), generator=generator, device=device)


def sample_beta_time(
    n: int,
    alpha: float,
    beta: float,
    eps: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """t ~ Beta(alpha, beta) rescaled to [eps, 1-eps], shape (n,) float32.

    Drawn by inverse CDF from torch uniforms so that ``generator`` (or the global torch RNG) fully determines it;
    torch.distributions.Beta accepts no generator.
    """
    u = rand(n, device, generator)
    t = torch.from_numpy(np.asarray(betaincinv(alpha, beta, u.double().cpu().numpy()))).to(device)
    return (eps + (1.0 - 2.0 * eps) * t).float()


def null_condition(null_cond: Tensor, batch: int, like: Tensor) -> Tensor:
    """The learned unconditional embedding (T,D) expanded to (batch,T,D)."""
    return null_cond.to(dtype=like.dtype, device=like.device).unsqueeze(0).expand(batch, -1, -1)


def drop_condition(at_feat: Tensor, null_cond: Tensor, drop: Tensor) -> Tensor:
    """Rows where ``drop`` (B,) is True get the null embedding instead of the audio/text condition."""
    if not bool(drop.any()):
        return at_feat
    null = null_condition(null_cond, at_feat.shape[0], at_feat)
    return torch.where(broadcast_like(drop, at_feat).bool(), null, at_feat)


def guided_prediction(
    net: NetFn,
    x: Tensor,
    timesteps: Tensor,
    cond_time: Tensor | None,
    seed: Tensor,
    at_feat: Tensor,
    null_cond: Tensor,
    guidance: float,
) -> tuple[Tensor, int]:
    """One classifier-free-guided network evaluation. Returns (output, rows evaluated).

    guidance > 1: one call on a doubled batch, conditional half first, then the half with ``null_cond``;
    out = out_u + w (out_c - out_u). guidance <= 1: a single plain conditional call (as upstream; no guidance).
    """
    b = x.shape[0]
    if guidance <= 1.0:
        return net(x, timesteps, cond_time, seed, at_feat), b
    x2 = torch.cat([x, x], 0)
    t2 = torch.cat([timesteps, timesteps], 0)
    d2 = None if cond_time is None else torch.cat([cond_time, cond_time], 0)
    seed2 = torch.cat([seed, seed], 0)
    # the same doubled condition object at every step of a window, so the denoiser's condition work is reused too
    feat2 = reuse("guidance_batch", (at_feat, null_cond),
                  lambda: torch.cat([at_feat, null_condition(null_cond, b, at_feat)], 0))
    out_c, out_u = net(x2, t2, d2, seed2, feat2).chunk(2, dim=0)
    return out_u + guidance * (out_c - out_u), 2 * b


def guided_euler(
    net: NetFn,
    x: Tensor,
    grid: Tensor,
    cond_time: Callable[[int], Tensor],
    seed: Tensor,
    at_feat: Tensor,
    null_cond: Tensor,
    guidance: float,
) -> tuple[Tensor, int]:
    """Euler steps x ← x + (t_{k+1} − t_k)·f(x, t_k, cond_time(k)) over the time ``grid`` (n+1,), each a
    `guided_prediction`. ``cond_time(k)``: the (B,) second time input of step k (the shortcut's step size, MeanFlow's
    next time). Returns (x, per-sample network evaluations)."""
    b = x.shape[0]
    rows = 0
    for k in range(grid.shape[0] - 1):
        out, used = guided_prediction(net, x, grid[k].expand(b), cond_time(k), seed, at_feat, null_cond, guidance)
        x = x + (grid[k + 1] - grid[k]).to(x.dtype) * out
        rows += used
    return x, rows // b


PREDICTIONS = ("velocity", "data")
MIN_GAP = 0.05  # 1 − t is clamped here in training, where t (and t + d) reach 1 and beyond
SAMPLING_MIN_GAP = 1e-6  # sampling grids keep 1 − t >= 1/n: the last Euler step must land exactly on x̂₁


def time_gap(t: Tensor, like: Tensor, min_gap: float = MIN_GAP) -> Tensor:
    """(1 − t) clamped at ``min_gap``, shaped to broadcast against ``like``: velocity × gap = data-space distance."""
    return broadcast_like((1.0 - t.to(like.dtype)).clamp_min(min_gap), like)


class DataPrediction:
    """A network that predicts the data endpoint x̂₁, seen by objectives and samplers as the velocity field
    v = (x̂₁ − x_t) / (1 − t) (the straight line from x_t to x̂₁; 1 − t clamped at ``min_gap``).

    Why: a velocity network must reproduce the noise it was given (v = x₁ − ε) through its token width. When that
    width is below the latent width (the tiny denoiser: 128-channel part latents through 32-wide tokens) most of
    the noise cannot pass, stays in the output and decodes as jitter. Predicting x̂₁ only needs the data, which is
    low-dimensional and smooth in time; the last Euler step then lands exactly on x̂₁.
    """

    def __init__(self, net: NetFn, min_gap: float = MIN_GAP) -> None:
        if not 0.0 < min_gap <= 1.0:
            raise ValueError(f"min_gap must be in (0, 1], got {min_gap}")
        self.net = net
        self.min_gap = min_gap

    def __call__(self, x: Tensor, timesteps: Tensor, cond_time: Tensor | None, seed: Tensor, at_feat: Tensor) -> Tensor:
        x1 = self.net(x, timesteps, cond_time, seed, at_feat)
        return (x1 - x) / time_gap(timesteps, x, self.min_gap)


# --------------------------------------------------------------------------------------------------------------
# Path, objective, sampler
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PathSample:
    """A point on the conditional path: noise, data, t (B,), x_t, and the regression target dx_t/dt there."""

    noise: Tensor
    data: Tensor
    t: Tensor
    x_t: Tensor
    velocity: Tensor


class LinearFlowPath:
    """The straight (rectified / conditional-OT) path: x_t = t·x₁ + (1−t)·ε, dx_t/dt = x₁ − ε.

    GestureLSM convention: t = 0 is noise, t = 1 is data (MeanFlow in upstream uses the reverse).
    """

    def sample(self, noise: Tensor, data: Tensor, t: Tensor) -> PathSample:
        tb = broadcast_like(t, data)
        x_t = tb * data + (1.0 - tb) * noise
        return PathSample(noise=noise, data=data, t=t, x_t=x_t, velocity=data - noise)


@dataclass
class SampleOutput:
    """What a sampler returns.

    nfe: network calls (a CFG doubled batch counts once per step, the usual "NFE" in papers).
    nfe_rows: per-sample network evaluations (rows evaluated / batch size; a CFG step counts 2) — the compute
    measure when comparing guided and unguided sampling.
    """

    latents: Tensor
    nfe: int
    nfe_rows: int


class Objective(ABC):
    """A training loss over data latents. ``net`` follows `NetFn`; returns a dict with ``loss`` plus its parts.

    ``noise`` (same shape as ``data``): the noise paired with each data latent; None draws it from ``generator``.
    """

    @abstractmethod
    def __call__(
        self,
        net: NetFn,
        data: Tensor,
        seed: Tensor,
        at_feat: Tensor,
        null_cond: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]: ...


class SampleLoss(Protocol):
    """A loss on a generated sample: ``(sample, data)`` generator-layout latents -> scalar, with the weight and the
    sampling settings (``steps``, ``guidance``) of the draw (see `LatentGenerator.loss`)."""

    weight: float
    steps: int
    guidance: float
    rows: int  # draw the sample for the batch's first ``rows`` rows only (0: every row)

    def __call__(self, sample: Tensor, data: Tensor) -> Tensor: ...


class Sampler(ABC):
    """An inference loop from ``noise`` (B,C,1,T) to latents, with classifier-free guidance."""

    default_steps: int
    default_guidance: float

    @abstractmethod
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
    ) -> SampleOutput: ...

    def resolve(self, n_steps: int | None, guidance: float | None) -> tuple[int, float]:
        """Steps and guidance for one call: the given values, else this sampler's configured ones."""
        n = int(n_steps if n_steps is not None else self.default_steps)
        if n < 1:
            raise ValueError(f"n_steps must be >= 1, got {n}")
        return n, float(guidance if guidance is not None else self.default_guidance)

    def configure(self, n_steps: int | None = None, guidance: float | None = None) -> Sampler:
        """Change the configured steps/guidance (a CLI's --steps/--guidance); the sampler stays their one home."""
        n, w = self.resolve(n_steps, guidance)
        self.default_steps, self.default_guidance = n, w
        return self

    def settings(self) -> dict[str, Any]:
        """What every report records about sampling: the sampler, its steps and guidance, and network calls per
        window (``nfe_rows_per_window`` counts a classifier-free-guided step twice)."""
        n, w = self.resolve(None, None)
        return {"sampler": type(self).__name__, "n_steps": n, "guidance": w, "nfe_per_window": n,
                "nfe_rows_per_window": n * (2 if w > 1.0 else 1)}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# The generator module
# --------------------------------------------------------------------------------------------------------------


def _build(node: Any, name: str) -> nn.Module:
    """Accept an already-built module or a {target, params} config node."""
    if isinstance(node, nn.Module):
        return node
    if isinstance(node, Mapping) or hasattr(node, "keys"):
        return instantiate_from_config(node, name)
    raise ConfigError(f"{name}: expected an nn.Module or a {{target, params}} node, got {type(node).__name__}")


class LatentGenerator(nn.Module):
    """Audio+text-conditioned generator of (B,384,1,32) gesture latents.

    Submodules ``modality_encoder`` (audio (B,S,2), word (B,128) -> at_feat (B,32,D)) and ``denoiser`` (the `NetFn`,
    with a parameter ``null_cond_embed`` (32,D)); objective and sampler are parameter-free strategy objects, so the
    state dict is the upstream ``modality_encoder.*`` + ``denoiser.*`` key set.

    Call ``.eval()`` before sampling: the denoiser has DropPath/dropout, and upstream samples in eval mode.
    """

    def __init__(
        self,
        modality_encoder: Any,
        denoiser: Any,
        objective: Objective,
        sampler: Sampler,
        prediction: str = "velocity",
    ) -> None:
        super().__init__()
        self.modality_encoder = _build(modality_encoder, "modality_encoder")
        self.denoiser = _build(denoiser, "denoiser")
        if not hasattr(self.denoiser, "null_cond_embed"):
            raise ConfigError("denoiser: the generator needs a denoiser with a `null_cond_embed` parameter (T,D)")
        enc_dim, cond_dim = getattr(self.modality_encoder, "out_dim", None), self.denoiser.null_cond_embed.shape[-1]
        if enc_dim is not None and enc_dim != cond_dim:  # else a shape error deep inside the first training step
            raise ConfigError(f"modality_encoder.params.latent_dim gives {enc_dim}-wide condition features but "
                              f"denoiser.params.latent_dim expects {cond_dim} (parts x its latent_dim): set both "
                              "latent_dims to the same value")  # fmt: skip
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.objective = objective
        self.sampler = sampler
        self.prediction = prediction

    @property
    def net(self) -> NetFn:
        """What the objective calls: the denoiser, or its data prediction seen as a velocity field."""
        return self.denoiser if self.prediction == "velocity" else DataPrediction(self.denoiser)

    @property
    def sampling_net(self) -> NetFn:
        """What the sampler calls: as `net`, with 1 − t clamped only against division by zero (any n lands on x̂₁)."""
        if self.prediction == "velocity":
            return self.denoiser
        return DataPrediction(self.denoiser, min_gap=SAMPLING_MIN_GAP)

    @property
    def null_cond(self) -> Tensor:
        return self.denoiser.null_cond_embed

    @property
    def latent_channels(self) -> int:
        """Latent width the denoiser works on: parts x per-part width (384 body, 512 with the face)."""
        return int(getattr(self.denoiser, "n_parts", 3) * getattr(self.denoiser, "input_dim", 128))

    def encode(self, audio: Tensor, word: Tensor) -> Tensor:
        """Condition features at_feat (B,32,D) from audio (B,S,2) and word ids (B,128)."""
        return self.modality_encoder(audio, word)

    def _condition(self, audio: Tensor | None, word: Tensor | None, at_feat: Tensor | None) -> Tensor:
        if at_feat is not None:
            return at_feat
        if audio is None or word is None:
            raise ValueError("pass audio and word, or a precomputed at_feat")
        return self.encode(audio, word)

    def loss(
        self,
        latents: Tensor,
        audio: Tensor | None,
        word: Tensor | None,
        seed: Tensor,
        generator: torch.Generator | None = None,
        at_feat: Tensor | None = None,
        noise: Tensor | None = None,
        sample_loss: SampleLoss | None = None,
    ) -> dict[str, Tensor]:
        """Training loss for data latents (B,384,1,32) or (B,32,384); seed (B,4,384). Returns dict(loss=..., parts).

        ``noise``: a coupled noise draw in the generator layout (ReFlow); None draws one inside the objective.
        ``sample_loss``: also draw a sample from fresh noise *with gradient* through this generator's sampler
        (its ``steps``/``guidance``) and add ``weight x sample_loss(sample, data)`` (part ``sample_loss``); e.g.
        trainers.timing's loss on the decoded motion's timing. Inside this call, so DDP synchronises its gradients."""
        data = to_generator_layout(latents)
        cond = self._condition(audio, word, at_feat)
        if noise is not None:
            noise = to_generator_layout(noise)
            if noise.shape != data.shape:
                raise ValueError(f"noise shape {tuple(noise.shape)} != latents shape {tuple(data.shape)}")
        out = self.objective(self.net, data, seed, cond, self.null_cond, generator, noise=noise)
        if sample_loss is not None:
            k = min(sample_loss.rows or data.shape[0], data.shape[0])  # a shuffled batch: its first k rows
            x0 = randn((k, *data.shape[1:]), data, generator)
            sample = self.sampler(self.sampling_net, x0, seed[:k], cond[:k], self.null_cond, sample_loss.steps,
                                  sample_loss.guidance, generator).latents  # fmt: skip
            part = sample_loss(sample, data[:k])
            out = {**out, "loss": out["loss"] + sample_loss.weight * part, "sample_loss": part.detach()}
        return out

    @torch.no_grad()
    def sample_with_stats(
        self,
        audio: Tensor | None,
        word: Tensor | None,
        seed: Tensor,
        n_steps: int | None = None,
        guidance: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        at_feat: Tensor | None = None,
    ) -> SampleOutput:
        """Generate latents (B,384,1,32); also reports NFE. ``noise`` overrides the initial Gaussian draw."""
        cond = self._condition(audio, word, at_feat)
        b = cond.shape[0]
        if noise is None:
            # drawn after the encoder, as upstream does (matters only for global-RNG reproducibility)
            noise = randn((b, self.latent_channels, 1, cond.shape[1]), cond, generator)
        elif noise.shape[0] != b:
            raise ValueError(f"noise batch {noise.shape[0]} != condition batch {b}")
        with reuse_condition():  # every step sees the same condition: project it once (bit-identical)
            return self.sampler(self.sampling_net, noise, seed, cond, self.null_cond, n_steps, guidance, generator)

    def sample(
        self,
        audio: Tensor | None,
        word: Tensor | None,
        seed: Tensor,
        n_steps: int | None = None,
        guidance: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        at_feat: Tensor | None = None,
    ) -> Tensor:
        """Generate latents (B,384,1,32). See `sample_with_stats` for NFE."""
        return self.sample_with_stats(audio, word, seed, n_steps, guidance, noise, generator, at_feat).latents

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """``forward`` is the training loss, so DDP wraps the generator directly."""
        return self.loss(*args, **kwargs)
