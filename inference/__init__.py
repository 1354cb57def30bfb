"""Inference: load a trained or released generator with its codec, generate whole files window by window, and run
a split through generation (+ evaluation). Nothing here imports training code or the pipeline."""
