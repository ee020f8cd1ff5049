"""The propagation machinery shared by the public steps: label parsing, label spreading, self-training.

``tl.annotate``, ``tl.map_query``, ``tl.novelty``, ``tl.suggest_labels`` and the calibration all build on these;
no public step imports another for them.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import graph

logger = logging.getLogger("biossl")

UNKNOWN = "Unknown"
CLASS_PRIORS = ("estimate", "uniform")


def label_codes(adata: AnnData, labels_key: str, unlabeled_category: str | None) -> tuple[np.ndarray, list[str]]:
    """Integer codes of ``obs[labels_key]`` (-1 = unlabelled: NaN or ``unlabeled_category``) and the sorted classes.

    Lenient: any number of classes and labelled cells; :func:`split_labels` adds the checks propagation needs.
    """
    if labels_key not in adata.obs:
        raise ValueError(
            f"labels_key={labels_key!r} is not a column of adata.obs (have: {list(adata.obs.columns)[:10]})."
        )
    col = adata.obs[labels_key]
    missing = col.isna().to_numpy()
    text = col.astype(str).to_numpy()
    if unlabeled_category is not None:
        missing |= text == str(unlabeled_category)
    # how "no label" looks once a table has been through CSV/R/pandas: never a cell type
    values, inverse = np.unique(text, return_inverse=True)
    blank = ~missing & np.array([v.strip().lower() in ("", "na", "nan", "none", "<na>") for v in values])[inverse]
    if blank.any():
        logger.warning(
            "adata.obs[%r]: %d cells labelled %s are treated as unlabelled.",
            labels_key, int(blank.sum()), ", ".join(repr(v) for v in sorted(set(text[blank]))),
        )  # fmt: skip
        missing |= blank
    classes = sorted(set(text[~missing]))
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.array([-1 if m else lookup[t] for m, t in zip(missing, text, strict=True)], dtype=np.int64)
    return codes, classes


def label_names(adata: AnnData, labels_key: str, unlabeled_category: str | None) -> tuple[np.ndarray, list[str]]:
    """The label of each cell as text (``""`` = unlabelled, as :func:`label_codes` decides) and the sorted classes.

    For comparing labels with predictions (scores, reports); as lenient as :func:`label_codes`.
    """
    codes, classes = label_codes(adata, labels_key, unlabeled_category)
    names = np.array([*classes, ""], dtype=object)  # code -1 (unlabelled) picks the trailing ""
    return names[codes], classes


def split_labels(adata: AnnData, labels_key: str, unlabeled_category: str | None) -> tuple[np.ndarray, list[str]]:
    """Integer codes of ``obs[labels_key]`` (-1 = unlabelled) and the sorted class names.

    Raises ValueError when the column is missing, nothing or everything is labelled, or only one class is.
    """
    codes, classes = label_codes(adata, labels_key, unlabeled_category)
    where = f"adata.obs[{labels_key!r}]"
    if not classes:
        raise ValueError(
            f"{where} has no labelled cell (all NaN or {unlabeled_category!r}); label a few cells of each type."
        )
    if len(classes) < 2:
        raise ValueError(f"{where} has only one labelled class ({classes[0]!r}); label cells of at least two types.")
    if (codes >= 0).all():
        raise ValueError(
            f"every cell in {where} is labelled, so there is nothing to annotate; mark unlabelled cells as NaN "
            f"or {unlabeled_category!r}."
        )
    return codes, classes


def check_no_unknown_class(classes: list[str], labels_key: str) -> None:
    """Raise ValueError when ``"Unknown"``, the call biossl reserves, is one of the label classes."""
    if UNKNOWN in classes:
        raise ValueError(
            f"{UNKNOWN!r} is used as a real class in obs[{labels_key!r}] but biossl reserves it for cells it cannot "
            f"call; pass unlabeled_category={UNKNOWN!r} if it marks unlabelled cells, or rename the class."
        )


def connectivities(adata: AnnData, neighbors_key: str | None) -> sp.csr_matrix:
    """The graph written by :func:`biossl.tl.neighbors` (or scanpy's, with ``neighbors_key=None``)."""
    key = "connectivities" if neighbors_key is None else f"{neighbors_key}_connectivities"
    if key not in adata.obsp:
        raise ValueError(
            f"no graph at adata.obsp[{key!r}]; run biossl.tl.neighbors(adata) (or sc.pp.neighbors and "
            "neighbors_key=None) first."
        )
    return sp.csr_matrix(adata.obsp[key])


def graph_representation(adata: AnnData, neighbors_key: str | None) -> np.ndarray | None:
    """The ``obsm`` matrix the graph was built on (for self-training), if it can be found."""
    uns_key = "neighbors" if neighbors_key is None else f"{neighbors_key}_neighbors"
    rep = adata.uns.get(uns_key, {}).get("params", {}).get("use_rep")
    if rep is None and neighbors_key is None and "X_pca" in adata.obsm:
        rep = "X_pca"
    if rep is None or rep not in adata.obsm:
        logger.info("annotate: no representation found for the graph; skipping refinement")
        return None
    X = np.asarray(adata.obsm[rep])  # kept in its precision (10^6 cells x 50: 0.4 GB more in float64)
    return X if np.issubdtype(X.dtype, np.floating) else X.astype(np.float64)


def class_balanced_seeds(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Seed matrix with each class's seeds summing to one, so large classes do not swamp rare ones."""
    Y = np.zeros((len(codes), n_classes))
    labelled = np.flatnonzero(codes >= 0)
    counts = np.bincount(codes[labelled], minlength=n_classes)
    Y[labelled, codes[labelled]] = 1.0 / counts[codes[labelled]]
    return Y


def annotation_predictor(
    W: sp.csr_matrix, n_classes: int, *, alpha: float, rep: np.ndarray | None, class_prior: str = "uniform",
    operator: graph.SpreadingOperator | None = None,
) -> AnnotationPredictor:  # fmt: skip
    """The probabilities ``tl.annotate`` computes, as a function of the label codes (-1 = unlabelled).

    Propagation on ``W``, then self-training on ``rep`` when it is given. The graph's spreading operator is
    built once for all calls (the calibration folds of :func:`biossl.tl.calibrate.calibrate_annotation`), or
    given as ``operator`` (``graph.spreading_operator(W, alpha)``) when several predictors share the graph.
    """
    return AnnotationPredictor(W, n_classes, alpha=alpha, rep=rep, class_prior=class_prior, operator=operator)


SOLVE_TOL = 1e-6  # relative residual of the annotation's propagation solves
# The calibration folds' (looser: they only fit a temperature). benchmarks/calibration.py, k = 3, 5, 10
# labels per type, seeds 0-4: mean ECE within 0.004 of the 1e-6 folds' on pbmc3k, baron_mouse and cellbench (1e-3:
# baron_mouse k = 3 0.080 -> 0.102). At 10^6 cells (scale simulation) a float32 solve takes 12 products instead of 19
# (0.42 vs 0.64 s; tl.annotate 69 -> 52 CPU-s); the fitted temperature moved 0.48 -> 0.43 and the ECE 0.008 -> 0.011
# (1e-5: 0.54 and 0.011; sixty held-out pairs that are nearly all right fit a noisy temperature)
FOLD_TOL = 1e-4


class AnnotationPredictor:
    """See :func:`annotation_predictor`. Calling it solves in float64; :meth:`fold` in float32.

    The calibration folds only fit a temperature on the held-out labelled cells, so they solve in single
    precision (on the 2*10^5-cell scale simulation, at the same tolerance, the fitted temperature and the ECE
    were unchanged to four decimals while the folds ran 1.9x faster) to the looser ``FOLD_TOL``, and score only
    the held-out cells; the labels and the probabilities that are written come from the float64 solve.
    """

    def __init__(
        self, W: sp.csr_matrix, n_classes: int, *, alpha: float, rep: np.ndarray | None, class_prior: str,
        operator: graph.SpreadingOperator | None = None,
    ):  # fmt: skip
        self.W, self.n_classes, self.alpha, self.rep, self.class_prior = W, n_classes, alpha, rep, class_prior
        # one held at a time (10^6 cells: ~0.3 GB in float64)
        self._operator = graph.spreading_operator(W, alpha) if operator is None else operator
        self._init: dict = {}  # the first self-training fit starts the later ones (folds: a few labels fewer)
        # the class-balanced probabilities (before the class prior and the self-training) of the last float64 call,
        # when it left some cell unreached: tl.annotate attaches such cells by their reached neighbours' (from the
        # same solve, not a second one)
        self.balanced: np.ndarray | None = None

    def __call__(self, codes: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of every cell, or of ``rows`` only (the graph still spreads over every cell)."""
        return self._predict(codes, np.float64, rows, SOLVE_TOL)

    def fold(self, codes: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """As a call, with the propagation solved in float32 to ``FOLD_TOL`` (the calibration folds)."""
        return self._predict(codes, np.float32, rows, FOLD_TOL)

    def _predict(self, codes: np.ndarray, dtype, rows: np.ndarray | None, tol: float) -> np.ndarray:
        held = self._operator.matrix.dtype
        if held != dtype:  # cast down from float64; never cast float32 back up: rebuild
            double = self._operator if held == np.float64 else graph.spreading_operator(self.W, self.alpha)
            self._operator = double.astype(dtype)
        F = class_mass(self.W, codes, self.n_classes, alpha=self.alpha, operator=self._operator, tol=tol)
        if dtype == np.float64:  # kept only where some cell is unreached (tl.annotate attaches those)
            self.balanced = None if F.any(1).all() else normalise_rows(F)[0]
        proba = with_class_prior(F, self.class_prior)[0]
        if self.rep is not None:
            return normalise_rows(self_train(self.rep, codes, proba, init=self._init, rows=rows))[0]
        return proba if rows is None else proba[rows]


def propagate_labels(
    W: sp.csr_matrix,
    codes: np.ndarray,
    n_classes: int,
    *,
    alpha: float = 0.9,
    class_prior: str = "uniform",
    operator: graph.SpreadingOperator | None = None,
    tol: float = SOLVE_TOL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities, confidence and predicted code (-1 = unreachable) for every cell.

    Each class column of the propagated scores is scaled to unit total mass before the rows are
    normalised (class mass normalisation, after Zhu, Ghahramani & Lafferty 2003), so a class whose few
    seeds sit in a dense region does not absorb its neighbours. With ``class_prior="uniform"`` every
    class then has the same mass; ``"estimate"`` reweights the columns by :func:`estimate_class_prior`.
    ``operator`` is ``graph.spreading_operator(W, alpha)`` when already built; ``tol`` is the solver's relative
    residual (:func:`biossl.graph.propagate`).
    """
    F = class_mass(W, codes, n_classes, alpha=alpha, operator=operator, tol=tol)
    return with_class_prior(F, class_prior)


def class_mass(
    W: sp.csr_matrix, codes: np.ndarray, n_classes: int, *, alpha: float,
    operator: graph.SpreadingOperator | None = None, tol: float = SOLVE_TOL,
) -> np.ndarray:  # fmt: skip
    """The propagated scores with each class column scaled to unit total mass (see :func:`propagate_labels`)."""
    F = graph.propagate(W, class_balanced_seeds(codes, n_classes), alpha=alpha, operator=operator, tol=tol)
    col = F.sum(0, keepdims=True)
    return np.divide(F, col, out=np.zeros_like(F), where=col > 0)


def with_class_prior(F: np.ndarray, class_prior: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`normalise_rows` of the class-mass scores ``F``, reweighted in place when ``class_prior="estimate"``."""
    if class_prior == "estimate":
        F *= estimate_class_prior(F)[None, :]
    return normalise_rows(F)


def estimate_class_prior(F: np.ndarray, cap: float = 1.5) -> np.ndarray:
    """Class shares among the calls of the mass-normalised scores ``F``, capped at ``cap / n_classes``.

    Few labels per type are drawn evenly across types, so the seeds carry no information on how common
    each type is, and a uniform class mass lets a rare type (a few cells, all labelled) spill over its
    neighbours. The share of cells each class wins (add-one smoothed) is the one-step EM estimate of the
    prior (Zhu et al. 2003 fix the prior from the labelled cells instead, which is uniform here). Large
    classes are capped so that only rare ones are shrunk: without the cap one noisy seed among sibling
    types (naive/memory CD4 T with one label each) makes its class grow at the others' expense. The cap
    1.5 was chosen on pbmc3k and baron_mouse (1 favoured pbmc3k at one label per type, 2–3 baron_mouse at
    ten; ``benchmarks/anchors``).
    """
    n_classes = F.shape[1]
    reached = F.sum(1) > 0
    counts = np.bincount(F[reached].argmax(1), minlength=n_classes) + 1.0
    return np.minimum(counts / counts.sum(), cap / n_classes)


def normalise_rows(F: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mass = F.sum(1)
    reached = mass > 0
    proba = np.zeros_like(F)
    proba[reached] = F[reached] / mass[reached, None]
    return proba, proba.max(1), np.where(reached, proba.argmax(1), -1)


def call_labels(
    proba: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    *,
    unknown_threshold: float | None = None,
    unknown: np.ndarray | None = None,
) -> tuple[pd.Categorical, np.ndarray, np.ndarray, np.ndarray]:
    """The calls ``tl.annotate`` writes: labels (with ``"Unknown"``), confidence, probabilities, Unknown mask.

    ``proba`` is cells × classes (rows are normalised here); cells with ``codes >= 0`` keep their label with
    confidence 1. Cells no label reached, cells below ``unknown_threshold`` and cells in ``unknown`` (a mask
    from the caller) are called ``"Unknown"``; the labelled cells never are.
    """
    proba, confidence, pred_codes = normalise_rows(proba)
    labelled = codes >= 0
    pred_codes[labelled] = codes[labelled]
    confidence[labelled] = 1.0
    called_unknown = pred_codes < 0
    if unknown_threshold is not None:
        called_unknown |= (confidence < unknown_threshold) & ~labelled
    if unknown is not None:
        called_unknown |= unknown & ~labelled
    return label_categorical(classes, pred_codes, called_unknown), confidence, proba, called_unknown


def label_categorical(classes, pred_codes: np.ndarray, unknown: np.ndarray) -> pd.Categorical:
    """The label column: class names of ``pred_codes`` (-1: none), ``"Unknown"`` where ``unknown`` or no class."""
    names = np.array([*classes, UNKNOWN], dtype=object)
    return pd.Categorical(names[np.where(unknown, len(classes), pred_codes)], categories=[*classes, UNKNOWN])


def write_labels(
    adata: AnnData, key_added: str, labels: pd.Categorical, confidence: np.ndarray, proba: np.ndarray
) -> None:
    """The keys of ``tl.annotate``: ``obs["{key}_label"]``, ``obs["{key}_confidence"]``, ``obsm["{key}_proba"]``."""
    adata.obs[f"{key_added}_label"] = pd.Series(labels, index=adata.obs_names)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    adata.obsm[f"{key_added}_proba"] = proba.astype(np.float32)


@functools.cache
def _blas_controller():
    """The loaded BLAS libraries as threadpoolctl sees them, found once.

    ``threadpool_limits`` rescans them on every call: 3 ms, a tenth of a self-training fit on pbmc3k. A library
    loaded later would not be limited; the fit's own (numpy's and scipy's, imported with sklearn) are loaded by
    the first call.
    """
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


PREDICT_ROWS = 100_000  # self-training's classifier scores this many cells at a time


def self_train(
    X: np.ndarray,
    codes: np.ndarray,
    proba: np.ndarray,
    *,
    quantile: float = 0.5,
    max_cells: int = 50_000,
    seed: int = 0,
    init: dict | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Refine propagated probabilities with a classifier trained on confident pseudo-labels.

    A multinomial logistic regression on the representation ``X`` is fitted to the labelled cells plus,
    for each predicted class, its cells above the class's median confidence (at most ``max_cells``,
    sampled per class); its probabilities are averaged with the propagated ones. Unreached cells stay
    unreached. Its gain at few labels per type is measured in ``benchmarks/fewlabel.py``.

    ``init`` is a dict shared by calls on the same cells: an empty one receives this fit's coefficients, a
    filled one starts the optimiser there when the classes match. The loss is convex, so the start only
    moves where L-BFGS stops within its tolerance; the calibration folds of :func:`annotate` need about
    half the iterations from the full fit (pbmc3k: 16-18 instead of 26-34).

    ``rows`` (indices): return the refined probabilities of these cells only; the fit is the same, and the
    classifier scores only them. A calibration fold reads only its held-out cells: at 10^6 cells, scoring every
    cell cost 1 CPU-s per fold (``tl.annotate`` 74 -> 69 CPU-s, the same temperature to 1e-10).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n_classes = proba.shape[1]
    reached = proba.sum(1) > 0
    pred, conf = proba.argmax(1), proba.max(1)
    labelled = codes >= 0
    rng = np.random.default_rng(seed)
    per_class = max(1, max_cells // n_classes)
    chosen = [np.flatnonzero(labelled)]
    for c in range(n_classes):
        idx = np.flatnonzero((pred == c) & reached & ~labelled)
        if len(idx) == 0:
            continue
        idx = idx[conf[idx] >= np.quantile(conf[idx], quantile)]
        if len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        chosen.append(idx)
    train_idx = np.concatenate(chosen)
    target = np.where(labelled, codes, pred)[train_idx]
    classes = np.unique(target)
    index = slice(None) if rows is None else np.asarray(rows)  # a slice keeps proba[index] a view
    if len(classes) < 2:
        return proba[index]
    train = X[train_idx].astype(np.float64)  # fitted and scored in float64, whatever the precision of X
    scaler = StandardScaler().fit(train)
    n_out = len(X) if rows is None else len(index)
    q = np.zeros((n_out, n_classes), dtype=proba.dtype)
    clf = LogisticRegression(C=1.0, max_iter=500)
    if init and np.array_equal(init["classes"], classes):
        clf.set_params(warm_start=True)
        clf.coef_, clf.intercept_ = init["coef"].copy(), init["intercept"].copy()
    # one BLAS thread: these products are too small to share (pbmc3k on 2 cores: 0.16 s instead of 1.9 s wall,
    # and 3x faster still at the 50,000-cell cap)
    with _blas_controller().limit(limits=1, user_api="blas"):
        clf.fit(scaler.transform(train), target)
        for start in range(0, n_out, PREDICT_ROWS):  # by blocks: the scaled copy of X is never whole
            block = slice(start, start + PREDICT_ROWS)
            cells = block if rows is None else index[block]
            q[block, clf.classes_] = clf.predict_proba(scaler.transform(X[cells].astype(np.float64)))
    if init is not None and not init:
        init.update(classes=classes, coef=clf.coef_, intercept=clf.intercept_)
    out = 0.5 * proba[index] + 0.5 * q
    out[~reached[index]] = 0.0
    return out


def rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1] (ties share the average rank): a scale-free version of ``x``."""
    from scipy.stats import rankdata

    return rankdata(x) / len(x)


# tl.annotate: a cell that no label reaches through the graph (its graph component holds no labelled cell) takes the
# mean class-balanced probabilities (propagated with every class carrying the same mass, before the class prior and the
# self-training) of its ATTACH_NEIGHBORS nearest reached cells in the graph's representation, pulled toward uniform by
# how far the nearest one lies: weight r / d, with d that distance and r that cell's neighbourhood radius (the
# distance to its farthest graph neighbour). Beyond d = ATTACH_MAX_RATIO * r the cell stays Unknown. On generated
# species pairs (benchmarks/species_pair.py, the pooled path) such cells were whole query types left without an
# edge to the reference, at d / r = 1.0-4.4; on the nine sets with any, their neighbours' mean (of the final
# probabilities, the first version of this rule) was right for 35-100% of them (mean 91%), the 15 nearest labelled
# cells' vote for 0-99% (mean 55%), and on seven of the sets the self-training classifier's call for 31-100% (mean
# 64%), at confidence 1.0 (benchmarks/strong_batch_log.md). The balanced probabilities replaced the final ones
# because a cut-off group is often a type the reference holds few of (activated stellate cells: 4 of 750 mouse
# cells, 123 of 3,000 human ones); the estimated prior and the classifier shrink such a class, and its cells went to
# the common type beside it (benchmarks/novel_species.py: pooled macro-F1 0.892 -> 0.940 over 22 sets).
ATTACH_NEIGHBORS = 15
ATTACH_MAX_RATIO = 5.0


def attach_to_reached(
    rep: np.ndarray, radius: np.ndarray, proba: np.ndarray, source: np.ndarray | None
) -> tuple[np.ndarray, int]:
    """``proba`` with the cells no label reached (rows summing to 0) given their nearest reached cells' call.

    ``rep``: the graph's representation; ``radius``: each cell's distance to its farthest graph neighbour;
    ``source``: the probabilities of every cell that the unreached ones take the mean of (``tl.annotate``: the
    class-balanced ones, ``AnnotationPredictor.balanced``, None when the propagation reached every cell; the
    refinement of ``map_query``: ``proba`` itself). Returns the probabilities and how many cells took a call.
    """
    reached = proba.sum(1) > 0
    if source is None or reached.all() or not reached.any():
        return proba, 0
    found = np.flatnonzero(reached)
    k = min(ATTACH_NEIGHBORS, len(found))
    index = np.asarray(rep[found], dtype=np.float32)  # row selections: copies of these rows only, not of ``rep``
    queries = np.asarray(rep[~reached], dtype=np.float32)
    idx, dist = graph.knn_query(index, queries, k, method="auto", seed=0)  # pynndescent when large
    idx = found[idx]
    ratio = dist[:, 0] / np.maximum(radius[idx[:, 0]], np.finfo(np.float32).tiny)
    near = ratio <= ATTACH_MAX_RATIO
    weight = np.minimum(1.0, 1.0 / np.maximum(ratio[near], 1e-12))[:, None]
    n_classes = proba.shape[1]
    out = proba.copy()
    rows = np.flatnonzero(~reached)[near]
    if len(rows):
        out[rows] = weight * source[idx[near]].mean(1) + (1.0 - weight) / n_classes
    return out, int(near.sum())
