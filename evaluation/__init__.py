"""Evaluation: EMAGE-protocol metrics, the Evaluator, folder evaluation and the FGD feature extractor.

Runs on npz folders alone: nothing here imports training, data loading or the pipeline (tests/test_walls.py).
"""
