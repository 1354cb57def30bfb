"""benchmarks/profile_steps.py: the grouping of profiler operators into kernel kinds, and one profiled row."""

from __future__ import annotations

import pytest
import torch

from benchmarks import profile_steps as ps


@pytest.mark.parametrize(("op", "kind"), [
    ("aten::convolution_backward", "convolution"), ("aten::mkldnn_convolution", "convolution"),
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::bmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::native_batch_norm_backward", "normalisation"), ("aten::native_layer_norm", "normalisation"),
    ("aten::add", "rest"), ("aten::copy_", "rest"), ("aten::mul", "rest"),
])  # fmt: skip
def test_operator_kinds(op, kind):
    assert ps.kind_of(op) == kind


def test_one_window_row_is_mostly_matmul():
    threads = torch.get_num_threads()
    try:
        res = ps.main(["--rows", "shortcut_window", "--threads", "1", "--top", "3"])
    finally:
        torch.set_num_threads(threads)
    r = res["rows"]["shortcut_window"]
    assert sum(r["shares"].values()) == pytest.approx(1.0)
    assert r["shares"]["convolution"] == 0.0  # the condition is precomputed: no audio encoder in this row
    # the denoiser's linears and attention run (their shares are timings: measured by the script, not asserted)
    assert r["shares"]["matmul"] > 0 and r["shares"]["attention"] > 0
    # the kernels' share is taken against the unprofiled wall time (the profiler's overhead inflates its own total)
    assert 0 < r["kernel_share"] <= 1.0
    assert r["kernel_share"] == pytest.approx(min(1.0, r["kernel_s"] / r["median_s"]))
    shares = [t["share"] for t in r["top"]]
    assert len(shares) == 3 and shares == sorted(shares, reverse=True)
