"""Rendering and export of generated SMPL-X motion (npz): headless CPU video (mannequin, skeleton or SMPL-X mesh)
with audio, BVH and glTF 2.0 export. Pure numpy/torch; ffmpeg comes from the ``imageio-ffmpeg`` wheel.

Wall: ``render`` reads npz files and uses ``geometry`` and ``utils`` only (no dataloaders, models, trainers,
pipeline), so it works on any result file without the training stack.
"""
