"""Experiment configuration: YAML files with inheritance, CLI dotlist overrides, and ``target``/``params`` nodes.

An experiment YAML may name base YAMLs under ``bases:`` (paths relative to that YAML's folder); they are merged
in order, then the file itself on top. CLI overrides are ``key=value`` (dotted keys walk into nodes); values are
parsed as YAML scalars by OmegaConf, never by Python ``eval``. Overriding a key that does not exist is an error;
``+key=value`` adds a new key on purpose. The same holds inside files: a file may only set keys its bases define
(a misspelt key is an error with the closest known key), unless it declares ``defines_keys: true``; a number or
boolean setting given a string is an error naming the key and the expected type.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from utils.paths import REPO_ROOT, resolve_path

BASES_KEY = "bases"
DEFINES_KEY = "defines_keys"  # a file that introduces new top-level settings (a stage's base config)


class ConfigError(ValueError):
    """A configuration problem, with the file or node it comes from in the message."""


def _close(key: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_error(key: str, base: Any, value: Any) -> str | None:
    """A message when ``value`` cannot stand where ``base`` had a number or a boolean, else None."""
    if isinstance(base, bool):
        return None if isinstance(value, bool) or value is None else f"{key}: expected true/false, got {value!r}"
    if isinstance(base, (int, float)) and not isinstance(base, bool):
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return None
        if isinstance(value, str) and value.startswith("${"):
            return None  # an interpolation, checked when resolved
        kind = "an integer" if isinstance(base, int) else "a number"
        return f"{key}: expected {kind} (like {base!r}), got {value!r}"
    return None


def check_known_keys(child: DictConfig, base: DictConfig, where: str, prefix: str = "") -> None:
    """Every key ``child`` sets must exist in ``base`` (a misspelt key would otherwise be silently ignored), with a
    value of a compatible type. Below a key whose base value is a leaf or ``???`` anything goes (the child replaces
    it whole); ``overrides`` nodes are free-form (they are checked when applied to their stage's config)."""
    base_keys = list(base.keys())
    for k in child.keys():
        key = f"{prefix}{k}"
        if k not in base_keys:
            raise ConfigError(f"{where}: unknown config key {key!r}{_close(str(k), base_keys)}; known keys here: "
                              f"{sorted(map(str, base_keys))}")  # fmt: skip
        if k == "overrides":
            continue
        bnode, cnode = base._get_node(k), child._get_node(k)
        if isinstance(bnode, DictConfig) and isinstance(cnode, DictConfig):
            if not bnode._is_missing() and not bnode._is_none():
                check_known_keys(cnode, bnode, where, f"{key}.")
            continue
        if bnode._is_missing() or bnode._is_interpolation() or cnode._is_interpolation():
            continue
        msg = _type_error(key, bnode._value(), cnode._value())
        if msg:
            raise ConfigError(f"{where}: {msg}")


def _load_yaml(path: Path, _stack: tuple[Path, ...] = ()) -> DictConfig:
    """A YAML merged over its ``bases``. Each file after the first base may only set keys the files before it
    define, unless it says ``defines_keys: true`` (a stage's base config that introduces its settings)."""
    path = path.resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"cyclic '{BASES_KEY}' in configs: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml errors carry line numbers; keep them
        raise ConfigError(f"cannot parse {path}: {e}") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping")
    bases = node.pop(BASES_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: DictConfig | None = None
    for b in bases:
        base_path = path.parent / str(b)
        base = _load_yaml(base_path, (*_stack, path))
        defines = bool(base.pop(DEFINES_KEY, False))
        if merged is not None and not defines:
            check_known_keys(base, merged, str(base_path.resolve()))
        merged = base if merged is None else OmegaConf.merge(merged, base)
    if merged is None:
        return node
    if not node.get(DEFINES_KEY, False):
        check_known_keys(node, merged, str(path))
    node.pop(DEFINES_KEY, None)
    return OmegaConf.merge(merged, node)


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``key=value`` overrides; unknown keys are an error unless written ``+key=value``."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+").strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        current = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if current is _MISSING and isinstance(node, DictConfig) and leaf in node.keys():
            current = None  # a mandatory value (???): the key exists, it just has no value yet
        if not add and current is _MISSING:
            hint = _close(leaf, node.keys()) if isinstance(node, DictConfig) else ""
            raise ConfigError(f"unknown config key {key!r} in override {item!r}{hint} (use +{key}=... to add a new "
                              "key)")  # fmt: skip
        parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        if not add and not isinstance(current, (DictConfig, ListConfig)):
            msg = _type_error(key, current, OmegaConf.select(parsed, key))
            if msg:
                raise ConfigError(f"override {item!r}: {msg}")
        OmegaConf.set_struct(cfg, False)
        cfg = OmegaConf.merge(cfg, parsed)
    return cfg


_MISSING = object()


def load_config(path: str | Path, overrides: Iterable[str] | None = None,
                nodes: dict[str, Any] | None = None) -> DictConfig:
    """Load an experiment YAML, merged over its bases, then apply CLI overrides.

    ``exp_name`` defaults to the file name without extension. ``nodes`` replace top-level nodes as a whole before
    the overrides (the pipeline gives every stage its ``data``), so interpolations that read them (e.g. the
    encoder's ``${data.audio_rep}``) see the replacement. Interpolations (``${...}``, ``${oc.env:VAR,default}``)
    are resolved at the end so errors surface here rather than deep inside a run.
    """
    p = resolve_path(path)
    if p is not None and not p.is_file() and Path(path).is_file():
        p = Path(path).resolve()
    cfg = _load_yaml(p)
    if "exp_name" not in cfg:
        cfg.exp_name = p.stem
    if nodes:
        OmegaConf.set_struct(cfg, False)
        for key, value in nodes.items():
            cfg[key] = OmegaConf.create(to_container(value))
    cfg = apply_overrides(cfg, list(overrides or []))
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise ConfigError(f"{p}: cannot resolve interpolation: {e}") from e
    return cfg


def to_container(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def get_obj_from_str(target: str, node_name: str = "<config>") -> Any:
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{node_name}.target must be a dotted path like 'package.module.Class', got {target!r}")
    module_name, attr = target.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{node_name}.target={target!r}: cannot import module {module_name!r}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ConfigError(f"{node_name}.target={target!r}: module {module_name!r} has no attribute {attr!r}") from e


def instantiate_from_config(node: Any, node_name: str = "<config>", **extra: Any) -> Any:
    """Build ``target(**params, **extra)`` from a config node, checking parameters against the signature first."""
    if node is None:
        raise ConfigError(f"{node_name} is empty: expected a node with 'target' and optional 'params'")
    node = to_container(node)
    if not isinstance(node, dict) or "target" not in node:
        raise ConfigError(
            f"{node_name}: missing key 'target' (got keys {sorted(node) if isinstance(node, dict) else node!r})"
        )
    unknown_top = set(node) - {"target", "params"}
    if unknown_top:
        raise ConfigError(f"{node_name}: unknown keys {sorted(unknown_top)}; only 'target' and 'params' are allowed")
    factory = get_obj_from_str(node["target"], node_name)
    params = dict(node.get("params") or {})
    params.update(extra)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        names = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not accepts_kwargs:
            unknown = sorted(set(params) - names)
            if unknown:
                raise ConfigError(
                    f"{node_name}.params: unknown key(s) {unknown} for {node['target']}; accepted: {sorted(names)}"
                )
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        missing = [
            n
            for n, p in sig.parameters.items()
            if p.default is inspect.Parameter.empty and p.kind in named and n not in params
        ]
        if missing:
            raise ConfigError(f"{node_name}.params: missing required key(s) {missing} for {node['target']}")
    try:
        return factory(**params)
    except (ConfigError, ConfigKeyError, ConfigAttributeError):
        raise
    except Exception as e:
        raise ConfigError(f"{node_name}: building {node['target']} failed: {type(e).__name__}: {e}") from e


__all__ = [
    "ConfigError",
    "REPO_ROOT",
    "apply_overrides",
    "get_obj_from_str",
    "instantiate_from_config",
    "load_config",
    "to_container",
]
