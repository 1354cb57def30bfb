"""Upstream-compatible flags (the ``inference_cli.py`` of the GestureLSM fork) on top of gesture_inference.py.

    python inference_cli.py --audio_path speech.wav --output_dir ./outputs [--output_name NAME] [--seed 42]
                            [--config configs/released_v2.yaml] [--save_npz] [--render_video]

The same code runs (inference.cli); outputs are <output_dir>/<output_name>.npz (BEAT2 format) + .json. Rendering is
not part of this project: --render_video and its options are accepted, and a warning says so.
"""

import sys

from inference.upstream_cli import main

if __name__ == "__main__":
    sys.exit(main())
