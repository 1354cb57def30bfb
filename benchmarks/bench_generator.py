"""Generator training-step time (RVQ encode + loss + backward + Adam step) and long-sequence inference speed.

    python -m benchmarks.bench_generator [--batch 128] [--iters 2] [--seconds 60] [--nfe 1,2,4]
                                         [--device auto|cpu|cuda] [--bf16] [--skip-train] [--out results.json]

Full-size networks from configs/shortcut_rvqvae_128.yaml and configs/diffuser_rvqvae_128.yaml (denoiser 256-D, 8+3
blocks; modality encoder 256-D, 11195-word table) and full-size RVQ-VAEs (width 512, 1024 codes x 6), all with random
weights (speed does not depend on them). Inference: a synthetic --seconds audio file -> onset+amplitude features ->
windowed generation (128-frame windows, hop 112, seed_from_gt false) -> RVQ decode -> axis-angle -> joints FK, per NFE
setting (shortcut n_steps in --nfe, CFG w=2 doubles the batch; DDIM 20 steps w=1.5). Real-time factor = wall time /
motion seconds (< 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch

from geometry.skeleton import part_dim
from inference.windowed import WindowOptions, generate_windowed
from models.generators import build_generator
from models.motion_codec import MotionCodec
from models.vq.rvqvae import RVQVAE
from utils.config import load_config, to_container
from utils.device import get_device, seed_everything
from utils.io import save_json

CONFIGS = {"shortcut": "configs/shortcut_rvqvae_128.yaml", "diffusion": "configs/diffuser_rvqvae_128.yaml"}
VOCAB = 11195


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(kind: str, device: torch.device):
    cfg = load_config(CONFIGS[kind])
    node = to_container(cfg.model.generator)
    node["params"]["modality_encoder"]["params"]["vocab_size"] = VOCAB
    return build_generator(node).to(device)


def build_codec(device: torch.device) -> MotionCodec:
    vqs = {}
    for p in ("upper", "hands", "lower_trans"):
        m = RVQVAE(part_dim(p))
        with torch.no_grad():
            for layer in m.quantizer.layers:
                layer.codebook.normal_()
        vqs[p] = m
    return MotionCodec(vqs, np.zeros(330), np.ones(330), np.zeros(3), np.ones(3)).to(device)


def bench_train(kind: str, codec: MotionCodec, batch: int, iters: int, device: torch.device, bf16: bool) -> dict:
    gen = build(kind, device).train()
    opt = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    pose = 0.3 * torch.randn(batch, 128, 165, device=device)
    tv = 0.01 * torch.randn(batch, 128, 3, device=device)
    audio = torch.rand(batch, 68266, 2, device=device)
    word = torch.randint(0, VOCAB, (batch, 128), device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    for i in range(iters + 1):  # the first one is warm-up
        _sync(device)
        t0 = time.perf_counter()
        z = codec.encode(pose, tv)
        with ctx:
            loss = gen.loss(z, audio, word, z[:, :4])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
    return {"generator": kind, "batch": batch, "sec_per_step_median": statistics.median(times), "steps": iters}


@torch.no_grad()
def bench_inference(kind: str, codec: MotionCodec, seconds: float, n_steps: int, device: torch.device) -> dict:
    gen = build(kind, device).eval()
    try:  # optional on machines without librosa / a skeleton package: reported as skipped, never faked silently
        from dataloaders.features.audio import onset_amplitude
    except ImportError:
        onset_amplitude = None
    try:
        from geometry.body_model import get_fk

        fk = get_fk()
    except Exception:
        fk = None
    rng = np.random.default_rng(0)
    sr, n = 16000, int(seconds * 30)
    wav = (0.1 * rng.standard_normal(int(seconds * sr)) * (np.sin(np.arange(int(seconds * sr)) / 3000) > 0)).astype(
        np.float32)
    word = torch.randint(0, VOCAB, (1, n), device=device)
    _sync(device)
    t0 = time.perf_counter()
    if onset_amplitude is not None:
        feats = torch.from_numpy(onset_amplitude(wav, sr)).float().unsqueeze(0).to(device)
    else:
        feats = torch.from_numpy(np.stack([np.zeros_like(wav), np.abs(wav)], -1)).unsqueeze(0).to(device)
    t_feat = time.perf_counter()
    gen.sampler.configure(n_steps=n_steps)
    out = generate_windowed(gen, codec, feats, word, opts=WindowOptions(seed_from_gt=False),
                            rng=torch.Generator(device=device).manual_seed(0))  # fmt: skip
    _sync(device)
    t_gen = time.perf_counter()
    frames = out.poses.shape[1] if fk is None else int(fk(out.poses[0].double().cpu()).shape[0])
    t_fk = time.perf_counter()
    wall = t_fk - t0
    return {"generator": kind, "n_steps": n_steps, "nfe_per_window": out.nfe // out.n_windows,
            "windows": out.n_windows, "motion_seconds": seconds, "frames": frames,
            "features": "onset+amplitude" if onset_amplitude else "SKIPPED (no librosa): amplitude only",
            "fk": "SKIPPED (no body model package)" if fk is None else fk.source,
            "sec_features": t_feat - t0, "sec_generate_decode": t_gen - t_feat, "sec_fk": t_fk - t_gen,
            "wall_seconds": wall, "real_time_factor": wall / seconds}  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--nfe", default="1,2,4", help="shortcut n_steps settings")
    ap.add_argument("--diffusion-steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = get_device(args.device)
    seed_everything(0)
    codec = build_codec(device)
    res: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "train": [], "inference": []}  # fmt: skip
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers not installed: diffusion generator skipped", flush=True)
        res["skipped"] = ["diffusion (no diffusers)"]
    if not args.skip_train:
        for kind in ("shortcut", "diffusion"):
            if kind == "diffusion" and res.get("skipped"):
                continue
            r = bench_train(kind, codec, args.batch, args.iters, device, args.bf16)
            print(f"train {kind:9s} batch {r['batch']}: {r['sec_per_step_median']:.3f} s/step", flush=True)
            res["train"].append(r)
    settings = [("shortcut", int(s)) for s in args.nfe.split(",") if s] + [("diffusion", args.diffusion_steps)]
    if res.get("skipped"):
        settings = [s for s in settings if s[0] != "diffusion"]
    for kind, steps in settings:
        r = bench_inference(kind, codec, args.seconds, steps, device)
        print(f"infer {kind:9s} steps {steps:2d}: RTF {r['real_time_factor']:.3f} ({r['wall_seconds']:.2f} s for "
              f"{args.seconds:.0f} s; generate+decode {r['sec_generate_decode']:.2f} s, FK {r['sec_fk']:.2f} s)",
              flush=True)  # fmt: skip
        res["inference"].append(r)
    if args.out:
        save_json(res, args.out)
    return res


if __name__ == "__main__":
    main()
