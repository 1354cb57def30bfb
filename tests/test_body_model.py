"""Joints-only FK vs the smplx package (toy SMPL-X model), the mannequin source, and error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.body_model import (
    BodyModelUnavailable,
    find_smplx_model,
    get_fk,
    get_vertex_model,
    read_model_npz,
    write_toy_smplx_model,
)
from geometry.skeleton import PARENTS


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> str:
    return str(write_toy_smplx_model(tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz", seed=3))


def _smplx_joints(path: str, poses: np.ndarray, betas: np.ndarray, trans: np.ndarray, flat: bool = False) -> np.ndarray:
    import smplx

    t = poses.shape[0]
    m = smplx.SMPLX(path, num_betas=300, num_expression_coeffs=100, use_pca=False, batch_size=t, flat_hand_mean=flat)
    p = torch.tensor(poses, dtype=torch.float32)
    out = m(
        betas=torch.tensor(betas, dtype=torch.float32)[None].expand(t, -1), global_orient=p[:, :3],
        body_pose=p[:, 3:66], jaw_pose=p[:, 66:69], leye_pose=p[:, 69:72], reye_pose=p[:, 72:75],
        left_hand_pose=p[:, 75:120], right_hand_pose=p[:, 120:165], transl=torch.tensor(trans, dtype=torch.float32),
        expression=torch.zeros(t, 100),
    )
    return out.joints[:, :55].detach().numpy()


def test_fast_fk_equals_smplx_joints_on_toy_model(toy_model):
    rng = np.random.default_rng(0)
    t = 12
    poses = rng.normal(0, 0.5, (t, 165)).astype(np.float32)
    betas = rng.normal(0, 1.0, 300).astype(np.float32)
    trans = rng.normal(0, 1.0, (t, 3)).astype(np.float32)
    ref = _smplx_joints(toy_model, poses, betas, trans)
    fk = get_fk(toy_model, betas=betas, source="smplx")
    ours = fk(torch.tensor(poses), torch.tensor(trans)).numpy()
    assert ours.shape == (t, 55, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert fk.source.startswith("smplx:SMPLX_NEUTRAL.npz")
    # betas matter (the test is not vacuous): zero shape differs from the shaped skeleton
    zero = get_fk(toy_model, source="smplx")(torch.tensor(poses), torch.tensor(trans)).numpy()
    assert np.abs(zero - ref).max() > 1e-3
    # with_betas gives the same as building at those betas; leading batch dims are kept
    ours2 = fk.with_betas(betas)(torch.tensor(poses).reshape(3, 4, 165), torch.tensor(trans).reshape(3, 4, 3))
    np.testing.assert_allclose(ours2.reshape(t, 55, 3).numpy(), ours, atol=1e-6)
    # flat_hand_mean=True matches smplx's flat_hand_mean=True (and differs on the fingers)
    flat = get_fk(toy_model, betas=betas, source="smplx", flat_hand_mean=True)(torch.tensor(poses), torch.tensor(trans))
    np.testing.assert_allclose(flat.numpy(), _smplx_joints(toy_model, poses, betas, trans, flat=True), atol=1e-5)
    assert np.abs(flat.numpy()[:, 25:] - ours[:, 25:]).max() > 1e-3
    np.testing.assert_allclose(flat.numpy()[:, :22], ours[:, :22], atol=1e-6)


def test_fk_folder_lookup_and_env(toy_model, tmp_path, monkeypatch):
    folder = str(toy_model).rsplit("/", 1)[0]
    assert str(find_smplx_model(folder)) == toy_model
    monkeypatch.setenv("SMPLX_MODEL_PATH", folder)
    assert get_fk().source.startswith("smplx:")
    with pytest.raises(FileNotFoundError, match="no SMPL-X model file"):
        find_smplx_model(tmp_path / "missing")
    monkeypatch.delenv("SMPLX_MODEL_PATH")
    assert find_smplx_model(None) is None
    assert get_fk().source.startswith("mannequin-x")
    with pytest.raises(BodyModelUnavailable, match="SMPLX_MODEL_PATH"):
        get_fk(source="smplx")
    with pytest.raises(BodyModelUnavailable, match="SMPLX_NEUTRAL_2020"):
        get_vertex_model(None)


def test_mannequin_fk_rest_pose_and_rigidity():
    fk = get_fk(source="mannequin")
    zero = torch.zeros(165, dtype=torch.float64)
    rest = fk(zero).numpy()
    # at zero pose, body joints are the rest joints (hand mean rotates only finger segments)
    np.testing.assert_allclose(rest[:25], fk.rest_joints[:25], atol=1e-9)
    assert rest[15, 1] > rest[12, 1] > rest[0, 1]  # head above neck above pelvis (y up)
    # a global rotation about the pelvis keeps the pelvis fixed and all bone lengths
    rng = np.random.default_rng(1)
    poses = torch.tensor(rng.normal(0, 0.5, (4, 165)))
    j = fk(poses).numpy()
    np.testing.assert_allclose(j[:, 0], np.broadcast_to(fk.rest_joints[0], (4, 3)), atol=1e-9)
    par = np.array(PARENTS[1:])
    bone = np.linalg.norm(j[:, 1:] - j[:, par], axis=-1)
    rest_bone = np.linalg.norm(fk.rest_joints[1:] - fk.rest_joints[par], axis=-1)
    np.testing.assert_allclose(bone, np.broadcast_to(rest_bone, bone.shape), atol=1e-9)
    # betas change the skeleton; only the first 10 count for this source
    b = rng.normal(0, 1, 300)
    b2 = b.copy()
    b2[10:] = 0
    np.testing.assert_allclose(fk.with_betas(b).rest_joints, fk.with_betas(b2).rest_joints)
    assert np.abs(fk.with_betas(b).rest_joints - fk.rest_joints).max() > 1e-3


def test_mannequin_fk_matches_the_mannequin_package():
    from mannequin import Mannequin

    rng = np.random.default_rng(2)
    t = 5
    poses = rng.normal(0, 0.4, (t, 165))
    shape = rng.normal(0, 1, 10)
    m = Mannequin("convex", shape=shape)
    tr = m.forward_skeleton(
        body_pose=poses[:, 3:66].reshape(t, 21, 3), head_pose=poses[:, 66:75].reshape(t, 3, 3),
        hand_pose=poses[:, 75:].reshape(t, 30, 3), global_rotation=poses[:, :3], shape=shape,
    )
    ref = tr[..., :3, 3][:, list(range(22)) + list(range(24, 54))]
    ours = get_fk(source="mannequin", betas=shape)(torch.tensor(poses)).numpy()
    ours = ours[:, list(range(22)) + list(range(25, 55))]
    # the package rotates the root offset about the origin; SMPL-X keeps the pelvis at its rest position,
    # so compare root-relative positions
    np.testing.assert_allclose(ours - ours[:, :1], ref - ref[:, :1], atol=1e-6)


def test_fk_from_matrices_on_a_joint_subset_equals_the_full_pass(toy_model):
    """from_matrices(rot, joints) walks only those joints' chains; the positions equal the full pass's, gradients
    flow, and the axis-angle call is the same function (Rodrigues, then from_matrices)."""
    from geometry.rotations import axis_angle_to_matrix

    g = torch.Generator().manual_seed(4)
    poses = 0.3 * torch.randn(6, 165, generator=g, dtype=torch.float64)
    for fk in (get_fk(toy_model, flat_hand_mean=True), get_fk(source="mannequin", flat_hand_mean=True)):
        rot = axis_angle_to_matrix(poses.reshape(6, 55, 3)).requires_grad_(True)
        full = fk.from_matrices(rot)
        torch.testing.assert_close(full, fk(poses))
        joints = [21, 3, 0, 40, 54, 12]
        sub = fk.from_matrices(rot, joints)
        assert sub.shape == (6, len(joints), 3)
        torch.testing.assert_close(sub, full[:, joints], rtol=0, atol=1e-12)
        sub.sum().backward()
        assert float(rot.grad[:, 19].abs().sum()) > 0  # the right elbow moves the right wrist (21)
        assert float(rot.grad[:, 1].abs().sum()) == 0  # the left hip is on no chosen joint's chain
    fk = get_fk(source="mannequin")
    for bad in (torch.zeros(2, 54, 3, 3), torch.zeros(2, 3, 55, 3, 3)):
        with pytest.raises(ValueError, match="rot must be"):
            fk.from_matrices(bad)
    for joints in ([], [55], [-1]):
        with pytest.raises(ValueError, match="joints must be a non-empty list"):
            fk.from_matrices(torch.eye(3).expand(1, 55, 3, 3), joints)


def test_fk_bad_input():
    fk = get_fk(source="mannequin")
    with pytest.raises(ValueError, match="165"):
        fk(torch.zeros(3, 164))
    with pytest.raises(ValueError, match="NaN"):
        fk.with_betas(np.array([np.nan] * 10))
    with pytest.raises(ValueError, match="unknown FK source"):
        get_fk(source="smpl")


def test_vertices_on_toy_model(toy_model):
    vm = get_vertex_model(toy_model)
    rng = np.random.default_rng(4)
    poses = rng.normal(0, 0.3, (5, 165)).astype(np.float32)
    expr = rng.normal(0, 1, (5, 100)).astype(np.float32)
    v = vm.vertices(poses, np.zeros(300), expr, chunk=2)
    assert v.shape == (5, 9930, 3) and torch.isfinite(v).all()
    face = vm.face_vertices(poses, expr, chunk=3)
    only_jaw = np.zeros_like(poses)
    only_jaw[:, 66:69] = poses[:, 66:69]
    np.testing.assert_allclose(face.numpy(), vm.vertices(only_jaw, None, expr).numpy(), atol=1e-6)
    # expressions move vertices
    assert (vm.face_vertices(poses, None) - face).abs().max() > 1e-4


class _Payload:
    """Unpickling this object writes a marker file: proof that code from a model file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_model_npz_with_pickled_objects_runs_no_code(toy_model, tmp_path):
    marker = tmp_path / "marker.txt"
    with np.load(toy_model) as z:
        arrays = {k: z[k] for k in z.files}
    evil = tmp_path / "evil" / "SMPLX_NEUTRAL.npz"
    evil.parent.mkdir()
    obj = np.empty(1, dtype=object)
    obj[0] = _Payload(str(marker))
    np.savez(evil, **arrays, joint2num=obj)  # like the official files' dict entries, but hostile
    arrays_read, skipped = read_model_npz(evil)
    assert skipped == ["joint2num"] and set(arrays_read) == set(arrays)
    poses = np.random.default_rng(0).normal(0, 0.3, (5, 165)).astype(np.float32)
    j_evil = get_fk(evil)(torch.from_numpy(poses)).numpy()
    j_clean = get_fk(toy_model)(torch.from_numpy(poses)).numpy()
    verts = get_vertex_model(evil).vertices(poses[:2])
    assert not marker.exists(), "a pickled object in the model file was executed"
    np.testing.assert_allclose(j_evil, j_clean, atol=1e-10)
    assert verts.shape == (2, 9930, 3)


def test_pkl_model_needs_trust_pickle(tmp_path, monkeypatch):
    pkl = tmp_path / "SMPLX_NEUTRAL.pkl"
    pkl.write_bytes(b"\x80\x04K\x01.")  # any pickle: it must not even be opened
    with pytest.raises(BodyModelUnavailable, match="--trust-pickle"):
        get_fk(pkl)
    with pytest.raises(BodyModelUnavailable, match="--trust-pickle"):
        get_vertex_model(tmp_path)


def test_model_npz_missing_arrays_is_a_clear_error(tmp_path):
    bad = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(bad, v_template=np.zeros((3, 3)))
    with pytest.raises(BodyModelUnavailable, match=r"SMPLX_NEUTRAL\.npz: not an SMPL-X model file.*J_regressor"):
        get_fk(bad)
