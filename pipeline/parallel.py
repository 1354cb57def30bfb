"""Stages side by side: single-threaded stages (every stage with the pipeline's ``threads: 1``; with ``threads: null``
those whose config pins ``num_threads: 1``, e.g. the three tiny RVQ-VAEs) run in worker processes, up to the
pipeline's ``workers`` at once, each once its inputs are done (one that is the only stage able to run stays in the
main process: pipeline.main.run).

Why processes: every trainer seeds the process-wide RNGs and sets torch's process-wide thread count, so two stages in
one process would disturb each other. A stage run in a worker makes the same weights as in the main process (same
seed, same single thread; tests/test_pipeline.py compares them bit for bit). A stage with more threads (a generator
using every core) runs alone, in the main process, as with ``workers: 1``.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pipeline.runner import StageError, run_stage


def ready_stages(pending: Sequence[str], running: Sequence[str], deps: Mapping[str, Sequence[str]], narrow: set[str],
                 workers: int) -> list[str]:  # fmt: skip
    """The stages of ``pending`` (pipeline order) to start now.

    A stage starts when no stage it reads (``deps``) is still pending or running. Narrow stages share the machine:
    up to ``workers`` of them run together, never beside a wide one. A wide stage starts only when nothing runs, and
    until it has started it holds back every later stage (waiting for its inputs or for the machine), so the order
    stays the pipeline's."""
    running = list(running)
    start: list[str] = []
    for name in pending:
        if any(d in pending or d in running for d in deps.get(name, ())):
            if name not in narrow:
                break  # a later stage must not overtake a wide one
            continue
        busy = running + start
        if name in narrow:
            if len(busy) < workers and all(b in narrow for b in busy):
                start.append(name)
            continue
        if not busy:
            start.append(name)
        break
    return start


def _exit_with_parent(parent: int) -> None:
    """Linux: the kernel sends this process SIGTERM when its parent dies, so no orphaned worker writes into an output
    folder whose lock is gone. The parent is the pipeline (spawn) or the fork server, which exits when the pipeline
    does (it watches a pipe the pipeline holds open), so the chain ends at the pipeline either way."""
    ppid = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        return  # not Linux: the parent's cleanup (terminate on exit) is all there is
    if os.getppid() != ppid:  # the parent died before the request was in place
        sys.exit(1)
    try:  # the pipeline itself (the fork server may outlive it by a moment); a reused pid is someone else's: gone
        os.kill(parent, 0)
    except OSError:
        sys.exit(1)


def _worker(cfg_node: dict[str, Any], name: str, force: Any, fingerprint: str | None, log_path: str,
            parent: int, environ: dict[str, str] | None = None) -> None:  # fmt: skip
    """Child process: one stage, its stdout/stderr into ``log_path`` (file descriptors too: C-level output).
    ``environ``: the pipeline's environment when the stage started (a fork server's is the one it had when the server
    started; a spawned child's would be the current one: e.g. SMPLX_MODEL_PATH set in between)."""
    _exit_with_parent(parent)
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    from omegaconf import OmegaConf

    from pipeline.main import stage_functions
    from pipeline.provenance import fingerprints
    from pipeline.stages import out_dir

    cfg = OmegaConf.create(cfg_node)
    if fingerprint is not None and fingerprints(cfg)[name] != fingerprint:  # the config did not survive the trip
        print(f"[pipeline] stage {name}: the worker's config gives fingerprint {fingerprints(cfg)[name]}, the "
              f"pipeline's {fingerprint}", flush=True)  # fmt: skip
        sys.exit(1)
    try:
        run_stage(name, stage_functions(cfg)[name], out_dir(cfg), force, fingerprint=fingerprint)
    except StageError as e:
        print(f"[pipeline] {e}", flush=True)
        sys.exit(1)


# Imported once by the fork server, so that a stage's process starts without re-importing them (~2-3 s each, on
# the main job's critical path several times over; measured: the same per-update time either way). The server runs no
# torch op; numpy's OpenBLAS starts its thread pool at import and makes a new one in each forked child. The imports
# take effect only when the repository is importable from the server's working directory (run from the repository
# root, as the README does; Python 3.11's server ignores the parent's sys.path) and when this process has not
# started a fork server before; otherwise each worker imports them itself, as a spawned one does.
PRELOAD = ("pipeline.main", "trainers.generative")


def start_context() -> mp.context.BaseContext:
    """Linux: workers are forked from a fork server that has imported ``PRELOAD``; elsewhere they are spawned (macOS's
    system libraries are not fork-safe, Windows has no fork). Never forked from the pipeline itself: a fork after
    torch has started threads can hang the child."""
    if not sys.platform.startswith("linux"):
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


class WorkerPool:
    """Start stages in new processes (`start_context`) and collect them; a failed stage raises StageError naming its
    log."""

    def __init__(self, cfg_node: dict[str, Any], log_dir: Path) -> None:
        self.cfg_node, self.log_dir = cfg_node, Path(log_dir)
        self.ctx = start_context()
        self.procs: dict[str, tuple[BaseProcess, Path]] = {}

    def start(self, name: str, force: Any, fingerprint: str | None) -> Path:
        """Start the stage in a new process; returns its log file."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        # a forked worker gets the server's environment, so it is given the pipeline's (a spawned one has it already)
        environ = dict(os.environ) if self.ctx.get_start_method() == "forkserver" else None
        args = (self.cfg_node, name, force, fingerprint, str(log), os.getpid(), environ)
        p = self.ctx.Process(target=_worker, args=args, name=name)
        p.start()
        self.procs[name] = (p, log)
        return log

    @property
    def running(self) -> list[str]:
        return list(self.procs)

    def wait_any(self, heartbeat: float = 60.0) -> list[tuple[str, Path, int]]:
        """Block until at least one worker ends (woken by its exit, no polling delay); (name, log, exit code) of
        those that ended. Every ``heartbeat`` seconds it prints each running stage's latest log line (the workers'
        own progress goes to their logs)."""
        while True:
            woken = mp.connection.wait([p.sentinel for p, _ in self.procs.values()], timeout=heartbeat)
            ended = [(n, log, p.exitcode) for n, (p, log) in self.procs.items() if p.exitcode is not None]
            if ended:
                for n, *_ in ended:
                    self.procs.pop(n)[0].join()
                return ended
            if woken:  # its exit status is not reapable yet (microseconds)
                time.sleep(0.01)
                continue
            for n, (_, log) in self.procs.items():
                print(f"[pipeline] {n} (worker): {last_line(log)[:140]}", flush=True)

    def wait_all(self) -> None:
        """Block until every running worker has ended (their stage records are written by then)."""
        for p, _ in self.procs.values():
            p.join()
        self.procs.clear()

    def terminate(self) -> None:
        """Stop every running worker (SIGTERM) and wait for it."""
        for p, _ in self.procs.values():
            p.terminate()
        for p, _ in self.procs.values():
            p.join()
        self.procs.clear()


def log_tail(path: Path, n: int = 15) -> str:
    """The last ``n`` lines of a log ("" when it cannot be read)."""
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-n:])
    except OSError:
        return ""


def last_line(path: Path) -> str:
    """The latest progress line of a log (the last line, and of a progress bar's redraws the last)."""
    lines = [ln for ln in log_tail(path, 3).replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output yet)"


def failed_stage(name: str, log: Path, why: str) -> StageError:
    """The error of a stage whose worker failed: why, and the end of its log."""
    return StageError(name, RuntimeError(f"the worker process {why}; its log {log} ends with:\n{log_tail(log)}"))


__all__ = ["PRELOAD", "WorkerPool", "failed_stage", "last_line", "log_tail", "ready_stages", "start_context"]
