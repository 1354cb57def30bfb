"""A user's audio file -> 16 kHz mono samples and the generator's audio features, computed as training computed them.

Decoding: any sample rate, mono or stereo (channels averaged, as ``librosa.load`` does), every container libsndfile
reads (wav, flac, ogg/vorbis, mp3 with libsndfile >= 1.1). The samples are then brought to 16 kHz by the *same* path
the training cache used for its wav files (``data.audio_load``):

* ``upstream``: resample to librosa's default 22.05 kHz, then to 16 kHz (exactly what ``librosa.load(path)`` followed by
  ``librosa.resample`` does in dataloaders.features.audio.load_audio; a 16 kHz file takes the same double hop);
* ``direct``: resample to 16 kHz only when the file's rate differs.

Features (``data.audio_rep`` of the checkpoint's config), on the whole recording, as the cache stores them:
``onset+amplitude`` (dataloaders.features.audio.onset_amplitude with the checkpoint's ``data.onset_mode``), ``mel``
(log-mel at 30 fps) or ``wavlm`` (frozen WavLM features of ``data.wavlm_model`` at 30 fps). Nothing is cropped to
whole seconds: the motion covers the whole file.

Bad input raises :class:`InputError` with one line naming the file and what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from dataloaders.features import audio as audio_feat

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3")
LIBROSA_DEFAULT_SR = 22050  # librosa.load's default rate: the intermediate rate of the upstream loading path
MIN_SECONDS = 1.0
SILENCE_DBFS = -50.0  # loudest 25 ms frame below this: no speech energy
CONVERT_HINT = "convert it, e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`"


class InputError(ValueError):
    """Unusable user input (audio, words, betas, output folder); the message is one line naming the file."""


@dataclass
class DecodedAudio:
    path: Path
    samples: np.ndarray  # (S,) float32 mono at ``sr``
    sr: int
    native_sr: int
    channels: int
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / float(self.sr)

    def n_frames(self, fps: int = 30) -> int:
        """Motion frames covering the whole recording (the last partial frame included: no tail dropped)."""
        return max(1, math.ceil(self.samples.shape[0] * fps / self.sr - 1e-9))


def _resample(y: np.ndarray, orig: int, target: int) -> np.ndarray:
    import librosa

    return y if orig == target else librosa.resample(y, orig_sr=orig, target_sr=target)


def frame_rms(y: np.ndarray, sr: int, win_s: float = 0.025) -> np.ndarray:
    """RMS of consecutive non-overlapping ``win_s`` frames (for the silence check and transcript alignment)."""
    n = max(1, int(sr * win_s))
    m = y.shape[0] // n
    if m == 0:
        return np.array([float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if y.size else 0.0])
    return np.sqrt(np.mean(np.square(y[: m * n].reshape(m, n), dtype=np.float64), axis=1))


def decode_audio(
    path: str | Path, sr: int = 16000, load_mode: str = "upstream", min_seconds: float = MIN_SECONDS
) -> DecodedAudio:
    """Read, check and resample an audio file (see the module docstring). Raises InputError on bad input."""
    path = Path(path)
    if load_mode not in audio_feat.LOAD_MODES:
        raise ValueError(f"load_mode must be one of {audio_feat.LOAD_MODES}, got {load_mode!r}")
    if not path.is_file():
        raise InputError(f"{path}: audio file not found; pass an existing {'/'.join(AUDIO_EXTENSIONS)} file or folder")
    try:
        data, native = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: unreadable audio ({msg}); {CONVERT_HINT}") from e
    if data.shape[0] == 0:
        raise InputError(f"{path}: empty audio (0 samples); give a recording of at least {min_seconds:g} s of speech")
    if not np.all(np.isfinite(data)):
        bad = int((~np.isfinite(data)).any(axis=1).sum())
        raise InputError(f"{path}: {bad} samples are NaN or infinite; re-export the audio ({CONVERT_HINT})")
    channels = data.shape[1]
    notes: list[str] = []
    # librosa.to_mono averages the channels: what librosa.load (the training path) does with a stereo file
    y = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if channels > 1:
        notes.append(f"mixed {channels} channels to mono (mean)")
    if load_mode == "upstream":
        y = _resample(_resample(y, native, LIBROSA_DEFAULT_SR), LIBROSA_DEFAULT_SR, sr)
        if native != sr:
            notes.append(f"resampled from {native} Hz to {sr} Hz (via {LIBROSA_DEFAULT_SR} Hz, as the training cache)")
    else:
        y = _resample(y, native, sr)
        if native != sr:
            notes.append(f"resampled from {native} Hz to {sr} Hz")
    y = np.ascontiguousarray(y, dtype=np.float32)
    seconds = y.shape[0] / sr
    if seconds < min_seconds:
        raise InputError(f"{path}: only {seconds:.2f} s of audio; give at least {min_seconds:g} s of speech")
    loudest = float(frame_rms(y, sr).max())
    if loudest <= 10 ** (SILENCE_DBFS / 20):
        level = 20 * math.log10(loudest) if loudest > 0 else float("-inf")
        raise InputError(f"{path}: no speech energy (loudest 25 ms frame {level:.1f} dBFS < {SILENCE_DBFS:g} dBFS); "
                         "check the file is the speech recording and not muted")  # fmt: skip
    return DecodedAudio(path, y, sr, int(native), channels, notes)


def audio_features(
    samples: np.ndarray,
    sr: int,
    audio_rep: str,
    onset_mode: str,
    *,
    fps: int = 30,
    n_frames: int | None = None,
    wavlm_model: str | None = None,
    wavlm_layer: int | None = None,
    wavlm_finetune: bool = False,
) -> np.ndarray:
    """The generator's audio input for the whole recording, computed by the function dataloaders.cache.compute_file
    uses: ``onset+amplitude`` (S, 2) float32 samples; ``mel`` (n_frames, 128) log-mel and ``wavlm`` (n_frames, hidden)
    frozen WavLM features (``wavlm_model``: the checkpoint's data.wavlm_model) at ``fps``; with ``wavlm_finetune``
    (WavLM inside the model) the (S, 1) waveform itself. ``n_frames`` defaults to the frames covering the whole
    recording."""
    if audio_rep == "onset+amplitude":
        return audio_feat.onset_amplitude(samples, sr, onset_mode).astype(np.float32)
    if audio_rep == "wavlm" and wavlm_finetune:
        return np.asarray(samples, dtype=np.float32)[:, None]
    n = max(1, math.ceil(samples.shape[0] * fps / sr - 1e-9)) if n_frames is None else int(n_frames)
    if audio_rep == "mel":
        return audio_feat.mel_features(samples, sr, fps, n_frames=n)
    if audio_rep == "wavlm":
        if not wavlm_model:
            raise InputError("data.audio_rep='wavlm' but the checkpoint's config has no data.wavlm_model; set it "
                             "with --set data.wavlm_model=PATH (the WavLM the model was trained with)")  # fmt: skip
        from dataloaders.cache import worker_wavlm

        try:
            model = worker_wavlm(str(wavlm_model))
        except audio_feat.AudioError as e:
            raise InputError(str(e)) from e
        return audio_feat.wavlm_features(samples, model, n, layer=wavlm_layer)
    raise InputError(f"data.audio_rep={audio_rep!r}: unknown audio representation; expected onset+amplitude, mel "
                     "or wavlm")  # fmt: skip


def warm_up(sr: int = 16000) -> float:
    """Run the resampler and onset detector once on noise (librosa's first resample takes seconds to set up), so
    per-file timings and real-time factors measure steady-state work. Returns the seconds it took."""
    import time

    t0 = time.perf_counter()
    y = np.random.default_rng(0).normal(0.0, 0.1, sr).astype(np.float32)
    _resample(_resample(y, sr, LIBROSA_DEFAULT_SR), LIBROSA_DEFAULT_SR, sr)
    audio_feat.onset_amplitude(y, sr)
    return time.perf_counter() - t0


def list_audio_files(folder: str | Path) -> list[Path]:
    """Audio files directly in ``folder`` (sorted). InputError when none, or when two share a name (same output)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise InputError(f"{folder}: no audio files ({'/'.join(AUDIO_EXTENSIONS)}) in this folder")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise InputError(f"{folder}: {stems[p.stem].name} and {p.name} would both write {p.stem}.npz; rename one")
        stems[p.stem] = p
    return files


__all__ = ["AUDIO_EXTENSIONS", "DecodedAudio", "InputError", "audio_features", "decode_audio", "frame_rms",
           "list_audio_files",
           "warm_up"]
