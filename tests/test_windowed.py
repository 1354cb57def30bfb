"""Motion codec + windowed long-sequence generation vs the upstream `_load_data` + `_g_test` fixture, and the
whole-sequence mode (length, padding, seeds) on the same reduced models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geometry.rotations import poses_to_rot6d
from inference.windowed import WindowOptions, crossfade_junction, generate_windowed, plan_windows
from models.generators import build_generator
from models.generators.upstream import generator_node_from_upstream
from models.motion_codec import MotionCodec, trans_from_trans_v
from models.vq.rvqvae import RVQVAE
from tests.conftest import FIXTURES, need

FIXTURE = "trainer_windowed_small_v2.npz"
VQ_KEYS = {"upper": "vq_upper", "hands": "vq_hands", "lower_trans": "vq_lower"}


def _fixture():
    d = np.load(need(FIXTURES / FIXTURE))
    ctor = json.loads(str(d["ctor_json"]))
    rv = ctor["rvqvae"]
    widths = {"upper": rv["input_widths"]["upper"], "hands": rv["input_widths"]["hands"],
              "lower_trans": rv["input_widths"]["lower"]}  # fmt: skip
    vqs = {}
    for part, prefix in VQ_KEYS.items():
        m = RVQVAE(widths[part], nb_code=rv["nb_code"], code_dim=rv["code_dim"], width=rv["width"],
                   down_t=rv["down_t"], stride_t=rv["stride_t"], depth=rv["depth"],
                   dilation_growth_rate=rv["dilation_growth_rate"], activation=rv["activation"], norm=rv["norm"],
                   num_quantizers=rv["args"]["num_quantizers"],
                   quantize_dropout_prob=rv["args"]["quantize_dropout_prob"], mu=rv["args"]["mu"])  # fmt: skip
        sd = {k[len(prefix) + 1 :]: torch.from_numpy(d[k]) for k in d.files if k.startswith(prefix + "/")}
        m.load_state_dict(sd, strict=True)
        vqs[part] = m.eval()
    codec = MotionCodec(vqs, d["mean_330"], d["std_330"], d["trans_mean"], d["trans_std"],
                        latent_scale=ctor["trainer_cfg"]["latent_scale"])  # fmt: skip
    sd = {k[3:]: torch.from_numpy(d[k]) for k in d.files if k.startswith("sd/")}
    vocab = sd["modality_encoder.text_pre_encoder_body.weight"].shape[0]
    gen = build_generator(generator_node_from_upstream(ctor["generator"]["model_cfg"], vocab_size=vocab))
    gen.load_state_dict(sd, strict=True)
    return gen.eval(), codec, d


def _t(d, k):
    return torch.from_numpy(np.asarray(d[k]))


def _close(a: torch.Tensor, b: np.ndarray, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.detach().float().numpy(), b, rtol=1e-4, atol=atol)


@pytest.fixture(scope="module")
def fx():
    return _fixture()


def test_encode_matches_upstream_latent_in(fx):
    _, codec, d = fx
    z = codec.encode(_t(d, "in_pose"), _t(d, "in_trans_v"))
    assert z.shape == (1, 100, 384)
    _close(z, d["latent_in"])


def test_reference_windowed_generation_matches_upstream(fx):
    gen, codec, d = fx
    opts = WindowOptions(drop_tail=True, audio_indexing="reference", seed_from_gt=True)
    pose = _t(d, "in_pose")
    torch.manual_seed(777)
    out = generate_windowed(gen, codec, _t(d, "in_audio_onset"), _t(d, "in_word").long(), pose, _t(d, "in_trans_v"),
                            opts=opts, jaw=pose[..., 66:69], record=True)  # fmt: skip
    assert out.n_windows == int(d["n_windows"]) == 3
    _close(out.gt_latents, d["latent_in"])
    for i, w in enumerate(out.windows):
        np.testing.assert_array_equal(w["audio_slice"].numpy(), d[f"win{i}_audio_slice"])
        np.testing.assert_array_equal(w["word"].numpy(), d[f"win{i}_word"])
        _close(w["seed"], d[f"win{i}_seed"])
        _close(w["noise"], d[f"win{i}_init_noise"], atol=1e-6)  # same global-RNG draw order as upstream
        _close(w["at_feat"], d[f"win{i}_at_feat"])
        _close(w["latents"], d[f"win{i}_latents"], atol=3e-5)
    assert out.poses.shape == (1, 352, 165)
    _close(poses_to_rot6d(pose[:, :352]), d["out_tar_pose"])
    # Decoding upstream's own window latents reproduces its output, and so does the whole pipeline. Float32 op
    # order (ours vs upstream, and BLAS thread counts across machines) moves latents by ~1e-5, which can flip the
    # argmax of a few near-tied residual codes (16 codes per layer here): ~0.05% of the outputs move by <= 3e-4.
    lat = [_t(d, f"win{i}_latents").squeeze(2).permute(0, 2, 1) for i in range(3)]
    z = torch.cat([lat[0]] + [x[:, 4:] for x in lat[1:]], dim=1)
    _close_up_to_near_ties(poses_to_rot6d(codec.decode(z, jaw=pose[..., 66:69])["poses"]), d["out_rec_pose"])
    _close_up_to_near_ties(poses_to_rot6d(out.poses), d["out_rec_pose"])


def _close_up_to_near_ties(a: torch.Tensor, b: np.ndarray) -> None:
    err = np.abs(a.detach().float().numpy() - b)
    assert (err > 1e-5).mean() < 2e-3 and err.max() < 1e-3, (float((err > 1e-5).mean()), float(err.max()))


def test_whole_sequence_mode_returns_every_frame(fx):
    gen, codec, d = fx
    n = 383  # not a multiple of 8 nor of the hop
    pose, tv = _t(d, "in_pose")[:, :n], _t(d, "in_trans_v")[:, :n]
    audio = _t(d, "in_audio_onset")[:, : int(n / 30 * 16000)]
    word = _t(d, "in_word")[:, :n].long()
    opts = WindowOptions(drop_tail=False, audio_indexing="exact")
    plan = plan_windows(n, audio.shape[1], opts)
    assert plan.n_windows == 4 and plan.generated_frames == 16 + 4 * 112 >= n  # ceil((383-16)/112) = 4
    assert plan.audio_slices[1] == (round(112 * 16000 / 30), round(112 * 16000 / 30) + 68266)
    torch.manual_seed(0)
    out = generate_windowed(gen, codec, audio, word, pose, tv, opts=opts, record=True)
    assert out.poses.shape == (1, n, 165) and out.trans.shape == (1, n, 3) and out.n_frames == n
    assert torch.isfinite(out.poses).all()
    assert torch.all(out.poses[..., 66:75] == 0)  # jaw and eyes are never generated
    last = out.windows[-1]
    assert last["word"].shape == (1, 128) and torch.all(last["word"][:, n - 3 * 112 :] == opts.word_pad_id)
    # seeds chain: window i's seed is the last 4 latents of window i-1
    for a, b in zip(out.windows[:-1], out.windows[1:]):
        torch.testing.assert_close(b["seed"], a["latents"].squeeze(2).permute(0, 2, 1)[:, -4:])
    # the reference mode on the same input drops the tail
    ref = plan_windows(n, audio.shape[1], WindowOptions(drop_tail=True))
    assert ref.n_windows == 3 and ref.n_frames == 352


def test_seed_without_gt_uses_mean_pose_or_zeros(fx):
    gen, codec, d = fx
    audio, word = _t(d, "in_audio_onset")[:, :68266], _t(d, "in_word")[:, :128].long()
    out = generate_windowed(gen, codec, audio, word, opts=WindowOptions(seed_from_gt=False), record=True)
    torch.testing.assert_close(out.windows[0]["seed"], codec.mean_latent(1, 4))
    out0 = generate_windowed(gen, codec, audio, word, opts=WindowOptions(seed_from_gt=False, seed_fallback="zeros"),
                             record=True)  # fmt: skip
    assert torch.all(out0.windows[0]["seed"] == 0)
    with pytest.raises(ValueError, match="seed_from_gt"):
        generate_windowed(gen, codec, audio, word, opts=WindowOptions(seed_from_gt=True))


def test_codec_decode_shapes_and_jaw(fx):
    _, codec, d = fx
    z = _t(d, "latent_in")[:, :8]
    jaw = torch.randn(1, 32, 3)
    out = codec.decode(z, jaw=jaw)
    assert out["poses"].shape == (1, 32, 165) and out["trans_v"].shape == (1, 32, 3)
    torch.testing.assert_close(out["poses"][..., 66:69], jaw)
    assert torch.all(out["poses"][..., 69:75] == 0)


def test_trans_from_trans_v_integrates_xz_and_keeps_y():
    tv = torch.tensor([[[0.1, 1.3, -0.2], [0.1, 1.4, -0.2], [0.3, 1.2, 0.0]]])
    tr = trans_from_trans_v(tv)
    torch.testing.assert_close(tr, torch.tensor([[[0.1, 1.3, -0.2], [0.2, 1.4, -0.4], [0.5, 1.2, -0.4]]]))


def test_window_options_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown windowed"):
        WindowOptions.from_config({"drop_tial": True})
    with pytest.raises(ValueError, match="audio_indexing"):
        WindowOptions(audio_indexing="rounded")


def test_crossfade_junction_blends_linearly_towards_the_next_window():
    before = torch.zeros(1, 6, 2)
    before[:, 2:] = 1.0  # the last 4 are the next window's seed
    head = torch.full((1, 4, 2), 3.0)  # the next window's version of those frames
    out = crossfade_junction(before, head, 2)
    # untouched but the last 2, which move 1/3 and 2/3 of the way from 1 to 3
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 1 + 2 / 3, 1 + 4 / 3]))
    torch.testing.assert_close(crossfade_junction(before, head, 4)[0, 2:, 1], torch.tensor([1.4, 1.8, 2.2, 2.6]))
    with pytest.raises(ValueError, match="crossfade"):
        WindowOptions(crossfade=5)


def test_windowed_crossfade_changes_only_the_junction_latents(fx):
    gen, codec, d = fx
    n = 352
    pose, tv = _t(d, "in_pose")[:, :n], _t(d, "in_trans_v")[:, :n]
    audio, word = _t(d, "in_audio_onset")[:, : int(n / 30 * 16000)], _t(d, "in_word")[:, :n].long()
    outs = {}
    for k in (0, 4):
        torch.manual_seed(3)
        outs[k] = generate_windowed(gen, codec, audio, word, pose, tv, opts=WindowOptions(crossfade=k), record=True)
    a, b = outs[0], outs[4]
    assert a.n_windows == b.n_windows == 3
    for wa, wb in zip(a.windows, b.windows):  # the blend happens after each window: seeds and windows unchanged
        torch.testing.assert_close(wa["latents"], wb["latents"], rtol=0, atol=0)
    moved = (a.latents != b.latents).any(-1)[0]
    junction = torch.zeros_like(moved)
    for i in (1, 2):  # window i's seed latents sit at 28i .. 28i+3 of the kept sequence
        junction[28 * i : 28 * i + 4] = True
    assert moved[junction].all() and not moved[~junction].any()
    lat = [w["latents"].squeeze(2).permute(0, 2, 1) for w in a.windows]
    torch.testing.assert_close(b.latents[:, 28:32], crossfade_junction(lat[0], lat[1][:, :4], 4)[:, 28:32])
