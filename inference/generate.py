"""Generate whole files, and the one generate-then-evaluate loop.

`generate_file` turns one item (a ``dataloaders.datasets.WholeFileDataset`` item, or any mapping with the same keys)
into motion with the windowed sampler. `generate_items` runs it over a list of items and feeds every result to the
given evaluators: training validation, the test split and the learning check all use it, so there is one loop.

Sampling steps and guidance are the sampler's own settings (``model.sampler.settings()``): the config node
``model.generator.params.sampler`` is their only home.

Ground-truth substitution (the reference test copies jaw, expressions and translation from GT) is off unless asked:
``copy_gt`` names the fields to copy (``inference.copy_gt`` in configs, ``test.py --copy-gt``), and every copied
field is listed in the outputs (``gt_copied_fields``). Without a face part the model does not generate jaw and
expressions: they are then zeros (neutral), declared as not generated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from inference.windowed import WindowOptions, generate_windowed
from models.generators import LatentGenerator
from models.motion_codec import N_EXPRESSIONS, MotionCodec
from utils.config import ConfigError

COPYABLE = ("jaw", "expressions", "trans")  # the fields the reference test takes from GT


def copy_gt_fields(value: Any, key: str = "inference.copy_gt") -> tuple[str, ...]:
    """Validated ``copy_gt`` setting: a list (or comma-separated string) of fields among ``COPYABLE``."""
    if value is None:
        return ()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    items = [v for v in items if v]
    bad = [v for v in items if v not in COPYABLE]
    if bad:
        raise ConfigError(f"{key}: unknown field(s) {bad}; expected a subset of {list(COPYABLE)}")
    return tuple(f for f in COPYABLE if f in items)


def inference_copy_gt(inf: Any) -> tuple[str, ...]:
    """``copy_gt`` of a config's ``inference`` node; the old boolean ``copy_gt_jaw`` is refused with the new name."""
    inf = inf or {}
    if "copy_gt_jaw" in inf:
        raise ConfigError("inference.copy_gt_jaw was replaced by inference.copy_gt (a list: jaw, expressions, "
                          "trans; default [] = nothing copied from GT); e.g. inference.copy_gt=[jaw]")  # fmt: skip
    return copy_gt_fields(inf.get("copy_gt"))


@torch.no_grad()
def generate_file(
    model: LatentGenerator,
    codec: MotionCodec,
    item: Mapping[str, Any],
    opts: WindowOptions,
    device: torch.device,
    seed: int = 0,
    copy_gt: Sequence[str] = (),
) -> dict[str, Any]:
    """Generate one whole file. Returns poses (n,165), expressions (n,100), trans (n,3) (np; GT where ``copy_gt``
    says, zeros for expressions the model does not generate), latents, timing, windows and network calls."""
    copy_gt = copy_gt_fields(copy_gt, "copy_gt")
    pose = item["pose"].unsqueeze(0).to(device) if item.get("pose") is not None else None
    trans_v = item["trans_v"].unsqueeze(0).to(device) if item.get("trans_v") is not None else None
    facial = item["facial"].unsqueeze(0).to(device) if item.get("facial") is not None else None
    for f, need in (("jaw", pose), ("expressions", facial), ("trans", item.get("trans"))):
        if f in copy_gt and need is None:
            raise ValueError(f"copy_gt includes {f!r} but the item has no ground truth for it")
    t0 = time.perf_counter()
    rng = torch.Generator(device=device).manual_seed(int(seed))
    out = generate_windowed(
        model, codec, item["audio"].unsqueeze(0).to(device), item["word"].unsqueeze(0).to(device), pose, trans_v,
        opts=opts, rng=rng, jaw=pose[..., 66:69] if "jaw" in copy_gt else None, expressions=facial,
    )  # fmt: skip
    poses = out.poses[0].float().cpu().numpy()
    n = out.n_frames
    if "expressions" in copy_gt:
        expressions = item["facial"][:n].float().numpy()
    elif out.expressions is not None:
        expressions = out.expressions[0].float().cpu().numpy()
    else:
        expressions = np.zeros((n, N_EXPRESSIONS), np.float32)
    trans = item["trans"][:n].float().numpy() if "trans" in copy_gt else out.trans[0].float().cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return {"poses": poses, "expressions": expressions, "latents": out.latents[0].float().cpu().numpy(),
            "gt_latents": None if out.gt_latents is None else out.gt_latents[0].float().cpu().numpy(),
            "trans": trans, "trans_v": out.trans_v[0].float().cpu().numpy(),
            "n_frames": n, "n_windows": out.n_windows, "nfe": out.nfe, "seconds": seconds}  # fmt: skip


def gt_copied_fields(opts: WindowOptions, copy_gt: Sequence[str]) -> list[str]:
    """Prediction fields that come from the ground truth: the ``copy_gt`` fields (the reference test copies jaw,
    expressions and trans, spec §7.3) and the first-window seed when ``seed_from_gt``."""
    fields = list(copy_gt_fields(copy_gt, "copy_gt"))
    if opts.seed_from_gt:
        fields.append("seed")
    return fields


def generated_fields(codec: MotionCodec, copy_gt: Sequence[str] = ()) -> dict[str, str]:
    """Where each output field comes from: "generated", "ground truth" or "zeros (not generated)"."""
    copy_gt = copy_gt_fields(copy_gt, "copy_gt")

    def src(field: str, generated: bool) -> str:
        return "ground truth" if field in copy_gt else ("generated" if generated else "zeros (not generated)")

    return {"body": "generated", "trans": src("trans", True), "jaw": src("jaw", codec.has_face),
            "expressions": src("expressions", codec.has_face), "eyes": "zeros (not generated)"}


def generate_items(
    model: LatentGenerator,
    codec: MotionCodec,
    items: Sequence[Mapping[str, Any]],
    opts: WindowOptions,
    device: torch.device,
    *,
    seed: int = 0,
    copy_gt: Sequence[str] = (),
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
        res = generate_file(model, codec, item, opts, device, seed=seed + i, copy_gt=copy_gt)
        n = res["n_frames"]
        gt = ref["pose"][:n].numpy()
        gt_exp = ref["facial"][:n].numpy() if ref.get("facial") is not None else None
        res["metrics"] = [ev.add(res["poses"], gt, betas=ref["beta"][0].numpy(), audio=ref["wav_path"], id=ref["id"],
                                 pred_expressions=res["expressions"] if gt_exp is not None else None,
                                 gt_expressions=gt_exp)
                          for ev in evaluators]  # fmt: skip
        if on_file is not None:
            on_file(i, ref, res)
        if not keep:
            res = {k: v for k, v in res.items()
                   if k not in ("poses", "expressions", "latents", "gt_latents", "trans", "trans_v")}
        results.append(res)
    return results


__all__ = ["COPYABLE", "copy_gt_fields", "generate_file", "generate_items", "generated_fields", "gt_copied_fields",
           "inference_copy_gt"]
