"""benchmarks/speed_report.py's table: every measured row, fp32 and bf16, rendered from a report's json."""

from __future__ import annotations

from benchmarks.speed_report import table


def _gen(batch: int, t_train: float, t_sample: float) -> dict:
    return {"batch": batch, "shortcut": {"nfe": 2, "train_step_s": t_train, "sample_s": t_sample}}


def _inf(rtf: float, first: float) -> dict:
    run = {"n_steps": 2, "cfg": True, "real_time_factor": rtf, "x_faster_than_real_time": round(1 / rtf, 1)}
    return {"runs": [run], "streaming_n2": {"first_window_latency_s": first}}


def test_table_has_the_fp32_and_bf16_rows():
    rows = {"generators": {"peak_rss_mib": 1000.0, "result": _gen(8, 2.1, 0.2)},
            "rvq": {"peak_rss_mib": 500.0, "result": {"results": [
                {"part": "upper", "batch": 32, "frames": 64, "median_s": 1.4}]}},
            "generators_bf16": {"peak_rss_mib": 900.0, "result": _gen(8, 1.05, 0.11)},
            "inference": {"peak_rss_mib": 800.0, "result": _inf(0.05, 0.21)},
            "inference_bf16": {"peak_rss_mib": 700.0, "result": _inf(0.025, 0.12)},
            "rvq_bf16": {"peak_rss_mib": 600.0, "result": {"results": [
                {"part": "upper", "batch": 32, "frames": 64, "median_s": 0.8}]}}}  # fmt: skip
    report = {"rows": rows, "torch": "2.13.0", "threads": 2, "cpus": 2, "device": "cpu",
              "load_average_before": [0.1, 0, 0], "load_average_after": [1.2, 0, 0]}  # fmt: skip
    lines = table(report).splitlines()
    assert "| shortcut: train step (batch 8) / one window's sampling (NFE 2) | 2.100 s / 0.200 s | 1000.0 |" in lines
    bf16 = "| shortcut, bf16: train step (batch 8) / one window's sampling (NFE 2) | 1.050 s / 0.110 s | 900.0 |"
    assert bf16 in lines
    assert "| inference n=2 CFG: real-time factor | 0.0500 (20.0x) | 800.0 |" in lines
    assert "| inference n=2 CFG, bf16: real-time factor | 0.0250 (40.0x) | 700.0 |" in lines
    assert "| streaming n=2, bf16: first-window latency | 0.120 s | 700.0 |" in lines
    assert "| RVQ-VAE upper: train step (batch 32x64) | 1.400 s | 500.0 |" in lines
    assert "| RVQ-VAE upper, bf16: train step (batch 32x64) | 0.800 s | 600.0 |" in lines
    assert lines[-1].startswith("torch 2.13.0, 2 threads") and "after 1.2" in lines[-1]
    # a report without the bf16 rows (an older json) still renders, without them
    del rows["generators_bf16"], rows["inference_bf16"], rows["rvq_bf16"]
    assert "bf16" not in table(report)
