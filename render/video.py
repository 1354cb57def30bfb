"""render_video: motion npz (+ audio, + ground truth) -> H.264/AAC mp4, headless, on CPU.

Frames are rendered by the pure torch rasteriser (``render.raster``) or drawn with Pillow (skeleton) and piped as
raw RGB to the ffmpeg binary of ``imageio-ffmpeg``, which muxes the audio padded with silence or trimmed to the
motion's duration (the video is exactly ``round(duration * fps)`` frames).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from render.bodies import BODIES, make_body
from render.motion import Motion, RenderError, load_motion
from render.raster import Camera, FloorBackground, look_at, rasterize
from utils.device import torch_threads
from utils.io import atomic_path

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "RenderOptions",
    "render_video",
    "render_still",
    "model_settings",
    "ffmpeg_exe",
    "probe_media",
    "read_video_frames",
    "PATH_NAME",
    "PRESETS",
]

PATH_NAME = "pure numpy/torch z-buffer rasteriser (CPU, no OpenGL)"
CAMERAS = ("front", "three-quarter")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")  # libx264
_LIGHT = np.array([0.35, 0.75, 0.55])
_LIGHT = _LIGHT / np.linalg.norm(_LIGHT)
_CHUNK = 16


@dataclass
class RenderOptions:
    body: str = "mannequin"
    width: int = 960
    height: int = 720
    fps: float | None = None  # None: the motion's own frame rate
    camera: str = "front"
    title: bool = False
    smplx_model: str | None = None
    crf: int = 20
    preset: str = "veryfast"
    progress: bool = True
    extra_title: list[str] = field(default_factory=list)
    workers: int = 0  # render threads (0: one per CPU core, at most 2); each renders whole 16-frame chunks


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise RenderError(f"writing mp4 needs the `imageio-ffmpeg` package (pip install imageio-ffmpeg): {e}") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def probe_media(path: str | os.PathLike) -> dict:
    """Duration (s) and stream summary of a media file from ``ffmpeg -i`` (ffprobe is not bundled)."""
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"{path}: no such file")
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", out)
    if not m or "Invalid data" in out:
        last = out.strip().splitlines()[-1] if out.strip() else "no output"
        raise RenderError(f"{path}: not a readable media file (ffmpeg: {last})")
    dur = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    streams = re.findall(r"Stream #\d+:\d+.*?: (Video|Audio): (.*)", out)
    return {"duration": dur, "audio": [s for k, s in streams if k == "Audio"],
            "video": [s for k, s in streams if k == "Video"]}  # fmt: skip


def read_video_frames(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """All frames (N,H,W,3) uint8 and the fps of a video, decoded with imageio-ffmpeg's reader."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = gen.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    return np.stack(frames), float(meta["fps"])


# ----------------------------------------------------------------------------------------------------------- framing
def _smooth(x: np.ndarray, win: int) -> np.ndarray:
    if win <= 1 or len(x) < 3:
        return x.copy()
    k = np.ones(win) / win
    pad = np.pad(x, ((win // 2, win - 1 - win // 2), (0, 0)), mode="edge")
    return np.stack([np.convolve(pad[:, i], k, mode="valid") for i in range(x.shape[1])], 1)


def _dead_zone(xz: np.ndarray, zone: float) -> np.ndarray:
    """A camera target that stays put while the root moves less than ``zone`` metres from it (so the floor of a
    standing speaker is drawn once), and is dragged along beyond that."""
    out = np.empty_like(xz)
    c = xz[0].copy()
    for t, p in enumerate(xz):
        d = p - c
        dist = float(np.linalg.norm(d))
        if dist > zone:
            c = c + d * (1 - zone / dist)
        out[t] = c
    return out


@dataclass
class _Track:
    """Per-panel camera path: eye per motion frame (translation follows the smoothed root) and the fixed rotation."""

    rot: np.ndarray
    eyes: np.ndarray
    roots: np.ndarray
    floor_y: float


def _frame_all(bodies: list, motions: list[Motion], opt: RenderOptions) -> list[_Track]:
    """One camera rotation and distance for all panels (same scale), each following its own root."""
    stats = []
    for body, mo in zip(bodies, motions):
        fr = np.arange(mo.num_frames)
        step = max(1, mo.num_frames // 300)  # framing from <= ~300 frames
        j = body.joints(fr[::step]).double().numpy()
        root = body.joints(fr).double().numpy()[:, 0] if step > 1 else j[:, 0]
        low = j[..., 1].min() - (0.06 if body.name == "skeleton" else 0.05)
        if body.name != "skeleton":  # meshes: the lowest vertex over sampled frames is the floor
            low = float(body.vertices(fr[:: max(1, mo.num_frames // 30)])[..., 1].min())
        stats.append((j, root, low))
    # facing: the body's +z (SMPL-X forward) rotated by the root, averaged, projected on the floor
    mo0 = motions[0]
    from geometry.rotations import axis_angle_to_matrix

    rroot = axis_angle_to_matrix(torch.as_tensor(mo0.poses[:, :3])).numpy()
    fwd = rroot[:, :, 2].mean(0)
    fwd[1] = 0
    fwd = fwd / np.linalg.norm(fwd) if np.linalg.norm(fwd) > 1e-6 else np.array([0.0, 0.0, 1.0])
    ang = math.radians(35.0) if opt.camera == "three-quarter" else 0.0
    c, s = math.cos(ang), math.sin(ang)
    view_dir = np.array([c * fwd[0] + s * fwd[2], 0.0, -s * fwd[0] + c * fwd[2]])
    right = np.cross(np.array([0.0, 1.0, 0.0]), view_dir)
    half_w, top, bottom, depth = 0.3, 0.0, 1e9, 0.0
    for j, _root, _low in stats:
        rel = j - j[:, :1, :] * np.array([1.0, 0.0, 1.0])  # relative to the root on the floor plane
        half_w = max(half_w, np.abs(rel @ right).max())
        depth = max(depth, np.abs(rel @ view_dir).max())
        top = max(top, j[..., 1].max() + 0.12)  # + head above the head joint
        bottom = min(bottom, low)
    fov = math.radians(30.0)
    aspect = opt.width / opt.height
    half_h = (top - bottom) / 2 * 1.12
    dist = max(half_h / math.tan(fov / 2), half_w * 1.15 / (math.tan(fov / 2) * aspect)) + depth
    tracks = []
    for (_, root, _low), mo in zip(stats, motions):
        root_s = _smooth(_dead_zone(root[:, [0, 2]], 0.15), max(1, int(round(mo.fps))))
        target_y = (top + bottom) / 2
        eye0 = np.array([0.0, target_y + 0.15 * dist, 0.0]) + dist * view_dir * math.cos(math.atan(0.15))
        rot = look_at(eye0, np.array([0.0, target_y, 0.0]))
        eyes = np.zeros((len(root), 3))
        eyes[:, 0] = eye0[0] + root_s[:, 0]
        eyes[:, 1] = eye0[1]
        eyes[:, 2] = eye0[2] + root_s[:, 1]
        tracks.append(_Track(rot, eyes, root[:, [0, 2]], bottom))
    return tracks


# --------------------------------------------------------------------------------------------------------- drawing
class _Panel:
    """Renders one body of one motion, frame by frame, with vertices computed in chunks."""

    def __init__(self, body, motion: Motion, track: _Track, opt: RenderOptions):
        self.body, self.motion, self.track, self.opt = body, motion, track, opt
        self.cam = Camera(track.rot, track.eyes[0], opt.width, opt.height)
        self.bg = FloorBackground(self.cam, track.floor_y)
        self._chunk_start = -1
        self._chunk: torch.Tensor | None = None
        if body.name != "skeleton":
            self.faces = np.asarray(body.faces, np.int64)
            self.colours = np.asarray(body.face_colours, np.float32)

    def _geometry(self, f: int) -> torch.Tensor:
        start = (f // _CHUNK) * _CHUNK
        if start != self._chunk_start:
            fr = np.arange(start, min(start + _CHUNK, self.motion.num_frames))
            self._chunk = self.body.joints(fr) if self.body.name == "skeleton" else self.body.vertices(fr)
            self._chunk_start = start
        return self._chunk[f - start]

    def frame(self, f: int) -> np.ndarray:
        """Frame ``f`` of the motion as an (H,W,3) uint8 image."""
        f = min(max(f, 0), self.motion.num_frames - 1)
        self.cam.eye = self.track.eyes[f]
        pts = self._geometry(f)
        if self.body.name == "skeleton":  # drawn by Pillow: start from a Pillow image (saves a full-frame copy)
            return self._draw_skeleton(self.bg.render_pil(self.cam.eye, self.track.roots[f]), pts)
        img = self.bg.render(self.cam.eye, self.track.roots[f])
        xy, depth = self.cam.project(pts)
        fid = rasterize(xy, depth, self.faces, self.opt.width, self.opt.height, cull=self.body.cull)
        cov = np.flatnonzero(fid.reshape(-1) >= 0)
        if cov.size:
            v = pts.numpy() if isinstance(pts, torch.Tensor) else pts
            fc = fid.reshape(-1)[cov]
            used = np.zeros(self.faces.shape[0], bool)
            used[fc] = True
            f_used = np.flatnonzero(used)  # shade only the visible faces
            tri = np.take(v, np.take(self.faces, f_used, axis=0), axis=0)  # np.take: faster than fancy indexing
            n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            flip = np.einsum("ij,ij->i", n, self.cam.eye.astype(np.float32) - tri[:, 0]) < 0
            n[flip] *= -1  # two-sided lighting
            light = (self.cam.rot.T @ _LIGHT).astype(np.float32)  # a light fixed to the camera
            lam = np.maximum(n @ light, 0)
            colour = np.zeros((self.faces.shape[0], 3), np.uint8)
            colour[f_used] = np.clip((0.38 + 0.62 * lam)[:, None] * self.colours[f_used], 0, 255).astype(np.uint8)
            img.reshape(-1, 3)[cov] = np.take(colour, fc, axis=0)
        return img

    def _draw_skeleton(self, im: Image.Image, joints: torch.Tensor) -> np.ndarray:
        from PIL import ImageDraw

        xy, depth = self.cam.project(joints)
        d = ImageDraw.Draw(im)
        scale = self.cam.focal / max(float(np.median(depth)), 1e-3)  # pixels per metre at the body
        parents = self.body.parents
        bones = [(j, parents[j]) for j in range(1, len(parents)) if j not in (22, 23, 24)]
        order = sorted(bones, key=lambda b: -(depth[b[0]] + depth[b[1]]))  # painter's: far first
        for j, p in order:
            finger = j >= 25
            col = (60, 110, 200) if _side(j) == "l" else (200, 80, 60) if _side(j) == "r" else (70, 70, 80)
            width = max(1, int(round(scale * (0.012 if finger else 0.035))))
            d.line([tuple(xy[p]), tuple(xy[j])], fill=col, width=width)
        for j in np.argsort(-depth):
            if j in (22, 23, 24):
                continue
            r = max(1.0, scale * (0.008 if j >= 25 else 0.025))
            x, y = xy[j]
            d.ellipse([x - r, y - r, x + r, y + r], fill=(40, 40, 40))
        return np.asarray(im)


_LEFT = {1, 4, 7, 10, 13, 16, 18, 20, *range(25, 40)}
_RIGHT = {2, 5, 8, 11, 14, 17, 19, 21, *range(40, 55)}


def _side(j: int) -> str:
    return "l" if j in _LEFT else "r" if j in _RIGHT else "c"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


_STANDARD_KEYS = {"poses", "trans", "betas", "expressions", "mocap_frame_rate", "gender"}


def model_settings(npz_path: str | os.PathLike, limit: int = 6) -> list[str]:
    """Short ``key=value`` strings describing how a result was made, for the title strip: scalar entries of the npz
    (other than the motion itself) and top-level scalars of a sidecar ``<name>.json`` next to it, if any."""
    import json

    out: list[str] = []
    path = Path(npz_path)
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                if k in _STANDARD_KEYS:
                    continue
                try:
                    a = z[k]
                except ValueError:
                    continue
                if a.ndim == 0:
                    out.append(f"{k}={a.item()}")
    except (OSError, ValueError):
        return out
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            meta = {}
        if isinstance(meta, dict):
            for k, v in meta.items():
                if isinstance(v, (str, int, float, bool)) and len(str(v)) <= 40:
                    out.append(f"{k}={v}")
    return out[:limit]


def _overlay_text(img: np.ndarray, lines: list[tuple[int, int, str]], band: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    size = max(10, img.shape[0] // 30)
    font = _font(size)
    if band is not None:
        d.rectangle([0, band[0], img.shape[1], band[1]], fill=(30, 30, 36))
    for x, y, text in lines:
        while len(text) > 8 and d.textlength(text, font=font) > img.shape[1] - x - 4:  # fit the frame
            text = text[: int(len(text) * 0.9)].rstrip() + "…"
        fill = (245, 245, 245) if band is not None and band[0] <= y <= band[1] else (20, 20, 20)
        d.text((x, y), text, fill=fill, font=font)
    return np.asarray(im)


# ----------------------------------------------------------------------------------------------------------- audio
def _check_output(output: Path) -> None:
    """Fail before rendering when the output cannot be written (missing or unwritable folder)."""
    if output.exists() and output.is_dir():
        raise RenderError(f"{output}: is a folder, expected a video file path")
    try:
        with atomic_path(output) as tmp:
            tmp.write_bytes(b"")
            raise _Probe
    except _Probe:
        pass
    except OSError as e:
        raise RenderError(f"{output}: cannot write there ({e.strerror or e})") from None


class _Probe(Exception):
    pass


def render_still(motion: Motion | str | os.PathLike, frame: int = 0, opt: RenderOptions | None = None) -> np.ndarray:
    """One rendered frame (H,W,3) uint8 of a motion, framed as in the video (no text)."""
    opt = opt or RenderOptions()
    motion = motion if isinstance(motion, Motion) else load_motion(motion)
    body = make_body(opt.body, motion, opt.smplx_model)
    track = _frame_all([body], [motion], opt)[0]
    with torch_threads(1):
        return _Panel(body, motion, track, opt).frame(frame)


def render_workers(opt: RenderOptions) -> int:
    """Render threads: ``opt.workers``, or one per core up to 2 (numpy releases the GIL in the rasteriser; more
    threads would only take cores from the encoder)."""
    return int(opt.workers) if opt.workers > 0 else max(1, min(2, os.cpu_count() or 1))


def _encode(
    cmd: list[str], output: Path, panel_sets: list[list], n_frames: int, fps: float, texts: list, title_h: int,
    opt: RenderOptions,
) -> float:
    """Render every frame and pipe it to ffmpeg writing a temp file renamed onto ``output``; render seconds (summed
    over the render threads). ``panel_sets``: one list of panels per render thread (panels keep per-frame state);
    thread i renders the 16-frame chunks i, i + n, i + 2n, ..., so each computes only its chunks' vertices. Frames
    reach ffmpeg in order and are the same whatever the number of threads."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def one(k: int, panels: list) -> tuple[np.ndarray, float]:
        t1 = time.perf_counter()
        imgs = [p.frame(int(math.floor(k * p.motion.fps / fps + 1e-6))) for p in panels]
        frame = np.concatenate(imgs, 1) if len(imgs) > 1 else imgs[0]
        if texts:
            frame = _overlay_text(frame, texts, (0, title_h - 1) if title_h else None)
        return np.ascontiguousarray(frame), time.perf_counter() - t1

    render_s = 0.0
    n_workers = len(panel_sets)
    pools = [ThreadPoolExecutor(1) for _ in range(n_workers)]
    with atomic_path(output) as tmp, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd + [str(tmp)], stdin=subprocess.PIPE, stderr=err)
        bar = None
        if opt.progress:
            from tqdm import tqdm

            bar = tqdm(total=n_frames, desc=f"render {output.name}", unit="frame", file=sys.stderr)
        pending: deque = deque()
        ahead = 2 * _CHUNK * n_workers  # frames in flight (2.1 MB each at 960x720)
        try:
            nxt = 0
            for k in range(n_frames):
                while nxt < n_frames and nxt < k + ahead:
                    # by the first panel's motion frame: the chunks its vertices are computed in (fps may differ)
                    w = (int(math.floor(nxt * panel_sets[0][0].motion.fps / fps + 1e-6)) // _CHUNK) % n_workers
                    pending.append(pools[w].submit(one, nxt, panel_sets[w]))
                    nxt += 1
                frame, sec = pending.popleft().result()
                render_s += sec
                proc.stdin.write(frame.tobytes())
                if bar is not None:
                    bar.update(1)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:  # a render error or Ctrl-C: no encoder left waiting on its input
            proc.kill()
            proc.wait()
            raise
        finally:
            for f in pending:
                f.cancel()
            for pool in pools:
                pool.shutdown(wait=True)
            if bar is not None:
                bar.close()
        rc = proc.wait()
        if rc != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip().splitlines()
            raise RenderError(f"{output}: ffmpeg failed (exit {rc}): {msg[-1] if msg else 'no message'}")
    return render_s


def check_options(opt: RenderOptions) -> None:
    """RenderError for options no video can be made with (callers that generate first check before generating)."""
    if opt.body not in BODIES:
        raise RenderError(f"unknown body {opt.body!r}; expected one of {BODIES}")
    if opt.camera not in CAMERAS:
        raise RenderError(f"unknown camera {opt.camera!r}; expected one of {CAMERAS}")
    if opt.width < 16 or opt.height < 16 or opt.width % 2 or opt.height % 2:
        raise RenderError(f"--size {opt.width}x{opt.height}: width and height must be even and >= 16 (H.264 4:2:0)")
    if opt.fps is not None and not (0 < opt.fps <= 240):
        raise RenderError(f"--fps {opt.fps}: expected 0 < fps <= 240")
    if opt.preset not in PRESETS:
        raise RenderError(f"--preset {opt.preset!r}: expected one of the libx264 presets {PRESETS}")
    if not (0 <= opt.crf <= 51):
        raise RenderError(f"--crf {opt.crf}: expected 0 <= crf <= 51 (libx264, 8 bit)")
    if not (0 <= opt.workers <= 64):
        raise RenderError(f"--workers {opt.workers}: expected 0 (automatic) to 64 render threads")


def render_video(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    audio: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    opt: RenderOptions | None = None,
    log=print,
) -> dict:
    """Render ``input_path`` (and ``gt`` side by side) to ``output`` (mp4). Returns a summary dict."""
    opt = opt or RenderOptions()
    output = Path(output)
    check_options(opt)
    motion = load_motion(input_path)
    motions = [motion] if gt is None else [load_motion(gt), motion]
    fps = float(opt.fps or motion.fps)
    if not (0 < fps <= 240):
        raise RenderError(f"--fps {fps}: expected 0 < fps <= 240")
    n_frames = max(1, int(round(motion.duration * fps)))
    duration = n_frames / fps
    audio_info = None
    if audio is not None:
        audio_info = probe_media(audio)
        if not audio_info["audio"]:
            raise RenderError(f"{audio}: has no audio stream")
        diff = audio_info["duration"] - duration
        if abs(diff) > 0.5 / fps:
            how = "trimmed" if diff > 0 else "padded with silence"
            log(f"note: {audio} lasts {audio_info['duration']:.2f} s, the motion {duration:.2f} s: audio {how}")
    _check_output(output)
    bodies = [make_body(opt.body, m, opt.smplx_model) for m in motions]
    tracks = _frame_all(bodies, motions, opt)
    n_workers = render_workers(opt)
    panel_sets = [[_Panel(b, m, t, opt) for b, m, t in zip(bodies, motions, tracks)] for _ in range(n_workers)]
    panels = panel_sets[0]
    if gt is not None and motions[0].num_frames != motion.num_frames:
        log(f"note: ground truth {gt} has {motions[0].num_frames} frames, generated {motion.num_frames}: the video "
            "follows the generated motion (ground truth cropped or held on its last frame)")  # fmt: skip
    width = opt.width * len(panels)
    height = opt.height
    title_h = max(14, height // 22) if opt.title else 0
    labels = ["ground truth", "generated"] if gt is not None else []
    title = ""
    if opt.title:
        title = f"{Path(input_path).name}  |  body {opt.body}, camera {opt.camera}, {fps:g} fps, {n_frames} frames"
        if gt is not None:
            title += f"  |  GT {Path(gt).name}"
        for extra in [*model_settings(input_path), *opt.extra_title]:
            title += f"  |  {extra}"
    texts = [(6, max(0, (title_h - height // 30) // 2 - 1), title)] if title else []
    for i, lab in enumerate(labels):
        texts.append((i * opt.width + 8, title_h + 6, lab))

    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-"]  # fmt: skip
    if audio is not None:
        cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-af", f"apad=whole_dur={duration:.6f}",
                "-c:a", "aac", "-b:a", "128k"]  # fmt: skip
    cmd += ["-c:v", "libx264", "-preset", opt.preset, "-crf", str(opt.crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-t", f"{duration:.6f}", "-f", "mp4"]  # fmt: skip
    t0 = time.perf_counter()
    render_s = 0.0
    with torch_threads(1):  # small tensors: one torch thread per render thread is faster
        render_s = _encode(cmd, output, panel_sets, n_frames, fps, texts, title_h, opt)
    total = time.perf_counter() - t0
    return {
        "output": str(output), "frames": n_frames, "fps": fps, "duration": duration, "size": [width, height],
        "body": opt.body, "path": PATH_NAME, "source": bodies[-1].source, "render_workers": n_workers,
        "render_fps": n_frames / max(render_s / n_workers, 1e-9),  # frames per second of render-thread time
        "total_fps": n_frames / max(total, 1e-9), "audio": None if audio is None else str(audio),
    }  # fmt: skip
