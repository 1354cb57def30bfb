"""End-to-end inference speed of gesture_inference.py at the released architecture's full size (not a timed test).

    python -m benchmarks.bench_inference [--seconds 60] [--nfe 1,2,4] [--guidance 2] [--device cpu]
                                         [--precision fp32|bf16] [--out r.json]

What is timed, per NFE setting (shortcut sampler n_steps; CFG w > 1 doubles the batch of every step), on a
synthetic-speech wav of --seconds: inference.api.generate_from_audio (audio decode + resampling path of the training
cache, onset+amplitude features, text-free words, windowed generation, RVQ decode, axis-angle) plus
inference.api.write_result (npz + json write; no FK). Model load and the one-off librosa warm-up are reported
separately. Networks: configs/shortcut_rvqvae_128.yaml (denoiser 256-D, 8+3 blocks; modality encoder with an
11195-word table) and full-size RVQ-VAEs (width 512, 1024 codes x 6), random weights (speed does not depend on
them). Also: streaming (--stream path) per-window latency and the first window's latency. ``--precision bf16``: the
generator under bf16 autocast, as ``gesture_inference.py --precision bf16``.
Real-time factor = wall time / audio seconds (< 1 is faster than real time; 0.05 = 20x faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.bench_generator import VOCAB, build_codec
from dataloaders.features.text import SPECIALS, Vocab
from dataloaders.synthetic import SR, make_script, make_style, synth_audio
from inference.api import generate_from_audio, write_result
from inference.audio_input import warm_up
from inference.loading import window_options
from inference.model_source import LoadedModel, ModelSource
from models.generators import build_generator
from utils.config import load_config, to_container
from utils.device import PRECISIONS, get_device
from utils.io import save_json

CONFIG = "configs/shortcut_rvqvae_128.yaml"


def build_loaded(device: torch.device, precision: str = "fp32") -> LoadedModel:
    cfg = load_config(CONFIG, ["data.root=unused", "data.stats_dir=null", "data.vocab=null"])
    node = to_container(cfg.model.generator)
    node["params"]["modality_encoder"]["params"]["vocab_size"] = VOCAB
    model = build_generator(node).to(device).eval()
    opts = window_options(cfg)
    opts.seed_from_gt, opts.drop_tail = False, False
    vocab = Vocab(list(SPECIALS) + [f"w{i}" for i in range(VOCAB - len(SPECIALS))])
    src = ModelSource(cfg, Path(CONFIG), "released", "benchmark (random weights)", CONFIG)
    return LoadedModel(cfg, model, build_codec(device), vocab, opts, device, src, "random-weights", "identity stats",
                       precision=precision)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--nfe", default="1,2,4", help="comma-separated shortcut step counts")
    ap.add_argument("--guidance", type=float, default=2.0, help="CFG scale (upstream 2; <= 1 disables CFG)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting (the best is reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the generator's arithmetic")
    ap.add_argument("--out", help="write the results as json")
    a = ap.parse_args(argv)
    device = get_device(a.device)
    t0 = time.perf_counter()
    lm = build_loaded(device, a.precision)
    load_s = time.perf_counter() - t0
    warm_s = warm_up(SR)
    rng = np.random.default_rng(0)
    y = synth_audio(make_script(a.seconds, make_style(1, rng), rng), int(a.seconds * SR), rng)
    import os

    results: dict = {"seconds_audio": a.seconds, "device": str(device), "threads": torch.get_num_threads(),
                     "load_average_before": os.getloadavg(),
                     "model_build_s": load_s, "warm_up_s": warm_s, "guidance": a.guidance, "precision": a.precision,
                     "runs": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "speech.wav"
        sf.write(wav, y, SR, subtype="PCM_16")
        generate_from_audio(lm, wav)  # first call: one-off allocations
        for n in [int(x) for x in a.nfe.split(",")]:
            lm.model.sampler.configure(n_steps=n, guidance=a.guidance)
            best = None
            for _ in range(a.repeats):
                t = time.perf_counter()
                res = generate_from_audio(lm, wav)
                write_result(res, Path(d) / "out", t_start=t)
                total = time.perf_counter() - t
                if best is None or total < best[0]:
                    best = (total, res.meta)
            total, meta = best
            row = {"n_steps": n, "nfe_per_window": n, "cfg": a.guidance > 1, "seconds": round(total, 3),
                   "real_time_factor": round(total / a.seconds, 4),
                   "x_faster_than_real_time": round(a.seconds / total, 1), "timing": meta["timing"],
                   "windows": meta["windows"]}  # fmt: skip
            results["runs"].append(row)
            print(f"n={n:>2} (CFG {'on' if a.guidance > 1 else 'off'}): {total:.2f} s for {a.seconds:.0f} s of audio, "
                  f"RTF {row['real_time_factor']:.4f} ({row['x_faster_than_real_time']}x real time)")  # fmt: skip
        from inference.streaming import stream_file

        lm.model.sampler.configure(n_steps=2, guidance=a.guidance)
        res = stream_file(lm, wav, chunk_s=0.1)
        s = res.meta["streaming"]
        results["streaming_n2"] = {k: s[k] for k in ("first_window_latency_s", "max_window_latency_s",
                                                     "algorithmic_delay_s", "decoder_radius_latents", "seconds")}
        print(f"stream n=2: first-window latency {s['first_window_latency_s']:.3f} s, max window "
              f"{s['max_window_latency_s']:.3f} s, algorithmic delay {s['algorithmic_delay_s']:.2f} s")  # fmt: skip
    results["load_average_after"] = os.getloadavg()  # other processes on shared CPUs inflate every number
    print(f"load average before/after: {results['load_average_before']} / {results['load_average_after']}")
    if a.out:
        save_json(results, a.out)
    return results


if __name__ == "__main__":
    main()
