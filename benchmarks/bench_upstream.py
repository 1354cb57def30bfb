"""Side by side with the upstream GestureLSM code: the same work timed on its networks and on ours, in one process.

    python -m benchmarks.bench_upstream --upstream /path/to/GestureLSM [--rows gen_train_shortcut rvq_train_upper ...]
                                        [--batch 8] [--iters 5] [--threads 2] [--device cpu] [--out up.json]

You give the path of an upstream checkout (v2, the code the fixtures in `../shared/fixtures/upstream_compat` were made
with); nothing of it is copied here. This runs code from that checkout: give only one you trust. Its modules are
imported from that path into a separate namespace (every top-level name of either tree, e.g. its `models`, `utils`,
`dataloaders`, never replaces ours in `sys.modules`) and built at the official full size with the constructor
arguments the upstream compatibility fixtures record:

* `models.layers.modality_encoder.ModalityEncoder(data_path=..., audio_dim=256, ...)`: it reads the word table from
  `<data_path>weights/vocab.pkl`, so a stand-in (an 11195 x 300 table in a `types.SimpleNamespace`, written by this
  script into a temporary folder) is given; a vocab.pkl in the checkout is never read;
* `models.denoiser.GestureDenoiser(**params)`, called as `denoiser(x, t, d, seed, at_feat)`;
* `models.vq.model.RVQVAE(args, input_width, nb_code, ...)`, called as `rvq(x) -> (rec, commit, perplexity)`.

**Equal work, proved before timing:** our seeded weights are loaded into the upstream modules (every one of our keys
must be used) and, in eval mode, both must give the same outputs (max |difference| <= `--tol` relative to the output
scale); otherwise the script stops. Each row then drives both implementations with the *same* training objective and
sampler code (ours) and the same inputs, timed alternately (the order flipped every iteration), medians of
`--iters`. Limits: the proof is in eval mode; in training mode each side draws its own random choices (dropout
masks, quantize dropout; upstream re-initialises its RVQ codebook from the first batch, during the warm-up call),
from the same torch seed where its code uses torch's RNG. The separate namespace holds while upstream's modules
are imported; an upstream function that imports at call time would see ours. So a row compares the network
implementations (and what our generator does around them, e.g. the per-window condition cache, which upstream's
modules do not use); upstream's own `train_forward`, Euler loop and trainer are not timed. On CPU,
`torch.Tensor.cuda`/`nn.Module.cuda` are the identity while upstream code is built and run (it moves its RVQ
codebook with `Tensor.cuda`), as for the fixtures; with `--device cuda` its `Tensor.cuda` calls go to the current
CUDA device, so use the default one. A missing `fasttext` (imported, unused) gets an empty stand-in module.

Rows: gen_train_shortcut, gen_train_ddim (loss + backward, batch --batch), sample_shortcut (one window, 2 steps,
w = 2), sample_ddim (one window, 20 steps, w = 1.5), rvq_train_upper (RVQ-VAE upper step, batch 32 x 64, AdamW,
SmoothL1 + 0.02 commit). ratio = upstream seconds / ours (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import pickle
import statistics
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_generators import _inputs as generator_inputs  # noqa: E402
from benchmarks.bench_generators import _timed as timed  # noqa: E402
from benchmarks.bench_rvq import rvq_train_step  # noqa: E402
from models.generators import build_generator  # noqa: E402
from models.vq.rvqvae import RVQVAE  # noqa: E402
from utils.io import save_json  # noqa: E402
from utils.runs import library_versions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VOCAB_ROWS, WORD_DIM = 11195, 300
DENOISER = {"input_dim": 128, "latent_dim": 256, "ff_size": 1024, "num_layers": 8, "num_heads": 4, "dropout": 0.1,
            "activation": "gelu", "n_seed": 8, "seq_len": 32, "flip_sin_to_cos": True, "freq_shift": 0.0,
            "cond_proj_dim": 256, "use_exp": False}  # fmt: skip  (spec §1.4, configs_new/shortcut_rvqvae_128.yaml)
ENCODER = {"t_fix_pre": False, "audio_dim": 256, "audio_in": 2, "raw_audio": False, "latent_dim": 256,
           "audio_fps": 30, "target_length": 128, "spatial_temporal": True, "use_exp": False}  # fmt: skip
RVQ = {"nb_code": 1024, "code_dim": 128, "output_emb_width": 128, "down_t": 2, "stride_t": 2, "width": 512,
       "depth": 3, "dilation_growth_rate": 3, "activation": "relu", "norm": None}  # fmt: skip
RVQ_ARGS = {"num_quantizers": 6, "shared_codebook": False, "quantize_dropout_prob": 0.2,
            "quantize_dropout_cutoff_index": 0, "mu": 0.99, "beta": 1.0}  # fmt: skip
ROWS = ("gen_train_shortcut", "gen_train_ddim", "sample_shortcut", "sample_ddim", "rvq_train_upper")
UPPER_DIM = 78


def top_level_names(root: Path) -> set[str]:
    """Names `import X` could find at the top of a source tree: folders (packages, namespace ones too) and modules."""
    return {p.stem if p.suffix == ".py" else p.name for p in root.iterdir()
            if not p.name.startswith((".", "_")) and (p.is_dir() or p.suffix == ".py")}  # fmt: skip


class UpstreamError(RuntimeError):
    """The upstream checkout is missing, incomplete, or its modules do not do the same work as ours."""


class UpstreamTree:
    """Imports from an upstream checkout without letting its top-level packages replace ours in ``sys.modules``."""

    REQUIRED = ("models/denoiser.py", "models/layers/modality_encoder.py", "models/vq/model.py")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        missing = [p for p in self.REQUIRED if not (self.root / p).is_file()]
        if missing:
            raise UpstreamError(f"{self.root} is not an upstream GestureLSM v2 checkout: missing {missing}")
        self._modules: dict[str, types.ModuleType] = {}
        # every top-level name either tree could import as its own is kept apart in sys.modules
        self.names = frozenset(top_level_names(self.root) | top_level_names(REPO))

    def _shared(self, name: str) -> bool:
        return name.split(".")[0] in self.names

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside: `import models...` resolves in the checkout; outside, ours are back untouched."""
        ours = {k: m for k, m in sys.modules.items() if self._shared(k)}
        stub_fasttext = "fasttext" not in sys.modules and importlib.util.find_spec("fasttext") is None
        sys.path.insert(0, str(self.root))
        try:
            for k in ours:
                del sys.modules[k]
            sys.modules.update(self._modules)
            if stub_fasttext:  # upstream imports it at module level but never calls it in these modules
                sys.modules["fasttext"] = types.ModuleType("fasttext")
            yield
        finally:
            sys.path.remove(str(self.root))
            self._modules = {k: m for k, m in sys.modules.items() if self._shared(k)}
            for k in self._modules:
                del sys.modules[k]
            sys.modules.update(ours)
            if stub_fasttext:
                del sys.modules["fasttext"]

    def load(self, dotted: str) -> Any:
        module, _, name = dotted.rpartition(".")
        with self.active():
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as e:
                raise UpstreamError(f"could not import {dotted} from {self.root}: {e!r} (install what it needs, "
                                    "e.g. its requirements.txt, in this environment)") from e  # fmt: skip


@contextlib.contextmanager
def cuda_is_identity(active: bool) -> Iterator[None]:
    """Upstream calls `Tensor.cuda` unconditionally in places; on CPU it must stay where it is (as for the fixtures)."""
    if not active:
        yield
        return
    saved = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved  # type: ignore[method-assign]


def write_vocab_standin(folder: Path, rows: int = VOCAB_ROWS, dim: int = WORD_DIM) -> str:
    """`<folder>/weights/vocab.pkl` holding only the attribute upstream's ModalityEncoder reads; returns data_path."""
    table = np.random.default_rng(7).normal(0.0, dim**-0.5, (rows, dim)).astype(np.float32)
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    vocab = types.SimpleNamespace(word_embedding_weights=table, n_words=rows)
    (folder / "weights" / "vocab.pkl").write_bytes(pickle.dumps(vocab))
    return str(folder) + "/"


def transfer(ours: nn.Module, theirs: nn.Module, name: str) -> list[str]:
    """Load our state dict into the upstream module; every key of ours must land. Returns upstream-only keys."""
    try:
        res = theirs.load_state_dict(ours.state_dict(), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise UpstreamError(f"{name}: our weights do not fit the upstream module (not equal work): {e}") from e
    if res.unexpected_keys:
        raise UpstreamError(f"{name}: upstream has no place for our keys {res.unexpected_keys[:8]} (not equal work)")
    return list(res.missing_keys)


def check_same(a: torch.Tensor, b: torch.Tensor, name: str, tol: float) -> float:
    """Max |a − b| relative to a's scale; stops unless <= tol."""
    if a.shape != b.shape:
        raise UpstreamError(f"{name}: output shapes differ, ours {tuple(a.shape)} vs upstream {tuple(b.shape)}")
    rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    if not rel <= tol:
        raise UpstreamError(f"{name}: outputs differ by {rel:.3g} of their scale (> {tol}): not equal work")
    return rel


def timed_pair(fa: Callable[[], Any], fb: Callable[[], Any], iters: int, device: torch.device) -> tuple[float, float]:
    """Medians of fa and fb timed alternately, the order flipped every iteration (one warm-up call each)."""
    fa(), fb()
    times: dict[Callable[[], Any], list[float]] = {fa: [], fb: []}
    for i in range(iters):  # a, b, then b, a: neither side always runs right after the other
        for f in ((fb, fa) if i % 2 else (fa, fb)):
            times[f].append(timed(f, device))
    return statistics.median(times[fa]), statistics.median(times[fb])


def _inputs(b: int, device: torch.device) -> dict[str, torch.Tensor]:
    """bench_generators' inputs: a 128-frame window's audio and words, latents and a noise draw."""
    return dict(zip(("audio", "word", "latents", "noise"), generator_inputs(b, device), strict=True))


def build_pair(tree: UpstreamTree, device: torch.device, tol: float, workdir: Path) -> dict[str, Any]:
    """Ours and the twins (our generator code around upstream's networks), with the equal-work checks."""
    enc_cls = tree.load("models.layers.modality_encoder.ModalityEncoder")
    den_cls = tree.load("models.denoiser.GestureDenoiser")
    rvq_cls = tree.load("models.vq.model.RVQVAE")
    node = {"target": "models.modality_encoder.ModalityEncoder", "params": {"vocab_size": VOCAB_ROWS}}
    den_node = {"target": "models.denoiser.GestureDenoiser", "params": {}}
    ours, twins, report = {}, {}, {"upstream_only_keys": {}, "max_rel_diff": {}}
    with cuda_is_identity(device.type == "cpu"), tree.active():
        torch.manual_seed(0)
        up_enc = enc_cls(data_path=write_vocab_standin(workdir), **ENCODER)
        up_den = den_cls(**DENOISER)
        up_rvq = rvq_cls(types.SimpleNamespace(**RVQ_ARGS), UPPER_DIM, **RVQ)
    for name in ("shortcut", "diffusion"):
        torch.manual_seed(0)
        ours[name] = build_generator({"name": name, "params": {"modality_encoder": node, "denoiser": den_node}})
    report["upstream_only_keys"]["modality_encoder"] = transfer(ours["shortcut"].modality_encoder, up_enc, "encoder")
    report["upstream_only_keys"]["denoiser"] = transfer(ours["shortcut"].denoiser, up_den, "denoiser")
    for name in ("shortcut", "diffusion"):
        ours[name].load_state_dict(ours["shortcut"].state_dict())
        twin = copy.deepcopy(ours[name])
        twin.modality_encoder, twin.denoiser = copy.deepcopy(up_enc), copy.deepcopy(up_den)
        ours[name], twins[name] = ours[name].to(device).eval(), twin.to(device).eval()
    torch.manual_seed(0)
    ours["rvq"] = RVQVAE(UPPER_DIM)
    g = torch.Generator().manual_seed(77)
    with torch.no_grad():  # codebooks start as zeros: fill them, or the check would see only the decoder
        sd = {k: (0.2 * torch.randn(v.shape, generator=g) if k.endswith("codebook") else v)
              for k, v in ours["rvq"].state_dict().items()}  # fmt: skip
    ours["rvq"].load_state_dict(sd)  # a loaded codebook counts as trained (no re-initialisation from a batch)
    report["upstream_only_keys"]["rvq_upper"] = transfer(ours["rvq"], up_rvq, "rvq_upper")
    ours["rvq"], twins["rvq"] = ours["rvq"].to(device).eval(), up_rvq.to(device).eval()

    x = _inputs(2, device)
    with torch.no_grad(), cuda_is_identity(device.type == "cpu"):
        at = ours["shortcut"].encode(x["audio"], x["word"])
        report["max_rel_diff"]["modality_encoder"] = check_same(
            at, twins["shortcut"].encode(x["audio"], x["word"]), "modality_encoder", tol)
        t, d, seed = torch.rand(2, device=device), torch.full((2,), 0.5, device=device), x["latents"][:, :4]
        mine, theirs = (g["shortcut"].denoiser(x["noise"], t, d, seed, at) for g in (ours, twins))
        report["max_rel_diff"]["denoiser"] = check_same(mine, theirs, "denoiser", tol)
        motion = torch.randn(2, 64, UPPER_DIM, device=device)
        report["max_rel_diff"]["rvq_upper"] = check_same(ours["rvq"](motion)[0], twins["rvq"](motion)[0], "rvq", tol)
    return {"ours": ours, "twins": twins, "report": report}


def _train_step(gen: nn.Module, x: dict[str, torch.Tensor]) -> Callable[[], None]:
    def f() -> None:
        torch.manual_seed(1)  # the objective's draws (t, d, dropout masks) are the same for both sides
        gen.train()
        gen.zero_grad(set_to_none=True)
        out = gen.loss(x["latents"], x["audio"], x["word"], x["latents"][:, :4], noise=x["noise"])
        out["loss"].backward()

    return f


def _sample(gen: nn.Module, x: dict[str, torch.Tensor], at: torch.Tensor, steps: int, w: float) -> Callable[[], None]:
    def f() -> None:
        gen.eval()
        gen.sample_with_stats(None, None, x["latents"][:1, :4], n_steps=steps, guidance=w, noise=x["noise"][:1],
                              at_feat=at)  # fmt: skip

    return f


def _rvq_step(model: nn.Module, motion: torch.Tensor) -> Callable[[], None]:
    step = rvq_train_step(model, motion)

    def f() -> None:
        torch.manual_seed(1)  # quantize dropout and Gumbel draws from the same seed on both sides
        step()

    return f


def row_functions(row: str, ours: dict, twins: dict, x: dict[str, torch.Tensor]
                  ) -> tuple[Callable[[], None], Callable[[], None]]:  # fmt: skip
    """(ours, upstream) callables doing one row's work."""
    if row in ("gen_train_shortcut", "gen_train_ddim"):
        name = "shortcut" if row == "gen_train_shortcut" else "diffusion"
        return _train_step(ours[name], x), _train_step(twins[name], x)
    if row in ("sample_shortcut", "sample_ddim"):
        name, steps, w = ("shortcut", 2, 2.0) if row == "sample_shortcut" else ("diffusion", 20, 1.5)
        with torch.no_grad():
            at = ours[name].eval().encode(x["audio"][:1], x["word"][:1])
        return _sample(ours[name], x, at, steps, w), _sample(twins[name], x, at, steps, w)
    if row == "rvq_train_upper":
        motion = torch.randn(32, 64, UPPER_DIM, generator=torch.Generator().manual_seed(3)).to(x["audio"].device)
        return _rvq_step(ours["rvq"], motion), _rvq_step(twins["rvq"], motion)
    raise ValueError(f"unknown row {row!r}; known: {ROWS}")


def run_rows(pair: dict[str, Any], rows: list[str], batch: int, iters: int, device: torch.device) -> dict[str, Any]:
    x = _inputs(batch, device)
    out: dict[str, Any] = {}
    for row in rows:
        fa, fb = row_functions(row, pair["ours"], pair["twins"], x)
        with cuda_is_identity(device.type == "cpu"):
            ours_s, up_s = timed_pair(fa, fb, iters, device)
        out[row] = {"ours_s": ours_s, "upstream_s": up_s, "ratio": up_s / ours_s}
        print(f"{row:20s} ours {ours_s:8.4f} s   upstream {up_s:8.4f} s   upstream/ours {up_s / ours_s:5.2f}x",
              flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="path of an upstream GestureLSM (v2) checkout")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--batch", type=int, default=8, help="generator train-step batch")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per side (medians)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tol", type=float, default=1e-4, help="equal-work check: max |difference| / output scale")
    ap.add_argument("--out", default=None, help="json (written atomically)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tree = UpstreamTree(args.upstream)
    with tempfile.TemporaryDirectory() as tmp:
        pair = build_pair(tree, device, args.tol, Path(tmp))
    result = {"upstream": str(tree.root), "device": str(device), "threads": torch.get_num_threads(),
              "batch": args.batch, "iters": args.iters, "versions": library_versions(), **pair["report"],
              "rows": run_rows(pair, args.rows, args.batch, args.iters, device)}  # fmt: skip
    if args.out:
        save_json(result, args.out)
    return result


if __name__ == "__main__":
    try:
        main()
    except UpstreamError as e:
        sys.exit(f"bench_upstream: {e}")
