"""``tl.embed``: learn a latent space of the counts with a VAE or autoencoder."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from anndata import AnnData

from .._record import record, versions
from ..pp import check_batch, ensure_setup, write_setup

if TYPE_CHECKING:
    from ..model import EmbeddingModel

logger = logging.getLogger("biossl")


def embed(
    adata: AnnData,
    *,
    model: str | os.PathLike | EmbeddingModel = "vae",
    n_latent: int = 10,
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
    copy: bool = False,
) -> AnnData | EmbeddingModel | None:
    """Embed cells with a count model (negative-binomial VAE or autoencoder).

    Runs :func:`biossl.pp.setup` with defaults first if it has not run.

    Parameters
    ----------
    adata
        Cells × genes with raw counts (see :func:`biossl.pp.setup`).
    model
        ``"vae"`` (default) or ``"ae"`` to train a new model; a saved model directory or an
        :class:`~biossl.EmbeddingModel` to reuse one (genes are aligned by name; no training).
    n_latent
        Latent dimensions.
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
    copy
        Return a modified copy of ``adata``.

    Returns
    -------
    None, the model (``return_model=True``) or a copy (``copy=True``). Writes

    ``obsm["X_biossl"]``
        The latent means (cells × ``n_latent``).
    ``uns["biossl"]["embed"]``
        Model kind, training steps, seed, versions; ``uns["biossl"]["gene_overlap"]`` when a saved
        model was reused.
    """
    from ..model import EmbeddingModel, align_genes

    if copy and return_model:
        raise ValueError("copy=True and return_model=True cannot be combined; pick one.")
    mask, setup_params, setup_pending = ensure_setup(adata, batch_key)
    batch_key = batch_key or setup_params.get("batch_key")
    batch = check_batch(adata, batch_key)
    if save_model is not None and os.path.exists(save_model) and not overwrite:
        raise ValueError(f"save_model={str(save_model)!r} already exists; pass overwrite=True to replace it.")
    start = time.perf_counter()
    overlap = None
    if isinstance(model, str) and model in ("vae", "ae"):
        genes = [str(g) for g in adata.var_names[mask]]
        counts, _, _ = align_genes(adata, genes, counts=setup_params["counts"])
        fitted = EmbeddingModel.fit(
            counts, genes, batch, model=model, n_latent=n_latent, adversarial=adversarial, max_steps=max_steps,
            max_epochs=max_epochs, seed=seed, device=device, progress=progress,
        )  # fmt: skip
        latent = fitted.embed_counts(counts, fitted.batch_codes(batch, adata.n_obs), progress=progress)
    else:
        fitted = model if isinstance(model, EmbeddingModel) else _load(model, device)
        latent, overlap = fitted.transform(adata, batch_key=batch_key, counts=setup_params["counts"])
    if save_model is not None:
        fitted.save(save_model, overwrite=overwrite)

    adata = adata.copy() if copy else adata
    if setup_pending:
        write_setup(adata, mask, setup_params)
    adata.obsm[key_added] = latent
    cfg = fitted.config
    params = {
        "model": cfg["model"],
        "n_latent": cfg["n_latent"],
        "batch_key": batch_key,
        "adversarial": cfg["adversarial"],
        "trained": overlap is None,
        "steps": cfg["training"]["steps"],
        "seed": cfg["training"]["seed"],
        "key_added": key_added,
        "device": str(fitted.device),
        "seconds": round(time.perf_counter() - start, 2),
        "versions": versions(),
    }
    record(adata, "embed", params)
    if overlap is not None:
        record(adata, "gene_overlap", overlap)
    logger.info("embed: %s latent of %d cells in %.1f s", cfg["model"], adata.n_obs, params["seconds"])
    if copy:
        return adata
    return fitted if return_model else None


def _load(path, device: str) -> EmbeddingModel:
    from ..model import EmbeddingModel

    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"model must be 'vae', 'ae', a model directory or an EmbeddingModel, got {path!r}")
    return EmbeddingModel.load(path, device=device)
