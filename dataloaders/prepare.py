"""The explicit data step: corpus -> per-split cache (+ vocabulary) -> normalisation statistics.

    python -m dataloaders.prepare -c configs/data/synthetic.yaml [key=value ...]
    python -m dataloaders.prepare -c configs/shortcut_tiny.yaml          # any config with a ``data:`` node
    python -m dataloaders.prepare -c CONFIG --splits train,val           # only these splits

Getters (datasets, ``load_stats``, ``open_cache``) never build; when something is missing they name this command.
Training entry points (``train.py``, ``rvq_beatx_train.py``) run this step themselves; the pipeline runs it as its
``corpus`` and ``cache`` stages. Finished work is reused: a rerun only checks fingerprints.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataloaders.beat2 import SPLITS, BeatDataError
from dataloaders.cache import EmptySplitError, build_cache, prepare_corpus
from dataloaders.stats import Stats, compute_and_save_stats

DEFAULT_SPLITS = ("train", "val", "test")


def prepare_data(data_cfg: Any, splits: Sequence[str] = DEFAULT_SPLITS, progress: bool = True) -> dict[str, Any]:
    """Generate the corpus if it is synthetic and missing, cache ``splits`` and compute the statistics.

    A split other than train with no files for the configured speakers is noted and left out. Returns
    ``{"root", "cache", "files": {split: n}, "stats": Stats}``."""
    if "train" not in splits:
        splits = ("train", *splits)  # the statistics come from the training split
    root = prepare_corpus(data_cfg)
    files: dict[str, int] = {}
    folder = None
    for split in splits:
        try:
            index = build_cache(data_cfg, split, progress=progress)
        except EmptySplitError as e:
            if split == "train":
                raise
            print(f"[data] {e}: split left out")
            continue
        files[split] = len(index.entries)
        folder = index.folder
    stats: Stats = compute_and_save_stats(data_cfg)
    return {"root": root, "cache": folder, "files": files, "stats": stats}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from utils.config import load_config

    ap = argparse.ArgumentParser(description="Build the corpus (synthetic), cache and statistics of a config's data.")
    ap.add_argument("-c", "--config", required=True, help="a config with a data: node (configs/data/*.yaml)")
    ap.add_argument("--splits", default=",".join(DEFAULT_SPLITS), help="comma-separated splits (default: all)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. data.root=/path)")
    args = ap.parse_args(argv)
    cfg = load_config(Path(args.config), list(args.overrides))
    if cfg.get("data") is None:
        raise SystemExit(f"{args.config}: no 'data:' node (use a data config such as configs/data/synthetic.yaml)")
    splits = [x.strip() for x in args.splits.split(",") if x.strip()]
    unknown = [x for x in splits if x not in SPLITS]
    if unknown:
        raise SystemExit(f"--splits: unknown split(s) {unknown}; expected some of {list(SPLITS)}")
    try:
        out = prepare_data(cfg.data, splits)
    except BeatDataError as e:  # a bad input file or folder: the message names it; no traceback needed
        raise SystemExit(f"[data] {e}") from e
    print(f"[data] ready: corpus {out['root']}, cache {out['cache']} {out['files']}, statistics {out['stats'].source}")
    return out


if __name__ == "__main__":
    main()
