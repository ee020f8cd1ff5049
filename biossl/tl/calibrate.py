"""Calibrated confidence for ``tl.annotate``: fit on the labelled cells by cross-validation.

The propagated probabilities are not calibrated: a top probability of 0.6 may be right 90 % of the
time. With only a few labels per type there is no separate calibration set, so the labelled cells are
reused: each labelled cell is hidden in turn (stratified folds, never a type's last label), the rest
annotate it, and the (held-out probability, true type) pairs fit a calibration map — temperature
scaling (Guo et al. 2017, ICML; fitted to the Brier score of the pairs) by default, or isotonic
regression on the top probability (Zadrozny & Elkan 2002). Held-out pairs are class-balanced while the
unlabelled cells are not, so each pair is weighted by the share of unlabelled cells predicted as its
type (an importance weight for the shift).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from .._types import CalibrationMethod

logger = logging.getLogger("biossl")

__all__ = [
    "calibrate_annotation",
    "calibrate_proba",
    "crossval_proba",
    "fit_temperature",
    "scale_temperature",
]

_EPS = 1e-12
# temperatures below ~0.1 push most confidences to 1.0 in float32 (obs is float32), which erases their ranking
T_MIN, T_MAX = 0.1, 10.0


def scale_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Rows ``p ** (1/T)`` renormalised (softmax of ``log p / T``); all-zero rows stay zero."""
    proba = np.asarray(proba, dtype=np.float64)
    mass = proba.sum(1)
    out = np.zeros_like(proba)
    ok = mass > 0
    logp = np.log(np.clip(proba[ok], _EPS, None)) / temperature
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    out[ok] = e / e.sum(1, keepdims=True)
    return out


def fit_temperature(
    proba: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, *, loss: str = "brier"
) -> float:
    """Temperature minimising the (weighted) Brier score or negative log-likelihood of the true classes ``y``.

    Brier is the default: with the few dozen held-out pairs of a few labels per type, one confidently wrong
    pair dominates the log-likelihood; the Brier fit gave a smaller seed-to-seed spread and a lower mean ECE
    (``benchmarks/calibration.py``).
    """
    from scipy.optimize import minimize_scalar

    if loss not in ("brier", "nll"):
        raise ValueError(f"loss must be 'brier' or 'nll', got {loss!r}")
    y = np.asarray(y)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    onehot = np.zeros_like(proba, dtype=np.float64)
    onehot[np.arange(len(y)), y] = 1.0

    def objective(log_t: float) -> float:
        q = scale_temperature(proba, float(np.exp(log_t)))
        if loss == "brier":
            per_cell = ((q - onehot) ** 2).sum(1)
        else:
            per_cell = -np.log(np.clip(q[np.arange(len(y)), y], _EPS, None))
        return float((w * per_cell).sum() / w.sum())

    res = minimize_scalar(objective, bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded")
    return float(np.exp(res.x))


def crossval_proba(
    predict: Callable[[np.ndarray], np.ndarray], codes: np.ndarray, *, n_folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities of labelled cells: indices and their probability rows.

    Labelled cells of types with at least two labels are split into ``n_folds`` stratified folds (a
    type's cells spread over the folds, so no fold hides a type's last label); each fold is hidden in
    turn and ``predict(codes_without_fold, fold_cells)`` gives their probabilities (a fold × classes array; the
    predictor may score only those cells). Types with one label give no pair.
    """
    rng = np.random.default_rng(seed)
    fold = np.full(len(codes), -1)
    for c in np.unique(codes[codes >= 0]):
        idx = np.flatnonzero(codes == c)
        if len(idx) < 2:
            continue
        fold[rng.permutation(idx)] = np.arange(len(idx)) % n_folds
    held, rows = [], []
    for f in range(n_folds):
        test = np.flatnonzero(fold == f)
        if len(test) == 0:
            continue
        train = codes.copy()
        train[test] = -1
        held.append(test)
        rows.append(predict(train, test))
    if not held:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    return np.concatenate(held), np.concatenate(rows)


def calibrate_proba(
    proba: np.ndarray,
    held_proba: np.ndarray,
    held_y: np.ndarray,
    *,
    method: CalibrationMethod = "temperature",
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Apply a calibration map fitted on held-out (probability, true class) pairs to ``proba``.

    ``"temperature"`` rescales every row; ``"isotonic"`` maps the top probability through an isotonic
    fit of correctness on it and shares the remaining mass among the other classes in proportion.
    Returns the calibrated probabilities and a record of the fit.
    """
    if method not in ("temperature", "isotonic"):
        raise ValueError(f"method must be 'temperature' or 'isotonic', got {method!r}")
    if len(held_y) == 0:
        return proba, {"method": "none", "n_pairs": 0}
    if method == "temperature":
        t = fit_temperature(held_proba, held_y, weights)
        return scale_temperature(proba, t), {"method": method, "temperature": t, "n_pairs": len(held_y)}
    from sklearn.isotonic import IsotonicRegression

    conf = held_proba.max(1)
    correct = (held_proba.argmax(1) == held_y).astype(float)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(conf, correct, sample_weight=weights)
    top = proba.max(1)
    reached = proba.sum(1) > 0
    n_classes = proba.shape[1]
    new_top = np.maximum(iso.predict(top), 1.0 / n_classes)  # the top class stays the top class
    rest = proba.sum(1) - top
    scale = np.divide(1.0 - new_top, rest, out=np.zeros_like(rest), where=rest > 0)
    out = proba * scale[:, None]
    out[np.arange(len(top)), proba.argmax(1)] = new_top
    out[~reached] = 0.0
    return out, {"method": method, "n_pairs": len(held_y)}


def calibrate_annotation(
    predict: Callable[[np.ndarray], np.ndarray],
    codes: np.ndarray,
    proba: np.ndarray,
    *,
    method: CalibrationMethod = "temperature",
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Calibrate ``proba`` (from ``predict(codes)``) by cross-validation over the labelled cells.

    Parameters
    ----------
    predict
        The annotation pipeline: ``predict(codes, rows)`` maps label codes (-1 = unlabelled) to the class
        probabilities of the cells ``rows`` (indices), e.g. ``AnnotationPredictor.fold``.
    codes
        Current label codes.
    proba
        The probabilities of every cell under ``codes``, the ones to calibrate.
    method
        ``"temperature"`` or ``"isotonic"``.
    n_folds
        Folds over the labelled cells (each type's labels spread over them).
    seed
        Seed of the fold assignment.

    Returns
    -------
    Calibrated probabilities (same argmax for ``"temperature"``) and a dict with the fit (h5ad-writable).
    """
    held, held_proba = crossval_proba(predict, codes, n_folds=n_folds, seed=seed)
    if len(held) == 0:
        logger.info("calibrate: no type has two labels, so confidence is left uncalibrated")
        return proba, {"method": "none", "n_pairs": 0}
    y = codes[held]
    # importance weights: held-out pairs are class-balanced, the unlabelled cells follow the predicted mix
    unlabelled = (codes < 0) & (proba.sum(1) > 0)
    share = np.bincount(proba[unlabelled].argmax(1), minlength=proba.shape[1]).astype(float)
    share /= max(share.sum(), 1.0)
    per_class = np.bincount(y, minlength=proba.shape[1]).astype(float)
    weights = share[y] / per_class[y]
    if weights.sum() <= 0:
        weights = None
    out, info = calibrate_proba(proba, held_proba, y, method=method, weights=weights)
    logger.info("calibrate: %s", info)
    return out, info
