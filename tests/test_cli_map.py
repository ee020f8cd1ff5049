"""`biossl map`: reference mapping as its own command, and `annotate --reference` as its alias."""

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from conftest import simulate
from test_cli import ok, one_error, run  # the CLI runner helpers shared with test_cli.py

import biossl

MAP_OPTIONS = (
    "--reference", "--gene-map", "--gene-key", "--mapping-threshold", "--unknown-threshold", "--n-neighbors",
    "--batch-key", "--max-steps", "--seed", "--device", "--threads", "--force",
)  # fmt: skip


@pytest.fixture(scope="module")
def refdir(tmp_path_factory) -> Path:
    """A small reference (3 simulated types, a short training) saved to a directory."""
    path = tmp_path_factory.mktemp("map") / "ref"
    ref = biossl.tl.fit_reference(simulate(seed=0), "cell_type", max_steps=50, device="cpu", progress=False)
    ref.save(path)
    return path


@pytest.fixture
def query(tmp_path) -> Path:
    path = tmp_path / "query.h5ad"
    simulate(n_per_group=40, seed=1).write_h5ad(path)
    return path


def _summary(stdout: str) -> str:
    """The summary line without its timing and output path."""
    return re.sub(r" in [0-9.]+ s -> .*$", "", stdout.strip())


def test_map_gives_the_labels_of_annotate_reference(refdir, query, tmp_path):
    args = ("--reference", refdir, "--mapping-threshold", "0.6", "--seed", "1", "--max-steps", "20")
    via_map = ok(run("map", query, "-o", tmp_path / "map.h5ad", *args))
    via_annotate = ok(run("annotate", query, "-o", tmp_path / "annotate.h5ad", *args))
    assert via_map.startswith(f"mapped 240 cells onto {refdir} (3 types, 120 of 120 genes matched")
    assert _summary(via_map) == _summary(via_annotate)
    a, b = ad.read_h5ad(tmp_path / "map.h5ad"), ad.read_h5ad(tmp_path / "annotate.h5ad")
    assert (a.obs["biossl_label"].astype(str) == b.obs["biossl_label"].astype(str)).all()
    np.testing.assert_array_equal(a.obs["biossl_confidence"], b.obs["biossl_confidence"])
    np.testing.assert_array_equal(a.obs["biossl_mapping_score"], b.obs["biossl_mapping_score"])
    assert a.uns["biossl"]["map_query"]["mapping_threshold"] == 0.6 and a.uns["biossl"]["map_query"]["hard_threshold"]


def test_map_help_lists_its_options():
    out = ok(run("map", "--help"))
    assert out.startswith("Usage: biossl map [OPTIONS] IN.h5ad")
    for option in MAP_OPTIONS:
        assert option in out, option
    assert "--labels-key" not in out and "--save-model" not in out
    listing = ok(run("--help"))
    assert re.search(r"^  map +Annotate every cell of IN.h5ad from a reference", listing, re.MULTILINE)
    assert "(the same as `biossl map`)" in " ".join(ok(run("annotate", "--help")).split())


def test_map_bad_inputs_give_one_error_line(refdir, query, tmp_path):
    out = tmp_path / "out.h5ad"
    plain = tmp_path / "not_a_ref"
    plain.mkdir()
    one_error(run("map", query, "-o", out, "--reference", plain), "--reference", "is not a biossl reference directory")
    one_error(run("map", tmp_path / "missing.h5ad", "-o", out, "--reference", refdir), "does not exist")
    one_error(run("map", query, "-o", tmp_path / "out.csv", "--reference", refdir), "name it .h5ad")
    one_error(run("map", query, "-o", out, "--reference", refdir, "--unknown-threshold", "2"), "--unknown-threshold")
    one_error(run("map", query, "-o", out, "--reference", refdir, "--gene-map", tmp_path / "none.tsv"), "--gene-map")
    out.write_text("older")
    one_error(run("map", query, "-o", out, "--reference", refdir), "already exists", "--force")
    assert out.read_text() == "older"
    res = run("map", query, "-o", tmp_path / "x.h5ad")
    assert res.exit_code == 2 and "Missing option '--reference'" in res.output
