"""``python gesture_inference.py --audio speech.wav --out DIR``: gestures for your own audio (see docs/inference.md).

Every bad input ends the command with one line on stderr (``error: <file>: <what is wrong>; <what to do>``) and exit
code 2; output files are written atomically, so nothing is half-written.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from inference.audio_input import InputError, list_audio_files

PRECISION_CHOICES = ("fp32", "bf16")  # utils.device.PRECISIONS (tested equal), spelt here so --help needs no torch

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gesture_inference.py", description="Generate SMPL-X co-speech gestures (BEAT2 npz) for speech audio.",
        epilog="Example: python gesture_inference.py --audio speech.wav --out results/ --text \"hello there\"",
    )  # fmt: skip
    p.add_argument("--audio", "-a", required=True, help="audio file (wav/flac/ogg/mp3, any rate), a folder of "
                   "them, or - (raw 16 kHz mono PCM16 on stdin, with --stream)")  # fmt: skip
    p.add_argument("--out", "-o", required=True, help="output folder: <name>.npz (BEAT2 format) + <name>.json")
    p.add_argument("--ckpt", help="run folder, pipeline output folder, best.pt, or a released generator file "
                   "(with --config); default: the main job's model in outputs/pipeline/synthetic_cpu")  # fmt: skip
    p.add_argument("--config", "-c", help="config for a released checkpoint (e.g. configs/released_v2.yaml)")
    p.add_argument("--generator", default="shortcut", help="which generator of a pipeline folder (default shortcut)")
    words = p.add_mutually_exclusive_group()
    words.add_argument("--text", help="transcript of the speech (aligned to the audio by energy)")
    words.add_argument("--textgrid", help="Praat TextGrid with a 'words' tier (e.g. from MFA)")
    words.add_argument("--asr", help="Whisper model folder or cached model id for word timestamps (transformers)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's sampler setting)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the sampler's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--betas", help="SMPL-X shape: .npy vector or .npz with 'betas' (default zeros)")
    p.add_argument("--seed-motion", dest="seed_motion",
                   help="BEAT2-format npz whose start the motion continues from (its first 16 frames seed the first "
                        "window; default: the mean pose)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="the generator's arithmetic: fp32 (default) or bf16 autocast (faster on a GPU or a CPU with "
                   "avx512_bf16/AMX; other numbers than fp32)")
    p.add_argument("--stream", action="store_true", help="generate window by window as the audio arrives")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set data.stats_dir=/path (repeatable)")  # fmt: skip
    p.add_argument("--name", help="output name for a single file (default: the audio file's name)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> list[Path]:
    """Validate everything, load the model once, generate every file; returns the written npz paths."""
    from inference.api import check_output_dir, generate_from_audio, load_betas, load_seed_motion, write_result
    from inference.audio_input import decode_audio
    from inference.model_source import load_model, resolve_model_source

    if args.audio == "-":
        return [_run_stdin(args)]
    audio = Path(args.audio)
    if audio.is_dir():
        files = list_audio_files(audio)
    elif audio.is_file():
        files = [audio]
    else:
        raise InputError(f"{audio}: audio file not found; pass an existing audio file or a folder of them")
    out = check_output_dir(args.out)
    betas = load_betas(args.betas) if args.betas else None
    if args.name and len(files) > 1:
        raise InputError(f"{audio}: --name names one output, but the folder holds {len(files)} files")
    if args.text is not None and len(files) > 1:
        raise InputError(f"{audio}: --text gives one transcript, but the folder holds {len(files)} files")
    src = resolve_model_source(args.ckpt, args.config, args.overrides, args.generator)
    t_load = time.perf_counter()
    lm = load_model(src, args.device, args.steps, args.guidance, args.precision)
    from inference.audio_input import warm_up

    warm_up(lm.audio_sr)
    seed_motion = load_seed_motion(lm, args.seed_motion) if args.seed_motion else None
    startup = time.perf_counter() - t_load
    sr, mode = lm.audio_sr, str(lm.cfg.data.get("audio_load") or "upstream")
    if len(files) > 1:
        for f in files:  # every file checked before the first is generated: a bad one stops the batch up front
            decode_audio(f, sr, mode)
    written = []
    it = files
    if len(files) > 1 and not args.quiet:
        from tqdm.auto import tqdm

        it = tqdm(files, desc="gestures", unit="file")
    for f in it:
        t0 = time.perf_counter()
        if args.stream:
            from inference.streaming import stream_file

            res = stream_file(lm, f, text=args.text, textgrid=args.textgrid, asr=args.asr, seed=args.seed,
                              betas=betas, verbose=not args.quiet, seed_motion=seed_motion)  # fmt: skip
        else:
            res = generate_from_audio(lm, f, text=args.text, textgrid=args.textgrid, asr=args.asr, seed=args.seed,
                                      betas=betas, seed_motion=seed_motion)  # fmt: skip
        if res.meta["words"]["source"] == "none" and not args.quiet:
            print(f"warning: {res.meta['words']['notes'][0]}", file=sys.stderr)
        if args.name:
            res.name = args.name
        res.meta["timing_startup_seconds"] = round(startup, 3)  # model load + warm-up, once per command
        npz, _ = write_result(res, out, t_start=t0)
        written.append(npz)
        if not args.quiet:
            t = res.meta["timing"]
            print(f"{f.name}: {res.n_frames} frames ({res.meta['audio']['seconds']:.1f} s), words: "
                  f"{res.meta['words']['source']}, {res.meta['nfe_total']} network calls, "
                  f"real-time factor {t['real_time_factor']:.3f} -> {npz}")  # fmt: skip
    return written


def _run_stdin(args: argparse.Namespace) -> Path:
    """``--audio - --stream``: raw 16 kHz mono PCM16 on stdin, generated window by window until EOF."""
    from inference.api import check_output_dir, load_betas, load_seed_motion, write_result
    from inference.model_source import load_model, resolve_model_source
    from inference.streaming import stream_pcm

    if not args.stream:
        raise InputError("--audio -: reading raw PCM from stdin needs --stream")
    if args.text is not None or args.asr is not None:
        raise InputError("--audio -: a stream takes words from --textgrid only (or none)")
    out = check_output_dir(args.out)
    betas = load_betas(args.betas) if args.betas else None
    lm = load_model(resolve_model_source(args.ckpt, args.config, args.overrides, args.generator), args.device,
                    args.steps, args.guidance, args.precision)  # fmt: skip
    seed_motion = load_seed_motion(lm, args.seed_motion) if args.seed_motion else None
    t0 = time.perf_counter()
    res = stream_pcm(lm, sys.stdin.buffer, textgrid=args.textgrid, seed=args.seed, betas=betas,
                     name=args.name or "stdin", verbose=not args.quiet, seed_motion=seed_motion)  # fmt: skip
    npz, _ = write_result(res, out, t_start=t0)
    if not args.quiet:
        print(f"stdin: {res.n_frames} frames -> {npz}")
    return npz


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad user input (audio, words, checkpoint, config), each with a one-line message:
    the command prints them as ``error: ...``; the web demo shows them in the page."""
    from dataloaders.features.audio import AudioError
    from dataloaders.features.text import TextError
    from inference.model_source import ModelError
    from models.checkpoints import CheckpointError
    from utils.config import ConfigError

    return InputError, ModelError, ConfigError, CheckpointError, AudioError, TextError, FileNotFoundError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            run(args)
    except user_errors() as e:
        msg = " ".join(str(e).split())  # one line, whatever the source
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


__all__ = ["EXIT_BAD_INPUT", "build_parser", "main", "run", "user_errors"]
