"""``--backed``: the command line reads the input from disk in chunks and writes the same output."""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

import biossl
from biossl.cli import main


@pytest.fixture(scope="module")
def few_labels(tmp_path_factory):
    """pbmc3k (example data) with 5 labels per type in obs['few']."""
    adata = biossl.datasets.pbmc()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["few"] = np.where(biossl.metrics.fewlabel_split(truth, 5, 0), truth, None)
    path = tmp_path_factory.mktemp("backed") / "in.h5ad"
    adata.write_h5ad(path)
    return path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_backed_annotate_and_embed_write_what_the_in_memory_run_writes(few_labels, tmp_path):
    before = hashlib.sha256(few_labels.read_bytes()).hexdigest()
    for cmd, extra in (("annotate", ["--labels-key", "few"]), ("embed", [])):
        memory, backed = tmp_path / f"{cmd}_memory.h5ad", tmp_path / f"{cmd}_backed.h5ad"
        assert _run(cmd, few_labels, "-o", memory, *extra).exit_code == 0
        result = _run(cmd, few_labels, "-o", backed, *extra, "--backed")
        assert result.exit_code == 0, result.output
        a, b = ad.read_h5ad(memory), ad.read_h5ad(backed)
        assert (a.X != b.X).nnz == 0 and list(a.obs.columns) == list(b.obs.columns)
        np.testing.assert_array_equal(a.obsm["X_biossl"], b.obsm["X_biossl"])
        if cmd == "annotate":
            assert (a.obs["biossl_label"] == b.obs["biossl_label"]).all()
            assert (a.obsp["biossl_connectivities"] != b.obsp["biossl_connectivities"]).nnz == 0
    assert hashlib.sha256(few_labels.read_bytes()).hexdigest() == before, "the input changed"


def test_backed_refuses_what_it_cannot_do(few_labels, tmp_path):
    out = tmp_path / "out.h5ad"
    result = _run("annotate", few_labels, "-o", out, "--labels-key", "few", "--backed", "--layer", "counts")
    assert result.exit_code == 2 and "--backed cannot be combined with --layer" in result.output
    result = _run("annotate", few_labels, "-o", out, "--reference", tmp_path, "--backed")
    assert result.exit_code == 2 and "--reference cannot be combined with --backed" in result.output
    assert not out.exists()
