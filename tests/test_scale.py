"""Backed (on-disk) AnnData: the chunked paths give what the in-memory paths give, on small files.

Speed and memory at 10^4–10^6 cells are measured by ``benchmarks/scale.py``, not here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import TRAIN_STEPS

import biossl
from biossl._backed import RowReader
from biossl.metrics import fewlabel_split

ROOT = Path(__file__).resolve().parents[1]


def _simulate_module():
    spec = importlib.util.spec_from_file_location("simulate", ROOT / "benchmarks" / "simulate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    """1,500 cells × 300 genes from benchmarks/simulate.py (12 types, 3 batches), written in chunks of 400."""
    path = tmp_path_factory.mktemp("scale") / "sim.h5ad"
    _simulate_module().simulate_h5ad(path, 1500, 300, n_batches=3, seed=3, chunk_size=400, progress=False)
    return path


def _backed(path: Path) -> ad.AnnData:
    return ad.read_h5ad(path, backed="r")


def test_simulator_is_seeded_sparse_and_readable(sim_file, tmp_path):
    mem = ad.read_h5ad(sim_file)
    assert mem.shape == (1500, 300)
    assert sp.issparse(mem.X) and mem.X.format == "csr"
    assert np.asarray(mem.X.sum(1)).min() > 0
    assert np.array_equal(mem.X.data, np.round(mem.X.data))
    assert set(mem.obs["batch"]) == {"batch0", "batch1", "batch2"}
    assert mem.obs["cell_type"].nunique() == 12
    # the same seed and chunking gives the same file contents; another seed does not
    again = _simulate_module().simulate_h5ad(tmp_path / "again.h5ad", 1500, 300, n_batches=3, seed=3, chunk_size=400)
    other = _simulate_module().simulate_h5ad(tmp_path / "other.h5ad", 1500, 300, n_batches=3, seed=4, chunk_size=400)
    assert (ad.read_h5ad(again).X != mem.X).nnz == 0
    assert (ad.read_h5ad(other).X != mem.X).nnz > 0
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"
    # at the benchmark's 2,000 genes about 90% of the entries are zero, as in 10x data
    full = ad.read_h5ad(_simulate_module().simulate_h5ad(tmp_path / "full.h5ad", 500, 2000, seed=0))
    zeros = 1 - full.X.nnz / np.prod(full.shape)
    assert 0.85 < zeros < 0.93, zeros


def test_row_reader_matches_in_memory_rows(sim_file, tmp_path):
    mem = ad.read_h5ad(sim_file).X
    backed = _backed(sim_file)
    rng = np.random.default_rng(0)
    cols = np.array([5, -1, 0, 299, 17, -1, 42])  # reordered, with genes absent from the file
    reader = RowReader(backed.X, columns=cols)
    assert reader.shape == (1500, len(cols))
    expected_cols = np.zeros((1500, len(cols)), dtype=np.float32)
    expected_cols[:, cols >= 0] = mem[:, cols[cols >= 0]].toarray()
    for idx in (
        np.sort(rng.choice(1500, 40, replace=False)),  # sparse random rows (one read per row)
        np.arange(100, 160),  # a contiguous run
        np.array([7, 3, 3, 1499, 0]),  # unsorted, with a duplicate
        slice(1400, None),
    ):
        np.testing.assert_array_equal(reader[idx].toarray(), expected_cols[idx])
        np.testing.assert_array_equal(RowReader(backed.X)[idx].toarray(), mem[idx].toarray())
    assert sum(block.shape[0] for _, _, block in reader.chunks(333)) == 1500
    whole = reader.to_csr(chunk_size=333)  # blocks copied into one matrix (the last one shorter)
    assert whole.dtype == np.float32 and whole.shape == (1500, len(cols))
    np.testing.assert_array_equal(whole.toarray(), expected_cols)
    every = RowReader(backed.X).to_csr(chunk_size=333)  # all columns: the size comes from the row pointers
    assert every.nnz == mem.nnz and (every != mem).nnz == 0
    backed.file.close()
    # a dense X on disk is read the same way
    dense = ad.read_h5ad(sim_file)
    dense.X = dense.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    dense_backed = _backed(tmp_path / "dense.h5ad")
    idx = np.sort(rng.choice(1500, 25, replace=False))
    np.testing.assert_array_equal(RowReader(dense_backed.X, columns=cols)[idx].toarray(), expected_cols[idx])
    np.testing.assert_array_equal(RowReader(dense_backed.X, columns=cols).to_csr(333).toarray(), expected_cols)
    dense_backed.file.close()


@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_backed_setup_selects_the_same_genes(sim_file, batch_key):
    mem, backed = ad.read_h5ad(sim_file), _backed(sim_file)
    biossl.pp.setup(mem, batch_key=batch_key, n_top_genes=100)
    biossl.pp.setup(backed, batch_key=batch_key, n_top_genes=100)
    assert backed.var["biossl_hvg"].sum() == 100
    np.testing.assert_array_equal(backed.var["biossl_hvg"].to_numpy(), mem.var["biossl_hvg"].to_numpy())
    assert backed.uns["biossl"]["setup"] == mem.uns["biossl"]["setup"]
    backed.file.close()


def test_backed_setup_on_real_counts(pbmc_full, tmp_path):
    """pbmc3k (real counts, many genes barely expressed): the streaming rule picks scanpy's genes."""
    pbmc_full.write_h5ad(tmp_path / "pbmc.h5ad")
    backed = _backed(tmp_path / "pbmc.h5ad")
    biossl.pp.setup(pbmc_full, n_top_genes=700)
    biossl.pp.setup(backed, n_top_genes=700)
    np.testing.assert_array_equal(backed.var["biossl_hvg"].to_numpy(), pbmc_full.var["biossl_hvg"].to_numpy())
    backed.file.close()


def _annotate_accuracy(adata) -> float:
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    mask = fewlabel_split(truth, 5, 0)
    adata.obs["labels"] = pd.Categorical(np.where(mask, truth, None))
    biossl.tl.neighbors(adata)
    biossl.tl.annotate(adata, "labels")
    return float((adata.obs["biossl_label"].astype(str).to_numpy() == truth)[~mask].mean())


def test_backed_embedding_matches_in_memory(sim_file):
    mem, backed = ad.read_h5ad(sim_file), _backed(sim_file)
    kwargs = {"model": "vae", "batch_key": "batch", "max_steps": 30, "seed": 1, "device": "cpu"}
    biossl.tl.embed(mem, **kwargs)
    model = biossl.tl.embed(backed, **kwargs, return_model=True)
    # the same minibatches are read from disk as from memory, so training is identical
    np.testing.assert_allclose(backed.obsm["X_biossl"], mem.obsm["X_biossl"], rtol=1e-5, atol=1e-5)
    assert backed.uns["biossl"]["embed"]["steps"] == mem.uns["biossl"]["embed"]["steps"] == 30
    # a trained model embeds a backed file too (genes aligned by name, read in chunks)
    latent, report = model.transform(backed, batch_key="batch")
    assert report["n_missing"] == 0
    np.testing.assert_allclose(latent, backed.obsm["X_biossl"], rtol=1e-5, atol=1e-5)
    backed.file.close()


@pytest.mark.slow
def test_backed_annotation_is_as_accurate_as_in_memory(sim_file):
    mem, backed = ad.read_h5ad(sim_file), _backed(sim_file)
    kwargs = {"model": "vae", "batch_key": "batch", "max_steps": 3 * TRAIN_STEPS, "seed": 1, "device": "cpu"}
    biossl.tl.embed(mem, **kwargs)
    biossl.tl.embed(backed, **kwargs)
    acc_mem, acc_backed = _annotate_accuracy(mem), _annotate_accuracy(backed)
    assert acc_backed > 0.5, acc_backed  # 12 types: chance is well below 0.2
    assert abs(acc_backed - acc_mem) <= 0.02
    backed.file.close()


def test_backed_bad_inputs_are_one_line_errors(sim_file, tmp_path):
    backed = _backed(sim_file)
    with pytest.raises(ValueError, match="copy=True is not supported for a backed AnnData"):
        biossl.pp.setup(backed, copy=True)
    assert "biossl_hvg" not in backed.var
    backed.file.close()
    # non-integer values in a backed X are found while streaming
    mem = ad.read_h5ad(sim_file)
    mem.X = mem.X.astype(np.float32)
    mem.X.data[5] = 0.5
    mem.write_h5ad(tmp_path / "lognorm.h5ad")
    before = h5py.File(tmp_path / "lognorm.h5ad").id.get_filesize()
    bad = _backed(tmp_path / "lognorm.h5ad")
    with pytest.raises(ValueError, match=r"not raw counts: it holds non-integer values \(e.g. 0.5") as err:
        biossl.pp.setup(bad)
    assert "\n" not in str(err.value)
    assert "biossl_hvg" not in bad.var and "biossl" not in bad.uns
    bad.file.close()
    assert h5py.File(tmp_path / "lognorm.h5ad").id.get_filesize() == before


def test_approximate_neighbours_with_few_trees_match_exact_search():
    """Above 50,000 cells the graph uses pynndescent with ``PYNNDESCENT_TREES`` trees: nearly the exact neighbours."""
    from biossl import graph

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(12, 20))
    X = (centres[rng.integers(0, 12, 8_000)] + rng.normal(size=(8_000, 20))).astype(np.float32)
    approx, _ = graph.knn(X, 15, method="pynndescent")
    exact, _ = graph.knn(X, 15, method="exact")
    recall = np.mean([len(set(a) & set(e)) / 15 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.95, recall
    assert not (approx == np.arange(len(X))[:, None]).any()  # no cell is its own neighbour
