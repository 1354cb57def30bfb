"""Audio representations that reach the generator (issue 18, item 3): log-mel and frozen WavLM features are cached per
file, train the tiny shortcut generator end to end and condition its output; inference from a wav computes the same
features; WavLM fine-tuned inside the encoder (data.wavlm_finetune) trains its transformer on the cached waveform;
unknown or mismatching options are load-time errors naming the config keys. WavLM is a tiny random model saved on
disk (transformers' WavLMModel.from_pretrained of a local folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataloaders.cache import open_cache, settings
from dataloaders.datasets import GeneratorWindowDataset, WholeFileDataset
from dataloaders.features import audio as A
from dataloaders.synthetic import generate_corpus
from geometry.skeleton import part_dim
from inference.loading import build_generator_from_config
from inference.windowed import generate_windowed, takes_frame_audio
from models.modality_encoder import ModalityEncoder
from models.vq.rvqvae import RVQVAE
from trainers.generative import GenerativeTrainer
from utils.config import ConfigError, load_config
from utils.io import save_torch
from utils.logging import read_metrics

RVQ_PARTS = ("upper", "hands", "lower_trans")
WAVLM_HIDDEN = 32


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A 1-speaker corpus (4 files of 8 s), three random tiny RVQ-VAEs and a tiny random WavLM on disk."""
    from transformers import WavLMConfig, WavLMModel

    root = tmp_path_factory.mktemp("audio_reps")
    corpus = generate_corpus(root / "corpus", speakers=1, files_per_speaker=4, seconds=8, seed=3)
    paths = {}
    for i, part in enumerate(RVQ_PARTS):
        torch.manual_seed(100 + i)
        m = RVQVAE(part_dim(part), nb_code=16, code_dim=128, width=16, depth=1, num_quantizers=2)
        with torch.no_grad():
            for layer in m.quantizer.layers:
                layer.codebook.normal_(0.0, 0.5)
        m.part = part
        paths[part] = str(save_torch(m.checkpoint_payload(), root / "rvq" / f"{part}.pt"))
    torch.manual_seed(0)
    # 320x down-sampling (50 Hz, as WavLM-Base) in 4 small conv layers; 2 transformer layers of width 32
    wcfg = WavLMConfig(hidden_size=WAVLM_HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16, 16, 16), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 4, 4, 4),
                       num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, num_buckets=16,
                       max_bucket_distance=32)  # fmt: skip
    WavLMModel(wcfg).save_pretrained(root / "wavlm")
    return {"root": root, "corpus": corpus, "rvq": paths, "wavlm": str(root / "wavlm")}


def make_cfg(assets, rep: str, **over):
    o = {
        "data.root": str(assets["corpus"]), "data.cache_dir": str(assets["root"] / "cache"),
        "data.training_speakers": "[1]", "output_dir": str(assets["root"] / "out"), "data.audio_rep": rep,
        "rvq.upper": assets["rvq"]["upper"], "rvq.hands": assets["rvq"]["hands"],
        "rvq.lower_trans": assets["rvq"]["lower_trans"], "batch_size": 4, "solver.epochs": "null",
        "solver.iterations": 4, "val_period": 0, "logging": "[jsonl]", "log_period": 1, "solver.lr": 2e-3,
    }  # fmt: skip
    if rep == "wavlm":
        o["data.wavlm_model"] = assets["wavlm"]
    o.update({k: str(v) for k, v in over.items()})
    return load_config("configs/shortcut_tiny.yaml", [f"{k}={v}" for k, v in o.items()])


@pytest.fixture(scope="module", params=["mel", "wavlm", "wavlm_finetune"])
def trained(request, assets, tmp_path_factory):
    """A 4-update shortcut run on one representation (shared by the tests below): log-mel, frozen WavLM features,
    or WavLM fine-tuned inside the encoder on the cached waveform."""
    finetune = request.param == "wavlm_finetune"
    rep = "wavlm" if finetune else request.param
    run = tmp_path_factory.mktemp(f"run_{request.param}") / "a"
    tr = GenerativeTrainer(make_cfg(assets, rep, **{"data.wavlm_finetune": str(finetune).lower()}), run_dir=run)
    before = {k: v.clone() for k, v in tr.model.modality_encoder.state_dict().items()}
    tr.fit()
    yield {"rep": rep, "finetune": finetune, "trainer": tr, "run": run, "before": before}
    tr.close()


def _dim(rep: str) -> int:
    return A.N_MELS if rep == "mel" else WAVLM_HIDDEN


def test_audio_is_cached_per_file(trained):
    tr, rep = trained["trainer"], trained["rep"]
    index = open_cache(tr.cfg.data, "train")
    assert index.settings["audio_rep"] == rep
    for e in index.entries:
        feat = e.load("audio")
        want = (e.n_frames * 16000 // 30, 1) if trained["finetune"] else (e.n_frames, _dim(rep))  # waveform | frames
        assert feat.shape == want and feat.dtype == np.float32 and np.isfinite(feat).all()
        if rep == "mel":  # log-mel: bounded below by log(1e-5), not raw power in [0, inf)
            assert feat.min() >= np.log(A.MEL_FLOOR) - 1e-4 and feat.min() < 0
    item = GeneratorWindowDataset(tr.cfg.data, "train")[0]
    # frame features are sliced by frames; the waveform by samples (floor(128/30 s * 16 kHz))
    assert tuple(item["audio"].shape) == ((68266, 1) if trained["finetune"] else (128, _dim(rep)))


def test_the_audio_branch_trains(trained):
    tr, rep = trained["trainer"], trained["rep"]
    enc = tr.model.modality_encoder
    assert enc.audio_rep == rep and takes_frame_audio(tr.model) is not trained["finetune"]
    keys = list(tr.model.state_dict())
    assert not any(".WavEncoder." in k for k in keys) and any(".frame_audio_encoder." in k for k in keys)
    after = enc.state_dict()
    changed = {k for k, v in trained["before"].items() if not torch.equal(after[k], v)}
    assert any(k.startswith("frame_audio_encoder.") for k in changed)  # it received gradients
    if trained["finetune"]:  # the WavLM transformer is trained, its convolutional feature encoder stays frozen
        assert any(k.startswith("wavlm.encoder.layers.") for k in changed)
        assert not any(k.startswith("wavlm.feature_extractor.") for k in changed)
        opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
        assert all(id(p) not in opt for p in enc.wavlm.feature_extractor.parameters())
    else:
        assert not any(k.startswith("wavlm.") for k in after)
    losses = [r["train/loss"] for r in read_metrics(trained["run"] / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_output_changes_when_the_audio_changes(trained):
    tr = trained["trainer"]
    model = tr.model.eval()
    batch = tr.collate_fn([tr.train_dataset[i] for i in range(2)])
    audio, word = batch["audio"], batch["word"]
    other = audio.flip(1)  # the same features, time-reversed: another audio track
    with torch.no_grad():
        c1, c2 = model.encode(audio, word), model.encode(other, word)
        assert (c1 - c2).abs().max() > 1e-4
        seed = torch.zeros(2, 4, 384)
        noise = torch.randn(2, 384, 1, 32, generator=torch.Generator().manual_seed(0))
        z1 = model.sample(audio, word, seed, noise=noise.clone(), generator=torch.Generator().manual_seed(1))
        z1b = model.sample(audio, word, seed, noise=noise.clone(), generator=torch.Generator().manual_seed(1))
        z2 = model.sample(other, word, seed, noise=noise.clone(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(z1, z1b) and (z1 - z2).abs().max() > 1e-5


def test_windowed_generation_slices_frame_features_by_frames(trained):
    tr = trained["trainer"]
    item = WholeFileDataset(tr.cfg.data, "test")[0]
    n = item["word"].shape[0]
    if not trained["finetune"]:
        assert tuple(item["audio"].shape) == (n, _dim(trained["rep"]))
    opts = tr.window_opts
    out = generate_windowed(tr.model.eval(), tr.codec, item["audio"][None], item["word"][None], item["pose"][None],
                            item["trans_v"][None], opts=opts, rng=torch.Generator().manual_seed(0), record=True)
    assert out.n_frames == n and out.n_windows >= 2
    for i, rec in enumerate(out.windows):
        if trained["finetune"]:  # the waveform: sample ranges, as onset+amplitude
            assert rec["audio_slice"].tolist() == [i * 533 * opts.hop_frames, (i * opts.hop_frames + 128) * 533]
        else:
            assert rec["audio_slice"].tolist() == [i * opts.hop_frames, i * opts.hop_frames + opts.window_frames]
    assert np.isfinite(out.poses.numpy()).all()


def test_inference_from_a_wav_uses_the_cache_features(trained, assets, tmp_path):
    from inference.api import generate_from_audio
    from inference.audio_input import InputError, audio_features, decode_audio
    from inference.model_source import load_model, resolve_model_source
    from inference.streaming import GestureStream

    tr, rep = trained["trainer"], trained["rep"]
    lm = load_model(resolve_model_source(trained["run"] / "checkpoints" / "last.pt"), "cpu")  # config inside
    entry = open_cache(tr.cfg.data, "test").entries[0]
    dec = decode_audio(entry.wav, 16000, str(lm.cfg.data.audio_load))
    n_samples = entry.n_frames * 16000 // 30  # the cache cuts the audio to the motion's whole seconds
    feats = audio_features(dec.samples[:n_samples], 16000, rep, "corrected", n_frames=entry.n_frames,
                           wavlm_model=lm.cfg.data.get("wavlm_model"), wavlm_finetune=trained["finetune"])  # fmt: skip
    np.testing.assert_allclose(feats, entry.load("audio"), rtol=1e-4, atol=1e-4)  # the training features
    res = generate_from_audio(lm, entry.wav, seed=0)
    assert res.poses.shape == (dec.n_frames(30), 165) and np.isfinite(res.poses).all()
    with pytest.raises(InputError, match="data.audio_rep"):
        GestureStream(lm)


# ---------------------------------------------------------------------------------------------------- options
def test_unknown_audio_rep_is_rejected_at_load_time(assets, tmp_path):
    cfg = make_cfg(assets, "mfcc")
    with pytest.raises(ConfigError, match=r"data\.audio_rep='mfcc'"):
        build_generator_from_config(cfg, load_init=False)
    with pytest.raises(ConfigError, match=r"data\.audio_rep='mfcc'"):  # before the data step
        GenerativeTrainer(cfg, run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="audio_rep"):
        ModalityEncoder(vocab_size=10, audio_rep="mfcc")


@pytest.mark.parametrize(
    ("rep", "over", "needle"),
    [
        ("mel", {"modality_encoder.params.audio_rep": "onset+amplitude"},
         r"data\.audio_rep='mel' but model\.generator\.params\.modality_encoder\.params\.audio_rep='onset\+amplitude'"),
        ("onset+amplitude", {"modality_encoder.params.audio_rep": "wavlm"}, r"modality_encoder\.params\.audio_rep"),
        ("mel", {"modality_encoder.params.audio_feat_dim": 80}, r"audio_feat_dim=80"),
        ("onset+amplitude", {"modality_encoder.params.audio_feat_dim": 80}, r"audio_feat_dim=80"),
        ("wavlm", {"+modality_encoder.params.wavlm_finetune": "true"}, r"set data\.wavlm_finetune instead"),
        ("mel", {"data.wavlm_finetune": "true"}, r"data\.wavlm_finetune=true needs data\.audio_rep=wavlm"),
        ("wavlm", {"data.wavlm_model": "null"}, r"data\.wavlm_model"),
        ("wavlm", {"data.wavlm_model": "no/such-wavlm"}, r"data\.wavlm_model='no/such-wavlm'"),
        ("onset+amplitude", {"modality_encoder.params.raw_audio": "true"}, r"raw_audio=true"),
    ],
)  # fmt: skip
def test_mismatching_or_unimplemented_audio_options_are_config_errors(assets, rep, over, needle):
    with pytest.raises(ConfigError, match=needle):
        build_generator_from_config(make_cfg(assets, rep, **over), load_init=False)


def test_default_encoder_keeps_the_upstream_keys_and_only_frame_reps_add_settings(assets):
    plain = ModalityEncoder(vocab_size=10, audio_dim=16, latent_dim=8)
    assert not plain.frame_audio and any(k.startswith("WavEncoder.") for k in plain.state_dict())
    assert not any(k.startswith("frame_audio_encoder.") for k in plain.state_dict())
    mel = ModalityEncoder(vocab_size=10, audio_dim=16, latent_dim=8, audio_rep="mel", audio_feat_dim=128)
    assert mel(torch.randn(2, 128, 128), torch.zeros(2, 128, dtype=torch.long)).shape == (2, 32, 24)
    with pytest.raises(ValueError, match=r"\(B, T, 128\)"):
        mel(torch.randn(2, 68266, 2), torch.zeros(2, 128, dtype=torch.long))
    root = assets["corpus"]
    onset = settings(make_cfg(assets, "onset+amplitude").data, root, None)
    assert "mel" not in onset and "wavlm_layer" not in onset  # onset caches keep their key
    assert settings(make_cfg(assets, "mel").data, root, None)["mel"]["scale"] == "log"


def test_log_mel_is_on_the_motion_frame_grid():
    sr, fps = 16000, 30
    t = np.arange(sr * 61) / sr
    y = (0.1 * np.sin(2 * np.pi * 440 * t) * (t > 60.0)).astype(np.float32)  # a tone that starts at 60 s
    m = A.mel_features(y, sr, fps, n_frames=61 * fps)
    assert m.shape == (61 * fps, 128)
    loud = np.flatnonzero(m.max(axis=1) > -5.0)
    assert abs(int(loud[0]) - 60 * fps) <= 1  # no drift from the 533-sample hop (533.33 per frame)
