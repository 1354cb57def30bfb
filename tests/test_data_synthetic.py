"""Synthetic BEAT2-format corpus: exact file format, determinism, plausibility, and audio->motion causality."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import textgrid

from dataloaders.synthetic import generate_corpus, split_for, syllable_count
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("syn") / "beat", speakers=2, files_per_speaker=3, seconds=12, seed=3)


def test_format_round_trip(corpus):
    with open(corpus / "train_test_split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["type"] for r in rows].count("test") == 2 and [r["type"] for r in rows].count("val") == 2
    ids = [r["id"] for r in rows]
    assert ids[0] == "1_ava_0_1_1" and all(len(i.split("_")) == 5 and i.split("_")[3] == i.split("_")[4] for i in ids)
    for fid in ids:
        with np.load(corpus / "smplxflame_30" / f"{fid}.npz", allow_pickle=False) as z:
            assert set(z.files) == {"poses", "trans", "betas", "expressions", "model", "gender", "mocap_frame_rate"}
            assert z["poses"].dtype == np.float32 and z["poses"].shape == (360, 165)
            assert z["trans"].dtype == np.float64 and z["trans"].shape == (360, 3)
            assert z["betas"].dtype == np.float32 and z["betas"].shape == (300,)
            assert z["expressions"].dtype == np.float64 and z["expressions"].shape == (360, 100)
            assert str(z["model"]) == "smplx2020" and str(z["gender"]) == "neutral" and int(z["mocap_frame_rate"]) == 30
            poses, trans = z["poses"], z["trans"]
        y, sr = sf.read(corpus / "wave16k" / f"{fid}.wav")
        assert sr == 16000 and y.ndim == 1 and abs(len(y) / sr - 12.3) < 0.01
        tg = textgrid.TextGrid.fromFile(str(corpus / "textgrid" / f"{fid}.TextGrid"))
        assert tg[0].name == "words"
        marks = [iv.mark for iv in tg[0]]
        assert "" in marks and sum(1 for m in marks if m) >= 5
        assert all(a.maxTime <= b.minTime + 1e-6 for a, b in zip(tg[0], tg[0][1:]))
        # plausible human motion: angles bounded, smooth at 30 fps, standing height, arms down at the start
        assert np.abs(poses).max() < np.pi
        assert np.abs(np.diff(poses, axis=0)).max() < 0.25
        assert 1.2 < trans[:, 1].mean() < 1.4 and trans[:, 1].std() < 0.05


def test_split_repeats_the_six_file_pattern_so_growing_a_corpus_keeps_its_first_files_split():
    six = ["test", "val", "test", "train", "train", "train"]
    assert [split_for(i, 6) for i in range(1, 7)] == six
    assert [split_for(i, 3) for i in range(1, 4)] == ["test", "val", "train"]
    assert [split_for(i, 2) for i in range(1, 3)] == ["train", "train"]
    # the main job's 9 files per speaker: 3 train (the 6-file corpus's), 2 val, 4 test
    assert [split_for(i, 9) for i in range(1, 10)] == six + ["test", "val", "test"]
    assert [split_for(i, 13) for i in range(1, 14)] == six * 2 + ["test"]


def test_a_larger_corpus_holds_the_smaller_ones_files_unchanged(tmp_path):
    a = generate_corpus(tmp_path / "a", speakers=1, files_per_speaker=1, seconds=8, seed=5)
    b = generate_corpus(tmp_path / "b", speakers=1, files_per_speaker=2, seconds=8, seed=5)
    f = "smplxflame_30/1_ava_0_1_1.npz"
    assert np.array_equal(np.load(a / f)["poses"], np.load(b / f)["poses"])
    assert (a / "wave16k/1_ava_0_1_1.wav").read_bytes() == (b / "wave16k/1_ava_0_1_1.wav").read_bytes()


def test_deterministic(tmp_path):
    a = generate_corpus(tmp_path / "a", speakers=1, files_per_speaker=1, seconds=8, seed=5)
    b = generate_corpus(tmp_path / "b", speakers=1, files_per_speaker=1, seconds=8, seed=5)
    c = generate_corpus(tmp_path / "c", speakers=1, files_per_speaker=1, seconds=8, seed=6)
    f = "smplxflame_30/1_ava_0_1_1.npz"
    assert np.array_equal(np.load(a / f)["poses"], np.load(b / f)["poses"])
    assert (a / "wave16k/1_ava_0_1_1.wav").read_bytes() == (b / "wave16k/1_ava_0_1_1.wav").read_bytes()
    assert not np.array_equal(np.load(a / f)["poses"], np.load(c / f)["poses"])


def test_cli(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "dataloaders.synthetic", "--out", str(out), "--speakers", "1", "--files-per-speaker",
         "1", "--seconds", "6"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (out / "smplxflame_30" / "1_ava_0_1_1.npz").is_file() and (out / "train_test_split.csv").is_file()


def test_syllables():
    assert [syllable_count(w) for w in ("the", "people", "basically", "time")] == [1, 2, 4, 1]


def test_motion_follows_its_own_audio(tmp_path):
    """BC (emage2024 and corrected) of GT with its own audio clearly beats another file's audio and shifted audio."""
    from dataloaders.stats import joint_speeds
    from evaluation import metrics
    from geometry import body_model

    root = generate_corpus(tmp_path / "bc", speakers=2, files_per_speaker=2, seconds=20, seed=0)
    ids = sorted(p.stem for p in (root / "smplxflame_30").glob("*.npz"))
    data = {i: np.load(root / "smplxflame_30" / f"{i}.npz") for i in ids}
    joints = {i: body_model.get_fk(betas=d["betas"][:10])(d["poses"]).numpy() for i, d in data.items()}
    # mean_vel as dataloaders.stats computes it (speeds with world translation), reusing the FK above
    speeds = [np.linalg.norm(np.gradient(joints[i] + data[i]["trans"][:, None], axis=0) * 30, axis=-1) for i in ids]
    mean_vel = np.concatenate(speeds).mean(0)
    d0 = data[ids[0]]
    direct = joint_speeds(d0["poses"][:90], d0["trans"][:90], d0["betas"])
    np.testing.assert_allclose(direct[:89], speeds[0][:89], rtol=1e-4, atol=1e-5)
    for protocol in ("emage2024", "corrected"):
        own, other, shifted = (metrics.BeatConsistency(mean_vel, protocol=protocol) for _ in range(3))
        onsets = {i: own.onsets(root / "wave16k" / f"{i}.wav", len(joints[i])) for i in ids}  # same lengths
        for k, i in enumerate(ids):
            own.update(joints[i].copy(), onsets=onsets[i])
            other.update(joints[i].copy(), onsets=onsets[ids[(k + 1) % len(ids)]])
            shifted.update(joints[i].copy(), onsets=onsets[i] + 0.5)  # its own audio, 0.5 s late
        o, x, s = own.compute(), other.compute(), shifted.compute()
        assert o > x + 0.1 and o > s + 0.1, (protocol, o, x, s)
