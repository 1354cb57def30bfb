"""Generate whole files, and the one generate-then-evaluate loop.

`generate_file` turns one item (a ``dataloaders.datasets.WholeFileDataset`` item, or any mapping with the same keys)
into motion with the windowed sampler. `generate_items` runs it over a list of items and feeds every result to the
given evaluators: training validation, the test split and the learning check all use it, so there is one loop.

Sampling steps and guidance are the sampler's own settings (``model.sampler.settings()``): the config node
``model.generator.params.sampler`` is their only home.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from inference.windowed import WindowOptions, generate_windowed
from models.generators import LatentGenerator
from models.motion_codec import MotionCodec


@torch.no_grad()
def generate_file(
    model: LatentGenerator,
    codec: MotionCodec,
    item: Mapping[str, Any],
    opts: WindowOptions,
    device: torch.device,
    seed: int = 0,
    copy_gt_jaw: bool = True,
) -> dict[str, Any]:
    """Generate one whole file. Returns poses (n,165) np, latents, trans, timing, windows and network calls."""
    pose = item["pose"].unsqueeze(0).to(device) if item.get("pose") is not None else None
    trans_v = item["trans_v"].unsqueeze(0).to(device) if item.get("trans_v") is not None else None
    if copy_gt_jaw and pose is None:
        raise ValueError("copy_gt_jaw=True needs the ground-truth poses of the item")
    t0 = time.perf_counter()
    rng = torch.Generator(device=device).manual_seed(int(seed))
    out = generate_windowed(
        model, codec, item["audio"].unsqueeze(0).to(device), item["word"].unsqueeze(0).to(device), pose, trans_v,
        opts=opts, rng=rng, jaw=pose[..., 66:69] if copy_gt_jaw else None,
    )  # fmt: skip
    poses = out.poses[0].float().cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return {"poses": poses, "latents": out.latents[0].float().cpu().numpy(),
            "gt_latents": None if out.gt_latents is None else out.gt_latents[0].float().cpu().numpy(),
            "trans": out.trans[0].float().cpu().numpy(), "trans_v": out.trans_v[0].float().cpu().numpy(),
            "n_frames": out.n_frames, "n_windows": out.n_windows, "nfe": out.nfe, "seconds": seconds}  # fmt: skip


def gt_copied_fields(opts: WindowOptions, copy_gt_jaw: bool) -> list[str]:
    """Prediction fields that come from the ground truth (reference test substitution, spec §7.3)."""
    fields = ["expressions", "trans"]
    if copy_gt_jaw:
        fields.append("jaw")
    if opts.seed_from_gt:
        fields.append("seed")
    return fields


def generate_items(
    model: LatentGenerator,
    codec: MotionCodec,
    items: Sequence[Mapping[str, Any]],
    opts: WindowOptions,
    device: torch.device,
    *,
    seed: int = 0,
    copy_gt_jaw: bool = True,
    evaluators: Sequence[Any] = (),
    references: Sequence[Mapping[str, Any]] | None = None,
    on_file: Callable[[int, Mapping[str, Any], dict[str, Any]], None] | None = None,
    desc: str | None = None,
    keep: bool = True,
) -> list[dict[str, Any]]:
    """Generate every item (file i with sampling seed ``seed + i``) and add it to each evaluator.

    ``references[i]`` (default ``items[i]``) is what file i is scored against: its ground-truth poses, betas, audio
    and id (a control condition feeds other audio to the model but scores against the file's own audio).
    ``evaluators``: objects with ``add(pred, gt, betas=, audio=, id=)`` (evaluation.Evaluator); their per-sequence
    results are in ``result["metrics"]``. ``on_file(i, reference, result)`` runs after each file (e.g. writes it).
    ``keep=False`` drops the arrays from the returned results (long test sets).
    """
    n = len(items)
    if references is not None and len(references) != n:
        raise ValueError(f"{n} items but {len(references)} references")
    indices: Any = range(n)
    if desc:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=desc, unit="file")
    results = []
    for i in indices:
        item = items[i]
        ref = item if references is None else references[i]
        res = generate_file(model, codec, item, opts, device, seed=seed + i, copy_gt_jaw=copy_gt_jaw)
        gt = ref["pose"][: res["n_frames"]].numpy()
        res["metrics"] = [ev.add(res["poses"], gt, betas=ref["beta"][0].numpy(), audio=ref["wav_path"], id=ref["id"])
                          for ev in evaluators]  # fmt: skip
        if on_file is not None:
            on_file(i, ref, res)
        if not keep:
            res = {k: v for k, v in res.items() if k not in ("poses", "latents", "gt_latents", "trans", "trans_v")}
        results.append(res)
    return results


__all__ = ["generate_file", "generate_items", "gt_copied_fields"]
