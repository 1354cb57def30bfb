"""Process-group setup and teardown, rank helpers and DDP wrapping for the training loop (trainers.base).

One process (``WORLD_SIZE`` unset or 1) is the degenerate case of every helper here, so the loop has one code path:
``init_distributed`` returns ``DistInfo()``, ``wrap_model`` returns the plain ``MethodCaller``, ``barrier`` and
``gather_rng_states`` do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.device import get_device, rng_state


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when this process created the group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (nccl on CUDA, gloo on CPU); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if "RANK" not in os.environ:
        raise RuntimeError("WORLD_SIZE > 1 but RANK is not set; launch with torchrun")
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, owns_group=False)
    on_cuda = get_device(device_preference).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if on_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, owns_group=True)


def process_device(info: DistInfo, device_preference: str = "auto") -> torch.device:
    """The device of this process: ``get_device(preference)``, pinned to ``cuda:<LOCAL_RANK>`` under DDP."""
    device = get_device(device_preference)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    return device


def close_distributed(info: DistInfo) -> None:
    """Leave the process group, but only when this process created it (a caller's group stays up)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def gather_rng_states(info: DistInfo) -> list[dict] | None:
    """Every rank's RNG state (collective: call on all ranks); None for one process."""
    if not info.enabled:
        return None
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, rng_state())
    return states


class MethodCaller(nn.Module):
    """Lets DDP wrap any method (e.g. a generator's ``loss``), since DDP only hooks ``forward``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, method: str = "forward", **kwargs: Any) -> Any:
        return getattr(self.module, method)(*args, **kwargs)


def wrap_model(
    model: nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool = False
) -> nn.Module:
    """``MethodCaller(model)``, inside DistributedDataParallel when the group has more than one process.

    DDP broadcasts rank 0's parameters on construction, so every rank starts from the same weights."""
    caller = MethodCaller(model)
    if not info.enabled:
        return caller
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        caller,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )
