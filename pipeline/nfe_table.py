"""Network calls per window vs quality: every test run of the pipeline on one table (issue 19's NFE table).

Each run's saved test motions (``test/<run>/res_<id>.npz`` against ``gt_<id>.npz`` and the file's audio) are scored
per file with the learning check's `Scorer` (BC corrected and EMAGE-2024, paired per-file FGD, realism, beat
placement), then averaged over files with a percentile-bootstrap CI over files; pooled FGD, the realism ratios vs GT
(ratio of means) and the real-time factor come from the run's own metrics.json. Same test split, same FGD
autoencoder and sampling seed for every row, so the rows differ only in the generator and its sampler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.learning_check import Scorer, bootstrap
from pipeline.report import _fmt

PER_FILE = ("bc", "bc_emage2024", "fgd_file", "beat_placement")


def score_run(report: Mapping[str, Any], scorer: Scorer) -> dict[str, list[float]]:
    """Per-file numbers of one test run (its metrics.json ``files`` list points at the npz files and audio)."""
    out: dict[str, list[float]] = {k: [] for k in PER_FILE}
    for f in report["files"]:
        with np.load(f["pred"], allow_pickle=False) as z:
            poses = z["poses"].astype(np.float32)
        with np.load(f["gt"], allow_pickle=False) as z:
            ref = {"pose": torch.from_numpy(z["poses"].astype(np.float32)),
                   "beta": torch.from_numpy(np.asarray(z["betas"], np.float32).reshape(1, -1)),
                   "wav_path": f["audio"], "id": f["id"]}  # fmt: skip
        s = scorer.score(poses, ref)
        for k in PER_FILE:
            out[k].append(s[k])
    return out


def mean_ci(values: list[float], n_boot: int) -> list[Any]:
    """[mean over files, [lo, hi]]: the percentile-bootstrap CI over files."""
    x = np.asarray(values, np.float64)
    return list(bootstrap(lambda i: float(np.nanmean(x[i])), len(x), n_boot))


def nfe_table(
    tests: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, str],
    fgd_model: Any,
    mean_vel: np.ndarray,
    fk: Any,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Rows sorted by network calls per window (most first); per-file means with bootstrap CIs over files."""
    rows = []
    gt_row = None
    for run, rep in tests.items():
        per = score_run(rep, Scorer(fgd_model, mean_vel, fk))
        row: dict[str, Any] = {"run": run, "label": labels.get(run, run), "n_files": len(rep["files"]),
                               "nfe_per_window": rep["generation"]["nfe_per_window"],
                               "nfe_rows_per_window": rep["generation"].get("nfe_rows_per_window"),
                               "sampler": rep["generation"]["sampler"], "guidance": rep["generation"]["guidance"],
                               "real_time_factor": rep["timing"]["real_time_factor"],
                               "fgd_pooled": [rep["metrics"].get("fgd"), rep["ci95"].get("fgd")]}  # fmt: skip
        for k, v in per.items():
            row[k] = mean_ci(v, n_boot)
        for q in ("speed", "acceleration", "jerk"):
            row[f"{q}_ratio"] = [rep["metrics"].get(f"{q}_ratio"), rep["ci95"].get(f"{q}_ratio")]
        rows.append(row)
        if gt_row is None:  # GT scored the same way, once (the test split is the same for every run)
            gt = {"files": [{**f, "pred": f["gt"]} for f in rep["files"]]}
            g = score_run(gt, Scorer(None, mean_vel, fk))
            gt_row = {k: mean_ci(g[k], n_boot) for k in ("bc", "bc_emage2024", "beat_placement")}
    rows.sort(key=lambda r: -r["nfe_per_window"])
    return {"rows": rows, "gt": gt_row, "ci": "percentile bootstrap over test files (per-file means); pooled FGD "
            "and realism ratios: the test runs' own CIs (bootstrap over sequences)"}  # fmt: skip


def nfe_markdown(table: Mapping[str, Any]) -> str:
    head = ("| model | NFE / window | FGD pooled | paired per-file FGD | BC (corrected) | BC (emage2024) | "
            "speed / acc. / jerk vs GT | beat placement | real-time factor |")
    out = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        ratios = " / ".join("–" if r[f"{q}_ratio"][0] is None else f"{r[f'{q}_ratio'][0]:.2f}"
                            for q in ("speed", "acceleration", "jerk"))  # fmt: skip
        nfe = f"{r['nfe_per_window']}" + (f" (×2 rows, w = {r['guidance']:g})" if r["guidance"] > 1 else "")
        out.append(f"| {r['label']} | {nfe} | {_fmt(*r['fgd_pooled'], sig=True)} | {_fmt(*r['fgd_file'], sig=True)} "
                   f"| {_fmt(*r['bc'])} | {_fmt(*r['bc_emage2024'])} | {ratios} | {_fmt(*r['beat_placement'])} | "
                   f"{r['real_time_factor']:.3f} |")  # fmt: skip
    g = table.get("gt")
    if g:
        out.append(f"| GT | – | – | – | {_fmt(*g['bc'])} | {_fmt(*g['bc_emage2024'])} | 1 / 1 / 1 | "
                   f"{_fmt(*g['beat_placement'])} | – |")  # fmt: skip
    return "\n".join(out)


def nfe_table_stage(cfg: Any) -> dict[str, Any]:
    """Pipeline stage: score every test run's saved motions; writes ``nfe_table.json`` in the output folder."""
    from evaluation.fgd_autoencoder import load_fgd_autoencoder
    from geometry.body_model import get_fk
    from pipeline.stages import out_dir, record
    from utils.io import save_json

    tests = {r: json.loads(Path(record(cfg, f"test_{r}")["paths"]["metrics"]).read_text()) for r in cfg.test.runs}
    labels = {r: str(cfg.test.runs[r].get("label", r)) for r in cfg.test.runs}
    fgd_model = load_fgd_autoencoder(record(cfg, "fgd_ae")["paths"]["checkpoint"], map_location="cpu")
    mean_vel = np.load(record(cfg, "cache")["paths"]["mean_vel"])
    table = nfe_table(tests, labels, fgd_model, mean_vel, get_fk(cfg.test.get("body_model")),
                      int(cfg.test.get("n_boot", 1000)))  # fmt: skip
    path = save_json(table, out_dir(cfg) / "nfe_table.json")
    print(nfe_markdown(table))
    return {"paths": {"json": str(path)}}


__all__ = ["nfe_markdown", "nfe_table", "nfe_table_stage", "score_run"]
