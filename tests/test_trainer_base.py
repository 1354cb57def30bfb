"""BaseTrainer on a toy MLP regression: loss falls, checkpoints, exact resume, best selection, schedules, DDP."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from trainers.base import BaseTrainer
from trainers.checkpointing import CHECKPOINT_FORMAT, ResumableSampler
from trainers.optim import LRSchedule, apply_optimizer_impl, build_optimizer
from utils.config import ConfigError
from utils.io import load_torch
from utils.logging import read_metrics


class ToyRegression(Dataset):
    """y = x @ w + small noise, fixed by ``seed``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.y = self.x @ w + 0.05 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class ToyTrainer(BaseTrainer):
    def build_model(self) -> nn.Module:
        # Dropout makes every step draw from the global RNG, so exact resume needs the RNG state restored.
        return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))

    def build_datasets(self):
        return {"train": ToyRegression(64, seed=0), "val": ToyRegression(32, seed=1)}

    def train_step(self, batch):
        x, y = batch
        pred = self.forward_model(x)
        self.seen_lrs = getattr(self, "seen_lrs", []) + [self.optimizer.param_groups[0]["lr"]]
        return {"loss": F.mse_loss(pred, y), "mae": (pred - y).abs().mean()}

    def validate(self):
        x, y = self.val_dataset.x.to(self.device), self.val_dataset.y.to(self.device)
        torch.rand(3)  # validation that draws random numbers (like sampling noise) must not break resume
        return {"mse": F.mse_loss(self.model(x), y).item()}


def make_cfg(tmp_path: Path, **over):
    base = {
        "exp_name": "toy",
        "output_dir": str(tmp_path / "out"),
        "seed": 3,
        "device": "cpu",
        "amp": "none",
        "batch_size": 8,
        "num_workers": 0,
        "log_period": 2,
        "logging": ["jsonl"],
        "val_period": 1,
        "val_unit": "epoch",
        "val_before_train": False,
        "best_metric": "mse",
        "best_mode": "min",
        "solver": {"opt": "adam", "lr": 1e-2, "betas": [0.9, 0.999], "weight_decay": 0.0, "grad_norm": 1.0,
                   "epochs": 4, "lr_policy": "constant"},
    }  # fmt: skip
    cfg = OmegaConf.create(base)
    for k, v in over.items():
        OmegaConf.update(cfg, k.lstrip("+"), v, force_add=True)
    return cfg


def test_short_run_loss_falls(tmp_path):
    cfg = make_cfg(tmp_path, val_before_train=True, **{"solver.epochs": 6})
    with ToyTrainer(cfg) as tr:
        summary = tr.fit()
    assert summary["iteration"] == 6 * 8 and summary["epoch"] == 6
    recs = read_metrics(tr.run_dir / "metrics.jsonl")
    train_loss = [r["train/loss"] for r in recs if "train/loss" in r]
    val = [r["val/mse"] for r in recs if "val/mse" in r]
    assert len(val) == 7  # before training + after each of 6 epochs
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert val[-1] < 0.5 * val[0]
    assert (tr.run_dir / "config.yaml").is_file() and (tr.run_dir / "checkpoints" / "last.pt").is_file()


class ThreadRecordingTrainer(ToyTrainer):
    def train_step(self, batch):
        self.threads_seen = getattr(self, "threads_seen", set()) | {torch.get_num_threads()}
        return super().train_step(batch)


def test_num_threads_is_scoped_to_fit(tmp_path):
    # a stage's num_threads must not leak into later stages of the same process (the main job once trained its
    # generators single-threaded after the RVQ stage)
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    with ThreadRecordingTrainer(make_cfg(tmp_path, **{"+num_threads": want, "solver.epochs": 1})) as tr:
        tr.fit()
    assert tr.threads_seen == {want}
    assert torch.get_num_threads() == before


def test_checkpoint_contents(tmp_path):
    cfg = make_cfg(tmp_path, **{"solver.epochs": 2})
    with ToyTrainer(cfg) as tr:
        tr.fit()
    ck = load_torch(tr.run_dir / "checkpoints" / "last.pt")  # weights_only=True must succeed
    assert ck["format"] == CHECKPOINT_FORMAT
    assert {"model", "extra", "optimizer", "scheduler", "epoch", "iteration", "batch_in_epoch", "rng", "best", "config",
            "seed", "world_size", "metrics"} <= set(ck)  # fmt: skip
    assert ck["epoch"] == 2 and ck["iteration"] == 16 and ck["batch_in_epoch"] == 0
    for k, v in tr.model.state_dict().items():
        assert torch.equal(ck["model"][k], v)
    assert ck["optimizer"]["state"][0]["step"].item() == 16
    assert ck["config"]["solver"]["lr"] == 1e-2 and ck["config"]["batch_size"] == 8
    assert {"python", "numpy", "torch"} <= set(ck["rng"])
    assert ck["best"]["metric"] == "mse" and ck["best"]["value"] == pytest.approx(min(
        r["val/mse"] for r in read_metrics(tr.run_dir / "metrics.jsonl") if "val/mse" in r))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, **{"solver.epochs": 1})
    tr = ToyTrainer(cfg)
    tr.fit()
    last = tr.run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    tr.iteration += 1  # make the would-be checkpoint differ
    with pytest.raises(RuntimeError, match="simulated"):
        tr.save_checkpoint()
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp file left behind
    assert load_torch(last)["iteration"] == 8
    tr.close()


@pytest.mark.parametrize("stop_at", [11, 16])  # mid-epoch (epoch 1, batch 3) and exactly at an epoch end
def test_resume_is_bit_exact(tmp_path, stop_at):
    over = {"solver.epochs": 3, "solver.lr_policy": "multistep", "+solver.milestones": [12],
            "+solver.gamma": 0.3, "+solver.warmup_iters": 3, "val_unit": "iter", "val_period": 4}  # fmt: skip
    cfg = make_cfg(tmp_path, **over)
    with ToyTrainer(cfg, run_dir=tmp_path / "a") as a:
        a.fit()
    with ToyTrainer(cfg, run_dir=tmp_path / "b") as b:
        b.fit(until_iteration=stop_at)
        assert b.iteration == stop_at
    ckpt = tmp_path / "b" / "checkpoints" / "last.pt"
    with ToyTrainer(cfg, run_dir=tmp_path / "c") as c:
        c.resume(ckpt)
        c.fit()
    assert c.iteration == a.iteration == 24
    for k, v in a.model.state_dict().items():
        assert torch.equal(c.model.state_dict()[k], v), k
    assert c.best == a.best
    assert a.seen_lrs[stop_at:] == c.seen_lrs

    # The check above can fail: resuming without the saved RNG state (dropout draws) changes the weights.
    with ToyTrainer(cfg, run_dir=tmp_path / "d") as d:
        d.resume(ckpt)
        torch.manual_seed(12345)
        d.fit()
    assert not all(torch.equal(d.model.state_dict()[k], v) for k, v in a.model.state_dict().items())


class CountingTrainer(ToyTrainer):
    """State outside the model (like RVQ EMA statistics) travels through extra_state/load_extra_state."""

    def build_model(self):
        self.running = torch.zeros(1)
        return super().build_model()

    def train_step(self, batch):
        self.running = 0.9 * self.running + batch[0].mean()
        return super().train_step(batch)

    def extra_state(self):
        return {"running": self.running.clone()}

    def load_extra_state(self, state):
        self.running = state["running"].clone()


def test_extra_state_survives_resume(tmp_path):
    cfg = make_cfg(tmp_path, **{"solver.epochs": 2})
    with CountingTrainer(cfg, run_dir=tmp_path / "a") as a:
        a.fit()
    with CountingTrainer(cfg, run_dir=tmp_path / "b") as b:
        b.fit(until_iteration=5)
    with CountingTrainer(cfg, run_dir=tmp_path / "c") as c:
        c.resume(tmp_path / "b" / "checkpoints" / "last.pt")
        c.fit()
    assert torch.equal(a.running, c.running) and a.running.abs().item() > 0
    assert torch.equal(load_torch(tmp_path / "c" / "checkpoints" / "last.pt")["extra"]["running"], a.running)


class ScriptedValTrainer(ToyTrainer):
    values = [5.0, 3.0, 4.0, 1.0, 2.0]

    def validate(self):
        self.n_val = getattr(self, "n_val", 0) + 1
        return {"mse": self.values[self.n_val - 1], "other": -1.0}


@pytest.mark.parametrize("mode,expected_epoch", [("min", 4), ("max", 1)])
def test_best_checkpoint_on_val_metric(tmp_path, mode, expected_epoch):
    cfg = make_cfg(tmp_path, best_mode=mode, save_period=2, **{"solver.epochs": 5})
    with ScriptedValTrainer(cfg) as tr:
        tr.fit()
    best = load_torch(tr.run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == expected_epoch and best["iteration"] == 8 * expected_epoch
    assert best["best"]["value"] == ScriptedValTrainer.values[expected_epoch - 1]
    assert best["metrics"]["mse"] == best["best"]["value"]
    assert load_torch(tr.run_dir / "checkpoints" / "last.pt")["epoch"] == 5
    names = sorted(p.name for p in (tr.run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_0000002.pt", "epoch_0000004.pt", "last.pt"]


def test_best_metric_missing_is_an_error(tmp_path):
    cfg = make_cfg(tmp_path, best_metric="fgd", **{"solver.epochs": 1})
    with ToyTrainer(cfg) as tr, pytest.raises(ConfigError, match="fgd"):
        tr.fit()


def _opt(lr=0.1, n_groups=1):
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(n_groups)]
    return torch.optim.SGD(groups, lr=lr)


def test_lr_schedules_hand_checked():
    step = LRSchedule(_opt(0.1), "step", decay_epochs=2, decay_rate=0.5)
    assert [step.lr_at(e, 999)[0] for e in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    ms = LRSchedule(_opt(0.1, 2), "multistep", milestones=[5, 3], gamma=0.1)
    assert [ms.lr_at(0, i)[0] for i in range(7)] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert ms.lr_at(0, 3)[1] == pytest.approx(0.02)  # each group scales its own lr
    wu = LRSchedule(_opt(1.0), "constant", warmup_iters=4)
    assert [wu.lr_at(0, i)[0] for i in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    # The upstream generator recipe: 2e-4, x0.1 at epoch 500.
    up = LRSchedule(_opt(2e-4), "step", decay_epochs=500, decay_rate=0.1)
    assert up.lr_at(499, 0)[0] == pytest.approx(2e-4) and up.lr_at(500, 0)[0] == pytest.approx(2e-5)
    with pytest.raises(ConfigError, match="lr_policy"):
        LRSchedule(_opt(), "cosine")
    with pytest.raises(ConfigError, match="decay_epochs"):
        LRSchedule(_opt(), "step")


def test_lr_used_by_each_update_in_a_run(tmp_path):
    cfg = make_cfg(tmp_path, **{"solver.epochs": 3, "solver.lr_policy": "step", "+solver.decay_epochs": 1,
                                "+solver.decay_rate": 0.5})  # fmt: skip
    with ToyTrainer(cfg) as tr:
        tr.fit()
    assert tr.seen_lrs == pytest.approx([1e-2] * 8 + [5e-3] * 8 + [2.5e-3] * 8)


def test_optimizer_from_config():
    p = [nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(p, {"opt": "adamw", "lr": 2e-4, "betas": [0.9, 0.99], "weight_decay": 0.01})
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ConfigError, match="solver.opt"):
        build_optimizer(p, {"opt": "sgd", "lr": 1.0})
    with pytest.raises(ConfigError, match="solver.lr"):
        build_optimizer(p, {"opt": "adam", "lr_base": 1.0})


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_optimizer_impls_foreach_is_bit_identical_and_fused_close(opt):
    """solver.impl: foreach gives the for_loop update bit for bit; fused stays within float32 rounding."""
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    init = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(5)]
    out = {}
    for impl in ("for_loop", "foreach", "fused"):
        ps = [nn.Parameter(t.clone()) for t in init]
        o = build_optimizer(ps, {"opt": opt, "impl": impl, "lr": 1e-2, "weight_decay": 0.01})
        for step in grads:
            for p_, g_ in zip(ps, step):
                p_.grad = g_.clone()
            o.step()
        out[impl] = [p_.detach() for p_ in ps]
    assert all(torch.equal(a, b) for a, b in zip(out["for_loop"], out["foreach"]))
    assert all(not torch.equal(a, i) for a, i in zip(out["foreach"], init))  # the updates did move the weights
    for a, b in zip(out["for_loop"], out["fused"]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert build_optimizer([nn.Parameter(torch.zeros(2))], {"lr": 1.0}).defaults["foreach"] is None  # auto: torch's
    with pytest.raises(ConfigError, match="solver.impl must be one of"):
        build_optimizer([nn.Parameter(torch.zeros(2))], {"lr": 1.0, "impl": "turbo"})
    # a resumed optimiser takes the configured implementation, not the one its state dict was saved with
    saved = build_optimizer([nn.Parameter(torch.zeros(2))], {"lr": 1.0, "impl": "fused"}).state_dict()
    resumed = build_optimizer([nn.Parameter(torch.zeros(2))], {"lr": 1.0, "impl": "foreach"})
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["fused"] is True
    apply_optimizer_impl(resumed, {"impl": "foreach"})
    assert resumed.param_groups[0]["foreach"] is True and resumed.param_groups[0]["fused"] is None


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="epochs or solver.iterations"):
        ToyTrainer(make_cfg(tmp_path, **{"solver.epochs": None}))
    with pytest.raises(ConfigError, match="val_unit"):
        ToyTrainer(make_cfg(tmp_path, val_unit="step"))
    with pytest.raises(ConfigError, match="amp"):
        ToyTrainer(make_cfg(tmp_path, amp="fp16"))

    class TestSplitTrainer(ToyTrainer):
        def build_datasets(self):
            return {"train": ToyRegression(8, 0), "test": ToyRegression(8, 1)}

    with pytest.raises(ValueError, match="'val'"):
        TestSplitTrainer(make_cfg(tmp_path))


def test_iteration_limit_and_bf16_on_cpu(tmp_path, monkeypatch):
    def fit(sub: str, amp: str, iterations: int = 11) -> tuple[ToyTrainer, set]:
        tr = ToyTrainer(make_cfg(tmp_path / sub, amp=amp, **{"solver.epochs": None, "+solver.iterations": iterations}))
        seen: set = set()
        tr.model[0].register_forward_hook(lambda m, i, out: seen.add((m.training, out.dtype)))  # no RNG use
        with tr:
            tr.fit()
        return tr, seen

    tr, seen = fit("bf16", "bf16")
    assert tr.amp_dtype is torch.bfloat16 and tr.iteration == 11 and tr.epoch == 1 and tr.batch_in_epoch == 3
    assert (True, torch.bfloat16) in seen and (True, torch.float32) not in seen  # training steps under CPU autocast
    assert (False, torch.float32) in seen  # validation stays float32
    ref, seen32 = fit("fp32", "none")
    assert {d for _, d in seen32} == {torch.float32}
    w_bf16, w_fp32 = tr.model[0].weight.detach(), ref.model[0].weight.detach()
    assert w_bf16.dtype == torch.float32  # master weights
    # same data order and dropout draws: only the bf16 rounding differs
    assert not torch.equal(w_bf16, w_fp32) and torch.allclose(w_bf16, w_fp32, atol=2e-3)  # 2.3e-4 here

    import trainers.base as base

    monkeypatch.setattr(base, "native_bf16", lambda device: False)
    slow, _ = fit("slow", "bf16", 2)
    texts = [r.get("text", "") for r in read_metrics(slow.run_dir / "metrics.jsonl")]
    assert any("without bf16 hardware" in t for t in texts)


def test_resumable_sampler_shards_and_skips():
    ds = ToyRegression(10, 0)
    full = ResumableSampler(ds, num_replicas=1, rank=0, seed=7)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(10))
    full.set_start(4)
    assert list(full) == order[4:] and len(full) == 6
    full.set_epoch(3)
    full.set_start(0)
    assert list(full) != order  # reshuffled per epoch
    r0, r1 = ResumableSampler(ds, 2, 0, seed=7), ResumableSampler(ds, 2, 1, seed=7)
    assert sorted(list(r0) + list(r1)) == list(range(10))


# ------------------------------------------------------------------ DDP, 2 CPU processes (gloo)
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    import os

    from utils.io import save_torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    cfg = make_cfg(Path(tmp), **{"solver.epochs": 2})
    tr = ToyTrainer(cfg, run_dir=Path(tmp) / "run")
    init = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    save_torch({"init": init, "final": tr.model.state_dict(), "iteration": tr.iteration,
                "run_dir": str(tr.run_dir)}, Path(tmp) / f"rank{rank}.pt")  # fmt: skip
    tr.close()


def test_ddp_two_cpu_processes_keep_weights_identical(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_torch(tmp_path / "rank0.pt"), load_torch(tmp_path / "rank1.pt")
    assert r0["iteration"] == r1["iteration"] == 2 * 4  # 64 samples / 2 ranks / batch 8 = 4 steps per epoch
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
        assert torch.equal(r0["init"][k], r1["init"][k]), k
    assert not torch.equal(r0["final"]["0.weight"], r0["init"]["0.weight"])
    assert r1["run_dir"] == "None"  # only rank 0 has a run folder
    ck = load_torch(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng_per_rank"]) == 2
    assert not torch.equal(ck["rng_per_rank"][0]["torch"], ck["rng_per_rank"][1]["torch"])  # ranks seeded apart
