"""ModalityEncoder: onset+amplitude audio + per-frame word ids -> one condition token per latent step.

audio (B, S, 2) -> ``WavEncoder`` (~30 fps) -> ``ExactLengthAdjuster`` (128 frames) -> (B, 128, audio_dim);
word (B, 128) -> ``text_pre_encoder_body`` (FastText table, 300-D) -> ``text_encoder_body`` Linear(300->latent_dim);
[audio | text (| WavLM)] -> ``mix_audio_text`` Linear(-> 3*latent_dim) -> avg-pool x4 over time -> (B, 32, 768).
Attribute names reproduce the upstream state-dict keys (spec §6).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.layers.wav_encoder import ExactLengthAdjuster, WavEncoder


class ModalityEncoder(nn.Module):
    """Condition encoder of the gesture generators.

    Word table: pass ``word_weights`` ((V, 300) array/tensor, e.g. the FastText rows of the vocabulary) or
    ``vocab_size`` (+ ``word_dim``) for a randomly initialised table of the same shape (to be filled by a
    checkpoint). ``t_fix_pre`` freezes the table (upstream default False: trainable).

    ``raw_audio``: adds the optional WavLM branch, Linear(raw_audio_dim -> audio_dim) on precomputed features
    (B, T, 1024) given to ``forward(..., raw_audio_feat=...)``; not used by any released model.
    ``length_adjust``: True (v2) forces the audio features to ``target_length`` frames; False (v1) requires the
    conv stack to produce exactly the word length already.
    """

    def __init__(
        self,
        word_weights: np.ndarray | torch.Tensor | None = None,
        vocab_size: int | None = None,
        word_dim: int = 300,
        t_fix_pre: bool = False,
        audio_dim: int = 256,
        audio_in: int = 2,
        raw_audio: bool = False,
        raw_audio_dim: int = 1024,
        latent_dim: int = 256,
        audio_fps: int = 30,
        target_length: int = 128,
        spatial_temporal: bool = True,
        use_exp: bool = False,
        pool: int = 4,
        length_adjust: bool = True,
    ):
        super().__init__()
        if (word_weights is None) == (vocab_size is None):
            raise ValueError("ModalityEncoder needs exactly one of word_weights (V, D) or vocab_size")
        if audio_fps != 30:
            raise ValueError(f"the WavEncoder geometry yields ~30 fps; audio_fps={audio_fps} is not supported")
        self.target_length = target_length
        self.pool = pool
        self.raw_audio = raw_audio
        self.length_adjust = length_adjust
        self.out_dim = latent_dim * (4 if use_exp else 3) if spatial_temporal else latent_dim

        self.WavEncoder = WavEncoder(audio_dim, audio_in=audio_in)  # noqa: N815 (upstream key name)
        self.length_adjuster = ExactLengthAdjuster(target_length)
        if word_weights is not None:
            w = torch.as_tensor(np.asarray(word_weights) if not torch.is_tensor(word_weights) else word_weights,
                                dtype=torch.float32)
            if w.ndim != 2:
                raise ValueError(f"word_weights must be (vocab, dim), got {tuple(w.shape)}")
            vocab_size, word_dim = w.shape
        self.text_encoder_body = nn.Linear(word_dim, latent_dim)
        self.text_pre_encoder_body = nn.Embedding(vocab_size, word_dim)
        if word_weights is not None:
            with torch.no_grad():
                self.text_pre_encoder_body.weight.copy_(w)
        self.text_pre_encoder_body.weight.requires_grad_(not t_fix_pre)
        if raw_audio:
            self.raw_audio_proj = nn.Linear(raw_audio_dim, audio_dim)
        n_in = audio_dim + latent_dim + (audio_dim if raw_audio else 0)
        self.mix_audio_text = nn.Linear(n_in, self.out_dim)

    def encode_audio(self, audio: torch.Tensor, adjust: bool | None = None) -> torch.Tensor:
        """(B, S, 2) -> (B, target_length, audio_dim) (or the raw conv length when not adjusting)."""
        feat = self.WavEncoder(audio)
        return self.length_adjuster(feat) if (self.length_adjust if adjust is None else adjust) else feat

    def encode_text(self, word: torch.Tensor) -> torch.Tensor:
        """(B, T) int ids -> (B, T, latent_dim)."""
        return self.text_encoder_body(self.text_pre_encoder_body(word.long()))

    def forward(self, audio: torch.Tensor, word: torch.Tensor,
                raw_audio_feat: torch.Tensor | None = None) -> torch.Tensor:
        """audio (B, S, 2) onset+amplitude at 16 kHz, word (B, 128) ids [, raw_audio_feat (B, T, 1024)]
        -> (B, 128 / pool, out_dim) = (B, 32, 768)."""
        if word.ndim != 2 or word.shape[0] != audio.shape[0]:
            raise ValueError(f"word must be (B, T) with B={audio.shape[0]}, got {tuple(word.shape)}")
        a = self.encode_audio(audio)
        t = self.encode_text(word)
        if a.shape[1] != t.shape[1]:
            raise ValueError(f"audio features have {a.shape[1]} frames but word has {t.shape[1]} "
                             f"(audio {audio.shape[1]} samples; length_adjust={self.length_adjust})")
        feats = [a, t]
        if self.raw_audio:
            if raw_audio_feat is None:
                raise ValueError("ModalityEncoder(raw_audio=True) needs raw_audio_feat (B, T, 1024)")
            feats.append(self.raw_audio_proj(self.length_adjuster(raw_audio_feat)))
        elif raw_audio_feat is not None:
            raise ValueError("raw_audio_feat given but the encoder was built with raw_audio=False")
        mixed = self.mix_audio_text(torch.cat(feats, dim=-1))  # (B, T, out_dim)
        return F.avg_pool1d(mixed.transpose(1, 2), self.pool).transpose(1, 2)
