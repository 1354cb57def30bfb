"""Stage fingerprints: which settings and upstream stages each stage's outputs were made from.

A stage's fingerprint is the sha256 of (a) the pipeline settings it reads, (b) its stage config resolved from its
YAML files and the pipeline's overrides (so editing ``configs/rvq/upper_tiny.yaml`` counts too) and (c) the
fingerprints of the stages it consumes. The runner stores it in the stage record; a record whose fingerprint differs
from the current one is stale: the stage reruns, and so does everything downstream (their fingerprints include it).
Code changes are not part of it: after editing code, rerun with ``force=...``.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from omegaconf import DictConfig

from utils.config import to_container

RVQ_PARTS = ("upper", "hands", "lower_trans")


def _stage_yaml(cfg: DictConfig, node: Any, path: str | None = None) -> Any:
    """The resolved stage config (YAML files + overrides); stage-specific paths are added later by the stages."""
    from pipeline.stages import stage_config

    if node is None or not node.get("config"):
        return None
    return to_container(stage_config(path or str(node.config), node.get("overrides")))


def stage_inputs(cfg: DictConfig, name: str) -> tuple[dict[str, Any], list[str]]:
    """(settings the stage reads, stages it consumes)."""
    from pipeline.stages import pipeline_threads

    common = {"seed": cfg.get("seed"), "device": cfg.get("device"), "data": to_container(cfg.data)}
    threads = pipeline_threads(cfg)
    if threads is not None:  # floating-point sums depend on the thread count (absent: older records hold)
        common["threads"] = threads
    if name == "corpus":
        return {"data": common["data"]}, []
    if name == "cache":
        return {"data": common["data"]}, ["corpus"]
    if name == "fgd_ae":
        node = to_container(cfg.fgd_ae)
        return {**common, "fgd_ae": node, "stage": _stage_yaml(cfg, cfg.fgd_ae)}, ["corpus", "cache"]
    if name.startswith("rvq_"):
        part = name[len("rvq_") :]
        path = str(cfg.rvq.config).format(part=part)
        # which other parts are trained does not change this one (face=true must not retrain the body RVQ-VAEs)
        node = {k: v for k, v in to_container(cfg.rvq).items() if k != "parts"}
        return {**common, "rvq": node, "stage": _stage_yaml(cfg, cfg.rvq, path)}, ["cache"]
    if name.startswith("gen_"):
        g = name[len("gen_") :]
        node = cfg.generators[g]
        deps = ["cache", "fgd_ae", *(f"rvq_{p}" for p in cfg.rvq.parts)]
        for key in ("teacher", "init_from"):  # reflow's couplings / a warm start come from another generator
            if node.get(key):
                deps.append(f"gen_{node[key]}")
        return {**common, "face": bool(cfg.get("face", False)), "generator": to_container(node),
                "stage": _stage_yaml(cfg, node)}, deps
    from pipeline.calibration import reads_calibration

    if name == "calibrate":  # the checked generator's guidance on val (pipeline.calibration)
        lc = cfg.learning_check  # what the calibration samples with (not the check's bootstrap)
        used = {k: to_container(lc.get(k)) for k in ("generator", "overrides", "seeds")}
        return {**common, "calibration": to_container(cfg.calibration), "learning_check": used}, [
            f"gen_{lc.generator}", "fgd_ae", "cache"]
    if name.startswith("test_"):
        r = name[len("test_") :]
        node = cfg.test.runs[r]
        rest = {k: v for k, v in to_container(cfg.test).items() if k != "runs"}
        deps = [f"gen_{node.generator}", "fgd_ae", "cache", *(["calibrate"] if reads_calibration(cfg, r) else [])]
        return {**common, "run": to_container(node), "test": rest}, deps
    if name == "nfe_table":
        return {**common, "n_boot": cfg.test.get("n_boot"), "body_model": cfg.test.get("body_model")}, [
            *(f"test_{r}" for r in cfg.test.runs), "fgd_ae", "cache"]
    if name == "learning_check":
        lc = cfg.learning_check
        return {**common, "learning_check": to_container(lc)}, [
            f"gen_{lc.generator}", "fgd_ae", "cache", *(["calibrate"] if reads_calibration(cfg, name) else [])]
    raise KeyError(f"no provenance rule for stage {name!r}")


def fingerprints(cfg: DictConfig) -> dict[str, str]:
    """Fingerprint of every stage of the pipeline config (the report has none: it is always rebuilt)."""
    key = json.dumps(to_container(cfg), sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE.clear()  # one pipeline config at a time
        _CACHE[key] = _fingerprints(cfg)
    return _CACHE[key]


_CACHE: dict[str, dict[str, str]] = {}


def _fingerprints(cfg: DictConfig) -> dict[str, str]:
    from pipeline.main import all_stage_names

    @cache
    def fp(name: str) -> str:
        settings, deps = stage_inputs(cfg, name)
        blob = json.dumps({"stage": name, "settings": settings, "deps": {d: fp(d) for d in deps}}, sort_keys=True,
                          default=str)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    return {n: fp(n) for n in all_stage_names(cfg) if n != "report"}


__all__ = ["fingerprints", "stage_inputs"]
