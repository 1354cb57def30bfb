"""ReFlow couplings on disk: per window, the noise a teacher started from and what it generated (spec §4.6).

Layout of a couplings folder (arrays are plain ``.npy``, read with ``allow_pickle=False``; no pickle anywhere)::

    manifest.json                       # format, fingerprint (what made them), chunk list, complete flag
    chunk_00000_noise.npy    (n,384,1,32) float32   the teacher's starting noise (generator layout)
    chunk_00000_latents.npy  (n,384,1,32) float32   the teacher's sample from that noise
    chunk_00000_at_feat.npy  (n,32,D)     float32   condition features (the teacher's encoder output)
    chunk_00000_seed.npy     (n,4,384)    float32   seed latents (ground truth, as in training)
    chunk_00000_index.npy    (n,)         int64     window index into the train split's GeneratorWindowDataset

    chunk_00000.json                    # written last: the chunk is done ({name, count, rank})

Every file is written atomically and a chunk counts as done only once its json exists, so a killed run resumes with
the chunks that lack one. Chunk k's content depends only on k (its windows and its noise), so several processes may
each make their share of the chunks (DDP: `trainers.reflow.ReflowTrainer`) into one folder; `CouplingStore.finish`
then lists them in the manifest and marks it complete. A folder made with other settings (another fingerprint) is
never reused.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.io import save_json, save_npy

COUPLINGS_FORMAT = "gesturelsm-reflow-couplings/1"
ARRAYS = ("noise", "latents", "at_feat", "seed", "index")
# this store's own files (and their interrupted atomic-write temporaries): a reset deletes nothing else
_OWN_FILE = re.compile(r"\.?chunk_\d{5}(_(noise|latents|at_feat|seed|index)\.npy|\.json)(\..+\.tmp)?$")
_MARKER = re.compile(r"chunk_(\d{5})\.json$")


class CouplingsError(RuntimeError):
    """A couplings folder that cannot be used (incomplete, other settings, missing or damaged files)."""


def _file(folder: Path, chunk: str, key: str) -> Path:
    return folder / f"{chunk}_{key}.npy"


class CouplingStore:
    """Writer/reader of one couplings folder. ``fingerprint``: a JSON-able mapping of what makes the couplings.

    Opening a folder of other settings resets it: under DDP, open it in rank 0 first, then (after a barrier) in the
    others."""

    def __init__(self, folder: str | Path, fingerprint: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str))
        self.manifest = self._load_or_new()

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def _new(self) -> dict[str, Any]:
        return {"format": COUPLINGS_FORMAT, "fingerprint": self.fingerprint, "chunks": [], "complete": False}

    def _load_or_new(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return self._reset()
        try:
            man = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise CouplingsError(f"{self.manifest_path}: unreadable ({e}); delete the folder to regenerate") from e
        if man.get("format") != COUPLINGS_FORMAT:
            raise CouplingsError(f"{self.manifest_path}: format {man.get('format')!r}, expected {COUPLINGS_FORMAT}")
        if man.get("fingerprint") != self.fingerprint:
            return self._reset()
        return man

    def _reset(self) -> dict[str, Any]:
        """Delete chunks of unknown or other settings and write the new manifest at once, so that a process opening
        the folder later (another DDP rank) keeps the chunks made from then on."""
        for f in self.folder.glob("*chunk_*"):
            if _OWN_FILE.match(f.name):
                f.unlink()
        man = self._new()
        self.folder.mkdir(parents=True, exist_ok=True)
        save_json(man, self.manifest_path)
        return man

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def done_chunks(self) -> dict[int, int]:
        """{chunk index: row count} of every finished chunk (its json exists; or listed by an older manifest)."""
        done = {int(c["name"].split("_")[1]): int(c["count"]) for c in self.manifest["chunks"]}
        for f in self.folder.glob("chunk_*.json"):
            m = _MARKER.match(f.name)
            if not m:
                continue
            try:
                done[int(m.group(1))] = int(json.loads(f.read_text())["count"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable: made again
        return done

    def missing(self, n_chunks: int, done: Mapping[int, int] | None = None) -> list[int]:
        """Chunks among 0..n_chunks-1 not finished yet, in order (``done``: `done_chunks()`, when already read)."""
        done = self.done_chunks() if done is None else done
        return [k for k in range(n_chunks) if k not in done]

    @property
    def n_chunks(self) -> int:
        return len(self.done_chunks())

    def add_chunk(self, arrays: Mapping[str, np.ndarray], index: int | None = None, rank: int = 0) -> None:
        """Write chunk ``index`` (default: one past the highest finished chunk); its json goes last."""
        missing = [k for k in ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"coupling chunk lacks arrays {missing}")
        n = {k: len(arrays[k]) for k in ARRAYS}
        if len(set(n.values())) != 1:
            raise ValueError(f"coupling chunk arrays differ in length: {n}")
        if index is None:
            index = max(self.done_chunks(), default=-1) + 1
        name = f"chunk_{int(index):05d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        for k in ARRAYS:
            dtype = np.int64 if k == "index" else np.float32
            save_npy(np.ascontiguousarray(arrays[k], dtype=dtype), _file(self.folder, name, k))
        save_json({"name": name, "count": n["noise"], "rank": int(rank)}, self.folder / f"{name}.json")

    def finish(self, n_chunks: int | None = None) -> None:
        """List chunks 0..n_chunks-1 (default: all finished ones) in the manifest and mark it complete; a
        CouplingsError names any that is missing (call it once every process has made its chunks)."""
        done = self.done_chunks()
        n_chunks = len(done) if n_chunks is None else int(n_chunks)
        missing = self.missing(n_chunks, done)
        if missing:
            raise CouplingsError(f"{self.folder}: chunks {missing} were not made; rerun to finish them")
        self.manifest["chunks"] = [{"name": f"chunk_{k:05d}", "count": done[k]} for k in range(n_chunks)]
        self.manifest["complete"] = True
        self.manifest["n_windows"] = sum(done[k] for k in range(n_chunks))
        save_json(self.manifest, self.manifest_path)


class CouplingDataset(Dataset):
    """Items ``{noise, latents, at_feat, seed, index}`` (float32 tensors; index int64) of a complete couplings folder.

    Arrays are memory-mapped, so a full-size train split's couplings need not fit in memory.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise CouplingsError(f"{path} missing: make the couplings first (trainers.reflow.make_couplings)")
        try:
            man = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CouplingsError(f"{path}: unreadable ({e}); delete {self.folder} to regenerate") from e
        if man.get("format") != COUPLINGS_FORMAT:
            raise CouplingsError(f"{path}: format {man.get('format')!r}, expected {COUPLINGS_FORMAT}")
        if not man.get("complete"):
            raise CouplingsError(f"{path}: the couplings are incomplete (an interrupted run); rerun to finish them")
        self.manifest = man
        self.arrays: list[dict[str, np.ndarray]] = []
        self.starts: list[int] = []
        total = 0
        for c in man["chunks"]:
            chunk = {}
            for k in ARRAYS:
                f = _file(self.folder, c["name"], k)
                try:
                    chunk[k] = np.load(f, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise CouplingsError(f"{f}: missing or unreadable ({e}); delete {self.folder} to regenerate") from e
                if len(chunk[k]) != c["count"]:
                    raise CouplingsError(f"{f}: {len(chunk[k])} rows, the manifest says {c['count']}")
            self.arrays.append(chunk)
            self.starts.append(total)
            total += int(c["count"])
        self.n = total

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not 0 <= idx < self.n:
            raise IndexError(idx)
        k = bisect_right(self.starts, idx) - 1
        row = idx - self.starts[k]
        return {key: torch.from_numpy(np.array(a[row])) for key, a in self.arrays[k].items()}


__all__ = ["ARRAYS", "COUPLINGS_FORMAT", "CouplingDataset", "CouplingStore", "CouplingsError"]
