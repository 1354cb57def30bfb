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


def _rtf_per_file(rep: Mapping[str, Any]) -> list[float]:
    """Generation seconds / motion seconds of each file (the run's timing record; 30 fps motion frames)."""
    return [f["seconds"] / (f["frames"] / 30.0) for f in rep["timing"]["files"]]


def nfe_table(
    tests: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, str],
    fgd_model: Any,
    mean_vel: np.ndarray,
    fk: Any,
    n_boot: int = 1000,
    reference: str | None = None,
) -> dict[str, Any]:
    """Rows sorted by network calls per window (most first); per-file means with bootstrap CIs over files, and each
    row's per-file difference from the ``reference`` run (default: the first run with the most network calls) with a
    paired bootstrap CI (same resampled files for both rows), so "is the few-step model worse" has an answer."""
    ids = {run: [f["id"] for f in rep["files"]] for run, rep in tests.items()}
    first = next(iter(ids.values()), [])
    for run, fids in ids.items():
        if fids != first:
            raise ValueError(f"test run {run!r} scored other files than {next(iter(ids))!r}: the NFE table compares "
                             "runs on one test split")  # fmt: skip
    per_run: dict[str, dict[str, list[float]]] = {}
    rows = []
    gt_row = None
    scorer = Scorer(fgd_model, mean_vel, fk)  # one for every run: the GT side is computed once per file (memoised)
    for run, rep in tests.items():
        per = score_run(rep, scorer)
        per["real_time_factor"] = _rtf_per_file(rep)
        per_run[run] = per
        gen = rep["generation"]
        row: dict[str, Any] = {"run": run, "label": labels.get(run, run), "n_files": len(rep["files"]),
                               "nfe_per_window": gen["nfe_per_window"],
                               "nfe_rows_per_window": gen.get("nfe_rows_per_window"),
                               "sampler": gen.get("sampler"), "guidance": gen.get("guidance"),
                               "fgd_pooled": [rep["metrics"].get("fgd"), rep["ci95"].get("fgd")]}  # fmt: skip
        for k, v in per.items():
            row[k] = mean_ci(v, n_boot)
            row[f"{k}_n_files"] = int(np.isfinite(np.asarray(v, np.float64)).sum())  # files behind the mean
        for q in ("speed", "acceleration", "jerk"):
            row[f"{q}_ratio"] = [rep["metrics"].get(f"{q}_ratio"), rep["ci95"].get(f"{q}_ratio")]
        rows.append(row)
        if gt_row is None:  # GT scored the same way, once (every run has the same test files, checked above)
            gt = {"files": [{**f, "pred": f["gt"]} for f in rep["files"]]}
            g = score_run(gt, Scorer(None, mean_vel, fk))
            gt_row = {k: mean_ci(g[k], n_boot) for k in ("bc", "bc_emage2024", "beat_placement")}
    rows.sort(key=lambda r: -r["nfe_per_window"])
    ref = reference or (rows[0]["run"] if rows else None)
    if ref is not None and ref not in per_run:
        raise ValueError(f"reference run {ref!r} is not one of the test runs {sorted(per_run)}")
    for row in rows:
        row["vs"] = ref
        for k in ("fgd_file", "bc", "beat_placement"):
            d = np.asarray(per_run[row["run"]][k], np.float64) - np.asarray(per_run[ref][k], np.float64)
            row[f"{k}_minus_ref"] = mean_ci(list(d), n_boot)
    return {"rows": rows, "gt": gt_row, "reference": ref,
            "ci": "percentile bootstrap over test files (per-file means; differences from the reference run paired "
                  "by file); pooled FGD and realism ratios: the test runs' own CIs (bootstrap over sequences); "
                  "real-time factor: per file, on whatever load the machine had while that run generated"}  # fmt: skip


def nfe_markdown(table: Mapping[str, Any]) -> str:
    head = ("| model | NFE / window | FGD pooled | paired per-file FGD | BC (corrected) | BC (emage2024) | "
            "speed / acc. / jerk vs GT | beat placement | real-time factor |")
    out = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        ratios = " / ".join("–" if r[f"{q}_ratio"][0] is None else f"{r[f'{q}_ratio'][0]:.2f}"
                            for q in ("speed", "acceleration", "jerk"))  # fmt: skip
        w = r.get("guidance")
        nfe = f"{r['nfe_per_window']}" + (f" (×2 rows, w = {w:g})" if w is not None and w > 1 else "")
        out.append(f"| {r['label']} | {nfe} | {_fmt(*r['fgd_pooled'], sig=True)} | {_fmt(*r['fgd_file'], sig=True)} "
                   f"| {_fmt(*r['bc'])} | {_fmt(*r['bc_emage2024'])} | {ratios} | {_fmt(*r['beat_placement'])} | "
                   f"{_fmt(*r['real_time_factor'], digits=3)} |")  # fmt: skip
    g = table.get("gt")
    if g:
        out.append(f"| GT | – | – | – | {_fmt(*g['bc'])} | {_fmt(*g['bc_emage2024'])} | 1 / 1 / 1 | "
                   f"{_fmt(*g['beat_placement'])} | – |")  # fmt: skip
    ref = table.get("reference")
    if ref is not None:
        label = next((r["label"] for r in table["rows"] if r["run"] == ref), ref)
        out += ["", f"Per-file differences from {label} (paired bootstrap over files; FGD: lower is better, BC and "
                "beat placement: higher is better):", "",
                "| model | Δ paired per-file FGD | Δ BC (corrected) | Δ beat placement |", "|---|---|---|---|"]
        for r in table["rows"]:
            if r["run"] != ref:
                out.append(f"| {r['label']} | {_fmt(*r['fgd_file_minus_ref'], sig=True)} | "
                           f"{_fmt(*r['bc_minus_ref'])} | {_fmt(*r['beat_placement_minus_ref'])} |")  # fmt: skip
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
