"""Render a motion npz to an mp4 (headless, CPU): the mannequin-x wooden mesh, the skeleton, or SMPL-X.

python render_video.py --input result.npz [--audio speech.wav] --output video.mp4 [--gt gt.npz]
    [--body mannequin|skeleton|smplx] [--size 960x720] [--fps 30] [--camera front|three-quarter] [--title]
    [--preset superfast --crf 25] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="result npz (poses (T,165), trans, betas)")
    ap.add_argument("--output", required=True, help="mp4 to write (H.264 + AAC)")
    ap.add_argument("--audio", help="speech audio to mux (padded with silence or trimmed to the motion)")
    ap.add_argument("--gt", help="ground-truth npz, drawn on the left, labelled")
    ap.add_argument("--body", default="mannequin", choices=["mannequin", "skeleton", "smplx"])
    ap.add_argument("--smplx-model", help="SMPL-X model file or folder for --body smplx (else $SMPLX_MODEL_PATH)")
    ap.add_argument("--size", default="960x720", help="WIDTHxHEIGHT of one panel (even numbers)")
    ap.add_argument("--fps", type=float, help="video frame rate (default: the npz's mocap_frame_rate, else 30)")
    ap.add_argument("--camera", default="front", choices=["front", "three-quarter"])
    ap.add_argument("--title", action="store_true", help="title strip: file name and settings")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    from render.video import PRESETS, RenderOptions

    ap.add_argument("--preset", default=RenderOptions.preset, choices=PRESETS,
                    help=f"libx264 speed preset (default {RenderOptions.preset}; slower presets make smaller files at "
                         "the same crf and take CPU from the renderer)")  # fmt: skip
    ap.add_argument("--crf", type=int, default=RenderOptions.crf,
                    help=f"libx264 quality, 0-51, lower is better (default {RenderOptions.crf})")  # fmt: skip
    ap.add_argument("--workers", type=int, default=RenderOptions.workers,
                    help="render threads (default 0: one per CPU core, at most 2); the video is the same for any "
                         "number")  # fmt: skip
    a = ap.parse_args(argv)
    from render.motion import RenderError
    from render.video import render_video

    try:
        w, h = (int(x) for x in a.size.lower().split("x"))
    except ValueError:
        print(f"error: --size {a.size!r}: expected WIDTHxHEIGHT, e.g. 960x720", file=sys.stderr)
        return 2
    opt = RenderOptions(body=a.body, width=w, height=h, fps=a.fps, camera=a.camera, title=a.title,
                        smplx_model=a.smplx_model, progress=not a.quiet, preset=a.preset, crf=a.crf,
                        workers=a.workers)  # fmt: skip
    try:
        info = render_video(a.input, a.output, a.audio, a.gt, opt, log=lambda m: print(m, file=sys.stderr))
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['output']}: {info['frames']} frames at {info['fps']:g} fps ({info['duration']:.2f} s), "
          f"{info['size'][0]}x{info['size'][1]}, body {info['source']}; {info['path']}; "
          f"{info['render_fps']:.1f} frames/s rendered, {info['total_fps']:.1f} frames/s with encoding")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
