"""``tl.embed``: a latent space of the counts, by PCA (the default) or a count VAE / autoencoder."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from .._check import check_int
from .._docs import doc_params
from .._record import record, versions
from .._types import BatchCorrection, Device, ModelKind
from ..pp import check_batch, check_copy, ensure_setup, write_setup
from ._pca import BATCH_CORRECTIONS, pca_latent

if TYPE_CHECKING:
    from ..model import EmbeddingModel

logger = logging.getLogger("biossl")


@doc_params
def embed(
    adata: AnnData,
    *,
    model: ModelKind | str | os.PathLike | EmbeddingModel = "auto",
    n_latent: int | None = None,
    batch_key: str | None = None,
    adversarial: bool = False,
    max_steps: int = 3000,
    max_epochs: int | None = None,
    seed: int = 0,
    device: Device | str = "auto",
    key_added: str = "X_biossl",
    save_model: str | os.PathLike | None = None,
    overwrite: bool = False,
    return_model: bool = False,
    progress: bool | None = None,
    batch_correction: BatchCorrection = "auto",
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
        {device}
    key_added
        ``obsm`` key of the latent.
    save_model
        Directory to save the trained model in (``model.pt`` + ``config.json``).
    overwrite
        Replace an existing ``save_model`` directory.
    return_model
        Return the :class:`~biossl.EmbeddingModel` (instead of None).
    progress
        {progress}
    batch_correction
        For the PCA embedding with a batch key. ``"scale"``: scale each gene to zero mean and unit variance
        within each batch (on the genes detected in every batch) before PCA, which removes gene-wise shifts
        between technologies, labs or species. ``"none"``: one scaling over all cells. ``"auto"`` (default):
        build the pooled PCA (of a seeded sample of 20,000 cells on larger data), measure how well the batches mix
        among each cell's 15 nearest neighbours (:func:`biossl.graph.batch_mixing`), and scale per batch when the
        mixing score is below ``biossl.graph.MIXING_MIN`` (labels could not cross such a graph). With more than two
        batches the weakest split of them into two groups counts too (donors that mix within each of two
        technologies that do not), and scaling is kept for such a split only if it lifts the split's score above
        the gate (cellbench's two designs, which differ in their cell lines, stay unscaled). Batches that mix
        above the gate but weakly (below 0.8) are scaled too when scaling lifts their score by at least
        ``biossl.tl._pca.MIXING_LIFT`` (0.2), read as the pooled score is (on the 20,000-cell sample on larger
        data). The scores and the choice are recorded.
    copy
        {copy}

    Returns
    -------
    None, the model (``return_model=True``) or a copy (``copy=True``). Writes

    ``obsm["X_biossl"]``
        The latent means (cells × ``n_latent``).
    ``uns["biossl"]["embed"]``
        Model kind, training steps, seed, versions, and for PCA with batches the ``batch_correction`` used and the
        ``batch_mixing`` scores; ``uns["biossl"]["gene_overlap"]`` when a saved model was reused.
    """
    from ..model import EmbeddingModel

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
        latent, correction = _pca(adata, mask, setup_params["counts"], n_comps, seed, batch, batch_correction)
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
        fitted, latent, timing = _train(
            adata, mask, setup_params["counts"], batch, model=model, n_latent=n_latent, adversarial=adversarial,
            max_steps=max_steps, max_epochs=max_epochs, seed=seed, device=device, progress=progress,
        )  # fmt: skip
    else:
        fitted = model if isinstance(model, EmbeddingModel) else _load(model, device)
        latent, overlap = fitted.transform(adata, batch_key=batch_key, counts=setup_params["counts"])
        timing = {}
    if save_model is not None:
        fitted.save(save_model, overwrite=overwrite)
    params = {**_model_params(fitted, batch_key, trained=overlap is None), **timing}
    out = _write(adata, latent, mask, setup_params, setup_pending, params, key_added, start, copy, overlap)
    if copy:
        return out
    return fitted if return_model else None


def _train(adata: AnnData, mask, counts_key: str, batch, *, model: str, n_latent: int | None, **fit_options):
    """Train a VAE or autoencoder on the selected genes and embed every cell: (model, latent, timings)."""
    from ..model import EmbeddingModel, align_genes

    genes = [str(g) for g in adata.var_names[mask]]
    counts, _, _ = align_genes(adata, genes, counts=counts_key)  # a backed X: a reader of rows from disk
    t_train = time.perf_counter()
    fitted = EmbeddingModel.fit(
        counts, genes, batch, model=model, n_latent=20 if n_latent is None else n_latent, **fit_options
    )
    t_embed = time.perf_counter()
    latent = fitted.embed_counts(counts, fitted.batch_codes(batch, adata.n_obs), progress=fit_options["progress"])
    timing = {
        "train_seconds": round(t_embed - t_train, 2),
        "embed_seconds": round(time.perf_counter() - t_embed, 2),
    }
    return fitted, latent, timing


def _model_params(fitted: EmbeddingModel, batch_key: str | None, *, trained: bool) -> dict:
    """What ``uns["biossl"]["embed"]`` records about a trained or reused model."""
    cfg = fitted.config
    return {
        "model": cfg["model"],
        "n_latent": cfg["n_latent"],
        "batch_key": batch_key,
        "adversarial": cfg["adversarial"],
        "trained": trained,
        "steps": cfg["training"]["steps"],
        "seed": cfg["training"]["seed"],
        "device": str(fitted.device),
    }


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


def _pca(adata: AnnData, mask, counts_key: str, n_comps: int, seed: int, batch, batch_correction: str):
    """PCA latent of the selected genes (:func:`biossl.tl._pca.pca_latent`) and what was done about batches."""
    from ..pp import counts_matrix

    if adata.isbacked and counts_key == "X":  # only the selected genes are loaded, in chunks
        from .._backed import RowReader

        X = RowReader(adata.X, columns=np.flatnonzero(mask)).to_csr()
    else:
        X = counts_matrix(adata, counts_key)[:, np.flatnonzero(mask)]
    batch = None if batch is None else batch.to_numpy().astype(str)
    # X is a fresh copy of the selected genes (a column selection always copies): normalised in place
    return pca_latent(X, n_comps, seed, batch=batch, batch_correction=batch_correction, copy=False)


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
