"""Onset+amplitude audio encoder: six 1-D ResNet blocks (kernel 15, total stride 540) -> ~30 fps features.

The first block pads by 1700 samples, so S audio samples at 16 kHz give about S/533 frames: a 68266- or
68224-sample window gives exactly 128 frames. ``ExactLengthAdjuster`` then forces ``target_length`` frames
(upstream v2; v1 had no adjuster).
"""

from __future__ import annotations

import torch
from torch import nn

# (stride, padding of conv1 and of the shortcut conv) per block, from the upstream table (spec §6)
WAV_BLOCK_GEOMETRY = ((5, 1700), (6, 0), (1, 7), (6, 0), (1, 7), (3, 0))


class BasicBlock1d(nn.Module):
    """conv(k, stride, pad) -> BN -> LeakyReLU -> conv(k, 1, k//2) -> BN; + shortcut conv(k, stride, pad) -> BN;
    -> LeakyReLU(0.01). Blocks that keep shape (stride 1, in == out) use the identity shortcut."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=padding)
        self.bn1 = nn.BatchNorm1d(out_ch)
        self.act1 = nn.LeakyReLU(0.01)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel, padding=kernel // 2)
        self.bn2 = nn.BatchNorm1d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=padding),
                                            nn.BatchNorm1d(out_ch))
        self.act2 = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + (x if self.downsample is None else self.downsample(x)))


class WavEncoder(nn.Module):
    """(B, S, audio_in) -> (B, T, out_dim), T = conv output length (about S/533)."""

    def __init__(self, out_dim: int = 256, audio_in: int = 2, kernel: int = 15):
        super().__init__()
        if out_dim % 4:
            raise ValueError(f"WavEncoder out_dim must be divisible by 4, got {out_dim}")
        q, h = out_dim // 4, out_dim // 2
        chans = ((audio_in, q), (q, q), (q, q), (q, h), (h, h), (h, out_dim))
        self.feat_extractor = nn.Sequential(*(
            BasicBlock1d(ci, co, kernel, stride, pad) for (ci, co), (stride, pad) in zip(chans, WAV_BLOCK_GEOMETRY)
        ))

    @staticmethod
    def output_length(num_samples: int, kernel: int = 15) -> int:
        """Number of frames the conv stack yields for ``num_samples`` audio samples."""
        n = num_samples
        for stride, pad in WAV_BLOCK_GEOMETRY:
            n = (n + 2 * pad - kernel) // stride + 1
        return n

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 3:
            raise ValueError(f"audio must be (B, S, C), got {tuple(audio.shape)}")
        # one contiguous copy here: a transposed view is copied again by every conv that reads it (forward and
        # backward); same values
        return self.feat_extractor(audio.transpose(1, 2).contiguous()).transpose(1, 2)


class ExactLengthAdjuster(nn.Module):
    """(B, T, C) -> (B, target_length, C): truncate, or pad by repeating the last frame."""

    def __init__(self, target_length: int = 128):
        super().__init__()
        self.target_length = target_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t >= self.target_length:
            return x[:, : self.target_length]
        pad = x[:, -1:].expand(-1, self.target_length - t, -1)
        return torch.cat([x, pad], dim=1)
