"""Pipeline: stage runner (skip/force/failure naming), report/plot code on small inputs, and the reduced pipeline
(configs/pipeline/ci_tiny.yaml) end to end with every stage's artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.report import markdown_table, plot_training_curves, table_rows
from pipeline.reproducibility import cpu_type
from pipeline.runner import StageError, is_forced, load_record, run_stage, stage_names
from pipeline.stages import flatten_overrides
from utils.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- unit tests
def test_run_stage_skips_complete_and_reruns_forced(tmp_path: Path) -> None:
    calls = []
    art = tmp_path / "a.txt"

    def fn() -> dict:
        calls.append(1)
        art.write_text("x")
        return {"paths": {"a": str(art)}}

    run_stage("s1", fn, tmp_path)
    run_stage("s1", fn, tmp_path)
    assert len(calls) == 1  # second call skipped: record + artefact present
    art.unlink()  # an incomplete stage (artefact gone) runs again
    assert load_record(tmp_path, "s1") is None
    run_stage("s1", fn, tmp_path)
    assert len(calls) == 2
    run_stage("s1", fn, tmp_path, force=["s"])  # prefix 's' does not match 's1' (only 's_...')
    assert len(calls) == 2
    run_stage("s1", fn, tmp_path, force="all")
    assert len(calls) == 3
    assert is_forced("rvq_upper", ["rvq"]) and not is_forced("gen_shortcut", ["rvq"])


def test_stage_selection_by_name_or_prefix() -> None:
    names = ["corpus", "cache", "rvq_upper", "rvq_hands", "gen_shortcut", "report"]
    assert stage_names(None, names) == names
    assert stage_names(["rvq", "corpus"], names) == ["corpus", "rvq_upper", "rvq_hands"]  # pipeline order
    assert stage_names(["rvq_hands"], names) == ["rvq_hands"]
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['rv'\]"):
        stage_names(["rv"], names)


def _schedule(order: list[str], deps: dict[str, list[str]], narrow: set[str], workers: int) -> list[list[str]]:
    """Drive ready_stages like the runner: narrow stages run until the oldest ends; returns the start batches."""
    from pipeline.parallel import ready_stages

    pending, running, batches = list(order), [], []
    while pending or running:
        now = ready_stages(pending, running, deps, narrow, workers)
        assert now or running, f"stuck with {pending}"
        for n in now:
            pending.remove(n)
        if now:
            batches.append(now)
        assert not (len(running + now) > 1 and any(n not in narrow for n in running + now)), "a wide stage shared"
        running += [n for n in now if n in narrow]
        if running and not [n for n in now if n not in narrow]:
            running.pop(0)  # the oldest worker ends
    return batches


def test_ready_stages_runs_narrow_stages_side_by_side_and_wide_ones_alone() -> None:
    order = ["corpus", "cache", "rvq_a", "rvq_b", "rvq_c", "fgd_ae", "gen", "test", "report"]  # the pipeline's
    deps = {"cache": ["corpus"], "fgd_ae": ["cache"], "rvq_a": ["cache"], "rvq_b": ["cache"], "rvq_c": ["cache"],
            "gen": ["fgd_ae", "rvq_a", "rvq_b", "rvq_c"], "test": ["gen"], "report": order[:-1]}
    narrow = {"rvq_a", "rvq_b", "rvq_c"}  # threads: null
    assert _schedule(order, deps, narrow, 2) == [["corpus"], ["cache"], ["rvq_a", "rvq_b"], ["rvq_c"], ["fgd_ae"],
                                                 ["gen"], ["test"], ["report"]]
    assert _schedule(order, deps, narrow, 3)[2] == ["rvq_a", "rvq_b", "rvq_c"]
    assert _schedule(order, deps, narrow, 1) == [[n] for n in order]  # one worker: the pipeline's order
    # threads: 1 (every stage narrow): the FGD autoencoder starts beside the last RVQ-VAE
    assert _schedule(order, deps, set(order[:-1]), 2)[2:5] == [["rvq_a", "rvq_b"], ["rvq_c"], ["fgd_ae"]]
    # a wide stage waiting for its inputs holds back later ones
    deps2 = {**deps, "late": []}
    assert _schedule([*order[:-1], "late"], deps2, narrow | {"late"}, 2)[-1] == ["late"]


def test_worker_heartbeat_reads_the_latest_progress_line(tmp_path: Path) -> None:
    from pipeline.parallel import last_line

    log = tmp_path / "rvq_upper.log"
    assert last_line(log) == "(no output yet)"
    log.write_text("[12:00:00] it 20 | train/rec 0.4\ncaching:  10%|#  \rcaching:  60%|###  \n\n")
    assert last_line(log) == "caching:  60%|###"


def test_wait_any_returns_the_ended_worker_and_beats_meanwhile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """WorkerPool.wait_any wakes on a worker's exit (its sentinel) and prints each running stage's latest log line
    every heartbeat until then; a worker that fails gives its exit code."""
    import os
    import time

    from pipeline.parallel import WorkerPool

    pool = WorkerPool({}, tmp_path)
    log = tmp_path / "x.log"
    log.write_text("[12:00:00] it 5 | train/loss 1.0\n")
    for name, target, args in (("x", time.sleep, (0.5,)), ("y", os._exit, (3,))):
        proc = pool.ctx.Process(target=target, args=args)
        proc.start()
        pool.procs[name] = (proc, log)
        assert pool.wait_any(heartbeat=0.05) == [(name, log, 0 if name == "x" else 3)]
        assert pool.running == []
    assert "[pipeline] x (worker): [12:00:00] it 5 | train/loss 1.0" in capsys.readouterr().out


def test_single_threaded_stages() -> None:
    """threads: 1 (the main job's) -> every stage may share the machine, except one whose own config asks for more
    threads (it wins inside its trainer); threads: null -> only the stages whose own config pins num_threads: 1 (the
    RVQ-VAEs), and none once that is overridden."""
    from pipeline.main import all_stage_names, single_threaded
    from utils.config import load_config

    cfg = load_config(str(REPO / "configs/pipeline/synthetic_cpu.yaml"), ["threads=1"])
    names = all_stage_names(cfg)
    assert single_threaded(cfg, names) == set(names) - {"report"}
    cfg = load_config(str(REPO / "configs/pipeline/synthetic_cpu.yaml"), ["threads=1", "+rvq.overrides.num_threads=2"])
    assert single_threaded(cfg, names) == set(names) - {"report", "rvq_upper", "rvq_hands", "rvq_lower_trans"}
    cfg = load_config(str(REPO / "configs/pipeline/synthetic_cpu.yaml"), ["threads=null"])
    assert single_threaded(cfg, names) == {"rvq_upper", "rvq_hands", "rvq_lower_trans"}
    cfg = load_config(str(REPO / "configs/pipeline/synthetic_cpu.yaml"),
                      ["threads=null", "+rvq.overrides.num_threads=2"])
    assert single_threaded(cfg, names) == set()


def test_threads_pins_every_stage_and_is_fingerprinted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's threads: each stage function runs with that many torch threads and numpy/scipy BLAS threads
    (the caller's restored after); null leaves both settings. It changes every trained stage's fingerprint, not the
    corpus's or the cache's."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from pipeline import stages
    from pipeline.main import stage_functions
    from pipeline.provenance import fingerprints
    from utils.config import load_config

    def blas() -> list[int]:
        return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

    seen: list[tuple[int, list[int]]] = []
    monkeypatch.setattr(stages, "corpus", lambda cfg: seen.append((torch.get_num_threads(), blas())) or {"paths": {}})
    path = REPO / "configs/pipeline/ci_tiny.yaml"
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(limits=2, user_api="blas"):
            assert blas() == [2], "numpy's BLAS is not visible to threadpoolctl here"
            stage_functions(load_config(path, ["threads=1"]))["corpus"]()
            assert torch.get_num_threads() == 2 and blas() == [2]
            stage_functions(load_config(path, ["threads=null"]))["corpus"]()
    finally:
        torch.set_num_threads(old)
    assert seen == [(1, [1]), (2, [2])]
    from pipeline.main import run

    for bad in ("0", "-2", "1.5"):  # refused before any folder is made
        with pytest.raises(ConfigError, match="threads must be null"):
            run(load_config(path, [f"threads={bad}", "output_dir=/nonexistent/never_made"]), "test")
    with pytest.raises(ConfigError, match="threads: expected an integer"):  # the config loader's type check
        load_config(path, ["threads=true"])
    assert not Path("/nonexistent/never_made").exists()
    one, unset = fingerprints(load_config(path, ["threads=1"])), fingerprints(load_config(path, ["threads=null"]))
    assert {n for n in one if one[n] == unset[n]} == {"corpus", "cache"}


def test_run_stage_failure_names_the_stage(tmp_path: Path) -> None:
    def bad() -> dict:
        raise FileNotFoundError("no such corpus")

    with pytest.raises(StageError, match="stage 'corpus' failed: FileNotFoundError: no such corpus"):
        run_stage("corpus", bad, tmp_path)
    assert load_record(tmp_path, "corpus") is None


def test_flatten_overrides_round_trip() -> None:
    out = flatten_overrides({"solver": {"epochs": 3, "milestones": [1, 2]}, "x": None, "name": "a b"})
    assert out == ["solver.epochs=3", "solver.milestones=[1, 2]", "x=null", 'name="a b"']


def test_stage_configs_resolve_against_the_pipeline_data() -> None:
    """The pipeline's data node replaces a stage's own before interpolations resolve: data.audio_rep=mel reaches the
    generator's encoder (it reads ${data.audio_rep}), so one pipeline override switches the audio features."""
    from pipeline.stages import stage_config
    from utils.config import load_config

    over = ["data.audio_rep=mel", "data.synthetic.files_per_speaker=3"]
    cfg = load_config("configs/pipeline/synthetic_cpu.yaml", over)
    node = cfg.generators.shortcut
    scfg = stage_config(str(node.config), node.get("overrides"), [], cfg.data)
    assert scfg.data.audio_rep == "mel" and scfg.data.synthetic.files_per_speaker == 3
    assert scfg.model.generator.params.modality_encoder.params.audio_rep == "mel"
    assert scfg.data.cache_dir == cfg.data.cache_dir  # every stage reads the pipeline's cache


def test_pipeline_face_setting_reaches_every_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """face: true needs the face RVQ-VAE among rvq.parts (an error before any stage runs, naming the fix); with it,
    every generator's stage config makes the face from that RVQ-VAE, and only generator fingerprints change."""
    from pipeline import stages
    from pipeline.main import run
    from pipeline.provenance import fingerprints
    from utils.config import load_config

    path = "configs/pipeline/synthetic_cpu.yaml"
    with pytest.raises(ConfigError, match=r"add face_jaw to rvq.parts"):
        run(load_config(path, ["face=true", "output_dir=/nonexistent/never_made"]), "test")
    assert not Path("/nonexistent/never_made").exists()
    on = load_config(path, ["face=true", "rvq.parts=[upper,hands,lower_trans,face_jaw]"])
    monkeypatch.setattr(stages, "record", lambda cfg, name: {"paths": {"checkpoint": f"/ck/{name}.pt"}})
    for g in on.generators:
        scfg = stages.generator_config(on, g)
        assert scfg.face is True and scfg.rvq.face_jaw == "/ck/rvq_face_jaw.pt", g
        assert scfg.model.generator.params.denoiser.params.use_exp is True, g
    off = load_config(path, [])
    assert stages.generator_config(off, "shortcut").face is False
    with pytest.raises(ConfigError, match=r"generators.shortcut.overrides.face: set the pipeline's `face`"):
        stages.pipeline_face(load_config(path, ["+generators.shortcut.overrides.face=true"]))
    f_on, f_off = fingerprints(on), fingerprints(off)
    assert f_on["gen_shortcut"] != f_off["gen_shortcut"]
    assert all(f_on[k] == f_off[k] for k in ("corpus", "cache", "fgd_ae", "rvq_upper", "rvq_hands", "rvq_lower_trans"))


def test_table_and_curves(tmp_path: Path) -> None:
    rep = {"metrics": {"fgd": 0.5, "bc": 0.6, "l1div": 3.0, "bc_gt": 0.7, "l1div_gt": 3.5},
           "ci95": {"fgd": [0.4, 0.6], "bc": [0.5, 0.7]}, "generation": {"nfe_per_window": 2},
           "timing": {"real_time_factor": 0.05}, "protocol": {"id": "emage2024"}}  # fmt: skip
    check = {"generator": "shortcut", "sampler": {"n_steps": 2}, "nfe_per_window": 2, "real_time_factor": 0.05,
             "bc_protocol": "corrected", "summary": {"audio_swapped": {"bc": 0.55, "bc_emage2024": 0.8}}}
    rows = table_rows({"sc": rep}, {"sc": "shortcut (n=2)"}, check)
    assert [r["name"] for r in rows][:2] == ["GT", "shortcut (n=2)"] and rows[2]["name"].startswith("control")
    assert rows[0]["bc"] == (0.7, None) and rows[0]["fgd"] == (None, None)
    assert rows[2]["bc"] == (0.8, None)  # the table's protocol (emage2024 by default), not the check's
    md = markdown_table(rows)
    assert "| shortcut (n=2) | 0.5 [0.4, 0.6] | 0.6000 [0.5000, 0.7000] | 3.000 | 2 | 0.050 |" in md
    m = tmp_path / "metrics.jsonl"
    m.write_text("\n".join(json.dumps({"step": i, "time": 0, "train/loss": 1.0 / (i + 1)}) for i in range(5)) + "\n"
                 + json.dumps({"step": 5, "time": 0, "val/fgd": 0.3}) + "\n")  # fmt: skip
    png = plot_training_curves({"gen": m}, tmp_path / "c.png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_training_curves({"gen": tmp_path / "missing.jsonl"}, tmp_path / "d.png")


# ----------------------------------------------------------------------------------------------- end to end
def _run_ci(tmp_path: Path) -> Path:
    from pipeline.main import main

    out = tmp_path / "pipe"
    rc = main(["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}"])
    assert rc == 0
    return out


def _assert_artefacts(out: Path) -> None:
    rec = lambda name: json.loads((out / "stages" / f"{name}.json").read_text())  # noqa: E731
    root = Path(rec("corpus")["paths"]["root"])
    assert (root / "train_test_split.csv").is_file() and len(list((root / "smplxflame_30").glob("*.npz"))) == 8
    assert len(list((root / "wave16k").glob("*.wav"))) == 8 and len(list((root / "textgrid").glob("*"))) == 8
    manifest = json.loads(Path(rec("cache")["paths"]["manifest"]).read_text())
    assert len(manifest["files"]) == 8 and not manifest.get("in_progress")
    assert np.load(rec("cache")["paths"]["mean_vel"]).shape == (55,)
    from evaluation.fgd_autoencoder import load_fgd_autoencoder
    from models.vq.rvqvae import load_rvqvae

    load_fgd_autoencoder(rec("fgd_ae")["paths"]["checkpoint"])
    for part in ("upper", "hands", "lower_trans"):
        load_rvqvae(rec(f"rvq_{part}")["paths"]["checkpoint"], part=part)
    for g in ("shortcut", "reflow", "meanflow", "diffusion"):
        assert Path(rec(f"gen_{g}")["paths"]["checkpoint"]).is_file()
    couplings = json.loads((Path(rec("gen_reflow")["paths"]["couplings"]) / "manifest.json").read_text())
    assert couplings["complete"] and couplings["fingerprint"]["steps"] == 4  # ci_tiny's teacher sampling
    for run in ("shortcut_n2", "shortcut_n20", "reflow_n2", "meanflow_n1", "diffusion_20"):
        d = out / "test" / run
        ids = sorted(p.name[4:] for p in d.glob("res_*.npz"))
        assert len(ids) == 2 and ids == sorted(p.name[3:] for p in d.glob("gt_*.npz"))
        m = json.loads((out / "report" / "metrics" / f"{run}.json").read_text())
        assert m["protocol"]["id"] == "emage2024" and m["gt_copied"] == ["seed"]  # nothing copied by default
        assert m["generation"]["fields"]["jaw"] == "zeros (not generated)"  # the main job has no face part
        for k in ("fgd", "bc", "l1div"):
            assert np.isfinite(m["metrics"][k])
    assert json.loads((out / "report" / "metrics" / "shortcut_n20.json").read_text())["generation"]["n_steps"] == 20
    report = (out / "report" / "report.md").read_text()
    assert "| GT |" in report and "| shortcut (n=2) |" in report and "Learning check" in report
    results = (out / "report" / "results.md").read_text()
    assert "python run_pipeline.py" in results and "Git commit" in results
    nfe = json.loads((out / "nfe_table.json").read_text())  # issue 19's NFE-vs-quality table
    assert nfe["reference"] == "shortcut_n20"  # the first run with the most network calls
    for r in nfe["rows"]:
        m = json.loads((out / "report" / "metrics" / f"{r['run']}.json").read_text())
        assert r["fgd_pooled"][0] == m["metrics"]["fgd"] and r["bc_emage2024"][0] == pytest.approx(m["metrics"]["bc"])
        assert r["fgd_file_n_files"] == 2 and np.isfinite(r["real_time_factor"][0])
        if r["run"] != "shortcut_n20":
            assert np.isfinite(r["fgd_file_minus_ref"][0]) and np.isfinite(r["bc_minus_ref"][0])
    assert {r["run"] for r in nfe["rows"]} == {"shortcut_n2", "shortcut_n20", "reflow_n2", "meanflow_n1",
                                               "diffusion_20"}  # fmt: skip
    assert nfe["rows"][-1]["run"] == "meanflow_n1" and nfe["rows"][-1]["nfe_per_window"] == 1
    for r in nfe["rows"]:
        for k in ("bc", "bc_emage2024", "fgd_file", "beat_placement"):
            v, (lo, hi) = r[k]
            assert np.isfinite(v) and lo <= v + 1e-12 and v <= hi + 1e-12, (r["run"], k)
    assert "| shortcut-reflow (n=2) | 2 (×2 rows, w = 2) |" in results and "paired per-file FGD" in results
    for png in ("training_curves.png", "speed_vs_onsets.png"):
        assert (out / "report" / png).read_bytes()[:4] == b"\x89PNG"
    lc = json.loads((out / "learning_check.json").read_text())
    assert lc["n_files"] == 2 and not lc["enough_files"] and not lc["passed"]  # ci_tiny has 2 test files
    assert lc["donor_ids"] == lc["test_ids"][::-1]  # each file gets the other speaker's inputs
    assert set(lc["per_file"]) == {"own", "audio_swapped", "words_swapped", "delayed", "gt", "rvq_roundtrip",
                                   "other_gt"}  # fmt: skip
    for cond, vals in lc["per_file"].items():
        for k in ("bc", "fgd_file", "speed", "acceleration", "jerk", "beat_placement"):
            assert len(vals[k]) == 2 and all(np.isfinite(vals[k])), (cond, k)
    assert lc["per_file"]["gt"]["fgd_file"] == pytest.approx([0.0, 0.0], abs=1e-6)  # GT against itself
    for name, st in lc["statistics"].items():
        assert st["ci95"][0] <= st["value"] + 1e-12 and st["value"] <= st["ci95"][1] + 1e-12, name
    assert set(lc["criteria"]) == {"a_smooth_and_lively", "b_on_the_beats", "c_uses_its_audio", "d_bc_near_gt"}
    motions = out / "report" / "learning_check"
    for cond in ("own", "audio_swapped", "words_swapped", "delayed"):
        for s in range(lc["n_seeds"]):
            assert len(list((motions / cond / f"seed{s}").glob("res_*.npz"))) == 2
    for ref in ("gt", "rvq_roundtrip", "other_gt"):
        assert len(list((motions / ref).glob("gt_*.npz"))) == 2
    assert set(json.loads((motions / "wavs.json").read_text())) == set(lc["test_ids"])
    assert "Learning check FAILED" in report and "beat placement" in report
    # procedure C: the checked model's guidance chosen on val; the check and test shortcut_n2 sample at it
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["split"] == "val" and [r["guidance"] for r in cal["rows"]] == [1.0, 2.0]  # ci_tiny's grid
    assert cal["guidance"] in (1.0, 2.0) and cal["n_files"] == len(cal["ids"]) >= 2 and not set(cal["ids"]) & set(
        lc["test_ids"])
    assert lc["sampler"]["guidance"] == cal["guidance"]
    gen = lambda run: json.loads((out / "report" / "metrics" / f"{run}.json").read_text())["generation"]  # noqa: E731
    assert gen("shortcut_n2")["guidance"] == cal["guidance"] and gen("shortcut_n20")["guidance"] == 2.0  # its own
    assert f"g* = {cal['guidance']:g}" in report and "(chosen)" in report
    assert "Donors:" in report
    # the codec's round trip on val and test (issue 13 item 2); test agrees with the check's own reference
    codec = json.loads((out / "report" / "rvq_roundtrip.json").read_text())
    assert set(codec) == {"val", "test"} and codec["test"]["n_files"] == 2
    for q in ("speed", "acceleration", "jerk"):
        assert codec["test"][q]["ratio"] == pytest.approx(lc["realism_ratios_vs_gt"]["rvq_roundtrip"][q], rel=0.02)
    assert "RVQ round trip of held-out GT" in results and "| val |" in results and "| test |" in results
    # beat placement of GT and the round trip, as is and with the pelvis held: GT's equals the check's own GT value
    bp = codec["test"]["beat_placement"]
    assert set(bp) == {"gt", "round_trip", "gt_root_held", "round_trip_root_held"}
    assert bp["gt"]["mean"] == pytest.approx(float(np.mean(lc["per_file"]["gt"]["beat_placement"])), abs=1e-9)
    for k, v in bp.items():
        assert v["n_files"] == 2 and v["ci"][0] <= v["mean"] + 1e-12 <= v["ci"][1] + 2e-12, k
    assert "pelvis held" in results


# 1-2.5 min on 2 idle cores (53-136 s measured on different days); the learning check runs and is checked for
# shape, not for a pass (the reduced models are too small to learn audio use; the pass is asserted by the slow
# synthetic_cpu test below).
def test_ci_pipeline_artefacts_and_skip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = _run_ci(tmp_path)
    _assert_artefacts(out)
    # a second run skips every completed stage and rebuilds only the report
    from pipeline.main import main

    capsys.readouterr()
    assert main(["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "stage gen_shortcut: complete, skipped" in printed and "stage rvq_hands: complete, skipped" in printed
    # changed settings never reuse old numbers: the learning check reruns, its upstream stages are skipped
    before = json.loads((out / "learning_check.json").read_text())
    assert main(["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}", "learning_check.seeds=3"]) == 0
    printed = capsys.readouterr().out
    # the seeds are the calibration's too: it reruns first, and the check and test shortcut_n2 that read it after it
    assert "stage calibrate: its outputs were made with other settings" in printed
    assert "stage learning_check: done" in printed and "stage test_shortcut_n2: done" in printed
    assert "stage gen_shortcut: complete, skipped" in printed
    after = json.loads((out / "learning_check.json").read_text())
    assert before["n_seeds"] == 2 and after["n_seeds"] == 3
    # a forced stage's outputs are new, so every stage that reads them reruns too (and only those)
    couplings = out / "couplings" / "reflow" / "manifest.json"
    made = couplings.stat().st_mtime_ns
    argv = ["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}", "learning_check.seeds=3"]
    assert main([*argv, "force=gen_reflow"]) == 0
    printed = capsys.readouterr().out
    assert "stage gen_shortcut: complete, skipped" in printed and "stage test_shortcut_n2: complete, skipped" in printed
    assert "stage test_reflow_n2: its inputs ['gen_reflow'] were remade in this run" in printed
    assert "stage nfe_table: its inputs ['test_reflow_n2'] were remade in this run" in printed
    assert "stage learning_check: complete, skipped" in printed  # it reads gen_shortcut only
    assert couplings.stat().st_mtime_ns != made  # the reran stage made its couplings anew


def test_workers_train_the_rvq_vaes_as_one_by_one(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """workers=2 runs the single-threaded stages in worker processes, side by side: same weights, bit for bit. With
    threads=1 the FGD autoencoder is one of them too (after the RVQ-VAEs); the corpus and the cache, each the only
    stage able to run, stay in the main process."""
    import multiprocessing
    import os

    import torch

    from pipeline.main import main
    from pipeline.reproducibility import checkpoint_tensors

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # workers are capped at the cores

    argv = ["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), "stages=[corpus,cache,fgd_ae,rvq]", "threads=1"]
    assert main([*argv, f"output_dir={tmp_path / 'serial'}", "workers=1"]) == 0
    assert "worker process" not in capsys.readouterr().out
    assert main([*argv, f"output_dir={tmp_path / 'side'}", "workers=2"]) == 0
    printed = capsys.readouterr().out
    assert "stage corpus: started in a worker" not in printed and "stage cache: started in a worker" not in printed
    assert printed.index("stage fgd_ae: started in a worker") > printed.index("stage rvq_hands: started in a worker")
    for stage in ("rvq_upper", "rvq_hands", "rvq_lower_trans", "fgd_ae"):
        assert f"stage {stage}: started in a worker process" in printed
        log = tmp_path / "side" / "logs" / f"{stage}.log"
        assert "training done" in log.read_text()
        ck = [json.loads((tmp_path / d / "stages" / f"{stage}.json").read_text())["paths"]["checkpoint"]
              for d in ("serial", "side")]  # fmt: skip
        a, b = checkpoint_tensors(Path(ck[0])), checkpoint_tensors(Path(ck[1]))
        assert a.keys() == b.keys() and len(a) > 10
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    # complete stages are skipped in the main process (no worker started)
    assert main([*argv, f"output_dir={tmp_path / 'side'}", "workers=2"]) == 0
    assert "worker process" not in capsys.readouterr().out
    # a worker sees the pipeline's environment when its stage starts, not the fork server's (started above): the
    # upper codec's joint-position terms look for SMPL-X where $SMPLX_MODEL_PATH says, and a missing path is an error
    with monkeypatch.context() as env:
        env.setenv("SMPLX_MODEL_PATH", str(tmp_path / "nowhere"))
        assert main([*argv, f"output_dir={tmp_path / 'side'}", "workers=2", "force=[rvq_upper,rvq_hands]"]) == 1
    captured = capsys.readouterr()
    assert "FAILED at stage 'rvq_upper'" in captured.err
    assert "$SMPLX_MODEL_PATH=" in (tmp_path / "side" / "logs" / "rvq_upper.log").read_text()
    assert main([*argv, f"output_dir={tmp_path / 'side'}", "workers=2", "force=rvq_upper"]) == 0  # unset again
    # a resumed run: a skipped stage does not hold a worker's slot, the two missing ones run side by side
    for part in ("hands", "lower_trans"):
        (tmp_path / "side" / "stages" / f"rvq_{part}.json").unlink()
    assert main([*argv, f"output_dir={tmp_path / 'side'}", "workers=2"]) == 0
    printed = capsys.readouterr().out
    assert "stage rvq_upper: complete, skipped" in printed
    assert printed.index("rvq_lower_trans: started in a worker") < printed.index("rvq_hands: done in")
    # a failing worker names its stage and its log, and no worker outlives the pipeline
    assert main([*argv, f"output_dir={tmp_path / 'side'}", "workers=2", "rvq.overrides.solver.lr=-1"]) == 1
    captured = capsys.readouterr()
    assert "its outputs were made with other settings" in captured.out  # said by the pipeline, not only in the log
    assert "FAILED at stage 'rvq_" in captured.err and "logs/rvq_" in captured.err
    assert not multiprocessing.active_children()


def test_fingerprints_follow_the_dependencies() -> None:
    from pipeline.main import all_stage_names
    from pipeline.provenance import fingerprints
    from utils.config import ConfigError, load_config

    path = REPO / "configs/pipeline/ci_tiny.yaml"
    base = fingerprints(load_config(path))
    changed = fingerprints(load_config(path, ["rvq.overrides.solver.iterations=60"]))
    same = {n for n in base if base[n] == changed[n]}
    assert same == {"corpus", "cache", "fgd_ae"}  # RVQs, generators, tests and the check depend on the RVQ settings
    teacher = fingerprints(load_config(path, ["generators.shortcut.overrides.solver.epochs=3"]))
    # reflow learns the shortcut model's couplings, MeanFlow starts from its weights
    assert {n for n in base if base[n] != teacher[n]} == {"gen_shortcut", "gen_reflow", "gen_meanflow", "calibrate",
                                                          "test_shortcut_n2", "test_shortcut_n20", "test_reflow_n2",
                                                          "test_meanflow_n1", "nfe_table", "learning_check"}
    # the calibration samples with the check's seeds; what reads its guidance: the check and test shortcut_n2
    calibrated = {"calibrate", "learning_check", "test_shortcut_n2", "nfe_table"}
    lc = fingerprints(load_config(path, ["learning_check.seeds=5"]))
    assert {n for n in base if base[n] != lc[n]} == calibrated
    grid = fingerprints(load_config(path, ["calibration.guidance=[1.0,1.5]"]))
    assert {n for n in base if base[n] != grid[n]} == calibrated
    boot = fingerprints(load_config(path, ["learning_check.n_boot=500"]))
    assert {n for n in base if base[n] != boot[n]} == {"learning_check"}  # the check's bootstrap only
    off = fingerprints(load_config(path, ["calibration=null"]))
    assert "calibrate" not in off and {n for n in off if off[n] != base[n]} == {"learning_check", "test_shortcut_n2",
                                                                               "nfe_table"}  # fmt: skip
    with pytest.raises(ConfigError, match="teacher"):
        all_stage_names(load_config(path, ["generators.reflow.teacher=diffusion"]))
    seed = fingerprints(load_config(path, ["seed=7"]))
    assert {n for n in base if base[n] != seed[n]} == set(base) - {"corpus", "cache"}


def test_stale_record_is_not_used(tmp_path: Path) -> None:
    calls = []

    def fn() -> dict:
        calls.append(1)
        return {"paths": {"f": str(tmp_path)}}

    run_stage("s1", fn, tmp_path, fingerprint="aaa")
    run_stage("s1", fn, tmp_path, fingerprint="aaa")
    assert len(calls) == 1 and load_record(tmp_path, "s1", "aaa") is not None
    assert load_record(tmp_path, "s1", "bbb") is None
    run_stage("s1", fn, tmp_path, fingerprint="bbb")
    assert len(calls) == 2


def test_two_pipelines_into_one_folder_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.main import main, output_lock

    out = tmp_path / "busy"
    out.mkdir()
    with output_lock(out):
        rc = main(["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}", "stages=[corpus]"])
    assert rc == 1 and "another pipeline is running into" in capsys.readouterr().err
    assert not (out / "stages").exists()


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The main job once for the slow tests below (17-22 min on 2 idle AVX2 cores)."""
    from pipeline.main import main

    out = tmp_path_factory.mktemp("main_job") / "main"
    assert main(["-c", str(REPO / "configs/pipeline/synthetic_cpu.yaml"), f"output_dir={out}"]) == 0
    return {"out": out, "check": json.loads((out / "learning_check.json").read_text())}


@pytest.mark.slow
def test_synthetic_cpu_main_job_runs_the_check(main_job: dict) -> None:
    """The check ran on >= 12 test files with every condition and reference, its verdict is what its statistics say,
    and every motion it scored is on disk for re-scoring."""
    lc, out = main_job["check"], main_job["out"]
    assert lc["enough_files"] and lc["n_files"] >= 12
    assert set(lc["per_file"]) == {"own", "audio_swapped", "words_swapped", "delayed", "gt", "rvq_roundtrip",
                                   "other_gt"}  # fmt: skip
    st, rule = lc["statistics"], lc["rule"]
    assert lc["criteria"]["c_uses_its_audio"]["passed"] == (st["fgd_swapped_minus_own"]["ci95"][0] > 0)
    assert lc["criteria"]["a_smooth_and_lively"]["passed"] == (
        st["jerk_ratio"]["ci95"][1] < rule["max_jerk_ratio"]
        and st["acceleration_ratio"]["ci95"][1] < rule["max_acceleration_ratio"]
        and rule["speed_ratio_range"][0] < st["speed_ratio"]["ci95"][0]
        and st["speed_ratio"]["ci95"][1] < rule["speed_ratio_range"][1])
    assert lc["passed"] == all(c["passed"] for c in lc["criteria"].values())
    # the RVQ codec itself must not be the source of jitter (issue 13 item 2: round trip <= 1.25x GT jerk/acc)
    rr = lc["realism_ratios_vs_gt"]["rvq_roundtrip"]
    assert rr["jerk"] <= 1.25 and rr["acceleration"] <= 1.25, rr
    motions = out / "report" / "learning_check"
    assert len(list((motions / "own" / "seed0").glob("res_*.npz"))) == lc["n_files"]
    assert "Learning check" in (out / "report" / "report.md").read_text()
    # procedure C: the checked model's guidance chosen on the 12 val files, and the check sampled at it
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["split"] == "val" and cal["n_files"] == 12 and not set(cal["ids"]) & set(lc["test_ids"])
    assert cal["guidance"] in [r["guidance"] for r in cal["rows"]] and lc["sampler"]["guidance"] == cal["guidance"]
    # issue 19: the few-step generators are in the NFE-vs-quality table, on the same test split
    nfe = json.loads((out / "nfe_table.json").read_text())
    assert {(r["run"], r["nfe_per_window"]) for r in nfe["rows"]} >= {("reflow_n2", 2), ("meanflow_n1", 1),
                                                                     ("shortcut_n20", 20), ("diffusion_20", 20)}
    assert all(r["n_files"] == lc["n_files"] for r in nfe["rows"])


@pytest.mark.slow
def test_ci_pipeline_with_the_face_generates_jaw_and_expressions(tmp_path: Path) -> None:
    """issue 18: face=true with the face RVQ-VAE runs every stage; the learning check scores a generated jaw
    (jaw_corr finite for the model's own motion), and nothing but the seed is copied from GT."""
    from pipeline.main import main

    out = tmp_path / "face"
    assert main(["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}", "face=true",
                 "rvq.parts=[upper,hands,lower_trans,face_jaw]"]) == 0  # fmt: skip
    lc = json.loads((out / "learning_check.json").read_text())
    assert np.isfinite(lc["summary"]["own"]["jaw_corr"]) and lc["gt_copied"] == ["seed"]
    m = json.loads((out / "test" / "shortcut_n2" / "metrics.json").read_text())
    assert m["generation"]["fields"]["jaw"] == "generated" and m["generation"]["fields"]["expressions"] == "generated"
    assert "jaw corr." in (out / "report" / "report.md").read_text()


# The machine types on which the main job's check was measured to pass with the config as it is. Session 28: on the
# Intel AVX-512 type the config (M7's sample_timing, docs/prereg/session28.md; procedure C's g* 2.0) passes all four
# (main job at 6469ffd, 12.7 min; the same numbers as M7's seed-45 test row, trained outside the pipeline). On the
# AMD AVX2 type the current config has not run (its pass of sessions 22-23 was at the fixed guidance 1.375, before C).
CHECKED_CPU_TYPES: tuple[tuple[str, str], ...] = (("GenuineIntel", "AVX512"),)


@pytest.mark.slow
@pytest.mark.xfail(
    cpu_type() not in CHECKED_CPU_TYPES, strict=False, raises=AssertionError,
    reason=("the config's pass is measured only on Intel AVX-512 (session 28); trained numbers differ across CPU "
            "types and on AMD AVX2 the current config is unmeasured"))  # fmt: skip
def test_synthetic_cpu_passes_the_learning_check(main_job: dict) -> None:
    """The pre-registered rule: (a) smooth and as lively as GT, (b) on the beats, (c) uses its audio, (d) BC near
    GT's, each with its 95% CI on the right side of the boundary. Asserted on the machine types where the config's
    pass was measured (CHECKED_CPU_TYPES); elsewhere a failure is expected and reported, not hidden. Trained numbers
    differ across CPU types (README, Reproducibility) and the pass is one draw of a spread over training seeds (on
    Intel AVX-512 three of five seeds pass with the config's settings; README, "Session 28")."""
    lc = main_job["check"]
    failed = {k: c["rule"] for k, c in lc["criteria"].items() if not c["passed"]}
    assert not failed, (failed, lc["statistics"])
