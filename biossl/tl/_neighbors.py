"""``tl.neighbors``: kNN graph on a latent representation."""

from __future__ import annotations

import logging

import numpy as np
from anndata import AnnData

from .. import graph
from .._docs import doc_params
from .._record import get_record, record
from .._types import Bridges, KnnMethod

logger = logging.getLogger("biossl")


@doc_params
def neighbors(
    adata: AnnData,
    *,
    n_neighbors: int = 15,
    use_rep: str = "X_biossl",
    key_added: str = "biossl",
    method: KnnMethod = "auto",
    bridges: Bridges = "auto",
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Build a kNN graph on ``obsm[use_rep]`` with a locally scaled Gaussian kernel.

    Parameters
    ----------
    adata
        Annotated data with a representation in ``obsm``.
    n_neighbors
        Neighbours per cell.
    use_rep
        ``obsm`` key to build the graph on (e.g. ``"X_biossl"``, ``"X_pca"``).
    key_added
        Prefix of the ``obsp`` keys.
    method
        ``"auto"`` (exact up to 50,000 cells, else pynndescent), ``"exact"`` or ``"pynndescent"``.
    bridges
        Edges between batches (the batch key of :func:`biossl.pp.setup`). ``"mnn"``: add mutual nearest
        neighbours between batches (:func:`biossl.graph.mnn_bridges`, 20 per cell and batch) to the graph.
        ``"auto"`` (default): add them only when the batches hardly mix in the kNN graph (mixing score below
        ``biossl.graph.MIXING_MIN``), where labels could not cross otherwise; graphs whose batches mix are left
        as they are. ``"none"``: never.
    seed
        Seed for the approximate search.
    copy
        {copy}

    Returns
    -------
    None or a copy. Writes ``obsp["{key_added}_connectivities"]``, ``obsp["{key_added}_distances"]`` and
    ``uns["{key_added}_neighbors"]`` (scanpy's neighbors layout, so ``sc.tl.umap(adata,
    neighbors_key="biossl_neighbors")`` works). With the batch key of :func:`biossl.pp.setup`,
    ``uns["biossl"]["neighbors"]["batch_mixing"]`` holds how well the batches mix in the graph
    (:func:`biossl.graph.batch_mixing`, of the kNN graph before bridges) and ``["mnn_pairs"]`` the number of
    bridges added; a warning is logged when labels could hardly cross the batches.
    """
    if use_rep not in adata.obsm:
        raise ValueError(
            f"obsm[{use_rep!r}] not found (have: {list(adata.obsm) or 'none'}); run biossl.tl.embed(adata) first "
            "or pass use_rep=."
        )
    X = np.asarray(adata.obsm[use_rep])
    if X.ndim != 2 or X.shape[0] != adata.n_obs:
        raise ValueError(f"obsm[{use_rep!r}] has shape {X.shape}; expected ({adata.n_obs}, n_dims).")
    if not np.isfinite(X).all():
        raise ValueError(f"obsm[{use_rep!r}] holds NaN or inf values; recompute the representation.")
    if not isinstance(n_neighbors, int | np.integer) or isinstance(n_neighbors, bool) or n_neighbors < 2:
        raise ValueError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}")
    if n_neighbors >= adata.n_obs:
        raise ValueError(
            f"n_neighbors={n_neighbors} but there are only {adata.n_obs} cells; use n_neighbors < n_cells."
        )
    if bridges not in ("auto", "mnn", "none"):
        raise ValueError(f"bridges must be 'auto', 'mnn' or 'none', got {bridges!r}")
    idx, dist = graph.knn(X, int(n_neighbors), method=method, seed=seed)
    conn = graph.gaussian_affinity(idx, dist)
    mixing, batch = _batch_mixing(adata, idx)
    pairs = 0
    if batch is not None and (bridges == "mnn" or (bridges == "auto" and mixing["score"] < graph.MIXING_MIN)):
        mnn = graph.mnn_bridges(X, batch, method=method, seed=seed)
        conn, pairs = conn.maximum(mnn).tocsr(), int(mnn.nnz // 2)
        logger.warning(
            "neighbors: added %d mutual-nearest-neighbour bridges between batches (mixing score %.2f) so that "
            "labels can cross them",
            pairs,
            mixing["score"],
        )
    adata = adata.copy() if copy else adata
    adata.obsp[f"{key_added}_connectivities"] = conn.astype(np.float32)
    adata.obsp[f"{key_added}_distances"] = graph.distance_matrix(idx, dist)
    params = {"n_neighbors": int(n_neighbors), "use_rep": use_rep, "metric": "euclidean", "method": "gauss"}
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": f"{key_added}_connectivities",
        "distances_key": f"{key_added}_distances",
        "params": {**params, "random_state": int(seed)},
    }
    record(
        adata,
        "neighbors",
        {**params, "key_added": key_added, "search": method, "batch_mixing": mixing, "bridges": bridges,
         "mnn_pairs": pairs},
    )  # fmt: skip
    return adata if copy else None


def _batch_mixing(adata: AnnData, idx: np.ndarray) -> tuple[dict | None, np.ndarray | None]:
    """Mixing of the setup's batches in the kNN graph and the batch of each cell (None, None without batches)."""
    batch_key = (get_record(adata, "setup") or {}).get("batch_key")
    if batch_key is None or batch_key not in adata.obs or adata.obs[batch_key].nunique() < 2:
        return None, None
    batch = adata.obs[batch_key].astype(str).to_numpy()
    mixing = graph.batch_mixing(idx, batch)
    if mixing["score"] < graph.MIXING_MIN:
        logger.warning(
            "neighbors: batches of obs[%r] hardly mix in the graph (mixing score %.2f < %.2f); embedding with "
            "biossl.tl.embed(adata) (PCA scaled per batch) or a batch-aware VAE may align them",
            batch_key,
            mixing["score"],
            graph.MIXING_MIN,
        )
    else:
        logger.info("neighbors: batch mixing score %.2f", mixing["score"])
    return mixing, batch
