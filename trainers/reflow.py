"""Shortcut-ReFlow training (spec §4.6): couplings from a trained shortcut model, then fine-tuning on them.

Step 1, `make_couplings`: run the teacher over every training window of the train split (no shuffling): condition
features from its encoder, ground-truth seed latents as in training, a noise draw ε per window and the teacher's
sample x̂ from it. Stored by `dataloaders.couplings.CouplingStore` (npy + manifest, atomic, resumable). The noise of
chunk k is drawn on the CPU from a generator seeded by (reflow.seed, k), so the couplings are the same for a seed
whether or not the run was interrupted, and under DDP each rank makes a share of the missing chunks (rank r: the
r-th, r+N-th, ... of them; on a fresh run chunk k is rank k % N's).

Step 2, `ReflowTrainer`: a `GenerativeTrainer` whose model (``models.generators.reflow.ReflowGenerator``) starts
from the teacher's weights and whose batches are the stored couplings; validation (val split), checkpoints, exact
resume and DDP are unchanged. ``reflow.encoder: frozen`` (upstream) trains on the stored condition features and
freezes the encoder; ``trainable`` re-encodes each window's audio and words and trains the encoder too.

Config (beyond GenerativeTrainer's; configs/shortcut_reflow*.yaml)::

    reflow:
      teacher: RUN/checkpoints/best.pt   # our shortcut checkpoint (its saved model node builds the teacher) or a
                                         # released upstream file (built with this config's networks)
      couplings_dir: null                # default: <output_dir>/<exp_name>_couplings/<teacher sha256[:12]>_<hash>
      steps: 20                          # teacher sampling steps and guidance for the couplings
      guidance: 2.0
      seed: 0
      batch_size: 64                     # windows per chunk (a chunk is also the resume unit)
      encoder: frozen                    # frozen | trainable
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from dataloaders.couplings import CouplingDataset, CouplingsError, CouplingStore
from dataloaders.datasets import GeneratorWindowDataset
from inference.loading import load_trained_generator, resolve_checkpoint_path
from models.checkpoints import TRAINER_CHECKPOINT_FORMAT
from models.generators import LatentGenerator, ReflowGenerator
from models.motion_codec import MotionCodec
from trainers.generative import GenerativeTrainer
from utils.config import ConfigError, to_container
from utils.io import load_torch, sha256_file
from utils.logging import progress
from utils.paths import resolve_path

ENCODER_MODES = ("frozen", "trainable")
COUPLINGS_VERSION = 1  # bump when make_couplings changes what it stores: older folders are then never reused
# settings the student must share with its teacher (the couplings' latents and seeds are in the teacher's space)
SHARED_SETTINGS = ("latent_scale", "pre_frames", "model.generator.params.prediction")


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The CPU generator of chunk ``chunk``'s noise: independent of how many chunks an earlier run finished."""
    state = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def stack(items: list[Any], key: str) -> torch.Tensor:
    """``items[i][key]`` (arrays or tensors of one shape) stacked into one batch tensor."""
    return torch.stack([torch.as_tensor(np.asarray(it[key])) for it in items])


def saved_config(ckpt: str) -> dict[str, Any] | None:
    """The config saved in one of our trainer checkpoints; None for a released upstream file (it carries none)."""
    obj = load_torch(ckpt, map_location="cpu")
    if isinstance(obj, dict) and obj.get("format") == TRAINER_CHECKPOINT_FORMAT:
        return obj.get("config") or None
    return None


def teacher_config(cfg: DictConfig, ckpt: str, saved: dict[str, Any] | None = None) -> DictConfig:
    """``cfg`` with ``model.generator`` replaced by the teacher's: the node saved in our trainer checkpoint, or, for a
    released upstream file, this config's networks under the shortcut generator. ``saved``: `saved_config(ckpt)`,
    when the caller has read it already."""
    saved = saved_config(ckpt) if saved is None else saved
    node = ((saved or {}).get("model") or {}).get("generator")
    if node is None:
        node = to_container(cfg.model.generator)
        node.pop("name", None)
        node["target"] = "models.generators.shortcut.ShortcutGenerator"
    tcfg = OmegaConf.create(to_container(cfg))
    tcfg.model.generator = OmegaConf.create(node)
    tcfg.model.init_from = None
    return tcfg


def check_same_settings(cfg: DictConfig, ckpt: str, saved: dict[str, Any] | None = None) -> None:
    """ConfigError naming every `SHARED_SETTINGS` key on which ``cfg`` differs from the config saved in our teacher
    checkpoint (a released upstream file carries no config: nothing to compare)."""
    saved = saved_config(ckpt) if saved is None else saved
    if not saved:
        return
    teacher = OmegaConf.create(saved)
    bad = []
    for key in SHARED_SETTINGS:
        a, b = OmegaConf.select(cfg, key, default=None), OmegaConf.select(teacher, key, default=None)
        if a != b:
            bad.append(f"{key}: teacher {b!r}, this config {a!r}")
    if bad:
        raise ConfigError(f"reflow.teacher {ckpt} was trained with other settings than this reflow config: "
                          + "; ".join(bad) + " (set them as the teacher had them)")  # fmt: skip


@torch.no_grad()
def make_couplings(
    teacher: LatentGenerator,
    codec: MotionCodec,
    dataset: GeneratorWindowDataset,
    store: CouplingStore,
    pre_frames: int,
    steps: int,
    guidance: float,
    seed: int,
    batch_size: int,
    device: torch.device,
    chunks: Sequence[int] | None = None,
    rank: int = 0,
) -> CouplingStore:
    """Make chunks of the teacher's couplings for the windows of ``dataset`` (chunk k: windows k·batch_size …).
    ``chunks=None`` (one process): every missing chunk, then the store is finished. Under DDP each rank passes its
    share of the missing chunks and the caller finishes the store once all are made (`ReflowTrainer`). The teacher
    must be in eval mode (DropPath off), so a chunk depends only on its noise and its windows, whichever process
    makes it."""
    if teacher.training:
        raise ValueError("make_couplings: put the teacher in eval mode first (DropPath would randomise the samples)")
    if store.complete:
        return store
    n = len(dataset)
    n_chunks = (n + batch_size - 1) // batch_size
    done = store.done_chunks()
    todo = [k for k in (store.missing(n_chunks, done) if chunks is None else chunks) if k not in done]
    for k in progress(todo, desc="reflow couplings", unit="chunk", rank=rank):
        idx = list(range(k * batch_size, min(n, (k + 1) * batch_size)))
        items = [dataset[i] for i in idx]
        keys = ("pose", "trans_v", "audio", "word") + (("facial",) if codec.has_face else ())
        batch = {key: stack(items, key).to(device) for key in keys}
        z = codec.encode(batch["pose"].float(), batch["trans_v"].float(),
                         batch["facial"].float() if codec.has_face else None)  # (n,32,latent_dim)
        seed_lat = z[:, :pre_frames]
        at_feat = teacher.encode(batch["audio"], batch["word"])
        noise = torch.randn((len(idx), z.shape[2], 1, z.shape[1]), generator=chunk_generator(seed, k))
        out = teacher.sample(None, None, seed_lat, steps, guidance, noise=noise.to(device), at_feat=at_feat)
        store.add_chunk({"noise": noise.numpy(), "latents": out.float().cpu().numpy(),
                         "at_feat": at_feat.float().cpu().numpy(), "seed": seed_lat.float().cpu().numpy(),
                         "index": np.asarray(idx, np.int64)}, index=k, rank=rank)  # fmt: skip
    if chunks is None:
        store.finish(n_chunks)
    return store


class ReflowTrainer(GenerativeTrainer):
    """Fine-tunes a `ReflowGenerator` from a shortcut teacher on that teacher's couplings (module docstring)."""

    trains_couplings = True

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None, **kwargs: Any) -> None:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(cfg)
        node = cfg.get("reflow")
        if node is None or OmegaConf.is_missing(node, "teacher") or not node.get("teacher"):
            raise ConfigError("reflow.teacher: the trained shortcut checkpoint whose couplings the model learns")
        self.rf = to_container(node)
        self.rf.setdefault("encoder", "frozen")
        if self.rf["encoder"] not in ENCODER_MODES:
            raise ConfigError(f"reflow.encoder must be one of {ENCODER_MODES}, got {self.rf['encoder']!r}")
        if cfg.model.get("init_from"):
            raise ConfigError("model.init_from is set, but a reflow model starts from its teacher's weights "
                              "(reflow.teacher); unset model.init_from")  # fmt: skip
        self.teacher_path = resolve_checkpoint_path(str(node.teacher), "reflow.teacher")  # a glob: resolved once
        self.teacher_sha256 = sha256_file(self.teacher_path)
        super().__init__(cfg, run_dir, **kwargs)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if not isinstance(model, ReflowGenerator):
            raise ConfigError(f"model.generator builds {type(model).__name__}; the reflow trainer needs "
                              "models.generators.reflow.ReflowGenerator (name: reflow)")  # fmt: skip
        saved = saved_config(self.teacher_path)  # read once for both
        check_same_settings(self.cfg, self.teacher_path, saved)
        tcfg = teacher_config(self.cfg, self.teacher_path, saved)
        self.teacher = load_trained_generator(tcfg, self.teacher_path, torch.device("cpu"))
        self.teacher_t_min = float(getattr(self.teacher.sampler, "t_min", 0.0))
        try:
            model.load_state_dict(self.teacher.state_dict(), strict=True)
        except RuntimeError as e:
            raise ConfigError(f"reflow.teacher {self.teacher_path}: its networks differ from model.generator's "
                              f"({str(e).splitlines()[0]})") from e  # fmt: skip
        if self.rf["encoder"] == "frozen":
            model.modality_encoder.requires_grad_(False)  # before DDP: its parameters are not DDP's to reduce
        return model

    def couplings_fingerprint(self, n_windows: int) -> dict[str, Any]:
        """What the couplings are made from: the teacher file, the codec's files (paths may be globs), sampling,
        data and this module's version of the procedure."""
        return {"version": COUPLINGS_VERSION, "teacher_sha256": self.teacher_sha256,
                "rvq_sha256": {p: sha256_file(f) for p, f in sorted(self.codec.paths.items())},
                "t_min": self.teacher_t_min, "steps": int(self.rf.get("steps", 20)),
                "guidance": float(self.rf.get("guidance", 2.0)), "seed": int(self.rf.get("seed", 0)),
                "batch_size": int(self.rf.get("batch_size", 64)), "pre_frames": self.pre_frames,
                "windows": n_windows, "latent_scale": float(self.cfg.get("latent_scale", 5)),
                "data": to_container(self.cfg.data)}  # fmt: skip

    def extra_state(self) -> dict[str, Any]:
        return {"teacher_sha256": self.teacher_sha256, "teacher": str(self.teacher_path)}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if state.get("teacher_sha256") not in (None, self.teacher_sha256):
            raise ConfigError(f"resume: this run was trained on the couplings of teacher {state.get('teacher')} "
                              f"(sha256 {str(state['teacher_sha256'])[:12]}), but reflow.teacher is now "
                              f"{self.teacher_path} (sha256 {self.teacher_sha256[:12]}); set reflow.teacher to the "
                              "original file")  # fmt: skip

    def couplings_dir(self, fingerprint: Mapping[str, Any]) -> Path:
        if self.rf.get("couplings_dir"):
            return resolve_path(str(self.rf["couplings_dir"]))
        h = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:8]
        root = resolve_path(str(self.cfg.get("output_dir", "outputs")))
        return root / f"{self.cfg.get('exp_name', 'reflow')}_couplings" / f"{fingerprint['teacher_sha256'][:12]}_{h}"

    def build_datasets(self) -> dict[str, Dataset | None]:
        datasets = super().build_datasets()
        self.windows = datasets["train"]
        fp = self.couplings_fingerprint(len(self.windows))
        folder = self.couplings_dir(fp)
        # Every rank makes a share of the missing chunks, so none idles at a barrier through the whole teacher pass
        # (NCCL's timeout). Rank 0 opens the folder first (it resets one of other settings); all ranks then read the
        # same finished chunks before anyone writes (the barrier between), and all check the result, so a failure
        # stops every rank instead of leaving the others at a barrier.
        n_chunks = -(-len(self.windows) // fp["batch_size"])
        store = CouplingStore(folder, fp) if self.is_main else None
        self.barrier()
        if store is None:
            if not (folder / "manifest.json").is_file():
                raise CouplingsError(f"rank {self.rank} does not see rank 0's couplings folder {folder}: it must "
                                     "be on a filesystem every process shares (reflow.couplings_dir, output_dir)")
            store = CouplingStore(folder, fp)
        if not store.complete:
            missing = store.missing(n_chunks)
            if self.is_main:
                self.logger.log_text(f"reflow: making {len(missing)} of {n_chunks} chunks of the teacher's couplings "
                                     f"in {folder} ({self.world_size} process(es))")  # fmt: skip
            self.barrier()
            teacher = self.teacher.to(self.device).eval()
            make_couplings(teacher, self.codec, self.windows, store, self.pre_frames, fp["steps"], fp["guidance"],
                           fp["seed"], fp["batch_size"], self.device, missing[self.rank :: self.world_size],
                           self.rank)  # fmt: skip
            self.barrier()
            left = store.missing(n_chunks)
            if left:
                raise CouplingsError(f"{folder}: chunks {left} were not made (a process failed); rerun to finish")
            if self.is_main:
                store.finish(n_chunks)
        self.barrier()
        del self.teacher  # its weights are the student's starting point; not needed any more
        self.couplings_folder = folder
        datasets["train"] = CouplingDataset(folder)
        return datasets

    def collate_fn(self, items: list[Any]) -> Any:
        batch = torch.utils.data.default_collate(items)
        if self.rf["encoder"] == "trainable":  # the window's audio and words, re-encoded by the trained encoder
            wins = [self.windows[int(i)] for i in batch["index"]]
            for key in ("audio", "word"):
                batch[key] = stack(wins, key)
        return batch

    def set_train_mode(self) -> None:
        super().set_train_mode()
        if self.rf["encoder"] == "frozen":
            self.model.modality_encoder.eval()

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.rf["encoder"] == "frozen":
            return self.forward_model(batch["latents"], None, None, batch["seed"], at_feat=batch["at_feat"],
                                      noise=batch["noise"], method="loss")  # fmt: skip
        return self.forward_model(batch["latents"], batch["audio"], batch["word"], batch["seed"],
                                  noise=batch["noise"], method="loss")  # fmt: skip


__all__ = ["ReflowTrainer", "chunk_generator", "make_couplings", "teacher_config"]
