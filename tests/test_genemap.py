"""Gene renaming through ortholog tables: pp.map_genes and map_query(gene_map=...)."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

import biossl
from biossl.datasets import example_path


def _table() -> pd.DataFrame:
    return pd.read_csv(example_path("orthologs/human_mouse_one2one.tsv.gz"), sep="\t")


def test_builtin_table_is_one_to_one():
    tab = _table()
    assert len(tab) > 15_000
    assert tab["human"].is_unique and tab["mouse"].is_unique
    assert dict(zip(tab["human"], tab["mouse"], strict=True))["MS4A1"] == "Ms4a1"


def test_pbmc_to_mouse_symbols_and_back(pbmc_full):
    tab = _table()
    expected = np.isin(pbmc_full.var_names, tab["human"])
    mouse = biossl.pp.map_genes(pbmc_full, "human_to_mouse", copy=True)
    assert mouse.n_vars == expected.sum() and 0.7 < expected.mean() < 1
    assert "Cd79a" in mouse.var_names and "CD79A" not in mouse.var_names
    report = mouse.uns["biossl"]["map_genes"]
    assert report["n_renamed"] == expected.sum() and report["n_genes"] == pbmc_full.n_vars
    back = biossl.pp.map_genes(mouse, "mouse_to_human", copy=True)
    assert list(back.var_names) == list(pbmc_full.var_names[expected])
    assert (back.X != pbmc_full[:, expected].X).nnz == 0
    assert "MS4A1" in pbmc_full.var_names  # copy=True left the input alone


def test_ambiguous_pairs_are_dropped_and_counted(pbmc_small):
    genes = list(pbmc_small.var_names[:6])
    # genes[0] and genes[1] share a target, genes[2] is not in the table: only genes[3:6] are one-to-one
    table = {genes[0]: "x", genes[1]: "x", genes[3]: "a", genes[4]: "b", genes[5]: "c"}
    biossl.pp.map_genes(pbmc_small, table, min_overlap=0.001)
    assert list(pbmc_small.var_names) == ["a", "b", "c"]
    assert list(pbmc_small.var["biossl_source_gene"]) == genes[3:6]
    assert pbmc_small.uns["biossl"]["map_genes"]["n_ambiguous_pairs"] == 2


def test_table_file_with_header(pbmc_small, tmp_path):
    path = tmp_path / "map.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("human\tmouse\n" + "".join(f"{g}\t{g.lower()}\n" for g in pbmc_small.var_names[:50]))
    out = biossl.pp.map_genes(pbmc_small, path, min_overlap=0.01, copy=True)
    assert list(out.var_names) == [g.lower() for g in pbmc_small.var_names[:50]]


@pytest.mark.parametrize(
    ("gene_map", "match"),
    [
        ("mouse_to_human", "renames only 0 of"),  # human data, table for the other direction
        ("no_such_table", "neither a file nor a built-in table"),
        ({}, "no one-to-one pair"),
    ],
)
def test_bad_gene_maps_are_refused_and_change_nothing(pbmc_small, unchanged, gene_map, match):
    with unchanged(pbmc_small), pytest.raises(ValueError, match=match):
        biossl.pp.map_genes(pbmc_small, gene_map)


def test_map_query_renames_a_mouse_named_query(_pbmc_full):
    rng = np.random.default_rng(0)
    is_ref = rng.random(_pbmc_full.n_obs) < 0.5
    ref = _pbmc_full[is_ref].copy()
    reference = biossl.tl.fit_reference(ref, "cell_type", max_steps=200, progress=False)
    human = _pbmc_full[~is_ref].copy()
    mouse = biossl.pp.map_genes(human, "human_to_mouse", copy=True)
    human = human[:, np.isin(human.var_names, mouse.var["biossl_source_gene"])].copy()  # the same genes
    steps = {"fine_tune_steps": 50, "progress": False}  # the renaming is tested, not the fine-tuning
    biossl.tl.map_query(human, reference, **steps)
    with pytest.raises(ValueError, match="genes are in the data"):  # mouse symbols alone match nothing
        biossl.tl.map_query(mouse.copy(), reference, **steps)
    biossl.tl.map_query(mouse, reference, gene_map="mouse_to_human", **steps)
    np.testing.assert_array_equal(mouse.obs["biossl_label"].astype(str), human.obs["biossl_label"].astype(str))
    overlap = mouse.uns["biossl"]["gene_overlap"]
    assert overlap["n_matched"] == human.uns["biossl"]["gene_overlap"]["n_matched"]
    assert overlap["gene_map"]["n_renamed"] == mouse.n_vars


def test_cli_gene_map(_pbmc_full, tmp_path):
    import anndata as ad
    from click.testing import CliRunner

    from biossl.cli import main

    ref_path, query_path = tmp_path / "ref.h5ad", tmp_path / "query_mouse.h5ad"
    _pbmc_full[:400].copy().write_h5ad(ref_path)
    biossl.pp.map_genes(_pbmc_full[400:700].copy(), "human_to_mouse", copy=True).write_h5ad(query_path)
    runner = CliRunner()
    refdir, out = tmp_path / "ref", tmp_path / "out.h5ad"
    res = runner.invoke(
        main, ["fit-reference", str(ref_path), "--labels-key", "cell_type", "-o", str(refdir), "--max-steps", "50"]
    )
    assert res.exit_code == 0, res.output
    bad = tmp_path / "one_column.tsv"
    bad.write_text("human\nCD3E\n")
    res = runner.invoke(main, ["annotate", str(query_path), "--reference", str(refdir), "-o", str(out),
                               "--gene-map", str(bad)])  # fmt: skip
    assert res.exit_code == 1 and "--gene-map" in res.output and not out.exists()
    res = runner.invoke(main, ["annotate", str(query_path), "--labels-key", "cell_type", "-o", str(out),
                               "--gene-map", "mouse_to_human"])  # fmt: skip
    assert res.exit_code == 2 and "--reference REFDIR only" in res.output
    res = runner.invoke(main, ["annotate", str(query_path), "--reference", str(refdir), "-o", str(out),
                               "--gene-map", "mouse_to_human"])  # fmt: skip
    assert res.exit_code == 0, res.output
    overlap = ad.read_h5ad(out).uns["biossl"]["gene_overlap"]
    assert overlap["gene_map"]["gene_map"] == "mouse_to_human" and overlap["fraction_matched"] > 0.7
