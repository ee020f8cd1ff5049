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

from .. import graph
from ._pca import log_normalise, pca_latent
from ._propagation import annotation_predictor, normalise_rows

if TYPE_CHECKING:
    from ..model import EmbeddingModel

# Thresholds and weights, chosen on benchmarks/reference_mapping.py (novel types, cross-batch splits) and, for the
# refinement, benchmarks/strong_batch.py; the figures are in benchmarks/results.
AUTO_MAPPING_THRESHOLD = 0.75  # mapping score below which a cell is Unknown (without refine)
REFINE_MAPPING_THRESHOLD = 0.5  # with refine: below it a cell may seed the Unknown class
REFINE_MIN_CELLS = 30
REFINE_WEIGHT = 0.5  # the query graph's share of the final probabilities (the rest: the mapped ones)
# reference sample - query mixing of the refinement graph (graph.batch_mixing) from which that graph joins them well
# enough to settle the calls alone (weight 1), and an Unknown seed needs a neighbourhood the sample's cells hardly
# reach: its own and its query neighbours' mean share of sample neighbours, relative to the sample's share of the
# graph, below JOINED_UNKNOWN_SHARE. Chosen on divergent sets (seeds 1, 2 and species-like 5, 6), where the pbmc3k
# graphs mix at 0.66-0.96 and the baron_mouse ones at 0.17-0.26
REFINE_JOINED_MIXING = 0.5
JOINED_UNKNOWN_SHARE = 0.1
# A known type that a strong shift moved as a whole: every query cell of the predicted class scores low, so its cells
# would seed Unknown like a type the reference lacks. It is told apart by its expression contrast (its mean profile
# against the query's well-mapped classes), which matches the class's contrast in the reference sample about as well
# as the well-mapped classes' own contrasts match (_shifted_classes). Chosen on pbmc3k divergent sets (seeds 6, 12,
# 14; shifted monocytes: 0.95-1.28 of the typical agreement) against the held-out cell lines of cellbench
# (benchmarks/reference_mapping.py, novel part: 0.52-0.63, which must stay Unknown)
SHIFTED_MIN_CELLS = 20  # low-scoring query cells of the class, and its cells in the reference sample, at least
SHIFTED_MAX_WELL = 0.1  # the share of the class's query cells that score well, at most
SHIFTED_CONTRAST_GENES = 300  # genes whose reference class profiles vary most: the contrasts are compared on them
SHIFTED_AGREEMENT = 0.8  # the class's agreement relative to the median of the well-mapped classes', at least
SHIFTED_CLASS_CELLS = 5  # cells a class needs in the sample and among the well-scoring query cells to be compared
REFINE_SEED_FRACTION = 0.5  # the share of each class's (and of the low-scoring) cells that seed the refinement
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


def _row_correlation(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``A`` with the same row of ``B`` (0 for a constant row)."""
    A = A - A.mean(1, keepdims=True)
    B = B - B.mean(1, keepdims=True)
    norm = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    return np.where(norm > 0, (A * B).sum(1) / np.maximum(norm, 1e-12), 0.0)


def class_profiles(counts, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean log-normalised expression of each class, and how closely its own cells match it.

    Correlations are taken after subtracting the mean of the class profiles, so they measure a cell's
    pattern across classes, not its overall expression level. A class's typical match is the median
    correlation of its cells with the profile of the *other* cells of the class (leave-one-out, so a class
    of 3 cells is not judged by a profile its own cell made); a class of one cell gets the median over all
    cells. Returns ``(profiles, similarity)``: classes × genes and one value per class.
    """
    import scipy.sparse as sp

    codes = np.asarray(codes, dtype=np.int64)
    L = _log_normalise(counts)
    labelled = np.flatnonzero(codes >= 0)
    members = sp.csr_matrix(
        (np.ones(len(labelled), dtype=np.float32), (codes[labelled], labelled)), shape=(n_classes, L.shape[0])
    )
    sums = np.asarray((members @ L).todense(), dtype=np.float64)
    sizes = np.bincount(codes[labelled], minlength=n_classes).astype(np.float64)
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
) -> np.ndarray:
    """How well each cell's expression matches its predicted class, relative to what is typical (1 = typical).

    ``X`` are counts in the profiles' gene order (``present``: 0/1 per gene, missing genes are left out),
    ``pred`` the predicted class codes (-1 = none), ``neighbors`` each cell's neighbours among the rows of
    ``X`` (-1 = none) or the cells' graph as a sparse matrix (its stored entries are the neighbours). A
    cell's log-normalised expression, averaged with its neighbours of the same predicted class, is
    correlated with the class profile (:func:`class_profiles`) and divided by the class's typical match
    (``similarity``), then by the 75th percentile of that ratio in its batch (another technology lowers
    every match; while at most half the batch is novel, with lower ratios, that percentile is the known
    cells' median). 1 where ``pred`` is -1.
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
    ratio = np.ones(n)
    for s in range(0, n, 4096):
        r = np.arange(s, min(n, s + 4096))
        r = r[reached[r]]
        if len(r):
            x = np.asarray((smooth[r] @ L).todense()) - centre
            ratio[r] = _row_correlation(x, shifted[pred[r]]) / np.maximum(similarity[pred[r]], 1e-3)
    batches = np.zeros(n, dtype=np.int64) if batches is None else np.asarray(batches)
    for b in np.unique(batches):
        in_batch = (batches == b) & reached
        level = np.quantile(ratio[in_batch], EXPRESSION_BATCH_QUANTILE) if in_batch.any() else 0.0
        if level > 0:
            ratio[in_batch] /= level
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


def refine_on_query(
    X, present, batches, proba, pred, confidence, score, threshold, n_classes, k, alpha, seed, *,
    sample: dict | None = None, sample_codes: np.ndarray | None = None, hard: bool = False,
):  # fmt: skip
    """Propagate the mapped calls over an expression graph of the query, with an Unknown class seeded by low scores.

    The graph is a kNN graph on the PCA of the query's counts (:func:`biossl.tl._pca.pca_latent`, genes scaled per
    batch when batches do not mix) and, with a reference ``sample`` (:func:`biossl.tl._reference.expression_sample`;
    labels: ``sample_codes`` at its rows), of the sampled reference cells' counts too, each reference batch a batch
    of its own. Seeds: the reference cells with their labels; per predicted class, the more confident half of its
    query cells whose score reaches ``threshold`` and whose class the reference sample's labels, spread over this
    graph alone, give too (all such cells of the class when none of them agrees: a class the expression graph
    cannot reach keeps its seeds; no class is checked when the sample and the query hardly mix in the graph,
    :func:`biossl.graph.batch_mixing` below ``MIXING_MIN``); and the lower-scoring half of the query cells below
    ``threshold``, as class ``n_classes`` (Unknown). The agreement keeps a class that the mapping gives to part of
    another (monocytes shifted onto dendritic cells) from seeding that error. The propagated probabilities are
    averaged with the mapped ones (``proba``), so a cell below ``threshold`` that is not a seed is Unknown only where
    the Unknown class reaches it; with ``hard`` (a threshold the user chose) the mapped ones of those cells are
    Unknown, which makes every one of them Unknown. When the graph joins the sample and the query well (mixing at
    least ``REFINE_JOINED_MIXING``), its expression neighbourhoods carry the labels better than a model that did
    not align the query: the propagated probabilities are then the result (unless ``hard``), and a low-scoring cell
    seeds Unknown only where the sample's cells hardly reach (:func:`_sample_share` below
    ``JOINED_UNKNOWN_SHARE``), as a type the reference lacks does; a known type the shift moved does not. A class
    that the shift moved as a whole (:func:`_shifted_classes`; not with ``hard``) has no query cell scoring well:
    the more confident half of its low-scoring cells seed it, and none of them seeds Unknown.
    Returns the class probabilities (reference classes, rows summing to 1 or 0; a cell that the Unknown class takes
    whole, as on a joined graph, keeps its mapped ones, so its top class still names what it resembles), the
    confidence (top class probability times the share not given to Unknown), the predicted code, the Unknown mask
    and a record: ``"mixing"``, the sample - query mixing of the graph (None without a sample), and ``"shifted"``,
    the codes of the classes taken as moved as a whole.
    """
    n = X.shape[0]
    counts, batch, ref_seeds = _expression_graph_input(X, present, batches, sample, sample_codes)
    latent, _ = pca_latent(counts, 50, seed, batch=batch, copy=False)  # counts: a column selection, ours
    idx, dist = graph.knn(latent, int(min(k, counts.shape[0] - 1)), seed=seed)
    W = graph.gaussian_affinity(idx, dist)
    spread = _SeedSpreader(W, latent, alpha)
    n_ref = len(ref_seeds)
    mixing = float(graph.batch_mixing(idx, np.arange(len(idx)) < n_ref)["score"]) if n_ref else None
    joined = mixing is not None and mixing >= REFINE_JOINED_MIXING
    query_seeds = np.full(n, -1, dtype=np.int64)
    low = score < threshold

    def seed_confident(members: np.ndarray, c: int) -> None:  # the more confident part of ``members`` seeds ``c``
        n_seeds = max(1, int(len(members) * REFINE_SEED_FRACTION))
        query_seeds[members[np.argsort(-confidence[members], kind="stable")[:n_seeds]]] = c

    graph_pred = _reference_only_calls(spread, ref_seeds, n, n_classes, mixing)
    for c in np.unique(pred[(pred >= 0) & ~low]):
        candidates = (pred == c) & ~low
        agreeing = candidates & (graph_pred == c)  # a mapped call the expression graph does not share seeds nothing
        seed_confident(np.flatnonzero(agreeing if agreeing.any() else candidates), c)  # unless none agrees
    # a known type the shift moved as a whole seeds itself, not Unknown (not with a threshold the user chose)
    shifted = np.zeros(0, dtype=np.int64) if hard else _shifted_classes(counts, ref_seeds, pred, low, n_classes)
    for c in shifted:
        seed_confident(np.flatnonzero((pred == c) & low), c)
    low_cells = np.flatnonzero(low & ~np.isin(pred, shifted))
    n_seeds = int(len(low_cells) * REFINE_SEED_FRACTION)
    chosen = low_cells[np.argsort(score[low_cells], kind="stable")[:n_seeds]]
    if joined:  # a low score seeds Unknown only where the reference sample's cells hardly reach
        chosen = chosen[_sample_share(idx, n_ref)[chosen] < JOINED_UNKNOWN_SHARE]
    query_seeds[chosen] = n_classes
    seeds = np.concatenate([ref_seeds, query_seeds])
    info = {"mixing": mixing, "shifted": [int(c) for c in shifted]}
    if len(np.unique(seeds[seeds >= 0])) < 2 or (query_seeds < 0).sum() == 0:  # nothing to refine: calls stand
        return proba, confidence, pred, (pred < 0) | low, info
    full = spread(seeds, n_classes + 1)[n_ref:]
    full[query_seeds >= 0] = np.eye(n_classes + 1)[query_seeds[query_seeds >= 0]]  # seeds keep their call
    mapped = np.zeros((n, n_classes + 1))
    mapped[:, :n_classes] = proba  # a low score alone does not make a cell Unknown: its neighbourhood decides
    if hard:
        mapped[low] = np.eye(n_classes + 1)[n_classes]
    weight = 1.0 if joined and not hard else REFINE_WEIGHT
    full = weight * full + (1 - weight) * mapped
    top = full.argmax(1)
    unknown = (full.sum(1) == 0) | (top == n_classes)
    known = full[:, :n_classes]
    mass = known.sum(1)
    shown = np.where((mass == 0)[:, None], proba, known)  # the Unknown class took it whole: its top class stays named
    proba, top_known, pred = normalise_rows(shown)
    confidence = top_known * mass / np.maximum(full.sum(1), 1e-12)
    return proba, confidence, pred, unknown | (pred < 0), info


class _SeedSpreader:
    """The refinement graph's propagation (as ``tl.annotate``: class prior estimated, self-training on ``latent``).

    Called with seeds (a class code per row, -1 = none) and a width, it returns the probabilities of the classes
    that have seeds in their columns (zeros in the others); every call shares one spreading operator.
    """

    def __init__(self, W, latent: np.ndarray, alpha: float) -> None:
        self.W, self.rep, self.alpha = W, latent.astype(np.float64), alpha
        self.operator = graph.spreading_operator(W, alpha)

    def __call__(self, seeds: np.ndarray, width: int) -> np.ndarray:
        used = np.unique(seeds[seeds >= 0])  # propagate over the classes that have seeds only
        compact = np.where(seeds >= 0, np.searchsorted(used, seeds), -1)
        predict = annotation_predictor(
            self.W, len(used), alpha=self.alpha, rep=self.rep, class_prior="estimate", operator=self.operator
        )
        out = np.zeros((len(seeds), width))
        out[:, used] = predict(compact)
        return out


def _reference_only_calls(
    spread: _SeedSpreader, ref_seeds: np.ndarray, n: int, n_classes: int, mixing: float | None
) -> np.ndarray:
    """The query cells' classes from the reference sample's labels alone, spread over the expression graph.

    -1 for every cell without a reference sample, with one class only, or where the sample and the query hardly mix
    in the graph (``mixing``, :func:`biossl.graph.batch_mixing` of sample against query, below ``MIXING_MIN``: the
    labels do not reach the query, and their calls would be arbitrary): no call to agree with.
    """
    used = np.unique(ref_seeds)
    if len(used) < 2 or mixing is None or mixing < graph.MIXING_MIN:
        return np.full(n, -1, dtype=np.int64)
    seeds = np.concatenate([ref_seeds, np.full(n, -1, dtype=np.int64)])
    return used[spread(seeds, n_classes)[len(ref_seeds) :, used].argmax(1)]


def _shifted_classes(counts, ref_seeds: np.ndarray, pred: np.ndarray, low: np.ndarray, n_classes: int) -> np.ndarray:
    """Predicted classes that a strong shift moved as a whole, rather than types the reference lacks.

    ``counts``: the refinement graph's counts, the ``len(ref_seeds)`` reference sample rows (labels ``ref_seeds``)
    first; ``pred`` and ``low``: the query cells' predicted classes and low mapping scores. A candidate has at least
    ``SHIFTED_MIN_CELLS`` low-scoring query cells, at most ``SHIFTED_MAX_WELL`` of its query cells scoring well and
    ``SHIFTED_MIN_CELLS`` cells in the sample. Its contrast in the query (the mean log-normalised profile of its
    low-scoring cells minus the mean of the well-mapped classes' profiles) is correlated with its contrast in the
    sample (its profile minus the same classes' sample profiles), on the ``SHIFTED_CONTRAST_GENES`` genes whose
    sample class profiles vary most (detected in 3 cells of each). A species or technology changes each gene's
    level, which cancels in a contrast within one data set, and the type's own pattern remains: the candidate is
    shifted where its correlation reaches ``SHIFTED_AGREEMENT`` times the median of the well-mapped classes' own
    (each against the others). A type the reference lacks, put onto its nearest class, has a contrast of its own
    (cellbench's held-out cell lines: 0.52-0.63 of the typical agreement; shifted monocytes: 0.95-1.28).
    """
    import scipy.sparse as sp

    n_ref = len(ref_seeds)
    none = np.zeros(0, dtype=np.int64)
    if not n_ref:
        return none
    in_sample = np.bincount(ref_seeds[ref_seeds >= 0], minlength=n_classes)
    n_low = np.bincount(pred[(pred >= 0) & low], minlength=n_classes)
    n_well = np.bincount(pred[(pred >= 0) & ~low], minlength=n_classes)
    candidates = np.flatnonzero(
        (n_low >= SHIFTED_MIN_CELLS)
        & (n_well <= SHIFTED_MAX_WELL * (n_low + n_well))
        & (in_sample >= SHIFTED_MIN_CELLS)
    )
    well = np.flatnonzero((n_well >= SHIFTED_CLASS_CELLS) & (in_sample >= SHIFTED_CLASS_CELLS))
    well = np.setdiff1d(well, candidates)
    if not len(candidates) or len(well) < 2:  # no contrast to compare, or no typical agreement to compare it with
        return none
    L = log_normalise(counts)
    sample, query = L[:n_ref], L[n_ref:]

    def means(rows: sp.csr_matrix, codes: np.ndarray, classes: np.ndarray) -> np.ndarray:
        members = sp.csr_matrix((np.ones(len(codes)), (np.searchsorted(classes, codes), np.arange(len(codes)))),
                                shape=(len(classes), len(codes)))  # fmt: skip
        sizes = np.asarray(members.sum(1)).ravel()
        return np.asarray((members @ rows).todense()) / np.maximum(sizes, 1)[:, None]

    compared = np.flatnonzero(in_sample >= SHIFTED_CLASS_CELLS)
    labelled = np.flatnonzero(np.isin(ref_seeds, compared))
    ref_profiles = means(sample[labelled], ref_seeds[labelled], compared)
    rows = np.flatnonzero(np.isin(pred, well) & ~low | np.isin(pred, candidates) & low)
    query_profiles = means(query[rows], pred[rows], compared)
    detected = (np.asarray((sample > 0).sum(0)).ravel() >= 3) & (np.asarray((query > 0).sum(0)).ravel() >= 3)
    spread = np.where(detected, ref_profiles.var(0), -1.0)
    genes = np.argsort(-spread, kind="stable")[: min(SHIFTED_CONTRAST_GENES, int(detected.sum()))]
    ref_profiles, query_profiles = ref_profiles[:, genes], query_profiles[:, genes]
    at = {c: i for i, c in enumerate(compared)}

    def agreement(c: int, base: np.ndarray) -> float:
        b = [at[d] for d in base]
        ref = ref_profiles[at[c]] - ref_profiles[b].mean(0)
        qry = query_profiles[at[c]] - query_profiles[b].mean(0)
        return float(_row_correlation(ref[None], qry[None])[0])

    typical = float(np.median([agreement(d, well[well != d]) for d in well]))
    if typical <= 0:
        return none
    return np.array([c for c in candidates if agreement(c, well) >= SHIFTED_AGREEMENT * typical], dtype=np.int64)


def _sample_share(idx: np.ndarray, n_ref: int) -> np.ndarray:
    """Per query cell: the reference sample's share of its neighbours, relative to the sample's share of the graph.

    Averaged over the cell and its query neighbours; ``idx``: the graph's neighbours, the ``n_ref`` sample rows first.
    """
    share = (idx[n_ref:] < n_ref).mean(1) / (n_ref / len(idx))
    near = idx[n_ref:] - n_ref  # query neighbours as query rows; sample neighbours are negative
    is_query = near >= 0
    total = share + np.where(is_query, share[np.where(is_query, near, 0)], 0.0).sum(1)
    return total / (1 + is_query.sum(1))


def _expression_graph_input(X, present, batches, sample: dict | None, sample_codes: np.ndarray | None):
    """Counts (present genes), batch names and reference seeds of the refinement graph.

    The query's cells alone, or after the reference sample's cells (their labels as seeds).
    """
    cols = np.flatnonzero(np.asarray(present) > 0)
    counts, batch = X[:, cols], np.asarray(batches).astype(str)
    if sample is None or not len(sample["index"]):
        return counts, batch, np.zeros(0, dtype=np.int64)
    import scipy.sparse as sp

    counts = sp.vstack([sample["counts"][:, cols], sp.csr_matrix(counts, dtype=np.float32)], format="csr")
    batch = np.concatenate([np.char.add("reference ", sample["batch"]), np.char.add("query ", batch)])
    return counts, batch, np.asarray(sample_codes)[sample["index"]].astype(np.int64)


def query_batches(model: EmbeddingModel, batch: pd.Series | None, n: int) -> tuple[np.ndarray, list[str]]:
    """Batch codes of query cells in the model's (extended) batch list, and the batches it has not seen."""
    known = {b: i for i, b in enumerate(model.batches)}
    if batch is None:  # the query is one new batch, also for a model trained on one batch (no batch columns)
        return np.full(n, len(known), dtype=np.int64), ["query"]
    values = batch.astype(str).to_numpy()
    new = [b for b in pd.unique(values) if b not in known]
    lookup = {**known, **{b: len(known) + i for i, b in enumerate(new)}}
    return np.array([lookup[b] for b in values], dtype=np.int64), new
