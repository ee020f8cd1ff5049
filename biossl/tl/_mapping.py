"""How well query cells map onto a reference: the scores behind ``map_query``'s Unknown call.

Three parts, each capped at 1 (see :func:`biossl.tl.map_query`): the share of a cell's neighbourhood held by
reference cells (:func:`reference_share`, :func:`two_scale_share`), its distance to the reference cells of its
predicted class (:func:`mapping_score`, calibrated on held-out reference cells by :func:`calibrate_mapping`) and
how well its expression matches that class's profile (:func:`class_profiles`, :func:`expression_match`). The
constants were chosen on ``benchmarks/reference_mapping.py`` and ``benchmarks/strong_batch.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._pca import log_normalise

if TYPE_CHECKING:
    from ..model import EmbeddingModel

# Thresholds and weights, chosen on benchmarks/reference_mapping.py (novel types, cross-batch splits); the figures are
# in benchmarks/results. The refinement's are in ._refine.
AUTO_MAPPING_THRESHOLD = 0.75  # mapping score below which a cell is Unknown (without refine)
WIDE_SHARE_NEIGHBORS = 50  # the wider neighbourhood whose reference share steadies the local one
# weight of the local share in a query batch that barely touches the reference at n_neighbors (0.5 elsewhere):
# it keeps known cells of such a batch (cellbench's plates) from being called Unknown without lowering the
# novel-type AUROC; 0 lowered it
POORLY_MIXED_LOCAL_WEIGHT = 0.1
MAPPING_NEIGHBORS = 50  # reference cells of the predicted class a query cell is compared with (at most)
DEFAULT_MAPPING_THRESHOLD = 0.5  # distance threshold of references too small to hold cells out of training
MAPPING_QUANTILE = 0.01  # share of unseen cells of known types below the distance threshold
# above this share of the query called Unknown, map_query warns: the issue 22 target for known types is <= 5%, and a
# real mouse -> human pancreas query had 26% of its known cells Unknown (a strong shift, not novel types)
UNKNOWN_WARN_SHARE = 0.10


def calibrate_mapping(latent: np.ndarray, held_out: np.ndarray, codes: np.ndarray) -> float:
    """Distance threshold of the mapping score from the reference cells held out of training.

    Cells the model was trained on sit closer to each other in its latent space than unseen cells of
    the same types; the held-out cells show how far a new cell of a *known* type typically lands from the
    trained cells of its type, so the threshold is the ``MAPPING_QUANTILE`` quantile of their scores.
    """
    held_out = np.asarray(held_out, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    held_out = held_out[codes[held_out] >= 0]
    if len(held_out) < 20:
        return DEFAULT_MAPPING_THRESHOLD
    trained = np.setdiff1d(np.arange(latent.shape[0]), held_out)
    scores = mapping_score(
        latent[trained], latent[held_out], MAPPING_NEIGHBORS, ref_codes=codes[trained], query_codes=codes[held_out]
    )
    return float(np.quantile(scores, MAPPING_QUANTILE))


def mapping_score(
    ref_latent: np.ndarray,
    query_latent: np.ndarray,
    k: int,
    *,
    ref_codes: np.ndarray | None = None,
    query_codes: np.ndarray | None = None,
) -> np.ndarray:
    """How well each query cell sits among reference cells: typical reference spacing / its distance.

    The mean distance of a query cell to its ``k`` nearest reference cells is compared with those
    reference cells' own mean distance to their ``k`` nearest reference neighbours; the score is their
    ratio (1 = as close as reference cells are to each other; above 1 = in a denser spot; small = off the
    reference). With ``ref_codes`` and ``query_codes`` (class codes, -1 = none) a query cell is compared
    with the reference cells of its own class only (at most ``k``; a rare type with 3 reference cells is
    judged by those 3, not by the 50 nearest cells of other types); cells of class -1, or of a class with
    fewer than 2 reference cells, are compared with the whole reference.
    """
    if ref_codes is None or query_codes is None:
        return _spacing_ratio(ref_latent, query_latent, k)
    ref_codes, query_codes = np.asarray(ref_codes), np.asarray(query_codes)
    score = np.empty(query_latent.shape[0], dtype=np.float64)
    pooled = np.ones(query_latent.shape[0], dtype=bool)
    for c in np.unique(query_codes[query_codes >= 0]):
        ref_c, rows = ref_codes == c, query_codes == c
        if ref_c.sum() >= 2:
            score[rows] = _spacing_ratio(ref_latent[ref_c], query_latent[rows], k)
            pooled[rows] = False
    if pooled.any():
        score[pooled] = _spacing_ratio(ref_latent, query_latent[pooled], k)
    return score


def _spacing_ratio(ref_latent: np.ndarray, query_latent: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, ref_latent.shape[0] - 1))
    nn = NearestNeighbors(n_neighbors=k + 1).fit(ref_latent)
    ref_dist, _ = nn.kneighbors(ref_latent)
    ref_spacing = ref_dist[:, 1:].mean(1)
    q_dist, q_idx = nn.kneighbors(query_latent, n_neighbors=k)
    expected = ref_spacing[q_idx].mean(1)
    return expected / np.maximum(q_dist.mean(1), 1e-12)


def reference_share(
    idx: np.ndarray, ref_codes: np.ndarray, proba: np.ndarray, *, batches: np.ndarray | None = None
) -> np.ndarray:
    """How much each query cell's neighbourhood is shared with reference cells, relative to what is typical.

    ``idx`` are the neighbour indices of a joint kNN graph whose first ``len(ref_codes)`` rows are the
    reference cells (``ref_codes``: their class codes, -1 = unlabelled) and the rest the query cells, whose
    class probabilities are ``proba``. For each query cell the share of reference cells among its
    neighbours (graph symmetrised) is averaged over the cell and its query neighbours: a novel type forms
    query-only neighbourhoods (share near 0) even where it lies next to a related reference type. The share
    is divided by what is expected of a known type:

    * the median share over query cells of the same batch (``batches``: one code per query cell), so a
      query batch shifted as a whole (another technology or donor, where every neighbourhood holds fewer
      reference cells) stays at about 1 (this assumes most cells of each batch are of known types);
    * lowered where the query holds relatively more cells of the predicted class than the reference
      (e.g. 9 reference vs 182 query alpha cells): the class's reference share ``n_ref / (n_ref + n_query)``
      over the overall one, capped at 1 so a composition shift only ever relaxes the expectation.

    Returns one value per query cell (1 = typical; near 0 = a query-only neighbourhood).
    """
    import scipy.sparse as sp

    n_ref = len(ref_codes)
    n, k = idx.shape
    A = sp.csr_matrix((np.ones(n * k), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    A = ((A + A.T) > 0).astype(np.float64).tocsr()
    query = A[n_ref:]
    share = np.asarray(query[:, :n_ref].sum(1)).ravel() / np.maximum(np.asarray(query.sum(1)).ravel(), 1)
    smooth = (query[:, n_ref:] + sp.identity(n - n_ref, format="csr")).tocsr()
    smooth = sp.diags(1.0 / np.asarray(smooth.sum(1)).ravel()) @ smooth
    share = smooth @ share
    typical = _batch_median(share, batches)
    if not (typical > 0).any():  # most query cells have no reference neighbour: the share cannot tell types apart
        return np.ones_like(share)
    # a batch where most cells have no reference neighbour is judged against the most mixed batch
    typical = np.where(typical > 0, typical, typical.max())
    labelled = ref_codes[ref_codes >= 0]
    n_ref_c = np.bincount(labelled, minlength=proba.shape[1]).astype(np.float64)
    class_share = n_ref_c / np.maximum(n_ref_c + proba.sum(0), 1e-12)
    overall = len(labelled) / max(len(labelled) + proba.shape[0], 1)
    reached = proba.sum(1) > 0
    composition = np.ones(proba.shape[0])
    composition[reached] = np.minimum(1.0, (proba[reached] @ class_share) / overall)
    composition = np.maximum(smooth @ composition, 1e-3)
    return share / (typical * composition)


def two_scale_share(
    idx: np.ndarray,
    n_neighbors: int,
    ref_codes: np.ndarray,
    proba: np.ndarray,
    *,
    batches: np.ndarray | None = None,
) -> np.ndarray:
    """Geometric mean of :func:`reference_share` (capped at 1) over the first ``n_neighbors`` and all of ``idx``.

    ``idx`` are the neighbour indices (nearest first) of a joint kNN graph, reference rows first, with
    ``WIDE_SHARE_NEIGHBORS`` columns (or ``n_neighbors`` if more). At 15 neighbours the share singles out a
    novel type next to a related reference type but is noisy, and a state of a known type that the query
    holds more of than the reference (a few dozen cells) looks query-only too; over 50 neighbours such a
    state reaches the reference cells of its type while a novel type of its own stays query-only. The
    geometric mean keeps a cell low only where its neighbourhood is query-only at both scales (or nearly
    empty of reference cells at the local one).

    In a query batch whose typical cell has no reference cell among its ``n_neighbors`` (a technology the
    model's new batch columns did not align with the reference: the CEL-seq2 and Drop-seq cells of
    cellbench next to its 5-line CEL-seq2 plates), the local share is near zero for known and novel types
    alike and its ratio to the batch's typical share is mostly noise; there the local share is given a
    weight of ``POORLY_MIXED_LOCAL_WEIGHT`` (0.1) instead of 0.5, which keeps its ranking of novel cells
    but no longer drags known cells below the threshold.
    """
    local = np.minimum(1.0, reference_share(idx[:, :n_neighbors], ref_codes, proba, batches=batches))
    if idx.shape[1] <= n_neighbors:
        return local
    wide = np.minimum(1.0, reference_share(idx, ref_codes, proba, batches=batches))
    share = np.sqrt(local * wide)
    n_ref = len(ref_codes)
    local_ref = (idx[n_ref:, :n_neighbors] < n_ref).sum(1)  # reference cells among each query cell's neighbours
    poor = _batch_median(local_ref, batches) < 1
    w = POORLY_MIXED_LOCAL_WEIGHT
    share[poor] = local[poor] ** w * wide[poor] ** (1 - w)
    return share


def _batch_median(values: np.ndarray, batches: np.ndarray | None) -> np.ndarray:
    """For each query cell, the median of ``values`` over the cells of its batch (one batch when None)."""
    batches = np.zeros(len(values), dtype=np.int64) if batches is None else np.asarray(batches)
    out = np.zeros(len(values))
    for b in np.unique(batches):
        out[batches == b] = np.median(values[batches == b])
    return out


# The expression part of the mapping score. A reference model never trained on a type has no latent direction
# for it and tends to embed its cells onto a related known type (baron_mouse: beta cells without beta in the
# reference land on alpha and delta), where neither the share nor the distance can tell them apart. In gene
# space they stay different: the correlation of a cell's expression with its predicted class's mean profile is
# low. The tolerance, the batch level and the prior on small classes were chosen on benchmarks/reference_mapping.py
# (novel + cross): a higher batch level called more known cells Unknown, and without the prior rare known types
# lost their label.
EXPRESSION_TOLERANCE = 0.8  # match ratio (1 = as typical) below which the expression part drops under 1
EXPRESSION_PRIOR_CELLS = 10  # a class with n reference cells has the part at the power n / (n + 10)
EXPRESSION_BATCH_QUANTILE = 0.75  # the batch's match level: the known cells' median while <= half are novel


def _log_normalise(X):
    """:func:`biossl.tl._pca.log_normalise` of ``X`` (CSR, dense or a backed row reader)."""
    if hasattr(X, "to_csr"):  # a backed reader: its rows, read in chunks, are a matrix of our own
        return log_normalise(X.to_csr(), copy=False)
    return log_normalise(X)


def _standardised_rows(A: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (constant rows: zeros), so ``A @ B.T`` holds Pearson correlations."""
    A = A - A.mean(1, keepdims=True)
    norm = np.linalg.norm(A, axis=1, keepdims=True)
    return np.divide(A, norm, out=np.zeros_like(A), where=norm > 0)


def _row_correlation(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``A`` with the same row of ``B`` (0 for a constant row)."""
    return (_standardised_rows(A) * _standardised_rows(B)).sum(1)


def class_sums(L, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The sum of each class's rows of ``L`` (cells × genes, CSR) and their number, as float64.

    ``codes``: one class code per row (-1 = none). Returns ``(sums, sizes)``: classes × genes and one per class.
    """
    import scipy.sparse as sp

    codes = np.asarray(codes, dtype=np.int64)
    labelled = np.flatnonzero(codes >= 0)
    members = sp.csr_matrix(
        (np.ones(len(labelled), dtype=np.float32), (codes[labelled], labelled)), shape=(n_classes, L.shape[0])
    )
    sums = np.asarray((members @ L).todense(), dtype=np.float64)
    return sums, np.bincount(codes[labelled], minlength=n_classes).astype(np.float64)


def class_profiles(counts, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean log-normalised expression of each class, and how closely its own cells match it.

    Correlations are taken after subtracting the mean of the class profiles, so they measure a cell's
    pattern across classes, not its overall expression level. A class's typical match is the median
    correlation of its cells with the profile of the *other* cells of the class (leave-one-out, so a class
    of 3 cells is not judged by a profile its own cell made); a class of one cell gets the median over all
    cells. Returns ``(profiles, similarity)``: classes × genes and one value per class.
    """
    codes = np.asarray(codes, dtype=np.int64)
    L = _log_normalise(counts)
    labelled = np.flatnonzero(codes >= 0)
    sums, sizes = class_sums(L, codes, n_classes)
    profiles = sums / np.maximum(sizes, 1.0)[:, None]
    centre = profiles.mean(0)
    match = np.full(L.shape[0], np.nan)
    rows = labelled[sizes[codes[labelled]] >= 2]
    for s in range(0, len(rows), 4096):
        r = rows[s : s + 4096]
        x, c = L[r].toarray(), codes[r]
        others = (sums[c] - x) / (sizes[c] - 1.0)[:, None]
        match[r] = _row_correlation(x - centre, others - centre)
    fallback = float(np.nanmedian(match)) if np.isfinite(match).any() else 1.0
    similarity = np.array([np.median(match[codes == c]) if sizes[c] >= 2 else fallback for c in range(n_classes)])
    return profiles.astype(np.float32), similarity.astype(np.float32)


def expression_ratio(
    X,
    present: np.ndarray,
    pred: np.ndarray,
    neighbors: np.ndarray,
    profiles: np.ndarray,
    similarity: np.ndarray,
    *,
    batches: np.ndarray | None = None,
    best_for_unassigned: bool = False,
) -> np.ndarray:
    """How well each cell's expression matches its predicted class, relative to what is typical (1 = typical).

    ``X`` are counts in the profiles' gene order (``present``: 0/1 per gene, missing genes are left out),
    ``pred`` the predicted class codes (-1 = none), ``neighbors`` each cell's neighbours among the rows of
    ``X`` (-1 = none) or the cells' graph as a sparse matrix (its stored entries are the neighbours). A
    cell's log-normalised expression, averaged with its neighbours of the same predicted class, is
    correlated with the class profile (:func:`class_profiles`) and divided by the class's typical match
    (``similarity``), then by the 75th percentile of that ratio in its batch (another technology lowers
    every match; while at most half the batch is novel, with lower ratios, that percentile is the known
    cells' median). 1 where ``pred`` is -1, or with ``best_for_unassigned`` the match with the class it matches
    best (a cell no class was given to is novel only if it matches none).
    """
    import scipy.sparse as sp

    n = len(pred)
    genes = np.asarray(present) > 0
    L = _log_normalise(X)[:, np.flatnonzero(genes)]
    centre = profiles[:, genes].mean(0)
    shifted = profiles[:, genes] - centre
    if sp.issparse(neighbors):
        edges = sp.coo_matrix(neighbors)
        rows, cols = edges.row, edges.col
    else:
        rows, cols = np.nonzero(neighbors >= 0)
        cols = neighbors[rows, cols]
    same = pred[rows] == pred[cols]
    smooth = sp.csr_matrix((np.ones(same.sum()), (rows[same], cols[same])), shape=(n, n)) + sp.identity(n)
    smooth = (sp.diags(1.0 / np.asarray(smooth.sum(1)).ravel()) @ smooth).tocsr()
    reached = pred >= 0
    scored = reached | best_for_unassigned
    standard = _standardised_rows(shifted.astype(np.float64))  # every class's profile, standardised once
    ratio = np.ones(n)
    for s in range(0, n, 4096):
        chunk = np.arange(s, min(n, s + 4096))
        r, u = chunk[reached[chunk]], chunk[scored[chunk] & ~reached[chunk]]
        if len(r):
            x = _standardised_rows(np.asarray((smooth[r] @ L).todense()) - centre)
            ratio[r] = (x * standard[pred[r]]).sum(1) / np.maximum(similarity[pred[r]], 1e-3)
        if len(u):  # every class's match, the best kept
            x = np.asarray((smooth[u] @ L).todense()) - centre
            ratio[u] = (_standardised_rows(x) @ standard.T / np.maximum(similarity, 1e-3)).max(1)
    batches = np.zeros(n, dtype=np.int64) if batches is None else np.asarray(batches)
    for b in np.unique(batches):
        in_batch = (batches == b) & reached
        level = np.quantile(ratio[in_batch], EXPRESSION_BATCH_QUANTILE) if in_batch.any() else 0.0
        if level > 0:
            ratio[(batches == b) & scored] /= level
    return ratio


def expression_match(
    X,
    present: np.ndarray,
    pred: np.ndarray,
    neighbors: np.ndarray,
    profiles: np.ndarray,
    similarity: np.ndarray,
    class_sizes: np.ndarray,
    *,
    batches: np.ndarray | None = None,
) -> np.ndarray:
    """The expression part of the mapping score: how much a query cell looks like its predicted class.

    ``min(1, ratio / EXPRESSION_TOLERANCE) ** (n / (n + 10))`` per cell, with ``ratio`` from
    :func:`expression_ratio` (arguments as there; ``neighbors`` index the query cells) and ``n`` the
    predicted class's reference cells (``class_sizes``; a profile from 3 cells is trusted less); 1 where
    ``pred`` is -1.
    """
    ratio = expression_ratio(X, present, pred, neighbors, profiles, similarity, batches=batches)
    reached = pred >= 0
    weight = class_sizes / (class_sizes + EXPRESSION_PRIOR_CELLS)
    part = np.ones(len(pred))
    part[reached] = np.clip(ratio[reached] / EXPRESSION_TOLERANCE, 0.0, 1.0) ** weight[pred[reached]]
    return part


def query_batches(model: EmbeddingModel, batch: pd.Series | None, n: int) -> tuple[np.ndarray, list[str]]:
    """Batch codes of query cells in the model's (extended) batch list, and the batches it has not seen."""
    known = {b: i for i, b in enumerate(model.batches)}
    if batch is None:  # the query is one new batch, also for a model trained on one batch (no batch columns)
        return np.full(n, len(known), dtype=np.int64), ["query"]
    values = batch.astype(str).to_numpy()
    new = [b for b in pd.unique(values) if b not in known]
    lookup = {**known, **{b: len(known) + i for i, b in enumerate(new)}}
    return np.array([lookup[b] for b in values], dtype=np.int64), new
