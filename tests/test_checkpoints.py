"""Checkpoints: our key list equals the upstream manifests; v1/v2/raw files load strictly; mismatches are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoints import (
    CheckpointError,
    export_upstream_checkpoint,
    load_generator_checkpoint,
    load_state_dict_strict,
    map_upstream_keys,
)
from models.denoiser import GestureDenoiser
from models.modality_encoder import ModalityEncoder
from tests.conftest import FIXTURES, need
from utils.io import save_torch

MANIFEST_ENTRIES = ("gesturelsm_v1", "gesturelsm_v2", "gesturediffusion_v2")


class Container(nn.Module):
    """Stand-in generator: just the two networks, as the generator modules hold them."""

    def __init__(self, encoder: nn.Module, denoiser: nn.Module):
        super().__init__()
        self.modality_encoder = encoder
        self.denoiser = denoiser


@pytest.fixture(scope="module")
def full_container() -> Container:
    return Container(ModalityEncoder(vocab_size=11195), GestureDenoiser())


def _small_container(seed: int = 0, **den_kw) -> Container:
    torch.manual_seed(seed)
    return Container(ModalityEncoder(vocab_size=20, audio_dim=16, latent_dim=8),
                     GestureDenoiser(latent_dim=8, ff_size=16, num_layers=1, cond_proj_dim=8, **den_kw))


@pytest.fixture(scope="module")
def manifests() -> dict:
    return json.loads(need(FIXTURES / "manifests.json").read_text())


@pytest.mark.parametrize("entry", MANIFEST_ENTRIES)
def test_key_list_shapes_dtypes_match_manifest(full_container, manifests, entry):
    man = manifests[entry]
    upstream = {k: (tuple(s), d) for k, s, d in man["state_dict"]}
    mapped, had_prefix, dropped = map_upstream_keys({k: torch.empty(0) for k in upstream})
    assert had_prefix and dropped == []
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in full_container.state_dict().items()}
    assert set(mapped) == set(ours)
    mismatched = [k for k in ours if ours[k] != upstream["module." + k]]
    assert mismatched == []
    assert len(ours) == man["counts"]["state_dict_tensors"]


@pytest.mark.parametrize("entry", MANIFEST_ENTRIES)
def test_parameter_counts_match_manifest(full_container, manifests, entry):
    man = manifests[entry]
    enc, den = full_container.modality_encoder, full_container.denoiser
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(den) == man["counts_denoiser"]["parameters"] == 30_628_224
    assert count(enc) == man["counts_modality_encoder"]["parameters"] == 7_156_900
    assert count(full_container) == man["counts"]["parameters"]
    # the pe table is one buffer shared by two submodules: once in buffers(), twice in the state dict
    assert den.embed_timestep.sequence_pos_encoder.pe is den.sequence_pos_encoder.pe
    assert sum(b.numel() for b in full_container.buffers()) == man["counts"]["buffer_elements"]
    assert sum(v.numel() for v in full_container.state_dict().values()) == man["counts"]["state_dict_elements"]


def test_full_size_synthetic_v1_file_from_manifest_loads(tmp_path, manifests):
    """A v1-layout file with every manifest key (random values, module. prefix) loads strictly into our modules."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape, dtype in manifests["gesturelsm_v1"]["state_dict"]:
        sd[k] = (torch.randint(0, 5, shape, generator=g) if dtype == "int64"
                 else torch.randn(shape, generator=g, dtype=torch.float32))
    path = save_torch({"model_state": sd}, tmp_path / "new_540_shortcut.bin")
    model = Container(ModalityEncoder(vocab_size=11195), GestureDenoiser())
    report = load_generator_checkpoint(model, path)
    assert report.layout == "v1" and report.had_prefix and report.n_tensors == len(sd) and not report.dropped
    ours = model.state_dict()
    for k in ("modality_encoder.text_pre_encoder_body.weight", "denoiser.null_cond_embed",
              "denoiser.mytimmblocks.7.spatial_temporal_attn.temporal_attention.in_proj_weight",
              "modality_encoder.WavEncoder.feat_extractor.0.bn1.num_batches_tracked"):
        assert torch.equal(ours[k], sd["module." + k]), k


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_round_trip_upstream_layouts(tmp_path, layout):
    src = _small_container(seed=1).eval()
    with torch.no_grad():
        src.denoiser.null_cond_embed.normal_()
    path = export_upstream_checkpoint(src, tmp_path / f"ckpt_{layout}.bin", layout=layout, epoch=540)
    raw = torch.load(path, weights_only=True)
    key = "model_state" if layout == "v1" else "model_state_dict"
    assert set(raw) >= {key} and all(k.startswith("module.") for k in raw[key])
    dst = _small_container(seed=2).eval()
    report = load_generator_checkpoint(dst, path)
    assert report.layout == layout and report.had_prefix
    if layout == "v2":
        assert report.meta["epoch"] == 540
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    audio, word = torch.rand(1, 68266, 2), torch.randint(0, 20, (1, 128))
    x, seed = torch.randn(1, 384, 1, 32), torch.randn(1, 4, 384)
    with torch.no_grad():
        outs = [m.denoiser(x, 0.3, 0.5, seed, m.modality_encoder(audio, word)) for m in (src, dst)]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_raw_state_dict_without_prefix_loads_and_audio_encoder_keys_are_reported():
    src = _small_container(seed=3)
    sd = dict(src.state_dict())
    sd["modality_encoder.audio_encoder.proj.weight"] = torch.zeros(2, 2)  # dropped by the documented key map
    dst = _small_container(seed=4)
    report = load_state_dict_strict(dst, sd)
    assert report.layout == "raw" and not report.had_prefix
    assert report.dropped == ["modality_encoder.audio_encoder.proj.weight"]
    assert torch.equal(dst.denoiser.embed_text.weight, src.denoiser.embed_text.weight)


def test_mismatches_raise_with_key_lists(tmp_path):
    model = _small_container()
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    missing = dict(sd)
    del missing["module.denoiser.null_cond_embed"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*denoiser\.null_cond_embed"):
        load_state_dict_strict(model, {"model_state": missing})
    extra = dict(sd, **{"module.denoiser.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\).*denoiser\.extra\.weight"):
        load_state_dict_strict(model, {"model_state_dict": extra})
    wrong = dict(sd, **{"module.denoiser.embed_text.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\).*embed_text\.weight: checkpoint \(3, 3\)"):
        load_state_dict_strict(model, {"model_state": wrong})
    mixed = dict(sd)
    mixed["denoiser.null_cond_embed"] = mixed.pop("module.denoiser.null_cond_embed")
    with pytest.raises(CheckpointError, match="carry 'module.'"):
        load_state_dict_strict(model, {"model_state": mixed})
    with pytest.raises(CheckpointError, match="top-level keys"):
        load_state_dict_strict(model, {"net": sd, "epoch": 3})
    with pytest.raises(FileNotFoundError):
        load_generator_checkpoint(model, tmp_path / "absent.bin")


def test_clean_variants_share_the_key_list():
    ref = set(_small_container().state_dict())
    clean = set(_small_container(cross_attn_layout="per_frame", joint_residual="clean").state_dict())
    assert ref == clean


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_unreadable_checkpoints_are_clear_errors(tmp_path):
    from utils.io import CheckpointReadError, load_torch, save_torch

    good = save_torch({"model": {"w": torch.zeros(64, 64)}, "epoch": 1}, tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    marker = tmp_path / "marker.txt"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pt")
    for name, match in (("half.pt", "truncated or another format"), ("empty.pt", "empty file"),
                        ("text.pt", "weights-only load refuses"), ("evil.pt", "weights-only load refuses")):
        with pytest.raises(CheckpointReadError, match=rf"{name}: .*{match}"):
            load_torch(tmp_path / name)
    assert not marker.exists()
    assert load_torch(good)["epoch"] == 1
