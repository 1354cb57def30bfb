"""The web demo's logic, with no UI library: one request = speech in, video + npz + BVH + glb + json out.

Everything is done by the code the command-line tools run (``inference.api`` for the motion, ``render`` for the video
and the exports), so the page and ``gesture_inference.py`` / ``render_video.py`` give the same results. What this
module adds is what a web page needs and a command does not:

* limits: upload size, audio duration, transcript length, steps (``Limits``), each with a message that says what to do;
* a per-request folder (``RequestFolders``): the uploads are copied into it and every later step opens only the copies;
  it is removed when the request fails, when the page has taken the results, or after ``keep_minutes`` at the latest;
* paths sent by the page are opened only inside the upload folders (``admit_file``): a request cannot read other files;
* bad input of any kind is a ``DemoError`` whose one-line message is shown in the page, never a traceback.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.model_source import DEFAULT_PIPELINE_DIR, TRAIN_COMMAND, LoadedModel
from utils.device import check_precision
from utils.paths import REPO_ROOT, resolve_path

ProgressFn = Callable[[float, str], None]
SIZES = ("480x360", "640x480", "960x720")  # one panel; a reference npz doubles the width
RELEASED_CONFIG = "configs/released_v2.yaml"
_REQUEST_ID = re.compile(r"^[0-9a-f]{16}$")


class DemoError(ValueError):
    """Bad input or an unusable model: a one-line message for the page (what is wrong, what to do)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``demo.py --max-upload-mb/--max-seconds``)."""

    max_upload_mb: float = 25.0
    max_seconds: float = 60.0
    max_transcript_chars: int = 5000
    max_steps: int = 50
    max_guidance: float = 20.0
    keep_minutes: float = 30.0  # a finished request's folder waits at most this long for the page to take its files
    queue_size: int = 16  # requests waiting beyond this are turned away by the queue

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _no_progress(_fraction: float, _desc: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------------- folders
def safe_name(name: str, default: str = "upload") -> str:
    """A file name that cannot climb out of a folder or hide (letters, digits, ``._-``; no leading dot)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).name).lstrip("._")[:80]
    return base or default


class RequestFolders:
    """``<root>/req_<id>/`` per request; ``root`` is a fresh private temp folder unless one is given."""

    def __init__(self, root: str | os.PathLike | None = None, keep_seconds: float = 1800.0):
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="gesturelsm_demo_")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.keep_seconds = float(keep_seconds)

    def new(self) -> tuple[str, Path]:
        rid = secrets.token_hex(8)
        folder = self.root / f"req_{rid}"
        folder.mkdir(mode=0o700)
        (folder / "in").mkdir()
        (folder / "out").mkdir()
        return rid, folder

    def path(self, rid: str) -> Path | None:
        """The folder of request ``rid``; None for anything that is not a request id (no path is built from it)."""
        if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
            return None
        return self.root / f"req_{rid}"

    def release(self, rid: str | None) -> bool:
        """Remove request ``rid``'s folder (True when there was one)."""
        folder = self.path(rid) if rid else None
        if folder is None or not folder.is_dir():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def active(self) -> list[str]:
        return sorted(p.name[4:] for p in self.root.glob("req_*") if p.is_dir())

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove the folders of requests older than ``keep_seconds`` (results never taken by a page)."""
        now = time.time() if now is None else now
        gone = []
        for rid in self.active():
            folder = self.root / f"req_{rid}"
            try:
                age = now - folder.stat().st_mtime
            except OSError:
                continue
            if age > self.keep_seconds:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(rid)
        return gone

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            for rid in self.active():
                self.release(rid)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def admit_file(path: str | os.PathLike, roots: Sequence[Path], dest_dir: Path, max_bytes: int, what: str) -> Path:
    """Copy an uploaded file into ``dest_dir`` and return the copy; DemoError unless the file (symlinks resolved)
    lies inside one of ``roots`` (where the web server stores uploads) and holds at most ``max_bytes``."""
    src = Path(path).resolve()  # resolves symlinks and "..": the check below sees the real location
    name = safe_name(src.name)
    if not any(_inside(src, Path(r).resolve()) for r in roots):
        raise DemoError(f"{what}: refused: {name} is not a file uploaded to this page; upload it again")
    if not src.is_file():
        raise DemoError(f"{what}: the uploaded file {name} is gone; upload it again")
    mb = max_bytes / (1024 * 1024)
    size = src.stat().st_size
    if size > max_bytes:
        raise DemoError(f"{name}: {size / 1024 / 1024:.1f} MB is over this demo's upload limit of {mb:.3g} MB; upload "
                        "a shorter or compressed recording (or start the demo with a larger --max-upload-mb)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        data = fin.read(max_bytes + 1)  # bounded: a file growing after the size check cannot exceed the limit
        if len(data) > max_bytes:
            raise DemoError(f"{name}: over this demo's upload limit of {mb:.3g} MB")
        fout.write(data)
    return dest


def audio_seconds(path: Path) -> float | None:
    """Duration from the file header (no decoding), or None when libsndfile cannot read it (decode says why)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


# ---------------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelEntry:
    """One choice of the model menu: what ``resolve_model_source`` is given for it."""

    label: str
    ckpt: str | None = None
    config: str | None = None
    generator: str = "shortcut"
    default_dir: str | None = None  # the main job's folder: resolved as gesture_inference.py without --ckpt

    def source(self) -> Any:
        """The ``ModelSource`` (ModelError when it cannot be found, e.g. the main job's model not trained yet)."""
        from inference.model_source import resolve_model_source

        if self.default_dir is not None:
            return resolve_model_source(None, None, [], self.generator, default_dir=self.default_dir)
        return resolve_model_source(self.ckpt, self.config, [], self.generator)


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def _is_generator_run(run_dir: Path) -> bool:
    from omegaconf import OmegaConf

    ck = run_dir / "checkpoints"
    if not ((ck / "best.pt").is_file() or (ck / "last.pt").is_file()):
        return False
    try:
        cfg = OmegaConf.load(run_dir / "config.yaml")
        return OmegaConf.select(cfg, "model.generator") is not None and OmegaConf.select(cfg, "rvq") is not None
    except Exception:  # an unreadable config is not offered
        return False


def scan_outputs(outputs: str | os.PathLike, max_depth: int = 6, limit: int = 60) -> list[ModelEntry]:
    """Pipeline folders (``stages/gen_<name>.json``) and generator run folders (config.yaml + checkpoints/) under
    ``outputs``, found without loading any weights."""
    root = Path(outputs)
    if not root.is_dir():
        return []
    found: list[ModelEntry] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if len(d.parts) - base_depth >= max_depth:
            dirnames[:] = []
        dirnames[:] = sorted(x for x in dirnames if x not in ("checkpoints", "tb", "report", "datasets", "cache"))
        if (d / "stages").is_dir():
            for rec in sorted((d / "stages").glob("gen_*.json")):
                gen = rec.stem[4:]
                found.append(ModelEntry(f"pipeline {_rel(d)} ({gen})", str(d), None, gen))
        if "config.yaml" in filenames and _is_generator_run(d):
            found.append(ModelEntry(f"run {_rel(d)}", str(d)))
        if len(found) >= limit:
            break
    return found[:limit]


def list_models(
    ckpt: str | None = None,
    config: str | None = None,
    generator: str = "shortcut",
    outputs: str | os.PathLike = "outputs",
    default_dir: str | os.PathLike = DEFAULT_PIPELINE_DIR,
) -> list[ModelEntry]:
    """The model menu: ``--ckpt``/``--config`` if given, the main job's model (listed even when not trained yet:
    choosing it says how to train it), every pipeline/run folder under ``outputs``, and the released files when
    ``GESTURELSM_CKPT`` points at them."""
    entries: list[ModelEntry] = []
    if ckpt or config:
        entries.append(ModelEntry(f"command line: {ckpt or config}", ckpt, config, generator))
    main_dir = resolve_path(default_dir)
    entries.append(ModelEntry(f"main job ({_rel(main_dir)})", generator=generator, default_dir=str(main_dir)))
    seen = {str(main_dir.resolve()) + f":{generator}"}
    for e in scan_outputs(resolve_path(outputs)):
        key = f"{Path(e.ckpt).resolve()}:{e.generator}"  # the main job's folder is listed once, as the main job
        if key not in seen:
            seen.add(key)
            entries.append(e)
    if os.environ.get("GESTURELSM_CKPT") and resolve_path(RELEASED_CONFIG).is_file():
        entries.append(ModelEntry("released v2 ($GESTURELSM_CKPT)", None, RELEASED_CONFIG))
    return entries


def model_notice(entry: ModelEntry) -> str | None:
    """A line for the top of the page when ``entry`` is the main job's model and it has not been trained yet."""
    if entry.default_dir is None:
        return None
    folder = Path(entry.default_dir)
    if (folder / "stages" / f"gen_{entry.generator}.json").is_file():
        return None
    return (f"No trained model at `{_rel(folder)}` yet: train the main job's model with `{TRAIN_COMMAND}` ("
            "17-22 min on 2 CPU cores), or start the demo with `--ckpt RUN_FOLDER|best.pt`.")  # fmt: skip


class ModelCache:
    """Loads a model the first time it is chosen and keeps the ``size`` most recent ones."""

    def __init__(self, entries: Sequence[ModelEntry], device: str = "auto", size: int = 2, precision: str = "fp32"):
        self.entries = {e.label: e for e in entries}
        self.device, self.precision = device, precision
        self.size = size
        self._loaded: OrderedDict[str, tuple[LoadedModel, dict[str, Any]]] = OrderedDict()
        self.lock = threading.Lock()  # one generation at a time per process: the sampler settings are per model

    def get(self, label: str) -> tuple[LoadedModel, dict[str, Any]]:
        """The loaded model of menu entry ``label`` and its checkpoint's own sampler settings."""
        from inference.audio_input import warm_up
        from inference.model_source import load_model

        if label not in self.entries:
            raise DemoError(f"model {label!r}: not one of this demo's models; choose one from the menu")
        if label in self._loaded:
            self._loaded.move_to_end(label)
            return self._loaded[label]
        lm = load_model(self.entries[label].source(), self.device, precision=self.precision)
        warm_up(lm.audio_sr)  # librosa's first resample takes seconds: not part of any request's real-time factor
        self._loaded[label] = (lm, dict(lm.model.sampler.settings()))
        while len(self._loaded) > self.size:
            self._loaded.popitem(last=False)
        return self._loaded[label]


# ---------------------------------------------------------------------------------------------------- requests
@dataclass
class DemoOutput:
    request_id: str
    folder: Path
    video: Path
    npz: Path
    json: Path
    bvh: Path
    glb: Path
    real_time_factor: float  # generation (decode, features, words, sampling, RVQ decode, npz write) / audio seconds
    settings: dict[str, Any]  # the json written next to the npz
    summary: str  # markdown for the page
    notes: list[str] = field(default_factory=list)


def _portable(obj: Any, folder: Path) -> Any:
    """``obj`` with every string path inside ``folder`` replaced by its file name."""
    if isinstance(obj, dict):
        return {k: _portable(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable(v, folder) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(folder) + os.sep):
        return Path(obj).name
    return obj


def _int_in(value: Any, lo: int, hi: int, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise DemoError(f"{what}: {value!r} must be a whole number from {lo} to {hi}")
    return int(f)


class DemoApp:
    """The demo's one entry point for the page (and the tests): ``generate`` a request, ``release`` its folder."""

    def __init__(
        self,
        models: Sequence[ModelEntry],
        upload_roots: Sequence[str | os.PathLike],
        limits: Limits | None = None,
        workdir: str | os.PathLike | None = None,
        device: str = "auto",
        smplx_model: str | None = None,
        precision: str = "fp32",
    ):
        if not models:
            raise ValueError("the demo needs at least one model entry")
        self.limits = limits or Limits()
        self.models = list(models)
        self.cache = ModelCache(self.models, device, precision=check_precision(precision))
        self.folders = RequestFolders(workdir, keep_seconds=self.limits.keep_minutes * 60)
        self.upload_roots = [Path(r).resolve() for r in upload_roots]
        self.smplx_model = smplx_model

    @property
    def model_labels(self) -> list[str]:
        return [m.label for m in self.models]

    def bodies(self) -> list[str]:
        """mannequin and skeleton always; smplx only when a model file is found (it needs the SMPL-X licence)."""
        from geometry.body_model import find_smplx_model

        try:
            has_smplx = find_smplx_model(self.smplx_model) is not None
        except FileNotFoundError:
            has_smplx = False
        return ["mannequin", "skeleton"] + (["smplx"] if has_smplx else [])

    def notice(self) -> str | None:
        """Why the model chosen by default cannot run yet (the main job's model not trained), else None."""
        return model_notice(self.models[0])

    def release(self, request_id: str | None) -> bool:
        return self.folders.release(request_id)

    def close(self) -> None:
        self.folders.close()

    def _clean(self, e: BaseException | str, folder: Path) -> str:
        """One line, with the request folder's path taken out (the page shows the user's file names)."""
        msg = " ".join(str(e).split()) or type(e).__name__
        return re.sub(re.escape(str(folder)) + r"/(?:[^\s'\"]*/)?", "", msg)

    def generate(
        self,
        audio: str | os.PathLike | None,
        *,
        transcript: str | None = None,
        textgrid: str | os.PathLike | None = None,
        model: str | None = None,
        steps: float | str | None = None,
        guidance: float | str | None = None,
        seed: float = 0,
        body: str = "mannequin",
        size: str = SIZES[0],
        reference: str | os.PathLike | None = None,
        progress: ProgressFn = _no_progress,
    ) -> DemoOutput:
        """One request (see the module docstring). Raises DemoError with a message for the page; on any failure
        the request's folder is removed before the error leaves."""
        from inference.cli import user_errors
        from render.motion import RenderError

        self.folders.sweep()
        rid, folder = self.folders.new()
        done = False
        try:
            out = self._generate(rid, folder, audio, transcript, textgrid, model, steps, guidance, seed, body, size,
                                 reference, progress)  # fmt: skip
            done = True
            return out
        except DemoError as e:
            raise DemoError(self._clean(e, folder)) from None
        except (*user_errors(), RenderError) as e:
            raise DemoError(self._clean(e, folder)) from e
        finally:
            if not done:
                self.folders.release(rid)

    def _generate(self, rid: str, folder: Path, audio: Any, transcript: Any, textgrid: Any, model: Any, steps: Any,
                  guidance: Any, seed: Any, body: str, size: str, reference: Any,
                  progress: ProgressFn) -> DemoOutput:  # fmt: skip
        from inference.api import generate_from_audio, write_result
        from render.export import export_motion
        from render.video import RenderOptions, render_video
        from utils.io import save_json

        lim = self.limits
        t_start = time.perf_counter()
        # cheap checks first: nothing is copied, decoded or loaded for a request that cannot run
        if not audio:
            raise DemoError("no audio: upload or record speech (wav, flac, ogg or mp3), or click an example")
        label = model or self.models[0].label
        if label not in self.cache.entries:
            raise DemoError(f"model {label!r}: not one of this demo's models; choose one from the menu")
        if body not in self.bodies():
            raise DemoError(f"body {body!r}: choose one of {', '.join(self.bodies())}")
        if size not in SIZES:
            raise DemoError(f"video size {size!r}: choose one of {', '.join(SIZES)}")
        seed_i = _int_in(0 if seed is None else seed, 0, 2**31 - 1, "seed")
        steps = steps.strip() if isinstance(steps, str) else steps
        guidance = guidance.strip() if isinstance(guidance, str) else guidance
        steps_i = None if steps in (None, "") else _int_in(steps, 1, lim.max_steps, "steps")
        guide = None
        if guidance not in (None, ""):
            try:
                guide = float(guidance)
            except (TypeError, ValueError):
                raise DemoError(f"guidance: {guidance!r} is not a number") from None
            if not (math.isfinite(guide) and 0.0 <= guide <= lim.max_guidance):
                raise DemoError(f"guidance: {guidance!r} must be from 0 to {lim.max_guidance:g}")
        text = (transcript or "").strip() or None
        if text is not None and len(text) > lim.max_transcript_chars:
            raise DemoError(f"transcript: {len(text)} characters is over this demo's limit of "
                            f"{lim.max_transcript_chars}; shorten it")  # fmt: skip
        if text is not None and textgrid:
            raise DemoError("give a transcript or a TextGrid, not both")

        progress(0.02, "checking the upload")
        inbox = folder / "in"  # one folder per input: an upload cannot overwrite another one of the same name
        wav = admit_file(audio, self.upload_roots, inbox / "audio", lim.max_upload_bytes, "audio")
        secs = audio_seconds(wav)
        if secs is not None and secs > lim.max_seconds:
            raise DemoError(f"{wav.name}: {secs:.1f} s of audio is over this demo's limit of {lim.max_seconds:g} s; "
                            "trim the recording (or start the demo with a larger --max-seconds)")  # fmt: skip
        tg = ref = None
        if textgrid:
            tg = admit_file(textgrid, self.upload_roots, inbox / "textgrid", lim.max_upload_bytes, "TextGrid")
        if reference:
            ref = admit_file(reference, self.upload_roots, inbox / "reference", lim.max_upload_bytes, "reference")
        if ref is not None and ref.suffix.lower() != ".npz":
            raise DemoError(f"reference: {ref.name} is not an .npz motion file (poses (T,165), trans, betas)")

        progress(0.05, "loading the model")
        with self.cache.lock:
            lm, defaults = self.cache.get(label)
            # every request states its own steps/guidance: the checkpoint's unless the page gives them
            lm.model.sampler.configure(n_steps=steps_i or defaults["n_steps"],
                                       guidance=defaults["guidance"] if guide is None else guide)  # fmt: skip
            progress(0.1, "generating the gestures")
            t0 = time.perf_counter()
            res = generate_from_audio(lm, wav, text=text, textgrid=tg, seed=seed_i, name=Path(wav.name).stem)
            res.meta["demo"] = {"model": label, "body": body, "video_size": size,
                                "reference": ref.name if ref else None, "uploaded_as": wav.name}  # fmt: skip
            npz, js = write_result(res, folder / "out", t_start=t0)
        rtf = float(res.meta["timing"]["real_time_factor"])
        # the json goes to the user: file names instead of this server's temp paths (the checkpoint keeps its path)
        res.meta = _portable(res.meta, folder)
        save_json(res.meta, js)

        progress(0.3, "rendering the video")
        notes: list[str] = []
        w, h = (int(x) for x in size.split("x"))
        video = folder / "out" / f"{res.name}.mp4"
        opt = RenderOptions(body=body, width=w, height=h, title=True, smplx_model=self.smplx_model, progress=True)
        info = render_video(npz, video, audio=wav, gt=ref, opt=opt, log=notes.append)

        progress(0.9, "exporting BVH and glTF")
        bvh, glb = folder / "out" / f"{res.name}.bvh", folder / "out" / f"{res.name}.glb"
        export_motion(npz, "bvh", bvh)
        export_motion(npz, "gltf", glb)
        total = time.perf_counter() - t_start
        words = res.meta["words"]
        s = res.meta["sampler"]
        summary = (
            f"**{wav.name}**: {res.meta['audio']['seconds']:.1f} s of audio, {res.n_frames} frames at {lm.fps} fps; "
            f"words: {words['source']} ({words.get('n_words', 0)} words, {words.get('n_unknown', 0)} unknown).  \n"
            f"Real-time factor **{rtf:.3f}** (generation {res.meta['timing']['total']:.2f} s, model load excluded); "
            f"video: {info['frames']} frames, {info['render_fps']:.0f} frames/s rendered; whole request "
            f"{total:.1f} s.  \n"
            f"Model: {label}; {s['sampler']}, {s['n_steps']} steps, guidance {s['guidance']:g}, seed {seed_i}."
        )
        if words["source"] == "none":
            notes.insert(0, words["notes"][0])
        notes = [self._clean(n, folder) for n in notes]
        return DemoOutput(rid, folder, video, npz, js, bvh, glb, rtf, dict(res.meta), summary, notes)


__all__ = ["DemoApp", "DemoError", "DemoOutput", "Limits", "ModelCache", "ModelEntry", "RequestFolders", "SIZES",
           "admit_file", "audio_seconds", "list_models", "model_notice", "safe_name", "scan_outputs"]
