"""Issue 13's oracle test: does the generator place strokes when its condition carries the motion's own timing?

    python benchmarks/oracle_timing.py [--signal oracle|direction|retrieved|real] [--model flow|regress|imle]
        [--updates 1080] [--steps 2,20] [--files 6] [--train-files K] [--probe] [--imle-k 8]
        [--rollout-speed W [--rollout-steps 2] [--rollout-guidance 1] [--rollout-form relmse|corr|scaled]
         [--rollout-highpass 0] [--rollout-per-joint] [--rollout-spectrum 0]] [--save STATE.pt]
        [--main-job outputs/pipeline/synthetic_cpu] [--json OUT.json] [key=value ...]

(key=value: overrides of the shortcut stage's config, e.g. model.generator.params.objective.time_alpha=2.0)

Run the main job first: this trains the main job's shortcut generator (its config, networks, objective and sampler;
its RVQ-VAEs and statistics) again on the train windows (drawn with replacement), with a plain loop that is not the
stage's trainer: AdamW with default betas and no gradient clipping (until 2026-12-02 the stage used Adam, betas
(0.5, 0.999), clipping at 1.0; now Adam (0.9, 0.999) without clipping) at the stage's learning rate and batch size,
x0.1 after 80% of the updates. The stage's ``sample_timing`` is not applied here: the timing loss is on only with
``--rollout-speed``. It then scores whole files of the train and val splits (beat placement and realism ratios,
`evaluation.Evaluator`; BC and GT's BC under the corrected protocol, as the learning check's (d)), one sampling
seed, no CI.

``--signal oracle`` replaces the audio's amplitude channel (channel 0 of the 16 kHz onset+amplitude signal; channel
1, the onset impulses, is kept: earlier versions of this text called channel 0 the onset channel) by the
ground-truth upper-body speed of the frame each sample belongs to (mean over BC's joints, FK as the evaluator's:
SMPL-X when SMPLX_MODEL_PATH is set, else the embedded skeleton; divided by its train mean), in training and in
generation: the condition then says when the motion slows (its minima are near BC's motion beats, which BC takes per
joint). A model that can use a frame-aligned timing signal places its strokes there.
``--signal direction`` is the positive control: both audio channels carry the GT mean displacement of BC's joints
per frame along x and y (signed, same scale), so the condition also says which way the motion goes and the
conditional mean of the latents carries the strokes.
``--signal retrieved`` is the same two channels taken not from the file's own motion but from train windows whose
audio onset envelope matches (``benchmarks/retrieval_baseline.py``'s rule, never the file itself): audio and the
train split's motion only, so no oracle.
``--model regress`` trains the denoiser as a deterministic regressor instead (input x = 0, t = 0, MSE to the data
latents), i.e. the conditional mean. ``--model imle`` trains it as a one-step generator by conditional implicit
maximum likelihood estimation (IMLE: Li & Malik 2018; conditional: Li, Zhang & Malik 2020): per training window
``--imle-k`` noises ε are drawn, the denoiser maps each to latents in one call (x = ε, t = 0, step size 1; chosen
in eval mode without gradient, i.e. nearest for the network without its dropout), and the MSE to the data latents is
taken only for the nearest of them (in the latents' L2). So every training window must have some output near it:
a generator that spreads its outputs with the noise (e.g. strokes in several directions) is rewarded, where a
regressor is pulled to the conditional mean. Nothing forces it to use its noise, though: one that ignores it is
the regressor again (whether it did was not measured). Sampling: one call from noise, no guidance.
``--train-files K`` trains on the windows of the first K train files only and scores those K files (``--files``
then applies to val only): a memorisation test, can the networks fit stroke timing at all? ``--probe`` also scores
the train files generated from altered audio, words kept, each against the file's own audio and motion: ``delayed``
(the condition's audio 0.5 s late: leading zeros, cropped; the learning check's ``delayed`` moves the words too) and
``swapped`` (the audio of the next train file after the scored ones, repeated or cropped to length; with
``--train-files`` a file not trained on). A model that places its strokes from its audio loses placement in both.
``--rollout-speed W`` (flow) adds the trainer's ``sample_timing`` loss (trainers.timing) with weight W to every
update: a sample drawn from noise with gradient through the sampler (``--rollout-steps``, ``--rollout-guidance``),
its decoded speed curve against GT's (``--rollout-form``, ``--rollout-highpass``, ``--rollout-per-joint``,
``--rollout-spectrum``).
``--save`` keeps the trained generator's state dict. The measured numbers are in the README ("What this says").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CROSSFADE = 16  # --signal retrieved: frames blended between retrieved windows (retrieval_baseline's default)


def nearest_noise(
    generate: Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor],
    target: torch.Tensor,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """IMLE's selection: per row of ``target`` (B, ...), of ``k`` fresh noises the one whose output lies nearest to it
    (mean squared difference). ``generate(noise (k·B, ...), rep)`` maps a batch of noises to outputs without gradient
    (``rep(x)`` repeats a per-row tensor k times to match). Returns the chosen noises (B, ...)."""
    import torch

    def rep(x: torch.Tensor) -> torch.Tensor:
        return x.repeat(k, *([1] * (x.dim() - 1)))

    b = target.shape[0]
    noise = torch.randn((k * b, *target.shape[1:]), generator=generator)
    with torch.no_grad():
        out = generate(noise, rep)
    dist = (out - rep(target)).pow(2).flatten(1).mean(1).view(k, b)
    return noise.view(k, b, *target.shape[1:])[dist.argmin(0), torch.arange(b)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signal", choices=("oracle", "direction", "retrieved", "real"), default="oracle")
    ap.add_argument("--model", choices=("flow", "regress", "imle"), default="flow")
    ap.add_argument("--imle-k", type=int, default=8, help="--model imle: noises drawn per training window")
    ap.add_argument("--updates", type=int, default=1080, help="training updates (main job: 40 epochs x 27)")
    ap.add_argument("--steps", default="2,20", help="sampling steps to score (flow)")
    ap.add_argument("--files", type=int, default=6, help="files scored per split (train, val)")
    ap.add_argument("--train-files", type=int, default=0, help="train on (and score) the first K train files only")
    ap.add_argument("--probe", action="store_true", help="also score train files with delayed and swapped audio")
    ap.add_argument("--rollout-speed", type=float, default=0.0,
                    help="flow: weight of the trainer's sample_timing loss (trainers.timing; 0 = off)")
    ap.add_argument("--rollout-steps", type=int, default=2, help="sample_timing.steps")
    ap.add_argument("--rollout-guidance", type=float, default=1.0, help="sample_timing.guidance")
    ap.add_argument("--rollout-form", choices=("relmse", "corr", "scaled"), default="relmse", help="sample_timing.form")
    ap.add_argument("--rollout-highpass", type=int, default=0, help="sample_timing.highpass (frames)")
    ap.add_argument("--rollout-per-joint", action="store_true", help="sample_timing.per_joint")
    ap.add_argument("--rollout-spectrum", type=float, default=0.0, help="sample_timing.spectrum")
    ap.add_argument("--main-job", default="outputs/pipeline/synthetic_cpu")
    ap.add_argument("--config", default="configs/pipeline/synthetic_cpu.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--save", help="also save the trained generator's state dict here")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the shortcut stage's config")
    a = ap.parse_args(argv)
    if a.updates < 1 or a.files < 1 or a.train_files < 0 or a.imle_k < 1:
        raise SystemExit("--updates, --files and --imle-k must be >= 1, --train-files >= 0")
    if a.rollout_speed < 0 or (a.rollout_speed and a.model != "flow"):
        raise SystemExit("--rollout-speed must be >= 0, and is for --model flow only")
    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from dataloaders.datasets import GeneratorWindowDataset, WholeFileDataset
    from dataloaders.stats import load_stats
    from evaluation.evaluator import Evaluator
    from geometry.body_model import get_fk
    from geometry.skeleton import BC_JOINTS
    from inference.generate import generate_items
    from inference.loading import build_codec, build_generator_from_config, window_options
    from models.generators.base import SampleOutput, Sampler, to_generator_layout
    from pipeline.learning_check import delay_inputs
    from pipeline.stages import stage_config
    from utils.config import load_config

    main_job = Path(a.main_job).resolve()
    recs = {p: main_job / "stages" / f"rvq_{p}.json" for p in ("upper", "hands", "lower_trans")}
    if not all(r.is_file() for r in recs.values()):
        raise SystemExit(f"{main_job}: no RVQ-VAE records (run the main job: run_pipeline.py -c {a.config})")
    cfg0 = load_config(a.config, [f"output_dir={main_job}"])
    data = OmegaConf.create(OmegaConf.to_container(cfg0.data, resolve=True))
    node = cfg0.generators.shortcut
    rvq = [f"rvq.{p}={json.loads(r.read_text())['paths']['checkpoint']}" for p, r in recs.items()]
    cfg = stage_config(str(node.config), node.get("overrides"), [f"output_dir={main_job / 'oracle_timing'}",
                                                                 "device=cpu", *rvq, *a.overrides], data)  # fmt: skip
    if str(cfg.data.get("audio_rep", "onset+amplitude")) != "onset+amplitude":
        raise SystemExit("the oracle replaces the amplitude channel of data.audio_rep=onset+amplitude")
    torch.manual_seed(a.seed)
    stats = load_stats(cfg.data)
    codec = build_codec(cfg, stats, "cpu")
    model = build_generator_from_config(cfg)
    fk = get_fk(None)

    def upper_motion(pose: torch.Tensor) -> torch.Tensor:
        """(T,165) -> (T, 3) per frame: mean BC-joint speed, mean BC-joint displacement along x and y (m/frame),
        the first frame repeated."""
        with torch.no_grad():
            j = fk(pose.double())[:, BC_JOINTS].float()
        d = j[1:] - j[:-1]
        v = torch.cat([d.norm(dim=-1).mean(-1, keepdim=True), d.mean(1)[:, :2]], dim=-1)
        return torch.cat([v[:1], v])

    train = GeneratorWindowDataset(cfg.data, "train")
    items = [train[i] for i in range(len(train))]
    scale = float(torch.cat([upper_motion(it["pose"])[:, 0] for it in items]).mean())
    sr, fps = int(cfg.data.audio_sr), int(cfg.data.pose_fps)

    retrieved: dict[str, torch.Tensor] = {}
    if a.signal == "retrieved":  # not an oracle: only the audio and the train split's motion are used
        from benchmarks.retrieval_baseline import onset_envelope, retrieve, stitch

        envs = np.stack([onset_envelope(it["audio"].numpy()) for it in items])
        owner = np.array([it["id"] for it in items])

        def retrieved_motion(item: dict) -> torch.Tensor:
            """(n, 2): x/y displacement of the train windows whose onset envelopes match the file's, stitched
            (retrieval_baseline's rule), never from the file itself."""
            n = item["pose"].shape[0]
            starts, picks = retrieve(item["audio"].numpy(), n, envs, CROSSFADE, sr, fps, owner == item["id"])
            poses = stitch([items[k]["pose"].numpy() for k in picks], starts, n, CROSSFADE)
            return upper_motion(torch.from_numpy(poses).float())[:, 1:] / scale

        for split in ("train", "val"):
            whole = WholeFileDataset(cfg.data, split)
            for i in range(len(whole)):
                retrieved[whole[i]["id"]] = retrieved_motion(whole[i])

    def condition(item: dict, f0: int = 0) -> dict:
        """The item (frames f0.. of its file) with its oracle audio, built from its own poses on the file's
        whole-sample grid. Generation slices windows with the reference 533 samples per frame (true 533.3): on these
        20-s files window i starts at most ~190 samples (< half a frame) early against this grid."""
        if a.signal == "real":
            return item
        if a.signal == "retrieved":
            motion = retrieved[item["id"]][f0 : f0 + item["pose"].shape[0]]
        else:
            motion = upper_motion(item["pose"]) / scale
        audio = item["audio"].clone()
        frame = torch.clamp(torch.arange(audio.shape[0]) * fps // sr, max=motion.shape[0] - 1)
        if a.signal == "oracle":
            audio[:, 0] = motion[frame, 0]
        elif a.signal == "direction":
            audio[:, :] = motion[frame, 1:]
        else:
            audio[:, :] = motion[frame]
        return {**item, "audio": audio}

    items = [condition(it, i * train.stride) for it, (_, i) in zip(items, train.windows, strict=True)]
    train_files = WholeFileDataset(cfg.data, "train")
    if a.train_files:
        if a.train_files >= len(train_files):
            raise SystemExit(f"--train-files {a.train_files}: must be < {len(train_files)}, the train split's files "
                             "(0 = all)")  # fmt: skip
        kept = {train_files[i]["id"] for i in range(a.train_files)}
        items = [it for it in items if it["id"] in kept]
    z = torch.cat([codec.encode(torch.stack([it["pose"] for it in items[i:i + 64]]),
                                torch.stack([it["trans_v"] for it in items[i:i + 64]]))
                   for i in range(0, len(items), 64)])  # fmt: skip
    audio, word = torch.stack([it["audio"] for it in items]), torch.stack([it["word"] for it in items])
    den, seed_n = model.denoiser, int(cfg.get("pre_frames", 4))

    def regress(seed: torch.Tensor, at_feat: torch.Tensor) -> torch.Tensor:
        b, t = at_feat.shape[:2]
        return den(torch.zeros(b, model.latent_channels, 1, t), torch.zeros(b), torch.zeros(b), seed, at_feat)

    def one_step(noise: torch.Tensor, seed: torch.Tensor, at_feat: torch.Tensor) -> torch.Tensor:
        b = noise.shape[0]
        return den(noise, torch.zeros(b), torch.ones(b), seed, at_feat)

    def imle_noise(target: torch.Tensor, seed: torch.Tensor, at_feat: torch.Tensor) -> torch.Tensor:
        den.eval()
        try:
            return nearest_noise(lambda x, rep: one_step(x, rep(seed), rep(at_feat.detach())), target, a.imle_k, g)
        finally:
            den.train()

    timing = None
    if a.rollout_speed:  # the trainer's sample_timing loss (trainers.timing), here with the plain loop
        from trainers.timing import SampleTimingLoss

        timing = SampleTimingLoss(codec, get_fk(None, flat_hand_mean=True), a.rollout_speed, a.rollout_steps,
                                  a.rollout_guidance, a.rollout_form, a.rollout_highpass,
                                  a.rollout_per_joint, a.rollout_spectrum)  # fmt: skip

    lr, batch = float(cfg.solver.lr), int(cfg.batch_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed)
    model.train()
    t0 = time.time()
    for it in range(a.updates):
        idx = torch.randint(0, len(items), (batch,), generator=g)
        at = model.encode(audio[idx], word[idx])
        seed = z[idx, :seed_n]
        if a.model == "flow":
            out = model.loss(z[idx], None, None, seed, generator=g, at_feat=at, sample_loss=timing)
            loss = out["loss"]
            if timing is not None and it % 200 == 0:
                print(f"update {it} timing loss {out['sample_loss'].item():.4f}", flush=True)
        elif a.model == "imle":
            target = to_generator_layout(z[idx])
            loss = F.mse_loss(one_step(imle_noise(target, seed, at), seed, at), target)
        else:
            loss = F.mse_loss(regress(seed, at), to_generator_layout(z[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 if it >= 0.8 * a.updates else 1.0)
        if it % 200 == 0 or it == a.updates - 1:
            print(f"update {it} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    if a.save:
        from utils.io import save_torch

        save_torch(model.state_dict(), a.save)
    if a.model in ("regress", "imle"):

        class OneCall(Sampler):  # one denoiser call per window: the regression, or IMLE's one step from noise
            default_steps, default_guidance = 1, 1.0

            def __call__(self, net, noise, seed, at_feat, null_cond, n_steps=None, guidance=None, generator=None):
                z = one_step(noise, seed, at_feat) if a.model == "imle" else regress(seed, at_feat)
                return SampleOutput(latents=z, nfe=1, nfe_rows=1)

        model.sampler = OneCall()
    res: dict = {"signal": a.signal, "model": a.model, **({"imle_k": a.imle_k} if a.model == "imle" else {}),
                 "overrides": list(a.overrides), "updates": a.updates,
                 "rollout_speed": a.rollout_speed, "rollout_steps": a.rollout_steps,
                 "rollout_guidance": a.rollout_guidance, "rollout_highpass": a.rollout_highpass,
                 "rollout_per_joint": a.rollout_per_joint, "rollout_form": a.rollout_form,
                 "train_files": a.train_files or len(train_files), "train_windows": len(items),
                 "final_loss": loss.item(), "train_seconds": round(time.time() - t0)}
    keys = ("beat_placement", "beat_placement_gt", "bc", "bc_gt", "speed_ratio", "acceleration_ratio", "jerk_ratio")
    for n in [int(s) for s in a.steps.split(",")] if a.model == "flow" else [1]:
        if a.model == "flow":
            model.sampler.configure(n_steps=n)
        for split in ("train", "val"):
            whole = train_files if split == "train" else WholeFileDataset(cfg.data, split)
            n_files = a.train_files if a.train_files and split == "train" else min(a.files, len(whole))
            files = [condition(whole[i]) for i in range(n_files)]
            conditions = {f"{split}_n{n}": files}
            if a.probe and split == "train":
                if n_files >= len(whole):
                    raise SystemExit(f"--probe swaps in train file {n_files + 1}'s audio: use --files < {len(whole)}")
                donor = condition(whole[n_files])["audio"]
                # the learning check's delay, words put back: only the audio is late
                conditions[f"{split}_n{n}_delayed"] = [
                    {**delay_inputs(f, 0.5, sr, fps), "word": f["word"]} for f in files]  # fmt: skip
                conditions[f"{split}_n{n}_swapped"] = [
                    {**f, "audio": donor.repeat(-(-f["audio"].shape[0] // donor.shape[0]), 1)[: f["audio"].shape[0]]}
                    for f in files]  # fmt: skip
            for name, inputs in conditions.items():
                # BC under the learning check's protocol (corrected), as its (d) judges it
                ev = Evaluator(None, mean_vel=np.asarray(stats.mean_vel), fk=get_fk(None), protocol="corrected")
                with torch.no_grad():
                    generate_items(model, codec, inputs, window_options(cfg), torch.device("cpu"), seed=a.seed,
                                   evaluators=[ev], keep=False, references=files)  # fmt: skip
                m = ev.compute()
                res[name] = {k: m.get(k) for k in keys}
                print(f"{name}: " + ", ".join(f"{k} {m.get(k)}" if m.get(k) is None else f"{k} {m[k]:.3f}"
                                              for k in keys), flush=True)  # fmt: skip
    if a.json:
        from utils.io import atomic_write

        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(res, indent=2)))
    return res


if __name__ == "__main__":
    main()
