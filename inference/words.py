"""Words for a user's audio, without the Montreal Forced Aligner, as per-frame ids of the checkpoint's vocabulary.

Sources, in the order the CLI prefers them:

* ``textgrid``: the words tier of a Praat TextGrid (a tier named ``words``, or ``<speaker> - words`` as MFA writes);
* ``transcript``: a plain transcript aligned to the audio by energy: speech regions are found from 25 ms frame RMS
  (pauses >= 0.2 s split them), and the words are laid out in order over the speech time, each taking time in
  proportion to its length (letters + 2). No phonetic model: word boundaries are approximate, pauses are right;
* ``asr``: word timestamps from a ``transformers`` Whisper model (a local folder or a model id in the HF cache);
* ``none``: text-free mode, every frame the PAD word (the model was trained with words: a warning is given).

Marks are looked up as the training cache did (dataloaders.features.text.frame_word_ids: the raw mark, then its
punctuation-stripped form, unknown -> UNK; silences are the empty mark, which the corpus vocabulary holds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataloaders.features import text as text_feat
from inference.audio_input import InputError, frame_rms

WORD_SOURCES = ("textgrid", "transcript", "asr", "none")
TEXT_FREE_WARNING = ("text-free mode: every frame gets the PAD word, but the model was trained with words; give "
                     "--text, --textgrid or --asr for better motion")  # fmt: skip


@dataclass
class WordTrack:
    source: str  # one of WORD_SOURCES
    intervals: list[tuple[float, float, str]]  # (start s, end s, mark); silences have the empty mark
    notes: list[str] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return [m for _, _, m in self.intervals if m.strip()]


# ---------------------------------------------------------------------------------------------------- TextGrid
def _is_words_tier(name: str) -> bool:
    n = name.strip().lower()
    return n in ("words", "word") or n.endswith(("- words", "-words"))


def words_from_textgrid(path: str | Path) -> WordTrack:
    """The words tier of a TextGrid (InputError when the file is unreadable or has no words tier)."""
    import textgrid

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: TextGrid not found; pass an existing .TextGrid file")
    try:
        tg = textgrid.TextGrid.fromFile(str(path))
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        raise InputError(f"{path}: unreadable TextGrid ({msg}); export it from Praat/MFA again") from e
    tiers = [t for t in tg if isinstance(t, textgrid.IntervalTier) and _is_words_tier(t.name)]
    if not tiers:
        names = [str(t.name) for t in tg]
        raise InputError(f"{path}: no words tier (tiers: {names}); give a TextGrid with an interval tier named "
                         "'words' (as MFA writes), or use --text")  # fmt: skip
    intervals = [(float(iv.minTime), float(iv.maxTime), str(iv.mark)) for iv in tiers[0]]
    if not any(m.strip() for _, _, m in intervals):
        raise InputError(f"{path}: the words tier '{tiers[0].name}' holds no words; give a TextGrid with words")
    return WordTrack("textgrid", intervals, [f"tier '{tiers[0].name}' of {path.name}"])


# ---------------------------------------------------------------------------------------------------- transcript
def tokenize(text: str) -> list[str]:
    """Lower-case words of a transcript (the vocabularies hold MFA's lower-case marks); punctuation dropped."""
    return [w for w in (text_feat.normalise_mark(t) for t in re.split(r"\s+", text.lower())) if w]


def speech_regions(
    y: np.ndarray, sr: int, min_pause: float = 0.2, min_speech: float = 0.05
) -> list[tuple[float, float]]:
    """Speech regions (start s, end s) from 25 ms frame RMS: frames above max(-50 dBFS, 5% of the 99th percentile)."""
    hop = 0.025
    rms = frame_rms(y, sr, hop)
    thr = max(10 ** (-50 / 20), 0.05 * float(np.percentile(rms, 99)))
    active = rms > thr
    regions: list[list[float]] = []
    for i in np.flatnonzero(active):
        t0, t1 = i * hop, (i + 1) * hop
        if regions and t0 - regions[-1][1] < min_pause:
            regions[-1][1] = t1
        else:
            regions.append([t0, t1])
    return [(a, b) for a, b in regions if b - a >= min_speech]


def align_transcript(text: str, y: np.ndarray, sr: int) -> WordTrack:
    """Lay a transcript's words over the speech regions of the audio (see the module docstring)."""
    words = tokenize(text)
    if not words:
        raise InputError("--text: the transcript holds no words; give the spoken words or leave --text out")
    regions = speech_regions(y, sr) or [(0.0, y.shape[0] / sr)]
    total = sum(b - a for a, b in regions)
    weights = np.array([len(w) + 2.0 for w in words])
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum() * total])  # in speech time

    def real_time(s: float) -> float:
        """Speech time -> file time (walking through the regions)."""
        for a, b in regions:
            if s <= b - a + 1e-9:
                return a + s
            s -= b - a
        return regions[-1][1]

    intervals: list[tuple[float, float, str]] = []
    cur = 0.0
    for k, w in enumerate(words):
        a, b = real_time(float(bounds[k]) + 1e-6), real_time(float(bounds[k + 1]))
        if a > cur + 1e-6:
            intervals.append((cur, a, ""))  # a pause: the silence word, as in the corpus TextGrids
        intervals.append((a, max(b, a), w))
        cur = max(b, a)
    end = y.shape[0] / sr
    if end > cur + 1e-6:
        intervals.append((cur, end, ""))
    note = f"{len(words)} words laid over {len(regions)} speech regions ({total:.1f} s) by energy"
    return WordTrack("transcript", intervals, [note])


# ---------------------------------------------------------------------------------------------------- ASR
def _load_whisper(model: str, device: str) -> tuple[Any, Any, Any]:
    try:
        from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration
    except ImportError as e:  # pragma: no cover - transformers is a requirement
        raise InputError(f"--asr {model}: transformers is not installed (pip install transformers)") from e
    try:
        net = WhisperForConditionalGeneration.from_pretrained(str(model)).to(device).eval()
        fe = AutoFeatureExtractor.from_pretrained(str(model))
        tok = AutoTokenizer.from_pretrained(str(model))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--asr {model}: cannot load a Whisper model ({msg}); pass a local Whisper folder or a "
                         "model id already in the Hugging Face cache") from e  # fmt: skip
    if getattr(net.generation_config, "alignment_heads", None) is None:
        raise InputError(f"--asr {model}: its generation_config has no alignment_heads, so Whisper cannot give word "
                         "timestamps; use an official Whisper checkpoint or --text")  # fmt: skip
    return net, fe, tok


def transcribe(y: np.ndarray, sr: int, model: str, device: str = "cpu", chunk_s: float = 30.0) -> WordTrack:
    """Word timestamps from a Whisper model (``transformers``): each 30 s chunk is decoded with token timestamps
    (cross-attention alignment), tokens are grouped into words at leading spaces, a word spans from its first
    token's time to the next token's."""
    import torch

    net, fe, tok = _load_whisper(model, device)
    special = set(tok.all_special_ids)
    seconds = y.shape[0] / sr
    step = int(chunk_s * sr)
    raw: list[tuple[float, float, str]] = []
    for c0 in range(0, y.shape[0], step):
        seg = np.asarray(y[c0 : c0 + step], np.float32)
        feats = fe(seg, sampling_rate=sr, return_tensors="pt").input_features.to(device)
        with torch.no_grad():
            out = net.generate(feats, return_token_timestamps=True)
        seq, ts = out["sequences"][0].tolist(), out["token_timestamps"][0].tolist()
        words: list[list[Any]] = []  # [start, end, text]
        for k, tid in enumerate(seq):
            if tid in special:
                continue
            piece = tok.decode([tid])
            t_next = ts[k + 1] if k + 1 < len(ts) else ts[k]
            if not words or piece.startswith(" "):
                words.append([ts[k], t_next, piece])
            else:
                words[-1][1], words[-1][2] = t_next, words[-1][2] + piece
        raw += [(c0 / sr + a, c0 / sr + b, t) for a, b, t in words]
    intervals: list[tuple[float, float, str]] = []
    cur = 0.0
    for start, end, text in raw:
        word = " ".join(tokenize(text))
        if not word:
            continue
        # timestamps clipped to the audio and kept in order (a chunk's alignment can overrun a short file)
        a = min(max(float(start), cur), seconds)
        b = min(max(float(end), a), seconds)
        if a > cur + 1e-6:
            intervals.append((cur, a, ""))
        intervals.append((a, b, word))
        cur = b
    if seconds > cur + 1e-6:
        intervals.append((cur, seconds, ""))
    n = sum(1 for _, _, m in intervals if m)
    notes = [f"{n} words from {model}"]
    if n == 0:
        notes.append("speech recognition returned no words: every frame gets the silence word")
    return WordTrack("asr", intervals, notes)


# ---------------------------------------------------------------------------------------------------- ids
def frame_ids(track: WordTrack, n_frames: int, vocab: text_feat.Vocab | None, fps: int = 30) -> tuple[np.ndarray, dict]:
    """(n_frames,) int64 word ids and a summary (source, words, unknown words, notes)."""
    if vocab is None:
        # the checkpoint was trained without words (data.word_rep: none): the cache fed UNK everywhere
        ids = np.full(n_frames, text_feat.UNK, dtype=np.int64)
        return ids, {"source": "none (model trained without words: UNK everywhere)", "n_words": 0, "n_unknown": 0,
                     "notes": list(track.notes)}  # fmt: skip
    if track.source == "none":
        ids = np.full(n_frames, text_feat.PAD, dtype=np.int64)
        return ids, {"source": "none", "n_words": 0, "n_unknown": 0, "notes": [TEXT_FREE_WARNING, *track.notes]}
    ids = text_feat.frame_word_ids(track.intervals, n_frames, vocab, fps)
    words = track.words
    unknown = sorted({w for w in words if vocab.index(w) == text_feat.UNK})
    summary = {"source": track.source, "n_words": len(words),
               "n_unknown": sum(1 for w in words if vocab.index(w) == text_feat.UNK),
               "unknown_words": unknown[:50], "notes": list(track.notes)}  # fmt: skip
    return ids, summary


__all__ = ["TEXT_FREE_WARNING", "WORD_SOURCES", "WordTrack", "align_transcript", "frame_ids", "speech_regions",
           "tokenize", "transcribe", "words_from_textgrid"]
