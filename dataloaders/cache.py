"""Per-file feature cache for BEAT2-format folders: built by an explicit step, CPU only, resumable, no pickle.

Steps (explicit, e.g. ``python -m dataloaders.prepare -c CONFIG``): :func:`prepare_corpus` (generates a synthetic
corpus), :func:`build_cache` (vocabulary + arrays of one split). Getters (:func:`data_root`, :func:`get_vocab`,
:func:`open_cache`) only read: a missing or stale corpus/cache raises :class:`DataNotPreparedError` naming the
path and the command that builds it.

Layout under ``data.cache_dir``::

    vocab/                      vocab.json + embeddings.npy (+ source.json: which TextGrids it was built from)
    <key>/manifest.json         config, and per file: source fingerprints, lengths, array shapes
    <key>/files/<id>/<name>.npy pose (T,165) f32, trans (T,3) f64, trans_v (T,3) f64, facial (T,100) f32,
                                betas (300,) f32, word (T,) i64, audio (S,2) f32 (onset+amplitude at 16 kHz;
                                (T,128) log-mel or (T,hidden) frozen WavLM features at 30 fps, f32; (S,1) f32
                                waveform at 16 kHz for a fine-tuned WavLM, data.wavlm_finetune)

``<key>`` is a hash of every config value that changes the arrays (root, rates, audio/text options, the
vocabulary's digest, a format version), so a changed config builds a new cache. Within a cache, each file is
keyed by the fingerprint of its sources (size + mtime, or a content hash with ``fingerprint: content``): a
changed file rebuilds only that file. Arrays are written atomically and a file enters the manifest only after
all of its arrays are on disk, so an interrupted build is never read as complete: the next call resumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataloaders import beat2
from dataloaders.features import audio as audio_feat
from dataloaders.features import text as text_feat
from utils.io import save_json, save_npy
from utils.paths import resolve_path

CACHE_VERSION = 1
ARRAY_NAMES = ("pose", "trans", "trans_v", "facial", "betas", "word", "audio")
AUDIO_REPS = ("onset+amplitude", "mel", "wavlm")


def frame_audio(s: dict[str, Any]) -> bool:
    """True when a cache of settings ``s`` holds frame-level audio features (T, D) at the motion rate (mel, frozen
    WavLM); False when it holds samples at ``audio_sr`` (onset+amplitude (S, 2), the waveform (S, 1))."""
    return s["audio_rep"] in ("mel", "wavlm") and s.get("wavlm_input") != "waveform"

DEFAULTS: dict[str, Any] = {
    "pose_fps": 30,
    "audio_sr": 16000,
    "audio_rep": "onset+amplitude",
    "audio_load": "upstream",
    "onset_mode": "corrected",
    "word_rep": "textgrid",
    "missing_textgrid": "error",
    "on_bad_file": "error",
    "vocab": None,
    "fasttext_model": None,
    "wavlm_model": None,
    "wavlm_layer": None,
    "wavlm_finetune": False,
    "split_csv": "train_test_split.csv",
    "max_length_mismatch_s": 2.0,
    "fingerprint": "mtime",
    "num_workers": 0,
    "max_files": None,
    "synthetic": None,
}


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a key from a dict/DictConfig/``data:``-wrapped config, falling back to DEFAULTS."""
    node = cfg
    if hasattr(node, "get") and node.get("data", None) is not None and node.get("root", None) is None:
        node = node["data"]
    val = node.get(key, None) if hasattr(node, "get") else getattr(node, key, None)
    if val is None:
        val = DEFAULTS.get(key, default) if default is None else default
    if hasattr(val, "items") or (hasattr(val, "__iter__") and not isinstance(val, (str, bytes))):
        from utils.config import to_container

        val = to_container(val)
    return val


PREPARE_COMMAND = "python -m dataloaders.prepare -c CONFIG [key=value ...]"
PIPELINE_COMMAND = "python run_pipeline.py -c PIPELINE_CONFIG stages=[corpus,cache]"


class DataNotPreparedError(beat2.BeatDataError):
    """A corpus, cache, vocabulary or statistics file that a getter needs is missing or stale.

    Getters never build: the message names the missing path and the command that builds it."""


def _how_to_build() -> str:
    return f"build it with `{PREPARE_COMMAND}` (the data config of your run) or `{PIPELINE_COMMAND}`"


class EmptySplitError(beat2.BeatDataError):
    """A split has no files for the configured speakers."""


def data_root(cfg: Any) -> Path:
    """``data.root`` resolved and checked. Never generates anything: see :func:`prepare_corpus`."""
    root = resolve_path(cfg_get(cfg, "root"))
    if root is None:
        raise beat2.BeatDataError("data.root is not set")
    syn = cfg_get(cfg, "synthetic")
    if syn and not (root / cfg_get(cfg, "split_csv")).is_file():
        raise DataNotPreparedError(
            f"synthetic corpus not found at data.root={root} (no {cfg_get(cfg, 'split_csv')}): {_how_to_build()}, "
            f"or `python -m dataloaders.synthetic --out {root}`"
        )
    if not root.is_dir():
        raise beat2.BeatDataError(f"data.root {root} does not exist (set BEAT2_ROOT or data.root)")
    return root


def prepare_corpus(cfg: Any) -> Path:
    """Explicit step: generate the synthetic corpus at ``data.root`` when ``data.synthetic`` is set and the corpus
    (its split csv) is missing; then return :func:`data_root`. A given BEAT2 folder is only checked."""
    root = resolve_path(cfg_get(cfg, "root"))
    syn = cfg_get(cfg, "synthetic")
    if root is not None and syn and not (root / cfg_get(cfg, "split_csv")).is_file():
        from dataloaders.synthetic import generate_corpus

        print(f"[data] generating the synthetic corpus at {root}")
        generate_corpus(root, **{k: syn[k] for k in ("speakers", "files_per_speaker", "seconds", "seed") if k in syn})
    return data_root(cfg)


def cache_root(cfg: Any) -> Path:
    d = resolve_path(cfg_get(cfg, "cache_dir"))
    if d is None:
        raise beat2.BeatDataError("data.cache_dir is not set")
    return d


# ----------------------------------------------------------------------------------------------------------------
def fingerprint(paths: list[Path], mode: str = "mtime") -> dict[str, Any]:
    out = {}
    for p in paths:
        if not p.is_file():
            out[p.name] = None
        elif mode == "content":
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            st = p.stat()
            out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


def _sources(ref: beat2.FileRef, use_text: bool) -> list[Path]:
    return [ref.npz, ref.wav] + ([ref.textgrid] if use_text else [])


def _vocab_plan(cfg: Any, root: Path) -> tuple[Path, dict[str, Any] | None, list[Path]]:
    """(folder the vocabulary is read from, the source record it must match or None, TextGrids to build from)."""
    given = cfg_get(cfg, "vocab")
    if given:
        p = resolve_path(given)
        if p.suffix == ".pkl":
            return cache_root(cfg) / f"vocab_converted_{hashlib.sha256(str(p).encode()).hexdigest()[:8]}", None, []
        return p, None, []
    ids = list(beat2.read_split_csv(root / cfg_get(cfg, "split_csv")))
    grids = [root / "textgrid" / f"{i}.TextGrid" for i in ids]
    grids = [g for g in grids if g.is_file()]
    ft = cfg_get(cfg, "fasttext_model")
    source = {"textgrids": fingerprint(grids), "fasttext_model": str(ft) if ft else None}
    return cache_root(cfg) / "vocab", source, grids


def _vocab_current(folder: Path, source: dict[str, Any] | None) -> bool:
    if not (folder / "vocab.json").is_file():
        return False
    src_json = folder / "source.json"
    return source is None or (src_json.is_file() and json.loads(src_json.read_text()) == source)


def get_vocab(cfg: Any, root: Path) -> text_feat.Vocab | None:
    """The vocabulary (None with ``word_rep: none``): ``data.vocab`` (a folder with vocab.json; an upstream
    vocab.pkl once converted), else the one built from the corpus TextGrids under cache_dir/vocab.

    A getter: a missing or stale vocabulary raises :class:`DataNotPreparedError`; :func:`prepare_vocab` builds it."""
    if cfg_get(cfg, "word_rep") == "none":
        return None
    folder, source, _ = _vocab_plan(cfg, root)
    given = cfg_get(cfg, "vocab")
    if given and source is None and resolve_path(given).suffix != ".pkl" and not _vocab_current(folder, None):
        raise beat2.BeatDataError(f"data.vocab={given}: {folder / 'vocab.json'} not found (a vocabulary folder)")
    if not _vocab_current(folder, source):
        state = "is out of date with the TextGrids" if (folder / "vocab.json").is_file() else "not found"
        raise DataNotPreparedError(f"vocabulary {folder / 'vocab.json'} {state}: {_how_to_build()}")
    return text_feat.Vocab.load(folder)


def prepare_vocab(cfg: Any, root: Path) -> text_feat.Vocab | None:
    """Explicit step: convert ``data.vocab`` (.pkl) once, or build the vocabulary from every TextGrid listed in the
    split csv (all speakers, all splits) with its embeddings; then return :func:`get_vocab`."""
    if cfg_get(cfg, "word_rep") == "none":
        return None
    folder, source, grids = _vocab_plan(cfg, root)
    if not _vocab_current(folder, source):
        given = cfg_get(cfg, "vocab")
        if given and source is None and resolve_path(given).suffix == ".pkl":
            text_feat.convert_vocab_pkl(resolve_path(given), folder)
        elif source is not None:
            ft = cfg_get(cfg, "fasttext_model")
            vocab = text_feat.build_vocab(grids)
            sentences = [
                " ".join(m for _, _, m in text_feat.read_textgrid_words(g) if m.strip()) for g in sorted(grids)
            ]
            text_feat.attach_embeddings(vocab, sentences, resolve_path(ft) if ft else None)
            vocab.save(folder)
            save_json(source, folder / "source.json")
    return get_vocab(cfg, root)


def settings(cfg: Any, root: Path, vocab: text_feat.Vocab | None) -> dict[str, Any]:
    """Everything that changes the cached arrays (hashed into the cache key)."""
    s = {
        "version": CACHE_VERSION,
        "root": str(root.resolve()),
        "pose_fps": int(cfg_get(cfg, "pose_fps")),
        "audio_sr": int(cfg_get(cfg, "audio_sr")),
        "audio_rep": cfg_get(cfg, "audio_rep"),
        "audio_load": cfg_get(cfg, "audio_load"),
        "onset_mode": cfg_get(cfg, "onset_mode"),
        "word_rep": cfg_get(cfg, "word_rep"),
        "missing_textgrid": cfg_get(cfg, "missing_textgrid"),
        "max_length_mismatch_s": float(cfg_get(cfg, "max_length_mismatch_s")),
        "vocab_digest": vocab.digest() if vocab is not None else None,
        "wavlm_model": str(cfg_get(cfg, "wavlm_model")) if cfg_get(cfg, "audio_rep") == "wavlm" else None,
    }
    # Settings of one representation only, added only for it: the keys (and so the caches) of the others stay as
    # they were. "mel": what mel_features computes (log-mel interpolated to the frame times since issue 18; the raw
    # power mel of before is never reused).
    if s["audio_rep"] == "mel":
        s["mel"] = {"scale": "log", "floor": audio_feat.MEL_FLOOR, "n_mels": audio_feat.N_MELS, "timing": "interp"}
    if s["audio_rep"] == "wavlm":
        layer = cfg_get(cfg, "wavlm_layer")
        s["wavlm_layer"] = None if layer is None else int(layer)
        # fine-tuned WavLM runs inside the encoder: the cache holds the 16 kHz waveform, not frozen features
        s["wavlm_input"] = "waveform" if bool(cfg_get(cfg, "wavlm_finetune")) else "features"
        if not cfg_get(cfg, "wavlm_model"):
            raise beat2.BeatDataError("data.audio_rep=wavlm needs data.wavlm_model (a WavLM folder written by "
                                      "save_pretrained, or a cached Hugging Face id such as microsoft/wavlm-base-plus)")
    if s["pose_fps"] != 30:
        raise beat2.BeatDataError(f"data.pose_fps={s['pose_fps']}: only 30 (BEAT2's rate) is supported")
    if s["audio_rep"] not in AUDIO_REPS:
        raise beat2.BeatDataError(f"data.audio_rep={s['audio_rep']!r}; expected one of {AUDIO_REPS}")
    if s["onset_mode"] not in audio_feat.ONSET_MODES:
        raise beat2.BeatDataError(f"data.onset_mode={s['onset_mode']!r}; expected one of {audio_feat.ONSET_MODES}")
    if s["word_rep"] not in ("textgrid", "none"):
        raise beat2.BeatDataError(f"data.word_rep={s['word_rep']!r}; expected 'textgrid' or 'none'")
    if s["missing_textgrid"] not in ("error", "unk"):
        raise beat2.BeatDataError(f"data.missing_textgrid={s['missing_textgrid']!r}; expected 'error' or 'unk'")
    return s


def cache_key(s: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
_WORKER_STATE: dict[str, Any] = {}


def _worker_vocab(vocab_dir: str | None) -> text_feat.Vocab | None:
    if vocab_dir is None:
        return None
    if _WORKER_STATE.get("vocab_dir") != vocab_dir:
        _WORKER_STATE["vocab"] = text_feat.Vocab.load(vocab_dir)
        _WORKER_STATE["vocab_dir"] = vocab_dir
    return _WORKER_STATE["vocab"]


def worker_wavlm(key: str) -> Any:
    """The frozen WavLM model of ``data.wavlm_model``, loaded once per process (cache workers, inference)."""
    if _WORKER_STATE.get("wavlm_key") != key:
        _WORKER_STATE["wavlm"] = audio_feat.load_wavlm(key)
        _WORKER_STATE["wavlm_key"] = key
    return _WORKER_STATE["wavlm"]


# Audio plausibility (warnings in the manifest): a peak below -60 dBFS is near-silent; an all-zero file has no onsets
# at all, so BC has nothing to align to.
SILENT_PEAK = 1e-3


def compute_file(
    ref: beat2.FileRef, s: dict[str, Any], vocab: text_feat.Vocab | None, notes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """All cached arrays of one file (no disk writes). Raises BeatDataError naming the file on bad input;
    suspicious but usable input (silent audio, no onsets, odd motion) is appended to ``notes``."""
    notes = [] if notes is None else notes
    m = beat2.load_motion(ref.npz)
    notes += [f"{ref.npz.name}: {w}" for w in beat2.motion_warnings(m["poses"], m["trans"])]
    audio_s = beat2.audio_duration(ref.wav, s["audio_sr"])
    secs = beat2.whole_seconds(ref, m["poses"].shape[0], m["expressions"].shape[0], audio_s, s["max_length_mismatch_s"])
    n = secs * s["pose_fps"]
    n_samples = secs * s["audio_sr"]
    trans, trans_v = beat2.process_trans(m["trans"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample-rate warning was already given in the main process
        y = audio_feat.load_audio(ref.wav, s["audio_sr"], s["audio_load"])
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak == 0.0:
        notes.append(f"{ref.wav.name}: the audio is all zeros (silent)")
    elif peak < SILENT_PEAK:
        notes.append(f"{ref.wav.name}: near-silent audio (peak {peak:.1e} < {SILENT_PEAK:g})")
    if s["audio_rep"] == "onset+amplitude":
        # Features on the whole recording, then cut (as upstream): onsets near the cut are unaffected by it.
        feat = audio_feat.onset_amplitude(y, s["audio_sr"], s["onset_mode"])[:n_samples].astype(np.float32)
        if feat.shape[0] < n_samples:
            feat = np.pad(feat, ((0, n_samples - feat.shape[0]), (0, 0)), mode="edge")
        if not feat[:, 1].any():
            notes.append(f"{ref.wav.name}: no audio onsets detected (BC has no beats to score against)")
    elif s["audio_rep"] == "mel":
        feat = audio_feat.mel_features(y[:n_samples], s["audio_sr"], s["pose_fps"], n_frames=n)
    elif s.get("wavlm_input") == "waveform":
        feat = np.zeros((n_samples, 1), dtype=np.float32)
        feat[: min(n_samples, y.shape[0]), 0] = y[:n_samples]
    else:
        feat = audio_feat.wavlm_features(y[:n_samples], worker_wavlm(s["wavlm_model"]), n, layer=s["wavlm_layer"])
    if s["word_rep"] == "none":
        word = np.full(n, text_feat.UNK, dtype=np.int64)
    elif not ref.textgrid.is_file():
        if s["missing_textgrid"] != "unk":
            raise beat2.BeatDataError(
                f"missing TextGrid: {ref.textgrid} (set data.missing_textgrid=unk or data.word_rep=none)"
            )
        word = np.full(n, text_feat.UNK, dtype=np.int64)
    else:
        try:
            word = text_feat.frame_word_ids(text_feat.read_textgrid_words(ref.textgrid), n, vocab, s["pose_fps"])
        except text_feat.TextError as e:
            raise beat2.BeatDataError(str(e)) from e
    return {
        "pose": m["poses"][:n].astype(np.float32),
        "trans": trans[:n],
        "trans_v": trans_v[:n],
        "facial": m["expressions"][:n].astype(np.float32),
        "betas": m["betas"].astype(np.float32),
        "word": word,
        "audio": feat,
    }


class CacheWriteError(OSError):
    """The cache could not be written (disk full, permissions): an output problem, never a bad input file."""


def _build_one(args: tuple) -> tuple[str, str, dict[str, Any] | str]:
    """Worker: compute and write one file's arrays. Never raises: returns ("ok"|"error", id, meta|message)."""
    ref, s, vocab_dir, out_dir = args
    try:
        notes: list[str] = []
        arrays = compute_file(ref, s, _worker_vocab(vocab_dir), notes)
        try:
            for name, arr in arrays.items():
                save_npy(arr, Path(out_dir) / f"{name}.npy")
        except OSError as e:  # the output side (disk full, read-only): never blamed on the input file
            return "write_error", ref.id, f"cannot write the cache of {ref.id} to {out_dir}: {e}"
        meta = {
            "speaker": ref.speaker,
            "n_frames": int(arrays["pose"].shape[0]),
            "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
            "wav": str(ref.wav),
            "warnings": notes,
        }
        return "ok", ref.id, meta
    except beat2.BeatDataError as e:
        return "error", ref.id, str(e)
    except Exception as e:  # anything unexpected: still name the file
        return "error", ref.id, f"{ref.id} ({ref.npz}, {ref.wav}): {type(e).__name__}: {e}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class CacheEntry:
    id: str
    speaker: int
    n_frames: int
    folder: Path
    wav: Path

    def load(self, name: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)


@dataclass
class CacheIndex:
    folder: Path
    split: str
    entries: list[CacheEntry]
    settings: dict[str, Any]
    built: list[str]  # ids (re)built by this call
    skipped: list[str]
    warnings: dict[str, list[str]] = field(default_factory=dict)  # id -> plausibility warnings (from the manifest)


def _entry_ok(folder: Path, meta: dict[str, Any]) -> bool:
    for name, (shape, _) in meta.get("arrays", {}).items():
        p = folder / f"{name}.npy"
        if not p.is_file():
            return False
        try:
            if list(np.load(p, mmap_mode="r", allow_pickle=False).shape) != shape:
                return False
        except Exception:
            return False
    return bool(meta.get("arrays"))


def _split_ids(cfg: Any, root: Path, split: str, ids: list[str] | None) -> list[str]:
    speakers = cfg_get(cfg, "training_speakers")
    if ids is None:
        ids = sorted(beat2.read_split(root, split, speakers, cfg_get(cfg, "split_csv")))
    max_files = cfg_get(cfg, "max_files")
    if max_files:
        ids = ids[: int(max_files)]
    if not ids:
        raise EmptySplitError(f"no '{split}' files for speakers {speakers} in {root / cfg_get(cfg, 'split_csv')}")
    return ids


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise beat2.BeatDataError(f"unreadable cache manifest {path} ({e}): delete it and rebuild the cache") from e


def _file_warnings(files: dict[str, Any], ids: list[str]) -> dict[str, list[str]]:
    return {i: list(files[i]["warnings"]) for i in ids if i in files and files[i].get("warnings")}


def open_cache(cfg: Any, split: str, ids: list[str] | None = None) -> CacheIndex:
    """The cache index of ``split`` (a getter: reads, never builds).

    Every file of the split must be cached with its current sources (fingerprint) and complete arrays; otherwise
    :class:`DataNotPreparedError` names the cache folder, the missing/stale ids and the command that builds them
    (:func:`build_cache`, or ``python -m dataloaders.prepare``). Files skipped as bad under ``on_bad_file: skip``
    are left out, as :func:`build_cache` left them out."""
    root = data_root(cfg)
    ids = _split_ids(cfg, root, split, ids)
    vocab = get_vocab(cfg, root)
    s = settings(cfg, root, vocab)
    key = cache_key(s)
    folder = cache_root(cfg) / key
    manifest_path = folder / "manifest.json"
    manifest = _read_manifest(manifest_path)
    if manifest.get("key") != key:
        raise DataNotPreparedError(f"no cache for split '{split}' at {manifest_path}: {_how_to_build()}")
    files = manifest.get("files", {})
    bad = manifest.get("skipped", {})
    skip_bad = cfg_get(cfg, "on_bad_file") == "skip"
    use_text = s["word_rep"] == "textgrid"
    mode = cfg_get(cfg, "fingerprint")
    entries, skipped, missing, stale = [], [], [], []
    for i in ids:
        r = beat2.file_ref(root, i)
        meta = files.get(i)
        if meta is None:
            (skipped if (skip_bad and i in bad) else missing).append(i)
        elif meta.get("fingerprint") != fingerprint(_sources(r, use_text), mode) or not _entry_ok(
            folder / "files" / i, meta
        ):
            stale.append(i)
        else:
            entries.append(CacheEntry(i, int(meta["speaker"]), int(meta["n_frames"]), folder / "files" / i, r.wav))
    if missing or stale:
        parts = [f"not cached: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []
        parts += [f"sources changed: {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}"] if stale else []
        why = [f"{i} was skipped as bad: {bad[i]}" for i in missing if i in bad][:3]
        raise DataNotPreparedError(
            f"cache {folder} is incomplete for split '{split}' ({len(missing) + len(stale)} of {len(ids)} files; "
            f"{'; '.join(parts + why)}): {_how_to_build()}"
        )
    return CacheIndex(folder, split, entries, s, [], skipped, _file_warnings(files, [e.id for e in entries]))


def build_cache(cfg: Any, split: str, ids: list[str] | None = None, progress: bool = True) -> CacheIndex:
    """Explicit step: make sure every file of ``split`` (for ``training_speakers``) is cached and current (building
    the vocabulary first); return the index. The corpus must exist (:func:`prepare_corpus`).

    ``ids`` overrides the split's file list. ``data.max_files`` keeps only the first N ids (sorted). Plausibility
    warnings (silent audio, no onsets, odd motion) are stored per file in the manifest and shown once."""
    root = data_root(cfg)
    ids = _split_ids(cfg, root, split, ids)
    vocab = prepare_vocab(cfg, root)
    s = settings(cfg, root, vocab)
    key = cache_key(s)
    folder = cache_root(cfg) / key
    use_text = s["word_rep"] == "textgrid"
    need_text = use_text and s["missing_textgrid"] == "error"
    skip_bad = cfg_get(cfg, "on_bad_file") == "skip"
    refs = [beat2.file_ref(root, i) for i in ids]
    refs, skipped_msgs = beat2.validate_files(refs, need_text, skip_bad)
    bad_now = {m.split(":", 1)[0]: m for m in skipped_msgs}
    # Cheap up-front audio checks in this process (warnings for resampling; clear errors for stereo etc.).
    for r in list(refs):
        try:
            audio_feat.check_wav(r.wav, s["audio_sr"])
        except audio_feat.AudioError as e:
            if not skip_bad:
                raise beat2.BeatDataError(str(e)) from e
            warnings.warn(f"skipping {r.id}: {e}", stacklevel=2)
            refs.remove(r)
            bad_now[r.id] = f"{r.id}: {e}"
    mode = cfg_get(cfg, "fingerprint")
    with _locked(folder / ".lock"):
        manifest_path = folder / "manifest.json"
        manifest = _read_manifest(manifest_path)
        if manifest.get("key") != key:
            manifest = {"key": key, "settings": s, "files": {}}
        files = manifest["files"]
        todo = []
        for r in refs:
            fp = fingerprint(_sources(r, use_text), mode)
            meta = files.get(r.id)
            if meta is None or meta.get("fingerprint") != fp or not _entry_ok(folder / "files" / r.id, meta):
                todo.append((r, fp))
        if manifest.get("in_progress"):
            print(f"[data] resuming an interrupted cache build in {folder}")
        built, errors = [], []
        if todo:
            manifest["in_progress"] = sorted(r.id for r, _ in todo)
            save_json(manifest, manifest_path)
            vocab_dir = str(cache_root(cfg) / "vocab") if (vocab is not None and not cfg_get(cfg, "vocab")) else None
            if vocab is not None and vocab_dir is None:
                vocab_dir = str(folder / "vocab")
                vocab.save(vocab_dir)
            jobs = [(r, s, vocab_dir, str(folder / "files" / r.id)) for r, _ in todo]
            fps = {r.id: fp for r, fp in todo}
            workers = int(cfg_get(cfg, "num_workers") or 0)
            t0 = time.time()
            bar = tqdm(total=len(jobs), desc=f"caching {split} ({key})", disable=not progress, unit="file")
            with _pool(workers) as pool:
                results = pool.imap_unordered(_build_one, jobs) if pool is not None else map(_build_one, jobs)
                for status, fid, meta in results:
                    bar.update(1)
                    if status == "write_error":
                        # stop at once: skipping files because the disk is full would lose the corpus silently,
                        # and the manifest keeps them in_progress, so the cache is never read as complete
                        raise CacheWriteError(f"{meta} (free space or permissions under {folder}; then rerun the "
                                              "same command: finished files are kept)")  # fmt: skip
                    if status == "error":
                        errors.append((fid, meta if fid in meta else f"{fid}: {meta}"))
                        continue
                    meta["fingerprint"] = fps[fid]
                    files[fid] = meta
                    manifest["in_progress"] = [i for i in manifest["in_progress"] if i != fid]
                    save_json(manifest, manifest_path)  # after the arrays: an entry is always complete
                    built.append(fid)
            bar.close()
            messages = " | ".join(m for _, m in errors)
            if errors and not skip_bad:
                raise beat2.BeatDataError(f"{len(errors)} file(s) failed while caching: {messages}")
            if errors:
                warnings.warn(f"skipped {len(errors)} bad file(s): {messages}", stacklevel=2)
                bad_now.update(dict(errors))
            manifest["in_progress"] = []
            if progress:
                print(f"[data] cached {len(built)} file(s) in {time.time() - t0:.1f} s -> {folder}")
        # Which ids were left out as bad, and why: open_cache leaves the same ones out (never silently).
        recorded = {i: m for i, m in manifest.get("skipped", {}).items() if i not in files or i in bad_now}
        recorded.update(bad_now)
        for i in bad_now:
            files.pop(i, None)
        if todo or recorded != manifest.get("skipped", {}):
            manifest["skipped"] = recorded
            save_json(manifest, manifest_path)
    noted = _file_warnings(files, built)
    if noted:
        warnings.warn(
            f"{len(noted)} file(s) look implausible (listed in {folder / 'manifest.json'}): "
            + " | ".join(f"{i}: {'; '.join(w)}" for i, w in noted.items()),
            stacklevel=2,
        )
    entries = [
        CacheEntry(r.id, int(files[r.id]["speaker"]), int(files[r.id]["n_frames"]), folder / "files" / r.id, r.wav)
        for r in refs
        if r.id in files and r.id not in bad_now
    ]
    return CacheIndex(folder, split, entries, s, built, sorted(bad_now), _file_warnings(files, [e.id for e in entries]))


def _warm_up() -> None:
    y = np.random.default_rng(0).normal(0.0, 0.1, 16000).astype(np.float32)
    audio_feat.onset_amplitude(y, 16000)
    audio_feat.librosa.resample(y, orig_sr=22050, target_sr=16000)


@contextlib.contextmanager
def _pool(workers: int):
    if workers <= 0:
        yield None
        return
    if os.name == "posix":
        _warm_up()  # forked workers inherit librosa's JIT-compiled code instead of compiling it each (~3 s)
    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    pool = ctx.Pool(workers)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()
