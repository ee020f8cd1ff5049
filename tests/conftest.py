"""Shared fixtures: small real and simulated AnnData, a session-cached embedding, and an "unchanged" check.

Everything expensive (loading pbmc3k, training the VAE) happens once per session; tests get copies.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import biossl

N_SMALL = 600  # pbmc3k cells in the small fixture (all 9 types present, ≥3 Platelets)
TRAIN_STEPS = 100  # VAE budget in unit tests: enough for finite, seeded latents, not for quality


def _few_labels(truth: pd.Series, k: int, seed: int) -> pd.Categorical:
    """``k`` labelled cells per class (via the benchmark protocol), NaN elsewhere."""
    mask = biossl.metrics.fewlabel_split(truth.to_numpy(), k, seed)
    return pd.Categorical(truth.astype(str).where(mask), categories=sorted(set(truth.astype(str))))


@pytest.fixture(scope="session")
def _pbmc_full() -> AnnData:
    return biossl.datasets.pbmc()


@pytest.fixture(scope="session")
def _pbmc_small(_pbmc_full) -> AnnData:
    rng = np.random.default_rng(0)
    adata = _pbmc_full[np.sort(rng.choice(_pbmc_full.n_obs, N_SMALL, replace=False))].copy()
    adata.obs["labels"] = _few_labels(adata.obs["cell_type"], 5, 0)
    return adata


@pytest.fixture
def pbmc_full(_pbmc_full) -> AnnData:
    """All of pbmc3k (2,638 cells × 2,000 genes, counts in X, truth in obs["cell_type"])."""
    return _pbmc_full.copy()


@pytest.fixture
def pbmc_small(_pbmc_small) -> AnnData:
    """600 pbmc3k cells (seed 0), counts in X; ``obs["labels"]``: 5 cells per type labelled, the rest NaN."""
    return _pbmc_small.copy()


def _two_technologies(adata: AnnData, seed: int = 0) -> AnnData:
    """Half the cells re-sampled as another technology: Poisson(count × gene factor × 0.5), 20% of genes absent.

    The recipe of ../shared/data/strong_batch (gene factor exp(N(0, 1))), applied to the shipped pbmc3k.
    """
    rng = np.random.default_rng(seed)
    shift = rng.random(adata.n_obs) < 0.5
    factor = np.exp(rng.normal(0.0, 1.0, adata.n_vars)) * 0.5
    factor[rng.random(adata.n_vars) < 0.2] = 0.0
    X = _resampled(adata.X, np.flatnonzero(shift), factor, rng)
    out = AnnData(X=X, obs=adata.obs[["cell_type"]].copy(), var=adata.var[[]].copy())
    out.obs["batch"] = pd.Categorical(np.where(shift, "tech_B", "tech_A"))
    keep = np.asarray(X.sum(1)).ravel() > 0
    return out[keep].copy()


def cut_off(adata: AnnData, cells: np.ndarray) -> None:
    """Remove every graph edge between ``cells`` and the other cells (connectivities and distances).

    The cells are left as a type without a bridge to the labelled ones can be after a strong shift.
    """
    inside = np.zeros(adata.n_obs, dtype=bool)
    inside[cells] = True
    for key in ("biossl_connectivities", "biossl_distances"):
        M = adata.obsp[key].tocoo()
        keep = inside[M.row] == inside[M.col]
        adata.obsp[key] = sp.csr_matrix((M.data[keep], (M.row[keep], M.col[keep])), shape=M.shape)


def _resampled(X, rows: np.ndarray, factor: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """``X`` (float32 CSR) with the counts of ``rows`` re-sampled as Poisson(count × ``factor`` of their gene)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    B = X[rows].tocoo()
    B.data = rng.poisson(B.data * factor[B.col]).astype(np.float64)
    X = X.tolil()
    X[rows] = sp.csr_matrix(B)
    X = sp.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    return X


@pytest.fixture(scope="session")
def _strong(_pbmc_full) -> AnnData:
    """pbmc3k with half its cells re-sampled as tech_B (:func:`_two_technologies`); tests only read it."""
    return _two_technologies(_pbmc_full)


def simulate(n_per_group: int = 60, n_genes: int = 120, seed: int = 0) -> AnnData:
    """Negative-binomial counts: 3 types × 2 batches, ``n_per_group`` cells each.

    Each type has 15 marker genes at 6× the base rate; each batch multiplies every gene by a log-normal
    factor (sd 0.4), so batches differ clearly but less than types.
    """
    rng = np.random.default_rng(seed)
    types, batches = ["alpha", "beta", "gamma"], ["b1", "b2"]
    cell_type = np.repeat(np.arange(3), 2 * n_per_group)
    batch = np.tile(np.repeat(np.arange(2), n_per_group), 3)
    base = rng.gamma(2.0, 1.0, n_genes)
    type_effect = np.ones((3, n_genes))
    for t in range(3):
        type_effect[t, t * 15 : (t + 1) * 15] = 6.0
    batch_effect = rng.lognormal(0.0, 0.4, (2, n_genes))
    rate = base * type_effect[cell_type] * batch_effect[batch]
    library = rng.lognormal(np.log(1500), 0.3, len(cell_type))
    mu = rate / rate.sum(1, keepdims=True) * library[:, None]
    theta = 5.0
    counts = rng.negative_binomial(theta, theta / (theta + mu)).astype(np.float32)
    assert (counts.sum(1) > 0).all()
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.array(types)[cell_type]),
            "batch": pd.Categorical(np.array(batches)[batch]),
        },
        index=[f"cell{i}" for i in range(len(cell_type))],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    adata = AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.obs["labels"] = _few_labels(adata.obs["cell_type"], 5, 0)
    return adata


@pytest.fixture(scope="session")
def _sim() -> AnnData:
    return simulate()


@pytest.fixture
def sim(_sim) -> AnnData:
    """360 simulated cells × 120 genes: 3 types (obs["cell_type"]), 2 batches (obs["batch"]), CSR float counts.

    ``obs["labels"]``: 5 cells per type labelled, the rest NaN.
    """
    return _sim.copy()


@pytest.fixture(scope="session")
def _pbmc_embedded(_pbmc_small, tmp_path_factory) -> tuple[AnnData, str]:
    adata = _pbmc_small.copy()
    model_dir = tmp_path_factory.mktemp("models") / "pbmc_vae"
    biossl.tl.embed(adata, model="vae", max_steps=TRAIN_STEPS, seed=0, device="cpu", save_model=model_dir)
    biossl.tl.neighbors(adata)
    return adata, str(model_dir)


@pytest.fixture
def pbmc_embedded(_pbmc_embedded) -> AnnData:
    """``pbmc_small`` after ``tl.embed(model="vae", max_steps=100, seed=0)`` and ``tl.neighbors``."""
    return _pbmc_embedded[0].copy()


@pytest.fixture
def pbmc_model_dir(_pbmc_embedded) -> str:
    """Directory of the VAE saved by the ``pbmc_embedded`` run (do not modify: copy it first)."""
    return _pbmc_embedded[1]


def _equal(a, b) -> bool:
    """Deep equality for what AnnData holds (arrays with NaN, sparse matrices, frames, nested dicts)."""
    if sp.issparse(a) or sp.issparse(b):
        if not (sp.issparse(a) and sp.issparse(b)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        return (a != b).nnz == 0 if not np.issubdtype(a.dtype, np.floating) else _equal(a.toarray(), b.toarray())
    if isinstance(a, pd.DataFrame | pd.Series | pd.Index):
        return type(a) is type(b) and a.equals(b) and (not isinstance(a, pd.DataFrame) or a.dtypes.equals(b.dtypes))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, dict) or hasattr(a, "keys"):
        if not hasattr(b, "keys") or set(a.keys()) != set(b.keys()):
            return False
        return all(_equal(a[k], b[k]) for k in a.keys())
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and (a == b or (a != a and b != b))


def snapshot(adata: AnnData) -> dict:
    """Deep copy of everything a biossl step may touch."""
    return {
        "shape": adata.shape,
        "X": copy.deepcopy(adata.X),
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "uns": copy.deepcopy(dict(adata.uns)),
        "obsm": {k: copy.deepcopy(v) for k, v in adata.obsm.items()},
        "obsp": {k: copy.deepcopy(v) for k, v in adata.obsp.items()},
        "layers": {k: copy.deepcopy(v) for k, v in adata.layers.items()},
    }


def _plain(obj):
    """Nested dicts of plain Python values (what h5ad stores as arrays and numpy scalars comes back as lists)."""
    if hasattr(obj, "keys"):
        return {k: _plain(obj[k]) for k in obj.keys()}
    if isinstance(obj, np.ndarray | list | tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def assert_same(adata: AnnData, before: dict, *, exact_uns: bool = True) -> None:
    """Fail naming the first part of ``adata`` that differs from ``before``."""
    after = snapshot(adata)
    for part in before:
        if part == "uns" and not exact_uns:
            assert _plain(before[part]) == _plain(after[part]), "adata.uns differs"
        else:
            assert _equal(before[part], after[part]), f"adata.{part} was changed"


@pytest.fixture
def unchanged():
    """Context manager: ``with unchanged(adata): ...`` fails if the block changed ``adata`` in any way."""

    @contextlib.contextmanager
    def check(adata: AnnData):
        before = snapshot(adata)
        yield
        assert_same(adata, before)

    return check


@pytest.fixture
def same_as():
    """``same_as(a, b)``: assert two AnnData hold equal X, obs, var, uns, obsm, obsp and layers.

    ``exact_uns=False`` compares ``uns`` as plain Python values (lists vs arrays, numpy vs Python scalars).
    """

    def check(a: AnnData, b: AnnData, *, exact_uns: bool = True) -> None:
        assert_same(a, snapshot(b), exact_uns=exact_uns)

    return check


@pytest.fixture(scope="session")
def _pbmc_graph() -> AnnData:
    """All of pbmc3k (example data) with the default PCA latent and graph, built once per session."""
    adata = biossl.datasets.pbmc()
    biossl.pp.setup(adata)
    biossl.tl.embed(adata, model="pca", seed=0)
    biossl.tl.neighbors(adata)
    return adata


@pytest.fixture
def pbmc_graph(_pbmc_graph) -> AnnData:
    """A fresh copy of :func:`_pbmc_graph`; truth in ``obs["cell_type"]``."""
    return _pbmc_graph.copy()
