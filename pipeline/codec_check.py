"""Does the RVQ codec add jitter? Round trip (encode -> decode) of held-out ground truth vs ground truth itself.

Each whole file of a split goes through the trained per-part RVQ-VAEs of a pipeline output folder (the other parts
stay ground truth; the decoded trans_v is not used: joints are measured with the translation zeroed), then FK
(geometry.body_model.get_fk, the file's betas[:10]) and evaluation.realism on the upper-body BC joints: the pooled
round-trip/GT ratios of mean speed, acceleration and jerk (ratio of means over files, 95% bootstrap CI over files).
Issue 13's target: jerk and acceleration ratios <= 1.25. Beside them, the beat placement (corrected BC minus BC of
the motion 0.5 s late; evaluation.realism.beat_placement_score) of GT and of the round trip, each also with the pelvis
rotation held at zero: the pelvis leans with the strokes and carries BC's joints with it, so "root held" shows how
much stroke timing the upper body's own joints keep (files without a wav, shorter than 4 s or without onsets are
left out of it; its ``n_files`` says how many count). Used by the pipeline's report (val and test) and by
``benchmarks/rvq_roundtrip.py``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataloaders.stats import Stats, load_stats_dir
from evaluation.metrics import BeatConsistency
from evaluation.realism import beat_placement_score, pooled_realism, realism_stats
from geometry.body_model import get_fk
from geometry.rotations import poses_to_rot6d, rot6d_to_poses
from geometry.skeleton import GENERATOR_PARTS, PARTS, axis_angle_indices, rot6d_indices
from models.vq.rvqvae import load_rvqvae
from pipeline.nfe_table import mean_ci
from pipeline.runner import load_record
from utils.device import torch_threads

PLACEMENT_KEYS = ("gt", "round_trip", "gt_root_held", "round_trip_root_held")


def round_trip(poses: np.ndarray, trans_v: np.ndarray, vqs: dict[str, Any], stats: Stats) -> np.ndarray:
    """Whole-file round trip of the given parts (T cropped to a multiple of 4); other joints stay GT."""
    t = poses.shape[0] // 4 * 4
    p = torch.from_numpy(poses[:t]).float()[None]
    r6 = poses_to_rot6d(p)
    std = torch.from_numpy(stats.safe(stats.rot6d_std)).float()
    mean = torch.from_numpy(stats.rot6d_mean).float()
    r6n = (r6 - mean) / std
    out = p.clone()
    for part, vq in vqs.items():
        idx = torch.from_numpy(rot6d_indices(PARTS[part]["joints"]))
        x = r6n[..., idx]
        if PARTS[part]["trans_v"]:
            tstd = torch.from_numpy(stats.safe(stats.trans_v_std)).float()
            tv = (torch.from_numpy(trans_v[:t]).float()[None] - torch.from_numpy(stats.trans_v_mean).float()) / tstd
            x = torch.cat([x, tv], -1)
        with torch.no_grad():
            rec = vq.reconstruct(x)["rec"][..., : idx.numel()]
        aa = torch.from_numpy(axis_angle_indices(PARTS[part]["joints"]))
        out[..., aa] = rot6d_to_poses(rec * std[idx] + mean[idx])
    return out[0].numpy().astype(np.float64)


def rvq_roundtrip(
    out_dir: str | Path,
    splits: Sequence[str] = ("val", "test"),
    parts: Sequence[str] = GENERATOR_PARTS,
    ckpts: Mapping[str, str] | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """{split: {n_files, speed|acceleration|jerk: {ratio, ci, ...}}} for a pipeline output folder whose corpus, cache
    and rvq stages are done (``ckpts``: part -> checkpoint overrides of the stage records)."""
    out = Path(out_dir)
    cache, corpus = load_record(out, "cache"), load_record(out, "corpus")
    if cache is None or corpus is None:
        raise FileNotFoundError(f"{out}: the corpus and cache stages are not done")
    stats = load_stats_dir(cache["paths"]["stats_dir"])
    vqs = {}
    for part in parts:
        path = (ckpts or {}).get(part) or (load_record(out, f"rvq_{part}") or {}).get("paths", {}).get("checkpoint")
        if not path:
            raise FileNotFoundError(f"{out}: no checkpoint for {part} (stage rvq_{part} not done)")
        vqs[part] = load_rvqvae(path, part=part).eval()
    with open(corpus["paths"]["split_csv"], newline="") as f:
        split = {r["id"]: r["type"] for r in csv.DictReader(f)}
    files = Path(cache["paths"]["cache"]) / "files"
    wavs = Path(corpus["paths"]["root"]) / "wave16k"
    bc = BeatConsistency(np.asarray(stats.mean_vel), protocol="corrected")
    res: dict[str, Any] = {}
    with torch_threads(1):  # many small whole-file ops
        for s in splits:
            gen, gt = [], []
            placement: dict[str, list[float]] = {k: [] for k in PLACEMENT_KEYS}
            for fid in sorted(i for i, t in split.items() if t == s):
                d = files / fid
                poses = np.load(d / "pose.npy").astype(np.float64)
                fk = get_fk(betas=np.load(d / "betas.npy")[:10])
                rt = round_trip(poses, np.load(d / "trans_v.npy"), vqs, stats)
                t = rt.shape[0]
                jg, jr = fk(torch.from_numpy(poses[:t])).numpy(), fk(torch.from_numpy(rt)).numpy()
                gt.append(realism_stats(jg, 30.0, name=f"gt {fid}"))
                gen.append(realism_stats(jr, 30.0, name=f"round trip {fid}"))
                wav = wavs / f"{fid}.wav"
                if wav.is_file() and t > 2 * bc.align_mask:
                    onsets = bc.onsets(str(wav), t)
                    if onsets.size:
                        for key, p, j in (("gt", poses[:t], jg), ("round_trip", rt, jr)):
                            still = p.copy()
                            still[:, :3] = 0.0  # the pelvis (global orientation) held at zero
                            placement[key].append(_placement(bc, onsets, j))
                            placement[f"{key}_root_held"].append(
                                _placement(bc, onsets, fk(torch.from_numpy(still)).numpy()))
            if not gt:
                continue
            pooled = pooled_realism(gen, gt, n_boot=n_boot, seed=0)
            res[s] = {"n_files": len(gt), "parts": list(parts),
                      **{q: {k: v for k, v in d.items() if k != "per_file_ratio"} for q, d in pooled.items()}}
            if placement["gt"]:
                res[s]["beat_placement"] = {k: _mean_ci(v, n_boot) for k, v in placement.items()}
    return res


def _placement(bc: BeatConsistency, onsets: np.ndarray, joints: np.ndarray) -> float:
    return beat_placement_score(joints, lambda j: bc.score(bc.motion_beats(j), onsets))["score"]


def _mean_ci(values: list[float], n_boot: int) -> dict[str, Any]:
    value, ci = mean_ci(values, n_boot)
    return {"mean": value, "ci": ci, "n_files": len(values)}


def roundtrip_markdown(res: Mapping[str, Any]) -> str:
    """A table of round-trip/GT ratios per split."""
    rows = ["| split | files | speed ratio [95% CI] | acceleration ratio [95% CI] | jerk ratio [95% CI] |",
            "|---|---|---|---|---|"]  # fmt: skip
    for s, r in res.items():
        cells = [f"{r[q]['ratio']:.3f} [{r[q]['ci'][0]:.3f}, {r[q]['ci'][1]:.3f}]"
                 for q in ("speed", "acceleration", "jerk")]  # fmt: skip
        rows.append(f"| {s} | {r['n_files']} | " + " | ".join(cells) + " |")
    if any("beat_placement" in r for r in res.values()):
        rows += ["", "Beat placement (corrected BC minus BC 0.5 s late; mean over files [95% CI]); \"pelvis held\": "
                 "the global orientation set to zero, so only the upper body's own joints move BC's joints:", "",
                 "| split | files | GT | round trip | GT, pelvis held | round trip, pelvis held |",
                 "|---|---|---|---|---|---|"]  # fmt: skip
        for s, r in res.items():
            if "beat_placement" in r:
                bp = r["beat_placement"]
                rows.append(f"| {s} | {bp['gt']['n_files']} | " + " | ".join(
                    f"{bp[k]['mean']:.3f} [{bp[k]['ci'][0]:.3f}, {bp[k]['ci'][1]:.3f}]" for k in PLACEMENT_KEYS) + " |")
    return "\n".join(rows)
