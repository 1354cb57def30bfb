"""Realism and beat placement of a pipeline's trained generator on any split, per sampler setting (diagnostics).

    python benchmarks/sampling_sweep.py [--pipeline configs/pipeline/synthetic_cpu.yaml] [--output-dir DIR]
        [--generator shortcut] [--split val] [--guidance 1 2 4] [--steps 2] [--out results.json]

For each (guidance, steps) the split's whole files are generated with the pipeline's trained generator (the same path
as the test stage, ``inference.test_split.run_test``, outputs under ``<output_dir>/sweeps/``) and the evaluator's
speed/acceleration/jerk ratios vs GT, beat placement (and GT's), FGD are printed. Use it on ``val`` (or ``train``, to
see whether the model fits its own training files); the test split is for the final numbers only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.test_split import run_test  # noqa: E402
from pipeline import stages  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.io import save_json  # noqa: E402

KEYS = ("fgd", "speed_ratio", "acceleration_ratio", "jerk_ratio", "beat_placement", "beat_placement_gt")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="configs/pipeline/synthetic_cpu.yaml", help="the pipeline config")
    ap.add_argument("--output-dir", help="its output_dir (default: the config's)")
    ap.add_argument("--generator", default="shortcut")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[2])
    ap.add_argument("--out", help="write the rows as json")
    a = ap.parse_args(argv)
    cfg = load_config(a.pipeline, [f"output_dir={a.output_dir}"] if a.output_dir else [])
    ck = stages.record(cfg, f"gen_{a.generator}")["paths"]["checkpoint"]
    rows = []
    for w in a.guidance:
        for n in a.steps:
            scfg = stages.generator_config(cfg, a.generator, [f"model.generator.params.sampler.guidance_scale={w}",
                                                              f"model.generator.params.sampler.n_steps={n}",
                                                              f"test.split={a.split}"])  # fmt: skip
            folder = stages.out_dir(cfg) / "sweeps" / f"{a.generator}_{a.split}_w{w:g}_n{n}"
            m = run_test(scfg, ck, folder)["metrics"]
            row = {"split": a.split, "guidance": w, "steps": n, **{k: m.get(k) for k in KEYS}}
            rows.append(row)
            print(f"[{a.split}] w={w:g} n={n}: " + "  ".join(f"{k} {row[k]:.4f}" for k in KEYS if row[k] is not None))
    if a.out:
        save_json(rows, a.out)
    return rows


if __name__ == "__main__":
    main()
