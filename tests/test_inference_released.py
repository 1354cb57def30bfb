"""configs/released_v2.yaml with released-format files written from the upstream fixture weights
(../shared/fixtures/upstream_compat/trainer_windowed_small_v2.npz): a v2 ``ckpt.pth`` and a v1 ``.bin`` generator,
``net_300000_*.pth`` RVQ-VAEs, an upstream-style ``vocab.pkl`` and the speaker-2 statistics files in a folder named
by GESTURELSM_CKPT. Loaded the way ``gesture_inference.py`` loads them, the model reproduces the upstream windowed
latents, and the CLI runs on the fixture's audio without ground truth."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.model_source import load_model, resolve_model_source
from inference.windowed import WindowOptions, generate_windowed
from models.checkpoints import export_upstream_checkpoint
from tests.conftest import FIXTURES, need
from utils.io import save_torch

# the fixture's reduced sizes (ctor_json); everything else is the released architecture of the config
SMALL = ["modality_encoder.params.audio_dim=32", "modality_encoder.params.latent_dim=32",
         "denoiser.params.latent_dim=32", "denoiser.params.ff_size=64", "denoiser.params.num_layers=2",
         "denoiser.params.cond_proj_dim=32"]  # fmt: skip
VQ = {"upper": "vq_upper", "hands": "vq_hands", "lower": "vq_lower"}


def _upstream_vocab_pkl(path: Path, n_words: int, weights: np.ndarray) -> None:
    """A pickle shaped like upstream's ``dataloaders.build_vocab.Vocab`` (a stand-in class registered only while
    pickling; the converter never imports it)."""
    mod = types.ModuleType("dataloaders.build_vocab")

    class Vocab:
        pass

    Vocab.__module__, Vocab.__qualname__ = mod.__name__, "Vocab"
    mod.Vocab = Vocab
    v = Vocab()
    v.name, v.n_words = "words", n_words
    v.index2word = {i: ("<pad>", "<sos>", "<eos>", "<unk>")[i] if i < 4 else f"w{i}" for i in range(n_words)}
    v.word2index = {w: i for i, w in v.index2word.items()}
    v.word_embedding_weights = weights
    sys.modules[mod.__name__] = mod
    try:
        path.write_bytes(pickle.dumps(v))
    finally:
        del sys.modules[mod.__name__]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    d = np.load(need(FIXTURES / "trainer_windowed_small_v2.npz"))
    folder = tmp_path_factory.mktemp("released")
    for part, prefix in VQ.items():
        sd = {k[len(prefix) + 1 :]: torch.from_numpy(d[k]) for k in d.files if k.startswith(prefix + "/")}
        save_torch({"net": sd}, folder / f"net_300000_{part}.pth")
    for name, key in (("beatx_2_330_mean", "mean_330"), ("beatx_2_330_std", "std_330"),
                      ("beatx_2_trans_mean", "trans_mean"), ("beatx_2_trans_std", "trans_std")):  # fmt: skip
        np.save(folder / f"{name}.npy", np.asarray(d[key]))
    np.save(folder / "mean_vel_smplxflame_30.npy", np.ones(55, np.float32))
    sd = {k[3:]: torch.from_numpy(d[k]) for k in d.files if k.startswith("sd/")}
    table = sd["modality_encoder.text_pre_encoder_body.weight"].numpy()
    _upstream_vocab_pkl(folder / "vocab.pkl", table.shape[0], table)
    from models.generators import build_generator
    from models.generators.upstream import generator_node_from_upstream

    ctor = json.loads(str(d["ctor_json"]))
    gen = build_generator(generator_node_from_upstream(ctor["generator"]["model_cfg"], vocab_size=table.shape[0]))
    gen.load_state_dict(sd, strict=True)
    export_upstream_checkpoint(gen, folder / "ckpt.pth", layout="v2")
    export_upstream_checkpoint(gen, folder / "new_540_shortcut.bin", layout="v1")
    export_upstream_checkpoint(gen, folder / "shortcut_reflow.bin", layout="v1")  # same layout and sampler (2 steps)
    return {"dir": folder, "d": d}


def _load(released, monkeypatch, tmp_path, *extra, config: str = "configs/released_v2.yaml"):
    monkeypatch.setenv("GESTURELSM_CKPT", str(released["dir"]))
    over = [*SMALL, f"data.cache_dir={tmp_path / 'cache'}", *extra]
    return load_model(resolve_model_source(None, config, over), "cpu")


@pytest.mark.parametrize(("config", "init"), [("released_v2", "ckpt.pth"), ("released_v2", "new_540_shortcut.bin"),
                                              ("shortcut_reflow_test", None)])  # fmt: skip
def test_released_files_reproduce_the_upstream_windowed_latents(released, monkeypatch, tmp_path, config, init):
    d = released["d"]
    extra = [f"model.init_from={released['dir'] / init}"] if init else []
    lm = _load(released, monkeypatch, tmp_path, *extra, config=f"configs/{config}.yaml")
    assert lm.source.kind == "released" and lm.source.checkpoint.name == (init or "shortcut_reflow.bin")
    if config == "shortcut_reflow_test":  # the seed's released 2-step model, by its own config
        assert type(lm.model).__name__ == "ReflowGenerator"
        assert lm.model.sampler.settings()["n_steps"] == 2 and lm.model.sampler.settings()["guidance"] == 2.0
    assert lm.vocab.n_words == 64 and (tmp_path / "cache").is_dir()  # vocab.pkl converted, not unpickled
    assert lm.cfg.data.onset_mode == "reference" and lm.opts.audio_indexing == "reference"
    pose = torch.from_numpy(d["in_pose"])
    torch.manual_seed(777)  # upstream's global-RNG draw order
    out = generate_windowed(lm.model, lm.codec, torch.from_numpy(d["in_audio_onset"]),
                            torch.from_numpy(d["in_word"]).long(), pose, torch.from_numpy(d["in_trans_v"]),
                            opts=WindowOptions(drop_tail=True, seed_from_gt=True), jaw=pose[..., 66:69],
                            record=True)  # fmt: skip
    assert out.n_windows == 3
    for i, w in enumerate(out.windows):
        np.testing.assert_allclose(w["latents"].numpy(), d[f"win{i}_latents"], rtol=1e-4, atol=3e-5)


def test_cli_runs_the_released_config_on_user_audio(released, monkeypatch, tmp_path, capsys):
    from inference.cli import main

    monkeypatch.setenv("GESTURELSM_CKPT", str(released["dir"]))
    wav = need(FIXTURES / "audio_excerpt_2_scott_0_2_2_5s_17s.wav")
    out = tmp_path / "out"
    argv = ["--config", "configs/released_v2.yaml", "--audio", str(wav), "--out", str(out), "-q"]
    for o in [*SMALL, f"data.cache_dir={tmp_path / 'cache'}"]:
        argv += ["--set", o]
    assert main(argv) == 0, capsys.readouterr().err
    npz = np.load(out / f"{wav.stem}.npz")
    assert npz["poses"].shape == (360, 165) and np.all(np.isfinite(npz["poses"]))
    m = json.loads((out / f"{wav.stem}.json").read_text())
    assert m["checkpoint"]["kind"] == "released" and m["checkpoint"]["path"].endswith("new_540_shortcut.bin")
    assert m["sampler"]["n_steps"] == 2 and m["sampler"]["guidance"] == 2.0
    # a released file given as --ckpt without the config is refused with the config's name
    capsys.readouterr()
    assert main(["--ckpt", str(released["dir"] / "ckpt.pth"), "--audio", str(wav), "--out", str(out), "-q"]) == 2
    assert "configs/released_v2.yaml" in capsys.readouterr().err


def test_missing_released_files_name_the_variable(monkeypatch, tmp_path, capsys):
    from inference.cli import main

    monkeypatch.setenv("GESTURELSM_CKPT", str(tmp_path / "empty"))
    wav = need(FIXTURES / "audio_excerpt_2_scott_0_2_2_5s_17s.wav")
    assert main(["--config", "configs/released_v2.yaml", "--audio", str(wav), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "new_540_shortcut.bin not found" in err and "GESTURELSM_CKPT" in err
    assert not any((tmp_path / "o").iterdir())
