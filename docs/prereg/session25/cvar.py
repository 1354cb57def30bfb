"""Measurement (no choice): how much of (c)'s spread is sampling-seed noise? Val split, the main job's model at its
g*, 3 sampling seeds. Per file and seed: d = FGD(audio swapped) - FGD(own); within-file (seed) vs between-file
variance, and the CI half-width the check would get with S seeds averaged within each file (normal approximation)."""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "/work/exp/s25/code3")
from pipeline.learning_check import Scorer, check_inputs, run_learning_check  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.device import blas_threads, torch_threads  # noqa: E402

out = Path("/work/exp/s25/cvar")
cfg = load_config("/work/exp/s25/code3/configs/pipeline/synthetic_cpu.yaml", ["output_dir=/work/exp/s25/mj3"])
with torch_threads(1), blas_threads(1):
    inp = check_inputs(cfg, split="val")  # calibrated: the main job's g*
    print("guidance", inp["model"].sampler.settings())
    res = run_learning_check(**inp, seeds=3, out_dir=out, n_boot=2000)
    scorer = Scorer(inp["fgd_model"], inp["mean_vel"], inp["fk"])
    d = np.zeros((len(inp["items"]), 3))
    for i, it in enumerate(inp["items"]):
        for s in range(3):
            f = {}
            for cond in ("own", "audio_swapped"):
                with np.load(out / cond / f"seed{s}" / f"res_{it['id']}.npz") as z:
                    f[cond] = scorer.score(z["poses"], it)["fgd_file"]
            d[i, s] = f["audio_swapped"] - f["own"]
mean_i = d.mean(1)
check = np.asarray(res["per_file"]["audio_swapped"]["fgd_file"]) - np.asarray(res["per_file"]["own"]["fgd_file"])
w = d.var(1, ddof=1).mean()          # within-file variance of one seed's d
b = max(mean_i.var(ddof=1) - w / 3, 0.0)  # between-file variance of the true per-file effect
n = len(mean_i)
rows = {S: 1.96 * np.sqrt((b + w / S) / n) for S in (1, 3, 6, 12, 24)}
o = {"n_files": n, "per_file_seed_d": d.tolist(), "mean": float(mean_i.mean()), "within_var": float(w),
     "between_var": float(b), "rescored_equals_check": float(np.abs(mean_i - check).max()),
     "ci_half_width_by_seeds": {str(k): float(v) for k, v in rows.items()}, "statistics": res["statistics"]}
json.dump(o, open("/work/exp/s25/cvar.json", "w"), indent=1)
print(json.dumps({k: v for k, v in o.items() if k not in ("per_file_seed_d", "statistics")}, indent=1))
print("fgd_swapped_minus_own", res["statistics"]["fgd_swapped_minus_own"])
