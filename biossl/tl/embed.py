"""``tl.embed``: learn a latent space of the counts with a VAE or autoencoder."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
from anndata import AnnData

from .. import graph
from .._check import check_int
from .._record import record, versions
from ..pp import check_batch, check_copy, ensure_setup, write_setup

if TYPE_CHECKING:
    from ..model import EmbeddingModel

logger = logging.getLogger("biossl")


def embed(
    adata: AnnData,
    *,
    model: str | os.PathLike | EmbeddingModel = "auto",
    n_latent: int | None = None,
    batch_key: str | None = None,
    adversarial: bool = False,
    max_steps: int = 3000,
    max_epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    key_added: str = "X_biossl",
    save_model: str | os.PathLike | None = None,
    overwrite: bool = False,
    return_model: bool = False,
    progress: bool | None = None,
    batch_correction: Literal["auto", "none", "scale"] = "auto",
    copy: bool = False,
) -> AnnData | EmbeddingModel | None:
    """Embed cells with a count model (negative-binomial VAE or autoencoder).

    Runs :func:`biossl.pp.setup` with defaults first if it has not run.

    Parameters
    ----------
    adata
        Cells × genes with raw counts (see :func:`biossl.pp.setup`). A backed AnnData
        (``anndata.read_h5ad(path, backed="r")``) is trained on minibatches of rows read from disk and
        embedded in chunks, so memory does not grow with the matrix (only the latent is kept).
    model
        ``"vae"`` or ``"ae"`` to train a new count model; ``"pca"`` for PCA of log-normalised, scaled
        counts (scanpy); ``"auto"`` (default) is ``"pca"``, or ``"vae"`` when a model is to be saved or
        returned. A saved model directory or an :class:`~biossl.EmbeddingModel` reuses a trained model
        (genes are aligned by name; no training).
        Why PCA by default: for few-label annotation it matched or beat the batch-aware VAE on every
        benchmark set, at a fiftieth of the cost — single-batch pbmc3k (the VAE blurs small types such as
        dendritic cells), pooled donors on baron_mouse (the VAE merged the 6–8-cell types), donor → donor
        and across technologies on cellbench (``benchmarks/anchors``; see the README). Train the VAE when
        the model itself is wanted: a reference to map new data onto (:func:`biossl.tl.fit_reference`),
        gene function from denoised expression, or batches too different for a shared PCA.
    n_latent
        Latent dimensions (default 20 for the VAE/AE, 50 for PCA).
    batch_key
        Column of ``obs`` with batches; the model conditions on it (defaults to the setup's).
    adversarial
        Add a batch discriminator with gradient reversal to align batches in the latent.
    max_steps
        Training budget in gradient steps (does not grow with the number of cells).
    max_epochs
        Optional cap in passes over the data (for very small data).
    seed
        Seed for initialisation, minibatch order and the held-out split.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    key_added
        ``obsm`` key of the latent.
    save_model
        Directory to save the trained model in (``model.pt`` + ``config.json``).
    overwrite
        Replace an existing ``save_model`` directory.
    return_model
        Return the :class:`~biossl.EmbeddingModel` (instead of None).
    progress
        Show a progress bar; default: only when stderr is a terminal.
    batch_correction
        For the PCA embedding with a batch key. ``"scale"``: scale each gene to zero mean and unit variance
        within each batch (on the genes detected in every batch) before PCA, which removes gene-wise shifts
        between technologies, labs or species. ``"none"``: one scaling over all cells. ``"auto"`` (default):
        build the pooled PCA, measure how well the batches mix among each cell's 15 nearest neighbours
        (:func:`biossl.graph.batch_mixing`), and scale per batch when the mixing score is below
        ``biossl.graph.MIXING_MIN`` (labels could not cross such a graph); the scores and the choice are recorded.
    copy
        Return a modified copy of ``adata``.

    Returns
    -------
    None, the model (``return_model=True``) or a copy (``copy=True``). Writes

    ``obsm["X_biossl"]``
        The latent means (cells × ``n_latent``).
    ``uns["biossl"]["embed"]``
        Model kind, training steps, seed, versions, and for PCA with batches the ``batch_correction`` used and the
        ``batch_mixing`` scores; ``uns["biossl"]["gene_overlap"]`` when a saved model was reused.
    """
    from ..model import EmbeddingModel, align_genes

    if copy and return_model:
        raise ValueError("copy=True and return_model=True cannot be combined; pick one.")
    check_copy(adata, copy)
    for name, val, lo in (("seed", seed, 0), ("n_latent", n_latent, 1)):  # checked here so the PCA path names them
        if val is not None:
            check_int(name, val, lo)
    mask, setup_params, setup_pending = ensure_setup(adata, batch_key)
    batch_key = batch_key or setup_params.get("batch_key")
    batch = check_batch(adata, batch_key)
    if save_model is not None and os.path.exists(save_model) and not overwrite:
        raise ValueError(f"save_model={str(save_model)!r} already exists; pass overwrite=True to replace it.")
    start = time.perf_counter()
    overlap = None
    if isinstance(model, str) and model == "auto":
        model = "vae" if save_model is not None or return_model else "pca"  # see the docstring
    if batch_correction not in BATCH_CORRECTIONS:
        raise ValueError(f"batch_correction must be one of {BATCH_CORRECTIONS}, got {batch_correction!r}")
    if batch_correction == "scale" and not (isinstance(model, str) and model == "pca"):
        raise ValueError("batch_correction='scale' applies to the PCA embedding; pass model='pca' (or 'auto').")
    if isinstance(model, str) and model == "pca":
        if save_model is not None or return_model:
            raise ValueError("model='pca' has no trained model to save or return; use model='vae'.")
        n_comps = 50 if n_latent is None else n_latent
        latent, correction = _pca_with_batches(
            adata, mask, setup_params["counts"], n_comps, seed, batch, batch_correction
        )
        params = {
            "model": "pca",
            "n_latent": latent.shape[1],
            "batch_key": batch_key,
            "trained": True,
            "seed": seed,
            **correction,
        }
        return _write(adata, latent, mask, setup_params, setup_pending, params, key_added, start, copy)
    if isinstance(model, str) and model in ("vae", "ae"):
        genes = [str(g) for g in adata.var_names[mask]]
        if adata.isbacked and setup_params["counts"] == "X":  # minibatches of rows read from disk
            from .._backed import RowReader

            counts = RowReader(adata.X, columns=np.flatnonzero(mask))
        else:
            counts, _, _ = align_genes(adata, genes, counts=setup_params["counts"])
        t_train = time.perf_counter()
        fitted = EmbeddingModel.fit(
            counts,
            genes,
            batch,
            model=model,
            n_latent=20 if n_latent is None else n_latent,
            adversarial=adversarial,
            max_steps=max_steps,
            max_epochs=max_epochs,
            seed=seed,
            device=device,
            progress=progress,
        )
        t_embed = time.perf_counter()
        latent = fitted.embed_counts(counts, fitted.batch_codes(batch, adata.n_obs), progress=progress)
        timing = {
            "train_seconds": round(t_embed - t_train, 2),
            "embed_seconds": round(time.perf_counter() - t_embed, 2),
        }
    else:
        fitted = model if isinstance(model, EmbeddingModel) else _load(model, device)
        latent, overlap = fitted.transform(adata, batch_key=batch_key, counts=setup_params["counts"])
        timing = {}
    if save_model is not None:
        fitted.save(save_model, overwrite=overwrite)

    cfg = fitted.config
    params = {
        "model": cfg["model"],
        "n_latent": cfg["n_latent"],
        "batch_key": batch_key,
        "adversarial": cfg["adversarial"],
        "trained": overlap is None,
        "steps": cfg["training"]["steps"],
        "seed": cfg["training"]["seed"],
        "device": str(fitted.device),
        **timing,
    }
    out = _write(adata, latent, mask, setup_params, setup_pending, params, key_added, start, copy, overlap)
    if copy:
        return out
    return fitted if return_model else None


def _write(adata, latent, mask, setup_params, setup_pending, params, key_added, start, copy, overlap=None):
    """Write the latent and the record (after everything that can fail has run)."""
    adata = adata.copy() if copy else adata
    if setup_pending:
        write_setup(adata, mask, setup_params)
    adata.obsm[key_added] = latent
    params = {
        **params,
        "key_added": key_added,
        "seconds": round(time.perf_counter() - start, 2),
        "versions": versions(),
    }
    record(adata, "embed", params)
    if overlap is not None:
        record(adata, "gene_overlap", overlap)
    logger.info("embed: %s latent of %d cells in %.1f s", params["model"], adata.n_obs, params["seconds"])
    return adata if copy else None


BATCH_CORRECTIONS = ("auto", "none", "scale")
MIXING_MAX_CELLS = 20_000  # the diagnostic's kNN graph is built on at most this many cells (a seeded sample)


def _pca_with_batches(adata, mask, counts_key, n_comps, seed, batch, batch_correction) -> tuple[np.ndarray, dict]:
    """PCA latent and what was done about batches: pooled, or scaled per batch when asked or when they do not mix."""
    if batch is None or batch.nunique() < 2 or batch_correction == "none":
        latent = _pca(adata, mask, counts_key, n_comps, seed)
        return latent, ({} if batch is None or batch.nunique() < 2 else {"batch_correction": "none"})
    batch = batch.to_numpy().astype(str)
    info: dict = {}
    if batch_correction == "auto":
        latent = _pca(adata, mask, counts_key, n_comps, seed)
        info["batch_mixing"] = {"pooled": _mixing(latent, batch, seed)}
        pooled = info["batch_mixing"]["pooled"]["score"]
        if pooled >= graph.MIXING_MIN:
            logger.info("embed: batches mix in the pooled PCA (mixing score %.2f); no correction", pooled)
            return latent, {**info, "batch_correction": "none"}
    latent = _pca(adata, mask, counts_key, n_comps, seed, batch=batch)
    info["batch_mixing"] = {**info.get("batch_mixing", {}), "scaled": _mixing(latent, batch, seed)}
    if batch_correction == "auto":
        logger.warning(
            "embed: batches do not mix in the pooled PCA (mixing score %.2f < %.2f); genes scaled per batch "
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


def _pca(adata: AnnData, mask, counts_key: str, n_comps: int, seed: int, batch: np.ndarray | None = None):
    """PCA of the selected genes after scanpy's normalize_total (1e4), log1p and unit-variance scaling.

    The matrix stays sparse: genes are scaled without centring (values clipped where the centred value
    would exceed 10, as ``sc.pp.scale(max_value=10)`` does) and PCA centres implicitly, so memory stays
    O(nnz) (``sc.pp.scale`` would densify it).
    """
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    from ..pp import counts_matrix

    if adata.isbacked and counts_key == "X":  # only the selected genes are loaded, in chunks
        from .._backed import RowReader

        X = RowReader(adata.X, columns=np.flatnonzero(mask)).to_csr()
    else:
        X = counts_matrix(adata, counts_key)[:, np.flatnonzero(mask)]
    tmp = AnnData(X=sp.csr_matrix(X, dtype=np.float32))
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    if batch is not None:
        return _pca_scaled_per_batch(tmp.X, batch, n_comps)
    mean = np.asarray(tmp.X.mean(0)).ravel()
    var = np.asarray(tmp.X.multiply(tmp.X).mean(0)).ravel() - mean**2
    std = np.sqrt(np.maximum(var, 1e-12))
    X = sp.csr_matrix(tmp.X @ sp.diags(1.0 / std))
    X.data = np.minimum(X.data, (10.0 + mean / std)[X.indices]).astype(np.float32)
    tmp.X = X
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
    import scipy.sparse as sp

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


def _load(path, device: str) -> EmbeddingModel:
    from ..model import EmbeddingModel

    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"model must be 'vae', 'ae', a model directory or an EmbeddingModel, got {path!r}")
    if not os.path.exists(path):  # most likely a misspelt model kind, so name the kinds
        raise ValueError(
            f"model={os.fspath(path)!r} is not 'auto', 'vae', 'ae' or 'pca', and the model directory "
            f"{os.fspath(path)!r} does not exist."
        )
    return EmbeddingModel.load(path, device=device)
