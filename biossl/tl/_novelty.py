"""``tl.novelty``: which cells may belong to a type that has no label.

Two views, each turned into a rank: the cell's position (little label mass reaches it through the graph, or
it lies far from every labelled cell in the latent) and, with raw counts, its expression (a poor match with
the mean profile of the labelled cells of its predicted class). Compared in ``benchmarks/novel_types.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._docs import doc_params
from ._propagation import rank01

logger = logging.getLogger("biossl")

__all__ = ["novelty", "novelty_score"]


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
    (:func:`biossl.tl.reference.expression_ratio`, per batch of ``batches``; a cell no label reaches, with the
    class it matches best). An unlabelled type next to a labelled one is taken for it by the graph, but its genes
    still differ (baron_mouse's endocrine types: far better separated by expression than by position,
    ``benchmarks/novel_types.py``).

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
    """:func:`biossl.tl.reference.expression_ratio` of each cell against its propagated class.

    A cell no label reaches through the graph has no propagated class: it is compared with every class and keeps
    its best match, so that it reads as novel only if it matches none. Counted as typical, as it was before
    2026-12-07, a whole unlabelled type cut off from the labels ranked in the middle (``benchmarks/novel_species.py``).
    """
    from ._mapping import class_profiles, expression_ratio
    from ._propagation import propagate_labels

    n_classes = int(codes.max()) + 1
    _, _, pred = propagate_labels(W, codes, n_classes, alpha=alpha)
    profiles, similarity = class_profiles(counts, codes, n_classes)
    present = np.ones(counts.shape[1])
    return expression_ratio(
        counts, present, pred, sp.csr_matrix(W), profiles, similarity, batches=batches, best_for_unassigned=True
    )


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
        {unlabeled_category}
    neighbors_key
        {neighbors_key}
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
