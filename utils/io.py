"""Atomic writes for checkpoints, caches and metric files (temp file in the same folder + os.replace)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The name atomic_path gives its temporary file: ".<target name>.<8 random chars of mkstemp>.tmp". A process killed
# mid-write (kill -9, power loss) leaves it behind; remove_stale_temp_files matches exactly this pattern.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def atomic_temp_target(name: str) -> str | None:
    """The target file name when ``name`` is an atomic_path temporary file name, else None."""
    m = _TEMP_NAME.match(name)
    return m.group("target") if m else None


def remove_stale_temp_files(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """Delete the temporary files that atomic writes left in ``folder`` (not recursive) when their process was
    killed mid-write; returns (path, size in bytes) of each removed file.

    Only files named like atomic_path's temporaries are touched (never folders or links). Call it only for a folder
    no other process is writing to right now (a trainer at start, on its own run folder): a live writer's temporary
    file looks the same."""
    folder = Path(folder)
    removed: list[tuple[Path, int]] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        if atomic_temp_target(p.name) is None or p.is_symlink() or not p.is_file():
            continue
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:  # gone meanwhile
            continue
        removed.append((p, size))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save, atomically."""

    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, _w)


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with ``weights_only=True``: checkpoints hold tensors, numbers, strings and containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path}: empty file (an interrupted copy or download?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses objects beyond tensors and containers: never run code from a checkpoint
        # torch's own message advises unpickling; keep only its diagnosis ("Unsupported global: ...")
        detail = next((ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("Unsupported")), "")
        raise CheckpointReadError(f"{path}: a weights-only load refuses its contents (another format, or pickled "
                                  f"objects, which are never unpickled) {detail}".rstrip()) from e  # fmt: skip
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointReadError(f"{path}: not a readable torch checkpoint (truncated or another format): "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e  # fmt: skip


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read (empty, truncated, another format); the message names the file."""


def save_npy(arr: np.ndarray, path: str | os.PathLike) -> Path:
    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    return atomic_write(path, _w)


def save_npz(path: str | os.PathLike, compressed: bool = False, **arrays: Any) -> Path:
    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    return atomic_write(path, _w)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    def _w(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")

    return atomic_write(path, _w)


def save_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (recorded next to every number so it names the exact inputs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and write (then remove) a temporary file in it now, so an unwritable output is found before
    any work is done (``os.access`` is no proof: root passes it on read-only mounts). Raises OSError."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".write_check.", dir=folder)
    os.close(fd)
    os.unlink(tmp)
    return folder
