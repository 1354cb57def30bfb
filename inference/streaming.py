"""Streaming generation: audio arrives in chunks, each 128-frame window is generated as soon as its audio (plus a
short look-ahead) is there, and motion frames are emitted as soon as the RVQ decoder's right context exists.

Same windows, seeds, noise order and crop as the offline windowed path (inference.windowed, whole file, no tail
dropped). Two things a stream cannot do like the offline path, and what it does instead:

* **Audio features.** Offline features are computed on the whole recording, as the training cache did; librosa's
  onset detector normalises the onset strength by the *file's* maximum, which a stream never knows. A stream
  computes each window's features on its own audio with ``context_s`` seconds before it and ``lookahead_s`` after
  (:func:`window_features`; the amplitude channel is exact, the onset channel is normalised locally). Offline
  generation with ``features="windowed"`` uses exactly the same features, and its output equals the stream's
  (tested, for any chunking).
* **Decoding.** The RVQ decoder is convolutional: a latent influences frames within ``decoder_radius`` latents. The
  stream decodes the latents with that much context on both sides and emits a frame only once its right context
  exists, so emitted frames equal those of decoding the whole sequence at once (up to float32 rounding).

Algorithmic delay (audio that must have arrived before a frame can be emitted): the rest of its window
(up to 128 frames, 4.27 s) + ``lookahead_s`` + the decoder's right context, which usually lies in the next window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from dataloaders.features import audio as audio_feat
from geometry.rotations import rot6d_to_poses
from inference.audio_input import InputError
from inference.model_source import LoadedModel
from inference.windowed import WindowOptions, crossfade_junction, generate_window, plan_windows

if TYPE_CHECKING:  # inference.api imports this module
    from inference.api import SeedMotion

CONTEXT_S = 5.0
LOOKAHEAD_S = 0.25


def window_features(
    y: np.ndarray, a0: int, a1: int, sr: int, onset_mode: str, context_s: float = CONTEXT_S,
    lookahead_s: float = LOOKAHEAD_S,
) -> np.ndarray:  # fmt: skip
    """(a1 - a0, 2) float32 onset+amplitude of samples [a0, a1) computed on y[a0 - context : a1 + lookahead] only
    (zeros past the end of ``y``, as the offline windows are padded). Depends only on those samples."""
    s0 = max(0, a0 - int(round(context_s * sr)))
    s1 = min(y.shape[0], a1 + max(audio_feat.AMPLITUDE_WINDOW, int(round(lookahead_s * sr))))
    out = np.zeros((a1 - a0, 2), dtype=np.float32)
    if s1 <= max(s0, a0):
        return out
    seg = y[s0:s1]
    amp = audio_feat.amplitude_envelope(seg)
    lo, hi = a0 - s0, min(a1, s1) - s0
    out[: hi - lo, 0] = amp[lo:hi]
    frames = audio_feat.onset_frames(seg, sr)
    if onset_mode == "reference":
        # upstream writes an onset at the sample index equal to its (file-global) STFT frame index
        idx = (s0 + frames * audio_feat.ONSET_HOP) // audio_feat.ONSET_HOP
    else:
        idx = s0 + frames * audio_feat.ONSET_HOP
    idx = idx[(idx >= a0) & (idx < min(a1, s1))] - a0
    out[idx, 1] = 1.0
    return out


def decoder_radius(codec: Any) -> int:
    """Latents on each side that can influence a decoded frame: the receptive field of the RVQ decoders (conv k3
    in/out, per level a Resnet1D with dilations growth**i, nearest upsampling x stride, conv k3), an exact upper
    bound from their configs, maximised over the body parts."""
    radius = 0
    for vq in codec.vqs.values():
        c = vq.config
        r = 2  # the two k3 convolutions at frame rate after the last level
        for _ in range(int(c["down_t"])):
            r += 1  # k3 conv after the upsampling
            r = -(-r // int(c["stride_t"]))  # back through nearest upsampling: ceil
            r += sum(int(c["dilation_growth_rate"]) ** i for i in range(int(c["depth"])))
        radius = max(radius, r + 1)  # the k3 input convolution
    return radius


@dataclass
class Emitted:
    start: int  # first frame index
    poses: np.ndarray  # (k,165)
    trans: np.ndarray  # (k,3)
    trans_v: np.ndarray  # (k,3)
    expressions: np.ndarray | None = None  # (k,100) when the codec has a face part


@dataclass
class StreamStats:
    window_latency_s: list[float] = field(default_factory=list)  # compute time per window (features..decode)
    window_ready_s: list[float] = field(default_factory=list)  # audio time at which each window could start
    first_emit_audio_s: float | None = None  # audio that had arrived when the first frames were emitted
    decoder_radius: int = 0


class GestureStream:
    """Feed 16 kHz mono samples with :meth:`push`; each call returns the frames that became final. :meth:`finish`
    ends the stream (the last window padded and cropped, as offline) and returns the rest.

    ``word_ids``: per-frame ids for the whole stream when known up front (a TextGrid or transcript of a file);
    ``None`` gives the PAD word (text-free). ``feature_fn(y, a0, a1)`` overrides the per-window features (tests use it
    to feed the offline whole-file features).
    """

    def __init__(
        self, lm: LoadedModel, seed: int = 0, word_ids: np.ndarray | None = None, feature_fn: Any = None,
        context_s: float = CONTEXT_S, lookahead_s: float = LOOKAHEAD_S, first_seed: Tensor | None = None,
    ) -> None:  # fmt: skip
        rep = str(lm.cfg.data.get("audio_rep") or "onset+amplitude")
        if rep != "onset+amplitude":
            # per-window mel/WavLM features with left context are not implemented: refuse before any audio arrives
            raise InputError(f"data.audio_rep={rep!r}: streaming supports onset+amplitude models only; generate this "
                             "file offline (without --stream)")  # fmt: skip
        self.lm = lm
        self.opts: WindowOptions = lm.opts
        self.sr, self.fps = self.opts.audio_sr, self.opts.fps
        self.rng = torch.Generator(device=lm.device).manual_seed(int(seed))
        self.word_ids = None if word_ids is None else np.asarray(word_ids, dtype=np.int64)
        onset_mode = str(lm.cfg.data.get("onset_mode") or "corrected")
        self.feature_fn = feature_fn or (lambda y, a0, a1: window_features(y, a0, a1, self.sr, onset_mode,
                                                                           context_s, lookahead_s))  # fmt: skip
        self.lookahead = max(audio_feat.AMPLITUDE_WINDOW, int(round(lookahead_s * self.sr)))
        self.chunks: list[np.ndarray] = []
        self.y = np.zeros(0, dtype=np.float32)
        self.latents: list[Tensor] = []  # kept latents (1, k, 384)
        self.n_latents = 0
        self.emitted_latents = 0
        self.window = 0
        self.seed_lat = (lm.codec.mean_latent(1, self.opts.seed_latents, lm.device) if first_seed is None
                         else first_seed.to(lm.device))  # fmt: skip
        self.trans_xz = torch.zeros(1, 2, dtype=torch.float32, device=lm.device)
        self.nfe = 0
        self.stats = StreamStats(decoder_radius=decoder_radius(lm.codec))
        self.finished = False

    # ------------------------------------------------------------------------------------------------ windows
    def _slice(self, i: int) -> tuple[int, int]:
        return plan_windows(self.opts.overlap_frames + (i + 1) * self.opts.hop_frames, None, self.opts).audio_slices[i]

    def _words(self, i: int) -> Tensor:
        w0, w1 = i * self.opts.hop_frames, i * self.opts.hop_frames + self.opts.window_frames
        ids = np.full(w1 - w0, self.opts.word_pad_id, dtype=np.int64)
        if self.word_ids is not None and w0 < self.word_ids.shape[0]:
            part = self.word_ids[w0:w1]
            ids[: part.shape[0]] = part
        return torch.from_numpy(ids)[None].to(self.lm.device)

    def _generate(self, i: int) -> None:
        t0 = time.perf_counter()
        a0, a1 = self._slice(i)
        feats = torch.from_numpy(np.ascontiguousarray(self.feature_fn(self.y, a0, a1)))[None].to(self.lm.device)
        # the offline path's window step: same RNG draw order, same precision
        out = generate_window(self.lm.model, feats, self._words(i), self.seed_lat, self.lm.codec.latent_dim, self.rng,
                              self.lm.precision)  # fmt: skip
        self.nfe += out.nfe
        lat = out.latents.squeeze(2).permute(0, 2, 1)
        kept = lat if i == 0 else lat[:, self.opts.seed_latents :]
        if i and self.opts.crossfade:  # as offline; _emit holds these latents back until now
            self.latents[-1] = crossfade_junction(self.latents[-1], lat[:, : self.opts.seed_latents],
                                                  self.opts.crossfade)  # fmt: skip
        self.latents.append(kept)
        self.n_latents += kept.shape[1]
        self.seed_lat = lat[:, -self.opts.seed_latents :]
        self.window += 1
        self.stats.window_latency_s.append(time.perf_counter() - t0)
        self.stats.window_ready_s.append(min(a1 + self.lookahead, self.y.shape[0]) / self.sr)

    def _emit(self, n_frames: int | None) -> list[Emitted]:
        """Decode and emit the frames whose decoder context is complete (all of them when ``n_frames`` is given)."""
        r = self.stats.decoder_radius
        # the last `crossfade` latents change when the next window arrives: neither emitted nor used as context
        final = self.n_latents - (0 if n_frames is not None else self.opts.crossfade)
        final_lat = final if n_frames is not None else final - r
        if final_lat <= self.emitted_latents:
            return []
        z = torch.cat(self.latents, dim=1)
        lo = max(0, self.emitted_latents - r)
        hi = final if n_frames is not None else min(final, final_lat + r)
        parts = self.lm.codec.decode_parts(z[:, lo:hi])
        f0, f1 = 4 * (self.emitted_latents - lo), 4 * (final_lat - lo)
        first = 4 * self.emitted_latents
        if n_frames is not None:
            f1 = min(f1, f0 + max(0, n_frames - first))
        poses = parts["upper"].new_zeros(1, f1 - f0, 165)
        codec = self.lm.codec
        for p in codec.parts:
            poses[..., codec._aa[p].to(poses.device)] = rot6d_to_poses(parts[p][:, f0:f1])
        exp = parts["expressions"][0, f0:f1].float().cpu().numpy() if codec.has_face else None
        tv = parts["trans_v"][:, f0:f1]
        # integrate x/z as one running cumulative sum (the offline trans_from_trans_v over the whole sequence)
        xz = torch.cumsum(torch.cat([self.trans_xz[:, None], tv[..., [0, 2]]], dim=1), dim=1)[:, 1:]
        if xz.shape[1]:
            self.trans_xz = xz[:, -1]
        trans = torch.stack([xz[..., 0], tv[..., 1], xz[..., 1]], dim=-1)
        self.emitted_latents = final_lat
        if self.stats.first_emit_audio_s is None and f1 > f0:
            self.stats.first_emit_audio_s = self.y.shape[0] / self.sr
        return [Emitted(first, poses[0].cpu().numpy(), trans[0].double().cpu().numpy(), tv[0].cpu().numpy(), exp)]

    # ------------------------------------------------------------------------------------------------ API
    @torch.no_grad()
    def push(self, samples: np.ndarray) -> list[Emitted]:
        """Add samples; generate every window whose audio (+ look-ahead) has arrived; return the final frames."""
        if self.finished:
            raise RuntimeError("push after finish")
        s = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(s)):
            raise ValueError("audio chunk holds NaN or infinite samples")
        self.y = np.concatenate([self.y, s])
        while True:
            a0, a1 = self._slice(self.window)
            if self.y.shape[0] < a1 + self.lookahead:
                break
            self._generate(self.window)
        return self._emit(None)

    @torch.no_grad()
    def finish(self) -> list[Emitted]:
        """End of audio: the remaining windows of the offline plan (padded), then every remaining frame (cropped)."""
        self.finished = True
        n = max(1, math.ceil(self.y.shape[0] * self.fps / self.sr - 1e-9))
        plan = plan_windows(n, self.y.shape[0], self.opts)
        while self.window < plan.n_windows:
            self._generate(self.window)
        return self._emit(n)

    def settings(self) -> dict[str, Any]:
        hop_s = self.opts.hop_frames / self.fps
        return {"decoder_radius_latents": self.stats.decoder_radius, "lookahead_s": self.lookahead / self.sr,
                "window_s": self.opts.window_frames / self.fps, "hop_s": hop_s,
                "algorithmic_delay_s": self.opts.window_frames / self.fps + self.lookahead / self.sr
                + 4 * (self.stats.decoder_radius + self.opts.crossfade) / self.fps}  # fmt: skip


def chunks_of(y: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, y.shape[0], size):
        yield y[i : i + size]


def collect(parts: list[Emitted]) -> dict[str, np.ndarray]:
    """Concatenate emitted pieces (checking they are contiguous)."""
    start = 0
    for p in parts:
        if p.start != start:
            raise AssertionError(f"emitted frames are not contiguous: expected {start}, got {p.start}")
        start += p.poses.shape[0]
    cat = lambda k: np.concatenate([getattr(p, k) for p in parts]) if parts else np.zeros((0, 3))  # noqa: E731
    out = {"poses": cat("poses"), "trans": cat("trans"), "trans_v": cat("trans_v")}
    if parts and parts[0].expressions is not None:
        out["expressions"] = cat("expressions")
    return out


def stream_file(
    lm: LoadedModel, audio: Any, *, text: str | None = None, textgrid: Any = None, asr: str | None = None,
    seed: int = 0, betas: np.ndarray | None = None, chunk_s: float = 0.1, verbose: bool = False,
    seed_motion: SeedMotion | None = None,
) -> Any:  # fmt: skip
    """Stream a file through :class:`GestureStream` in ``chunk_s`` chunks (as if it arrived in real time); returns
    an inference.api.GestureResult whose json records per-window latency and the algorithmic delay. Words (if any)
    are taken from the whole file before streaming starts."""
    from inference.api import _meta, _result, prepare_input

    t_start = time.perf_counter()
    inp = prepare_input(lm, audio, text, textgrid, asr)  # words (if any) from the whole file
    text_free = inp.words["source"] == "none"
    stream = GestureStream(lm, seed=seed, word_ids=None if text_free else inp.word_ids,
                           first_seed=None if seed_motion is None else seed_motion.latents)
    parts: list[Emitted] = []
    t0 = time.perf_counter()
    y = inp.audio.samples
    for c in chunks_of(y, max(1, int(chunk_s * lm.audio_sr))):
        new = stream.push(c)
        parts += new
        if verbose:
            for p in new:
                print(f"[stream] frames {p.start}-{p.start + p.poses.shape[0] - 1} emitted after "
                      f"{stream.y.shape[0] / lm.audio_sr:.2f} s of audio")  # fmt: skip
    parts += stream.finish()
    t1 = time.perf_counter()
    got = collect(parts)
    meta = _meta(lm, inp, seed, stream.nfe, stream.window, betas is not None, "windowed", seed_motion)
    lat = stream.stats.window_latency_s
    meta["streaming"] = {**stream.settings(), "chunk_s": chunk_s, "windows": stream.window,
                         "window_latency_s": [round(t, 4) for t in lat], "first_window_latency_s": lat[0],
                         "max_window_latency_s": max(lat), "first_emit_at_audio_s": stream.stats.first_emit_audio_s,
                         "seconds": t1 - t0}  # fmt: skip
    meta["timing"] = {"decode": round(inp.seconds["decode"], 4), "words": round(inp.seconds["words"], 4),
                      "streaming": round(t1 - t0, 4), "total_before_write": round(t1 - t_start, 4)}
    return _result(inp.audio.path.stem, got["poses"], got["trans"], torch.cat(stream.latents, 1)[0].cpu().numpy(),
                   betas, meta, got.get("expressions"))


def stream_pcm(
    lm: LoadedModel, reader: Any, *, textgrid: Any = None, seed: int = 0, betas: np.ndarray | None = None,
    name: str = "stdin", chunk_bytes: int = 3200, verbose: bool = False,
    seed_motion: SeedMotion | None = None,
) -> Any:  # fmt: skip
    """Stream raw 16 kHz mono PCM16 (little-endian) from a binary reader (e.g. stdin) until EOF. The samples are used
    as they arrive (no 22.05 kHz round trip: that cannot be done chunk by chunk). Words: a TextGrid or none."""
    from inference.api import PreparedInput, _meta, _result
    from inference.audio_input import MIN_SECONDS, SILENCE_DBFS, DecodedAudio, InputError, frame_rms
    from inference.words import WordTrack, frame_ids, words_from_textgrid

    if lm.audio_sr != 16000:
        raise InputError(f"raw PCM input is 16 kHz, but this model's data.audio_sr is {lm.audio_sr}")
    track = words_from_textgrid(textgrid) if textgrid is not None else WordTrack("none", [])
    horizon = max([int(math.ceil(b * lm.fps)) + 1 for _, b, _ in track.intervals] + [1])
    ids, words = frame_ids(track, horizon, lm.vocab, lm.fps)
    stream = GestureStream(lm, seed=seed, word_ids=None if track.source == "none" else ids,
                           first_seed=None if seed_motion is None else seed_motion.latents)
    parts: list[Emitted] = []
    rest = b""
    t0 = time.perf_counter()
    while True:
        data = reader.read(chunk_bytes)
        if not data:
            break
        data = rest + data
        cut = len(data) - len(data) % 2
        rest = data[cut:]
        new = stream.push(np.frombuffer(data[:cut], dtype="<i2").astype(np.float32) / 32768.0)
        parts += new
        if verbose:
            for p in new:
                print(f"[stream] frames {p.start}-{p.start + p.poses.shape[0] - 1} emitted after "
                      f"{stream.y.shape[0] / lm.audio_sr:.2f} s of audio")  # fmt: skip
    y = stream.y
    if y.shape[0] < MIN_SECONDS * lm.audio_sr:
        raise InputError(f"{name}: only {y.shape[0] / lm.audio_sr:.2f} s of PCM audio arrived; stream at least "
                         f"{MIN_SECONDS:g} s of 16 kHz mono PCM16")  # fmt: skip
    if float(frame_rms(y, lm.audio_sr).max()) <= 10 ** (SILENCE_DBFS / 20):
        raise InputError(f"{name}: no speech energy in the PCM stream; check it is 16 kHz mono little-endian PCM16")
    parts += stream.finish()
    t1 = time.perf_counter()
    got = collect(parts)
    n = got["poses"].shape[0]
    dec = DecodedAudio(Path(name), y, lm.audio_sr, lm.audio_sr, 1, ["raw 16 kHz PCM16 stream, samples used as is"])
    inp = PreparedInput(dec, n, ids[:n], words, {"decode": 0.0, "words": 0.0})
    meta = _meta(lm, inp, seed, stream.nfe, stream.window, betas is not None, "windowed", seed_motion)
    lat = stream.stats.window_latency_s
    meta["streaming"] = {**stream.settings(), "chunk_bytes": chunk_bytes, "windows": stream.window,
                         "window_latency_s": [round(t, 4) for t in lat], "first_window_latency_s": lat[0],
                         "max_window_latency_s": max(lat), "first_emit_at_audio_s": stream.stats.first_emit_audio_s,
                         "seconds": t1 - t0}  # fmt: skip
    meta["timing"] = {"streaming": round(t1 - t0, 4), "total_before_write": round(t1 - t0, 4)}
    return _result(name, got["poses"], got["trans"], torch.cat(stream.latents, 1)[0].cpu().numpy(), betas, meta,
                   got.get("expressions"))


__all__ = ["CONTEXT_S", "Emitted", "GestureStream", "LOOKAHEAD_S", "chunks_of", "collect", "decoder_radius",
           "stream_file", "stream_pcm", "window_features"]
