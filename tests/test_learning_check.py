"""The learning check's conditions and its pre-registered rule, on constructed inputs with known verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.learning_check import (
    RULE,
    Rule,
    bootstrap,
    delay_inputs,
    donor_indices,
    fit_motion,
    judge,
    paired_file_fgd,
    swap_audio,
    swap_words,
)


def test_swaps_crop_and_pad() -> None:
    item = {"audio": torch.zeros(100, 2), "word": torch.zeros(10, dtype=torch.long), "id": "a"}
    long = {"audio": torch.ones(150, 2), "word": torch.full((12,), 5, dtype=torch.long)}
    short = {"audio": torch.ones(60, 2), "word": torch.full((7,), 5, dtype=torch.long)}
    a = swap_audio(item, long)
    assert a["audio"].shape == (100, 2) and a["audio"].sum() == 200 and a["word"].sum() == 0  # words kept
    b = swap_audio(item, short)
    assert b["audio"][60:].abs().sum() == 0 and b["audio"][:60].sum() == 120
    w = swap_words(item, short, pad_word=0)
    assert w["word"].tolist() == [5] * 7 + [0] * 3 and w["audio"].sum() == 0  # audio kept
    assert a["id"] == "a" and item["audio"].sum() == 0  # the original is untouched


def test_delay_inputs_and_fit_motion() -> None:
    item = {"audio": torch.arange(1, 33001, dtype=torch.float32)[:, None].repeat(1, 2),
            "word": torch.arange(1, 62, dtype=torch.long)}  # fmt: skip
    d = delay_inputs(item, 0.5, audio_sr=16000, fps=30, pad_word=0)
    assert d["audio"].shape == item["audio"].shape and d["word"].shape == item["word"].shape
    assert d["audio"][:8000].abs().sum() == 0 and d["audio"][8000, 0] == 1 and d["audio"][-1, 0] == 33000 - 8000
    assert d["word"][:15].tolist() == [0] * 15 and d["word"][15:].tolist() == list(range(1, 62 - 15))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert fit_motion(x, 2).tolist() == x[:2].tolist()
    assert fit_motion(x, 6)[4:].tolist() == [x[-1].tolist()] * 2


def test_donor_indices_prefer_another_speaker() -> None:
    assert donor_indices([1, 1, 2, 2, 3, 3]) == [3, 4, 5, 0, 1, 2]
    assert donor_indices([1, 2]) == [1, 0]
    assert donor_indices([1, 2, 1, 2]) == [3, 0, 1, 2]
    assert donor_indices([7, 7, 7]) == [1, 2, 0]
    with pytest.raises(ValueError):
        donor_indices([1])


def test_paired_file_fgd_matches_frechet_distance() -> None:
    from evaluation.metrics import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(0.5, 2.0, size=(30, 6))
    moments = (a.shape[0], a.sum(0), a.T @ a, b.shape[0], b.sum(0), b.T @ b)
    assert paired_file_fgd(moments) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    assert paired_file_fgd((a.shape[0], a.sum(0), a.T @ a) * 2) == pytest.approx(0.0, abs=1e-6)


def test_bootstrap_ci_contains_the_mean_and_is_seeded() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    v, ci = bootstrap(lambda i: x[i].mean(), 5, n_boot=500, seed=1)
    assert v == 3.0 and 1.0 < ci[0] < 3.0 < ci[1] < 5.0
    assert bootstrap(lambda i: x[i].mean(), 5, n_boot=500, seed=1) == (v, ci)


def _files(rng: np.random.Generator, n: int, **cond: dict[str, float]) -> dict[str, dict[str, list[float]]]:
    """Per-file values: each condition's mean per key, with small file-to-file noise (2%)."""
    out = {}
    for name, means in cond.items():
        out[name] = {k: list(m * (1 + 0.02 * rng.standard_normal(n))) for k, m in means.items()}
    return out


GT = {"bc": 0.45, "fgd_file": 0.0, "speed": 0.15, "acceleration": 0.7, "jerk": 28.0, "beat_placement": 0.33}


def _model(bc=0.47, fgd=1.0, speed=0.14, acc=0.8, jerk=33.0, bp=0.25) -> dict[str, float]:
    return {"bc": bc, "fgd_file": fgd, "speed": speed, "acceleration": acc, "jerk": jerk, "beat_placement": bp}


@pytest.mark.parametrize(
    "name,cond,expect",
    [
        # smooth, on the beats, worse with another file's audio, BC near GT's: passes everything
        ("correct", {"own": _model(), "audio_swapped": _model(fgd=1.5), "delayed": _model(bc=0.35)}, set()),
        # chatter: 40x GT jerk, BC far above GT's from minima everywhere; beat placement gone
        ("jittery", {"own": _model(bc=0.68, acc=6.3, jerk=1120.0, bp=0.04), "audio_swapped": _model(fgd=1.5),
                     "delayed": _model(bc=0.64)}, {"a_smooth_and_lively", "b_on_the_beats", "d_bc_near_gt"}),
        # ignores its audio: swapping or delaying the inputs changes nothing
        ("deaf", {"own": _model(bp=0.25), "audio_swapped": _model(), "delayed": _model()},
         {"b_on_the_beats", "c_uses_its_audio"}),
        # smoothed into stillness: tiny jerk, but too slow
        ("still", {"own": _model(speed=0.05, acc=0.1, jerk=3.0), "audio_swapped": _model(fgd=1.5),
                   "delayed": _model(bc=0.35)}, {"a_smooth_and_lively"}),
    ],
)
def test_judge_on_constructed_models(name: str, cond: dict, expect: set) -> None:
    rng = np.random.default_rng(0)
    per_file = _files(rng, 12, gt=GT, **cond)
    out = judge(per_file, n_boot=500)
    failed = {k for k, c in out["criteria"].items() if not c["passed"]}
    assert failed == expect, (name, out["statistics"])
    assert out["passed"] == (not expect) and out["enough_files"]


def test_judge_needs_twelve_files_and_paired_lists() -> None:
    rng = np.random.default_rng(0)
    per_file = _files(rng, 6, gt=GT, own=_model(), audio_swapped=_model(fgd=1.5), delayed=_model(bc=0.35))
    out = judge(per_file, n_boot=200)
    assert all(c["passed"] for c in out["criteria"].values()) and not out["passed"] and not out["enough_files"]
    per_file["delayed"]["bc"] = per_file["delayed"]["bc"][:5]
    with pytest.raises(ValueError, match=r"per_file\['delayed'\]\['bc'\] has 5 files"):
        judge(per_file)


def test_the_rule_is_the_pre_registered_one() -> None:
    """Issue 13 item 4's numbers; a change here must come with a new issue, never after seeing results."""
    assert RULE == Rule(1.5, 1.5, (0.67, 1.5), 0.15, 0.1, 12, 0.95)
