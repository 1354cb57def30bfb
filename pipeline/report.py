"""The results table, report.md / results.md and the plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from utils.io import save_text


# ----------------------------------------------------------------------------------------------- table
def _fmt(v: float | None, ci: list[float] | None = None, digits: int = 4, sig: bool = False) -> str:
    """``v [lo, hi]`` with ``digits`` decimals, or ``digits - 1`` significant figures when ``sig`` (FGD values of a
    corpus-trained autoencoder can be ~1e-4)."""
    if v is None:
        return "–"
    f = (lambda x: f"{x:.{digits - 1}g}") if sig else (lambda x: f"{x:.{digits}f}")
    s = f(v)
    if ci:
        s += f" [{f(ci[0])}, {f(ci[1])}]"
    return s


def _finite(v: float | None) -> float | None:
    return None if v is None or v != v else v


def table_rows(tests: dict[str, dict[str, Any]], labels: dict[str, str], check: dict[str, Any] | None) -> list[dict]:
    """Rows (name, fgd, bc, l1div with CIs, nfe, rtf): GT, every test run, the mismatched-audio control."""
    rows: list[dict[str, Any]] = []
    first = next(iter(tests.values()), None)
    if first is not None:
        m, ci = first["metrics"], first.get("ci95", {})
        rows.append({"name": "GT", "fgd": (None, None), "bc": (m.get("bc_gt"), ci.get("bc_gt")),
                     "l1div": (m.get("l1div_gt"), ci.get("l1div_gt")), "nfe": None, "rtf": None,
                     "ci": "bootstrap over sequences"})  # fmt: skip
    for run, rep in tests.items():
        m, ci = rep["metrics"], rep.get("ci95", {})
        gen = rep.get("generation", {})
        rows.append({"name": labels.get(run, run), "fgd": (m.get("fgd"), ci.get("fgd")),
                     "bc": (m.get("bc"), ci.get("bc")), "l1div": (m.get("l1div"), ci.get("l1div")),
                     "nfe": gen.get("nfe_per_window"), "rtf": rep.get("timing", {}).get("real_time_factor"),
                     "ci": "bootstrap over sequences"})  # fmt: skip
    if check is not None:
        # the learning check's own conditions are in their own table (learning_check_line); the table keeps the
        # audio-swapped control with the test runs' protocol when the check computed it
        sm = check["summary"]["audio_swapped"]
        table_protocol = (first or {}).get("protocol", {}).get("id", check["bc_protocol"])
        bc = sm["bc"] if table_protocol == check["bc_protocol"] else sm.get(f"bc_{table_protocol}")
        rows.append({"name": f"control (audio swapped, {check['generator']} n={check['sampler']['n_steps']})",
                     "fgd": (None, None), "bc": (bc, None), "l1div": (None, None),
                     "nfe": check.get("nfe_per_window"), "rtf": check.get("real_time_factor"),
                     "ci": "–"})  # fmt: skip
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    out = ["| model | FGD (raw) [95% CI] | BC [95% CI] | L1div [95% CI] | NFE / window | real-time factor | CI over |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        nfe = "–" if r["nfe"] is None else str(r["nfe"])
        rtf = "–" if r["rtf"] is None else f"{r['rtf']:.3f}"
        fgd = _fmt(*r["fgd"], sig=True)
        out.append(f"| {r['name']} | {fgd} | {_fmt(*r['bc'])} | {_fmt(*r['l1div'], digits=3)} | {nfe} | "
                   f"{rtf} | {r['ci']} |")  # fmt: skip
    return "\n".join(out)


def console_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<44}{'FGD':>10}{'BC':>10}{'L1div':>10}{'NFE':>6}{'RTF':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = "–" if r["fgd"][0] is None else f"{r['fgd'][0]:.4f}"
        rtf = "–" if r["rtf"] is None else f"{r['rtf']:.3f}"
        lines.append(f"{r['name'][:43]:<44}{f:>10}{_fmt(r['bc'][0]):>10}{_fmt(r['l1div'][0], digits=3):>10}"
                     f"{'–' if r['nfe'] is None else r['nfe']:>6}{rtf:>8}")  # fmt: skip
    return "\n".join(lines)


def learning_check_line(check: dict[str, Any]) -> str:
    """The check's verdict, the statistic behind each criterion with its CI, and every condition's means."""
    verdict = "PASSED" if check["passed"] else "FAILED"
    st = check["statistics"]
    crit = "; ".join(f"({k[0]}) {k[2:].replace('_', ' ')}: {'pass' if c['passed'] else 'FAIL'} — {c['rule']}"
                     for k, c in check["criteria"].items())  # fmt: skip
    line = (f"Learning check {verdict} ({check['generator']}, {check['sampler']['n_steps']} steps, "
            f"{check['n_files']} test files, {check['n_seeds']} sampling seeds; {check['ci_method']}"
            + ("" if check.get("enough_files", True) else f"; fewer than {check['rule']['min_test_files']} files")
            + f"). {crit}.")  # fmt: skip
    stats = ["", "| statistic | value [95% CI] |", "|---|---|",
             *(f"| {k.replace('_', ' ')} | {_fmt(v['value'], v['ci95'])} |" for k, v in st.items())]  # fmt: skip
    keys = ("bc", "bc_emage2024", "fgd_file", "speed", "acceleration", "jerk", "beat_placement", "jaw_corr")
    head = ("| condition | BC (corrected) | BC (emage2024) | paired per-file FGD | speed (m/s) | acc. (m/s²) | "
            "jerk (m/s³) | beat placement | jaw corr. | speed / acc. / jerk vs GT |")
    rows = ["", head, "|---|---|---|---|---|---|---|---|---|---|"]
    for c, m in check["summary"].items():
        ratios = check["realism_ratios_vs_gt"].get(c)
        rr = "–" if ratios is None else " / ".join(f"{ratios[q]:.2f}" for q in ("speed", "acceleration", "jerk"))
        # jaw corr.: NaN (–) where the jaw does not move (a generator without a face part leaves it at zero)
        vals = " | ".join(_fmt(_finite(m.get(k)) if k == "jaw_corr" else m[k], sig=k == "fgd_file") for k in keys)
        rows.append(f"| {c} | {vals} | {rr} |")
    notes = ["", "Conditions: own audio+words; audio swapped (words kept); words swapped (audio kept); audio+words "
             "delayed 0.5 s (leading silence / PAD, cropped), scored against the original audio. References: GT, the "
             "RVQ round trip of GT, another file's GT scored with this file's audio. Donors: "
             + ", ".join(f"{a} <- {b}" for a, b in zip(check.get("test_ids", []), check.get("donor_ids", [])))
             + ". Every motion is in report/learning_check/<condition>/ (res_/gt_ npz, wavs.json)."]  # fmt: skip
    return line + "\n" + "\n".join(stats + rows + notes)


# ----------------------------------------------------------------------------------------------- plots
def _curves_of(metrics_path: Path) -> dict[str, tuple[list[int], list[float]]]:
    from utils.logging import read_metrics

    curves: dict[str, tuple[list[int], list[float]]] = {}
    for rec in read_metrics(metrics_path):
        for k, v in rec.items():
            if k in ("step", "time") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if not (k.endswith("loss") or k.startswith("val/")):
                continue
            xs, ys = curves.setdefault(k, ([], []))
            xs.append(int(rec["step"]))
            ys.append(float(v))
    return curves


def plot_training_curves(runs: dict[str, Path], out_png: Path) -> Path:
    """One panel per run: training loss and validation metrics (from its metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, _curves_of(p)) for name, p in runs.items() if Path(p).is_file()]
    if not panels:
        raise ValueError("no training metrics to plot")
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels):
        for k, (xs, ys) in sorted(curves.items()):
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=k)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_yscale("log" if all(y > 0 for _, ys in curves.values() for y in ys) else "linear")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_speed_vs_onsets(gt_npz: Path, pred_npz: Path, wav: Path, mean_vel: np.ndarray, out_png: Path,
                         seconds: float = 12.0, joints: tuple[int, ...] = (15, 18, 19, 20, 21)) -> Path:  # fmt: skip
    """Normalised per-joint speed (GT and prediction) with the audio onsets (librosa, hop 512 at 16 kHz)."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from geometry.body_model import get_fk
    from geometry.skeleton import JOINT_NAMES

    y, sr = librosa.load(str(wav), sr=16000)
    onsets = librosa.onset.onset_detect(y=y, sr=sr, hop_length=512, units="time")
    fig, axes = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    for ax, (title, path) in zip(axes, (("ground truth", gt_npz), ("generated", pred_npz))):
        with np.load(path, allow_pickle=False) as z:
            poses, betas = z["poses"].astype(np.float64), z["betas"] if "betas" in z.files else None
        fk = get_fk().with_betas(None if betas is None else np.asarray(betas).reshape(-1))
        j = fk(torch.from_numpy(poses)).numpy()
        n = min(len(j), int(seconds * 30))
        v = np.linalg.norm(np.gradient(j[:n], axis=0), axis=-1) * 30.0 / np.maximum(np.asarray(mean_vel), 1e-8)
        t = np.arange(n) / 30.0
        for k in joints:
            ax.plot(t, v[:, k], lw=1, label=JOINT_NAMES[k])
        for o in onsets[onsets < n / 30.0]:
            ax.axvline(o, color="k", alpha=0.25, lw=0.8)
        ax.set_title(f"{title}: joint speed / mean speed; grey lines = audio onsets")
        ax.legend(fontsize=7, ncol=len(joints))
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


# ----------------------------------------------------------------------------------------------- report
def write_report(
    report_dir: Path,
    tests: dict[str, dict[str, Any]],
    labels: dict[str, str],
    check: dict[str, Any] | None,
    command: str,
    commit: str,
    stage_log: list[dict[str, Any]],
    notes: list[str],
    plots: list[Path],
    codec: str | None = None,
    nfe: str | None = None,
    reproducibility: str | None = None,
    calibration: str | None = None,
) -> dict[str, Path]:
    """metrics/<run>.json copies, report.md and results.md under ``report_dir``; returns their paths."""
    from utils.io import save_json

    report_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for run, rep in tests.items():
        save_json(rep, report_dir / "metrics" / f"{run}.json")
        paths[f"metrics_{run}"] = report_dir / "metrics" / f"{run}.json"
    rows = table_rows(tests, labels, check)
    table = markdown_table(rows)
    check_line = learning_check_line(check) if check else "Learning check not run."
    if calibration:
        check_line = calibration + "\n" + check_line
    codec_part = ["RVQ round trip of held-out GT (encode -> decode; motion realism vs GT, bootstrap over files):", "",
                  codec, ""] if codec else []  # fmt: skip
    nfe_part = ["Network calls per window vs quality (same test split, FGD autoencoder and sampling seed; per-file "
                "means with 95% bootstrap CIs over files; NFE counts a classifier-free-guided call once, on a doubled "
                "batch):", "", nfe, ""] if nfe else []  # fmt: skip
    results = "\n".join([
        "## Results on the synthetic corpus (produced by the pipeline)", "",
        f"Command: `{command}`  ", f"Git commit: `{commit}`", "", table, "", *nfe_part, check_line, "", *codec_part,
        "FGD uses an FGD autoencoder trained on this corpus (not AESKConv_240_100.bin), so its values are not "
        "comparable with published numbers. BC/L1div: EMAGE protocol (emage2024). Shortcut and diffusion rows: "
        "95% CIs are percentile bootstraps over test sequences.", "",
    ])  # fmt: skip
    save_text(results, report_dir / "results.md")
    paths["results"] = report_dir / "results.md"
    timing = ["| stage | seconds | skipped |", "|---|---|---|"]
    timing += [f"| {s['stage']} | {s['seconds'] if s['seconds'] is not None else '–'} | {s['skipped']} |"
               for s in stage_log]  # fmt: skip
    gt_copied = sorted({f for rep in tests.values() for f in rep.get("gt_copied", [])})
    body = [
        "# Pipeline report", "", f"Command: `{command}`  ", f"Git commit: `{commit}`", "", "## Results", "", table,
        "", *nfe_part, check_line, "", *codec_part, "## Notes", "",
        *[f"- {n}" for n in notes],
        f"- Fields of the predictions copied from ground truth (reference test protocol): {gt_copied}.",
        "", *([reproducibility] if reproducibility else []),
        "## Stages", "", *timing, "", "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], "",
    ]  # fmt: skip
    save_text("\n".join(body), report_dir / "report.md")
    paths["report"] = report_dir / "report.md"
    print(console_table(rows))
    print(check_line)
    return paths


def load_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
