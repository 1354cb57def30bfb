"""Translate an upstream GestureLSM v2 ``model:`` config into our generator node (for released checkpoints/fixtures).

Upstream picks the class from ``model_name``/``g_name`` (LSM/GestureLSM, Diffusion/GestureDiffusion,
MeanFlow/GestureMF), keeps sampling settings (``n_steps``, ``guidance_scale``) at the top of ``model:``, reads the
word table from ``<data_path>weights/vocab.pkl`` inside the ModalityEncoder, and puts ``num_inference_steps``/``eta``
beside the scheduler's ``params``; a MeanFlow config also carries its objective keys at the top of ``model:``.
Ours: one {target, params} node per generator, with the word table size given explicitly.
"""

from __future__ import annotations

from typing import Any

from utils.config import ConfigError, to_container

UPSTREAM_GENERATORS = {
    ("LSM", "GestureLSM"): "models.generators.shortcut.ShortcutGenerator",
    ("Diffusion", "GestureDiffusion"): "models.generators.diffusion.DiffusionGenerator",
    ("MeanFlow", "GestureMF"): "models.generators.meanflow.MeanFlowGenerator",
}
UPSTREAM_TARGETS = {
    "models.layers.modality_encoder.ModalityEncoder": "models.modality_encoder.ModalityEncoder",
    "models.denoiser.GestureDenoiser": "models.denoiser.GestureDenoiser",
}
# upstream ModalityEncoder arguments that have no counterpart here (the word table comes from vocab_size/weights)
_DROPPED_ENCODER_KEYS = ("data_path",)
# the MeanFlow config's objective keys (spec §1.4); upstream only samples, ours trains with them (MeanFlowObjective)
MEANFLOW_OBJECTIVE_KEYS = ("flow_mode", "weighting", "adaptive_p", "path_type", "noise_dist", "time_mu", "time_sigma",
                           "time_min", "time_max", "data_proportion", "cfg_omega", "cfg_kappa", "cfg_min_t",
                           "cfg_max_t")  # fmt: skip


def _network_node(node: dict[str, Any], name: str, **extra: Any) -> dict[str, Any]:
    target = UPSTREAM_TARGETS.get(node.get("target"))
    if target is None:
        raise ConfigError(f"model.{name}.target={node.get('target')!r} is not an upstream network we know")
    params = {k: v for k, v in (node.get("params") or {}).items() if k not in _DROPPED_ENCODER_KEYS}
    params.update(extra)
    return {"target": target, "params": params}


def generator_node_from_upstream(model_cfg: Any, vocab_size: int | None = None) -> dict[str, Any]:
    """Our ``{target, params}`` generator node for an upstream v2 ``model:`` config.

    ``vocab_size``: rows of the FastText word table (the checkpoint's
    ``modality_encoder.text_pre_encoder_body.weight``); upstream reads it from vocab.pkl.
    """
    cfg = to_container(model_cfg)
    key = (cfg.get("model_name"), cfg.get("g_name"))
    if key not in UPSTREAM_GENERATORS:
        raise ConfigError(f"model.model_name/g_name={key} is not supported; known: {sorted(UPSTREAM_GENERATORS)}")
    enc_extra = {"vocab_size": vocab_size} if vocab_size is not None else {}
    params: dict[str, Any] = {
        "modality_encoder": _network_node(cfg["modality_encoder"], "modality_encoder", **enc_extra),
        "denoiser": _network_node(cfg["denoiser"], "denoiser"),
    }
    # upstream ignores do_classifier_free_guidance: CFG is on whenever guidance_scale > 1 (spec §1.4)
    sampler: dict[str, Any] = {"n_steps": int(cfg["n_steps"]), "guidance_scale": float(cfg["guidance_scale"])}
    if key[0] == "Diffusion":
        sched = dict(cfg["scheduler"])
        steps = sched.pop("num_inference_steps", None)
        sampler["eta"] = float(sched.pop("eta", 0.0))
        if steps is not None and int(steps) != sampler["n_steps"]:
            raise ConfigError(
                f"model.scheduler.num_inference_steps={steps} differs from model.n_steps={cfg['n_steps']}"
            )
        params["scheduler"] = {"target": sched["target"], "params": sched.get("params") or {}}
    if key[0] == "MeanFlow":
        params["objective"] = {k: cfg[k] for k in MEANFLOW_OBJECTIVE_KEYS if k in cfg}
    params["sampler"] = sampler
    return {"target": UPSTREAM_GENERATORS[key], "params": params}
