"""One speed report for the official full-size configs (issue 20): every benchmark in its own process, with its peak
memory, printed as a table and written as json.

    python benchmarks/speed_report.py [--device cpu|cuda] [--quick] [--out outputs/speed_report.json]

Rows (each a subprocess of an existing benchmark, so imports, caches and peak RSS do not leak between rows):

* generator train step per generator (shortcut, reflow, MeanFlow, DDIM; batch 8 x 128 frames, full size) and one
  window's sampling with each generator's default steps/guidance (`benchmarks/bench_generators.py`);
* the shortcut, DDIM, RVQ upper and inference rows again under bf16 autocast (`--bf16` / `--precision bf16`; opt-in
  settings with other numbers than float32), only where the device has bf16 hardware (`utils.device.native_bf16`);
* RVQ-VAE train step per part (batch 32 x 64 frames; `benchmarks/bench_rvq.py`);
* end-to-end inference real-time factor per NFE and the streaming first-window latency
  (`benchmarks/bench_inference.py`, 30 s of audio);
* evaluation of a speaker-2-size test set (956 s; `benchmarks/bench_eval.py`), without and with the face metrics
  (`--face 4000`: a toy SMPL-X in the real model's layout);
* memory over a long run: a 500-update tiny RVQ training (`rvq_beatx_train.py` on random smooth windows) whose
  resident memory is sampled every 0.2 s; "flat" = the last fifth's median within 5% of the median of the second
  fifth (after warm-up).

Peak RSS of a row = the child's ``ru_maxrss`` (os.wait4). Also recorded: torch version, threads, CPU count, load
average before and after (a shared machine inflates every time; compare rows measured in one run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent


def run_child(cmd: list[str], log: Path, sample_rss: bool = False) -> dict[str, Any]:
    """Run ``cmd`` in the repo; wall seconds, exit code, peak RSS (MiB) and, with ``sample_rss``, RSS samples."""
    t0 = time.perf_counter()
    samples: list[tuple[float, float]] = []
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        status = None
        while status is None:
            pid, st, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status = (st, usage)
                break
            if sample_rss:
                try:
                    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            samples.append((time.perf_counter() - t0, int(line.split()[1]) / 1024))
                except OSError:
                    pass
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status[0])
    out = {"cmd": " ".join(cmd[1:]), "rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mib": round(status[1].ru_maxrss / 1024, 1)}  # fmt: skip
    if sample_rss:
        out["rss_samples_mib"] = samples
    if proc.returncode != 0:
        out["log_tail"] = log.read_text(errors="replace")[-2000:]
    return out


def flat_after_warmup(samples: list[tuple[float, float]], tol: float = 0.05) -> dict[str, Any]:
    """RSS of the last fifth vs the second fifth of the run (medians): flat when within ``tol``."""
    import numpy as np

    rss = np.array([s[1] for s in samples])
    if rss.size < 10:
        return {"flat": None, "why": f"only {rss.size} samples"}
    k = rss.size // 5
    early, late = float(np.median(rss[k : 2 * k])), float(np.median(rss[-k:]))
    return {"flat": abs(late - early) <= tol * early, "rss_second_fifth_mib": round(early, 1),
            "rss_last_fifth_mib": round(late, 1), "growth": round(late / early - 1, 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="1 timed iteration per row, 10 s of audio, 100 updates")
    ap.add_argument("--out", default="outputs/speed_report.json")
    a = ap.parse_args(argv)
    import torch

    iters = "1" if a.quick else "3"
    py = sys.executable
    report: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                              "device": a.device, "load_average_before": os.getloadavg(), "rows": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="speed_report_") as tmp:
        t = Path(tmp)
        jobs = {
            "generators": [py, "-m", "benchmarks.bench_generators", "--batch", "8", "--sample-batch", "1", "--iters",
                           iters, "--warmup", "1", "--device", a.device, "--out", str(t / "generators.json")],
            "rvq": [py, "benchmarks/bench_rvq.py", "--batch", "32", "--frames", "64", "--iters", iters, "--devices",
                    a.device, "--out", str(t / "rvq.json")],
            "inference": [py, "-m", "benchmarks.bench_inference", "--seconds", "10" if a.quick else "30", "--nfe",
                          "1,2", "--repeats", "1" if a.quick else "2", "--device", a.device, "--out",
                          str(t / "inference.json")],
            # bf16 autocast (opt-in: `amp: bf16`, `--precision bf16`): the generator rows again, other numbers
            "generators_bf16": [py, "-m", "benchmarks.bench_generators", "--batch", "8", "--sample-batch", "1",
                                "--iters", iters, "--warmup", "1", "--device", a.device, "--bf16", "--only", "shortcut",
                                "diffusion", "--out", str(t / "generators_bf16.json")],
            "rvq_bf16": [py, "benchmarks/bench_rvq.py", "--batch", "32", "--frames", "64", "--iters", iters,
                         "--devices", a.device, "--parts", "upper", "--bf16", "--out", str(t / "rvq_bf16.json")],
            "inference_bf16": [py, "-m", "benchmarks.bench_inference", "--seconds", "10" if a.quick else "30",
                               "--nfe", "1,2", "--repeats", "1" if a.quick else "2", "--device", a.device,
                               "--precision", "bf16", "--out", str(t / "inference_bf16.json")],
            "evaluation": [py, "benchmarks/bench_eval.py", "--out", str(t / "evaluation.json")],
            "evaluation_face": [py, "benchmarks/bench_eval.py", "--face", "4000", "--bootstrap", "100", "--out",
                                str(t / "evaluation_face.json")],
        }  # fmt: skip
        from utils.device import get_device, native_bf16

        report["native_bf16"] = native_bf16(get_device(a.device))
        for name, cmd in jobs.items():
            if name.endswith("_bf16") and not report["native_bf16"]:
                print(f"[speed_report] {name}: skipped (no bf16 hardware on {a.device})", flush=True)
                continue
            print(f"[speed_report] {name} ...", flush=True)
            row = run_child(cmd, t / f"{name}.log")
            res = t / f"{name}.json"
            if res.is_file():
                row["result"] = json.loads(res.read_text())
            report["rows"][name] = row
            print(f"[speed_report] {name}: {row['seconds']} s, peak RSS {row['peak_rss_mib']} MiB, rc {row['rc']}",
                  flush=True)  # fmt: skip
        updates = 100 if a.quick else 500
        cmd = [py, "rvq_beatx_train.py", "-c", "configs/rvq/upper_tiny.yaml", f"output_dir={t / 'long'}", "data=null",
               "dataset={target: trainers.rvq.SmoothRandomWindows, params: {num_windows: 64, length: 64}}",
               "loss.fk_vel=0", "loss.fk_speed=0",  # the joint-position terms need data statistics
               "model={nb_code: 64, code_dim: 128, width: 32, depth: 2, num_quantizers: 6}", "batch_size=16",
               f"solver.iterations={updates}", "solver.milestones=[400]", "logging=[jsonl]", "log_period=50",
               "val_period=100", "val_unit=iter", "val.max_windows=16", "val.batch_size=16"]  # fmt: skip
        print(f"[speed_report] memory over {updates} tiny training updates ...", flush=True)
        row = run_child(cmd, t / "long.log", sample_rss=True)
        row["memory"] = flat_after_warmup(row.get("rss_samples_mib", []))
        row["updates"] = updates
        report["rows"]["long_run_memory"] = row
    report["load_average_after"] = os.getloadavg()
    print(table(report))
    from utils.io import save_json

    save_json(report, a.out)
    print(f"[speed_report] wrote {a.out}")
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a markdown table: one line per measured quantity."""
    lines = ["| row | value | peak RSS (MiB) |", "|---|---|---|"]
    rows = report["rows"]
    for key, tag in (("generators", ""), ("generators_bf16", ", bf16")):
        g = rows.get(key, {}).get("result", {})
        for name in ("shortcut", "reflow", "meanflow", "diffusion"):
            if name in g:
                r = g[name]
                lines.append(f"| {name}{tag}: train step (batch {g['batch']}) / one window's sampling (NFE {r['nfe']}) "
                             f"| {r['train_step_s']:.3f} s / {r['sample_s']:.3f} s | {rows[key]['peak_rss_mib']} |")
    for key, tag in (("rvq", ""), ("rvq_bf16", ", bf16")):
        for r in rows.get(key, {}).get("result", {}).get("results", []):
            lines.append(f"| RVQ-VAE {r['part']}{tag}: train step (batch {r['batch']}x{r['frames']}) | "
                         f"{r['median_s']:.3f} s | {rows[key]['peak_rss_mib']} |")  # fmt: skip
    for key, tag in (("inference", ""), ("inference_bf16", ", bf16")):
        inf = rows.get(key, {}).get("result", {})
        for r in inf.get("runs", []):
            lines.append(f"| inference n={r['n_steps']}{' CFG' if r['cfg'] else ''}{tag}: real-time factor | "
                         f"{r['real_time_factor']:.4f} ({r['x_faster_than_real_time']}x) | "
                         f"{rows[key]['peak_rss_mib']} |")
        if "streaming_n2" in inf:
            lines.append(f"| streaming n=2{tag}: first-window latency | "
                         f"{inf['streaming_n2']['first_window_latency_s']:.3f} s | {rows[key]['peak_rss_mib']} |")
    ev = rows.get("evaluation", {}).get("result")
    if ev:
        lines.append(f"| evaluation of {ev['seconds_of_motion']:.0f} s (FK + FGD + BC + L1div) | "
                     f"{ev['components_total_s']:.1f} s | {rows['evaluation']['peak_rss_mib']} |")
    ev = rows.get("evaluation_face", {}).get("result")
    if ev:
        face_s = ev["components_s"]["face_subset"]
        lines.append(f"| evaluation of {ev['seconds_of_motion']:.0f} s with face MSE/LVD (toy SMPL-X, "
                     f"{ev['face_region_vertices']} head vertices; face part {face_s:.1f} s) | "
                     f"{ev['components_total_s']:.1f} s | {rows['evaluation_face']['peak_rss_mib']} |")
    mem = rows.get("long_run_memory")
    if mem:
        m = mem["memory"]
        lines.append(f"| {mem['updates']} tiny training updates: RSS flat after warm-up | {m.get('flat')} "
                     f"(growth {m.get('growth')}) | {mem['peak_rss_mib']} |")
    lines.append(f"\ntorch {report['torch']}, {report['threads']} threads, {report['cpus']} CPUs, device "
                 f"{report['device']}; load average before {report['load_average_before'][0]:.1f}, after "
                 f"{report['load_average_after'][0]:.1f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
