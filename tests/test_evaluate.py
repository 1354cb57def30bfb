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
    # BC / L1div per sequence = the metric classes on FK joints with the GT betas, translation zeroed; emage2024
    # runs the FK in float32 (float32 poses in, float32 joints out), as the reference
    bc = BeatConsistency(mv, protocol="emage2024")
    num = den = 0.0
    l1 = frames = 0.0
    for pred, _, betas, audio, out in seqs:
        j = fk.with_betas(betas)(torch.from_numpy(pred)).numpy()
        assert j.dtype == np.float32
        assert out["bc"] == bc.update(j, audio)
        num += out["bc"] * (len(pred) - 120)
        den += len(pred) - 120
        j = j.astype(np.float64)  # L1div sums in float64
        assert out["l1div"] == np.abs(j - j.mean(0)).sum() / len(pred)
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
    for k in ("speed", "acceleration", "jerk", "speed_ratio", "jerk_ratio", "beat_placement", "beat_placement_gt"):
        assert np.isfinite(m["metrics"][k]) and len(m["ci95"][k]) == 2, k
    assert all("jerk" in f and "beat_placement" in f for f in m["files"])


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


# ---------------------------------------------------------------------------------------------------------------
# exactness: emage2024 BC in the reference's float32 dtypes (real BEAT2 sequence)


def _spec_speeds(joints: np.ndarray, mean_vel: np.ndarray, dtype: type) -> np.ndarray:
    """protocol.md §2.3 written out: L1div's in-place fold |x - mean_t x| (emage2024), central differences
    (one-sided at the ends) at 30 fps, L2 norm per joint, / mean_vel, all in ``dtype``."""
    n = joints.shape[0]
    x = joints.astype(dtype).reshape(n, 165)
    x = np.abs(x - x.mean(0)).reshape(n, 55, 3)
    dt = dtype(1 / 30)
    vel = np.empty_like(x)
    vel[0], vel[-1] = (x[1] - x[0]) / dt, (x[-1] - x[-2]) / dt
    vel[1:-1] = (x[2:] - x[:-2]) / (2 * dt)
    return np.sqrt((vel * vel).sum(-1)) / mean_vel.astype(dtype)


def _spec_bc(speed: np.ndarray, onsets: np.ndarray, threshold: float) -> float:
    """Minima (order 7) of speed[60:n-60]; kept where speed at the *absolute* index exceeds the threshold (the
    reference's index bug); per joint mean over onsets of exp(-d^2 / 2 0.3^2), 0 without beats; mean of 13."""
    from scipy.signal import argrelextrema

    n = speed.shape[0]
    per_joint = []
    for jt in (3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21):
        minima = argrelextrema(speed[60 : n - 60, jt], np.less, order=7)[0]
        beats = minima[speed[minima, jt] > threshold] / 30
        if beats.size == 0:
            per_joint.append(0.0)
            continue
        d = np.abs(onsets[:, None] - beats[None, :]).min(1)
        per_joint.append(float(np.mean(np.exp(-(d**2) / (2 * 0.3**2)))))
    return float(np.mean(per_joint))


def test_emage2024_bc_is_computed_in_float32_like_the_reference_on_real_beat2():
    import librosa

    from tests.conftest import BEAT2_SAMPLE, need

    npz = need(BEAT2_SAMPLE / "smplxflame_30" / "2_scott_0_1_1.npz")
    wav = need(BEAT2_SAMPLE / "wave16k" / "2_scott_0_1_1.wav")
    mv_path = need(BEAT2_SAMPLE / "stats" / "mean_vel_smplxflame_30.npy")
    z = np.load(npz)
    poses, betas, mv = z["poses"], z["betas"], np.load(mv_path)
    n = poses.shape[0]
    assert poses.dtype == np.float32 and mv.dtype == np.float32
    # audio onsets as the reference: librosa's default 22.05 kHz, resampled to 16 kHz, cut to the motion, 2 s trim
    y, sr = librosa.load(str(wav))
    y = librosa.resample(y, orig_sr=sr, target_sr=SR)
    cut = y[: int(SR / 30 * n)]
    onsets = librosa.onset.onset_detect(y=cut[32000 : len(y) - 32000], sr=SR, hop_length=512, units="time")
    # FK: output dtype follows the poses (float32 in, float32 out; the reference's smplx runs in float32)
    fk = get_fk(source="mannequin").with_betas(betas)
    j32 = fk(torch.from_numpy(poses)).numpy()
    j64 = fk(torch.from_numpy(poses).double()).numpy()
    assert j32.dtype == np.float32 and j64.dtype == np.float64
    s32, s64 = _spec_speeds(j32, mv, np.float32), _spec_speeds(j64, mv, np.float64)
    assert s32.dtype == np.float32 and 1e-6 < np.abs(s32 - s64).max() < 1e-3  # float32 rounding, not a bug
    # At the default threshold no beat of this file flips (on the mannequin skeleton), but one minimum's speed is
    # ~0.300002: a threshold between its float32 and float64 speeds (the nearest such one to 0.3) makes the dtype
    # decide that beat (measured: BC 0.74124 in float32 vs 0.74180 in float64).
    from scipy.signal import argrelextrema

    straddle = []
    for jt in (3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21):
        m32 = set(argrelextrema(s32[60 : n - 60, jt], np.less, order=7)[0].tolist())
        m64 = set(argrelextrema(s64[60 : n - 60, jt], np.less, order=7)[0].tolist())
        # the reference tests the absolute index m (index bug)
        straddle += [(float(s32[m, jt]) + float(s64[m, jt])) / 2 for m in m32 & m64 if s32[m, jt] != s64[m, jt]]
    for thr in sorted(straddle, key=lambda t: abs(t - 0.3)):
        bc32, bc64 = _spec_bc(s32, onsets, thr), _spec_bc(s64, onsets, thr)
        if abs(bc32 - bc64) > 1e-6:
            break
    else:
        pytest.fail("no minimum whose float32/float64 speeds straddle a threshold changes BC")
    assert abs(thr - 0.3) < 0.01 and abs(bc32 - bc64) > 1e-6
    # the Evaluator's emage2024 path equals the float32 definition; with float32_motion=False, the float64 one
    ev32 = Evaluator(None, mv_path, get_fk(source="mannequin"), "emage2024", threshold=thr)
    ev64 = Evaluator(None, mv_path, get_fk(source="mannequin"), "emage2024", threshold=thr, float32_motion=False)
    assert ev32.motion_dtype == torch.float32 and ev64.motion_dtype == torch.float64
    out32, out64 = ev32.add(poses, poses, betas, wav), ev64.add(poses, poses, betas, wav)
    assert abs(out32["bc"] - bc32) <= 1e-6 and abs(out32["bc_gt"] - bc32) <= 1e-6
    assert abs(out64["bc"] - bc64) <= 1e-6
    assert abs(out32["bc"] - out64["bc"]) > 1e-6
    # and at the default threshold the emage2024 path matches the float32 definition too
    default = BeatConsistency(mv, protocol="emage2024")
    assert abs(default.update(j32, onsets=onsets) - _spec_bc(s32, onsets, 0.3)) <= 1e-6
    assert default.normalised_speed(j64).dtype == np.float32  # float64 joints are rounded first, as the reference
    assert BeatConsistency(mv, protocol="corrected").normalised_speed(j32).dtype == np.float64


# ---------------------------------------------------------------------------------------------------------------
# public per-sequence results


def test_sequences_are_public_frozen_results_matching_add():
    import dataclasses

    from evaluation.evaluator import SequenceResult
    from pipeline.learning_check import paired_file_fgd

    enc = StandInEncoder()
    ev = Evaluator(enc, np.full(55, 0.5), get_fk(source="mannequin"), "corrected")
    outs = []
    for i, t in enumerate((200, 100)):  # the second is too short for BC (<= 120 frames): listed, not dropped
        gt = random_walk(t, i)
        outs.append(ev.add(gt + 0.05 * random_walk(t, 9 + i), gt, None, click_audio(t / 30 + 0.2, i), f"s{i}"))
    seqs = ev.sequences
    assert [type(q) for q in seqs] == [SequenceResult] * 2 and [q.as_dict() for q in seqs] == outs
    assert [q.id for q in seqs] == ["s0", "s1"] and [q.frames for q in seqs] == [200, 100]
    assert seqs[0].bc is not None and seqs[1].bc is None and seqs[0].excluded == ()
    assert seqs[1].excluded == (("bc", "100 frames <= 120"),)
    assert outs[1]["notes"] == ["100 frames <= 120: excluded from BC"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seqs[0].bc = 1.0  # type: ignore[misc]
    # per-sequence values are those of the metric classes the Evaluator holds
    assert [seqs[0].bc] == ev.bc.scores and [seqs[0].bc_gt] == ev.bc_gt.scores
    assert [q.l1_sum for q in seqs] == ev.l1.sums and seqs[1].l1div == ev.l1.sums[1] / 100
    assert ev.compute()["l1div"] == pytest.approx(ev.l1.compute(), rel=1e-12)
    # paired per-file FGD from the public moments = Fréchet distance of that file's own tokens
    def feats(p):
        n = len(p) - len(p) % 32
        x = reortho_6d(poses_to_rot6d(torch.from_numpy(p[:n])).reshape(n, 55, 6)).reshape(1, n, 330)
        return enc.map2latent(x)[0].detach().double().numpy()

    gt0 = random_walk(200, 0)
    pred0 = gt0 + 0.05 * random_walk(200, 9)
    assert paired_file_fgd(seqs[0].fgd_moments) == pytest.approx(frechet_distance(feats(pred0), feats(gt0)), rel=1e-6)
    ev.reset()
    assert ev.sequences == () and ev.bc.scores == [] and ev.l1.sums == []


# ---------------------------------------------------------------------------------------------------------------
# no silent results: short audio, stereo audio, plain files beside res_/gt_ files


def test_audio_much_shorter_than_the_motion_is_an_error_or_an_exclusion(tmp_path):
    gt = random_walk(300, 0)  # 10 s of motion
    pred = gt + 0.05 * random_walk(300, 1)
    ok = Evaluator(None, np.full(55, 0.5), get_fk(source="mannequin"), "corrected")
    assert ok.add(pred, gt, None, click_audio(9.5, 0), "within")["bc"] is not None  # 0.5 s short: tolerated
    wav = tmp_path / "short.wav"
    sf.write(wav, click_audio(8.5, 0), SR)  # 1.5 s short
    ev = Evaluator(None, np.full(55, 0.5), get_fk(source="mannequin"), "corrected")
    with pytest.raises(EvaluationError, match=r"s0: audio .*short\.wav lasts 8\.50 s but the motion 10\.00 s"):
        ev.add(pred, gt, None, wav, "s0")
    assert ev.sequences == () and ev.l1.sums == [] and ev.bc.scores == []  # a rejected sequence leaves no trace
    ex = Evaluator(None, np.full(55, 0.5), get_fk(source="mannequin"), "corrected", short_audio="exclude")
    out = ex.add(pred, gt, None, wav, "s0")
    assert out["bc"] is None and ex.sequences[0].excluded[0][0] == "bc" and "lasts 8.50 s" in out["notes"][0]
    with pytest.raises(ValueError, match="short_audio"):
        Evaluator(None, None, get_fk(source="mannequin"), short_audio="ignore")


def test_folder_mode_short_audio_stereo_audio_and_plain_files_are_reported(tmp_path, capsys):
    pred_dir, gt_dir, audio_dir, mv = write_folder(tmp_path, frames=(300, 256, 230))
    args = ["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--audio-dir", str(audio_dir), "--mean-vel",
            str(mv), "--bootstrap", "0", "--out", str(tmp_path / "out")]  # fmt: skip
    # a: 10 s of motion, 3 s of audio -> error naming the wav, or excluded from BC with --skip-missing-audio
    sf.write(audio_dir / "a.wav", click_audio(3.0, 0), SR)
    assert test_cli.main(args) == 1
    assert f"{audio_dir / 'a.wav'} lasts 3.00 s but the motion 10.00 s" in capsys.readouterr().err
    # b: stereo -> averaged to mono, with a note
    mono = click_audio(256 / 30 + 0.5, 1)
    sf.write(audio_dir / "b.wav", np.stack([mono, 0.5 * mono], 1), SR, subtype="FLOAT")
    # a plain <id>.npz beside res_ files is not evaluated, and says so
    (pred_dir / "extra.npz").write_bytes((pred_dir / "res_c.npz").read_bytes())
    with pytest.warns(UserWarning, match="extra.npz"):
        assert [i for i, _, _ in discover_pairs(pred_dir, gt_dir)] == ["a", "b", "c"]
    assert test_cli.main([*args, "--skip-missing-audio"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    short = [e for e in m["excluded"] if e["id"] == "a"]
    assert len(short) == 1 and short[0]["metric"] == "bc"
    assert "lasts 3.00 s but the motion 10.00 s" in short[0]["reason"]
    assert m["files"][0]["bc"] is None and m["files"][1]["bc"] is not None
    assert m["protocol"]["bc"]["audio_shortfall_tolerance_s"] == 1.0
    assert "excluded: a from bc: audio" in printed
    assert m["files"][1]["notes"] == [f"audio {audio_dir / 'b.wav'} has 2 channels: averaged to mono for BC"]
    assert f"note: b: audio {audio_dir / 'b.wav'} has 2 channels" in printed
    plain = [e for e in m["excluded"] if e["id"] == "extra"]
    assert len(plain) == 1 and plain[0]["metric"] == "all" and "extra.npz beside res_/gt_ files" in plain[0]["reason"]
    assert "excluded: extra from all: plain extra.npz" in printed
    # the stereo file's BC is the BC of the channel mean
    sf.write(audio_dir / "b.wav", 0.75 * mono, SR, subtype="FLOAT")
    rep = evaluate_folder(pred_dir, gt_dir, audio_dir, mean_vel=mv, n_boot=0, skip_missing_audio=True, progress=False)
    assert rep["files"][1]["bc"] == pytest.approx(m["files"][1]["bc"], abs=1e-9) and "notes" not in rep["files"][1]


# ---------------------------------------------------------------------------------------------------------------
# clear errors: FGD checkpoints, mean_vel, --out


def test_bad_fgd_checkpoints_give_one_clear_error(tmp_path, capsys):
    from evaluation.fgd_autoencoder import VAESKConv
    from utils.io import save_torch

    pred_dir, gt_dir, _, _ = write_folder(tmp_path, frames=(64, 64, 64))
    good = tmp_path / "ae.bin"
    save_torch({"model_state": VAESKConv().state_dict()}, good)
    data = good.read_bytes()
    truncated, empty, wrong = tmp_path / "half.bin", tmp_path / "empty.bin", tmp_path / "wrong.bin"
    garbage, tensor = tmp_path / "garbage.bin", tmp_path / "tensor.bin"
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    save_torch({"model_state": nn.Linear(330, 240).state_dict()}, wrong)  # another architecture
    garbage.write_bytes(b"hello world" * 10)  # torch's unpickler fails with a KeyError on these bytes
    save_torch(torch.zeros(3), tensor)
    cases = {truncated: "unreadable: truncated, corrupted", empty: "the file is empty", garbage: "unreadable",
             wrong: "wrong contents: .*not a VAESKConv state dict", tensor: "expected a dict checkpoint"}
    for path, what in cases.items():
        with pytest.raises(EvaluationError, match=what) as e:
            evaluate_folder(pred_dir, gt_dir, None, fgd_ckpt=path, n_boot=0, progress=False)
        assert str(path) in str(e.value) and "expected the EMAGE FGD autoencoder weights" in str(e.value)
        rc = test_cli.main(["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--fgd-ckpt", str(path),
                            "--bootstrap", "0", "--out", str(tmp_path / "out")])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("test.py: error: FGD checkpoint") and "Traceback" not in err
    assert evaluate_folder(pred_dir, gt_dir, None, fgd_ckpt=good, n_boot=0, progress=False)["metrics"]["fgd"] >= 0


def test_bad_mean_vel_names_the_file_and_the_actual_problem(tmp_path, capsys):
    pred_dir, gt_dir, audio_dir, _ = write_folder(tmp_path, frames=(200, 200, 200))
    cases = {
        "shape.npy": (np.full((55, 3), 0.5), r"expected 55 per-joint speeds \(shape \(55,\)\), got shape \(55, 3\)"),
        "short.npy": (np.full(54, 0.5), r"expected 55 per-joint speeds .*got shape \(54,\)"),
        "nan.npy": (np.where(np.arange(55) == 7, np.nan, 0.5), r"NaN/inf at joints \[7\]"),
        "zeros.npy": (np.where(np.arange(55) < 2, 0.0, 0.5), r"2 speeds <= 0 at joints \[0, 1\]"),
    }
    for name, (arr, msg) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(EvaluationError, match=f"mean_vel file {tmp_path / name}: {msg}"):
            evaluate_folder(pred_dir, gt_dir, audio_dir, mean_vel=tmp_path / name, n_boot=0, progress=False)
    (tmp_path / "text.npy").write_text("not an array")
    assert test_cli.main(["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--audio-dir", str(audio_dir),
                          "--mean-vel", str(tmp_path / "text.npy"), "--bootstrap", "0"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"mean_vel file {tmp_path / 'text.npy'}: cannot read it as a .npy array" in err and "Traceback" not in err
    # the in-memory Evaluator reports the same, as EvaluationError
    with pytest.raises(EvaluationError, match=r"mean_vel \(array\): .*got shape \(5, 11\)"):
        Evaluator(None, np.ones((5, 11)), get_fk(source="mannequin"))


def test_unwritable_out_is_found_first_and_a_late_write_failure_still_prints_the_table(tmp_path, capsys, monkeypatch):
    import evaluation.evaluator as evaluator_mod

    pred_dir, gt_dir, audio_dir, mv = write_folder(tmp_path)
    args = ["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--audio-dir", str(audio_dir), "--mean-vel",
            str(mv), "--bootstrap", "0"]  # fmt: skip
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made under a file (works as root too, unlike chmod)
    read = []
    real_load = evaluator_mod.load_motion_npz
    monkeypatch.setattr(evaluator_mod, "load_motion_npz", lambda p: read.append(p) or real_load(p))
    assert test_cli.main([*args, "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    assert f"output folder {blocker / 'out'} is not writable" in err and read == []  # nothing was evaluated
    # writing fails at the end (e.g. disk full): the table is printed anyway, and the exit code says it failed
    def disk_full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluator_mod, "save_json", disk_full)
    assert test_cli.main([*args, "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr()
    assert "l1div" in out.out and "bc_gt" in out.out and len(read) == 6
    assert f"could not write {tmp_path / 'out' / 'metrics.json'}" in out.err and "No space left" in out.err


def test_realism_in_the_evaluator_identity_noise_and_delay():
    """Known answers: a prediction equal to GT has ratios 1 and GT's beat placement; white noise of std s on the
    joint positions adds sqrt(20) s fps^3 per axis to the jerk's RMS, so jerk explodes while speed barely moves."""
    fk = get_fk(source="mannequin")
    mv = np.full(55, 0.5)
    rng = np.random.default_rng(5)
    t = np.arange(330)[:, None] / 30.0
    gt = (0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0, 165) * t + rng.uniform(0, 6, 165))).astype(np.float32)
    audio = click_audio(330 / 30 + 0.3, 5)
    ev = Evaluator(None, mv, fk, "corrected")
    same = ev.add(gt, gt, audio=audio, id="same")
    assert same["speed"] == same["speed_gt"] and same["jerk"] == same["jerk_gt"]
    assert same["beat_placement"] == same["beat_placement_gt"] is not None
    r = ev.compute()
    assert r["jerk_ratio"] == pytest.approx(1.0) and r["speed_ratio"] == pytest.approx(1.0)
    # jitter: small pose noise -> the jerk ratio is large, the speed ratio stays near 1
    noisy = gt + np.random.default_rng(0).normal(0, 0.01, gt.shape).astype(np.float32)
    ev2 = Evaluator(None, mv, fk, "corrected")
    ev2.add(noisy, gt, audio=audio, id="noisy")
    r2 = ev2.compute(n_boot=20)
    assert r2["jerk_ratio"] > 5 * r2["speed_ratio"] and r2["acceleration_ratio"] > 2
    assert r2["ci95"]["jerk_ratio"] == [pytest.approx(r2["jerk_ratio"])] * 2  # one sequence: no spread
    # a delayed copy keeps the speed distribution (ratios ~1) but not the timing of its minima
    late = np.concatenate([np.repeat(gt[:15], 1, 0)[:1].repeat(15, 0), gt[:-15]])
    ev3 = Evaluator(None, mv, fk, "corrected")
    d = ev3.add(late, gt, audio=audio, id="late")
    assert d["speed"] == pytest.approx(d["speed_gt"], rel=0.1)


# ---------------------------------------------------------------------------------------------------------------
# the ground-truth side is memoised by content: the learning check and NFE table score each GT ~15 times


@pytest.mark.parametrize("protocol", ["corrected", "emage2024"])
def test_memoised_gt_side_gives_the_numbers_of_a_fresh_evaluator(tmp_path, protocol):
    enc, fk, mv = StandInEncoder(), get_fk(source="mannequin"), np.full(55, 0.5)
    gt = random_walk(240, 0)
    betas = np.random.default_rng(1).normal(0, 1, 300)
    wav = tmp_path / "a.wav"
    sf.write(wav, click_audio(8.2, 0), SR)
    preds = [gt + 0.05 * random_walk(240, 10 + k) for k in range(3)]
    shared = Evaluator(enc, mv, fk, protocol)
    for k, pred in enumerate(preds):
        got = shared.add(pred, gt, betas, wav, f"s{k}")
        want = Evaluator(enc, mv, fk, protocol).add(pred, gt, betas, wav, f"s{k}")
        assert got == want  # every per-sequence number bit-identical (FGD moments compared below)
        fresh = Evaluator(enc, mv, fk, protocol)
        fresh.add(pred, gt, betas, wav)
        got_m, want_m = shared.sequences[-1].fgd_moments, fresh.sequences[-1].fgd_moments
        assert all(np.array_equal(a, b) for a, b in zip(got_m, want_m, strict=True))
    assert shared._memo.hits > 0
    assert all(not v.flags.writeable for v in shared._memo._items.values() if isinstance(v, np.ndarray))
    # other content is another key: another GT, other betas, a rewritten audio file
    other = random_walk(240, 5)
    assert shared.add(preds[0], other, betas, wav)["bc_gt"] == Evaluator(enc, mv, fk, protocol).add(
        preds[0], other, betas, wav)["bc_gt"]
    sf.write(wav, click_audio(8.5, 7), SR)  # new content and size: its onsets are recomputed
    fresh = Evaluator(enc, mv, fk, protocol)
    assert shared.add(preds[0], gt, betas, wav, "r") == fresh.add(preds[0], gt, betas, wav, "r")


def test_gt_memo_is_a_bounded_lru_and_stores_no_failure():
    from evaluation.evaluator import _GtMemo

    memo, calls = _GtMemo(size=2), []
    for key in ("a", "b", "a", "c", "b"):
        memo.get((key,), lambda k=key: calls.append(k) or np.zeros(2))
    assert calls == ["a", "b", "c", "b"] and memo.hits == 1 and list(memo._items) == [("c",), ("b",)]

    def fail():
        raise ValueError("bad")

    with pytest.raises(ValueError):
        memo.get(("x",), fail)
    assert ("x",) not in memo._items


def test_memo_never_locks_the_callers_audio_array():
    y = click_audio(8.2, 0)  # float32: load_bc_audio hands back this very array
    gt = random_walk(240, 0)
    ev = Evaluator(None, np.full(55, 0.5), get_fk(source="mannequin"), "corrected")
    ev.add(gt + 0.05 * random_walk(240, 1), gt, None, y, "a")
    y[0] = 0.5  # still writeable
    assert y.flags.writeable
