"""Speech to a gesture video in one command: inference (gesture_inference.py), then rendering (render_video.py).

python run_example.py --audio speech.wav --output DIR [--video gesture_video.mp4] [--ckpt RUN|best.pt]
    [--text "..." | --textgrid F | --asr MODEL] [--steps N --guidance W --seed S] [--body mannequin|skeleton]
    [--size 960x720] [--device auto]

Writes DIR/<name>.npz and DIR/<name>.json (the motion and its settings) and DIR/<video> (mp4 with the speech).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.cli import PRECISION_CHOICES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio", required=True, help="one speech file (wav/flac/ogg/mp3, any rate)")
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument("--video", default="gesture_video.mp4", help="video file name inside --output")
    ap.add_argument("--ckpt", help="model (default: the main job's shortcut model)")
    ap.add_argument("--config", "-c", help="config for a released checkpoint (configs/released_v2.yaml)")
    words = ap.add_mutually_exclusive_group()
    words.add_argument("--text")
    words.add_argument("--textgrid")
    words.add_argument("--asr")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32", help="as gesture_inference.py")
    ap.add_argument("--body", default="mannequin", choices=["mannequin", "skeleton", "smplx"])
    ap.add_argument("--size", default="960x720", help="WIDTHxHEIGHT (even numbers)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    from inference.cli import EXIT_BAD_INPUT
    from inference.cli import main as infer_main
    from render_video import main as render_main

    if Path(a.audio).is_dir():
        print(f"error: {a.audio}: run_example.py takes one audio file (gesture_inference.py takes folders)",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
    infer = ["--audio", a.audio, "--out", a.output, "--seed", str(a.seed), "--device", a.device, "--precision",
             a.precision]  # fmt: skip
    for flag in ("ckpt", "config", "text", "textgrid", "asr", "steps", "guidance"):
        if getattr(a, flag) is not None:
            infer += [f"--{flag}", str(getattr(a, flag))]
    print("[1/2] gestures from the audio", file=sys.stderr)
    rc = infer_main(infer + (["--quiet"] if a.quiet else []))
    if rc != 0:
        return rc
    npz = Path(a.output) / f"{Path(a.audio).stem}.npz"
    print("[2/2] rendering the video", file=sys.stderr)
    render = ["--input", str(npz), "--audio", a.audio, "--output", str(Path(a.output) / a.video), "--body", a.body,
              "--size", a.size, "--title"]  # fmt: skip
    return render_main(render + (["--quiet"] if a.quiet else []))


if __name__ == "__main__":
    sys.exit(main())
