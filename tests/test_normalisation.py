"""geometry.normalisation: the one mean/std normalisation that data (dataloaders.stats) and models (MotionCodec) use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataloaders.stats import Stats, denormalise_rot6d, frame_vector, normalise_rot6d, normalise_trans_v
from geometry.normalisation import DEFAULT_MIN_STD, denormalise, normalise, safe_std
from geometry.rotations import poses_to_rot6d
from geometry.skeleton import generator_parts, part_dim, rot6d_indices
from models.motion_codec import PART_JOINTS, MotionCodec
from models.vq.rvqvae import RVQVAE


def _stats(rng: np.random.Generator) -> Stats:
    std = rng.uniform(0.05, 0.5, 330).astype(np.float32)
    std[:6] = 0.0  # constant dims (a synthetic corpus has some): replaced by 1, never a division by zero
    return Stats(rot6d_mean=rng.normal(0, 0.3, 330).astype(np.float32), rot6d_std=std,
                 trans_v_mean=rng.normal(0, 0.1, 3), trans_v_std=np.array([0.01, 1e-9, 0.02]),
                 mean_vel=np.ones(55, np.float32))  # fmt: skip


def test_safe_std_numpy_and_torch():
    std = np.array([0.0, 5e-9, 1e-8, 0.3], np.float32)
    out = safe_std(std)
    assert out.dtype == np.float32 and out.tolist() == pytest.approx([1.0, 1.0, 1e-8, 0.3])
    t = safe_std(torch.from_numpy(std))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(out))
    assert safe_std(std, min_std=0.5).tolist() == [1.0, 1.0, 1.0, 1.0] and DEFAULT_MIN_STD == 1e-8


def test_round_trip_and_dtype_follow_the_input():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=7), rng.uniform(0.1, 2, 7)
    x = rng.normal(size=(4, 7))
    np.testing.assert_array_equal(normalise(x, mean, std), (x - mean) / std)
    np.testing.assert_allclose(denormalise(normalise(x, mean, std), mean, std), x, rtol=0, atol=1e-12)
    xt = torch.from_numpy(x).float()
    nt = normalise(xt, mean, std)  # float64 statistics cast to the tensor's float32 first
    assert nt.dtype == torch.float32
    assert torch.equal(nt, (xt - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32))


def test_data_and_codec_normalise_bit_identically():
    """MotionCodec's per-part RVQ inputs/outputs equal dataloaders.stats' normalisation of the same frames."""
    rng = np.random.default_rng(1)
    st = _stats(rng)
    torch.manual_seed(0)
    vqs = {p: RVQVAE(part_dim(p), nb_code=8, code_dim=16, width=8, depth=1, num_quantizers=1)
           for p in generator_parts(face=False)}  # fmt: skip
    codec = MotionCodec(vqs, st.rot6d_mean, st.safe(st.rot6d_std), st.trans_v_mean, st.safe(st.trans_v_std))
    poses = torch.from_numpy(rng.normal(0, 0.4, (2, 8, 165)).astype(np.float32))
    tv = torch.from_numpy(rng.normal(0, 0.02, (2, 8, 3)).astype(np.float32))
    parts = codec.normalise_parts(poses, tv)
    r6n = normalise_rot6d(poses_to_rot6d(poses), st)
    for p in generator_parts(face=False):
        idx = torch.from_numpy(rot6d_indices(PART_JOINTS[p]))
        assert torch.equal(parts[p][..., : idx.numel()], r6n[..., idx]), p
    assert torch.equal(parts["lower_trans"][..., -3:], normalise_trans_v(tv, st))
    assert torch.isfinite(r6n).all()  # the zero-std dims were made safe
    # frame_vector (numpy path, float64 arithmetic) agrees to float32 precision
    fv = frame_vector(poses[0].numpy(), tv[0].numpy(), np.zeros((8, 100)), st)
    np.testing.assert_allclose(fv[:, :330], r6n[0].numpy(), rtol=0, atol=1e-5)
    back = denormalise_rot6d(r6n, st)
    torch.testing.assert_close(back, poses_to_rot6d(poses), rtol=0, atol=1e-6)
