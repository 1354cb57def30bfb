"""Shortcut-ReFlow: the objective on given couplings, couplings deterministic and resumable, the trainer (teacher
initialisation, frozen or trainable encoder, exact resume), and its checkpoint read back by its config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataloaders.couplings import CouplingDataset, CouplingsError, CouplingStore
from inference.loading import load_trained_generator
from models.generators import ReflowObjective, ShortcutObjective
from tests.test_generative_trainer import assets, cfg_overrides  # noqa: F401  (module fixture + helper)
from trainers.generative import GenerativeTrainer
from trainers.reflow import ReflowTrainer, make_couplings, teacher_config
from utils.config import ConfigError, load_config


def toy_net(x, t, d, seed, at_feat):  # a NetFn whose output depends on every input
    return 0.5 * x + t.view(-1, 1, 1, 1) + (0 if d is None else d.view(-1, 1, 1, 1)) + at_feat.mean() + seed.mean()


def _toy_batch(b=8):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(b, 384, 1, 32, generator=g)
    return data, torch.randn(b, 4, 384, generator=g), torch.randn(b, 32, 16, generator=g), torch.randn(32, 16)


def test_objective_uses_the_given_noise_and_requires_it():
    data, seed, feat, null = _toy_batch()
    noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(5))
    rf, sc = ReflowObjective(), ShortcutObjective(cond_drop_prob=0.0, consistency_null_prob=0.0)
    a = rf(toy_net, data, seed, feat, null, torch.Generator().manual_seed(1), noise=noise)
    b = sc(toy_net, data, seed, feat, null, torch.Generator().manual_seed(1), noise=noise)
    assert float(a["loss"]) == float(b["loss"])  # the shortcut losses, on the given coupling
    c = rf(toy_net, data, seed, feat, null, torch.Generator().manual_seed(1), noise=noise + 1.0)
    assert float(c["loss"]) != float(a["loss"])  # the noise is used, not redrawn
    with pytest.raises(ValueError, match="coupled noise"):
        rf(toy_net, data, seed, feat, null)
    # the flow rows' target is exactly data − noise: a net that outputs it has zero flow loss
    out = ReflowObjective(flow_fraction=1.0, flow_weighting="none")(
        lambda x, t, d, s, f: data - noise, data, seed, feat, null, noise=noise)  # fmt: skip
    assert float(out["loss_flow"]) == 0.0


@pytest.fixture(scope="module")
def teacher(assets, tmp_path_factory):  # noqa: F811
    """A shortcut model trained for one epoch: the teacher of the tests below."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    cfg = load_config("configs/shortcut_tiny.yaml", cfg_overrides(assets, **{"solver.epochs": 1}))
    with GenerativeTrainer(cfg, run_dir=run) as tr:
        tr.fit()
    return run / "checkpoints" / "last.pt"


def reflow_cfg(assets, teacher, tmp, **over):  # noqa: F811
    o = {"reflow.teacher": teacher, "reflow.steps": 2, "reflow.batch_size": 5, "solver.epochs": 2,
         "output_dir": tmp / "out"}  # fmt: skip
    o.update(over)
    return load_config("configs/shortcut_reflow_tiny.yaml", cfg_overrides(assets, **o))


def test_couplings_are_deterministic_and_resume_after_an_interruption(assets, teacher, tmp_path):  # noqa: F811
    cfg = reflow_cfg(assets, teacher, tmp_path)
    tr = ReflowTrainer(cfg, run_dir=tmp_path / "run")
    full = tr.couplings_folder
    ds = CouplingDataset(full)
    assert len(ds) == len(tr.windows) and len(ds.manifest["chunks"]) == -(-len(ds) // 5)
    it = ds[3]
    assert it["noise"].shape == (384, 1, 32) and it["latents"].shape == (384, 1, 32) and it["seed"].shape == (4, 384)
    assert int(it["index"]) == 3
    # the teacher's sample from the stored noise and condition is the stored latent
    tcfg = teacher_config(cfg, str(teacher))
    t = load_trained_generator(tcfg, teacher, torch.device("cpu"))
    b = ds[0]
    again = t.sample(None, None, b["seed"][None], 2, 2.0, noise=b["noise"][None], at_feat=b["at_feat"][None])
    torch.testing.assert_close(again[0], b["latents"])

    # an interrupted run (killed after 2 chunks) resumes to the same arrays
    fp = tr.couplings_fingerprint(len(tr.windows))
    store = CouplingStore(tmp_path / "cut", fp)
    real_add, calls = store.add_chunk, []

    def add_then_die(arrays, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        real_add(arrays, **kw)

    store.add_chunk = add_then_die
    t.eval()
    args = (t, tr.codec, tr.windows, None, tr.pre_frames, 2, 2.0, 0, 5, torch.device("cpu"))
    with pytest.raises(KeyboardInterrupt):
        make_couplings(*args[:3], store, *args[4:])
    with pytest.raises(CouplingsError, match="incomplete"):
        CouplingDataset(tmp_path / "cut")
    resumed = CouplingStore(tmp_path / "cut", fp)
    assert resumed.n_chunks == 2
    make_couplings(*args[:3], resumed, *args[4:])
    cut = CouplingDataset(tmp_path / "cut")
    for i in range(len(ds)):
        for k, v in ds[i].items():
            assert torch.equal(v, cut[i][k]), (i, k)
    # processes that each make a share of the chunks give the same folder: here rank 1 of 2 (DDP) made its share
    # before the run stopped, and one process resumes it; finishing before all chunks exist names the missing ones
    n_chunks = len(ds.manifest["chunks"])
    split = CouplingStore(tmp_path / "split", fp)
    make_couplings(*args[:3], split, *args[4:], chunks=split.missing(n_chunks)[1::2], rank=1)
    assert not split.complete and sorted(split.done_chunks()) == list(range(1, n_chunks, 2))
    with pytest.raises(CouplingsError, match=r"chunks \[0, 2"):
        split.finish(n_chunks)
    make_couplings(*args[:3], CouplingStore(tmp_path / "split", fp), *args[4:])  # one process: the rest, finished
    two = CouplingDataset(tmp_path / "split")
    assert two.manifest["chunks"] == ds.manifest["chunks"]
    for i in range(len(ds)):
        for k, v in ds[i].items():
            assert torch.equal(v, two[i][k]), (i, k)
    # other settings never reuse the folder: the store starts over
    assert CouplingStore(tmp_path / "cut", {**fp, "seed": 1}).n_chunks == 0
    assert not list((tmp_path / "cut").glob("chunk_*"))
    tr.close()


def test_reflow_trainer_starts_from_the_teacher_and_resumes_exactly(assets, teacher, tmp_path):  # noqa: F811
    cfg = reflow_cfg(assets, teacher, tmp_path)
    tsd = load_trained_generator(teacher_config(cfg, str(teacher)), teacher, torch.device("cpu")).state_dict()
    with ReflowTrainer(cfg, run_dir=tmp_path / "a") as tr:  # (building a model draws from the global RNG: first)
        start = {k: v.clone() for k, v in tr.model.state_dict().items()}
        assert all(torch.equal(start[k], tsd[k]) for k in tsd)
        trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
        assert trainable and not any(n.startswith("modality_encoder.") for n in trainable)  # frozen: upstream
        tr.fit()
        final = {k: v.clone() for k, v in tr.model.state_dict().items()}
        n_iter = tr.iteration
    assert n_iter > 2
    assert all(torch.equal(final[k], start[k]) for k in final if k.startswith("modality_encoder."))
    assert any(not torch.equal(final[k], start[k]) for k in final if k.startswith("denoiser."))
    with ReflowTrainer(cfg, run_dir=tmp_path / "b") as tr:
        tr.fit(until_iteration=n_iter // 2 + 1)
    with ReflowTrainer(cfg, run_dir=tmp_path / "b") as tr:
        tr.resume(tmp_path / "b" / "checkpoints" / "last.pt")
        tr.fit()
        for k, v in tr.model.state_dict().items():
            assert torch.equal(v, final[k]), k
    # the checkpoint is a reflow model: its config reads it back; a shortcut config refuses it
    gen = load_trained_generator(cfg, tmp_path / "a" / "checkpoints" / "last.pt", torch.device("cpu"))
    assert type(gen).__name__ == "ReflowGenerator" and gen.sampler.settings()["n_steps"] == 2
    with pytest.raises(Exception, match="ReflowGenerator"):
        load_trained_generator(load_config("configs/shortcut_tiny.yaml", cfg_overrides(assets)),
                               tmp_path / "a" / "checkpoints" / "last.pt", torch.device("cpu"))  # fmt: skip


def test_trainable_encoder_re_encodes_the_windows(assets, teacher, tmp_path):  # noqa: F811
    cfg = reflow_cfg(assets, teacher, tmp_path, **{"reflow.encoder": "trainable", "solver.epochs": 1})
    with ReflowTrainer(cfg, run_dir=tmp_path / "t") as tr:
        batch = tr.collate_fn([tr.train_dataset[i] for i in range(4)])
        assert batch["audio"].shape[0] == 4 and batch["word"].shape == (4, 128)
        start = {k: v.clone() for k, v in tr.model.state_dict().items() if k.startswith("modality_encoder.")}
        tr.fit()
        enc = tr.model.state_dict()
        assert any(not torch.equal(enc[k], v) for k, v in start.items())


def test_config_errors(assets, teacher, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="reflow.teacher"):
        ReflowTrainer(load_config("configs/shortcut_reflow_tiny.yaml", cfg_overrides(assets)))
    with pytest.raises(ConfigError, match="reflow.encoder"):
        ReflowTrainer(reflow_cfg(assets, teacher, tmp_path, **{"reflow.encoder": "thawed"}))
    with pytest.raises(ConfigError, match="ReflowGenerator"):
        ReflowTrainer(reflow_cfg(assets, teacher, tmp_path, **{"model.generator.name": "shortcut"}))
    # the student must share the teacher's latent space and parameterisation
    with pytest.raises(ConfigError, match=r"latent_scale: teacher 5(\.0)?, this config 0.8"):
        ReflowTrainer(reflow_cfg(assets, teacher, tmp_path, latent_scale=0.8))
    with pytest.raises(ConfigError, match="prediction"):
        ReflowTrainer(reflow_cfg(assets, teacher, tmp_path, **{"model.generator.params.prediction": "data"}))
    with pytest.raises(ConfigError, match="model.init_from"):
        ReflowTrainer(reflow_cfg(assets, teacher, tmp_path, **{"model.init_from": teacher}))
    # the plain trainer refuses a reflow model (it has no couplings to give it)
    with pytest.raises(ConfigError, match="reflow.teacher"):
        GenerativeTrainer(load_config("configs/shortcut_reflow_tiny.yaml", cfg_overrides(assets)))
    # our trainer checkpoint is not a released file: loading it as one says to use --ckpt (kind-checked there)
    from models.checkpoints import CheckpointError, load_generator_checkpoint

    gen = load_trained_generator(teacher_config(reflow_cfg(assets, teacher, tmp_path), str(teacher)), teacher,
                                 torch.device("cpu"))  # fmt: skip
    with pytest.raises(CheckpointError, match="--ckpt"):
        load_generator_checkpoint(gen, teacher)
    assert load_generator_checkpoint(gen, teacher, allow_trainer=True).layout == "trainer"


def test_resume_refuses_another_teacher(assets, teacher, tmp_path):  # noqa: F811
    tr = ReflowTrainer(reflow_cfg(assets, teacher, tmp_path, **{"solver.epochs": 1}), run_dir=tmp_path / "r")
    tr.load_extra_state(tr.extra_state())  # the same teacher: fine
    with pytest.raises(ConfigError, match="original file"):
        tr.load_extra_state({"teacher_sha256": "0" * 64, "teacher": "old.pt"})
    tr.close()


def test_coupling_reader_names_a_damaged_file(tmp_path):
    store = CouplingStore(tmp_path / "c", {"x": 1})
    arrays = {"noise": np.zeros((2, 384, 1, 32)), "latents": np.zeros((2, 384, 1, 32)),
              "at_feat": np.zeros((2, 32, 8)), "seed": np.zeros((2, 4, 384)), "index": np.arange(2)}  # fmt: skip
    store.add_chunk(arrays)
    store.finish()
    assert len(CouplingDataset(tmp_path / "c")) == 2
    (tmp_path / "c" / "chunk_00000_seed.npy").write_bytes(b"not an array")
    with pytest.raises(CouplingsError, match="chunk_00000_seed.npy"):
        CouplingDataset(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(CouplingsError, match="manifest.json: unreadable"):
        CouplingDataset(tmp_path / "c")
    with pytest.raises(ValueError, match="lacks arrays"):
        store.add_chunk({"noise": np.zeros((1, 384, 1, 32))})


def test_coupling_store_indices_and_reset_touch_only_its_own_chunks(tmp_path):
    def arrays(v):
        return {"noise": np.full((1, 384, 1, 32), v), "latents": np.zeros((1, 384, 1, 32)),
                "at_feat": np.zeros((1, 32, 8)), "seed": np.zeros((1, 4, 384)), "index": np.arange(1)}  # fmt: skip

    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "chunk_notes.txt").write_text("mine")  # a user's file in a reused couplings_dir
    store = CouplingStore(folder, {"x": 1})
    store.add_chunk(arrays(0.0), index=0)
    store.add_chunk(arrays(2.0), index=2, rank=1)  # another rank's chunk: a gap at 1
    assert store.missing(4) == [1, 3]
    store.add_chunk(arrays(3.0))  # no index: after the highest, never over a finished chunk
    assert np.load(folder / "chunk_00002_noise.npy")[0, 0, 0, 0] == 2.0
    assert np.load(folder / "chunk_00003_noise.npy")[0, 0, 0, 0] == 3.0
    (folder / ".chunk_00001_noise.npy.x1y2.tmp").write_bytes(b"half written")  # a killed atomic write
    assert CouplingStore(folder, {"x": 2}).n_chunks == 0  # other settings: its chunks and temporaries go ...
    assert sorted(f.name for f in folder.iterdir()) == ["chunk_notes.txt", "manifest.json"]  # ... nothing else


# ------------------------------------------------------------------ DDP, 2 CPU processes (gloo)
def _ddp_worker(rank: int, world: int, port: int, assets: dict, teacher: str, tmp: str) -> None:  # noqa: F811
    import os
    from pathlib import Path

    from utils.io import save_torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    cfg = reflow_cfg(assets, teacher, Path(tmp), **{"solver.iterations": 3, "solver.epochs": "null",
                                                      "reflow.couplings_dir": Path(tmp) / "ddp_couplings"})  # fmt: skip
    with ReflowTrainer(cfg, run_dir=Path(tmp) / "run") as tr:
        tr.fit()
        params = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
        save_torch({"final": params, "iteration": tr.iteration}, Path(tmp) / f"rank{rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_share_the_couplings_and_keep_weights_identical(assets, teacher, tmp_path):  # noqa: F811
    import json

    import torch.multiprocessing as mp

    from tests.test_generative_trainer import _free_port
    from utils.io import load_torch

    mp.spawn(_ddp_worker, args=(2, _free_port(), assets, str(teacher), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_torch(tmp_path / "rank0.pt"), load_torch(tmp_path / "rank1.pt")
    assert r0["iteration"] == r1["iteration"] == 3
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    # each rank made its own chunks (k % 2), and together they equal one process's couplings
    folder = tmp_path / "ddp_couplings"
    ranks = {int(f.stem.split("_")[1]): json.loads(f.read_text())["rank"] for f in folder.glob("chunk_*.json")}
    assert len(ranks) >= 2 and all(r == k % 2 for k, r in ranks.items()), ranks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: another thread count sums in another order (last-bit differences)
    try:
        with ReflowTrainer(reflow_cfg(assets, teacher, tmp_path / "one"), run_dir=tmp_path / "one_run") as tr:
            one = CouplingDataset(tr.couplings_folder)
    finally:
        torch.set_num_threads(threads)
    ddp = CouplingDataset(folder)
    assert ddp.manifest["chunks"] == one.manifest["chunks"] and ddp.manifest["complete"]
    for i in range(len(one)):
        for k, v in one[i].items():
            assert torch.equal(v, ddp[i][k]), (i, k)
