"""BC against lag: are generated strokes on the beats, late or early by a constant offset, or not timed at all?

    python benchmarks/beat_lag.py outputs/pipeline/synthetic_cpu/test/shortcut_n2 [more test folders] [--max-lag 24]
        [--step 3] [--json OUT.json]

For each test output folder (``test.py`` / the pipeline's test stages: ``metrics.json`` lists every file's
prediction, ground truth and audio), every file's motion is shifted by each lag (``evaluation.realism.shift_motion``;
positive = motion late against its audio) and scored with the corrected-protocol BC against its own audio; the table
is the mean over files, for the generated motion and for the ground truth. GT peaks at lag 0. A generated curve that
peaks elsewhere has an alignment offset (a bug in windowing or feature timing); a flat one has no stroke timing at all.
FK uses each file's betas (``geometry.body_model.get_fk``: SMPL-X when ``SMPLX_MODEL_PATH`` is set, else the
embedded skeleton), as the codec check does.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def lag_curves(folder: str | Path, lags: list[int]) -> dict:
    """{n_files, generated: [...], gt: [...]} mean BC per lag over the folder's files."""
    import torch

    from evaluation.metrics import BeatConsistency
    from evaluation.realism import beat_lag_curve
    from geometry.body_model import get_fk

    folder = Path(folder)
    meta_path = folder / "metrics.json"
    if not meta_path.is_file():
        raise SystemExit(f"{meta_path}: not found (a test output folder of test.py or the pipeline's test stage)")
    meta = json.loads(meta_path.read_text())
    mean_vel = (meta.get("mean_vel") or {}).get("path")
    if not mean_vel:
        raise SystemExit(f"{meta_path}: no mean_vel path (BC was not computed for this folder)")
    bc = BeatConsistency(np.load(mean_vel), protocol="corrected")
    if max(abs(lag) for lag in lags) >= bc.align_mask:
        raise SystemExit(f"lags must stay below BC's {bc.align_mask}-frame edge mask (padding would be scored)")
    sums = {"generated": np.zeros(len(lags)), "gt": np.zeros(len(lags))}
    n = 0
    for f in meta.get("files") or []:
        missing = [k for k in ("pred", "gt", "audio") if not f.get(k)]
        if missing:
            raise SystemExit(f"{meta_path}: file {f.get('id')!r} has no {missing} entry (BC needs its audio)")
        with np.load(f["gt"]) as gt:
            if "betas" not in gt:
                raise SystemExit(f"{f['gt']}: no 'betas' array")
            fk = get_fk(betas=np.asarray(gt["betas"])[:10])
        onsets = None
        for key, path in (("generated", f["pred"]), ("gt", f["gt"])):
            with np.load(path) as npz:
                poses = npz["poses"].astype(np.float64)
            joints = fk(torch.from_numpy(poses)).numpy()
            if onsets is None:  # the same audio and length for both
                onsets = bc.onsets(f["audio"], len(joints))
            score = functools.partial(_bc, bc, onsets)
            try:
                sums[key] += beat_lag_curve(joints, score, lags)
            except ValueError as e:
                raise SystemExit(f"{path}: {e}") from e
        n += 1
    if not n:
        raise SystemExit(f"{meta_path}: lists no files")
    return {"n_files": n, **{k: (v / n).tolist() for k, v in sums.items()}}


def _bc(bc: Any, onsets: np.ndarray, joints: np.ndarray) -> float:
    return bc.score(bc.motion_beats(joints), onsets)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="test output folders (with metrics.json)")
    ap.add_argument("--max-lag", type=int, default=24, help="largest lag in frames (default 24 = 0.8 s at 30 fps)")
    ap.add_argument("--step", type=int, default=3, help="lag step in frames")
    ap.add_argument("--json", help="also write the curves here")
    a = ap.parse_args(argv)
    if a.step < 1 or a.max_lag < 0:
        raise SystemExit("--step must be >= 1 and --max-lag >= 0")
    lags = list(range(-a.max_lag, a.max_lag + 1, a.step))
    if 0 not in lags:
        raise SystemExit("--max-lag must be a multiple of --step (lag 0 must be on the grid)")
    out = {"lags_frames": lags, "folders": {}}
    print("lag (frames; + = motion late) | " + " ".join(f"{lag:+5d}" for lag in lags))
    for folder in a.folders:
        res = lag_curves(folder, lags)
        out["folders"][str(folder)] = res
        for key in ("generated", "gt"):
            peak = lags[int(np.argmax(res[key]))]
            print(f"{Path(folder).name} {key} ({res['n_files']} files, peak {peak:+d}) | "
                  + " ".join(f"{v:5.3f}" for v in res[key]))  # fmt: skip
    if a.json:
        from utils.io import atomic_write

        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(out, indent=2)))
    return out


if __name__ == "__main__":
    main()
