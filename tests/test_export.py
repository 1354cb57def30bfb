"""export_motion: BVH and glTF read back and compared with the project's FK; the mannequin skinning vs the package."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geometry.body_model import get_fk, write_toy_smplx_model
from render.export import export_motion, read_bvh, read_glb, write_bvh
from render.motion import RenderError, load_motion
from tests.conftest import REPO_ROOT
from tests.render_helpers import random_motion, save

# mannequin joint k -> SMPL-X joint (the mannequin adds L_Hand/R_Hand carriers at 22/23 and has no jaw/eyes)
M2S = np.array(list(range(22)) + [-1, -1] + list(range(25, 55)))


def _euler_matrix(axis: str, deg: np.ndarray) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    m = np.zeros(a.shape + (3, 3))
    i = "XYZ".index(axis)
    j, k = (i + 1) % 3, (i + 2) % 3  # cyclic: right-handed rotations about X, Y, Z
    m[..., i, i] = 1
    m[..., j, j], m[..., k, k] = c, c
    m[..., j, k], m[..., k, j] = -s, s
    return m


def _bvh_fk(bvh: dict) -> np.ndarray:
    """Joint world positions (T,J,3) from a parsed BVH: our own channel-by-channel composition."""
    frames, col = bvh["frames"], 0
    t = frames.shape[0]
    n = len(bvh["names"])
    rw, pw = np.zeros((t, n, 3, 3)), np.zeros((t, n, 3))
    for j, chans in enumerate(bvh["channels"]):
        rot = np.tile(np.eye(3), (t, 1, 1))
        pos = np.tile(bvh["offsets"][j], (t, 1))
        for c in chans:
            if c.endswith("position"):
                pos = pos + np.eye(3)["XYZ".index(c[0])] * frames[:, col : col + 1]
            else:
                rot = rot @ _euler_matrix(c[0], frames[:, col])
            col += 1
        p = bvh["parents"][j]
        if p < 0:
            rw[:, j], pw[:, j] = rot, pos
        else:
            rw[:, j] = rw[:, p] @ rot
            pw[:, j] = pw[:, p] + (rw[:, p] @ bvh["offsets"][j][:, None])[..., 0]
    return pw


@pytest.mark.parametrize("skeleton", ["mannequin", "smplx"])
def test_bvh_round_trip_gives_the_joint_positions(tmp_path, skeleton, monkeypatch):
    from geometry.skeleton import JOINT_NAMES

    monkeypatch.delenv("SMPLX_MODEL_PATH", raising=False)
    model = None
    if skeleton == "smplx":  # rest offsets from a model file (a toy one: random geometry, valid format)
        model = write_toy_smplx_model(tmp_path / "SMPLX_NEUTRAL_2020.npz", num_betas=10, num_expressions=10)
        monkeypatch.setenv("SMPLX_MODEL_PATH", str(model))
    m = load_motion(save(tmp_path / "m.npz", **random_motion(24)))
    info = write_bvh(m, tmp_path / "m.bvh", source=skeleton)
    assert info["source"].startswith("smplx" if skeleton == "smplx" else "mannequin")
    bvh = read_bvh(tmp_path / "m.bvh")
    assert bvh["frames"].shape == (24, 6 + 3 * 54) and abs(bvh["frame_time"] - 1 / 30) < 1e-7
    order = [JOINT_NAMES.index(nm) for nm in bvh["names"]]
    assert sorted(order) == list(range(55))
    ref = get_fk(model, betas=m.betas, source=skeleton)(torch.as_tensor(m.poses), m.trans).numpy()
    got = _bvh_fk(bvh)
    assert np.abs(got - ref[:, order]).max() < 1e-4
    # the check can fail: a wrong Euler order is far off
    wrong = dict(bvh, channels=[[c.replace("Z", "Q").replace("Y", "Z").replace("Q", "Y") for c in ch]
                                for ch in bvh["channels"]])  # fmt: skip
    assert np.abs(_bvh_fk(wrong) - ref[:, order]).max() > 1e-2


def _accessor(doc: dict, blob: bytes, i: int) -> np.ndarray:
    acc = doc["accessors"][i]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc["type"]]
    start = view["byteOffset"] + acc.get("byteOffset", 0)
    assert (
        start % 4 == 0
        and start + acc["count"] * width * np.dtype(dtype).itemsize <= view["byteOffset"] + view["byteLength"]
    )
    return np.frombuffer(blob, dtype, acc["count"] * width, start).reshape(acc["count"], width)


def test_glb_validates_and_its_animation_matches_the_fk(tmp_path):
    pygltflib = pytest.importorskip("pygltflib", reason="pygltflib (requirements-dev.txt) validates the glb")
    m = load_motion(save(tmp_path / "m.npz", **random_motion(16, seed=3)))
    out = tmp_path / "m.glb"
    export_motion(m.path, "gltf", out)
    g = pygltflib.GLTF2().load(str(out))
    assert g.asset.version == "2.0" and len(g.skins[0].joints) == 54 and len(g.animations) == 1
    doc, blob = read_glb(out)
    assert len(blob) == doc["buffers"][0]["byteLength"]
    prim = doc["meshes"][0]["primitives"][0]
    pos = _accessor(doc, blob, prim["attributes"]["POSITION"])
    acc = doc["accessors"][prim["attributes"]["POSITION"]]
    assert np.allclose(acc["min"], pos.min(0)) and np.allclose(acc["max"], pos.max(0))
    jnt = _accessor(doc, blob, prim["attributes"]["JOINTS_0"])
    wgt = _accessor(doc, blob, prim["attributes"]["WEIGHTS_0"])
    assert jnt.max() < 54 and np.allclose(wgt.sum(1), 1, atol=1e-5) and (wgt >= 0).all()
    assert _accessor(doc, blob, prim["indices"]).max() < pos.shape[0]
    # animate the node tree ourselves: root translation + rotations per node
    nodes = doc["nodes"]
    anim = doc["animations"][0]
    times = _accessor(doc, blob, anim["samplers"][0]["input"])[:, 0]
    assert np.allclose(times, np.arange(16) / 30, atol=1e-6)
    t_nodes = {c["target"]["node"]: _accessor(doc, blob, anim["samplers"][c["sampler"]]["output"])
               for c in anim["channels"] if c["target"]["path"] == "translation"}  # fmt: skip
    r_nodes = {c["target"]["node"]: _accessor(doc, blob, anim["samplers"][c["sampler"]]["output"])
               for c in anim["channels"] if c["target"]["path"] == "rotation"}  # fmt: skip
    parent = {c: p for p, nd in enumerate(nodes) for c in nd.get("children", [])}
    world_r, world_p = {}, {}
    for j in range(54):  # parents come first
        lr = Rotation.from_quat(r_nodes[j]).as_matrix()
        lt = t_nodes[j] if j in t_nodes else np.asarray(nodes[j]["translation"])
        if j in parent:
            p = parent[j]
            world_r[j] = world_r[p] @ lr
            world_p[j] = world_p[p] + (world_r[p] @ np.broadcast_to(lt, (16, 3))[..., None])[..., 0]
        else:
            world_r[j], world_p[j] = lr, np.broadcast_to(lt, (16, 3))
    got = np.stack([world_p[j] for j in range(54)], 1)
    ref = get_fk(betas=m.betas, source="mannequin")(torch.as_tensor(m.poses), m.trans).numpy()
    have = M2S >= 0
    assert np.abs(got[:, have] - ref[:, M2S[have]]).max() < 1e-4
    # skinning with the glb's own data reproduces the mannequin package's posed mesh
    from render.bodies import MannequinRig

    ibm = _accessor(doc, blob, doc["skins"][0]["inverseBindMatrices"]).reshape(54, 4, 4).transpose(0, 2, 1)
    k = 7
    mats = np.tile(np.eye(4), (54, 1, 1))
    for j in range(54):
        mats[j, :3, :3], mats[j, :3, 3] = world_r[j][k], world_p[j][k]
    skin = mats @ ibm
    ph = np.concatenate([pos, np.ones((pos.shape[0], 1))], 1)
    v = sum(wgt[:, i : i + 1] * np.einsum("vij,vj->vi", skin[jnt[:, i]], ph)[:, :3] for i in range(4))
    rig = MannequinRig(m.betas)
    rw, pw = rig.transforms(m.poses[k : k + 1], m.trans[k : k + 1])
    assert np.abs(v - rig.skin(rw, pw)[0].numpy()).max() < 1e-4


def test_our_skinning_equals_the_mannequin_package(tmp_path):
    """MannequinRig uses the package's private rest mesh and weights: its LBS must equal the public API's."""
    from render.bodies import MannequinRig

    m = load_motion(save(tmp_path / "m.npz", **random_motion(4, seed=5)))
    rig = MannequinRig(m.betas)
    rw, pw = rig.transforms(m.poses, m.trans, dtype=torch.float64)
    ours = rig.skin(rw.float(), pw.float()).numpy()
    man = rig.mannequin
    pose = man.rest_pose(batch_dims=(4,))
    pose["body_pose"] = m.poses[:, 3:66].reshape(4, 21, 3).astype(np.float32)
    pose["hand_pose"] = m.poses[:, 75:].reshape(4, 30, 3).astype(np.float32)
    pose["global_rotation"] = m.poses[:, :3].astype(np.float32)
    # the package rotates the root offset about the origin; SMPL-X rotates about the pelvis: translate to match
    r0 = rw[:, 0].numpy()
    pose["global_translation"] = (rig.bind[0] + m.trans - r0 @ rig.bind[0]).astype(np.float32)
    assert np.abs(man.vertices(pose) - ours).max() < 1e-4


def test_export_errors_name_the_file(tmp_path):
    bad = save(tmp_path / "bad.npz", poses=np.zeros((3, 99)))
    with pytest.raises(RenderError, match="bad.npz"):
        export_motion(bad, "bvh", tmp_path / "o.bvh")
    good = save(tmp_path / "m.npz", **random_motion(3))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RenderError, match="cannot write"):
        export_motion(good, "gltf", blocker / "o.glb")
    args = ["--input", str(bad), "--format", "bvh", "--output", str(tmp_path / "o.bvh")]
    script = str(REPO_ROOT / "export_motion.py")
    r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=REPO_ROOT)
    assert r.returncode == 2 and str(bad) in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o.bvh").exists()
    # an SMPL-X model path that points nowhere is named, not a traceback
    env = {**os.environ, "SMPLX_MODEL_PATH": str(tmp_path / "nowhere")}
    args = ["--input", str(good), "--format", "bvh", "--output", str(tmp_path / "o.bvh")]
    r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert r.returncode == 2 and "nowhere" in r.stderr and r.stderr.strip().count("\n") == 0


def test_the_threejs_pin_is_one_version_everywhere():
    """render/threejs.py's THREE_VERSION is what .ci/run, the README's install line and glb_probe.mjs install."""
    from render.threejs import THREE_VERSION

    pin = f"three@{THREE_VERSION}"
    for rel in (".ci/run", "README.md", "render/js/glb_probe.mjs"):
        text = (REPO_ROOT / rel).read_text()
        assert pin in text and text.count("three@") == text.count(pin), rel
