"""SMPL-X joint tables and body-part definitions, defined once and used everywhere.

Order is always ascending joint index; a joint j occupies 330-vector indices 6j..6j+5 (rot6d) and
165-vector indices 3j..3j+2 (axis-angle).
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "jaw", "left_eye", "right_eye",
    *(f"left_{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3)),
    *(f"right_{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3)),
)  # fmt: skip
NUM_JOINTS = 55
assert len(JOINT_NAMES) == NUM_JOINTS

# Kinematic parents of the 55 SMPL-X joints (-1 for the root).
PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip
assert len(PARENTS) == NUM_JOINTS

UPPER_JOINTS: tuple[int, ...] = (3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21)
HANDS_JOINTS: tuple[int, ...] = tuple(range(25, 55))
LOWER_JOINTS: tuple[int, ...] = (0, 1, 2, 4, 5, 7, 8, 10, 11)
JAW_JOINT = 22
EYE_JOINTS: tuple[int, ...] = (23, 24)
# BC uses the upper-body joints (spine, neck, collars, head, arms).
BC_JOINTS: tuple[int, ...] = UPPER_JOINTS

# Layout of the 433-D RVQ frame vector: [330 rot6d normalised | 3 trans_v normalised | 100 expressions raw].
FRAME_DIM = 433
ROT6D_SLICE = slice(0, 330)
TRANS_V_SLICE = slice(330, 333)
EXPR_SLICE = slice(333, 433)

# Body parts of the RVQ-VAEs, by explicit name. "joints" select rot6d dims; "trans_v" appends trans_v;
# "expressions" selects the 100 raw FLAME expressions.
PARTS: dict[str, dict] = {
    "upper": {"joints": UPPER_JOINTS, "trans_v": False, "expressions": False},
    "hands": {"joints": HANDS_JOINTS, "trans_v": False, "expressions": False},
    "lower": {"joints": LOWER_JOINTS, "trans_v": False, "expressions": False},
    "lower_trans": {"joints": LOWER_JOINTS, "trans_v": True, "expressions": False},
    "face": {"joints": (), "trans_v": False, "expressions": True},
    # The generator's face (issue 18): jaw rot6d (normalised like every joint) + the 100 raw expressions = 106 dims.
    # "face" stays the reference's 100-D expressions-only part, so its released checkpoints keep loading.
    "face_jaw": {"joints": (JAW_JOINT,), "trans_v": False, "expressions": True},
}
# Parts the generator produces, in latent channel order (upper 0-127, hands 128-255, lower+trans 256-383).
GENERATOR_PARTS: tuple[str, ...] = ("upper", "hands", "lower_trans")
FACE_PART = "face_jaw"  # the optional 4th generator part (latent channels 384-511 when the face is on)


def generator_parts(face: bool = False) -> tuple[str, ...]:
    """The generator's parts in latent channel order: the three body parts, plus the face when it is on."""
    return GENERATOR_PARTS + ((FACE_PART,) if face else ())


def check_part(part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"unknown body part {part!r}; expected one of {sorted(PARTS)}")
    return part


def rot6d_indices(joints: tuple[int, ...] | list[int]) -> np.ndarray:
    """Indices into the 330-D rot6d vector for the given joints (ascending as given)."""
    return (
        np.concatenate([np.arange(6 * j, 6 * j + 6) for j in joints]).astype(np.int64)
        if joints
        else np.zeros(0, np.int64)
    )


def axis_angle_indices(joints: tuple[int, ...] | list[int]) -> np.ndarray:
    """Indices into the 165-D axis-angle vector for the given joints."""
    return (
        np.concatenate([np.arange(3 * j, 3 * j + 3) for j in joints]).astype(np.int64)
        if joints
        else np.zeros(0, np.int64)
    )


def part_frame_indices(part: str) -> np.ndarray:
    """Indices of a part's dims inside the 433-D frame vector."""
    spec = PARTS[check_part(part)]
    idx = [rot6d_indices(spec["joints"])]
    if spec["trans_v"]:
        idx.append(np.arange(TRANS_V_SLICE.start, TRANS_V_SLICE.stop))
    if spec["expressions"]:
        idx.append(np.arange(EXPR_SLICE.start, EXPR_SLICE.stop))
    return np.concatenate(idx).astype(np.int64)


def part_dim(part: str) -> int:
    return int(part_frame_indices(part).size)


def rot6d_mask(joints: tuple[int, ...] | list[int]) -> np.ndarray:
    """Boolean mask over the 330-D rot6d vector."""
    m = np.zeros(330, dtype=bool)
    m[rot6d_indices(joints)] = True
    return m
