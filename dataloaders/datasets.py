"""PyTorch datasets over the per-file cache. They only read: build the cache and statistics first
(``python -m dataloaders.prepare -c CONFIG``, or :func:`dataloaders.prepare.prepare_data`).

* :class:`GeneratorWindowDataset`: windows of ``gen_window.length`` (128) frames at stride ``gen_window.stride``
  (20); window i of a file starts at frame i*stride, its audio at sample floor(i*stride*sr/fps) with length
  floor(length/fps*sr) = 68266 samples. Files give n = floor((T-128)/20)+1 windows (none when T < 128).
* :class:`RVQWindowDataset`: 64-frame windows (stride 20) of the 433-D frame vector (rot6d and trans_v normalised
  with :func:`dataloaders.stats.load_stats`, expressions raw), float32 (64, 433).
* :class:`Rot6dWindowDataset`: 64-frame windows (stride 20, ``data.fgd_window``) of the raw, un-normalised 55-joint
  rot6d, float32 (64, 330): the FGD autoencoder's input, as upstream trained AESKConv_240_100.bin.
* :class:`WholeFileDataset`: one item per file covering the whole (whole-second-truncated) file, plus ``wav_path``.

Items of the generator / whole-file datasets: pose (L,165) f32 axis-angle, trans (L,3), trans_v (L,3), facial
(L,100), beta (L,300), word (L,) int64, audio (S,2) f32 (onset+amplitude samples; (L,D) frames of log-mel or WavLM
features for ``data.audio_rep`` mel/wavlm; (S,1) waveform samples with ``data.wavlm_finetune``), id str, speaker int
(the BEAT2 speaker number).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataloaders.cache import CacheEntry, cfg_get, frame_audio, open_cache
from dataloaders.stats import Stats, frame_vector, load_stats
from geometry.rotations import np_poses_to_rot6d


def window_count(n_frames: int, length: int, stride: int) -> int:
    """floor((T - length)/stride) + 1, or 0 when the file is shorter than one window."""
    return 0 if n_frames < length else (n_frames - length) // stride + 1


def _window_cfg(cfg: Any, key: str, default: tuple[int, int]) -> tuple[int, int]:
    w = cfg_get(cfg, key) or {}
    return int(w.get("length", default[0])), int(w.get("stride", default[1]))


def _item(e: CacheEntry, f0: int, f1: int, a0: int | None, a1: int | None, frame_audio: bool) -> dict[str, Any]:
    pose = np.array(e.load("pose")[f0:f1], dtype=np.float32)
    audio = e.load("audio")
    audio = audio[f0:f1] if frame_audio else audio[a0:a1]
    betas = np.array(e.load("betas"), dtype=np.float32)
    return {
        "pose": torch.from_numpy(pose),
        "trans": torch.from_numpy(np.array(e.load("trans")[f0:f1], dtype=np.float32)),
        "trans_v": torch.from_numpy(np.array(e.load("trans_v")[f0:f1], dtype=np.float32)),
        "facial": torch.from_numpy(np.array(e.load("facial")[f0:f1], dtype=np.float32)),
        "beta": torch.from_numpy(np.tile(betas, (pose.shape[0], 1))),
        "word": torch.from_numpy(np.array(e.load("word")[f0:f1], dtype=np.int64)),
        "audio": torch.from_numpy(np.array(audio, dtype=np.float32)),
        "id": e.id,
        "speaker": e.speaker,
    }


class _Windows(Dataset):
    def __init__(self, data_cfg: Any, split: str, window_key: str, default: tuple[int, int]) -> None:
        self.cfg = data_cfg
        self.split = split
        self.index = open_cache(data_cfg, split)
        self.length, self.stride = _window_cfg(data_cfg, window_key, default)
        self.fps = int(cfg_get(data_cfg, "pose_fps"))
        self.sr = int(cfg_get(data_cfg, "audio_sr"))
        self.frame_audio = frame_audio(self.index.settings)
        self.windows: list[tuple[int, int]] = []  # (entry index, window index within the file)
        for k, e in enumerate(self.index.entries):
            self.windows += [(k, i) for i in range(window_count(e.n_frames, self.length, self.stride))]
        if not self.windows:
            raise ValueError(f"{split}: no file is long enough for one {self.length}-frame window")

    @property
    def entries(self) -> list[CacheEntry]:
        return self.index.entries

    def __len__(self) -> int:
        return len(self.windows)


class GeneratorWindowDataset(_Windows):
    """128-frame training windows for the generator (see the module docstring)."""

    def __init__(self, data_cfg: Any, split: str = "train") -> None:
        super().__init__(data_cfg, split, "gen_window", (128, 20))
        self.audio_len = int(np.floor(self.length / self.fps * self.sr))  # 68266 for 128 frames

    def __getitem__(self, idx: int) -> dict[str, Any]:
        k, i = self.windows[idx]
        e = self.entries[k]
        f0 = i * self.stride
        a0 = int(np.floor(f0 * self.sr / self.fps))  # = floor(i*stride*16000/30)
        return _item(e, f0, f0 + self.length, a0, a0 + self.audio_len, self.frame_audio)


class RVQWindowDataset(_Windows):
    """64-frame windows of the normalised 433-D frame vector (float32 tensor (64, 433))."""

    def __init__(self, data_cfg: Any, split: str = "train", stats: Stats | None = None) -> None:
        super().__init__(data_cfg, split, "rvq_window", (64, 20))
        self.stats = stats if stats is not None else load_stats(data_cfg)

    def __getitem__(self, idx: int) -> torch.Tensor:
        k, i = self.windows[idx]
        e = self.entries[k]
        f0 = i * self.stride
        f1 = f0 + self.length
        x = frame_vector(e.load("pose")[f0:f1], e.load("trans_v")[f0:f1], e.load("facial")[f0:f1], self.stats)
        return torch.from_numpy(x)


class Rot6dWindowDataset(_Windows):
    """64-frame windows of the un-normalised 55-joint rot6d (float32 tensor (64, 330)); no statistics needed."""

    def __init__(self, data_cfg: Any, split: str = "train") -> None:
        super().__init__(data_cfg, split, "fgd_window", (64, 20))

    def __getitem__(self, idx: int) -> torch.Tensor:
        k, i = self.windows[idx]
        f0 = i * self.stride
        pose = np.array(self.entries[k].load("pose")[f0 : f0 + self.length], dtype=np.float32)  # off the read-only mmap
        return torch.from_numpy(np_poses_to_rot6d(pose))


class WholeFileDataset(Dataset):
    """One item per file (test/val), the whole file; adds ``wav_path`` (str) for BC."""

    def __init__(self, data_cfg: Any, split: str = "test") -> None:
        self.cfg = data_cfg
        self.split = split
        self.index = open_cache(data_cfg, split)
        self.frame_audio = frame_audio(self.index.settings)

    @property
    def entries(self) -> list[CacheEntry]:
        return self.index.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        e = self.entries[idx]
        item = _item(e, 0, e.n_frames, 0, None, self.frame_audio)
        item["wav_path"] = str(e.wav)
        return item
