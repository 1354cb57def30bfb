"""Examples for the page, made by the synthetic corpus generator (``dataloaders.synthetic``): speech, its TextGrid
and its ground-truth motion, so each input path (TextGrid, transcript, text-free, side by side with a reference) is
one click away without shipping binaries. Made once into a cache folder (seconds), reused afterwards."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataloaders.synthetic import file_id, generate_file, make_style

# (speaker, file index, seconds): short enough to generate and render in seconds on a laptop CPU
EXAMPLE_FILES = ((1, 1, 6.0), (2, 2, 8.0), (1, 3, 6.0))
CORPUS_SEED = 0  # the main job's corpus seed: the first example has that corpus's speaker-1 voice and style


@dataclass(frozen=True)
class Example:
    audio: Path
    textgrid: Path
    motion: Path  # the synthetic ground truth

    def words(self) -> str:
        """The transcript (the TextGrid's words tier, in order)."""
        from inference.words import words_from_textgrid

        return " ".join(words_from_textgrid(self.textgrid).words)


def make_examples(folder: str | os.PathLike) -> list[Example]:
    """Write (or reuse) the example files under ``folder``; files are written atomically by the corpus generator."""
    out = Path(folder)
    examples = []
    for speaker, index, seconds in EXAMPLE_FILES:
        style = make_style(speaker, np.random.default_rng([CORPUS_SEED, speaker, 10**6]))
        sub = out / f"{seconds:g}s"
        fid = file_id(speaker, style.name, index)
        ex = Example(sub / "wave16k" / f"{fid}.wav", sub / "textgrid" / f"{fid}.TextGrid",
                     sub / "smplxflame_30" / f"{fid}.npz")  # fmt: skip
        if not (ex.audio.is_file() and ex.textgrid.is_file() and ex.motion.is_file()):
            generate_file(sub, style, index, seconds, CORPUS_SEED)
        examples.append(ex)
    return examples


def example_rows(examples: list[Example]) -> list[list[str | None]]:
    """Rows of (audio, transcript, TextGrid, reference npz): TextGrid + side by side with the ground truth;
    transcript; text-free."""
    rows: list[list[str | None]] = []
    for k, ex in enumerate(examples):
        if k % 3 == 0:
            rows.append([str(ex.audio), None, str(ex.textgrid), str(ex.motion)])
        elif k % 3 == 1:
            rows.append([str(ex.audio), ex.words(), None, None])
        else:
            rows.append([str(ex.audio), None, None, None])
    return rows


__all__ = ["EXAMPLE_FILES", "Example", "example_rows", "make_examples"]
