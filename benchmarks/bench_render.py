"""Rendering speed: frames per second at 960x720 for each body, on this CPU.

    python benchmarks/bench_render.py [--size 960x720 --frames 90 --bodies mannequin skeleton --npz result.npz]

For each body: "render" = frames drawn per second (geometry, rasteriser, shading, floor; one thread), in wall time
and per CPU-second of this process (what an idle core gives; on a shared machine wall time is lower), and
"end to end" = render_video to an H.264 mp4 (ffmpeg encoding in parallel, no audio) in frames per second of video.
Motion: the given npz, else one synthetic-corpus file (dataloaders.synthetic, 1 speaker, 6 s). Reports the machine's
load average: on a shared machine the numbers are lower than on idle cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from render.bodies import make_body  # noqa: E402
from render.motion import load_motion  # noqa: E402
from render.video import RenderOptions, _frame_all, _Panel, render_video  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="960x720")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--bodies", nargs="+", default=["mannequin", "skeleton"])
    ap.add_argument("--npz", help="motion to render (default: a synthetic-corpus file)")
    ap.add_argument("--no-encode", action="store_true", help="skip the end-to-end (mp4) measurement")
    a = ap.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        npz = a.npz
        if npz is None:
            from dataloaders.synthetic import generate_corpus

            corpus = generate_corpus(Path(tmp) / "corpus", speakers=1, files_per_speaker=1, seconds=6.0)
            npz = str(next((corpus / "smplxflame_30").glob("*.npz")))
        motion = load_motion(npz)
        n = min(a.frames, motion.num_frames)
        print(f"motion {Path(npz).name}: {motion.num_frames} frames; measuring {n} frames at {w}x{h}; "
              f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        rows = []
        for body_name in a.bodies:
            opt = RenderOptions(body=body_name, width=w, height=h, progress=False)
            body = make_body(body_name, motion)
            panel = _Panel(body, motion, _frame_all([body], [motion], opt)[0], opt)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            panel.frame(0)  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            for f in range(n):
                panel.frame(f)
            render_fps = n / (time.perf_counter() - t0)
            cpu_fps = n / (time.process_time() - c0)  # CPU time of this process only: what idle cores would give
            torch.set_num_threads(threads)
            e2e = float("nan")
            if not a.no_encode:
                cut = dict(np.load(npz, allow_pickle=False))
                for k in ("poses", "trans", "expressions"):
                    if k in cut:
                        cut[k] = cut[k][:n]
                short = Path(tmp) / "cut.npz"
                np.savez(short, **cut)
                t0 = time.perf_counter()
                render_video(short, Path(tmp) / f"{body_name}.mp4", opt=opt)
                e2e = n / (time.perf_counter() - t0)
            rows.append((body_name, render_fps, cpu_fps, e2e))
            print(f"{body_name:10s} render {render_fps:6.1f} frames/s wall ({cpu_fps:6.1f} per CPU-second)   "
                  f"end to end (H.264 mp4) {e2e:6.1f} frames/s wall")  # fmt: skip
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
