"""Does the RVQ codec add jitter? Round trip (encode -> decode) of held-out ground truth vs ground truth itself.

    python benchmarks/rvq_roundtrip.py OUTPUT_DIR [--splits val test] [--parts upper hands lower_trans]
                                      [--ckpt upper=PATH ...]

OUTPUT_DIR is a pipeline output folder (``run_pipeline.py ... output_dir=OUTPUT_DIR`` with at least the corpus,
cache and rvq stages done). Each whole file of the split goes through the trained per-part RVQ-VAEs
(``--parts``; the other parts stay ground truth; the decoded trans_v is not used: joints are measured with the
translation zeroed), then FK (geometry.body_model.get_fk, file betas[:10]) and evaluation.realism on the upper-body BC
joints. Prints per split the pooled round-trip/GT ratios of mean speed, acceleration and jerk (ratio of means over
files, 95% bootstrap CI over files). The target of issue 13: jerk and acceleration ratios <= 1.25.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataloaders.stats import load_stats_dir  # noqa: E402
from evaluation.realism import pooled_realism, realism_stats  # noqa: E402
from geometry.body_model import get_fk  # noqa: E402
from geometry.rotations import poses_to_rot6d, rot6d_to_poses  # noqa: E402
from geometry.skeleton import GENERATOR_PARTS, PARTS, axis_angle_indices, rot6d_indices  # noqa: E402
from models.vq.rvqvae import load_rvqvae  # noqa: E402
from pipeline.runner import load_record  # noqa: E402


def round_trip(poses: np.ndarray, trans_v: np.ndarray, vqs: dict, stats) -> np.ndarray:
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_dir")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--parts", nargs="+", default=list(GENERATOR_PARTS))
    ap.add_argument("--ckpt", nargs="*", default=[], help="part=path overrides of the stage records")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.output_dir)
    cache = load_record(out, "cache")
    corpus = load_record(out, "corpus")
    if cache is None or corpus is None:
        raise SystemExit(f"{out}: corpus/cache stages not done")
    stats = load_stats_dir(cache["paths"]["stats_dir"])
    given = dict(kv.split("=", 1) for kv in a.ckpt)
    vqs = {}
    for part in a.parts:
        path = given.get(part) or (load_record(out, f"rvq_{part}") or {}).get("paths", {}).get("checkpoint")
        if not path:
            raise SystemExit(f"no checkpoint for {part} (stage rvq_{part} not done; pass --ckpt {part}=PATH)")
        vqs[part] = load_rvqvae(path, part=part).eval()
    with open(corpus["paths"]["split_csv"], newline="") as f:
        split = {r["id"]: r["type"] for r in csv.DictReader(f)}
    files = Path(cache["paths"]["cache"]) / "files"
    res = {}
    for s in a.splits:
        gen, gt = [], []
        for fid in sorted(i for i, t in split.items() if t == s):
            d = files / fid
            poses = np.load(d / "pose.npy").astype(np.float64)
            fk = get_fk(betas=np.load(d / "betas.npy")[:10])
            rt = round_trip(poses, np.load(d / "trans_v.npy"), vqs, stats)
            t = rt.shape[0]
            gt.append(realism_stats(fk(torch.from_numpy(poses[:t])).numpy(), 30.0, name=f"gt {fid}"))
            gen.append(realism_stats(fk(torch.from_numpy(rt)).numpy(), 30.0, name=f"round trip {fid}"))
        pooled = pooled_realism(gen, gt, n_boot=1000, seed=0)
        res[s] = {q: {k: v for k, v in d.items() if k != "per_file_ratio"} for q, d in pooled.items()}
        print(f"[{s}, {len(gt)} files, parts {'+'.join(a.parts)}] round trip / GT: " + "  ".join(
            f"{q} {d['ratio']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]" for q, d in pooled.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
