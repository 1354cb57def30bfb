"""The exported glb in a real glTF consumer: three.js's GLTFLoader (pinned three.js, under Node) loads it, plays its
clip with an AnimationMixer, and must see the skinned mannequin, the full 54-joint hierarchy, one clip with one track
per joint plus the root translation, and at sampled frames the npz's rotations, the FK's joint positions and the
mannequin package's skinned vertices. Run by .ci/run (a second or two once node and three.js are installed):

    python -m pytest -q -m slow tests/test_export_threejs.py

Without node or three.js it skips, saying what to install; under CI (``CI`` or ``GESTURELSM_REQUIRE_SHARED=1``) it
fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geometry.body_model import get_fk
from render.bodies import MannequinRig
from render.export import export_motion
from render.motion import load_motion
from render.threejs import ThreeJsUnavailable, probe_glb
from tests.conftest import REQUIRE_SHARED_ENV
from tests.render_helpers import random_motion, save

pytestmark = pytest.mark.slow
M2S = np.array(list(range(22)) + [-1, -1] + list(range(25, 55)))  # mannequin joint -> SMPL-X joint (-1: carrier)
T = 20
FRAMES = [0, 1, 7, 13, T - 1]
VERTS = [0, 5000, 12345, 24000]


def _required() -> bool:
    return os.environ.get(REQUIRE_SHARED_ENV, "") not in ("", "0") or os.environ.get("CI", "") not in ("", "0", "false")


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    """(motion, rig, what three.js reports) for a glb exported from a known motion."""
    d = tmp_path_factory.mktemp("glb_threejs")
    m = load_motion(save(d / "wave.npz", **random_motion(T, seed=11)))
    export_motion(m.path, "gltf", d / "wave.glb")
    try:
        got = probe_glb(d / "wave.glb", frames=FRAMES, vertices=VERTS, fps=m.fps)
    except ThreeJsUnavailable as e:
        if _required():
            pytest.fail(f"{e} (CI must not skip it)", pytrace=False)
        pytest.skip(str(e))
    return m, MannequinRig(m.betas), got


def _expected_quats(m, rig) -> np.ndarray:
    """(F,54,4) xyzw: the npz's axis-angle (plus the relaxed hand mean on the fingers, as SMPL-X's
    flat_hand_mean=False) per mannequin joint, converted by scipy; identity on the L_Hand/R_Hand carriers."""
    aa = m.poses[FRAMES].reshape(len(FRAMES), 55, 3).astype(np.float64)
    aa[:, 25:] += rig.hand_mean
    q = np.tile([0.0, 0.0, 0.0, 1.0], (len(FRAMES), 54, 1))
    have = M2S >= 0
    q[:, have] = Rotation.from_rotvec(aa[:, M2S[have]].reshape(-1, 3)).as_quat().reshape(len(FRAMES), -1, 4)
    return q


def _quat_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest componentwise difference up to the quaternion sign (q and -q are one rotation)."""
    sign = np.sign((a * b).sum(-1, keepdims=True))
    return float(np.abs(a - sign * b).max())


def test_threejs_sees_the_skinned_mannequin_and_its_hierarchy(seen):
    m, rig, got = seen
    assert got["three"] == "187"
    assert got["skinned_meshes"] == 1 and got["vertices"] == rig.rest_vertices.shape[0]
    names = [b["name"] for b in got["bones"]]
    assert names == list(rig.joint_names) and len(names) == 54
    parents = [None if p < 0 else rig.joint_names[p] for p in rig.parents]
    assert [b["parent"] for b in got["bones"]] == parents


def test_threejs_sees_one_clip_of_the_motions_length(seen):
    m, rig, got = seen
    assert len(got["clips"]) == 1
    clip = got["clips"][0]
    assert clip["name"] == "wave"
    # T samples at k/30 s: the clip spans (T-1)/30 s (the time of the last sample; a T-frame video lasts T/30 s
    # because its last frame is shown for 1/30 s)
    assert abs(clip["duration"] - (T - 1) / m.fps) < 1e-6
    tracks = {t["name"]: t for t in clip["tracks"]}
    assert len(tracks) == 55 and tracks["Pelvis.position"]["type"] == "vector"
    assert all(tracks[f"{n}.quaternion"]["type"] == "quaternion" for n in rig.joint_names)
    assert all(t["times"] == T for t in clip["tracks"])


def test_threejs_bone_rotations_are_the_npz_rotations(seen):
    m, rig, got = seen
    q = np.array([s["quaternion"] for s in got["samples"]])  # (F,54,4) xyzw, as three.js stores them
    want = _expected_quats(m, rig)
    assert _quat_err(q, want) < 1e-5
    # the check can fail: without the hand mean the finger rotations are far off
    flat = want.copy()
    aa = m.poses[FRAMES].reshape(len(FRAMES), 55, 3)[:, 25:]
    flat[:, 24:] = Rotation.from_rotvec(aa.reshape(-1, 3)).as_quat().reshape(len(FRAMES), 30, 4)
    assert _quat_err(q, flat) > 1e-2
    # translations: the root carries rest pelvis + trans, every other bone its rest offset
    pos = np.array([s["position"] for s in got["samples"]])
    assert np.abs(pos[:, 0] - (rig.bind[0] + m.trans[FRAMES])).max() < 1e-5
    assert np.abs(pos[:, 1:] - rig.offsets[None, 1:]).max() < 1e-5


def test_threejs_joints_and_skinned_vertices_match_ours(seen):
    m, rig, got = seen
    world = np.array([s["world"] for s in got["samples"]])  # (F,54,3)
    ref = get_fk(betas=m.betas, source="mannequin")(torch.as_tensor(m.poses[FRAMES]), m.trans[FRAMES]).numpy()
    have = M2S >= 0
    assert np.abs(world[:, have] - ref[:, M2S[have]]).max() < 1e-4
    verts = np.array([s["vertices"] for s in got["samples"]])  # (F,len(VERTS),3), skinned by three.js
    rw, pw = rig.transforms(m.poses[FRAMES], m.trans[FRAMES])
    ours = rig.skin(rw, pw)[:, VERTS].numpy()
    assert np.abs(verts - ours).max() < 1e-4
    assert np.abs(verts[0] - verts[-1]).max() > 1e-2  # the sampled frames differ: the mixer did play the clip
