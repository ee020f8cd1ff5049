"""Baselines on PCA: distance-weighted kNN classifier and sklearn LabelSpreading (default and tuned).

The PCA is scanpy's standard recipe on all cells (transductive, label-free): seurat_v3 HVGs on counts
(2,000, batch-aware when the data has batches), normalize_total(1e4), log1p, scale(max_value=10), 50 PCs.

Settings and why:

- kNN: ``weights="distance"`` and ``n_neighbors = min(15, k)`` with k the labelled cells per class. A
  uniform vote with ``n_neighbors`` close to the number of labelled cells collapses onto the largest
  labelled classes; with one label per class this is 1-NN.
- LabelSpreading default (``kernel="rbf", gamma=20, alpha=0.2, max_iter=30``) is sklearn's out-of-the-box
  setting: on 50 PCs the RBF affinities underflow and 30 sweeps stop before labels spread, so it is
  reported but not used as "the better baseline". The tuned setting is ``kernel="knn", n_neighbors=15,
  alpha=0.99, max_iter=1000`` (Zhou et al. 2004 with a sparse kNN graph).
"""

from __future__ import annotations

import warnings

import numpy as np


def pca_representation(adata, *, batch_key: str | None = None, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """50-PC scanpy representation of the raw counts in ``adata.X`` (``adata`` is not modified)."""
    import scanpy as sc

    tmp = adata.copy()
    sc.pp.highly_variable_genes(
        tmp, flavor="seurat_v3", n_top_genes=min(2000, tmp.n_vars), batch_key=batch_key, subset=True
    )
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.scale(tmp, max_value=10)
    sc.tl.pca(tmp, n_comps=min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1), random_state=seed)
    return np.asarray(tmp.obsm["X_pca"], dtype=np.float64)


def knn_predict(X: np.ndarray, codes: np.ndarray, k: int | None) -> np.ndarray:
    """Distance-weighted kNN on the labelled rows (codes >= 0); returns a code for every row."""
    from sklearn.neighbors import KNeighborsClassifier

    lab = codes >= 0
    n_neighbors = min(15, int(lab.sum()) if k is None else max(1, k), int(lab.sum()))
    clf = KNeighborsClassifier(n_neighbors=n_neighbors, weights="distance").fit(X[lab], codes[lab])
    return clf.predict(X)


def labelspreading_predict(X: np.ndarray, codes: np.ndarray, *, tuned: bool) -> np.ndarray:
    """sklearn LabelSpreading transductive labels (-1 = unlabelled in ``codes``)."""
    from sklearn.semi_supervised import LabelSpreading

    if tuned:
        model = LabelSpreading(kernel="knn", n_neighbors=15, alpha=0.99, max_iter=1000)
    else:
        model = LabelSpreading()
    with warnings.catch_warnings():
        # the default RBF kernel underflows on PCA distances (0/0 in the normaliser) and may not converge
        warnings.simplefilter("ignore")
        model.fit(X, codes)
    return np.asarray(model.transduction_)
