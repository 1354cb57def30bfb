"""1-D convolutional encoder/decoder of the per-part RVQ-VAE (MoMask/T2M-GPT layout, as GestureLSM uses it).

Module nesting and attribute names reproduce the upstream state-dict keys exactly (``encoder.model.2.1.model.0.conv1``
and so on), so the released ``net_300000_*.pth`` files load strictly.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class ResConv1DBlock(nn.Module):
    """act -> Conv1d(k3, dilation d) -> act -> Conv1d(k1) -> Dropout, plus the residual. No normalisation."""

    def __init__(self, channels: int, dilation: int = 1, activation: str = "relu", norm: str | None = None,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if norm is not None:
            # Upstream offers LN/GN/BN, but every GestureLSM model uses none; only that path is implemented.
            raise ValueError(f"norm={norm!r} is not supported; the GestureLSM RVQ-VAEs use norm=None")
        self.activation1 = _activation(activation)
        self.conv1 = nn.Conv1d(channels, channels, 3, 1, padding=dilation, dilation=dilation)
        self.activation2 = _activation(activation)
        self.conv2 = nn.Conv1d(channels, channels, 1, 1, 0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.activation1(x))
        h = self.dropout(self.conv2(self.activation2(h)))
        return x + h


class Resnet1D(nn.Module):
    """``depth`` residual units with dilations growth**i listed ascending and then reversed (so 9, 3, 1)."""

    def __init__(self, channels: int, depth: int, dilation_growth_rate: int = 3, reverse_dilation: bool = True,
                 activation: str = "relu", norm: str | None = None, dropout: float = 0.2) -> None:
        super().__init__()
        blocks = [ResConv1DBlock(channels, dilation_growth_rate**i, activation, norm, dropout) for i in range(depth)]
        if reverse_dilation:
            blocks = blocks[::-1]
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Encoder(nn.Module):
    """(B, D, T) -> (B, code_dim, T / stride_t**down_t)."""

    def __init__(self, input_width: int, output_width: int = 128, down_t: int = 2, stride_t: int = 2,
                 width: int = 512, depth: int = 3, dilation_growth_rate: int = 3, activation: str = "relu",
                 norm: str | None = None, dropout: float = 0.2) -> None:
        super().__init__()
        filter_t, pad_t = stride_t * 2, stride_t // 2
        blocks: list[nn.Module] = [nn.Conv1d(input_width, width, 3, 1, 1), nn.ReLU()]
        for _ in range(down_t):
            blocks.append(nn.Sequential(
                nn.Conv1d(width, width, filter_t, stride_t, pad_t),
                Resnet1D(width, depth, dilation_growth_rate, True, activation, norm, dropout),
            ))
        blocks.append(nn.Conv1d(width, output_width, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    """(B, code_dim, T') -> (B, T' * stride_t**down_t, D) (note: the output is channels-last, as upstream)."""

    def __init__(self, input_width: int, output_width: int = 128, down_t: int = 2, stride_t: int = 2,
                 width: int = 512, depth: int = 3, dilation_growth_rate: int = 3, activation: str = "relu",
                 norm: str | None = None, dropout: float = 0.2) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv1d(output_width, width, 3, 1, 1), nn.ReLU()]
        for _ in range(down_t):
            blocks.append(nn.Sequential(
                Resnet1D(width, depth, dilation_growth_rate, True, activation, norm, dropout),
                # Upstream hard-codes scale 2; stride_t gives the same for the official stride and stays
                # length-consistent for other strides.
                nn.Upsample(scale_factor=stride_t, mode="nearest"),
                nn.Conv1d(width, width, 3, 1, 1),
            ))
        blocks += [nn.Conv1d(width, width, 3, 1, 1), nn.ReLU(), nn.Conv1d(width, input_width, 3, 1, 1)]
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).permute(0, 2, 1)
