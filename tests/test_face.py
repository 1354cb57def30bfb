"""The face as a generated part (issue 18): the face_jaw RVQ part, the 4-part codec, face-on training, GT
substitution only when asked (and recorded), the vertex-free face metrics and the jaw correlation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dataloaders.stats import load_stats
from dataloaders.synthetic import generate_corpus
from geometry.rotations import rot6d_to_poses
from geometry.skeleton import FACE_PART, generator_parts, part_dim, part_frame_indices
from inference.generate import copy_gt_fields, generate_file, gt_copied_fields, inference_copy_gt
from inference.loading import build_codec, build_generator_from_config, window_options
from models.generators.base import randn, to_generator_layout
from models.motion_codec import MotionCodec
from tests.motion import random_rvq_files
from trainers.generative import GenerativeTrainer
from utils.config import ConfigError, load_config

PARTS = generator_parts(face=True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A 1-speaker corpus (2 train, 1 val, 1 test file of 8 s) and four random tiny RVQ-VAEs (code_dim 128)."""
    root = tmp_path_factory.mktemp("face")
    corpus = generate_corpus(root / "corpus", speakers=1, files_per_speaker=4, seconds=8, seed=5)
    paths = random_rvq_files(PARTS, root / "rvq", seed=200)
    return {"root": root, "corpus": corpus, "rvq": paths}


def overrides(assets, **over) -> list[str]:
    o = {"data.root": str(assets["corpus"]), "data.cache_dir": str(assets["root"] / "cache"),
         "data.training_speakers": "[1]", "output_dir": str(assets["root"] / "out"),
         **{f"rvq.{p}": assets["rvq"][p] for p in PARTS}, "batch_size": 4, "solver.epochs": 3, "val_period": 0,
         "logging": "[jsonl]", "val.max_files": 1, "test.n_boot": 10, "solver.lr": 2e-3}  # fmt: skip
    o.update({k: str(v) for k, v in over.items()})
    return [f"{k}={v}" for k, v in o.items()]


def face_cfg(assets, **over):
    return load_config("configs/shortcut_face_tiny.yaml", overrides(assets, **over))


# ------------------------------------------------------------------------------------------------ part and codec
def test_face_jaw_part_is_jaw_rot6d_then_expressions():
    idx = part_frame_indices(FACE_PART)
    assert part_dim(FACE_PART) == 106 and part_dim("face") == 100  # the reference's part is unchanged
    np.testing.assert_array_equal(idx[:6], np.arange(132, 138))  # joint 22's rot6d in the 433-D frame vector
    np.testing.assert_array_equal(idx[6:], np.arange(333, 433))
    assert PARTS == ("upper", "hands", "lower_trans", "face_jaw")


@pytest.fixture(scope="module")
def codecs(assets):
    cfg = face_cfg(assets)
    from dataloaders.prepare import prepare_data

    prepare_data(cfg.data)
    stats = load_stats(cfg.data)
    four = build_codec(cfg, stats)
    three = build_codec(load_config("configs/shortcut_tiny.yaml", overrides(assets)), stats)
    return {"four": four, "three": three, "stats": stats, "cfg": cfg}


def _motion(assets, n: int = 64):
    d = np.load(sorted((assets["corpus"] / "smplxflame_30").glob("*.npz"))[0])
    poses = torch.from_numpy(d["poses"][:n].astype(np.float32))[None]
    tv = torch.zeros(1, n, 3)
    exp = torch.from_numpy(d["expressions"][:n].astype(np.float32))[None]
    return poses, tv, exp


def test_four_part_codec_round_trip(assets, codecs):
    four, three = codecs["four"], codecs["three"]
    assert four.has_face and not three.has_face
    assert four.latent_dim == 512 and three.latent_dim == 384  # the width follows the parts, never a constant
    poses, tv, exp = _motion(assets)
    z4 = four.encode(poses, tv, exp)
    z3 = three.encode(poses, tv)
    assert z4.shape == (1, 16, 512)
    torch.testing.assert_close(z4[..., :384], z3, rtol=0, atol=0)  # the body latents are the 3-part codec's
    d4, d3 = four.decode(z4), three.decode(z3)
    body = np.setdiff1d(np.arange(165), np.arange(66, 75))
    torch.testing.assert_close(d4["poses"][..., body], d3["poses"][..., body], rtol=0, atol=0)
    assert d3["expressions"] is None and not d3["poses"][..., 66:75].any()
    # the face slice decodes exactly as the face RVQ-VAE reconstructs its own input: jaw rot6d, then expressions
    x = four.normalise_parts(poses, tv, exp)[FACE_PART]
    with torch.no_grad():
        rec = four.vqs[FACE_PART].reconstruct(x)["rec"]
    torch.testing.assert_close(d4["expressions"], rec[..., 6:])
    idx = torch.arange(132, 138)
    jaw_r6 = rec[..., :6] * four.rot6d_std[idx] + four.rot6d_mean[idx]
    torch.testing.assert_close(d4["poses"][..., 66:69], rot6d_to_poses(jaw_r6))
    assert d4["poses"][..., 66:69].abs().sum() > 0 and not d4["poses"][..., 69:75].any()  # eyes never generated
    # a GT jaw still overrides the generated one when asked
    jaw = torch.full((1, 64, 3), 0.1)
    torch.testing.assert_close(four.decode(z4, jaw=jaw)["poses"][..., 66:69], jaw)
    assert four.mean_latent(2, 4).shape == (2, 4, 512)


def test_face_codec_needs_expressions(assets, codecs):
    poses, tv, _ = _motion(assets)
    with pytest.raises(ValueError, match="expressions"):
        codecs["four"].encode(poses, tv)
    with pytest.raises(ValueError, match="expressions must be"):
        codecs["four"].encode(poses, tv, torch.zeros(1, 64, 50))
    with pytest.raises(ValueError, match="unknown part"):
        MotionCodec({**dict(codecs["three"].vqs), "face": codecs["four"].vqs[FACE_PART]}, *[np.zeros(330)] * 2,
                    np.zeros(3), np.ones(3))  # fmt: skip


# ------------------------------------------------------------------------------------------------ config checks
def test_face_config_errors(assets):
    with pytest.raises(ConfigError, match="rvq.face_jaw"):
        build_codec(face_cfg(assets, **{"rvq.face_jaw": "null"}), load_stats(face_cfg(assets).data))
    bad = load_config("configs/shortcut_tiny.yaml", overrides(assets, **{
        "model.generator.params.denoiser.params.use_exp": "true"}))  # fmt: skip
    with pytest.raises(ConfigError, match="use_exp=True but face=False"):
        build_generator_from_config(bad)
    with pytest.raises(ConfigError, match="unknown field"):
        copy_gt_fields("jaw,eyes")
    with pytest.raises(ConfigError, match="inference.copy_gt"):
        inference_copy_gt({"copy_gt_jaw": True})
    assert copy_gt_fields(["trans", "jaw"]) == ("jaw", "trans") and copy_gt_fields(None) == ()


# ------------------------------------------------------------------------------------------------ training
def _face_flow_error(tr: GenerativeTrainer) -> float:
    """Velocity error of the model on the face channels (384-511) only, at fixed noise and times, 8 windows."""
    batch = tr.collate_fn([tr.train_dataset[i] for i in range(8)])
    model = tr.model
    model.eval()
    with torch.no_grad():
        z = tr.latents(batch["pose"], batch["trans_v"], batch["facial"])
        data = to_generator_layout(z)
        g = torch.Generator().manual_seed(0)
        noise = randn(tuple(data.shape), data, g)
        t = torch.linspace(0.1, 0.9, data.shape[0])
        ps = model.objective.path.sample(noise, data, t)
        cond = model.encode(batch["audio"], batch["word"])
        pred = model.net(ps.x_t, t, torch.zeros_like(t), z[:, :4], cond)
    tr.set_train_mode()
    return float(((pred - ps.velocity)[:, 384:] ** 2).mean())


@pytest.fixture(scope="module")
def face_run(assets, tmp_path_factory):
    """One short face-on shortcut run (3 epochs) shared by the tests below."""
    cfg = face_cfg(assets)
    run = tmp_path_factory.mktemp("face_run") / "run"
    with GenerativeTrainer(cfg, run_dir=run) as tr:
        shapes = (tr.codec.has_face, tr.model.latent_channels, tr.model.denoiser.n_parts,
                  tr.model.modality_encoder.out_dim)  # fmt: skip
        before = _face_flow_error(tr)
        tr.fit()
        after = _face_flow_error(tr)
    return {"cfg": cfg, "run": run, "ckpt": run / "checkpoints" / "last.pt", "shapes": shapes, "before": before,
            "after": after}  # fmt: skip


def test_face_on_training_learns_the_face(assets, face_run, tmp_path):
    assert face_run["shapes"] == (True, 512, 4, 4 * 32)
    assert face_run["after"] < 0.8 * face_run["before"], (face_run["before"], face_run["after"])
    cfg, ckpt = face_run["cfg"], face_run["ckpt"]

    # generation: the face is generated, nothing copied unless asked, and every copy is recorded
    from dataloaders.datasets import WholeFileDataset
    from inference.loading import load_trained_generator

    model = load_trained_generator(cfg, ckpt, torch.device("cpu"))
    codec = build_codec(cfg, load_stats(cfg.data))
    opts = window_options(cfg)
    item = WholeFileDataset(cfg.data, "test")[0]
    own = generate_file(model, codec, item, opts, torch.device("cpu"))
    n = own["n_frames"]
    gt_exp, gt_jaw = item["facial"][:n].numpy(), item["pose"][:n, 66:69].numpy()
    assert own["expressions"].shape == (n, 100) and np.abs(own["expressions"]).sum() > 0
    assert not np.allclose(own["expressions"], gt_exp) and not np.allclose(own["poses"][:, 66:69], gt_jaw)
    assert gt_copied_fields(opts, ()) == ["seed"]
    copied = generate_file(model, codec, item, opts, torch.device("cpu"), copy_gt=("jaw", "expressions", "trans"))
    np.testing.assert_array_equal(copied["expressions"], gt_exp)
    np.testing.assert_array_equal(copied["poses"][:, 66:69], gt_jaw)
    np.testing.assert_array_equal(copied["trans"], item["trans"][:n].numpy())
    np.testing.assert_array_equal(copied["poses"][:, :66], own["poses"][:, :66])  # same body: only fields copied
    assert gt_copied_fields(opts, ("jaw", "expressions", "trans")) == ["jaw", "expressions", "trans", "seed"]

    # test.py model mode: --copy-gt is recorded in the npz and metrics.json; the face metrics are there
    import test as test_entry

    out = tmp_path / "t"
    rc = test_entry.main(["-c", "configs/shortcut_face_tiny.yaml", "--ckpt", str(ckpt), "--out", str(out),
                          "--copy-gt", "jaw,expressions", *overrides(assets)])  # fmt: skip
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["gt_copied"] == ["jaw", "expressions", "seed"] and m["generation"]["copy_gt"] == ["jaw", "expressions"]
    assert m["generation"]["fields"]["expressions"] == "ground truth"
    assert m["metrics"]["face_param_mse"] == 0.0 and m["metrics"]["jaw_corr"] == pytest.approx(1.0)
    assert any("trivially" in note for note in m["notes"])
    res = np.load(next(out.glob("res_*.npz")))
    assert res["gt_copied"].tolist() == ["jaw", "expressions", "seed"]
    out2 = tmp_path / "t2"
    assert test_entry.main(["-c", "configs/shortcut_face_tiny.yaml", "--ckpt", str(ckpt), "--out", str(out2),
                            *overrides(assets)]) == 0  # fmt: skip
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["gt_copied"] == ["seed"] and m2["generation"]["fields"]["jaw"] == "generated"
    assert m2["metrics"]["face_param_mse"] > 0 and m2["metrics"]["jaw_corr"] is not None


def test_face_from_user_audio_offline_and_streaming(assets, face_run, tmp_path):
    """gesture_inference's path: the jaw and expressions come from the model, the json says so, and the streaming
    path emits the same face as the offline one given the same features."""
    from inference.api import FACE_GENERATED, generate_from_audio, write_result
    from inference.model_source import load_model, resolve_model_source

    lm = load_model(resolve_model_source(face_run["ckpt"]), device="cpu")  # the checkpoint carries its config
    assert lm.codec.has_face
    wav = sorted((assets["corpus"] / "wave16k").glob("*.wav"))[0]
    res = generate_from_audio(lm, wav, seed=1, features="windowed")
    assert res.expressions.shape == (res.n_frames, 100) and np.abs(res.expressions).sum() > 0
    assert np.abs(res.poses[:, 66:69]).sum() > 0 and not res.poses[:, 69:75].any()
    npz, js = write_result(res, tmp_path)
    meta = json.loads(js.read_text())
    assert set(FACE_GENERATED) <= set(meta["fields"]["generated"]) and "expressions" not in meta["fields"][
        "neutral_defaults"]
    np.testing.assert_array_equal(np.load(npz)["expressions"], res.expressions)
    from inference.streaming import stream_file

    streamed = stream_file(lm, wav, seed=1, chunk_s=0.5)
    np.testing.assert_allclose(streamed.expressions, res.expressions, atol=1e-5)
    np.testing.assert_allclose(streamed.poses, res.poses, atol=1e-5)


# ------------------------------------------------------------------------------------------------ metrics
def test_face_param_metrics_hand_computed():
    from evaluation.metrics import face_param_metrics

    t = np.arange(60) / 30.0
    gt = np.zeros((60, 165))
    gt[:, 66] = 0.2 + 0.1 * np.sin(2 * np.pi * t)  # the jaw opens and closes at 1 Hz (2 periods)
    gt_exp = np.random.default_rng(0).normal(size=(60, 100))
    pred = gt.copy()
    pred[:, 66] = 0.4 + 0.3 * np.sin(2 * np.pi * t)  # same timing, larger: correlation 1
    pred_exp = gt_exp + 0.5  # a constant offset: squared error 0.25, no velocity error
    m = face_param_metrics(pred, pred_exp, gt, gt_exp)
    d = pred[:, 66] - gt[:, 66]
    assert m["face_param_mse"] == pytest.approx((np.sum(d**2) + 60 * 100 * 0.25) / (60 * 103))
    assert m["face_param_lvd"] == pytest.approx(np.abs(np.diff(d)).sum() / (59 * 103))
    assert m["jaw_corr"] == pytest.approx(1.0)
    late = np.roll(pred, 8, axis=0)  # ~a quarter period late (8 of 30 frames): cos(96 deg) = -0.10
    assert abs(face_param_metrics(late, pred_exp, gt, gt_exp)["jaw_corr"]) < 0.15
    still = face_param_metrics(np.zeros_like(gt), np.zeros_like(gt_exp), gt, gt_exp)
    assert still["jaw_corr"] is None  # a jaw that never moves has no correlation
    with pytest.raises(ValueError, match="same T"):
        face_param_metrics(pred, pred_exp[:10], gt, gt_exp)


def test_evaluator_pools_face_params_with_ci():
    from evaluation.evaluator import Evaluator

    rng = np.random.default_rng(1)
    ev = Evaluator(None, mean_vel=None)
    errs = []
    for k in range(4):
        gt = rng.normal(scale=0.1, size=(40 + 10 * k, 165)).astype(np.float32)
        exp = rng.normal(size=(gt.shape[0], 100)).astype(np.float32)
        off = 0.1 * (k + 1)
        ev.add(gt, gt, pred_expressions=exp + off, gt_expressions=exp, id=f"s{k}")
        errs.append((gt.shape[0], off**2 * 100 / 103))
    res = ev.compute(n_boot=50, seed=0)
    frames = np.array([e[0] for e in errs])
    want = float(np.sum(frames * [e[1] for e in errs]) / frames.sum())  # frame-weighted, as the vertex metrics
    assert res["face_param_mse"] == pytest.approx(want, rel=1e-5)
    assert res["jaw_corr"] == pytest.approx(1.0)
    lo, hi = res["ci95"]["face_param_mse"]
    assert lo <= res["face_param_mse"] <= hi
    ev_none = Evaluator(None, mean_vel=None)
    ev_none.add(gt, gt)
    assert "face_param_mse" not in ev_none.compute()  # no expressions given: not computed, never 0


# ------------------------------------------------------------------------------------------------ rendering
def test_smplx_render_shows_the_generated_face(tmp_path, monkeypatch):
    """--body smplx draws the npz's jaw and expressions (the mannequin has no face): opening the jaw or changing the
    expressions changes the picture, with the body identical."""
    from geometry.body_model import write_toy_smplx_model
    from render.motion import load_motion
    from render.video import RenderOptions, render_still
    from tests.render_helpers import arm_wave_motion, save

    monkeypatch.delenv("SMPLX_MODEL_PATH", raising=False)
    model = write_toy_smplx_model(tmp_path / "SMPLX_NEUTRAL_2020.npz")
    base = arm_wave_motion(3, still=True)
    neutral = save(tmp_path / "n.npz", **base, expressions=np.zeros((3, 100), np.float32))
    jaw = dict(base, poses=base["poses"].copy())
    jaw["poses"][:, 66] = 0.5
    opened = save(tmp_path / "j.npz", **jaw, expressions=np.zeros((3, 100), np.float32))
    smiling = save(tmp_path / "e.npz", **base, expressions=np.full((3, 100), 2.0, np.float32))
    opt = RenderOptions(body="smplx", smplx_model=str(model), width=320, height=240, progress=False)
    imgs = [render_still(load_motion(p), 0, opt).astype(int) for p in (neutral, opened, smiling)]
    assert np.abs(imgs[1] - imgs[0]).max() > 0 and np.abs(imgs[2] - imgs[0]).max() > 0
    assert np.abs(imgs[0] - render_still(load_motion(neutral), 0, opt).astype(int)).max() == 0  # deterministic


def test_corpus_jaw_follows_loudness_measurably(assets):
    """The synthetic corpus keeps the face measurable: each file's jaw opening follows its own speech loudness, and
    jaw_corr separates a file's own jaw from another file's."""
    import soundfile as sf

    from dataloaders.synthetic import loudness_envelope
    from evaluation.metrics import face_param_metrics

    files = sorted((assets["corpus"] / "smplxflame_30").glob("*.npz"))[:2]
    d = [np.load(f) for f in files]
    n = min(x["poses"].shape[0] for x in d)
    y, _ = sf.read(assets["corpus"] / "wave16k" / f"{files[0].stem}.wav")
    env = loudness_envelope(np.asarray(y, np.float32), d[0]["poses"].shape[0])
    assert np.corrcoef(np.linalg.norm(d[0]["poses"][:, 66:69], axis=1), env)[0, 1] > 0.9
    own = face_param_metrics(d[0]["poses"][:n], d[0]["expressions"][:n], d[0]["poses"][:n], d[0]["expressions"][:n])
    other = face_param_metrics(d[1]["poses"][:n], d[1]["expressions"][:n], d[0]["poses"][:n],
                               d[0]["expressions"][:n])  # fmt: skip
    assert own["jaw_corr"] == pytest.approx(1.0) and own["face_param_mse"] == 0.0
    assert abs(other["jaw_corr"]) < 0.3 and other["face_param_mse"] > 0
