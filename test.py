"""Evaluation entry point (EMAGE protocol: FGD, BC, L1div, face MSE/LVD).

Folder mode: evaluate generated npz files against ground truth

    python test.py --pred-dir P --gt-dir G --audio-dir A --mean-vel mean_vel_smplxflame_30.npy \
        --fgd-ckpt AESKConv_240_100.bin [--protocol emage2024|corrected] [--body-model SMPLX_NEUTRAL_2020.npz] \
        [--out DIR]

Model mode: generate the **test** split once from a trained generator, write res_<id>.npz / gt_<id>.npz, evaluate

    python test.py -c configs/shortcut_tiny.yaml --ckpt outputs/.../checkpoints/best.pt [--out DIR] [key=value ...]

GT-copied fields (expressions, translation, jaw, first-window seed) are listed in every npz and in metrics.json.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model mode (generate, then evaluate)")
    model.add_argument("-c", "--config", help="generator config (model mode)")
    model.add_argument("--ckpt", help="generator checkpoint (model mode)")
    model.add_argument("overrides", nargs="*", help="key=value config overrides (model mode)")
    folder = p.add_argument_group("folder mode (evaluate existing npz files)")
    folder.add_argument("--pred-dir", help="predictions: res_<id>.npz (or <id>.npz) with 'poses' (T,165)")
    folder.add_argument("--gt-dir", help="ground truth: gt_<id>.npz (or <id>.npz); may equal --pred-dir")
    folder.add_argument("--audio-dir", help="<id>.wav per sequence (BC); without it BC is not computed")
    folder.add_argument("--skip-missing-audio", action="store_true", help="exclude ids without audio from BC")
    p.add_argument("--protocol", default="emage2024", choices=["emage2024", "corrected"], help="BC protocol")
    p.add_argument("--fgd-ckpt", help="FGD autoencoder weights (AESKConv_240_100.bin); without it FGD is null")
    p.add_argument("--body-model", help="SMPL-X model file or folder (else $SMPLX_MODEL_PATH, else mannequin-x)")
    p.add_argument("--mean-vel", help="per-joint mean speed .npy for BC (mean_vel_smplxflame_30.npy)")
    p.add_argument("--out", help="folder for metrics.json (default: --pred-dir)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (FGD encoder and SMPL-X vertices)")
    p.add_argument("--no-face", action="store_true", help="skip face MSE/LVD even with an SMPL-X model file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is not None or args.ckpt is not None:
        return _model_mode(args)
    if args.overrides:
        print(f"test.py: key=value overrides {args.overrides} only apply in model mode (-c CONFIG --ckpt PATH)",
              file=sys.stderr)
        return 2
    if not args.pred_dir or not args.gt_dir:
        print("test.py: folder mode needs --pred-dir and --gt-dir (see --help)", file=sys.stderr)
        return 2
    from utils.device import get_device
    from utils.evaluate import EvaluationError, evaluate_folder, format_table

    try:
        report = evaluate_folder(
            args.pred_dir, args.gt_dir, audio_dir=args.audio_dir, protocol=args.protocol, fgd_ckpt=args.fgd_ckpt,
            body_model=args.body_model, mean_vel=args.mean_vel, out_dir=args.out or args.pred_dir,
            n_boot=args.bootstrap, seed=args.seed, device=str(get_device(args.device)),
            skip_missing_audio=args.skip_missing_audio, face=not args.no_face,
        )
    except (EvaluationError, FileNotFoundError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    print(f"wrote {(args.out or args.pred_dir)}/metrics.json")
    return 0


def _model_mode(args: argparse.Namespace) -> int:
    if not args.config or not args.ckpt:
        print("test.py: model mode needs both -c CONFIG and --ckpt PATH", file=sys.stderr)
        return 2
    from trainers.generative import run_test
    from utils.config import ConfigError, load_config
    from utils.evaluate import EvaluationError, format_table

    try:
        cfg = load_config(args.config, args.overrides)
        report = run_test(cfg, args.ckpt, out_dir=args.out)
    except (ConfigError, EvaluationError, FileNotFoundError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
