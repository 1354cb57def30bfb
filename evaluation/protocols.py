"""The one registry of evaluation protocols: their names, what each changes, and the default.

Every protocol name accepted anywhere (configs, test.py, the pipeline, the learning check) is a key of
`BC_PROTOCOLS`; `DEFAULT_PROTOCOL` is the only place the default is written in code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BCOptions:
    """The knobs in which the reference BC differs from a clean definition.

    fold_l1div: the reference runs ``L1div.run(joints)`` *in place* before BC, so BC velocities are computed on
        |x - mean_t(x)| rather than on positions (EMAGE_2024 and GestureLSM trainers).
    absolute_mask_index: the reference keeps a velocity minimum found at index j of ``vel[60:n-60]`` when
        ``vel[j] > threshold`` (absolute index j), i.e. it tests the frame 2 s *earlier* than the minimum.
    audio_end_uncut: the reference cuts the audio to the motion length and then slices
        ``[32000 : len(uncut audio) - 32000]``: the end refers to the uncut length, so the last 2 s of the motion
        span still count when the audio is longer than the motion.
    audio_via_22k: the reference loads the wav with librosa's default rate (22.05 kHz) and resamples to 16 kHz.
    float32_motion: the reference runs SMPL-X FK in float32 and keeps the joints, the (folded) positions, the
        velocities and the division by ``mean_vel`` in float32. float32 rounding of positions (~6e-8 m) shifts
        normalised speeds by up to ~1e-4 relative, enough to move a velocity minimum across the threshold or tie
        it with a neighbour; exact reproduction needs the same dtypes. False: float64 throughout (cleaner).
    """

    fold_l1div: bool
    absolute_mask_index: bool
    audio_end_uncut: bool
    audio_via_22k: bool
    float32_motion: bool


BC_PROTOCOLS: dict[str, BCOptions] = {
    # EMAGE_2024 / GestureLSM `utils/metric.py::alignment` as used by their trainers' test loops.
    "emage2024": BCOptions(fold_l1div=True, absolute_mask_index=True, audio_end_uncut=True, audio_via_22k=True,
                           float32_motion=True),
    # The two motion bugs fixed (raw positions, threshold tested at the minimum's own frame), wav read at 16 kHz
    # directly (as the new evaltools), motion in float64. The audio window keeps the reference end (audio_end_uncut)
    # so the numbers match the project's profile (beat2_sample/profile.md); pass audio_end_uncut=False to also end
    # the audio window at n/30 - 2 s, where the motion window ends.
    "corrected": BCOptions(fold_l1div=False, absolute_mask_index=False, audio_end_uncut=True, audio_via_22k=False,
                           float32_motion=False),
}


PLACEMENT_PROTOCOL = "corrected"  # the beat-placement score's BC (the reference's BC saturates on jitter)
DEFAULT_PROTOCOL = "emage2024"  # what papers report; "corrected" is what the learning check judges by
PROTOCOL_NAMES: tuple[str, ...] = tuple(BC_PROTOCOLS)


def bc_options(protocol: str, **overrides: bool) -> BCOptions:
    """The options of ``protocol`` with individual fields overridden by keyword (unknown names are a TypeError)."""
    check_protocol(protocol)
    base = BC_PROTOCOLS[protocol]
    unknown = set(overrides) - set(base.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown BC options {sorted(unknown)}; known: {sorted(base.__dataclass_fields__)}")
    return BCOptions(**{**base.__dict__, **overrides})


def check_protocol(name: str) -> str:
    """``name`` if it is a known protocol, else a ValueError listing the known ones."""
    if name not in BC_PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {list(PROTOCOL_NAMES)}")
    return name


__all__ = ["BCOptions", "BC_PROTOCOLS", "DEFAULT_PROTOCOL", "PLACEMENT_PROTOCOL", "PROTOCOL_NAMES", "bc_options",
           "check_protocol"]
