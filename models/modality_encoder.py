"""ModalityEncoder: audio features + per-frame word ids -> one condition token per latent step.

audio_rep ``onset+amplitude`` (default, upstream): audio (B, S, 2) at 16 kHz -> ``WavEncoder`` (~30 fps);
audio_rep ``mel`` / ``wavlm``: frame features (B, T, audio_feat_dim) at 30 fps (log-mel, or frozen WavLM features
from the data cache; or, with ``wavlm_finetune``, a trained WavLM inside the encoder run on the (B, S, 1) waveform)
-> ``frame_audio_encoder`` (LayerNorm + two temporal convolutions);
then ``ExactLengthAdjuster`` (128 frames) -> (B, 128, audio_dim);
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

AUDIO_REPS = ("onset+amplitude", "mel", "wavlm")  # = dataloaders.cache.AUDIO_REPS (the model side needs no data code)
FRAME_REPS = ("mel", "wavlm")  # frame-level features at 30 fps, (B, T, audio_feat_dim)


def load_wavlm_for_finetuning(source: str) -> nn.Module:
    """transformers' WavLMModel from a folder (save_pretrained) or a Hugging Face id in the local cache, with its
    convolutional feature encoder frozen (the usual recipe: only the transformer layers are fine-tuned)."""

    from transformers import WavLMModel

    from utils.paths import resolve_path

    p = resolve_path(source)
    try:
        if p is not None and p.is_dir():
            model = WavLMModel.from_pretrained(str(p))
        else:
            model = WavLMModel.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"wavlm_model={source!r}: no WavLM folder there and not in the Hugging Face cache "
                         f"({type(e).__name__})") from e  # fmt: skip
    model.freeze_feature_encoder()
    return model


class FrameAudioEncoder(nn.Module):
    """(B, T, in_dim) frame features at 30 fps -> (B, T, out_dim): LayerNorm over the features (log-mel and WavLM
    have very different scales), Conv1d k3, LeakyReLU, Conv1d k3 (a little temporal context, like the WavEncoder's)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.conv1 = nn.Conv1d(in_dim, out_dim, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv1d(out_dim, out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)
        return self.conv2(self.act(self.conv1(h))).transpose(1, 2)


class ModalityEncoder(nn.Module):
    """Condition encoder of the gesture generators.

    Word table: pass ``word_weights`` ((V, 300) array/tensor, e.g. the FastText rows of the vocabulary) or
    ``vocab_size`` (+ ``word_dim``) for a randomly initialised table of the same shape (to be filled by a
    checkpoint). ``t_fix_pre`` freezes the table (upstream default False: trainable).

    ``audio_rep``: which audio input ``forward`` takes (see the module docstring). ``onset+amplitude`` builds the
    upstream ``WavEncoder`` (the released key set, unchanged); ``mel``/``wavlm`` build ``frame_audio_encoder`` for
    (B, T, ``audio_feat_dim``) features instead (no WavEncoder keys). ``wavlm_finetune`` (with ``audio_rep: wavlm``):
    the transformers WavLMModel ``wavlm_model`` runs inside the encoder (submodule ``wavlm``, its convolutional
    feature encoder frozen, the transformer trained) on the window's 16 kHz waveform (B, S, 1), its hidden state
    (last, or ``hidden_states[wavlm_layer]``) interpolated to ``target_length`` frames, then ``frame_audio_encoder``.
    Without it the WavLM features are frozen and cached per file.

    ``raw_audio``: adds upstream's optional extra WavLM branch beside the main audio input, Linear(raw_audio_dim ->
    audio_dim) on precomputed features (B, T, 1024) given to ``forward(..., raw_audio_feat=...)``; not used by any
    released model and fed by no data path (the configs refuse it: use ``audio_rep: wavlm`` instead).
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
        audio_rep: str = "onset+amplitude",
        audio_feat_dim: int | None = None,
        wavlm_finetune: bool = False,
        wavlm_model: str | None = None,
        wavlm_layer: int | None = None,
    ):
        super().__init__()
        if audio_rep not in AUDIO_REPS:
            raise ValueError(f"audio_rep={audio_rep!r}; expected one of {AUDIO_REPS}")
        if wavlm_finetune and (audio_rep != "wavlm" or not wavlm_model):
            raise ValueError(f"wavlm_finetune=True needs audio_rep='wavlm' (got {audio_rep!r}) and wavlm_model")
        if audio_rep in FRAME_REPS and not audio_feat_dim:
            raise ValueError(f"audio_rep={audio_rep!r} needs audio_feat_dim (128 for mel, the WavLM hidden size)")
        if (word_weights is None) == (vocab_size is None):
            raise ValueError("ModalityEncoder needs exactly one of word_weights (V, D) or vocab_size")
        if audio_fps != 30:
            raise ValueError(f"the WavEncoder geometry yields ~30 fps; audio_fps={audio_fps} is not supported")
        self.target_length = target_length
        self.pool = pool
        self.raw_audio = raw_audio
        self.audio_rep = audio_rep
        self.wavlm_finetune = bool(wavlm_finetune)
        self.wavlm_layer = wavlm_layer
        # windowed generation slices frame features by frames; samples (onset+amplitude, a waveform) by samples
        self.frame_audio = audio_rep in FRAME_REPS and not self.wavlm_finetune
        self.audio_feat_dim = int(audio_feat_dim) if audio_rep in FRAME_REPS else None
        self.length_adjust = length_adjust
        self.out_dim = latent_dim * (4 if use_exp else 3) if spatial_temporal else latent_dim

        if audio_rep in FRAME_REPS:
            if self.wavlm_finetune:
                self.wavlm = load_wavlm_for_finetuning(str(wavlm_model))
            self.frame_audio_encoder = FrameAudioEncoder(self.audio_feat_dim, audio_dim)
        else:
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
        """(B, S, 2) samples, or (B, T, audio_feat_dim) frames -> (B, target_length, audio_dim) (or the encoder's own
        length when not adjusting)."""
        if self.wavlm_finetune:
            audio = self.wavlm_frames(audio)
        if self.audio_rep in FRAME_REPS:
            if audio.ndim != 3 or audio.shape[-1] != self.audio_feat_dim:
                raise ValueError(f"audio_rep={self.audio_rep!r} takes frame features (B, T, {self.audio_feat_dim}), "
                                 f"got {tuple(audio.shape)} (onset+amplitude samples are (B, S, 2))")  # fmt: skip
            feat = self.frame_audio_encoder(audio)
        else:
            feat = self.WavEncoder(audio)
        return self.length_adjuster(feat) if (self.length_adjust if adjust is None else adjust) else feat

    def wavlm_frames(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) or (B, S, 1) 16 kHz waveform of a window -> (B, target_length, hidden) through the fine-tuned WavLM
        (~50 Hz), linearly interpolated to the window's motion frames (as the frozen features are)."""
        if wave.ndim == 3 and wave.shape[-1] == 1:
            wave = wave[..., 0]
        if wave.ndim != 2:
            raise ValueError(f"wavlm_finetune=True takes the waveform (B, S) or (B, S, 1), got {tuple(wave.shape)}")
        out = self.wavlm(wave, output_hidden_states=self.wavlm_layer is not None)
        h = out.last_hidden_state if self.wavlm_layer is None else out.hidden_states[self.wavlm_layer]
        return F.interpolate(h.transpose(1, 2), size=self.target_length, mode="linear",
                             align_corners=True).transpose(1, 2)  # fmt: skip

    def encode_text(self, word: torch.Tensor) -> torch.Tensor:
        """(B, T) int ids -> (B, T, latent_dim)."""
        return self.text_encoder_body(self.text_pre_encoder_body(word.long()))

    def forward(self, audio: torch.Tensor, word: torch.Tensor,
                raw_audio_feat: torch.Tensor | None = None) -> torch.Tensor:
        """audio (B, S, 2) onset+amplitude at 16 kHz (or (B, 128, audio_feat_dim) frame features), word (B, 128) ids
        [, raw_audio_feat (B, T, 1024)]
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
