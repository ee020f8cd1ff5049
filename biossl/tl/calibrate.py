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
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._docs import doc_params
from .._types import CalibrationMethod
from ._propagation import rank01

logger = logging.getLogger("biossl")

__all__ = [
    "calibrate_annotation",
    "calibrate_proba",
    "crossval_proba",
    "fit_temperature",
    "novelty",
    "novelty_score",
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
    turn and ``predict(codes_without_fold)`` gives its probabilities. Types with one label give no pair.
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
        rows.append(predict(train)[test])
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
        The annotation pipeline: label codes (-1 = unlabelled) to cells × classes probabilities.
    codes
        Current label codes.
    proba
        ``predict(codes)``, the probabilities to calibrate.
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


def novelty_score(
    W: sp.csr_matrix,
    codes: np.ndarray,
    rep: np.ndarray | None = None,
    *,
    alpha: float = 0.9,
    counts=None,
    batches: np.ndarray | None = None,
) -> np.ndarray:
    """How likely each cell belongs to a type with no label at all, in (0, 1] (higher = more novel).

    Position in the graph or latent space, as ranks, the larger taken (a cell is novel if either says so):

    * graph: label mass spread from all labelled cells together over the graph (``(I - alpha S) f = y``,
      one solve), divided by the square root of the degree (the scale the symmetric normalisation gives
      ``f``); cells of an unlabelled type sit where the mass barely reaches;
    * latent (when ``rep`` is given): Euclidean distance to the nearest labelled cell in ``rep`` — catches
      small unlabelled types glued to heavily labelled neighbours in the graph.

    With ``counts`` (cells × genes, raw) the score is the mean of that rank and the rank of an expression
    mismatch: labels are propagated (``codes``: class codes, -1 = unlabelled), and each cell's expression
    is compared with the mean profile of the labelled cells of its predicted class
    (:func:`biossl.tl.reference.expression_ratio`, per batch of ``batches``). An unlabelled type next to a
    labelled one is taken for it by the graph, but its genes still differ (baron_mouse's endocrine types: far
    better separated by expression than by position, ``benchmarks/novel_types.py``).

    The top probability alone is a poor novelty score (``benchmarks/novel_types.py``): propagation
    confidently assigns a whole unlabelled type to its nearest labelled neighbour.
    """
    from .. import graph

    n = W.shape[0]
    codes = np.asarray(codes, dtype=np.int64)
    labelled = codes >= 0
    if not labelled.any():
        return np.ones(n)
    seeds = np.zeros((n, 1))
    seeds[labelled, 0] = 1.0 / labelled.sum()
    degree = np.asarray(W.sum(1)).ravel()
    mass = graph.propagate(W, seeds, alpha=alpha)[:, 0] / np.sqrt(np.maximum(degree, 1e-12))
    score = rank01(-mass)
    if rep is not None:
        from sklearn.neighbors import NearestNeighbors

        rep = np.asarray(rep, dtype=np.float64)
        dist = NearestNeighbors(n_neighbors=1).fit(rep[labelled]).kneighbors(rep)[0][:, 0]
        score = np.maximum(score, rank01(dist))
    if counts is not None:
        score = (score + rank01(-_expression_ratio(W, codes, counts, batches, alpha))) / 2
    return score


def _expression_ratio(W: sp.csr_matrix, codes: np.ndarray, counts, batches: np.ndarray | None, alpha: float):
    """:func:`biossl.tl.reference.expression_ratio` of each cell against its propagated class."""
    from ._mapping import class_profiles, expression_ratio
    from ._propagation import propagate_labels

    n_classes = int(codes.max()) + 1
    _, _, pred = propagate_labels(W, codes, n_classes, alpha=alpha)
    profiles, similarity = class_profiles(counts, codes, n_classes)
    present = np.ones(counts.shape[1])
    return expression_ratio(counts, present, pred, sp.csr_matrix(W), profiles, similarity, batches=batches)


@doc_params
def novelty(
    adata: AnnData,
    labels_key: str,
    *,
    unlabeled_category: str | None = "Unknown",
    neighbors_key: str | None = "biossl",
    key_added: str = "biossl_novelty",
    copy: bool = False,
) -> AnnData | None:
    """Score every cell for belonging to a type that has no label yet (see :func:`novelty_score`).

    Parameters
    ----------
    adata
        Annotated data with a graph from :func:`biossl.tl.neighbors`.
    labels_key
        Column of ``obs`` with the known labels (unlabelled: NaN or ``unlabeled_category``).
    unlabeled_category
        Value marking unlabelled cells (in addition to NaN).
    neighbors_key
        Prefix of the graph in ``obsp``; None uses scanpy's ``obsp["connectivities"]``.
    key_added
        ``obs`` column written.
    copy
        {copy}

    Returns
    -------
    None or a copy. Writes ``obs["{key_added}"]`` in (0, 1] (labelled cells 0). A high score means: look at
    this cell, its type may be missing from the labels. The expression view reads the raw counts of the genes
    :func:`biossl.pp.setup` selected (and its ``batch_key``); without raw counts only the position view is
    used (a warning says so). ``benchmarks/novel_types.py`` (one type's labels hidden, a few labels per other
    type) compares its AUROC with ``1 - biossl_confidence``; the figures are in ``benchmarks/results``.
    """
    from ._propagation import connectivities, graph_representation, label_codes

    codes, _ = label_codes(adata, labels_key, unlabeled_category)
    if not (codes >= 0).any():
        raise ValueError(f"adata.obs[{labels_key!r}] has no labelled cell; label a few cells first.")
    W = connectivities(adata, neighbors_key)
    if W.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"the graph has shape {W.shape} but adata has {adata.n_obs} cells; rebuild it.")
    try:
        counts, batches = _setup_counts(adata)
    except ValueError as err:  # e.g. only log-normalised values: the position view still works
        logger.warning("novelty: %s; scoring by graph position only, without the expression view.", err)
        counts, batches = None, None
    score = novelty_score(W, codes, graph_representation(adata, neighbors_key), counts=counts, batches=batches)
    score[codes >= 0] = 0.0
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = score.astype(np.float32)
    return adata if copy else None


def _setup_counts(adata: AnnData) -> tuple[object, np.ndarray | None]:
    """Raw counts of the genes :func:`biossl.pp.setup` selected, and each cell's batch code (or None).

    Setup's defaults are planned (nothing written) when it has not run; batches follow its ``batch_key``.
    """
    from ..model import align_genes
    from ..pp import check_batch, ensure_setup

    mask, params, _ = ensure_setup(adata)
    counts, _, _ = align_genes(adata, [str(g) for g in adata.var_names[mask]], counts=params["counts"])
    batch = check_batch(adata, params.get("batch_key"))
    return counts, None if batch is None else pd.Categorical(batch).codes.astype(np.int64)
