"""In-memory Evaluator and the folder-mode CLI (test.py) on tiny synthetic folders, incl. bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

import test as test_cli
from evaluation.evaluator import EvaluationError, Evaluator, discover_pairs, evaluate_folder
from evaluation.metrics import BeatConsistency, frechet_distance
from geometry.body_model import get_fk
from geometry.rotations import poses_to_rot6d, reortho_6d
from tests.motion import smooth_random_motion

SR = 16000


class StandInEncoder(nn.Module):
    """map2latent: (B,T,330) -> (B,T/16,8): a fixed projection averaged over 16-frame blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(330, 8)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def map2latent(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return torch.tanh(self.proj(x)).reshape(b, t // 16, 16, 8).mean(2)


def random_walk(t: int, seed: int, scale: float = 0.02) -> np.ndarray:
    return smooth_random_motion((t, 165), seed, step=scale, offset=0.1).astype(np.float32)


def click_audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.normal(0, 1e-3, int(seconds * SR)).astype(np.float32)
    for t in np.sort(rng.uniform(0.5, seconds - 0.5, int(seconds * 3))):
        i = int(t * SR)
        y[i : i + 160] += rng.normal(0, 0.5, 160).astype(np.float32)
    return y


def test_evaluator_pools_fgd_and_matches_direct_metrics():
    enc = StandInEncoder()
    mv = np.full(55, 0.5)
    fk = get_fk(source="mannequin")
    ev = Evaluator(enc, mv, fk, "emage2024")
    rng = np.random.default_rng(0)
    seqs = []
    for i, t in enumerate((200, 250, 330)):
        gt = random_walk(t, i)
        pred = gt + rng.normal(0, 0.05, gt.shape).astype(np.float32)
        betas = rng.normal(0, 1, 300)
        audio = click_audio(t / 30 + 0.3, i)
        out = ev.add(pred, gt, betas, audio, f"s{i}")
        seqs.append((pred, gt, betas, audio, out))
    res = ev.compute()
    assert res["n_sequences"] == 3 and res["n_frames"] == 780
    # FGD = Fréchet distance of the pooled tokens of all trimmed sequences
    def feats(p):
        n = len(p) - len(p) % 32
        x = reortho_6d(poses_to_rot6d(torch.from_numpy(p[:n])).reshape(n, 55, 6)).reshape(1, n, 330)
        return enc.map2latent(x)[0].detach().double().numpy()

    fp = np.concatenate([feats(s[0]) for s in seqs])
    fg = np.concatenate([feats(s[1]) for s in seqs])
    assert fp.shape == ((192 + 224 + 320) // 16, 8)
    assert res["fgd"] == pytest.approx(frechet_distance(fp, fg), rel=1e-6, abs=1e-9)
    # BC / L1div per sequence = the metric classes on FK joints with the GT betas, translation zeroed
    bc = BeatConsistency(mv, protocol="emage2024")
    num = den = 0.0
    l1 = frames = 0.0
    for pred, _, betas, audio, out in seqs:
        j = fk.with_betas(betas)(torch.from_numpy(pred).double()).numpy()
        assert out["bc"] == pytest.approx(bc.update(j, audio), abs=1e-9)
        num += out["bc"] * (len(pred) - 120)
        den += len(pred) - 120
        l1 += np.abs(j - j.mean(0)).sum()
        frames += len(pred)
    assert res["bc"] == pytest.approx(num / den)
    assert res["l1div"] == pytest.approx(l1 / frames)
    # predictions identical to GT: FGD ~ 0 and pred metrics equal GT metrics
    ev2 = Evaluator(enc, mv, fk, "corrected")
    for _pred, gt, betas, audio, _ in seqs:
        ev2.add(gt, gt, betas, audio)
    r2 = ev2.compute()
    assert abs(r2["fgd"]) < 1e-9 and r2["bc"] == r2["bc_gt"] and r2["l1div"] == r2["l1div_gt"]


def test_evaluator_bootstrap_is_seeded_and_brackets_the_estimate():
    ev = Evaluator(StandInEncoder(), np.full(55, 0.5), get_fk(source="mannequin"), "corrected")
    for i in range(6):
        gt = random_walk(192, 10 + i)
        ev.add(gt + 0.05 * random_walk(192, 50 + i), gt, None, click_audio(6.6, i))
    a, b = ev.compute(n_boot=200, seed=3), ev.compute(n_boot=200, seed=3)
    assert a["ci95"] == b["ci95"]
    assert ev.compute(n_boot=200, seed=4)["ci95"] != a["ci95"]
    for k in ("fgd", "bc", "l1div", "bc_gt", "l1div_gt"):
        lo, hi = a["ci95"][k]
        assert lo <= hi and lo <= a[k] * 1.05 + 1e-9 and hi >= a[k] * 0.95 - 1e-9, k


def test_evaluator_without_fgd_or_bc_and_bad_input():
    ev = Evaluator(None, None, get_fk(source="mannequin"))
    gt = random_walk(64, 0)
    out = ev.add(gt, gt)
    res = ev.compute()
    assert "fgd" not in res and "bc" not in res and res["l1div"] == pytest.approx(out["l1div"])
    with pytest.raises(EvaluationError, match="frames"):
        ev.add(gt, gt[:50])
    bad = gt.copy()
    bad[3, 4] = np.nan
    with pytest.raises(EvaluationError, match="NaN"):
        ev.add(bad, gt)
    with pytest.raises(EvaluationError, match="165"):
        ev.add(gt[:, :160], gt[:, :160])
    with pytest.raises(EvaluationError, match="before any add"):
        Evaluator(None, None, get_fk(source="mannequin")).compute()


# ---------------------------------------------------------------------------------------------------------------
# folder mode / CLI


def write_folder(root, ids=("a", "b", "c"), frames=(200, 256, 230), prefix=True, copy_jaw=True):
    pred_dir, gt_dir, audio_dir = root / "pred", root / "gt", root / "audio"
    for d in (pred_dir, gt_dir, audio_dir):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, (sid, t) in enumerate(zip(ids, frames)):
        gt = random_walk(t, k)
        pred = gt + rng.normal(0, 0.05, gt.shape).astype(np.float32)
        if copy_jaw:
            pred[:, 66:69] = gt[:, 66:69]
        betas = rng.normal(0, 1, 300).astype(np.float32)
        expr = rng.normal(0, 1, (t, 100))
        trans = rng.normal(0, 1, (t, 3))
        common = dict(betas=betas, trans=trans, expressions=expr, model="smplx2020", gender="neutral",
                      mocap_frame_rate=np.array(30))  # fmt: skip
        extra = {"gt_copied": np.array(["jaw", "expressions", "trans"])} if copy_jaw else {}
        pred_common = common if copy_jaw else {**common, "expressions": expr + 0.1, "trans": trans + 0.1}
        np.savez(pred_dir / (f"res_{sid}.npz" if prefix else f"{sid}.npz"), poses=pred, **pred_common, **extra)
        np.savez(gt_dir / (f"gt_{sid}.npz" if prefix else f"{sid}.npz"), poses=gt, **common)
        sf.write(audio_dir / f"{sid}.wav", click_audio(t / 30 + 0.5, k), SR)
    mv = root / "mean_vel.npy"
    np.save(mv, np.full(55, 0.5))
    return pred_dir, gt_dir, audio_dir, mv


def test_cli_folder_mode_writes_metrics_json(tmp_path, capsys):
    from evaluation.fgd_autoencoder import VAESKConv
    from utils.io import save_torch

    pred_dir, gt_dir, audio_dir, mv = write_folder(tmp_path)
    torch.manual_seed(0)
    ckpt = tmp_path / "ae.bin"
    save_torch({"model_state": VAESKConv().state_dict()}, ckpt)
    out = tmp_path / "out"
    rc = test_cli.main([
        "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--audio-dir", str(audio_dir), "--mean-vel", str(mv),
        "--fgd-ckpt", str(ckpt), "--out", str(out), "--bootstrap", "50", "--protocol", "corrected",
    ])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fgd" in printed and "bc" in printed and "l1div" in printed
    m = json.loads((out / "metrics.json").read_text())
    for k in ("fgd", "bc", "l1div", "bc_gt", "l1div_gt"):
        assert isinstance(m["metrics"][k], float)
        assert len(m["ci95"][k]) == 2
    assert m["metrics"]["fgd"] > 0
    assert m["protocol"]["id"] == "corrected" and m["protocol"]["bc"]["options"]["absolute_mask_index"] is False
    assert len(m["fgd_ae"]["sha256"]) == 64 and len(m["mean_vel"]["sha256"]) == 64
    assert m["skeleton_source"].startswith("mannequin-x") or m["skeleton_source"].startswith("smplx:")
    assert [f["id"] for f in m["files"]] == ["a", "b", "c"] and [f["frames"] for f in m["files"]] == [200, 256, 230]
    assert m["n_frames"] == 686 and m["bootstrap"] == {"n": 50, "seed": 0, "unit": "sequence"}
    assert set(m["gt_copied_fields"]) >= {"jaw", "expressions", "trans"}
    assert "jaw" in m["files"][0]["identical_to_gt"] and m["files"][0]["gt_copied"] == ["jaw", "expressions", "trans"]


def test_folder_mode_plain_names_same_folder_and_no_fgd(tmp_path):
    pred_dir, gt_dir, audio_dir, mv = write_folder(tmp_path, prefix=False, copy_jaw=False)
    rep = evaluate_folder(pred_dir, gt_dir, audio_dir, mean_vel=mv, n_boot=0, progress=False)
    assert rep["metrics"].get("fgd") is None and rep["fgd_ae"] is None
    assert any("FGD not computed" in n for n in rep["notes"])
    assert rep["gt_copied_fields"] == []
    # upstream layout: res_ and gt_ files in one folder
    both = tmp_path / "both"
    p2, g2, a2, _ = write_folder(both)
    for f in g2.iterdir():
        f.rename(p2 / f.name)
    assert [i for i, _, _ in discover_pairs(p2, p2)] == ["a", "b", "c"]
    rep2 = evaluate_folder(p2, p2, a2, mean_vel=mv, n_boot=0, progress=False)
    assert rep2["n_sequences"] == 3 and rep2["metrics"]["bc"] is not None
    # no audio dir: BC null with a note, other metrics still there
    rep3 = evaluate_folder(p2, p2, None, mean_vel=mv, n_boot=0, progress=False)
    assert "bc" not in rep3["metrics"] and any("no --audio-dir" in n for n in rep3["notes"])


def test_folder_mode_bad_input(tmp_path, capsys):
    pred_dir, gt_dir, audio_dir, mv = write_folder(tmp_path)
    args = ["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--audio-dir", str(audio_dir), "--mean-vel",
            str(mv), "--bootstrap", "0"]  # fmt: skip
    # missing audio -> error, or reported exclusion on request
    (audio_dir / "b.wav").unlink()
    assert test_cli.main(args) == 1
    assert "b" in capsys.readouterr().err
    rep = evaluate_folder(pred_dir, gt_dir, audio_dir, mean_vel=mv, n_boot=0, skip_missing_audio=True, progress=False)
    assert {"id": "b", "metric": "bc", "reason": f"no b.wav in {audio_dir}"} in rep["excluded"]
    assert rep["files"][1]["bc"] is None and rep["files"][0]["bc"] is not None
    # mismatched ids
    (gt_dir / "gt_c.npz").rename(gt_dir / "gt_d.npz")
    with pytest.raises(EvaluationError, match=r"without GT .*\['c'\].*without prediction .*\['d'\]"):
        discover_pairs(pred_dir, gt_dir)
    (gt_dir / "gt_d.npz").rename(gt_dir / "gt_c.npz")
    # length mismatch
    z = dict(np.load(gt_dir / "gt_a.npz"))
    np.savez(gt_dir / "gt_a.npz", **{**z, "poses": z["poses"][:150], "trans": z["trans"][:150],
                                     "expressions": z["expressions"][:150]})  # fmt: skip
    with pytest.raises(EvaluationError, match="a: res_a.npz has 200 frames but gt_a.npz has 150"):
        evaluate_folder(pred_dir, gt_dir, None, n_boot=0, progress=False)
    np.savez(gt_dir / "gt_a.npz", **z)
    # NaN in a prediction
    zp = dict(np.load(pred_dir / "res_c.npz"))
    zp["poses"][10, 3] = np.nan
    np.savez(pred_dir / "res_c.npz", **zp)
    with pytest.raises(EvaluationError, match="res_c.npz.*NaN"):
        evaluate_folder(pred_dir, gt_dir, None, n_boot=0, progress=False)
    # folder mode without folders is a usage error
    assert test_cli.main([]) == 2
    assert "--pred-dir" in capsys.readouterr().err


def test_folder_mode_face_metrics_with_a_body_model_file(tmp_path):
    from geometry.body_model import write_toy_smplx_model

    model = write_toy_smplx_model(tmp_path / "smplx" / "SMPLX_NEUTRAL.npz", seed=1)
    pred_dir, gt_dir, audio_dir, mv = write_folder(tmp_path, frames=(64, 80, 96), copy_jaw=False)
    rep = evaluate_folder(pred_dir, gt_dir, None, body_model=model, n_boot=0, progress=False)
    assert rep["skeleton_source"].startswith("smplx:SMPLX_NEUTRAL.npz") and rep["face_model"].startswith("smplx:")
    for k in ("face_mse", "lvd_emage2024", "lvd_evaltools"):
        assert rep["metrics"][k] > 0
    # per-file face MSE equals the metric on the face vertices directly (jaw + expressions only, GT betas)
    from evaluation.metrics import face_mse
    from geometry.body_model import get_vertex_model

    vm = get_vertex_model(model)
    p, g = np.load(pred_dir / "res_a.npz"), np.load(gt_dir / "gt_a.npz")
    vr = vm.face_vertices(p["poses"], p["expressions"], g["betas"]).numpy()
    vt = vm.face_vertices(g["poses"], g["expressions"], g["betas"]).numpy()
    assert rep["files"][0]["face_mse"] == pytest.approx(face_mse(vr, vt), rel=1e-6)
    # frame-weighted mean over files
    mses = [f["face_mse"] for f in rep["files"]]
    assert rep["metrics"]["face_mse"] == pytest.approx(np.dot(mses, [64, 80, 96]) / 240, rel=1e-9)
