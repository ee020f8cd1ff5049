"""The PCA latent's building blocks on real counts: log-normalisation as scanpy does it, without its copies."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

import biossl
from biossl.tl import _pca


def test_log_normalise_matches_scanpy_bit_for_bit_and_leaves_the_input_alone(monkeypatch):
    counts = sp.csr_matrix(biossl.datasets.pbmc().X, dtype=np.float32)
    counts.data[counts.indptr[5] : counts.indptr[6]] = 0  # a cell without counts stays at zero, as in scanpy
    counts.eliminate_zeros()
    before = counts.copy()
    reference = AnnData(X=counts.copy())
    with pytest.warns(UserWarning, match="zero counts"):
        sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    monkeypatch.setattr(_pca, "CHUNK_NNZ", 10_000)  # many chunks, so their borders are exercised
    ours = _pca.log_normalise(counts)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.toarray(), reference.X.toarray())
    assert (counts != before).nnz == 0


def test_pooled_pca_does_not_change_its_input():
    L = _pca.log_normalise(biossl.datasets.pbmc().X)
    kept = L.copy()
    latent = _pca._pooled_pca(L, 20, 0)
    assert latent.shape == (L.shape[0], 20) and np.isfinite(latent).all()
    assert (L != kept).nnz == 0


def test_components_fitted_on_all_rows_project_to_the_fitted_scores():
    """The projection of large data (``fit`` rows) is the fit's own PCA when the rows are all cells."""
    L = _pca.log_normalise(biossl.datasets.pbmc().X[:, :800])
    everyone = np.arange(L.shape[0])
    direct = _pca._pooled_pca(L, 20, 0)
    np.testing.assert_allclose(_pca._pooled_pca(L, 20, 0, everyone), direct, atol=1e-3 * np.abs(direct).max())
    batch = np.where(np.arange(L.shape[0]) % 3 == 0, "a", "b")
    direct = _pca._pca_scaled_per_batch(L, batch, 10)
    np.testing.assert_allclose(_pca._pca_scaled_per_batch(L, batch, 10, everyone), direct, atol=1e-4)


def test_large_data_fit_pca_on_a_sample_that_keeps_every_batch(monkeypatch):
    """Above ``PCA_FIT_MAX_CELLS`` the PCA is fitted on a seeded sample: cells of a type still find their own kind."""
    assert _pca.fit_sample(_pca.PCA_FIT_MAX_CELLS, None, seed=0) is None
    adata = biossl.datasets.pbmc()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    batch = np.where(np.arange(adata.n_obs) < 150, "small", "large")
    monkeypatch.setattr(_pca, "PCA_FIT_MAX_CELLS", 2000)
    monkeypatch.setattr(_pca, "PCA_FIT_CELLS", 800)
    monkeypatch.setattr(_pca, "PCA_FIT_MIN_BATCH_CELLS", 100)
    fit = _pca.fit_sample(adata.n_obs, batch, seed=0)
    assert np.array_equal(fit, np.unique(fit)) and np.array_equal(fit, _pca.fit_sample(adata.n_obs, batch, seed=0))
    assert (batch[fit] == "small").sum() == 100 and len(fit) == 100 + round(800 * (adata.n_obs - 150) / adata.n_obs)
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    sampled, _ = _pca.pca_latent(counts, 30, 0)
    monkeypatch.setattr(_pca, "PCA_FIT_MAX_CELLS", 10**9)
    full, _ = _pca.pca_latent(counts, 30, 0)

    def same_type_neighbours(latent):
        idx, _ = biossl.graph.knn(latent, 15)
        return (truth[idx] == truth[:, None]).mean()

    assert same_type_neighbours(sampled) > same_type_neighbours(full) - 0.02, (
        same_type_neighbours(sampled),
        same_type_neighbours(full),
    )
