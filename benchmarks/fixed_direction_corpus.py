"""Issue 13's causal test: does the loop place strokes on beats when what to draw there is known?

    python benchmarks/fixed_direction_corpus.py [--main-job outputs/pipeline/synthetic_cpu] [--out DIR] [key=value ...]

(key=value: overrides of the shortcut stage's config, e.g. solver.epochs=160 solver.decay_epochs=128)

Makes the main job's corpus again (same sizes and seed, every random draw the same) except that every gesture
group's stroke targets start at the same phase of their ellipse and turn the same way
(`dataloaders.synthetic.synth_motion(stroke_phase=0, stroke_turn=1)`; the per-beat angle steps and sizes stay
random), so the conditional mean of the motion given the audio carries the strokes. It then retrains the main job's
shortcut stage on it with the main job's RVQ-VAEs, FGD autoencoder and normalisation statistics (run the main job
first) and scores the val split at 2 and 20 steps (guidance as configured), at 1 step with guidance 1 (the
conditional-mean prediction) and 2, and the train split at 2 steps: beat placement, realism ratios, FGD. The
measured numbers are in the README's Results.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dataloaders.synthetic as synthetic  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main-job", default="outputs/pipeline/synthetic_cpu", help="the main job's output folder")
    ap.add_argument("--config", default="configs/pipeline/synthetic_cpu.yaml")
    ap.add_argument("--out", default="outputs/fixed_direction_corpus")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the shortcut stage's config")
    a = ap.parse_args(argv)
    from omegaconf import OmegaConf

    from dataloaders.cache import build_cache
    from inference.test_split import run_test
    from pipeline.stages import fit_and_record, stage_config
    from trainers.generative import GenerativeTrainer
    from utils.config import load_config

    main_job, out = Path(a.main_job).resolve(), Path(a.out).resolve()
    records = {n: main_job / "stages" / f"{n}.json" for n in ("cache", "fgd_ae", "rvq_upper", "rvq_hands",
                                                              "rvq_lower_trans")}  # fmt: skip
    missing = [str(p) for p in records.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {missing}: run the main job first (python run_pipeline.py -c {a.config})")
    paths = {n: json.loads(p.read_text())["paths"] for n, p in records.items()}
    cfg = load_config(a.config, [f"output_dir={main_job}"])
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    data.root, data.cache_dir, data.stats_dir = str(out / "corpus"), str(out / "cache"), paths["cache"]["stats_dir"]
    original = synthetic.synth_motion
    synthetic.synth_motion = functools.partial(original, stroke_phase=0.0, stroke_turn=1.0)
    try:
        syn = data.synthetic
        synthetic.generate_corpus(data.root, syn.speakers, syn.files_per_speaker, syn.seconds, syn.seed)
    finally:
        synthetic.synth_motion = original
    for split in ("train", "val", "test"):
        build_cache(data, split)
    fgd = paths["fgd_ae"]["checkpoint"]
    base = [f"output_dir={out / 'runs'}", "exp_name=fixed_direction", "device=cpu", f"val.fgd_autoencoder={fgd}",
            f"test.fgd_autoencoder={fgd}", *(f"rvq.{p}={paths['rvq_' + p]['checkpoint']}"
                                             for p in ("upper", "hands", "lower_trans"))]  # fmt: skip
    node = cfg.generators.shortcut
    make = lambda extra: stage_config(str(node.config), node.get("overrides"), base + extra, data)  # noqa: E731
    t0 = time.time()
    rec = fit_and_record(GenerativeTrainer(make(list(a.overrides))))
    res: dict = {"train_s": round(time.time() - t0)}
    keys = ("fgd", "speed_ratio", "acceleration_ratio", "jerk_ratio", "beat_placement", "beat_placement_gt")
    for split, n, w in (("val", 2, None), ("val", 20, None), ("val", 1, 1.0), ("val", 1, 2.0), ("train", 2, None)):
        over = [*a.overrides, f"model.generator.params.sampler.n_steps={n}", f"test.split={split}"]
        over += [] if w is None else [f"model.generator.params.sampler.guidance_scale={w}"]
        name = f"{split}_n{n}" + ("" if w is None else f"_w{w:g}")
        m = run_test(make(over), rec["paths"]["checkpoint"], str(out / f"test_{name}"))["metrics"]
        res[name] = {k: m.get(k) for k in keys}
        print(f"{name}: " + ", ".join(f"{k} {m.get(k):.3f}" for k in keys), flush=True)
    (out / "result.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
