"""Resume hygiene (issue 14 item 10): temporary checkpoint files of a killed write are removed at the next start,
and metrics.jsonl after a resume holds each step once (the killed run's later records are dropped)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.test_trainer_base import ToyTrainer, make_cfg
from utils.io import atomic_path, atomic_temp_target, remove_stale_temp_files
from utils.logging import JsonlLogger, read_metrics


def _records(path: Path) -> list[dict]:
    """Numeric-step records without their wall-clock time (what two equal runs share)."""
    return [{k: v for k, v in r.items() if k not in ("time", "train/sec_per_it")}
            for r in read_metrics(path) if isinstance(r.get("step"), int)]


def test_atomic_path_names_match_the_cleanup_pattern(tmp_path):
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"x")
        assert atomic_temp_target(tmp.name) == "last.pt"  # the pattern follows what atomic_path really writes
    for other in ("last.pt", ".last.pt.tmp", "notes.tmp", ".last.pt.abcd123.tmp", "last.pt.abcd1234.tmp"):
        assert atomic_temp_target(other) is None, other


def test_remove_stale_temp_files_removes_only_ours(tmp_path):
    ours = {".last.pt.k2x_9q0a.tmp": 300, ".best.json.abcdefgh.tmp": 7}
    for name, size in ours.items():
        (tmp_path / name).write_bytes(b"\0" * size)
    kept = ["last.pt", "notes.tmp", ".last.pt.tmp", ".hidden", "x.abcdefgh.tmp"]
    for name in kept:
        (tmp_path / name).write_bytes(b"keep")
    (tmp_path / ".sub.abcdefgh.tmp").mkdir()  # a folder with the pattern's name is never touched
    (tmp_path / ".sub.abcdefgh.tmp" / "f").write_bytes(b"keep")
    os.symlink(tmp_path / "last.pt", tmp_path / ".link.abcdefgh.tmp")  # nor a link
    removed = remove_stale_temp_files(tmp_path)
    assert {(p.name, size) for p, size in removed} == set(ours.items())
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*kept, ".sub.abcdefgh.tmp", ".link.abcdefgh.tmp"])
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_trainer_start_removes_temp_files_of_a_killed_write(tmp_path):
    run = tmp_path / "run"
    with ToyTrainer(make_cfg(tmp_path, **{"solver.epochs": 1}), run_dir=run) as tr:
        tr.fit()
    ck = run / "checkpoints"
    (ck / ".last.pt.q1w2e3r4.tmp").write_bytes(b"\0" * 1000)  # what kill -9 during save_torch leaves
    (ck / ".best.pt.zz_zz_zz.tmp").write_bytes(b"\0" * 500)
    (run / ".best.json.a1b2c3d4.tmp").write_bytes(b"{")
    (ck / "mine.tmp").write_bytes(b"not ours")
    with ToyTrainer(make_cfg(tmp_path, **{"solver.epochs": 2}), run_dir=run) as tr:
        tr.resume(ck / "last.pt")
        assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "last.pt", "mine.tmp"]
        assert not (run / ".best.json.a1b2c3d4.tmp").exists()
        tr.fit()
    texts = [r["text"] for r in read_metrics(run / "metrics.jsonl") if "text" in r]
    note = next(t for t in texts if t.startswith("removed 3 temporary file(s)"))
    assert "checkpoints/.last.pt.q1w2e3r4.tmp" in note and "0.0 MB" in note


def test_resume_drops_the_killed_runs_later_records(tmp_path):
    """A run checkpointed at 11 went on logging to 19 (past the validation at 16) and was killed; resumed from 11 in
    the same folder, its metrics.jsonl equals an uninterrupted run's, each step once."""
    cfg = make_cfg(tmp_path, log_period=1, **{"solver.epochs": 4})
    with ToyTrainer(cfg, run_dir=tmp_path / "straight") as tr:
        tr.fit()
    run = tmp_path / "killed"
    with ToyTrainer(cfg, run_dir=run) as tr:
        tr.fit(until_iteration=11)  # mid-epoch (8 batches per epoch)
        shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "at11.pt")
        tr.fit(until_iteration=19)  # steps 12..19 and the validation at 16 logged, then "killed"
    metrics = run / "metrics.jsonl"
    os.chmod(metrics, 0o640)
    with open(metrics, "a") as f:
        f.write('{"step": 20, "train/lo')  # a record cut by the kill
    shutil.copy(tmp_path / "at11.pt", run / "checkpoints" / "last.pt")
    with ToyTrainer(cfg, run_dir=run) as tr:
        tr.resume(run / "checkpoints" / "last.pt")
        tr.fit()
    got, want = _records(metrics), _records(tmp_path / "straight" / "metrics.jsonl")
    assert [r["step"] for r in got if "train/loss" in r] == list(range(1, 33))
    assert got == want  # same values, bit for bit (exact resume), no repeated step
    assert os.stat(metrics).st_mode & 0o777 == 0o640  # the rewrite keeps the file's permissions
    texts = [r["text"] for r in read_metrics(metrics) if "text" in r]
    assert any("iteration 11; dropped 9 logged record(s)" in t for t in texts)


def test_resume_hides_the_killed_runs_later_steps_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(tmp_path, log_period=1, logging=["tensorboard", "console"], **{"solver.epochs": 2})
    run = tmp_path / "killed"
    with ToyTrainer(cfg, run_dir=run) as tr:
        tr.fit(until_iteration=5)
        shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "at5.pt")
        tr.fit(until_iteration=9)  # steps 6..9 logged, then "killed"
    shutil.copy(tmp_path / "at5.pt", run / "checkpoints" / "last.pt")
    with ToyTrainer(cfg, run_dir=run) as tr:
        tr.resume(run / "checkpoints" / "last.pt")
        tr.fit()
    with ToyTrainer(cfg, run_dir=tmp_path / "straight") as tr:
        tr.fit()
    curves = {}
    for name in ("killed", "straight"):
        ea = EventAccumulator(str(tmp_path / name / "tb"))
        ea.Reload()
        curves[name] = [(e.step, e.value) for e in ea.Scalars("train/loss")]
    assert [s for s, _ in curves["killed"]] == list(range(1, 17))  # each step once
    assert curves["killed"] == curves["straight"]  # the resumed values, not the killed run's
    log = (run / "log.txt").read_text()
    assert "resumed from" in log and "interrupted run's (superseded" in log


def test_jsonl_discard_after_keeps_text_and_foreign_lines(tmp_path):
    lg = JsonlLogger(tmp_path)
    lg.log_text("start")
    for s in range(1, 6):
        lg.log_scalars({"loss": float(s)}, s)
    lg.log_text("at 5", step=5)
    lg._f.write("not json\n")
    lg._f.flush()
    lg.log_scalars({"val": 1.0}, 3)  # logged late, but of a kept step: stays
    assert lg.discard_after(3) == 3  # steps 4, 5 and the step-5 text
    lg.log_scalars({"loss": 4.5}, 4)  # still appends after the rewrite
    lg.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "not json" in lines
    recs = [json.loads(x) for x in lines if x != "not json"]
    assert [(r["step"], r.get("loss", r.get("val", r.get("text")))) for r in recs] == [
        (None, "start"), (1, 1.0), (2, 2.0), (3, 3.0), (3, 1.0), (4, 4.5)]  # fmt: skip
    assert JsonlLogger(tmp_path).discard_after(10) == 0


@pytest.mark.parametrize("content", [b"", b'{"step": 1}\n', b'{"step": 1}\n{"step": 2, "lo'])
def test_jsonl_reopen_drops_only_a_cut_last_line(tmp_path, content):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    lg = JsonlLogger(tmp_path)
    lg.log_scalars({"loss": 1.0}, 3)
    lg.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1] * (len(content) > 0) + [3]
