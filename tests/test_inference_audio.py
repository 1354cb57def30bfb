"""User-audio inference inputs without a model: decoding (rates, channels, containers) exactly as the training cache
loads audio, every bad audio file, words (TextGrid, transcript alignment, ids through a vocabulary), betas and the
output-folder check."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from dataloaders.features import audio as audio_feat
from dataloaders.features import text as text_feat
from dataloaders.synthetic import SR, make_script, make_style, synth_audio, textgrid_text
from inference.api import check_output_dir, load_betas, word_track
from inference.audio_input import InputError, audio_features, decode_audio, list_audio_files
from inference.words import align_transcript, frame_ids, speech_regions, tokenize, words_from_textgrid


def speech(seconds: float, seed: int = 0) -> tuple[np.ndarray, list]:
    """Speech-like audio from the synthetic corpus's generator (16 kHz) and its word script."""
    rng = np.random.default_rng(seed)
    style = make_style(1, rng)
    phrases = make_script(seconds, style, rng)
    return synth_audio(phrases, int(seconds * SR), rng), phrases


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    y, phrases = speech(6.0, seed=1)
    wav = d / "clip.wav"
    sf.write(wav, y, SR, subtype="PCM_16")
    return {"dir": d, "y": y, "wav": wav, "phrases": phrases}


def test_decode_equals_the_training_loader_and_features_equal_the_cache_computation(clip):
    dec = decode_audio(clip["wav"], 16000, "upstream")
    ref = audio_feat.load_audio(clip["wav"], 16000, "upstream")  # what dataloaders.cache.compute_file calls
    np.testing.assert_array_equal(dec.samples, ref)
    assert dec.notes == [] and dec.channels == 1 and dec.native_sr == 16000
    feats = audio_features(dec.samples, 16000, "onset+amplitude", "corrected")
    np.testing.assert_array_equal(feats, audio_feat.onset_amplitude(ref, 16000, "corrected").astype(np.float32))
    assert feats.dtype == np.float32 and feats.shape == (ref.shape[0], 2)
    direct = decode_audio(clip["wav"], 16000, "direct")
    np.testing.assert_array_equal(direct.samples, audio_feat.load_audio(clip["wav"], 16000, "direct"))
    assert dec.n_frames(30) == 180  # 6 s -> 180 frames, every one kept


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3"), ("WAV", "wav")])
def test_any_rate_stereo_and_container_is_resampled_to_16k_mono(clip, fmt, ext):
    import librosa

    y = clip["y"]
    y44 = librosa.resample(y, orig_sr=SR, target_sr=44100)
    stereo = np.stack([y44, 0.5 * y44], axis=1)
    path = clip["dir"] / f"stereo44.{ext}"
    sf.write(path, stereo, 44100, format=fmt)
    dec = decode_audio(path, 16000, "upstream")
    assert dec.sr == 16000 and dec.native_sr == 44100 and dec.channels == 2
    assert any("resampled from 44100 Hz to 16000 Hz" in n for n in dec.notes)
    assert any("mixed 2 channels" in n for n in dec.notes)
    # mp3 adds an encoder delay/padding of a few ms; the others keep the length to a sample
    assert abs(dec.samples.shape[0] - y.shape[0]) <= (2000 if ext == "mp3" else 2)
    if ext != "mp3":
        ref = 0.75 * y  # mean of the two channels
        m = min(ref.size, dec.samples.size)
        assert np.corrcoef(ref[:m], dec.samples[:m])[0, 1] > 0.99


def _one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_bad_audio_files_give_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(InputError) as e:
        decode_audio(tmp_path / "missing.wav")
    _one_line(e, "missing.wav", "not found")
    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio")
    with pytest.raises(InputError) as e:
        decode_audio(junk)
    _one_line(e, "junk.wav", "unreadable", "ffmpeg")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(InputError) as e:
        decode_audio(empty)
    _one_line(e, "empty.wav", "empty")
    short = tmp_path / "short.wav"
    sf.write(short, speech(6.0)[0][SR : SR + SR // 2], SR)
    with pytest.raises(InputError) as e:
        decode_audio(short)
    _one_line(e, "short.wav", "0.50 s", "at least 1 s")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.random.default_rng(0).normal(0, 1e-4, 3 * SR).astype(np.float32), SR, subtype="FLOAT")
    with pytest.raises(InputError) as e:
        decode_audio(silent)
    _one_line(e, "silent.wav", "no speech energy")
    y = speech(3.0)[0].astype(np.float32)
    y[100:110] = np.nan
    nan = tmp_path / "nan.wav"
    sf.write(nan, y, SR, subtype="FLOAT")
    with pytest.raises(InputError) as e:
        decode_audio(nan)
    _one_line(e, "nan.wav", "10 samples are NaN")


def test_folder_listing(tmp_path):
    with pytest.raises(InputError, match="no audio files"):
        list_audio_files(tmp_path)
    y = speech(2.0)[0]
    sf.write(tmp_path / "b.wav", y, SR)
    sf.write(tmp_path / "a.flac", y, SR)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_audio_files(tmp_path)] == ["a.flac", "b.wav"]
    sf.write(tmp_path / "a.wav", y, SR)
    with pytest.raises(InputError, match="a.flac and a.wav would both write a.npz"):
        list_audio_files(tmp_path)


def test_textgrid_words_tier_and_its_absence(clip, tmp_path):
    tg = tmp_path / "ok.TextGrid"
    tg.write_text(textgrid_text(clip["phrases"], 6.0))
    track = words_from_textgrid(tg)
    assert track.source == "textgrid"
    assert track.words == [w.text for p in clip["phrases"] for w in p]
    phones = tmp_path / "phones.TextGrid"
    phones.write_text(textgrid_text(clip["phrases"], 6.0).replace('name = "words"', 'name = "phones"'))
    with pytest.raises(InputError) as e:
        words_from_textgrid(phones)
    _one_line(e, "phones.TextGrid", "no words tier", "phones")
    bad = tmp_path / "bad.TextGrid"
    bad.write_text("not a textgrid")
    with pytest.raises(InputError) as e:
        words_from_textgrid(bad)
    _one_line(e, "bad.TextGrid", "unreadable TextGrid")
    with pytest.raises(InputError, match="not found"):
        words_from_textgrid(tmp_path / "none.TextGrid")


def test_transcript_is_laid_over_the_speech_in_order(clip):
    y, phrases = clip["y"], clip["phrases"]
    words = [w.text for p in phrases for w in p]
    track = align_transcript("  " + ", ".join(w.upper() for w in words) + ".", y, SR)
    assert track.source == "transcript" and track.words == words
    starts = [a for a, _, _ in track.intervals]
    ends = [b for _, b, _ in track.intervals]
    assert starts == sorted(starts) and all(b >= a for a, b in zip(starts, ends))
    assert ends[-1] == pytest.approx(6.0)
    # the first word starts where the speech starts (within one 25 ms frame + the pause merge), not at 0
    first_speech = phrases[0][0].start
    first_word = next(a for a, _, m in track.intervals if m)
    assert abs(first_word - first_speech) < 0.06 and track.intervals[0][2] == ""
    # pauses between phrases are silence intervals
    regions = speech_regions(y, SR)
    assert len(regions) == len(phrases)
    with pytest.raises(InputError) as e:
        align_transcript(" ,. ! ", y, SR)
    _one_line(e, "--text", "no words")
    assert tokenize("Hello, World! it's") == ["hello", "world", "it's"]


def test_frame_ids_use_the_vocabulary_with_unk_and_pad():
    vocab = text_feat.Vocab(list(text_feat.SPECIALS) + ["", "hello", "world"])
    from inference.words import WordTrack

    track = WordTrack("transcript", [(0.0, 0.5, ""), (0.5, 1.0, "hello"), (1.0, 1.5, "zebra"), (1.5, 2.0, "")])
    ids, summary = frame_ids(track, 60, vocab, 30)
    assert ids[0] == vocab.index("") == 4 and ids[20] == 5 and ids[40] == text_feat.UNK and ids[59] == 4
    assert summary["n_words"] == 2 and summary["n_unknown"] == 1 and summary["unknown_words"] == ["zebra"]
    free, s = frame_ids(WordTrack("none", []), 10, vocab, 30)
    assert np.all(free == text_feat.PAD) and "text-free" in s["notes"][0]
    unk, _ = frame_ids(track, 10, None, 30)  # a model trained without words saw UNK everywhere
    assert np.all(unk == text_feat.UNK)
    with pytest.raises(InputError, match="give one word source"):
        word_track(np.zeros(10), SR, text="a", textgrid="b")


def test_betas_and_output_folder(tmp_path):
    assert np.all(load_betas(None) == 0) and load_betas(None).shape == (300,)
    np.save(tmp_path / "b.npy", np.arange(10, dtype=np.float64))
    b = load_betas(tmp_path / "b.npy")
    assert b.dtype == np.float32 and b.shape == (300,) and b[9] == 9 and np.all(b[10:] == 0)
    np.savez(tmp_path / "m.npz", betas=np.ones(300), poses=np.zeros((2, 165)))
    assert np.all(load_betas(tmp_path / "m.npz") == 1)
    np.save(tmp_path / "long.npy", np.zeros(301))
    with pytest.raises(InputError, match="long.npy: betas must be 1-300"):
        load_betas(tmp_path / "long.npy")
    with pytest.raises(InputError, match="not found"):
        load_betas(tmp_path / "nope.npy")
    assert check_output_dir(tmp_path / "new" / "deeper").is_dir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError) as e:
        check_output_dir(blocker / "out")
    _one_line(e, "file.txt/out", "not writable", "--out")
