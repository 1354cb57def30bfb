"""Export a motion npz for Blender / game engines: BVH (SMPL-X skeleton) or glTF 2.0 .glb (skinned mannequin).

python export_motion.py --input result.npz --format bvh|gltf --output F
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="result npz (poses (T,165), trans, betas)")
    ap.add_argument("--format", required=True, choices=["bvh", "gltf"])
    ap.add_argument("--output", required=True, help="file to write (.bvh or .glb)")
    ap.add_argument(
        "--skeleton",
        default="auto",
        choices=["auto", "smplx", "mannequin"],
        help="BVH rest offsets: SMPL-X model file ($SMPLX_MODEL_PATH) or the mannequin calibration",
    )
    a = ap.parse_args(argv)
    from render.export import export_motion
    from render.motion import RenderError

    try:
        info = export_motion(a.input, a.format, a.output, a.skeleton)
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {info['output']}: {info['frames']} frames at {info['fps']:g} fps, {len(info['joints'])} joints"
        + (f", rest skeleton {info['source']}" if "source" in info else f", {info['vertices']} vertices")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
