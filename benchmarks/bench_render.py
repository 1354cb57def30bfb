"""Rendering speed: frames per second at 960x720 for each body, on this CPU.

    python benchmarks/bench_render.py [--size 960x720 --frames 90 --bodies mannequin skeleton --npz result.npz]
        [--encodings superfast:20 veryfast:20 veryfast:20:1 --rounds 3]

For each body: "render" = frames drawn per second (geometry, rasteriser, shading, floor; one thread), in wall time
and per CPU-second of this process (what an idle core gives; on a shared machine wall time is lower), and
"end to end" = render_video to an H.264 mp4 (ffmpeg encoding in parallel, no audio) in frames per second of video,
for each libx264 ``preset:crf[:workers]`` of ``--encodings`` (default: render_video's default; workers = render
threads, 0 = automatic: one per core up to 2), run interleaved A/B/A/B
``--rounds`` times (medians printed: the cores may be shared), with the file size and the PSNR (dB, all frames, RGB)
of the decoded mp4 against the rendered frames themselves. Motion: the given npz, else one synthetic-corpus file
(dataloaders.synthetic, 1 speaker, 6 s), cut to ``--frames``. Reports the machine's load average: on a shared machine
the numbers are lower than on idle cores; the CPU milliseconds per frame of this process and of ffmpeg (medians)
say what two idle cores would give: about min(one core / python, two cores / (python + ffmpeg)).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from render.bodies import make_body  # noqa: E402
from render.motion import load_motion  # noqa: E402
from render.video import RenderOptions, _frame_all, _Panel, read_video_frames, render_video  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of uint8 images ``a`` against ``b`` over all pixels and channels."""
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="960x720")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--bodies", nargs="+", default=["mannequin", "skeleton"])
    ap.add_argument("--npz", help="motion to render (default: a synthetic-corpus file)")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of the synthetic-corpus file (default 6 s)")
    ap.add_argument("--no-encode", action="store_true", help="skip the end-to-end (mp4) measurement")
    default = f"{RenderOptions.preset}:{RenderOptions.crf}"
    ap.add_argument("--encodings", nargs="+", default=[default], metavar="PRESET:CRF",
                    help=f"libx264 preset:crf pairs measured end to end, interleaved (default {default})")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repeats of every measurement (medians)")
    a = ap.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    encodings = [(e.split(":")[0], int(e.split(":")[1]), int((e.split(":") + ["0"])[2])) for e in a.encodings]
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        npz = a.npz
        if npz is None:
            from dataloaders.synthetic import generate_corpus

            corpus = generate_corpus(Path(tmp) / "corpus", speakers=1, files_per_speaker=1, seconds=a.seconds)
            npz = str(next((corpus / "smplxflame_30").glob("*.npz")))
        full = load_motion(npz)
        n = min(a.frames, full.num_frames)
        # the motion cut to n frames: render_video frames the camera on the whole file, so the timed frames and the
        # encoded ones are the same images only when both see the cut motion
        cut = dict(np.load(npz, allow_pickle=False))
        for k in ("poses", "trans", "expressions"):
            if k in cut:
                cut[k] = cut[k][:n]
        short = Path(tmp) / "cut.npz"
        np.savez(short, **cut)
        motion = load_motion(short)
        print(f"motion {Path(npz).name}: {full.num_frames} frames; measuring {n} frames at {w}x{h}; "
              f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        for body_name in a.bodies:
            opt = RenderOptions(body=body_name, width=w, height=h, progress=False)
            body = make_body(body_name, motion)
            panel = _Panel(body, motion, _frame_all([body], [motion], opt)[0], opt)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            ref = np.stack([panel.frame(f) for f in range(n)])  # warm-up, and the reference for the PSNR
            render, cpu = [], []
            for _ in range(a.rounds):
                t0, c0 = time.perf_counter(), time.process_time()
                for f in range(n):
                    panel.frame(f)
                render.append(n / (time.perf_counter() - t0))
                cpu.append(n / (time.process_time() - c0))  # CPU time of this process only: what idle cores give
            torch.set_num_threads(threads)
            print(f"{body_name:10s} render {np.median(render):6.1f} frames/s wall ({np.median(cpu):6.1f} per "
                  f"CPU-second); rounds {' '.join(f'{x:.1f}' for x in render)}")  # fmt: skip
            if a.no_encode:
                continue
            e2e: dict[tuple[str, int, int], list[float]] = {e: [] for e in encodings}
            cpu_ms: dict[tuple[str, int, int], list[tuple[float, float]]] = {e: [] for e in encodings}
            for r in range(a.rounds):
                for preset, crf, wk in encodings if r % 2 == 0 else encodings[::-1]:  # A B, B A: no order bias
                    o = RenderOptions(body=body_name, width=w, height=h, progress=False, preset=preset, crf=crf,
                                      workers=wk)  # fmt: skip
                    out = Path(tmp) / f"{body_name}_{preset}_{crf}_{wk}.mp4"
                    u0, k0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.perf_counter()
                    render_video(short, out, opt=o, log=lambda *_: None)
                    e2e[(preset, crf, wk)].append(n / (time.perf_counter() - t0))
                    u1, k1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                    ours = u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime
                    ffm = k1.ru_utime + k1.ru_stime - k0.ru_utime - k0.ru_stime  # ffmpeg (it has exited)
                    cpu_ms[(preset, crf, wk)].append((1000 * ours / n, 1000 * ffm / n))
            first = None
            for preset, crf, wk in encodings:
                out = Path(tmp) / f"{body_name}_{preset}_{crf}_{wk}.mp4"
                dec, _ = read_video_frames(out)
                first = dec if first is None else first
                fps = e2e[(preset, crf, wk)]
                ours, ffm = np.median(np.array(cpu_ms[(preset, crf, wk)]), 0)
                threads = "auto" if wk == 0 else wk
                print(f"{'':10s} end to end (H.264 mp4, {preset}, crf {crf}, render threads {threads}) "
                      f"{np.median(fps):6.1f} frames/s wall "
                      f"(rounds {' '.join(f'{x:.1f}' for x in fps)}); {out.stat().st_size / 1024:7.0f} KiB, "
                      f"PSNR {psnr(dec, ref):5.2f} dB vs the rendered frames, {psnr(dec, first):5.2f} dB vs "
                      f"{encodings[0][0]}:{encodings[0][1]}; CPU per frame: python {ours:.1f} ms, "
                      f"ffmpeg {ffm:.1f} ms")  # fmt: skip
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
