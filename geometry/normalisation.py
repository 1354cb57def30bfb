"""Mean/std normalisation of motion features (rot6d, trans_v): the one implementation data and models share.

Pure functions on numpy arrays or torch tensors. With a tensor input, the mean and std are converted to its dtype
and device first, so a float32 model and float64 statistics combine the same way everywhere.

``safe_std``: upstream divides by the std with no epsilon (its smallest used std is ~1.4e-3). A std below
``min_std`` (default 1e-8) is replaced by 1, so the official statistics pass unchanged and a constant dimension
(e.g. of a synthetic corpus) cannot divide by 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

DEFAULT_MIN_STD = 1e-8


def _like(v: Any, x: Any) -> Any:
    """``v`` as a tensor of ``x``'s dtype/device when ``x`` is a tensor, else unchanged."""
    return torch.as_tensor(v, dtype=x.dtype, device=x.device) if isinstance(x, torch.Tensor) else v


def safe_std(std: Any, min_std: float = DEFAULT_MIN_STD) -> Any:
    """``std`` with every entry below ``min_std`` replaced by 1 (same type as ``std``: tensor or numpy)."""
    if isinstance(std, torch.Tensor):
        return torch.where(std < min_std, torch.ones_like(std), std)
    return np.where(np.asarray(std) < min_std, 1.0, std)


def normalise(x: Any, mean: Any, std: Any) -> Any:
    """(x - mean) / std. ``std`` is used as given: pass it through :func:`safe_std` first."""
    return (x - _like(mean, x)) / _like(std, x)


def denormalise(xn: Any, mean: Any, std: Any) -> Any:
    """Inverse of :func:`normalise`: xn * std + mean."""
    return xn * _like(std, xn) + _like(mean, xn)
