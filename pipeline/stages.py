"""The stages of the research loop, each a function of the pipeline config with explicit path outputs.

corpus -> cache (+ statistics) -> rvq_<part> -> fgd_ae -> gen_<name> (a reflow generator after its teacher)
-> test_<run> -> nfe_table -> learning_check -> report

Every stage returns ``{"paths": {name: path, ...}, ...}`` (see pipeline.runner); later stages read earlier stages'
records, so a rerun with complete stages skips them. Stage configs are the stage owners' own YAML files
(``config:`` in each pipeline node) with the pipeline's ``overrides`` applied as ``key=value`` overrides (unknown
keys are an error), then the pipeline's ``data:`` node, output folders and upstream checkpoints put in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from inference.loading import FACE_RVQ
from pipeline.runner import load_record, record_path
from utils.config import ConfigError, load_config, to_container
from utils.paths import resolve_path


# ----------------------------------------------------------------------------------------------- config helpers
def flatten_overrides(node: Any, prefix: str = "") -> list[str]:
    """Nested mapping -> ``["a.b=v", ...]`` (values in YAML flow syntax, lists kept whole)."""
    node = to_container(node) if node is not None else {}
    out: list[str] = []
    for k, v in (node or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += flatten_overrides(v, f"{key}.")
        else:
            out.append(f"{key}={json.dumps(v)}")
    return out


def stage_config(path: str, overrides: Any, extra: list[str] | None = None, data: Any = None) -> DictConfig:
    """A stage owner's YAML with the pipeline's overrides; ``data`` (the pipeline's node: same corpus and cache for
    every stage) replaces the stage's own before its interpolations resolve."""
    return load_config(str(path), flatten_overrides(overrides) + list(extra or []),
                       nodes=None if data is None else {"data": data})  # fmt: skip


def out_dir(cfg: DictConfig) -> Path:
    return resolve_path(str(cfg.output_dir))


def record(cfg: DictConfig, name: str) -> dict[str, Any]:
    """A finished stage's record, made with this pipeline config's settings (never a stale one)."""
    from pipeline.provenance import fingerprints

    rec = load_record(out_dir(cfg), name, fingerprints(cfg)[name])
    if rec is None:
        raise RuntimeError(f"stage '{name}' has no complete record for these settings "
                           f"({record_path(out_dir(cfg), name)} missing, incomplete or made with other settings); "
                           f"run it (stages=[..., {name}] or no stages= at all)")  # fmt: skip
    return rec


# ----------------------------------------------------------------------------------------------- data stages
def corpus(cfg: DictConfig) -> dict[str, Any]:
    """The corpus: generated (``data.synthetic``) or an existing BEAT2 folder, checked for its split csv."""
    from dataloaders.cache import cfg_get, data_root
    from dataloaders.synthetic import generate_corpus

    root = resolve_path(str(cfg.data.root))
    syn = cfg_get(cfg.data, "synthetic")
    if syn:
        generate_corpus(root, **{k: syn[k] for k in ("speakers", "files_per_speaker", "seconds", "seed") if k in syn})
    root = data_root(cfg.data)
    split_csv = root / str(cfg_get(cfg.data, "split_csv"))
    if not split_csv.is_file():
        raise FileNotFoundError(f"{split_csv} missing: data.root must be a beat_english_v2.0.0-format folder")
    n_files = sum(1 for _ in (root / "smplxflame_30").glob("*.npz"))
    print(f"[corpus] {root}: {n_files} motion files ({'synthetic' if syn else 'given'})")
    return {"paths": {"root": str(root), "split_csv": str(split_csv)}, "n_files": n_files, "synthetic": bool(syn)}


def cache(cfg: DictConfig) -> dict[str, Any]:
    """Per-file cache of every split and the normalisation statistics (incl. BC's mean velocity)."""
    from dataloaders.cache import build_cache, cfg_get
    from dataloaders.stats import OFFICIAL_FILES, compute_and_save_stats

    counts = {}
    folder = None
    for split in ("train", "val", "test"):
        idx = build_cache(cfg.data, split)
        counts[split] = len(idx.entries)
        folder = idx.folder
        print(f"[cache] {split}: {len(idx.entries)} files")
    stats = compute_and_save_stats(cfg.data)  # the explicit step; later stages only read them
    stats_dir = cfg_get(cfg.data, "stats_dir")
    sdir = resolve_path(stats_dir) if stats_dir else folder / "stats" / f"train_{counts['train']}"
    print(f"[cache] statistics: {stats.source or sdir}")
    return {
        "paths": {"cache": str(folder), "manifest": str(folder / "manifest.json"), "stats_dir": str(sdir),
                  "mean_vel": str(sdir / OFFICIAL_FILES["mean_vel"])},
        "files": counts,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- FGD autoencoder
def fgd_ae(cfg: DictConfig) -> dict[str, Any]:
    """Train the FGD autoencoder on the corpus (trainers.fgd_ae.FGDAETrainer; the record points at its best, else
    last, trainer checkpoint, which load_fgd_autoencoder reads), or take ``fgd_ae.checkpoint`` (AESKConv_240_100.bin)
    as given."""
    from evaluation.fgd_autoencoder import load_fgd_autoencoder
    from utils.io import sha256_file

    node = cfg.fgd_ae
    if node.get("checkpoint"):
        ck = resolve_path(str(node.checkpoint))
        if not ck.is_file():
            raise FileNotFoundError(f"fgd_ae.checkpoint {ck} not found")
        load_fgd_autoencoder(ck)  # fail here, not in the test stage, when the file is wrong
        print(f"[fgd_ae] using the given FGD autoencoder {ck}; training skipped")
        return {"paths": {"checkpoint": str(ck)}, "trained": False, "sha256": sha256_file(ck)}
    from trainers.fgd_ae import FGDAETrainer

    extra = [f"output_dir={out_dir(cfg) / 'runs'}", f"seed={int(cfg.seed)}", f"device={cfg.device}"]
    scfg = stage_config(node.config, node.get("overrides"), extra, cfg.data)
    rec = fit_and_record(FGDAETrainer(scfg))
    rec.update(trained=True, sha256=sha256_file(rec["paths"]["checkpoint"]))
    return rec


# ----------------------------------------------------------------------------------------------- RVQ-VAEs
def rvq(cfg: DictConfig, part: str) -> dict[str, Any]:
    """Train the RVQ-VAE of one body part (trainers.rvq.RVQTrainer) on the pipeline's corpus."""
    from trainers.rvq import RVQTrainer

    node = cfg.rvq
    path = str(node.config).format(part=part)
    extra = [f"output_dir={out_dir(cfg) / 'runs'}", f"device={cfg.device}"]
    scfg = stage_config(path, node.get("overrides"), extra, cfg.data)
    return fit_and_record(RVQTrainer(scfg))


def fit_and_record(trainer: Any) -> dict[str, Any]:
    """Train with a BaseTrainer subclass; the stage record points at its best (else last) checkpoint."""
    with trainer:
        summary = trainer.fit()
    ck_dir = Path(summary["run_dir"]) / "checkpoints"
    ck = ck_dir / "best.pt" if (ck_dir / "best.pt").is_file() else ck_dir / "last.pt"
    return {"paths": {"checkpoint": str(ck), "run_dir": summary["run_dir"],
                      "metrics": str(Path(summary["run_dir"]) / "metrics.jsonl")},
            "iterations": summary["iteration"], "epochs": summary["epoch"], "best": summary["best"],
            "last_metrics": summary["last_metrics"]}  # fmt: skip


def pipeline_threads(cfg: DictConfig) -> int | None:
    """The pipeline's ``threads`` setting (torch threads of every stage; None: torch's default), checked."""
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be null (torch's default) or an integer >= 1, got {threads!r}")
    return threads


# ----------------------------------------------------------------------------------------------- generators
def pipeline_face(cfg: DictConfig) -> bool:
    """The pipeline's ``face`` setting (every generator makes the face too); it needs the face RVQ-VAE."""
    face = bool(cfg.get("face", False))
    own = [g for g, node in cfg.generators.items() if "face" in (node.get("overrides") or {})]
    if own:  # the pipeline's value would silently replace it
        raise ConfigError(f"generators.{own[0]}.overrides.face: set the pipeline's `face` instead (one value for "
                          "every generator: reflow and MeanFlow start from the shortcut model's networks)")
    if face and FACE_RVQ not in cfg.rvq.parts:
        raise ConfigError(f"face: true needs the face RVQ-VAE: add {FACE_RVQ} to rvq.parts "
                          f"(rvq.parts=[upper,hands,lower_trans,{FACE_RVQ}])")  # fmt: skip
    return face


def generator_config(cfg: DictConfig, name: str, extra: list[str] | None = None) -> DictConfig:
    """The generator's stage config with this pipeline's data, RVQ-VAEs and FGD autoencoder."""
    node = cfg.generators[name]
    face = pipeline_face(cfg)
    # every part the pipeline trained (face_jaw too: the 4th latent part of generators with face: true)
    rvq_paths = {p: record(cfg, f"rvq_{p}")["paths"]["checkpoint"] for p in cfg.rvq.parts}
    fgd = record(cfg, "fgd_ae")["paths"]["checkpoint"]
    base = [f"output_dir={out_dir(cfg) / 'runs'}", f"device={cfg.device}", f"face={str(face).lower()}",
            *(f"rvq.{p}={v}" for p, v in rvq_paths.items()), f"val.fgd_autoencoder={fgd}",
            f"test.fgd_autoencoder={fgd}"]  # fmt: skip
    return stage_config(str(node.config), node.get("overrides"), base + list(extra or []), cfg.data)


def generator(cfg: DictConfig, name: str) -> dict[str, Any]:
    """Train one generator (trainers.generative.GenerativeTrainer); a node with ``teacher: <generator>`` is a
    Shortcut-ReFlow fine-tuning of that trained generator on its couplings (trainers.reflow.ReflowTrainer)."""
    from trainers.generative import GenerativeTrainer

    node = cfg.generators[name]
    teacher = node.get("teacher")
    if not teacher:
        extra = []
        if node.get("init_from"):  # a warm start from another trained generator's weights (same networks)
            extra.append(f"model.init_from={record(cfg, f'gen_{node.init_from}')['paths']['checkpoint']}")
        return fit_and_record(GenerativeTrainer(generator_config(cfg, name, extra)))
    from trainers.reflow import ReflowTrainer

    ck = record(cfg, f"gen_{teacher}")["paths"]["checkpoint"]
    couplings = out_dir(cfg) / "couplings" / name
    if couplings.exists():  # this stage reruns (new settings, inputs or code): so are its couplings made anew
        shutil.rmtree(couplings)
    extra = [f"reflow.teacher={ck}", f"reflow.couplings_dir={couplings}"]
    rec = fit_and_record(ReflowTrainer(generator_config(cfg, name, extra)))
    rec["paths"]["couplings"] = str(couplings)
    return rec


def test_run(cfg: DictConfig, run: str) -> dict[str, Any]:
    """Generate and evaluate the held-out test split (inference.test_split.run_test) for one test run."""
    from inference.test_split import run_test
    from pipeline.calibration import calibrated_overrides

    node = cfg.test.runs[run]
    gen = str(node.generator)
    scfg = generator_config(cfg, gen, [*flatten_overrides(node.get("overrides")), *calibrated_overrides(cfg, run)])
    ck = record(cfg, f"gen_{gen}")["paths"]["checkpoint"]
    folder = out_dir(cfg) / "test" / run
    report = run_test(scfg, ck, folder)
    m = report["metrics"]
    print(f"[test {run}] FGD {m.get('fgd')}  BC {m.get('bc')}  L1div {m.get('l1div')}  "
          f"RTF {report['timing']['real_time_factor']:.3f}")
    return {"paths": {"metrics": str(folder / "metrics.json"), "dir": str(folder)}, "generator": gen,
            "label": str(node.get("label", run))}
