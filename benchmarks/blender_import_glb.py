"""One-off check (not in CI, not a requirement): import an exported .glb with Blender's own glTF importer through the
``bpy`` wheel and print, as JSON, what Blender sees: armatures, bones (with parents), meshes, actions and their frame
ranges, and the world positions of the bones' heads at a few frames (Blender is z up: glTF (x, y, z) is
Blender (x, -z, y)).

    pip download bpy --no-deps -d /tmp/bpy && pip install --no-deps --target /tmp/bpy/site /tmp/bpy/bpy-*.whl
    PYTHONPATH=/tmp/bpy/site python benchmarks/blender_import_glb.py motion.glb [--frames 0,7,19]

The scene frame rate is set to 30 before the import, so glTF time t lands on frame 30 t (+ the importer's offset,
printed as the action's frame range).
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("glb")
    ap.add_argument("--frames", default="0", help="comma-separated frames (from the action's first frame)")
    ap.add_argument("--fps", type=int, default=30)
    a = ap.parse_args(argv)
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = a.fps
    result = bpy.ops.import_scene.gltf(filepath=a.glb)
    arms = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    out = {
        "blender": bpy.app.version_string,
        "import": sorted(result),
        "armatures": len(arms),
        "meshes": [{"name": m.name, "vertices": len(m.data.vertices), "vertex_groups": len(m.vertex_groups),
                    "armature_modifier": any(md.type == "ARMATURE" for md in m.modifiers)} for m in meshes],
        "actions": [{"name": act.name, "frame_range": list(act.frame_range)} for act in bpy.data.actions],
        "scene_fps": bpy.context.scene.render.fps,
    }  # fmt: skip
    if arms:
        arm = arms[0]
        out["bones"] = [{"name": b.name, "parent": b.parent.name if b.parent else None} for b in arm.data.bones]
        start = int(bpy.data.actions[0].frame_range[0]) if bpy.data.actions else 0
        samples = []
        for f in (int(x) for x in a.frames.split(",")):
            bpy.context.scene.frame_set(start + f)
            heads = {pb.name: list(arm.matrix_world @ pb.head) for pb in arm.pose.bones}
            samples.append({"frame": f, "blender_frame": start + f, "heads": heads})
        out["samples"] = samples
    print("GLB_IMPORT_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
