"""Run directories: ``<output_dir>/<exp_name>/<timestamp>/`` with the resolved config and provenance."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from utils.io import save_json, save_text
from utils.paths import REPO_ROOT, resolve_path

_TRACKED_LIBS = ("torch", "numpy", "scipy", "librosa", "diffusers", "transformers", "omegaconf", "smplx", "soundfile")


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit hash and dirty flag; ``None`` values outside a git checkout."""

    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for lib in _TRACKED_LIBS:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    return versions


def provenance(cfg: DictConfig | None = None, **extra: Any) -> dict[str, Any]:
    info = {
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "git": git_info(),
        "versions": library_versions(),
        "platform": platform.platform(),
    }
    if cfg is not None and "seed" in cfg:
        info["seed"] = int(cfg.seed)
    info.update(extra)
    return info


def _link_copies(node: Any, tops: dict[str, Any], depth: int = 0) -> Any:
    if isinstance(node, dict):
        if depth >= 2 and node:
            for name, top in tops.items():
                if node == top:
                    return f"${{{name}}}"
        return {k: _link_copies(v, tops, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_link_copies(v, tops, depth + 1) for v in node]
    return node


def frozen_config_yaml(cfg: DictConfig) -> str:
    """The run's config as YAML, resolved (paths, numbers frozen as they ran), except that a nested node equal to a
    top-level one (``model.generator.params.denoiser``, a copy of ``denoiser`` after interpolation) is written as a
    reference ``${denoiser}``: editing the top-level node of a run's config.yaml then changes the model, and no
    dead copy is left that nothing reads. Loading it back gives the same config."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    tops = {k: v for k, v in plain.items() if isinstance(v, dict) and v}
    linked = {k: _link_copies(v, tops, 1) for k, v in plain.items()}
    return OmegaConf.to_yaml(OmegaConf.create(linked))


def create_run_dir(cfg: DictConfig, timestamp: str | None = None, **extra: Any) -> Path:
    """Create the run folder and write ``config.yaml`` (see `frozen_config_yaml`) and ``run_info.json`` into it."""
    out_root = resolve_path(cfg.get("output_dir", "outputs"))
    exp = str(cfg.get("exp_name", "exp"))
    ts = timestamp or _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    (out_root / exp).mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:  # two runs started in the same second (even in two processes) get separate folders
        run_dir = out_root / exp / (ts if suffix == 0 else f"{ts}_{suffix}")
        try:
            run_dir.mkdir()  # atomic: exactly one process creates a given name
            break
        except FileExistsError:
            suffix += 1
    save_text(frozen_config_yaml(cfg), run_dir / "config.yaml")
    save_json(provenance(cfg, run_dir=str(run_dir), **extra), run_dir / "run_info.json")
    return run_dir
