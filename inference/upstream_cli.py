"""``inference_cli.py``: the upstream fork's flag names, mapped onto gesture_inference.py's (inference.cli).

Upstream flags: ``--audio_path --config --output_dir ./outputs --output_name --seed 42 --save_npz --render_video
--render_video_fps --render_video_width --render_video_height --render_concurrent_num --render_tmp_img_filetype
--debug``. ``--config`` takes one of our configs (a released-checkpoint config such as configs/released_v2.yaml);
without it the default model of gesture_inference.py is used. The npz is always written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inference import cli

RENDER_WARNING = ("warning: --render_video: rendering is not part of this project; the npz (BEAT2 SMPL-X format) "
                  "opens in any SMPL-X viewer or renderer")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inference_cli.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--audio_path", required=True, help="audio file or folder")
    p.add_argument("--config", help="config of a released checkpoint (e.g. configs/released_v2.yaml)")
    p.add_argument("--ckpt", help="checkpoint / run folder (as gesture_inference.py --ckpt)")
    p.add_argument("--output_dir", default="./outputs")
    p.add_argument("--output_name", help="output file name without extension (single file)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save_npz", action="store_true", help="accepted for compatibility: the npz is always written")
    p.add_argument("--render_video", action="store_true", help="not supported here (a warning is printed)")
    for flag, kind in (("--render_video_fps", int), ("--render_video_width", int), ("--render_video_height", int),
                       ("--render_concurrent_num", int), ("--render_tmp_img_filetype", str)):  # fmt: skip
        p.add_argument(flag, type=kind, help="accepted for compatibility (no rendering)")
    p.add_argument("--debug", action="store_true", help="accepted for compatibility")
    return p


def to_gesture_inference_argv(args: argparse.Namespace) -> list[str]:
    """The equivalent gesture_inference.py command line."""
    argv = ["--audio", args.audio_path, "--out", args.output_dir, "--seed", str(args.seed)]
    if args.config:
        argv += ["--config", args.config]
    if args.ckpt:
        argv += ["--ckpt", args.ckpt]
    if args.output_name:
        argv += ["--name", args.output_name]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render_video:
        print(RENDER_WARNING, file=sys.stderr)
    return cli.main(to_gesture_inference_argv(args))


__all__ = ["build_parser", "main", "to_gesture_inference_argv"]
