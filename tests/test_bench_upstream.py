"""benchmarks/bench_upstream.py on a stand-in upstream checkout: a copy of our own `models`/`utils`/`geometry` packages
with upstream's module paths and constructor signatures added, so it computes what ours computes under the same
top-level package names. Checked: the namespaces stay apart, the equal-work check passes only for equal outputs,
`.cuda()` in upstream code is harmless on CPU, a bad checkout is refused by name, and the json is written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_upstream as bu

REPO = Path(__file__).resolve().parent.parent

ENCODER_ADAPTER = '''
import pickle
from models.modality_encoder import ModalityEncoder as _Ours

class ModalityEncoder(_Ours):
    """upstream's signature: the word table from <data_path>weights/vocab.pkl"""
    def __init__(self, data_path, t_fix_pre, audio_dim, audio_in, raw_audio, latent_dim, audio_fps, target_length,
                 spatial_temporal, use_exp=False):
        with open(data_path + "weights/vocab.pkl", "rb") as f:
            vocab = pickle.load(f)
        super().__init__(word_weights=vocab.word_embedding_weights, t_fix_pre=t_fix_pre, audio_dim=audio_dim,
                         audio_in=audio_in, raw_audio=raw_audio, latent_dim=latent_dim, audio_fps=audio_fps,
                         target_length=target_length, spatial_temporal=spatial_temporal, use_exp=use_exp)
'''
RVQ_ADAPTER = '''
import torch
from models.vq.rvqvae import RVQVAE as _Ours

class RVQVAE(_Ours):
    """upstream's signature (args namespace first); like upstream it calls .cuda() while building"""
    def __init__(self, args, input_width, nb_code, code_dim, output_emb_width, down_t, stride_t, width, depth,
                 dilation_growth_rate, activation, norm):
        super().__init__(input_width, nb_code=nb_code, code_dim=code_dim, width=width, down_t=down_t,
                         stride_t=stride_t, depth=depth, dilation_growth_rate=dilation_growth_rate,
                         activation=activation, norm=norm, num_quantizers=args.num_quantizers,
                         quantize_dropout_prob=args.quantize_dropout_prob, mu=args.mu)
        self.cuda()
        torch.zeros(1).cuda()
'''


def make_standin(root: Path, denoiser_suffix: str = "") -> Path:
    up = root / "GestureLSM"
    for pkg in ("models", "utils", "geometry"):
        shutil.copytree(REPO / pkg, up / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(up / "models" / "__init__.py", "a") as f:
        f.write("\nUPSTREAM_STANDIN = True\n")
    (up / "models" / "layers" / "modality_encoder.py").write_text(ENCODER_ADAPTER)
    (up / "models" / "vq" / "model.py").write_text(RVQ_ADAPTER)
    if denoiser_suffix:
        with open(up / "models" / "denoiser.py", "a") as f:
            f.write(denoiser_suffix)
    return up


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin(tmp_path_factory.mktemp("upstream"))


def test_side_by_side_on_a_standin_keeps_namespaces_apart(standin, tmp_path):
    ours_models = sys.modules["models"]
    threads = torch.get_num_threads()
    out = tmp_path / "up.json"
    try:
        res = bu.main(["--upstream", str(standin), "--rows", "sample_shortcut", "rvq_train_upper", "--iters", "1",
                       "--batch", "2", "--threads", "1", "--out", str(out)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert sys.modules["models"] is ours_models and not hasattr(ours_models, "UPSTREAM_STANDIN")
    assert sys.modules.get("fasttext") is None or sys.modules["fasttext"].__spec__ is not None  # no stub left
    # the same code on both sides: bit-identical outputs, and every key of ours has its place
    assert res["max_rel_diff"] == {"modality_encoder": 0.0, "denoiser": 0.0, "rvq_upper": 0.0}
    assert res["upstream_only_keys"] == {"modality_encoder": [], "denoiser": [], "rvq_upper": []}
    assert set(res["rows"]) == {"sample_shortcut", "rvq_train_upper"}
    assert json.loads(out.read_text())["rows"] == res["rows"]


def test_standin_classes_come_from_the_checkout(standin):
    tree = bu.UpstreamTree(standin)
    enc = tree.load("models.layers.modality_encoder.ModalityEncoder")
    assert sys.modules[enc.__module__.split(".")[0]] is not tree._modules["models"]  # ours is back in sys.modules
    assert tree._modules["models"].UPSTREAM_STANDIN is True
    base = enc.__mro__[1].__module__  # "models.modality_encoder": the checkout's copy, not ours
    assert Path(tree._modules[base].__file__).is_relative_to(standin)
    mine = Path(sys.modules[base].__file__)
    assert mine.is_relative_to(REPO) and not mine.is_relative_to(standin)


def test_unequal_work_is_refused(tmp_path):
    scaled = ("\n_fwd = GestureDenoiser.forward\n"
              "GestureDenoiser.forward = lambda self, *a, **k: 1.01 * _fwd(self, *a, **k)\n")  # fmt: skip
    up = make_standin(tmp_path, denoiser_suffix=scaled)
    with pytest.raises(bu.UpstreamError, match=r"denoiser: outputs differ by 0.01 of their scale"):
        bu.main(["--upstream", str(up), "--rows", "sample_shortcut", "--iters", "1", "--threads", "1"])


def test_missing_checkout_files_are_named(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "denoiser.py").write_text("")
    missing = r"missing \['models/layers/modality_encoder.py', 'models/vq/model.py'\]"
    with pytest.raises(bu.UpstreamError, match=missing):
        bu.UpstreamTree(tmp_path)


def test_cuda_shim_is_restored():
    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    with bu.cuda_is_identity(True):
        t, m = torch.zeros(2), torch.nn.Linear(1, 1)
        assert t.cuda() is t and m.cuda() is m
    assert (torch.Tensor.cuda, torch.nn.Module.cuda) == saved


def test_weights_that_do_not_fit_are_refused():
    with pytest.raises(bu.UpstreamError, match="our weights do not fit"):
        bu.transfer(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3), "lin")
    with pytest.raises(bu.UpstreamError, match=r"no place for our keys \['1.weight', '1.bias'\]"):
        bu.transfer(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)),
                    torch.nn.Sequential(torch.nn.Linear(2, 2)), "seq")  # fmt: skip
    extra = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert bu.transfer(torch.nn.Sequential(torch.nn.Linear(2, 2)), extra, "seq") == ["1.weight", "1.bias"]


def test_a_failing_activation_puts_our_modules_back(standin, monkeypatch):
    """Whatever goes wrong inside, ours are back in sys.modules (a spec-less fasttext stub made find_spec raise)."""
    ours = sys.modules["models"]
    monkeypatch.delitem(sys.modules, "fasttext", raising=False)
    tree = bu.UpstreamTree(standin)
    with pytest.raises(ZeroDivisionError), tree.active():
        assert sys.modules.get("models") is not ours
        raise ZeroDivisionError
    assert sys.modules["models"] is ours
    with tree.active(), tree.active():  # nested: the inner one must not trip over the outer one's stub
        pass
    assert sys.modules["models"] is ours and "models" in tree.names and "dataloaders" in tree.names
