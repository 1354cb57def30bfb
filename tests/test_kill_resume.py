"""Property: a training killed with SIGKILL (kill -9) at arbitrary steps and resumed with ``--resume`` ends with
parameters bit-identical to an uninterrupted run (issue 14).

The smallest real trainer (a tiny RVQ-VAE on random smooth windows, 48 updates, a checkpoint and validation every
update) runs through its entry script ``rvq_beatx_train.py`` in subprocesses: one uninterrupted run, and one run
killed three times. Each kill point comes from a seed (a fixed list, so the test is deterministic in what it asks);
the test polls ``checkpoints/last.pt`` until it reaches that iteration, waits a seeded random delay and then sends
SIGKILL, so the process dies wherever it is (mid-step, mid-validation, mid-checkpoint write), which is the property
under test. On a loaded machine a poller can fall many updates behind the child, so the killed chain runs in lockstep:
after each checkpoint write the child waits until the test has acknowledged that iteration (a file), which bounds
how far it can run past a kill point without choosing where in the next update the kill lands.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.io import CheckpointReadError, atomic_temp_target, load_torch
from utils.logging import read_metrics
from utils.paths import REPO_ROOT

ITERATIONS = 48  # >= 17 updates after the last kill point: an idle machine must not finish between two polls
# One kill per seed, each drawn inside its own segment so the points are distinct and increasing.
KILL_SEEDS = ((101, 3, 9), (202, 14, 20), (303, 25, 31))  # (seed, lowest, highest iteration)
KILL_POINTS = [random.Random(seed).randint(lo, hi) for seed, lo, hi in KILL_SEEDS]
KILL_DELAY_S = [random.Random(seed + 1).uniform(0.0, 0.2) for seed, _, _ in KILL_SEEDS]  # after the ack
POLL_S = 0.01
START_TIMEOUT_S = 120.0  # a busy shared machine can take long to import torch
# The entry script, with each checkpoint write followed by a wait for the test's acknowledgement (KILL_TEST_ACK).
PACED = """
import os, runpy, sys, time
import trainers.base as tb
write, ack = tb.write_checkpoint_files, os.environ["KILL_TEST_ACK"]
def paced(state, folder, *args, **kwargs):
    path = write(state, folder, *args, **kwargs)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with open(ack) as f:
                if int(f.read()) >= int(state["iteration"]):
                    break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.002)
    return path
tb.write_checkpoint_files = paced
sys.argv = ["rvq_beatx_train.py", *sys.argv[1:]]
runpy.run_path("rvq_beatx_train.py", run_name="__main__")
"""


def _command(out: Path, resume: Path | None = None, paced: bool = False) -> list[str]:
    entry = ("-c", PACED) if paced else ("rvq_beatx_train.py",)
    cmd = [sys.executable, *entry, "-c", "configs/rvq/upper_tiny.yaml", f"output_dir={out}",
           "data=null", "dataset={target: trainers.rvq.SmoothRandomWindows, params: {num_windows: 24, length: 32}}",
           "loss.fk_vel=0", "loss.fk_speed=0",  # position terms need data statistics; random windows have none
           "model={nb_code: 32, code_dim: 16, width: 16, depth: 1, num_quantizers: 2}", "seed=5", "num_threads=1",
           "batch_size=8", f"solver.iterations={ITERATIONS}", "solver.warmup_iters=5", "solver.milestones=[20]",
           "logging=[jsonl]", "log_period=1", "val_period=1", "val_unit=iter", "val.max_windows=8",
           "val.batch_size=8"]  # fmt: skip
    return cmd + (["--resume", str(resume)] if resume is not None else [])


def _start(cmd: list[str], log: Path, ack: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"KILL_TEST_ACK": str(ack)} if ack else {})}
    with open(log, "ab") as f:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)


def _acknowledge(ack: Path, iteration: int) -> None:
    tmp = ack.with_suffix(".tmp")
    tmp.write_text(str(iteration))
    os.replace(tmp, ack)  # the child never reads a half-written number


def _iteration(last: Path) -> int | None:
    try:
        return int(load_torch(last)["iteration"])
    except (FileNotFoundError, CheckpointReadError):  # not written yet (the file is replaced atomically)
        return None


def _kill_at(proc: subprocess.Popen, out: Path, at: int, started_at: int, log: Path, ack: Path, delay: float) -> None:
    """Acknowledge each checkpoint the (paced) run writes until its last.pt holds iteration >= ``at`` written by this
    process (> ``started_at``, where it resumed); then let it run ``delay`` seconds into the next update and SIGKILL
    it."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        lasts = list(out.glob("*/*/checkpoints/last.pt"))
        it = _iteration(lasts[0]) if lasts else None
        if it is not None:
            _acknowledge(ack, it)
        if it is not None and it >= at and it > started_at:
            break
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before iteration {at}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no checkpoint at iteration {at} after {START_TIMEOUT_S} s"
        time.sleep(POLL_S)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, log.read_text()


def _run_dir(out: Path) -> Path:
    runs = list(out.glob("*/*/checkpoints"))
    assert len(runs) == 1, runs
    return runs[0].parent


def _assert_identical(x: Any, y: Any, where: str) -> None:
    """Nested checkpoint entries equal bit for bit (tensors with torch.equal, arrays with array_equal)."""
    assert type(x) is type(y), where
    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _assert_identical(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_identical(u, v, f"{where}[{i}]")
    elif isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y), where
    elif isinstance(x, np.ndarray):
        assert np.array_equal(x, y), where
    else:
        assert x == y, where


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "train/sec_per_it")}
            for r in read_metrics(path) if isinstance(r.get("step"), int)]  # fmt: skip


def test_kill_points_are_fixed_and_spread():
    assert KILL_POINTS == sorted(set(KILL_POINTS)) and KILL_POINTS[-1] < ITERATIONS - 4


def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path):
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
    straight = _start(_command(straight_out), tmp_path / "straight.log")  # runs beside the killed chain
    log, ack = tmp_path / "killed.log", tmp_path / "ack"
    proc = _start(_command(killed_out, paced=True), log, ack)
    resumed_at = [0]
    for i, (at, delay) in enumerate(zip(KILL_POINTS, KILL_DELAY_S)):
        _kill_at(proc, killed_out, at, resumed_at[-1], log, ack, delay)
        last = _run_dir(killed_out) / "checkpoints" / "last.pt"
        resumed_at.append(_iteration(last))
        final = i == len(KILL_POINTS) - 1  # the last resume runs to the end unpaced
        proc = _start(_command(killed_out, resume=last, paced=not final), log, None if final else ack)
    assert proc.wait(timeout=300) == 0, log.read_text()
    assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()

    # every resume started where its kill left the checkpoint: three different points before the end
    resumed_at = resumed_at[1:]
    assert all(k <= a <= k + 1 for a, k in zip(resumed_at, KILL_POINTS)), resumed_at  # lockstep: at most 1 past
    assert resumed_at[-1] < ITERATIONS, resumed_at
    run_a, run_b = _run_dir(straight_out), _run_dir(killed_out)
    a, b = load_torch(run_a / "checkpoints" / "last.pt"), load_torch(run_b / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == ITERATIONS
    for key in ("model", "quantizer_ema", "optimizer", "rng", "best", "epoch", "batch_in_epoch"):
        _assert_identical(a[key], b[key], key)

    # metrics.jsonl of the killed run reads as one run: each step once, the same numbers
    got, want = _records(run_b / "metrics.jsonl"), _records(run_a / "metrics.jsonl")
    assert [r["step"] for r in got if "train/loss" in r] == list(range(1, ITERATIONS + 1))
    assert got == want
    texts = [r["text"] for r in read_metrics(run_b / "metrics.jsonl") if "text" in r]
    assert sum(t.startswith("resumed from") for t in texts) == 3
    # no temporary file of a killed checkpoint write is left behind
    assert not [p for p in (run_b / "checkpoints").iterdir() if atomic_temp_target(p.name)]
