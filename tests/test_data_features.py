"""Audio and text features: hand-made click track, upstream reference fixture, vocab/word ids, converters."""

from __future__ import annotations

import io
import pickle
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from dataloaders.features import audio as A
from dataloaders.features import text as T
from tests.conftest import FIXTURES, need


def _click_track(sr: int = 16000) -> tuple[np.ndarray, list[int]]:
    """Three decaying 440 Hz bursts (amplitudes 0.2, 0.4, 0.6) at 0.5, 1.5 and 2.5 s, silence elsewhere."""
    y = np.zeros(3 * sr, dtype=np.float32)
    starts = [sr // 2, 3 * sr // 2, 5 * sr // 2]
    n = sr // 10
    t = np.arange(n) / sr
    for k, s in enumerate(starts):
        y[s : s + n] = (0.2 * (k + 1)) * np.sin(2 * np.pi * 440 * t) * np.exp(-t / 0.02)
    return y, starts


def test_amplitude_envelope_by_hand():
    y = np.array([0.0, -3.0, 1.0, 0.5, 2.0, -0.1, 0.0], dtype=np.float32)
    env = A.amplitude_envelope(y, window=3)
    # forward max |y[i:i+3]| for i = 0..4, then the last 2 values repeat env[4]
    assert env.tolist() == [3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_onset_amplitude_on_click_track():
    y, starts = _click_track()
    ref = A.onset_amplitude(y, 16000, "reference")
    cor = A.onset_amplitude(y, 16000, "corrected")
    assert ref.shape == (len(y), 2) and np.array_equal(ref[:, 0], cor[:, 0])
    # amplitude: 1024 samples before a burst the forward window already sees it; far from bursts it is 0
    for k, s in enumerate(starts):
        assert ref[s - 1022, 0] > 0 and ref[s - 1024, 0] == 0  # y[s] = sin(0) = 0, y[s+1] > 0
        assert abs(ref[s, 0] - np.abs(y[s : s + 1024]).max()) < 1e-7 and ref[s, 0] > 0.18 * (k + 1)
    frames = A.onset_frames(y)
    burst_frames = np.array(starts) / 512
    assert all(np.min(np.abs(frames - b)) <= 2 for b in burst_frames)  # every burst detected
    assert all(np.min(np.abs(burst_frames - f)) <= 2 for f in frames)  # and nothing else
    assert np.flatnonzero(ref[:, 1]).tolist() == frames.tolist()  # reference: sample index = frame index
    on = np.flatnonzero(cor[:, 1])
    assert on.tolist() == (frames * 512).tolist()
    assert all(np.min(np.abs(np.array(starts) - o)) <= 1024 for o in on)  # corrected: at the bursts' true times
    with pytest.raises(ValueError, match="onset_mode"):
        A.onset_amplitude(y, 16000, "bogus")


def test_reference_mode_matches_upstream_fixture():
    f = np.load(need(FIXTURES / "audio_features.npz"))
    y = f["resampled_audio"]
    feats = A.onset_amplitude(y, 16000, "reference")
    assert np.array_equal(feats, f["features"])
    assert np.array_equal(A.onset_frames(y), f["onset_frames"])
    assert np.array_equal(np.flatnonzero(feats[:, 1]), f["onset_channel_nonzero_idx"])
    # loading as upstream (librosa 22.05 kHz, then resample) reproduces the fixture's resampled audio
    wav = need(FIXTURES / "audio_excerpt_2_scott_0_2_2_5s_17s.wav")
    np.testing.assert_allclose(A.load_audio(wav, 16000, "upstream"), y, atol=1e-6)
    direct = A.load_audio(wav, 16000, "direct")
    assert direct.shape == (192000,) and not np.array_equal(direct, y)


def test_load_audio_resamples_and_rejects(tmp_path):
    y, _ = _click_track(8000)
    sf.write(tmp_path / "a8k.wav", y, 8000)  # 3 s at 8 kHz
    with pytest.warns(UserWarning, match="8000 Hz"):
        out = A.load_audio(tmp_path / "a8k.wav", 16000, "direct")
    assert out.shape == (2 * len(y),)
    sf.write(tmp_path / "st.wav", np.zeros((1600, 2), np.float32), 16000)
    with pytest.raises(A.AudioError, match="st.wav.*mono"):
        A.load_audio(tmp_path / "st.wav")
    with pytest.raises(A.AudioError, match="missing"):
        A.load_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(A.AudioError, match="bad.wav"):
        A.load_audio(tmp_path / "bad.wav")


def test_mel_and_tiny_wavlm():
    y, _ = _click_track()
    mel = A.mel_features(y)
    assert mel.shape[1] == 128 and abs(mel.shape[0] - 90) <= 1
    from transformers import WavLMConfig

    cfg = WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                      conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=4,
                      num_conv_pos_embedding_groups=2, num_buckets=8, max_bucket_distance=16)  # fmt: skip
    model = A.load_wavlm(cfg)
    feats = A.wavlm_features(y, model, n_frames=90)
    assert feats.shape == (90, 16) and np.isfinite(feats).all()


TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.0
tiers? <exists>
size = 1
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 1.0
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 0.2
            text = ""
        intervals [2]:
            xmin = 0.2
            xmax = 0.5
            text = "Hello,"
        intervals [3]:
            xmin = 0.5
            xmax = 0.7
            text = " "
        intervals [4]:
            xmin = 0.7
            xmax = 0.9
            text = "world"
"""


def test_vocab_and_frame_ids(tmp_path):
    p = tmp_path / "a.TextGrid"
    p.write_text(TEXTGRID)
    vocab = T.build_vocab([p])
    assert vocab.words == ["<pad>", "<sos>", "<eos>", "<unk>", "", "Hello", "world"]
    ids = T.frame_word_ids(T.read_textgrid_words(p), 31, vocab, fps=30)
    # t = i/30: [0, .2] -> "" (first interval wins at 0.2), (.2,.5] -> Hello, (.5,.7] -> PAD, (.7,.9] -> world,
    # after 0.9 s -> no interval -> UNK
    expect = [4] * 7 + [5] * 9 + [0] * 6 + [6] * 6 + [3] * 3
    assert ids.tolist() == expect
    assert vocab.index("Hello,") == 5 and vocab.index("unseen") == T.UNK
    # JSON + npy round trip with embeddings from a corpus-trained FastText (deterministic)
    T.attach_embeddings(vocab, ["Hello world", "world Hello"], dim=8, seed=1)
    again = T.build_vocab([p])
    T.attach_embeddings(again, ["Hello world", "world Hello"], dim=8, seed=1)
    assert vocab.embeddings.shape == (7, 8) and np.array_equal(vocab.embeddings, again.embeddings)
    back = T.Vocab.load(vocab.save(tmp_path / "v"))
    assert back.words == vocab.words and np.array_equal(back.embeddings, vocab.embeddings)
    assert not list((tmp_path / "v").glob("*.pkl"))


def test_bad_textgrid(tmp_path):
    (tmp_path / "x.TextGrid").write_text("not a textgrid")
    with pytest.raises(T.TextError, match="x.TextGrid"):
        T.read_textgrid_words(tmp_path / "x.TextGrid")
    with pytest.raises(T.TextError, match="missing"):
        T.read_textgrid_words(tmp_path / "y.TextGrid")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_convert_upstream_vocab_pkl(tmp_path, monkeypatch):
    mod = types.ModuleType("dataloaders.build_vocab")
    Vocab = type("Vocab", (), {"__module__": "dataloaders.build_vocab"})  # stands in for upstream's class
    mod.Vocab = Vocab
    monkeypatch.setitem(sys.modules, "dataloaders.build_vocab", mod)
    v = Vocab()
    v.name = "beat"
    v.word2index = {"<pad>": 0, "<sos>": 1, "<eos>": 2, "<unk>": 3, "hi": 4}
    v.index2word = {i: w for w, i in v.word2index.items()}
    v.n_words = 5
    v.word_embedding_weights = np.arange(15, dtype=np.float32).reshape(5, 3)
    (tmp_path / "vocab.pkl").write_bytes(pickle.dumps(v))
    monkeypatch.delitem(sys.modules, "dataloaders.build_vocab")  # the converter must not need the class
    out = T.convert_vocab_pkl(tmp_path / "vocab.pkl", tmp_path / "conv")
    assert out.words == ["<pad>", "<sos>", "<eos>", "<unk>", "hi"]
    assert np.array_equal(T.Vocab.load(tmp_path / "conv").embeddings, v.word_embedding_weights)

    buf = io.BytesIO()
    pickle.dump(_Evil(), buf)
    (tmp_path / "evil.pkl").write_bytes(buf.getvalue())
    with pytest.raises(T.TextError, match="refusing"):
        T.convert_vocab_pkl(tmp_path / "evil.pkl", tmp_path / "conv2")
