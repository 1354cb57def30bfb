"""Pipeline: stage runner (skip/force/failure naming), report/plot code on small inputs, and the reduced pipeline
(configs/pipeline/ci_tiny.yaml) end to end with every stage's artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.learning_check import (
    bootstrap_mean_interval,
    donor_indices,
    mismatched_item,
    paired_file_fgd,
    seed_interval,
    separated,
)
from pipeline.report import markdown_table, plot_training_curves, table_rows
from pipeline.runner import StageError, is_forced, load_record, run_stage
from pipeline.stages import flatten_overrides

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


def test_run_stage_failure_names_the_stage(tmp_path: Path) -> None:
    def bad() -> dict:
        raise FileNotFoundError("no such corpus")

    with pytest.raises(StageError, match="stage 'corpus' failed: FileNotFoundError: no such corpus"):
        run_stage("corpus", bad, tmp_path)
    assert load_record(tmp_path, "corpus") is None


def test_flatten_overrides_round_trip() -> None:
    out = flatten_overrides({"solver": {"epochs": 3, "milestones": [1, 2]}, "x": None, "name": "a b"})
    assert out == ["solver.epochs=3", "solver.milestones=[1, 2]", "x=null", 'name="a b"']


def test_mismatched_item_crops_and_pads() -> None:
    item = {"audio": torch.zeros(100, 2), "word": torch.zeros(10, dtype=torch.long), "id": "a"}
    long = {"audio": torch.ones(150, 2), "word": torch.full((12,), 5, dtype=torch.long)}
    short = {"audio": torch.ones(60, 2), "word": torch.full((7,), 5, dtype=torch.long)}
    a = mismatched_item(item, long)
    assert a["audio"].shape == (100, 2) and a["audio"].sum() == 200 and a["word"].tolist() == [5] * 10
    b = mismatched_item(item, short, pad_word=0)
    assert b["audio"].shape == (100, 2) and b["audio"][60:].abs().sum() == 0 and b["audio"][:60].sum() == 120
    assert b["word"].tolist() == [5] * 7 + [0] * 3
    assert a["id"] == "a"


def test_donor_indices_prefer_another_speaker() -> None:
    # 6 files, 3 speakers (sorted): offset n//2 = 3 lands on another speaker for everyone
    assert donor_indices([1, 1, 2, 2, 3, 3]) == [3, 4, 5, 0, 1, 2]
    assert donor_indices([1, 2]) == [1, 0]
    # offset 2 would give the same speaker for file 0 (speakers 1,2,1,2 -> 0<->2); offset 3 is taken instead
    assert donor_indices([1, 2, 1, 2]) == [3, 0, 1, 2]
    assert donor_indices([7, 7, 7]) == [1, 2, 0]  # one speaker: the first offset, still a derangement
    with pytest.raises(ValueError):
        donor_indices([1])


def test_paired_file_fgd_matches_frechet_distance() -> None:
    from evaluation.metrics import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(0.5, 2.0, size=(30, 6))
    moments = (a.shape[0], a.sum(0), a.T @ a, b.shape[0], b.sum(0), b.T @ b)
    assert paired_file_fgd(moments) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    assert paired_file_fgd((a.shape[0], a.sum(0), a.T @ a) * 2) == pytest.approx(0.0, abs=1e-6)
    ci = bootstrap_mean_interval([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= ci[0] < 2.5 < ci[1] <= 4.0 and bootstrap_mean_interval([1.0]) is None


def test_seed_interval_and_separation() -> None:
    ci = seed_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.3027 -> half width 4.3027/sqrt(3)
    assert ci == pytest.approx([2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5], rel=1e-5)
    assert seed_interval([1.0]) is None
    assert separated([0.5, 0.6], [0.2, 0.4], higher_is_better=True)
    assert not separated([0.3, 0.6], [0.2, 0.4], higher_is_better=True)
    assert separated([0.1, 0.2], [0.3, 0.4], higher_is_better=False)
    assert not separated([0.1, 0.2], [0.3, 0.4], higher_is_better=True)


def test_table_and_curves(tmp_path: Path) -> None:
    rep = {"metrics": {"fgd": 0.5, "bc": 0.6, "l1div": 3.0, "bc_gt": 0.7, "l1div_gt": 3.5},
           "ci95": {"fgd": [0.4, 0.6], "bc": [0.5, 0.7]}, "generation": {"nfe_per_window": 2},
           "timing": {"real_time_factor": 0.05}}  # fmt: skip
    check = {"generator": "shortcut", "n_steps": 2, "nfe_per_window": 2, "real_time_factor": 0.05,
             "ci_method": "t-interval over 3 sampling seeds",
             "results": {"control": {k: {"mean": 1.0, "ci95": [0.9, 1.1]} for k in ("fgd", "bc", "l1div")}}}
    rows = table_rows({"sc": rep}, {"sc": "shortcut (n=2)"}, check)
    assert [r["name"] for r in rows][:2] == ["GT", "shortcut (n=2)"] and rows[2]["name"].startswith("control")
    assert rows[0]["bc"] == (0.7, None) and rows[0]["fgd"] == (None, None)
    md = markdown_table(rows)
    assert "| shortcut (n=2) | 0.5 [0.4, 0.6] | 0.6000 [0.5000, 0.7000] | 3.000 | 2 | 0.050 |" in md
    assert "seeds" in md.splitlines()[-1]
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
    for g in ("shortcut", "diffusion"):
        assert Path(rec(f"gen_{g}")["paths"]["checkpoint"]).is_file()
    for run in ("shortcut_n2", "shortcut_n20", "diffusion_20"):
        d = out / "test" / run
        ids = sorted(p.name[4:] for p in d.glob("res_*.npz"))
        assert len(ids) == 2 and ids == sorted(p.name[3:] for p in d.glob("gt_*.npz"))
        m = json.loads((out / "report" / "metrics" / f"{run}.json").read_text())
        assert m["protocol"]["id"] == "emage2024" and "jaw" in m["gt_copied"]
        for k in ("fgd", "bc", "l1div"):
            assert np.isfinite(m["metrics"][k])
    assert json.loads((out / "report" / "metrics" / "shortcut_n20.json").read_text())["generation"]["n_steps"] == 20
    report = (out / "report" / "report.md").read_text()
    assert "| GT |" in report and "| shortcut (n=2) |" in report and "Learning check" in report
    results = (out / "report" / "results.md").read_text()
    assert "python run_pipeline.py" in results and "Git commit" in results
    for png in ("training_curves.png", "speed_vs_onsets.png"):
        assert (out / "report" / png).read_bytes()[:4] == b"\x89PNG"
    lc = json.loads((out / "learning_check.json").read_text())
    assert set(lc["results"]) == {"model", "control"} and lc["n_test_files"] == 2
    assert lc["donor_ids"] == lc["test_ids"][::-1]  # each file gets the other speaker's audio
    assert [i.split("_")[0] for i in lc["donor_ids"]] != [i.split("_")[0] for i in lc["test_ids"]]
    for cond in ("model", "control"):
        r = lc["results"][cond]
        for k in ("fgd", "fgd_file", "bc", "l1div"):
            assert len(r[k]["values"]) == lc["n_seeds"] and all(np.isfinite(r[k]["values"])), (cond, k)
            assert r[k]["ci95"][0] <= r[k]["mean"] <= r[k]["ci95"][1]
        assert np.array(lc["per_file_fgd"][cond]).shape == (lc["n_seeds"], 2)
    # ground-truth BC does not depend on the condition; the same sampling seeds drive both conditions
    assert lc["results"]["model"]["bc_gt"]["mean"] == pytest.approx(lc["results"]["control"]["bc_gt"]["mean"])
    assert lc["passed"] == (lc["passed_bc"] and lc["passed_fgd"])
    assert "paired per-file FGD" in report and "Donors:" in report


# ~1 min on 2 idle cores (53 s measured); the learning check runs and is checked for shape, not for a pass (the
# reduced models are too small to learn audio use; the pass is asserted by the slow synthetic_cpu test below).
def test_ci_pipeline_artefacts_and_skip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = _run_ci(tmp_path)
    _assert_artefacts(out)
    # a second run skips every completed stage and rebuilds only the report
    from pipeline.main import main

    capsys.readouterr()
    assert main(["-c", str(REPO / "configs/pipeline/ci_tiny.yaml"), f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "stage gen_shortcut: complete, skipped" in printed and "stage rvq_hands: complete, skipped" in printed


@pytest.mark.slow
def test_synthetic_cpu_learning_check(tmp_path: Path) -> None:
    """The main job (about 10 min on 2 idle cores): the shortcut model beats the mismatched-audio control on BC and
    on the paired per-file FGD, with non-overlapping 95% CIs."""
    from pipeline.main import main

    out = tmp_path / "main"
    assert main(["-c", str(REPO / "configs/pipeline/synthetic_cpu.yaml"), f"output_dir={out}"]) == 0
    lc = json.loads((out / "learning_check.json").read_text())
    assert lc["passed_bc"], lc["results"]
    assert lc["passed_fgd"], lc["results"]
