"""Does the RVQ codec add jitter? Round trip (encode -> decode) of held-out ground truth vs ground truth itself.

    python benchmarks/rvq_roundtrip.py OUTPUT_DIR [--splits val test] [--parts upper hands lower_trans]
                                      [--ckpt upper=PATH ...] [--json out.json]

OUTPUT_DIR is a pipeline output folder (``run_pipeline.py ... output_dir=OUTPUT_DIR`` with at least the corpus,
cache and rvq stages done). The measurement is ``pipeline.codec_check.rvq_roundtrip`` (the pipeline's report shows it
for val and test); this script runs it for other parts or checkpoints and prints the ratios and the beat placement
of GT and the round trip (as is, and with the pelvis rotation held at zero).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geometry.skeleton import GENERATOR_PARTS  # noqa: E402
from pipeline.codec_check import rvq_roundtrip  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_dir")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--parts", nargs="+", default=list(GENERATOR_PARTS))
    ap.add_argument("--ckpt", nargs="*", default=[], help="part=path overrides of the stage records")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    try:
        res = rvq_roundtrip(a.output_dir, a.splits, a.parts, dict(kv.split("=", 1) for kv in a.ckpt))
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    for s, r in res.items():
        print(f"[{s}, {r['n_files']} files, parts {'+'.join(a.parts)}] round trip / GT: " + "  ".join(
            f"{q} {r[q]['ratio']:.3f} [{r[q]['ci'][0]:.3f}, {r[q]['ci'][1]:.3f}]" for q in ("speed", "acceleration",
                                                                                        "jerk")))
        if "beat_placement" in r:
            print("  beat placement (mean over files [95% CI]): " + "  ".join(
                f"{k} {v['mean']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for k, v in r["beat_placement"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
