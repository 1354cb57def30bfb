"""A synthetic corpus in the exact on-disk format of BEAT2 ``beat_english_v2.0.0``, with motion caused by its audio.

Layout written under ``out_dir`` (the same as real BEAT2):
  smplxflame_30/<id>.npz   poses (T,165) f32 axis-angle, trans (T,3) f64, betas (300,) f32, expressions (T,100) f64,
                           model 'smplx2020', gender 'neutral', mocap_frame_rate 30
  wave16k/<id>.wav         16 kHz mono PCM16
  textgrid/<id>.TextGrid   Praat long format, one tier 'words' (word intervals, empty marks for silences)
  train_test_split.csv     id,type with train/val/test
File ids are ``{speaker}_{name}_0_{a}_{a}`` as in BEAT2.

How the content is made (so that learning is measurable):
* A script of phrases of words (syllable counts from the spelling, stress on the first syllable of content words).
* Audio: every syllable is a voiced harmonic burst with a sharp attack (and a short consonant noise burst before
  it), prosody from a declining pitch contour with stress bumps; pauses between phrases. librosa's onset detector
  fires at syllable onsets.
* Motion: natural standing rest (arms down), breathing, sway and weight shifts; during speech the arms, spine and
  head move along loops driven by a common phase that advances by one loop between consecutive *beats* (stressed
  syllable onsets). Every joint's speed is therefore zero exactly at a beat and has one maximum in between, so
  upper-body speed minima (BC's motion beats) sit on the audio onsets of the file's own audio; bigger loops on
  emphasised words. Jaw and expressions follow the loudness envelope. A small band-limited (5-8 Hz) micro-motion of
  torso, head and arms, as in motion-capture data, gives realistic accelerations without motion beats of its own
  (upper-body speed/acceleration medians vs the real BEAT2 sample: ``benchmarks/corpus_realism.py``).
* Per-speaker style: amplitude, handedness, tempo, pitch, loop shape and betas.
* Per-file delivery, audible in the audio the generator sees (onset+amplitude): vocal effort scales the loudness
  (the audio is not peak-normalised per file) and the gesture amplitude together; speech rate scales syllable
  durations and the spacing of beats (so gesture tempo follows the onset rate). A model that uses its audio can
  therefore match a file's gesture style, and one fed another file's audio cannot (the pipeline's learning check).
Everything is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.ndimage import gaussian_filter1d

from utils.io import atomic_path, save_text

SR = 16000
FPS = 30
EFFORT_RANGE = (0.4, 1.6)
# Motion dynamics, tuned so that the upper-body speed and acceleration medians match the real BEAT2 sample
# (benchmarks/corpus_realism.py) while ground truth keeps a clear beat-placement margin:
STROKE_LINEAR_SHARE = 0.65  # linear share of each eased stroke segment: speed at a beat stays > 0 (a BC minimum)
GROUP_GAP = 3.5  # beats closer than this (s) form one gesture group (hands stay up, as real speakers' do)
STROKE_SIZE = 3.6  # stroke amplitude along the speaker's loop directions (x style amplitude x emphasis)
AXIAL_GAIN = 2.0  # spine/neck/head lean with the strokes (real torsos move with the beats)
# Small fast micro-motion of torso, head, collars and arms (rad, band-limited noise): real motion-capture data has
# it (its acceleration median comes mostly from > 1 Hz content). Kept above 5 Hz (a period < 7 frames, BC's
# minimum window) so it does not create motion beats of its own.
MICRO_MOTION = 0.0006
MICRO_BAND = (5.0, 8.0)  # per-file vocal effort: audio gain and gesture amplitude factor
SPEAKER_NAMES = ("ava", "ben", "cleo", "dan", "eve", "finn", "gus", "hana", "ivan", "jade", "kai", "lena")

# Common English words; function words are unstressed and do not carry beats.
FUNCTION_WORDS = (
    "the a an and or but of to in on at for with it is was are be this that i you we they he she my your not so "
    "as if then than there here what when which who"
).split()
CONTENT_WORDS = (
    "people really think know time going thing good actually important basically story family money music "
    "friends school believe question answer different together problem happy remember always never sometimes "
    "maybe every little great world change really moment simple better yesterday tomorrow country language "
    "learn teaching student history beautiful amazing decision experience interesting computer travel summer "
    "winter morning evening weekend probably definitely absolutely opinion reason example number second minute "
    "hundred thousand picture color animal garden kitchen doctor teacher brother sister mother father children "
    "city village river mountain ocean weather coffee dinner movie game sports football running walking talking "
    "reading writing working playing started finished wanted needed loved liked hated felt told asked"
).split()
LEXICON = tuple(dict.fromkeys(FUNCTION_WORDS + CONTENT_WORDS))


def syllable_count(word: str) -> int:
    """Vowel groups in the spelling, a silent final 'e' dropped; at least 1."""
    w = word.lower()
    groups, prev = 0, False
    for ch in w:
        v = ch in "aeiouy"
        if v and not prev:
            groups += 1
        prev = v
    if w.endswith("e") and not w.endswith(("le", "ee")) and groups > 1:
        groups -= 1
    return max(1, groups)


# ----------------------------------------------------------------------------------------------------------------
# Rest posture and gesture space (axis-angle per joint, SMPL-X local frames; left/right mirrored as (x, -y, -z)).
def _mirror(v: tuple[float, float, float]) -> np.ndarray:
    return np.array([v[0], -v[1], -v[2]])


REST_POSE: dict[int, tuple[float, float, float]] = {
    0: (-0.25, 0.0, 0.0),  # pelvis tilted back a little (as in BEAT2), spine1 compensates
    1: (0.22, 0.20, 0.14), 2: (0.20, -0.18, -0.12),  # hips
    3: (0.22, 0.03, 0.0), 6: (0.08, -0.03, 0.0), 9: (0.09, -0.01, 0.04),  # spine1..3
    4: (0.05, -0.09, -0.10), 5: (0.10, -0.08, 0.05),  # knees
    7: (0.0, 0.17, -0.15), 8: (-0.02, -0.20, 0.11),  # ankles
    10: (-0.16, 0.18, 0.14), 11: (-0.15, -0.02, -0.08),  # feet
    12: (0.10, -0.05, 0.0), 15: (-0.05, -0.05, 0.06),  # neck, head
    13: (0.04, -0.18, -0.25), 16: (0.05, -0.15, -1.12), 18: (0.1, -0.35, 0.10), 20: (-0.2, -0.05, 0.05),  # left arm
    23: (0.0, 0.03, -0.01), 24: (0.02, -0.05, 0.0),  # eyes
}  # fmt: skip
for _l, _r in ((13, 14), (16, 17), (18, 19), (20, 21)):
    REST_POSE[_r] = tuple(_mirror(REST_POSE[_l]))
# Gesture space: forearms raised in front of the body (offset from rest, left arm; right mirrored).
GESTURE_SPACE_LEFT: dict[int, tuple[float, float, float]] = {
    16: (0.0, -0.25, 0.30), 18: (0.05, -0.75, 0.10), 20: (-0.1, 0.0, 0.0),
}  # fmt: skip
# Loop directions (left arm; "up" = stroke preparation direction, "side" = lateral component).
LOOP_UP_LEFT: dict[int, tuple[float, float, float]] = {
    16: (0.0, -0.1, 0.25), 18: (0.0, -0.35, 0.0), 20: (-0.15, 0.0, 0.0)
}
LOOP_SIDE_LEFT: dict[int, tuple[float, float, float]] = {
    16: (0.0, -0.3, 0.0), 18: (0.0, 0.0, 0.25), 20: (0.0, 0.0, 0.12)
}
# Axial joints lean forward ("up") and sideways ("side") with the strokes, so spine/neck/head positions follow too.
LOOP_UP_AXIAL: dict[int, tuple[float, float, float]] = {
    0: (0.04, 0.0, 0.0), 3: (0.02, 0.0, 0.0), 6: (0.02, 0.0, 0.0), 9: (0.02, 0.0, 0.0), 12: (0.04, 0.0, 0.0),
    15: (0.06, 0.0, 0.0),
}  # fmt: skip
LOOP_SIDE_AXIAL: dict[int, tuple[float, float, float]] = {
    0: (0.0, 0.03, 0.03), 3: (0.0, 0.0, 0.02), 6: (0.0, 0.0, 0.02), 9: (0.0, 0.0, 0.02), 12: (0.0, 0.0, 0.04),
    15: (0.0, 0.03, 0.06),
}  # fmt: skip
# Finger curl per joint (left hand, joints 25..39 = index, middle, pinky, ring, thumb x 3 segments).
FINGER_CURL_LEFT = np.array([0.0, 0.0, -0.25] * 12 + [0.0, 0.25, 0.1] * 3).reshape(15, 3)
# Human joint-angle limits (radians) on each axis-angle component, generous.
ANGLE_LIMIT = np.full(165, np.pi * 0.9)


@dataclass
class SpeakerStyle:
    speaker: int
    name: str
    amplitude: float
    left_weight: float
    right_weight: float
    tempo: float
    f0: float
    loudness: float
    loop_up: np.ndarray  # (165,)
    loop_side: np.ndarray
    gesture_offset: np.ndarray
    rest: np.ndarray
    betas: np.ndarray  # (300,) f32
    height: float


def _pose_vec(d: dict[int, tuple[float, float, float]] | dict[int, np.ndarray], scale: float = 1.0) -> np.ndarray:
    v = np.zeros(165)
    for j, a in d.items():
        v[3 * j : 3 * j + 3] = np.asarray(a) * scale
    return v


def _arm_vec(left: dict[int, tuple[float, float, float]], wl: float, wr: float) -> np.ndarray:
    v = np.zeros(165)
    for j, a in left.items():
        v[3 * j : 3 * j + 3] = np.asarray(a) * wl
        v[3 * (j + 1) : 3 * (j + 1) + 3] = _mirror(a) * wr
    return v


# Per-dim gain of the small fast micro-motion (rad per unit MICRO_MOTION): torso, head, collars and arms.
MICRO_JOINT_GAIN = _pose_vec({j: (1.0, 1.0, 1.0) for j in (0, 3, 6, 9, 12, 15, 13, 14, 16, 17, 18, 19, 20, 21)})


def make_style(speaker: int, rng: np.random.Generator) -> SpeakerStyle:
    """Per-speaker style: amplitude, handedness, tempo, pitch, loop shape, body shape."""
    dominant = rng.uniform(0.9, 1.1)
    other = rng.uniform(0.25, 0.9)
    right_handed = rng.random() < 0.75
    wr, wl = (dominant, other) if right_handed else (other, dominant)
    jitter = lambda d: {j: tuple(np.asarray(a) * rng.uniform(0.8, 1.2, 3)) for j, a in d.items()}  # noqa: E731
    loop_up = _arm_vec(jitter(LOOP_UP_LEFT), wl, wr) + _pose_vec(jitter(LOOP_UP_AXIAL), AXIAL_GAIN)
    loop_side = _arm_vec(jitter(LOOP_SIDE_LEFT), wl, wr) + _pose_vec(jitter(LOOP_SIDE_AXIAL), AXIAL_GAIN)
    # Gesture space: the dominant hand is raised more.
    gesture = _arm_vec(jitter(GESTURE_SPACE_LEFT), min(1.0, 0.5 + wl), min(1.0, 0.5 + wr))
    rest = _pose_vec(REST_POSE)
    rest[3 * 25 : 3 * 40] = (FINGER_CURL_LEFT * rng.uniform(0.7, 1.3)).reshape(-1)
    rest[3 * 40 : 3 * 55] = np.stack([_mirror(r) for r in FINGER_CURL_LEFT * rng.uniform(0.7, 1.3)]).reshape(-1)
    rest += rng.normal(0.0, 0.02, 165) * (np.arange(165) // 3 < 22)
    betas = np.zeros(300, np.float32)
    betas[:10] = rng.normal(0.0, 1.0, 10)
    betas[10:] = rng.normal(0.0, 0.3, 290) * np.exp(-np.arange(290) / 60.0)
    return SpeakerStyle(
        speaker=speaker,
        name=SPEAKER_NAMES[(speaker - 1) % len(SPEAKER_NAMES)],
        amplitude=float(rng.uniform(0.85, 1.2)),
        left_weight=float(wl),
        right_weight=float(wr),
        tempo=float(rng.uniform(0.88, 1.12)),
        f0=float(rng.uniform(95, 210)),
        loudness=float(rng.uniform(0.35, 0.6)),
        loop_up=loop_up,
        loop_side=loop_side,
        gesture_offset=gesture,
        rest=rest,
        betas=betas,
        height=float(1.30 + 0.015 * betas[0]),
    )


# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Syllable:
    start: float  # onset, seconds
    dur: float
    amp: float
    stressed: bool
    f0: float
    accent: bool = False  # a pitch accent: sharp attack after a short gap; carries a gesture beat


@dataclass
class Word:
    text: str
    start: float
    end: float
    syllables: list[Syllable]
    emphasis: float


def make_script(
    seconds: float, style: SpeakerStyle, rng: np.random.Generator, accent_gap: float = 0.9
) -> list[list[Word]]:
    """Phrases of words with syllable timing, ending at least 0.6 s before the end.

    The first word of a phrase is a content word whose stressed syllable is accented; later stressed syllables of
    content words are accented when at least ``accent_gap`` seconds after the previous accent.
    """
    phrases: list[list[Word]] = []
    t = rng.uniform(0.3, 0.8)
    limit = seconds - 0.6
    last_accent = -10.0
    while t < limit - 1.0:
        phrase: list[Word] = []
        n_words = int(rng.integers(3, 11))
        for w in range(n_words):
            content = w == 0 or rng.random() < 0.6
            text = str(rng.choice(CONTENT_WORDS if content else FUNCTION_WORDS))
            n_syl = syllable_count(text)
            emphasis = 1.4 if (content and rng.random() < 0.2) else 1.0
            accent = content and (w == 0 or t + 0.06 - last_accent >= accent_gap)
            s = t + (0.06 if accent and w > 0 else 0.0)  # the short gap before an accent
            syls: list[Syllable] = []
            for k in range(n_syl):
                stressed = content and k == 0
                dur = rng.uniform(0.13, 0.22) * style.tempo * (1.3 if stressed else 1.0)
                amp = style.loudness * (1.0 if stressed else rng.uniform(0.5, 0.7)) * (emphasis if stressed else 1.0)
                f0 = style.f0 * (1.0 + (0.2 * emphasis if stressed and accent else 0.05 if stressed else 0.0))
                syls.append(Syllable(s, dur, amp, stressed, f0, accent=stressed and accent))
                s += dur
            end = s
            if end > limit:
                break
            if accent:
                last_accent = syls[0].start
            phrase.append(Word(text, t, end, syls, emphasis))
            t = end + rng.uniform(0.0, 0.04)
        if phrase:
            phrases.append(phrase)
        t = (phrase[-1].end if phrase else t) + rng.uniform(0.5, 1.4)
    return phrases


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Raised-cosine rise from 0 (x <= 0) to 1 (x >= width)."""
    return (1.0 - np.cos(np.pi * np.clip(x / width, 0.0, 1.0))) / 2.0


def synth_audio(phrases: list[list[Word]], n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like audio: one continuously voiced tone per phrase, syllables as loudness bumps.

    Accented syllables follow a short silent gap and start with a sharp attack plus a consonant noise burst, so
    the onset detector fires on them (and on phrase starts); unaccented syllables rise slowly and legato.
    """
    y = rng.normal(0.0, 0.002, n_samples)  # room noise
    for phrase in phrases:
        syls = [s for w in phrase for s in w.syllables]
        i0 = int(syls[0].start * SR)
        i1 = min(n_samples, int((syls[-1].start + syls[-1].dur + 0.05) * SR))
        t = np.arange(i0, i1) / SR
        amp = np.zeros(t.size)
        f0 = np.full(t.size, syls[0].f0 * 0.95)
        gate = np.ones(t.size)
        for k, syl in enumerate(syls):
            x = t - syl.start
            attack = 0.005 if (syl.accent or k == 0) else 0.06
            bump = _ramp(x, attack) * np.where(x < syl.dur, 1.0 - 0.5 * np.clip(x / syl.dur, 0, 1), 0.5) * np.exp(
                -np.clip(x - syl.dur, 0, None) / 0.04
            )
            amp = np.maximum(amp, syl.amp * bump)
            f0 += (syl.f0 - syls[0].f0 * 0.95) * np.exp(-0.5 * ((x - syl.dur / 2) / (syl.dur / 2)) ** 2)
            if syl.accent and k > 0:
                gate *= 1.0 - _ramp(x + 0.06, 0.01) * (1.0 - _ramp(x, 0.002))
        f0 *= 1.0 - 0.12 * (t - t[0]) / max(t[-1] - t[0], 1e-3)  # declination
        phase = 2 * np.pi * np.cumsum(f0) / SR
        weights = rng.uniform(0.3, 1.0, 10)
        tone = sum(weights[k] / (k + 1) * np.sin((k + 1) * phase) for k in range(10)) / 2.0
        seg = amp * gate * tone
        for syl in syls:
            if syl.accent:
                j = int((syl.start - t[0]) * SR)
                nb = min(int(0.015 * SR), seg.size - j)
                if nb > 0:
                    seg[j : j + nb] += 0.3 * syl.amp * np.diff(rng.normal(0.0, 1.0, nb + 1)) * np.hanning(nb)
        y[i0:i1] += seg
    peak = np.abs(y).max()
    return (y / peak * 0.7 if peak > 0 else y).astype(np.float32)


def loudness_envelope(y: np.ndarray, n_frames: int) -> np.ndarray:
    """Per-frame RMS at 30 fps, smoothed and scaled to about [0, 1]."""
    hop = SR / FPS
    rms = np.array([np.sqrt(np.mean(y[int(i * hop) : int((i + 1) * hop)] ** 2) + 1e-12) for i in range(n_frames)])
    rms = gaussian_filter1d(rms, 1.5)
    return np.clip(rms / (np.percentile(rms, 95) + 1e-9), 0.0, 1.2)


def select_beats(phrases: list[list[Word]]) -> tuple[np.ndarray, np.ndarray]:
    """Gesture beats = accented syllable onsets; amplitude from the word's emphasis."""
    times, amps = [], []
    for phrase in phrases:
        for word in phrase:
            for syl in word.syllables:
                if syl.accent:
                    times.append(syl.start)
                    amps.append(word.emphasis)
    return np.asarray(times), np.asarray(amps)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float, dims: int = 1) -> np.ndarray:
    x = gaussian_filter1d(rng.normal(0.0, 1.0, (n + int(6 * sigma), dims)), sigma, axis=0)[int(3 * sigma) :][:n]
    return x / (x.std(axis=0, keepdims=True) + 1e-12)


def _band_noise(rng: np.random.Generator, n: int, band: tuple[float, float], dims: int) -> np.ndarray:
    """Unit-std noise band-limited to ``band`` Hz (FFT mask), (n, dims)."""
    spec = np.fft.rfft(rng.normal(0.0, 1.0, (n, dims)), axis=0)
    f = np.fft.rfftfreq(n, 1.0 / FPS)
    spec[(f < band[0]) | (f > band[1])] = 0.0
    x = np.fft.irfft(spec, n=n, axis=0)
    return x / (x.std(axis=0, keepdims=True) + 1e-12)


def _ease(u: np.ndarray) -> np.ndarray:
    """0 -> 1 with zero velocity at both ends."""
    return (1.0 - np.cos(np.pi * np.clip(u, 0.0, 1.0))) / 2.0


def synth_motion(
    beats: np.ndarray,
    beat_amps: np.ndarray,
    env: np.ndarray,
    style: SpeakerStyle,
    n_frames: int,
    rng: np.random.Generator,
    stroke_phase: float | None = None,
    stroke_turn: float | None = None,
) -> dict[str, np.ndarray]:
    """Poses/trans/expressions at 30 fps from the beat times and the loudness envelope. ``stroke_phase`` /
    ``stroke_turn`` (±1) fix every gesture group's start phase on its ellipse and its turning direction (issue 13's
    causal test, ``benchmarks/fixed_direction_corpus.py``); they are still drawn, so every other draw is unchanged."""
    t = np.arange(n_frames) / FPS
    # Keyframes: rest -> stroke targets landing on each beat -> rest, one group per run of close beats. Each
    # segment is eased (speed peaks mid-stroke) with a linear share ``lam`` so the speed at a beat is a clear
    # local minimum that is not zero (as in real strokes, and so that velocity thresholds keep it).
    lam = STROKE_LINEAR_SHARE
    keys_t: list[float] = []
    keys_p: list[np.ndarray] = []
    group_gap = GROUP_GAP
    groups: list[list[int]] = []
    for k in range(len(beats)):
        if not groups or beats[k] - beats[groups[-1][-1]] > group_gap:
            groups.append([k])
        else:
            groups[-1].append(k)
    zero = np.zeros(165)
    for g, idx in enumerate(groups):
        prev_end = beats[groups[g - 1][-1]] if g > 0 else -10.0
        next_start = beats[groups[g + 1][0]] if g + 1 < len(groups) else 1e9
        prep = min(0.6, (beats[idx[0]] - prev_end) / 2.0)
        ret = min(0.8, (next_start - beats[idx[-1]]) / 2.0)
        keys_t.append(beats[idx[0]] - prep)
        keys_p.append(zero)
        # Stroke targets walk around an ellipse in the (up, side) gesture plane, turning ~90 degrees per beat, so
        # the hand changes direction at each beat without stopping dead.
        theta = rng.uniform(0, 2 * np.pi)
        turn = rng.choice([-1.0, 1.0])
        theta = theta if stroke_phase is None else float(stroke_phase)
        turn = turn if stroke_turn is None else float(stroke_turn)
        for k in idx:
            a = STROKE_SIZE * style.amplitude * beat_amps[k] * rng.uniform(0.75, 1.1)
            theta += turn * rng.uniform(0.4, 0.6) * np.pi
            keys_t.append(beats[k])
            keys_p.append(style.gesture_offset + a * (np.cos(theta) * style.loop_up + np.sin(theta) * style.loop_side))
        keys_t.append(beats[idx[-1]] + ret)
        keys_p.append(zero)
    gesture = np.zeros((n_frames, 165))
    for (t0, p0), (t1, p1) in zip(zip(keys_t, keys_p), zip(keys_t[1:], keys_p[1:])):
        m = (t >= t0) & (t < t1)
        u = (t[m] - t0) / (t1 - t0)
        w = (1.0 - lam) * _ease(u) + lam * u
        gesture[m] = p0 + np.outer(w, p1 - p0)
    gesture = gaussian_filter1d(gesture, 1.0, axis=0)  # round the corners at the beats (smooth at 30 fps)
    space = np.zeros(n_frames)  # 1 while gesturing: fingers open a little
    for idx in groups:
        space[(t >= beats[idx[0]]) & (t <= beats[idx[-1]])] = 1.0
    space = gaussian_filter1d(space, 6.0)

    poses = np.tile(style.rest, (n_frames, 1)) + gesture
    if MICRO_MOTION:
        band = _band_noise(rng, n_frames, MICRO_BAND, 165) * MICRO_MOTION * MICRO_JOINT_GAIN
        poses += band
    # Breathing (spine, collars), slow sway of the root facing direction, weight shifts.
    breath_hz = rng.uniform(0.22, 0.3)
    breath = np.sin(2 * np.pi * breath_hz * t + rng.uniform(0, 2 * np.pi))
    poses[:, 3 * 9] += 0.012 * breath
    poses[:, 3 * 13 + 2] -= 0.01 * breath
    poses[:, 3 * 14 + 2] += 0.01 * breath
    sway = _smooth_noise(rng, n_frames, 45.0, 3)
    poses[:, 0:3] += sway * np.array([0.015, 0.12, 0.015])
    poses[:, 3 * 15 : 3 * 15 + 3] += _smooth_noise(rng, n_frames, 60.0, 3) * np.array([0.02, 0.04, 0.01])
    level = float(rng.choice([-1.0, 1.0]))
    shift = np.full(n_frames, level)
    t_next = rng.uniform(2.0, 6.0)
    while t_next < t[-1]:
        shift += -2.0 * level * _ease((t - t_next) / 1.0)
        level = -level
        t_next += rng.uniform(4.0, 10.0)
    poses[:, 2] += 0.04 * shift  # pelvis roll
    poses[:, 3 * 1 + 2] -= 0.04 * shift
    poses[:, 3 * 2 + 2] -= 0.04 * shift
    poses[:, 3 * 9 + 2] -= 0.02 * shift
    # Fingers open a little in gesture space and with each stroke.
    open_ = space[:, None] * 0.15 + np.abs(gesture[:, [3 * 18 + 1]]) * 0.2
    poses[:, 3 * 25 : 3 * 55] *= 1.0 - open_
    # Jaw follows loudness; eyes small drift.
    poses[:, 3 * 22] = 0.01 + 0.06 * env
    poses[:, 3 * 23 : 3 * 25] += _smooth_noise(rng, n_frames, 8.0, 6) * 0.01
    poses = np.clip(poses, -ANGLE_LIMIT, ANGLE_LIMIT)

    # Translation: slow wander on the floor (x, z), height with breathing and weight-shift dips.
    start = np.array([rng.uniform(-0.3, 0.3), style.height, rng.uniform(-0.5, 0.0)])
    wander = _smooth_noise(rng, n_frames, 240.0, 2) * np.array([0.12, 0.22])
    trans = np.zeros((n_frames, 3))
    trans[:, 0] = start[0] + wander[:, 0] + 0.03 * shift
    trans[:, 2] = start[2] + wander[:, 1]
    trans[:, 1] = start[1] + 0.003 * breath - 0.006 * np.abs(shift) + 0.01 * _smooth_noise(rng, n_frames, 60.0)[:, 0]

    # Expressions: slow idiosyncratic drift + loudness coupling on the mouth-related coefficients.
    scale = 0.3 * np.exp(-np.arange(100) / 25.0) + 0.02
    expr = _smooth_noise(rng, n_frames, 12.0, 100) * scale
    expr += rng.normal(0.0, 0.15, 100) * scale
    expr[:, 0] += 0.5 * env
    expr[:, 3] -= 0.3 * env
    expr[:, 5] += 0.2 * env
    return {"poses": poses.astype(np.float32), "trans": trans, "expressions": expr}


# ----------------------------------------------------------------------------------------------------------------
def textgrid_text(phrases: list[list[Word]], duration: float) -> str:
    """Praat long-format TextGrid with one interval tier 'words'; gaps become empty-mark intervals."""
    intervals: list[tuple[float, float, str]] = []
    cur = 0.0
    for phrase in phrases:
        for w in phrase:
            if w.start > cur + 1e-6:
                intervals.append((cur, w.start, ""))
            intervals.append((w.start, w.end, w.text))
            cur = w.end
    if duration > cur + 1e-6:
        intervals.append((cur, duration, ""))
    lines = [
        'File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 ", f"xmax = {duration} ",
        "tiers? <exists> ", "size = 1 ", "item []: ", "    item [1]:", '        class = "IntervalTier" ',
        '        name = "words" ', "        xmin = 0 ", f"        xmax = {duration} ",
        f"        intervals: size = {len(intervals)} ",
    ]  # fmt: skip
    for i, (a, b, m) in enumerate(intervals, 1):
        lines += [f"        intervals [{i}]:", f"            xmin = {a:.4f} ", f"            xmax = {b:.4f} ",
                  f'            text = "{m}" ']  # fmt: skip
    return "\n".join(lines) + "\n"


def file_id(speaker: int, name: str, index: int) -> str:
    return f"{speaker}_{name}_0_{index}_{index}"


def split_for(index: int, n_files: int) -> str:
    """Per speaker: file 1 is test, file 2 is val (when there are >= 3 files), file 3 is also test when there are
    >= 6 files, the rest train. Beyond 6 files the 6-file pattern repeats (7 and 9 test, 8 val, 10-12 train, ...),
    so a larger corpus grows val and test too while files 1-6 keep their split (issue 13: the check's CIs)."""
    if index > 6:
        return split_for((index - 1) % 6 + 1, 6)
    if n_files >= 3 and index == 1:
        return "test"
    if n_files >= 6 and index == 3:
        return "test"
    if n_files >= 3 and index == 2:
        return "val"
    return "train"


def generate_file(out_dir: Path, style: SpeakerStyle, index: int, seconds: float, seed: int) -> str:
    """Write one file (npz, wav, TextGrid) and return its id."""
    rng = np.random.default_rng([seed, style.speaker, index])
    fid = file_id(style.speaker, style.name, index)
    audio_seconds = seconds + 0.3  # audio a little longer than the motion, as in BEAT2
    n_samples = int(round(audio_seconds * SR))
    n_frames = int(round(seconds * FPS))
    # Per-file delivery: vocal effort (loudness and gesture size together) and speech rate (syllables and beats).
    effort = float(rng.uniform(EFFORT_RANGE[0], EFFORT_RANGE[1]))
    rate = float(rng.uniform(0.8, 1.25))
    style = replace(style, amplitude=style.amplitude * effort, tempo=style.tempo * rate)
    phrases = make_script(seconds, style, rng, accent_gap=0.9 * rate)
    y = synth_audio(phrases, n_samples, rng) * np.float32(effort / EFFORT_RANGE[1])
    env = loudness_envelope(y, n_frames)
    beats, amps = select_beats(phrases)
    motion = synth_motion(beats, amps, env, style, n_frames, rng)
    with atomic_path(out_dir / "smplxflame_30" / f"{fid}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f, poses=motion["poses"], trans=motion["trans"].astype(np.float64), betas=style.betas,
                expressions=motion["expressions"].astype(np.float64), model=np.array("smplx2020"),
                gender=np.array("neutral"), mocap_frame_rate=np.array(30),
            )  # fmt: skip
    with atomic_path(out_dir / "wave16k" / f"{fid}.wav") as tmp:
        sf.write(tmp, y, SR, subtype="PCM_16", format="WAV")
    save_text(textgrid_text(phrases, audio_seconds), out_dir / "textgrid" / f"{fid}.TextGrid")
    return fid


def generate_corpus(
    out_dir: str | Path, speakers: int = 2, files_per_speaker: int = 6, seconds: float = 30.0, seed: int = 0
) -> Path:
    """Write a BEAT2-format synthetic corpus under ``out_dir`` and return that path."""
    if speakers < 1 or files_per_speaker < 1 or seconds < 6:
        raise ValueError("need speakers >= 1, files_per_speaker >= 1 and seconds >= 6")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for spk in range(1, speakers + 1):
        style = make_style(spk, np.random.default_rng([seed, spk, 10**6]))
        for index in range(1, files_per_speaker + 1):
            fid = generate_file(out, style, index, seconds, seed)
            rows.append((fid, split_for(index, files_per_speaker)))
    with atomic_path(out / "train_test_split.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "type"])
            w.writerows(rows)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic corpus in BEAT2 beat_english_v2.0.0 format.")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--speakers", type=int, default=2)
    ap.add_argument("--files-per-speaker", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    out = generate_corpus(a.out, a.speakers, a.files_per_speaker, a.seconds, a.seed)
    print(f"wrote {a.speakers * a.files_per_speaker} files to {out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
