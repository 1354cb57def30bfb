"""The whole research loop as one command (see run_pipeline.py and configs/pipeline/*.yaml)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from geometry.skeleton import GENERATOR_PARTS
from pipeline import stages
from pipeline.calibration import calibration_markdown, calibration_stage, check_calibration
from pipeline.learning_check import learning_check_stage
from pipeline.nfe_table import nfe_markdown, nfe_table_stage
from pipeline.parallel import WorkerPool, failed_stage, ready_stages
from pipeline.provenance import fingerprints, stage_inputs
from pipeline.report import load_json, plot_speed_vs_onsets, plot_training_curves, write_report
from pipeline.runner import (
    StageError,
    banner,
    is_forced,
    load_record,
    record_path,
    run_stage,
    stage_names,
    stale_notice,
)
from utils.config import ConfigError, load_config, to_container
from utils.device import blas_threads, seed_everything, torch_threads
from utils.io import save_json, save_text
from utils.runs import git_info

RVQ_PARTS = ("upper", "hands", "lower_trans")


def all_stage_names(cfg: DictConfig) -> list[str]:
    # the RVQ-VAEs before the FGD autoencoder: with threads=1 it runs beside the last of them (with threads=null it
    # uses every core, so after them)
    names = ["corpus", "cache", *(f"rvq_{p}" for p in cfg.rvq.parts), "fgd_ae"]
    gens = list(cfg.generators)
    for i, g in enumerate(gens):
        for key in ("teacher", "init_from"):
            other = cfg.generators[g].get(key)
            if other and other not in gens[:i]:
                raise ConfigError(f"generators.{g}.{key}={other!r}: must name a generator listed before it "
                                  f"(listed: {gens})")  # fmt: skip
    # the order is also the scheduler's priority: the checked model's calibration and learning check right after it
    # is trained (with MeanFlow, the longest chain after the shortcut model; the main job's budget), then the rest
    checked = str(cfg.learning_check.generator)
    if checked not in gens:
        raise ConfigError(f"learning_check.generator={checked!r}: not one of the generators (generators: {gens})")
    for g in gens:
        names.append(f"gen_{g}")
        if g == checked:
            names += ["calibrate", "learning_check"] if cfg.get("calibration") else ["learning_check"]
    names += [f"test_{r}" for r in cfg.test.runs]
    return names + ["nfe_table", "report"]


def _commit_text(gi: dict[str, Any]) -> str:
    return str(gi.get("commit") or "unknown") + (" (dirty tree)" if gi.get("dirty") else "")


def report_stage(cfg: DictConfig, command: str, stage_log: list[dict[str, Any]],
                 started: dict[str, Any] | None = None) -> dict[str, Any]:
    out = stages.out_dir(cfg)
    rdir = out / "report"
    tests = {r: load_json(stages.record(cfg, f"test_{r}")["paths"]["metrics"]) for r in cfg.test.runs}
    labels = {r: str(cfg.test.runs[r].get("label", r)) for r in cfg.test.runs}
    check = None
    if (out / "learning_check.json").is_file() and "learning_check" in stage_names(cfg.get("stages"),
                                                                                    all_stage_names(cfg)):
        check = load_json(out / "learning_check.json")
    nfe = None
    if (out / "nfe_table.json").is_file() and "nfe_table" in stage_names(cfg.get("stages"), all_stage_names(cfg)):
        nfe = nfe_markdown(load_json(out / "nfe_table.json"))
    cal = None
    if (out / "calibration.json").is_file() and "calibrate" in stage_names(cfg.get("stages"), all_stage_names(cfg)):
        cal = calibration_markdown(load_json(out / "calibration.json"))
    fgd_rec = stages.record(cfg, "fgd_ae")
    fgd_metrics = fgd_rec["paths"].get("metrics")  # absent when the AE was given (or in a pre-BaseTrainer record)
    runs = {"fgd_ae": Path(fgd_metrics)} if fgd_metrics else {}
    runs.update({f"rvq_{p}": Path(stages.record(cfg, f"rvq_{p}")["paths"]["metrics"]) for p in cfg.rvq.parts})
    runs.update({f"gen_{g}": Path(stages.record(cfg, f"gen_{g}")["paths"]["metrics"]) for g in cfg.generators})
    plots = [plot_training_curves(runs, rdir / "training_curves.png")]
    first = next(iter(cfg.test.runs))
    tdir = Path(stages.record(cfg, f"test_{first}")["paths"]["dir"])
    rep = tests[first]
    f0 = rep["files"][0]
    import numpy as np

    mean_vel = np.load(stages.record(cfg, "cache")["paths"]["mean_vel"])
    plots.append(plot_speed_vs_onsets(tdir / f"gt_{f0['id']}.npz", tdir / f"res_{f0['id']}.npz", Path(f0["audio"]),
                                      mean_vel, rdir / "speed_vs_onsets.png"))  # fmt: skip
    # the commit this invocation started from; if the checkout changed while it ran, both are named
    now = _commit_text(git_info())
    commit = now if started is None else _commit_text(started)
    if commit != now:
        commit += f"; the checkout was at {now} when this report was written (code changed during the run)"
    fgd_note = ("FGD autoencoder: the given checkpoint " + fgd_rec["paths"]["checkpoint"] if not fgd_rec.get("trained")
                else "FGD autoencoder trained on this corpus by the pipeline; FGD values are not comparable with "
                     "published numbers (those use AESKConv_240_100.bin)")  # fmt: skip
    notes = [
        f"Data: {cfg.data.root} ({'synthetic corpus' if cfg.data.get('synthetic') else 'given corpus'}); "
        f"test files: {rep['n_sequences']} ({rep['seconds']:.1f} s).",
        fgd_note,
        f"BC protocol {rep['protocol']['id']}; BC mean velocity from "
        f"{stages.record(cfg, 'cache')['paths']['mean_vel']}.",
        "Real-time factor = generation wall time / motion duration on this machine "
        f"({cfg.device}); shared CPUs inflate it.",
        f"Speed-vs-onsets plot: test file {f0['id']} ({labels[first]}).",
    ]
    from pipeline.codec_check import roundtrip_markdown, rvq_roundtrip

    # the body parts (the measures are upper-body joint speeds; a face part does not move them)
    codec = rvq_roundtrip(out, ("val", "test"), tuple(p for p in cfg.rvq.parts if p in GENERATOR_PARTS))
    save_json(codec, rdir / "rvq_roundtrip.json")
    from pipeline.reproducibility import environment, output_digests, reproducibility_markdown

    env, digests = environment(stages.pipeline_threads(cfg)), output_digests(out)
    save_json({"environment": env, "sha256": digests}, rdir / "reproducibility.json")
    paths = write_report(rdir, tests, labels, check, command, commit, stage_log, notes, plots,
                         roundtrip_markdown(codec), nfe, reproducibility_markdown(env, digests), cal)
    paths["rvq_roundtrip"] = rdir / "rvq_roundtrip.json"
    paths["reproducibility"] = rdir / "reproducibility.json"
    all_paths = {k: str(v) for k, v in paths.items()}
    all_paths.update({p.stem: str(p) for p in plots})
    return {"paths": all_paths, "commit": commit}


class PipelineBusy(RuntimeError):
    """Another pipeline writes into the same output folder."""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """One pipeline per output folder at a time: two would overwrite each other's stages."""
    import fcntl

    path = out / ".pipeline.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            raise PipelineBusy(f"another pipeline is running into {out} ({f.read().strip() or 'pid unknown'}); "
                               "wait for it or choose another output_dir=") from e  # fmt: skip
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stage_functions(cfg: DictConfig) -> dict[str, Callable[[], dict[str, Any]]]:
    """Stage name -> the function that makes its outputs (the report stage is the runner's own), each run with the
    pipeline's ``threads`` torch threads and as many numpy/scipy BLAS threads (null: the libraries' defaults; a stage
    config's own ``num_threads`` still applies inside its trainer)."""
    threads = stages.pipeline_threads(cfg)

    def pinned(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def run_pinned() -> dict[str, Any]:
            with torch_threads(threads), blas_threads(threads):  # numpy's BLAS too: it defaults to every core
                return fn()

        return run_pinned

    fns: dict[str, Callable[[], dict[str, Any]]] = {
        "corpus": lambda: stages.corpus(cfg), "cache": lambda: stages.cache(cfg), "fgd_ae": lambda: stages.fgd_ae(cfg),
        "learning_check": lambda: learning_check_stage(cfg), "nfe_table": lambda: nfe_table_stage(cfg)}  # fmt: skip
    for p in cfg.rvq.parts:
        fns[f"rvq_{p}"] = lambda p=p: stages.rvq(cfg, p)
    for g in cfg.generators:
        fns[f"gen_{g}"] = lambda g=g: stages.generator(cfg, g)
    if cfg.get("calibration"):
        fns["calibrate"] = lambda: calibration_stage(cfg)
    for r in cfg.test.runs:
        fns[f"test_{r}"] = lambda r=r: stages.test_run(cfg, r)
    return {name: pinned(fn) for name, fn in fns.items()}


def single_threaded(cfg: DictConfig, names: Sequence[str]) -> set[str]:
    """The stages that run on one torch thread (they may share the machine: pipeline.parallel): the trained stages
    whose own config pins ``num_threads: 1``, and with the pipeline's ``threads: 1`` every stage whose own config
    sets no ``num_threads``."""
    out: set[str] = set()
    all_single = stages.pipeline_threads(cfg) == 1
    for name in names:
        if name == "report":
            continue
        stage = stage_inputs(cfg, name)[0].get("stage")  # the stage's resolved YAML (trained stages only)
        threads = (stage or {}).get("num_threads")  # a stage's own setting wins inside its trainer
        if (threads is not None and int(threads) == 1) or (all_single and threads is None):
            out.add(name)
    return out


def run(cfg: DictConfig, command: str) -> dict[str, Any]:
    """Run every enabled stage (in order; with ``workers`` > 1 single-threaded stages side by side in worker
    processes, see pipeline.parallel); raises StageError naming the failed stage."""
    stages.pipeline_face(cfg)  # a face setting without the face RVQ-VAE fails now, not after the RVQ stages
    stages.pipeline_threads(cfg)  # a bad threads value fails before any folder is made
    check_calibration(cfg)
    started = git_info()
    out = stages.out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_text(command + "\n", out / "command.txt")
    seed_everything(int(cfg.seed))
    force = to_container(cfg.get("force"))
    enabled = stage_names(to_container(cfg.get("stages")), all_stage_names(cfg))
    workers = cfg.get("workers")
    workers = 1 if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > cores:  # more single-threaded workers than cores only time-slice them
        print(f"[pipeline] workers={workers} but this process may use {cores} core(s): running {cores} at a time",
              flush=True)  # fmt: skip
        workers = cores
    log: list[dict[str, Any]] = []
    fns = stage_functions(cfg)
    fps = fingerprints(cfg)
    deps = {n: [d for d in stage_inputs(cfg, n)[1] if d in enabled] for n in enabled if n != "report"}
    deps["report"] = [n for n in enabled if n != "report"]
    narrow = single_threaded(cfg, enabled) if workers > 1 else set()
    pool = WorkerPool(OmegaConf.to_container(cfg, resolve=False), out / "logs") if len(narrow) > 1 else None
    t0 = time.time()
    reran: set[str] = set()
    pending = list(enabled)

    def stage_force(name: str) -> Any:
        # a stage whose inputs were just remade (forced, or stale) is remade too: a fingerprint covers settings,
        # not the outputs of a rerun (force=gen_shortcut retrains the reflow teacher's student as well)
        fresh_inputs = [d for d in stage_inputs(cfg, name)[1] if d in reran]
        if fresh_inputs and load_record(out, name, fps[name]) is not None:  # it would have been skipped
            print(f"[pipeline] stage {name}: its inputs {fresh_inputs} were remade in this run: rerunning it",
                  flush=True)  # fmt: skip
        return True if fresh_inputs else force

    with output_lock(out):
        try:
            while pending:
                now = ready_stages(pending, pool.running if pool else [], deps, narrow, workers)
                if not now and not (pool and pool.running):  # cannot happen: a stage whose inputs are done can start
                    raise RuntimeError(f"pipeline scheduler stuck with pending stages {pending}")
                in_process = False
                for name in now:
                    pending.remove(name)
                    if name == "report":
                        # the report is always rebuilt (cheap) so it shows this invocation's stage log, in stage order
                        log.sort(key=lambda e: enabled.index(e["stage"]))
                        log.append({"stage": "report", "seconds": None, "skipped": False})
                        run_stage("report", lambda: report_stage(cfg, command, log, started), out, force=True)
                        continue
                    f = stage_force(name)
                    complete = not is_forced(name, f) and load_record(out, name, fps[name]) is not None
                    # alone (nothing runs, nothing else can start until it ends): no worker process to spawn
                    alone = pool is None or (len(now) == 1 and not pool.running)
                    if alone or name not in narrow or complete:
                        if not run_stage(name, fns[name], out, f, log, fingerprint=fps[name])["skipped"]:
                            reran.add(name)
                        in_process = True
                        continue
                    if not is_forced(name, f):
                        stale_notice(name, out, fps[name])  # on the console, not only in the worker's log
                    path = pool.start(name, f, fps[name])
                    print(f"[pipeline] stage {name}: started in a worker process (log: {path})", flush=True)
                if in_process:
                    continue  # a stage done (or skipped) here may free a worker's slot or another stage's inputs
                if pool is not None and pool.running:
                    for name, path, code in pool.wait_any():
                        rec = load_record(out, name, fps[name])
                        if code != 0 or rec is None:
                            why = f"exited with code {code}" if code else "exited without a complete stage record"
                            raise failed_stage(name, path, why)
                        print(f"[pipeline] stage {name}: done in {rec['seconds']:.1f} s (log: {path})", flush=True)
                        log.append({"stage": name, "seconds": rec.get("seconds"), "skipped": False})
                        reran.add(name)
        except StageError as e:
            if pool is not None and pool.running:  # say it now: the running workers may take minutes
                print(f"[pipeline] {e}", file=sys.stderr, flush=True)
            raise
        finally:
            if pool is not None and pool.running:
                for name in pool.running:
                    print(f"[pipeline] waiting for stage {name} (running in a worker) to finish; its record is kept",
                          flush=True)  # fmt: skip
                try:
                    pool.wait_all()
                except KeyboardInterrupt:
                    pool.terminate()
                    raise
    total = time.time() - t0
    print(f"[pipeline] finished in {total / 60:.1f} min; report: {out / 'report' / 'report.md'}")
    return {"seconds": total, "stages": log, "output_dir": str(out)}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run the whole GestureLSM research loop (see configs/pipeline/).")
    ap.add_argument("-c", "--config", required=True, help="pipeline YAML, e.g. configs/pipeline/synthetic_cpu.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (force=all, force=[rvq,gen_shortcut], ...)")
    args = ap.parse_args(argv)
    command = "python run_pipeline.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        cfg = load_config(args.config, args.overrides)
        stage_names(to_container(cfg.get("stages")), all_stage_names(cfg))  # a bad stage name, before any work
    except Exception as e:
        print(f"[pipeline] bad configuration: {e}", file=sys.stderr)
        return 2
    banner(f"pipeline {cfg.exp_name}: output_dir {stages.out_dir(cfg)}")
    try:
        run(cfg, command)
    except PipelineBusy as e:
        print(f"[pipeline] {e}", file=sys.stderr)
        return 1
    except StageError as e:
        print(f"\n[pipeline] FAILED at stage '{e.stage}': {type(e.error).__name__}: {e.error}", file=sys.stderr)
        print(f"[pipeline] completed stages are kept (records in {record_path(stages.out_dir(cfg), '*')}); "
              "rerun the same command to continue", file=sys.stderr)
        return 1
    return 0
