"""The training loop shared by every stage (RVQ-VAE, generators, FGD autoencoder).

A stage subclasses ``BaseTrainer`` and implements the model, the data and one training step; the base class owns
device, seeding, optimiser and learning-rate schedule, gradient clipping, bf16 autocast, validation schedule,
best-checkpoint selection, atomic checkpoints, exact resume, DDP and logging.

Subclass hooks (called in this order by ``__init__``)::

    build_model() -> nn.Module                       # on CPU; the base moves it to the device (and wraps it in DDP)
    build_datasets() -> {"train": Dataset, "val": Dataset | None}
    train_dataloader() -> DataLoader                 # optional override; the default is resumable (see below)
    param_groups() -> iterable of params / dicts     # optional override (per-group lr, frozen parts)
    train_step(batch) -> {"loss": tensor, ...}       # batch already on the device; other entries are logged
    validate() -> {"metric": float, ...}             # rank 0 only, in eval mode under no_grad; use self.model
    extra_state() / load_extra_state(state)          # optional: state outside model.state_dict() (RVQ EMA stats)
    set_train_mode()                                 # optional: keep frozen submodules in eval mode

In ``train_step`` call the network through ``self.forward_model(...)`` (or ``self.ddp_model``) so that DDP
synchronises gradients; any method can be reached with ``self.forward_model(x, method="loss")``. In ``validate``
use ``self.model`` (never the DDP wrapper: validation runs on rank 0 only).

Configuration keys read here (everything else in the config belongs to the stage)::

    seed: 42                    # seed_everything(seed) before build_model; ranks > 0 then reseed with seed + rank
    device: auto                # auto | cpu | cuda (utils.device.get_device); under torchrun cuda:<LOCAL_RANK>
    amp: none                   # none | bf16 (torch.autocast on CUDA or CPU; validation stays float32)
    batch_size: 128             # per process
    num_workers: 0              # default: data.num_workers if present, else 0
    drop_last: true             # drop the incomplete last batch of every epoch (upstream does)
    shuffle: true
    log_period: 10              # iterations between training-loss records
    logging: [console, tensorboard, jsonl]   # or a mapping, see utils.logging
    val_period: 20              # 0 disables validation
    val_unit: epoch             # epoch | iter: unit of val_period and save_period
    val_before_train: false     # also validate before the first step (upstream validates at epoch 0)
    best_metric: null           # key of validate()'s dict selecting best.pt (on the val split); null: no best.pt
    best_mode: min              # min | max
    save_period: 0              # also keep checkpoints/<unit>_<n>.pt every n units (0: only last.pt and best.pt)
    ddp_find_unused_parameters: false
    solver:
      opt: adam                 # adam | adamw
      impl: auto                # auto (torch's per-device default) | for_loop | foreach | fused (~1 ulp off)
      lr: 2.0e-4
      betas: [0.9, 0.999]
      eps: 1.0e-8
      weight_decay: 0.0
      grad_norm: 1.0            # max total gradient norm; 0 or null: no clipping
      epochs: 1000              # and/or
      iterations: null          # training stops at whichever limit comes first; at least one is required
      lr_policy: constant       # constant | step | multistep
      decay_epochs: 500         # step: lr * decay_rate ** (epoch // decay_epochs), per epoch (timm StepLR-like)
      decay_rate: 0.1
      milestones: [200000]      # multistep: lr * gamma ** (number of milestones <= iteration), per iteration
      gamma: 0.05
      warmup_iters: 0           # any policy: lr * (i + 1) / (warmup_iters + 1) for update i < warmup_iters

Learning-rate convention: the update with 0-based index ``i`` (``self.iteration`` before it) in epoch ``e``
(0-based) uses ``lr_at(e, i)``.

Checkpoints (``<run_dir>/checkpoints/{last,best,<unit>_<n>}.pt``, written atomically by rank 0) hold: model,
extra (subclass state), optimizer, scheduler, epoch, iteration, batch_in_epoch, rng (every rank's under DDP), best,
config, seed, world_size, metrics. ``resume(path)`` restores all of it; with the default loader the data order is a
function of (seed, epoch) and the number of batches already done, so a resumed CPU run ends bit-identical to an
uninterrupted one. Resuming into the same run folder drops the interrupted run's ``metrics.jsonl`` records of steps
after the checkpoint (they are logged again), and every start removes temporary checkpoint files that a killed write
left in the run folder (``utils.io.remove_stale_temp_files``; both are logged).

The pieces live beside this loop: ``trainers.distributed`` (process group, DDP wrapping), ``trainers.optim``
(``build_optimizer``, ``LRSchedule``) and ``trainers.checkpointing`` (format, atomic files, ``ResumableSampler``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainers import distributed
from trainers.checkpointing import (
    CHECKPOINT_FORMAT,
    ResumableSampler,
    load_trainer_checkpoint,
    rng_state_for_rank,
    write_checkpoint_files,
)
from trainers.optim import apply_optimizer_impl, build_optimizer, build_scheduler
from utils.config import ConfigError, instantiate_from_config, to_container
from utils.device import native_bf16, rng_state, seed_everything, set_rng_state, torch_threads
from utils.io import remove_stale_temp_files, save_json
from utils.logging import Logger, build_logger, progress
from utils.runs import create_run_dir

VAL_UNITS = ("epoch", "iter")


def window_dataset(cfg: DictConfig, split: str, default: Callable[[Any, str], Dataset]) -> Dataset:
    """A stage's dataset of ``split``: ``cfg.dataset`` ({target, params}, called with data_cfg and split) when set,
    else ``default(cfg.data, split)``."""
    if cfg.get("dataset"):
        return instantiate_from_config(cfg.dataset, "dataset", data_cfg=cfg.get("data"), split=split)
    if cfg.get("data") is None:
        raise ConfigError("config has neither 'data' (configs/data/*.yaml) nor 'dataset'")
    return default(cfg.data, split)


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors inside dicts/lists/tuples moved to ``device``; everything else (ids, paths) left as is."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [move_to_device(v, device, non_blocking) for v in obj]
        return type(obj)(moved) if isinstance(obj, list) else tuple(moved)
    return obj


# ----------------------------------------------------------------------------------------------- trainer
class BaseTrainer:
    """Shared loop; see the module docstring for the hooks and the config keys."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None, logger: Logger | None = None) -> None:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(cfg)
        self.cfg = cfg
        if "solver" not in cfg:
            raise ConfigError("config has no 'solver' node (opt, lr, epochs/iterations, ...)")
        self.solver = to_container(cfg.solver)
        self.dist = distributed.init_distributed(str(cfg.get("device", "auto")))
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.dist.is_main
        self.device = distributed.process_device(self.dist, str(cfg.get("device", "auto")))
        self.seed = int(cfg.get("seed", 0))

        # Run folder and logger: rank 0 only writes.
        self.run_dir: Path | None = None
        if self.is_main:
            self.run_dir = Path(run_dir) if run_dir is not None else create_run_dir(cfg)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger if logger is not None else build_logger(
            cfg.get("logging"), self.run_dir, self.rank, config=to_container(cfg)
        )  # fmt: skip
        if self.is_main:
            self._remove_stale_temp_files()

        self._read_schedule_keys()
        self.amp_dtype = self._resolve_amp()

        # Counters and best-metric bookkeeping (all restored by resume()).
        self.epoch = 0  # epochs completed
        self.iteration = 0  # optimiser updates done
        self.batch_in_epoch = 0  # updates done inside the current epoch
        self.best: dict[str, Any] = {"metric": self.best_metric, "mode": self.best_mode, "value": None,
                                     "epoch": None, "iteration": None}  # fmt: skip
        self.last_metrics: dict[str, float] = {}
        self.resumed_from: str | None = None
        self._last_saved_iteration: int | None = None
        self._improved = False

        seed_everything(self.seed)
        model = self.build_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}.build_model() must return an nn.Module, got {type(model).__name__}")
        self.model = model.to(self.device)
        self.ddp_model: nn.Module = distributed.wrap_model(
            self.model, self.dist, self.device, bool(cfg.get("ddp_find_unused_parameters", False))
        )
        if self.dist.enabled:
            seed_everything(self.seed + self.rank)  # different noise/dropout per rank; weights came from rank 0

        datasets = self.build_datasets()
        if "test" in datasets:
            raise ValueError("build_datasets() returned a 'test' split: validation and model selection use 'val'; "
                             "the test split is for test.py only")  # fmt: skip
        if "train" not in datasets:
            raise ValueError(f"build_datasets() must return a 'train' dataset, got keys {sorted(datasets)}")
        self.train_dataset = datasets["train"]
        self.val_dataset = datasets.get("val")
        self._loader_generator = torch.Generator()
        self.train_loader = self.train_dataloader()

        self.optimizer = build_optimizer(self.param_groups(), self.solver)
        self.scheduler = build_scheduler(self.optimizer, self.solver)
        self.logger.log_text(
            f"{type(self).__name__}: device {self.device}, world size {self.world_size}, "
            f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} trainable parameters, "
            f"{len(self.train_loader)} batches per epoch, run dir {self.run_dir}"
        )

    # ------------------------------------------------------------------ hooks for subclasses
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_datasets(self) -> dict[str, Dataset | None]:
        raise NotImplementedError

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Metrics on the val split. The default has none."""
        return {}

    def param_groups(self) -> Iterable[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def extra_state(self) -> dict[str, Any]:
        """Training state outside ``model.state_dict()`` that resume must restore (e.g. RVQ-VAE quantiser EMA
        statistics kept out of the released state-dict layout). Tensors/numbers/containers only."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of ``extra_state``; called by ``resume`` after the model and optimiser are restored."""

    def collate_fn(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)

    def train_dataloader(self) -> DataLoader:
        """Resumable loader: ResumableSampler (sharded under DDP) + a dedicated generator for worker seeds."""
        cfg = self.cfg
        self.sampler = ResumableSampler(self.train_dataset, num_replicas=self.world_size, rank=self.rank,
                                        shuffle=bool(cfg.get("shuffle", True)), seed=self.seed)  # fmt: skip
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            drop_last=bool(cfg.get("drop_last", True)),
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
            generator=self._loader_generator,  # never the global RNG: resume must not shift it
        )

    def set_train_mode(self) -> None:
        """Put the trained model in train mode (override to keep frozen parts in eval mode)."""
        self.model.train()

    # ------------------------------------------------------------------ helpers for subclasses
    def forward_model(self, *args: Any, method: str = "forward", **kwargs: Any) -> Any:
        """Call ``self.model.<method>(...)`` through DDP (gradients are synchronised); plain call otherwise."""
        return self.ddp_model(*args, method=method, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        distributed.barrier(self.dist)

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    def _remove_stale_temp_files(self) -> None:
        """Delete the temporary files of atomic writes that a killed run left in this run's folders (a kill -9
        during a checkpoint write leaves a full-size ``.last.pt.<random>.tmp``). This trainer owns these folders
        from now on, so no live writer's file can be among them."""
        assert self.run_dir is not None
        removed = [r for d in (self.run_dir, self.checkpoint_dir) for r in remove_stale_temp_files(d)]
        if removed:
            mb = sum(size for _, size in removed) / 1e6
            names = ", ".join(str(p.relative_to(self.run_dir)) for p, _ in removed)
            self.logger.log_text(f"removed {len(removed)} temporary file(s) ({mb:.1f} MB) left by an interrupted "
                                 f"write: {names}")  # fmt: skip

    # ------------------------------------------------------------------ config
    def _read_schedule_keys(self) -> None:
        cfg, s = self.cfg, self.solver
        self.batch_size = int(cfg.get("batch_size", 0) or 0)
        if self.batch_size <= 0:
            raise ConfigError("batch_size (per process) must be a positive integer")
        data_workers = cfg.data.get("num_workers", 0) if "data" in cfg and cfg.data is not None else 0
        self.num_workers = int(cfg.get("num_workers", data_workers) or 0)
        self.max_epochs = int(s["epochs"]) if s.get("epochs") else None
        self.max_iterations = int(s["iterations"]) if s.get("iterations") else None
        if self.max_epochs is None and self.max_iterations is None:
            raise ConfigError("solver.epochs or solver.iterations must be set (a positive integer)")
        gn = s.get("grad_norm")
        self.grad_norm = float(gn) if gn else None
        self.log_period = max(1, int(cfg.get("log_period", 10) or 10))
        self.val_period = int(cfg.get("val_period", 0) or 0)
        self.val_unit = str(cfg.get("val_unit", "epoch"))
        if self.val_unit not in VAL_UNITS:
            raise ConfigError(f"val_unit must be one of {list(VAL_UNITS)}, got {self.val_unit!r}")
        self.val_before_train = bool(cfg.get("val_before_train", False))
        self.save_period = int(cfg.get("save_period", 0) or 0)
        bm = cfg.get("best_metric")
        self.best_metric = str(bm) if bm else None
        self.best_mode = str(cfg.get("best_mode", "min"))
        if self.best_mode not in ("min", "max"):
            raise ConfigError(f"best_mode must be min or max, got {self.best_mode!r}")

    def _resolve_amp(self) -> torch.dtype | None:
        amp = str(self.cfg.get("amp", "none") or "none").lower()
        if amp not in ("none", "bf16"):
            raise ConfigError(f"amp must be 'none' or 'bf16', got {amp!r}")
        if amp == "none":
            return None
        if self.device.type not in ("cuda", "cpu"):
            self.logger.log_text(f"amp=bf16 ignored on {self.device.type}: training in float32")
            return None
        if not native_bf16(self.device):
            self.logger.log_text(f"amp=bf16 on a {self.device.type} without bf16 hardware (a CPU without "
                                 "avx512_bf16/AMX): expect it no faster than float32")  # fmt: skip
        return torch.bfloat16

    # ------------------------------------------------------------------ loop
    def _finished(self) -> bool:
        return (self.max_epochs is not None and self.epoch >= self.max_epochs) or (
            self.max_iterations is not None and self.iteration >= self.max_iterations
        )

    def _epoch_batches(self) -> Iterable[Any]:
        """This epoch's batches, starting after the ``batch_in_epoch`` already trained on."""
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self._loader_generator.manual_seed(self.seed * 100_003 + self.epoch)  # worker seeds: f(seed, epoch)
        if isinstance(sampler, ResumableSampler):
            sampler.set_start(self.batch_in_epoch * self.batch_size)
            return self.train_loader
        # A custom loader: correct but slower, the skipped batches are still loaded.
        return itertools.islice(self.train_loader, self.batch_in_epoch, None)

    def fit(self, until_iteration: int | None = None) -> dict[str, Any]:
        """Train to the configured limit (or stop early at ``until_iteration``, saving ``last.pt``).

        ``num_threads`` (config, optional) sets torch's CPU threads for this call only: small models on a busy CPU
        train faster on fewer threads, and a later stage in the same process gets its threads back."""
        with torch_threads(self.cfg.get("num_threads")):
            return self._fit(until_iteration)

    def _fit(self, until_iteration: int | None) -> dict[str, Any]:
        if self.val_before_train and self.val_period > 0 and self.iteration == 0 and self.resumed_from is None:
            self._validate_and_checkpoint()
        self.set_train_mode()
        sums: dict[str, torch.Tensor] = {}
        count, t0 = 0, time.perf_counter()
        while not self._finished():
            bar = progress(self._epoch_batches(), desc=f"epoch {self.epoch}", rank=self.rank, only_tty=True)
            for batch in bar:
                out = self._train_one(batch)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if self.iteration % self.log_period == 0:
                    self._log_train(sums, count, time.perf_counter() - t0)
                    sums, count, t0 = {}, 0, time.perf_counter()
                if self.val_unit == "iter" and self.val_period > 0 and self.iteration % self.val_period == 0:
                    self._validate_and_checkpoint()
                if self.max_iterations is not None and self.iteration >= self.max_iterations:
                    break
                if until_iteration is not None and self.iteration >= until_iteration:
                    bar.close()
                    self.save_checkpoint()
                    return self.summary()
            else:  # the epoch ran to its end
                bar.close()
                self.epoch += 1
                self.batch_in_epoch = 0
                if self.val_unit == "epoch" and self.val_period > 0 and self.epoch % self.val_period == 0:
                    self._validate_and_checkpoint()
                continue
            bar.close()
            break  # iteration limit inside an epoch
        if self._last_saved_iteration != self.iteration:
            self.save_checkpoint()
        self.logger.log_text(f"training done: epoch {self.epoch}, iteration {self.iteration}, best {self.best}")
        return self.summary()

    def _train_one(self, batch: Any) -> dict[str, torch.Tensor]:
        lrs = self.scheduler.apply(self.epoch, self.iteration)
        batch = move_to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        with self.autocast():
            out = self.train_step(batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(f"{type(self).__name__}.train_step must return a dict with a 'loss' tensor")
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        logged = {k: v.detach().float() for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}
        if self.grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            logged["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.grad_norm).detach().float()
        self.optimizer.step()
        self.iteration += 1
        self.batch_in_epoch += 1
        logged["lr"] = torch.tensor(lrs[0])
        return logged

    def _log_train(self, sums: Mapping[str, Any], count: int, seconds: float) -> None:
        if count == 0:
            return
        scalars = {f"train/{k}": float(v) / count for k, v in sums.items()}
        if not math.isfinite(scalars.get("train/loss", 0.0)):
            raise FloatingPointError(f"training loss is {scalars['train/loss']} at iteration {self.iteration}")
        scalars["train/epoch"] = float(self.epoch)
        scalars["train/sec_per_it"] = seconds / count
        self.logger.log_scalars(scalars, self.iteration)

    # ------------------------------------------------------------------ validation + checkpoints
    def run_validation(self) -> dict[str, float]:
        """``validate()`` on rank 0 in eval mode without gradients; updates ``self.best``. Other ranks get {}."""
        metrics: dict[str, float] = {}
        improved = False
        if self.is_main:
            self.model.eval()
            with torch.no_grad():
                raw = self.validate() or {}
            self.set_train_mode()
            metrics = {k: float(v) for k, v in raw.items()}
            self.last_metrics = metrics
            if metrics:
                self.logger.log_scalars({f"val/{k}": v for k, v in metrics.items()}, self.iteration)
            improved = self._update_best(metrics)
        self._improved = improved
        return metrics

    def _update_best(self, metrics: Mapping[str, float]) -> bool:
        if self.best_metric is None or not metrics:
            return False
        if self.best_metric not in metrics:
            raise ConfigError(f"best_metric {self.best_metric!r} is not among validate()'s metrics {sorted(metrics)}")
        v = metrics[self.best_metric]
        old = self.best["value"]
        better = math.isfinite(v) and (old is None or (v < old if self.best_mode == "min" else v > old))
        if better:
            self.best.update(value=v, epoch=self.epoch, iteration=self.iteration)
        return better

    def _validate_and_checkpoint(self) -> None:
        self.run_validation()
        self.save_checkpoint(best=self._improved)

    def checkpoint_state(self, rng_per_rank: list[dict] | None = None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "extra": self.extra_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "world_size": self.world_size,
            "rng": rng_state(),
            "rng_per_rank": rng_per_rank,
            "best": dict(self.best),
            "metrics": dict(self.last_metrics),
            "config": to_container(self.cfg),
        }

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Write ``last.pt`` (and ``best.pt`` / a periodic copy when due). Call on every rank (RNG states are
        gathered); only rank 0 writes. Returns the path of ``last.pt`` on rank 0."""
        rng_all = distributed.gather_rng_states(self.dist)
        path = None
        if self.is_main:
            state = self.checkpoint_state(rng_all)
            ckdir = self.checkpoint_dir
            n = self.epoch if self.val_unit == "epoch" else self.iteration
            boundary = self.val_unit == "iter" or self.batch_in_epoch == 0
            periodic = self.save_period > 0 and n > 0 and n % self.save_period == 0 and boundary
            path = write_checkpoint_files(state, ckdir, best=best,
                                          periodic_name=f"{self.val_unit}_{n:07d}" if periodic else None)
            if best:
                save_json({**self.best, "checkpoint": str(ckdir / "best.pt")}, self.run_dir / "best.json")
                self.logger.log_text(f"new best {self.best_metric}={self.best['value']:.6g} -> {ckdir / 'best.pt'}")
        self._last_saved_iteration = self.iteration
        self.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        """Restore model, optimiser, scheduler, counters, best metric and RNG from a checkpoint of this trainer."""
        ckpt = load_trainer_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        apply_optimizer_impl(self.optimizer, self.solver)
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.load_extra_state(ckpt.get("extra") or {})
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        saved_best = dict(ckpt.get("best") or {})
        if saved_best.get("metric") == self.best_metric:
            self.best.update(saved_best)
        self.last_metrics = dict(ckpt.get("metrics") or {})
        if int(ckpt.get("seed", self.seed)) != self.seed:
            self.logger.log_text(f"resume: checkpoint seed {ckpt['seed']} != config seed {self.seed}; the data "
                                 "order follows the config seed")  # fmt: skip
        state, exact = rng_state_for_rank(ckpt, self.rank, self.world_size)
        if not exact:
            self.logger.log_text(f"resume: world size changed {ckpt.get('world_size')} -> {self.world_size}; "
                                 "the run continues but is not bit-identical")  # fmt: skip
        set_rng_state(state)
        self.resumed_from = str(path)
        self._last_saved_iteration = self.iteration
        # A run killed after this checkpoint logged later steps into the same metrics.jsonl; this run logs them
        # again, so the old records are dropped (the file then reads as one uninterrupted run).
        dropped = self.logger.discard_after(self.iteration)
        note = f"; dropped {dropped} logged record(s) of later steps (the interrupted run's)" if dropped else ""
        note += ("; lines of this log above this one with a later step are the interrupted run's (superseded; "
                 "metrics.jsonl and TensorBoard hold only this run's)")
        self.logger.log_text(f"resumed from {path}: epoch {self.epoch}, iteration {self.iteration}{note}")

    def summary(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best": dict(self.best),
            "last_metrics": dict(self.last_metrics),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
        }

    def close(self) -> None:
        """Close the logger and leave the process group this trainer created."""
        self.logger.close()
        distributed.close_distributed(self.dist)

    def __enter__(self) -> BaseTrainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

