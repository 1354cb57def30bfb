"""Which generator to run, and everything it needs, found without side effects.

``--ckpt`` may be
* nothing: the main job's shortcut model (``outputs/pipeline/synthetic_cpu``, its ``stages/gen_shortcut.json``);
* a pipeline output folder (``stages/gen_<name>.json``), or a run folder (``config.yaml`` + ``checkpoints/best.pt``,
  else ``last.pt``: what utils.runs.create_run_dir and the trainers write);
* one of our checkpoint files (``gesturelsm-trainer/1``: its run folder's config.yaml, else the config stored inside);
* a released upstream generator file with ``--config`` (e.g. configs/released_v2.yaml); or only ``--config``, whose
  ``model.init_from`` names the generator file.

The normalisation statistics and the vocabulary are read, never built: ``data.stats_dir`` or the statistics the
training cache stored, and ``data.vocab`` or the vocabulary the cache built (a missing one is an error that names
the command that builds it).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dataloaders.cache import cache_key, cache_root, cfg_get, prepare_vocab, settings
from dataloaders.features import text as text_feat
from dataloaders.stats import OFFICIAL_FILES, Stats, load_stats_dir
from inference.loading import build_codec, build_generator_from_config, resolve_checkpoint_path, window_options
from inference.windowed import WindowOptions
from models.checkpoints import (
    TRAINER_CHECKPOINT_FORMAT,
    CheckpointError,
    check_state_dict,
    extract_state_dict,
    load_state_dict_strict,
    map_upstream_keys,
)
from models.generators import LatentGenerator
from models.motion_codec import MotionCodec
from utils.config import load_config
from utils.device import check_precision, get_device, native_bf16
from utils.io import load_torch, sha256_file
from utils.paths import REPO_ROOT, resolve_path

DEFAULT_PIPELINE_DIR = "outputs/pipeline/synthetic_cpu"
TRAIN_COMMAND = "python run_pipeline.py -c configs/pipeline/synthetic_cpu.yaml"


class ModelError(ValueError):
    """No usable generator (missing, wrong kind, mismatching shapes); the message is one line naming the file."""


@dataclass
class ModelSource:
    cfg: DictConfig
    checkpoint: Path
    kind: str  # "trainer" | "released"
    origin: str  # how it was found (for the json)
    config_path: str | None = None


@dataclass
class LoadedModel:
    cfg: DictConfig
    model: LatentGenerator
    codec: MotionCodec
    vocab: text_feat.Vocab | None
    opts: WindowOptions
    device: torch.device
    source: ModelSource
    checkpoint_sha256: str
    stats_source: str
    info: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # fp32 | bf16: the generator's arithmetic (utils.device.autocast_for)

    @property
    def fps(self) -> int:
        return self.opts.fps

    @property
    def audio_sr(self) -> int:
        return self.opts.audio_sr


# ---------------------------------------------------------------------------------------------------- resolution
def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _load_yaml(path: Path) -> DictConfig:
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ModelError(f"{path}: not a YAML mapping")
    return cfg


def _from_pipeline_dir(folder: Path, generator: str) -> ModelSource:
    rec_path = folder / "stages" / f"gen_{generator}.json"
    try:
        rec = json.loads(rec_path.read_text())
        ck, run_dir = Path(rec["paths"]["checkpoint"]), Path(rec["paths"]["run_dir"])
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{rec_path}: unreadable stage record ({_first_line(e)}); rerun the pipeline") from e
    src = _from_run_dir(run_dir, ck)
    src.origin = f"pipeline {folder} (stage gen_{generator})"
    return src


def _from_run_dir(run_dir: Path, ck: Path | None = None) -> ModelSource:
    cfg_path = run_dir / "config.yaml"
    if ck is None:
        best, last = run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt"
        ck = best if best.is_file() else last
    if not cfg_path.is_file() or not ck.is_file():
        raise ModelError(f"{run_dir}: not a run folder (needs config.yaml and checkpoints/best.pt or last.pt); pass "
                         "a run folder, a pipeline output folder or a checkpoint file")  # fmt: skip
    return ModelSource(_load_yaml(cfg_path), ck, "trainer", f"run {run_dir}", str(cfg_path))


def _check_generator_weights(obj: Any, ck: Path) -> None:
    """An upstream-layout file must hold generator weights (modality_encoder.* + denoiser.*), not an RVQ-VAE/FGD AE."""
    try:
        sd, _, _ = extract_state_dict(obj, ck)
        keys, _, _ = map_upstream_keys(sd, ck)
    except CheckpointError as e:
        raise ModelError(f"{ck}: not a gesture-generator checkpoint ({_first_line(e)[:160]}); pass the generator's "
                         "run folder, best.pt or a released generator file") from e  # fmt: skip
    if not any(k.startswith(("modality_encoder.", "denoiser.")) for k in keys):
        example = next(iter(keys), "<none>")
        raise ModelError(f"{ck}: not a gesture-generator checkpoint (weights such as {example!r}, no "
                         "modality_encoder/denoiser); pass the generator's run folder or best.pt")  # fmt: skip


def _from_file(ck: Path, config: str | None, overrides: list[str]) -> ModelSource:
    try:
        obj = load_torch(ck)
    except Exception as e:
        raise ModelError(f"{ck}: not a checkpoint torch can read safely ({_first_line(e)}); pass a generator "
                         "checkpoint (best.pt) or its run folder") from e  # fmt: skip
    if isinstance(obj, dict) and obj.get("format") == TRAINER_CHECKPOINT_FORMAT:
        if config:
            cfg, cfg_path = load_config(config, overrides), config
        elif (ck.parent.parent / "config.yaml").is_file() and ck.parent.name == "checkpoints":
            cfg_path = str(ck.parent.parent / "config.yaml")
            cfg = _load_yaml(Path(cfg_path))
        elif isinstance(obj.get("config"), dict):
            cfg, cfg_path = OmegaConf.create(obj["config"]), None
        else:
            raise ModelError(f"{ck}: no config next to it or inside it; pass --config with the training config")
        return ModelSource(cfg, ck, "trainer", f"checkpoint {ck}", cfg_path)
    _check_generator_weights(obj, ck)
    if not config:
        raise ModelError(f"{ck}: not one of our trainer checkpoints; for a released upstream file pass --config "
                         "configs/released_v2.yaml (paths from GESTURELSM_CKPT)")  # fmt: skip
    return ModelSource(load_config(config, overrides), ck, "released", f"released file {ck}", config)


def resolve_model_source(
    ckpt: str | os.PathLike | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    generator: str = "shortcut",
    default_dir: str | os.PathLike = DEFAULT_PIPELINE_DIR,
) -> ModelSource:
    """Find the generator checkpoint and its config (see the module docstring). Raises ModelError."""
    overrides = list(overrides or [])
    if ckpt is None and config:
        cfg = load_config(config, overrides)
        init = cfg.get("model", {}).get("init_from") if "model" in cfg else None
        if not init:
            raise ModelError(f"{config}: model.init_from names no generator checkpoint; set it or pass --ckpt")
        try:
            path = Path(resolve_checkpoint_path(str(init), "model.init_from"))
        except FileNotFoundError as e:
            raise ModelError(f"{_first_line(e)}; set GESTURELSM_CKPT to the folder of the released files (see "
                             f"{config}) or pass --set model.init_from=FILE") from e  # fmt: skip
        return ModelSource(cfg, path, "released", f"config {config}", config)
    if ckpt is None:
        folder = resolve_path(default_dir)
        if not (folder / "stages" / f"gen_{generator}.json").is_file():
            raise ModelError(f"no trained model at {folder}: train one with `{TRAIN_COMMAND}` (17-22 min on 2 CPU "
                             "cores) or pass --ckpt RUN_DIR|best.pt")  # fmt: skip
        src = _from_pipeline_dir(folder, generator)
    else:
        p = resolve_path(ckpt)
        if p.is_dir():
            if (p / "stages").is_dir():
                src = _from_pipeline_dir(p, generator)
            else:
                src = _from_run_dir(p)
        elif p.is_file():
            src = _from_file(p, config, overrides)
        else:
            raise ModelError(f"{p}: checkpoint not found; pass a run folder, a pipeline output folder or best.pt")
    if overrides and src.kind == "trainer" and not (config and src.config_path == config):
        from utils.config import apply_overrides

        src.cfg = apply_overrides(src.cfg, overrides)
    return src


# ---------------------------------------------------------------------------------------------------- stats, vocab
def find_vocab(data: Any) -> text_feat.Vocab | None:
    """The vocabulary the model was trained with: ``data.vocab`` (an upstream vocab.pkl is converted once), else the
    one the training cache built under ``data.cache_dir/vocab``."""
    if cfg_get(data, "word_rep") == "none":
        return None
    if cfg_get(data, "vocab"):
        try:
            # converting a released vocab.pkl (restricted unpickler) is this command's own step, done once
            return prepare_vocab(data, resolve_path(cfg_get(data, "root")) or REPO_ROOT)  # root unused here
        except (OSError, text_feat.TextError) as e:
            raise ModelError(f"data.vocab: {_first_line(e)}; point data.vocab at vocab.pkl or a vocab folder") from e
    folder = cache_root(data) / "vocab"
    if not (folder / "vocab.json").is_file():
        raise ModelError(f"vocabulary of this model not found ({folder}/vocab.json); rebuild the training cache "
                         f"(`{TRAIN_COMMAND} stages=[corpus,cache]` for the main job) or set data.vocab")  # fmt: skip
    return text_feat.Vocab.load(folder)


def find_stats(data: Any, vocab: text_feat.Vocab | None) -> tuple[Stats, str]:
    """Normalisation statistics: ``data.stats_dir``, else the ones the training cache stored (newest)."""
    sd = cfg_get(data, "stats_dir")
    if sd:
        folder = resolve_path(sd)
        try:
            return load_stats_dir(folder), str(folder)
        except (OSError, ValueError) as e:
            raise ModelError(f"data.stats_dir: {_first_line(e)}; point it at the beatx_2_* statistics folder") from e
    root = resolve_path(cfg_get(data, "root"))
    key_dir = cache_root(data) / cache_key(settings(data, root, vocab))
    cands = [d for d in (key_dir / "stats").glob("train_*")
             if all((d / f).is_file() for f in OFFICIAL_FILES.values())]  # fmt: skip
    if not cands:
        raise ModelError(f"normalisation statistics of this model not found under {key_dir}/stats; rebuild the "
                         f"training cache (`{TRAIN_COMMAND} stages=[corpus,cache]` for the main job) or set "
                         "data.stats_dir")  # fmt: skip
    folder = max(cands, key=lambda d: d.stat().st_mtime)
    return load_stats_dir(folder), str(folder)


# ---------------------------------------------------------------------------------------------------- loading
def _generator_config(cfg: DictConfig, vocab: text_feat.Vocab | None) -> DictConfig:
    """A copy whose word table is sized from the vocabulary (the checkpoint fills it), so nothing is rebuilt."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    me = cfg.model.generator.params.get("modality_encoder")
    if me is not None and vocab is not None:
        params = me.get("params") or {}
        if "word_weights" not in params and "vocab_size" not in params:
            OmegaConf.update(cfg, "model.generator.params.modality_encoder.params.vocab_size", vocab.n_words,
                             force_add=True)  # fmt: skip
    return cfg


def check_generator_config(cfg: DictConfig, where: str) -> None:
    """A generator config has model.generator and rvq; other trainers' configs (RVQ-VAE, FGD AE) do not."""
    model = cfg.get("model") if "model" in cfg else None
    if not isinstance(model, DictConfig) or model.get("generator") is None or "rvq" not in cfg:
        kind = "an RVQ-VAE" if "vq" in str(cfg.get("exp_name", "")) else "not a gesture-generator"
        raise ModelError(f"{where}: {kind} checkpoint/config (no model.generator + rvq); pass the generator's run "
                         "folder or best.pt (stage gen_shortcut)")  # fmt: skip


def load_model(
    source: ModelSource,
    device: str | torch.device = "auto",
    n_steps: int | None = None,
    guidance: float | None = None,
    precision: str = "fp32",
) -> LoadedModel:
    """Build the generator, load its weights strictly, build the frozen codec; GT-free window options.

    ``precision``: ``fp32`` (default) or ``bf16`` (the generator under bf16 autocast; a warning when the device has
    no bf16 hardware, `utils.device.native_bf16`)."""
    try:
        check_precision(precision)
    except ValueError as e:
        raise ModelError(str(e)) from e
    cfg = source.cfg
    check_generator_config(cfg, str(source.checkpoint))
    dev = get_device(str(device))
    vocab = find_vocab(cfg.data)
    stats, stats_src = find_stats(cfg.data, vocab)
    gcfg = _generator_config(cfg, vocab)
    try:
        model = build_generator_from_config(gcfg, load_init=False)
    except Exception as e:
        where = source.config_path or source.checkpoint
        raise ModelError(f"{where}: cannot build the generator ({_first_line(e)})") from e
    obj = load_torch(source.checkpoint)
    try:
        if source.kind == "trainer":
            check_state_dict(model, obj["model"], source.checkpoint)
            model.load_state_dict(obj["model"], strict=True)
        else:
            load_state_dict_strict(model, obj, source.checkpoint)
    except CheckpointError as e:
        lines = str(e).splitlines()
        detail = "; ".join(s.strip().split(":")[0] for s in lines[1:])
        raise ModelError(f"{source.checkpoint}: does not match the configured generator ({detail}); pass the config "
                         "it was trained with") from e  # fmt: skip
    model = model.to(dev).eval()
    if n_steps is not None or guidance is not None:
        model.sampler.configure(n_steps=n_steps, guidance=guidance)
    try:
        codec = build_codec(cfg, stats, dev)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"RVQ-VAEs of this model: {_first_line(e)}; check the rvq.* paths in its config") from e
    opts = window_options(cfg)
    # no ground truth at inference: mean-pose seed for the first window, whole file generated (no tail dropped)
    opts.seed_from_gt, opts.seed_fallback, opts.drop_tail = False, "mean_pose", False
    if precision == "bf16" and not native_bf16(dev):
        warnings.warn(f"--precision bf16 on a {dev.type} without bf16 hardware (a CPU without avx512_bf16/AMX): "
                      "expect it no faster than fp32", stacklevel=2)  # fmt: skip
    return LoadedModel(cfg, model, codec, vocab, opts, dev, source, sha256_file(source.checkpoint), stats_src,
                       info={"rvq": dict(getattr(codec, "paths", {}))}, precision=precision)  # fmt: skip


__all__ = ["DEFAULT_PIPELINE_DIR", "LoadedModel", "ModelError", "ModelSource", "TRAIN_COMMAND",
           "check_generator_config", "find_stats", "find_vocab", "load_model", "resolve_model_source"]
