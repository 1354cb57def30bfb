"""Trainer checkpoints (atomic files, format check) and what exact resume needs besides the weights.

A trainer checkpoint is a dict with ``format == CHECKPOINT_FORMAT`` and: model, extra (subclass state), optimizer,
scheduler, epoch, iteration, batch_in_epoch, seed, world_size, rng (this rank's), rng_per_rank (every rank's under
DDP, else None), best, metrics, config. Everything in it loads with ``weights_only=True`` (utils.io.load_torch).

Exact resume rests on three things kept here: the counters and RNG states in the file, and a sampler
(``ResumableSampler``) whose data order is a function of (seed, epoch) that can start part-way into an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, DistributedSampler

from models.checkpoints import TRAINER_CHECKPOINT_FORMAT
from utils.io import load_torch, save_torch

CHECKPOINT_FORMAT = TRAINER_CHECKPOINT_FORMAT


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also for one process) that can start part-way into an epoch.

    The permutation is drawn from a generator seeded with ``seed + epoch`` (DistributedSampler's rule), so it never
    touches the global RNG; ``set_start(k)`` drops the first ``k`` indices of this rank's share, which is how a
    resumed run skips the batches it already trained on.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start_index = 0

    def set_start(self, index: int) -> None:
        self.start_index = int(index)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_index)


def load_trainer_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a trainer checkpoint on CPU; ValueError naming the file when it is not one (e.g. released weights)."""
    ckpt = load_torch(path, map_location="cpu")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a trainer checkpoint (format {CHECKPOINT_FORMAT!r}); "
                         "to start from released weights load them in build_model instead")  # fmt: skip
    return ckpt


def write_checkpoint_files(state: Mapping[str, Any], folder: Path, best: bool = False,
                           periodic_name: str | None = None) -> Path:
    """Atomically write ``folder/last.pt``, and ``best.pt`` / ``<periodic_name>.pt`` when asked; returns last.pt."""
    path = save_torch(state, folder / "last.pt")
    if best:
        save_torch(state, folder / "best.pt")
    if periodic_name:
        save_torch(state, folder / f"{periodic_name}.pt")
    return path


def rng_state_for_rank(ckpt: Mapping[str, Any], rank: int, world_size: int) -> tuple[dict, bool]:
    """The RNG state this rank resumes with, and whether it is exact (False when the world size changed).

    Under DDP every rank restores its own saved state; otherwise (one process, or a changed world size) the state
    saved by rank 0 is used."""
    per_rank = ckpt.get("rng_per_rank")
    if world_size > 1 and per_rank is not None and len(per_rank) == world_size:
        return per_rank[rank], True
    return ckpt["rng"], int(ckpt.get("world_size", 1)) == world_size
