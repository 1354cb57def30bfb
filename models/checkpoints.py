"""Load (and export) released upstream GestureLSM generator checkpoints, strictly.

File layouts (spec §7.1, fixtures README "manifests.json"):

* **v1** (``new_540_shortcut.bin``, ``new_540_diffusion.bin``, ``shortcut_reflow.bin``): ``{'model_state': sd}``;
  keys carry the DataParallel ``module.`` prefix; keys containing ``wavlm`` were removed before saving.
* **v2** (``outputs/weights/<exp>/*/ckpt.pth``): ``{'epoch', 'iteration', 'model_state_dict',
  'optimizer_state_dict', 'scheduler_state_dict', 'val_best'}``, ``module.`` keys.
* **raw**: a bare state dict (with or without the prefix).

Key map applied before a *strict* load (every key must be accounted for):

1. ``module.`` is stripped. Either every key has it or none does; a mix is an error.
2. Keys under ``modality_encoder.audio_encoder.`` are dropped: the upstream v2 loader discards them explicitly
   (a stale module of older code). They are listed in the report, never silently ignored. The released
   checkpoints have none.
3. Nothing is renamed: our modules use the upstream attribute names (``WavEncoder``, ``text_pre_encoder_body``,
   ``mytimmblocks``, ``embed_text``, ...).

Any missing key, unexpected key or shape mismatch raises :class:`CheckpointError` listing all of them (upstream
loads with ``strict=False`` and hides such mismatches).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.io import load_torch, save_torch

# Our trainers' checkpoints ({"format", "model", "optimizer", ...}); anything else is read as an upstream layout.
TRAINER_CHECKPOINT_FORMAT = "gesturelsm-trainer/1"
PREFIX = "module."
DROPPED_PREFIXES = ("modality_encoder.audio_encoder.",)
_V2_META = ("epoch", "iteration", "val_best")


class CheckpointError(RuntimeError):
    """A checkpoint's keys/shapes do not match the model (message lists every offending key)."""


@dataclass
class LoadReport:
    path: str
    layout: str  # "v1" | "v2" | "trainer" | "raw"
    n_tensors: int
    had_prefix: bool
    dropped: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def extract_state_dict(obj: Any, path: str | os.PathLike = "<memory>",
                       allow_trainer: bool = False) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Return (state dict, layout, metadata) from a loaded checkpoint object.

    ``allow_trainer``: also accept our trainer checkpoints (a training warm start from another run). Off elsewhere:
    ours are loaded by ``inference.loading.load_trained_generator``, which checks the generator kind."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "model_state_dict" in obj:
        meta = {k: obj[k] for k in _V2_META if k in obj}
        return dict(obj["model_state_dict"]), "v2", meta
    if "model_state" in obj:
        return dict(obj["model_state"]), "v1", {}
    if obj.get("format") == TRAINER_CHECKPOINT_FORMAT:  # ours (trainers.base)
        if not allow_trainer:
            raise CheckpointError(f"{path}: a checkpoint of this project's trainer, not a released upstream file; "
                                  "pass it as --ckpt (it carries the config that says which generator it is)")
        return dict(obj["model"]), "trainer", {k: obj[k] for k in ("epoch", "iteration") if k in obj}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), "raw", {}
    raise CheckpointError(f"{path}: no 'model_state_dict' (v2) or 'model_state' (v1) entry and not a bare state "
                          f"dict; top-level keys: {sorted(map(str, obj))}")


def map_upstream_keys(sd: Mapping[str, torch.Tensor], path: str | os.PathLike = "<memory>"
                      ) -> tuple[dict[str, torch.Tensor], bool, list[str]]:
    """Apply the documented key map. Returns (mapped state dict, had 'module.' prefix, dropped keys)."""
    keys = list(sd)
    with_prefix = [k for k in keys if k.startswith(PREFIX)]
    if with_prefix and len(with_prefix) != len(keys):
        without = [k for k in keys if not k.startswith(PREFIX)]
        raise CheckpointError(f"{path}: {len(with_prefix)} keys carry '{PREFIX}' but {len(without)} do not, "
                              f"e.g. {without[:5]}")
    had_prefix = bool(with_prefix)
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        name = k[len(PREFIX):] if had_prefix else k
        if name.startswith(DROPPED_PREFIXES):
            dropped.append(name)
            continue
        mapped[name] = v
    return mapped, had_prefix, dropped


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | os.PathLike = "<memory>") -> None:
    """Raise CheckpointError listing every missing/unexpected key and shape mismatch."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(ours[k].shape)}"
                    for k in set(ours) & set(sd) if tuple(sd[k].shape) != tuple(ours[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{path}: checkpoint does not match {type(model).__name__}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes}")
        raise CheckpointError("\n  ".join(parts))


def load_state_dict_strict(model: nn.Module, obj: Any, path: str | os.PathLike = "<memory>",
                           allow_trainer: bool = False) -> LoadReport:
    """Key-map a loaded checkpoint object and load it into ``model`` with strict=True."""
    sd, layout, meta = extract_state_dict(obj, path, allow_trainer)
    mapped, had_prefix, dropped = map_upstream_keys(sd, path)
    check_state_dict(model, mapped, path)
    model.load_state_dict(mapped, strict=True)
    return LoadReport(str(path), layout, len(mapped), had_prefix, dropped, meta)


def load_generator_checkpoint(model: nn.Module, path: str | os.PathLike,
                              map_location: str | torch.device = "cpu", allow_trainer: bool = False) -> LoadReport:
    """Load a released upstream generator file (v1 or v2 layout) into ``model``.

    ``model``: any module whose state dict is ``modality_encoder.*`` + ``denoiser.*`` (e.g. our generators).
    Raises CheckpointError (listing keys) on any mismatch; FileNotFoundError if the file is absent.
    """
    obj = load_torch(path, map_location=map_location)
    return load_state_dict_strict(model, obj, path, allow_trainer)


def export_upstream_checkpoint(model: nn.Module, path: str | os.PathLike, layout: str = "v2",
                               epoch: int = 0, iteration: int = 0) -> Path:
    """Write ``model`` in an upstream file layout (``module.`` keys), atomically, e.g. to run it in upstream code.

    v2 optimiser/scheduler entries are written empty; ``val_best`` is an empty dict.
    """
    sd = {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    if layout == "v1":
        obj: dict[str, Any] = {"model_state": {k: v for k, v in sd.items() if "wavlm" not in k}}
    elif layout == "v2":
        obj = {"epoch": epoch, "iteration": iteration, "model_state_dict": sd, "optimizer_state_dict": {},
               "scheduler_state_dict": {}, "val_best": {}}
    else:
        raise ValueError(f"layout must be 'v1' or 'v2', got {layout!r}")
    return save_torch(obj, path)
