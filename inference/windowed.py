"""Long-sequence (windowed) generation: a whole file generated as overlapping 128-frame windows (spec §7.4).

Window i covers motion frames [i·hop, i·hop + 128) (hop 112 = 128 − 16), i.e. 32 latents whose first 4 are the
seed: the ground-truth latents of frames 0-15 for window 0 (``seed_from_gt``, as upstream) and the last 4 generated
latents of window i−1 afterwards. All 32 latents of window 0 are kept, latents 4..31 of later windows; there is no
cross-fade unless ``crossfade`` = k > 0: then the last k kept seed latents are blended towards the next window's own
version of them (``crossfade_junction``). Noise is drawn per window right after the modality encoder (the order
upstream uses), from ``rng`` or the global torch RNG.

Reference quirks, each behind a named option of ``WindowOptions``:

* ``audio_indexing="reference"``: upstream slices audio samples [i·533·112, i·533·112 + 533·128) with 533 =
  int(16000/30) samples per frame, which drifts from the true 533.33 (about 0.04 s per minute). ``"exact"`` uses
  round(i·112·sr/fps) and the training window length floor(128·sr/fps) = 68266.
* ``drop_tail=True``: upstream trims n to a multiple of 8 and generates ⌊(n − 16)/112⌋ windows, dropping the last
  (n − 16) mod 112 frames. The default (False) generates ⌈(n − 16)/112⌉ windows, pads the audio with silence and the
  words with ``word_pad_id`` in the last one, and crops the result back to exactly n frames.
* ``seed_from_gt=True``: the first window's seed is the ground-truth latent (GT leakage; spec §7.3). False: the
  latent of the mean pose (all-zero normalised input, ``seed_fallback="mean_pose"``) or zeros (``"zeros"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from models.motion_codec import JAW_DIMS, MotionCodec
from utils.device import autocast_for

AUDIO_INDEXING = ("reference", "exact")
SEED_FALLBACKS = ("mean_pose", "zeros")


@dataclass
class WindowOptions:
    window_frames: int = 128  # motion frames per window (32 latents)
    seed_latents: int = 4  # upstream pre_frames (16 motion frames)
    squeeze: int = 4  # RVQ temporal down-sampling
    fps: int = 30
    audio_sr: int = 16000
    audio_indexing: str = "reference"
    drop_tail: bool = False
    seed_from_gt: bool = True
    seed_fallback: str = "mean_pose"
    word_pad_id: int = 0
    trim_multiple: int = 8  # upstream trims n to a multiple of 8 before windowing (drop_tail mode)
    crossfade: int = 0  # latents blended at each window junction (0 = none, as upstream; at most seed_latents)

    def __post_init__(self) -> None:
        if self.audio_indexing not in AUDIO_INDEXING:
            raise ValueError(f"audio_indexing must be one of {AUDIO_INDEXING}, got {self.audio_indexing!r}")
        if self.seed_fallback not in SEED_FALLBACKS:
            raise ValueError(f"seed_fallback must be one of {SEED_FALLBACKS}, got {self.seed_fallback!r}")
        if not 0 <= self.crossfade <= self.seed_latents:
            raise ValueError(f"crossfade must be in [0, seed_latents={self.seed_latents}], got {self.crossfade}")
        if self.window_frames % self.squeeze or self.window_frames <= self.overlap_frames:
            raise ValueError(f"window_frames={self.window_frames} must be a multiple of {self.squeeze} and exceed "
                             f"the seed overlap {self.overlap_frames}")

    @property
    def overlap_frames(self) -> int:
        return self.seed_latents * self.squeeze

    @property
    def hop_frames(self) -> int:
        return self.window_frames - self.overlap_frames

    @classmethod
    def from_config(cls, node: Any | None) -> WindowOptions:
        node = dict(node or {})
        unknown = sorted(set(node) - set(cls.__dataclass_fields__))
        if unknown:
            known = sorted(cls.__dataclass_fields__)
            raise ValueError(f"unknown windowed-generation option(s) {unknown}; known: {known}")
        return cls(**node)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WindowPlan:
    n_frames: int  # frames of the returned motion
    n_windows: int
    audio_slices: list[tuple[int, int]]  # [start, end) sample ranges (may run past the audio: zero-padded)
    word_starts: list[int]
    generated_frames: int  # overlap + n_windows·hop


def plan_windows(n_frames: int, n_audio: int | None, opts: WindowOptions) -> WindowPlan:
    """Window count and audio/word ranges for a sequence of ``n_frames`` frames."""
    ov, hop, win = opts.overlap_frames, opts.hop_frames, opts.window_frames
    if opts.drop_tail:
        n = n_frames - n_frames % opts.trim_multiple
        n_win = (n - ov) // hop
        if n_win < 1:
            raise ValueError(f"drop_tail=True needs at least {win} frames, got {n_frames}")
        out_frames = ov + n_win * hop
    else:
        if n_frames < 1:
            raise ValueError("cannot generate an empty sequence")
        n_win = max(1, math.ceil((n_frames - ov) / hop))
        out_frames = n_frames
    slices, starts = [], []
    for i in range(n_win):
        if opts.audio_indexing == "reference":
            spf = int(opts.audio_sr / opts.fps)  # upstream: 533 samples per frame (true value 533.33)
            a0, a1 = i * spf * hop, i * spf * hop + spf * win
        else:
            a0 = round(i * hop * opts.audio_sr / opts.fps)
            a1 = a0 + math.floor(win * opts.audio_sr / opts.fps)
        slices.append((a0, a1))
        starts.append(i * hop)
    return WindowPlan(out_frames, n_win, slices, starts, ov + n_win * hop)


def _take(x: Tensor, start: int, end: int, pad_value: float | int | None) -> Tensor:
    """x[:, start:end] along dim 1, padded with ``pad_value`` where the range runs past the end (None: the last
    row repeated)."""
    part = x[:, start : min(end, x.shape[1])]
    short = end - start - part.shape[1]
    if short > 0:
        if pad_value is None:
            pad = x[:, -1:].expand(-1, short, *x.shape[2:])
        else:
            pad = torch.full((x.shape[0], short, *x.shape[2:]), pad_value, dtype=x.dtype, device=x.device)
        part = torch.cat([part, pad], dim=1)
    return part


def takes_frame_audio(generator: torch.nn.Module) -> bool:
    """True when the generator's encoder takes frame-level audio features (mel, WavLM: (B, n, D) at ``fps``), which
    windows slice by frames; False for onset+amplitude samples (B, S, 2), sliced by samples."""
    return bool(getattr(getattr(generator, "modality_encoder", None), "frame_audio", False))


@dataclass
class WindowStep:
    """What `generate_window` made for one window (the noise kept for records and tests)."""

    at_feat: Tensor  # the window's condition (float32)
    noise: Tensor  # (B,latent_dim,1,T') float32
    latents: Tensor  # (B,latent_dim,1,T') float32
    nfe: int


def generate_window(generator: torch.nn.Module, audio: Tensor, word: Tensor, seed: Tensor, latent_dim: int,
                    rng: torch.Generator | None, precision: str = "fp32") -> WindowStep:  # fmt: skip
    """One window: condition, noise, sampling (the offline and the streaming path share it).

    ``precision="bf16"`` runs the encoder and the sampler's network calls under bf16 autocast (the noise is still
    drawn in float32 from the same RNG, the latents returned in float32, the RVQ decode stays float32): other
    numbers than fp32, faster where the device has bf16 hardware (README "Speed report"). ``fp32`` is the plain
    float32 path."""
    amp = autocast_for(audio.device, precision)
    with amp:
        at_feat = generator.encode(audio, word)
    at_feat = at_feat.float()
    # noise right after the encoder, as upstream (matters for global-RNG reproducibility)
    noise = torch.randn((audio.shape[0], latent_dim, 1, at_feat.shape[1]), generator=rng, device=at_feat.device,
                        dtype=torch.float32)  # fmt: skip
    # steps and guidance: the sampler's own settings (its config node is their one home)
    with amp:
        out = generator.sample_with_stats(None, None, seed, noise=noise, generator=rng, at_feat=at_feat)
    return WindowStep(at_feat, noise, out.latents.float(), out.nfe)


@dataclass
class WindowedOutput:
    latents: Tensor  # (B, generated_frames/4, latent_dim), generator scale (÷ latent_scale)
    poses: Tensor  # (B, n_frames, 165) axis-angle; jaw from ``jaw`` if given, else generated (face) or 0
    trans_v: Tensor  # (B, n_frames, 3) decoded
    trans: Tensor  # (B, n_frames, 3) integrated from trans_v
    n_frames: int
    n_windows: int
    nfe: int  # network calls per window summed over windows
    gt_latents: Tensor | None = None
    expressions: Tensor | None = None  # (B, n_frames, 100) generated (codec with a face part), else None
    windows: list[dict[str, Tensor]] = field(default_factory=list)  # per-window records when record=True
    settings: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def seed_from_motion(codec: MotionCodec, poses: Tensor, trans_v: Tensor, opts: WindowOptions,
                     expressions: Tensor | None = None) -> Tensor:
    """Seed latents (B, seed_latents, latent_dim) from a motion's first frames (poses (B,n,165), trans_v (B,n,3),
    expressions (B,n,100): needed when the codec has a face part): what the first window continues from when a user
    gives a starting pose sequence. Needs n >= ``overlap_frames``."""
    need = opts.overlap_frames
    n = poses.shape[1]
    if n < need:
        raise ValueError(f"a seed motion needs at least {need} frames, got {n}")
    n_enc = min(n - n % opts.trim_multiple, opts.window_frames)  # the encoder sees up to one window of context
    exp = expressions[:, :n_enc] if expressions is not None and codec.has_face else None
    return codec.encode(poses[:, :n_enc], trans_v[:, :n_enc], exp)[:, : opts.seed_latents]


def crossfade_junction(before: Tensor, head: Tensor, k: int) -> Tensor:
    """``before`` (B,T,C) ends with the seed latents of the next window, whose own version of those frames is
    ``head`` (B,S,C). Blends the last ``k`` of them linearly towards ``head`` (weight j/(k+1) at the j-th, j = 1..k),
    so the motion does not jump where the next window's latents take over."""
    s = head.shape[1]
    w = torch.arange(1, k + 1, dtype=before.dtype, device=before.device)[None, :, None] / (k + 1)
    tail = before[:, before.shape[1] - k :]
    blended = (1 - w) * tail + w * head[:, s - k :]
    return torch.cat([before[:, : before.shape[1] - k], blended], dim=1)


@torch.no_grad()
def generate_windowed(
    generator: torch.nn.Module,
    codec: MotionCodec,
    audio: Tensor,
    word: Tensor,
    poses: Tensor | None = None,
    trans_v: Tensor | None = None,
    opts: WindowOptions | None = None,
    rng: torch.Generator | None = None,
    jaw: Tensor | None = None,
    record: bool = False,
    first_seed: Tensor | None = None,
    expressions: Tensor | None = None,
    precision: str = "fp32",
) -> WindowedOutput:
    """Generate a whole sequence window by window.

    audio (B,S,2) onset+amplitude at ``audio_sr``, or (B,n',D) frame features (mel/WavLM, n' >= n frames at ``fps``)
    when the generator's encoder takes them (`takes_frame_audio`); word (B,n) ids (n = frames); poses (B,n,165) and
    trans_v (B,n,3) are the ground truth, needed only for ``seed_from_gt`` (with ``expressions`` (B,n,100) when the
    codec has a face part); ``jaw`` (B,n,3) is copied into the output poses.
    ``generator``: a models.generators LatentGenerator (call ``.eval()`` first). ``record``: keep every window's
    audio slice, word, seed, noise, condition and latents (for tests/debugging). ``first_seed`` (B, seed_latents,
    384): the first window's seed latents (e.g. `seed_from_motion` of a user's npz), instead of ``opts``' choice.
    ``precision``: ``fp32`` or ``bf16`` (the generator under bf16 autocast, see `generate_window`).
    """
    opts = opts or WindowOptions()
    b, n_in = word.shape[0], word.shape[1]
    plan = plan_windows(n_in, audio.shape[1], opts)
    device = audio.device
    gt_latents = None
    if first_seed is not None:
        if first_seed.shape != (b, opts.seed_latents, codec.latent_dim):
            raise ValueError(f"first_seed must be ({b}, {opts.seed_latents}, {codec.latent_dim}), "
                             f"got {tuple(first_seed.shape)}")
        seed = first_seed.to(device)
    elif opts.seed_from_gt:
        if poses is None or trans_v is None:
            raise ValueError("seed_from_gt=True needs the ground-truth poses and trans_v")
        # upstream encodes the whole (8-frame trimmed) sequence and takes its first latents
        n_enc = n_in - n_in % opts.trim_multiple
        if n_enc < opts.overlap_frames:
            raise ValueError(f"seed_from_gt needs at least {opts.overlap_frames} frames, got {n_in}")
        if codec.has_face and expressions is None:
            raise ValueError("seed_from_gt with a face part needs the ground-truth expressions")
        exp = expressions[:, :n_enc] if codec.has_face else None
        gt_latents = codec.encode(poses[:, :n_enc], trans_v[:, :n_enc], exp)
        seed = gt_latents[:, : opts.seed_latents]
    elif opts.seed_fallback == "zeros":
        seed = torch.zeros(b, opts.seed_latents, codec.latent_dim, device=device)
    else:
        seed = codec.mean_latent(b, opts.seed_latents, device)

    kept: list[Tensor] = []
    records: list[dict[str, Tensor]] = []
    nfe = 0
    frame_audio = takes_frame_audio(generator)
    if frame_audio and audio.shape[1] < n_in:
        raise ValueError(f"frame-level audio features have {audio.shape[1]} frames but word has {n_in}")
    for i in range(plan.n_windows):
        a0, a1 = plan.audio_slices[i]
        w0 = plan.word_starts[i]
        if frame_audio:
            # frame features (log-mel, WavLM) share the motion's frame grid: the window's own frames; past the end,
            # the last frame repeats (its motion is cropped away; a constant pad has no meaning for these features)
            a0, a1 = w0, w0 + opts.window_frames
            a_win = _take(audio, a0, a1, None)
        else:
            a_win = _take(audio, a0, a1, 0.0)
        w_win = _take(word, w0, w0 + opts.window_frames, opts.word_pad_id)
        win = generate_window(generator, a_win, w_win, seed, codec.latent_dim, rng, precision)
        nfe += win.nfe
        lat = win.latents.squeeze(2).permute(0, 2, 1)  # (B,32,384)
        if record:
            records.append({"audio_slice": torch.tensor([a0, a1]), "word": w_win, "seed": seed, "noise": win.noise,
                            "at_feat": win.at_feat, "latents": win.latents})  # fmt: skip
        if i and opts.crossfade:
            kept[-1] = crossfade_junction(kept[-1], lat[:, : opts.seed_latents], opts.crossfade)
        kept.append(lat if i == 0 else lat[:, opts.seed_latents :])
        seed = lat[:, -opts.seed_latents :]
    latents = torch.cat(kept, dim=1)
    dec = codec.decode(latents)
    n = plan.n_frames
    poses_out = dec["poses"][:, :n].clone()
    if jaw is not None:
        poses_out[..., JAW_DIMS] = jaw[:, :n].to(poses_out)
    return WindowedOutput(
        latents=latents, poses=poses_out, trans_v=dec["trans_v"][:, :n], trans=dec["trans"][:, :n], n_frames=n,
        n_windows=plan.n_windows, nfe=nfe, gt_latents=gt_latents, windows=records,
        expressions=None if dec["expressions"] is None else dec["expressions"][:, :n],
        settings={**opts.to_dict(), **generator.sampler.settings()},
    )


__all__ = ["AUDIO_INDEXING", "SEED_FALLBACKS", "WindowOptions", "WindowPlan", "WindowStep", "WindowedOutput",
           "generate_window", "generate_windowed", "plan_windows", "takes_frame_audio"]
