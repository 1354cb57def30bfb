"""Build what generation needs from a config: the frozen motion codec, the generator, its weights, window options.

Used alike by training (validation), the test split, the learning check and the user-facing inference scripts, so a
trained or released generator is loaded one way everywhere. Nothing here imports training code.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from dataloaders.cache import data_root, get_vocab
from dataloaders.stats import Stats
from inference.windowed import WindowOptions
from models.checkpoints import TRAINER_CHECKPOINT_FORMAT, CheckpointError, load_generator_checkpoint
from models.generators import GENERATORS, LatentGenerator, build_generator
from models.motion_codec import MotionCodec
from utils.config import ConfigError, instantiate_from_config, to_container
from utils.io import load_torch
from utils.paths import resolve_path

RVQ_PARTS = ("upper", "hands", "lower_trans")
FACE_RVQ = "face_jaw"  # rvq.face_jaw: the optional face RVQ-VAE (jaw + expressions); set when face=true


def resolve_checkpoint_path(p: str, what: str) -> str:
    """A file path relative to the repo root; a glob pattern picks its newest match (e.g. timestamped run dirs)."""
    path = str(resolve_path(p))
    if any(c in path for c in "*?["):
        matches = sorted(glob.glob(path), key=os.path.getmtime)
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {path}")
        return matches[-1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} not found")
    return path


def build_codec(cfg: DictConfig, stats: Stats, device: torch.device | str = "cpu") -> MotionCodec:
    """The frozen MotionCodec from ``cfg.rvq.{upper,hands,lower_trans}`` (+ ``rvq.face_jaw`` when the config's
    ``face`` is on) and the data statistics."""
    if "rvq" not in cfg or cfg.rvq is None:
        raise ConfigError("config has no 'rvq' node with the RVQ-VAE checkpoint paths {upper, hands, lower_trans}")
    paths = {}
    for part in RVQ_PARTS:
        p = cfg.rvq.get(part)
        if not p:
            raise ConfigError(f"rvq.{part}: RVQ-VAE checkpoint path missing")
        paths[part] = resolve_checkpoint_path(str(p), f"rvq.{part}")
    if config_face(cfg):
        p = cfg.rvq.get(FACE_RVQ)
        if not p:
            raise ConfigError(f"face=true needs rvq.{FACE_RVQ}: the face RVQ-VAE checkpoint (train it with "
                              "python rvq_beatx_train.py -c configs/rvq/face_jaw.yaml)")  # fmt: skip
        paths[FACE_RVQ] = resolve_checkpoint_path(str(p), f"rvq.{FACE_RVQ}")
    codec = MotionCodec.from_paths(paths, stats, latent_scale=float(cfg.get("latent_scale", 5.0)))
    codec.paths = paths
    return codec.to(device)


def build_generator_from_config(cfg: DictConfig, load_init: bool = True, warm_start: bool = False) -> LatentGenerator:
    """The generator of ``cfg.model.generator``; the word table comes from the data vocabulary (``word_table``).

    ``model.init_from``: a released upstream file; with ``warm_start`` (training) also one of our trainer
    checkpoints of any generator with the same networks (e.g. MeanFlow started from a shortcut model)."""
    node = to_container(cfg.model.generator)
    if not isinstance(node, dict) or "params" not in node:
        raise ConfigError("model.generator must be {name|target, params: {modality_encoder, denoiser, ...}}")
    params = dict(node["params"])
    me = dict(params.get("modality_encoder") or {})
    me_params = check_generator_options(cfg, node)
    if "word_weights" not in me_params and "vocab_size" not in me_params:
        mode = str(cfg.model.get("word_table", "vocab"))
        vocab = get_vocab(cfg.data, data_root(cfg.data))
        if vocab is None:
            raise ConfigError("the data config has no vocabulary (word_rep: none); set "
                              "model.generator.params.modality_encoder.params.vocab_size")  # fmt: skip
        if mode == "vocab":
            if vocab.embeddings is None:
                raise ConfigError("data vocabulary has no embeddings; set model.word_table=random")
            me_params["word_weights"] = np.asarray(vocab.embeddings, np.float32)
        elif mode == "random":
            me_params["vocab_size"] = vocab.n_words
        else:
            raise ConfigError(f"model.word_table must be 'vocab' or 'random', got {mode!r}")
    extra = {k: me_params.pop(k) for k in ("word_weights",) if k in me_params}
    params["modality_encoder"] = instantiate_from_config(
        {"target": me.get("target", "models.modality_encoder.ModalityEncoder"), "params": me_params},
        "model.generator.params.modality_encoder", **extra)  # fmt: skip
    node["params"] = params
    gen = build_generator(node, "model.generator")
    init = cfg.model.get("init_from")
    if load_init and init:
        load_generator_checkpoint(gen, resolve_checkpoint_path(str(init), "model.init_from"), allow_trainer=warm_start)
    return gen


ENCODER_KEY = "model.generator.params.modality_encoder.params"


def frame_feature_dim(data: Any) -> int:
    """The width of the frame features the data cache holds for ``data.audio_rep`` mel (128) or wavlm (the WavLM
    model's hidden size, from its config)."""
    from dataloaders.features import audio as audio_feat

    rep = str(data.get("audio_rep"))
    if rep == "mel":
        return audio_feat.N_MELS
    try:
        return audio_feat.wavlm_hidden_size(str(data.get("wavlm_model")))
    except audio_feat.AudioError as e:
        raise ConfigError(str(e)) from e


def check_audio_options(cfg: DictConfig, encoder: dict) -> None:
    """The data's audio representation and the encoder's audio input must agree; fills the encoder's
    ``audio_feat_dim`` for frame features (mel, wavlm) from the data config. Raises ConfigError naming the keys."""
    from models.modality_encoder import AUDIO_REPS, FRAME_REPS

    data = cfg.get("data") or {}
    rep = str(data.get("audio_rep", "onset+amplitude"))
    if rep not in AUDIO_REPS:
        raise ConfigError(f"data.audio_rep={rep!r}: unknown audio representation; expected one of {AUDIO_REPS}")
    enc_rep = str(encoder.get("audio_rep", "onset+amplitude"))
    if enc_rep not in AUDIO_REPS:
        raise ConfigError(f"{ENCODER_KEY}.audio_rep={enc_rep!r}: unknown audio representation; expected one of "
                          f"{AUDIO_REPS}")  # fmt: skip
    if enc_rep != rep:
        raise ConfigError(f"data.audio_rep={rep!r} but {ENCODER_KEY}.audio_rep={enc_rep!r}: the encoder must take "
                          "the features the data cache holds; set both to the same value (the base config ties the "
                          "encoder's to ${data.audio_rep})")  # fmt: skip
    finetune = bool(data.get("wavlm_finetune", False))
    if finetune and rep != "wavlm":
        raise ConfigError(f"data.wavlm_finetune=true needs data.audio_rep=wavlm (got {rep!r})")
    for key in ("wavlm_finetune", "wavlm_model", "wavlm_layer"):
        # one home: data.wavlm_* decide what the cache holds; the encoder receives them below
        if encoder.get(key) not in (None, False):
            raise ConfigError(f"{ENCODER_KEY}.{key}={encoder[key]!r}: set data.{key} instead (the encoder takes it "
                              "from the data config)")  # fmt: skip
    if rep == "wavlm" and not data.get("wavlm_model"):
        raise ConfigError("data.audio_rep=wavlm needs data.wavlm_model (a WavLM folder written by save_pretrained, "
                          "or a cached Hugging Face id such as microsoft/wavlm-base-plus)")  # fmt: skip
    if finetune:
        layer = data.get("wavlm_layer")
        encoder.update(wavlm_finetune=True, wavlm_model=str(data.get("wavlm_model")),
                       wavlm_layer=None if layer is None else int(layer))  # fmt: skip
    if rep in FRAME_REPS:
        want = frame_feature_dim(data)
        have = encoder.get("audio_feat_dim")
        if have is not None and int(have) != want:
            raise ConfigError(f"{ENCODER_KEY}.audio_feat_dim={have} but data.audio_rep={rep!r} gives {want}-D "
                              "features; leave it null (it follows the data)")  # fmt: skip
        encoder["audio_feat_dim"] = want
    elif encoder.get("audio_feat_dim") is not None:
        raise ConfigError(f"{ENCODER_KEY}.audio_feat_dim={encoder['audio_feat_dim']}: only mel and wavlm frame "
                          f"features have a feature width; data.audio_rep={rep!r} takes (B, S, 2) samples; set it "
                          "to null")  # fmt: skip


def check_unwired_options(cfg: DictConfig, encoder: dict, denoiser: dict) -> None:
    """Options that exist in the configs but that nothing consumes yet are errors at load time, never no-ops."""
    if encoder.get("raw_audio"):
        raise ConfigError(f"{ENCODER_KEY}.raw_audio=true: upstream's extra WavLM branch beside the onset input is "
                          "fed by no data path; use data.audio_rep=wavlm (WavLM features as the encoder's audio "
                          "input) and set raw_audio to false")  # fmt: skip
    face = config_face(cfg)
    for where, node in (("modality_encoder", encoder), ("denoiser", denoiser)):
        if bool(node.get("use_exp", False)) != face:
            raise ConfigError(f"model.generator.params.{where}.params.use_exp={bool(node.get('use_exp', False))} "
                              f"but face={face}: the generator's parts must match the codec's (set face: true|false "
                              "and leave use_exp to follow it)")  # fmt: skip


def config_face(cfg: Any) -> bool:
    """Whether a config generates the face (the 4th part): its top-level ``face`` (default false)."""
    v = cfg.get("face", False) if hasattr(cfg, "get") else False
    if not isinstance(v, bool):
        raise ConfigError(f"face must be true or false, got {v!r}")
    return v


def check_generator_options(cfg: DictConfig, node: dict | None = None) -> dict:
    """Load-time checks of ``model.generator`` against the data config (unwired options, the audio representation);
    returns the modality encoder's params with what follows from the data filled in. Cheap (reads configs only), so
    trainers run it before the data step."""
    node = to_container(cfg.model.generator) if node is None else node
    if not isinstance(node, dict) or "params" not in node:
        raise ConfigError("model.generator must be {name|target, params: {modality_encoder, denoiser, ...}}")
    params = dict(node["params"])
    me_params = dict(dict(params.get("modality_encoder") or {}).get("params") or {})
    check_unwired_options(cfg, me_params, dict((params.get("denoiser") or {}).get("params") or {}))
    check_audio_options(cfg, me_params)
    return me_params


def generator_kind(node: Any) -> str | None:
    """The class a ``model.generator`` node builds (a short name is mapped through the registry)."""
    node = to_container(node) or {}
    if not isinstance(node, dict):
        return None
    if node.get("name"):
        return GENERATORS.get(str(node["name"]), str(node["name"]))
    return str(node["target"]) if node.get("target") else None


def load_trained_generator(cfg: DictConfig, ckpt_path: str | os.PathLike, device: torch.device) -> LatentGenerator:
    """The configured generator with weights from one of our trainer checkpoints or a released upstream file.

    Our checkpoints carry the config they were trained with: a checkpoint of another generator (a DDIM checkpoint
    under a shortcut config) is refused with both names, so no result is ever labelled with the wrong method."""
    model = build_generator_from_config(cfg, load_init=False)
    obj = load_torch(ckpt_path, map_location="cpu")
    if isinstance(obj, dict) and obj.get("format") == TRAINER_CHECKPOINT_FORMAT:
        saved = (obj.get("config") or {}).get("model", {}).get("generator")
        have, want = generator_kind(saved), generator_kind(cfg.model.generator)
        if have is not None and have != want:
            raise CheckpointError(f"{ckpt_path}: a checkpoint of {have}, but the config builds {want}; evaluate it "
                                  "with the config it was trained with (its run folder's config.yaml)")  # fmt: skip
        try:
            model.load_state_dict(obj["model"], strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[:4]
            raise CheckpointError(f"{ckpt_path}: its weights do not fit the configured generator (other sizes or "
                                  f"parts): {' '.join(first)}") from e  # fmt: skip
    elif isinstance(obj, dict) and "net" in obj:
        raise CheckpointError(f"{ckpt_path}: an RVQ-VAE checkpoint ('net' entry), not a generator; pass it as "
                              "rvq.<part>=... and the generator's checkpoint as --ckpt")  # fmt: skip
    else:
        load_generator_checkpoint(model, ckpt_path)
    return model.to(device).eval()


def window_options(cfg: DictConfig) -> WindowOptions:
    """Windowed-generation options from ``inference.windows``, with fps/sr/seed length taken from the config."""
    inf = cfg.get("inference") or {}
    node = to_container(inf.get("windows")) or {}
    data = cfg.get("data") or {}
    node.setdefault("fps", int(data.get("pose_fps", 30)))
    node.setdefault("audio_sr", int(data.get("audio_sr", 16000)))
    node.setdefault("seed_latents", int(cfg.get("pre_frames", 4)))
    return WindowOptions.from_config(node)


__all__ = [
    "RVQ_PARTS",
    "build_codec",
    "build_generator_from_config",
    "check_audio_options",
    "check_generator_options",
    "generator_kind",
    "load_trained_generator",
    "resolve_checkpoint_path",
    "window_options",
]
