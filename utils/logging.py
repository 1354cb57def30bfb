"""Training loggers behind one small interface, and a rank-aware tqdm helper.

Backends (names used in configs):

* ``console``     concise one-line records on stderr, mirrored to ``<run_dir>/log.txt``.
* ``tensorboard`` ``torch.utils.tensorboard.SummaryWriter`` under ``<run_dir>/tb`` (the default curve viewer).
* ``jsonl``       ``<run_dir>/metrics.jsonl``: one JSON object per record, so curves plot without TensorBoard
  (``read_metrics(path)`` loads them back).
* ``wandb``       optional; imported only when asked for. ``mode`` comes from the config and defaults to
  ``offline``, which needs no account and no network.

Only rank 0 logs: ``build_logger(..., rank!=0)`` returns a ``NullLogger``.

Config node (``cfg.logging``), every key optional::

    logging:
      backends: [console, tensorboard, jsonl]   # or wandb added; a bare list works too: logging: [console, jsonl]
      wandb: {project: gesturelsm, entity: null, mode: offline, name: null, tags: []}
"""

from __future__ import annotations

import json
import logging as _std_logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from utils.io import atomic_path

DEFAULT_BACKENDS: tuple[str, ...] = ("console", "tensorboard", "jsonl")
KNOWN_BACKENDS: tuple[str, ...] = ("console", "tensorboard", "jsonl", "wandb")
_CONSOLE_NAME = "gesturelsm"


def _to_float(v: Any) -> float:
    """Python float from a number, a 0-d tensor or a 0-d numpy array."""
    if hasattr(v, "item"):
        v = v.item()
    return float(v)


class Logger:
    """The interface every backend implements. ``step`` is the global training iteration."""

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        raise NotImplementedError

    def log_text(self, text: str, step: int | None = None, tag: str = "text") -> None:
        raise NotImplementedError

    def discard_after(self, step: int) -> int:
        """Forget records of steps after ``step`` (a run resumed from a checkpoint at ``step`` logs them again);
        returns how many were dropped. Only file backends that can rewrite their records do anything."""
        return 0

    def close(self) -> None:
        """Flush and release files; safe to call twice."""

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NullLogger(Logger):
    """What non-zero ranks get: drops everything."""

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        pass

    def log_text(self, text: str, step: int | None = None, tag: str = "text") -> None:
        pass


class ConsoleLogger(Logger):
    """``it 120 | loss 0.1234 | lr 2.0e-04`` lines on stderr (and in ``<run_dir>/log.txt`` when a run dir is given)."""

    def __init__(self, run_dir: str | Path | None = None, stream: Any = None) -> None:
        self._log = _std_logging.getLogger(f"{_CONSOLE_NAME}.{id(self)}")
        self._log.setLevel(_std_logging.INFO)
        self._log.propagate = False
        fmt = _std_logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
        self._handlers: list[_std_logging.Handler] = [_std_logging.StreamHandler(stream or sys.stderr)]
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self._handlers.append(_std_logging.FileHandler(Path(run_dir) / "log.txt", encoding="utf-8"))
        for h in self._handlers:
            h.setFormatter(fmt)
            self._log.addHandler(h)

    @staticmethod
    def format_scalars(scalars: Mapping[str, Any], step: int) -> str:
        parts = [f"it {step}"]
        for k, v in scalars.items():
            x = _to_float(v)
            # lr-sized numbers read better in scientific notation
            parts.append(f"{k} {x:.3e}" if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5) else f"{k} {x:.4f}")
        return " | ".join(parts)

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        self._log.info(self.format_scalars(scalars, step))

    def log_text(self, text: str, step: int | None = None, tag: str = "text") -> None:
        self._log.info(text if step is None else f"it {step} | {text}")

    def close(self) -> None:
        for h in self._handlers:
            h.flush()
            self._log.removeHandler(h)
            h.close()
        self._handlers = []


class TensorBoardLogger(Logger):
    """SummaryWriter under ``<run_dir>/tb``."""

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard import is slow

        self.log_dir = Path(run_dir) / "tb"
        self._writer: Any = SummaryWriter(log_dir=str(self.log_dir))

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        for k, v in scalars.items():
            self._writer.add_scalar(k, _to_float(v), global_step=step)
        self._writer.flush()

    def log_text(self, text: str, step: int | None = None, tag: str = "text") -> None:
        self._writer.add_text(tag, text, global_step=step)
        self._writer.flush()

    def discard_after(self, step: int) -> int:
        """Reopen the writer with ``purge_step``: TensorBoard then hides the interrupted run's events of later
        steps (they stay in the old event file; the count is unknown without reading it, so 0 is returned)."""
        from torch.utils.tensorboard import SummaryWriter

        if self._writer is not None:
            self._writer.close()
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step + 1)
        return 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class JsonlLogger(Logger):
    """Appends ``{"step": .., "time": .., <scalars>}`` lines to ``<run_dir>/metrics.jsonl``.

    Each record is one ``write`` of a complete line followed by a flush. An append-only log cannot be replaced
    atomically without rewriting it every time, so a crash can at worst leave a truncated last line, which
    ``read_metrics`` skips; opening an existing file (a resumed run) removes such a line first, so that the new
    records do not continue it. ``discard_after(step)`` rewrites the file atomically without the records of later
    steps (trainers call it on resume: the killed run's steps after its checkpoint are not repeated).
    """

    def __init__(self, run_dir: str | Path, filename: str = "metrics.jsonl") -> None:
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: Any = None
        if self.path.is_file():
            lines = self.path.read_bytes().splitlines(keepends=True)
            if lines and not lines[-1].endswith(b"\n"):  # a record cut by a kill: never completed
                self._rewrite(b"".join(lines[:-1]))
        self._open()

    def _open(self) -> None:
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def _rewrite(self, content: bytes) -> None:
        mode = self.path.stat().st_mode & 0o777
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(content)
            os.chmod(tmp, mode)  # mkstemp makes 0600; keep the file's own permissions

    def discard_after(self, step: int) -> int:
        """Atomically drop the records whose ``step`` is a number > ``step``; records without a step (free text)
        and lines that are not JSON records are kept. Returns the number dropped."""
        reopen = self._f is not None
        if reopen:
            self._f.close()
            self._f = None
        try:
            if not self.path.is_file():
                return 0
            lines = self.path.read_bytes().splitlines(keepends=True)
            keep = [ln for ln in lines if not _step_after(ln, step)]
            dropped = len(lines) - len(keep)
            if dropped:
                self._rewrite(b"".join(keep))
            return dropped
        finally:
            if reopen:
                self._open()

    def _write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, allow_nan=True) + "\n")
        self._f.flush()

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        rec: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        rec.update({k: _to_float(v) for k, v in scalars.items()})
        self._write(rec)

    def log_text(self, text: str, step: int | None = None, tag: str = "text") -> None:
        self._write({"step": step, "time": round(time.time(), 3), tag: str(text)})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _step_after(line: bytes, step: int) -> bool:
    """Whether a metrics.jsonl line is a record of a step after ``step``."""
    try:
        rec = json.loads(line)
    except ValueError:  # incl. UnicodeDecodeError: not a record of ours, kept as it is
        return False
    s = rec.get("step") if isinstance(rec, dict) else None
    return isinstance(s, (int, float)) and not isinstance(s, bool) and s > step


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file, skipping a truncated last line (crash mid-write)."""
    out = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return out


class WandbLogger(Logger):
    """Weights & Biases run; ``mode="offline"`` (the default) writes under ``<run_dir>/wandb`` with no account."""

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "gesturelsm",
        entity: str | None = None,
        mode: str = "offline",
        name: str | None = None,
        tags: Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logging.wandb.mode must be offline|online|disabled, got {mode!r}")
        try:
            import wandb  # lazy: optional dependency, slow import
        except ImportError as e:
            raise ImportError("logging backend 'wandb' requested but the wandb package is not installed") from e
        self._wandb = wandb
        self._run: Any = wandb.init(
            project=project,
            entity=entity,
            mode=mode,
            name=name or Path(run_dir).name,
            tags=list(tags or []),
            dir=str(run_dir),
            config=dict(config or {}),
        )

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        self._run.log({k: _to_float(v) for k, v in scalars.items()}, step=int(step))

    def log_text(self, text: str, step: int | None = None, tag: str = "text") -> None:
        # W&B refuses steps lower than the last one logged, so text goes to the run summary under its tag.
        self._run.summary[tag] = text

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class MultiLogger(Logger):
    """Fans every call out to several backends."""

    def __init__(self, loggers: Iterable[Logger]) -> None:
        self.loggers = list(loggers)

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log_scalars(scalars, step)

    def log_text(self, text: str, step: int | None = None, tag: str = "text") -> None:
        for lg in self.loggers:
            lg.log_text(text, step, tag)

    def discard_after(self, step: int) -> int:
        return sum(lg.discard_after(step) for lg in self.loggers)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def _backend_names_and_options(spec: Any) -> tuple[list[str], dict[str, Any]]:
    """Accept ``None``, a name, a list of names, or a mapping with ``backends`` (+ ``wandb`` options)."""
    if spec is None:
        return list(DEFAULT_BACKENDS), {}
    if isinstance(spec, (DictConfig, ListConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        names, opts = [spec], {}
    elif isinstance(spec, Mapping):
        opts = dict(spec)
        names = opts.get("backends")
        names = list(DEFAULT_BACKENDS) if names is None else ([names] if isinstance(names, str) else list(names))
    else:
        names, opts = list(spec), {}
    unknown = [n for n in names if n not in KNOWN_BACKENDS]
    if unknown:
        raise ValueError(f"logging.backends: unknown backend(s) {unknown}; known: {list(KNOWN_BACKENDS)}")
    return list(dict.fromkeys(names)), opts


def build_logger(
    spec: Any,
    run_dir: str | Path | None,
    rank: int = 0,
    config: Mapping[str, Any] | None = None,
) -> Logger:
    """Logger for ``spec`` (``cfg.logging``, a list of backend names, or ``None`` for the defaults).

    Non-zero ranks and ``run_dir=None`` with file backends get what makes sense: ranks > 0 a ``NullLogger``;
    without a run dir only ``console`` is kept (file backends need a folder). ``config`` is passed to W&B.
    """
    names, opts = _backend_names_and_options(spec)
    if rank != 0:
        return NullLogger()
    loggers: list[Logger] = []
    for name in names:
        if name == "console":
            loggers.append(ConsoleLogger(run_dir))
        elif run_dir is None:
            continue
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir))
        elif name == "jsonl":
            loggers.append(JsonlLogger(run_dir))
        elif name == "wandb":
            w = dict(opts.get("wandb") or {})
            loggers.append(WandbLogger(run_dir, config=config, **w))
    return MultiLogger(loggers)


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    rank: int = 0,
    only_tty: bool = False,
    disable: bool = False,
    **kwargs: Any,
) -> tqdm:
    """tqdm that is silent on ranks other than 0, and (``only_tty=True``) when stderr is not a terminal."""
    off = disable or rank != 0 or (only_tty and not sys.stderr.isatty())
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return tqdm(iterable, total=total, desc=desc, disable=off, dynamic_ncols=True, leave=False, **kwargs)


__all__ = [
    "DEFAULT_BACKENDS",
    "KNOWN_BACKENDS",
    "ConsoleLogger",
    "JsonlLogger",
    "Logger",
    "MultiLogger",
    "NullLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "build_logger",
    "progress",
    "read_metrics",
]
