"""FGD autoencoder (VAESKConv): upstream fixture parity, state-dict layout, checkpoint loading, skeleton topology."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from evaluation.fgd_autoencoder import VAESKConv, load_fgd_autoencoder
from evaluation.skeleton_conv import (
    SkeletonConv,
    edge_chains,
    edge_neighbours,
    edges_from_parents,
    pooling_groups,
    pooling_matrix,
)
from geometry.skeleton import PARENTS
from models.checkpoints import CheckpointError, extract_state_dict
from tests.conftest import FIXTURES, need
from utils.io import save_torch, sha256_file

FIXTURE_NPZ = FIXTURES / "vaeskconv_full.npz"
MANIFESTS = FIXTURES / "manifests.json"


def _fixture():
    return np.load(need(FIXTURE_NPZ))


def _fixture_sd(z) -> dict[str, torch.Tensor]:
    keys = json.loads(str(z["sd_keys_json"]))
    return {k: torch.from_numpy(z[f"sd/{k}"]) for k in keys}


@pytest.fixture(scope="module")
def fixture_model():
    z = _fixture()
    model = VAESKConv()
    model.load_state_dict(_fixture_sd(z), strict=True)
    return model.eval(), z


# ---------------------------------------------------------------------------------------------------------------
# Layout vs the manifest of the official model
# ---------------------------------------------------------------------------------------------------------------
def test_state_dict_matches_manifest_exactly():
    entry = json.loads(need(MANIFESTS).read_text())["fgd_vaeskconv"]
    model = VAESKConv()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == entry["state_dict"]  # keys, order, shapes and dtypes
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == entry["counts"]["parameters"] == 4_384_500
    assert sum(p.numel() for p in params if p.requires_grad) == entry["counts"]["trainable_parameters"] == 3_093_000
    assert sum(b.numel() for b in model.buffers()) == entry["counts"]["buffer_elements"] == 0
    enc = model.encoder.parameters()
    assert sum(p.numel() for p in enc) == entry["counts_encoder"]["parameters"]
    assert sum(p.numel() for p in model.decoder.parameters()) == entry["counts_decoder"]["parameters"]


def test_fixture_parents_are_ours():
    z = _fixture()
    assert json.loads(str(z["ctor_json"]))["parents_used"] == list(PARENTS)


def test_masks_and_pool_matrices_equal_fixture():
    """Masks and pooling matrices are untouched by the fixture perturbation, so ours (derived from PARENTS) must
    equal them bit for bit."""
    z = _fixture()
    sd = VAESKConv().state_dict()
    structural = [k for k in sd if k.endswith(".mask") or ".common.0." in k]
    assert len(structural) == 10  # 8 masks + 2 pool matrices
    for k in structural:
        assert torch.equal(sd[k], torch.from_numpy(z[f"sd/{k}"])), k
    for k in structural:
        if k.endswith(".mask"):
            assert set(torch.unique(sd[k]).tolist()) == {0.0, 1.0}, k
        assert not dict(VAESKConv().named_parameters())[k].requires_grad


# ---------------------------------------------------------------------------------------------------------------
# Numerics vs upstream outputs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["a", "b"])
def test_outputs_match_upstream(fixture_model, tag):
    model, z = fixture_model
    x = torch.from_numpy(z[f"input_{tag}"])
    with torch.no_grad():
        lat = model.map2latent(x)
        out = model(x)
        dec = model.decode(lat)
    ref_lat = torch.from_numpy(z[f"map2latent_{tag}"])
    assert lat.shape == ref_lat.shape == (x.shape[0], x.shape[1] // 16, 240)
    torch.testing.assert_close(lat, ref_lat, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["poses_feat"], torch.from_numpy(z[f"forward_{tag}_poses_feat"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["rec_pose"], torch.from_numpy(z[f"forward_{tag}_rec_pose"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(dec, torch.from_numpy(z[f"decode_of_map2latent_{tag}"]), atol=1e-5, rtol=0)
    assert out["pose_mu"] is None and out["pose_logvar"] is None


def test_input_is_rot6d_of_axis_angle(fixture_model):
    """The fixture input is the FGD representation: 55-joint rot6d of the axis-angle pose (our utils agree)."""
    from geometry.rotations import axis_angle_to_rotation_6d

    _, z = fixture_model
    aa = torch.from_numpy(z["input_a_axis_angle"])
    ours = axis_angle_to_rotation_6d(aa).reshape(1, 64, 330)
    torch.testing.assert_close(ours, torch.from_numpy(z["input_a"]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint loading
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_fgd_autoencoder_both_layouts(fixture_model, tmp_path, prefix):
    model, z = fixture_model
    path = tmp_path / f"AESKConv{prefix or '_plain'}.bin"
    save_torch({"model_state": {prefix + k: v for k, v in model.state_dict().items()}}, path)
    loaded = load_fgd_autoencoder(path, map_location="cpu")
    assert isinstance(loaded, VAESKConv) and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.from_numpy(z["input_b"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.map2latent(x), torch.from_numpy(z["map2latent_b"]), atol=1e-5, rtol=0)


def test_load_rejects_wrong_checkpoints(fixture_model, tmp_path):
    model, _ = fixture_model
    sd = dict(model.state_dict())
    sd.pop("fc_mu.bias")
    path = tmp_path / "missing.bin"
    save_torch({"model_state": sd}, path)
    with pytest.raises(ValueError, match=r"missing\.bin.*fc_mu\.bias"):
        load_fgd_autoencoder(path)
    sd = dict(model.state_dict())
    sd["decoder.main.14.bias"] = torch.zeros(7)
    path = tmp_path / "shape.bin"
    save_torch({"model_state": sd}, path)
    with pytest.raises(ValueError, match=r"decoder\.main\.14\.bias"):
        load_fgd_autoencoder(path)
    with pytest.raises(FileNotFoundError):
        load_fgd_autoencoder(tmp_path / "absent.bin")
    with pytest.raises(CheckpointError, match="model_state"):
        extract_state_dict({"epoch": 3, "net": {}}, "x.bin")


def test_sha256_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 5)  # spans several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Shapes, errors, topology
# ---------------------------------------------------------------------------------------------------------------
def test_shapes_and_input_errors():
    model = VAESKConv().eval()
    with torch.no_grad():
        x = torch.randn(2, 32, 330)
        assert model.map2latent(x).shape == (2, 2, 240)
        assert model(x)["rec_pose"].shape == (2, 32, 330)
    with pytest.raises(ValueError, match="multiple of 16"):
        model.map2latent(torch.randn(1, 40, 330))
    with pytest.raises(ValueError, match="330"):
        model.map2latent(torch.randn(1, 32, 333))
    with pytest.raises(ValueError, match="240"):
        model.decode(torch.randn(1, 2, 128))
    with pytest.raises(ValueError, match="vae_length"):
        VAESKConv(vae_length=256)


def test_variational_path_shapes():
    model = VAESKConv(variational=True).eval()
    out = model(torch.randn(1, 16, 330))
    assert out["pose_mu"].shape == out["pose_logvar"].shape == out["poses_feat"].shape == (1, 1, 240)


def test_topology_on_a_hand_computed_chain():
    # pelvis(0) -> 1 -> 2 -> 3 ; edge 0 is the root's virtual edge (0, 4)
    edges = edges_from_parents([-1, 0, 1, 2])
    assert edges == [(0, 4), (0, 1), (1, 2), (2, 3)]
    assert edge_neighbours(edges, 1) == [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3]]
    assert edge_chains(edges) == [[0], [1, 2, 3]]
    groups, new_edges = pooling_groups(edges, last_pool=False)
    assert groups == [[0], [1], [2, 3]]
    assert new_edges == [(0, 4), (0, 1), (1, 3)]
    assert pooling_groups(edges, last_pool=True)[0] == [[0], [1, 2, 3]]
    w = pooling_matrix(groups, 4, 1)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.5]]))
    with pytest.raises(ValueError):
        edges_from_parents([0, 0])


def test_smplx_pooling_sizes():
    edges = edges_from_parents(PARENTS)
    assert len(edges) == 55
    g1, e1 = pooling_groups(edges, last_pool=False)
    g2, e2 = pooling_groups(e1, last_pool=False)
    assert (len(g1), len(g2)) == (35, 20)
    assert sorted(i for g in g1 for i in g) == list(range(55))  # a partition of the edges


def test_skeleton_conv_locality():
    """An output edge does not react to input edges beyond skeleton_dist, even with dense (unmasked) weights."""
    torch.manual_seed(0)
    edges = edges_from_parents(PARENTS)
    neigh = edge_neighbours(edges, 2)
    conv = SkeletonConv(neigh, 330, 330, kernel_size=4, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.normal_()  # fill the off-mask entries too: the mask must still hide them
    x = torch.randn(1, 330, 16)
    far = [j for j in range(55) if j not in neigh[20]]  # edge 20 = left wrist
    near = [j for j in neigh[20] if j != 20]
    x2 = x.clone()
    for j in far:
        x2[:, 6 * j : 6 * j + 6] += 1.0
    y, y2 = conv(x), conv(x2)
    torch.testing.assert_close(y[:, 120:126], y2[:, 120:126])
    x3 = x.clone()
    x3[:, 6 * near[0] : 6 * near[0] + 6] += 1.0
    assert not torch.allclose(conv(x3)[:, 120:126], y[:, 120:126])


def test_structural_params_do_not_train():
    model = VAESKConv()
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".mask") or ".common.0." in k}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(2, 16, 330)
    loss = (model(x)["rec_pose"] - x).abs().mean()
    loss.backward()
    opt.step()
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_features_are_true_fp32(fixture_model):
    """cuDNN TF32 (on by default) moves features by ~3e-3; VAESKConv runs in true fp32 and restores the flags."""
    model, z = fixture_model
    cuda_model = VAESKConv()
    cuda_model.load_state_dict(model.state_dict())
    cuda_model = cuda_model.cuda().eval()
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with torch.no_grad():
        lat = cuda_model.map2latent(torch.from_numpy(z["input_b"]).cuda()).cpu()
    torch.testing.assert_close(lat, torch.from_numpy(z["map2latent_b"]), atol=1e-5, rtol=0)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
