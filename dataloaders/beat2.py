"""Reader for BEAT2 ``beat_english_v2.0.0`` folders (real, or synthetic from ``dataloaders.synthetic``).

On disk: ``smplxflame_30/<id>.npz``, ``wave16k/<id>.wav``, ``textgrid/<id>.TextGrid``, ``train_test_split.csv``.
Per file (as upstream ``beat_sep_lower.py``):
* length truncated to whole seconds of the shortest modality: ``min(floor(audio_s), floor(pose_s), floor(face_s))``;
* ``trans``: x and z re-zeroed to the first frame (y kept);
* ``trans_v``: x and z frame-to-frame deltas with frame 0 copying frame 1; y the absolute height (not a delta).

Every problem with an input file (missing, unreadable/truncated npz, wrong keys/shapes, NaN/inf, stereo audio,
modalities whose lengths differ by more than ``max_length_mismatch_s``) raises :class:`BeatDataError` naming the
file, before any worker touches it. Audio that is not 16 kHz is resampled with a warning. A missing TextGrid is an
error unless ``missing_textgrid: unk`` (then the file's words are all UNK, with a warning) or ``word_rep: none``.
"""

from __future__ import annotations

import csv
import math
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dataloaders.features.audio import AudioError, check_wav

REQUIRED_KEYS = {"poses": 2, "trans": 2, "betas": 1, "expressions": 2}
SPLITS = ("train", "val", "test", "additional")

# Plausibility thresholds (issue 14 item 8).
# Error: a joint rotation whose axis-angle norm exceeds 4*pi rad. Any rotation is expressible with norm <= pi, and
# real BEAT2 stays below ~2.5 rad (speaker-2 sample: max 2.45); 4*pi leaves room for unwrapped angles, while poses
# written in degrees (90 deg -> 90 "rad", up to ~132 in probes) are far above it.
MAX_AXIS_ANGLE = 4.0 * math.pi
# Warning (listed in the cache manifest): a joint angle above 1.5*pi rad is legal but not how BEAT2 writes poses.
WARN_AXIS_ANGLE = 1.5 * math.pi
# Warning: a root translation farther than 100 m from the origin (BEAT2 uses metres; millimetres look like this).
WARN_TRANS_M = 100.0


class BeatDataError(ValueError):
    """A problem with a BEAT2 input file or folder; the message names the file."""


@dataclass(frozen=True)
class FileRef:
    """Where one BEAT2 file's modalities live."""

    id: str
    speaker: int
    npz: Path
    wav: Path
    textgrid: Path


def speaker_of(file_id: str) -> int:
    try:
        return int(file_id.split("_", 1)[0])
    except ValueError as e:
        raise BeatDataError(f"file id {file_id!r} does not start with a speaker number") from e


def file_ref(root: str | Path, file_id: str) -> FileRef:
    root = Path(root)
    return FileRef(
        id=file_id,
        speaker=speaker_of(file_id),
        npz=root / "smplxflame_30" / f"{file_id}.npz",
        wav=root / "wave16k" / f"{file_id}.wav",
        textgrid=root / "textgrid" / f"{file_id}.TextGrid",
    )


def read_split(
    root: str | Path, split: str, speakers: list[int] | None = None, split_csv: str = "train_test_split.csv"
) -> list[str]:
    """Ids of ``split`` (train/val/test/additional) in ``root/split_csv`` whose speaker is in ``speakers``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(root) / split_csv
    if not path.is_file():
        raise BeatDataError(f"split file not found: {path} (is data.root a beat_english_v2.0.0 folder?)")
    want = None if speakers is None else {int(s) for s in speakers}
    try:
        return [i for i, t in read_split_csv(path).items() if t == split and (want is None or speaker_of(i) in want)]
    except BeatDataError as e:
        if str(path) in str(e):
            raise
        raise BeatDataError(f"{path}: {e}") from e  # an id without a speaker number: name the csv too


def read_split_csv(path: str | Path) -> dict[str, str]:
    """The validated split table of a BEAT2 ``train_test_split.csv``: id -> type, in file order.

    Raises :class:`BeatDataError` naming the file for a missing column, an unknown type, an empty id, or an id
    listed twice (see :func:`check_split_rows`)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (spreadsheet export) is no header
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"id", "type"} <= set(reader.fieldnames):
                raise BeatDataError(f"{path}: expected columns 'id' and 'type', got {reader.fieldnames}")
            rows = [((r["id"] or "").strip(), (r["type"] or "").strip()) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BeatDataError(f"unreadable split file {path}: {type(e).__name__}: {e}") from e
    check_split_rows(rows, path)
    return dict(rows)


def check_split_rows(rows: list[tuple[str, str]], path: str | Path) -> None:
    """Reject a split csv that would silently leak or drop files: unknown types (``Train``), empty ids, and ids
    listed twice (in two splits: a test leak; twice in one split: double-counted in the statistics)."""
    unknown = sorted({t for _, t in rows if t not in SPLITS})
    if unknown:
        raise BeatDataError(f"{path}: unknown split type(s) {unknown}; allowed (lower case): {list(SPLITS)}")
    empty = [n + 2 for n, (i, _) in enumerate(rows) if not i]  # csv line numbers (line 1 is the header)
    if empty:
        raise BeatDataError(f"{path}: empty id on line(s) {empty[:10]}")
    types: dict[str, list[str]] = {}
    for i, t in rows:
        types.setdefault(i, []).append(t)
    leaks = {i: ts for i, ts in types.items() if len(set(ts)) > 1}
    dups = {i: ts for i, ts in types.items() if len(ts) > 1 and i not in leaks}
    problems = []
    if leaks:
        problems.append("id(s) listed in more than one split: "
                        + ", ".join(f"{i} ({'/'.join(ts)})" for i, ts in sorted(leaks.items())))  # fmt: skip
    if dups:
        problems.append("id(s) listed twice in the same split: "
                        + ", ".join(f"{i} ({ts[0]} x{len(ts)})" for i, ts in sorted(dups.items())))  # fmt: skip
    if problems:
        raise BeatDataError(f"{path}: " + "; ".join(problems) + " (each id must appear exactly once)")


def load_motion(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate one ``smplxflame_30`` npz: poses (T,165), trans (T,3), betas (300,), expressions (T,100)."""
    path = Path(path)
    if not path.is_file():
        raise BeatDataError(f"missing motion file: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array under an .npz name
            raise BeatDataError(f"{path}: not an npz archive (one .npy array?); expected keys {list(REQUIRED_KEYS)}")
        with z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
            if missing:
                raise BeatDataError(f"{path}: missing key(s) {missing}; found {sorted(z.files)}")
            data = {k: np.asarray(z[k]) for k in REQUIRED_KEYS}
            fr = np.asarray(z["mocap_frame_rate"]) if "mocap_frame_rate" in z.files else np.array(30.0)
    except BeatDataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
        # ValueError includes object arrays, which are never unpickled
        raise BeatDataError(f"unreadable or truncated motion file {path}: {type(e).__name__}: {e}") from e
    if fr.size != 1 or fr.dtype.kind not in "iuf" or not abs(float(fr.reshape(())) - 30.0) <= 1e-6:
        raise BeatDataError(f"{path}: mocap_frame_rate {fr.tolist() if fr.size < 5 else fr.shape}, expected 30")
    poses, trans, betas, expr = data["poses"], data["trans"], data["betas"], data["expressions"]
    t = poses.shape[0] if poses.ndim == 2 else -1
    problems = []
    if poses.ndim != 2 or poses.shape[1] != 165:
        problems.append(f"poses {poses.shape} (expected (T,165))")
    if trans.shape != (t, 3):
        problems.append(f"trans {trans.shape} (expected ({t},3))")
    if betas.ndim != 1 or betas.shape[0] < 10:
        problems.append(f"betas {betas.shape} (expected (300,))")
    if expr.ndim != 2 or expr.shape[1] != 100 or abs(expr.shape[0] - t) > 1:
        problems.append(f"expressions {expr.shape} (expected ({t},100))")
    if problems:
        raise BeatDataError(f"{path}: bad shapes: " + "; ".join(problems))
    if t < 2:
        raise BeatDataError(f"{path}: only {t} frames")
    for k, v in data.items():
        if v.dtype.kind not in "iuf":  # complex would lose its imaginary part silently, bool/str/dates are no data
            raise BeatDataError(f"{path}: key {k!r} has dtype {v.dtype} (expected real numbers)")
        if not np.all(np.isfinite(v)):
            bad = np.argwhere(~np.isfinite(v.reshape(v.shape[0], -1) if v.ndim > 1 else v[:, None]))[0]
            raise BeatDataError(f"{path}: key {k!r} holds NaN/inf (first at index {tuple(int(x) for x in bad)})")
    angles = np.linalg.norm(poses.reshape(t, 55, 3).astype(np.float64), axis=-1)
    if angles.max() > MAX_AXIS_ANGLE:
        f, j = np.unravel_index(int(np.argmax(angles)), angles.shape)
        raise BeatDataError(
            f"{path}: joint {j} at frame {f} has |axis-angle| {angles[f, j]:.1f} rad > 4*pi ({MAX_AXIS_ANGLE:.2f}); "
            "poses must be axis-angle in radians (are they in degrees?)"
        )
    with np.errstate(over="ignore"):  # overflow is reported just below, naming the key
        out = {"poses": poses.astype(np.float32), "trans": trans.astype(np.float64),
               "betas": betas.astype(np.float32), "expressions": expr.astype(np.float64)}  # fmt: skip
    for k, v in out.items():
        if not np.all(np.isfinite(v)):  # finite in the file, but beyond float32
            raise BeatDataError(f"{path}: key {k!r} holds values too large for {v.dtype} (max |x| "
                                f"{float(np.abs(data[k]).max()):.3g})")  # fmt: skip
    return out


def motion_warnings(poses: np.ndarray, trans: np.ndarray) -> list[str]:
    """Suspicious but not impossible motion (thresholds at the top of this module): messages, empty when fine."""
    out = []
    angles = np.linalg.norm(np.asarray(poses, np.float64).reshape(len(poses), 55, 3), axis=-1)
    if angles.max() > WARN_AXIS_ANGLE:
        f, j = np.unravel_index(int(np.argmax(angles)), angles.shape)
        out.append(f"joint {j} at frame {f} has |axis-angle| {angles[f, j]:.2f} rad > 1.5*pi")
    far = float(np.abs(trans).max())
    if far > WARN_TRANS_M:
        out.append(f"root translation reaches {far:.1f} m (> {WARN_TRANS_M:.0f} m; BEAT2 trans is in metres)")
    if float(np.ptp(poses, axis=0).max()) == 0.0:
        out.append("the pose never changes (frozen motion)")
    return out


def process_trans(trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(trans with x,z re-zeroed to frame 0, trans_v = x,z deltas (frame 0 copies frame 1) and absolute y)."""
    trans = np.asarray(trans, dtype=np.float64)
    tr = trans.copy()
    tr[:, 0] -= trans[0, 0]
    tr[:, 2] -= trans[0, 2]
    tv = np.zeros_like(trans)
    tv[1:, 0] = trans[1:, 0] - trans[:-1, 0]
    tv[1:, 2] = trans[1:, 2] - trans[:-1, 2]
    if len(trans) > 1:
        tv[0, [0, 2]] = tv[1, [0, 2]]
    tv[:, 1] = trans[:, 1]
    return tr, tv


def audio_duration(path: str | Path, sr: int = 16000) -> float:
    """Duration in seconds, after validating the file (mono; warns when not ``sr``)."""
    try:
        check_wav(path, sr)
        info = sf.info(str(path))
    except AudioError as e:
        raise BeatDataError(str(e)) from e
    return info.frames / info.samplerate


def whole_seconds(ref: FileRef, n_pose: int, n_face: int, audio_s: float, max_mismatch_s: float = 2.0) -> int:
    """Upstream length rule, after checking the modalities agree within ``max_mismatch_s``."""
    pose_s, face_s = n_pose / 30.0, n_face / 30.0
    spread = max(pose_s, face_s, audio_s) - min(pose_s, face_s, audio_s)
    if spread > max_mismatch_s:
        raise BeatDataError(
            f"{ref.id}: modality lengths differ by {spread:.2f} s (motion {pose_s:.2f} s in {ref.npz.name}, "
            f"audio {audio_s:.2f} s in {ref.wav.name}); limit data.max_length_mismatch_s={max_mismatch_s}"
        )
    secs = min(math.floor(audio_s), math.floor(pose_s), math.floor(face_s))
    if secs < 1:
        raise BeatDataError(f"{ref.id}: shorter than one second")
    return secs


def validate_files(refs: list[FileRef], need_textgrid: bool, skip_bad: bool = False) -> tuple[list[FileRef], list[str]]:
    """Cheap existence checks of every file up front. Returns (usable refs, messages of skipped ones).

    With ``skip_bad`` a bad file is skipped with one warning listing all of them; otherwise the first problem
    raises :class:`BeatDataError`."""
    good, bad = [], []
    for r in refs:
        missing = [p for p in (r.npz, r.wav) if not p.is_file()]
        if need_textgrid and not r.textgrid.is_file():
            missing.append(r.textgrid)
        if missing:
            msg = f"{r.id}: missing {', '.join(str(p) for p in missing)}"
            if not skip_bad:
                raise BeatDataError(msg)
            bad.append(msg)
        else:
            good.append(r)
    if bad:
        warnings.warn(f"skipping {len(bad)} file(s) with missing inputs: " + "; ".join(bad), stacklevel=2)
    return good, bad
