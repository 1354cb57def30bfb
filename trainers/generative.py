"""Generator training (latent shortcut model and the DDIM baseline); the test split is inference.test_split.

One trainer for every generator: the class comes from ``model.generator`` ({name|target, params}, see
models.generators), so shortcut vs diffusion is purely a config choice. Per batch (spec §7.1): axis-angle poses +
trans_v -> frozen per-part RVQ-VAEs (``MotionCodec``: rot6d, normalise, map2latent, ÷ latent_scale) -> latents
(B,32,384); seed = the first ``pre_frames`` latents; condition = the audio of ``data.audio_rep`` (onset+amplitude
samples, or log-mel / frozen WavLM frame features) + word ids;
``generator.loss(...)``. Optimiser, schedule, clipping, bf16, DDP, checkpoints and exact resume are BaseTrainer's.

Validation (every ``val_period`` epochs) runs on the **val** split (never test): whole files, windowed generation
(inference.generate_items, the loop the test split and the learning check use too) with a fixed generation
seed, then a fresh evaluation.evaluator.Evaluator: FGD (when
``val.fgd_autoencoder`` is set), BC, L1div, plus ``latent_fd`` (Fréchet distance between generated and ground-truth
RVQ latents, needs no autoencoder). ``best_metric: fgd`` falls back to ``val.fallback_metric`` when no FGD
autoencoder is configured.

Config keys (beyond BaseTrainer's; see configs/generator_base.yaml)::

    rvq: {upper, hands, lower_trans}     # RVQ-VAE checkpoints (released net_300000_*.pth or ours); globs allowed
    latent_scale: 5                      # upstream vqvae_latent_scale
    sync_bn: true                        # under DDP on CUDA: SyncBatchNorm (as upstream)
    pre_frames: 4                        # seed latents
    sample_timing: {weight: 0, steps: 2, guidance: 1, form: relmse, highpass: 0, per_joint: false, spectrum: 0,
                    quantiles: 0, level: 0, level_scope: joint, accel_level: 0, commit: 0, rows: 0}
                                         # trainers.timing
    model:
      generator: {name: shortcut|diffusion | target: ..., params: {modality_encoder, denoiser, objective, sampler}}
      word_table: vocab                  # vocab: FastText rows of the data vocabulary | random (vocab-sized table)
      init_from: null                    # a released upstream generator checkpoint (v1/v2 layout), loaded strictly
      # sampling steps/guidance live in the sampler's node only: model.generator.params.sampler
    inference:
      seed: 0                            # generation seed for validation/test (a private torch.Generator)
      copy_gt: []                        # fields copied from GT into validation outputs (jaw, expressions, trans)
      windows: {audio_indexing, drop_tail, seed_from_gt, seed_fallback, ...}   # inference.windowed.WindowOptions
    val: {split: val, max_files: null, fgd_autoencoder: null, fallback_metric: latent_fd, fallback_mode: min,
          protocol: emage2024, body_model: null}
    test: {split: test, n_boot: 1000, body_model: null, fgd_autoencoder: null (defaults to val's), protocol: null}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from dataloaders.datasets import GeneratorWindowDataset, WholeFileDataset
from dataloaders.prepare import prepare_data
from dataloaders.stats import load_stats
from evaluation.evaluator import Evaluator
from evaluation.fgd_autoencoder import load_fgd_autoencoder
from evaluation.metrics import frechet_distance
from evaluation.protocols import DEFAULT_PROTOCOL
from geometry.body_model import get_fk
from inference.generate import generate_items, inference_copy_gt
from inference.loading import (
    build_codec,
    build_generator_from_config,
    check_generator_options,
    resolve_checkpoint_path,
    window_options,
)
from trainers.base import BaseTrainer
from trainers.timing import SampleTimingLoss
from utils.config import ConfigError, to_container


def _load_fgd(path: str | None) -> tuple[Any, str] | None:
    if not path:
        return None
    p = resolve_checkpoint_path(str(path), "FGD autoencoder")
    return load_fgd_autoencoder(p, map_location="cpu"), p


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------
class GenerativeTrainer(BaseTrainer):
    """Trains ``model.generator`` on frozen RVQ latents; see the module docstring for the config."""

    trains_couplings = False  # True for trainers whose batches carry coupled noise (trainers.reflow)

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None, **kwargs: Any) -> None:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(cfg)
        for key in ("data", "rvq", "model"):
            if key not in cfg or cfg[key] is None:
                raise ConfigError(f"generator config needs a '{key}' node")
        self.val_cfg = cfg.get("val") or OmegaConf.create({})
        self._fgd = None
        super().__init__(cfg, run_dir, **kwargs)
        self.window_opts = window_options(cfg)
        inf = cfg.get("inference") or {}
        self.inf_seed = int(inf.get("seed", 0) or 0)
        self.copy_gt = inference_copy_gt(inf)
        if self.val_period > 0 and self.is_main:
            self._fgd = _load_fgd(self.val_cfg.get("fgd_autoencoder"))
        if self.best_metric == "fgd" and self._fgd is None:
            fb = str(self.val_cfg.get("fallback_metric", "latent_fd"))
            self.logger.log_text(f"no val.fgd_autoencoder: best checkpoint chosen on val {fb} instead of fgd")
            self.best_metric = fb
            self.best_mode = str(self.val_cfg.get("fallback_mode", "min"))
            self.best.update(metric=self.best_metric, mode=self.best_mode)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        # Training owns the data step (corpus, caches of every split, statistics; reused when current), so
        # train.py and test.py after it need no separate command. build_model runs first, so it goes here.
        check_generator_options(self.cfg)  # a bad model/audio option fails before minutes of data preparation
        prepare_data(self.cfg.data)
        self.stats = load_stats(self.cfg.data)
        self.codec = build_codec(self.cfg, self.stats, self.device)  # frozen, outside self.model
        self.sample_timing = SampleTimingLoss.from_config(to_container(self.cfg.get("sample_timing")), self.codec,
                                                          self.val_cfg.get("body_model"))  # fmt: skip
        if self.sample_timing is not None and self.trains_couplings:
            raise ConfigError("sample_timing is not supported by the ReFlow trainer (its steps train on stored "
                              "couplings); set sample_timing.weight=0")  # fmt: skip
        self.pre_frames = int(self.cfg.get("pre_frames", 4))
        model = build_generator_from_config(self.cfg, warm_start=True)
        if getattr(model.objective, "needs_couplings", False) and not self.trains_couplings:
            raise ConfigError(f"model.generator builds {type(model).__name__}, which trains on a teacher's couplings: "
                              "python train.py -c configs/shortcut_reflow.yaml reflow.teacher=RUN/checkpoints/best.pt")
        if bool(self.cfg.get("sync_bn", True)) and self.dist.enabled and self.device.type == "cuda":
            # upstream DDP uses SyncBN (WavEncoder BatchNorms); same state-dict keys. Not available on CPU/gloo,
            # where BN running stats follow DDP's default: rank 0's buffers are broadcast at every forward.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def build_datasets(self) -> dict[str, Dataset | None]:
        val = None
        if self.val_period > 0:
            val = WholeFileDataset(self.cfg.data, str(self.val_cfg.get("split", "val")))
        return {"train": GeneratorWindowDataset(self.cfg.data, "train"), "val": val}

    def collate_fn(self, items: list[Any]) -> Any:
        keep = ("pose", "trans_v", "audio", "word") + (("facial",) if self.codec.has_face else ())  # a step's inputs
        return torch.utils.data.default_collate([{k: it[k] for k in keep} for it in items])

    def set_train_mode(self) -> None:
        self.model.train()
        self.codec.eval()

    def latents(self, pose: torch.Tensor, trans_v: torch.Tensor,
                expressions: torch.Tensor | None = None) -> torch.Tensor:
        """Generator-scale latents (B,T/4,latent_dim) from the frozen codec, in float32 (outside autocast)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            exp = expressions.float() if expressions is not None else None
            return self.codec.encode(pose.float(), trans_v.float(), exp)

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.latents(batch["pose"], batch["trans_v"], batch.get("facial"))
        seed = z[:, : self.pre_frames]
        return self.forward_model(z, batch["audio"], batch["word"], seed, method="loss", sample_loss=self.sample_timing)

    def validate(self) -> dict[str, float]:
        ds = self.val_dataset
        n_files = len(ds)
        max_files = self.val_cfg.get("max_files")
        if max_files:
            n_files = min(n_files, int(max_files))
        fgd_model = None
        if self._fgd is not None:
            fgd_model = self._fgd[0].to(self.device)
        ev = Evaluator(fgd_model, mean_vel=np.asarray(self.stats.mean_vel), fk=get_fk(self.val_cfg.get("body_model")),
                       protocol=str(self.val_cfg.get("protocol", DEFAULT_PROTOCOL)))  # fresh metric state every time
        items = [ds[i] for i in range(n_files)]
        results = generate_items(self.model, self.codec, items, self.window_opts, self.device, seed=self.inf_seed,
                                 copy_gt=self.copy_gt, evaluators=[ev])  # fmt: skip
        gen_lat, gt_lat = [], []
        for res in results:
            if res["gt_latents"] is not None:
                m = min(len(res["latents"]), len(res["gt_latents"]))
                gen_lat.append(res["latents"][:m])
                gt_lat.append(res["gt_latents"][:m])
        metrics = {k: v for k, v in ev.compute().items() if k in ("fgd", "bc", "l1div", "bc_gt", "l1div_gt")
                   and v is not None}  # fmt: skip
        if gen_lat:
            metrics["latent_fd"] = float(frechet_distance(np.concatenate(gen_lat), np.concatenate(gt_lat)))
        return metrics


__all__ = ["GenerativeTrainer"]
