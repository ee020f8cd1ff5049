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
