"""Learning check: does the trained generator gesture — smooth motion whose strokes land on its own speech beats?

The rule is pre-registered (issue 13; fixed before any result was seen, never to be loosened to pass). On the held-out
test split (>= 12 files), with the same model and sampling seeds, every file is generated under four conditions:

* ``own``           its own audio and words;
* ``audio_swapped`` another file's audio (a file of another speaker where possible), its own words kept;
* ``words_swapped`` its own audio, another file's words;
* ``delayed``       its own audio and words delayed by 0.5 s (leading silence / PAD words, cropped to length),
                    scored against the original audio;

and three references need no generation: ``gt`` (ground truth), ``rvq_roundtrip`` (ground truth encoded and decoded
by the trained codec) and ``other_gt`` (another file's ground truth scored with this file's audio). Every condition
and reference is scored against the file's own ground truth and audio: BC under the corrected protocol (EMAGE-2024 BC
is reported beside it, never dropped), the paired per-file FGD (the file's generated vs its own GT FGD-autoencoder
tokens), and the realism metrics of evaluation.realism (upper-body speed, acceleration and jerk, and the beat
placement score: BC of the motion minus BC of the same motion 0.5 s late).

Sampling seeds are averaged within each file; 95% CIs are percentile bootstraps over files. The check passes only if
all of these hold, each with its CI on the right side of the boundary:

(a) jerk ratio <= 1.5 and acceleration ratio <= 1.5 (generated own / GT, ratio of means over files), with the mean
    speed ratio in [0.67, 1.5] (smoothing the motion into stillness is not a fix);
(b) beat placement score of ``own`` >= 0.15, and BC(own) - BC(delayed condition) > 0;
(c) paired per-file FGD: own < audio_swapped;
(d) |BC(own) - BC(GT)| <= 0.1 (a BC far above GT's is a jitter signature).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.protocols import DEFAULT_PROTOCOL, check_protocol

CONDITIONS = ("own", "audio_swapped", "words_swapped", "delayed")
REFERENCES = ("gt", "rvq_roundtrip", "other_gt")
DELAY_S = 0.5
CHECK_PROTOCOL = check_protocol("corrected")  # BC in the rule (pre-registered); the papers' protocol beside it
REPORTED_PROTOCOL = DEFAULT_PROTOCOL
# jaw_corr (issue 18): correlation of the jaw opening with GT's (NaN when the jaw does not move, e.g. no face part);
# reported beside the rule, not part of it.
PER_FILE_KEYS = ("bc", "bc_emage2024", "fgd_file", "speed", "acceleration", "jerk", "beat_placement", "jaw_corr")


@dataclass(frozen=True)
class Rule:
    """The pre-registered thresholds (issue 13, item 4). Changing them after seeing results is not allowed."""

    max_jerk_ratio: float = 1.5
    max_acceleration_ratio: float = 1.5
    speed_ratio_range: tuple[float, float] = (0.67, 1.5)
    min_beat_placement: float = 0.15
    max_bc_gap_to_gt: float = 0.1
    min_test_files: int = 12
    level: float = 0.95


RULE = Rule()


# ----------------------------------------------------------------------------------------------------------------
# Conditions
# ----------------------------------------------------------------------------------------------------------------
def _fit(x: torch.Tensor, n: int, pad: float | int) -> torch.Tensor:
    """``x`` cropped, or padded with ``pad`` along time, to ``n`` steps."""
    if x.shape[0] >= n:
        return x[:n].clone()
    return torch.cat([x, torch.full((n - x.shape[0], *x.shape[1:]), pad, dtype=x.dtype)])


def swap_audio(item: Mapping[str, Any], donor: Mapping[str, Any]) -> dict[str, Any]:
    """``item`` with ``donor``'s audio features (cropped, or silence-padded, to item's length); words kept."""
    out = dict(item)
    out["audio"] = _fit(donor["audio"], item["audio"].shape[0], 0.0)
    return out


def swap_words(item: Mapping[str, Any], donor: Mapping[str, Any], pad_word: int = 0) -> dict[str, Any]:
    """``item`` with ``donor``'s per-frame word ids (cropped, or PAD-padded); audio kept."""
    out = dict(item)
    out["word"] = _fit(donor["word"], item["word"].shape[0], pad_word)
    return out


def delay_inputs(item: Mapping[str, Any], seconds: float, audio_sr: int, fps: int, pad_word: int = 0) -> dict[str, Any]:
    """Audio and words ``seconds`` late: leading silence / PAD words, cropped to the original lengths."""
    out = dict(item)
    a, w = item["audio"], item["word"]
    na, nw = int(round(seconds * audio_sr)), int(round(seconds * fps))
    out["audio"] = torch.cat([torch.zeros((na, *a.shape[1:]), dtype=a.dtype), a])[: a.shape[0]]
    out["word"] = torch.cat([torch.full((nw,), pad_word, dtype=w.dtype), w])[: w.shape[0]]
    return out


def _mean(values: Sequence[float]) -> float:
    """Mean over the files where the number exists (NaN when none has it, e.g. jaw_corr of a still jaw)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def fit_motion(poses: np.ndarray, n: int) -> np.ndarray:
    """A motion cropped to ``n`` frames, or held at its last frame up to ``n``."""
    if poses.shape[0] >= n:
        return poses[:n]
    return np.concatenate([poses, np.repeat(poses[-1:], n - poses.shape[0], axis=0)])


def donor_indices(speakers: Sequence[Any]) -> list[int]:
    """For each of n files (sorted by speaker) the index of its donor: offsets n//2, n//2+1, ..., n-1, 1, ... tried
    in turn, the first with a different speaker taken (the first offset when all share a speaker)."""
    n = len(speakers)
    if n < 2:
        raise ValueError(f"the learning check needs >= 2 test files to swap inputs between, got {n}")
    start = max(1, n // 2)
    offsets = [*range(start, n), *range(1, start)]
    out = []
    for i in range(n):
        cands = [(i + k) % n for k in offsets]
        out.append(next((j for j in cands if speakers[j] != speakers[i]), cands[0]))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Statistics and the rule
# ----------------------------------------------------------------------------------------------------------------
def paired_file_fgd(fgd_moments: tuple[Any, ...]) -> float:
    """Fréchet distance between one file's generated and GT FGD tokens from the Evaluator's per-file sufficient
    statistics ``(count, sum, outer)`` of prediction then GT (``SequenceResult.fgd_moments``)."""
    from evaluation.metrics import frechet_from_moments

    mom = []
    for off in (0, 3):
        cnt, s, o = fgd_moments[off : off + 3]
        mu = s / cnt
        mom.append((mu, (o - cnt * np.outer(mu, mu)) / (cnt - 1)))
    return frechet_from_moments(mom[0][0], mom[0][1], mom[1][0], mom[1][1])


def bootstrap(
    stat: Callable[[np.ndarray], float], n_files: int, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, list[float]]:
    """``stat(indices)`` on all files and its percentile-bootstrap CI over files (files resampled)."""
    value = float(stat(np.arange(n_files)))
    rng = np.random.default_rng(seed)
    draws = np.array([stat(rng.integers(0, n_files, n_files)) for _ in range(int(n_boot))], np.float64)
    draws = draws[np.isfinite(draws)]
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ci = [float(np.percentile(draws, lo)), float(np.percentile(draws, hi))] if draws.size else [value, value]
    return value, ci


def judge(per_file: Mapping[str, Mapping[str, Sequence[float]]], rule: Rule = RULE, n_boot: int = 2000,
          seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Apply the rule to per-file values (seed-averaged): ``per_file[condition][key]`` is a list over files for
    conditions ``own``, ``audio_swapped``, ``delayed`` and reference ``gt`` with keys bc, fgd_file, speed,
    acceleration, jerk, beat_placement. Returns every statistic with its CI and each criterion's verdict."""
    v = {c: {k: np.asarray(per_file[c][k], np.float64) for k in per_file[c]} for c in per_file}
    n = len(v["own"]["bc"])
    for c in ("own", "audio_swapped", "delayed", "gt"):
        for k in v[c]:
            if len(v[c][k]) != n:
                raise ValueError(f"per_file[{c!r}][{k!r}] has {len(v[c][k])} files, expected {n}")

    def ratio(q: str) -> Callable[[np.ndarray], float]:
        return lambda i: v["own"][q][i].mean() / v["gt"][q][i].mean()

    def mean_of(x: np.ndarray) -> Callable[[np.ndarray], float]:
        return lambda i: x[i].mean()

    stats: dict[str, dict[str, Any]] = {}
    specs: dict[str, Callable[[np.ndarray], float]] = {
        "jerk_ratio": ratio("jerk"),
        "acceleration_ratio": ratio("acceleration"),
        "speed_ratio": ratio("speed"),
        "beat_placement": mean_of(v["own"]["beat_placement"]),
        "bc_own_minus_delayed": mean_of(v["own"]["bc"] - v["delayed"]["bc"]),
        "fgd_swapped_minus_own": mean_of(v["audio_swapped"]["fgd_file"] - v["own"]["fgd_file"]),
        "bc_own_minus_gt": mean_of(v["own"]["bc"] - v["gt"]["bc"]),
    }
    for k, (name, fn) in enumerate(specs.items()):
        value, ci = bootstrap(fn, n, n_boot, seed + k, rule.level)
        stats[name] = {"value": value, "ci95": ci}
    lo_s, hi_s = rule.speed_ratio_range
    ci = {k: s["ci95"] for k, s in stats.items()}
    criteria = {
        "a_smooth_and_lively": {
            "passed": bool(ci["jerk_ratio"][1] < rule.max_jerk_ratio
                           and ci["acceleration_ratio"][1] < rule.max_acceleration_ratio
                           and ci["speed_ratio"][0] > lo_s and ci["speed_ratio"][1] < hi_s),
            "rule": f"CI of jerk ratio < {rule.max_jerk_ratio}, of acceleration ratio < "
                    f"{rule.max_acceleration_ratio}, of speed ratio inside ({lo_s}, {hi_s})",
        },
        "b_on_the_beats": {
            "passed": bool(ci["beat_placement"][0] > rule.min_beat_placement and ci["bc_own_minus_delayed"][0] > 0),
            "rule": f"CI of beat placement > {rule.min_beat_placement} and of BC(own) - BC(delayed inputs) > 0",
        },
        "c_uses_its_audio": {
            "passed": bool(ci["fgd_swapped_minus_own"][0] > 0),
            "rule": "CI of paired per-file FGD(audio swapped) - FGD(own) > 0",
        },
        "d_bc_near_gt": {
            "passed": bool(-rule.max_bc_gap_to_gt < ci["bc_own_minus_gt"][0]
                           and ci["bc_own_minus_gt"][1] < rule.max_bc_gap_to_gt),
            "rule": f"CI of BC(own) - BC(GT) inside (-{rule.max_bc_gap_to_gt}, {rule.max_bc_gap_to_gt})",
        },
    }  # fmt: skip
    enough = n >= rule.min_test_files
    return {
        "passed": bool(enough and all(c["passed"] for c in criteria.values())),
        "enough_files": enough,
        "n_files": n,
        "statistics": stats,
        "criteria": criteria,
        "rule": asdict(rule),
        "ci_method": f"percentile bootstrap over the {n} test files ({n_boot} resamples), sampling seeds averaged "
                     "within each file",
    }  # fmt: skip


def selection_margin(stats: dict[str, Any], rule: Rule = RULE) -> tuple[float, bool]:
    """(margin, meets_a) from a check's ``statistics`` (point estimates): min(placement − its threshold, the BC gap
    bound − |BC own − GT|), and whether the speed, acceleration and jerk ratios meet (a)'s bounds (inclusive)."""
    v = {k: float(s["value"]) for k, s in stats.items()}
    lo, hi = rule.speed_ratio_range
    meets_a = (lo <= v["speed_ratio"] <= hi and v["acceleration_ratio"] <= rule.max_acceleration_ratio
               and v["jerk_ratio"] <= rule.max_jerk_ratio)  # fmt: skip
    margin = min(v["beat_placement"] - rule.min_beat_placement, rule.max_bc_gap_to_gt - abs(v["bc_own_minus_gt"]))
    return margin, meets_a


def all_right_side(stats: dict[str, Any], rule: Rule = RULE) -> bool:
    """Every point estimate on the right side of its threshold: (a)'s ratios, placement >= its threshold, BC own −
    delayed > 0, FGD swapped − own > 0, |BC own − GT| <= the bound (the adoption rule of sessions 20 and 21)."""
    margin, meets_a = selection_margin(stats, rule)  # margin >= 0: placement and |BC gap| both within bounds
    return bool(meets_a and margin >= 0 and stats["bc_own_minus_delayed"]["value"] > 0
                and stats["fgd_swapped_minus_own"]["value"] > 0)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Scoring one motion
# ----------------------------------------------------------------------------------------------------------------
class Scorer:
    """Every per-file number of the check for one motion against a file's ground truth and audio: the Evaluator's
    per-sequence results under the check's protocol (BC, FGD moments, realism, beat placement) and the EMAGE-2024
    BC reported beside it."""

    def __init__(self, fgd_model: Any, mean_vel: np.ndarray, fk: Any) -> None:
        from evaluation.evaluator import Evaluator

        self.ev = Evaluator(fgd_model, mean_vel=np.asarray(mean_vel), fk=fk, protocol=CHECK_PROTOCOL)
        self.ev_reported = Evaluator(None, mean_vel=np.asarray(mean_vel), fk=fk, protocol=REPORTED_PROTOCOL)

    def score(self, poses: np.ndarray, ref: Mapping[str, Any], expressions: np.ndarray | None = None
              ) -> dict[str, float]:  # fmt: skip
        n = poses.shape[0]
        gt = ref["pose"][:n].numpy()
        betas = ref["beta"][0].numpy()
        # face numbers only where the reference carries GT expressions (the NFE table's refs do not)
        gt_exp = ref["facial"][:n].numpy() if ref.get("facial") is not None else None
        exp = None if gt_exp is None else (np.zeros_like(gt_exp) if expressions is None else expressions)
        self.ev.add(poses, gt, betas=betas, audio=ref["wav_path"], id=ref["id"], pred_expressions=exp,
                    gt_expressions=gt_exp)  # fmt: skip
        rep = self.ev_reported.add(poses, gt, betas=betas, audio=ref["wav_path"], id=ref["id"])
        seq = self.ev.sequences[-1]
        nan = float("nan")

        def num(v: float | None) -> float:
            return nan if v is None else float(v)

        return {"bc": num(seq.bc), "bc_emage2024": num(rep["bc"]),
                "fgd_file": nan if seq.fgd_moments is None else paired_file_fgd(seq.fgd_moments),
                **{q: num((seq.realism or {}).get(q)) for q in ("speed", "acceleration", "jerk")},
                "beat_placement": num(seq.beat_placement), "jaw_corr": num((seq.face_params or {}).get("jaw_corr"))}


def _save_motion(folder: Path, ref: Mapping[str, Any], poses: np.ndarray, copied: list[str],
                 expressions: np.ndarray | None = None, trans: np.ndarray | None = None) -> None:
    """res_/gt_ npz of one motion; ``expressions``/``trans`` default to GT's (the references are GT motion)."""
    from utils.io import save_npz

    n = poses.shape[0]
    gt = {"expressions": ref["facial"][:n].numpy(), "trans": ref["trans"][:n].numpy()}
    common = {"betas": ref["beta"][0].numpy(), "model": np.array("smplx2020"), "gender": np.array("neutral"),
              "mocap_frame_rate": np.array(30)}  # fmt: skip
    save_npz(folder / f"res_{ref['id']}.npz", poses=np.asarray(poses, np.float32),
             expressions=np.asarray(gt["expressions"] if expressions is None else expressions, np.float32),
             trans=np.asarray(gt["trans"] if trans is None else trans, np.float32),
             gt_copied=np.array(copied, dtype=np.str_), **common)  # fmt: skip
    save_npz(folder / f"gt_{ref['id']}.npz", poses=ref["pose"][:n].numpy(), **gt, **common)


# ----------------------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------------------
def run_learning_check(
    model: torch.nn.Module,
    codec: Any,
    items: list[dict[str, Any]],
    opts: Any,
    fgd_model: Any,
    mean_vel: np.ndarray,
    fk: Any,
    device: torch.device,
    seeds: int = 3,
    copy_gt: Sequence[str] = (),
    out_dir: Path | None = None,
    n_boot: int = 2000,
    rule: Rule = RULE,
) -> dict[str, Any]:
    """Every condition and reference on ``items`` (WholeFileDataset items), then the rule. With ``out_dir`` every
    motion is written as ``<out_dir>/<condition>/seed<k>/res_<id>.npz`` + ``gt_<id>.npz`` and ``wavs.json`` maps ids
    to their audio, so the numbers can be recomputed with another evaluator."""
    from inference.generate import generate_items, gt_copied_fields

    t0 = time.time()
    n = len(items)
    donor = donor_indices([int(it["speaker"]) for it in items])
    from inference.windowed import takes_frame_audio

    fps, sr, pad = int(opts.fps), int(opts.audio_sr), int(opts.word_pad_id)
    if takes_frame_audio(model):
        sr = fps  # mel/WavLM features are frames at the motion rate: the delay is counted in frames
    inputs = {
        "own": items,
        "audio_swapped": [swap_audio(items[i], items[donor[i]]) for i in range(n)],
        "words_swapped": [swap_words(items[i], items[donor[i]], pad) for i in range(n)],
        "delayed": [delay_inputs(it, DELAY_S, sr, fps, pad) for it in items],
    }
    scorer = Scorer(fgd_model, mean_vel, fk)
    copied = gt_copied_fields(opts, copy_gt)
    raw: dict[str, list[list[dict[str, float]]]] = {}  # condition -> file -> seeds
    gen_s, motion_frames, nfe, windows = 0.0, 0, 0, 0
    for cond in CONDITIONS:
        raw[cond] = [[] for _ in range(n)]
        for s in range(int(seeds)):
            folder = None if out_dir is None else Path(out_dir) / cond / f"seed{s}"

            def on_file(i: int, ref: Mapping[str, Any], res: dict[str, Any], cond=cond, folder=folder) -> None:
                raw[cond][i].append(scorer.score(res["poses"], ref, res["expressions"]))
                if folder is not None:
                    _save_motion(folder, ref, res["poses"], copied, res["expressions"], res["trans"])

            results = generate_items(model, codec, inputs[cond], opts, device, seed=1000 * s, copy_gt=copy_gt,
                                     references=items, on_file=on_file, keep=False)  # fmt: skip
            if cond == "own":
                gen_s += sum(r["seconds"] for r in results)
                motion_frames += sum(r["n_frames"] for r in results)
                nfe += sum(r["nfe"] for r in results)
                windows += sum(r["n_windows"] for r in results)
            print(f"[learning_check] {cond} seed {s}: " + "  ".join(
                f"{k}={_mean([f[-1][k] for f in raw[cond]]):.4f}" for k in PER_FILE_KEYS), flush=True)  # fmt: skip
    # references: no generation, no seeds
    for ref_name in REFERENCES:
        raw[ref_name] = []
        folder = None if out_dir is None else Path(out_dir) / ref_name
        for i, it in enumerate(items):
            poses, expressions = it["pose"].numpy(), it["facial"].numpy()
            if ref_name == "rvq_roundtrip":
                dev = next(codec.parameters()).device
                n_enc = poses.shape[0] - poses.shape[0] % 4
                with torch.no_grad():
                    exp = it["facial"][None, :n_enc].to(dev) if codec.has_face else None
                    z = codec.encode(it["pose"][None, :n_enc].to(dev), it["trans_v"][None, :n_enc].to(dev), exp)
                    # without a face part the jaw is not encoded: GT's (as the generated rows' copy_gt would)
                    dec = codec.decode(z, jaw=None if codec.has_face else it["pose"][None, :n_enc, 66:69].to(dev))
                poses = dec["poses"][0].float().cpu().numpy()
                if codec.has_face:
                    expressions = dec["expressions"][0].float().cpu().numpy()
            elif ref_name == "other_gt":
                poses = fit_motion(items[donor[i]]["pose"].numpy(), poses.shape[0])
                expressions = fit_motion(items[donor[i]]["facial"].numpy(), poses.shape[0])
            expressions = expressions[: poses.shape[0]]
            raw[ref_name].append([scorer.score(poses, it, expressions)])
            if folder is not None:
                _save_motion(folder, it, poses, ["all"] if ref_name == "gt" else [], expressions)
    if out_dir is not None:
        from utils.io import save_json

        save_json({it["id"]: it["wav_path"] for it in items}, Path(out_dir) / "wavs.json")
    per_file = {c: {k: [float(np.mean([s[k] for s in f])) for f in raw[c]] for k in PER_FILE_KEYS} for c in raw}
    verdict = judge(per_file, rule, n_boot=n_boot)
    summary = {c: {k: _mean(per_file[c][k]) for k in PER_FILE_KEYS} for c in per_file}
    realism = {}
    for c in (*CONDITIONS, "rvq_roundtrip", "other_gt"):
        realism[c] = {q: summary[c][q] / summary["gt"][q] for q in ("speed", "acceleration", "jerk")}
    return {
        **verdict,
        "conditions": list(CONDITIONS),
        "references": list(REFERENCES),
        "bc_protocol": CHECK_PROTOCOL,
        "reported_protocol": REPORTED_PROTOCOL,
        "n_seeds": int(seeds),
        "delay_s": DELAY_S,
        "test_ids": [it["id"] for it in items],
        "donor_ids": [items[j]["id"] for j in donor],
        "per_file": per_file,
        "summary": summary,
        "realism_ratios_vs_gt": realism,
        "nfe_per_window": nfe / windows if windows else None,
        "generation_seconds": gen_s,
        "real_time_factor": gen_s / (motion_frames / fps) if motion_frames else None,
        "seconds": round(time.time() - t0, 2),
        "gt_copied": copied,
    }


def check_inputs(cfg: Any, overrides: Sequence[str] = (), split: str = "test", checkpoint: str | None = None,
                 calibrated: bool = True) -> dict[str, Any]:  # fmt: skip
    """The keyword arguments of :func:`run_learning_check` (out_dir, seeds and n_boot aside) for a pipeline config:
    its ``learning_check.generator`` trained by the pipeline (or ``checkpoint``), with the stage config's overrides,
    then (``calibrated`` and a ``calibration`` node in the config) the guidance the pipeline's calibrate stage chose,
    then ``overrides`` (dotted ``key=value``), on ``split``'s whole files. The check itself reads ``test``; other
    splits are for choosing settings (benchmarks/val_check.py, pipeline.calibration)."""
    from dataloaders.datasets import WholeFileDataset
    from dataloaders.stats import load_stats
    from evaluation.fgd_autoencoder import load_fgd_autoencoder
    from geometry.body_model import get_fk
    from inference.generate import inference_copy_gt
    from inference.loading import build_codec, load_trained_generator, window_options
    from pipeline.calibration import calibrated_overrides
    from pipeline.stages import flatten_overrides, generator_config, record
    from utils.device import get_device

    gen = str(cfg.learning_check.generator)
    cal = calibrated_overrides(cfg, "learning_check") if calibrated else []
    scfg = generator_config(cfg, gen, [*flatten_overrides(cfg.learning_check.get("overrides")), *cal, *overrides])
    device = get_device(str(scfg.get("device", "cpu")))
    stats = load_stats(scfg.data)
    ds = WholeFileDataset(scfg.data, split)
    return {
        "model": load_trained_generator(scfg, checkpoint or record(cfg, f"gen_{gen}")["paths"]["checkpoint"], device),
        "codec": build_codec(scfg, stats, device),
        "items": [ds[i] for i in range(len(ds))],
        "opts": window_options(scfg),
        "fgd_model": load_fgd_autoencoder(record(cfg, "fgd_ae")["paths"]["checkpoint"], map_location=device),
        "mean_vel": stats.mean_vel,
        "fk": get_fk(scfg.test.get("body_model")),
        "device": device,
        "copy_gt": inference_copy_gt(scfg.get("inference") or {}),
    }


def learning_check_stage(cfg: Any) -> dict[str, Any]:
    """Pipeline stage: load the trained generator and run the check; writes learning_check.json and the motions."""
    from pipeline.stages import out_dir
    from utils.io import save_json

    lc = cfg.learning_check
    inputs = check_inputs(cfg)
    motions = out_dir(cfg) / "report" / "learning_check"
    result = run_learning_check(**inputs, seeds=int(lc.seeds), out_dir=motions, n_boot=int(lc.get("n_boot", 2000)))
    result["generator"] = str(lc.generator)
    result["sampler"] = inputs["model"].sampler.settings()
    path = out_dir(cfg) / "learning_check.json"
    save_json(result, path)
    verdict = "PASSED" if result["passed"] else "FAILED"
    crit = ", ".join(f"{k}={'pass' if c['passed'] else 'FAIL'}" for k, c in result["criteria"].items())
    print(f"[learning_check] {verdict} ({crit}; {result['n_files']} test files)")
    print(json.dumps(result["statistics"], indent=1))
    return {"paths": {"json": str(path), "motions": str(motions)}, "passed": result["passed"]}
