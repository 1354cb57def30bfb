"""Latent gesture generators: one nn.Module shape (`LatentGenerator`), differing only in objective and sampler.

Build one from config with `build_generator(node)`:

* ``{target: models.generators.shortcut.ShortcutGenerator, params: {...}}`` (any importable class), or
* ``{name: shortcut, params: {...}}`` with a name from `GENERATORS`.

Adding a generator (as reflow.py and meanflow.py were) means a new file here with its Objective/Sampler and a thin
`LatentGenerator` subclass; point a config's ``target`` at it (or add it to `GENERATORS` for a short name).
"""

from __future__ import annotations

from typing import Any

from models.generators.base import (
    LatentGenerator,
    LinearFlowPath,
    NetFn,
    Objective,
    PathSample,
    SampleOutput,
    Sampler,
    guided_prediction,
)
from models.generators.diffusion import DDIMSampler, DiffusionGenerator, DiffusionObjective
from models.generators.meanflow import MeanFlowGenerator, MeanFlowObjective, MeanFlowSampler
from models.generators.reflow import ReflowGenerator, ReflowObjective
from models.generators.shortcut import EulerShortcutSampler, ShortcutGenerator, ShortcutObjective
from utils.config import ConfigError, instantiate_from_config, to_container

GENERATORS: dict[str, str] = {
    "shortcut": "models.generators.shortcut.ShortcutGenerator",
    "diffusion": "models.generators.diffusion.DiffusionGenerator",
    "meanflow": "models.generators.meanflow.MeanFlowGenerator",
    "reflow": "models.generators.reflow.ReflowGenerator",
}


def build_generator(node: Any, node_name: str = "model.generator", **extra: Any) -> LatentGenerator:
    """A generator from ``{target|name, params}``; ``extra`` keyword arguments are passed to the constructor."""
    node = to_container(node)
    if not isinstance(node, dict):
        raise ConfigError(f"{node_name}: expected a mapping with 'target' or 'name', got {type(node).__name__}")
    if "name" in node:
        name = node["name"]
        if name not in GENERATORS:
            raise ConfigError(f"{node_name}.name={name!r} is not a known generator; known: {sorted(GENERATORS)}")
        if "target" in node:
            raise ConfigError(f"{node_name}: give 'name' or 'target', not both")
        node = {"target": GENERATORS[name], "params": node.get("params") or {}}
    gen = instantiate_from_config(node, node_name, **extra)
    if not isinstance(gen, LatentGenerator):
        raise ConfigError(f"{node_name}.target built {type(gen).__name__}, which is not a LatentGenerator")
    return gen


__all__ = [
    "GENERATORS",
    "DDIMSampler",
    "DiffusionGenerator",
    "DiffusionObjective",
    "EulerShortcutSampler",
    "LatentGenerator",
    "LinearFlowPath",
    "MeanFlowGenerator",
    "MeanFlowObjective",
    "MeanFlowSampler",
    "NetFn",
    "Objective",
    "PathSample",
    "ReflowGenerator",
    "ReflowObjective",
    "Sampler",
    "SampleOutput",
    "ShortcutGenerator",
    "ShortcutObjective",
    "build_generator",
    "guided_prediction",
]
