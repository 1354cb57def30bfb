"""Face-metric vertices on the moving subset (geometry.face_vertices) against the smplx package's full mesh, on toy
SMPL-X models written here: the default toy (expression directions on vertices that joint regression also uses, so
the hands' transforms move with the expressions: the general path) and the real model's layout (``face_region``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.metrics import face_mse, lvd_emage2024, lvd_evaltools
from geometry.body_model import _load_smplx_module, get_vertex_model, write_toy_smplx_model
from geometry.face_vertices import FaceVertexSubset, rodrigues

T = 12


@pytest.fixture(scope="module", params=["general", "head_region"])
def model_path(request, tmp_path_factory):
    region = 3000 if request.param == "head_region" else 0
    return write_toy_smplx_model(tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz", seed=2, face_region=region)


def _sequence(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.3, (T, 165)), rng.normal(0, 1, (T, 100))


def _full_face_vertices(model, poses: np.ndarray, expressions: np.ndarray, betas: np.ndarray) -> torch.Tensor:
    """smplx's own forward (float64 model) on the face-metric pose: everything zero but the jaw and expressions."""
    f64, z = torch.float64, torch.zeros(T, 3, dtype=torch.float64)
    jaw = torch.as_tensor(poses[:, 66:69], dtype=f64)
    with torch.no_grad():
        return model(betas=torch.as_tensor(betas, dtype=f64)[None].expand(T, -1), global_orient=z,
                     body_pose=torch.zeros(T, 63, dtype=f64), jaw_pose=jaw, leye_pose=z, reye_pose=z,
                     left_hand_pose=torch.zeros(T, 45, dtype=f64), right_hand_pose=torch.zeros(T, 45, dtype=f64),
                     expression=torch.as_tensor(expressions, dtype=f64), transl=z).vertices  # fmt: skip


def test_rodrigues_matches_smplx():
    from smplx.lbs import batch_rodrigues

    v = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v[0] = 0.0
    torch.testing.assert_close(rodrigues(v), batch_rodrigues(v), rtol=0, atol=1e-15)
    assert torch.equal(rodrigues(v[:1])[0], torch.eye(3, dtype=torch.float64))  # zero rotation is I exactly


def test_subset_vertices_equal_smplx_and_the_rest_never_move(model_path):
    m64 = _load_smplx_module(model_path, dtype=torch.float64)
    sub = FaceVertexSubset(m64)
    betas = np.random.default_rng(9).normal(0, 1, 300)
    (pa, ea), (pb, eb) = _sequence(1), _sequence(2)
    va, vb = _full_face_vertices(m64, pa, ea, betas), _full_face_vertices(m64, pb, eb, betas)
    s = sub.vertices
    # float32 blend-shape products: ~1e-6 of the toy's offsets (~0.1 m here)
    torch.testing.assert_close(sub.positions(pa, ea, betas), va[:, s], rtol=0, atol=1e-6)
    torch.testing.assert_close(sub.positions(pb, eb, betas), vb[:, s], rtol=0, atol=1e-6)
    rest = torch.ones(sub.n_vertices, dtype=torch.bool)
    rest[s] = False
    assert rest.sum() > 0
    torch.testing.assert_close(va[:, rest], va[:1, rest].expand(T, -1, -1), rtol=0, atol=1e-12)  # still in time
    torch.testing.assert_close(va[:, rest], vb[:, rest], rtol=0, atol=1e-12)  # and the same for any jaw/expressions
    # while the subset's vertices do move
    assert (va[:, s] - va[:1, s]).abs().amax() > 1e-3


def test_subset_metrics_equal_the_full_mesh_metrics(model_path):
    m64 = _load_smplx_module(model_path, dtype=torch.float64)
    sub = FaceVertexSubset(m64)
    betas = np.random.default_rng(3).normal(0, 1, 300)
    (pa, ea), (pb, eb) = _sequence(4), _sequence(5)
    va, vb = (_full_face_vertices(m64, p, e, betas).numpy() for p, e in ((pa, ea), (pb, eb)))
    ref = {"face_mse": face_mse(va, vb), "lvd_emage2024": lvd_emage2024(va, vb), "lvd_evaltools": lvd_evaltools(va, vb)}
    got = sub.metrics(pa, ea, pb, eb, betas)
    assert got == pytest.approx(ref, rel=5e-8)  # float32 on small displacements (module docstring)
    # chunking (one frame of overlap for the differences) changes only rounding (float32 blend products, sums)
    assert sub.metrics(pa, ea, pb, eb, betas, chunk=5) == pytest.approx(got, rel=1e-8)
    # and the evaluator's entry point (the float32 model, as loaded for evaluation) gives the same numbers
    assert get_vertex_model(model_path).face_metrics(pa, ea, pb, eb, betas) == pytest.approx(ref, rel=5e-8)
    # a prediction equal to GT scores 0
    assert sub.metrics(pa, ea, pa, ea, betas) == {"face_mse": 0.0, "lvd_emage2024": 0.0, "lvd_evaltools": 0.0}


def test_real_layout_moves_only_the_head_region(tmp_path):
    path = write_toy_smplx_model(tmp_path / "SMPLX_NEUTRAL.npz", seed=2, face_region=3000)
    sub = FaceVertexSubset(get_vertex_model(path).model)
    assert sub.var_joints == [22]  # only the jaw's transform changes
    face = set(range(660, 3660))
    assert face <= set(sub.vertices.tolist()) and len(sub.vertices) < sub.n_vertices / 2


def test_bad_sequences_are_refused(tmp_path):
    sub = FaceVertexSubset(get_vertex_model(write_toy_smplx_model(tmp_path / "SMPLX_NEUTRAL.npz")).model)
    p, e = _sequence(0)
    with pytest.raises(ValueError, match=">= 2 frames"):
        sub.metrics(p[:1], e[:1], p[:1], e[:1], None)
    with pytest.raises(ValueError, match="matching"):
        sub.metrics(p, e, p[:5], e[:5], None)
