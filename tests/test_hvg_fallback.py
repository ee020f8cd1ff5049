"""Gene selection when seurat_v3's loess fails (issue 23, item 1).

A real 4,186-cell neuron data set (cells >= 100 UMI, every gene expressed) made scanpy's seurat_v3 raise
``ValueError: b'reciprocal condition number  5.5301e-15'``: many genes seen only 1, 2, 3... times in all share
a handful of means, and the degree-2 local fit at the low end of the loess has fewer distinct means than it
needs. ``sparse_tail_counts`` reproduces that failure in miniature.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

import biossl
import biossl.pp
from biossl.pp import _loess_failure


def sparse_tail_counts(n_cells: int = 200, n_genes: int = 800, seed: int = 0) -> AnnData:
    """Counts with a long tail of rarely seen genes, as in a deep data set filtered to "every gene expressed".

    ``n_genes * 0.1 * 0.85**(k-1)`` genes have ``k`` counts in all (k = 1..14, in random cells); the rest are
    negative binomial with means from 0.03 to 10 per cell.
    """
    rng = np.random.default_rng(seed)
    n_rare = [int(n_genes * 0.1 * 0.85 ** (k - 1)) for k in range(1, 15)]
    n_common = n_genes - sum(n_rare)
    mu = 10 ** rng.uniform(-1.5, 1.0, n_common)
    library = rng.lognormal(0.0, 0.5, n_cells)
    common = rng.negative_binomial(5, 5 / (5 + np.outer(library, mu)))
    rare = np.zeros((n_cells, sum(n_rare)), dtype=np.int64)
    j = 0
    for k, n in enumerate(n_rare, start=1):
        for _ in range(n):
            np.add.at(rare[:, j], rng.integers(0, n_cells, k), 1)
            j += 1
    adata = AnnData(sp.csr_matrix(np.hstack([common, rare]).astype(np.float32)))
    adata.var_names = [f"gene{i}" for i in range(n_genes)]
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    return adata


def few_count_panel(n_cells: int = 60, n_genes: int = 300, seed: int = 0) -> AnnData:
    """Every gene seen 1, 2 or 3 times: three distinct means, so no loess span can fit a degree-2 curve."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n_cells, n_genes), dtype=np.float32)
    for j in range(n_genes):
        np.add.at(X[:, j], rng.integers(0, n_cells, 1 + j % 3), 1)
    adata = AnnData(sp.csr_matrix(X))
    adata.var_names = [f"gene{i}" for i in range(n_genes)]
    adata.obs["batch"] = pd.Categorical(np.tile(["a", "b"], n_cells // 2))
    return adata


def _scanpy_seurat_v3(adata: AnnData, n_top_genes: int, **kwargs) -> np.ndarray:
    tmp = adata.copy()
    sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top_genes, **kwargs)
    return tmp.var["highly_variable"].to_numpy()


def test_sparse_tail_fixture_breaks_plain_scanpy():
    adata = sparse_tail_counts()
    library = np.asarray(adata.X.sum(1)).ravel()
    assert library.min() >= 100 and (np.asarray(adata.X.sum(0)).ravel() > 0).all()  # as the neuron data
    with pytest.raises(ValueError, match="reciprocal condition number") as err:
        _scanpy_seurat_v3(adata, 200)
    assert _loess_failure(err.value)


def test_setup_retries_the_loess_with_a_wider_span():
    adata = sparse_tail_counts()
    with pytest.warns(UserWarning, match=r"reciprocal condition number.*span=0\.5"):
        biossl.pp.setup(adata, n_top_genes=200)
    rec = adata.uns["biossl"]["setup"]
    assert (rec["hvg_flavor"], rec["hvg_span"], rec["n_genes"]) == ("seurat_v3", 0.5, 200)
    np.testing.assert_array_equal(adata.var["biossl_hvg"].to_numpy(), _scanpy_seurat_v3(adata, 200, span=0.5))


def test_backed_setup_falls_back_the_same_way(tmp_path):
    mem = sparse_tail_counts()
    mem.write_h5ad(tmp_path / "tail.h5ad")
    backed = ad.read_h5ad(tmp_path / "tail.h5ad", backed="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        biossl.pp.setup(mem, n_top_genes=200)
    with pytest.warns(UserWarning, match=r"span=0\.5"):
        biossl.pp.setup(backed, n_top_genes=200)
    np.testing.assert_array_equal(backed.var["biossl_hvg"].to_numpy(), mem.var["biossl_hvg"].to_numpy())
    assert backed.uns["biossl"]["setup"] == mem.uns["biossl"]["setup"]
    backed.file.close()


@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_without_any_loess_fit_genes_come_from_seurat_dispersions(tmp_path, batch_key):
    mem = few_count_panel()
    for span in biossl.pp.HVG_SPANS:
        with pytest.raises(ValueError) as err:
            _scanpy_seurat_v3(mem, 50, span=span, batch_key=batch_key)
        assert _loess_failure(err.value)
    mem.write_h5ad(tmp_path / "panel.h5ad")
    backed = ad.read_h5ad(tmp_path / "panel.h5ad", backed="r")
    for adata in (mem, backed):
        with pytest.warns(UserWarning, match="flavor='seurat'"):
            biossl.pp.setup(adata, n_top_genes=50, batch_key=batch_key)
    rec = mem.uns["biossl"]["setup"]
    assert rec["hvg_flavor"] == "seurat" and "hvg_span" not in rec and rec["n_genes"] == 50
    np.testing.assert_array_equal(backed.var["biossl_hvg"].to_numpy(), mem.var["biossl_hvg"].to_numpy())
    assert backed.uns["biossl"]["setup"] == rec
    backed.file.close()


def test_seurat_fallback_is_scanpys_rule_in_memory_and_streaming(pbmc_full, tmp_path, monkeypatch):
    """On real counts (no loess tried), the in-memory and streaming fallbacks pick scanpy's "seurat" genes."""
    monkeypatch.setattr(biossl.pp, "HVG_SPANS", ())
    log = pbmc_full.copy()
    sc.pp.normalize_total(log)
    sc.pp.log1p(log)
    sc.pp.highly_variable_genes(log, flavor="seurat", n_top_genes=700)
    pbmc_full.write_h5ad(tmp_path / "pbmc.h5ad")
    backed = ad.read_h5ad(tmp_path / "pbmc.h5ad", backed="r")
    biossl.pp.setup(pbmc_full, n_top_genes=700)
    biossl.pp.setup(backed, n_top_genes=700)
    assert pbmc_full.uns["biossl"]["setup"]["hvg_flavor"] == "seurat"
    np.testing.assert_array_equal(pbmc_full.var["biossl_hvg"].to_numpy(), log.var["highly_variable"].to_numpy())
    np.testing.assert_array_equal(backed.var["biossl_hvg"].to_numpy(), pbmc_full.var["biossl_hvg"].to_numpy())
    backed.file.close()


def test_normal_data_keeps_scanpys_seurat_v3_genes(pbmc_full):
    expected = _scanpy_seurat_v3(pbmc_full, 700)
    biossl.pp.setup(pbmc_full, n_top_genes=700)  # no warning (pytest turns warnings into errors)
    rec = pbmc_full.uns["biossl"]["setup"]
    assert (rec["hvg_flavor"], rec["hvg_span"]) == ("seurat_v3", 0.3)
    np.testing.assert_array_equal(pbmc_full.var["biossl_hvg"].to_numpy(), expected)


def test_other_value_errors_are_not_taken_for_loess_failures():
    assert not _loess_failure(ValueError("batch_key 'x' not in obs"))
    assert not _loess_failure(RuntimeError("reciprocal condition number"))
