"""How realistic is the synthetic corpus? Upper-body speed/acceleration vs the real BEAT2 sample, and GT beat placement.

    python benchmarks/corpus_realism.py [--speakers 3 --files-per-speaker 8 --seconds 24 --seed 0] [--out DIR]

Prints, for the synthetic corpus (the main job's size by default) and the real sample
``../shared/data/beat2_sample/smplxflame_30/2_scott_0_1_1.npz``, measured with the same FK (geometry.body_model.get_fk:
the SMPL-X model when one is found, else the mannequin-x skeleton; global orientation kept, translation zeroed, file
betas[:10]) on the upper-body BC joints:
* the median over frames and joints of |velocity| and |acceleration| (finite differences x fps^k), and the means
  (evaluation.realism.realism_stats, jerk included);
* stroke-direction consistency: the mean resultant length R of the wrists' approach directions (relative to
  spine3, in the body frame of the root orientation, over the 0.2 s before each strict wrist speed minimum that ends
  a stroke), per file (mean over files with >= 5 strokes) and pooled, each with the R that random directions give
  for as many strokes (1 = every stroke arrives from the same direction);
* GT's beat-placement margin on the corpus: BC (corrected protocol) with its own audio minus BC of the motion
  delayed by 0.5 s (first frame repeated), per file and mean, with mean_vel computed from the corpus as the cache
  stage does. The real sample's margin is printed too (official mean_vel), for reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.metrics import BeatConsistency  # noqa: E402
from evaluation.realism import REALISM_JOINTS, beat_placement_score, realism_stats  # noqa: E402
from geometry.body_model import get_fk  # noqa: E402

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "beat2_sample"
FPS = 30.0


def fk_positions(npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """(T,55,3) joints without translation (metrics) and with it (for mean_vel, as dataloaders.stats)."""
    with np.load(npz, allow_pickle=False) as z:
        poses, trans, betas = z["poses"].astype(np.float64), z["trans"].astype(np.float64), z["betas"]
    j = get_fk(betas=betas[:10])(poses).numpy()
    return j, j + trans[:, None]


def magnitudes(j: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.norm(np.diff(j[:, REALISM_JOINTS], n=k, axis=0) * FPS**k, axis=-1).ravel()


def summarise(name: str, seqs: list[np.ndarray]) -> dict[str, float]:
    vel = np.concatenate([magnitudes(j, 1) for j in seqs])
    acc = np.concatenate([magnitudes(j, 2) for j in seqs])
    means = [realism_stats(j, FPS) for j in seqs]
    out = {"speed_p50": float(np.median(vel)), "acc_p50": float(np.median(acc)),
           **{f"{q}_mean": float(np.mean([m[q] for m in means])) for q in means[0]}}  # fmt: skip
    wrist = np.concatenate([np.linalg.norm(np.diff(j[:, [20, 21]], axis=0) * FPS, axis=-1).ravel() for j in seqs])
    out["wrist_p50"] = float(np.median(wrist))
    print(f"{name:>10}: speed p50 {out['speed_p50']:.4f} m/s  acc p50 {out['acc_p50']:.3f} m/s^2  | means: "
          f"speed {out['speed_mean']:.4f}  acc {out['acceleration_mean']:.3f}  jerk {out['jerk_mean']:.2f}  "
          f"| wrist speed p50 {out['wrist_p50']:.3f}")
    return out


def root_rotations(npz: Path) -> np.ndarray:
    """(T, 3, 3) global orientation of each frame (the body frame the stroke directions are measured in)."""
    import torch

    from geometry.rotations import axis_angle_to_matrix

    with np.load(npz, allow_pickle=False) as z:
        return axis_angle_to_matrix(torch.from_numpy(z["poses"][:, :3].astype(np.float64))).numpy()


def approach_directions(j: np.ndarray, rot: np.ndarray, wrist: int, lag: int = 6) -> np.ndarray:
    """Unit vectors, in the body frame, of the wrist's displacement (relative to spine3) over the ``lag`` frames
    before each strict local speed minimum (order 5) that ends a stroke (the preceding 0.3 s peaks above 1.5x the
    median speed)."""
    from scipy.signal import argrelextrema

    p = j[:, wrist] - j[:, 9]
    v = np.linalg.norm(np.diff(p, axis=0), axis=-1) * FPS
    med = np.median(v)
    out = []
    for b in argrelextrema(v, np.less, order=5)[0]:
        if b < lag or v[max(0, b - 9) : b].max() < 1.5 * med:
            continue
        d = rot[b].T @ (p[b] - p[b - lag])
        if np.linalg.norm(d) > 1e-6:
            out.append(d / np.linalg.norm(d))
    return np.array(out).reshape(-1, 3)


def _chance_r(n: int, rng: np.random.Generator) -> float:
    r = rng.normal(size=(500, n, 3))
    return float(np.linalg.norm((r / np.linalg.norm(r, axis=-1, keepdims=True)).mean(1), axis=-1).mean())


def direction_consistency(name: str, seqs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Stroke-direction R per wrist, per file and pooled, for (joints, root rotations) pairs."""
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for wrist in (20, 21):
        per = [approach_directions(j, rot, wrist) for j, rot in seqs]
        u = np.concatenate(per)
        if len(u) < 2:
            print(f"{name:>10}: wrist {wrist}: fewer than 2 strokes found")
            continue
        files = [x for x in per if len(x) >= 5]
        r_file = float(np.mean([np.linalg.norm(x.mean(0)) for x in files])) if files else float("nan")
        c_file = float(np.mean([_chance_r(len(x), rng) for x in files])) if files else float("nan")
        out[f"direction_R_{wrist}"], out[f"direction_R_file_{wrist}"] = float(np.linalg.norm(u.mean(0))), r_file
        print(f"{name:>10}: wrist {wrist} stroke direction R per file {r_file:.3f} (random: {c_file:.3f}; "
              f"{len(files)} files), pooled {out[f'direction_R_{wrist}']:.3f} over {len(u)} strokes "
              f"(random: {_chance_r(len(u), rng):.3f})")
    return out


def margins(ids: list[str], joints: dict[str, np.ndarray], wav_dir: Path, mean_vel: np.ndarray) -> list[float]:
    bc = BeatConsistency(mean_vel, protocol="corrected")
    out = []
    for i in ids:
        onsets = bc.onsets(wav_dir / f"{i}.wav", len(joints[i]))
        out.append(beat_placement_score(joints[i], lambda j, o=onsets: bc.score(bc.motion_beats(j), o), FPS))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", type=int, default=3)
    ap.add_argument("--files-per-speaker", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="corpus folder (default: a temporary one)")
    a = ap.parse_args(argv)
    from dataloaders.synthetic import generate_corpus

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        root = generate_corpus(a.out or Path(tmp) / "corpus", a.speakers, a.files_per_speaker, a.seconds, a.seed)
        print(f"corpus: {a.speakers} speakers x {a.files_per_speaker} files x {a.seconds:g} s "
              f"({time.time() - t0:.0f} s)")
        ids = sorted(p.stem for p in (root / "smplxflame_30").glob("*.npz"))
        fk = {i: fk_positions(root / "smplxflame_30" / f"{i}.npz") for i in ids}
        joints = {i: v[0] for i, v in fk.items()}
        print(f"FK: {get_fk().source}")
        syn = summarise("synthetic", list(joints.values()))
        syn.update(direction_consistency("synthetic", [(joints[i], root_rotations(root / "smplxflame_30" / f"{i}.npz"))
                                                       for i in ids]))  # fmt: skip
        res = {"synthetic": syn}
        real_npz = REAL / "smplxflame_30" / "2_scott_0_1_1.npz"
        if real_npz.is_file():
            rj, _ = fk_positions(real_npz)
            real = summarise("real", [rj])
            real.update(direction_consistency("real", [(rj, root_rotations(real_npz))]))
            res["real"] = real
            print(f"{'ratio':>10}: speed p50 {syn['speed_p50'] / real['speed_p50']:.2f}x  acc p50 "
                  f"{syn['acc_p50'] / real['acc_p50']:.2f}x  (target 0.5-2x)  | means: speed "
                  f"{syn['speed_mean'] / real['speed_mean']:.2f}x acc "
                  f"{syn['acceleration_mean'] / real['acceleration_mean']:.2f}x jerk "
                  f"{syn['jerk_mean'] / real['jerk_mean']:.2f}x")
        with open(root / "train_test_split.csv") as f:
            split = dict(line.strip().split(",") for line in f.readlines()[1:] if line.strip())
        # mean_vel as the cache stage computes it: speeds with world translation, central differences, train files
        speeds = [np.linalg.norm(np.gradient(fk[i][1], axis=0) * FPS, axis=-1) for i in ids if split[i] == "train"]
        mean_vel = np.concatenate(speeds).mean(0)
        bp = dict(zip(ids, margins(ids, joints, root / "wave16k", mean_vel)))
        for name, sel in (("all", ids), ("val+test", [i for i in ids if split[i] != "train"]),
                          ("test", [i for i in ids if split[i] == "test"])):
            m = np.array([bp[i]["score"] for i in sel])
            print(f"GT beat placement, {name} ({len(sel)} files; corrected BC own - BC 0.5 s delayed): mean "
                  f"{m.mean():.3f} (own {np.mean([bp[i]['bc_own'] for i in sel]):.3f}, delayed "
                  f"{np.mean([bp[i]['bc_delayed'] for i in sel]):.3f}); per file min {m.min():.3f} max {m.max():.3f}"
                  "  (target >= 0.25)")
            res[f"beat_placement_{name}"] = float(m.mean())
        if real_npz.is_file() and (REAL / "stats" / "mean_vel_smplxflame_30.npy").is_file():
            rbp = margins(["2_scott_0_1_1"], {"2_scott_0_1_1": rj}, REAL / "wave16k",
                          np.load(REAL / "stats" / "mean_vel_smplxflame_30.npy"))[0]
            print(f"real sample beat placement: {rbp['score']:.3f} (own {rbp['bc_own']:.3f}, "
                  f"delayed {rbp['bc_delayed']:.3f})")
    return res


if __name__ == "__main__":
    main()
