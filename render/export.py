"""Export a motion npz to BVH (the 55-joint SMPL-X skeleton) or glTF 2.0 binary (.glb: the skinned mannequin with
its animation), for Blender, game engines and three.js. Written with numpy + json + struct only.

BVH: metres, y up, ``Zrotation Xrotation Yrotation`` channels (R = Rz Rx Ry, intrinsic; degrees), root position
channels hold the pelvis world position (rest pelvis + ``trans``), rest offsets from the SMPL-X model file when one
is found (``$SMPLX_MODEL_PATH``) else the mannequin-x calibration, at the npz's betas; the relaxed hand mean is part
of the finger rotations (as SMPL-X with ``flat_hand_mean=False``). Jaw and eyes are included.

glTF: the mannequin-x wooden mesh (shaped by betas[:10]) with 4 joint influences per vertex, one node per mannequin
joint (54: SMPL-X body and fingers, plus the L_Hand/R_Hand carriers; no jaw/eyes), and one animation (root
translation, joint rotations, LINEAR) sampled at the motion's frame rate.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from geometry.body_model import BodyModelUnavailable
from geometry.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS
from render.motion import Motion, RenderError, load_motion, smplx_local_rotations, smplx_offsets, smplx_rest_skeleton
from utils.io import atomic_path

__all__ = ["write_bvh", "read_bvh", "write_glb", "read_glb", "export_motion", "FORMATS"]

FORMATS = ("bvh", "gltf")
BVH_ORDER = "ZXY"


def _children(parents: tuple[int, ...]) -> dict[int, list[int]]:
    ch: dict[int, list[int]] = {j: [] for j in range(len(parents))}
    for j, p in enumerate(parents):
        if p >= 0:
            ch[p].append(j)
    return ch


def write_bvh(motion: Motion, path: str | os.PathLike, source: str = "auto", model_path: str | None = None) -> dict:
    """Write ``motion`` as BVH; returns the joint order and the rest skeleton's source."""
    rest, pose_mean, src = smplx_rest_skeleton(motion.betas, source, model_path)
    offsets = smplx_offsets(rest)
    rot = smplx_local_rotations(motion.poses, pose_mean).numpy()  # (T,55,3,3)
    euler = Rotation.from_matrix(rot.reshape(-1, 3, 3)).as_euler(BVH_ORDER, degrees=True).reshape(-1, NUM_JOINTS, 3)
    root_pos = rest[0] + motion.trans
    ch = _children(PARENTS)
    order: list[int] = []
    lines = ["HIERARCHY"]

    def emit(j: int, depth: int) -> None:
        ind = "  " * depth
        order.append(j)
        off = np.zeros(3) if j == 0 else offsets[j]
        lines.append(f"{ind}{'ROOT' if j == 0 else 'JOINT'} {JOINT_NAMES[j]}")
        lines.append(f"{ind}{{")
        lines.append(f"{ind}  OFFSET {off[0]:.6f} {off[1]:.6f} {off[2]:.6f}")
        rots = "Zrotation Xrotation Yrotation"
        lines.append(
            f"{ind}  CHANNELS 6 Xposition Yposition Zposition {rots}" if j == 0 else f"{ind}  CHANNELS 3 {rots}"
        )
        for c in ch[j]:
            emit(c, depth + 1)
        if not ch[j]:  # a short end site along the bone (importers need one)
            d = offsets[j] / max(np.linalg.norm(offsets[j]), 1e-9) * 0.02
            lines.extend(
                [f"{ind}  End Site", f"{ind}  {{", f"{ind}    OFFSET {d[0]:.6f} {d[1]:.6f} {d[2]:.6f}", f"{ind}  }}"]
            )
        lines.append(f"{ind}}}")

    emit(0, 0)
    lines += ["MOTION", f"Frames: {motion.num_frames}", f"Frame Time: {1.0 / motion.fps:.8f}"]
    data = np.concatenate([root_pos[:, None, :], euler[:, order]], 1).reshape(motion.num_frames, -1)
    body = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in data)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n" + body + "\n")
    return {"joints": [JOINT_NAMES[j] for j in order], "source": src}


def read_bvh(path: str | os.PathLike) -> dict:
    """Parse a BVH file: names, parents, offsets (J,3), channels per joint, frames (T,C), frame_time."""
    tokens = Path(path).read_text().split()
    i = 0
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[list[str]] = []
    stack: list[int] = []
    while tokens[i] != "MOTION":
        t = tokens[i]
        if t in ("ROOT", "JOINT"):
            names.append(tokens[i + 1])
            parents.append(stack[-1] if stack else -1)
            i += 2
        elif t == "End":
            depth = 0
            while True:  # skip the End Site block
                i += 1
                depth += tokens[i] == "{"
                depth -= tokens[i] == "}"
                if depth == 0 and tokens[i] == "}":
                    break
            i += 1
        elif t == "{":
            stack.append(len(names) - 1)
            i += 1
        elif t == "}":
            stack.pop()
            i += 1
        elif t == "OFFSET":
            offsets.append([float(x) for x in tokens[i + 1 : i + 4]])
            i += 4
        elif t == "CHANNELS":
            n = int(tokens[i + 1])
            channels.append(tokens[i + 2 : i + 2 + n])
            i += 2 + n
        else:
            i += 1
    n_frames = int(tokens[i + 2])
    frame_time = float(tokens[i + 5])
    vals = np.array(tokens[i + 6 :], dtype=np.float64)
    n_ch = sum(len(c) for c in channels)
    return {"names": names, "parents": parents, "offsets": np.array(offsets), "channels": channels,
            "frames": vals.reshape(n_frames, n_ch), "frame_time": frame_time}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- glTF
_FLOAT, _USHORT, _UINT = 5126, 5123, 5125


class _Bin:
    """The binary chunk and its bufferViews/accessors."""

    def __init__(self):
        self.data = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, arr: np.ndarray, ctype: int, atype: str, target: int | None = None, minmax: bool = False) -> int:
        arr = np.ascontiguousarray(arr)
        while len(self.data) % 4:
            self.data.append(0)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": arr.nbytes}
        if target is not None:
            view["target"] = target
        self.data += arr.tobytes()
        self.views.append(view)
        acc = {"bufferView": len(self.views) - 1, "componentType": ctype, "count": int(arr.shape[0]), "type": atype}
        if minmax:
            flat = arr.reshape(arr.shape[0], -1)
            acc["min"] = [float(x) for x in flat.min(0)]
            acc["max"] = [float(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _continuous_quats(q: np.ndarray) -> np.ndarray:
    """Flip signs so consecutive quaternions (T,J,4) lie in one hemisphere (LINEAR interpolation takes short arcs)."""
    q = q.copy()
    for t in range(1, q.shape[0]):
        flip = (q[t] * q[t - 1]).sum(-1) < 0
        q[t, flip] *= -1
    return q


def write_glb(motion: Motion, path: str | os.PathLike) -> dict:
    """Write the skinned mannequin with ``motion`` as one animation to a .glb file."""
    from render.bodies import MannequinRig

    rig = MannequinRig(motion.betas)
    nj = len(rig.parents)
    local = rig.local_rotations(motion.poses).double().numpy()  # (T,54,3,3)
    quat = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_quat().reshape(-1, nj, 4)  # xyzw
    quat = _continuous_quats(quat).astype(np.float32)
    root_t = (rig.bind[0] + motion.trans).astype(np.float32)
    times = (np.arange(motion.num_frames) / motion.fps).astype(np.float32)

    v = rig.rest_vertices.astype(np.float32)
    faces = rig.faces.astype(np.uint32)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    b = _Bin()
    a_pos = b.add(v, _FLOAT, "VEC3", 34962, minmax=True)
    a_nrm = b.add(vn.astype(np.float32), _FLOAT, "VEC3", 34962)
    a_jnt = b.add(rig.skin_joints.astype(np.uint16), _USHORT, "VEC4", 34962)
    w = rig.skin_weights.astype(np.float32)
    a_wgt = b.add(w / w.sum(1, keepdims=True), _FLOAT, "VEC4", 34962)
    a_idx = b.add(faces.reshape(-1), _UINT, "SCALAR", 34963)
    ibm = np.tile(np.eye(4, dtype=np.float32), (nj, 1, 1))
    ibm[:, :3, 3] = -rig.bind  # rest joints carry no rotation: the inverse bind is a translation
    a_ibm = b.add(ibm.transpose(0, 2, 1).reshape(nj, 16), _FLOAT, "MAT4")  # column-major
    a_time = b.add(times, _FLOAT, "SCALAR", minmax=True)
    a_root = b.add(root_t, _FLOAT, "VEC3")
    samplers, channels = [{"input": a_time, "output": a_root, "interpolation": "LINEAR"}], []
    channels.append({"sampler": 0, "target": {"node": 0, "path": "translation"}})
    for j in range(nj):
        samplers.append({"input": a_time, "output": b.add(quat[:, j], _FLOAT, "VEC4"), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": j, "path": "rotation"}})
    ch = _children(rig.parents)
    nodes = []
    for j in range(nj):
        node = {
            "name": rig.joint_names[j],
            "translation": [float(x) for x in (rig.bind[0] if j == 0 else rig.offsets[j])],
        }
        if ch[j]:
            node["children"] = ch[j]
        nodes.append(node)
    nodes.append({"name": "mannequin", "mesh": 0, "skin": 0})
    doc = {
        "asset": {"version": "2.0", "generator": "GestureLSM render/export.py (mannequin-x wooden mesh)"},
        "scene": 0,
        "scenes": [{"nodes": [nj, 0]}],
        "nodes": nodes,
        "meshes": [{"name": "mannequin", "primitives": [{
            "attributes": {"POSITION": a_pos, "NORMAL": a_nrm, "JOINTS_0": a_jnt, "WEIGHTS_0": a_wgt},
            "indices": a_idx, "material": 0, "mode": 4}]}],
        "materials": [{"name": "wood", "pbrMetallicRoughness": {
            "baseColorFactor": [0.84, 0.66, 0.44, 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.7}}],
        "skins": [{"joints": list(range(nj)), "inverseBindMatrices": a_ibm, "skeleton": 0}],
        "animations": [{"name": Path(motion.path).stem, "samplers": samplers, "channels": channels}],
        "buffers": [{"byteLength": 0}],
        "bufferViews": b.views,
        "accessors": b.accessors,
    }  # fmt: skip
    while len(b.data) % 4:
        b.data.append(0)
    doc["buffers"][0]["byteLength"] = len(b.data)
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(b.data)
    blob = struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(js), b"JSON") + js
    blob += struct.pack("<I4s", len(b.data), b"BIN\x00") + bytes(b.data)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(blob)
    return {"joints": list(rig.joint_names), "vertices": int(v.shape[0]), "faces": int(faces.shape[0])}


def read_glb(path: str | os.PathLike) -> tuple[dict, bytes]:
    """(JSON document, binary chunk) of a .glb file, checking the container's header and chunk lengths."""
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or version != 2 or length != len(data):
        raise ValueError(f"{path}: not a glTF 2.0 binary (magic {magic!r}, version {version}, length {length})")
    jlen, jtype = struct.unpack_from("<I4s", data, 12)
    doc = json.loads(data[20 : 20 + jlen])
    blen, btype = struct.unpack_from("<I4s", data, 20 + jlen)
    if jtype != b"JSON" or btype != b"BIN\x00":
        raise ValueError(f"{path}: bad chunk types {jtype!r} {btype!r}")
    return doc, data[28 + jlen : 28 + jlen + blen]


def export_motion(input_path: str | os.PathLike, fmt: str, output: str | os.PathLike, source: str = "auto") -> dict:
    """Entry point of export_motion.py: validate the npz, write BVH or GLB atomically."""
    if fmt not in FORMATS:
        raise RenderError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    motion = load_motion(input_path)
    output = Path(output)
    try:
        if fmt == "bvh":
            info = write_bvh(motion, output, source)
        else:
            info = write_glb(motion, output)
    except (FileNotFoundError, BodyModelUnavailable) as e:  # SMPLX_MODEL_PATH pointing nowhere, bad model file
        raise RenderError(str(e)) from None
    except OSError as e:
        raise RenderError(f"{output}: cannot write there ({e.strerror or e})") from None
    return {"output": str(output), "frames": motion.num_frames, "fps": motion.fps, **info}
