"""Time the evaluator on a speaker-2-size test set: 15 sequences, 956 s (28,680 frames) at 30 fps, on CPU.

Synthetic random-walk motion (pred and GT), synthetic 16 kHz audio written as wav files (so the reference's
librosa load + resample path is timed), the real VAESKConv FGD encoder architecture with random weights.
Breakdown: FK (pred+GT), FGD features (pred+GT), BC (audio onsets + motion beats, pred+GT), L1div, pooling,
bootstrap CIs. Target: <= 30 s on 2 cores for FK + FGD + BC + L1div.

    python benchmarks/bench_eval.py [--threads 2] [--protocol emage2024] [--bootstrap 1000] [--face 4000]

``--face N`` adds the face metrics (face MSE and both LVDs on SMPL-X vertices) with a toy SMPL-X model written here
in the real model's layout: N head-region vertices carry the 100 expression directions and the jaw's pose blend
shapes (geometry.body_model.write_toy_smplx_model(face_region=N)), timed through the evaluator's path (the moving
vertices only, geometry.face_vertices); ``--face-compare`` also times the full mesh (smplx's float32 forward of every
vertex, then evaluation.metrics, one thread as the evaluator ran it before) and reports how far the two agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.evaluator import Evaluator  # noqa: E402
from evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOL_NAMES  # noqa: E402
from geometry.body_model import get_fk  # noqa: E402
from utils.device import torch_threads  # noqa: E402

SR = 16000


def make_test_set(folder: Path, seed: int = 0, n_seq: int = 15, seconds: float = 956.0):
    rng = np.random.default_rng(seed)
    total = int(seconds * 30)
    cuts = np.sort(rng.choice(np.arange(1, total // 30), n_seq - 1, replace=False) * 30)
    lengths = np.diff(np.concatenate([[0], cuts, [total]]))
    lengths = np.maximum(lengths, 600)
    lengths[-1] = total - lengths[:-1].sum()
    seqs = []
    for i, t in enumerate(lengths):
        gt = (np.cumsum(rng.normal(0, 0.01, (t, 165)), 0) + rng.normal(0, 0.1, 165)).astype(np.float32)
        pred = gt + np.cumsum(rng.normal(0, 0.005, (t, 165)), 0).astype(np.float32)
        y = rng.normal(0, 0.01, int((t / 30 + 0.5) * SR)).astype(np.float32)
        for c in rng.uniform(0, t / 30, int(t / 30 * 5)):
            j = int(c * SR)
            y[j : j + 160] += rng.normal(0, 0.3, len(y[j : j + 160])).astype(np.float32)
        wav = folder / f"seq{i}.wav"
        sf.write(wav, y, SR)
        expr_gt = np.cumsum(rng.normal(0, 0.05, (t, 100)), 0).astype(np.float32)
        expr_pred = expr_gt + np.cumsum(rng.normal(0, 0.02, (t, 100)), 0).astype(np.float32)
        seqs.append((f"seq{i}", pred, gt, rng.normal(0, 1, 300), wav, expr_pred, expr_gt))
    return seqs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOL_NAMES)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--eval-threads", type=int, default=1, help="Evaluator num_threads (0: leave torch's setting)")
    ap.add_argument("--face", type=int, default=0, metavar="N",
                    help="also time the face metrics with a toy SMPL-X of N head-region vertices (0: off)")
    ap.add_argument("--face-compare", action="store_true", help="with --face: also time the full-mesh path")
    ap.add_argument("--out", help="write the timings as json")
    args = ap.parse_args()
    if args.face_compare and not args.face:
        ap.error("--face-compare needs --face N")
    torch.set_num_threads(args.threads)
    from evaluation.fgd_autoencoder import VAESKConv

    torch.manual_seed(0)
    enc = VAESKConv().eval()
    fk = get_fk()
    with tempfile.TemporaryDirectory() as tmp:
        seqs = make_test_set(Path(tmp))
        frames = sum(len(s[1]) for s in seqs)
        print(f"{len(seqs)} sequences, {frames} frames ({frames / 30:.0f} s); skeleton: {fk.source}; "
              f"threads {args.threads}; protocol {args.protocol}")  # fmt: skip
        face_model = None
        if args.face:
            from geometry.body_model import get_vertex_model, write_toy_smplx_model

            face_model = get_vertex_model(write_toy_smplx_model(Path(tmp) / "SMPLX_NEUTRAL.npz", face_region=args.face))
        ev = Evaluator(enc, np.full(55, 0.5), fk, args.protocol, face_model=face_model,
                       num_threads=args.eval_threads or None)  # fmt: skip
        t = {"fk": 0.0, "fgd": 0.0, "bc_audio": 0.0, "bc_motion": 0.0, "l1div": 0.0}
        if face_model is not None:
            t.update(face_subset=0.0, face_full_mesh=0.0)
            face_diffs: list[float] = []
        t_all = time.perf_counter()
        torch.set_num_threads(ev.num_threads or args.threads)  # the component timings use the Evaluator's setting
        for _sid, pred, gt, betas, wav, ep, eg in seqs:
            if face_model is not None:
                face_diffs.append(_time_face(face_model, pred, ep, gt, eg, betas, t, args.threads, args.face_compare))
            t0 = time.perf_counter()
            jp, jg = ev._joints(pred, betas), ev._joints(gt, betas)
            t1 = time.perf_counter()
            ev._fgd_stats(pred), ev._fgd_stats(gt)
            t2 = time.perf_counter()
            on = ev.bc.onsets(wav, len(pred))
            t3 = time.perf_counter()
            ev.bc.score(ev.bc.motion_beats(jp), on), ev.bc.score(ev.bc.motion_beats(jg), on)
            t4 = time.perf_counter()
            np.abs(jp - jp.mean(0)).sum(), np.abs(jg - jg.mean(0)).sum()
            t5 = time.perf_counter()
            for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                t[k] += dt
        t_components = time.perf_counter() - t_all - t.get("face_full_mesh", 0.0)
        torch.set_num_threads(args.threads)
        # end to end through Evaluator.add (the same work, done once more) + pooling + bootstrap
        t0 = time.perf_counter()
        for sid, pred, gt, betas, wav, ep, eg in seqs:
            ev.add(pred, gt, betas, wav, sid, *((ep, eg) if face_model is not None else ()))
        t_add = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = ev.compute()
        t_pool = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev.compute(n_boot=args.bootstrap, seed=0)
        t_boot = time.perf_counter() - t0
    print("breakdown (s):")
    for k, v in t.items():
        print(f"  {k:<10}{v:8.2f}")
    print(f"  {'sum':<10}{t_components:8.2f}   (FK + FGD + BC + L1div{' + face (subset)' if args.face else ''}; "
          "target <= 30 s on 2 cores)")
    face_diff = max(face_diffs) if args.face_compare else None
    if args.face_compare:
        print(f"face metrics: moving vertices {t['face_subset']:.2f} s ({args.threads} threads) vs full mesh "
              f"{t['face_full_mesh']:.2f} s (1 thread); largest relative difference {face_diff:.1e}")
    print(f"Evaluator.add end to end: {t_add:.2f} s; pooling: {t_pool:.3f} s; "
          f"bootstrap x{args.bootstrap}: {t_boot:.2f} s")  # fmt: skip
    print("metrics (synthetic, meaningless values):", {k: round(v, 4) for k, v in res.items() if isinstance(v, float)})
    if args.out:
        from utils.io import save_json

        save_json({"seconds_of_motion": frames / 30, "sequences": len(seqs), "components_s": t,
                   "components_total_s": t_components, "evaluator_add_s": t_add, "pooling_s": t_pool,
                   "bootstrap_s": t_boot, "threads": args.threads, "protocol": args.protocol,
                   "face_region_vertices": args.face, "face_largest_relative_difference": face_diff},
                  args.out)  # fmt: skip


def _time_face(face_model, pred, ep, gt, eg, betas, t: dict, threads: int, compare: bool) -> float:
    """Face metrics of one sequence through the subset (the evaluator's path) and through the full meshes (the
    float32 smplx forward of every vertex, then evaluation.metrics); adds both times to ``t``, returns the largest
    relative difference of the three metrics."""
    from evaluation.metrics import face_mse, lvd_emage2024, lvd_evaltools

    t0 = time.perf_counter()
    with torch_threads(threads):  # as Evaluator.add: the caller's threads for the face vertex arrays
        sub = face_model.face_metrics(pred, ep, gt, eg, betas)
    t1 = time.perf_counter()
    t["face_subset"] += t1 - t0
    if not compare:
        return float("nan")
    vr, vt = face_model.face_vertices(pred, ep, betas).numpy(), face_model.face_vertices(gt, eg, betas).numpy()
    full = {"face_mse": face_mse(vr, vt), "lvd_emage2024": lvd_emage2024(vr, vt),
            "lvd_evaltools": lvd_evaltools(vr, vt)}
    del vr, vt
    t["face_full_mesh"] += time.perf_counter() - t1
    return max(abs(sub[k] - full[k]) / abs(full[k]) for k in full)


if __name__ == "__main__":
    main()
