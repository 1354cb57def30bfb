"""Time one training step and one sampling call of the full-size generators (shortcut, reflow, MeanFlow, DDIM).

    python -m benchmarks.bench_generators [--batch 128] [--sample-batch 32] [--iters 3] [--warmup 1]
                                          [--device auto|cpu|cuda] [--bf16] [--out results.json]

Full-size networks (official v2 config: denoiser 256-D, 8+3 blocks; modality encoder 256-D, 11195-word table).
Reports median seconds for `loss(...)` + backward (train mode, batch --batch) and for `sample_with_stats(...)`
(eval mode, batch --sample-batch) with each generator's default steps/guidance, plus NFE. Audio is a 128-frame
window (68266 samples, 2 channels). ``sample_net_s`` / ``sample_net_uncached_s``: the sampling loop alone (condition
precomputed), with the per-window condition cache (`models.layers.condition_cache`, the default) and
without it, timed alternately in one loop; ``cache_identical`` says whether both gave bit-identical latents.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from models.generators import build_generator
from utils.device import get_device, seed_everything
from utils.io import save_json

DENOISER = {"target": "models.denoiser.GestureDenoiser", "params": {}}
ENCODER = {"target": "models.modality_encoder.ModalityEncoder", "params": {"vocab_size": 11195}}
GENERATORS = {
    "shortcut": {"name": "shortcut", "params": {"modality_encoder": ENCODER, "denoiser": DENOISER}},
    "diffusion": {"name": "diffusion", "params": {"modality_encoder": ENCODER, "denoiser": DENOISER}},
    "reflow": {"name": "reflow", "params": {"modality_encoder": ENCODER, "denoiser": DENOISER}},
    "meanflow": {"name": "meanflow", "params": {"modality_encoder": ENCODER, "denoiser": DENOISER}},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(b: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    audio = torch.rand(b, 68266, 2, generator=g)
    word = torch.randint(0, 11195, (b, 128), generator=g)
    latents = torch.randn(b, 32, 384, generator=g)
    noise = torch.randn(b, 384, 1, 32, generator=g)  # a coupled noise draw: ReFlow needs one, the others accept it
    return audio.to(device), word.to(device), latents.to(device), noise.to(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _median_time(fn, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn, device) for _ in range(iters))


def _median_pair(fa: Callable[[], None], fb: Callable[[], None], iters: int, warmup: int,
                 device: torch.device) -> tuple[float, float]:
    """Medians of two functions timed alternately (a, b, a, b, ...), so machine load hits both alike."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    for _ in range(iters):
        ta.append(_timed(fa, device))
        tb.append(_timed(fb, device))
    return statistics.median(ta), statistics.median(tb)


def bench(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    seed_everything(0)
    gen = build_generator(GENERATORS[name]).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    audio, word, latents, noise = _inputs(args.batch, device)

    def train_step():
        gen.train()
        gen.zero_grad(set_to_none=True)
        with autocast:
            out = gen.loss(latents, audio, word, latents[:, :4], noise=noise)
        out["loss"].backward()

    sa, sw, sl = audio[: args.sample_batch], word[: args.sample_batch], latents[: args.sample_batch, :4]
    stats = {}

    def sample():
        gen.eval()
        with autocast:
            stats["out"] = gen.sample_with_stats(sa, sw, sl)

    res = {
        "train_step_s": _median_time(train_step, args.iters, args.warmup, device),
        "sample_s": _median_time(sample, args.iters, args.warmup, device),
    }
    gen.eval()
    with torch.no_grad(), autocast:
        at = gen.encode(sa, sw)
    snoise = noise[: args.sample_batch]
    n, w = gen.sampler.resolve(None, None)

    def net_cached() -> None:
        with autocast:
            stats["cached"] = gen.sample_with_stats(None, None, sl, noise=snoise, at_feat=at).latents

    def net_uncached() -> None:
        with torch.no_grad(), autocast:
            stats["plain"] = gen.sampler(gen.sampling_net, snoise, sl, at, gen.null_cond, n, w).latents

    res["sample_net_s"], res["sample_net_uncached_s"] = _median_pair(net_cached, net_uncached, args.iters,
                                                                     args.warmup, device)
    res["cache_identical"] = bool(torch.equal(stats["cached"], stats["plain"]))
    out = stats["out"]
    res.update(nfe=out.nfe, nfe_rows=out.nfe_rows, finite=bool(torch.isfinite(out.latents).all()))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sample-batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or CPU: fast with avx512_bf16/AMX)")
    ap.add_argument("--only", nargs="+", choices=sorted(GENERATORS), default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = get_device(args.device)
    results = {"device": str(device), "batch": args.batch, "sample_batch": args.sample_batch, "bf16": args.bf16}
    for name in args.only or sorted(GENERATORS):
        results[name] = bench(name, args, device)
        print(name, results[name], flush=True)
    if args.out:
        save_json(results, args.out)


if __name__ == "__main__":
    main()
