// Load a .glb with three.js's own GLTFLoader (the loader three.js apps use) in Node and print, as one JSON object,
// what three.js sees: skinned meshes, their bones (names, parents), animation clips (duration, tracks), and, at the
// requested frames, each bone's local quaternion (x, y, z, w) and position, world position, and a few skinned
// vertex positions, all after playing the first clip with an AnimationMixer.
//
//   node render/js/glb_probe.mjs FILE.glb THREE_DIR [--fps 30] [--frames 0,5,10] [--vertices 0,100]
//
// THREE_DIR is the installed `three` package folder (render/threejs.py passes .cache/node/node_modules/three,
// installed by `npm install --prefix .cache/node --no-save --ignore-scripts three@0.187.0`, as .ci/run does). Exit 3 with a
// one-line message when three.js is missing, 1 when the file does not load.
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const INSTALL = "npm install --prefix .cache/node --no-save --ignore-scripts three@0.187.0";

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const ints = (s) => (s ? s.split(",").filter((x) => x !== "").map(Number) : []);

const [file, threeDir] = process.argv.slice(2, 4);
if (!file || !threeDir) {
  console.error("usage: node glb_probe.mjs FILE.glb THREE_DIR [--fps 30] [--frames 0,5] [--vertices 0,100]");
  process.exit(2);
}
const threeMain = join(threeDir, "build", "three.module.js");
const loaderPath = join(threeDir, "examples", "jsm", "loaders", "GLTFLoader.js");
if (!existsSync(threeMain) || !existsSync(loaderPath)) {
  console.error(`three.js not found at ${threeDir}: ${INSTALL}`);
  process.exit(3);
}
// No shims are needed for a glb without textures on Node >= 18: the loader needs TextDecoder (a Node global) and
// tests `typeof navigator` / `typeof createImageBitmap` before using them; `self.URL` is touched for images only.
// GLTFLoader imports the bare specifier "three", which Node resolves from THREE_DIR's node_modules to the same
// build/three.module.js file imported here: one module instance.
const THREE = await import(pathToFileURL(threeMain).href);
const { GLTFLoader } = await import(pathToFileURL(loaderPath).href);

const fps = Number(arg("--fps", "30"));
const frames = ints(arg("--frames", "0"));
const vertexIds = ints(arg("--vertices", ""));

const buf = readFileSync(file);
const data = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
let gltf;
try {
  gltf = await new GLTFLoader().parseAsync(data, "");
} catch (e) {
  console.error(`${file}: three.js GLTFLoader failed: ${e && e.message ? e.message : e}`);
  process.exit(1);
}

const scene = gltf.scene;
const skinned = [];
scene.traverse((o) => {
  if (o.isSkinnedMesh) skinned.push(o);
});
const mesh = skinned[0];
const bones = mesh ? mesh.skeleton.bones : [];
const boneInfo = bones.map((b) => ({ name: b.name, parent: b.parent && b.parent.isBone ? b.parent.name : null }));
const clips = gltf.animations.map((c) => ({
  name: c.name,
  duration: c.duration,
  tracks: c.tracks.map((t) => ({ name: t.name, times: t.times.length, type: t.ValueTypeName })),
}));

const samples = [];
if (mesh && gltf.animations.length) {
  const mixer = new THREE.AnimationMixer(scene);
  const action = mixer.clipAction(gltf.animations[0]);
  action.setLoop(THREE.LoopOnce, 1);
  action.clampWhenFinished = true; // the last frame (t = duration) holds instead of wrapping to t = 0
  action.play();
  const v = new THREE.Vector3();
  for (const f of frames) {
    mixer.setTime(f / fps);
    scene.updateMatrixWorld(true);
    mesh.skeleton.update();
    samples.push({
      frame: f,
      time: f / fps,
      quaternion: bones.map((b) => b.quaternion.toArray()),
      position: bones.map((b) => b.position.toArray()),
      world: bones.map((b) => b.getWorldPosition(v).toArray()),
      // skinned on the CPU by three.js (SkinnedMesh.getVertexPosition applies the bone matrices), in the mesh's
      // local frame; the mesh node sits at the scene root with an identity transform here
      vertices: vertexIds.map((i) => mesh.getVertexPosition(i, v).toArray()),
    });
  }
}

console.log(
  JSON.stringify({
    three: THREE.REVISION,
    skinned_meshes: skinned.length,
    vertices: mesh ? mesh.geometry.attributes.position.count : 0,
    bones: boneInfo,
    clips,
    samples,
  }),
);
