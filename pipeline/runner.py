"""Stage runner: banners, skip-when-complete, ``force``, and failures that name their stage.

Every stage writes ``<output_dir>/stages/<name>.json`` when it finishes: ``{"outputs": {...}, "seconds": ...}``.
A stage is *complete* when that record exists, every path listed in ``outputs`` (values that are strings naming
files/folders, under the key ``paths``) exists, and its ``fingerprint`` (pipeline.provenance) equals the current
one; complete stages are skipped unless forced, stale ones rerun.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from utils.config import ConfigError
from utils.io import save_json


class StageError(RuntimeError):
    """A stage failed; ``stage`` is its name and the message says why."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"stage '{stage}' failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


def record_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / "stages" / f"{name}.json"


def load_record(out_dir: Path, name: str, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The stage's record when the stage is complete (record present, all its ``paths`` exist, and the same
    ``fingerprint`` when one is given), else None."""
    import json

    p = record_path(out_dir, name)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except ValueError:
        return None
    paths = rec.get("paths", {})
    if not all(Path(v).exists() for v in _flat_paths(paths)):
        return None
    if fingerprint is not None and rec.get("fingerprint") != fingerprint:
        return None
    return rec


def is_stale(out_dir: Path, name: str, fingerprint: str) -> bool:
    """A record exists but was made with other settings (or before fingerprints were recorded)."""
    p = record_path(out_dir, name)
    if not p.is_file():
        return False
    try:
        import json

        return json.loads(p.read_text()).get("fingerprint") != fingerprint
    except ValueError:
        return True


def _flat_paths(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [p for v in node.values() for p in _flat_paths(v)]
    if isinstance(node, (list, tuple)):
        return [p for v in node for p in _flat_paths(v)]
    return [str(node)] if isinstance(node, (str, Path)) else []


def is_forced(name: str, force: Any) -> bool:
    """``force``: True/"all" reruns everything; a name or list of names reruns those (a prefix such as ``rvq``
    matches ``rvq_upper``)."""
    if force in (True, "all"):
        return True
    if not force:
        return False
    names = [force] if isinstance(force, str) else list(force)
    return any(_matches(name, f) for f in names)


def stale_notice(name: str, out_dir: Path, fingerprint: str) -> None:
    """Say so when a stage reruns because its record was made with other settings."""
    if is_stale(out_dir, name, fingerprint):
        print(f"[pipeline] stage {name}: its outputs were made with other settings or inputs (fingerprint "
              f"{fingerprint} now): rerunning it and every stage downstream", flush=True)  # fmt: skip


def banner(text: str) -> None:
    line = "=" * 100
    print(f"\n{line}\n[pipeline] {text}\n{line}", flush=True)


def run_stage(
    name: str,
    fn: Callable[[], dict[str, Any]],
    out_dir: Path,
    force: Any = False,
    log: list[dict[str, Any]] | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Run ``fn`` (returns ``{"paths": {...}, ...}``) unless the stage is complete; save and return its record."""
    rec = None if is_forced(name, force) else load_record(out_dir, name, fingerprint)
    if rec is None and fingerprint is not None and not is_forced(name, force):
        stale_notice(name, out_dir, fingerprint)
    if rec is not None:
        print(f"[pipeline] stage {name}: complete, skipped (force={name} reruns it)", flush=True)
        rec["skipped"] = True
    else:
        banner(f"stage {name}")
        t0 = time.time()
        try:
            rec = dict(fn())
        except KeyboardInterrupt:
            raise
        except Exception as e:  # every failure leaves with the stage's name
            traceback.print_exc()
            raise StageError(name, e) from e
        rec["seconds"] = round(time.time() - t0, 2)
        if fingerprint is not None:
            rec["fingerprint"] = fingerprint
        rec["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        save_json(rec, record_path(out_dir, name))
        print(f"[pipeline] stage {name}: done in {rec['seconds']:.1f} s", flush=True)
        rec["skipped"] = False
    if log is not None:
        log.append({"stage": name, "seconds": rec.get("seconds"), "skipped": rec["skipped"]})
    return rec


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(f"{pattern}_")


def stage_names(enabled: Iterable[str] | None, all_names: Iterable[str]) -> list[str]:
    """The stages to run, in pipeline order: all, or those named (a prefix such as ``rvq`` or ``gen`` matches
    ``rvq_upper``, ``gen_shortcut``, as in ``force``)."""
    names = list(all_names)
    if enabled is None:
        return names
    wanted = [enabled] if isinstance(enabled, str) else list(enabled)
    unknown = [w for w in wanted if not any(_matches(n, w) for n in names)]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {names} (a prefix such as 'rvq' matches "
                          "every rvq_<part>)")
    return [n for n in names if any(_matches(n, w) for w in wanted)]
