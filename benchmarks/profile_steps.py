"""Where the time of the full-size steps goes on CPU: torch.profiler self time grouped by kind of kernel.

    python -m benchmarks.profile_steps [--rows shortcut_train diffusion_train rvq_upper_train shortcut_window
                                        diffusion_window] [--threads 2] [--top 6] [--out prof.json]

Per row: the step's median wall time (3 calls after 2 warm-ups, not profiled), then one profiled call whose operator
self times are grouped into convolution, matmul (mm/addmm/bmm/linear), attention (scaled-dot-product kernels),
normalisation and the rest (elementwise ops, copies, optimiser arithmetic). ``shares`` are fractions of the profiled
self time. ``kernel_share`` = (convolution + matmul + attention) self time / the *unprofiled* median wall time
(capped at 1; the profiler's own overhead inflates the small ops, not the big kernels), and ``bound_if_rest_free`` =
1 / kernel_share: how much faster the step could get if everything but those kernels cost nothing, i.e. the ceiling
of any rewrite of ours that does the same arithmetic with the same kernels on the same shapes. Also the top
operators with their input shapes. Full-size networks as `bench_generators` (batch 8) and `bench_rvq` (32 x 64).
CPU only (the profiler records CPU activity; CUDA kernels run asynchronously and would need other accounting).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_generators import GENERATORS, _inputs
from benchmarks.bench_rvq import rvq_train_step
from models.generators import build_generator
from models.vq.rvqvae import RVQVAE
from utils.io import save_json
from utils.runs import library_versions

ROWS = ("shortcut_train", "diffusion_train", "rvq_upper_train", "shortcut_window", "diffusion_window")
KINDS = {
    "convolution": ("conv", "mkldnn_convolution", "convolution_backward"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "aten::baddbmm"),
    "attention": ("scaled_dot_product", "flash_attention"),
    "normalisation": ("batch_norm", "layer_norm", "group_norm"),
}


def kind_of(op: str) -> str:
    for kind, keys in KINDS.items():
        if any(k in op for k in keys):
            return kind
    return "rest"


def row_fn(row: str, device: torch.device) -> Callable[[], None]:
    if row == "rvq_upper_train":
        torch.manual_seed(0)
        return rvq_train_step(RVQVAE(78).to(device), torch.randn(32, 64, 78, device=device))
    name, what = row.split("_")
    torch.manual_seed(0)
    gen = build_generator(GENERATORS[name]).to(device)
    audio, word, latents, noise = _inputs(8, device)
    if what == "train":
        def train() -> None:
            gen.train()
            gen.zero_grad(set_to_none=True)
            gen.loss(latents, audio, word, latents[:, :4], noise=noise)["loss"].backward()
        return train
    gen.eval()
    with torch.no_grad():
        at = gen.encode(audio[:1], word[:1])

    def window() -> None:  # the network part of one window's sampling, each generator's default steps/guidance
        gen.sample_with_stats(None, None, latents[:1, :4], noise=noise[:1], at_feat=at)
    return window


def profile_row(row: str, device: torch.device, top: int) -> dict:
    fn = row_fn(row, device)
    for _ in range(2):
        fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    events = [e for e in prof.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares = {k: 0.0 for k in (*KINDS, "rest")}
    for e in events:
        shares[kind_of(e.key)] += e.self_cpu_time_total / total
    median = statistics.median(times)
    kernel_s = (shares["convolution"] + shares["matmul"] + shares["attention"]) * total * 1e-6  # profiler: us
    kernels = min(1.0, kernel_s / median)
    tops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {"median_s": median, "profiled_s": total * 1e-6, "shares": shares, "kernel_s": kernel_s,
            "kernel_share": kernels, "bound_if_rest_free": 1.0 / kernels if kernels > 0 else None,
            "top": [{"op": e.key, "shapes": str(e.input_shapes)[:120], "share": e.self_cpu_time_total / total}
                    for e in tops]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    res = {"device": str(device), "threads": torch.get_num_threads(), "versions": library_versions(), "rows": {}}
    for row in args.rows:
        r = res["rows"][row] = profile_row(row, device, args.top)
        s = r["shares"]
        print(f"{row:18s} {r['median_s']:.3f} s  conv {s['convolution']:.0%} matmul {s['matmul']:.0%} "
              f"attention {s['attention']:.0%} norm {s['normalisation']:.0%} rest {s['rest']:.0%}  "
              f"| kernels {r['kernel_share']:.0%} of wall -> at most {r['bound_if_rest_free']:.2f}x (same kernels)",
              flush=True)  # fmt: skip
        for t in r["top"]:
            print(f"    {t['share']:5.1%}  {t['op']}  {t['shapes']}")
    if args.out:
        save_json(res, args.out)
    return res


if __name__ == "__main__":
    main()
