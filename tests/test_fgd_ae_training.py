"""FGD autoencoder trainer on BaseTrainer: rot6d windows of the cached synthetic corpus, loss, a short training whose
checkpoint loads with load_fgd_autoencoder, exact resume, config errors naming the key, DDP (gloo, slow)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from dataloaders.datasets import Rot6dWindowDataset, window_count
from dataloaders.synthetic import generate_corpus
from evaluation.fgd_autoencoder import VAESKConv, load_fgd_autoencoder
from geometry.rotations import poses_to_rot6d
from models.checkpoints import TRAINER_CHECKPOINT_FORMAT
from tests.motion import smooth_random_motion
from trainers.fgd_ae import FGDAETrainer, main, prepare_data, reconstruction_loss, train_from_config
from utils.config import ConfigError, load_config
from utils.io import load_torch, save_torch
from utils.logging import read_metrics
from utils.paths import REPO_ROOT

TINY = REPO_ROOT / "configs" / "fgd_ae_tiny.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    # Small convolutions: one thread is faster and immune to oversubscription on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A 1-speaker synthetic corpus (2 train, 1 val, 1 test file of 8 s = 240 frames), cached once."""
    root = tmp_path_factory.mktemp("fgd")
    paths = {"root": generate_corpus(root / "corpus", speakers=1, files_per_speaker=4, seconds=8, seed=3),
             "cache": root / "cache", "tmp": root}  # fmt: skip
    prepare_data(make_cfg(paths, root / "unused", "val_period=1"))
    return paths


def make_cfg(corpus: dict[str, Path], out: Path, *extra: str):
    """The tiny config on the test corpus: no words (the AE needs poses only), batch 4, 6 updates, no validation."""
    over = [f"data.root={corpus['root']}", f"data.cache_dir={corpus['cache']}", "data.training_speakers=[1]",
            "data.word_rep=none", "data.synthetic=null", f"output_dir={out}", "logging=[jsonl]", "log_period=1",
            "batch_size=4", "solver.iterations=6", "val_period=0", "seed=7"]  # fmt: skip
    return load_config(TINY, over + list(extra))


def test_rot6d_windows_of_the_cached_corpus(corpus):
    ds = Rot6dWindowDataset(make_cfg(corpus, corpus["tmp"]).data, "train")
    assert len(ds.entries) == 2 and len(ds) == 2 * window_count(240, 64, 20) == 18
    x = ds[1]  # the second window of the first file: frames 20..83
    assert x.shape == (64, 330) and x.dtype == torch.float32
    with np.load(Path(corpus["root"]) / "smplxflame_30" / f"{ds.entries[0].id}.npz") as z:
        poses = torch.from_numpy(z["poses"][20:84].astype(np.float32))
    torch.testing.assert_close(x, poses_to_rot6d(poses))  # raw rot6d: no normalisation on the way


def test_reconstruction_loss_hand_computed():
    target = torch.zeros(1, 3, 2)
    rec = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    parts = reconstruction_loss(rec, target, vel_weight=2.0, acc_weight=1.0)
    assert parts["rec"].item() == pytest.approx(2 / 6)
    assert parts["vel"].item() == pytest.approx(2 / 4)  # diffs: [-1,-1],[0,0]
    assert parts["acc"].item() == pytest.approx(1.0)  # second diff: [1,1]
    assert parts["loss"].item() == pytest.approx(2 / 6 + 2 * 0.5 + 1.0)
    assert "acc" not in reconstruction_loss(rec, target, vel_weight=1.0)


def test_configs_load():
    full = load_config(REPO_ROOT / "configs/fgd_ae.yaml")
    tiny = load_config(TINY)
    assert (full.data.fgd_window.length, full.data.fgd_window.stride) == (64, 20)
    assert full.data.training_speakers is None  # every speaker, as upstream
    assert tiny.solver.iterations == 150 and tiny.data.synthetic is not None and tiny.best_metric == "loss"
    # both build the official architecture, so their checkpoints load with load_fgd_autoencoder defaults
    for cfg in (full, tiny):
        assert VAESKConv(**cfg.model).state_dict().keys() == VAESKConv().state_dict().keys()


def test_short_training_reduces_loss_and_checkpoint_reloads(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path, "solver.iterations=24", "val_period=6", "val_unit=iter", "val_before_train=true",
                   "val.batch_size=5")  # fmt: skip
    summary = train_from_config(cfg)
    assert summary["iteration"] == 24 and summary["best"]["metric"] == "loss"
    recs = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    train = [r["train/loss"] for r in recs if "train/loss" in r]
    val = [r["val/loss"] for r in recs if "val/loss" in r]
    assert len(train) == 24 and len(val) == 5  # before training + every 6 updates
    assert np.mean(train[-4:]) < 0.5 * np.mean(train[:4])
    assert val[-1] < 0.5 * val[0]
    best = load_torch(summary["best_checkpoint"])
    assert best["format"] == TRAINER_CHECKPOINT_FORMAT and best["best"]["value"] == pytest.approx(min(val))
    model = load_fgd_autoencoder(summary["best_checkpoint"])
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model"][k]), k
    x = poses_to_rot6d(torch.from_numpy(smooth_random_motion((64, 165), seed=99, offset=0.3)).float())[None]
    with torch.no_grad():
        assert model.map2latent(x).shape == (1, 4, 240)
    # structural tensors are untouched by training
    fresh = VAESKConv().state_dict()
    for k, v in model.state_dict().items():
        if k.endswith(".mask") or ".common.0." in k:
            assert torch.equal(v, fresh[k]), k


def test_resume_is_exact(corpus, tmp_path):
    """Stopped after 3 updates (mid-epoch: 18 windows / batch 4 = 4 per epoch) and resumed to 6 = uninterrupted."""
    with FGDAETrainer(make_cfg(corpus, tmp_path / "a")) as tr:
        tr.fit()
        straight = {k: v.clone() for k, v in tr.model.state_dict().items()}
    part = train_from_config(make_cfg(corpus, tmp_path / "b"), until_iteration=3)
    assert part["iteration"] == 3
    resumed = train_from_config(make_cfg(corpus, tmp_path / "unused"), resume=part["last_checkpoint"])
    assert resumed["iteration"] == 6 and resumed["run_dir"] == part["run_dir"]  # continued in the same run folder
    final = load_torch(resumed["last_checkpoint"])["model"]
    for k, v in straight.items():
        assert torch.equal(final[k], v), k
    assert not torch.equal(straight["decoder.main.14.weight"], VAESKConv().state_dict()["decoder.main.14.weight"])
    # a checkpoint that is not a trainer checkpoint is refused with the file named
    save_torch({"model_state": straight}, tmp_path / "released.bin")
    with FGDAETrainer(make_cfg(corpus, tmp_path / "c")) as tr, pytest.raises(ValueError, match="released.bin"):
        tr.resume(tmp_path / "released.bin")


@pytest.mark.parametrize("override,key", [
    ("+loss.jerk=1.0", "loss.jerk"),
    ("loss.vel=-1", "loss.vel"),
    ("+model.width=8", "model.width"),
    ("best_metric=fgd", "best_metric"),
    ("batch_size=64", "batch_size"),
    ("solver.lr=null", "solver.lr"),
])  # fmt: skip
def test_bad_config_errors_name_the_key(corpus, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FGDAETrainer(make_cfg(corpus, tmp_path, override))


def test_loader_reads_trainer_checkpoints_and_names_bad_ones(tmp_path):
    arch = {"vae_grow": [1, 1, 1, 1], "vae_length": 120}
    model = VAESKConv(**arch)
    state = {"format": TRAINER_CHECKPOINT_FORMAT, "model": model.state_dict(), "config": {"model": arch}}
    save_torch(state, tmp_path / "small.pt")
    loaded = load_fgd_autoencoder(tmp_path / "small.pt")  # the architecture comes from the checkpoint's config
    assert loaded.latent_dim == 120
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    save_torch({**state, "config": {"model": {"nb_code": 32}}}, tmp_path / "rvq.pt")  # another stage's checkpoint
    with pytest.raises(ValueError, match="rvq.pt"):
        load_fgd_autoencoder(tmp_path / "rvq.pt")
    save_torch({**state, "config": {"model": {"vae_length": 32}}}, tmp_path / "bad_arch.pt")
    with pytest.raises(ValueError, match="bad_arch.pt"):
        load_fgd_autoencoder(tmp_path / "bad_arch.pt")


# ------------------------------------------------------------------ DDP, 2 CPU processes (gloo)
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, corpus: dict, tmp: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    tr = FGDAETrainer(make_cfg(corpus, Path(tmp), "solver.iterations=2"), run_dir=Path(tmp) / "run")
    init = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    save_torch({"init": init, "final": tr.model.state_dict(), "iteration": tr.iteration}, Path(tmp) / f"rank{rank}.pt")
    tr.close()


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_weights_identical(corpus, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), corpus, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_torch(tmp_path / "rank0.pt"), load_torch(tmp_path / "rank1.pt")
    assert r0["iteration"] == r1["iteration"] == 2
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
        assert torch.equal(r0["init"][k], r1["init"][k]), k
    assert not torch.equal(r0["final"]["decoder.main.14.weight"], r0["init"]["decoder.main.14.weight"])
    ck = load_torch(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng_per_rank"]) == 2
    load_fgd_autoencoder(tmp_path / "run" / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_tiny_config_on_synthetic_corpus(tmp_path):
    """The stand-alone entry point generates the corpus and its cache, trains 150 updates, keeps a loadable best."""
    summary = main([str(x) for x in ("-c", TINY, f"output_dir={tmp_path}", f"data.root={tmp_path / 'corpus'}",
                                     f"data.cache_dir={tmp_path / 'cache'}", "logging=[jsonl]")])  # fmt: skip
    recs = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    train = [r["train/loss"] for r in recs if "train/loss" in r]
    assert summary["iteration"] == 150 and train[-1] < 0.3 * train[0]
    load_fgd_autoencoder(summary["best_checkpoint"])
