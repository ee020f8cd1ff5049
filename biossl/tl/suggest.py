"""``tl.suggest_labels``: which unlabelled cells a biologist should label next (active learning)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._docs import doc_params
from .._record import record
from ._propagation import (
    connectivities,
    graph_representation,
    label_codes,
    normalise_rows,
    propagate_labels,
    rank01,
    self_train,
)

logger = logging.getLogger("biossl")

__all__ = ["suggest_labels", "suggestion_scores"]


def suggestion_scores(
    W: sp.csr_matrix,
    codes: np.ndarray,
    n_classes: int,
    *,
    rep: np.ndarray | None = None,
    alpha: float = 0.9,
    density_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """Per-cell ingredients of the suggestion score (all in [0, 1], higher = more worth labelling).

    ``uncertainty``
        One minus the margin between the two most probable classes of the label propagation (margin
        sampling, Scheffer et al. 2001); 1 where no labelled cell reaches the cell or with < 2 classes.
    ``coverage``
        How little label mass reaches the cell through the graph (rank of the propagated mass per unit
        degree, reversed): high in graph regions with no labelled cell nearby, where a
        missing type hides.
    ``density``
        Rank of the cell's weighted degree: dense, typical cells before outliers (information density,
        Settles & Craven 2008).
    ``score``
        ``max(uncertainty, coverage) * density ** density_weight``.
    """
    n = W.shape[0]
    degree = np.asarray(W.sum(1)).ravel()
    density = rank01(degree)
    labelled = codes >= 0
    if n_classes >= 2:
        proba, _, pred = propagate_labels(W, codes, n_classes, alpha=alpha, class_prior="estimate")
        if rep is not None:
            proba, _, pred = normalise_rows(self_train(rep, codes, proba))
        top2 = -np.sort(-proba, axis=1)[:, :2]
        uncertainty = np.where(pred >= 0, 1.0 - (top2[:, 0] - top2[:, 1]), 1.0)
    else:
        uncertainty = np.ones(n)
        pred = np.full(n, -1)
    if labelled.any():
        from .. import graph

        seeds = np.zeros((n, 1))
        seeds[labelled, 0] = 1.0 / labelled.sum()
        mass = graph.propagate(W, seeds, alpha=alpha)[:, 0]
        # per unit degree: better picks than per sqrt(degree) on pbmc3k (benchmarks/active.py)
        mass = mass / np.maximum(degree, 1e-12)
        coverage = 1.0 - rank01(mass)
    else:
        coverage = np.ones(n)
    info = np.maximum(uncertainty, coverage)
    score = info * density**density_weight
    score[labelled] = 0.0
    return {"uncertainty": uncertainty, "coverage": coverage, "density": density, "score": score, "predicted": pred}


def _diverse_top(
    W: sp.csr_matrix, score: np.ndarray, candidates: np.ndarray, n: int, hops: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Greedy batch: take the best cell, damp the scores of its graph neighbourhood, repeat.

    The damping is a ``hops``-step random walk from the chosen cell (scaled to 1 at its peak), so a batch
    spreads over the graph instead of piling into one uncertain region (the batch-diversity idea of
    core-set selection, Sener & Savarese 2018, on the graph instead of in the latent). With ``groups``
    (the predicted class of each cell) the picks go round-robin over the groups, best group first, so a
    large heterogeneous type cannot take the whole batch from the rare ones (class-balanced selection
    from pseudo-labels, as in Aggarwal et al. 2020, "Active learning for imbalanced datasets").
    """
    d = np.asarray(W.sum(1)).ravel()
    P = sp.diags(1.0 / np.maximum(d, 1e-12)) @ W  # row-stochastic
    PT = P.T.tocsr()
    s = np.where(candidates, score, -np.inf)
    groups = np.zeros(len(s), dtype=np.int64) if groups is None else np.asarray(groups)
    chosen: list[int] = []
    while len(chosen) < n:
        # one pass of the round robin: every group with candidates left, best current score first
        order = []
        for g in np.unique(groups[np.isfinite(s)]):
            members = np.flatnonzero((groups == g) & np.isfinite(s))
            order.append((-s[members].max(), int(g)))
        if not order:
            break
        for _, g in sorted(order):
            if len(chosen) >= n:
                break
            members = np.flatnonzero((groups == g) & np.isfinite(s))
            if len(members) == 0:
                continue
            j = int(members[np.argmax(s[members])])
            chosen.append(j)
            s[j] = -np.inf
            h = np.zeros(len(s))
            h[j] = 1.0
            reach = h.copy()
            for _ in range(hops):
                h = PT @ h
                reach = np.maximum(reach, h / max(h.max(), 1e-300))
            live = np.isfinite(s)
            s[live] *= 1.0 - reach[live]
    return np.array(chosen, dtype=np.int64)


@doc_params
def suggest_labels(
    adata: AnnData,
    n: int,
    *,
    labels_key: str,
    unlabeled_category: str | None = "Unknown",
    neighbors_key: str | None = "biossl",
    key_added: str = "biossl_suggest",
    alpha: float = 0.9,
    density_weight: float = 1.0,
    hops: int = 2,
    refine: bool = True,
    balance: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Rank the ``n`` unlabelled cells whose labels would most improve the annotation.

    Chooses without knowing the true types: each unlabelled cell scores
    ``max(uncertainty, coverage) * density`` — uncertainty is one minus the margin of the label propagation
    (margin sampling), coverage is high where no labelled cell's mass reaches through the graph (regions
    that may hold a type with no label yet), density favours typical cells over outliers (density-weighted
    uncertainty sampling, Settles & Craven 2008). The batch is then spread over the graph: after each pick
    the scores of its graph neighbourhood are damped (a short random walk from the pick), in the spirit of
    core-set batch selection (Sener & Savarese 2018). With fewer than two labelled types the uncertainty is
    1 everywhere and the picks are dense cells spread over the graph (a cold start).

    The loop: label the suggested cells in ``obs[labels_key]``, run :func:`biossl.tl.annotate` again, and
    ask for the next batch. On the data in ``benchmarks/active.py`` this beat adding random labels per type.

    Parameters
    ----------
    adata
        Annotated data with a graph from :func:`biossl.tl.neighbors`.
    n
        Number of cells to suggest (at most the number of unlabelled cells).
    labels_key
        Column of ``obs`` with the labels known so far (unlabelled: NaN or ``unlabeled_category``).
    unlabeled_category
        {unlabeled_category}
    neighbors_key
        {neighbors_key}
    key_added
        ``obs`` column written.
    alpha
        Propagation strength, as in :func:`biossl.tl.annotate`.
    density_weight
        Exponent of the density term (0 = pure uncertainty/coverage).
    hops
        Random-walk steps of the neighbourhood damped after each pick (0 = no batch diversity).
    refine
        Use the self-trained probabilities (as ``annotate`` does) for the uncertainty.
    balance
        Pick round-robin over the predicted types (cells no label reaches form their own group), so a
        batch covers rare types as well as large heterogeneous ones. Off by default: once ``annotate``
        estimated class priors (``class_prior="estimate"``), the unbalanced picks did better in
        ``benchmarks/active.py`` (figures in ``benchmarks/results/active.md``).
    copy
        {copy}

    Returns
    -------
    None or a copy. Writes ``obs["{key_added}"]``: the suggestion rank (1 = label first) of the chosen cells,
    NaN elsewhere; and ``uns["biossl"]["suggest"]`` (parameters).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer (cells to suggest), got {n!r}")
    if not isinstance(hops, int | np.integer) or isinstance(hops, bool) or hops < 0:
        raise ValueError(f"hops must be a non-negative integer, got {hops!r}")
    if density_weight < 0:
        raise ValueError(f"density_weight must be >= 0, got {density_weight!r}")
    codes, classes = label_codes(adata, labels_key, unlabeled_category)
    unlabelled = codes < 0
    if not unlabelled.any():
        raise ValueError(f"every cell in adata.obs[{labels_key!r}] is labelled; there is nothing to suggest.")
    if n > unlabelled.sum():
        raise ValueError(f"n={n} but only {int(unlabelled.sum())} cells are unlabelled; ask for fewer.")
    W = connectivities(adata, neighbors_key)
    if W.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"the graph has shape {W.shape} but adata has {adata.n_obs} cells; rebuild it.")
    rep = graph_representation(adata, neighbors_key) if refine and len(classes) >= 2 else None
    parts = suggestion_scores(W, codes, len(classes), rep=rep, alpha=alpha, density_weight=density_weight)
    groups = parts["predicted"] if balance else None
    chosen = _diverse_top(W, parts["score"], unlabelled, int(n), int(hops), groups)
    rank = np.full(adata.n_obs, np.nan)
    rank[chosen] = np.arange(1, len(chosen) + 1)

    adata = adata.copy() if copy else adata
    adata.obs[key_added] = rank
    record(
        adata,
        "suggest",
        {
            "labels_key": labels_key,
            "n": int(n),
            "key_added": key_added,
            "neighbors_key": neighbors_key,
            "alpha": alpha,
            "density_weight": float(density_weight),
            "hops": int(hops),
            "refine": bool(rep is not None),
            "balance": bool(balance),
            "n_labelled": int((~unlabelled).sum()),
        },
    )
    logger.info("suggest: %d cells to label next (of %d unlabelled)", len(chosen), unlabelled.sum())
    return adata if copy else None
