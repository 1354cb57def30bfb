"""Networks: fixture equivalence with upstream (modality encoder, denoiser), shapes, options and layer behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.denoiser import GestureDenoiser
from models.layers.attention import DropPath, JointAttention, MultiheadSelfAttention
from models.layers.embeddings import RotaryEmbedding, TimestepEmbedding, timestep_embedding
from models.layers.wav_encoder import ExactLengthAdjuster, WavEncoder
from models.modality_encoder import ModalityEncoder
from tests.conftest import FIXTURES, need

ATOL = 1e-5  # float-precision table: denoiser float32 vs float64 differs by 2.9e-6 at |x| <= 5.2


def _load_fixture(name: str):
    z = np.load(need(FIXTURES / name))
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    return z, json.loads(str(z["ctor_json"])), sd


# ------------------------------------------------------------------------------------------ fixture parity
@pytest.fixture(scope="module")
def denoiser_fixture():
    z, ctor, sd = _load_fixture("denoiser_small_v2.npz")
    model = GestureDenoiser(**ctor["params"]).eval()
    model.load_state_dict(sd, strict=True)
    return z, model


def _t(z, key):
    return torch.from_numpy(z[key])


@pytest.mark.parametrize(
    "case",
    [
        "out_cond_time",
        "out_cond_time_zero",
        "out_no_cond_time",
        "out_null_cond",
        "out_int_timesteps_no_cond_time",
        "out_4d_input",
    ],
)
def test_denoiser_matches_upstream_fixture(denoiser_fixture, case):
    z, model = denoiser_fixture
    x, t, d, at = _t(z, "x"), _t(z, "timesteps_float"), _t(z, "cond_time"), _t(z, "at_feat")
    if case == "out_cond_time_zero":
        d = torch.zeros(2)
    elif case == "out_no_cond_time":
        d = None
    elif case == "out_null_cond":
        at = model.null_cond_embed[None].expand(2, -1, -1)
    elif case == "out_int_timesteps_no_cond_time":
        t, d = _t(z, "timesteps_int"), None
        assert t.dtype == torch.int64
    elif case == "out_4d_input":
        x = _t(z, "x_4d")
    with torch.no_grad():
        out = model(x, t, d, _t(z, "seed"), at)
    ref = _t(z, case)
    assert out.shape == ref.shape == (2, 384, 1, 32)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_denoiser_fixture_options_change_output(denoiser_fixture):
    """Clean variants load the same weights (same keys) but compute something else."""
    z, ref_model = denoiser_fixture
    _, ctor, sd = _load_fixture("denoiser_small_v2.npz")
    args = (_t(z, "x"), _t(z, "timesteps_float"), _t(z, "cond_time"), _t(z, "seed"), _t(z, "at_feat"))
    with torch.no_grad():
        ref = ref_model(*args)
        for opts in ({"cross_attn_layout": "per_frame"}, {"joint_residual": "clean"}):
            m = GestureDenoiser(**ctor["params"], **opts).eval()
            m.load_state_dict(sd, strict=True)
            out = m(*args)
            assert out.shape == ref.shape and torch.isfinite(out).all()
            assert (out - ref).abs().max() > 1e-2, opts


@pytest.fixture(scope="module")
def encoder_fixture():
    z, ctor, sd = _load_fixture("modality_encoder_small_v2.npz")
    vocab = sd["text_pre_encoder_body.weight"].shape[0]
    model = ModalityEncoder(vocab_size=vocab, **ctor["params"]).eval()
    model.load_state_dict(sd, strict=True)
    return z, model


@pytest.mark.parametrize("samples", [68266, 68224, 60000, 72000])
def test_modality_encoder_matches_upstream_fixture(encoder_fixture, samples):
    z, model = encoder_fixture
    audio = _t(z, f"audio_{samples}")
    word = _t(z, "word")[: audio.shape[0]]
    with torch.no_grad():
        raw = model.encode_audio(audio, adjust=False)
        wav = model.encode_audio(audio)
        at = model(audio, word)
    assert raw.shape[1] == int(z[f"wav_feat_raw_len_{samples}"]) == WavEncoder.output_length(samples)
    torch.testing.assert_close(wav, _t(z, f"wav_feat_{samples}"), atol=ATOL, rtol=0)
    torch.testing.assert_close(at, _t(z, f"at_feat_{samples}"), atol=ATOL, rtol=0)


def test_text_branch_matches_fixture(encoder_fixture):
    z, model = encoder_fixture
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(_t(z, "word")), _t(z, "text_feat"), atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------ full-size shapes
@pytest.fixture(scope="module")
def full_models():
    torch.manual_seed(0)
    enc = ModalityEncoder(vocab_size=11195).eval()
    den = GestureDenoiser().eval()
    return enc, den


@pytest.mark.parametrize("samples,raw_len", [(68266, 128), (68224, 128), (16000, 31), (160000, 297)])
def test_full_size_encoder_denoiser_shapes(full_models, samples, raw_len):
    enc, den = full_models
    b = 2
    audio = torch.rand(b, samples, 2)
    word = torch.randint(0, 11195, (b, 128))
    with torch.no_grad():
        assert enc.encode_audio(audio[:1], adjust=False).shape == (1, raw_len, 256)
        at = enc(audio, word)
        assert at.shape == (b, 32, 768)
        out = den(torch.randn(b, 384, 1, 32), torch.rand(b), torch.full((b,), 0.5), torch.randn(b, 4, 384), at)
    assert out.shape == (b, 384, 1, 32) and torch.isfinite(out).all()


def test_parameter_counts_match_upstream(full_models):
    enc, den = full_models
    assert sum(p.numel() for p in den.parameters()) == 30_628_224
    assert sum(p.numel() for p in enc.parameters()) == 7_156_900
    assert sum(p.numel() for p in enc.text_pre_encoder_body.parameters()) == 11195 * 300


def test_wav_encoder_output_length_formula():
    # spec §6: 68224/68266 -> 128, 16000 -> 31, 160000 -> 297 (total stride 540, first padding 1700)
    assert [WavEncoder.output_length(s) for s in (68224, 68266, 16000, 160000)] == [128, 128, 31, 297]
    enc = WavEncoder(out_dim=16).eval()
    with torch.no_grad():
        for s in (20000, 33333):
            assert enc(torch.zeros(1, s, 2)).shape == (1, WavEncoder.output_length(s), 16)


def test_exact_length_adjuster_pads_with_last_frame_and_truncates():
    adj = ExactLengthAdjuster(5)
    x = torch.arange(6.0).view(1, 3, 2)  # frames [0,1], [2,3], [4,5]
    padded = adj(x)
    assert padded.shape == (1, 5, 2)
    assert padded[0, 3:].tolist() == [[4.0, 5.0], [4.0, 5.0]] and torch.equal(padded[:, :3], x)
    long = torch.arange(14.0).view(1, 7, 2)
    assert torch.equal(adj(long), long[:, :5])


# ------------------------------------------------------------------------------------------ modality encoder options
def test_word_table_from_weights_and_freezing():
    w = np.random.default_rng(0).standard_normal((10, 300)).astype(np.float32)
    enc = ModalityEncoder(word_weights=w, audio_dim=16, latent_dim=8)
    assert torch.equal(enc.text_pre_encoder_body.weight.detach(), torch.from_numpy(w))
    assert enc.text_pre_encoder_body.weight.requires_grad
    frozen = ModalityEncoder(word_weights=torch.from_numpy(w), t_fix_pre=True, audio_dim=16, latent_dim=8)
    assert not frozen.text_pre_encoder_body.weight.requires_grad
    with pytest.raises(ValueError, match="exactly one"):
        ModalityEncoder(audio_dim=16, latent_dim=8)
    with pytest.raises(ValueError, match="exactly one"):
        ModalityEncoder(word_weights=w, vocab_size=10)


def test_raw_audio_branch_shapes_and_errors():
    enc = ModalityEncoder(vocab_size=10, audio_dim=16, latent_dim=8, raw_audio=True).eval()
    assert enc.mix_audio_text.in_features == 16 + 8 + 16 and enc.raw_audio_proj.in_features == 1024
    audio, word = torch.rand(2, 68266, 2), torch.randint(0, 10, (2, 128))
    with torch.no_grad():
        assert enc(audio, word, raw_audio_feat=torch.randn(2, 128, 1024)).shape == (2, 32, 24)
    with pytest.raises(ValueError, match="raw_audio_feat"):
        enc(audio, word)
    plain = ModalityEncoder(vocab_size=10, audio_dim=16, latent_dim=8)
    with pytest.raises(ValueError, match="raw_audio=False"):
        plain(audio, word, raw_audio_feat=torch.randn(2, 128, 1024))


def test_v1_mode_without_length_adjust_rejects_mismatched_audio():
    enc = ModalityEncoder(vocab_size=10, audio_dim=16, latent_dim=8, length_adjust=False).eval()
    word = torch.randint(0, 10, (1, 128))
    with torch.no_grad():
        assert enc(torch.rand(1, 68266, 2), word).shape == (1, 32, 24)
        with pytest.raises(ValueError, match="112 frames"):
            enc(torch.rand(1, 60000, 2), word)


# ------------------------------------------------------------------------------------------ denoiser options/errors
def _small_denoiser(**kw) -> GestureDenoiser:
    torch.manual_seed(0)
    return GestureDenoiser(latent_dim=32, ff_size=64, num_layers=2, cond_proj_dim=32, **kw)


def _small_inputs(b=2):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(b, 384, 1, 32, generator=g),
        torch.rand(b, generator=g),
        torch.rand(b, generator=g),
        torch.randn(b, 4, 384, generator=g),
        torch.randn(b, 32, 96, generator=g),
    )


def test_fresh_denoiser_ignores_step_size_and_has_zero_null_cond():
    m = _small_denoiser().eval()
    x, t, d, seed, at = _small_inputs()
    assert torch.count_nonzero(m.null_cond_embed) == 0
    assert torch.count_nonzero(m.time_embedding.cond_proj.weight) == 0
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, d, seed, at), m(x, t, None, seed, at), atol=0, rtol=0)


def test_scalar_timesteps_broadcast():
    m = _small_denoiser().eval()
    x, _, _, seed, at = _small_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            m(x, 0.25, 0.5, seed, at), m(x, torch.full((2,), 0.25), torch.full((2,), 0.5), seed, at)
        )
        torch.testing.assert_close(m(x, 17, None, seed, at), m(x, torch.tensor([17, 17]), None, seed, at))


def test_denoiser_rejects_bad_shapes_and_options():
    m = _small_denoiser().eval()
    x, t, d, seed, at = _small_inputs()
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(2, 383, 1, 32), t, d, seed, at)
    with pytest.raises(ValueError, match="at_feat must be"):
        m(x, t, d, seed, at[:, :16])
    with pytest.raises(ValueError, match="seed must be"):
        m(x, t, d, seed[:, :3], at)
    with pytest.raises(ValueError, match="timesteps"):
        m(x, torch.rand(3), d, seed, at)
    with pytest.raises(ValueError, match="cross_attn_layout"):
        _small_denoiser(cross_attn_layout="permute")
    with pytest.raises(ValueError, match="joint_residual"):
        _small_denoiser(joint_residual="none")
    with pytest.raises(ValueError, match="rope must be"):
        _small_denoiser(rope="abs")
    with pytest.raises(ValueError, match="rope='qk' needs joint_residual='clean'"):
        _small_denoiser(rope="qk")


@pytest.mark.parametrize("layout", ["reference", "per_frame"])
def test_cross_attention_query_layout(layout):
    """reference: query row r = flat part-major tokens 3r..3r+2 (the view quirk); per_frame: row t = frame t's parts."""
    m = _small_denoiser(cross_attn_layout=layout).eval()
    seen = {}
    m.rel_pos.register_forward_hook(lambda mod, inp, out: seen.__setitem__("tokens", out))
    m.cross_attn_blocks[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__("query", args[0]))
    with torch.no_grad():
        m(*_small_inputs())
    tok, q = seen["tokens"], seen["query"]  # (B, 3, 32, 32), (B, 32, 96)
    flat = tok.reshape(2, 96, 32)
    for r in (0, 5, 31):
        if layout == "reference":
            expect = flat[:, 3 * r : 3 * r + 3].reshape(2, 96)
        else:
            expect = tok[:, :, r].reshape(2, 96)
        torch.testing.assert_close(q[:, r], expect, atol=0, rtol=0)


def test_backward_reaches_all_used_parameters():
    m = _small_denoiser().train()
    x, t, d, seed, _ = _small_inputs()
    with torch.no_grad():
        m.time_embedding.cond_proj.weight.normal_(0, 0.02)
    out = m(x, t, d, seed, m.null_cond_embed[None].expand(2, -1, -1))
    out.square().mean().backward()
    dead = ("sequence_pos_encoder", "embed_timestep", ".norm1.")  # allocated but unused upstream
    for name, p in m.named_parameters():
        used = not any(k in name for k in dead) or name.startswith("cross_attn_blocks")
        if used:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name


# ------------------------------------------------------------------------------------------ layers
def test_timestep_embedding_matches_diffusers_formula():
    t = torch.tensor([0.0, 0.3, 17.0, 950.0])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=True, freq_shift=0.0)
    freqs = [math.exp(-math.log(1e4) * i / 4) for i in range(4)]
    expect = [[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expect), atol=2e-5, rtol=0)  # float32 args at t=950
    shifted = timestep_embedding(t, 8, flip_sin_to_cos=False, freq_shift=1.0)
    freqs1 = [math.exp(-math.log(1e4) * i / 3) for i in range(4)]
    expect1 = [[math.sin(v * f) for f in freqs1] + [math.cos(v * f) for f in freqs1] for v in t.tolist()]
    torch.testing.assert_close(shifted, torch.tensor(expect1), atol=2e-5, rtol=0)
    diffusers = pytest.importorskip("diffusers.models.embeddings")
    ref = diffusers.get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 256), ref, atol=1e-6, rtol=0)


def test_timestep_embedding_cond_proj_adds_projected_condition():
    te = TimestepEmbedding(4, 6, act_fn="gelu", cond_proj_dim=3, zero_init_cond_proj=False)
    s, c = torch.randn(2, 4), torch.randn(2, 3)
    expect = te.linear_2(nn.functional.gelu(te.linear_1(s + c @ te.cond_proj.weight.T)))
    torch.testing.assert_close(te(s, c), expect)
    with pytest.raises(ValueError, match="cond_proj_dim"):
        TimestepEmbedding(4, 6)(s, c)


def test_rotary_embedding_is_relative_and_norm_preserving():
    rope = RotaryEmbedding(16)
    torch.testing.assert_close(rope.inv_freq[:3], torch.tensor([1.0, 10000 ** (-2 / 16), 10000 ** (-4 / 16)]))
    q, k = torch.randn(16), torch.randn(16)
    seq_q, seq_k = q.expand(10, 16).clone(), k.expand(10, 16).clone()
    rq, rk = rope(seq_q[None], seq_dim=1)[0], rope(seq_k[None], seq_dim=1)[0]
    torch.testing.assert_close(rq.norm(dim=-1), seq_q.norm(dim=-1))
    torch.testing.assert_close(rq[0], q)  # position 0 is the identity
    torch.testing.assert_close(rq[3] @ rk[1], rq[7] @ rk[5], atol=1e-5, rtol=0)  # depends on m - n only


def test_fused_self_attention_equals_nn_multihead_attention():
    torch.manual_seed(0)
    ours = MultiheadSelfAttention(32, 4).eval()
    ref = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        ours.in_proj_bias.normal_()
        ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-6, rtol=0)


def test_joint_attention_residual_modes_with_zero_attention():
    """With zeroed output projections the attention updates vanish: clean returns 0, reference the rotated input."""
    x = torch.randn(2, 3, 5, 8)
    outs = {}
    for mode in ("reference", "clean"):
        ja = JointAttention(8, 2, residual=mode)
        for att in (ja.temporal_attention, ja.spatial_attention):
            nn.init.zeros_(att.out_proj.weight)
        outs[mode] = ja(x)
    assert torch.count_nonzero(outs["clean"]) == 0
    xt = ja._rotate(x.reshape(6, 5, 8), ja.temporal_pos).view(2, 3, 5, 8)
    xs = ja._rotate(xt.transpose(1, 2).reshape(10, 3, 8), ja.spatial_pos).view(2, 5, 3, 8).transpose(1, 2)
    torch.testing.assert_close(outs["reference"], xs)


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(1000, 4)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.4 < kept < 0.6 and set(torch.unique(y).tolist()) <= {0.0, 2.0}
    assert (y == y[:, :1]).all()  # whole samples are dropped


def test_frame_cond_gives_the_condition_a_position():
    """Without frame_cond the cross-attention keys carry no position: permuting the condition over time leaves the
    output unchanged. With frame_cond (once trained, i.e. non-zero), frame i's condition reaches frame i."""
    from models.denoiser import GestureDenoiser

    torch.manual_seed(0)
    kw = dict(latent_dim=32, ff_size=64, num_layers=1, num_heads=4, dropout=0.0, cond_proj_dim=32, num_cross_layers=1)
    x, seed, cond = torch.randn(1, 384, 1, 32), torch.randn(1, 4, 384), torch.randn(1, 32, 96)
    perm = torch.randperm(32)
    ref = GestureDenoiser(**kw).eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(x, 0.5, None, seed, cond), ref(x, 0.5, None, seed, cond[:, perm]))
    fc = GestureDenoiser(frame_cond=True, **kw).eval()
    assert torch.count_nonzero(fc.frame_cond_proj.weight) == 0  # zero-init: starts as the reference model
    fc.load_state_dict(
        {**ref.state_dict(), **{f"frame_cond_proj.{k}": v for k, v in fc.frame_cond_proj.state_dict().items()}}
    )
    with torch.no_grad():
        torch.testing.assert_close(fc(x, 0.5, None, seed, cond), ref(x, 0.5, None, seed, cond))
        torch.nn.init.normal_(fc.frame_cond_proj.weight, std=0.05)
        a, b = fc(x, 0.5, None, seed, cond), fc(x, 0.5, None, seed, cond[:, perm])
    assert (a - b).abs().max() > 1e-3
    assert "frame_cond_proj.weight" not in ref.state_dict()  # released checkpoints are unaffected


def test_qk_rope_rotates_queries_and_keys_only():
    """rope='qk': each sub-attention is softmax(R q (R k)^T / sqrt(d)) v with R the RoPE rotation, v unrotated."""
    torch.manual_seed(0)
    ja = JointAttention(8, 2, residual="clean", rope="qk").eval()
    x = torch.randn(2, 3, 5, 8)

    def by_hand(xx, att, rope):
        q, k, v = F.linear(xx, att.in_proj_weight, att.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(t.shape[0], t.shape[1], 2, 4).transpose(1, 2) for t in (q, k, v))  # (N, H, L, 4)
        q, k = rope(q, seq_dim=2), rope(k, seq_dim=2)
        w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        return att.out_proj((w @ v).transpose(1, 2).reshape(xx.shape))

    upd_t = by_hand(x.reshape(6, 5, 8), ja.temporal_attention, ja.temporal_pos).view(2, 3, 5, 8)
    xs = (x + upd_t).transpose(1, 2).reshape(10, 3, 8)
    upd_s = by_hand(xs, ja.spatial_attention, ja.spatial_pos).view(2, 5, 3, 8).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(ja(x), upd_t + upd_s, atol=1e-6, rtol=1e-5)


def test_qk_rope_denoiser_has_no_absolute_position():
    """With identical tokens and an identical condition at every frame, the translation-free variant (rope='qk',
    joint_residual='clean', cross_attn_layout='per_frame') gives the same output at every frame; the reference
    rotates features by position, so its frames differ. Both load the same state dict."""
    torch.manual_seed(0)
    kw = dict(latent_dim=32, ff_size=64, num_layers=2, num_heads=4, dropout=0.0, cond_proj_dim=32, frame_cond=True,
              cross_attn_layout="per_frame")
    ref = GestureDenoiser(joint_residual="reference", **kw).eval()
    qk = GestureDenoiser(joint_residual="clean", rope="qk", **kw).eval()
    qk.load_state_dict(ref.state_dict(), strict=True)
    torch.nn.init.normal_(qk.frame_cond_proj.weight, std=0.05)
    x = torch.randn(2, 384, 1, 1).expand(2, 384, 1, 32)
    cond = torch.randn(2, 1, 96).expand(2, 32, 96)
    seed = torch.randn(2, 4, 384)
    with torch.no_grad():
        out_qk, out_ref = qk(x, 0.3, None, seed, cond), ref(x, 0.3, None, seed, cond)
    assert (out_qk - out_qk[..., :1]).abs().max() < 1e-5
    assert (out_ref - out_ref[..., :1]).abs().max() > 1e-2
