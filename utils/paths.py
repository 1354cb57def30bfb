"""Path resolution: configs hold relative paths, resolved against the repository root.

Environment variables a user can set (configs read them with ``${oc.env:NAME,default}``):
- ``BEAT2_ROOT``: the ``beat_english_v2.0.0`` folder of real BEAT2;
- ``SMPLX_MODEL_PATH``: an SMPL-X model file (``SMPLX_NEUTRAL_2020.npz``), or a folder holding it;
- ``GESTURELSM_OUTPUT``: where runs are written (default ``outputs``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_path(path: str | os.PathLike | None, root: Path | None = None) -> Path | None:
    """Expand ``~`` and ``$VARS``; a relative path is taken relative to the repo root (or ``root``)."""
    if path is None or str(path) == "":
        return None
    p = Path(os.path.expandvars(os.path.expanduser(str(path))))
    return p if p.is_absolute() else (root or REPO_ROOT) / p
