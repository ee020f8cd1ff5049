"""Gene function from few known genes: planted modules, gene-set input, the EGAD protocol and the CLI."""

from __future__ import annotations

import gzip
import logging

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from click.testing import CliRunner

import biossl
from biossl import metrics
from biossl.cli import main
from biossl.model import EmbeddingModel
from biossl.tl.genes import read_gmt

MODULE_SIZE = 20


def simulate_modules(n_cells: int = 400, n_genes: int = 150, n_modules: int = 3, seed: int = 0) -> AnnData:
    """NB counts where genes ``m*20 .. m*20+19`` share a program whose activity varies across cells.

    Each cell draws one standard-normal activity per module; module genes have rate ``base × exp(activity)``,
    all other genes vary only by noise. Genes are named ``mod{m}_{i}`` and ``bg{j}``.
    """
    rng = np.random.default_rng(seed)
    activity = rng.normal(0.0, 1.0, (n_cells, n_modules))
    log_rate = np.log(rng.gamma(2.0, 1.0, n_genes))[None, :].repeat(n_cells, 0)
    names = []
    for j in range(n_genes):
        m = j // MODULE_SIZE
        if m < n_modules:
            log_rate[:, j] += activity[:, m]
            names.append(f"mod{m}_{j % MODULE_SIZE}")
        else:
            names.append(f"bg{j}")
    rate = np.exp(log_rate)
    library = rng.lognormal(np.log(2000), 0.3, n_cells)
    mu = rate / rate.sum(1, keepdims=True) * library[:, None]
    counts = rng.negative_binomial(5.0, 5.0 / (5.0 + mu)).astype(np.float32)
    return AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=names),
    )


@pytest.fixture(scope="module")
def modules() -> AnnData:
    return simulate_modules()


@pytest.fixture(scope="module")
def module_model(modules) -> EmbeddingModel:
    adata = modules.copy()
    return biossl.tl.embed(adata, model="vae", max_steps=400, seed=0, device="cpu", return_model=True)


def _module_auroc(table: pd.DataFrame, set_name: str, seeds: list[str], module: list[str]) -> float:
    rows = table[(table["set"] == set_name) & ~table["gene"].isin(seeds)]
    return metrics.auroc(rows["score"].to_numpy(), rows["gene"].isin(module).to_numpy())


@pytest.mark.parametrize("graph", ["combined", "denoised", "loadings", "coexpression"])
def test_planted_module_is_recovered(modules, module_model, graph):
    adata = modules.copy()
    module = [f"mod1_{i}" for i in range(MODULE_SIZE)]
    seeds = module[:5]
    table = biossl.tl.gene_function(adata, {"planted": seeds}, model=module_model, graph=graph)
    score = _module_auroc(table, "planted", seeds, module)
    assert score > 0.9, f"{graph}: AUROC {score:.3f} for the 15 hidden module genes"
    # the EGAD protocol on the same data agrees: all three modules are found from 2/3 of their genes
    membership, _ = metrics.gene_set_matrix(
        {f"m{m}": {f"mod{m}_{i}" for i in range(MODULE_SIZE)} for m in range(3)}, list(adata.var_names)
    )
    from biossl.tl.genes import gene_correlation, propagation_scores

    C = gene_correlation(adata, graph=graph, model=None if graph == "coexpression" else module_model)
    per_set = metrics.egad(propagation_scores(C), membership)
    assert per_set.min() > 0.9


def test_keys_written_and_h5ad_round_trip(modules, module_model, tmp_path):
    adata = modules.copy()
    sets = {"a": [f"mod0_{i}" for i in range(5)], "b": ["mod2_0", "mod2_1", "NOT_A_GENE"]}
    table = biossl.tl.gene_function(adata, sets, model=module_model, key_added="gf")
    assert adata.varm["gf"].shape == (adata.n_vars, 2)
    assert list(adata.uns["gf"]["sets"]) == ["a", "b"]
    assert list(table.columns) == ["set", "gene", "score", "rank", "is_member"]
    assert len(table) == 2 * adata.n_vars
    top = table[table["set"] == "a"].sort_values("rank")
    assert top["rank"].iloc[0] == 1 and top["score"].iloc[0] == top["score"].max()
    assert table.loc[table["set"] == "a", "is_member"].sum() == 5
    path = tmp_path / "gf.h5ad"
    adata.write_h5ad(path)
    back = anndata.read_h5ad(path)
    np.testing.assert_allclose(back.varm["gf"], adata.varm["gf"])
    assert list(back.uns["gf"]["unknown_genes"]) == ["", "NOT_A_GENE"]


def test_dict_and_gmt_agree(modules, module_model, tmp_path):
    sets = {"first": [f"mod0_{i}" for i in range(6)], "second": ["mod1_0", "mod1_3", "bg100"]}
    gmt = tmp_path / "sets.gmt.gz"
    with gzip.open(gmt, "wt") as fh:
        for name, genes in sets.items():
            fh.write("\t".join([name, "description", *genes]) + "\n")
    assert read_gmt(gmt) == sets
    a = biossl.tl.gene_function(modules.copy(), sets, model=module_model)
    b = biossl.tl.gene_function(modules.copy(), str(gmt), model=module_model)
    pd.testing.assert_frame_equal(a, b)


def test_unknown_genes_reported_not_dropped(modules, caplog):
    adata = modules.copy()
    sets = {"s": ["mod0_0", "mod0_1", "mod0_2", "GENE_X", "gene_y"]}
    with caplog.at_level(logging.WARNING, logger="biossl"):
        biossl.tl.gene_function(adata, sets, graph="coexpression")
    assert "GENE_X" in caplog.text
    rec = adata.uns["biossl_genes"]
    assert list(rec["n_unknown"]) == [2]
    assert rec["unknown_genes"][0] == "GENE_X,gene_y"
    assert list(rec["n_members_in_graph"]) == [3]


def test_case_insensitive_by_default(modules):
    lower = {"s": [f"MOD0_{i}" for i in range(5)]}
    table = biossl.tl.gene_function(modules.copy(), lower, graph="coexpression")
    assert table["is_member"].sum() == 5
    with pytest.raises(ValueError, match="no gene set has a member"):
        biossl.tl.gene_function(modules.copy(), lower, graph="coexpression", case_sensitive=True)


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        ({}, "non-empty dict"),
        ({"s": "mod0_0"}, "list of gene names"),
        ({"s": []}, "is empty"),
        ({"s": ["nope1", "nope2"]}, "no gene set has a member"),
        ("/no/such/file.gmt", "does not exist"),
    ],
)
def test_bad_gene_sets_leave_adata_unchanged(modules, unchanged, sets, match):
    adata = modules.copy()
    with unchanged(adata), pytest.raises(ValueError, match=match):
        biossl.tl.gene_function(adata, sets, graph="coexpression")


def test_bad_options(modules, unchanged):
    adata = modules.copy()
    for kwargs, match in [({"alpha": 1.0}, "alpha"), ({"n_neighbors": 0}, "n_neighbors"), ({"graph": "x"}, "graph")]:
        with unchanged(adata), pytest.raises(ValueError, match=match):
            biossl.tl.gene_function(adata, {"s": ["mod0_0"]}, **kwargs)


def test_copy_returns_anndata(modules, unchanged):
    adata = modules.copy()
    with unchanged(adata):
        out = biossl.tl.gene_function(adata, {"s": ["mod0_0", "mod0_1"]}, graph="coexpression", copy=True)
    assert isinstance(out, AnnData) and "biossl_genes" in out.varm


def test_bad_scoring_options(modules, unchanged):
    adata = modules.copy()
    for kwargs, match in [
        ({"scoring": "magic"}, "scoring must be one of"),
        ({"remove_components": -1}, "remove_components"),
        ({"remove_components": ()}, "remove_components"),
        ({"remove_components": (0, 1.5)}, "remove_components"),
    ]:
        with unchanged(adata), pytest.raises(ValueError, match=match):
            biossl.tl.gene_function(adata, {"s": ["mod0_0"]}, graph="coexpression", **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# the ensemble scorer: leading components, null-standardised propagation, hub prior


def test_remove_components_takes_out_the_dominant_axis(modules):
    from biossl.tl.genes import gene_correlation

    adata = modules.copy()
    # a strong axis shared by all 90 background genes (like the cell line of each cell) dominates the correlation
    X = adata.X.toarray()
    axis = np.random.default_rng(0).normal(0.0, 1.5, adata.n_obs)
    X[:, 3 * MODULE_SIZE :] = np.round(X[:, 3 * MODULE_SIZE :] * np.exp(axis)[:, None])
    adata.X = sp.csr_matrix(X.astype(np.float32))
    full = gene_correlation(adata, graph="coexpression")
    cleaned = gene_correlation(adata, graph="coexpression", remove_components=1)
    np.testing.assert_allclose(np.diag(cleaned), 1.0)
    top = np.linalg.eigh(full)[1][:, -1]
    assert abs(top @ cleaned @ top) < 0.01 * abs(top @ full @ top)  # the leading axis is gone (up to rescaling)
    # the planted modules survive: module genes still correlate with each other, not with the background
    within = cleaned[:MODULE_SIZE, :MODULE_SIZE][~np.eye(MODULE_SIZE, dtype=bool)].mean()
    assert within > 0.2 and within > 5 * abs(cleaned[:MODULE_SIZE, 3 * MODULE_SIZE :].mean())
    with pytest.raises(ValueError, match="remove_components"):
        gene_correlation(adata, graph="coexpression", remove_components=-2)


def test_null_standardised_propagation_gives_hubs_no_head_start():
    from biossl.tl._gene_graph import NullPropagator, Propagator

    # a graph with hubs (Chung-Lu: edge probability proportional to the product of the genes' weights)
    rng = np.random.default_rng(0)
    n = 200
    weight = rng.lognormal(0.0, 1.0, n)
    A = np.triu(rng.random((n, n)) < np.minimum(1.0, 8 * np.outer(weight, weight) / weight.sum()), 1)
    W = sp.csr_matrix((A | A.T).astype(float))
    degree = np.asarray(W.sum(1)).ravel()
    random_sets = np.zeros((n, 400))
    for t in range(400):
        random_sets[rng.choice(n, 5, replace=False), t] = 1.0
    plain = Propagator(W, 0.99)(random_sets)
    null = NullPropagator(W, 0.99)(random_sets)
    # averaged over random seed sets, the plain propagation ranks hubs first; the standardised one does not
    assert np.corrcoef(plain.mean(1), degree)[0, 1] > 0.8
    assert abs(np.corrcoef(null.mean(1), degree)[0, 1]) < 0.3
    # and over all single-gene seed sets the standardised score of every gene averages exactly zero
    np.testing.assert_allclose(NullPropagator(W, 0.99)(np.eye(n)).mean(1), 0.0, atol=1e-9)


def test_hub_prior_only_for_sets_of_hubs():
    from biossl.tl._gene_graph import GeneScorer

    W = sp.csr_matrix(TINY)
    degree = TINY.sum(1)  # 3, 2, 2, 1, 1, 3
    with_prior = GeneScorer([W], 0.9, [degree])
    without = GeneScorer([W], 0.9, [])
    hubs, leaves = np.zeros((6, 1)), np.zeros((6, 1))
    hubs[[0, 5]] = 1.0
    leaves[[3, 4]] = 1.0
    np.testing.assert_allclose(with_prior(leaves), without(leaves))  # leaves are below mean degree: no prior
    lift = (with_prior(hubs) - without(hubs))[:, 0]
    z = (degree - degree.mean()) / degree.std()
    np.testing.assert_allclose(lift, z[[0, 5]].mean() * z)  # hubs: degree added in proportion to the seeds'


def test_plain_scoring_is_the_previous_propagation(modules, module_model):
    from biossl.tl.genes import gene_correlation, propagation_scores

    adata = modules.copy()
    seeds = [f"mod1_{i}" for i in range(5)]
    table = biossl.tl.gene_function(adata, {"s": seeds}, model=module_model, scoring="propagation")
    known = np.isin(adata.var_names, seeds).astype(float)[:, None] / 5
    expected = propagation_scores(gene_correlation(adata, model=module_model))(known)[:, 0]
    np.testing.assert_allclose(table["score"].to_numpy(), expected, rtol=1e-6)
    assert adata.uns["biossl_genes"]["params"]["scoring"] == "propagation"


# ---------------------------------------------------------------------------------------------------------------
# EGAD protocol on a tiny graph, by hand

# edges 0-1, 0-2, 0-5, 1-2, 3-5, 4-5
TINY = np.zeros((6, 6))
for i, j in [(0, 1), (0, 2), (0, 5), (1, 2), (3, 5), (4, 5)]:
    TINY[i, j] = TINY[j, i] = 1.0


def test_neighbor_voting_by_hand():
    known = np.zeros((6, 1))
    known[0] = 1
    np.testing.assert_allclose(metrics.neighbor_voting(TINY, known)[:, 0], [0, 1 / 2, 1 / 2, 0, 0, 1 / 3])


def test_egad_auroc_by_hand():
    # members {0, 1, 4}; three folds each hiding one member. By hand (scores = neighbour votes / degree):
    #   hide 0: evaluated {0,2,3,5} scores 1/3, 1/2, 0, 1/3 -> positive 0: (0 + 1 + 0.5) / 3 = 1/2
    #   hide 1: evaluated {1,2,3,5} scores 1/2, 1/2, 0, 2/3 -> positive 1: (0.5 + 1 + 0) / 3 = 1/2
    #   hide 4: evaluated {2,3,4,5} scores 1, 0, 0, 1/3 -> positive 4: (0 + 0.5 + 0) / 3 = 1/6
    # mean = 7/18
    membership = np.zeros((6, 1), dtype=bool)
    membership[[0, 1, 4], 0] = True
    train = np.zeros((6, 3), dtype=bool)
    for t, hidden in enumerate([0, 1, 4]):
        train[[0, 1, 4], t] = True
        train[hidden, t] = False
    result = metrics.egad(lambda y: metrics.neighbor_voting(TINY, y), membership, tasks=(train, np.zeros(3, int)))
    assert result[0] == pytest.approx(7 / 18)


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    truth = rng.random(200) < 0.3
    assert metrics.auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores))


def test_egad_folds_partition_members():
    rng = np.random.default_rng(0)
    membership = rng.random((100, 4)) < 0.3
    train, term = metrics.egad_folds(membership, n_folds=3, seed=0)
    assert train.shape == (100, 12)
    for s in range(4):
        cols = train[:, term == s]
        assert not (cols & ~membership[:, [s]]).any()  # only members are ever known
        held_out = membership[:, [s]] & ~cols
        np.testing.assert_array_equal(held_out.sum(1), membership[:, s].astype(int))  # each hidden exactly once


def test_few_seed_tasks():
    membership = np.zeros((50, 2), dtype=bool)
    membership[:25, 0] = membership[20:, 1] = True
    train, term = metrics.few_seed_tasks(membership, 5, n_repeats=4, seed=0)
    assert train.shape == (50, 8) and (train.sum(0) == 5).all()
    assert all((train[:, t] <= membership[:, term[t]]).all() for t in range(8))
    with pytest.raises(ValueError, match="more than n_seeds"):
        metrics.few_seed_tasks(membership, 30)


# ---------------------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def module_files(modules, tmp_path):
    h5ad = tmp_path / "cells.h5ad"
    modules.write_h5ad(h5ad)
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(
        "\n".join(
            "\t".join([f"m{m}", "planted", *[f"mod{m}_{i}" for i in range(MODULE_SIZE)], "UNKNOWN1"]) for m in range(3)
        )
        + "\n"
    )
    return h5ad, gmt


def test_cli_genes_scores(module_files, tmp_path):
    h5ad, gmt = module_files
    out = tmp_path / "scores.tsv"
    args = ["genes", str(h5ad), "--gene-sets", str(gmt), "-o", str(out), "--graph", "coexpression"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "scored 3 gene sets" in result.stdout and "3 set genes not in IN" in result.stdout
    assert "UNKNOWN1" in result.stderr
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == ["set", "gene", "score", "rank", "is_member"]
    assert len(table) == 3 * 150
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and again.stderr.startswith("error:") and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_cli_genes_evaluate_and_errors(module_files, tmp_path):
    h5ad, gmt = module_files
    result = CliRunner().invoke(
        main,
        ["genes", str(h5ad), "--evaluate", str(gmt), "--graph", "coexpression", "--json", str(tmp_path / "e.json")],
    )
    assert result.exit_code == 0, result.output
    assert "neighbor_voting" in result.stdout and "evaluated 3 gene sets" in result.stdout
    missing = CliRunner().invoke(main, ["genes", str(h5ad), "--gene-sets", str(tmp_path / "no.gmt"), "-o", "x.tsv"])
    assert missing.exit_code == 1 and missing.stderr.startswith("error:") and "does not exist" in missing.stderr
    both = CliRunner().invoke(main, ["genes", str(h5ad)])
    assert both.exit_code == 2 and "exactly one of" in both.output
    helped = CliRunner().invoke(main, ["genes", "--help"])
    assert helped.exit_code == 0 and "--gene-sets" in helped.output and "--evaluate" in helped.output
