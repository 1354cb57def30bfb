"""The learning check (issue 13) on the val split, per sampler setting: choose the checked setting without test.

    python benchmarks/val_check.py [--pipeline configs/pipeline/synthetic_cpu.yaml] [--output-dir DIR]
        [--checkpoint CKPT] [--split val] [--guidance 1.25 ...] [--crossfade 2 ...] [--seeds 3]
        [--set key=value ...] [--pipeline-set key=value ...] [--out rows.json]

For every (guidance, crossfade) the pipeline's checked generator (``learning_check.generator``, its trained
checkpoint or ``--checkpoint``, the ``learning_check.overrides`` plus ``--set``) runs the check's own code
(``pipeline.learning_check.run_learning_check``: four conditions, three references, seeds averaged within each file)
on the split's files, and prints each statistic with the rule's verdicts and the selection margin

    margin = min(beat placement − 0.15, 0.1 − |BC(own) − BC(GT)|)      (meets_a: speed, acc., jerk within (a))

the number sessions 18, 20, 21 and 22 chose settings by (README, "What this says"): it weighs (b) and (d) together
on point estimates; the verdicts are the rule's, but on val their CIs are wide (the main job's val had 6 files until
session 22, 12 since; in session 21 the 6 predicted test poorly). ``all_right_side`` says whether every point
estimate meets its threshold. Needs a finished main job (its FGD autoencoder, codecs and, without ``--checkpoint``,
its generator). The test split is for the final numbers only (``--split test`` is refused unless ``--allow-test``,
and prints no margin). Beside another job on a small machine run it with ``OMP_NUM_THREADS=1``: at torch's default
thread count it oversubscribes the cores (on 2 busy cores 22 min instead of ~1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.learning_check import all_right_side, check_inputs, run_learning_check, selection_margin  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.io import save_json  # noqa: E402

SHOWN = ("speed_ratio", "acceleration_ratio", "jerk_ratio", "beat_placement", "bc_own_minus_delayed",
         "fgd_swapped_minus_own", "bc_own_minus_gt")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="configs/pipeline/synthetic_cpu.yaml", help="the pipeline config")
    ap.add_argument("--output-dir", help="its output_dir (default: the config's)")
    ap.add_argument("--checkpoint", help="a generator checkpoint instead of the pipeline's trained one")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--allow-test", action="store_true", help="permit --split test (final numbers only)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[None],
                    help="default: the check's (the calibrate stage's choice for the pipeline's own model; the "
                         "config's guidance with --checkpoint)")
    ap.add_argument("--crossfade", type=int, nargs="+", default=[None], help="default: the check's")
    ap.add_argument("--seeds", type=int, help="sampling seeds (default: the check's)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more generator-config overrides")
    ap.add_argument("--pipeline-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="pipeline-config overrides, as on run_pipeline.py's command line (e.g. data.audio_rep=mel)")
    ap.add_argument("--out", help="write the rows as json")
    a = ap.parse_args(argv)
    if a.split == "test" and not a.allow_test:
        ap.error("the test split is for final numbers: choose settings on val (or pass --allow-test)")
    cfg = load_config(a.pipeline, ([f"output_dir={a.output_dir}"] if a.output_dir else []) + list(a.pipeline_set))
    seeds = int(a.seeds or cfg.learning_check.seeds)
    rows = []
    for w in a.guidance:
        for k in a.crossfade:
            sets = list(a.set)
            if w is not None:
                sets.append(f"model.generator.params.sampler.guidance_scale={w}")
            if k is not None:
                sets.append(f"inference.windows.crossfade={k}")
            # without --guidance: the guidance the pipeline's calibrate stage chose for its own model (procedure C);
            # another checkpoint, or an explicit guidance, needs no calibration record
            calibrated = w is None and a.checkpoint is None
            inputs = check_inputs(cfg, sets, a.split, a.checkpoint, calibrated=calibrated)
            res = run_learning_check(**inputs, seeds=seeds, n_boot=a.n_boot)
            margin, meets_a = selection_margin(res["statistics"])
            if a.split == "test":  # final numbers only: nothing to choose by
                margin = None
            row = {"split": a.split, "n_files": res["n_files"], "seeds": seeds, "set": sets,
                   "pipeline": a.pipeline, "pipeline_set": list(a.pipeline_set), "output_dir": str(cfg.output_dir),
                   "checkpoint": a.checkpoint,
                   "sampler": inputs["model"].sampler.settings(), "margin": margin, "meets_a": meets_a,
                   "all_right_side": all_right_side(res["statistics"]), "statistics": res["statistics"],
                   "criteria": {c: v["passed"] for c, v in res["criteria"].items()},
                   "gt_bc": res["summary"]["gt"]["bc"],
                   "roundtrip_bc": res["summary"]["rvq_roundtrip"]["bc"]}  # fmt: skip
            rows.append(row)
            st = res["statistics"]
            tag = ("" if margin is None else f"margin {margin:+.4f} ") + ("meets (a)" if meets_a else "misses (a)")
            tag += ", every point estimate on the right side" if row["all_right_side"] else ""
            print(f"[{a.split}] guidance {w} crossfade {k}: {tag}  "
                  + "  ".join(f"{s} {st[s]['value']:.4f}" for s in SHOWN)
                  + "  criteria " + " ".join(f"{c[0]}={'pass' if p else 'FAIL'}" for c, p in row["criteria"].items()),
                  flush=True)  # fmt: skip
            if a.out:
                save_json(rows, a.out)
    return rows


if __name__ == "__main__":
    main()
