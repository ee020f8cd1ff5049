"""``tl.neighbors``: kNN graph on a latent representation."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from .. import graph
from .._record import record


def neighbors(
    adata: AnnData,
    *,
    n_neighbors: int = 15,
    use_rep: str = "X_biossl",
    key_added: str = "biossl",
    method: str = "auto",
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
    seed
        Seed for the approximate search.
    copy
        Return a modified copy.

    Returns
    -------
    None or a copy. Writes ``obsp["{key_added}_connectivities"]``, ``obsp["{key_added}_distances"]`` and
    ``uns["{key_added}_neighbors"]`` (scanpy's neighbors layout, so ``sc.tl.umap(adata,
    neighbors_key="biossl_neighbors")`` works).
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
    idx, dist = graph.knn(X, int(n_neighbors), method=method, seed=seed)
    conn = graph.gaussian_affinity(idx, dist)
    adata = adata.copy() if copy else adata
    adata.obsp[f"{key_added}_connectivities"] = conn.astype(np.float32)
    adata.obsp[f"{key_added}_distances"] = graph.distance_matrix(idx, dist)
    params = {"n_neighbors": int(n_neighbors), "use_rep": use_rep, "metric": "euclidean", "method": "gauss"}
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": f"{key_added}_connectivities",
        "distances_key": f"{key_added}_distances",
        "params": {**params, "random_state": int(seed)},
    }
    record(adata, "neighbors", {**params, "key_added": key_added, "search": method})
    return adata if copy else None
