"""Are two main-job runs bit-identical? Which numbers differ, and by how much?

    python benchmarks/compare_runs.py RUN_A RUN_B [--json OUT.json]

RUN_A / RUN_B: two output folders of `run_pipeline.py` (e.g. the same config run twice with different
``output_dir``, or on two machines). Compared: every test run's metrics (``test/<run>/metrics.json``), its generated
motion files (``res_*.npz``, by sha256), every number of ``learning_check.json``, ``nfe_table.json`` and
``calibration.json`` (wall-clock fields left out; NaN equals NaN), and the trained checkpoints named by the stage
records (``stages/*.json``, by sha256). Prints one line per item: identical, or the largest absolute difference and
where it is. Exit code 0 either way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.reproducibility import checkpoint_tensors  # noqa: E402
from utils.io import atomic_write, sha256_file  # noqa: E402

WALL_CLOCK = {"seconds", "generation_seconds", "real_time_factor", "train_s", "wall_s", "timing"}


def weight_diff(a: Path, b: Path) -> float:
    """Largest |difference| between the model weights of two checkpoints (`checkpoint_tensors`; the file hashes
    differ anyway, as they hold run paths and wall-clock times). inf when the key sets or shapes differ."""
    import torch

    sa, sb = checkpoint_tensors(a), checkpoint_tensors(b)
    if sa.keys() != sb.keys():
        return math.inf
    worst = 0.0
    for k, v in sa.items():
        w = sb[k]
        if v.shape != w.shape:
            return math.inf
        if v.numel() and not torch.equal(v, w):
            worst = max(worst, float((v.double() - w.double()).abs().max()))
    return worst


def number_diff(a: Any, b: Any, path: str = "") -> tuple[float, str, list[str]]:
    """(largest |a - b| over matching numbers, where it is, paths whose structure or non-numbers differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        worst, where, other = 0.0, "", []
        for k in sorted(set(a) | set(b)):
            if k in WALL_CLOCK:
                continue
            if k not in a or k not in b:
                other.append(f"{path}.{k}")
                continue
            d, w, o = number_diff(a[k], b[k], f"{path}.{k}")
            if d > worst:
                worst, where = d, w
            other += o
        return worst, where, other
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return 0.0, "", [f"{path} (lengths {len(a)} vs {len(b)})"]
        worst, where, other = 0.0, "", []
        for i, (u, v) in enumerate(zip(a, b)):
            d, w, o = number_diff(u, v, f"{path}[{i}]")
            if d > worst:
                worst, where = d, w
            other += o
        return worst, where, other
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) and math.isnan(b):
            return 0.0, "", []
        if math.isnan(a) or math.isnan(b):
            return math.inf, path, []
        return abs(float(a) - float(b)), path, []
    return (0.0, "", []) if a == b else (0.0, "", [path])


def compare(run_a: Path, run_b: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(item: str, a: Any, b: Any) -> None:
        d, where, other = number_diff(a, b)
        rows.append({"item": item, "identical": d == 0.0 and not other, "max_abs_diff": d, "where": where,
                     "other_differences": other[:5]})  # fmt: skip

    for name in ("learning_check.json", "nfe_table.json", "calibration.json"):
        pa, pb = run_a / name, run_b / name
        if pa.is_file() and pb.is_file():
            add(name, json.loads(pa.read_text()), json.loads(pb.read_text()))
    tests = sorted(p.name for p in (run_a / "test").glob("*") if (p / "metrics.json").is_file())
    for t in tests:
        ma, mb = run_a / "test" / t / "metrics.json", run_b / "test" / t / "metrics.json"
        if not mb.is_file():
            rows.append({"item": f"test/{t}", "identical": False, "missing_in": str(run_b)})
            continue
        add(f"test/{t} metrics", json.loads(ma.read_text())["metrics"], json.loads(mb.read_text())["metrics"])
        ha = {p.name: sha256_file(p) for p in sorted((run_a / "test" / t).glob("res_*.npz"))}
        hb = {p.name: sha256_file(p) for p in sorted((run_b / "test" / t).glob("res_*.npz"))}
        differing = sorted(k for k in set(ha) | set(hb) if ha.get(k) != hb.get(k))
        rows.append({"item": f"test/{t} res_*.npz ({len(ha)} files)", "identical": not differing and bool(ha),
                     "differing_files": differing[:5]})  # fmt: skip
    for rec in sorted((run_a / "stages").glob("*.json")):
        other = run_b / "stages" / rec.name
        ck_a = (json.loads(rec.read_text()).get("paths") or {}).get("checkpoint")
        ck_b = (json.loads(other.read_text()).get("paths") or {}).get("checkpoint") if other.is_file() else None
        if ck_a and ck_b and Path(ck_a).is_file() and Path(ck_b).is_file():
            d = weight_diff(Path(ck_a), Path(ck_b))
            rows.append({"item": f"{rec.stem} checkpoint weights", "identical": d == 0.0, "max_abs_diff": d,
                         "where": "model"})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    run_a, run_b = Path(a.run_a), Path(a.run_b)
    for r in (run_a, run_b):
        if not (r / "stages").is_dir():
            raise SystemExit(f"{r}: not a main-job output folder (no stages/)")
    rows = compare(run_a, run_b)
    for row in rows:
        if row["identical"]:
            print(f"identical  {row['item']}")
        else:
            extra = (f"max |diff| {row['max_abs_diff']:.3g} at {row['where']}" if row.get("max_abs_diff") else
                     ", ".join(f"{k}: {v}" for k, v in row.items() if k not in ("item", "identical") and v))
            print(f"DIFFERENT  {row['item']}  {extra}")
    if a.json:
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(rows, indent=2)))
    return rows


if __name__ == "__main__":
    main()
