"""``--backed``: the command line reads the input from disk in chunks and writes the same output."""

from __future__ import annotations

import hashlib
import json

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
    assert not out.exists()


def test_backed_map_writes_what_the_in_memory_map_writes(tmp_path):
    full = biossl.datasets.pbmc()
    is_ref = np.random.default_rng(0).random(full.n_obs) < 0.5
    query_path, refdir = tmp_path / "query.h5ad", tmp_path / "ref"
    full[~is_ref].copy().write_h5ad(query_path)
    biossl.tl.fit_reference(full[is_ref].copy(), "cell_type", max_steps=200, progress=False).save(refdir)
    before = hashlib.sha256(query_path.read_bytes()).hexdigest()
    outputs = {}
    for how, args in (("memory", ["map"]), ("backed", ["map", "--backed"]), ("alias", ["annotate", "--backed"])):
        outputs[how] = tmp_path / f"{how}.h5ad"
        result = _run(*args[:1], query_path, "-o", outputs[how], "--reference", refdir, *args[1:])
        assert result.exit_code == 0, result.output
    a = ad.read_h5ad(outputs["memory"])
    for how in ("backed", "alias"):
        b = ad.read_h5ad(outputs[how])
        assert (a.X != b.X).nnz == 0 and list(a.obs.columns) == list(b.obs.columns)
        assert (a.obs["biossl_label"] == b.obs["biossl_label"]).all()
        np.testing.assert_array_equal(a.obsm["biossl_proba"], b.obsm["biossl_proba"])
        np.testing.assert_array_equal(a.obs["biossl_mapping_score"], b.obs["biossl_mapping_score"])
    assert hashlib.sha256(query_path.read_bytes()).hexdigest() == before, "the input changed"


def test_backed_map_of_values_that_are_not_counts_is_a_clear_error(tmp_path):
    full = biossl.datasets.pbmc()
    reference = biossl.tl.fit_reference(full[:600].copy(), "cell_type", max_steps=50, progress=False)
    query = full[600:900].copy()
    query.X = query.X.astype(np.float32) * 0.5  # halves: not counts
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="backed X is not raw counts: it holds non-integer values"):
        biossl.tl.map_query(backed, reference, progress=False)
    assert "biossl_label" not in backed.obs and "biossl" not in backed.uns


def test_backed_fit_reference_saves_what_the_in_memory_run_saves(few_labels, tmp_path):
    before = hashlib.sha256(few_labels.read_bytes()).hexdigest()
    common = ["--labels-key", "few", "--max-steps", "100"]
    assert _run("fit-reference", few_labels, "-o", tmp_path / "memory", *common).exit_code == 0
    result = _run("fit-reference", few_labels, "-o", tmp_path / "backed", *common, "--backed")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "memory" / "reference.npz") as a, np.load(tmp_path / "backed" / "reference.npz") as b:
        assert sorted(a.files) == sorted(b.files) and "latent" in a.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert hashlib.sha256(few_labels.read_bytes()).hexdigest() == before, "the input changed"
    result = _run("fit-reference", few_labels, "-o", tmp_path / "x", *common, "--backed", "--layer", "counts")
    assert result.exit_code == 2 and "--backed cannot be combined with --layer" in result.output


def test_backed_write_keeps_x_raw_layers_and_annotations(tmp_path):
    """The backed write copies X (and raw) inside HDF5 and everything else through anndata: a full round trip."""
    from biossl._io import write_h5ad_atomic

    full = biossl.datasets.pbmc()[:300].copy()
    full.raw = full.copy()
    full.layers["counts"] = full.X.copy()
    full.obsm["X_extra"] = np.arange(full.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    full.uns["note"] = {"a": 1}
    source, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    full.write_h5ad(source)
    backed = ad.read_h5ad(source, backed="r")
    backed.obs["added"] = np.arange(backed.n_obs)  # what a biossl step adds to the backed object
    write_h5ad_atomic(backed, out)
    back = ad.read_h5ad(out)
    assert (back.X != full.X).nnz == 0 and (back.raw.X != full.raw.X).nnz == 0
    assert (back.layers["counts"] != full.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(back.obsm["X_extra"], full.obsm["X_extra"])
    np.testing.assert_array_equal(back.obs["added"], np.arange(full.n_obs))
    assert back.uns["note"]["a"] == 1 and list(back.var_names) == list(full.var_names)


def test_backed_evaluate_scores_what_the_in_memory_run_scores(few_labels, tmp_path):
    before = hashlib.sha256(few_labels.read_bytes()).hexdigest()
    docs = {}
    for how, extra in (("memory", []), ("backed", ["--backed"])):
        out = tmp_path / f"{how}.json"
        result = _run(
            "evaluate", few_labels, "--labels-key", "cell_type", "--k", "1,3", "--seeds", "0", "--json", out, *extra
        )
        assert result.exit_code == 0, result.output
        docs[how] = json.loads(out.read_text())
    scores = {how: [(r["k"], r["seed"], r["macro_f1"]) for r in doc["runs"]] for how, doc in docs.items()}
    assert len(scores["memory"]) == 2 and scores["memory"] == scores["backed"]
    assert hashlib.sha256(few_labels.read_bytes()).hexdigest() == before, "the input changed"
