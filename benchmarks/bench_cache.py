"""Time the per-file cache build on a synthetic corpus (default: the size of BEAT2 speaker 2, 118 files x 60 s).

    python benchmarks/bench_cache.py [--files 118 --seconds 60 --workers 2 --onset-mode corrected --keep DIR]

Reports corpus generation time and cache build time in files/s and audio-seconds/s (CPU only).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataloaders.cache import build_cache  # noqa: E402
from dataloaders.synthetic import generate_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=118, help="total files (one speaker)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--onset-mode", default="corrected", choices=["corrected", "reference"])
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temp folder, removed)")
    a = ap.parse_args(argv)
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        t0 = time.perf_counter()
        root = generate_corpus(work / "corpus", speakers=1, files_per_speaker=a.files, seconds=a.seconds, seed=0)
        t_gen = time.perf_counter() - t0
        cfg = {
            "root": str(root), "cache_dir": str(work / "cache"), "training_speakers": [1], "num_workers": a.workers,
            "onset_mode": a.onset_mode,
        }  # fmt: skip
        ids = [p.stem for p in sorted((root / "smplxflame_30").glob("*.npz"))]
        t0 = time.perf_counter()
        index = build_cache(cfg, "train", ids=ids, progress=True)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = build_cache(cfg, "train", ids=ids, progress=False)
        t_check = time.perf_counter() - t0
        n = len(index.entries)
        audio_s = sum(e.n_frames for e in index.entries) / 30.0
        print(f"corpus: {n} files x {a.seconds:g} s generated in {t_gen:.1f} s ({n / t_gen:.2f} files/s)")
        print(f"cache build ({a.workers} workers, onset_mode={a.onset_mode}): {t_build:.1f} s = "
              f"{n / t_build:.2f} files/s, {audio_s / t_build:.0f} audio-s/s (vocab + FastText included)")  # fmt: skip
        print(f"up-to-date check: {t_check:.2f} s, rebuilt {len(again.built)} files")
        size = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file())
        print(f"cache size: {size / 2**20:.1f} MiB ({size / max(n, 1) / 2**20:.2f} MiB/file); "
              f"projected full speaker 2 (118 x 60 s): {math.ceil(118 * 60 / max(audio_s / t_build, 1e-9))} s")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
