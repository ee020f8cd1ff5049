"""Evaluation: few-label splits and scores used by the benchmarks, the CLI and the tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "auroc",
    "egad",
    "egad_folds",
    "expected_calibration_error",
    "few_seed_tasks",
    "fewlabel_split",
    "gene_set_matrix",
    "macro_f1",
    "mean_roc",
    "neighbor_voting",
    "node_degree_scores",
    "per_class_f1",
    "random_scores",
    "rank_standardize",
    "reliability_table",
    "task_aurocs",
]


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
    from sklearn.metrics import f1_score

    truth = np.asarray(truth, dtype=object).astype(str)
    pred = np.asarray(pred, dtype=object).astype(str)
    classes = sorted(set(truth))
    scores = f1_score(truth, pred, labels=classes, average=None, zero_division=0.0) if classes else []
    return {c: float(f) for c, f in zip(classes, scores, strict=True)}


def macro_f1(truth, pred) -> float:
    """Mean F1 over the classes present in ``truth``."""
    return float(np.mean(list(per_class_f1(truth, pred).values())))


# ---------------------------------------------------------------------------------------------------------------
# gene function: the EGAD protocol (Ballouz, Weber, Pavlidis & Gillis 2017, Bioinformatics 33:612) and neighbour
# voting (Gillis & Pavlidis 2011, PLoS ONE 6:e17258; EGAD's run_GBA)


def auroc(scores, truth) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``truth`` (Mann-Whitney U, ties count one half).

    NaN when ``truth`` has no positives or no negatives. The value of :func:`sklearn.metrics.roc_auc_score`;
    computed from ranks here because the EGAD evaluation calls it for thousands of small tasks, where sklearn's
    input checks cost several times the ranking itself.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gene_set_matrix(gene_sets: dict, genes, *, min_size: int = 20, max_size: int = 1000) -> tuple[np.ndarray, list]:
    """Genes × sets boolean membership of the sets with ``min_size``–``max_size`` members among ``genes``.

    Returns the matrix and the names of the kept sets (in the order of ``gene_sets``). Genes are matched
    exactly (case them beforehand).
    """
    index = {g: i for i, g in enumerate(genes)}
    cols, names = [], []
    for name, members in gene_sets.items():
        pos = sorted({index[g] for g in members if g in index})
        if min_size <= len(pos) <= max_size:
            col = np.zeros(len(index), dtype=bool)
            col[pos] = True
            cols.append(col)
            names.append(name)
    matrix = np.column_stack(cols) if cols else np.zeros((len(index), 0), dtype=bool)
    return matrix, names


def egad_folds(membership: np.ndarray, *, n_folds: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validation tasks of the EGAD protocol: each set's members split into ``n_folds`` folds.

    Returns ``train`` (genes × tasks, the members whose labels are kept in a task) and ``term`` (the set
    each task belongs to); task ``t`` hides one fold of set ``term[t]``. Sampled with
    ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    n_genes, n_sets = membership.shape
    train = np.zeros((n_genes, n_sets * n_folds), dtype=bool)
    for s in range(n_sets):
        folds = np.array_split(rng.permutation(np.flatnonzero(membership[:, s])), n_folds)
        for f in range(n_folds):
            kept = np.concatenate([folds[j] for j in range(n_folds) if j != f])
            train[kept, s * n_folds + f] = True
    return train, np.repeat(np.arange(n_sets), n_folds)


def few_seed_tasks(
    membership: np.ndarray, n_seeds: int, *, n_repeats: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Few-seed tasks: ``n_seeds`` random members of a set are known, the rest are to be found.

    Same return values as :func:`egad_folds` (``n_repeats`` tasks per set; sets need more than
    ``n_seeds`` members).
    """
    rng = np.random.default_rng(seed)
    n_genes, n_sets = membership.shape
    train = np.zeros((n_genes, n_sets * n_repeats), dtype=bool)
    for s in range(n_sets):
        members = np.flatnonzero(membership[:, s])
        if len(members) <= n_seeds:
            raise ValueError(f"set {s} has {len(members)} members; few-seed mode needs more than n_seeds={n_seeds}.")
        for r in range(n_repeats):
            train[rng.choice(members, n_seeds, replace=False), s * n_repeats + r] = True
    return train, np.repeat(np.arange(n_sets), n_repeats)


def task_aurocs(scores: np.ndarray, train: np.ndarray, term: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """AUROC of each task over all genes not used for training: held-out members vs all non-members.

    ``scores`` is genes × tasks (higher = more likely a member). Returns one AUROC per task.
    """
    out = np.empty(train.shape[1])
    for t in range(train.shape[1]):
        evaluated = ~train[:, t]
        out[t] = auroc(scores[evaluated, t], membership[evaluated, term[t]])
    return out


def egad(
    predict,
    membership: np.ndarray,
    *,
    n_folds: int = 3,
    seed: int = 0,
    tasks: tuple[np.ndarray, np.ndarray] | None = None,
    chunk: int = 512,
) -> np.ndarray:
    """Per-set AUROC by the EGAD protocol: ``n_folds``-fold CV over members, mean AUROC over the folds.

    Parameters
    ----------
    predict
        Callable taking a genes × tasks 0/1 float matrix of known members and returning genes × tasks
        scores (e.g. :func:`neighbor_voting` with a fixed network).
    membership
        Genes × sets boolean matrix (see :func:`gene_set_matrix`).
    n_folds, seed
        Folds of :func:`egad_folds` (ignored when ``tasks`` is given).
    tasks
        Precomputed ``(train, term)`` (from :func:`egad_folds` or :func:`few_seed_tasks`), so several
        methods are scored on the very same folds.
    chunk
        Tasks scored per call of ``predict`` (bounds memory).

    Returns
    -------
    Mean AUROC of each set (length ``membership.shape[1]``).
    """
    train, term = egad_folds(membership, n_folds=n_folds, seed=seed) if tasks is None else tasks
    per_task = np.empty(train.shape[1])
    for s in range(0, train.shape[1], chunk):
        block = slice(s, min(train.shape[1], s + chunk))
        scores = np.asarray(predict(train[:, block].astype(np.float64)))
        per_task[block] = task_aurocs(scores, train[:, block], term[block], membership)
    n_sets = membership.shape[1]
    return np.bincount(term, per_task, minlength=n_sets) / np.maximum(np.bincount(term, minlength=n_sets), 1)


def rank_standardize(network: np.ndarray) -> np.ndarray:
    """EGAD's network standardisation: rank all edge weights, scale to (0, 1], symmetrise; zero diagonal."""
    from scipy.stats import rankdata

    C = np.array(network, dtype=np.float64)
    n = C.shape[0]
    off = ~np.eye(n, dtype=bool)
    R = np.zeros_like(C)
    R[off] = rankdata(C[off])
    R = (R + R.T) / 2
    return R / R.max() if R.max() > 0 else R


def neighbor_voting(network: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Neighbour-voting scores: each gene's summed edge weight to the known members over its degree.

    ``network`` is a genes × genes non-negative weight matrix, ``known`` genes × tasks 0/1.
    """
    network = np.asarray(network, dtype=np.float64)
    degree = network.sum(1)
    degree[degree == 0] = 1.0
    return (network @ np.asarray(known, dtype=np.float64)) / degree[:, None]


def node_degree_scores(network: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The node-degree baseline (a multifunctionality proxy): every task ranks genes by their degree."""
    degree = np.asarray(network, dtype=np.float64).sum(1)
    return np.repeat(degree[:, None], np.asarray(known).shape[1], axis=1)


def random_scores(known: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """The random baseline: uniform scores, seeded."""
    return np.random.default_rng(seed).random(np.asarray(known).shape)


def mean_roc(
    predict, membership: np.ndarray, tasks: tuple[np.ndarray, np.ndarray], *, n_points: int = 101, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve averaged vertically over tasks (true-positive rate at a common false-positive-rate grid).

    Same inputs as :func:`egad`; each task is evaluated over the genes not used for its training.
    Returns ``(fpr, tpr)`` arrays of length ``n_points``.
    """
    train, term = tasks
    fpr = np.linspace(0.0, 1.0, n_points)
    total = np.zeros(n_points)
    for s in range(0, train.shape[1], chunk):
        block = slice(s, min(train.shape[1], s + chunk))
        scores = np.asarray(predict(train[:, block].astype(np.float64)))
        for i, t in enumerate(range(block.start, block.stop)):
            evaluated = ~train[:, t]
            sc, truth = scores[evaluated, i], membership[evaluated, term[t]]
            order = np.argsort(-sc, kind="stable")
            tp = np.concatenate([[0], np.cumsum(truth[order])]) / max(truth.sum(), 1)
            fp = np.concatenate([[0], np.cumsum(~truth[order])]) / max((~truth).sum(), 1)
            total += np.interp(fpr, fp, tp)
    return fpr, total / train.shape[1]


def reliability_table(confidence, correct, *, n_bins: int = 15) -> pd.DataFrame:
    """Cells per equal-width confidence bin with their mean confidence and accuracy (a reliability diagram).

    Bins are ``(lo, hi]`` over [0, 1] (the first also takes 0); empty bins are dropped.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence has shape {confidence.shape} but correct has {correct.shape}; pass one per cell.")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            rows.append(
                {
                    "lo": edges[b],
                    "hi": edges[b + 1],
                    "n_cells": int(sel.sum()),
                    "confidence": float(confidence[sel].mean()),
                    "accuracy": float(correct[sel].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["lo", "hi", "n_cells", "confidence", "accuracy"])


def expected_calibration_error(confidence, correct, *, n_bins: int = 15) -> float:
    """Expected calibration error: cell-weighted mean |accuracy - confidence| over confidence bins.

    Equal-width bins as in Guo et al. 2017 (ICML), "On calibration of modern neural networks"; 0 is
    perfect calibration. ``correct`` says whether each cell's predicted label is its true label.
    """
    table = reliability_table(confidence, correct, n_bins=n_bins)
    if table.empty:
        return float("nan")
    gap = (table["accuracy"] - table["confidence"]).abs()
    return float((gap * table["n_cells"]).sum() / table["n_cells"].sum())
