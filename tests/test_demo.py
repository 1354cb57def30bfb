"""The web demo's functions called directly (``webdemo.core``, ``webdemo.ui.handle_request``), on the tiny model of
the shared ``pipe`` fixture: a wav in -> mp4/npz/json/BVH/glb out, each read back and compared with what the
command-line tools make of the same input; every bad input a one-line message for the page (never a traceback) with
its request folder removed; limits; paths outside the upload folders refused. The page itself, in a real browser, is
tests/test_demo_browser.py (slow)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dataloaders.synthetic import SR
from inference.api import generate_from_audio
from inference.model_source import TRAIN_COMMAND
from render.export import export_motion, read_bvh, read_glb
from render.video import probe_media, read_video_frames
from tests.conftest import REPO_ROOT, speech
from webdemo.core import (
    RELEASED_CONFIG,
    DemoApp,
    DemoError,
    Limits,
    RequestFolders,
    admit_file,
    list_models,
    model_notice,
    safe_name,
)

SECONDS = 3.5


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict:
    """A stand-in for Gradio's upload folder, with a speech clip and its words."""
    d = tmp_path_factory.mktemp("uploads")
    y, phrases = speech(SECONDS, seed=3)
    sf.write(d / "talk.wav", y, SR, subtype="PCM_16")
    return {"dir": d, "wav": d / "talk.wav", "words": " ".join(w.text for p in phrases for w in p)}


@pytest.fixture(scope="module")
def app(pipe, uploads, tmp_path_factory):
    models = list_models(str(pipe["out"]), outputs=tmp_path_factory.mktemp("no_outputs"))
    a = DemoApp(models, [uploads["dir"]], Limits(), workdir=tmp_path_factory.mktemp("work"), device="cpu")
    yield a
    a.close()


def _fail(app: DemoApp, audio, **kw) -> str:
    """The message of a request that must fail; its folder must be gone."""
    before = set(app.folders.active())
    with pytest.raises(DemoError) as e:
        app.generate(audio, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg and str(app.folders.root) not in msg, msg
    assert set(app.folders.active()) == before  # the failed request's folder was removed
    return msg


# ---------------------------------------------------------------------------------------------------- results
def test_a_wav_becomes_video_npz_bvh_glb_json(app, uploads, tmp_path):
    label = app.model_labels[0]
    out = app.generate(str(uploads["wav"]), transcript=uploads["words"], model=label, seed=5, body="skeleton")
    n = math.ceil(SECONDS * 30)
    assert out.request_id in app.folders.active() and out.folder.is_dir()
    # the motion: what gesture_inference.py's code makes of the same audio, words and seed
    d = np.load(out.npz, allow_pickle=False)
    assert d["poses"].shape == (n, 165) and d["trans"].shape == (n, 3) and np.all(np.isfinite(d["poses"]))
    lm = app.cache.get(label)[0]
    ref = generate_from_audio(lm, uploads["wav"], text=uploads["words"], seed=5)
    np.testing.assert_array_equal(d["poses"], ref.poses)
    np.testing.assert_array_equal(d["trans"], ref.trans)
    # the video: the whole audio, with sound, one 480x360 panel, a frame per motion frame
    info = probe_media(out.video)
    assert info["duration"] == pytest.approx(SECONDS, abs=0.1) and info["audio"] and info["video"]
    frames, fps = read_video_frames(out.video)
    assert frames.shape == (n, 360, 480, 3) and fps == 30 and frames.std() > 1  # an image, not a blank
    # the exports: byte for byte what export_motion.py writes for that npz
    export_motion(out.npz, "bvh", tmp_path / "m.bvh")
    export_motion(out.npz, "gltf", tmp_path / "m.glb")
    assert out.bvh.read_bytes() == (tmp_path / "m.bvh").read_bytes()
    assert out.glb.read_bytes() == (tmp_path / "m.glb").read_bytes()
    bvh = read_bvh(out.bvh)
    assert bvh["frames"].shape[0] == n and bvh["frame_time"] == pytest.approx(1 / 30)
    doc, _ = read_glb(out.glb)
    assert doc["animations"] and len(doc["skins"][0]["joints"]) == 54
    # the json: every setting, no path of the server's temp folder, the real-time factor shown on the page
    meta = json.loads(out.json.read_text())
    assert meta == out.settings
    assert meta["seed"] == 5 and meta["frames"] == n and meta["words"]["source"] == "transcript"
    assert meta["demo"] == {"model": label, "body": "skeleton", "video_size": "480x360", "reference": None,
                            "uploaded_as": "talk.wav"}  # fmt: skip
    assert meta["audio"]["path"] == "talk.wav" and meta["outputs"] == {"npz": "talk.npz", "json": "talk.json"}
    assert str(app.folders.root) not in out.json.read_text()
    assert out.real_time_factor == meta["timing"]["real_time_factor"] > 0
    assert f"Real-time factor **{out.real_time_factor:.3f}**" in out.summary
    # handed over: the request's folder goes
    assert app.release(out.request_id) and not out.folder.exists() and not app.release(out.request_id)


def test_steps_guidance_seed_and_reference_are_per_request(app, uploads):
    a = app.generate(str(uploads["wav"]), steps="3", guidance=" 1 ", seed=6, body="skeleton")
    ma = a.settings
    assert ma["sampler"]["n_steps"] == 3 and ma["sampler"]["guidance"] == 1.0
    assert ma["nfe_total"] == 3 * ma["windows"] and ma["words"]["source"] == "none"
    ref = uploads["dir"] / "previous.npz"
    ref.write_bytes(a.npz.read_bytes())
    b = app.generate(str(uploads["wav"]), seed=6, body="skeleton", reference=str(ref))
    mb = b.settings
    # empty steps/guidance: back to the checkpoint's own sampler settings (the tiny model: 2 steps)
    lm, defaults = app.cache.get(app.model_labels[0])
    assert mb["sampler"]["n_steps"] == defaults["n_steps"] == 2 and mb["sampler"]["guidance"] == defaults["guidance"]
    assert np.abs(np.load(a.npz)["poses"] - np.load(b.npz)["poses"]).max() > 1e-4
    # side by side with the reference: two panels
    assert "960x360" in probe_media(b.video)["video"][0]
    assert mb["demo"]["reference"] == "previous.npz"
    for r in (a, b):
        app.release(r.request_id)
    assert app.folders.active() == []


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_audio_is_a_message_and_leaves_nothing(app, uploads, pipe, tmp_path):
    up = uploads["dir"]
    (up / "notes.wav").write_text("these are my notes, not audio\n")
    sf.write(up / "silent.wav", np.zeros(2 * SR, np.float32), SR)
    assert _fail(app, str(up / "notes.wav")).startswith("notes.wav: unreadable audio")
    assert "no speech energy" in _fail(app, str(up / "silent.wav"))
    assert "no audio" in _fail(app, None)
    outside = tmp_path / "secret.wav"
    outside.write_bytes(uploads["wav"].read_bytes())
    assert "refused" in _fail(app, str(outside))
    assert "refused" in _fail(app, str(up / ".." / outside.parent.name / "secret.wav"))
    (up / "link.wav").symlink_to(outside)  # a link inside the upload folder to a file outside it
    assert "refused" in _fail(app, str(up / "link.wav"))
    assert "refused" in _fail(app, "/etc/hostname")
    (up / "not_motion.txt").write_text("x")
    assert "not an .npz" in _fail(app, str(uploads["wav"]), reference=str(up / "not_motion.txt"))
    (up / "fake.npz").write_text("not an npz")
    assert "fake.npz" in _fail(app, str(uploads["wav"]), reference=str(up / "fake.npz"), body="skeleton")
    tg = up / "talk.TextGrid"
    tg.write_text("File type = \"ooTextFile\"\n")
    assert "not both" in _fail(app, str(uploads["wav"]), transcript="hello", textgrid=str(tg))
    assert "talk.TextGrid" in _fail(app, str(uploads["wav"]), textgrid=str(tg))
    for kw, needle in [({"steps": "abc"}, "steps"), ({"steps": "0"}, "steps"), ({"steps": "51"}, "from 1 to 50"),
                       ({"guidance": "-1"}, "guidance"), ({"guidance": "nan"}, "guidance"), ({"seed": -1}, "seed"),
                       ({"seed": 1.5}, "seed"), ({"body": "smplx"}, "body"), ({"size": "4000x4000"}, "video size"),
                       ({"model": "/etc/passwd"}, "not one of this demo's models"),
                       ({"transcript": "word " * 2000}, "limit of 5000")]:  # fmt: skip
        assert needle in _fail(app, str(uploads["wav"]), **kw), kw
    assert list(app.folders.root.iterdir()) == []  # every failed request's folder was removed


def test_limits_have_clear_messages(pipe, uploads, tmp_path):
    models = list_models(str(pipe["out"]), outputs=tmp_path / "none")
    short = DemoApp(models, [uploads["dir"]], Limits(max_seconds=2.0), workdir=tmp_path / "w1")
    msg = _fail(short, str(uploads["wav"]))
    assert msg.startswith("talk.wav: 3.5 s of audio is over this demo's limit of 2 s") and "--max-seconds" in msg
    small = DemoApp(models, [uploads["dir"]], Limits(max_upload_mb=0.05), workdir=tmp_path / "w2")
    msg = _fail(small, str(uploads["wav"]))
    assert "over this demo's upload limit of 0.05 MB" in msg and "--max-upload-mb" in msg
    # neither loaded a model: the limits are checked first
    assert not short.cache._loaded and not small.cache._loaded


def test_untrained_main_job_says_how_to_train(uploads, tmp_path):
    models = list_models(outputs=tmp_path / "none", default_dir=tmp_path / "never_trained")
    app = DemoApp(models, [uploads["dir"]], workdir=tmp_path / "w")
    assert app.model_labels == [models[0].label] and models[0].label.startswith("main job")
    assert TRAIN_COMMAND in model_notice(models[0]) and TRAIN_COMMAND in app.notice()
    assert TRAIN_COMMAND in _fail(app, str(uploads["wav"]))


# ---------------------------------------------------------------------------------------------------- pieces
def test_handle_request_never_shows_a_traceback(uploads, tmp_path):
    from webdemo.ui import handle_request

    class Broken:
        def __init__(self, exc: Exception):
            self.exc = exc

        def generate(self, *a, **k):
            raise self.exc

    args = (str(uploads["wav"]), "", None, "m", "", "", 0, "mannequin", "480x360", None)
    out = handle_request(Broken(DemoError("talk.wav: too long")), *args)
    assert out[7] == "**Error:** talk.wav: too long" and out[:7] == (None,) * 7 and out[8] is None
    out = handle_request(Broken(RuntimeError("secret detail\nTraceback (most recent call last)")), *args)
    assert out[7] == "**Error:** internal error (RuntimeError); the server log has the details"


def test_request_folders(tmp_path):
    rf = RequestFolders(tmp_path / "work", keep_seconds=60)
    a, fa = rf.new()
    b, fb = rf.new()
    assert a != b and {a, b} == set(rf.active()) and (fa / "in").is_dir() and (fa / "out").is_dir()
    victim = tmp_path / "work" / "keep.txt"
    victim.write_text("x")
    for bad in ("../work", "keep.txt", "", None, a + "/..", a.upper()):  # only request ids name folders
        assert not rf.release(bad)
    assert victim.exists()
    old = time.time() - 120
    os.utime(fa, (old, old))
    assert rf.sweep() == [a] and rf.active() == [b]
    owned = RequestFolders()
    owned.new()
    owned.close()
    assert not owned.root.exists()
    rf.close()
    assert rf.active() == [] and victim.exists()  # a given workdir is emptied of requests, not removed


def test_admit_file_copies_inside_and_bounds(tmp_path):
    root = tmp_path / "up"
    root.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (root / "a b?.wav").write_bytes(b"x" * 100)
    got = admit_file(root / "a b?.wav", [root], dest, 100, "audio")
    assert got == dest / "a_b_.wav" and got.read_bytes() == b"x" * 100
    with pytest.raises(DemoError, match="upload limit"):
        admit_file(root / "a b?.wav", [root], dest, 99, "audio")
    assert safe_name("../../.bashrc") == "bashrc" and safe_name("...") == "upload"


def test_model_menu(pipe, tmp_path, monkeypatch):
    outputs = pipe["out"].parent  # holds the pipeline folder, whose runs/ hold the stages' run folders
    monkeypatch.delenv("GESTURELSM_CKPT", raising=False)
    entries = list_models(outputs=outputs, default_dir=tmp_path / "none")
    labels = [e.label for e in entries]
    assert labels[0].startswith("main job")
    pipes = [e for e in entries if e.label.startswith("pipeline")]
    runs = [e for e in entries if e.label.startswith("run ")]
    assert [e.generator for e in pipes] == ["shortcut"] and len(runs) == 1  # the generator run, not RVQ/FGD runs
    ck = Path(pipe["gen"]["checkpoint"])
    for e in pipes + runs:
        assert e.source().checkpoint.resolve() == ck.resolve() and model_notice(e) is None
    trained = list_models(outputs=tmp_path / "none", default_dir=pipe["out"])
    assert len(trained) == 1 and trained[0].source().checkpoint.resolve() == ck.resolve()
    assert model_notice(trained[0]) is None  # the main job's model is there: no notice
    assert not any("released" in x for x in labels)
    monkeypatch.setenv("GESTURELSM_CKPT", str(tmp_path))
    released = list_models(outputs=outputs)[-1]
    assert released.config == RELEASED_CONFIG and released.ckpt is None and (REPO_ROOT / RELEASED_CONFIG).is_file()
    given = list_models("some/run", outputs=outputs)[0]
    assert given.label == "command line: some/run" and given.ckpt == "some/run"


def test_demo_precision_reaches_the_loaded_model(pipe, uploads, tmp_path, monkeypatch):
    import demo
    import webdemo.ui

    got = {}
    monkeypatch.setattr(webdemo.ui, "serve", lambda *a, **kw: got.update(kw))
    assert demo.main(["--precision", "bf16"]) == 0 and got["precision"] == "bf16"  # demo.py -> serve
    models = list_models(str(pipe["out"]), outputs=tmp_path / "none")
    for precision in ("fp32", "bf16"):  # serve -> DemoApp -> the model it loads
        a = DemoApp(models, [uploads["dir"]], workdir=tmp_path / precision, device="cpu", precision=precision)
        lm, settings = a.cache.get(models[0].label)
        a.close()
        assert lm.precision == precision and settings["nfe_per_window"] >= 1
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):  # at start, not at the first request
        DemoApp(models, [uploads["dir"]], workdir=tmp_path / "bad", precision="fp16")


def test_examples_come_from_the_corpus_generator(tmp_path):
    from inference.audio_input import decode_audio
    from webdemo.examples import example_rows, make_examples

    ex = make_examples(tmp_path / "ex")
    rows = example_rows(ex)
    assert len(rows) == 3 and rows[0][2] and rows[0][3] and rows[1][1] and rows[2][1:] == [None, None, None]
    assert rows[1][1] == ex[1].words() and len(rows[1][1].split()) > 5
    for e in ex:
        assert decode_audio(e.audio).seconds >= 6  # usable speech, not silence
        assert np.load(e.motion)["poses"].shape[1] == 165
    stamp = ex[0].audio.stat().st_mtime_ns
    assert make_examples(tmp_path / "ex") == ex and ex[0].audio.stat().st_mtime_ns == stamp  # made once


def test_page_has_its_parts_and_a_queue(app):
    pytest.importorskip("gradio")
    from webdemo.ui import build_ui

    demo = build_ui(app, [[None, "hello", None, None]])
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert {"audio-in", "generate", "status", "result-video", "result-npz", "result-json", "result-bvh",
            "result-glb", "rtf"} <= ids  # fmt: skip
    assert demo._queue.max_size == app.limits.queue_size
    gen = [f for f in demo.fns.values() if f.api_name == "generate"]
    assert len(gen) == 1 and gen[0].concurrency_limit == 1 and gen[0].queue  # one request at a time, queued


def test_demo_script_checks_its_limits(capsys):
    import demo

    for bad in (["--max-seconds", "0"], ["--max-upload-mb", "-1"]):
        with pytest.raises(SystemExit) as e:
            demo.main(bad)
        assert e.value.code == 2
    assert "must be positive" in capsys.readouterr().err
