"""What this machine's CPU (or GPU) sustains on the layer shapes the models use, in float32 and bf16.

    python benchmarks/bench_peak.py [--device cpu|cuda] [--threads N] [--out peak.json]

Reports GFLOP/s of a 1024^3 matmul, of a (256 x 512) @ (512 x 1024) matmul (a denoiser linear on one window's tokens)
and of a 3-tap Conv1d with 64 channels over 16,000 samples (the audio encoder's kind of layer), each in float32 and
in bf16, plus the x86 feature flags that decide the bf16 speed (avx512_bf16, amx_bf16) and whether oneDNN reports a
bf16 hardware (`utils.device.native_bf16`). Use it to choose `--precision bf16` / `amp: bf16`: where bf16 is not
clearly faster than float32 here, keep float32. The bf16 numbers are for bf16 tensors; autocast adds the casts, so
the models gain less than these ratios (see the README's speed report). Medians of --iters calls after 2 warm-ups.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.device import get_device, native_bf16  # noqa: E402
from utils.io import save_json  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> dict[str, bool]:
    """The x86 feature flags above, from /proc/cpuinfo (all False where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return dict.fromkeys(FLAGS, False)
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return {f: f in have for f in FLAGS}


def _median_s(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    times = []
    for i in range(iters + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(device: torch.device, dtype: torch.dtype, iters: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    big_a, big_b = (torch.randn(1024, 1024, generator=g).to(device, dtype) for _ in range(2))
    x, w = torch.randn(256, 512, generator=g).to(device, dtype), torch.randn(512, 1024, generator=g).to(device, dtype)
    conv = torch.nn.Conv1d(64, 64, 3, padding=1).to(device, dtype)
    sig = torch.randn(2, 64, 16000, generator=g).to(device, dtype)
    with torch.inference_mode():
        return {
            "matmul_1024": 2 * 1024**3 / _median_s(lambda: big_a @ big_b, device, iters) / 1e9,
            "linear_256x512x1024": 2 * 256 * 512 * 1024 / _median_s(lambda: x @ w, device, iters * 10) / 1e9,
            "conv1d_64ch_16k": 2 * 64 * 64 * 3 * 16000 * 2 / _median_s(lambda: conv(sig), device, iters) / 1e9,
        }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", help="also write the results as json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = get_device(a.device)
    res = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_flags(),
           "native_bf16": native_bf16(device), "gflops": {}}  # fmt: skip
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        res["gflops"][name] = measure(device, dtype, a.iters)
    print(f"{res['device']}, {res['threads']} threads, torch {res['torch']} ({res['cpu_capability']}); "
          f"flags {', '.join(f for f, v in res['cpu_flags'].items() if v) or 'none found'}; "
          f"native bf16: {res['native_bf16']}")  # fmt: skip
    for shape in res["gflops"]["fp32"]:
        f32, b16 = res["gflops"]["fp32"][shape], res["gflops"]["bf16"][shape]
        print(f"{shape:>22}: fp32 {f32:7.1f} GFLOP/s, bf16 {b16:7.1f} GFLOP/s ({b16 / f32:.2f}x)")
    if a.out:
        save_json(res, a.out)
    return res


if __name__ == "__main__":
    main()
