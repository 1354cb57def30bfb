"""``inference_cli.py``: the upstream fork's flag names, mapped onto gesture_inference.py's (inference.cli).

Upstream flags: ``--audio_path --config --output_dir ./outputs --output_name --seed 42 --save_npz --render_video
--render_video_fps --render_video_width --render_video_height --render_concurrent_num --render_tmp_img_filetype
--debug``. ``--config`` takes one of our configs (a released-checkpoint config such as configs/released_v2.yaml);
without it the default model of gesture_inference.py is used. The npz is always written; ``--render_video`` then
renders each npz with its audio to ``<name>.mp4`` beside it (render_video.py's mannequin at
``--render_video_width``x``--render_video_height``, ``--render_video_fps``; ``--render_concurrent_num`` and
``--render_tmp_img_filetype`` are accepted and have no effect: frames are piped to the encoder, never written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from inference import cli

if TYPE_CHECKING:
    from render.video import RenderOptions


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
    p.add_argument("--render_video", action="store_true", help="also render <name>.mp4 (mannequin, with the audio)")
    p.add_argument("--render_video_fps", type=int, default=30)
    p.add_argument("--render_video_width", type=int, default=960)
    p.add_argument("--render_video_height", type=int, default=720)
    for flag, kind in (("--render_concurrent_num", int), ("--render_tmp_img_filetype", str)):
        p.add_argument(flag, type=kind, help="accepted for compatibility (no effect)")
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


def _written(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(npz, audio) pairs the inference step wrote."""
    from inference.audio_input import list_audio_files

    audio = Path(args.audio_path)
    files = list_audio_files(audio) if audio.is_dir() else [audio]
    out = Path(args.output_dir)
    if args.output_name:
        return [(out / f"{args.output_name}.npz", files[0])]
    return [(out / f"{f.stem}.npz", f) for f in files]


def render_options(args: argparse.Namespace) -> RenderOptions:
    from render.video import RenderOptions, check_options

    opt = RenderOptions(width=args.render_video_width, height=args.render_video_height, fps=args.render_video_fps,
                        title=True, progress=False)  # fmt: skip
    check_options(opt)
    return opt


def render_outputs(args: argparse.Namespace, opt: RenderOptions) -> int:
    from render.motion import RenderError
    from render.video import render_video

    for npz, audio in _written(args):
        try:
            info = render_video(npz, npz.with_suffix(".mp4"), audio, None, opt)
        except RenderError as e:
            print(f"error: {e}", file=sys.stderr)
            return cli.EXIT_BAD_INPUT
        print(f"wrote {info['output']} ({info['frames']} frames, body {info['source']})", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opt = None
    if args.render_video:  # bad video options stop the command before any generation
        from render.motion import RenderError

        try:
            opt = render_options(args)
        except RenderError as e:
            print(f"error: {e}", file=sys.stderr)
            return cli.EXIT_BAD_INPUT
    rc = cli.main(to_gesture_inference_argv(args))
    if rc != 0 or opt is None:
        return rc
    return render_outputs(args, opt)


__all__ = ["build_parser", "main", "render_options", "render_outputs", "to_gesture_inference_argv"]
