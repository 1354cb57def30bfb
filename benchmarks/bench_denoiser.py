"""Time GestureDenoiser forward+backward at the official batch size, reference vs clean variants.

    python -m benchmarks.bench_denoiser [--batch 128] [--iters 5] [--warmup 2] [--device auto|cpu|cuda]
                                        [--threads N] [--out results.json]

Reports the median seconds per iteration (forward + backward of an MSE loss, model in train mode, full-size
config: 256-D, 8 spatial-temporal blocks, 3 cross-attention blocks) for each variant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.denoiser import GestureDenoiser
from utils.device import get_device, seed_everything
from utils.io import save_json

VARIANTS = {
    "reference": {},
    "per_frame": {"cross_attn_layout": "per_frame"},
    "clean": {"cross_attn_layout": "per_frame", "joint_residual": "clean"},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_variant(opts: dict, batch: int, iters: int, warmup: int, device: torch.device) -> dict:
    seed_everything(0)
    model = GestureDenoiser(**opts).to(device).train()
    x = torch.randn(batch, 384, 1, 32, device=device)
    t, d = torch.rand(batch, device=device), torch.rand(batch, device=device)
    seed, at = torch.randn(batch, 4, 384, device=device), torch.randn(batch, 32, 768, device=device)
    target = torch.randn_like(x)
    times = []
    for i in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x, t, d, seed, at), target)
        loss.backward()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "iters": iters}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default=None, help="optional JSON output path")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    results = {"device": name, "batch": args.batch, "torch": torch.__version__, "variants": {}}
    for v in args.variants:
        r = bench_variant(VARIANTS[v], args.batch, args.iters, args.warmup, device)
        results["variants"][v] = r
        print(f"{v:10s} batch {args.batch} on {name}: fwd+bwd median {r['median_s'] * 1e3:8.1f} ms "
              f"(min {r['min_s'] * 1e3:.1f} ms, {args.iters} iters)", flush=True)
    if args.out:
        save_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
