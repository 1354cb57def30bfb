"""What three.js sees in a .glb: runs ``render/js/glb_probe.mjs`` (three.js's own GLTFLoader + AnimationMixer) under
Node and returns its JSON. Used by tests/test_export_threejs.py to prove the exported glb imports in a real glTF
consumer. Needs ``node`` (Debian: ``apt-get install -y nodejs npm``) and three.js pinned to THREE_VERSION in
``.cache/node`` (``npm install --prefix .cache/node three@0.187.0``; .ci/run does both)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["THREE_VERSION", "THREE_DIR", "ThreeJsUnavailable", "find_node", "three_dir", "probe_glb"]

REPO = Path(__file__).resolve().parent.parent
THREE_VERSION = "0.187.0"  # pinned: .ci/run and the README install exactly this
THREE_DIR = REPO / ".cache" / "node" / "node_modules" / "three"
PROBE = Path(__file__).resolve().parent / "js" / "glb_probe.mjs"
NODE_INSTALL = "apt-get install -y nodejs npm"
THREE_INSTALL = f"npm install --prefix .cache/node --no-save --ignore-scripts three@{THREE_VERSION}"


class ThreeJsUnavailable(RuntimeError):
    """node or the pinned three.js is missing; the message is one line naming the command that installs it."""


def find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise ThreeJsUnavailable(f"node is not on PATH: {NODE_INSTALL}, then {THREE_INSTALL}")
    return node


def three_dir() -> Path:
    """The installed three.js package folder (``$GESTURELSM_THREE_DIR`` or .cache/node), at the pinned version."""
    d = Path(os.environ.get("GESTURELSM_THREE_DIR", THREE_DIR))
    try:
        version = json.loads((d / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise ThreeJsUnavailable(f"three.js is not installed in {d}: {THREE_INSTALL}") from None
    if version != THREE_VERSION:
        raise ThreeJsUnavailable(f"three.js {version} in {d}, pinned {THREE_VERSION}: {THREE_INSTALL}")
    return d


def probe_glb(
    path: str | os.PathLike, frames: Sequence[int] = (0,), vertices: Sequence[int] = (), fps: float = 30.0
) -> dict:
    """Load ``path`` with three.js's GLTFLoader in Node and sample the first clip at ``frames`` (see glb_probe.mjs
    for the fields). Raises ThreeJsUnavailable (node/three missing) or RuntimeError (the loader failed)."""
    node, d = find_node(), three_dir()
    argv = [node, str(PROBE), str(path), str(d), "--fps", f"{fps:g}"]
    argv += ["--frames", ",".join(map(str, frames)), "--vertices", ",".join(map(str, vertices))]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if r.returncode == 3:
        raise ThreeJsUnavailable(r.stderr.strip())
    if r.returncode != 0:
        raise RuntimeError(f"glb_probe.mjs failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)
