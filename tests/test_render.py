"""render_video: frame count, duration, audio, silhouette motion, a reference frame, side by side, bad inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from render.motion import RenderError, load_motion
from render.video import RenderOptions, probe_media, read_video_frames, render_still, render_video
from tests.conftest import REPO_ROOT
from tests.render_helpers import arm_wave_motion, decode_audio, save, write_tone

W, H = 160, 120
SMALL = dict(width=W, height=H, progress=False)


@pytest.fixture
def wave(tmp_path):
    return save(tmp_path / "wave.npz", **arm_wave_motion(30))


def _changed(frames: np.ndarray) -> np.ndarray:
    """Pixels that differ from the first frame by more than codec noise at some time."""
    return (np.abs(frames.astype(np.int32) - frames[:1]).max(-1) > 40).any(0)


def _body_mask(frame: np.ndarray) -> np.ndarray:
    """Wood-coloured pixels (red clearly above blue): the mannequin, not the grey floor or the sky."""
    f = frame.astype(np.int32)
    return (f[..., 0] - f[..., 2] > 45) & (f[..., 0] > 90)


@pytest.mark.parametrize("body", ["mannequin", "skeleton"])
def test_video_has_the_motion_length_frames_and_audio(tmp_path, wave, body):
    audio = write_tone(tmp_path / "long.wav", 1.6)  # longer than the 1.0 s motion: trimmed
    out = tmp_path / "v.mp4"
    info = render_video(wave, out, audio=audio, opt=RenderOptions(body=body, **SMALL))
    assert info["frames"] == 30
    frames, fps = read_video_frames(out)
    assert frames.shape == (30, H, W, 3) and fps == 30
    meta = probe_media(out)
    assert abs(meta["duration"] - 1.0) < 0.05
    assert meta["audio"] and "h264" in meta["video"][0] and "yuv420p" in meta["video"][0]
    a = decode_audio(out)
    assert abs(len(a) / 8000 - 1.0) < 0.05  # the audio stream lasts as long as the video
    assert np.abs(a[800:7000]).max() > 0.2  # and carries the tone
    # not blank: a body on a floor under a sky
    assert frames.std() > 10
    if body == "mannequin":
        assert _body_mask(frames[0]).sum() > 300


@pytest.mark.parametrize("body", ["mannequin", "skeleton"])
def test_render_threads_make_the_same_video(tmp_path, wave, body):
    # 30 frames = chunks 0 (frames 0-15) and 1 (16-29): with 2 threads each renders one, and ffmpeg gets them in order
    one = render_video(wave, tmp_path / "1.mp4", opt=RenderOptions(body=body, workers=1, crf=0, **SMALL))
    two = render_video(wave, tmp_path / "2.mp4", opt=RenderOptions(body=body, workers=2, crf=0, **SMALL))
    assert one["render_workers"] == 1 and two["render_workers"] == 2
    a, b = read_video_frames(tmp_path / "1.mp4")[0], read_video_frames(tmp_path / "2.mp4")[0]
    assert a.shape == b.shape == (30, H, W, 3) and np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - a[-1]).max() > 40  # and the motion is in it
    with pytest.raises(RenderError, match="--workers"):
        render_video(wave, tmp_path / "3.mp4", opt=RenderOptions(workers=-1, **SMALL))
    # side by side with a title (Pillow text drawn from the threads) and another video fps: the same video too
    both = [render_video(wave, tmp_path / f"gt{w}.mp4", gt=wave, opt=RenderOptions(
        body=body, workers=w, crf=0, title=True, fps=24, **SMALL)) for w in (1, 2)]  # fmt: skip
    a, b = read_video_frames(tmp_path / "gt1.mp4")[0], read_video_frames(tmp_path / "gt2.mp4")[0]
    assert both[0]["frames"] == 24 and a.shape == b.shape == (24, H, 2 * W, 3) and np.array_equal(a, b)


def test_a_render_error_in_a_thread_stops_the_encoder(tmp_path, wave, monkeypatch):
    import render.video as rv

    started = []
    real_popen = subprocess.Popen

    def popen(*a, **k):
        started.append(real_popen(*a, **k))
        return started[-1]

    def broken(self, f):
        if f >= 20:
            raise ValueError("boom in frame 20")
        return np.zeros((H, W, 3), np.uint8)

    monkeypatch.setattr(rv.subprocess, "Popen", popen)
    monkeypatch.setattr(rv._Panel, "frame", broken)
    with pytest.raises(ValueError, match="boom"):
        render_video(wave, tmp_path / "x.mp4", opt=RenderOptions(workers=2, **SMALL))
    assert started and started[0].poll() is not None  # ffmpeg was stopped, not left waiting on its input
    assert not (tmp_path / "x.mp4").exists() and not list(tmp_path.glob("*.tmp"))  # nothing half-written


def test_short_audio_is_padded_with_silence(tmp_path, wave):
    audio = write_tone(tmp_path / "short.wav", 0.4)
    out = tmp_path / "v.mp4"
    render_video(wave, out, audio=audio, opt=RenderOptions(body="skeleton", **SMALL))
    a = decode_audio(out)
    assert abs(len(a) / 8000 - 1.0) < 0.05
    assert np.abs(a[400:2800]).max() > 0.2  # tone in the first 0.4 s
    assert np.abs(a[4000:7600]).max() < 0.02  # silence after


def test_silhouette_moves_where_the_motion_moves(tmp_path, wave):
    out = tmp_path / "v.mp4"
    render_video(wave, out, opt=RenderOptions(**SMALL))
    frames = read_video_frames(out)[0]
    changed = _changed(frames)  # pixels the silhouette enters or leaves
    ys, xs = np.nonzero(_body_mask(frames[0]))
    top, bottom, cx = ys.min(), ys.max(), np.median(xs)
    knees = top + 0.62 * (bottom - top)  # below the lowered hand
    # the right arm (image left, camera in front) sweeps; legs and the other side stay put
    assert changed[:, : int(cx)].sum() > 40
    assert changed[int(knees) :, :].sum() == 0
    assert changed[:, int(cx) + 12 :].sum() == 0
    still = save(tmp_path / "still.npz", **arm_wave_motion(30, still=True))
    render_video(still, tmp_path / "s.mp4", opt=RenderOptions(**SMALL))
    assert _changed(read_video_frames(tmp_path / "s.mp4")[0]).sum() == 0


def test_a_fixed_pose_matches_the_reference_image(tmp_path):
    from PIL import Image

    motion = load_motion(save(tmp_path / "still.npz", **arm_wave_motion(2, still=True)))
    img = render_still(motion, 0, RenderOptions(**SMALL))
    ref = np.asarray(Image.open(REPO_ROOT / "tests" / "data" / "render_mannequin_160x120.png").convert("RGB"))
    assert img.shape == ref.shape
    assert np.abs(img.astype(int) - ref.astype(int)).mean() < 2.0
    a, b = _body_mask(img), _body_mask(ref)
    assert (a & b).sum() / (a | b).sum() > 0.97


def test_back_face_culling_keeps_the_visible_surface(tmp_path):
    """The mannequin is drawn with back faces culled: that must give the same picture as drawing both windings."""
    from render.bodies import MannequinBody
    from render.raster import rasterize
    from render.video import _frame_all, _Panel

    motion = load_motion(save(tmp_path / "w.npz", **arm_wave_motion(10)))
    body = MannequinBody(motion)
    opt = RenderOptions(width=320, height=240)
    panel = _Panel(body, motion, _frame_all([body], [motion], opt)[0], opt)
    v = body.vertices(np.arange(1))[0]
    xy, depth = panel.cam.project(v)
    both = rasterize(xy, depth, panel.faces, 320, 240, cull=0)
    culled = rasterize(xy, depth, panel.faces, 320, 240, cull=body.cull)
    wrong = rasterize(xy, depth, panel.faces, 320, 240, cull=-body.cull)
    assert (both >= 0).sum() > 2000
    assert (both == culled).mean() > 0.999
    assert (both == wrong).mean() < 0.99  # the check can fail: the other winding shows the inside


def test_side_by_side_is_labelled_gt_left(tmp_path, wave):
    still = save(tmp_path / "still.npz", **arm_wave_motion(30, still=True))
    out = tmp_path / "v.mp4"
    render_video(wave, out, gt=still, opt=RenderOptions(title=True, **SMALL))
    frames = read_video_frames(out)[0]
    assert frames.shape == (30, H, 2 * W, 3)
    changed = _changed(frames)
    assert changed[:, :W].sum() == 0  # ground truth (still) on the left
    assert changed[:, W:].sum() > 40  # generated (waving) on the right
    # title strip: a dark band across the top; labels: dark text near each panel's top-left corner
    assert frames[0, :3].mean() < 60
    plain = tmp_path / "plain.mp4"
    render_video(wave, plain, gt=still, opt=RenderOptions(**SMALL))
    p0 = read_video_frames(plain)[0][0]
    for x0 in (0, W):
        box = (slice(8, 26), slice(x0 + 4, x0 + 60))
        assert np.abs(frames[0][box].astype(int) - p0[box].astype(int)).max() > 60


def test_bad_inputs_are_one_clear_error_naming_the_file(tmp_path, wave):
    opt = RenderOptions(**SMALL)
    no_poses = save(tmp_path / "no_poses.npz", trans=np.zeros((5, 3)))
    bad = arm_wave_motion(5)
    bad["poses"][2, 7] = np.nan
    nan = save(tmp_path / "nan.npz", **bad)
    shape = save(tmp_path / "shape.npz", poses=np.zeros((5, 150), np.float32))
    trans = save(tmp_path / "trans.npz", poses=np.zeros((5, 165)), trans=np.zeros((4, 3)))
    text = tmp_path / "text.npz"
    text.write_text("not an npz")
    cases = [(no_poses, "no 'poses'"), (nan, "NaN"), (shape, "(T,165)"), (trans, "'trans'"), (text, "npz")]
    for path, what in cases:
        with pytest.raises(RenderError, match=what) as e:
            render_video(path, tmp_path / "o.mp4", opt=opt)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    not_audio = tmp_path / "noise.wav"
    not_audio.write_bytes(b"\x00\x01" * 100)
    for audio in (not_audio, tmp_path / "missing.wav"):
        with pytest.raises(RenderError) as e:
            render_video(wave, tmp_path / "o.mp4", audio=audio, opt=opt)
        assert str(audio) in str(e.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RenderError, match="cannot write") as e:
        render_video(wave, blocker / "o.mp4", opt=opt)
    assert str(blocker / "o.mp4") in str(e.value)
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*tmp"))  # nothing half-written
    with pytest.raises(RenderError, match="SMPL-X model"):
        render_video(wave, tmp_path / "o.mp4", opt=RenderOptions(body="smplx", smplx_model=None, **SMALL))
    for bad_opt, what in ((dict(preset="quick"), "--preset 'quick'"), (dict(crf=52), "--crf 52")):
        with pytest.raises(RenderError, match=what):
            render_video(wave, tmp_path / "o.mp4", opt=RenderOptions(**bad_opt, **SMALL))


def test_an_encoder_that_dies_mid_stream_is_a_clear_error(tmp_path, wave, monkeypatch):
    """An encoder exiting after a few frames stops the render (a broken pipe, no hang) and its last stderr line is
    the error; nothing is left at the output path."""
    import render.video

    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nhead -c 100000 >/dev/null\necho 'encoder gave up' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(render.video, "ffmpeg_exe", lambda: str(fake))
    with pytest.raises(RenderError, match="exit 3.*encoder gave up"):
        render_video(wave, tmp_path / "o.mp4", opt=RenderOptions(body="skeleton", **SMALL))
    assert not list(tmp_path.glob("*.mp4"))


def test_smplx_body_renders_a_model_file(tmp_path, wave, monkeypatch):
    """--body smplx with a (toy, random-geometry) SMPL-X model file: the mesh path runs and draws something."""
    from geometry.body_model import write_toy_smplx_model

    monkeypatch.delenv("SMPLX_MODEL_PATH", raising=False)
    model = write_toy_smplx_model(tmp_path / "SMPLX_NEUTRAL_2020.npz")
    img = render_still(load_motion(wave), 0, RenderOptions(body="smplx", smplx_model=str(model), **SMALL))
    bg = render_still(load_motion(wave), 0, RenderOptions(body="skeleton", **SMALL))
    assert img.shape == (H, W, 3) and np.abs(img.astype(int) - bg.astype(int)).max() > 50


def test_cli_prints_one_line_error_and_writes_a_video(tmp_path, wave):
    cmd = [sys.executable, str(REPO_ROOT / "render_video.py"), "--size", "160x120", "--quiet"]
    bad = save(tmp_path / "bad.npz", trans=np.zeros((3, 3)))
    r = subprocess.run(cmd + ["--input", str(bad), "--output", str(tmp_path / "o.mp4")], capture_output=True,
                       text=True, cwd=REPO_ROOT)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and str(bad) in r.stderr
    args = ["--input", str(wave), "--output", str(tmp_path / "o.mp4"), "--body", "skeleton", "--camera",
            "three-quarter", "--title", "--preset", "superfast", "--crf", "25"]  # fmt: skip
    r = subprocess.run(cmd + args, capture_output=True, text=True, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    assert "30 frames" in r.stdout and read_video_frames(tmp_path / "o.mp4")[0].shape[0] == 30


def test_title_settings_come_from_the_npz_and_its_sidecar_json(tmp_path):
    import json

    from render.video import model_settings

    npz = save(tmp_path / "res.npz", **arm_wave_motion(3), model=np.array("smplx2020"), seed=np.int64(7))
    (tmp_path / "res.json").write_text(json.dumps({"generator": "shortcut", "n_steps": 2, "big": list(range(50))}))
    got = model_settings(npz)
    assert "model=smplx2020" in got and "seed=7" in got and "generator=shortcut" in got and "n_steps=2" in got
    assert not any(s.startswith(("poses", "big", "mocap_frame_rate")) for s in got)
