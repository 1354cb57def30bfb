"""BEAT2 reader, cache and datasets: bad inputs, processing rules, invalidation/resume, windows, stats, real sample."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from dataloaders import beat2, cache, datasets, stats
from dataloaders.prepare import prepare_data
from dataloaders.synthetic import generate_corpus
from tests.conftest import BEAT2_SAMPLE, REPO_ROOT, need
from utils.config import load_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("c") / "beat", speakers=2, files_per_speaker=3, seconds=12, seed=1)


def make_cfg(root, cache_dir, **over):
    cfg = load_config(REPO_ROOT / "configs/data/synthetic.yaml")
    cfg.data.root = str(root)
    cfg.data.cache_dir = str(cache_dir)
    cfg.data.synthetic = None
    for k, v in over.items():
        OmegaConf.update(cfg, f"data.{k}", v, force_add=True)
    return cfg


def copy_corpus(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_process_trans_rules():
    trans = np.array([[1.0, 1.3, 2.0], [1.5, 1.31, 2.5], [1.7, 1.29, 2.0]])
    tr, tv = beat2.process_trans(trans)
    np.testing.assert_allclose(tr, [[0, 1.3, 0], [0.5, 1.31, 0.5], [0.7, 1.29, 0.0]])
    np.testing.assert_allclose(tv, [[0.5, 1.3, 0.5], [0.5, 1.31, 0.5], [0.2, 1.29, -0.5]])


def test_window_count_rule():
    assert datasets.window_count(128, 128, 20) == 1
    assert datasets.window_count(147, 128, 20) == 1 and datasets.window_count(148, 128, 20) == 2
    assert datasets.window_count(1890, 128, 20) == (1890 - 128) // 20 + 1 == 89
    assert datasets.window_count(100, 128, 20) == 0


def test_datasets_shapes_and_windows(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path / "cache")
    prepare_data(cfg.data, progress=False)
    gen = datasets.GeneratorWindowDataset(cfg, "train")
    n_train = sum(1 for line in open(corpus / "train_test_split.csv") if line.strip().endswith("train"))
    assert len(gen.entries) == n_train and all(e.n_frames == 360 for e in gen.entries)
    assert len(gen) == n_train * ((360 - 128) // 20 + 1)
    item = gen[13]  # second file (12 windows each), window 1
    assert item["pose"].shape == (128, 165) and item["pose"].dtype == torch.float32
    assert item["audio"].shape == (68266, 2) and item["word"].dtype == torch.int64 and item["beta"].shape == (128, 300)
    assert item["trans"].shape == item["trans_v"].shape == (128, 3) and item["facial"].shape == (128, 100)
    e = gen.entries[1]
    assert item["id"] == e.id and item["speaker"] == int(e.id.split("_")[0])
    np.testing.assert_array_equal(item["pose"].numpy(), e.load("pose")[20:148])
    a0 = int(np.floor(1 * 20 * 16000 / 30))
    np.testing.assert_array_equal(item["audio"].numpy(), e.load("audio")[a0 : a0 + 68266])
    # onset+amplitude in the cache equals the feature function on the loaded audio (corrected mode)
    from dataloaders.features.audio import load_audio, onset_amplitude

    y = load_audio(e.wav)
    np.testing.assert_allclose(e.load("audio"), onset_amplitude(y, 16000, "corrected")[: 12 * 16000], atol=1e-7)
    assert (item["word"] > 3).any()  # real words from the TextGrid
    whole = datasets.WholeFileDataset(cfg, "test")
    w = whole[0]
    assert w["pose"].shape == (360, 165) and w["audio"].shape == (12 * 16000, 2) and w["wav_path"].endswith(".wav")
    rvq = datasets.RVQWindowDataset(cfg, "train")
    x = rvq[0]
    assert x.shape == (64, 433) and x.dtype == torch.float32 and len(rvq) == n_train * ((360 - 64) // 20 + 1)
    st = rvq.stats
    assert st.rot6d_mean.shape == (330,) and st.mean_vel.shape == (55,) and (st.mean_vel > 0).all()
    # normalised dims of the training set have mean ~0 / std ~1; expressions stay raw
    allx = torch.stack([rvq[i] for i in range(0, len(rvq), 3)]).reshape(-1, 433).numpy()
    moving = st.rot6d_std > 1e-3
    assert abs(allx[:, :330][:, moving].mean()) < 0.2 and 0.7 < allx[:, :330][:, moving].std() < 1.3
    np.testing.assert_allclose(allx[:64, 333:], gen.entries[0].load("facial")[:64], atol=1e-6)
    back = stats.split_frame_vector(x.double(), st)  # torch path
    again = stats.frame_vector(back["pose"], back["trans_v"], back["expressions"], st)
    np.testing.assert_allclose(again.float().numpy(), x.numpy(), atol=2e-3)
    back_np = stats.split_frame_vector(x.numpy(), st)  # numpy path
    assert back_np["pose"].shape == (64, 165) and np.abs(back_np["pose"] - back["pose"].numpy()).max() < 1e-3
    # max_files subset and multi-speaker filtering
    sub = datasets.GeneratorWindowDataset(make_cfg(corpus, tmp_path / "cache", max_files=1), "train")
    assert len(sub.entries) == 1
    only1 = datasets.WholeFileDataset(make_cfg(corpus, tmp_path / "cache", training_speakers=[1]), "test")
    assert [e.speaker for e in only1.entries] == [1]


def test_cache_invalidation_and_resume(corpus, tmp_path):
    root = copy_corpus(corpus, tmp_path / "beat")
    cfg = make_cfg(root, tmp_path / "cache", num_workers=2)
    first = cache.build_cache(cfg, "train", progress=False)
    assert sorted(first.built) == sorted(e.id for e in first.entries) and len(first.built) == 2
    assert not list(first.folder.rglob("*.pkl"))
    again = cache.build_cache(cfg, "train", progress=False)
    assert again.built == [] and again.folder == first.folder
    # a changed source file rebuilds only that file
    victim = first.entries[0]
    wav = root / "wave16k" / f"{victim.id}.wav"
    y, sr = sf.read(wav)
    sf.write(wav, y * 0.5, sr, subtype="PCM_16")
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    changed = cache.build_cache(cfg, "train", progress=False)
    assert changed.built == [victim.id]
    # a changed config builds a new cache
    other = cache.build_cache(make_cfg(root, tmp_path / "cache", onset_mode="reference"), "train", progress=False)
    assert other.folder != first.folder and len(other.built) == 2
    # an interrupted build: arrays of one file half-written and its entry missing -> not complete, resumed
    manifest_path = first.folder / "manifest.json"
    m = json.loads(manifest_path.read_text())
    gone = first.entries[1].id
    del m["files"][gone]
    m["in_progress"] = [gone]
    manifest_path.write_text(json.dumps(m))
    (first.folder / "files" / gone / "audio.npy").unlink()
    resumed = cache.build_cache(cfg, "train", progress=False)
    assert resumed.built == [gone] and (first.folder / "files" / gone / "audio.npy").is_file()
    assert json.loads(manifest_path.read_text())["in_progress"] == []
    # a manifest entry whose array vanished is detected too
    (first.folder / "files" / gone / "pose.npy").unlink()
    assert cache.build_cache(cfg, "train", progress=False).built == [gone]


def _bad_root(corpus, tmp_path):
    root = copy_corpus(corpus, tmp_path / "bad")
    ids = beat2.read_split(root, "train")
    return root, ids[0]


@pytest.mark.parametrize(
    "case",
    ["truncated_npz", "wrong_keys", "wrong_shape", "nan", "stereo", "missing_wav", "missing_textgrid", "length"],
)
def test_bad_inputs_name_the_file(corpus, tmp_path, case):
    root, fid = _bad_root(corpus, tmp_path)
    npz = root / "smplxflame_30" / f"{fid}.npz"
    wav = root / "wave16k" / f"{fid}.wav"
    z = dict(np.load(npz))
    if case == "truncated_npz":
        npz.write_bytes(npz.read_bytes()[:5000])
    elif case == "wrong_keys":
        z.pop("expressions")
        np.savez(npz, **z)
    elif case == "wrong_shape":
        z["poses"] = z["poses"][:, :156]
        np.savez(npz, **z)
    elif case == "nan":
        z["trans"][10, 1] = np.nan
        np.savez(npz, **z)
    elif case == "stereo":
        y, sr = sf.read(wav)
        sf.write(wav, np.stack([y, y], 1), sr)
    elif case == "missing_wav":
        wav.unlink()
    elif case == "missing_textgrid":
        (root / "textgrid" / f"{fid}.TextGrid").unlink()
    elif case == "length":
        y, sr = sf.read(wav)
        sf.write(wav, y[: 8 * sr], sr)
    with pytest.raises(beat2.BeatDataError) as err:
        cache.build_cache(make_cfg(root, tmp_path / "cache"), "train", progress=False)
    assert fid in str(err.value)
    # documented skip mode: the other files are cached, the bad one listed in a warning
    with pytest.warns(UserWarning, match=fid):
        idx = cache.build_cache(make_cfg(root, tmp_path / "cache2", on_bad_file="skip"), "train", progress=False)
    assert fid in idx.skipped and fid not in [e.id for e in idx.entries] and len(idx.entries) == 1


def test_missing_textgrid_unk_option_and_resampling(corpus, tmp_path):
    root, fid = _bad_root(corpus, tmp_path)
    (root / "textgrid" / f"{fid}.TextGrid").unlink()
    wav = root / "wave16k" / f"{fid}.wav"
    y, sr = sf.read(wav)
    import librosa

    sf.write(wav, librosa.resample(y, orig_sr=sr, target_sr=8000), 8000)
    with pytest.warns(UserWarning, match="8000 Hz"):
        idx = cache.build_cache(make_cfg(root, tmp_path / "cache", missing_textgrid="unk"), "train", progress=False)
    e = next(e for e in idx.entries if e.id == fid)
    assert (np.asarray(e.load("word")) == 3).all() and e.load("audio").shape == (12 * 16000, 2)


def test_stats_official_and_guard(tmp_path):
    st = stats.load_stats_dir(need(BEAT2_SAMPLE / "stats"))
    assert abs(st.trans_v_mean[1] - 1.3067) < 1e-3 and st.rot6d_std.min() > 0
    assert np.array_equal(st.safe(st.rot6d_std), st.rot6d_std)  # official stats: exactly as upstream, no epsilon
    z = stats.Stats(np.zeros(330), np.zeros(330), np.zeros(3), np.ones(3), np.ones(55))
    out = stats.frame_vector(np.zeros((4, 165)), np.zeros((4, 3)), np.zeros((4, 100)), z)
    assert np.isfinite(out).all()
    (tmp_path / "s").mkdir()
    with pytest.raises(FileNotFoundError, match="beatx_2_330_mean"):
        stats.load_stats_dir(tmp_path / "s")


def test_real_sample_read_and_cached(tmp_path):
    """The real speaker-2 sample (no TextGrid) is read and cached with word_rep none; shapes follow the rules."""
    sample = need(BEAT2_SAMPLE)
    root = tmp_path / "beat_english_v2.0.0"
    (root / "smplxflame_30").mkdir(parents=True)
    (root / "wave16k").mkdir()
    fid = "2_scott_0_1_1"
    os.symlink(sample / "smplxflame_30" / f"{fid}.npz", root / "smplxflame_30" / f"{fid}.npz")
    os.symlink(sample / "wave16k" / f"{fid}.wav", root / "wave16k" / f"{fid}.wav")
    shutil.copy(sample / "speaker2_split.csv", root / "train_test_split.csv")
    cfg = make_cfg(root, tmp_path / "cache", word_rep="none", training_speakers=[2], onset_mode="reference",
                   stats_dir=str(sample / "stats"))  # fmt: skip
    idx = cache.build_cache(cfg, "test", ids=[fid], progress=False)
    e = idx.entries[0]
    assert e.n_frames == 63 * 30  # min(floor(64.1 s), floor(1906/30 = 63.5 s)) = 63 s
    raw = np.load(sample / "smplxflame_30" / f"{fid}.npz")
    np.testing.assert_array_equal(e.load("pose"), raw["poses"][:1890])
    tr, tv = e.load("trans"), e.load("trans_v")
    assert tr[0, 0] == 0 and tr[0, 2] == 0 and abs(tv[:, 1].mean() - 1.303) < 0.01
    np.testing.assert_allclose(tv[1:, 0], np.diff(raw["trans"][:1890, 0]))
    audio = e.load("audio")
    # reference mode: impulses at sample = STFT frame index, so all within the first len(full audio)/512 samples
    assert audio.shape == (63 * 16000, 2) and 0 < np.flatnonzero(audio[:, 1]).max() < 64.1 * 16000 / 512 + 1
    assert (np.asarray(e.load("word")) == 3).all()
    st = stats.load_stats(cfg)
    x = stats.frame_vector(e.load("pose")[:64], tv[:64], e.load("facial")[:64], st)
    assert x.shape == (64, 433) and np.isfinite(x).all() and np.abs(x[:, 330:333]).max() < 50


def test_getters_never_build_and_name_the_command(tmp_path):
    """data_root/open_cache/load_stats/datasets only read; the explicit step (prepare_data) builds everything."""
    cfg = load_config(REPO_ROOT / "configs/data/synthetic.yaml",
                      [f"data.root={tmp_path / 'auto'}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.synthetic.files_per_speaker=3", "data.synthetic.seconds=6"])  # fmt: skip
    assert cfg.data.onset_mode == "corrected" and list(cfg.data.training_speakers) == [1, 2]
    with pytest.raises(cache.DataNotPreparedError, match="dataloaders.prepare") as err:
        datasets.WholeFileDataset(cfg, "test")
    assert str(tmp_path / "auto") in str(err.value)
    assert not (tmp_path / "auto").exists() and not (tmp_path / "cache").exists()  # nothing was generated
    # corpus present, cache missing: the getter names the cache's manifest path
    cache.prepare_corpus(cfg.data)
    assert (tmp_path / "auto" / "train_test_split.csv").is_file()
    with pytest.raises(cache.DataNotPreparedError, match="vocab.json"):
        cache.open_cache(cfg.data, "test")
    cache.build_cache(cfg.data, "train", progress=False)
    with pytest.raises(cache.DataNotPreparedError, match=r"manifest\.json|incomplete") as err:
        cache.open_cache(cfg.data, "test")
    assert "dataloaders.prepare" in str(err.value)
    with pytest.raises(cache.DataNotPreparedError, match="statistics not found"):
        stats.load_stats(cfg.data)
    out = prepare_data(cfg.data, progress=False)
    assert out["files"] == {"train": 2, "val": 2, "test": 2}
    ds = datasets.WholeFileDataset(cfg, "test")
    assert len(ds) == 2 and ds.entries[0].load("pose").shape[1] == 165
    st = stats.load_stats(cfg.data)
    np.testing.assert_array_equal(st.rot6d_mean, out["stats"].rot6d_mean)
    # a changed source makes the cache stale for the getter (which says so) until the step reruns
    wav = tmp_path / "auto" / "wave16k" / f"{ds.entries[0].id}.wav"
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    with pytest.raises(cache.DataNotPreparedError, match=f"sources changed: {ds.entries[0].id}"):
        cache.open_cache(cfg.data, "test")
    assert prepare_data(cfg.data, ["test"], progress=False)["files"]["test"] == 2
    assert len(cache.open_cache(cfg.data, "test").entries) == 2


def test_prepare_command_line(tmp_path):
    """``python -m dataloaders.prepare -c CONFIG`` builds corpus, caches and statistics in a fresh process."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "dataloaders.prepare", "-c", str(REPO_ROOT / "configs/data/synthetic.yaml"),
         "--splits", "train", f"data.root={tmp_path / 'c'}", f"data.cache_dir={tmp_path / 'k'}",
         "data.synthetic.files_per_speaker=3", "data.synthetic.seconds=6", "data.training_speakers=[1]"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[data] ready" in r.stdout
    cfg = load_config(REPO_ROOT / "configs/data/synthetic.yaml",
                      [f"data.root={tmp_path / 'c'}", f"data.cache_dir={tmp_path / 'k'}", "data.training_speakers=[1]"])
    assert len(cache.open_cache(cfg.data, "train").entries) == 1
    assert stats.load_stats(cfg.data).mean_vel.shape == (55,)
    with pytest.raises(cache.DataNotPreparedError):  # only the requested split was built
        cache.open_cache(cfg.data, "test")


def test_synthetic_and_real_data_configs():
    real = load_config(REPO_ROOT / "configs/data/beat2_speaker2.yaml")
    assert real.data.onset_mode == "reference" and list(real.data.training_speakers) == [2]


def test_disk_full_is_an_output_error_never_a_skipped_input(corpus, tmp_path, monkeypatch):
    """ENOSPC while writing the cache stops the build naming the output, even with on_bad_file=skip; the cache is
    not complete afterwards, and a rerun with space finishes it."""
    import errno

    cfg = make_cfg(corpus, tmp_path / "cache", on_bad_file="skip", num_workers=0)
    real, calls = cache.save_npy, []

    def full_disk(arr, path):
        calls.append(path)
        if len(calls) > 9:  # the first file's arrays fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(arr, path)

    monkeypatch.setattr(cache, "save_npy", full_disk)
    with pytest.raises(cache.CacheWriteError, match=r"cannot write the cache of .*No space left"):
        cache.build_cache(cfg, "train", progress=False)
    with pytest.raises(cache.DataNotPreparedError, match="incomplete"):
        cache.open_cache(cfg, "train")
    monkeypatch.setattr(cache, "save_npy", real)
    idx = cache.build_cache(cfg, "train", progress=False)
    assert not idx.skipped and len(idx.entries) == len(cache.open_cache(cfg, "train").entries) >= 2
