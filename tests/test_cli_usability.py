"""Issue 23, items 4-9: the CLI warns with numbers on misuse, speaks in options, and has the options users expect."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from test_cli import ok, run  # the CLI runner helpers shared with test_cli.py

from biossl.cli import cli_message
from biossl.pp import find_counts
from biossl.report import natural_key
from biossl.tl._propagation import label_codes


def one_error(result, *needles: str) -> str:
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {result.stderr!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def write(adata: AnnData, path) -> str:
    adata.write_h5ad(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# item 5: messages name the CLI option


@pytest.mark.parametrize(
    ("api", "cli"),
    [
        (
            "layer='raw_counts' is not in adata.layers (have: none); pass the layer that holds raw counts.",
            "--layer 'raw_counts' is not in adata.layers (have: none); pass the layer that holds raw counts.",
        ),
        ("Put raw integer counts in X or layers['counts'], or pass layer=.", "or pass --layer."),
        (
            "genes 'LPCAT4' and 'Lpcat4' are the same name ignoring case; pass case_sensitive=True.",
            "genes 'LPCAT4' and 'Lpcat4' are the same name ignoring case; pass --case-sensitive.",
        ),
        ("pass an existing column or batch_key=None.", "pass an existing column or drop --batch-key."),
        ("labels_key='celltype' is not a column of adata.obs", "--labels-key 'celltype' is not a column of adata.obs"),
        ("n_neighbors=15 but there are only 12 cells", "--n-neighbors 15 but there are only 12 cells"),
        ("device='cuda' was requested; use device='auto' or 'cpu'.", "--device 'cuda' was requested; use --device"),
        (
            "save_model='m' already exists; pass overwrite=True to replace it.",
            "--save-model 'm' already exists; pass --force",
        ),
        (
            "Pass model= (e.g. the one saved by tl.embed(save_model=...)) to reuse one.",
            "Pass --model DIR (e.g. the one saved by `biossl embed --save-model DIR`) to reuse one.",
        ),
        ("e.g. set 'A': X1; see uns['biossl_genes']['unknown_genes'].", "the score table has no rows for them."),
        (
            "nothing to annotate; mark unlabelled cells as NaN or 'Unknown'.",
            "nothing to annotate; mark unlabelled cells as NaN or as the value given to --unlabeled-category "
            "(now 'Unknown').",
        ),
    ],
)
def test_api_messages_name_the_cli_option(api, cli):
    translated = cli_message(api)
    assert cli in translated
    assert "=" not in translated.replace("(have:", "")


def test_all_labelled_error_names_unlabeled_category(sim, tmp_path):
    path = write(sim, tmp_path / "in.h5ad")
    result = run("annotate", path, "-o", tmp_path / "out.h5ad", "--labels-key", "cell_type", "--model", "pca")
    one_error(result, "every cell", "--unlabeled-category")
    assert not (tmp_path / "out.h5ad").exists()


def test_counts_in_raw_are_mentioned():
    rng = np.random.default_rng(0)
    adata = AnnData(rng.poisson(1.0, (20, 10)).astype(np.float32))
    adata.raw = adata
    adata.X = np.log1p(adata.X)
    with pytest.raises(ValueError, match=r"adata.raw holds counts \(10 genes\).*adata.raw\[:, adata.var_names\].X"):
        find_counts(adata)
    adata.raw = None
    with pytest.raises(ValueError) as err:
        find_counts(adata)
    assert "adata.raw" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# item 6: misuse warns, with the numbers


@pytest.mark.parametrize("blank", ["NA", "", "nan", "None", " na "])
def test_na_strings_are_unlabelled(sim, blank, caplog):
    labels = sim.obs["labels"].astype(object).where(sim.obs["labels"].notna(), blank)
    sim.obs["text"] = labels.astype(str)
    with caplog.at_level(logging.WARNING, logger="biossl"):
        codes, classes = label_codes(sim, "text", "Unknown")
    assert classes == ["alpha", "beta", "gamma"]
    assert int((codes >= 0).sum()) == 15
    assert f"{sim.n_obs - 15} cells labelled {blank!r}" in caplog.text


def test_na_strings_are_not_a_type_under_the_cli(sim, tmp_path):
    sim.obs["text"] = sim.obs["labels"].astype(object).where(sim.obs["labels"].notna(), "NA").astype(str)
    sim.obs.loc[sim.obs_names[:10], "text"] = ""
    path = write(sim, tmp_path / "in.h5ad")
    result = run("annotate", path, "-o", tmp_path / "o.h5ad", "--labels-key", "text", "--model", "pca")
    assert "from 15 labels (3 types" in ok(result)
    assert warnings_of(result) == ["warning: adata.obs['text']: 345 cells labelled '', 'NA' are treated as unlabelled."]


def test_evaluate_says_how_many_cells_are_scored(sim, tmp_path):
    truth = sim.obs["cell_type"].astype(object)
    keep = np.zeros(sim.n_obs, dtype=bool)
    keep[::12] = True  # 30 of 360 cells have a true label
    sim.obs["truth"] = pd.Categorical(truth.where(keep))
    path = write(sim, tmp_path / "in.h5ad")
    result = run("evaluate", path, "--labels-key", "truth", "--k", "3", "--seeds", "0", "--model", "pca")
    out = ok(result)
    warned = " ".join(warnings_of(result))
    assert "only 30 of 360 cells have a true label in obs['truth']" in warned
    assert "--k 3 labels 9 of the 30 labelled cells and leaves only 21 hidden to score" in warned
    assert "scored" in out.splitlines()[0] and out.splitlines()[1].split()[:3] == ["3", "9", "21"]
    assert "with a true label" in out.splitlines()[-1] and " 30 cells" in out.splitlines()[-1]


def test_evaluate_warns_when_k_leaves_few_cells(sim, tmp_path):
    path = write(sim, tmp_path / "in.h5ad")
    result = run("evaluate", path, "--labels-key", "cell_type", "--k", "5,100", "--seeds", "0", "--model", "pca")
    ok(result)
    warned = warnings_of(result)
    assert len(warned) == 1, warned
    assert "--k 100 labels 300 of the 360 labelled cells and leaves only 60 hidden to score" in warned[0]


def test_fit_reference_counts_labelled_cells_and_takes_a_layer(sim, tmp_path):
    sim.layers["raw"] = sim.X.copy()
    sim.X = sp.csr_matrix(np.log1p(sim.X.toarray()))
    path = write(sim, tmp_path / "in.h5ad")
    args = ["fit-reference", path, "--labels-key", "labels", "--max-steps", "20", "--n-latent", "4"]
    one_error(run(*args, "-o", tmp_path / "r0"), "No raw counts", "--layer")
    result = run(*args, "-o", tmp_path / "ref", "--layer", "raw")
    out = ok(result)
    assert "reference of 360 cells (15 labelled, 3 types" in out
    assert "only 15 of 360 cells are labelled in obs['labels']" in " ".join(warnings_of(result))
    one_error(run(*args, "-o", tmp_path / "r2", "--layer", "nope"), "--layer 'nope'")


# ---------------------------------------------------------------------------------------------------------------
# item 4 and 8: genes


def _gmt(path, sets: dict[str, list[str]]) -> str:
    path.write_text("".join(f"{name}\tdesc\t" + "\t".join(genes) + "\n" for name, genes in sets.items()))
    return str(path)


def test_genes_case_duplicates_name_the_option(sim, tmp_path):
    names = list(sim.var_names)
    names[1] = names[0].upper()  # 'gene0' and 'GENE0'
    sim.var_names = names
    path = write(sim, tmp_path / "in.h5ad")
    gmt = _gmt(tmp_path / "s.gmt", {"A": ["gene0", "gene2", "gene3"]})
    out = tmp_path / "g.tsv"
    one_error(run("genes", path, "--gene-sets", gmt, "-o", out), "'gene0' and 'GENE0'", "--case-sensitive")
    result = run("genes", path, "--gene-sets", gmt, "-o", out, "--case-sensitive", "--graph", "coexpression")
    ok(result)
    assert "case_sensitive" not in result.stderr


def test_genes_checks_the_sets_before_training(sim, tmp_path):
    path = write(sim, tmp_path / "in.h5ad")
    gmt = _gmt(tmp_path / "s.gmt", {"A": ["ENSG01", "ENSG02"], "B": ["ENSG03"]})
    result = run("genes", path, "--gene-sets", gmt, "-o", tmp_path / "g.tsv", "--max-steps", "100000")
    one_error(result, "no member of the 2 gene sets", "'ENSG01'")
    assert "training a VAE" not in result.stderr


def test_genes_table_in_rank_order_without_empty_sets(sim, tmp_path):
    path = write(sim, tmp_path / "in.h5ad")
    sets = {"A": ["gene0", "gene1", "gene2"], "none": ["NOPE1", "NOPE2"], "C": ["gene30", "gene31", "gene32"]}
    out = tmp_path / "g.tsv"
    result = run("genes", path, "--gene-sets", _gmt(tmp_path / "s.gmt", sets), "-o", out, "--graph", "coexpression")
    ok(result)
    assert "the score table has no rows for them" in result.stderr and "uns[" not in result.stderr
    table = pd.read_csv(out, sep="\t")
    assert list(dict.fromkeys(table["set"])) == ["A", "C"]
    for _, grp in table.groupby("set"):
        assert grp["rank"].is_monotonic_increasing and grp["score"].is_monotonic_decreasing
    helped = ok(run("genes", "--help"))
    assert "--case-sensitive" in helped and "standardised over genes" in helped


# ---------------------------------------------------------------------------------------------------------------
# item 7: options


def test_h5ad_outputs_refuse_other_suffixes(sim, tmp_path):
    path = write(sim, tmp_path / "in.h5ad")
    for command in (
        ["embed", path, "--model", "pca"],
        ["annotate", path, "--labels-key", "labels", "--model", "pca"],
        ["suggest", path, "-n", "3", "--labels-key", "labels"],
    ):
        one_error(run(*command, "-o", tmp_path / "out.csv"), "'.csv'", ".h5ad")
    assert not (tmp_path / "out.csv").exists()


def test_help_shows_defaults_and_options():
    annotate = ok(run("annotate", "--help"))
    assert "--gene-key" in annotate and "[default: none;" in annotate
    fit = " ".join(ok(run("fit-reference", "--help")).split())
    assert "--layer" in fit and "Where to train the model" in fit
    suggest = ok(run("suggest", "--help"))
    assert "--key, --key-added" in suggest and "--table" in suggest


def test_gene_key_needs_a_reference(sim, tmp_path):
    path = write(sim, tmp_path / "in.h5ad")
    result = run("annotate", path, "-o", tmp_path / "o.h5ad", "--labels-key", "labels", "--gene-key", "ids")
    assert result.exit_code == 2 and "--gene-key applies to --reference" in result.output


def test_suggest_table_and_key_alias(sim, tmp_path):
    path = write(sim, tmp_path / "in.h5ad")
    annotated = tmp_path / "a.h5ad"
    ok(run("annotate", path, "-o", annotated, "--labels-key", "labels", "--model", "pca"))
    table = tmp_path / "next.tsv"
    out = ok(run("suggest", annotated, "-o", tmp_path / "s.h5ad", "-n", "6", "--labels-key", "labels",
                 "--key", "next", "--table", table))  # fmt: skip
    assert f"table -> {table}" in out
    rows = pd.read_csv(table, sep="\t")
    assert list(rows.columns) == ["cell", "rank", "predicted", "confidence"]
    assert list(rows["rank"]) == [1, 2, 3, 4, 5, 6]
    assert set(rows["predicted"]) <= {"alpha", "beta", "gamma", "Unknown"} and rows["confidence"].between(0, 1).all()
    assert not sim.obs.loc[rows["cell"], "labels"].notna().any()  # only unlabelled cells are suggested
    ok(run("suggest", annotated, "-o", tmp_path / "s2.h5ad", "-n", "2", "--labels-key", "labels", "--key-added", "nx"))


# ---------------------------------------------------------------------------------------------------------------
# item 8: natural sort of types


def test_natural_sort_of_types(sim, tmp_path):
    assert sorted(["10", "2", "Unknown", "1", "T 10", "T 2"], key=natural_key) == ["1", "2", "10", "T 2", "T 10",
                                                                                   "Unknown"]  # fmt: skip
    names = {"alpha": "2", "beta": "10", "gamma": "1"}
    sim.obs["labels"] = sim.obs["labels"].map(names)
    path = write(sim, tmp_path / "in.h5ad")
    annotated = tmp_path / "a.h5ad"
    ok(run("annotate", path, "-o", annotated, "--labels-key", "labels", "--model", "pca"))
    labels_tsv = tmp_path / "labels.tsv"
    ok(run("summarize", annotated, "--tsv", tmp_path / "s.tsv", "--labels-tsv", labels_tsv))
    order = [str(x) for x in pd.read_csv(labels_tsv, sep="\t", dtype=str)["label"]]
    assert [x for x in order if x != "Unknown"] == ["1", "2", "10"]


def test_summarize_says_how_many_cells_are_scored(sim, tmp_path):
    keep = np.zeros(sim.n_obs, dtype=bool)
    keep[::10] = True  # 36 cells with a truth value, a few of them labelled
    sim.obs["truth"] = pd.Categorical(sim.obs["cell_type"].astype(object).where(keep))
    path = write(sim, tmp_path / "in.h5ad")
    annotated = tmp_path / "a.h5ad"
    ok(run("annotate", path, "-o", annotated, "--labels-key", "labels", "--model", "pca"))
    scored = int((keep & sim.obs["labels"].isna().to_numpy()).sum())
    result = run("summarize", annotated, "--tsv", tmp_path / "s.tsv", "--truth-key", "truth")
    assert f"on {scored} cells" in ok(result)
    assert f"macro-F1 is scored on {scored} unlabelled cells with a value in obs['truth']" in result.stderr
    assert int(pd.read_csv(tmp_path / "s.tsv", sep="\t")["n_scored"].iloc[0]) == scored


def test_counts_in_raw_are_used_with_a_warning(sim, tmp_path):
    sim.raw = sim.copy()
    sim.X = sp.csr_matrix(np.log1p(sim.X.toarray()))
    path = write(sim, tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    result = run("annotate", path, "-o", out, "--labels-key", "labels", "--model", "pca")
    ok(result)
    assert warnings_of(result) == [
        "warning: X holds no raw counts (it holds non-integer values (e.g. 4.89784; log-normalised data?)); using "
        "the counts in adata.raw (120 genes, 120 of them in X) as layers['counts']."
    ]
    import anndata as ad

    written = ad.read_h5ad(out)
    assert written.uns["biossl"]["setup"]["counts"] == "counts"
    assert (written.layers["counts"] != sim.raw.X).nnz == 0
