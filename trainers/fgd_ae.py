"""Train the FGD feature extractor (``VAESKConv``) as a plain motion autoencoder on any corpus.

Use it when the released ``AESKConv_240_100.bin`` is unavailable, or to build an FGD extractor for another corpus.
The upstream extractor was trained on 64-frame windows (stride 20) of un-normalised 55-joint rot6d (330-D) from all
30 BEAT2 speakers; FGD numbers computed with a self-trained extractor are NOT comparable with published ones.

    python -m trainers.fgd_ae -c configs/fgd_ae_tiny.yaml [key=value ...]

Data sources (``data.source``):
  * ``beat``: a beat_english_v2.0.0-format folder (``smplxflame_30/*.npz`` with ``poses`` (T,165) axis-angle,
    optional ``train_test_split.csv``), e.g. BEAT2 or ``python -m dataloaders.synthetic`` output. With
    ``data.synthetic`` set, a synthetic corpus is generated at ``data.root`` when it is missing.
  * ``dataset``: any torch Dataset built from ``data.dataset`` ({target, params}); items are (T,330) rot6d arrays or
    dicts with ``pose`` (T,165) axis-angle. With ``data.data_config`` set, that YAML's ``data:`` node is passed as
    ``data_cfg`` (the dataloaders.datasets convention).
  * ``random``: smooth random joint rotations (a self-contained smoke test).
The checkpoint is ``{'model_state': sd, 'epoch', 'step'}``, written atomically, so ``load_fgd_autoencoder`` reads it.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from evaluation.fgd_autoencoder import VAESKConv
from geometry.rotations import axis_angle_to_rotation_6d
from utils.config import instantiate_from_config, load_config, to_container
from utils.device import get_device, seed_everything
from utils.io import save_json, save_torch, sha256_file
from utils.paths import resolve_path
from utils.runs import create_run_dir

ROT6D_DIM = 330
AXIS_ANGLE_DIM = 165


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def to_rot6d(seq: Any) -> np.ndarray:
    """(T,330) rot6d or (T,165) axis-angle (array/tensor, or a dict with 'pose') -> float32 (T,330) rot6d."""
    if isinstance(seq, dict):
        if "pose" not in seq:
            raise ValueError(f"dataset item is a dict without 'pose' (keys {sorted(seq)})")
        seq = seq["pose"]
    t = torch.as_tensor(np.asarray(seq) if not isinstance(seq, torch.Tensor) else seq).float().cpu()
    if t.dim() != 2 or t.shape[-1] not in (ROT6D_DIM, AXIS_ANGLE_DIM):
        raise ValueError(
            f"expected a (T,{ROT6D_DIM}) rot6d or (T,{AXIS_ANGLE_DIM}) axis-angle sequence, got {tuple(t.shape)}"
        )
    if t.shape[-1] == AXIS_ANGLE_DIM:
        t = axis_angle_to_rotation_6d(t.reshape(-1, 55, 3)).reshape(-1, ROT6D_DIM)
    return t.numpy()


class RotWindowDataset(Dataset):
    """Fixed-length windows (length, stride) over a list of (T,330) rot6d sequences; items are (length,330) tensors.

    Sequences shorter than ``length`` are skipped; windows are taken at 0, stride, 2*stride, ... while they fit.
    """

    def __init__(self, sequences: Iterable[Any], length: int = 64, stride: int = 20) -> None:
        if length < 1 or stride < 1:
            raise ValueError(f"window length and stride must be positive, got {length}, {stride}")
        self.length = length
        self.sequences: list[np.ndarray] = []
        self.index: list[tuple[int, int]] = []
        for seq in sequences:
            r = to_rot6d(seq)
            if r.shape[0] < length:
                continue
            k = len(self.sequences)
            self.sequences.append(r)
            self.index.extend((k, s) for s in range(0, r.shape[0] - length + 1, stride))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        k, s = self.index[i]
        return torch.from_numpy(self.sequences[k][s : s + self.length])


def random_smooth_sequences(num: int, frames: int, seed: int = 0, amplitude: float = 0.4) -> list[np.ndarray]:
    """Smooth random joint rotations as (frames,330) rot6d: per joint/axis a sum of 3 low-frequency sinusoids."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64)[:, None, None, None] / 30.0
    out = []
    for _ in range(num):
        freq = rng.uniform(0.1, 1.5, size=(1, 55, 3, 3))
        phase = rng.uniform(0, 2 * np.pi, size=(1, 55, 3, 3))
        amp = rng.uniform(0.3, 1.0, size=(1, 55, 3, 3)) * amplitude / 3
        offset = rng.normal(0.0, 0.3, size=(1, 55, 3))
        aa = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1) + offset  # (frames,55,3)
        out.append(to_rot6d(aa.reshape(frames, AXIS_ANGLE_DIM).astype(np.float32)))
    return out


def read_split_csv(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"id", "type"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns id,type, got {list(rows[0])}")
    return {r["id"]: r["type"] for r in rows}


def beat_sequences(
    root: str | Path,
    speakers: str | Sequence[int] = "all",
    splits: Sequence[str] | None = ("train",),
    max_files: int | None = None,
) -> list[np.ndarray]:
    """Axis-angle ``poses`` of ``<root>/smplxflame_30/*.npz`` (sorted), filtered by speaker id (the number before
    the first '_') and by ``train_test_split.csv`` type; returned as (T,330) rot6d."""
    root = Path(root)
    motion_dir = root / "smplxflame_30"
    files = sorted(motion_dir.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no motion files in {motion_dir}")
    if splits:
        split_csv = root / "train_test_split.csv"
        if not split_csv.is_file():
            raise FileNotFoundError(f"{split_csv} is needed to select splits {list(splits)} (or set data.splits=null)")
        split_of = read_split_csv(split_csv)
        files = [f for f in files if split_of.get(f.stem) in set(splits)]
    if speakers != "all":
        wanted = {int(s) for s in speakers}
        files = [f for f in files if int(f.stem.split("_")[0]) in wanted]
    if max_files:
        files = files[: int(max_files)]
    if not files:
        raise ValueError(f"{root}: no files left for speakers={speakers} splits={splits}")
    out = []
    for f in tqdm(files, desc="load motion", leave=False):
        with np.load(f) as z:
            if "poses" not in z:
                raise KeyError(f"{f}: no 'poses' array")
            out.append(to_rot6d(z["poses"].astype(np.float32)))
    return out


def _dataset_sequences(data: DictConfig, split: str) -> list[Any]:
    extra: dict[str, Any] = {}
    if data.get("data_config"):
        dcfg = load_config(resolve_path(data.data_config))
        extra["data_cfg"] = dcfg.data if "data" in dcfg else dcfg
    node = to_container(data.dataset)
    node.setdefault("params", {})
    node["params"] = {**(node["params"] or {}), "split": split}
    ds = instantiate_from_config(node, "data.dataset", **extra)
    return [ds[i] for i in tqdm(range(len(ds)), desc=f"load {split}", leave=False)]


def build_datasets(data: DictConfig) -> tuple[RotWindowDataset, RotWindowDataset | None]:
    """Train and (optional) validation window datasets from the ``data`` config node."""
    length, stride = int(data.window.length), int(data.window.stride)
    source = str(data.source)
    if source == "random":
        r = data.random
        train = random_smooth_sequences(int(r.num_sequences), int(r.frames), seed=int(r.seed))
        val = random_smooth_sequences(int(r.num_val_sequences), int(r.frames), seed=int(r.seed) + 1)
    elif source == "beat":
        root = resolve_path(data.root)
        if not (root / "smplxflame_30").is_dir() and data.get("synthetic"):
            from dataloaders.synthetic import generate_corpus  # only needed for the synthetic smoke config

            generate_corpus(root, **to_container(data.synthetic))
        speakers = data.speakers if isinstance(data.speakers, str) else list(data.speakers)
        train = beat_sequences(root, speakers, list(data.splits), data.get("max_files"))
        val_splits = list(data.val_splits or [])
        val = beat_sequences(root, speakers, val_splits, data.get("max_files")) if val_splits else []
    elif source == "dataset":
        train = _dataset_sequences(data, "train")
        val = _dataset_sequences(data, str(data.val_split)) if data.get("val_split") else []
    else:
        raise ValueError(f"data.source must be 'beat', 'dataset' or 'random', got {source!r}")
    train_ds = RotWindowDataset(train, length, stride)
    if len(train_ds) == 0:
        raise ValueError(f"no training windows of {length} frames (source {source!r})")
    val_ds = RotWindowDataset(val, length, stride) if val else None
    return train_ds, (val_ds if val_ds is not None and len(val_ds) else None)


# ----------------------------------------------------------------------------------------------------------------
# Loss and loop
# ----------------------------------------------------------------------------------------------------------------
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


@torch.no_grad()
def evaluate_reconstruction(model: VAESKConv, loader: DataLoader, device: torch.device, vel_weight: float) -> dict:
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for x in loader:
        x = x.to(device)
        parts = reconstruction_loss(model(x)["rec_pose"], x, vel_weight)
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v) * x.shape[0]
        n += x.shape[0]
    model.train()
    return {k: v / max(n, 1) for k, v in totals.items()}


def save_checkpoint(model: VAESKConv, path: Path, epoch: int, step: int) -> str:
    """Atomic ``{'model_state', 'epoch', 'step'}`` file (tensors on CPU); returns its sha256."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_torch({"model_state": sd, "epoch": epoch, "step": step}, path)
    return sha256_file(path)


def fit(
    model: VAESKConv,
    train_ds: Dataset,
    val_ds: Dataset | None,
    train_cfg: DictConfig | dict,
    out_dir: Path,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``model`` with Adam on the reconstruction loss. Every ``val_every_epochs`` epochs (and at the end) it
    validates and keeps ``best.bin`` (by validation loss, or epoch train loss without validation data); ``last.bin``
    is written at the end. Both under ``out_dir/checkpoints``. Returns a summary dict (also fgd_ae_summary.json)."""
    tc = dict(to_container(train_cfg))
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]  # masks/pool matrices are fixed
    opt = torch.optim.Adam(params, lr=float(tc["lr"]), betas=tuple(tc.get("betas", (0.9, 0.999))))
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train_ds, batch_size=int(tc["batch_size"]), shuffle=True, drop_last=len(train_ds) > int(tc["batch_size"]),
        num_workers=int(tc.get("num_workers", 0)), generator=gen,
    )  # fmt: skip
    val_loader = DataLoader(val_ds, batch_size=int(tc["batch_size"])) if val_ds is not None else None
    epochs = int(tc["epochs"])
    max_steps = int(tc.get("max_steps") or 0) or epochs * len(loader)
    milestones = [int(m) for m in tc.get("lr_decay_steps") or []]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=float(tc.get("lr_gamma", 0.1)))
    vel_w, acc_w = float(tc.get("vel_weight", 1.0)), float(tc.get("acc_weight", 0.0))
    clip = float(tc.get("grad_clip") or 0.0)
    val_every = max(1, int(tc.get("val_every_epochs", 1)))
    ckpt_dir = out_dir / "checkpoints"
    history: list[dict[str, Any]] = []
    best = math.inf
    best_sha = None
    step = 0
    first_loss = None
    t0 = time.time()
    bar = tqdm(total=max_steps, desc="fgd-ae", dynamic_ncols=True)
    epoch = 0
    while step < max_steps:
        epoch += 1
        sums: dict[str, float] = {}
        count = 0
        for x in loader:
            x = x.to(device)
            parts = reconstruction_loss(model(x)["rec_pose"], x, vel_w, acc_w)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            step += 1
            values = {k: v.item() for k, v in parts.items()}
            if first_loss is None:
                first_loss = values["loss"]
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{values['loss']:.4f}")
            if step >= max_steps:
                break
        record: dict[str, Any] = {"epoch": epoch, "step": step, **{f"train_{k}": v / count for k, v in sums.items()}}
        final = step >= max_steps
        if epoch % val_every == 0 or final:
            if val_loader is not None:
                val = evaluate_reconstruction(model, val_loader, device, vel_w)
                record.update({f"val_{k}": v for k, v in val.items()})
            score = record.get("val_loss", record["train_loss"])
            if score < best:
                best = score
                best_sha = save_checkpoint(model, ckpt_dir / "best.bin", epoch, step)
            bar.write(" ".join(f"{k}={v:.5f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        history.append(record)
    bar.close()
    last_sha = save_checkpoint(model, ckpt_dir / "last.bin", epoch, step)
    summary = {
        "checkpoint": str(ckpt_dir / "last.bin"),
        "sha256": last_sha,
        "best_checkpoint": str(ckpt_dir / "best.bin"),
        "best_sha256": best_sha,
        "best_score": best,
        "first_loss": first_loss,
        "steps": step,
        "epochs": epoch,
        "train_windows": len(train_ds),
        "val_windows": len(val_ds) if val_ds is not None else 0,
        "seconds": round(time.time() - t0, 2),
        "history": history,
    }
    save_json(summary, out_dir / "fgd_ae_summary.json")
    return summary


def train_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Run a whole training from a loaded config (see configs/fgd_ae.yaml); returns the summary with run_dir."""
    seed = int(cfg.seed)
    seed_everything(seed)
    if cfg.get("num_threads"):
        # On a small shared CPU box, multi-threaded small ops can be far slower than one thread.
        torch.set_num_threads(int(cfg.num_threads))
    device = get_device(cfg.get("device", "auto"))
    train_ds, val_ds = build_datasets(cfg.data)
    model = VAESKConv(**to_container(cfg.model))
    run_dir = create_run_dir(cfg)
    print(f"fgd-ae: {len(train_ds)} train / {len(val_ds) if val_ds else 0} val windows; run dir {run_dir}")
    summary = fit(model, train_ds, val_ds, cfg.train, run_dir, device, seed)
    summary["run_dir"] = str(run_dir)
    save_json(summary, run_dir / "fgd_ae_summary.json")
    print(f"fgd-ae: saved {summary['checkpoint']} sha256 {summary['sha256']}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Train the FGD skeleton-conv autoencoder (VAESKConv).")
    ap.add_argument("-c", "--config", required=True, help="experiment YAML, e.g. configs/fgd_ae_tiny.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    return train_from_config(load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
