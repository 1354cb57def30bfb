"""benchmarks/compare_runs.py: which numbers of two main-job runs differ, NaN-aware, wall-clock fields ignored."""

from __future__ import annotations

import math

import torch

from benchmarks.compare_runs import number_diff, weight_diff


def test_number_diff_finds_the_largest_difference_and_where():
    a = {"summary": {"bc": [0.5, 0.25], "fgd": 1.0}, "seconds": 10.0, "jaw": float("nan")}
    b = {"summary": {"bc": [0.5, 0.375], "fgd": 1.0}, "seconds": 99.0, "jaw": float("nan")}
    d, where, other = number_diff(a, b)
    assert d == 0.125 and where == ".summary.bc[1]" and other == []  # wall clock and NaN == NaN do not count
    assert number_diff(a, a) == (0.0, "", [])
    d, where, _ = number_diff({"x": float("nan")}, {"x": 1.0})
    assert math.isinf(d) and where == ".x"
    _, _, other = number_diff({"a": "cpu", "b": [1, 2]}, {"a": "cuda", "b": [1], "c": 0})
    assert sorted(other) == [".a", ".b (lengths 2 vs 1)", ".c"]


def test_weight_diff_compares_model_tensors_not_file_bytes(tmp_path):
    w = {"lin.weight": torch.arange(6.0).reshape(2, 3), "lin.bias": torch.zeros(2)}
    torch.save({"model": w, "config": {"output_dir": "a"}}, tmp_path / "a.pt")
    torch.save({"model": {k: v.clone() for k, v in w.items()}, "config": {"output_dir": "b"}}, tmp_path / "b.pt")
    assert weight_diff(tmp_path / "a.pt", tmp_path / "b.pt") == 0.0
    w2 = {**w, "lin.bias": torch.tensor([0.0, 0.5])}
    torch.save({"model": w2}, tmp_path / "c.pt")
    assert weight_diff(tmp_path / "a.pt", tmp_path / "c.pt") == 0.5
    torch.save({"model": {"lin.weight": w["lin.weight"]}}, tmp_path / "d.pt")
    assert math.isinf(weight_diff(tmp_path / "a.pt", tmp_path / "d.pt"))
