"""FGD autoencoder trainer: windowing, data sources, loss, and a short training whose checkpoint reloads."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from evaluation.fgd_autoencoder import VAESKConv, load_fgd_autoencoder
from geometry.rotations import poses_to_rot6d
from trainers.fgd_ae import (
    RotWindowDataset,
    beat_sequences,
    main,
    random_smooth_sequences,
    reconstruction_loss,
    to_rot6d,
)
from utils.config import load_config
from utils.io import sha256_file
from utils.paths import REPO_ROOT


def test_windows_hand_computed():
    seqs = [np.arange(100 * 330, dtype=np.float32).reshape(100, 330) * 0 + np.arange(100)[:, None],
            np.zeros((50, 330), np.float32)]  # fmt: skip
    ds = RotWindowDataset(seqs, length=64, stride=20)
    assert len(ds) == 2  # starts 0 and 20 in the 100-frame sequence; the 50-frame one is too short
    assert ds[0].shape == (64, 330) and ds[0].dtype == torch.float32
    assert ds[1][0, 0].item() == 20.0 and ds[1][-1, 0].item() == 83.0
    assert len(RotWindowDataset([np.zeros((64, 330))], 64, 20)) == 1
    with pytest.raises(ValueError):
        RotWindowDataset(seqs, length=0)


def test_to_rot6d_accepts_axis_angle_dicts_and_rejects_other_shapes():
    aa = torch.randn(10, 165) * 0.5
    torch.testing.assert_close(torch.from_numpy(to_rot6d({"pose": aa})), poses_to_rot6d(aa))
    r6 = np.random.default_rng(0).normal(size=(10, 330)).astype(np.float32)
    assert np.array_equal(to_rot6d(r6), r6)
    with pytest.raises(ValueError, match="330"):
        to_rot6d(np.zeros((10, 99)))
    with pytest.raises(ValueError, match="pose"):
        to_rot6d({"poses": aa})


def test_random_sequences_are_valid_smooth_rotations():
    (seq,) = random_smooth_sequences(1, 90, seed=3)
    r = torch.from_numpy(seq).reshape(90, 55, 2, 3)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(90, 55, 2), atol=1e-5, rtol=0)  # unit rows
    torch.testing.assert_close((r[..., 0, :] * r[..., 1, :]).sum(-1), torch.zeros(90, 55), atol=1e-5, rtol=0)
    assert np.abs(np.diff(seq, axis=0)).max() < 0.1  # smooth at 30 fps


def test_reconstruction_loss_hand_computed():
    target = torch.zeros(1, 3, 2)
    rec = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    parts = reconstruction_loss(rec, target, vel_weight=2.0, acc_weight=1.0)
    assert parts["rec"].item() == pytest.approx(2 / 6)
    assert parts["vel"].item() == pytest.approx(2 / 4)  # diffs: [-1,-1],[0,0]
    assert parts["acc"].item() == pytest.approx(1.0)  # second diff: [1,1]
    assert parts["loss"].item() == pytest.approx(2 / 6 + 2 * 0.5 + 1.0)


def test_beat_folder_reader_filters_split_and_speaker(tmp_path):
    motion = tmp_path / "smplxflame_30"
    motion.mkdir()
    rng = np.random.default_rng(0)
    rows = [("2_scott_0_1_1", "test"), ("2_scott_0_9_9", "train"), ("3_solomon_0_9_9", "train")]
    for fid, _ in rows:
        np.savez(motion / f"{fid}.npz", poses=rng.normal(size=(70, 165)).astype(np.float32))
    with open(tmp_path / "train_test_split.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "type"), *rows])
    assert len(beat_sequences(tmp_path, "all", ["train"])) == 2
    (only,) = beat_sequences(tmp_path, [2], ["train"])
    expected = poses_to_rot6d(torch.from_numpy(np.load(motion / "2_scott_0_9_9.npz")["poses"]))
    torch.testing.assert_close(torch.from_numpy(only), expected)
    assert len(beat_sequences(tmp_path, "all", None)) == 3
    with pytest.raises(ValueError, match="no files left"):
        beat_sequences(tmp_path, [7], ["train"])
    with pytest.raises(FileNotFoundError):
        beat_sequences(tmp_path / "nowhere")


def test_configs_load():
    full = load_config(REPO_ROOT / "configs/fgd_ae.yaml")
    tiny = load_config(REPO_ROOT / "configs/fgd_ae_tiny.yaml")
    assert (full.data.window.length, full.data.window.stride) == (64, 20)
    assert tiny.train.max_steps and tiny.data.synthetic is not None
    # both build the official architecture, so their checkpoints load with load_fgd_autoencoder defaults
    for cfg in (full, tiny):
        assert dict(VAESKConv(**cfg.model).state_dict().items()).keys() == VAESKConv().state_dict().keys()


def test_short_training_reduces_loss_and_checkpoint_reloads(tmp_path):
    summary = main([
        "-c", str(REPO_ROOT / "configs/fgd_ae_tiny.yaml"),
        f"output_dir={tmp_path}", "data.source=random", "data.random.num_sequences=6",
        "data.random.num_val_sequences=2", "data.random.frames=164", "train.batch_size=8",
        "train.max_steps=60", "train.val_every_epochs=2", "seed=7",
    ])  # fmt: skip
    hist = summary["history"]
    assert summary["steps"] == 60 and summary["train_windows"] == 6 * 6
    assert hist[-1]["train_loss"] < 0.4 * summary["first_loss"]
    assert hist[-1]["val_loss"] < 0.5 * summary["first_loss"]
    assert summary["sha256"] == sha256_file(summary["checkpoint"])
    model = load_fgd_autoencoder(summary["checkpoint"])
    assert not model.training
    x = torch.from_numpy(random_smooth_sequences(1, 64, seed=99)[0])[None]
    with torch.no_grad():
        assert model.map2latent(x).shape == (1, 4, 240)
    # structural tensors are untouched by training
    fresh = VAESKConv().state_dict()
    for k, v in model.state_dict().items():
        if k.endswith(".mask") or ".common.0." in k:
            assert torch.equal(v, fresh[k]), k


@pytest.mark.slow
def test_tiny_config_on_synthetic_corpus(tmp_path):
    summary = main(["-c", str(REPO_ROOT / "configs/fgd_ae_tiny.yaml"), f"output_dir={tmp_path}",
                    f"data.root={tmp_path / 'corpus'}"])  # fmt: skip
    assert summary["history"][-1]["train_loss"] < 0.3 * summary["first_loss"]
    load_fgd_autoencoder(summary["checkpoint"])
