"""Generator training (latent shortcut model and the DDIM baseline) and the test-split run.

One trainer for every generator: the class comes from ``model.generator`` ({name|target, params}, see
models.generators), so shortcut vs diffusion is purely a config choice. Per batch (spec §7.1): axis-angle poses +
trans_v -> frozen per-part RVQ-VAEs (``MotionCodec``: rot6d, normalise, map2latent, ÷ latent_scale) -> latents
(B,32,384); seed = the first ``pre_frames`` latents; condition = onset+amplitude audio + word ids;
``generator.loss(...)``. Optimiser, schedule, clipping, bf16, DDP, checkpoints and exact resume are BaseTrainer's.

Validation (every ``val_period`` epochs) runs on the **val** split (never test): whole files, windowed generation
(models.windowed) with a fixed generation seed, then a fresh utils.evaluate.Evaluator: FGD (when
``val.fgd_autoencoder`` is set), BC, L1div, plus ``latent_fd`` (Fréchet distance between generated and ground-truth
RVQ latents, needs no autoencoder). ``best_metric: fgd`` falls back to ``val.fallback_metric`` when no FGD
autoencoder is configured.

Config keys (beyond BaseTrainer's; see configs/generator_base.yaml)::

    rvq: {upper, hands, lower_trans}     # RVQ-VAE checkpoints (released net_300000_*.pth or ours); globs allowed
    latent_scale: 5                      # upstream vqvae_latent_scale
    sync_bn: true                        # under DDP on CUDA: SyncBatchNorm (as upstream)
    pre_frames: 4                        # seed latents
    model:
      generator: {name: shortcut|diffusion | target: ..., params: {modality_encoder, denoiser, objective, sampler}}
      word_table: vocab                  # vocab: FastText rows of the data vocabulary | random (vocab-sized table)
      init_from: null                    # a released upstream generator checkpoint (v1/v2 layout), loaded strictly
    inference:
      n_steps: null                      # null: the generator's default (shortcut 2, DDIM 20)
      guidance: null                     # null: the generator's default (shortcut 2.0, DDIM 1.5)
      seed: 0                            # generation seed for validation/test (a private torch.Generator)
      copy_gt_jaw: true                  # reference: jaw (66:69) copied from GT (the jaw is never generated)
      windows: {audio_indexing, drop_tail, seed_from_gt, seed_fallback, ...}   # models.windowed.WindowOptions
    val: {split: val, max_files: null, fgd_autoencoder: null, fallback_metric: latent_fd, fallback_mode: min,
          protocol: emage2024, body_model: null}
    test: {split: test, n_boot: 1000, body_model: null, fgd_autoencoder: null (defaults to val's), protocol: null}
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from dataloaders.cache import data_root, get_vocab
from dataloaders.datasets import GeneratorWindowDataset, WholeFileDataset
from dataloaders.stats import OFFICIAL_FILES, Stats, load_stats
from models.checkpoints import load_generator_checkpoint
from models.generators import LatentGenerator, build_generator
from models.motion_codec import MotionCodec
from models.windowed import WindowOptions, generate_windowed
from trainers.base import CHECKPOINT_FORMAT, BaseTrainer
from utils.config import ConfigError, instantiate_from_config, to_container
from utils.device import get_device
from utils.io import load_torch, save_json, save_npy, save_npz
from utils.metrics import frechet_distance
from utils.paths import resolve_path

RVQ_PARTS = ("upper", "hands", "lower_trans")


# ----------------------------------------------------------------------------------------------------------------
# Building blocks shared by training and test
# ----------------------------------------------------------------------------------------------------------------
def resolve_checkpoint_path(p: str, what: str) -> str:
    """A file path relative to the repo root; a glob pattern picks its newest match (e.g. timestamped run dirs)."""
    path = str(resolve_path(p))
    if any(c in path for c in "*?["):
        matches = sorted(glob.glob(path), key=os.path.getmtime)
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {path}")
        return matches[-1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} not found")
    return path


def build_codec(cfg: DictConfig, stats: Stats, device: torch.device | str = "cpu") -> MotionCodec:
    """The frozen MotionCodec from ``cfg.rvq.{upper,hands,lower_trans}`` and the data statistics."""
    if "rvq" not in cfg or cfg.rvq is None:
        raise ConfigError("config has no 'rvq' node with the RVQ-VAE checkpoint paths {upper, hands, lower_trans}")
    paths = {}
    for part in RVQ_PARTS:
        p = cfg.rvq.get(part)
        if not p:
            raise ConfigError(f"rvq.{part}: RVQ-VAE checkpoint path missing")
        paths[part] = resolve_checkpoint_path(str(p), f"rvq.{part}")
    codec = MotionCodec.from_paths(paths, stats, latent_scale=float(cfg.get("latent_scale", 5.0)))
    codec.paths = paths
    return codec.to(device)


def build_generator_from_config(cfg: DictConfig, load_init: bool = True) -> LatentGenerator:
    """The generator of ``cfg.model.generator``; the word table comes from the data vocabulary (``word_table``)."""
    node = to_container(cfg.model.generator)
    if not isinstance(node, dict) or "params" not in node:
        raise ConfigError("model.generator must be {name|target, params: {modality_encoder, denoiser, ...}}")
    params = dict(node["params"])
    me = dict(params.get("modality_encoder") or {})
    me_params = dict(me.get("params") or {})
    if "word_weights" not in me_params and "vocab_size" not in me_params:
        mode = str(cfg.model.get("word_table", "vocab"))
        vocab = get_vocab(cfg.data, data_root(cfg.data))
        if vocab is None:
            raise ConfigError("the data config has no vocabulary (word_rep: none); set "
                              "model.generator.params.modality_encoder.params.vocab_size")  # fmt: skip
        if mode == "vocab":
            if vocab.embeddings is None:
                raise ConfigError("data vocabulary has no embeddings; set model.word_table=random")
            me_params["word_weights"] = np.asarray(vocab.embeddings, np.float32)
        elif mode == "random":
            me_params["vocab_size"] = vocab.n_words
        else:
            raise ConfigError(f"model.word_table must be 'vocab' or 'random', got {mode!r}")
    extra = {k: me_params.pop(k) for k in ("word_weights",) if k in me_params}
    params["modality_encoder"] = instantiate_from_config(
        {"target": me.get("target", "models.modality_encoder.ModalityEncoder"), "params": me_params},
        "model.generator.params.modality_encoder", **extra)  # fmt: skip
    node["params"] = params
    gen = build_generator(node, "model.generator")
    init = cfg.model.get("init_from")
    if load_init and init:
        load_generator_checkpoint(gen, resolve_checkpoint_path(str(init), "model.init_from"))
    return gen


def window_options(cfg: DictConfig) -> WindowOptions:
    inf = cfg.get("inference") or {}
    node = to_container(inf.get("windows")) or {}
    data = cfg.get("data") or {}
    node.setdefault("fps", int(data.get("pose_fps", 30)))
    node.setdefault("audio_sr", int(data.get("audio_sr", 16000)))
    node.setdefault("seed_latents", int(cfg.get("pre_frames", 4)))
    return WindowOptions.from_config(node)


def _sampler_settings(model: LatentGenerator, n_steps: int | None, guidance: float | None) -> dict[str, Any]:
    s = model.sampler
    steps = int(n_steps if n_steps is not None else s.default_steps)
    w = float(guidance if guidance is not None else s.default_guidance)
    return {"sampler": type(s).__name__, "n_steps": steps, "guidance": w,
            "nfe_per_window": steps, "nfe_rows_per_window": steps * (2 if w > 1.0 else 1)}  # fmt: skip


@torch.no_grad()
def generate_file(
    model: LatentGenerator,
    codec: MotionCodec,
    item: Mapping[str, Any],
    opts: WindowOptions,
    device: torch.device,
    n_steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    copy_gt_jaw: bool = True,
) -> dict[str, Any]:
    """Generate one whole file (a WholeFileDataset item). Returns poses (n,165) np, latents, timing and windows."""
    pose = item["pose"].unsqueeze(0).to(device)
    t0 = time.perf_counter()
    rng = torch.Generator(device=device).manual_seed(int(seed))
    out = generate_windowed(
        model, codec, item["audio"].unsqueeze(0).to(device), item["word"].unsqueeze(0).to(device), pose,
        item["trans_v"].unsqueeze(0).to(device), opts=opts, n_steps=n_steps, guidance=guidance, rng=rng,
        jaw=pose[..., 66:69] if copy_gt_jaw else None,
    )  # fmt: skip
    poses = out.poses[0].float().cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return {"poses": poses, "latents": out.latents[0].float().cpu().numpy(),
            "gt_latents": None if out.gt_latents is None else out.gt_latents[0].float().cpu().numpy(),
            "n_frames": out.n_frames, "n_windows": out.n_windows, "nfe": out.nfe, "seconds": seconds}  # fmt: skip


def gt_copied_fields(opts: WindowOptions, copy_gt_jaw: bool) -> list[str]:
    """Prediction fields that come from the ground truth (reference test substitution, spec §7.3)."""
    fields = ["expressions", "trans"]
    if copy_gt_jaw:
        fields.append("jaw")
    if opts.seed_from_gt:
        fields.append("seed")
    return fields


def _load_fgd(path: str | None) -> tuple[Any, str] | None:
    if not path:
        return None
    from models.fgd_autoencoder import load_fgd_autoencoder

    p = resolve_checkpoint_path(str(path), "FGD autoencoder")
    return load_fgd_autoencoder(p, map_location="cpu"), p


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------
class GenerativeTrainer(BaseTrainer):
    """Trains ``model.generator`` on frozen RVQ latents; see the module docstring for the config."""

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
        self.inf_steps = inf.get("n_steps")
        self.inf_guidance = inf.get("guidance")
        self.inf_seed = int(inf.get("seed", 0) or 0)
        self.copy_gt_jaw = bool(inf.get("copy_gt_jaw", True))
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
        self.stats = load_stats(self.cfg.data)
        self.codec = build_codec(self.cfg, self.stats, self.device)  # frozen, outside self.model
        self.pre_frames = int(self.cfg.get("pre_frames", 4))
        model = build_generator_from_config(self.cfg)
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
        keep = ("pose", "trans_v", "audio", "word")  # what a training step uses
        return torch.utils.data.default_collate([{k: it[k] for k in keep} for it in items])

    def set_train_mode(self) -> None:
        self.model.train()
        self.codec.eval()

    def latents(self, pose: torch.Tensor, trans_v: torch.Tensor) -> torch.Tensor:
        """Generator-scale latents (B,T/4,384) from the frozen codec, in float32 (outside autocast)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.codec.encode(pose.float(), trans_v.float())

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.latents(batch["pose"], batch["trans_v"])
        seed = z[:, : self.pre_frames]
        return self.forward_model(z, batch["audio"], batch["word"], seed, method="loss")

    def validate(self) -> dict[str, float]:
        from utils.body_model import get_fk
        from utils.evaluate import Evaluator

        ds = self.val_dataset
        n_files = len(ds)
        max_files = self.val_cfg.get("max_files")
        if max_files:
            n_files = min(n_files, int(max_files))
        fgd_model = None
        if self._fgd is not None:
            fgd_model = self._fgd[0].to(self.device)
        ev = Evaluator(fgd_model, mean_vel=np.asarray(self.stats.mean_vel), fk=get_fk(self.val_cfg.get("body_model")),
                       protocol=str(self.val_cfg.get("protocol", "emage2024")))  # fresh metric state every time
        gen_lat, gt_lat = [], []
        for i in range(n_files):
            item = ds[i]
            res = generate_file(self.model, self.codec, item, self.window_opts, self.device, self.inf_steps,
                                self.inf_guidance, self.inf_seed + i, self.copy_gt_jaw)  # fmt: skip
            gt = item["pose"][: res["n_frames"]].numpy()
            ev.add(res["poses"], gt, betas=item["beta"][0].numpy(), audio=item["wav_path"], id=item["id"])
            if res["gt_latents"] is not None:
                m = min(len(res["latents"]), len(res["gt_latents"]))
                gen_lat.append(res["latents"][:m])
                gt_lat.append(res["gt_latents"][:m])
        metrics = {k: v for k, v in ev.compute().items() if k in ("fgd", "bc", "l1div", "bc_gt", "l1div_gt")
                   and v is not None}  # fmt: skip
        if gen_lat:
            metrics["latent_fd"] = float(frechet_distance(np.concatenate(gen_lat), np.concatenate(gt_lat)))
        return metrics


# ----------------------------------------------------------------------------------------------------------------
# Test split
# ----------------------------------------------------------------------------------------------------------------
def load_trained_generator(cfg: DictConfig, ckpt_path: str | os.PathLike, device: torch.device) -> LatentGenerator:
    """The configured generator with weights from one of our trainer checkpoints or a released upstream file."""
    model = build_generator_from_config(cfg, load_init=False)
    obj = load_torch(ckpt_path, map_location="cpu")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        model.load_state_dict(obj["model"], strict=True)
    else:
        load_generator_checkpoint(model, ckpt_path)
    return model.to(device).eval()


def _default_test_dir(ckpt: Path) -> Path:
    base = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return base / f"test_{ckpt.stem}"


def run_test(cfg: DictConfig, ckpt_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict:
    """Generate the **test** split once (whole files) with ``ckpt_path`` and evaluate it.

    Writes ``res_<id>.npz`` (betas GT, poses (n,165) predicted, expressions GT, trans GT, model, gender,
    mocap_frame_rate, gt_copied) and ``gt_<id>.npz`` per file, then ``metrics.json`` (utils.evaluate's folder report
    plus checkpoint path/sha256, generator settings, window options and timing). Returns the report.
    """
    from utils.evaluate import evaluate_folder, sha256_file

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    ckpt = Path(resolve_checkpoint_path(str(ckpt_path), "checkpoint"))
    out = Path(out_dir) if out_dir is not None else _default_test_dir(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    device = get_device(str(cfg.get("device", "auto")))
    test_cfg = cfg.get("test") or OmegaConf.create({})
    val_cfg = cfg.get("val") or OmegaConf.create({})
    stats = load_stats(cfg.data)
    codec = build_codec(cfg, stats, device)
    model = load_trained_generator(cfg, ckpt, device)
    opts = window_options(cfg)
    inf = cfg.get("inference") or {}
    n_steps, guidance = inf.get("n_steps"), inf.get("guidance")
    seed, copy_jaw = int(inf.get("seed", 0) or 0), bool(inf.get("copy_gt_jaw", True))
    copied = gt_copied_fields(opts, copy_jaw)
    ds = WholeFileDataset(cfg.data, str(test_cfg.get("split", "test")))
    from tqdm.auto import tqdm

    gen_seconds, motion_frames, wavs, per_file = 0.0, 0, set(), []
    for i in tqdm(range(len(ds)), desc="test", unit="file"):
        item = ds[i]
        res = generate_file(model, codec, item, opts, device, n_steps, guidance, seed + i, copy_jaw)
        n = res["n_frames"]
        common = {
            "betas": item["beta"][0].numpy(), "expressions": item["facial"][:n].numpy(),
            "trans": item["trans"][:n].numpy(), "model": np.array("smplx2020"), "gender": np.array("neutral"),
            "mocap_frame_rate": np.array(30),
        }  # fmt: skip
        save_npz(out / f"res_{item['id']}.npz", poses=res["poses"].astype(np.float32),
                 gt_copied=np.array(copied, dtype=np.str_), **common)  # fmt: skip
        save_npz(out / f"gt_{item['id']}.npz", poses=item["pose"][:n].numpy(), **common)
        gen_seconds += res["seconds"]
        motion_frames += n
        wavs.add(str(Path(item["wav_path"]).parent))
        per_file.append({"id": item["id"], "frames": n, "windows": res["n_windows"], "seconds": res["seconds"]})
    if len(wavs) != 1:
        raise ValueError(f"test audio lives in several folders {sorted(wavs)}; expected one wave16k folder")
    stats_dir = cfg.data.get("stats_dir")
    if stats_dir:
        mean_vel = str(resolve_path(stats_dir) / OFFICIAL_FILES["mean_vel"])
    else:
        mean_vel = str(save_npy(np.asarray(stats.mean_vel, np.float32), out / OFFICIAL_FILES["mean_vel"]))
    fgd = test_cfg.get("fgd_autoencoder") or val_cfg.get("fgd_autoencoder")
    protocol = str(test_cfg.get("protocol") or val_cfg.get("protocol", "emage2024"))
    report = evaluate_folder(
        out, out, audio_dir=wavs.pop(), protocol=protocol,
        fgd_ckpt=resolve_checkpoint_path(str(fgd), "FGD autoencoder") if fgd else None,
        body_model=test_cfg.get("body_model"), mean_vel=mean_vel, out_dir=None,
        n_boot=int(test_cfg.get("n_boot", 1000)), seed=int(test_cfg.get("boot_seed", 0)), device=str(device),
        progress=False,
    )  # fmt: skip
    motion_s = motion_frames / float(opts.fps)
    report["gt_copied"] = copied
    report["generation"] = {
        "checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)},
        "generator": str(cfg.model.generator.get("name") or cfg.model.generator.get("target")),
        **_sampler_settings(model, n_steps, guidance),
        "generation_seed": seed,
        "seed_from_gt": opts.seed_from_gt,
        "drop_tail": opts.drop_tail,
        "copy_gt_jaw": copy_jaw,
        "windows": opts.to_dict(),
        "rvq": dict(codec.paths),
        "latent_scale": codec.latent_scale,
        "device": str(device),
    }
    report["timing"] = {"generation_seconds": gen_seconds, "motion_seconds": motion_s,
                        "real_time_factor": gen_seconds / motion_s if motion_s else None,
                        "includes": "audio features from cache -> latents -> RVQ decode -> axis-angle (no FK)",
                        "files": per_file}  # fmt: skip
    save_json(report, out / "metrics.json")
    return report


__all__ = [
    "GenerativeTrainer",
    "build_codec",
    "build_generator_from_config",
    "generate_file",
    "gt_copied_fields",
    "load_trained_generator",
    "resolve_checkpoint_path",
    "run_test",
    "window_options",
]
