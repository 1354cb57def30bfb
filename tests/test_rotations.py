import numpy as np
import torch

from geometry import rotations as R
from geometry import skeleton as S
from tests.conftest import FIXTURES, need


def _fx():
    return np.load(need(FIXTURES / "rotations.npz"))


def test_known_values():
    aa = torch.tensor([[0.0, 0.0, np.pi / 2]])
    m = R.axis_angle_to_matrix(aa)[0]
    assert torch.allclose(m, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6)
    assert torch.allclose(R.matrix_to_rotation_6d(m), torch.tensor([0.0, -1, 0, 1, 0, 0]), atol=1e-6)
    assert torch.allclose(R.axis_angle_to_matrix(torch.zeros(4, 3)), torch.eye(3).expand(4, 3, 3))


def test_round_trips_random():
    g = torch.Generator().manual_seed(0)
    aa = torch.randn(500, 3, generator=g, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(500, 1, generator=g, dtype=torch.float64) * 3.0
    back = R.rotation_6d_to_axis_angle(R.axis_angle_to_rotation_6d(aa))
    assert torch.allclose(back, aa, atol=1e-9)
    m = R.axis_angle_to_matrix(aa)
    assert torch.allclose(m @ m.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(m), atol=1e-12)
    assert torch.allclose(R.quaternion_to_matrix(R.matrix_to_quaternion(m)), m, atol=1e-12)


def test_reortho_projects_onto_rotations():
    d6 = torch.randn(50, 6)
    r = R.reortho_6d(d6)
    assert torch.allclose(R.reortho_6d(r), r, atol=1e-6)
    m = R.rotation_6d_to_matrix(r)
    assert torch.allclose(torch.linalg.det(m), torch.ones(50), atol=1e-5)


def test_gradients_finite_at_zero():
    aa = torch.zeros(3, 3, requires_grad=True)
    R.axis_angle_to_rotation_6d(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


def test_matches_upstream_fixture():
    f = _fx()
    aa = torch.from_numpy(f["axis_angle"])
    np.testing.assert_allclose(R.axis_angle_to_quaternion(aa).numpy(), f["axis_angle_to_quaternion"], atol=1e-6)
    mat = R.axis_angle_to_matrix(aa)
    np.testing.assert_allclose(mat.numpy(), f["axis_angle_to_matrix"], atol=1e-6)
    r6 = R.matrix_to_rotation_6d(mat)
    np.testing.assert_allclose(r6.numpy(), f["matrix_to_rotation_6d"], atol=1e-6)
    m2 = R.rotation_6d_to_matrix(torch.from_numpy(f["matrix_to_rotation_6d"]))
    np.testing.assert_allclose(m2.numpy(), f["rotation_6d_to_matrix_of_r6"], atol=1e-6)
    np.testing.assert_allclose(
        R.matrix_to_quaternion(torch.from_numpy(f["rotation_6d_to_matrix_of_r6"])).numpy(),
        f["matrix_to_quaternion_of_R2"],
        atol=1e-5,
    )
    well = np.r_[0:5, 9 : len(aa)]  # rows 5-8 sit at/near pi: the axis sign is not meaningful there
    got = R.matrix_to_axis_angle(torch.from_numpy(f["rotation_6d_to_matrix_of_r6"])).numpy()
    np.testing.assert_allclose(got[well], f["matrix_to_axis_angle_of_R2"][well], atol=1e-4)
    d6 = torch.from_numpy(f["d6_raw"])
    np.testing.assert_allclose(R.rotation_6d_to_matrix(d6).numpy(), f["rotation_6d_to_matrix_of_d6_raw"], atol=1e-6)
    np.testing.assert_allclose(R.reortho_6d(d6).numpy(), f["reortho_6d_of_d6_raw"], atol=1e-6)


def test_part_slices_match_fixture():
    f = _fx()
    pose = torch.from_numpy(f["pose165"])
    full = R.poses_to_rot6d(pose).numpy()
    np.testing.assert_allclose(full, f["pose165_all_rot6d_330"], atol=1e-6)
    for part, key in (
        ("upper", "pose165_upper_rot6d"),
        ("hands", "pose165_hands_rot6d"),
        ("lower", "pose165_lower_rot6d"),
    ):
        idx = S.rot6d_indices(S.PARTS[part]["joints"])
        np.testing.assert_allclose(full[..., idx], f[key], atol=1e-6)


def test_part_dims():
    assert [S.part_dim(p) for p in ("upper", "hands", "lower", "lower_trans", "face")] == [78, 180, 54, 57, 100]
    import pytest

    with pytest.raises(ValueError, match="unknown body part 'hand'"):
        S.part_dim("hand")
