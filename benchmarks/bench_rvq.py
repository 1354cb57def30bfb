"""Train-step time of the official-size RVQ-VAEs (batch 256 x 64 frames, AdamW, SmoothL1 + 0.02 commit).

    python benchmarks/bench_rvq.py                         # CPU, and CUDA when available
    python benchmarks/bench_rvq.py --devices cuda --iters 20 --parts upper hands
    python benchmarks/bench_rvq.py --out outputs/bench_rvq.json
    python benchmarks/bench_rvq.py --bf16                  # under bf16 autocast, as the trainers' `amp: bf16`

Prints one line per (device, part) and optionally writes a JSON file (atomically). Random inputs: the step time does
not depend on the data. The first ``--warmup`` steps (codebook initialisation, cuDNN autotuning) are not timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geometry.skeleton import part_dim  # noqa: E402
from models.vq.rvqvae import RVQVAE  # noqa: E402
from utils.io import save_json  # noqa: E402
from utils.runs import library_versions  # noqa: E402

PARTS = ("lower_trans", "upper", "hands", "face")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rvq_train_step(model: torch.nn.Module, x: torch.Tensor, bf16: bool = False) -> Callable[[], float]:
    """One benchmark training step of an RVQ-VAE on ``x`` (B, T, D): AdamW, SmoothL1 + 0.02 commit; returns the loss.
    Any module with the RVQ-VAE call ``model(x) -> (rec, commit, perplexity)`` (``bench_upstream`` times upstream's)."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0)

    def step() -> float:
        model.train()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            rec, commit, _ = model(x)
            loss = F.smooth_l1_loss(rec.float(), x) + 0.02 * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def bench_part(part: str, device: torch.device, batch: int, frames: int, iters: int, warmup: int,
               bf16: bool = False) -> dict:  # fmt: skip
    torch.manual_seed(0)
    model = RVQVAE(part_dim(part)).to(device).train()
    x = torch.randn(batch, frames, part_dim(part), device=device)
    step = rvq_train_step(model, x, bf16)

    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    res = {"part": part, "device": str(device), "batch": batch, "frames": frames, "iters": iters, "bf16": bf16,
           "median_s": times[len(times) // 2], "min_s": times[0],
           "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
        res["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or CPU: fast with avx512_bf16/AMX)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for dev in devices:
        device = torch.device(dev)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("cuda requested but not available; skipped")
            continue
        for part in args.parts:
            r = bench_part(part, device, args.batch, args.frames, args.iters, args.warmup, args.bf16)
            results.append(r)
            if "gpu" in r:
                extra = f", {r['gpu']}, peak {r['max_mem_gib']:.1f} GiB"
            else:
                extra = f", {torch.get_num_threads()} threads"
            print(f"{r['device']:>6} {part:>11}: {r['median_s'] * 1000:9.1f} ms/step (min {r['min_s'] * 1000:.1f}; "
                  f"batch {r['batch']}x{r['frames']}, {r['params']:,} params{extra})", flush=True)
    if args.out:
        save_json({"results": results, "versions": library_versions()}, args.out)
    return results


if __name__ == "__main__":
    main()
