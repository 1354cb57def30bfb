"""Hostile data (issue 14): a split csv that leaks or drops files, and implausible motion/audio."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from dataloaders import beat2, cache
from dataloaders.synthetic import generate_corpus
from tests.conftest import BEAT2_SAMPLE, REPO_ROOT, need
from utils.config import load_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 1 speaker x 4 files of 6 s: 1 test, 1 val, 2 train
    return generate_corpus(tmp_path_factory.mktemp("v") / "beat", speakers=1, files_per_speaker=4, seconds=6, seed=2)


def make_cfg(root, cache_dir, **over):
    cfg = load_config(REPO_ROOT / "configs/data/synthetic.yaml")
    cfg.data.root = str(root)
    cfg.data.cache_dir = str(cache_dir)
    cfg.data.synthetic = None
    cfg.data.training_speakers = [1]
    for k, v in over.items():
        OmegaConf.update(cfg, f"data.{k}", v, force_add=True)
    return cfg.data


def write_csv(path, rows):
    path.write_text("id,type\n" + "".join(f"{i},{t}\n" for i, t in rows))
    return path


# ----------------------------------------------------------------------------------------------- split csv
def test_valid_split_csv_reads_in_order(tmp_path):
    p = write_csv(tmp_path / "s.csv", [("1_a_0_1_1", "test"), ("1_a_0_2_2", "train"), ("2_b_0_1_1", " val ")])
    assert beat2.read_split_csv(p) == {"1_a_0_1_1": "test", "1_a_0_2_2": "train", "2_b_0_1_1": "val"}
    assert beat2.read_split(tmp_path, "train", [1], "s.csv") == ["1_a_0_2_2"]


def test_real_split_csv_is_valid():
    table = beat2.read_split_csv(need(BEAT2_SAMPLE / "speaker2_split.csv"))
    assert len(table) == 118 and set(table.values()) == {"train", "val", "test"}


def test_id_in_two_splits_is_a_leak_naming_the_ids(tmp_path):
    p = write_csv(tmp_path / "s.csv", [("1_a_0_1_1", "train"), ("1_a_0_2_2", "train"), ("1_a_0_1_1", "test"),
                                       ("1_a_0_3_3", "val"), ("1_a_0_3_3", "train")])  # fmt: skip
    with pytest.raises(beat2.BeatDataError, match="more than one split") as err:
        beat2.read_split(tmp_path, "test", None, "s.csv")
    msg = str(err.value)
    assert "1_a_0_1_1 (train/test)" in msg and "1_a_0_3_3 (val/train)" in msg and "1_a_0_2_2" not in msg
    assert str(p) in msg


def test_duplicated_row_is_an_error_naming_the_id(tmp_path):
    write_csv(tmp_path / "s.csv", [("1_a_0_1_1", "train"), ("1_a_0_2_2", "test"), ("1_a_0_1_1", "train")])
    with pytest.raises(beat2.BeatDataError, match=r"twice in the same split: 1_a_0_1_1 \(train x2\)"):
        beat2.read_split(tmp_path, "train", None, "s.csv")


def test_unknown_type_lists_the_allowed_ones(tmp_path):
    write_csv(tmp_path / "s.csv", [("1_a_0_1_1", "Train"), ("1_a_0_2_2", "test"), ("1_a_0_3_3", "tset")])
    with pytest.raises(beat2.BeatDataError) as err:
        beat2.read_split(tmp_path, "test", None, "s.csv")
    msg = str(err.value)
    assert "['Train', 'tset']" in msg and "['train', 'val', 'test', 'additional']" in msg


def test_empty_id_and_missing_column(tmp_path):
    write_csv(tmp_path / "s.csv", [("1_a_0_1_1", "train"), ("", "test")])
    with pytest.raises(beat2.BeatDataError, match=r"empty id on line\(s\) \[3\]"):
        beat2.read_split_csv(tmp_path / "s.csv")
    (tmp_path / "t.csv").write_text("name,type\n1_a_0_1_1,train\n")
    with pytest.raises(beat2.BeatDataError, match="expected columns 'id' and 'type'"):
        beat2.read_split_csv(tmp_path / "t.csv")


def test_cache_build_refuses_a_leaking_split(corpus, tmp_path):
    root = shutil.copytree(corpus, tmp_path / "beat")
    table = beat2.read_split_csv(root / "train_test_split.csv")
    test_id = next(i for i, t in table.items() if t == "test")
    write_csv(root / "train_test_split.csv", [*table.items(), (test_id, "train")])
    with pytest.raises(beat2.BeatDataError, match=test_id):
        cache.build_cache(make_cfg(root, tmp_path / "cache"), "train", progress=False)


# ----------------------------------------------------------------------------------------------- plausibility
def _train_id(root):
    return next(i for i, t in beat2.read_split_csv(root / "train_test_split.csv").items() if t == "train")


def test_poses_in_degrees_are_an_error_naming_the_file(corpus, tmp_path):
    root = shutil.copytree(corpus, tmp_path / "beat")
    fid = _train_id(root)
    npz = root / "smplxflame_30" / f"{fid}.npz"
    z = dict(np.load(npz))
    z["poses"] = np.degrees(z["poses"])
    np.savez(npz, **z)
    with pytest.raises(beat2.BeatDataError, match=r"4\*pi.*degrees") as err:
        beat2.load_motion(npz)
    assert str(npz) in str(err.value)
    with pytest.raises(beat2.BeatDataError, match=fid):
        cache.build_cache(make_cfg(root, tmp_path / "cache"), "train", progress=False)


def test_axis_angle_threshold_is_4pi(corpus, tmp_path):
    npz = corpus / "smplxflame_30" / f"{_train_id(corpus)}.npz"
    z = dict(np.load(npz))
    for angle, ok in ((4 * math.pi - 0.01, True), (4 * math.pi + 0.01, False)):
        z["poses"] = z["poses"].copy()
        z["poses"][5, 3 * 16 : 3 * 16 + 3] = [0.0, angle, 0.0]  # joint 16 at frame 5
        np.savez(tmp_path / "m.npz", **z)
        if ok:
            m = beat2.load_motion(tmp_path / "m.npz")
            assert any("joint 16 at frame 5" in w for w in beat2.motion_warnings(m["poses"], m["trans"]))
        else:
            with pytest.raises(beat2.BeatDataError, match="joint 16 at frame 5"):
                beat2.load_motion(tmp_path / "m.npz")


def test_motion_warnings_units_and_frozen():
    poses = np.random.default_rng(0).normal(0, 0.3, (60, 165)).astype(np.float32)
    trans = np.tile([0.1, 1.3, 0.2], (60, 1))
    assert beat2.motion_warnings(poses, trans) == []
    assert any("1300.0 m" in w for w in beat2.motion_warnings(poses, trans * 1000))  # millimetres
    assert beat2.motion_warnings(np.tile(poses[:1], (60, 1)), trans) == ["the pose never changes (frozen motion)"]


def test_real_sample_is_plausible():
    m = beat2.load_motion(need(BEAT2_SAMPLE / "smplxflame_30" / "2_scott_0_1_1.npz"))
    assert beat2.motion_warnings(m["poses"], m["trans"]) == []


def test_silent_wav_is_cached_with_warnings_in_the_manifest(corpus, tmp_path):
    root = shutil.copytree(corpus, tmp_path / "beat")
    fid = _train_id(root)
    wav = root / "wave16k" / f"{fid}.wav"
    info = sf.info(wav)
    sf.write(wav, np.zeros(info.frames), info.samplerate, subtype="PCM_16")
    cfg = make_cfg(root, tmp_path / "cache")
    with pytest.warns(UserWarning, match=f"{fid}.*all zeros"):
        idx = cache.build_cache(cfg, "train", progress=False)
    assert fid in [e.id for e in idx.entries]  # suspicious, not impossible: kept
    manifest = json.loads((idx.folder / "manifest.json").read_text())
    notes = manifest["files"][fid]["warnings"]
    assert any("all zeros" in n for n in notes) and any("no audio onsets" in n for n in notes)
    others = [i for i in manifest["files"] if i != fid]
    assert others and all(manifest["files"][i]["warnings"] == [] for i in others)  # clean files: no false alarm
    assert cache.open_cache(cfg, "train").warnings == {fid: notes}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuild-free rerun does not warn again
        assert cache.build_cache(cfg, "train", progress=False).built == []
