"""Small hand-built motions and media helpers for the render/export tests (fast: 1-2 s, tiny frames)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

R_SHOULDER = 17  # SMPL-X right shoulder


def arm_wave_motion(frames: int = 30, still: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """A standing body (arms lowered) whose right arm swings up and down; every other joint and the root still."""
    poses = np.zeros((frames, 165), np.float32)
    poses[:, 16 * 3 + 2] = -1.2  # left shoulder: arm down (about z)
    poses[:, 17 * 3 + 2] = 1.2  # right shoulder: arm down
    if not still:
        t = np.arange(frames) / 30.0
        poses[:, R_SHOULDER * 3 + 2] = 1.2 - 1.4 * (0.5 - 0.5 * np.cos(2 * np.pi * t / max(frames / 30.0, 1e-3)))
    trans = np.tile(np.float32([0.0, 1.3, 0.0]), (frames, 1))
    return {"poses": poses, "trans": trans, "betas": np.zeros(300, np.float32), "mocap_frame_rate": np.int64(30)}


def random_motion(frames: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Smooth random poses on every joint, random betas and a drifting root: for exact FK round trips."""
    rng = np.random.default_rng(seed)
    key = rng.normal(0, 0.35, (4, 165))
    t = np.linspace(0, 3, frames)
    poses = np.stack([np.interp(t, np.arange(4), key[:, k]) for k in range(165)], 1).astype(np.float32)
    trans = np.stack([0.2 * np.sin(t), 1.25 + 0.02 * t, 0.3 * t], 1)
    betas = rng.normal(0, 1, 300).astype(np.float32)
    return {"poses": poses, "trans": trans, "betas": betas, "mocap_frame_rate": np.int64(30)}


def save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def write_tone(path: Path, seconds: float, sr: int = 16000, freq: float = 440.0) -> Path:
    import soundfile as sf

    t = np.arange(int(round(seconds * sr))) / sr
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def decode_audio(path: Path, sr: int = 8000) -> np.ndarray:
    """The audio stream of a media file as mono float samples (ffmpeg of imageio-ffmpeg; no ffprobe needed)."""
    from render.video import ffmpeg_exe

    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "s16le", "-ac", "1", "-ar", str(sr), "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.int16).astype(np.float32) / 32768.0
