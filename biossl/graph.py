"""kNN graphs and label propagation (numpy/scipy only).

Propagation solves ``(I - alpha S) F = Y`` with ``S = D^-1/2 W D^-1/2`` (Zhou et al. 2004, NIPS 16),
one conjugate-gradient solve per class: the system is symmetric positive definite, so CG converges in
far fewer sweeps than the fixed-point iteration (the sklearn default of 30 sweeps stops before labels
reach distant cells).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg

from ._types import KnnMethod

logger = logging.getLogger("biossl")

EXACT_MAX_CELLS = 50_000
# Random-projection trees that start pynndescent's search (its default grows to 32 at 10^6 cells). Each tree
# holds ~0.1 GB at 10^6 cells; 8 trees cut the kNN's peak memory there from 4.1 to 1.8 GB and its time by a
# fifth, at a recall of the 15 nearest neighbours of 0.982 instead of 0.987 (a VAE latent of the scale
# simulation, 500 cells checked against exact search).
PYNNDESCENT_TREES = 8
# Below this batch-mixing score (:func:`batch_mixing`; :func:`mixing_floor` for the PCA's gate) labels hardly
# cross batches on a kNN graph. Chosen on pbmc3k_two_technologies and the mild few-label sets (which score above it
# and are left unchanged); baron_mouse_two_technologies was held out (benchmarks/strong_batch_log.md).
MIXING_MIN = 0.2


def knn(X: np.ndarray, n_neighbors: int, *, method: KnnMethod = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances of the ``n_neighbors`` nearest other cells of each row of ``X``.

    ``method="auto"`` is exact (sklearn) up to 50,000 cells and approximate (pynndescent) above.
    """
    n = X.shape[0]
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_CELLS else "pynndescent"
    X = np.ascontiguousarray(X, dtype=np.float32)
    if method == "exact":
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(X).kneighbors(X)
    elif method == "pynndescent":
        index = _nndescent(X, n_neighbors + 1, seed)
        idx, dist = index.neighbor_graph
        del index
        gc.collect()  # the index holds reference cycles: 0.38 GB at 10^6 cells stayed until the next collection
    else:
        raise ValueError(f"method must be 'auto', 'exact' or 'pynndescent', got {method!r}")
    # drop each cell itself (it may not come first when there are duplicate points)
    is_self = idx == np.arange(n)[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), n_neighbors)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    idx = idx[keep].reshape(n, n_neighbors)
    dist = dist[keep].reshape(n, n_neighbors).astype(np.float32)
    return idx, dist


def distance_matrix(idx: np.ndarray, dist: np.ndarray) -> sp.csr_matrix:
    """Sparse cells × cells matrix of kNN distances (row i holds i's neighbours)."""
    n, k = idx.shape
    return sp.csr_matrix((dist.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def gaussian_affinity(idx: np.ndarray, dist: np.ndarray) -> sp.csr_matrix:
    """Symmetric kNN affinity with a locally scaled Gaussian kernel (Zelnik-Manor & Perona 2004).

    ``w_ij = exp(-d_ij^2 / (s_i s_j))`` with ``s_i`` the distance to i's middle neighbour; the graph is
    symmetrised as a fuzzy union ``W + W^T - W∘W^T`` so an edge exists if either cell chose the other.
    """
    n, k = idx.shape
    sigma = _kernel_widths(dist)
    w = np.exp(-(dist**2) / (sigma[:, None] * sigma[idx]))
    W = sp.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    Wt = W.T.tocsr()
    W = (W + Wt - W.multiply(Wt)).tocsr()
    del Wt
    # self-loops dropped in place: setdiag(0) rebuilt the matrix through COO, which made this the peak of a
    # 10^6-cell run (3.4 GB, 3.1 without); the arrays come out the same
    rows = np.repeat(np.arange(n, dtype=W.indices.dtype), np.diff(W.indptr))
    W.data[W.indices == rows] = 0
    del rows
    W.eliminate_zeros()
    return W


def _kernel_widths(dist: np.ndarray) -> np.ndarray:
    """Per-cell kernel width: distance to the middle neighbour, kept on the scale of the row's distances.

    Duplicated cells have a middle-neighbour distance of (almost) 0, which would cut every edge to other
    cells; half the row's mean distance is a floor that leaves ordinary cells unchanged (their middle
    distance is close to the mean) but keeps duplicates connected. Rows of exact copies only take the
    median width.
    """
    k = dist.shape[1]
    sigma = np.maximum(dist[:, k // 2].astype(np.float64), 0.5 * dist.mean(1))
    positive = sigma > 0
    typical = float(np.median(sigma[positive])) if positive.any() else 1.0
    return np.where(positive, sigma, typical)


# Above this many cells the operator's rows and columns are put in reverse Cuthill-McKee order, which keeps each
# cell's neighbours close in memory: at 10^6 cells (scale simulation) one product with the operator took 0.108 s in
# the kNN order and 0.038 s reordered (float32: 0.089 -> 0.025 s); the reordering costs ~2 s once per operator
REORDER_MIN_CELLS = 100_000


@dataclass(frozen=True)
class SpreadingOperator:
    """``A = I - alpha S`` as :func:`propagate` uses it: the matrix, and the cell order of its rows (None: as given)."""

    matrix: sp.csr_matrix
    order: np.ndarray | None = None

    def astype(self, dtype) -> SpreadingOperator:
        """The same operator in another precision (:func:`propagate` solves in it; float32 halves the memory read)."""
        return SpreadingOperator(self.matrix.astype(dtype, copy=False), self.order)


def spreading_operator(W: sp.spmatrix, alpha: float) -> SpreadingOperator:
    """``A = I - alpha S`` with ``S = D^-1/2 W D^-1/2``, the matrix :func:`propagate` solves with.

    Build it once when the same graph spreads several label sets (an annotation and its calibration folds).
    Graphs above ``REORDER_MIN_CELLS`` cells are stored in reverse Cuthill-McKee order (the solution is the same,
    the products with the matrix read memory in order); :func:`propagate` maps seeds and results back.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    S = sp.csr_matrix(W, dtype=np.float64, copy=True)
    d = np.asarray(S.sum(1)).ravel()
    inv_sqrt = np.zeros_like(d)
    inv_sqrt[d > 0] = 1.0 / np.sqrt(d[d > 0])
    # D^-1/2 W D^-1/2 entry by entry, in place: the same numbers as two products with diagonal matrices (each entry
    # is multiplied by its row's factor, then its column's), without their copies (10^6 cells: 0.5 s instead of 5 s)
    S.data *= np.repeat(inv_sqrt, np.diff(S.indptr))
    S.data *= inv_sqrt[S.indices]
    A = sp.identity(S.shape[0], format="csr") - alpha * S
    del S
    A = A.tocsr()
    if A.shape[0] <= REORDER_MIN_CELLS:
        return SpreadingOperator(A)
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    order = reverse_cuthill_mckee(A, symmetric_mode=True).astype(np.int64)
    A = A[order]  # rows in the new order (one copy), then the columns renamed in place: A[order][:, order]
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    A.indices = rank[A.indices].astype(A.indices.dtype)
    A.has_sorted_indices = False
    A.sort_indices()
    return SpreadingOperator(A, order)


def propagate(
    W: sp.spmatrix | None,
    Y: np.ndarray,
    *,
    alpha: float = 0.9,
    tol: float = 1e-6,
    max_iter: int = 1000,
    operator: SpreadingOperator | None = None,
) -> np.ndarray:
    """Spread label columns ``Y`` (cells × classes) over affinity ``W``: solve ``(I - alpha S) F = Y``.

    ``operator`` is :func:`spreading_operator(W, alpha) <spreading_operator>`, when already built (``W`` and
    ``alpha`` are then not read); the solves run in its precision (float64, or float32 when it was cast).
    Returns ``F`` (cells × classes, float64, non-negative). Rows of cells with no path to any seed are zero.
    """
    operator = spreading_operator(W, alpha) if operator is None else operator
    A, order = operator.matrix, operator.order
    F = np.zeros(Y.shape, dtype=np.float64)
    from ._progress import progress_bar  # one step per class; only large graphs take seconds per class

    # one CG solve per class: a block solve (all classes in one sparse matrix-matrix product per step) was
    # 30% faster up to 10^5 cells but 1.7x slower at 3*10^5, where the neighbour gathers miss the cache; on the
    # reordered 10^6-cell operator, scipy's recurrences run per column around one shared product per step gave the
    # same bits and no gain (13.3 vs 12.9 s float64): the block copies eat the cheaper product
    bar = progress_bar(Y.shape[1], "propagation") if A.shape[0] > EXACT_MAX_CELLS else None
    rows = slice(None) if order is None else order  # seeds go in and results come out in the operator's order
    for c in range(Y.shape[1]):
        b = Y[rows, c].astype(A.dtype)
        if b.any():
            f, info = cg(A, b, rtol=tol, atol=0.0, maxiter=max_iter)
            if info > 0:
                logger.warning("propagation for class %d stopped after %d iterations before converging", c, info)
            F[rows, c] = f
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return np.clip(F, 0.0, None)


def batch_mixing(idx: np.ndarray, batch: np.ndarray) -> dict:
    """How well batches mix in a kNN graph: the observed share of cross-batch neighbours over the expected share.

    ``idx`` holds each cell's neighbours (cells × k), ``batch`` each cell's batch. The expected share is what
    neighbours drawn at random from all cells would give (``1 - n_b / n`` for a cell of batch ``b``), so 1 means
    batches mix as if they were one, and 0 that no cell has a neighbour in another batch. Differences in cell-type
    composition between batches lower the score even where batches align (two donors of one tissue score well
    below 1).

    With more than two batches the overall score can hide a split: donors of one technology mix among themselves
    and not with those of another (two donors in each of two technologies: 0.69 overall). ``weakest_split`` is the
    same score for the two groups of batches that mix least (every split of up to ``SPLIT_EXHAUSTIVE_BATCHES``
    batches is tried; with more, each batch against the rest and the split where merging the best-mixed groups
    ends); :func:`mixing_floor` is the lower of the two.

    ``groups`` splits the batches further, each group in two where its own weakest split (its batches' neighbours
    among themselves) is below ``MIXING_MIN``, until every group mixes within: the technologies or species whose
    donors mix, which :func:`biossl.tl.embed` scales genes within rather than donor by donor.

    Returns a dict with ``score`` (over all cells), ``batches`` (the batch names), ``per_batch`` (the score of
    each batch's cells, in that order), ``weakest_split`` (``score`` and the ``batches`` of the smaller side) and
    ``groups`` (a group number per batch, in that order).
    """
    batch = np.asarray(batch)
    names, codes = np.unique(batch, return_inverse=True)
    n = len(codes)
    sizes = np.bincount(codes, minlength=len(names))
    cross = (codes[idx] != codes[:, None]).mean(1)
    expected = 1.0 - sizes[codes] / n
    per_batch = [
        round(float(cross[codes == b].mean() / expected[codes == b][0]), 4) if sizes[b] < n else 1.0
        for b in range(len(names))
    ]
    score = float(cross.mean() / expected.mean()) if expected.mean() > 0 else 1.0
    out = {"score": round(score, 4), "batches": [str(b) for b in names], "per_batch": per_batch}
    if len(names) > 1:  # h5ad keeps lists, not dicts keyed by batch name ("plate/1" is not a valid key)
        edges = np.zeros((len(names), len(names)))
        np.add.at(edges, (np.repeat(codes, idx.shape[1]), codes[idx].ravel()), 1.0)
        split_score, side = _weakest_split(edges, sizes)
        smaller = side if sizes[side].sum() <= sizes[~side].sum() else ~side
        out["weakest_split"] = {"score": round(split_score, 4), "batches": [str(b) for b in names[smaller]]}
        groups = np.zeros(len(names), dtype=np.int64)
        for number, members in enumerate(_split_groups(edges, sizes, np.arange(len(names)), (split_score, side))):
            groups[members] = number
        out["groups"] = [int(g) for g in groups]
    return out


def _split_groups(
    edges: np.ndarray, sizes: np.ndarray, members: np.ndarray, split: tuple[float, np.ndarray] | None = None
) -> list[np.ndarray]:
    """``members`` (batch numbers) split in two while their weakest split is below ``MIXING_MIN``, recursively.

    ``split``: the members' weakest split when the caller has it already (:func:`_weakest_split`'s result).
    """
    if len(members) < 2:
        return [members]
    score, side = _weakest_split(edges[np.ix_(members, members)], sizes[members]) if split is None else split
    if score >= MIXING_MIN:
        return [members]
    return _split_groups(edges, sizes, members[side]) + _split_groups(edges, sizes, members[~side])


def mixing_floor(mixing: dict) -> float:
    """The lower of :func:`batch_mixing`'s overall score and its weakest split's: what the batch gates compare."""
    return min(mixing["score"], mixing.get("weakest_split", {}).get("score", mixing["score"]))


SPLIT_EXHAUSTIVE_BATCHES = 12  # up to this many batches every split into two groups is scored


def _weakest_split(edges: np.ndarray, sizes: np.ndarray) -> tuple[float, np.ndarray]:
    """The two-group split of batches with the lowest mixing score, from batch × batch neighbour counts.

    A split's score is its share of neighbours across the split over the share random neighbours would give,
    ``2 m (n - m) / n^2`` for a side of ``m`` of ``n`` cells. Returns the score and the mask of one side.
    """
    B = len(sizes)
    n, total = float(sizes.sum()), max(float(edges.sum()), 1.0)
    if B <= SPLIT_EXHAUSTIVE_BATCHES:  # batch 0 stays on the False side: each split once
        masks = (np.arange(1, 2 ** (B - 1))[:, None] >> np.arange(B - 1)) & 1
        sides = np.hstack([np.zeros((len(masks), 1), dtype=bool), masks.astype(bool)])
        inside = ((sides @ edges) * sides).sum(1) + ((~sides @ edges) * ~sides).sum(1)
    else:  # each batch against the rest (inside: its own edges and those among the rest), and the merged split
        merged = _merged_split(edges, sizes)
        sides = np.vstack([np.eye(B, dtype=bool), merged[None]])
        own = np.diag(edges)
        singles = own + (total - edges.sum(0) - edges.sum(1) + own)
        inside = np.append(singles, edges[np.ix_(merged, merged)].sum() + edges[np.ix_(~merged, ~merged)].sum())
    m = sides @ sizes
    scores = ((total - inside) / total) / np.maximum(2.0 * m * (n - m) / n**2, 1e-12)
    best = int(np.argmin(scores))
    return float(scores[best]), sides[best]


def _merged_split(edges: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Merge the two groups of batches that mix best (neighbours over the random expectation) until two remain."""
    B = len(sizes)
    links = (edges + edges.T).astype(np.float64)
    size = sizes.astype(np.float64)
    group, alive = np.arange(B), np.ones(B, dtype=bool)
    for _ in range(B - 2):
        affinity = links / np.outer(size, size)
        affinity[~alive] = -1.0
        affinity[:, ~alive] = -1.0
        np.fill_diagonal(affinity, -1.0)
        i, j = np.unravel_index(int(np.argmax(affinity)), affinity.shape)
        links[i] += links[j]
        links[:, i] += links[:, j]
        size[i] += size[j]
        alive[j] = False
        group[group == j] = i
    return group == group[0]


MNN_NEIGHBORS = 20  # k of the mutual-nearest-neighbour bridges (Haghverdi et al.'s default)


def mnn_bridges(
    X: np.ndarray, batch: np.ndarray, k: int = MNN_NEIGHBORS, *, method: KnnMethod = "auto", seed: int = 0
) -> sp.csr_matrix:
    """Affinities of mutual nearest neighbours between batches (Haghverdi et al. 2018, Nat Biotechnol 36:421).

    Cells ``i`` (batch a) and ``j`` (batch b) are a pair when each is among the other's ``k`` nearest cells of
    the other batch. Pairs get the kernel of :func:`gaussian_affinity` with cross-batch widths (each cell's mean
    distance to its ``k`` nearest cells of the other batches), so they carry weight although the batches lie
    apart. Returns a symmetric cells × cells matrix with one edge per pair and no within-batch edges.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    names, codes = np.unique(np.asarray(batch), return_inverse=True)
    n = X.shape[0]
    rows, cols, dists = [], [], []
    for b in range(len(names)):
        inside, outside = np.flatnonzero(codes == b), np.flatnonzero(codes != b)
        kb = int(min(k, len(inside)))
        if kb < 1 or len(outside) == 0:
            continue
        idx, dist = knn_query(X[inside], X[outside], kb, method=method, seed=seed)
        rows.append(np.repeat(outside, kb))
        cols.append(inside[idx.ravel()])
        dists.append(dist.ravel())
    if not rows:
        return sp.csr_matrix((n, n))
    r, c, d = np.concatenate(rows), np.concatenate(cols), np.concatenate(dists).astype(np.float64)
    D = sp.csr_matrix((d, (r, c)), shape=(n, n))  # row i: i's nearest cells of each other batch
    width = np.asarray(D.sum(1)).ravel() / np.maximum(np.diff(D.indptr), 1)
    positive = width > 0
    width = np.where(positive, width, np.median(width[positive]) if positive.any() else 1.0)
    mutual = D.multiply(D.T > 0).tocoo()  # kept where j also chose i
    w = np.exp(-(mutual.data**2) / (width[mutual.row] * width[mutual.col]))
    return sp.csr_matrix((w, (mutual.row, mutual.col)), shape=(n, n))


def knn_query(data: np.ndarray, queries: np.ndarray, k: int, *, method: KnnMethod, seed: int):
    """Indices into ``data`` and distances of the ``k`` nearest rows of ``data`` to each row of ``queries``."""
    small = data.shape[0] <= 2_000  # an index of a few cells: exact (pynndescent needs more cells than neighbours)
    if method == "auto":
        method = "exact" if small or data.shape[0] + queries.shape[0] <= EXACT_MAX_CELLS else "pynndescent"
    if method == "exact" or small:
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=k).fit(data).kneighbors(queries)
        return idx, dist
    return _nndescent(data, max(k, 15), seed).query(queries, k=k)


def _nndescent(data: np.ndarray, n_neighbors: int, seed: int):
    """The pynndescent index of ``data`` as biossl builds it: ``PYNNDESCENT_TREES`` trees, one thread, low memory."""
    from pynndescent import NNDescent

    return NNDescent(
        data, n_neighbors=n_neighbors, n_trees=PYNNDESCENT_TREES, random_state=seed, n_jobs=1, low_memory=True
    )
