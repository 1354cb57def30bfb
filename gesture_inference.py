"""Gestures for your own audio: ``python gesture_inference.py --audio speech.wav --out results/`` (docs/inference.md).

A thin entry point; the logic lives in inference/ (inference.cli, inference.api).
"""

import sys

from inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
