"""A timing loss on generated samples (issue 13): when the decoded motion slows, against when GT's does.

Why. Under a latent MSE (flow matching or regression) strokes of random direction average to the mean pose, so a
condition that fixes only *when* a stroke happens (as audio does) barely moves the best prediction, and the
generator never learns the corpus's stroke timing (README, "What this says"). A loss on a *sample* drawn from noise
sees a committed motion instead, and its speed curve is direction-free: "slow down here" is a target whatever way
the stroke goes. Per training window: a sample drawn with gradient through the generator's own sampler (``steps``,
``guidance``), decoded through the frozen codec with straight-through codes (upper body and the pelvis's part),
FK of BC's upper-body joints with every other joint at rest; its per-frame speed curve against the GT latents'
decoded the same way. ``form``:

* ``relmse`` (the form chosen on val, README): each curve divided by its own mean over the window (floored at 1e-4 m
  per frame, so a still sample's gradient stays bounded), then the mean squared difference.
  Free of the overall speed (how lively stays the flow loss's job) but not of the dips' depth: BC only counts a
  velocity minimum whose speed is above 0.3 x the joint's mean velocity (evaluation.metrics), so a model whose
  dips go deeper than GT's loses exactly the beats it placed (measured: README, "What this says").
* ``corr``: ``1 - Pearson r`` (scale-free in the dips' depth too).
* ``scaled``: both curves divided by the *GT* window's mean speed (floored as above), then the mean squared
  difference: the absolute curve, so how deep a dip goes counts against BC's threshold, which is absolute (0.3 x
  the dataset's mean joint velocity). Measured why (README): a ``relmse`` model whose window curves matched GT's
  better than the chosen seed's still scored negative placement, because its dips went below the threshold; with
  the threshold lowered to 0.075 x the mean velocity it scored 0.13 (train files). Measured too: this form did not
  place strokes (val 0.04 / -0.01 / 0.04 over three seeds); ``per_joint`` with ``relmse`` did (the main job's).

``spectrum`` (a weight, 0 = off) adds the mean squared difference of the two curves' band amplitude spectra
(``band_amplitudes``): phase-free, so it asks the sample to rise and fall as often as GT does even where its strokes
cannot line up with GT's. Why: the per-joint ``relmse`` model dips at ~1.7x GT's rate, about half of its dips away
from any audio onset, which raises its BC above GT's. Measured (README, "What this says"): at weight 1 it did not
lower BC (val BC - BC(GT) +0.166 and +0.184 on two seeds), so it stays off in the main job.

``quantiles`` (a weight, 0 = off) adds the mean squared difference of the two curves' sorted values (their quantile
functions: the squared 1-D Wasserstein-2 distance of the speed distributions), phase-free too but about depth rather
than tempo: how much of the window the sample spends slow (holds) and how fast its peaks are, wherever they fall.
Why: the per-joint ``relmse`` model's BC sits above GT's because it has more *counted* minima (BC counts a minimum only
above 0.3 x the mean joint velocity; GT's holds go below it, the model's shallower dips do not: README, "What this
says"); an MSE on curves whose timing is uncertain is minimised by a blurred curve, a sorted one is not. It sorts the
curves the form compares (divided by their means for ``relmse``, by GT's for ``scaled``, raw speeds for ``corr``, so
its scale follows the form), after ``highpass``.

``level`` (a weight, 0 = off; session 26) adds the mean over curves of the squared log ratio of the two curves'
means (each floored at 1e-4 m per frame): how fast the sample moves overall against GT's window, per joint with
``per_joint``, the one thing ``relmse`` and ``corr`` leave out. Why: the per-file FGD of the learning check's (c)
follows how far a file's overall speed is from GT's (r 0.76 over the main job's 24 test files, session 26), and
the 2-step samples of the ``relmse`` model move at 0.11-0.17 m/s on files whose GT moves at 0.09-0.30: audio sets
each file's gesture size (vocal effort), the sample only partly follows it, so another file's audio barely moves
its FGD. Taken before ``highpass`` (the means are what it removes). Below the floor (a still sample) the term
carries no gradient. Its weight is ``weight`` x ``level``, and the logged ``train/sample_loss`` includes it (so it is
not comparable across levels). ``level_scope`` (session 27): ``joint`` (the default) compares each curve's mean, so
with ``per_joint`` every BC joint's own level, the spine's as much as the wrists' (on a log scale a joint that barely
moves weighs as much as one that gestures); ``window`` compares the means of the joint-averaged curves, one level
per window (the same as ``joint`` without ``per_joint``), dominated by the joints that move most. Measured (session
27): ``window`` made three of five training seeds jittery (acceleration 1.5-4.7x GT's), a level met by chatter.

``accel_level`` (a weight, 0 = off; session 27) adds the squared log ratio of the sample's and GT's mean acceleration
magnitude over the window's BC joints (second difference of the positions, floored like the speeds): as fast overall
may not come from chatter, whose acceleration is far above GT's at the same speed. Measured (session 27, M6, with
the window level, no gradient clipping): training diverged for three of five seeds (its gradient grows as 1/mean
acceleration, and the floor is only ~10x below GT's mean); the one seed that trained smoothly gave the best test row.
With ``commit`` below (session 28, M7) all five seeds trained smoothly, and the main job uses both.

``commit`` (a weight, 0 = off; session 28) adds the sample's code residual: the mean squared distance of its
upper-body and pelvis latents (in the codec's scale) to the codes they decode to (``MotionCodec.code_residual``),
those codes held fixed, as a VQ-VAE's commitment loss. Why: the decode is straight-through (its gradient treats
quantisation as the identity), so a term that keeps asking for more motion can push the sample's latents off the
codebook, where the gradient no longer describes what the decode does. Measured (session 28, 4 train batches, the 2-step
training-mode sample; residual relative to the latents' RMS, GT's 0.11 upper / 0.08 pelvis): session 25's (level-0)
main-job model 0.37 / 0.19; M6's smooth seed 43 0.64 / 0.26; M5's jittery seed 42 0.91 / 0.97 with pelvis latents 13x
GT's RMS; E2's diverged seed 45 latents 10^7 x GT's, 100% residual; the M7 models (commit 0.1) 0.21-0.29 / 0.09-0.10.

``highpass`` (frames) takes a centred moving average off both curves first (after the division), so stroke-scale
dips count rather than the slow envelope; ``per_joint`` uses every BC joint's own curve (BC takes its beats per
joint) instead of their mean. The sample is drawn in the generator's training mode (dropout on, as in the rest of
the training step; inference samples in eval mode), and the loss is computed in float32 outside autocast (bf16
positions would carry millimetres of rounding, about one frame's motion).

Config (the generator stage's ``sample_timing`` node, configs/generator_base.yaml; weight 0 = off)::

    sample_timing: {weight: 0.0, steps: 2, guidance: 1.0, form: relmse, highpass: 0, per_joint: false, spectrum: 0.0,
                    quantiles: 0.0, level: 0.0, level_scope: joint, accel_level: 0.0, commit: 0.0, rows: 0}

``rows`` (0 = all) draws the sample for the batch's first ``rows`` rows only (the batch is shuffled, so a random
subset): the sampled draw, its decoding and their backward are most of the loss's cost, and half the rows give an
unbiased estimate of the same gradient at about half that cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from geometry.body_model import JointsFK, get_fk
from geometry.skeleton import BC_JOINTS, PARTS
from models.motion_codec import MotionCodec
from utils.config import ConfigError

KEYS = ("weight", "steps", "guidance", "form", "highpass", "per_joint", "spectrum", "quantiles", "level", "level_scope",
        "accel_level", "commit", "rows")
FORMS = ("relmse", "corr", "scaled")
LEVEL_SCOPES = ("joint", "window")
TIMING_PARTS = ("upper", "lower_trans")  # the parts whose joints move BC's joints (the pelvis's global rotation too)
SPEED_FLOOR = 1e-4  # m per frame (GT upper-body means are ~5e-3): below it a curve counts as still
SPECTRUM_BAND = 4  # rfft bins pooled per band (~0.94 Hz for a 127-frame curve at 30 fps)


def highpass(curves: torch.Tensor, width: int) -> torch.Tensor:
    """(N, T) -> each curve minus its centred ``width``-frame moving average (edges: replicated)."""
    if width <= 1:
        return curves
    box = torch.full((1, 1, width), 1.0 / width, dtype=curves.dtype, device=curves.device)
    padded = F.pad(curves[:, None], ((width - 1) // 2, width // 2), mode="replicate")
    return curves - F.conv1d(padded, box)[:, 0]


def relative_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the rows of ``x`` and ``y`` (N, T), already divided by a mean speed."""
    return (x - y).pow(2).mean()


def by_mean(curves: torch.Tensor, floor: float = SPEED_FLOOR) -> torch.Tensor:
    """(N, T) -> each row divided by its mean, the mean floored at ``floor`` (a still row stays near 0 and its
    gradient bounded)."""
    return curves / curves.mean(1, keepdim=True).clamp_min(floor)


def band_amplitudes(curves: torch.Tensor, band: int = SPECTRUM_BAND) -> torch.Tensor:
    """(N, T) -> (N, ceil(F/band)): the root mean power of each row's spectrum (its mean removed; orthonormal rfft,
    the constant bin dropped) over consecutive bands of ``band`` bins. Phase-free: how often a curve rises and
    falls, not when."""
    power = torch.fft.rfft(curves - curves.mean(1, keepdim=True), dim=1, norm="ortho").abs().pow(2)[:, 1:]
    pad = (-power.shape[1]) % band
    power = F.pad(power, (0, pad))  # zero-padded last band: the same for both curves
    return power.reshape(power.shape[0], -1, band).mean(-1).clamp_min(1e-12).sqrt()


def sorted_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of each row's sorted values (N, T): the squared Wasserstein-2 distance between the
    rows' value distributions, blind to when each value occurs."""
    return (x.sort(dim=1).values - y.sort(dim=1).values).pow(2).mean()


def log_level_mse(x: torch.Tensor, y: torch.Tensor, floor: float = SPEED_FLOOR) -> torch.Tensor:
    """Mean over rows of (log mean(x) - log mean(y))^2 for raw speed curves (N, T), each mean floored at ``floor``:
    how much faster or slower one moves overall, blind to when."""
    return (x.mean(1).clamp_min(floor).log() - y.mean(1).clamp_min(floor).log()).pow(2).mean()


def window_acceleration(pos: torch.Tensor) -> torch.Tensor:
    """Positions (B, T, J, 3) -> (B, 1): each window's mean acceleration magnitude (second difference, per frame²)
    over its frames and joints."""
    return pos.diff(n=2, dim=1).norm(dim=-1).mean((1, 2))[:, None]


def one_minus_r(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 1 - Pearson r between the rows of ``x`` and ``y`` (N, T); a constant row counts r = 0."""
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    r = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-12)
    return (1 - r).mean()


class SampleTimingLoss:
    """``loss(sample, data)``: generator-layout latents (B,C,1,T') of a sample and of the GT window -> scalar.

    ``codec``: the frozen MotionCodec; ``fk``: a JointsFK built with ``flat_hand_mean=True`` (hands are not used)."""

    def __init__(self, codec: MotionCodec, fk: JointsFK, weight: float, steps: int = 2, guidance: float = 1.0,
                 form: str = "relmse", highpass: int = 0, per_joint: bool = False,
                 spectrum: float = 0.0, rows: int = 0, quantiles: float = 0.0, level: float = 0.0,
                 level_scope: str = "joint", accel_level: float = 0.0, commit: float = 0.0) -> None:  # fmt: skip
        ok = (weight >= 0 and steps >= 1 and highpass >= 0 and guidance == guidance and spectrum >= 0 and rows >= 0
              and quantiles >= 0 and level >= 0 and accel_level >= 0 and commit >= 0)  # fmt: skip
        if not ok:  # NaN fails
            raise ConfigError(f"sample_timing: weight, highpass, spectrum, quantiles, level, accel_level, commit and "
                              f"rows must be >= 0, steps >= 1 and guidance a number, got weight {weight}, steps "
                              f"{steps}, highpass {highpass}, guidance {guidance}, spectrum {spectrum}, quantiles "
                              f"{quantiles}, level {level}, accel_level {accel_level}, commit {commit}, rows {rows}")
        if form not in FORMS:
            raise ConfigError(f"sample_timing.form must be one of {list(FORMS)}, got {form!r}")
        if level_scope not in LEVEL_SCOPES:
            raise ConfigError(f"sample_timing.level_scope must be one of {list(LEVEL_SCOPES)}, got {level_scope!r}")
        missing = [p for p in TIMING_PARTS if p not in codec.parts]
        if missing:
            raise ConfigError(f"sample_timing needs the codec parts {list(TIMING_PARTS)}; missing {missing}")
        self.codec, self.fk = codec, fk
        self.weight, self.steps, self.guidance = float(weight), int(steps), float(guidance)
        self.form, self.highpass, self.per_joint = form, int(highpass), bool(per_joint)
        self.spectrum, self.rows, self.quantiles = float(spectrum), int(rows), float(quantiles)
        self.level, self.level_scope, self.accel_level = float(level), level_scope, float(accel_level)
        self.commit = float(commit)

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, codec: MotionCodec,
                    body_model: str | None = None) -> SampleTimingLoss | None:  # fmt: skip
        """None when the node is absent or its weight is 0 (the loss is off and costs nothing: no FK is built).
        ``body_model``: the FK skeleton (``geometry.body_model.get_fk``; None: SMPL-X if found, else the mannequin)."""
        if node is not None and not isinstance(node, Mapping):
            raise ConfigError(f"sample_timing must be a mapping {{{', '.join(KEYS)}}}, got {node!r}")
        node = dict(node or {})
        unknown = sorted(set(node) - set(KEYS))
        if unknown:
            raise ConfigError(f"sample_timing: unknown key(s) {unknown}; expected {list(KEYS)}")
        if not float(node.get("weight", 0.0)):
            return None
        fk = get_fk(body_model, flat_hand_mean=True)
        return cls(codec, fk, float(node["weight"]), int(node.get("steps", 2)), float(node.get("guidance", 1.0)),
                   str(node.get("form", "relmse")), int(node.get("highpass", 0)),
                   bool(node.get("per_joint", False)), float(node.get("spectrum", 0.0)),
                   int(node.get("rows", 0)), float(node.get("quantiles", 0.0)),
                   float(node.get("level", 0.0)), str(node.get("level_scope", "joint")),
                   float(node.get("accel_level", 0.0)), float(node.get("commit", 0.0)))  # fmt: skip

    def positions(self, latents: torch.Tensor) -> torch.Tensor:
        """Generator-layout latents (B,C,1,T') -> BC joints' positions (B, 4T', J, 3) of the decoded upper body and
        pelvis part, every other joint at rest. Differentiable."""
        z = latents.squeeze(2).transpose(1, 2)
        r6 = self.codec.decode_rot6d(z, TIMING_PARTS)
        b, t = r6["upper"].shape[:2]
        by_joints = {PARTS[p]["joints"]: r6[p].reshape(b * t, -1, 6) for p in TIMING_PARTS}
        return self.fk.positions_at_rest(by_joints, BC_JOINTS).reshape(b, t, len(BC_JOINTS), 3)

    def speed_of(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions (B, T, J, 3) -> speed curves (B, T-1), or (B·J, T-1) with ``per_joint``: frame-to-frame speed
        of the joints (mean over them unless per joint)."""
        sp = pos.diff(dim=1).norm(dim=-1)
        if self.per_joint:
            return sp.transpose(1, 2).reshape(-1, pos.shape[1] - 1)
        return sp.mean(-1)

    def speed(self, latents: torch.Tensor) -> torch.Tensor:
        """Generator-layout latents (B,C,1,T') -> speed curves (B, 4T'-1), or (B·J, 4T'-1) with ``per_joint``
        (`positions`, then `speed_of`). Differentiable."""
        return self.speed_of(self.positions(latents))

    def curves(self, sample: torch.Tensor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The compared curves of the sample and of GT: `speed`, divided by its own mean (``relmse``) or both by
        GT's (``scaled``), then high-passed. GT's carries no gradient."""
        return self._compared(*self._raw(sample, data))

    def _raw(self, sample: torch.Tensor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = self.speed(data)
        return self.speed(sample), target

    def _compared(self, sp: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.form == "relmse":
            sp, target = by_mean(sp), by_mean(target)
        elif self.form == "scaled":
            scale = target.mean(1, keepdim=True).clamp_min(SPEED_FLOOR)
            sp, target = sp / scale, target / scale
        return highpass(sp, self.highpass), highpass(target, self.highpass)

    def _levelled(self, sp: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw curves whose means the level term compares: as given, or averaged over the BC joints per window
        (``level_scope: window`` with ``per_joint``)."""
        if self.level_scope == "window" and self.per_joint:
            j = len(BC_JOINTS)
            return sp.reshape(-1, j, sp.shape[1]).mean(1), target.reshape(-1, j, target.shape[1]).mean(1)
        return sp, target

    def __call__(self, sample: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=sample.device.type, enabled=False):
            if self.accel_level:  # positions kept: the acceleration needs them beside the speed
                with torch.no_grad():
                    gt_pos = self.positions(data.float())
                pos = self.positions(sample.float())
                sp, target = self.speed_of(pos), self.speed_of(gt_pos)
            else:
                sp, target = self._raw(sample.float(), data.float())
            x, y = self._compared(sp, target)
            loss = (one_minus_r if self.form == "corr" else relative_mse)(x, y)
            if self.level:
                loss = loss + self.level * log_level_mse(*self._levelled(sp, target))
            if self.accel_level:
                loss = loss + self.accel_level * log_level_mse(window_acceleration(pos), window_acceleration(gt_pos))
            if self.commit:
                loss = loss + self.commit * self.codec.code_residual(sample.float().squeeze(2).transpose(1, 2),
                                                                     TIMING_PARTS)  # fmt: skip
            if self.spectrum:
                loss = loss + self.spectrum * (band_amplitudes(x) - band_amplitudes(y)).pow(2).mean()
            if self.quantiles:
                loss = loss + self.quantiles * sorted_mse(x, y)
            return loss


__all__ = ["SampleTimingLoss", "band_amplitudes", "by_mean", "highpass", "log_level_mse", "one_minus_r", "relative_mse",
           "sorted_mse", "window_acceleration"]
