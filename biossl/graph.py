"""kNN graphs and label propagation (numpy/scipy only).

Propagation solves ``(I - alpha S) F = Y`` with ``S = D^-1/2 W D^-1/2`` (Zhou et al. 2004, NIPS 16),
by conjugate gradients, all classes side by side: the system is symmetric positive definite, so CG
converges in far fewer sweeps than the fixed-point iteration (the sklearn default of 30 sweeps stops
before labels reach distant cells).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger("biossl")

EXACT_MAX_CELLS = 50_000


def knn(X: np.ndarray, n_neighbors: int, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
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
        from pynndescent import NNDescent

        index = NNDescent(X, n_neighbors=n_neighbors + 1, random_state=seed, n_jobs=1, low_memory=True)
        idx, dist = index.neighbor_graph
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
    W.setdiag(0)
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


def spreading_operator(W: sp.spmatrix, alpha: float) -> sp.csr_matrix:
    """``A = I - alpha S`` with ``S = D^-1/2 W D^-1/2``, the matrix :func:`propagate` solves with.

    Build it once when the same graph spreads several label sets (calibration folds, suggestion rounds).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    W = sp.csr_matrix(W, dtype=np.float64)
    d = np.asarray(W.sum(1)).ravel()
    inv_sqrt = np.zeros_like(d)
    inv_sqrt[d > 0] = 1.0 / np.sqrt(d[d > 0])
    S = sp.diags(inv_sqrt) @ W @ sp.diags(inv_sqrt)
    return (sp.identity(W.shape[0], format="csr") - alpha * S).tocsr()


def propagate(
    W: sp.spmatrix | None,
    Y: np.ndarray,
    *,
    alpha: float = 0.99,
    tol: float = 1e-6,
    max_iter: int = 1000,
    operator: sp.csr_matrix | None = None,
) -> np.ndarray:
    """Spread label columns ``Y`` (cells × classes) over affinity ``W``: solve ``(I - alpha S) F = Y``.

    ``operator`` is :func:`spreading_operator(W, alpha) <spreading_operator>`, when already built (``W`` and
    ``alpha`` are then not read). Returns ``F`` (cells × classes, non-negative). Rows of cells with no path
    to any seed are zero.
    """
    A = spreading_operator(W, alpha) if operator is None else operator
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] != A.shape[0]:
        raise ValueError(f"Y has shape {Y.shape}; expected ({A.shape[0]}, n_classes).")
    F, not_converged = conjugate_gradients(A, Y, tol=tol, max_iter=max_iter)
    for c in np.flatnonzero(not_converged):
        logger.warning("propagation for class %d stopped after %d iterations before converging", c, max_iter)
    return np.clip(F, 0.0, None)


def conjugate_gradients(
    A: sp.csr_matrix, B: np.ndarray, *, tol: float = 1e-6, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``A X = B`` for symmetric positive definite ``A``, one CG recurrence per column of ``B``.

    The columns run side by side, so each iteration reads ``A`` once for all of them (a sparse
    matrix-matrix product instead of one matrix-vector product per column); a column stops when its
    residual falls below ``tol`` times the norm of its right-hand side, as ``scipy.sparse.linalg.cg``
    stops. Columns are solved in blocks so the work arrays stay below ~0.5 GB. Returns the solution and a
    boolean per column that did not converge within ``max_iter`` iterations.
    """
    from ._backed import progress_bar  # one step per solved column; only large graphs take seconds

    n, m = B.shape
    X = np.zeros((n, m))
    failed = np.zeros(m, dtype=bool)
    block = int(max(1, min(64, 2**29 // (40 * max(n, 1)))))  # five n × block float64 work arrays
    bar = progress_bar(m, "propagation") if n > EXACT_MAX_CELLS else None
    for start in range(0, m, block):
        cols = slice(start, min(start + block, m))
        X[:, cols], failed[cols] = _cg_block(A, B[:, cols], tol, max_iter, bar)
    if bar is not None:
        bar.close()
    return X, failed


def _cg_block(A, B, tol, max_iter, bar):
    X = np.zeros_like(B)
    R = B.copy()
    P = R.copy()
    rr = np.einsum("ij,ij->j", R, R)
    stop = (tol**2) * rr  # ||r|| < tol ||b||; all-zero columns are solved by X = 0 at once
    active = np.flatnonzero(rr > stop)
    if bar is not None:
        bar.update(B.shape[1] - len(active))
    for _ in range(max_iter):
        if len(active) == 0:
            break
        full = len(active) == B.shape[1]
        Pa = P if full else P[:, active]
        AP = A @ Pa
        step = rr[active] / np.einsum("ij,ij->j", Pa, AP)
        if full:
            X += step * P
            R -= step * AP
        else:
            X[:, active] += step * Pa
            R[:, active] -= step * AP
        Ra = R if full else R[:, active]
        rr_new = np.einsum("ij,ij->j", Ra, Ra)
        beta = rr_new / rr[active]
        if full:
            P *= beta
            P += R
        else:
            P[:, active] = Ra + beta * Pa
        rr[active] = rr_new
        still = rr_new >= stop[active]
        if bar is not None:
            bar.update(int((~still).sum()))
        active = active[still]
    return X, np.isin(np.arange(B.shape[1]), active)
