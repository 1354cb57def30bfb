"""Train a latent gesture generator (GestureLSM shortcut model, Shortcut-ReFlow or the DDIM baseline).
Logic: trainers/generative.py (trainers/reflow.py for the reflow generator: couplings, then fine-tuning).

    python train.py -c configs/shortcut_rvqvae_128.yaml [key=value ...] [--resume RUN/checkpoints/last.pt]
    python train.py -c configs/diffuser_rvqvae_128.yaml
    python train.py -c configs/shortcut_reflow.yaml reflow.teacher=RUN/checkpoints/best.pt   # couplings, then ReFlow
    python train.py -c configs/shortcut_tiny.yaml                        # CPU smoke run on the synthetic corpus
    torchrun --nproc_per_node 4 train.py -c configs/shortcut_rvqvae_128.yaml amp=bf16   # DDP, batch_size per GPU
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.loading import generator_kind
from trainers.generative import GenerativeTrainer
from trainers.reflow import ReflowTrainer
from utils.config import load_config

REFLOW = "models.generators.reflow.ReflowGenerator"


def run_training(config: str | Path, overrides: Sequence[str] = (), resume: str | Path | None = None,
                 until_iteration: int | None = None) -> dict[str, Any]:
    """Load the config, train (or resume exactly from a trainer checkpoint) and return the trainer summary."""
    cfg = load_config(config, list(overrides))
    run_dir = None
    if resume is not None and Path(resume).parent.name == "checkpoints":
        run_dir = Path(resume).parent.parent  # continue in the same run folder
    trainer_cls = ReflowTrainer if generator_kind(cfg.model.generator) == REFLOW else GenerativeTrainer
    with trainer_cls(cfg, run_dir=run_dir) as trainer:
        if resume is not None:
            trainer.resume(resume)
        return trainer.fit(until_iteration=until_iteration)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Train a GestureLSM latent generator (shortcut, reflow or diffusion).")
    ap.add_argument("-c", "--config", required=True, help="experiment YAML, e.g. configs/shortcut_rvqvae_128.yaml")
    ap.add_argument("--resume", help="trainer checkpoint (RUN/checkpoints/last.pt) to continue exactly")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    summary = run_training(args.config, args.overrides, args.resume)
    print(f"train: done at epoch {summary['epoch']}, iteration {summary['iteration']}; best {summary['best']}; "
          f"run dir {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
