"""Evaluation: few-label splits and scores used by the benchmarks, the CLI and the tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["fewlabel_split", "macro_f1", "per_class_f1"]


def fewlabel_split(labels, k: int, seed: int) -> np.ndarray:
    """Boolean mask of ``k`` labelled cells per class (all cells of classes with ≤ k cells... minus one).

    Sampled per class with ``numpy.random.default_rng(seed)`` in sorted class order, so the same
    (labels, k, seed) always gives the same split. A class with no more than ``k`` cells keeps one cell
    unlabelled, so every class has query cells to score.
    """
    labels = pd.Series(np.asarray(labels, dtype=object)).astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in sorted(set(labels)):
        idx = np.flatnonzero(labels == c)
        take = min(k, max(len(idx) - 1, 1))
        mask[rng.choice(idx, take, replace=False)] = True
    return mask


def per_class_f1(truth, pred) -> dict[str, float]:
    """F1 of every true class (a prediction of a class absent from ``truth``, e.g. Unknown, counts as wrong)."""
    truth = np.asarray(truth, dtype=object).astype(str)
    pred = np.asarray(pred, dtype=object).astype(str)
    out = {}
    for c in sorted(set(truth)):
        tp = np.sum((pred == c) & (truth == c))
        fp = np.sum((pred == c) & (truth != c))
        fn = np.sum((pred != c) & (truth == c))
        out[c] = float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0
    return out


def macro_f1(truth, pred) -> float:
    """Mean F1 over the classes present in ``truth``."""
    return float(np.mean(list(per_class_f1(truth, pred).values())))
