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
# the diagnostic's kNN graph is built on at most this many cells (a seeded sample); the pooled PCA the "auto" gate
# measures is fitted on that sample alone, so data whose batches do not mix never pay for the whole pooled PCA
# (10^5 cells: 40 of the embedding's 65 CPU-s), and so is the scaled PCA the weak-mixing lift measures, built on every
# cell only when it is kept (benchmarks/large_weak_mixing.py)
MIXING_MAX_CELLS = 20_000
# Above PCA_FIT_MAX_CELLS cells the components are fitted on a seeded sample of PCA_FIT_CELLS cells and every cell is
# projected (in row chunks): the fit's memory and time stop growing with the data, which a 10^6-cell file needs
# (README, "Large data": 10^6 cells through the CLI 21 -> 5.9 min, macro-F1 0.951 -> 0.944; a sample of 5*10^5 took
# 10.9 min and 4.9 GiB). Sampling from 10^5 cells on cost macro-F1 on the 2*10^5-cell simulation (every cell vs half
# of them, 5 labels per type: 0.935 -> 0.917 over label seeds 0-4, every seed lower), so data up to 5*10^5 cells keep
# the full fit.
PCA_FIT_MAX_CELLS = 500_000
PCA_FIT_CELLS = 100_000
PCA_FIT_MIN_BATCH_CELLS = 1_000  # every batch keeps at least this many cells in the sample (all of a smaller one)
PROJECT_ROWS = 20_000  # rows projected at a time onto components fitted on a sample
# Batches that mix above the gate (graph.MIXING_MIN) but weakly: genes are scaled per batch when that lifts the
# mixing floor by at least this much ("auto"; tl.embed and map_query's refinement graph). Chosen on pbmc3k_divergent
# generated without its absent genes (benchmarks/strong_batch_log.md, "Batches that mix weakly"): pooled floors
# 0.39-0.55 rose by 0.29-0.46 and macro-F1 by 0.07-0.11; where scaling does not raise the floor (baron_mouse_divergent
# alike, the few-label baron_mouse at 0.35 -> 0.22) nothing changes. 1.0 turns the lift off.
MIXING_LIFT = 0.2


def pca_latent(
    counts,
    n_comps: int,
    seed: int,
    *,
    batch: np.ndarray | None = None,
    batch_correction: BatchCorrection = "auto",
    copy: bool = True,
    normalised: bool = False,
) -> tuple[np.ndarray, dict]:
    """PCA of raw ``counts`` (cells × genes) after normalize_total (1e4) and log1p, and what was done about batches.

    Without batches (or ``batch_correction="none"``) genes are scaled over all cells. ``"scale"`` scales them
    within each batch (:func:`_pca_scaled_per_batch`); ``"auto"`` does so only when the batches mix poorly in the
    pooled PCA (:func:`biossl.graph.mixing_floor` below ``graph.MIXING_MIN``; above ``MIXING_MAX_CELLS`` cells, the
    pooled PCA of that seeded sample of cells, whose score read 0.00-0.04 higher than the whole PCA's on 50,000- to
    200,000-cell simulations). When only the weakest split of the batches into two groups is below the gate (the
    overall score is not), the scaling is kept only if it lifts that floor above the gate: a split that scaling
    does not mend is a difference in composition more than a shift (``benchmarks/nested_batches.py``). The
    returned dict holds
    ``batch_correction`` and the ``batch_mixing`` scores (empty without batches). ``copy=False`` lets the
    log-normalisation overwrite ``counts`` (a matrix the caller built for this); ``normalised=True`` takes ``counts``
    as :func:`log_normalise`'s output already (it is read, not changed).
    """
    L = counts if normalised else log_normalise(counts, copy=copy)
    single = batch is None or len(np.unique(batch)) < 2
    batch = None if batch is None else np.asarray(batch).astype(str)
    fit = fit_sample(L.shape[0], batch, seed)
    if fit is not None:
        logger.info("PCA: components fitted on a sample of %d of %d cells; every cell projected", len(fit), L.shape[0])
    if single or batch_correction == "none":
        return _pooled_pca(L, n_comps, seed, fit), ({} if single else {"batch_correction": "none"})
    info: dict = {}
    kept = None
    if batch_correction == "auto":
        # the pooled PCA of the diagnostic's cells only (every cell on small data): the whole one is built only if kept
        rows = _mixing_rows(L.shape[0], seed)
        sample = _pooled_pca(L, n_comps, seed, fit) if rows is None else _pooled_pca(L[rows], n_comps, seed)
        info["batch_mixing"] = {"pooled": _mixing(sample, batch if rows is None else batch[rows], seed)}
        pooled = info["batch_mixing"]["pooled"]
        if graph.mixing_floor(pooled) >= graph.MIXING_MIN:
            lifted, scaled = _scaled_if_it_lifts(L, batch, n_comps, seed, fit, pooled, rows)
            if scaled is not None:
                info["batch_mixing"]["scaled"] = scaled
            if lifted is not None:
                return lifted, {
                    **info,
                    "batch_correction": "scale",
                    "scaled_within": [str(b) for b in np.unique(batch)],
                }
            logger.info("PCA: batches mix in the pooled PCA (mixing score %.2f); no correction", pooled["score"])
            latent = sample if rows is None else _pooled_pca(L, n_comps, seed, fit)
            return latent, {**info, "batch_correction": "none"}
        kept = sample if rows is None and pooled["score"] >= graph.MIXING_MIN else None
        del sample
    within, groups = batch, None
    if batch_correction == "auto":  # within the groups of batches that mix among themselves, not donor by donor
        within, groups = _scaling_groups(info["batch_mixing"]["pooled"], batch)
    latent = _pca_scaled_per_batch(L, within, n_comps, fit)
    info["batch_mixing"] = {**info.get("batch_mixing", {}), "scaled": _mixing(latent, batch, seed)}
    if batch_correction == "auto":
        pooled, scaled = info["batch_mixing"]["pooled"], info["batch_mixing"]["scaled"]
        if pooled["score"] >= graph.MIXING_MIN and graph.mixing_floor(scaled) < graph.MIXING_MIN:
            # only a split of the batches mixes poorly, and scaling does not mend it: a difference in composition
            # (cell lines in one design and not the other) more than a shift, which scaling would only blur
            logger.info(
                "PCA: batches %s mix poorly with the rest (%.2f; overall %.2f) and scaling genes per batch does not "
                "mend it (%.2f); no correction",
                ", ".join(pooled["weakest_split"]["batches"]),
                pooled["weakest_split"]["score"],
                pooled["score"],
                graph.mixing_floor(scaled),
            )
            latent = kept if kept is not None else _pooled_pca(L, n_comps, seed, fit)
            return latent, {**info, "batch_correction": "none"}
        info["scaled_within"] = groups
        logger.warning(
            "PCA: batches do not mix in the pooled PCA (mixing score %.2f < %.2f%s); genes scaled %s (mixing score "
            "%.2f)",
            graph.mixing_floor(pooled),
            graph.MIXING_MIN,
            _split_note(pooled),
            "per batch" if len(groups) == len(pooled["batches"]) else f"within each of {len(groups)} groups of batches",
            graph.mixing_floor(scaled),
        )
    return latent, {**info, "batch_correction": "scale"}


def _scaled_if_it_lifts(L, batch: np.ndarray, n_comps: int, seed: int, fit, pooled: dict, rows: np.ndarray | None):
    """(PCA scaled per batch or None, its mixing or None): the latent only if it lifts a weak floor by ``MIXING_LIFT``.

    Not measured (None, None) where the pooled floor is ``1 - MIXING_LIFT`` or more. With ``rows`` (the diagnostic's
    sample, above ``MIXING_MAX_CELLS`` cells) the scaled PCA is measured as the pooled one was, fitted on those rows
    alone, and built on every cell only when it is kept.
    """
    floor = graph.mixing_floor(pooled)
    if floor >= 1.0 - MIXING_LIFT:
        return None, None
    if rows is None:
        probe = _pca_scaled_per_batch(L, batch, n_comps, fit)
        scaled = _mixing(probe, batch, seed)
    else:
        probe, scaled = None, _mixing(_pca_scaled_per_batch(L[rows], batch[rows], n_comps), batch[rows], seed)
    if graph.mixing_floor(scaled) < floor + MIXING_LIFT:
        return None, scaled
    logger.info(
        "PCA: batches mix weakly in the pooled PCA (mixing score %.2f) and scaling genes per batch lifts it to %.2f; "
        "genes scaled per batch",
        floor,
        graph.mixing_floor(scaled),
    )
    return (_pca_scaled_per_batch(L, batch, n_comps, fit) if probe is None else probe), scaled


def _scaling_groups(mixing: dict, batch: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each cell's scaling group (named after its first batch) and the groups' batches as ``"a + b"`` strings.

    The groups are :func:`biossl.graph.batch_mixing`'s: batches split apart while they mix below the gate.
    """
    names, numbers = mixing["batches"], mixing.get("groups", list(range(len(mixing["batches"]))))
    members: dict[int, list[str]] = {}
    for name, number in zip(names, numbers, strict=True):
        members.setdefault(number, []).append(name)
    label = {name: group[0] for group in members.values() for name in group}
    present, codes = np.unique(batch, return_inverse=True)  # a batch missing from a sampled diagnostic: its own group
    within = np.array([label.get(b, b) for b in present])[codes]
    return within, [" + ".join(group) for group in sorted(members.values())]


def _split_note(mixing: dict) -> str:
    """``"; batches a, b against the rest"`` when the weakest split, not the overall score, is below the gate."""
    split = mixing.get("weakest_split")
    if split is None or split["score"] >= mixing["score"] or len(mixing["batches"]) < 3:
        return ""
    return f"; batches {', '.join(split['batches'])} against the rest, overall {mixing['score']:.2f}"


def fit_sample(n: int, batch: np.ndarray | None, seed: int) -> np.ndarray | None:
    """Sorted rows the PCA is fitted on: None (all) up to ``PCA_FIT_MAX_CELLS`` cells, else a seeded sample.

    The sample (about ``PCA_FIT_CELLS`` cells) keeps each batch's share, with at least
    ``PCA_FIT_MIN_BATCH_CELLS`` of each batch (all of a smaller one), so the per-batch means and variances of the
    scaled PCA are estimated for every batch.
    """
    if n <= PCA_FIT_MAX_CELLS:
        return None
    rng = np.random.default_rng(seed)
    if batch is None:
        return np.sort(rng.choice(n, PCA_FIT_CELLS, replace=False))
    codes = np.unique(batch, return_inverse=True)[1]
    picked = []
    for b in range(codes.max() + 1):
        rows = np.flatnonzero(codes == b)
        take = min(len(rows), max(round(PCA_FIT_CELLS * len(rows) / n), PCA_FIT_MIN_BATCH_CELLS))
        picked.append(rng.choice(rows, take, replace=False))
    return np.sort(np.concatenate(picked))


def _mixing_rows(n: int, seed: int) -> np.ndarray | None:
    """The seeded sample of ``MIXING_MAX_CELLS`` cells the mixing diagnostic is measured on (None: all cells)."""
    if n <= MIXING_MAX_CELLS:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, MIXING_MAX_CELLS, replace=False))


def _mixing(latent: np.ndarray, batch: np.ndarray, seed: int, n_neighbors: int = 15) -> dict:
    """:func:`biossl.graph.batch_mixing` of a kNN graph on ``latent`` (a seeded sample of cells when there are many)."""
    rows = _mixing_rows(latent.shape[0], seed)
    if rows is not None:
        latent, batch = latent[rows], batch[rows]
    k = int(min(n_neighbors, latent.shape[0] - 1))
    idx, _ = graph.knn(latent, k, seed=seed)
    return graph.batch_mixing(idx, batch)


CHUNK_NNZ = 1 << 22  # stored entries per chunk of the element-wise passes (bounds their temporaries)


def _row_chunks(indptr: np.ndarray):
    """(first row, end row, first entry, end entry) of row blocks holding about ``CHUNK_NNZ`` entries each."""
    n = len(indptr) - 1
    start = 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + CHUNK_NNZ, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        yield start, stop, int(indptr[start]), int(indptr[stop])
        start = stop


def log_normalise(counts, target_sum: float = 1e4, *, copy: bool = True) -> sp.csr_matrix:
    """Log-normalised counts as float32 CSR: each cell scaled to ``target_sum``, then log1p.

    The arithmetic of scanpy's ``normalize_total`` + ``log1p`` (float64 row sums stored as float32, float32
    division, cells without counts left at 0), done in place on one float32 copy of ``counts`` in chunks, so
    the working memory is that copy plus a few million entries. ``copy=False`` works on ``counts`` itself
    when it is float32 CSR already (a matrix the caller owns).
    """
    X = sp.csr_matrix(counts, dtype=np.float32, copy=copy)
    X.sum_duplicates()
    totals = np.zeros(X.shape[0], dtype=np.float32)
    for r0, r1, e0, e1 in _row_chunks(X.indptr):
        rows = np.repeat(np.arange(r1 - r0), np.diff(X.indptr[r0 : r1 + 1]))
        totals[r0:r1] = np.bincount(rows, weights=X.data[e0:e1], minlength=r1 - r0)
    scale = totals / np.float32(target_sum)
    scale = scale + (scale == 0)
    for r0, r1, e0, e1 in _row_chunks(X.indptr):
        block = X.data[e0:e1]
        np.true_divide(block, np.repeat(scale[r0:r1], np.diff(X.indptr[r0 : r1 + 1])), out=block)
        np.log1p(block, out=block)
    return X


def _pooled_pca(L: sp.csr_matrix, n_comps: int, seed: int, fit: np.ndarray | None = None) -> np.ndarray:
    """PCA of log-normalised ``L`` with unit-variance genes (scanpy's ARPACK PCA).

    The matrix stays sparse: genes are scaled without centring (values clipped where the centred value
    would exceed 10, as ``sc.pp.scale(max_value=10)`` does) and PCA centres implicitly, so memory stays
    O(nnz) (``sc.pp.scale`` would densify it). The scaled values share ``L``'s index arrays. With ``fit`` (rows,
    see :func:`fit_sample`) the gene scaling and the components come from those rows and every row is
    projected onto them, a chunk of rows at a time.
    """
    import scanpy as sc
    from anndata import AnnData

    F = L if fit is None else L[fit]
    mean = np.asarray(F.mean(0)).ravel()
    squares = sp.csr_matrix((F.data * F.data, F.indices, F.indptr), shape=F.shape)
    var = np.asarray(squares.mean(0)).ravel() - mean**2
    del squares
    std = np.sqrt(np.maximum(var, 1e-12))
    inverse, clip = 1.0 / std, 10.0 + mean / std

    def scaled(M: sp.csr_matrix) -> sp.csr_matrix:
        data = np.empty_like(M.data)
        for _, _, e0, e1 in _row_chunks(M.indptr):
            genes = M.indices[e0:e1]
            data[e0:e1] = np.minimum(M.data[e0:e1].astype(np.float64) * inverse[genes], clip[genes])
        return sp.csr_matrix((data, M.indices, M.indptr), shape=M.shape)

    tmp = AnnData(X=scaled(F))
    n_comps = int(min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.tl.pca(tmp, n_comps=n_comps, random_state=seed)
    if fit is None:
        return np.asarray(tmp.obsm["X_pca"], dtype=np.float32)
    components = np.asarray(tmp.varm["PCs"], dtype=np.float64)  # genes x components; scores = (X - mean) @ PCs
    centre = np.asarray(tmp.X.mean(0), dtype=np.float64).ravel() @ components
    del tmp
    latent = np.empty((L.shape[0], n_comps), dtype=np.float32)
    for r0, r1, _, _ in _row_chunks(L.indptr):
        latent[r0:r1] = scaled(L[r0:r1]) @ components - centre
    return latent


def _pca_scaled_per_batch(X, batch: np.ndarray, n_comps: int, fit: np.ndarray | None = None) -> np.ndarray:
    """PCA of log-normalised ``X`` (sparse) after scaling each gene within each batch to zero mean, unit variance.

    Genes not detected in every batch (a gene panel or annotation that differs) are left out. The centred
    matrix is never formed: the gene × gene covariance is summed batch by batch from ``X_b^T X_b`` and the
    batch means, and the scores are ``X_b (s_b V) - m_b^T (s_b V)``, so memory stays O(nnz + genes^2).
    Values are clipped at 10 standard deviations above the batch mean, as ``sc.pp.scale(max_value=10)`` does.
    With ``fit`` (rows, see :func:`fit_sample`) the detection, the batch statistics and the covariance come from
    those rows and every row is projected.
    """
    X = sp.csr_matrix(X)
    names, codes = np.unique(batch, return_inverse=True)
    rows = [np.flatnonzero(codes == b) for b in range(len(names))]
    fit_rows = rows if fit is None else [np.intersect1d(r, fit, assume_unique=True) for r in rows]
    detected = np.vstack([_detected(X[r]) for r in fit_rows])
    keep = (detected > 0).all(0) & (detected.min(0) >= 1e-3)
    if keep.sum() < 2 * n_comps:  # too few shared genes to drop the rest: keep every gene expressed somewhere
        keep = (detected > 0).any(0)
    cols = np.flatnonzero(keep)
    n_genes = len(cols)

    def block(r: np.ndarray, cap: np.ndarray) -> sp.csr_matrix:  # in float64, clipped (built twice rather than kept)
        Xb = sp.csr_matrix(X[r][:, cols], dtype=np.float64)
        Xb.data = np.minimum(Xb.data, cap[Xb.indices])
        return Xb

    cov = np.zeros((n_genes, n_genes))
    stats = []
    for r in fit_rows:
        Xb = sp.csr_matrix(X[r][:, cols], dtype=np.float64)
        m = np.asarray(Xb.mean(0)).ravel()
        sd = np.sqrt(np.maximum(np.asarray(Xb.multiply(Xb).mean(0)).ravel() - m**2, 0.0))
        cap = m + 10.0 * sd
        Xb.data = np.minimum(Xb.data, cap[Xb.indices])
        s = np.where(sd > 1e-8, 1.0 / np.maximum(sd, 1e-8), 0.0)
        gram = (Xb.T @ Xb).toarray() - len(r) * np.outer(m, m)
        cov += gram * np.outer(s, s)
        stats.append((m, s, cap))
        del Xb, gram
    n_comps = int(min(n_comps, X.shape[0] - 1, n_genes - 1))
    evecs = np.linalg.eigh(cov)[1]
    V = evecs[:, ::-1][:, :n_comps]
    V *= np.sign(V[np.abs(V).argmax(0), np.arange(n_comps)])  # one sign per component, for reproducible output
    latent = np.zeros((X.shape[0], n_comps), dtype=np.float32)  # each row rounded once, as astype would
    for r, (m, s, cap) in zip(rows, stats, strict=True):
        sV = s[:, None] * V
        # with a sample, a large batch is projected PROJECT_ROWS rows at a time (its float64 copy is never whole)
        parts = [r] if fit is None else np.array_split(r, -(-len(r) // PROJECT_ROWS))
        for part in parts:
            latent[part] = block(part, cap) @ sV - m @ sV
    return latent


def _detected(Xb: sp.csr_matrix) -> np.ndarray:
    """Share of the cells of ``Xb`` in which each gene has a positive count."""
    return np.bincount(Xb.indices[Xb.data > 0], minlength=Xb.shape[1]) / Xb.shape[0]
