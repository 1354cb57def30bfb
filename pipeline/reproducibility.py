"""What the report says about reproducibility (issue 13, item 5): this run's environment, digests of everything it
made, and which numbers were measured to be bit-identical across runs and machines.

Two main-job output folders compare number by number with ``python benchmarks/compare_runs.py OUT_A OUT_B``; the
digests in ``report/reproducibility.json`` let a reader see at a glance whether two runs made identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from utils.io import sha256_file

# Measured with benchmarks/compare_runs.py on main-job outputs (configs/pipeline/synthetic_cpu.yaml,
# OMP_NUM_THREADS=1, torch 2.13.0+cpu). Rerun those commands before changing a line here.
MEASURED = (
    "Same machine, same thread count, two output folders (2026-11-30, commit 5cd5caf): every checkpoint's weights, "
    "every test metric, every res_*.npz and every learning-check number bit-identical.",
    "Another day, a freshly installed machine of the same type (AMD EPYC; 2026-12-01, commit ebf2d1d, no pipeline "
    "code changed since 5cd5caf) against that 5cd5caf run: again everything bit-identical.",
    "A machine of another type (the one the README's earlier results came from; same torch build and threads): the "
    "corpus, the caches and every ground-truth number bit-identical; every trained number differs (learning-check "
    "jerk ratio 0.814 vs 0.733, beat placement 0.0218 vs 0.0195), with the same pass/fail verdicts. Float "
    "reductions in the CPU kernels are not bit-stable across CPUs, and training amplifies last-bit differences.",
    "threads: 1 (the main job's setting since 2026-12-02), AVX2 machine: the run of the README's tables against a "
    "fresh run of the same config in another folder (commit 3caae88): every weight, test metric, res_*.npz, "
    "learning-check and NFE-table number bit-identical (20/20); wall times 22.1 and 20.2 min (the VM's speed varies).",
    "Another VM of the AVX2 type (2026-12-03, commit ffffbb4, the same config): every number of report/results.md "
    "equal to that run's but the real-time factors; a generator stage trained outside the pipeline with the same "
    "config and thread count gives the pipeline's weights exactly (max |diff| 0).",
    "A 2-core Intel Xeon with AVX-512 (2026-12-03, session 24, commit 088573c): corpus, caches and ground-truth "
    "numbers bit-identical to the AMD runs (not those through a trained model: GT's per-file FGD); every trained "
    "number differs, and the learning check that passes on the AMD AVX2 type fails there (all four criteria; the "
    "model is stiller). Capping the kernels at AVX2 (ATEN_CPU_CAPABILITY, DNNL_MAX_CPU_ISA, "
    "MKL_ENABLE_INSTRUCTIONS or MKL_CBWR) did not reproduce the AVX2 type's numbers.",
    "numpy/scipy's BLAS threads (capped at the pipeline's threads since session 24): every weight and generated "
    "motion identical with and without the cap; pooled and per-file FGD differ by <= 2e-14 (reduction order).",
    "The thread count alone changes training on one machine (FGD autoencoder val loss after 20 updates: 0.1676 with "
    "1 thread, 0.1283 with 2), so compare runs made with the same thread count: the pipeline's `threads` when set "
    "(the main job's: 1, whatever the core count), else torch's default (OMP_NUM_THREADS, else the core count).",
)


def folder_digest(files: list[Path], root: Path | None = None) -> str:
    """One sha256 over (name, sha256) of ``files`` sorted by name, the name taken relative to ``root`` (default: the
    file name): equal iff the same names hold the same bytes."""
    named = sorted((str(p.relative_to(root)) if root is not None else p.name, p) for p in files)
    h = hashlib.sha256()
    for name, p in named:
        h.update(f"{name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def checkpoint_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a checkpoint: our trainer's ``model``, a released ``{'net': ...}`` RVQ-VAE or
    ``{'model_state': ...}`` file, or a bare state dict (loaded with ``weights_only=True``)."""
    import torch

    from models.checkpoints import extract_state_dict
    from utils.io import load_torch

    obj = load_torch(path)
    wrapped = next((obj[k] for k in ("model", "net") if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    state = wrapped if wrapped is not None else extract_state_dict(obj, path, allow_trainer=True)[0]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def weights_digest(path: str | os.PathLike) -> str:
    """sha256 over a checkpoint's tensors (`checkpoint_tensors`; name, dtype, shape, bytes; keys sorted). Not the
    file's bytes: our checkpoints also hold their run folder and wall-clock times, which differ between two identical
    runs."""
    import torch

    tensors = checkpoint_tensors(path)
    if not tensors:
        raise ValueError(f"{path}: no tensors to digest")
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k]
        h.update(f"{k}\0{v.dtype}\0{tuple(v.shape)}\n".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cpuinfo(key: str) -> str:
    """The first ``key`` field of /proc/cpuinfo ("" where there is none, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_type() -> tuple[str, str]:
    """(vendor, torch's CPU capability), e.g. ("AuthenticAMD", "AVX2"): trained numbers differ between machine types
    (kernels, reduction orders), and the learning check's verdict with them (README, Reproducibility)."""
    import torch

    return _cpuinfo("vendor_id") or platform.machine(), str(torch.backends.cpu.get_cpu_capability())


def environment(threads: int | None = None) -> dict[str, Any]:
    """What decides whether two runs can be bit-identical: library builds, CPU and thread count (``threads``: the
    pipeline's setting, which every stage ran with; None: torch's default, recorded as it is here)."""
    import numpy as np
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cpu": _cpu_model(), "cpu_type": list(cpu_type()), "machine": platform.machine(),
            "os": platform.platform(),
            "pipeline_threads": threads, "torch_threads": threads or torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            **({"cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0),
                "cudnn": torch.backends.cudnn.version()} if torch.cuda.is_available() else {"cuda": None})}  # fmt: skip


def output_digests(out: Path) -> dict[str, str]:
    """sha256 of each stage's checkpoint weights (``stages/*.json`` -> ``paths.checkpoint``, `weights_digest`;
    "missing" when the recorded file is gone), one digest per test run over its ``res_*.npz``, and one per
    learning-check condition over every ``res_*.npz`` below it (one folder per sampling seed; `folder_digest`)."""
    digests: dict[str, str] = {}
    for rec in sorted((out / "stages").glob("*.json")):
        ckpt = (json.loads(rec.read_text()).get("paths") or {}).get("checkpoint")
        if ckpt:
            digests[f"{rec.stem} weights"] = weights_digest(ckpt) if Path(ckpt).is_file() else "missing"
    for d in sorted(p for p in (out / "test").glob("*") if p.is_dir()):
        files = list(d.glob("res_*.npz"))
        if files:
            digests[f"test/{d.name} res_*.npz ({len(files)})"] = folder_digest(files)
    for d in sorted(p for p in (out / "report" / "learning_check").glob("*") if p.is_dir()):
        files = list(d.rglob("res_*.npz"))
        if files:
            digests[f"learning_check/{d.name} res_*.npz ({len(files)})"] = folder_digest(files, d)
    return digests


def reproducibility_markdown(env: dict[str, Any], digests: dict[str, str]) -> str:
    """The report's Reproducibility section: what was measured, this run's environment, its digests."""
    lines = ["## Reproducibility", "",
             "Bit-identical, as measured on one machine type (AMD EPYC, CPU): rerunning this command with the same "
             "thread count and library builds (every digest below, and so every number). Not bit-identical across "
             "CPUs, library builds or thread counts: every trained number (ground-truth numbers stay identical). "
             "The learning-check rows gt and other_gt are ground-truth references, the others generated. "
             "Measured:", "",
             *[f"- {m}" for m in MEASURED], "",
             "Compare two runs number by number: `python benchmarks/compare_runs.py OUT_A OUT_B`; or compare the "
             "digests below (`report/reproducibility.json`).", "",
             "This run's environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", "",
             "| output | sha256 (first 16) |", "|---|---|",
             *[f"| {k} | `{v[:16]}` |" for k, v in digests.items()], ""]  # fmt: skip
    return "\n".join(lines)
