"""Time the evaluator on a speaker-2-size test set: 15 sequences, 956 s (28,680 frames) at 30 fps, on CPU.

Synthetic random-walk motion (pred and GT), synthetic 16 kHz audio written as wav files (so the reference's
librosa load + resample path is timed), the real VAESKConv FGD encoder architecture with random weights.
Breakdown: FK (pred+GT), FGD features (pred+GT), BC (audio onsets + motion beats, pred+GT), L1div, pooling,
bootstrap CIs. Target: <= 30 s on 2 cores for FK + FGD + BC + L1div.

    python benchmarks/bench_eval.py [--threads 2] [--protocol emage2024] [--bootstrap 1000]
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
        seqs.append((f"seq{i}", pred, gt, rng.normal(0, 1, 300), wav))
    return seqs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOL_NAMES)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--eval-threads", type=int, default=1, help="Evaluator num_threads (0: leave torch's setting)")
    ap.add_argument("--out", help="write the timings as json")
    args = ap.parse_args()
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
        ev = Evaluator(enc, np.full(55, 0.5), fk, args.protocol, num_threads=args.eval_threads or None)
        t = {"fk": 0.0, "fgd": 0.0, "bc_audio": 0.0, "bc_motion": 0.0, "l1div": 0.0}
        t_all = time.perf_counter()
        torch.set_num_threads(ev.num_threads or args.threads)  # the component timings use the Evaluator's setting
        for _sid, pred, gt, betas, wav in seqs:
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
        t_components = time.perf_counter() - t_all
        torch.set_num_threads(args.threads)
        # end to end through Evaluator.add (the same work, done once more) + pooling + bootstrap
        t0 = time.perf_counter()
        for sid, pred, gt, betas, wav in seqs:
            ev.add(pred, gt, betas, wav, sid)
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
    print(f"  {'sum':<10}{t_components:8.2f}   (FK + FGD + BC + L1div; target <= 30 s on 2 cores)")
    print(f"Evaluator.add end to end: {t_add:.2f} s; pooling: {t_pool:.3f} s; "
          f"bootstrap x{args.bootstrap}: {t_boot:.2f} s")  # fmt: skip
    print("metrics (synthetic, meaningless values):", {k: round(v, 4) for k, v in res.items() if isinstance(v, float)})
    if args.out:
        from utils.io import save_json

        save_json({"seconds_of_motion": frames / 30, "sequences": len(seqs), "components_s": t,
                   "components_total_s": t_components, "evaluator_add_s": t_add, "pooling_s": t_pool,
                   "bootstrap_s": t_boot, "threads": args.threads, "protocol": args.protocol}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
