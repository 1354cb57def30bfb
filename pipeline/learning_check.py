"""Learning check: does the trained generator use its audio?

On the held-out test files the trained model is run twice with identical sampling seeds: with each file's own audio
and words (``model``), and with another test file's audio and words (``control``: file i gets the audio and words of
``donor_indices`` (a derangement that prefers a file of another speaker: offset n//2 in the speaker-sorted list),
cropped or zero/pad-word padded to file i's length). Both are evaluated against file i's ground truth and file i's
audio. The model passes when it beats the control with non-overlapping 95% CIs on

* BC (higher): beats of the generated motion vs the onsets of the file's own audio, under ``bc_protocol``
  (default ``corrected``: the EMAGE-2024 protocol's threshold mask is offset by 2 s from the minima it filters, so
  it keeps velocity minima regardless of speed and rewards any jitter; the other protocol is computed and reported
  beside it as ``bc_<protocol>``, never silently dropped);
* paired per-file FGD (lower, ``fgd_file``): for every file, the Fréchet distance between the FGD-autoencoder
  tokens of that file's generated motion and of that same file's ground truth, averaged over files. The standard
  pooled FGD (all generated tokens vs all GT tokens) is reported too, but it cannot tell the control apart: the
  control only permutes which audio drives which file, so its pooled motion distribution is (nearly) the model's.
  The per-file FGD asks whether each file's motion has *that file's* style (gesture size/tempo follow its audio).

CIs: with at least ``min_sequences_for_bootstrap`` test files, a percentile bootstrap over sequences (seed 0 run);
otherwise over ``seeds`` repeated sampling seeds: mean +- t(0.975, K-1) * sd / sqrt(K) of the test-set metric.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

METRICS = ("fgd", "fgd_file", "bc", "l1div", "bc_gt", "l1div_gt")


def mismatched_item(item: dict[str, Any], donor: dict[str, Any], pad_word: int = 0) -> dict[str, Any]:
    """``item`` with ``donor``'s audio and words, cropped or padded (silence / ``pad_word``) to item's length."""
    out = dict(item)
    a, n_a = donor["audio"], item["audio"].shape[0]
    if a.shape[0] >= n_a:
        out["audio"] = a[:n_a].clone()
    else:
        out["audio"] = torch.cat([a, torch.zeros((n_a - a.shape[0], *a.shape[1:]), dtype=a.dtype)])
    w, n_w = donor["word"], item["word"].shape[0]
    if w.shape[0] >= n_w:
        out["word"] = w[:n_w].clone()
    else:
        out["word"] = torch.cat([w, torch.full((n_w - w.shape[0],), pad_word, dtype=w.dtype)])
    return out


def donor_indices(speakers: list[Any]) -> list[int]:
    """For each of n files (sorted by speaker) the index of its control donor: offsets n//2, n//2+1, ..., n-1,
    1, ... tried in turn, the first with a different speaker taken (the first offset when all share a speaker)."""
    n = len(speakers)
    if n < 2:
        raise ValueError(f"the learning check needs >= 2 test files to swap audio between, got {n}")
    start = max(1, n // 2)
    offsets = [*range(start, n), *range(1, start)]
    out = []
    for i in range(n):
        cands = [(i + k) % n for k in offsets]
        out.append(next((j for j in cands if speakers[j] != speakers[i]), cands[0]))
    return out


def paired_file_fgd(fgd_moments: tuple[Any, ...]) -> float:
    """Fréchet distance between one file's generated and GT FGD tokens from the Evaluator's per-file sufficient
    statistics ``(count, sum, outer)`` of prediction then GT (``SequenceResult.fgd_moments``)."""
    from evaluation.metrics import frechet_from_moments

    mom = []
    for off in (0, 3):
        cnt, s, o = fgd_moments[off : off + 3]
        mu = s / cnt
        mom.append((mu, (o - cnt * np.outer(mu, mu)) / (cnt - 1)))
    return frechet_from_moments(mom[0][0], mom[0][1], mom[1][0], mom[1][1])


def bootstrap_mean_interval(values: list[float], n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile-bootstrap 95% interval of the mean of per-sequence values."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def seed_interval(values: list[float]) -> list[float] | None:
    """95% t-interval of the mean of K >= 2 values (repeated sampling seeds)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return [float(v.mean() - half), float(v.mean() + half)]


def separated(model_ci: list[float] | None, control_ci: list[float] | None, higher_is_better: bool) -> bool:
    """True when the two intervals do not overlap and the model's lies on the better side."""
    if not model_ci or not control_ci:
        return False
    return model_ci[0] > control_ci[1] if higher_is_better else model_ci[1] < control_ci[0]


def run_learning_check(
    model: torch.nn.Module,
    codec: Any,
    items: list[dict[str, Any]],
    opts: Any,
    fgd_model: Any,
    mean_vel: np.ndarray,
    fk: Any,
    device: torch.device,
    seeds: int = 5,
    min_sequences_for_bootstrap: int = 10,
    n_boot: int = 1000,
    protocol: str = "corrected",  # the check judges BC by the corrected protocol (see the module docstring)
    copy_gt_jaw: bool = True,
    report_protocols: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Model vs mismatched-audio control on ``items`` (WholeFileDataset items). Returns the result dict."""
    from evaluation.evaluator import Evaluator
    from inference.generate import generate_items

    n = len(items)
    donor_idx = donor_indices([int(it["speaker"]) for it in items])
    donors = [mismatched_item(items[i], items[donor_idx[i]], opts.word_pad_id) for i in range(n)]
    use_boot = n >= int(min_sequences_for_bootstrap)
    n_seeds = 1 if use_boot else int(seeds)
    if n_seeds < 2 and not use_boot:
        raise ValueError("learning_check.seeds must be >= 2 for seed intervals with few test files")
    per_seed: dict[str, list[dict[str, Any]]] = {"model": [], "control": []}
    boot: dict[str, dict[str, Any]] = {}
    per_file: dict[str, list[list[float]]] = {"model": [], "control": []}  # [seed][file] paired FGD
    gen_s, motion_frames, nfe = 0.0, 0, 0
    t0 = time.time()
    metrics = METRICS + tuple(f"{k}_{p}" for p in report_protocols for k in ("bc", "bc_gt"))
    for cond, src in (("model", items), ("control", donors)):
        for s in range(n_seeds):
            ev = Evaluator(fgd_model, mean_vel=np.asarray(mean_vel), fk=fk, protocol=protocol)
            extra = {p: Evaluator(None, mean_vel=np.asarray(mean_vel), fk=fk, protocol=p) for p in report_protocols}
            file_fgd: list[float] = []
            results = generate_items(model, codec, src, opts, device, seed=1000 * s, copy_gt_jaw=copy_gt_jaw,
                                     evaluators=[ev, *extra.values()], references=items, keep=False)  # fmt: skip
            for seq in ev.sequences:
                if seq.fgd_moments is not None:
                    file_fgd.append(paired_file_fgd(seq.fgd_moments))
            if cond == "model":
                gen_s += sum(r["seconds"] for r in results)
                motion_frames += sum(r["n_frames"] for r in results)
                nfe = results[-1]["nfe"] // max(1, results[-1]["n_windows"])
            res_all = ev.compute(n_boot=n_boot if use_boot else 0, seed=0)
            res_all["fgd_file"] = float(np.mean(file_fgd)) if file_fgd else None
            for p, e in extra.items():
                r = e.compute(n_boot=n_boot if use_boot else 0, seed=0)
                res_all[f"bc_{p}"], res_all[f"bc_gt_{p}"] = r.get("bc"), r.get("bc_gt")
                res_all.setdefault("ci95", {}).update({f"bc_{p}": r.get("ci95", {}).get("bc")})
            per_file[cond].append(file_fgd)
            per_seed[cond].append({k: res_all.get(k) for k in metrics})
            if use_boot:
                boot[cond] = dict(res_all.get("ci95", {}))
                boot[cond]["fgd_file"] = bootstrap_mean_interval(file_fgd, n_boot, 0)
            print(f"[learning_check] {cond} seed {s}: " +
                  "  ".join(f"{k}={v:.4f}" for k, v in per_seed[cond][-1].items() if v is not None), flush=True)
    summary: dict[str, Any] = {}
    for cond in ("model", "control"):
        rows = per_seed[cond]
        summary[cond] = {}
        for k in metrics:
            vals = [r[k] for r in rows if r.get(k) is not None]
            mean = float(np.mean(vals)) if vals else None
            ci = boot.get(cond, {}).get(k) if use_boot else seed_interval(vals)
            summary[cond][k] = {"mean": mean, "ci95": ci, "values": vals}
    passed_bc = separated(summary["model"]["bc"]["ci95"], summary["control"]["bc"]["ci95"], True)
    separated_other = {
        p: bool(separated(summary["model"][f"bc_{p}"]["ci95"], summary["control"][f"bc_{p}"]["ci95"], True))
        for p in report_protocols
    }
    passed_fgd = separated(summary["model"]["fgd_file"]["ci95"], summary["control"]["fgd_file"]["ci95"], False)
    return {
        "passed": bool(passed_bc and passed_fgd),
        "passed_bc": bool(passed_bc),
        "passed_fgd": bool(passed_fgd),
        "bc_protocol": protocol,
        "bc_separated_other_protocols": separated_other,
        "ci_method": ("percentile bootstrap over test sequences (1000 resamples)" if use_boot else
                      f"t-interval over {n_seeds} sampling seeds (only {n} test files; the interval covers sampling "
                      "noise for these files, not file-to-file variation)"),  # fmt: skip
        "n_test_files": n,
        "n_seeds": n_seeds,
        "control": ("the same model and sampling seeds, each test file fed another test file's audio and words (a "
                    "file of a different speaker where possible), cropped or silence/pad-word padded to its length; "
                    "scored against its own ground truth and audio"),
        "fgd_check": ("paired per-file FGD (fgd_file): per test file, generated vs that file's GT FGD-AE tokens, "
                      "mean over files; pooled FGD is reported but not used (invariant to permuting audio)"),
        "test_ids": [it["id"] for it in items],
        "donor_ids": [items[j]["id"] for j in donor_idx],
        "per_file_fgd": {c: [[float(x) for x in row] for row in per_file[c]] for c in per_file},
        **model.sampler.settings(),
        "nfe_per_window": nfe,
        "generation_seconds": gen_s,
        "real_time_factor": gen_s / (motion_frames / 30.0) if motion_frames else None,
        "seconds": round(time.time() - t0, 2),
        "results": summary,
    }


def learning_check_stage(cfg: Any) -> dict[str, Any]:
    """Pipeline stage: load the trained generator and run the check; writes learning_check.json."""
    from dataloaders.datasets import WholeFileDataset
    from dataloaders.stats import load_stats
    from evaluation.fgd_autoencoder import load_fgd_autoencoder
    from evaluation.protocols import PROTOCOL_NAMES, check_protocol
    from geometry.body_model import get_fk
    from inference.loading import build_codec, load_trained_generator, window_options
    from pipeline.stages import flatten_overrides, generator_config, out_dir, record
    from utils.device import get_device
    from utils.io import save_json

    lc = cfg.learning_check
    gen = str(lc.generator)
    scfg = generator_config(cfg, gen, flatten_overrides(lc.get("overrides")))
    device = get_device(str(scfg.get("device", "cpu")))
    stats = load_stats(scfg.data)
    codec = build_codec(scfg, stats, device)
    model = load_trained_generator(scfg, record(cfg, f"gen_{gen}")["paths"]["checkpoint"], device)
    fgd_model = load_fgd_autoencoder(record(cfg, "fgd_ae")["paths"]["checkpoint"], map_location=device)
    ds = WholeFileDataset(scfg.data, "test")
    items = [ds[i] for i in range(len(ds))]
    inf = scfg.get("inference") or {}
    bc_protocol = check_protocol(str(lc.get("bc_protocol", "corrected")))
    result = run_learning_check(
        model, codec, items, window_options(scfg), fgd_model, stats.mean_vel, get_fk(scfg.test.get("body_model")),
        device, int(lc.seeds), int(lc.min_sequences_for_bootstrap),
        protocol=bc_protocol, copy_gt_jaw=bool(inf.get("copy_gt_jaw", True)),
        report_protocols=tuple(p for p in PROTOCOL_NAMES if p != bc_protocol),
    )  # fmt: skip
    result["generator"] = gen
    path = out_dir(cfg) / "learning_check.json"
    save_json(result, path)
    verdict = "PASSED" if result["passed"] else "FAILED"
    print(f"[learning_check] {verdict}: BC separated={result['passed_bc']}, FGD separated={result['passed_fgd']} "
          f"({result['ci_method']})")
    return {"paths": {"json": str(path)}, "passed": result["passed"]}
