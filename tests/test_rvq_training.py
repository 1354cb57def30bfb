"""RVQ-VAE training: loss falls on val, exact resume, checkpoints loadable, configs and CLI plumbing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from geometry.skeleton import part_dim, part_frame_indices
from models.vq.rvqvae import load_rvqvae
from trainers.rvq import (
    CONFIG_DIR,
    PartWindows,
    RVQTrainer,
    SmoothRandomWindows,
    canonical_part,
    resolve_config_path,
    run_training,
)
from utils.config import ConfigError, load_config
from utils.io import load_torch
from utils.logging import read_metrics


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions: one thread is faster and immune to oversubscription on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_cfg(tmp_path: Path, iterations: int = 30, **over) -> OmegaConf:
    cfg = dict(
        part="upper", exp_name="rvq_test", output_dir=str(tmp_path / "out"), seed=3, device="cpu",
        model=dict(nb_code=32, code_dim=16, width=32, depth=1, num_quantizers=3),
        loss=dict(recons="l1_smooth", commit=0.02, vel=0.0),
        batch_size=16, num_workers=0,
        solver=dict(opt="adamw", lr=3e-3, betas=[0.9, 0.99], weight_decay=0.0, iterations=iterations,
                    lr_policy="multistep", milestones=[20], gamma=0.05, warmup_iters=5, grad_norm=None),
        log_period=5, logging=["jsonl"], val_period=10, val_unit="iter", val_before_train=True,
        best_metric="rec_l1", best_mode="min",
        val=dict(batch_size=64, max_windows=None, fgd_autoencoder=None),
        dataset=dict(target="trainers.rvq.SmoothRandomWindows", params=dict(num_windows=64, length=32, seed=0)),
        data=None,
    )  # fmt: skip
    c = OmegaConf.create(cfg)
    for k, v in over.items():
        OmegaConf.update(c, k, v)
    return c


def test_part_windows_slice_by_explicit_indices() -> None:
    base = SmoothRandomWindows(num_windows=3, length=8)
    for part in ("upper", "hands", "lower", "lower_trans", "face"):
        ds = PartWindows(base, part)
        assert ds[1].shape == (8, part_dim(part))
        torch.testing.assert_close(ds[1], base[1][:, part_frame_indices(part)])
    assert canonical_part("hand") == "hands"
    with pytest.raises(ValueError, match="unknown body part"):
        canonical_part("han")  # no substring matching
    with pytest.raises(ValueError, match="frame vectors"):
        PartWindows([torch.zeros(8, 100)], "upper")[0]


def test_training_reduces_val_reconstruction_error(tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path, iterations=300, val_period=100, **{"solver.milestones": [250]})
    with RVQTrainer(cfg, run_dir=tmp_path / "run") as tr:
        summary = tr.fit()
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val/rec_l1" in r]
    assert [r["step"] for r in recs] == [0, 100, 200, 300]
    first, last = recs[0]["val/rec_l1"], recs[-1]["val/rec_l1"]
    assert last < 0.65 * first, (first, last)
    assert recs[-1]["val/rec_l2"] < recs[0]["val/rec_l2"]
    for q in range(3):  # per-layer codebook statistics are logged and sane
        assert 0 < recs[-1][f"val/usage_q{q}"] <= 1 and 1 <= recs[-1][f"val/perplexity_q{q}"] <= 32
    assert summary["best"]["value"] == pytest.approx(min(r["val/rec_l1"] for r in recs))
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert {"train/rec", "train/commit", "train/perplexity", "train/lr"} <= set(train[0])
    # warm-up then multistep: lr(i) = 3e-3 * (i+1)/6 for i < 5, 3e-3 until 250, then x0.05
    lrs = {r["step"]: r["train/lr"] for r in train}
    assert lrs[5] == pytest.approx(3e-3 * (1 + 2 + 3 + 4 + 5) / 6 / 5)  # logged: mean over updates 0..4
    assert lrs[300] == pytest.approx(3e-3 * 0.05)
    # best.pt / last.pt load as RVQ-VAEs with their full quantiser state
    for name in ("best.pt", "last.pt"):
        path = tmp_path / "run" / "checkpoints" / name
        model = load_rvqvae(path, part="upper")
        ck = load_torch(path)
        assert model.config["width"] == 32 and not model.training
        for i, layer in enumerate(model.quantizer.layers):
            assert torch.equal(layer.code_count, ck["quantizer_ema"][str(i)]["code_count"])
        assert set(ck["net"]) == set(ck["model"]) and ck["part"] == "upper"
    with pytest.raises(ValueError, match="part 'upper'"):
        load_rvqvae(tmp_path / "run" / "checkpoints" / "last.pt", part="hands")


def test_resume_is_exact_on_cpu(tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path, iterations=30)
    with RVQTrainer(cfg, run_dir=tmp_path / "full") as a:
        a.fit()
        ref_sd = {k: v.clone() for k, v in a.model.state_dict().items()}
        ref_ema = a.model.ema_state_dict()
        ref_opt = a.optimizer.state_dict()
    with RVQTrainer(cfg, run_dir=tmp_path / "part") as b:
        b.fit(until_iteration=13)  # mid-epoch (4 batches per epoch), between validations
        assert b.iteration == 13
    with RVQTrainer(cfg, run_dir=tmp_path / "part") as c:
        c.resume(tmp_path / "part" / "checkpoints" / "last.pt")
        assert c.iteration == 13 and bool(c.model.quantizer.layers[0].initialized)
        c.fit()
        assert c.iteration == 30
        for k, v in ref_sd.items():
            assert torch.equal(v, c.model.state_dict()[k]), k
        for i, layer in ref_ema.items():
            for k, v in layer.items():
                assert torch.equal(v, c.model.ema_state_dict()[i][k]), (i, k)
        opt = c.optimizer.state_dict()["state"]
        for pid, st in ref_opt["state"].items():
            assert torch.equal(st["exp_avg"], opt[pid]["exp_avg"])


def test_resume_without_quantizer_state_would_differ(tmp_path: Path) -> None:
    """The EMA state matters: resuming weights only (the reference's format) does not reproduce the run."""
    cfg = small_cfg(tmp_path, iterations=20, val_period=0, val_before_train=False)
    with RVQTrainer(cfg, run_dir=tmp_path / "a") as a:
        a.fit()
        ref = a.model.quantizer.layers[0].codebook.clone()
    with RVQTrainer(cfg, run_dir=tmp_path / "b") as b:
        b.fit(until_iteration=10)
    with RVQTrainer(cfg, run_dir=tmp_path / "b") as c:
        ck = tmp_path / "b" / "checkpoints" / "last.pt"
        state = load_torch(ck)
        for layer in state["quantizer_ema"].values():  # pretend it was lost
            layer["code_count"] = torch.ones_like(layer["code_count"])
            layer["code_sum"] = torch.zeros_like(layer["code_sum"])
        from utils.io import save_torch

        save_torch(state, ck)
        c.resume(ck)
        c.fit()
        assert not torch.equal(ref, c.model.quantizer.layers[0].codebook)


def test_velocity_loss_and_bad_loss_name(tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path, iterations=2, val_period=0, val_before_train=False, **{"loss.vel": 0.5})
    with RVQTrainer(cfg, run_dir=tmp_path / "v") as tr:
        out = tr.train_step(torch.randn(4, 32, 78))
        assert "vel" in out
        expected = out["rec"] + 0.02 * out["commit"] + 0.5 * out["vel"]
        torch.testing.assert_close(out["loss"], expected)
    with pytest.raises(ConfigError, match="recons"):
        RVQTrainer(small_cfg(tmp_path, **{"loss.recons": "huber"}), run_dir=tmp_path / "x")


def test_acceleration_and_jerk_losses(tmp_path: Path) -> None:
    """loss.acc / loss.jerk add the 2nd / 3rd time differences (own loss kind when *_kind is set); 0 = absent."""
    over = {"loss.acc": 0.3, "loss.jerk": 0.2, "loss.jerk_kind": "l1"}
    cfg = small_cfg(tmp_path, iterations=2, val_period=0, val_before_train=False, **over)
    with RVQTrainer(cfg, run_dir=tmp_path / "a") as tr:
        batch = torch.randn(4, 32, 78)
        out = tr.train_step(batch)
        assert "vel" not in out and {"acc", "jerk"} <= set(out)
        expected = out["rec"] + 0.02 * out["commit"] + 0.3 * out["acc"] + 0.2 * out["jerk"]
        torch.testing.assert_close(out["loss"], expected)
        # with a known reconstruction: the terms are the losses of its 2nd / 3rd time differences
        rec = batch + 0.1 * torch.randn_like(batch)
        tr.forward_model = lambda b: (rec, torch.tensor(0.0), torch.tensor(1.0))
        out = tr.train_step(batch)
        fn = torch.nn.functional
        torch.testing.assert_close(out["acc"], fn.smooth_l1_loss(rec.diff(n=2, dim=1), batch.diff(n=2, dim=1)))
        torch.testing.assert_close(out["jerk"], fn.l1_loss(rec.diff(n=3, dim=1), batch.diff(n=3, dim=1)))
    with pytest.raises(ConfigError, match="loss.acc_kind"):
        RVQTrainer(small_cfg(tmp_path, **{"loss.acc": 1.0, "loss.acc_kind": "huber"}), run_dir=tmp_path / "y")


def test_speed_profile_loss(tmp_path: Path) -> None:
    """loss.speed: the per-joint rot6d speed profile of the reconstruction vs the target's (13 upper joints)."""
    from trainers.rvq import joint_speed

    x = torch.zeros(1, 3, 78)
    x[0, 1, 6:12] = torch.tensor([3.0, 4.0, 0, 0, 0, 0])  # joint 1 moves by (3, 4) between frames 0 and 1 ...
    s = joint_speed(x, 13)
    assert s.shape == (1, 2, 13) and s[0, 0, 1] == 5.0 and s[0, 1, 1] == 5.0 and s.sum() == 10.0  # ... and back
    cfg = small_cfg(tmp_path, iterations=2, val_period=0, val_before_train=False, **{"loss.speed": 4.0})
    with RVQTrainer(cfg, run_dir=tmp_path / "s") as tr:
        batch = torch.randn(4, 32, 78)
        rec = batch + 0.1 * torch.randn_like(batch)
        tr.forward_model = lambda b: (rec, torch.tensor(0.0), torch.tensor(1.0))
        out = tr.train_step(batch)
        want = torch.nn.functional.smooth_l1_loss(joint_speed(rec, 13), joint_speed(batch, 13))
        torch.testing.assert_close(out["speed"], want)
        torch.testing.assert_close(out["loss"], out["rec"] + 4.0 * want)
    with pytest.raises(ConfigError, match="loss.speed"):
        RVQTrainer(small_cfg(tmp_path, part="face", **{"loss.speed": 1.0}), run_dir=tmp_path / "f")


def _identity_stats():
    from dataloaders.stats import Stats

    z = np.zeros
    return Stats(rot6d_mean=z(330), rot6d_std=np.ones(330), trans_v_mean=z(3), trans_v_std=np.ones(3),
                 mean_vel=np.ones(55))  # fmt: skip


def test_part_positions_equal_fk_of_the_axis_angle_pose() -> None:
    """PartPositions (normalised part rot6d -> joint positions, other joints at rest) = JointsFK on the same pose."""
    from geometry.body_model import get_fk
    from geometry.rotations import poses_to_rot6d
    from geometry.skeleton import BC_JOINTS, LOWER_JOINTS, PARTS, rot6d_indices
    from trainers.rvq import PartPositions

    g = torch.Generator().manual_seed(0)
    fk = get_fk(None, source="mannequin", flat_hand_mean=True)
    mean, std = np.linspace(-0.2, 0.3, 330), np.linspace(0.5, 2.0, 330)
    for part in ("upper", "lower_trans"):
        joints = list(PARTS[part]["joints"])
        poses = torch.zeros(2, 5, 165)
        for j in joints:
            poses[..., 3 * j : 3 * j + 3] = 0.4 * torch.randn(2, 5, 3, generator=g)
        idx = rot6d_indices(joints)
        x = (poses_to_rot6d(poses)[..., idx] - torch.as_tensor(mean[idx]).float()) / torch.as_tensor(std[idx]).float()
        if part == "lower_trans":
            x = torch.cat([x, torch.randn(2, 5, 3, generator=g)], -1)  # trans_v channels are ignored
        pp = PartPositions(part, mean, std, fk)
        assert pp.joints == sorted(set(BC_JOINTS) | set(joints))
        want = fk(poses)[..., pp.joints, :]
        torch.testing.assert_close(pp(x), want, atol=1e-5, rtol=1e-5)
    # the pelvis (lower_trans) moves the arms: a root rotation alone changes every BC joint's position
    pp = PartPositions("lower_trans", np.zeros(330), np.ones(330), fk)
    rest = torch.zeros(1, 1, 57)
    rest[..., 0:6] = torch.tensor([1.0, 0, 0, 0, 1, 0])  # identity rot6d for every lower joint ...
    rest[..., 6:54] = rest[..., 0:6].repeat(1, 1, 8)
    turned = rest.clone()
    turned[..., 0:6] = torch.tensor([0.0, 1, 0, -1, 0, 0])  # ... except the root, turned 90 degrees
    moved = (pp(turned) - pp(rest)).norm(dim=-1)[0, 0]
    bc = [pp.joints.index(j) for j in BC_JOINTS]
    assert bool((moved[bc] > 0.01).all()) and 0 in LOWER_JOINTS
    with pytest.raises(ConfigError, match="not supported for the hands part"):
        PartPositions("hands", mean, std, fk)


def test_position_losses_hand_computed() -> None:
    """fk_vel: squared velocity error / squared target velocity; fk_speed: the same on the norms (direction-free)."""
    from trainers.rvq import position_losses

    target = torch.zeros(1, 3, 2, 3)
    target[0, 1, 0] = torch.tensor([3.0, 4.0, 0.0])  # joint 0 moves (3, 4, 0) then back; joint 1 still
    same_speed_flipped = -target  # every velocity reversed, speeds unchanged
    out = position_losses(same_speed_flipped, target)
    energy = 2 * 25.0 / 4  # mean over (2 steps x 2 joints) of |v|^2
    torch.testing.assert_close(out["fk_speed"], torch.tensor(0.0))
    torch.testing.assert_close(out["fk_vel"], torch.tensor((2 * 100.0 / 4) / energy))  # |2v|^2 = 4|v|^2, i.e. 4
    still = torch.zeros_like(target)
    torch.testing.assert_close(position_losses(still, target)["fk_speed"], torch.tensor(1.0))
    torch.testing.assert_close(position_losses(target, target)["fk_vel"], torch.tensor(0.0))


def test_position_loss_terms_in_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """loss.fk_vel / loss.fk_speed add the weighted position terms, with gradients to the reconstruction."""
    import trainers.rvq as tr_mod

    monkeypatch.setattr(tr_mod, "load_stats", lambda data: _identity_stats())
    over = {"loss.fk_vel": 0.5, "loss.fk_speed": 2.0}
    cfg = small_cfg(tmp_path, iterations=2, val_period=0, val_before_train=False, **over)
    with RVQTrainer(cfg, run_dir=tmp_path / "p") as tr:
        batch = torch.randn(4, 32, 78)
        rec = (batch + 0.1 * torch.randn_like(batch)).requires_grad_(True)
        tr.forward_model = lambda b: (rec, torch.tensor(0.0), torch.tensor(1.0))
        out = tr.train_step(batch)
        want = tr_mod.position_losses(tr._positions(rec), tr._positions(batch))
        assert float(want["fk_vel"].detach()) > 0 and float(want["fk_speed"].detach()) > 0
        torch.testing.assert_close(out["fk_vel"], want["fk_vel"])
        torch.testing.assert_close(out["loss"], out["rec"] + 0.5 * want["fk_vel"] + 2.0 * want["fk_speed"])
        (0.5 * out["fk_vel"] + 2.0 * out["fk_speed"]).backward()  # the position terms alone reach the reconstruction
        assert rec.grad is not None and float(rec.grad.abs().sum()) > 0
    with pytest.raises(ConfigError, match="loss.fk_vel"):
        RVQTrainer(small_cfg(tmp_path, part="face", **{"loss.fk_vel": 1.0}), run_dir=tmp_path / "f")
    monkeypatch.undo()  # no statistics without a data node: a clear error instead of a failure inside the loader
    with pytest.raises(ConfigError, match=r"loss.fk_vel / loss.fk_speed need the data statistics .*data.root"):
        RVQTrainer(small_cfg(tmp_path, **{"loss.fk_speed": 1.0}), run_dir=tmp_path / "n")


def test_fgd_skipped_with_note_when_not_configured(tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path, iterations=1, val_period=1, val_before_train=False)
    with RVQTrainer(cfg, run_dir=tmp_path / "f") as tr:
        metrics = tr.run_validation()
    assert "fgd" not in metrics and "rec_l1" in metrics
    texts = [r.get("text", "") for r in read_metrics(tmp_path / "f" / "metrics.jsonl")]
    assert any("FGD skipped" in t for t in texts)
    with pytest.raises(ConfigError, match="fgd_autoencoder"):
        RVQTrainer(small_cfg(tmp_path, best_metric="fgd"), run_dir=tmp_path / "g")
    # an unloadable autoencoder: a note when FGD is optional, an error when it selects the best checkpoint
    missing = str(tmp_path / "no_such_ae.bin")
    cfg = small_cfg(tmp_path, iterations=1, val_period=1, val_before_train=False, **{"val.fgd_autoencoder": missing})
    with RVQTrainer(cfg, run_dir=tmp_path / "h") as tr:
        assert "fgd" not in tr.run_validation()
    notes = [r.get("text", "") for r in read_metrics(tmp_path / "h" / "metrics.jsonl")]
    assert any("FGD skipped (FileNotFoundError" in t for t in notes)
    cfg.best_metric = "fgd"
    with RVQTrainer(cfg, run_dir=tmp_path / "i") as tr, pytest.raises(RuntimeError, match="best_metric=fgd"):
        tr.run_validation()


# ----- configs and entry points ------------------------------------------------------------------------------------

@pytest.mark.parametrize("part", ["upper", "hands", "lower_trans", "face"])
def test_rvq_configs_resolve(part: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{part}.yaml")
    assert cfg.part == part and cfg.exp_name == f"rvq_{part}"
    assert cfg.model.width == 512 and cfg.model.nb_code == 1024 and cfg.model.code_dim == 128
    assert cfg.model.num_quantizers == 6 and cfg.batch_size == 256 and cfg.solver.iterations == 300000
    assert cfg.solver.opt == "adamw" and list(cfg.solver.betas) == [0.9, 0.99] and cfg.solver.weight_decay == 0
    assert list(cfg.solver.milestones) == [200000] and cfg.solver.gamma == 0.05 and cfg.solver.lr == 2e-4
    assert cfg.loss.commit == 0.02 and cfg.loss.vel == 0 and cfg.loss.recons == "l1_smooth"
    assert "rvq_window" in cfg.data
    tiny = load_config(CONFIG_DIR / f"{part}_tiny.yaml")
    assert tiny.part == part and tiny.device == "cpu" and tiny.model.code_dim == 128 and tiny.model.width < 512
    assert resolve_config_path(None, "hand" if part == "hands" else part) == CONFIG_DIR / f"{part}.yaml"


def test_run_training_from_config_with_body_part_and_resume(tmp_path: Path) -> None:
    cfg_path = tmp_path / "rvq.yaml"
    cfg = small_cfg(tmp_path, iterations=8, val_period=4, val_before_train=False)
    cfg.part = "hands"
    OmegaConf.save(cfg, cfg_path)
    s = run_training(cfg_path, body_part="lower_trans", overrides=["solver.iterations=8"], until_iteration=4)
    assert s["iteration"] == 4
    last = Path(s["last_checkpoint"])
    assert load_torch(last)["part"] == "lower_trans"
    s2 = run_training(cfg_path, body_part="lower_trans", resume=last)
    assert s2["iteration"] == 8 and s2["run_dir"] == s["run_dir"]  # continued in the same run folder
    assert load_rvqvae(last, part="lower_trans").input_width == part_dim("lower_trans")
    with pytest.raises(ValueError, match="part 'lower_trans'"):
        run_training(cfg_path, body_part="upper", resume=last)


def test_fgd_validation_matches_independent_computation(tmp_path: Path) -> None:
    from dataloaders.stats import Stats
    from evaluation.fgd_autoencoder import VAESKConv
    from evaluation.metrics import frechet_distance
    from utils.io import save_torch

    torch.manual_seed(0)
    ae = VAESKConv().eval()
    save_torch({"model_state": ae.state_dict()}, tmp_path / "ae.bin")
    rng = torch.Generator().manual_seed(1)
    stats = Stats(rot6d_mean=torch.randn(330, generator=rng).numpy(), rot6d_std=(torch.rand(330, generator=rng) + 0.5)
                  .numpy(), trans_v_mean=torch.zeros(3).numpy(), trans_v_std=torch.ones(3).numpy(),
                  mean_vel=torch.ones(55).numpy())  # fmt: skip
    stats.save(tmp_path / "stats")
    cfg = small_cfg(tmp_path, iterations=1, val_period=1, val_before_train=False, best_metric="fgd",
                    **{"val.fgd_autoencoder": str(tmp_path / "ae.bin")})
    cfg.data = {"stats_dir": str(tmp_path / "stats")}
    with RVQTrainer(cfg, run_dir=tmp_path / "fgd") as tr:
        metrics = tr.run_validation()
        model = tr.model.eval()  # run_validation leaves it in train mode
        full = torch.stack([w for (w,) in tr.val_dataset])  # preloaded (N, 32, 433) windows
        idx = torch.from_numpy(part_frame_indices("upper"))
        with torch.no_grad():  # batches of val.batch_size as validate() (the covariances are near-singular)
            rec = torch.cat([model.reconstruct(c[..., idx])["rec"] for c in full.split(64)])
            pasted = full.clone()
            pasted[..., idx] = rec
            mean = torch.as_tensor(stats.rot6d_mean, dtype=torch.float32)
            std = torch.as_tensor(stats.rot6d_std, dtype=torch.float32)
            f_gt = torch.cat([ae.map2latent(c[..., :330] * std + mean) for c in full.split(64)])
            f_rec = torch.cat([ae.map2latent(c[..., :330] * std + mean) for c in pasted.split(64)])
            f_gt, f_rec = (f.reshape(-1, 240).double().numpy() for f in (f_gt, f_rec))
    assert f_gt.shape == (64 * 2, 240)  # 32-frame windows -> 2 tokens each
    expected = frechet_distance(f_gt, f_rec)
    assert expected > 0 and metrics["fgd"] == pytest.approx(expected, rel=1e-6)
    assert tr.best["value"] == pytest.approx(metrics["fgd"])
    # face: no joints, FGD skipped with a note
    cfg_face = small_cfg(tmp_path, iterations=1, val_period=1, val_before_train=False,
                         **{"val.fgd_autoencoder": str(tmp_path / "ae.bin"), "part": "face"})
    with RVQTrainer(cfg_face, run_dir=tmp_path / "face") as tr:
        assert "fgd" not in tr.run_validation()
    notes = [r.get("text", "") for r in read_metrics(tmp_path / "face" / "metrics.jsonl")]
    assert any("FGD skipped for part 'face'" in t for t in notes)
