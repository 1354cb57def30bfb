"""Audio loading and features: onset+amplitude (the GestureLSM input), a log-mel spectrogram, WavLM features.

onset+amplitude is (S, 2) at the audio sample rate (16 kHz):
* channel 0: max |x| over the forward-looking window x[i : i+1024]; the last 1023 samples repeat the final value;
* channel 1: 1 at each librosa onset (``onset_detect`` with default parameters, hop 512), else 0.

``onset_mode`` decides *where* the onset impulse goes:
* ``reference``: at sample index == STFT frame index. This is what upstream does (it passes ``units='frames'``
  results as sample indices), so every impulse lands in the first len/512 samples. The released checkpoints were
  trained with this channel; use it to run them. Bit-compatible with upstream.
* ``corrected``: at sample index frame*512, i.e. at the onset's actual time.

Loading (``load_mode``):
* ``upstream``: ``librosa.load`` at its default 22.05 kHz, then ``librosa.resample`` to 16 kHz (what upstream does;
  the double resampling changes the samples slightly and depends on the librosa/soxr versions);
* ``direct``: read the file as is (soundfile); resampled only when its rate is not ``sr``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from scipy.ndimage import maximum_filter1d

AMPLITUDE_WINDOW = 1024
ONSET_HOP = 512
ONSET_MODES = ("reference", "corrected")
LOAD_MODES = ("upstream", "direct")


class AudioError(ValueError):
    """An unreadable or unsuitable audio file; the message names the file."""


def check_wav(path: str | Path, sr: int = 16000) -> int:
    """Validate an audio file (exists, readable, mono); return its sample rate. Warns when it is not ``sr``."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"missing audio file: {path}")
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise AudioError(f"unreadable audio file {path}: {e}") from e
    if info.channels != 1:
        raise AudioError(f"{path}: expected mono audio, got {info.channels} channels")
    if info.frames == 0:
        raise AudioError(f"{path}: empty audio file")
    if info.samplerate != sr:
        warnings.warn(f"{path}: sample rate {info.samplerate} Hz, resampling to {sr} Hz", stacklevel=2)
    return int(info.samplerate)


def load_audio(path: str | Path, sr: int = 16000, load_mode: str = "upstream") -> np.ndarray:
    """Mono float32 audio at ``sr``. See the module docstring for ``load_mode``."""
    if load_mode not in LOAD_MODES:
        raise ValueError(f"load_mode must be one of {LOAD_MODES}, got {load_mode!r}")
    native = check_wav(path, sr)
    if load_mode == "upstream":
        y, file_sr = librosa.load(str(path))  # 22.05 kHz, mono
        return librosa.resample(y, orig_sr=file_sr, target_sr=sr).astype(np.float32)
    y, _ = sf.read(str(path), dtype="float32", always_2d=False)
    if native != sr:
        y = librosa.resample(y, orig_sr=native, target_sr=sr)
    return np.asarray(y, dtype=np.float32)


def amplitude_envelope(y: np.ndarray, window: int = AMPLITUDE_WINDOW) -> np.ndarray:
    """max |y[i : i+window]| for each i; the last window-1 values repeat the final full-window value."""
    a = np.abs(np.asarray(y, dtype=np.float64))
    if a.size < window:
        return np.full(a.size, a.max() if a.size else 0.0)
    # maximum_filter1d with an even size covers [i - size//2 - origin, ...]; origin -size//2 makes it forward.
    fwd = maximum_filter1d(a, size=window, origin=-(window // 2), mode="nearest")
    n_valid = a.size - window + 1
    out = np.empty_like(a)
    out[:n_valid] = fwd[:n_valid]
    out[n_valid:] = out[n_valid - 1]
    return out


def onset_frames(y: np.ndarray, sr: int = 16000) -> np.ndarray:
    """librosa onset frames (default parameters, hop 512)."""
    return librosa.onset.onset_detect(y=np.asarray(y, dtype=np.float32), sr=sr, units="frames")


def onset_amplitude(y: np.ndarray, sr: int = 16000, onset_mode: str = "corrected") -> np.ndarray:
    """(S, 2) float64: [amplitude envelope, onset impulses]. See the module docstring for ``onset_mode``."""
    if onset_mode not in ONSET_MODES:
        raise ValueError(f"onset_mode must be one of {ONSET_MODES}, got {onset_mode!r}")
    out = np.zeros((len(y), 2), dtype=np.float64)
    out[:, 0] = amplitude_envelope(y)
    frames = onset_frames(y, sr)
    # reference: upstream writes the impulse at the *frame* index (a bug kept for the released checkpoints).
    idx = frames if onset_mode == "reference" else frames * ONSET_HOP
    idx = idx[idx < len(y)]
    out[idx, 1] = 1.0
    return out


N_MELS = 128
MEL_FLOOR = 1e-5  # log(MEL_FLOOR + power): silence maps to about -11.5 instead of -inf


def _frames_at(x: np.ndarray, src_rate: float, n_frames: int, fps: int) -> np.ndarray:
    """(n_frames, D): rows of x (K, D), sampled at ``src_rate`` rows/s from t=0, linearly interpolated at j/fps."""
    pos = np.arange(n_frames, dtype=np.float64) * (src_rate / fps)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, x.shape[0] - 1)
    i1 = np.clip(i0 + 1, 0, x.shape[0] - 1)
    w = np.clip(pos - i0, 0.0, 1.0)[:, None]
    return (x[i0] * (1.0 - w) + x[i1] * w).astype(np.float32)


def default_n_frames(n_samples: int, sr: int, fps: int) -> int:
    """Motion frames of ``n_samples`` samples (whole frames; at least 1)."""
    return max(1, int(n_samples * fps // sr))


def mel_features(
    y: np.ndarray, sr: int = 16000, fps: int = 30, n_mels: int = N_MELS, n_frames: int | None = None
) -> np.ndarray:
    """(n_frames, n_mels) float32 log-mel spectrogram, log(1e-5 + mel power), at exactly ``fps`` frames per second.

    The STFT hop is sr//fps (533 samples at 16 kHz, upstream's 'mfcc' option); its frames are linearly interpolated
    to the motion frame times j/fps, so the features do not drift against the motion (533 vs 533.33 samples per frame
    would be one frame per minute). Why log: raw mel power spans ~10 decades, which a network cannot use as is."""
    y = np.asarray(y, dtype=np.float32)
    hop = sr // fps
    m = librosa.feature.melspectrogram(y=y, sr=sr, hop_length=hop, n_mels=n_mels)  # (n_mels, K), frame k at k*hop
    logm = np.log(MEL_FLOOR + m.T.astype(np.float64))
    n = default_n_frames(len(y), sr, fps) if n_frames is None else int(n_frames)
    return _frames_at(logm, sr / hop, n, fps)


def wavlm_source(value: str | Path) -> str:
    """What ``from_pretrained`` is given for ``data.wavlm_model``: a folder (relative paths against the repo root)
    when it exists, else the string itself (a Hugging Face id, looked up in the local cache only)."""
    from utils.paths import resolve_path

    p = resolve_path(value)
    return str(p) if p is not None and p.is_dir() else str(value)


def _wavlm_from_pretrained(kind: str, source: str):
    """``WavLMModel``/``WavLMConfig`` ``.from_pretrained`` from a folder or the local Hugging Face cache (no
    network here: an id that is not cached is an error naming it)."""
    import transformers

    cls = getattr(transformers, kind)
    try:
        if Path(source).is_dir():
            return cls.from_pretrained(source)
        return cls.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        raise AudioError(f"data.wavlm_model={source!r}: no WavLM checkpoint folder there and not in the Hugging Face "
                         f"cache ({type(e).__name__}); give a folder written by save_pretrained or download the "
                         "model once") from e  # fmt: skip


def wavlm_hidden_size(value: str | Path) -> int:
    """The feature width of the WavLM model ``data.wavlm_model`` (its config only; no weights are read)."""
    return int(_wavlm_from_pretrained("WavLMConfig", wavlm_source(value)).hidden_size)


def load_wavlm(path_or_config: str | Path | object):
    """A transformers WavLMModel in eval mode, from a checkpoint folder, a cached Hugging Face id, or a
    ``WavLMConfig`` (random weights)."""
    from transformers import WavLMConfig, WavLMModel

    if isinstance(path_or_config, WavLMConfig):
        model = WavLMModel(path_or_config)
    else:
        model = _wavlm_from_pretrained("WavLMModel", wavlm_source(path_or_config))
    return model.eval()


def wavlm_features(y: np.ndarray, model, n_frames: int, device: str = "cpu", layer: int | None = None) -> np.ndarray:
    """(n_frames, hidden) WavLM features of 16 kHz audio, linearly interpolated from ~50 Hz to ``n_frames``.

    ``layer``: None = the last hidden state; k = hidden_states[k] (0 = the feature projection, before the
    transformer)."""
    import torch
    import torch.nn.functional as F

    model = model.to(device)
    x = torch.as_tensor(np.asarray(y, dtype=np.float32), device=device)[None]
    with torch.no_grad():
        out = model(x, output_hidden_states=layer is not None)
        if layer is not None and not -len(out.hidden_states) <= layer < len(out.hidden_states):
            raise AudioError(f"data.wavlm_layer={layer}: the model has {len(out.hidden_states)} hidden states "
                             f"(0..{len(out.hidden_states) - 1})")  # fmt: skip
        h = out.last_hidden_state if layer is None else out.hidden_states[layer]
    h = F.interpolate(h.transpose(1, 2), size=n_frames, mode="linear", align_corners=True)
    return h[0].transpose(0, 1).cpu().numpy().astype(np.float32)
