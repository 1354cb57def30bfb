"""Words: TextGrid reading, the vocabulary (JSON + .npy, no pickle), per-frame word ids, FastText embeddings.

Vocabulary as upstream (``build_vocab.py``): PAD 0, SOS 1, EOS 2, UNK 3, then every TextGrid interval mark of the
corpus after replacing ``, . ? !`` with spaces (stripped; the empty mark of silences is a word too). Per-frame ids
as upstream: frame i at t = i/fps takes the *first* interval with minTime <= t <= maxTime; mark " " -> PAD,
otherwise its index (unknown -> UNK); no interval -> UNK.

Embeddings: rows of known words from a FastText model (the real ``cc.en.300.bin`` when given, otherwise a small
model trained on the corpus transcripts, deterministic: one thread, fixed seed); the special tokens get
N(0, 1/sqrt(dim)) rows from a seeded generator (upstream initialises every row that way first).

An upstream ``weights/vocab.pkl`` is converted once by :func:`convert_vocab_pkl` with a restricted unpickler that
only rebuilds the ``Vocab`` class (as a plain object) and numpy arrays; nothing else can be constructed.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")
_PUNCT = ",.?!"


class TextError(ValueError):
    """An unreadable TextGrid or vocabulary; the message names the file."""


def normalise_mark(mark: str) -> str:
    for ch in _PUNCT:
        mark = mark.replace(ch, " ")
    return mark.strip()


def read_textgrid_words(path: str | Path) -> list[tuple[float, float, str]]:
    """Intervals (minTime, maxTime, mark) of the first tier of a Praat TextGrid."""
    import textgrid

    path = Path(path)
    if not path.is_file():
        raise TextError(f"missing TextGrid: {path}")
    try:
        tg = textgrid.TextGrid.fromFile(str(path))
        tier = tg[0]
        return [(float(iv.minTime), float(iv.maxTime), str(iv.mark)) for iv in tier]
    except Exception as e:
        raise TextError(f"unreadable TextGrid {path}: {type(e).__name__}: {e}") from e


@dataclass
class Vocab:
    words: list[str]  # index -> word; 0..3 are the special tokens
    embeddings: np.ndarray | None = None  # (n_words, dim) float32
    word2index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.word2index = {}
        for i, w in enumerate(self.words):
            self.word2index.setdefault(w, i)

    @property
    def n_words(self) -> int:
        return len(self.words)

    def index(self, mark: str) -> int:
        """Index of a raw mark (as upstream), else of its normalised form, else UNK."""
        if mark in self.word2index:
            return self.word2index[mark]
        return self.word2index.get(normalise_mark(mark), UNK)

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps(self.words).encode())
        if self.embeddings is not None:
            h.update(np.ascontiguousarray(self.embeddings, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        """Write ``vocab.json`` (+ ``embeddings.npy``) atomically."""
        from utils.io import save_json, save_npy

        folder = Path(folder)
        if self.embeddings is not None:
            save_npy(np.asarray(self.embeddings, dtype=np.float32), folder / "embeddings.npy")
        save_json({"words": self.words, "n_words": self.n_words, "specials": list(SPECIALS)}, folder / "vocab.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Vocab:
        folder = Path(folder)
        vj = folder / "vocab.json" if folder.is_dir() else folder
        if not vj.is_file():
            raise TextError(f"vocabulary not found: {vj}")
        try:
            words = json.loads(vj.read_text())["words"]
        except Exception as e:
            raise TextError(f"unreadable vocabulary {vj}: {e}") from e
        emb_path = vj.parent / "embeddings.npy"
        emb = np.load(emb_path, allow_pickle=False) if emb_path.is_file() else None
        if emb is not None and emb.shape[0] != len(words):
            raise TextError(f"{emb_path}: {emb.shape[0]} rows for {len(words)} words")
        return cls(list(words), emb)


def build_vocab(textgrid_paths: list[Path]) -> Vocab:
    """Special tokens, then the normalised marks of every interval in order of first appearance."""
    words = list(SPECIALS)
    seen = set(words)
    for p in sorted(textgrid_paths):
        for _, _, mark in read_textgrid_words(p):
            w = normalise_mark(mark)
            if w not in seen:
                seen.add(w)
                words.append(w)
    return Vocab(words)


def frame_word_ids(intervals: list[tuple[float, float, str]], n_frames: int, vocab: Vocab, fps: int = 30) -> np.ndarray:
    """(n_frames,) int64 word ids (see the module docstring)."""
    out = np.full(n_frames, UNK, dtype=np.int64)
    if not intervals:
        return out
    mins = np.array([a for a, _, _ in intervals])
    maxs = np.array([b for _, b, _ in intervals])
    ids = np.array([PAD if m == " " else vocab.index(m) for _, _, m in intervals], dtype=np.int64)
    t = np.arange(n_frames) / fps
    assigned = np.zeros(n_frames, dtype=bool)
    # In interval order, only frames not yet assigned: the first matching interval wins.
    for k in range(len(intervals)):
        lo = np.searchsorted(t, mins[k], side="left")
        hi = np.searchsorted(t, maxs[k], side="right")
        sel = np.arange(lo, hi)
        sel = sel[~assigned[sel]]
        out[sel] = ids[k]
        assigned[sel] = True
    return out


def _fasttext_quiet():
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence the deprecation banner of load_model
    return fasttext


def train_fasttext(sentences: list[str], dim: int = 300, epoch: int = 5):
    """A small, deterministic skipgram FastText model on the corpus transcripts.

    Deterministic because it runs on one thread with fastText's fixed internal seed (0; the Python API does not
    expose it for unsupervised training); ``bucket`` is small so a 300-D model stays a few tens of MB."""
    fasttext = _fasttext_quiet()
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "corpus.txt"
        p.write_text("\n".join(s for s in sentences if s.strip()) + "\n")
        return fasttext.train_unsupervised(
            str(p), model="skipgram", dim=dim, epoch=epoch, minCount=1, thread=1, minn=2, maxn=4, bucket=20000,
            verbose=0,
        )  # fmt: skip


def word_vector(model, word: str) -> np.ndarray:
    """FastText's word vector (mean of the word's and its subwords' input rows), computed here because the
    ``get_word_vector`` of the installed fasttext build intermittently returns uninitialised memory (it
    accumulates into an unzeroed buffer); ``get_input_vector`` copies a row and is safe."""
    _, ids = model.get_subwords(word)
    if len(ids) == 0:
        return np.zeros(model.get_dimension(), dtype=np.float32)
    rows = np.stack([np.array(model.get_input_vector(int(i)), dtype=np.float64) for i in ids])
    return rows.mean(axis=0).astype(np.float32)


def attach_embeddings(
    vocab: Vocab, sentences: list[str], fasttext_model: str | Path | None = None, dim: int = 300, seed: int = 0
) -> Vocab:
    """Fill ``vocab.embeddings``: FastText vectors for words, seeded N(0, 1/sqrt(dim)) for the special tokens.

    FastText runs in a fresh subprocess: the installed fasttext build corrupts memory when a second model is
    trained in the same process (NaN/garbage vectors), and a subprocess also keeps a 7 GB cc.en.300.bin out of
    the caller's memory."""
    if fasttext_model and not Path(fasttext_model).is_file():
        raise TextError(f"FastText model not found: {fasttext_model}")
    words = [w for i, w in enumerate(vocab.words) if i >= len(SPECIALS) and w]
    with tempfile.TemporaryDirectory() as d:
        job = {"words": words, "sentences": sentences, "model": str(fasttext_model) if fasttext_model else None,
               "dim": dim, "out": str(Path(d) / "vectors.npy")}  # fmt: skip
        (Path(d) / "job.json").write_text(json.dumps(job))
        r = subprocess.run([sys.executable, "-m", "dataloaders.features.text", str(Path(d) / "job.json")],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
        if r.returncode != 0:
            raise TextError(f"FastText embedding failed ({fasttext_model or 'corpus-trained'}): {r.stderr[-2000:]}")
        vectors = np.load(job["out"], allow_pickle=False)
    dim = vectors.shape[1]
    rng = np.random.default_rng(seed)
    emb = rng.normal(0.0, 1.0 / np.sqrt(dim), (vocab.n_words, dim)).astype(np.float32)
    rows = [i for i, w in enumerate(vocab.words) if i >= len(SPECIALS) and w]
    emb[rows] = vectors
    if not np.all(np.isfinite(emb)):
        raise TextError("FastText produced non-finite word vectors")
    vocab.embeddings = emb
    return vocab


def _embed_job(job_path: str) -> None:
    """Subprocess entry: train (or load) FastText and write the requested words' vectors."""
    job = json.loads(Path(job_path).read_text())
    if job["model"]:
        model = _fasttext_quiet().load_model(job["model"])
    else:
        model = train_fasttext(job["sentences"], dim=job["dim"])
    out = np.zeros((len(job["words"]), model.get_dimension()), dtype=np.float32)
    for i, w in enumerate(job["words"]):
        out[i] = word_vector(model, w)
    np.save(job["out"], out, allow_pickle=False)


# ----------------------------------------------------------------------------------------------------------------
class _PlainVocab:
    """What an upstream ``Vocab`` pickle becomes: a bare attribute holder (no upstream code runs)."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _VocabUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name == "Vocab" and module.endswith("build_vocab"):
            return _PlainVocab
        if (module, name) in _ALLOWED:
            import importlib

            return getattr(importlib.import_module(module), name)
        raise TextError(f"vocab.pkl: refusing to load {module}.{name} (only an upstream Vocab is accepted)")


def convert_vocab_pkl(pkl_path: str | Path, out_dir: str | Path) -> Vocab:
    """Convert an upstream ``weights/vocab.pkl`` into ``vocab.json`` + ``embeddings.npy`` under ``out_dir``."""
    pkl_path = Path(pkl_path)
    if not pkl_path.is_file():
        raise TextError(f"vocab.pkl not found: {pkl_path}")
    try:
        obj = _VocabUnpickler(io.BytesIO(pkl_path.read_bytes())).load()
    except TextError:
        raise
    except Exception as e:
        raise TextError(f"{pkl_path}: cannot read the pickled Vocab: {type(e).__name__}: {e}") from e
    if not isinstance(obj, _PlainVocab) or not hasattr(obj, "index2word"):
        raise TextError(f"{pkl_path}: not an upstream Vocab (no index2word)")
    n = int(getattr(obj, "n_words", len(obj.index2word)))
    words = [str(obj.index2word[i]) for i in range(n)]
    emb = getattr(obj, "word_embedding_weights", None)
    vocab = Vocab(words, None if emb is None else np.asarray(emb, dtype=np.float32))
    vocab.save(out_dir)
    return vocab


if __name__ == "__main__":
    _embed_job(sys.argv[1])
