"""Bad input: one ValueError with a one-line message naming the key or value, and ``adata`` left as it was."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import biossl


def check_error(err: pytest.ExceptionInfo, *needles: str) -> None:
    exc = err.value
    assert type(exc) is ValueError, f"{type(exc).__name__}, not ValueError"
    msg = str(exc)
    assert msg and "\n" not in msg, f"message is not one line: {msg!r}"
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__), (
        f"chained exception: the user sees two tracebacks ({exc.__context__!r})"
    )
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def setup_step(adata, **kw):
    return biossl.pp.setup(adata, **kw)


def embed_step(adata, **kw):
    return biossl.tl.embed(adata, **{"model": "vae", "max_steps": 5, "device": "cpu", **kw})


def embed_default(adata, **kw):
    return biossl.tl.embed(adata, **kw)


STEPS = [setup_step, embed_step, embed_default]
STEP_IDS = ["setup", "embed-vae", "embed-auto"]


# --- the data itself: checked by setup and, through it, by embed -----------------------------------------


def lognorm(a: AnnData) -> dict:
    X = a.X.toarray()
    a.X = sp.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32))
    return {}


def scaled(a: AnnData) -> dict:
    X = np.log1p(a.X.toarray())
    a.X = ((X - X.mean(0)) / (X.std(0) + 1e-8)).astype(np.float32)
    return {}


def no_x(a: AnnData) -> dict:
    a.X = None
    return {}


def nan_in_x(a: AnnData) -> dict:
    a.X = a.X.toarray()
    a.X[3, 4] = np.nan
    return {}


def inf_in_x(a: AnnData) -> dict:
    a.X = a.X.toarray()
    a.X[3, 4] = np.inf
    return {}


def bad_counts_layer(a: AnnData) -> dict:
    lognorm(a)
    a.layers["counts"] = a.X.copy()
    return {}


def missing_layer(a: AnnData) -> dict:
    return {"layer": "raw_counts"}


def missing_batch_key(a: AnnData) -> dict:
    return {"batch_key": "donor"}


def batch_with_nan(a: AnnData) -> dict:
    a.obs["batch"] = a.obs["batch"].astype(object)
    a.obs.iloc[[5, 9], a.obs.columns.get_loc("batch")] = np.nan
    a.obs["batch"] = a.obs["batch"].astype("category")
    return {"batch_key": "batch"}


def one_cell_batch(a: AnnData) -> dict:
    a.obs["batch"] = a.obs["batch"].cat.add_categories("lonely")
    a.obs.iloc[7, a.obs.columns.get_loc("batch")] = "lonely"
    return {"batch_key": "batch"}


def duplicated_genes(a: AnnData) -> dict:
    names = a.var_names.tolist()
    names[10] = names[3]
    a.var_names = names
    return {}


def duplicated_cells(a: AnnData) -> dict:
    names = a.obs_names.tolist()
    names[10] = names[3]
    a.obs_names = names
    return {}


def zero_count_cells(a: AnnData) -> dict:
    X = a.X.toarray()
    X[[2, 11, 40]] = 0
    a.X = sp.csr_matrix(X)
    return {}


def few_genes_top(a: AnnData) -> dict:
    return {"n_top_genes": 1}


DATA_CASES = {
    # name: (make it bad, words the message must contain)
    "log-normalised X": (lognorm, ["non-integer", "adata.X", "layers['counts']"]),
    "negative X (scaled)": (scaled, ["negative", "adata.X"]),
    "no X": (no_x, ["adata.X", "missing"]),
    "NaN in X": (nan_in_x, ["NaN", "adata.X"]),
    "inf in X": (inf_in_x, ["inf", "adata.X"]),
    "counts layer not counts either": (bad_counts_layer, ["adata.X", "layers['counts']", "non-integer"]),
    "layer= not in layers": (missing_layer, ["'raw_counts'", "layers"]),
    "missing batch_key": (missing_batch_key, ["batch_key='donor'"]),
    "batch_key with NaN": (batch_with_nan, ["'batch'", "2 missing"]),
    "batch with one cell": (one_cell_batch, ["'batch'", "lonely", "single cell"]),
    "duplicated var_names": (duplicated_genes, ["var_names", "'gene3'"]),
    "duplicated obs_names": (duplicated_cells, ["obs_names", "'cell3'"]),
    "cells with zero counts": (zero_count_cells, ["3 cells", "no counts"]),
    "n_top_genes < 2": (few_genes_top, ["n_top_genes", "1"]),
}


SETUP_ONLY = {"layer= not in layers", "n_top_genes < 2"}  # options embed does not take


@pytest.mark.parametrize(
    ("case", "step"),
    [
        pytest.param(case, step, id=f"{case}-{step_id}")
        for case in DATA_CASES
        for step, step_id in zip(STEPS, STEP_IDS, strict=True)
        if step is setup_step or case not in SETUP_ONLY
    ],
)
def test_bad_data(sim, unchanged, case, step):
    make_bad, needles = DATA_CASES[case]
    kwargs = make_bad(sim)
    with unchanged(sim), pytest.raises(ValueError) as err:
        step(sim, **kwargs)
    check_error(err, *needles)


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("n_obs", [0, 1])
def test_too_few_cells(sim, unchanged, step, n_obs):
    adata = sim[:n_obs].copy()
    with unchanged(adata), pytest.raises(ValueError) as err:
        step(adata)
    check_error(err, f"shape ({n_obs}, {sim.n_vars})")


def test_counts_in_layer_are_found(sim):
    """Not an error: log-normalised X with raw counts in layers["counts"] (the usual scanpy layout)."""
    sim.layers["counts"] = sim.X.copy()
    lognorm(sim)
    biossl.pp.setup(sim)
    assert sim.uns["biossl"]["setup"]["counts"] == "counts"


def test_device_cuda_without_gpu(sim, unchanged):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is available")
    with unchanged(sim), pytest.raises(ValueError) as err:
        biossl.tl.embed(sim, model="vae", device="cuda", max_steps=5)
    check_error(err, "device='cuda'", "no CUDA GPU")


@pytest.mark.parametrize("model", ["nonsense", "VAE", 42])
def test_unknown_model(sim, unchanged, model):
    with unchanged(sim), pytest.raises(ValueError) as err:
        biossl.tl.embed(sim, model=model)
    check_error(err, repr(model), "'vae'")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"n_latent": 0}, "n_latent"), ({"max_steps": 0}, "max_steps"), ({"n_latent": 2.5}, "n_latent")],
    ids=["n_latent=0", "max_steps=0", "n_latent=2.5"],
)
def test_bad_embed_options(sim, unchanged, kwargs, needle):
    with unchanged(sim), pytest.raises(ValueError) as err:
        biossl.tl.embed(sim, model="vae", device="cpu", **kwargs)
    check_error(err, needle, repr(next(iter(kwargs.values()))))


def test_copy_with_return_model(sim, unchanged):
    with unchanged(sim), pytest.raises(ValueError) as err:
        biossl.tl.embed(sim, model="vae", copy=True, return_model=True)
    check_error(err, "copy=True", "return_model=True")


# --- the graph ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _sim_graph(_sim) -> AnnData:
    adata = _sim.copy()
    biossl.tl.embed(adata, model="pca", n_latent=10)
    biossl.tl.neighbors(adata)
    return adata


@pytest.fixture
def sim_graph(_sim_graph) -> AnnData:
    """The simulated data with a PCA latent and the biossl graph (``obs["labels"]``: 5 per type)."""
    return _sim_graph.copy()


def nan_in_rep(a: AnnData) -> dict:
    a.obsm["X_biossl"][0, 0] = np.nan
    return {}


NEIGHBOR_CASES: dict[str, tuple[Callable[[AnnData], dict], list[str]]] = {
    "n_neighbors >= n_cells": (lambda a: {"n_neighbors": a.n_obs}, ["n_neighbors=360", "360 cells"]),
    "n_neighbors < 2": (lambda a: {"n_neighbors": 1}, ["n_neighbors", "1"]),
    "n_neighbors not an integer": (lambda a: {"n_neighbors": 7.5}, ["n_neighbors", "7.5"]),
    "use_rep missing": (lambda a: {"use_rep": "X_scvi"}, ["'X_scvi'"]),
    "NaN in the representation": (nan_in_rep, ["'X_biossl'", "NaN"]),
    "unknown search method": (lambda a: {"method": "annoy"}, ["'annoy'"]),
    "unknown bridges": (lambda a: {"bridges": "bbknn"}, ["bridges", "'bbknn'"]),
}


@pytest.mark.parametrize("case", list(NEIGHBOR_CASES))
def test_bad_neighbors(sim_graph, unchanged, case):
    make_bad, needles = NEIGHBOR_CASES[case]
    kwargs = make_bad(sim_graph)
    with unchanged(sim_graph), pytest.raises(ValueError) as err:
        biossl.tl.neighbors(sim_graph, **kwargs)
    check_error(err, *needles)


def test_neighbors_before_embed(sim, unchanged):
    with unchanged(sim), pytest.raises(ValueError) as err:
        biossl.tl.neighbors(sim)
    check_error(err, "'X_biossl'", "tl.embed")


# --- labels and annotate -----------------------------------------------------------------------------------


def set_labels(a: AnnData, values) -> None:
    a.obs["labels"] = pd.Categorical(np.asarray(values, dtype=object))


def single_class(a: AnnData) -> dict:
    set_labels(a, np.where(np.arange(a.n_obs) < 10, "alpha", None))
    return {}


def no_labels(a: AnnData) -> dict:
    set_labels(a, [None] * a.n_obs)
    return {}


def only_unknown(a: AnnData) -> dict:
    set_labels(a, ["Unknown"] * a.n_obs)
    return {}


def all_labelled(a: AnnData) -> dict:
    a.obs["labels"] = a.obs["cell_type"]
    return {}


def unknown_as_class(a: AnnData) -> dict:
    labels = a.obs["labels"].astype(object).to_numpy()
    labels[np.flatnonzero(pd.isna(labels))[:4]] = "Unknown"
    labels[pd.isna(labels)] = "unlabelled"
    set_labels(a, labels)
    return {"unlabeled_category": "unlabelled"}


def no_graph(a: AnnData) -> dict:
    del a.obsp["biossl_connectivities"], a.obsp["biossl_distances"]
    return {}


ANNOTATE_CASES: dict[str, tuple[Callable[[AnnData], dict], list[str]]] = {
    "missing labels_key": (lambda a: {"labels_key": "celltype"}, ["labels_key='celltype'"]),
    "a single labelled class": (single_class, ["only one labelled class", "'alpha'"]),
    "no labelled cell": (no_labels, ["no labelled cell", "obs['labels']"]),
    "no labelled cell (all Unknown)": (only_unknown, ["no labelled cell", "obs['labels']"]),
    "every cell labelled": (all_labelled, ["every cell", "obs['labels']"]),
    "'Unknown' as a real class": (unknown_as_class, ["'Unknown'", "unlabeled_category"]),
    "annotate before neighbors": (no_graph, ["biossl_connectivities", "tl.neighbors"]),
    "unknown_threshold > 1": (lambda a: {"unknown_threshold": 1.5}, ["unknown_threshold", "1.5"]),
    "unknown_threshold < 0": (lambda a: {"unknown_threshold": -0.1}, ["unknown_threshold", "-0.1"]),
    "alpha = 1": (lambda a: {"alpha": 1.0}, ["alpha", "1.0"]),
    "neighbors_key without a graph": (lambda a: {"neighbors_key": "other"}, ["other_connectivities"]),
}


@pytest.mark.parametrize("case", list(ANNOTATE_CASES))
def test_bad_annotate(sim_graph, unchanged, case):
    make_bad, needles = ANNOTATE_CASES[case]
    kwargs = {"labels_key": "labels", **make_bad(sim_graph)}
    with unchanged(sim_graph), pytest.raises(ValueError) as err:
        biossl.tl.annotate(sim_graph, kwargs.pop("labels_key"), **kwargs)
    check_error(err, *needles)
