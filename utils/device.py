"""The one place that picks the compute device, and seeding for reproducible runs."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def get_device(preference: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps if available, else cpu. An explicit name is checked."""
    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} requested but CUDA is not available; use device=auto or device=cpu")
    return dev


PRECISIONS = ("fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls/convolutions have hardware support here (CUDA: the GPU supports bf16; x86 CPU: the
    avx512_bf16 or AMX instructions). Without it, bf16 autocast still runs (oneDNN emulates bf16 on plain AVX-512)
    but is usually no faster, or slower, than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:  # oneDNN's own query (_is_mkldnn_bf16_supported) is true on any AVX-512 CPU, emulated or not
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except (AttributeError, RuntimeError):  # a build without the queries: assume no fast path
            return False
    return False


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of PRECISIONS; ValueError naming the choices otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``fp32``: no autocast (bit-identical to plain float32 code); ``bf16``: ``torch.autocast`` in bfloat16 on
    ``device`` (matmuls and convolutions in bf16, reductions and norms in float32; other numbers than fp32)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch. ``deterministic`` makes CPU runs bit-reproducible (and CUDA ones as far as
    cuDNN allows)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    """Every RNG a training loop draws from, for exact resume."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(_as_numpy_state(state["numpy"]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _as_python_state(s):  # weights_only loading turns tuples into lists
    return (s[0], tuple(s[1]), s[2]) if isinstance(s, (list, tuple)) else s


def _numpy_state_to_plain(s: tuple) -> dict:
    # Plain tensors and numbers so that checkpoints load with weights_only=True.
    return {
        "key": s[0],
        "pos": int(s[2]),
        "has_gauss": int(s[3]),
        "gauss": float(s[4]),
        "state": torch.from_numpy(s[1].astype(np.int64)),
    }


def _as_numpy_state(s):
    if isinstance(s, dict):
        return (
            s["key"],
            np.asarray(s["state"], dtype=np.int64).astype(np.uint32),
            s["pos"],
            s["has_gauss"],
            s["gauss"],
        )
    return tuple(s)


def blas_threads(n: int | None) -> contextlib.AbstractContextManager[object]:
    """Limit the BLAS libraries numpy and scipy call (OpenBLAS) to ``n`` threads for a block (``None``: leave them
    alone). They default to one thread per core whatever torch's setting is, so two 1-thread stages side by side
    each ran 2 BLAS threads on 2 cores: the learning check and the NFE table side by side took 115 s and 74 s, capped
    55 s and 14 s (session 24). torch's own BLAS (MKL) follows ``torch_threads``."""
    if not n:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(n), user_api="blas")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for a block and restore them after (``None``: leave them alone).

    torch.set_num_threads is process-wide: a stage that sets it without restoring slows every later stage of the
    same process (the main job's generators once trained single-threaded after the 1-thread RVQ stage)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
