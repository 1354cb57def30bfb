"""Issue 13's retrieval baseline: copy real strokes whose audio looks alike. Does committing to a stroke place it?

    python benchmarks/retrieval_baseline.py [--main-job outputs/pipeline/synthetic_cpu] [--splits val,test]
        [--crossfade 16] [--json OUT.json]

No training. Each file of a split is cut into 128-frame query windows (hop 128 - crossfade). For each, the train
window (the generator's 128-frame training windows, stride 20) whose audio onset envelope correlates best with the
query's is found, and its ground-truth poses (the whole body, another file and often another speaker) are copied;
consecutive windows are blended linearly over ``crossfade`` frames (axis-angle). The onset envelope: the onset
channel of the onset+amplitude audio, max-pooled per frame, smoothed over 5 frames, zero mean, unit norm. The
control copies a random train window instead (seeded), stitched the same way. Scored with `evaluation.Evaluator`
under the corrected protocol (beat placement, BC, realism ratios; no FGD); beat placement also per file with a 95%
bootstrap CI over files. Uses the main job's corpus and cache only (run the main job first). The measured numbers
are in the README ("What this says").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WINDOW = 128


def onset_envelope(audio: np.ndarray, frames: int = WINDOW) -> np.ndarray:
    """(S, 2) onset+amplitude samples of one window -> (frames,) zero-mean unit-norm onset envelope."""
    x = np.asarray(audio, np.float64)[:, 0]
    edges = np.linspace(0, x.shape[0], frames + 1).astype(int)
    per_frame = np.array([x[a:b].max() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
    smooth = np.convolve(np.pad(per_frame, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    smooth -= smooth.mean()
    return smooth / (np.linalg.norm(smooth) + 1e-8)


def retrieve(audio: np.ndarray, n: int, envs: np.ndarray, crossfade: int, sr: int, fps: int,
             exclude: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """Query windows of a file (``n`` frames, its (S, 2) ``audio``) -> (window starts, index of the best-matching row
    of ``envs`` for each); rows where ``exclude`` is True are never picked. The tail window's audio is padded with
    silence."""
    win = int(np.floor(WINDOW * sr / fps))
    starts, picks = list(range(0, max(n - crossfade, 1), WINDOW - crossfade)), []
    for f0 in starts:
        a0 = int(round(f0 * sr / fps))
        q = audio[a0 : a0 + win]
        q = np.concatenate([q, np.zeros((win - q.shape[0], q.shape[1]), q.dtype)])
        score = envs @ onset_envelope(q)
        if exclude is not None:
            score[exclude] = -np.inf
        picks.append(int(np.argmax(score)))
    return starts, picks


def stitch(windows: list[np.ndarray], starts: list[int], n: int, crossfade: int) -> np.ndarray:
    """Windows (W, D) placed at ``starts``; each later window's first ``crossfade`` frames blend linearly from what
    is there. Returns (n, D)."""
    out = np.zeros((n, windows[0].shape[1]), np.float64)
    for k, (w, f0) in enumerate(zip(windows, starts)):
        m = min(w.shape[0], n - f0)
        seg = w[:m].astype(np.float64).copy()
        c = 0 if k == 0 else min(crossfade, m)
        ramp = (np.arange(1, c + 1) / (c + 1))[:, None]
        seg[:c] = (1 - ramp) * out[f0 : f0 + c] + ramp * seg[:c]
        out[f0 : f0 + m] = seg
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main-job", default="outputs/pipeline/synthetic_cpu")
    ap.add_argument("--config", default="configs/pipeline/synthetic_cpu.yaml")
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--crossfade", type=int, default=16, help="blended frames between windows (0: hard cuts)")
    ap.add_argument("--seed", type=int, default=0, help="the random-window control's draws")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    if not 0 <= a.crossfade < WINDOW:
        raise SystemExit(f"--crossfade must be in [0, {WINDOW})")
    from omegaconf import OmegaConf

    from dataloaders.datasets import GeneratorWindowDataset, WholeFileDataset
    from dataloaders.stats import load_stats
    from evaluation.evaluator import Evaluator
    from geometry.body_model import get_fk
    from pipeline.nfe_table import mean_ci
    from utils.config import load_config

    main_job = Path(a.main_job).resolve()
    if not (main_job / "stages" / "cache.json").is_file():
        raise SystemExit(f"{main_job}: no cache record (run the main job: run_pipeline.py -c {a.config})")
    cfg = load_config(a.config, [f"output_dir={main_job}"])
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    if str(data.get("audio_rep", "onset+amplitude")) != "onset+amplitude":
        raise SystemExit("the onset envelope needs data.audio_rep=onset+amplitude")
    stats = load_stats(data)
    train = GeneratorWindowDataset(data, "train")
    pool = [train[i] for i in range(len(train))]
    envs = np.stack([onset_envelope(it["audio"].numpy()) for it in pool])
    sr, fps = int(data.audio_sr), int(data.pose_fps)
    res: dict = {"crossfade": a.crossfade, "train_windows": len(pool), "splits": {}}
    keys = ("beat_placement", "beat_placement_gt", "bc", "bc_gt", "speed_ratio", "acceleration_ratio", "jerk_ratio")
    for split in a.splits.split(","):
        files = WholeFileDataset(data, split)
        rng = np.random.default_rng(a.seed)
        evs = {name: Evaluator(None, mean_vel=np.asarray(stats.mean_vel), fk=get_fk(None), protocol="corrected")
               for name in ("retrieved", "random window")}  # fmt: skip
        per_file: dict[str, list[float]] = {name: [] for name in evs}
        for i in range(len(files)):
            item = files[i]
            n = item["pose"].shape[0]
            starts, retrieved = retrieve(item["audio"].numpy(), n, envs, a.crossfade, sr, fps)
            picks = {"retrieved": retrieved, "random window": [int(rng.integers(len(pool))) for _ in starts]}
            for name, ev in evs.items():
                poses = stitch([pool[k]["pose"].numpy() for k in picks[name]], starts, n, a.crossfade)
                seq = ev.add(poses, item["pose"].numpy(), betas=item["beta"][0].numpy(), audio=item["wav_path"],
                             id=item["id"])  # fmt: skip
                if seq.get("beat_placement") is not None:
                    per_file[name].append(seq["beat_placement"])
        out = {}
        for name, ev in evs.items():
            m = ev.compute()
            value, ci = mean_ci(per_file[name], 2000)
            out[name] = {**{k: m.get(k) for k in keys}, "beat_placement_per_file": {"mean": value, "ci": ci}}
            print(f"{split} {name} ({len(per_file[name])} files): beat placement {value:.3f} [{ci[0]:.3f}, "
                  f"{ci[1]:.3f}] (GT {m.get('beat_placement_gt'):.3f}); speed / acc. / jerk vs GT "
                  f"{m.get('speed_ratio'):.2f} / {m.get('acceleration_ratio'):.2f} / {m.get('jerk_ratio'):.2f}; "
                  f"BC (corrected) {m.get('bc'):.3f} (GT {m.get('bc_gt'):.3f})",
                  flush=True)  # fmt: skip
        res["splits"][split] = out
    if a.json:
        from utils.io import atomic_write

        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(res, indent=2)))
    return res


if __name__ == "__main__":
    main()
