"""tl.suggest_labels and `biossl suggest`: which cells to label next, on real pbmc3k cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import biossl
from biossl.cli import main
from biossl.metrics import fewlabel_split, macro_f1


@pytest.fixture
def pbmc_graph(_pbmc_graph):
    """All of pbmc3k, PCA embedding and graph; ``obs["labels"]``: one label per type."""
    adata = _pbmc_graph.copy()
    truth = adata.obs["cell_type"].astype(str)
    adata.obs["labels"] = pd.Categorical(truth.where(fewlabel_split(truth.to_numpy(), 1, 0)))
    return adata


def _f1_after(adata, mask) -> float:
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["_l"] = pd.Categorical(np.where(mask, truth, None), categories=sorted(set(truth)))
    biossl.tl.annotate(adata, "_l", unlabeled_category=None, calibrate=False)
    pred = adata.obs["biossl_label"].astype(str).to_numpy()
    return macro_f1(truth[~mask], pred[~mask])


def test_writes_ranks_of_unlabelled_cells(pbmc_graph):
    biossl.tl.suggest_labels(pbmc_graph, 12, labels_key="labels")
    rank = pbmc_graph.obs["biossl_suggest"].to_numpy()
    picked = np.isfinite(rank)
    assert picked.sum() == 12
    assert sorted(rank[picked]) == list(range(1, 13))
    assert pbmc_graph.obs["labels"][picked].isna().all(), "a labelled cell was suggested"
    assert pbmc_graph.uns["biossl"]["suggest"]["n"] == 12


def test_copy_leaves_input_alone(pbmc_graph):
    out = biossl.tl.suggest_labels(pbmc_graph, 5, labels_key="labels", key_added="next", copy=True)
    assert "next" in out.obs and "next" not in pbmc_graph.obs
    assert out.obs["next"].notna().sum() == 5


def test_suggestions_spread_over_types(pbmc_graph):
    """Nine picks (as many as types) are not spent on one type, although the chooser never sees the truth."""
    biossl.tl.suggest_labels(pbmc_graph, 9, labels_key="labels")
    picked = pbmc_graph.obs["biossl_suggest"].notna().to_numpy()
    types = pbmc_graph.obs["cell_type"][picked]
    assert types.nunique() >= 5, types.value_counts().to_dict()
    assert types.value_counts().max() <= 3


def test_labelling_suggestions_beats_labelling_confident_cells(pbmc_graph):
    """One round of the loop: label the suggested cells, annotate again; compare with the most confident cells."""
    truth = pbmc_graph.obs["cell_type"].astype(str).to_numpy()
    start = pbmc_graph.obs["labels"].notna().to_numpy()
    n = 18
    biossl.tl.suggest_labels(pbmc_graph, n, labels_key="labels")
    suggested = start | pbmc_graph.obs["biossl_suggest"].notna().to_numpy()
    biossl.tl.annotate(pbmc_graph, "labels", calibrate=False)
    conf = np.where(start, -1.0, pbmc_graph.obs["biossl_confidence"].to_numpy())
    confident = start.copy()
    confident[np.argsort(-conf)[:n]] = True
    f1_start = _f1_after(pbmc_graph, start)
    f1_suggest = _f1_after(pbmc_graph, suggested)
    f1_confident = _f1_after(pbmc_graph, confident)
    assert f1_suggest > f1_start + 0.01, (f1_start, f1_suggest)
    assert f1_suggest > f1_confident, (f1_confident, f1_suggest)
    assert len(set(truth[suggested])) == len(set(truth))


def test_cold_start_without_labels(pbmc_graph):
    """With no label at all the picks are typical cells spread over the graph."""
    pbmc_graph.obs["none"] = pd.Categorical([np.nan] * pbmc_graph.n_obs, categories=["B"])
    biossl.tl.suggest_labels(pbmc_graph, 10, labels_key="none")
    picked = pbmc_graph.obs["biossl_suggest"].notna().to_numpy()
    assert picked.sum() == 10
    assert pbmc_graph.obs["cell_type"][picked].nunique() >= 4


def test_bad_inputs(pbmc_graph):
    before = pbmc_graph.obs.copy()
    with pytest.raises(ValueError, match="unlabelled"):
        biossl.tl.suggest_labels(pbmc_graph, pbmc_graph.n_obs, labels_key="labels")
    with pytest.raises(ValueError, match="positive integer"):
        biossl.tl.suggest_labels(pbmc_graph, 0, labels_key="labels")
    with pytest.raises(ValueError, match="not a column"):
        biossl.tl.suggest_labels(pbmc_graph, 3, labels_key="nope")
    with pytest.raises(ValueError, match=r"tl\.neighbors"):
        biossl.tl.suggest_labels(pbmc_graph, 3, labels_key="labels", neighbors_key="other")
    pd.testing.assert_frame_equal(pbmc_graph.obs, before)


def test_cli_suggest(pbmc_graph, tmp_path):
    src = tmp_path / "in.h5ad"
    pbmc_graph.write_h5ad(src)
    before = src.read_bytes()
    out = tmp_path / "out.h5ad"
    result = CliRunner().invoke(main, ["suggest", str(src), "-n", "7", "--labels-key", "labels", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("suggested 7 cells")
    import anndata as ad

    got = ad.read_h5ad(out)
    assert got.obs["biossl_suggest"].notna().sum() == 7
    assert src.read_bytes() == before
    again = CliRunner().invoke(main, ["suggest", str(src), "-n", "7", "--labels-key", "labels", "-o", str(out)])
    assert again.exit_code == 1 and "--force" in again.stderr
    bad = CliRunner().invoke(main, ["suggest", str(src), "-n", "7", "--labels-key", "nope", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and "nope" in bad.stderr
