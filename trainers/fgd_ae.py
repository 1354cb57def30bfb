"""Train the FGD feature extractor (``VAESKConv``) as a plain motion autoencoder, on the shared BaseTrainer loop.

Use it when the released ``AESKConv_240_100.bin`` is unavailable, or to build an FGD extractor for another corpus.
The upstream extractor was trained on 64-frame windows (stride 20) of un-normalised 55-joint rot6d (330-D) from all
30 BEAT2 speakers; FGD numbers computed with a self-trained extractor are NOT comparable with published ones.

    python -m trainers.fgd_ae -c configs/fgd_ae_tiny.yaml [key=value ...] [--resume RUN/checkpoints/last.pt]

Data: ``dataloaders.datasets.Rot6dWindowDataset`` over the cached corpus of ``data`` (train split for training,
val split for validation and best-checkpoint selection; window ``data.fgd_window``, default 64/20), or any
``dataset: {target, params}`` whose items are (T, 330) rot6d windows (called with ``data_cfg`` and ``split``).
Loss: L1 on rot6d + ``loss.vel`` x L1 on velocities + ``loss.acc`` x L1 on accelerations.

Everything else (optimiser, schedule, clipping, validation schedule, atomic checkpoints, exact resume, DDP, logging)
is BaseTrainer's, with its config keys (see trainers.base and configs/fgd_ae.yaml). The checkpoints are trainer
checkpoints (``models.checkpoints.TRAINER_CHECKPOINT_FORMAT``); ``evaluation.fgd_autoencoder.load_fgd_autoencoder``
reads them directly (the weights are their ``model`` entry, the architecture their ``config.model``).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from evaluation.fgd_autoencoder import VAESKConv
from trainers.base import BaseTrainer, window_dataset
from utils.config import ConfigError, load_config, to_container
from utils.paths import resolve_path

LOSS_KEYS = ("vel", "acc")
METRICS = ("loss", "rec", "vel", "acc")


# ----------------------------------------------------------------------------------------------- data
def build_window_dataset(cfg: DictConfig, split: str) -> Dataset:
    """``cfg.dataset`` when set, else dataloaders.datasets.Rot6dWindowDataset(cfg.data, split)."""
    from dataloaders.datasets import Rot6dWindowDataset

    return window_dataset(cfg, split, Rot6dWindowDataset)


def prepare_data(cfg: DictConfig) -> None:
    """The explicit data steps of the stand-alone entry point: generate the synthetic corpus when ``data.synthetic``
    is set and the corpus is missing, then build (or check) the cache of the train and val splits."""
    if cfg.get("dataset") or cfg.get("data") is None:
        return
    from dataloaders.cache import build_cache, cfg_get

    syn = cfg_get(cfg.data, "synthetic")
    root = resolve_path(str(cfg_get(cfg.data, "root")))
    if syn and not (root / str(cfg_get(cfg.data, "split_csv"))).is_file():
        from dataloaders.synthetic import generate_corpus

        print(f"[fgd_ae] generating the synthetic corpus at {root}")
        generate_corpus(root, **{k: syn[k] for k in ("speakers", "files_per_speaker", "seconds", "seed") if k in syn})
    for split in ("train", "val") if int(cfg.get("val_period", 0) or 0) > 0 else ("train",):
        build_cache(cfg.data, split)


# ----------------------------------------------------------------------------------------------- loss
def reconstruction_loss(
    rec: torch.Tensor, target: torch.Tensor, vel_weight: float = 1.0, acc_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    """L1 on rot6d + weighted L1 on first (velocity) and second (acceleration) temporal differences."""
    rec_l = (rec - target).abs().mean()
    vel_l = (rec.diff(dim=1) - target.diff(dim=1)).abs().mean()
    loss = rec_l + vel_weight * vel_l
    out = {"rec": rec_l, "vel": vel_l}
    if acc_weight:
        acc_l = (rec.diff(n=2, dim=1) - target.diff(n=2, dim=1)).abs().mean()
        loss = loss + acc_weight * acc_l
        out["acc"] = acc_l
    out["loss"] = loss
    return out


# ----------------------------------------------------------------------------------------------- trainer
class FGDAETrainer(BaseTrainer):
    """The FGD autoencoder on BaseTrainer; see the module docstring and configs/fgd_ae.yaml."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None, **kwargs: Any) -> None:
        self.loss_weights = _loss_weights(cfg)
        _check_model_keys(cfg)
        super().__init__(cfg, run_dir=run_dir, **kwargs)
        wanted = {"loss", "rec", "vel"} | ({"acc"} if self.loss_weights["acc"] else set())
        if self.best_metric is not None and self.best_metric not in wanted:
            raise ConfigError(f"best_metric={self.best_metric!r}: validation reports {sorted(wanted)}")

    # ------------------------------------------------------------------ hooks
    def build_model(self) -> nn.Module:
        model = VAESKConv(**dict(to_container(self.cfg.get("model")) or {}))
        if not model.variational:  # fc_mu/fc_logvar are unused then: frozen, so that DDP waits for no gradient
            for p in (*model.fc_mu.parameters(), *model.fc_logvar.parameters()):
                p.requires_grad_(False)
        return model

    def build_datasets(self) -> dict[str, Dataset | None]:
        train = build_window_dataset(self.cfg, "train")
        if len(train) < self.batch_size and bool(self.cfg.get("drop_last", True)):
            raise ConfigError(f"batch_size={self.batch_size} but only {len(train)} training windows (drop_last)")
        val = None
        if self.val_period > 0:
            val = build_window_dataset(self.cfg, "val")
            max_w = (self.cfg.get("val") or {}).get("max_windows")
            if max_w and len(val) > int(max_w):  # evenly spaced, deterministic subset
                val = Subset(val, np.linspace(0, len(val) - 1, int(max_w)).round().astype(int).tolist())
        return {"train": train, "val": val}

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        rec = self.forward_model(batch)["rec_pose"]
        return reconstruction_loss(rec.float(), batch, self.loss_weights["vel"], self.loss_weights["acc"])

    def validate(self) -> dict[str, float]:
        """Mean reconstruction loss terms over the val windows (weighted by batch size)."""
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return {}
        val_cfg = self.cfg.get("val") or {}
        # own generator: iterating a DataLoader would otherwise draw its base seed from the global RNG
        loader = DataLoader(self.val_dataset, batch_size=int(val_cfg.get("batch_size") or self.batch_size),
                            shuffle=False, num_workers=self.num_workers, generator=torch.Generator().manual_seed(0))
        totals: dict[str, float] = {}
        n = 0
        for x in loader:
            x = x.to(self.device).float()
            parts = reconstruction_loss(self.model(x)["rec_pose"].float(), x, self.loss_weights["vel"],
                                        self.loss_weights["acc"])  # fmt: skip
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v) * x.shape[0]
            n += x.shape[0]
        return {k: v / n for k, v in totals.items()}


def _loss_weights(cfg: DictConfig) -> dict[str, float]:
    node = dict(to_container(cfg.get("loss")) or {})
    unknown = sorted(set(node) - set(LOSS_KEYS))
    if unknown:
        raise ConfigError(f"loss.{unknown[0]}: unknown key (the FGD autoencoder loss has {list(LOSS_KEYS)})")
    weights = {k: float(node.get(k, 1.0 if k == "vel" else 0.0) or 0.0) for k in LOSS_KEYS}
    for k, w in weights.items():
        if w < 0:
            raise ConfigError(f"loss.{k} must be >= 0, got {w}")
    return weights


def _check_model_keys(cfg: DictConfig) -> None:
    node = dict(to_container(cfg.get("model")) or {})
    allowed = set(inspect.signature(VAESKConv.__init__).parameters) - {"self"}
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: not a VAESKConv argument (expected some of {sorted(allowed)})")


# ----------------------------------------------------------------------------------------------- entry points
def train_from_config(cfg: DictConfig, resume: str | Path | None = None,
                      until_iteration: int | None = None) -> dict[str, Any]:
    """Train (or resume) from a loaded config; the trainer summary plus ``last_checkpoint`` and ``best_checkpoint``
    (None when no validation selected one)."""
    run_dir = None
    if resume is not None and Path(resume).parent.name == "checkpoints":  # continue in the same run folder
        run_dir = Path(resume).parent.parent
    with FGDAETrainer(cfg, run_dir=run_dir) as trainer:
        if resume is not None:
            trainer.resume(resume)
        summary = trainer.fit(until_iteration=until_iteration)
    if summary.get("run_dir"):
        ck = Path(summary["run_dir"]) / "checkpoints"
        summary["last_checkpoint"] = str(ck / "last.pt")
        summary["best_checkpoint"] = str(ck / "best.pt") if (ck / "best.pt").is_file() else None
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Train the FGD skeleton-conv autoencoder (VAESKConv).")
    ap.add_argument("-c", "--config", required=True, help="experiment YAML, e.g. configs/fgd_ae_tiny.yaml")
    ap.add_argument("--resume", help="trainer checkpoint (RUN/checkpoints/last.pt) to continue exactly")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    prepare_data(cfg)
    summary = train_from_config(cfg, resume=args.resume)
    print(f"fgd_ae: done at iteration {summary['iteration']}; best {summary['best']}; "
          f"checkpoint {summary.get('best_checkpoint') or summary.get('last_checkpoint')}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
