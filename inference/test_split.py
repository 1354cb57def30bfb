"""Generate a corpus split once with a trained generator and evaluate it (``test.py -c CONFIG --ckpt PATH``).

Writes ``res_<id>.npz`` / ``gt_<id>.npz`` per file, then evaluates that folder with evaluation.evaluate_folder, so the
numbers come from the same files anyone can re-score with another evaluator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from dataloaders.datasets import WholeFileDataset
from dataloaders.stats import OFFICIAL_FILES, load_stats
from evaluation.evaluator import evaluate_folder
from evaluation.protocols import DEFAULT_PROTOCOL
from inference.generate import generate_items, generated_fields, gt_copied_fields, inference_copy_gt
from inference.loading import build_codec, load_trained_generator, resolve_checkpoint_path, window_options
from utils.device import get_device
from utils.io import ensure_writable_dir, save_json, save_npy, save_npz, sha256_file
from utils.paths import resolve_path

# The evaluation settings a test run takes from ``test:`` (and test.py's flags); everything else is generation.
TEST_KEYS = ("split", "n_boot", "boot_seed", "fgd_autoencoder", "protocol", "body_model", "mean_vel", "face")


def _default_test_dir(ckpt: Path) -> Path:
    base = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return base / f"test_{ckpt.stem}"


def run_test(cfg: DictConfig, ckpt_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict:
    """Generate the ``test.split`` (default test) once (whole files) with ``ckpt_path`` and evaluate it.

    Writes ``res_<id>.npz`` (betas GT, poses (n,165) predicted, expressions GT, trans GT, model, gender,
    mocap_frame_rate, gt_copied) and ``gt_<id>.npz`` per file, then ``metrics.json`` (the folder report plus checkpoint
    path/sha256, sampler settings, window options and timing). Returns the report.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    ckpt = Path(resolve_checkpoint_path(str(ckpt_path), "checkpoint"))
    out = Path(out_dir) if out_dir is not None else _default_test_dir(ckpt)
    try:
        ensure_writable_dir(out)
    except OSError as e:
        raise PermissionError(f"output folder {out} is not writable ({e})") from e
    device = get_device(str(cfg.get("device", "auto")))
    test_cfg = cfg.get("test") or OmegaConf.create({})
    val_cfg = cfg.get("val") or OmegaConf.create({})
    stats = load_stats(cfg.data)
    codec = build_codec(cfg, stats, device)
    model = load_trained_generator(cfg, ckpt, device)
    opts = window_options(cfg)
    inf = cfg.get("inference") or {}
    seed, copy_gt = int(inf.get("seed", 0) or 0), inference_copy_gt(inf)
    copied = gt_copied_fields(opts, copy_gt)
    ds = WholeFileDataset(cfg.data, str(test_cfg.get("split", "test")))
    wavs: set[str] = set()
    per_file: list[dict[str, Any]] = []

    def write(i: int, item: Any, res: dict[str, Any]) -> None:
        n = res["n_frames"]
        common = {"betas": item["beta"][0].numpy(), "model": np.array("smplx2020"), "gender": np.array("neutral"),
                  "mocap_frame_rate": np.array(30)}  # fmt: skip
        # expressions/trans: generated (or zeros when not generated), GT only where copy_gt says (listed)
        save_npz(out / f"res_{item['id']}.npz", poses=res["poses"].astype(np.float32),
                 expressions=res["expressions"].astype(np.float32), trans=res["trans"].astype(np.float32),
                 gt_copied=np.array(copied, dtype=np.str_), **common)  # fmt: skip
        save_npz(out / f"gt_{item['id']}.npz", poses=item["pose"][:n].numpy(),
                 expressions=item["facial"][:n].numpy(), trans=item["trans"][:n].numpy(), **common)  # fmt: skip
        wavs.add(str(Path(item["wav_path"]).parent))
        per_file.append({"id": item["id"], "frames": n, "windows": res["n_windows"], "nfe": res["nfe"],
                         "seconds": res["seconds"]})  # fmt: skip

    generate_items(model, codec, ds, opts, device, seed=seed, copy_gt=copy_gt, on_file=write, desc="test",
                   keep=False)  # fmt: skip
    if len(wavs) != 1:
        raise ValueError(f"test audio lives in several folders {sorted(wavs)}; expected one wave16k folder")
    mean_vel = test_cfg.get("mean_vel")
    if not mean_vel:
        stats_dir = cfg.data.get("stats_dir")
        if stats_dir:
            mean_vel = str(resolve_path(stats_dir) / OFFICIAL_FILES["mean_vel"])
        else:
            mean_vel = str(save_npy(np.asarray(stats.mean_vel, np.float32), out / OFFICIAL_FILES["mean_vel"]))
    fgd = test_cfg.get("fgd_autoencoder") or val_cfg.get("fgd_autoencoder")
    protocol = str(test_cfg.get("protocol") or val_cfg.get("protocol") or DEFAULT_PROTOCOL)
    report = evaluate_folder(
        out, out, audio_dir=wavs.pop(), protocol=protocol,
        fgd_ckpt=resolve_checkpoint_path(str(fgd), "FGD autoencoder") if fgd else None,
        body_model=test_cfg.get("body_model"), mean_vel=mean_vel, out_dir=None,
        n_boot=int(test_cfg.get("n_boot", 1000)), seed=int(test_cfg.get("boot_seed", 0)), device=str(device),
        progress=False, face=bool(test_cfg.get("face", True)),
    )  # fmt: skip
    gen_seconds = sum(f["seconds"] for f in per_file)
    motion_s = sum(f["frames"] for f in per_file) / float(opts.fps)
    windows = sum(f["windows"] for f in per_file)
    report["gt_copied"] = copied
    report["generation"] = {
        "checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)},
        "generator": str(cfg.model.generator.get("name") or cfg.model.generator.get("target")),
        **model.sampler.settings(),
        "nfe_per_window_measured": sum(f["nfe"] for f in per_file) / windows if windows else None,
        "generation_seed": seed,
        "seed_from_gt": opts.seed_from_gt,
        "drop_tail": opts.drop_tail,
        "copy_gt": list(copy_gt),
        "fields": generated_fields(codec, copy_gt),
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


__all__ = ["TEST_KEYS", "run_test"]
