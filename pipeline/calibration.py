"""Guidance calibrated per trained model on val (procedure C; session 25, docs/prereg/session25.md M2).

The trained checked generator's liveliness depends on its training seed and on the machine type it was trained on
(README, Sessions 22-24): at one fixed guidance some models are too still (low speed, BC far below GT's), others too
busy (BC above GT's). Procedure C picks the guidance of *this* model on the val split, never on test:

    for g in ``calibration.guidance``: generate every val file under its own audio and words with the learning
    check's sampling (its sampling seeds, crossfade) at guidance g, score it against GT, and compute

        margin = min(beat placement − 0.15, 0.1 − |BC(own) − BC(GT)|)         (point estimates over files)
        meets_a = speed, acceleration and jerk ratios within criterion (a)

    g* = the largest margin among the rows that meet (a) (all rows when none does); ties: the g nearest
    ``calibration.prefer``, then the smaller g.

Only the ``own`` condition and the GT reference are generated and scored (the margin needs nothing else), with the
learning check's own code, so each row's numbers equal ``benchmarks/val_check.py``'s at that guidance. The test runs
named in ``calibration.runs`` and the learning check then sample at g*.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.learning_check import RULE, Rule, Scorer, selection_margin

GUIDANCE_KEY = "model.generator.params.sampler.guidance_scale"


def point_estimates(own: Mapping[str, Sequence[float]], gt: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The statistics the margin reads, as ``judge`` computes their values: ratio of means over files (own / GT) for
    speed, acceleration and jerk; the mean beat placement of own; the mean of BC(own) − BC(GT) per file."""
    v = {c: {k: np.asarray(d[k], np.float64) for k in d} for c, d in (("own", own), ("gt", gt))}
    stats = {f"{q}_ratio": v["own"][q].mean() / v["gt"][q].mean() for q in ("speed", "acceleration", "jerk")}
    stats["beat_placement"] = v["own"]["beat_placement"].mean()
    stats["bc_own_minus_gt"] = (v["own"]["bc"] - v["gt"]["bc"]).mean()
    return {k: {"value": float(x)} for k, x in stats.items()}


def choose(rows: Sequence[Mapping[str, Any]], prefer: float) -> float:
    """g* from rows with ``guidance``, ``margin`` and ``meets_a``: the largest margin among the rows meeting (a)
    (all rows when none does); ties: nearest ``prefer``, then the smaller guidance."""
    if not rows:
        raise ValueError("calibration needs at least one guidance value")
    pool = [r for r in rows if r["meets_a"]] or list(rows)

    def margin(r: Mapping[str, Any]) -> float:  # a NaN margin (no number) never wins
        return float(r["margin"]) if np.isfinite(r["margin"]) else -np.inf

    best = max(margin(r) for r in pool)
    tied = [float(r["guidance"]) for r in pool if margin(r) == best]
    return min(tied, key=lambda g: (abs(g - prefer), g))


def calibrate_guidance(
    model: Any,
    codec: Any,
    items: list[dict[str, Any]],
    opts: Any,
    mean_vel: np.ndarray,
    fk: Any,
    device: Any,
    guidance: Sequence[float],
    prefer: float,
    seeds: int = 3,
    copy_gt: Sequence[str] = (),
    rule: Rule = RULE,
) -> dict[str, Any]:
    """Procedure C on ``items`` (val WholeFileDataset items): one row per guidance and the chosen ``guidance``. The
    model's sampler guidance is set per row and restored afterwards."""
    from inference.generate import generate_items

    if len(items) < 2:
        raise ValueError(f"calibration needs >= 2 files, got {len(items)}")
    t0 = time.time()
    scorer = Scorer(None, mean_vel, fk)  # no FGD: the margin reads BC, realism and beat placement only
    keys = ("bc", "speed", "acceleration", "jerk", "beat_placement")
    gt = {k: [] for k in keys}
    for it in items:
        s = scorer.score(it["pose"].numpy(), it, it["facial"].numpy())
        for k in keys:
            gt[k].append(s[k])
    sampler = model.sampler
    before = sampler.default_guidance
    rows = []
    try:
        for g in guidance:
            sampler.configure(guidance=float(g))
            raw: list[list[dict[str, float]]] = [[] for _ in items]
            for s in range(int(seeds)):  # the learning check's sampling seeds (1000 * s), so its own rows match
                generate_items(model, codec, items, opts, device, seed=1000 * s, copy_gt=copy_gt, keep=False,
                               on_file=lambda i, ref, res, raw=raw: raw[i].append(scorer.score(res["poses"], ref,
                                                                                      res["expressions"])))  # fmt: skip
            own = {k: [float(np.mean([s[k] for s in f])) for f in raw] for k in keys}
            stats = point_estimates(own, gt)
            margin, meets_a = selection_margin(stats, rule)
            rows.append({"guidance": float(g), "margin": margin, "meets_a": meets_a,
                         "statistics": {k: s["value"] for k, s in stats.items()}})  # fmt: skip
            print(f"[calibrate] guidance {g}: margin {margin:+.4f} {'meets' if meets_a else 'misses'} (a)  "
                  + "  ".join(f"{k} {s['value']:.4f}" for k, s in stats.items()), flush=True)  # fmt: skip
    finally:
        sampler.configure(guidance=before)
    chosen = choose(rows, prefer)
    print(f"[calibrate] chosen guidance {chosen} ({len(items)} files, {seeds} sampling seeds); it replaces the "
          f"configured {before}", flush=True)  # fmt: skip
    return {"guidance": chosen, "configured": float(before), "rows": rows, "prefer": float(prefer),
            "n_files": len(items), "seeds": int(seeds), "ids": [it["id"] for it in items],
            "seconds": round(time.time() - t0, 2)}  # fmt: skip


def calibration_markdown(result: Mapping[str, Any]) -> str:
    """The calibrate stage's rows and choice for the report."""
    head = ("| guidance | margin | meets (a) | speed / acc. / jerk vs GT | beat placement | BC − BC(GT) |\n"
            "|---|---|---|---|---|---|")
    rows = []
    for r in result["rows"]:
        st = r["statistics"]
        mark = " (chosen)" if r["guidance"] == result["guidance"] else ""
        rr = " / ".join(f"{st[f'{q}_ratio']:.2f}" for q in ("speed", "acceleration", "jerk"))
        rows.append(f"| {r['guidance']:g}{mark} | {r['margin']:+.4f} | {'yes' if r['meets_a'] else 'no'} | {rr} | "
                    f"{st['beat_placement']:.4f} | {st['bc_own_minus_gt']:+.4f} |")  # fmt: skip
    return "\n".join([
        f"Guidance of the checked model ({result['generator']}) calibrated on the {result['split']} split (procedure "
        f"C, docs/prereg/session25.md M2; {result['n_files']} files, {result['seeds']} sampling seeds, own audio and "
        f"words; margin = min(beat placement − 0.15, 0.1 − |BC − BC(GT)|), the largest among the rows meeting (a)): "
        f"g* = {result['guidance']:g}, used by the learning check and the test runs it names"
        + (f" (in place of the configured {result['configured']:g})" if "configured" in result else "") + ".", "",
        head, *rows, ""])  # fmt: skip


def check_calibration(cfg: Any) -> None:
    """Fail early on a ``calibration`` node that cannot work (ConfigError naming the key)."""
    from utils.config import ConfigError

    cal = cfg.get("calibration")
    if cal is None:
        return
    if not isinstance(cal, Mapping):
        raise ConfigError(f"calibration must be a mapping (split, guidance, prefer, runs) or null, got {cal!r}")
    unknown = sorted(set(cal) - {"split", "guidance", "prefer", "runs"})
    if unknown:
        raise ConfigError(f"calibration: unknown key(s) {unknown} (known: split, guidance, prefer, runs)")
    split = str(cal.get("split", "val"))
    if split not in ("train", "val"):
        raise ConfigError(f"calibration.split={split!r}: choose the guidance on train or val (test is for the "
                          "final numbers only)")  # fmt: skip
    grid = cal.get("guidance")
    if not isinstance(grid, Sequence) or isinstance(grid, str):
        raise ConfigError(f"calibration.guidance must be a list of numbers >= 0, got {grid!r}")
    grid = list(grid)
    if not grid or any(isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0 for g in grid):
        raise ConfigError(f"calibration.guidance must be a non-empty list of numbers >= 0, got {grid!r}")
    if not isinstance(cal.get("prefer"), (int, float)):
        raise ConfigError(f"calibration.prefer must be a number (the guidance ties go to), got {cal.get('prefer')!r}")
    gen = str(cfg.learning_check.generator)
    for r in list(cal.get("runs") or []):
        if r not in cfg.test.runs:
            raise ConfigError(f"calibration.runs: {r!r} is not a test run (test.runs: {list(cfg.test.runs)})")
        if str(cfg.test.runs[r].generator) != gen:
            raise ConfigError(f"calibration.runs: test run {r!r} samples generator {cfg.test.runs[r].generator!r}, "
                              f"but the guidance is calibrated for learning_check.generator={gen!r}")


def reads_calibration(cfg: Any, consumer: str) -> bool:
    """Whether a stage samples the checked generator at g*: with a ``calibration`` node, the learning check and the
    test runs named in ``calibration.runs`` (``consumer``: "learning_check" or a test run's name)."""
    cal = cfg.get("calibration")
    return bool(cal) and (consumer == "learning_check" or consumer in list(cal.get("runs") or []))


def calibrated_overrides(cfg: Any, consumer: str) -> list[str]:
    """The guidance override of a stage that reads the calibration (:func:`reads_calibration`); [] otherwise."""
    if not reads_calibration(cfg, consumer):
        return []
    from pipeline.stages import record

    return [f"{GUIDANCE_KEY}={record(cfg, 'calibrate')['guidance']}"]


def calibration_stage(cfg: Any) -> dict[str, Any]:
    """Pipeline stage: procedure C for ``learning_check.generator`` on ``calibration.split``; writes calibration.json
    (its record carries the chosen guidance)."""
    from pipeline.learning_check import check_inputs
    from pipeline.stages import out_dir
    from utils.io import save_json

    check_calibration(cfg)
    cal = cfg.calibration
    split = str(cal.get("split", "val"))
    inputs = check_inputs(cfg, split=split, calibrated=False)
    result = calibrate_guidance(inputs["model"], inputs["codec"], inputs["items"], inputs["opts"],
                                inputs["mean_vel"], inputs["fk"], inputs["device"], list(cal.guidance),
                                float(cal.prefer), seeds=int(cfg.learning_check.seeds),
                                copy_gt=inputs["copy_gt"])  # fmt: skip
    result["split"] = split
    result["generator"] = str(cfg.learning_check.generator)
    path = out_dir(cfg) / "calibration.json"
    save_json(result, path)
    return {"paths": {"json": str(path)}, "guidance": result["guidance"]}
