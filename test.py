"""Evaluation entry point (EMAGE protocol: FGD, BC, L1div, face MSE/LVD).

Folder mode: evaluate generated npz files against ground truth

    python test.py --pred-dir P --gt-dir G --audio-dir A --mean-vel mean_vel_smplxflame_30.npy \
        --fgd-ckpt AESKConv_240_100.bin [--protocol emage2024|corrected] [--body-model SMPLX_NEUTRAL_2020.npz] \
        [--out DIR]

Model mode: generate the **test** split once from a trained generator, write res_<id>.npz / gt_<id>.npz, evaluate

    python test.py -c configs/shortcut_tiny.yaml --ckpt outputs/.../checkpoints/best.pt [--out DIR] [key=value ...]

Nothing is copied from ground truth unless asked (--copy-gt jaw,expressions,trans reproduces the reference test);
copied fields (and the first-window seed when taken from GT) are listed in every npz and in metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys

# Flags of both modes -> the ``test:`` key they set in model mode (None: a top-level key).
SHARED_FLAGS = {"protocol": "protocol", "fgd_ckpt": "fgd_autoencoder", "body_model": "body_model",
                "mean_vel": "mean_vel", "bootstrap": "n_boot", "seed": "boot_seed"}  # fmt: skip
FOLDER_ONLY = ("pred_dir", "gt_dir", "audio_dir", "skip_missing_audio")


def build_parser() -> argparse.ArgumentParser:
    from evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOL_NAMES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model mode (generate, then evaluate)")
    model.add_argument("-c", "--config", help="generator config (model mode)")
    model.add_argument("--ckpt", help="generator checkpoint (model mode)")
    model.add_argument("overrides", nargs="*", help="key=value config overrides (model mode)")
    model.add_argument("--copy-gt", metavar="FIELDS",
                       help="copy these fields from GT into the predictions, comma-separated among jaw, expressions, "
                            "trans (jaw,expressions,trans = the reference protocol; default: none; each copied "
                            "field is recorded in every npz and metrics.json)")  # fmt: skip
    folder = p.add_argument_group("folder mode (evaluate existing npz files)")
    folder.add_argument("--pred-dir", help="predictions: res_<id>.npz (or <id>.npz) with 'poses' (T,165)")
    folder.add_argument("--gt-dir", help="ground truth: gt_<id>.npz (or <id>.npz); may equal --pred-dir")
    folder.add_argument("--audio-dir", help="<id>.wav per sequence (BC); without it BC is not computed")
    folder.add_argument("--skip-missing-audio", action="store_true", default=None,
                        help="exclude ids without audio, or with audio > 1 s shorter than the motion, from BC "
                             "(listed in metrics.json)")  # fmt: skip
    both = p.add_argument_group("both modes (in model mode each sets the config's test.<key>)")
    both.add_argument("--protocol", choices=PROTOCOL_NAMES,
                      help=f"evaluation protocol (default {DEFAULT_PROTOCOL}; model mode: test.protocol)")
    both.add_argument("--fgd-ckpt", help="FGD autoencoder weights (AESKConv_240_100.bin); without it FGD is null")
    both.add_argument("--body-model", help="SMPL-X model file or folder (else $SMPLX_MODEL_PATH, else mannequin-x)")
    both.add_argument("--trust-pickle", action="store_true",
                      help="allow a .pkl SMPL-X model (unpickling can run code from the file; .npz needs no trust)")
    both.add_argument("--mean-vel", help="per-joint mean speed .npy for BC (mean_vel_smplxflame_30.npy)")
    both.add_argument("--out", help="folder for metrics.json (default: --pred-dir, or next to the checkpoint)")
    both.add_argument("--bootstrap", type=int, help="bootstrap resamples for 95%% CIs (default 1000; 0: none)")
    both.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    both.add_argument("--device", help="cpu | cuda | auto (default: cpu in folder mode, the config's in model mode)")
    both.add_argument("--no-face", action="store_true", default=None,
                      help="skip face MSE/LVD even with an SMPL-X model file")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trust_pickle:
        from geometry.body_model import trust_pickle_models

        trust_pickle_models(True)
    if args.config is not None or args.ckpt is not None:
        return _model_mode(args)
    if args.overrides or args.copy_gt is not None:  # folder mode evaluates npz files as they are (see gt_copied)
        print(f"test.py: key=value overrides {args.overrides} and --copy-gt only apply in model mode "
              "(-c CONFIG --ckpt PATH)", file=sys.stderr)  # fmt: skip
        return 2
    if not args.pred_dir or not args.gt_dir:
        print("test.py: folder mode needs --pred-dir and --gt-dir (see --help)", file=sys.stderr)
        return 2
    from evaluation.evaluator import EvaluationError, MetricsWriteError, evaluate_folder, format_table
    from evaluation.protocols import DEFAULT_PROTOCOL
    from utils.device import get_device

    try:
        report = evaluate_folder(
            args.pred_dir, args.gt_dir, audio_dir=args.audio_dir, protocol=args.protocol or DEFAULT_PROTOCOL,
            fgd_ckpt=args.fgd_ckpt, body_model=args.body_model, mean_vel=args.mean_vel,
            out_dir=args.out or args.pred_dir, n_boot=1000 if args.bootstrap is None else args.bootstrap,
            seed=args.seed or 0, device=str(get_device(args.device or "cpu")),
            skip_missing_audio=bool(args.skip_missing_audio), face=not args.no_face,
        )  # fmt: skip
    except MetricsWriteError as e:  # the evaluation finished: show the numbers even though they were not saved
        print(format_table(e.report))
        print(f"test.py: error: {e}", file=sys.stderr)
        return 1
    except (EvaluationError, FileNotFoundError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    print(f"wrote {(args.out or args.pred_dir)}/metrics.json")
    return 0


def model_mode_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides that test.py's evaluation flags stand for in model mode."""
    out = [f"test.{key}={json.dumps(getattr(args, flag))}" for flag, key in SHARED_FLAGS.items()
           if getattr(args, flag) is not None]  # fmt: skip
    if args.no_face:
        out.append("test.face=false")
    if args.copy_gt is not None:
        from inference.generate import copy_gt_fields

        out.append(f"inference.copy_gt={json.dumps(list(copy_gt_fields(args.copy_gt, '--copy-gt')))}")
    if args.device is not None:
        out.append(f"device={json.dumps(args.device)}")
    return out


def _model_mode(args: argparse.Namespace) -> int:
    if not args.config or not args.ckpt:
        print("test.py: model mode needs both -c CONFIG and --ckpt PATH", file=sys.stderr)
        return 2
    folder_flags = [f"--{f.replace('_', '-')}" for f in FOLDER_ONLY if getattr(args, f) is not None]
    if folder_flags:
        print(f"test.py: {folder_flags} apply to folder mode only; model mode generates the test split of the "
              "config's data (set test.split=... or data.* overrides instead)", file=sys.stderr)  # fmt: skip
        return 2
    from evaluation.evaluator import EvaluationError, format_table
    from inference.test_split import run_test
    from models.checkpoints import CheckpointError
    from utils.config import ConfigError, load_config
    from utils.io import CheckpointReadError

    try:
        cfg = load_config(args.config, [*args.overrides, *model_mode_overrides(args)])
        report = run_test(cfg, args.ckpt, out_dir=args.out)
    except (CheckpointError, CheckpointReadError, ConfigError, EvaluationError, FileNotFoundError,
            PermissionError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
