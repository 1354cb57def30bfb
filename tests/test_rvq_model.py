"""RVQ-VAE model: shapes, quantiser behaviour, upstream fixture equivalence, manifest layout, checkpoint loading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from geometry.skeleton import part_dim
from models.vq.quantizer import QuantizeEMAReset
from models.vq.residual_vq import ResidualVQ
from models.vq.rvqvae import RVQVAE, load_rvqvae
from tests.conftest import FIXTURES, need
from utils.io import save_torch

RVQ_FIXTURES = ["rvqvae_small_upper78.npz", "rvqvae_small_lowertrans57.npz"]
MANIFEST_PARTS = {"rvqvae_upper": "upper", "rvqvae_hands": "hands", "rvqvae_lower_trans": "lower_trans",
                  "rvqvae_face": "face"}


def tiny_model(input_width: int = 12, **kw) -> RVQVAE:
    torch.manual_seed(0)
    args = dict(nb_code=16, code_dim=8, width=16, depth=2, num_quantizers=3)
    args.update(kw)
    return RVQVAE(input_width, **args)


# ----- fixtures from the upstream code ------------------------------------------------------------------------------

def _load_fixture(name: str) -> tuple[RVQVAE, dict]:
    d = np.load(need(FIXTURES / name))
    c = json.loads(str(d["ctor_json"]))
    a = c["args"]
    assert c["code_dim"] == c["output_emb_width"]
    model = RVQVAE(c["input_width"], nb_code=c["nb_code"], code_dim=c["code_dim"], width=c["width"],
                   down_t=c["down_t"], stride_t=c["stride_t"], depth=c["depth"],
                   dilation_growth_rate=c["dilation_growth_rate"], activation=c["activation"], norm=c["norm"],
                   num_quantizers=a["num_quantizers"], quantize_dropout_prob=a["quantize_dropout_prob"],
                   mu=a["mu"], quantize_dropout_cutoff_index=a["quantize_dropout_cutoff_index"])
    keys = json.loads(str(d["sd_keys_json"]))
    assert list(model.state_dict().keys()) == keys
    model.load_state_dict({k: torch.from_numpy(d[f"sd/{k}"]) for k in keys}, strict=True)
    return model.eval(), {k: d[k] for k in d.files if not k.startswith("sd/")}


def _close(a: torch.Tensor, b: np.ndarray, atol: float = 2e-6) -> None:
    np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-5, atol=atol)


def _indices_equal(ours: torch.Tensor, ref: np.ndarray, relgap: np.ndarray) -> None:
    """Compare (B, T', Q) indices, skipping positions whose best/second-best distances nearly tie (relgap (Q,B,T'))."""
    safe = np.transpose(relgap, (1, 2, 0)) > 1e-4
    assert safe.mean() > 0.9
    np.testing.assert_array_equal(ours.numpy()[safe], ref[safe])


@pytest.mark.parametrize("name", RVQ_FIXTURES)
def test_matches_upstream_fixture(name: str) -> None:
    model, f = _load_fixture(name)
    x = torch.from_numpy(f["x"])
    with torch.no_grad():
        _close(model.map2latent(x), f["map2latent_out"])
        rec, commit, ppl = model(x)
        _close(rec, f["forward_rec_pose"])
        _close(commit, f["forward_commit_loss"])
        _close(ppl, f["forward_perplexity"], atol=1e-5)
        idx, codes = model.encode(x)
        _indices_equal(idx, f["encode_code_idx"], f["diag_enc_relgap"])
        _close(codes, f["encode_all_codes"])
        # Upstream decodes indices with the *unprojected* codebook (reference defect, behind a named option).
        ref_idx = torch.from_numpy(f["encode_code_idx"])
        _close(model.forward_decoder(ref_idx, reference_raw_codebook=True), f["forward_decoder_from_encode_idx"])
        z_q, z_idx, _, _ = model.quantizer(torch.from_numpy(f["z"]).permute(0, 2, 1), sample_codebook_temp=0.5)
        _close(z_q, f["quantizer_forward_z_quantized"])
        _indices_equal(z_idx, f["quantizer_forward_z_idx"], f["diag_z_relgap"])
        _indices_equal(model.quantizer.quantize(torch.from_numpy(f["z"]).permute(0, 2, 1)), f["quantize_z_idx"],
                       f["diag_z_relgap"])
        for src, key in ((f["map2latent_out"], "enc"), (f["z"], "z")):
            z = torch.from_numpy(src.copy())
            out, c, p = model.latent2origin(z)
            _close(out, f[f"latent2origin_{key}_out"])
            _close(c, f[f"latent2origin_{key}_commit"])
            _close(p, f[f"latent2origin_{key}_perplexity"], atol=1e-5)
            # Upstream overwrote its input with the final residual; ours leaves it untouched.
            np.testing.assert_array_equal(z.numpy(), src)
            assert not np.allclose(f[f"latent2origin_{key}_input_after_call"], src)


@pytest.mark.parametrize("name", RVQ_FIXTURES)
def test_released_layout_file_loads_strict_and_initialised(name: str, tmp_path) -> None:
    model, f = _load_fixture(name)
    path = save_torch({"net": model.state_dict()}, tmp_path / "net_300000_x.pth")
    part = "upper" if "upper" in name else "lower_trans"
    loaded = load_rvqvae(path, part=part)
    assert not loaded.training and loaded.part == part
    for layer in loaded.quantizer.layers:
        assert bool(layer.initialized)
        torch.testing.assert_close(layer.code_sum, layer.codebook, rtol=0, atol=0)
        assert torch.all(layer.code_count == 1)
    with torch.no_grad():
        _close(loaded(torch.from_numpy(f["x"]))[0], f["forward_rec_pose"])
    # A training-mode forward must not re-initialise the loaded codebook from the batch (upstream would): the EMA
    # sums of codes the batch did not pick are exactly mu * the loaded codebook.
    torch.manual_seed(0)
    loaded.train()
    layer = loaded.quantizer.layers[0]
    before = layer.codebook.clone()
    loaded(torch.from_numpy(f["x"]))
    picked = (layer.code_count - 0.99) / 0.01  # count = mu * 1 + (1 - mu) * picks
    torch.testing.assert_close(picked, picked.round(), rtol=0, atol=1e-3)
    assert int(picked.round().sum()) == 2 * 16  # every latent vector picked one code
    unused = picked.round() == 0
    assert unused.sum() > 0
    torch.testing.assert_close(layer.code_sum[unused], 0.99 * before[unused], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="does not match part 'hands'"):
        load_rvqvae(path, part="hands")


# ----- official sizes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", sorted(MANIFEST_PARTS))
def test_state_dict_matches_manifest(entry: str) -> None:
    man = json.loads(need(FIXTURES / "manifests.json").read_text())[entry]
    ctor = man["constructor"]
    assert ctor["input_width"] == part_dim(MANIFEST_PARTS[entry])
    with torch.device("meta"):  # shapes only, no memory
        model = RVQVAE(part_dim(MANIFEST_PARTS[entry]))
    sd = model.state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()]
    assert ours == man["state_dict"]
    counts = man["counts"]
    assert sum(p.numel() for p in model.parameters()) == counts["parameters"]
    assert sum(v.numel() for v in sd.values()) == counts["state_dict_elements"]
    assert len(sd) == counts["state_dict_tensors"]
    persistent_buffers = sum(v.numel() for k, v in sd.items() if k.endswith("codebook"))
    assert persistent_buffers == counts["buffer_elements"]


@pytest.fixture(scope="module")
def official_upper() -> RVQVAE:
    torch.manual_seed(0)
    return RVQVAE(part_dim("upper")).eval()


def test_official_size_shapes(official_upper: RVQVAE) -> None:
    x = torch.randn(2, 128, 78)
    with torch.no_grad():
        z = official_upper.map2latent(x)
        assert z.shape == (2, 32, 128)
        rec, commit, ppl = official_upper(x)
        assert rec.shape == (2, 128, 78) and commit.dim() == 0 and ppl.dim() == 0
        idx, codes = official_upper.encode(x)
        assert idx.shape == (2, 32, 6) and codes.shape == (6, 2, 128, 32)
        assert idx.min() >= 0 and idx.max() < 1024
        assert official_upper.latent2origin(z)[0].shape == (2, 128, 78)


def test_official_size_released_layout_roundtrip(official_upper: RVQVAE, tmp_path) -> None:
    path = save_torch({"net": official_upper.state_dict()}, tmp_path / "net_300000_upper.pth")
    loaded = load_rvqvae(path, part="upper")
    assert loaded.config["width"] == 512 and loaded.config["nb_code"] == 1024
    assert loaded.config["num_quantizers"] == 6 and loaded.config["depth"] == 3 and loaded.config["down_t"] == 2
    for k, v in official_upper.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


# ----- behaviour ----------------------------------------------------------------------------------------------------

def test_bad_inputs_raise() -> None:
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"\(B, T, 12\)"):
        model(torch.zeros(1, 16, 13))
    with pytest.raises(ValueError, match="multiple"):
        model.map2latent(torch.zeros(1, 18, 12))
    with pytest.raises(ValueError, match="latent"):
        model.latent2origin(torch.zeros(1, 4, 7))
    with pytest.raises(ValueError, match="norm"):
        RVQVAE(12, norm="BN")


def test_encode_decode_roundtrip_and_eval_determinism() -> None:
    model = tiny_model()
    model.train()
    model(torch.randn(4, 32, 12))  # initialise codebooks from a batch
    model.eval()
    x = torch.randn(3, 32, 12)
    with torch.no_grad():
        rec, _, _ = model(x)
        idx, codes = model.encode(x)
        torch.testing.assert_close(model.forward_decoder(idx), rec, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.decoder(codes.sum(0)), rec, rtol=1e-5, atol=1e-6)
        z = model.map2latent(x)
        z0 = z.clone()
        torch.testing.assert_close(model.latent2origin(z)[0], rec, rtol=1e-5, atol=1e-6)
        assert torch.equal(z, z0)
        torch.testing.assert_close(model(x)[0], rec, rtol=0, atol=0)
        # coarse indices: missing layers are treated as dropped
        coarse = model.forward_decoder(idx[..., :1])
        torch.testing.assert_close(coarse, model.decoder(codes[0]), rtol=1e-5, atol=1e-6)


def test_training_forward_gradients_and_init() -> None:
    model = tiny_model().train()
    assert not any(bool(layer.initialized) for layer in model.quantizer.layers)
    x = torch.randn(4, 32, 12)
    rec, commit, _ = model(x)
    assert bool(model.quantizer.layers[0].initialized)
    (torch.nn.functional.smooth_l1_loss(rec, x) + 0.02 * commit).backward()
    assert model.encoder.model[0].weight.grad.abs().sum() > 0
    assert model.quantizer.layers[0].embedding_proj.weight.grad.abs().sum() > 0
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith("codebook") for n in names)
    # latent2origin never updates the codebook, even in training mode
    before = [layer.codebook.clone() for layer in model.quantizer.layers]
    ema_before = model.ema_state_dict()
    model.latent2origin(model.map2latent(x).detach())
    for layer, b in zip(model.quantizer.layers, before):
        assert torch.equal(layer.codebook, b)
    assert torch.equal(model.ema_state_dict()["0"]["code_count"], ema_before["0"]["code_count"])


def _hand_quantizer() -> QuantizeEMAReset:
    q = QuantizeEMAReset(nb_code=3, code_dim=2, mu=0.5)
    with torch.no_grad():
        q.embedding_proj.weight.copy_(torch.eye(2))
        q.embedding_proj.bias.zero_()
    q.load_state_dict({"codebook": torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]),
                       "embedding_proj.weight": torch.eye(2), "embedding_proj.bias": torch.zeros(2)})
    return q


def test_ema_update_matches_hand_computation() -> None:
    q = _hand_quantizer().train()
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0], [-1.0, 0.0]])
    x = rows.t().unsqueeze(0)  # (1, C=2, T=4)
    out, idx, commit, ppl = q(x, temperature=0.0)
    assert idx.tolist() == [[0, 0, 1, 0]]
    # quantised values: the *pre-update* codes
    torch.testing.assert_close(out[0].t(), torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [0.0, 0.0]]))
    # commit = mse(x, q) + mse(q, x) = 2 * (1 + 1 + 2 + 1) / 8
    assert math.isclose(float(commit.detach()), 1.25, rel_tol=1e-6)
    expected_ppl = math.exp(-(0.75 * math.log(0.75 + 1e-7) + 0.25 * math.log(0.25 + 1e-7) + 0 * math.log(1e-7)))
    assert math.isclose(float(ppl), expected_ppl, rel_tol=1e-5)
    # sum <- 0.5 * sum + 0.5 * batch_sum, count <- 0.5 * count + 0.5 * batch_count (initial sum = codebook, count 1)
    torch.testing.assert_close(q.code_sum, torch.tensor([[0.0, 0.5], [9.5, 0.5], [0.0, 5.0]]))
    torch.testing.assert_close(q.code_count, torch.tensor([2.0, 1.0, 0.5]))
    torch.testing.assert_close(q.codebook[:2], torch.tensor([[0.0, 0.25], [9.5, 0.5]]))
    # code 2 has count 0.5 < 1: dead, reset to one of the batch vectors
    assert any(torch.equal(q.codebook[2], r) for r in rows)


def test_eval_mode_does_not_update_and_uses_argmax() -> None:
    q = _hand_quantizer().eval()
    x = torch.tensor([[1.0, 0.0], [9.0, 1.0]]).t().unsqueeze(0)
    cb = q.codebook.clone()
    for _ in range(5):
        _, idx, _, _ = q(x, temperature=0.5)
        assert idx.tolist() == [[0, 1]]
    assert torch.equal(q.codebook, cb) and torch.all(q.code_count == 1)


def test_gumbel_selection_is_stochastic_in_training() -> None:
    torch.manual_seed(0)
    q = QuantizeEMAReset(nb_code=4, code_dim=2, mu=0.99).train()
    with torch.no_grad():
        q.embedding_proj.weight.copy_(torch.eye(2))
        q.embedding_proj.bias.zero_()
    q.load_state_dict({**q.state_dict(), "codebook": torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, 0.3], [5.0, 5.0]])})
    x = torch.zeros(1, 2, 400)  # nearest code is 0 everywhere; Gumbel noise at T=0.5 picks 1 and 2 too
    _, idx, _, _ = q.eval()(x, temperature=0.5)
    assert torch.all(idx == 0)
    _, idx, _, _ = q.train()(x, temperature=0.5)
    counts = torch.bincount(idx.flatten(), minlength=4)
    assert counts[0] > counts[1] > 0 and counts[2] > 0 and counts[3] == 0


def test_init_codebook_tiles_small_batches() -> None:
    torch.manual_seed(0)
    q = QuantizeEMAReset(nb_code=5, code_dim=4).train()
    x = torch.randn(2, 4)
    q(x.t().unsqueeze(0), temperature=0.0)  # N=2 < 5 codes: tile x three times plus small noise
    # After init and one EMA step the first code stays close to x[0]
    assert bool(q.initialized)
    init_like = q.code_sum / q.code_count.unsqueeze(1)
    assert torch.allclose(init_like[0], x[0], atol=0.05) and torch.allclose(init_like[1], x[1], atol=0.05)


def test_quantize_dropout_bounds() -> None:
    torch.manual_seed(0)
    rvq = ResidualVQ(num_quantizers=6, nb_code=8, code_dim=4, quantize_dropout_prob=1.0).train()
    x = torch.randn(2, 4, 5)
    active_counts = set()
    for _ in range(120):
        _, idx, _, _ = rvq(x, sample_codebook_temp=0.5)
        dropped = (idx == -1).all(dim=(0, 1))  # (Q,)
        assert not dropped[0], "layer 0 must never be dropped"
        n_active = int((~dropped).sum())
        assert torch.all(~dropped[:n_active]) and torch.all(dropped[n_active:])  # a suffix is dropped
        assert torch.all((idx == -1) == dropped.view(1, 1, -1).expand_as(idx))
        active_counts.add(n_active)
    assert active_counts == {1, 2, 3, 4, 5, 6}
    # probability: about 20 % of draws apply dropout
    rvq.quantize_dropout_prob = 0.2
    draws = [rvq.draw_dropout_index() for _ in range(3000)]
    frac = sum(d < 6 for d in draws) / len(draws)
    assert 0.17 < frac < 0.23
    # cut-off index keeps layers <= cutoff
    rvq2 = ResidualVQ(num_quantizers=6, nb_code=8, code_dim=4, quantize_dropout_prob=1.0,
                      quantize_dropout_cutoff_index=2)
    assert min(rvq2.draw_dropout_index() for _ in range(300)) == 2
    # eval never drops
    rvq.eval().quantize_dropout_prob = 1.0
    assert (rvq(x)[1] >= 0).all()
    with pytest.raises(ValueError):
        ResidualVQ(num_quantizers=6, quantize_dropout_cutoff_index=6)


def test_own_checkpoint_keeps_ema_state(tmp_path) -> None:
    model = tiny_model()
    model.part = None
    model.train()
    for _ in range(3):
        model(torch.randn(4, 32, 12))
    path = save_torch({**model.checkpoint_payload(), "iteration": 3}, tmp_path / "ckpt.pth")
    loaded = load_rvqvae(path)
    assert not loaded.training
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    for a, b in zip(model.quantizer.layers, loaded.quantizer.layers):
        assert torch.equal(a.code_sum, b.code_sum) and torch.equal(a.code_count, b.code_count)
        assert not torch.all(b.code_count == 1)  # real EMA statistics, not the "just loaded" defaults
    with pytest.raises(KeyError, match="'net'"):
        load_rvqvae(save_torch({"model": {}}, tmp_path / "bad.pth"))
