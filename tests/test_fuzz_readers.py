"""Fuzz tests (hypothesis, derandomized) of the readers of user files (issue 14): the BEAT2 motion npz reader and
split csv reader (dataloaders/beat2.py) and the evaluator's folder reader (evaluation/evaluator.py).

Property: hostile input gives either a correct result or one of our own errors (BeatDataError / EvaluationError)
naming the file or folder; never a crash from deep inside (KeyError, IndexError, TypeError, a numpy ValueError
without the file name, ...), and never a silently wrong value (complex parts dropped, overflow to inf).
"""

from __future__ import annotations

import csv
import io
import itertools
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dataloaders.beat2 import MAX_AXIS_ANGLE, SPLITS, BeatDataError, load_motion, read_split, read_split_csv
from evaluation.evaluator import EvaluationError, discover_pairs, load_motion_npz

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
_counter = itertools.count()

# ----------------------------------------------------------------------------------------------- npz contents
DTYPES = ("float32", "float64", "float16", "int64", "uint8", "bool", "complex64", "<U3", "S2", "object",
          "timedelta64[s]")  # fmt: skip
MODES = ("savez",) * 6 + ("compressed", "compressed", "truncate", "flip", "npy", "pickled_npy", "garbage", "empty")


def _shape_for(draw, key: str, t: int) -> tuple[int, ...]:
    right = {"poses": (t, 165), "trans": (t, 3), "betas": (300,), "expressions": (t, 100), "mocap_frame_rate": (),
             "gt_copied": (2,), "other": (3,)}[key]  # fmt: skip
    wrong = [(), (0,), (t,), (t, 165), (t, 3), (t, 100), (300,), (t, 165, 1), (t + 2, right[-1] if right else 1),
             (max(t - 1, 0),) + right[1:], (1, 300), (2, 300), (0, 300), (5,), (2,)]  # fmt: skip
    return draw(st.sampled_from([right] * 4 + wrong))


def _array(draw, key: str, t: int, hostile: bool) -> np.ndarray:
    """A well-formed array for ``key`` or (``hostile``) one with a drawn shape, dtype, scale and non-finite value."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if not hostile:
        if key == "mocap_frame_rate":
            return np.array(30.0)
        if key == "gt_copied":
            return np.array(["jaw"])
        shape = {"poses": (t, 165), "trans": (t, 3), "betas": (300,), "expressions": (t, 100), "other": (3,)}[key]
        return rng.normal(0.0, 0.3, shape).astype(draw(st.sampled_from(("float32", "float64"))))
    shape = _shape_for(draw, key, t)
    dtype = draw(st.sampled_from(("float32",) * 6 + ("float64",) * 3 + DTYPES))
    scale = draw(st.sampled_from((0.3, 0.3, 0.3, 1.0, 100.0, 1e30, 1e300, 0.0)))
    if key == "mocap_frame_rate":
        scale = draw(st.sampled_from((30.0, 30.0, 25.0, float("nan"))))
        x = np.full(shape, scale)
    elif key == "gt_copied" and dtype == "<U3":
        return np.array(["jaw", "trans"][: shape[0] if shape else 1] or ["jaw"])
    else:
        x = rng.normal(0.0, 1.0, shape) * scale
    if x.size and draw(st.integers(0, 6)) == 0:  # one non-finite value
        x.flat[int(rng.integers(x.size))] = draw(st.sampled_from((np.nan, np.inf, -np.inf)))
    if dtype == "object":
        return np.array(x.tolist() if x.ndim else [float(x)], dtype=object)
    if dtype in ("<U3", "S2"):
        return x.astype(dtype)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return x.astype(dtype)


@st.composite
def motion_files(draw):
    """(file bytes, the arrays they were written from; None when the bytes are no npz archive of them)."""
    t = draw(st.integers(0, 12))
    keys = draw(st.lists(st.sampled_from(("poses", "trans", "betas", "expressions", "mocap_frame_rate",
                                          "gt_copied", "other")), max_size=7, unique=True))  # fmt: skip
    if draw(st.booleans()):  # most files have the required keys, so the checks behind them run too
        keys = list(dict.fromkeys(["poses", "trans", "betas", "expressions", *keys]))
    hostile = set(draw(st.lists(st.sampled_from(keys), max_size=2))) if keys else set()
    arrays = {k: _array(draw, k, t, k in hostile) for k in keys}
    mode = draw(st.sampled_from(MODES))
    buf = io.BytesIO()
    if mode == "npy":  # one array written with np.save under the .npz name
        poses = arrays.get("poses")
        np.save(buf, poses if poses is not None and poses.dtype != object else np.zeros((t, 165)), allow_pickle=False)
        return buf.getvalue(), None
    if mode == "pickled_npy":
        np.save(buf, np.array([{"poses": 1}], dtype=object), allow_pickle=True)
        return buf.getvalue(), None
    if mode == "garbage":
        return draw(st.binary(min_size=1, max_size=200)), None
    if mode == "empty":
        return b"", None
    (np.savez_compressed if mode == "compressed" else np.savez)(buf, **arrays)
    data = buf.getvalue()
    # Damaged archives keep their source arrays: damage that zip's checks cannot see (a flipped byte in an unused
    # header field) may be read, but then it must give exactly these values.
    if mode == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))], arrays
    if mode == "flip":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :], arrays
    return data, arrays


def _write(tmp_path: Path, data: bytes, name: str = "2_scott_0_1_1.npz") -> Path:
    folder = tmp_path / f"ex{next(_counter)}"
    folder.mkdir()
    path = folder / name
    path.write_bytes(data)
    return path


def _real(a: np.ndarray | None) -> bool:
    return a is not None and a.dtype.kind in "iuf"


@FUZZ
@given(motion_files())
def test_beat2_load_motion_clear_error_or_correct(tmp_path, case):
    data, src = case
    path = _write(tmp_path, data)
    try:
        out = load_motion(path)
    except BeatDataError as e:
        assert str(path) in str(e), e
        event("clear error")
        return
    event("accepted")
    assert src is not None  # only an archive of the arrays can be accepted
    t = out["poses"].shape[0]
    assert t >= 2 and out["poses"].shape == (t, 165) and out["poses"].dtype == np.float32
    assert out["trans"].shape == (t, 3) and out["betas"].ndim == 1 and out["betas"].shape[0] >= 10
    assert out["expressions"].ndim == 2 and out["expressions"].shape[1] == 100
    assert abs(out["expressions"].shape[0] - t) <= 1
    for k, v in out.items():
        assert _real(src[k]), f"{k}: {src[k].dtype} accepted"
        assert np.all(np.isfinite(v)), k
        np.testing.assert_array_equal(v, src[k].astype(v.dtype))  # the values as written, only cast
    assert np.linalg.norm(out["poses"].reshape(t, 55, 3), axis=-1).max() <= MAX_AXIS_ANGLE
    if "mocap_frame_rate" in src:
        assert src["mocap_frame_rate"].size == 1 and float(src["mocap_frame_rate"].reshape(())) == 30.0


@FUZZ
@given(motion_files())
def test_evaluator_load_motion_npz_clear_error_or_correct(tmp_path, case):
    data, src = case
    path = _write(tmp_path, data, "res_2_scott_0_1_1.npz")
    try:
        out = load_motion_npz(path)
    except EvaluationError as e:
        assert str(path) in str(e), e
        event("clear error")
        return
    event("accepted")
    assert src is not None
    t = out["poses"].shape[0]
    assert t >= 1 and out["poses"].shape == (t, 165) and out["poses"].dtype == np.float32
    assert _real(src["poses"]) and np.all(np.isfinite(out["poses"]))
    np.testing.assert_array_equal(out["poses"], src["poses"].astype(np.float32))
    if "trans" in src:
        assert out["trans"].shape == (t, 3)
    if "expressions" in src:
        assert out["expressions"].ndim == 2 and out["expressions"].shape[0] == t
    if "betas" in src:
        assert out["betas"].ndim == 1 and out["betas"].size > 0
    for k in ("trans", "expressions", "betas"):
        if k in src:
            assert _real(src[k]) and np.all(np.isfinite(out[k])), k
    if "gt_copied" in src:
        assert src["gt_copied"].dtype.kind == "U" and out["gt_copied"] == [str(s) for s in src["gt_copied"].ravel()]


# ----------------------------------------------------------------------------------------------- split csv
IDS = ("2_scott_0_1_1", "2_scott_0_2_2", "1_wayne_0_1_1", "10_kieks_0_9_9", " 2_scott_0_3_3 ", "", "abc", "x_1",
       "2_scott_0_1_1")  # fmt: skip
TYPES = (*SPLITS, *SPLITS, "Train", "TEST", "", " val ", "validation", "1")


@st.composite
def split_csvs(draw):
    cols = draw(st.sampled_from((["id", "type"], ["id", "type"], ["type", "id"], ["id", "type", "notes"],
                                 ["id"], ["ID", "type"], [" id", "type"], ["id", "type", "id"], [])))  # fmt: skip
    lines = [",".join(cols)] if cols else []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append("")  # blank line
        elif kind == 1:
            lines.append(",".join(draw(st.lists(st.sampled_from(IDS + TYPES), max_size=4))))  # odd field count
        elif kind == 2:
            lines.append('"2_scott_0_5_5,train')  # unbalanced quote
        else:
            row = {"id": draw(st.sampled_from(IDS)), "type": draw(st.sampled_from(TYPES)), "notes": "n", "ID": "x",
                   " id": "y"}  # fmt: skip
            lines.append(",".join(row[c] for c in cols))
    text = draw(st.sampled_from(("\n", "\r\n"))).join(lines) + draw(st.sampled_from(("", "\n")))
    data = text.encode()
    if draw(st.integers(0, 3)) == 0:
        data = b"\xef\xbb\xbf" + data  # a BOM, as spreadsheet programs write
    if draw(st.integers(0, 9)) == 0:
        data += b"\xff\xfe\x00bad"
    return data


def _reference(data: bytes) -> dict[str, str]:
    """What a correct reader returns for an acceptable csv (the test's own simple parse)."""
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    return {r["id"].strip(): r["type"].strip() for r in rows}


@FUZZ
@given(split_csvs())
def test_read_split_csv_clear_error_or_correct(tmp_path, data):
    path = _write(tmp_path, data, "train_test_split.csv")
    try:
        table = read_split_csv(path)
    except BeatDataError as e:
        assert str(path) in str(e), e
        event("clear error")
        return
    event("accepted")
    assert table == _reference(data)
    assert all(i and i == i.strip() for i in table) and set(table.values()) <= set(SPLITS)
    n_rows = sum(1 for _ in csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert len(table) == n_rows  # every row counted once: no duplicate id was merged away
    for split in SPLITS:
        try:
            ids = read_split(path.parent, split, speakers=[2])
        except BeatDataError as e:
            assert str(path) in str(e), e
            continue
        assert ids == [i for i, t in table.items() if t == split and i.split("_")[0] == "2"]


# ----------------------------------------------------------------------------------------------- folder pairing
NAMES = st.tuples(st.sampled_from(("res_", "gt_", "", "Res_")), st.sampled_from(("a", "b", "2_scott_0_1_1", "")),
                  st.sampled_from((".npz", ".npz", ".npz", ".NPZ", ".npy", ".npz.tmp", "")), st.booleans())


@FUZZ
@given(st.lists(NAMES, max_size=8), st.lists(NAMES, max_size=8), st.booleans())
def test_discover_pairs_clear_error_or_consistent(tmp_path, pred_names, gt_names, same_folder):
    root = tmp_path / f"ex{next(_counter)}"
    pred_dir = root / "pred"
    gt_dir = pred_dir if same_folder else root / "gt"
    for folder, names in ((pred_dir, pred_names), (gt_dir, gt_names)):
        folder.mkdir(parents=True, exist_ok=True)
        for prefix, sid, suffix, is_dir in names:
            p = folder / f"{prefix}{sid}{suffix}"
            if p.exists() or not p.name:
                continue
            p.mkdir() if is_dir else p.write_bytes(b"")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs = discover_pairs(pred_dir, gt_dir)
    except EvaluationError as e:
        assert str(pred_dir) in str(e) or str(gt_dir) in str(e), e
        event("clear error")
        return
    event("accepted")
    ids = [i for i, _, _ in pairs]
    assert ids == sorted(set(ids)) and ids
    for sid, p, g in pairs:
        assert p.parent == pred_dir and p.name in (f"res_{sid}.npz", f"{sid}.npz")
        assert g.parent == gt_dir and g.name in (f"gt_{sid}.npz", f"{sid}.npz")
        assert not g.name.startswith("res_") and not p.name.startswith("gt_")
    used = {p.name for _, p, _ in pairs}
    assert {f.name for f in pred_dir.glob("res_*.npz")} <= used  # every prediction is evaluated


@pytest.mark.parametrize("reader,error", [(load_motion, BeatDataError), (load_motion_npz, EvaluationError)])
def test_readers_name_a_folder_given_as_file(tmp_path, reader, error):
    (tmp_path / "x.npz").mkdir()
    with pytest.raises(error, match="x.npz"):
        reader(tmp_path / "x.npz")


def test_zip_member_without_npy_header_is_a_clear_error(tmp_path):
    path = tmp_path / "1_a_0_1_1.npz"
    with zipfile.ZipFile(path, "w") as z:
        for k in ("poses", "trans", "betas", "expressions"):
            z.writestr(f"{k}.npy", b"not an npy file")
    with pytest.raises(BeatDataError, match="1_a_0_1_1.npz"):
        load_motion(path)
    with pytest.raises(EvaluationError, match="1_a_0_1_1.npz"):
        load_motion_npz(path)


# ----------------------------------------------------------------------------------------------- what the fuzzer found
def _motion(t: int = 4, **over) -> dict[str, np.ndarray]:
    arrays = {"poses": np.zeros((t, 165), np.float32), "trans": np.zeros((t, 3)), "betas": np.zeros(300),
              "expressions": np.zeros((t, 100))}  # fmt: skip
    arrays.update(over)
    return arrays


@pytest.mark.parametrize("over,match", [
    ({"mocap_frame_rate": np.array([30.0, 30.0])}, "mocap_frame_rate"),  # was a TypeError from float()
    ({"mocap_frame_rate": np.array(np.nan)}, "mocap_frame_rate"),  # was accepted silently
    ({"poses": np.full((4, 165), 0.1 + 1j)}, "complex"),  # was cast, imaginary part dropped silently
    ({"betas": np.full(300, 1e39)}, "too large for float32"),  # was cast to inf silently
    ({"poses": np.zeros((4, 165), "m8[s]")}, "timedelta64"),
])  # fmt: skip
def test_beat2_motion_regressions(tmp_path, over, match):
    path = tmp_path / "2_scott_0_1_1.npz"
    np.savez(path, **_motion(**over))
    with pytest.raises(BeatDataError, match=match) as e:
        load_motion(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("over,match", [
    ({"poses": np.array([[1.0]] * 4, dtype=object)}, "cannot read 'poses'"),  # was numpy's bare ValueError
    ({"trans": np.array(1.0)}, r"'trans' has shape \(\)"),  # was an IndexError
    ({"trans": np.zeros((4, 2))}, r"'trans' has shape \(4, 2\)"),
    ({"betas": np.zeros((0, 300))}, "'betas' has shape"),  # was an IndexError
    ({"poses": np.full((4, 165), "a")}, "dtype <U1"),  # was numpy's bare ValueError
    ({"gt_copied": np.arange(2.0)}, "'gt_copied' has dtype float64"),  # was accepted as ['0.0', '1.0']
    ({"poses": np.zeros((0, 165))}, "no frames"),
])  # fmt: skip
def test_evaluator_npz_regressions(tmp_path, over, match):
    path = tmp_path / "res_a.npz"
    np.savez(path, **_motion(**over))
    with pytest.raises(EvaluationError, match=match) as e:
        load_motion_npz(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("reader,error", [(load_motion, BeatDataError), (load_motion_npz, EvaluationError)])
def test_a_single_npy_named_npz_is_a_clear_error(tmp_path, reader, error):
    path = tmp_path / "2_scott_0_1_1.npz"
    with open(path, "wb") as f:  # np.save(path) would append .npy
        np.save(f, np.zeros((4, 165)))
    with pytest.raises(error, match="not an npz archive"):  # was a TypeError (no context manager)
        reader(path)


def test_split_csv_with_bom_is_read_and_bad_speaker_ids_name_the_file(tmp_path):
    path = tmp_path / "train_test_split.csv"
    path.write_bytes(b"\xef\xbb\xbfid,type\r\n2_scott_0_1_1,train\r\n\r\n2_scott_0_2_2,test\r\n")
    assert read_split_csv(path) == {"2_scott_0_1_1": "train", "2_scott_0_2_2": "test"}  # was "no 'id' column"
    path.write_text("id,type\n2_scott_0_1_1,train\nabc,train\n")
    assert read_split(tmp_path, "train") == ["2_scott_0_1_1", "abc"]
    with pytest.raises(BeatDataError, match=f"{path}.*'abc' does not start with a speaker number"):
        read_split(tmp_path, "train", speakers=[2])


@pytest.mark.parametrize("name", ["res_.npz", ".npz"])
def test_a_file_name_without_id_is_a_clear_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(EvaluationError, match="no sequence id"):  # ".npz" was paired as id ".npz"
        discover_pairs(tmp_path, tmp_path)
