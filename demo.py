"""The web demo: ``python demo.py [--ckpt RUN] [--host 127.0.0.1 --port 7860] [--share]``, then open the printed URL.

Speech in (upload or record), a gesture video with its sound, the npz, BVH/glb exports and the json out. A thin entry
point: the logic lives in webdemo/ (core: limits, request folders, generation through inference/ and render/;
ui: the Gradio page).
"""

from __future__ import annotations

import argparse
import sys

from inference.cli import PRECISION_CHOICES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", help="model offered first (what gesture_inference.py --ckpt accepts); the menu also "
                    "lists the main job's model, run folders under outputs/ and $GESTURELSM_CKPT's released files")
    ap.add_argument("--config", "-c", help="config for a released checkpoint (configs/released_v2.yaml)")
    ap.add_argument("--generator", default="shortcut", help="which generator of a pipeline folder (default shortcut)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="also make a public Gradio link (needs the internet)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                    help="the generator's arithmetic (as gesture_inference.py --precision)")
    ap.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload (default 25 MB)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="longest audio (default 60 s)")
    ap.add_argument("--keep-minutes", type=float, default=30.0,
                    help="a request's files are removed once the page has them, or after this long at the latest")
    ap.add_argument("--workdir", help="folder for the per-request folders (default: a new private temp folder)")
    ap.add_argument("--examples-dir", default="outputs/demo/examples", help="where the example files are made")
    ap.add_argument("--smplx-model", help="SMPL-X model file or folder: offers the smplx body (else $SMPLX_MODEL_PATH)")
    a = ap.parse_args(argv)
    if a.max_upload_mb <= 0 or a.max_seconds <= 0 or a.keep_minutes <= 0:
        ap.error("--max-upload-mb, --max-seconds and --keep-minutes must be positive")
    from webdemo.core import Limits
    from webdemo.ui import serve

    limits = Limits(max_upload_mb=a.max_upload_mb, max_seconds=a.max_seconds, keep_minutes=a.keep_minutes)
    serve(a.ckpt, a.config, a.generator, a.host, a.port, a.share, limits, a.device, a.workdir, a.examples_dir,
          a.smplx_model, precision=a.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
