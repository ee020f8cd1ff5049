"""The gene graph of ``tl.gene_function``: gene sets in, gene-gene correlations, kNN graphs and set propagation.

Correlations come from the count model (the model-denoised expression, the decoder loadings) or raw
co-expression; each gene set is propagated over the gene kNN graph by solving ``(I - alpha S) F = Y``
(Zhou et al. 2004). :func:`build_scorer` assembles what :func:`biossl.tl.gene_function` and
:func:`biossl.tl.genes.evaluate_gene_function` score with.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._types import GeneGraph, GeneScoring
from ..pp import check_batch, counts_matrix, ensure_setup

if TYPE_CHECKING:
    from ..model import EmbeddingModel

logger = logging.getLogger("biossl")

GRAPHS = ("combined", "denoised", "loadings", "coexpression")
SCORINGS = ("ensemble", "propagation")
DENSE_MAX_GENES = 8000  # above this the propagation uses sparse CG per set instead of one dense factorisation


# ---------------------------------------------------------------------------------------------------------------
# gene sets


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a GMT file (``name<TAB>description<TAB>gene<TAB>gene...``; ``.gz`` allowed) into {name: genes}.

    Raises ValueError naming the file and line when a line has no genes or a name repeats.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"gene-set file {str(path)!r} does not exist (expected a GMT file).")
    opener = gzip.open if path.suffix == ".gz" else open
    sets: dict[str, list[str]] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                fields = [f.strip() for f in line.rstrip("\r\n").split("\t")]
                if not any(fields):
                    continue
                if len(fields) < 3 or not fields[0]:
                    raise ValueError(
                        f"{str(path)!r} line {lineno} is not GMT (name, description and genes separated by tabs)."
                    )
                if fields[0] in sets:
                    raise ValueError(f"{str(path)!r} line {lineno}: gene set {fields[0]!r} appears twice.")
                genes = [g for g in fields[2:] if g]
                if not genes:
                    raise ValueError(f"{str(path)!r} line {lineno}: gene set {fields[0]!r} has no genes.")
                sets[fields[0]] = genes
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"cannot read {str(path)!r} as a GMT text file ({type(err).__name__}).") from None
    if not sets:
        raise ValueError(f"{str(path)!r} holds no gene sets.")
    return sets


def gene_sets_of(gene_sets) -> dict[str, list[str]]:
    """Validate a {name: genes} dict or read a GMT path."""
    if isinstance(gene_sets, str | os.PathLike):
        return read_gmt(gene_sets)
    if not isinstance(gene_sets, dict) or not gene_sets:
        raise ValueError(
            f"gene_sets must be a non-empty dict {{name: [genes]}} or a GMT file path, got {type(gene_sets).__name__}."
        )
    out = {}
    for name, genes in gene_sets.items():
        if isinstance(genes, str) or not hasattr(genes, "__iter__"):
            raise ValueError(f"gene set {name!r} must be a list of gene names, got {type(genes).__name__}.")
        genes = [str(g) for g in genes]
        if not genes:
            raise ValueError(f"gene set {name!r} is empty.")
        out[str(name)] = genes
    return out


def match_genes(names, case_sensitive: bool) -> dict[str, int]:
    """Lookup from (optionally upper-cased) gene name to position; fails on names equal after case folding."""
    keys = [str(g) if case_sensitive else str(g).upper() for g in names]
    index: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in index:
            raise ValueError(
                f"genes {names[index[k]]!r} and {names[i]!r} are the same name ignoring case; pass case_sensitive=True."
            )
        index[k] = i
    return index


# ---------------------------------------------------------------------------------------------------------------
# the gene graph


def _corr(M: np.ndarray) -> np.ndarray:
    """Pearson correlation between the columns of ``M`` (constant columns correlate 0 with everything)."""
    M = np.asarray(M, dtype=np.float64)
    M = M - M.mean(0)
    norm = np.linalg.norm(M, axis=0)
    M = M / np.where(norm > 0, norm, 1.0)
    C = M.T @ M
    np.fill_diagonal(C, 1.0)
    return C


def gene_correlation(
    adata: AnnData,
    *,
    graph: GeneGraph = "combined",
    model: EmbeddingModel | None = None,
    genes: list[str] | None = None,
    max_cells: int = 20_000,
    seed: int = 0,
    remove_components: int = 0,
) -> np.ndarray:
    """Genes × genes correlation used to build the gene graph.

    Parameters
    ----------
    adata
        Cells × genes counts (found as :func:`biossl.pp.setup` does).
    graph
        ``"combined"``: the mean of the ``"denoised"`` and ``"coexpression"`` correlations;
        ``"denoised"``: correlation across cells of the model-denoised log expression;
        ``"loadings"``: correlation of the decoder's gene loadings (no cells needed);
        ``"coexpression"``: correlation of raw log-normalised expression (no model).
    model
        The trained model (required unless ``graph="coexpression"``).
    genes
        Genes (``var_names``) to correlate, in order; default: the model's genes in ``adata`` (the setup's
        genes without a model).
    max_cells
        Cells used at most (a seeded random subset above this).
    seed
        Seed of the cell subset.
    remove_components
        Remove this many leading principal components from the correlation (from each of the two before
        ``"combined"`` averages them): co-expression that only follows the dominant axes of the data (e.g.
        which cell line a cell comes from) is taken out, as in Parsana et al. 2019 (Genome Biol 20:94).

    Returns
    -------
    The correlation matrix, in the order of ``genes``.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if graph != "coexpression" and model is None:
        raise ValueError(f"graph={graph!r} needs a trained model; pass model= or use graph='coexpression'.")
    check_components((remove_components,))
    genes = graph_genes(adata, model) if genes is None else list(genes)
    if remove_components or graph == "combined":
        correlations, _ = _graph_correlations(
            adata, graph=graph, model=model, genes=genes, max_cells=max_cells, seed=seed,
            remove_components=(remove_components,),
        )  # fmt: skip
        return correlations[0]
    if graph == "loadings":
        pos = {g: i for i, g in enumerate(model.genes)}
        return _corr(model.gene_loadings()[[pos[g] for g in genes]].T)
    _, setup_params, _ = ensure_setup(adata)
    rows = np.arange(adata.n_obs)
    if adata.n_obs > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
    if graph == "coexpression":
        counts = counts_matrix(adata, setup_params["counts"])
        lib = np.asarray(counts[rows].sum(1)).ravel()
        cols = adata.var_names.get_indexer(genes)
        sub = sp.csr_matrix(counts[rows][:, cols], dtype=np.float64)
        # normalise by each cell's total over all genes, as sc.pp.normalize_total would
        sub = sp.diags(1e4 / np.where(lib > 0, lib, 1.0)) @ sub
        sub.data = np.log1p(sub.data)
        return _corr(sub.toarray())
    from ..model import align_genes
    from ..model.denoise import denoised_log_expression

    X, _, _ = align_genes(adata[rows], model.genes, counts=setup_params["counts"])
    batch_key = setup_params.get("batch_key")
    batch = check_batch(adata, batch_key) if batch_key and model.batches else None
    codes = model.batch_codes(None if batch is None else batch.iloc[rows], len(rows))
    D = denoised_log_expression(model, X, codes)
    pos = {g: i for i, g in enumerate(model.genes)}
    return _corr(D[:, [pos[g] for g in genes]])


def _remove_components(C: np.ndarray, r: int) -> np.ndarray:
    """Correlation left after removing the ``r`` leading principal components (rescaled to unit diagonal)."""
    if r == 0:
        return C
    from scipy.linalg import eigh

    n = C.shape[0]
    if r >= n - 1:
        raise ValueError(f"remove_components={r} leaves nothing of a graph of {n} genes; use fewer than {n - 1}.")
    w, V = eigh(C, subset_by_index=[n - r, n - 1])
    R = C - (V * w) @ V.T
    scale = np.sqrt(np.clip(np.diag(R), 1e-12, None))
    R = R / scale[:, None] / scale[None, :]
    np.fill_diagonal(R, 1.0)
    return R


def _graph_correlations(
    adata, *, graph, model, genes, seed, remove_components, max_cells: int = 20_000
) -> tuple[list, np.ndarray | None]:
    """One correlation per entry of ``remove_components`` (the base correlations computed once).

    ``"combined"`` removes the components from the denoised and the raw correlation, then averages them.
    Also returns the raw co-expression correlation when it was computed on the way (``graph="combined"`` or
    ``"coexpression"``), else None.
    """
    kwargs = {"genes": genes, "max_cells": max_cells, "seed": seed}
    if graph == "combined":
        den = gene_correlation(adata, graph="denoised", model=model, **kwargs)
        raw = gene_correlation(adata, graph="coexpression", **kwargs)
        return [(_remove_components(den, r) + _remove_components(raw, r)) / 2 for r in remove_components], raw
    C = gene_correlation(adata, graph=graph, model=model, **kwargs)
    return [_remove_components(C, r) for r in remove_components], C if graph == "coexpression" else None


def knn_gene_graph(C: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """Symmetric kNN graph of genes: each gene's ``n_neighbors`` most correlated genes, weight max(r, 0)."""
    n = C.shape[0]
    k = int(min(n_neighbors, n - 1))
    C = np.array(C, dtype=np.float64)
    np.fill_diagonal(C, -np.inf)
    idx = np.argpartition(-C, k - 1, axis=1)[:, :k]
    w = np.clip(np.take_along_axis(C, idx, 1), 0.0, None)
    W = sp.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    W = W.maximum(W.T).tocsr()
    W.eliminate_zeros()
    return W


class Propagator:
    """``known -> (I - alpha S)^-1 known`` on a gene graph, factorised once for many gene sets."""

    def __init__(self, W: sp.csr_matrix, alpha: float):
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self.W, self.alpha = W, alpha
        self.factor = None
        if W.shape[0] <= DENSE_MAX_GENES:
            from scipy.linalg import cho_factor

            d = np.asarray(W.sum(1)).ravel()
            inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
            S = (sp.diags(inv) @ W @ sp.diags(inv)).toarray()
            self.factor = cho_factor(np.eye(W.shape[0]) - alpha * S)

    def __call__(self, known: np.ndarray) -> np.ndarray:
        known = np.asarray(known, dtype=np.float64)
        if self.factor is not None:
            from scipy.linalg import cho_solve

            return cho_solve(self.factor, known)
        from ..graph import propagate

        return propagate(self.W, known, alpha=self.alpha)


def propagation_scores(C: np.ndarray, *, n_neighbors: int = 30, alpha: float = 0.9):
    """A scorer for gene sets on correlation ``C``: call it with a genes × sets 0/1 matrix of known members.

    Builds :func:`knn_gene_graph` and factorises ``I - alpha S`` once (``S`` the symmetrically normalised
    graph), so scoring many sets (or EGAD folds) costs one triangular solve each.
    """
    return Propagator(knn_gene_graph(C, n_neighbors), alpha)


def _standardize_columns(F: np.ndarray) -> np.ndarray:
    sd = F.std(0)
    return (F - F.mean(0)) / np.where(sd > 0, sd, 1.0)


def _zscore(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


class NullPropagator:
    """Propagation at ``alpha`` as a z-score against seed sets drawn at random (of the same size).

    With ``P = (I - alpha S)^-1`` a set of ``m`` random seeds gives gene ``i`` the score ``sum_j P_ij`` over
    the seeds, of mean ``m mu_i`` and standard deviation about ``sqrt(m) sd_i`` (``mu_i``, ``sd_i`` the mean
    and spread of row ``i`` of ``P``). Hub genes, which every propagation reaches, lose their head start.
    Needs ``P`` whole, so only graphs up to ``DENSE_MAX_GENES`` genes get the spread; above that the
    mean is subtracted (one extra solve) and the spread left at 1.
    """

    def __init__(self, W: sp.csr_matrix, alpha: float):
        self.prop = Propagator(W, alpha)
        n = W.shape[0]
        if self.prop.factor is not None:
            P = self.prop(np.eye(n))
            self.mu, self.sd = P.mean(1), P.std(1)
        else:
            self.mu, self.sd = self.prop(np.full((n, 1), 1.0 / n))[:, 0], np.ones(n)
        self.sd = np.where(self.sd > 0, self.sd, 1.0)

    def __call__(self, known: np.ndarray) -> np.ndarray:
        known = np.asarray(known, dtype=np.float64)
        return (self.prop(known) - self.mu[:, None] * known.sum(0)) / self.sd[:, None]


class GeneScorer:
    """The default scorer of :func:`gene_function` (``scoring="ensemble"``), for several gene graphs.

    For each graph: the propagation at ``alpha`` plus the null-standardised propagation at 0.99
    (:class:`NullPropagator`), each standardised over genes; averaged over the graphs. Then the hub
    prior: for each degree vector ``g`` (standardised over genes), ``max(0, mean of g over the seeds) * g``
    is added, so hub genes are ranked up only for sets whose known members are themselves hubs. ``W`` is
    the mean of the graphs (for the node-degree baseline of the evaluation).
    """

    NULL_ALPHA = 0.99

    def __init__(self, graphs: list[sp.csr_matrix], alpha: float, degrees: list[np.ndarray]):
        self.parts = [(Propagator(W, alpha), NullPropagator(W, self.NULL_ALPHA)) for W in graphs]
        self.W = sum(graphs[1:], graphs[0]) / len(graphs)
        self.degrees = [_zscore(np.asarray(d, dtype=np.float64)) for d in degrees]

    def __call__(self, known: np.ndarray) -> np.ndarray:
        known = np.asarray(known, dtype=np.float64)
        F = sum(_standardize_columns(p(known)) + _standardize_columns(z(known)) for p, z in self.parts)
        F = F / len(self.parts)
        size = np.maximum(known.sum(0), 1e-12)
        for g in self.degrees:
            F = F + np.clip((g @ known) / size, 0.0, None)[None, :] * g[:, None]
        return F


def gene_scorer(
    correlations: list[np.ndarray],
    *,
    n_neighbors: int = 30,
    alpha: float = 0.9,
    scoring: GeneScoring = "ensemble",
    coexpression: np.ndarray | None = None,
):
    """The scorer :func:`gene_function` uses: call it with a genes × sets matrix of known members (0/1 or weights).

    ``correlations`` are the graph correlations (one kNN graph each, e.g. from :func:`gene_correlation`
    with different ``remove_components``). ``scoring="propagation"`` is the plain propagation on the first
    graph (:func:`propagation_scores`); ``"ensemble"`` is described in :class:`GeneScorer`, its hub prior
    using the degree of each gene in the rank-standardised ``coexpression`` network (when given) and in
    the gene graph. The returned scorer has ``W``, the gene graph.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    graphs = [knn_gene_graph(C, n_neighbors) for C in correlations]
    if scoring == "propagation":
        return Propagator(graphs[0], alpha)
    W = sum(graphs[1:], graphs[0]) / len(graphs)
    degrees = [np.asarray(W.sum(1)).ravel()]
    if coexpression is not None:
        from ..metrics import rank_standardize

        degrees.insert(0, rank_standardize(coexpression).sum(1))
    return GeneScorer(graphs, alpha, degrees)


# ---------------------------------------------------------------------------------------------------------------
# the model


def resolve_model(adata: AnnData, model, *, graph: str, max_steps: int, seed: int):
    """The model to use and a note on where it came from (trained here when none is given)."""
    from ..model import EmbeddingModel

    if graph == "coexpression":
        return None, "none (graph='coexpression')"
    if isinstance(model, EmbeddingModel):
        return model, "given"
    if model is not None:
        if not isinstance(model, str | os.PathLike) or not os.path.isdir(model):
            raise ValueError(
                f"model must be an EmbeddingModel, a saved model directory or None, got {model!r}"
                " (a directory that does not exist?)."
            )
        return EmbeddingModel.load(model), f"loaded from {os.fspath(model)}"
    from ..model import align_genes

    mask, setup_params, _ = ensure_setup(adata)
    genes = [str(g) for g in adata.var_names[mask]]
    counts, _, _ = align_genes(adata, genes, counts=setup_params["counts"])
    batch = check_batch(adata, setup_params.get("batch_key"))
    logger.warning(
        "gene_function: no model given; training a VAE on %d genes (%d steps). Pass model= (e.g. the one saved "
        "by tl.embed(save_model=...)) to reuse one.",
        len(genes),
        max_steps,
    )
    fitted = EmbeddingModel.fit(
        counts, genes, batch, model="vae", n_latent=20, max_steps=max_steps, seed=seed, device="cpu"
    )
    return fitted, f"trained here (vae, {fitted.config['training']['steps']} steps)"


def graph_genes(adata: AnnData, model) -> list[str]:
    """Genes that are nodes of the graph: the model's genes present in ``adata`` (or the setup's genes)."""
    if model is None:
        mask, _, _ = ensure_setup(adata)
        return [str(g) for g in adata.var_names[mask]]
    present = set(adata.var_names.astype(str))
    genes = [g for g in model.genes if g in present]
    if len(genes) < 2:
        raise ValueError(
            f"only {len(genes)} of the model's {len(model.genes)} genes are in adata.var_names; "
            "is this the data the model was trained on?"
        )
    return genes


def check_components(remove_components) -> tuple[int, ...]:
    if isinstance(remove_components, int | np.integer) and not isinstance(remove_components, bool):
        remove_components = (remove_components,)
    try:
        values = tuple(remove_components)
    except TypeError:
        values = ()
    if not values or not all(isinstance(r, int | np.integer) and not isinstance(r, bool) and r >= 0 for r in values):
        raise ValueError(
            f"remove_components must be an integer >= 0 or a non-empty tuple of them, got {remove_components!r}"
        )
    return tuple(int(r) for r in values)


def check_options(graph: str, n_neighbors: int, alpha: float, scoring: str = "ensemble") -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if not isinstance(n_neighbors, int | np.integer) or isinstance(n_neighbors, bool) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be an integer >= 1, got {n_neighbors!r}")
    if not isinstance(alpha, float | int) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")


def build_scorer(adata, graph, model, genes, seed, components, n_neighbors, alpha, scoring, *, need_raw: bool = False):
    """Build the gene graph(s) and the scorer, and return it with the raw co-expression correlation.

    The raw correlation is computed when the graph holds it anyway, when ``scoring="ensemble"`` needs it (hub
    prior) or when ``need_raw`` (the evaluation's baselines); else it is None.
    """
    if scoring == "propagation":
        components = components[:1]
    correlations, raw = _graph_correlations(
        adata, graph=graph, model=model, genes=genes, seed=seed, remove_components=components
    )
    if raw is None and (scoring == "ensemble" or need_raw):
        raw = gene_correlation(adata, graph="coexpression", genes=genes, seed=seed)
    hub = raw if scoring == "ensemble" else None
    return gene_scorer(correlations, n_neighbors=n_neighbors, alpha=alpha, scoring=scoring, coexpression=hub), raw
