"""PCA of log-normalised counts, pooled or scaled per batch, with the batch-mixing check that picks between them.

Shared by :func:`biossl.tl.embed` (the default latent) and :func:`biossl.tl.map_query` (the query's own graph).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from .. import graph
from .._types import BatchCorrection

logger = logging.getLogger("biossl")

BATCH_CORRECTIONS = ("auto", "none", "scale")
MIXING_MAX_CELLS = 20_000  # the diagnostic's kNN graph is built on at most this many cells (a seeded sample)


def pca_latent(
    counts, n_comps: int, seed: int, *, batch: np.ndarray | None = None, batch_correction: BatchCorrection = "auto"
) -> tuple[np.ndarray, dict]:
    """PCA of raw ``counts`` (cells × genes) after normalize_total (1e4) and log1p, and what was done about batches.

    Without batches (or ``batch_correction="none"``) genes are scaled over all cells. ``"scale"`` scales them
    within each batch (:func:`_pca_scaled_per_batch`); ``"auto"`` does so only when the batches mix poorly in the
    pooled PCA (:func:`biossl.graph.batch_mixing` below ``graph.MIXING_MIN``). The returned dict holds
    ``batch_correction`` and the ``batch_mixing`` scores (empty without batches).
    """
    L = log_normalise(counts)
    single = batch is None or len(np.unique(batch)) < 2
    if single or batch_correction == "none":
        return _pooled_pca(L, n_comps, seed), ({} if single else {"batch_correction": "none"})
    batch = np.asarray(batch).astype(str)
    info: dict = {}
    if batch_correction == "auto":
        latent = _pooled_pca(L, n_comps, seed)
        info["batch_mixing"] = {"pooled": _mixing(latent, batch, seed)}
        pooled = info["batch_mixing"]["pooled"]["score"]
        if pooled >= graph.MIXING_MIN:
            logger.info("PCA: batches mix in the pooled PCA (mixing score %.2f); no correction", pooled)
            return latent, {**info, "batch_correction": "none"}
    latent = _pca_scaled_per_batch(L, batch, n_comps)
    info["batch_mixing"] = {**info.get("batch_mixing", {}), "scaled": _mixing(latent, batch, seed)}
    if batch_correction == "auto":
        logger.warning(
            "PCA: batches do not mix in the pooled PCA (mixing score %.2f < %.2f); genes scaled per batch "
            "(mixing score %.2f)",
            info["batch_mixing"]["pooled"]["score"],
            graph.MIXING_MIN,
            info["batch_mixing"]["scaled"]["score"],
        )
    return latent, {**info, "batch_correction": "scale"}


def _mixing(latent: np.ndarray, batch: np.ndarray, seed: int, n_neighbors: int = 15) -> dict:
    """:func:`biossl.graph.batch_mixing` of a kNN graph on ``latent`` (a seeded sample of cells when there are many)."""
    n = latent.shape[0]
    if n > MIXING_MAX_CELLS:
        keep = np.sort(np.random.default_rng(seed).choice(n, MIXING_MAX_CELLS, replace=False))
        latent, batch = latent[keep], batch[keep]
    k = int(min(n_neighbors, latent.shape[0] - 1))
    idx, _ = graph.knn(latent, k, seed=seed)
    return graph.batch_mixing(idx, batch)


def log_normalise(counts) -> sp.csr_matrix:
    """Log-normalised counts as float32 CSR: scanpy's normalize_total (1e4), then log1p."""
    import scanpy as sc
    from anndata import AnnData

    tmp = AnnData(X=sp.csr_matrix(counts, dtype=np.float32))
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    return sp.csr_matrix(tmp.X)


def _pooled_pca(L: sp.csr_matrix, n_comps: int, seed: int) -> np.ndarray:
    """PCA of log-normalised ``L`` with unit-variance genes (scanpy's ARPACK PCA).

    The matrix stays sparse: genes are scaled without centring (values clipped where the centred value
    would exceed 10, as ``sc.pp.scale(max_value=10)`` does) and PCA centres implicitly, so memory stays
    O(nnz) (``sc.pp.scale`` would densify it).
    """
    import scanpy as sc
    from anndata import AnnData

    mean = np.asarray(L.mean(0)).ravel()
    var = np.asarray(L.multiply(L).mean(0)).ravel() - mean**2
    std = np.sqrt(np.maximum(var, 1e-12))
    X = sp.csr_matrix(L @ sp.diags(1.0 / std))
    X.data = np.minimum(X.data, (10.0 + mean / std)[X.indices]).astype(np.float32)
    tmp = AnnData(X=X)
    n_comps = int(min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.tl.pca(tmp, n_comps=n_comps, random_state=seed)
    return np.asarray(tmp.obsm["X_pca"], dtype=np.float32)


def _pca_scaled_per_batch(X, batch: np.ndarray, n_comps: int) -> np.ndarray:
    """PCA of log-normalised ``X`` (sparse) after scaling each gene within each batch to zero mean, unit variance.

    Genes not detected in every batch (a gene panel or annotation that differs) are left out. The centred
    matrix is never formed: the gene × gene covariance is summed batch by batch from ``X_b^T X_b`` and the
    batch means, and the scores are ``X_b (s_b V) - m_b^T (s_b V)``, so memory stays O(nnz + genes^2).
    Values are clipped at 10 standard deviations above the batch mean, as ``sc.pp.scale(max_value=10)`` does.
    """
    X = sp.csr_matrix(X, dtype=np.float64)
    names, codes = np.unique(batch, return_inverse=True)
    rows = [np.flatnonzero(codes == b) for b in range(len(names))]
    detected = np.vstack([np.asarray((X[r] > 0).mean(0)).ravel() for r in rows])
    keep = (detected > 0).all(0) & (detected.min(0) >= 1e-3)
    if keep.sum() < 2 * n_comps:  # too few shared genes to drop the rest: keep every gene expressed somewhere
        keep = (detected > 0).any(0)
    X = X[:, np.flatnonzero(keep)]
    n_genes = X.shape[1]
    means, scales, blocks = [], [], []
    cov = np.zeros((n_genes, n_genes))
    for r in rows:
        Xb = X[r]
        m = np.asarray(Xb.mean(0)).ravel()
        sd = np.sqrt(np.maximum(np.asarray(Xb.multiply(Xb).mean(0)).ravel() - m**2, 0.0))
        s = np.where(sd > 1e-8, 1.0 / np.maximum(sd, 1e-8), 0.0)
        Xb = Xb.tocsr(copy=True)
        Xb.data = np.minimum(Xb.data, (m + 10.0 * sd)[Xb.indices])
        gram = (Xb.T @ Xb).toarray() - len(r) * np.outer(m, m)
        cov += gram * np.outer(s, s)
        means.append(m)
        scales.append(s)
        blocks.append(Xb)
    n_comps = int(min(n_comps, X.shape[0] - 1, n_genes - 1))
    evecs = np.linalg.eigh(cov)[1]
    V = evecs[:, ::-1][:, :n_comps]
    V *= np.sign(V[np.abs(V).argmax(0), np.arange(n_comps)])  # one sign per component, for reproducible output
    latent = np.zeros((X.shape[0], n_comps))
    for r, Xb, m, s in zip(rows, blocks, means, scales, strict=True):
        sV = s[:, None] * V
        latent[r] = Xb @ sV - m @ sV
    return latent.astype(np.float32)
