"""``tl.gene_function``: rank every gene by how likely it shares the function of a few known genes.

Genes are nodes of a graph built from what the count model learned: the correlation, across cells, of
the model-denoised expression (the decoder's expected expression given each cell's latent). Each gene set
is propagated from its members over the gene kNN graph by solving ``(I - alpha S) F = Y`` (Zhou et al.
2004). The evaluation follows the EGAD protocol (Ballouz et al. 2017, Bioinformatics 33:612) with
neighbour voting on raw co-expression (Gillis & Pavlidis 2011) as the reference; see
:mod:`biossl.metrics` and ``benchmarks/gene_function.py``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import doc_params
from .._record import record, versions
from .._types import GeneGraph, GeneScoring
from ._gene_eval import evaluate_gene_function
from ._gene_graph import (
    build_scorer,
    check_components,
    check_options,
    gene_correlation,
    gene_scorer,
    gene_sets_of,
    graph_genes,
    knn_gene_graph,
    match_genes,
    propagation_scores,
    read_gmt,
    resolve_model,
)

if TYPE_CHECKING:
    from ..model import EmbeddingModel

__all__ = [
    "evaluate_gene_function",
    "gene_correlation",
    "gene_function",
    "gene_scorer",
    "knn_gene_graph",
    "propagation_scores",
    "read_gmt",
]  # the graph and the evaluation live in ._gene_graph and ._gene_eval; named here, where the docs point

logger = logging.getLogger("biossl")


@doc_params
def gene_function(
    adata: AnnData,
    gene_sets: dict[str, list[str]] | str | os.PathLike,
    *,
    model: EmbeddingModel | str | os.PathLike | None = None,
    graph: GeneGraph = "combined",
    n_neighbors: int = 30,
    alpha: float = 0.9,
    remove_components: int | tuple[int, ...] = (0, 3),
    scoring: GeneScoring = "ensemble",
    case_sensitive: bool = False,
    max_steps: int = 3000,
    seed: int = 0,
    key_added: str = "biossl_genes",
    return_table: bool = True,
    copy: bool = False,
) -> pd.DataFrame | AnnData | None:
    """Score every gene for membership of each gene set, propagating from the set's members over a gene graph.

    Genes are nodes; each is joined to its ``n_neighbors`` most correlated genes, by default
    (``graph="combined"``) the mean of two correlations across cells: of the model-denoised expression
    and of raw log-normalised expression (the more robust choice over datasets in
    ``benchmarks/gene_function.py``; see the README). Each set is spread from its members by solving
    ``(I - alpha S) F = Y`` (Zhou et al. 2004); the default ``scoring="ensemble"`` corrects that for hub
    genes and averages two graphs (see ``scoring``). Only genes the model reads are scored (the setup's
    highly variable genes); the others get NaN. Scores are comparable within a set, not across sets.

    Parameters
    ----------
    adata
        Cells × genes with raw counts (see :func:`biossl.pp.setup`). Genes are matched by ``var_names``.
    gene_sets
        ``{name: [gene, ...]}`` or the path of a GMT file (``.gmt`` or ``.gmt.gz``).
    model
        A trained :class:`~biossl.EmbeddingModel` or a saved model directory (e.g. from
        ``tl.embed(adata, model="vae", save_model=DIR)``). With None a VAE is trained here
        (``max_steps``), with a warning.
    graph
        ``"combined"`` (default: mean of denoised and raw correlation), ``"denoised"`` (model-denoised
        expression), ``"loadings"`` (decoder gene loadings) or ``"coexpression"`` (raw log-normalised
        co-expression; needs no model).
    n_neighbors
        Neighbours per gene in the gene graph.
    alpha
        Propagation strength in (0, 1): larger spreads further from the members.
    remove_components
        One gene graph per entry: built after removing this many leading principal components from the
        correlation (see :func:`gene_correlation`); with ``scoring="ensemble"`` the graphs' scores are
        averaged. The default ``(0, 3)`` keeps one graph as is and one without the 3 dominant axes (which in
        cell lines follow the line, not the function).
    scoring
        ``"ensemble"`` (default): for each graph the propagation at ``alpha`` plus the propagation at 0.99 as
        a z-score against random seed sets of the same size (so hub genes get no head start), then a hub
        prior that ranks up hub genes (degree in raw co-expression and in the graph) only for sets whose
        members are hubs. ``"propagation"``: the plain propagation at ``alpha`` on the first graph.
    case_sensitive
        Match gene names exactly; by default names are compared upper-cased (GO symbols are upper case).
    max_steps
        Training budget when no model is given.
    seed
        Seed for training and the cell subset.
    key_added
        Where results go (``varm[key_added]``, ``uns[key_added]``).
    return_table
        Return the tidy table (ignored with ``copy=True``).
    copy
        {copy}

    Returns
    -------
    With ``copy=True`` the modified copy; otherwise the tidy table (columns ``set``, ``gene``, ``score``,
    ``rank`` (1 = best), ``is_member``) of the scored genes, or None with ``return_table=False``. Writes

    ``varm[key_added]``
        Genes × sets scores (NaN for genes outside the graph and for sets with no member in it).
    ``uns[key_added]``
        ``sets`` (set names, the columns of the varm table), per-set ``n_genes``, ``n_members_in_graph``,
        ``n_unknown`` and ``unknown_genes`` (comma-joined names not in ``adata``), and the parameters.
    """
    start = time.perf_counter()
    sets = gene_sets_of(gene_sets)
    check_options(graph, n_neighbors, alpha, scoring)
    components = check_components(remove_components)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}")
    var_index = match_genes(list(adata.var_names.astype(str)), case_sensitive)
    fitted, origin = resolve_model(adata, model, graph=graph, max_steps=max_steps, seed=seed)
    genes = graph_genes(adata, fitted)
    known, summary = _seed_matrix(sets, genes, var_index, case_sensitive)
    _warn_unmatched(sets, genes, summary, key_added)
    scorer, _ = build_scorer(adata, graph, fitted, genes, seed, components, n_neighbors, alpha, scoring)
    scores = scorer(known)
    scores[:, known.sum(0) == 0] = np.nan

    params = {
        "graph": graph,
        "model": origin,
        "n_neighbors": int(n_neighbors),
        "alpha": float(alpha),
        "remove_components": np.asarray(components, dtype=np.int64),
        "scoring": scoring,
        "case_sensitive": bool(case_sensitive),
        "n_graph_genes": len(genes),
        "seed": int(seed),
        "seconds": round(time.perf_counter() - start, 2),
        "versions": versions(),
    }
    out = adata.copy() if copy else adata
    _write_scores(out, key_added, sets, genes, scores, summary, params)
    if copy:
        return out
    return _tidy(sets, genes, scores, known > 0) if return_table else None


def _seed_matrix(sets: dict, genes: list[str], var_index: dict, case_sensitive: bool) -> tuple[np.ndarray, dict]:
    """Genes × sets seed weights (1 / members in the graph) and, per set, what was found of it."""
    graph_index = match_genes(genes, case_sensitive)
    fold = (lambda g: g) if case_sensitive else (lambda g: g.upper())
    known = np.zeros((len(genes), len(sets)))
    summary = {"n_genes": [], "n_members_in_graph": [], "n_unknown": [], "unknown_genes": []}
    for j, members in enumerate(sets.values()):
        keys = list(dict.fromkeys(fold(g) for g in members))
        unknown = [g for g in dict.fromkeys(members) if fold(g) not in var_index]
        in_graph = [graph_index[k] for k in keys if k in graph_index]
        known[in_graph, j] = 1.0 / max(len(in_graph), 1)
        summary["n_genes"].append(len(keys))
        summary["n_members_in_graph"].append(len(in_graph))
        summary["n_unknown"].append(len(unknown))
        summary["unknown_genes"].append(",".join(unknown))
    return known, summary


def _warn_unmatched(sets: dict, genes: list[str], summary: dict, key_added: str) -> None:
    """Fail when no set reaches the graph; warn about members missing from ``adata`` and sets left empty."""
    empty = [name for name, n in zip(sets, summary["n_members_in_graph"], strict=True) if n == 0]
    if len(empty) == len(sets):
        raise ValueError(
            f"no gene set has a member among the {len(genes)} graph genes (e.g. {next(iter(sets))!r}); "
            "check the gene identifiers (symbols vs Ensembl ids) or the organism."
        )
    n_unknown = int(np.sum(summary["n_unknown"]))
    if n_unknown:
        worst = int(np.argmax(summary["n_unknown"]))
        logger.warning(
            "gene_function: %d set member(s) are not genes of adata (e.g. set %r: %s); see uns[%r]['unknown_genes'].",
            n_unknown, list(sets)[worst], summary["unknown_genes"][worst][:80], key_added,
        )  # fmt: skip
    if empty:
        logger.warning(
            "gene_function: %d set(s) have no member in the graph and get NaN, e.g. %r", len(empty), empty[0]
        )


def _write_scores(
    adata: AnnData, key_added: str, sets: dict, genes: list[str], scores: np.ndarray, summary: dict, params: dict
) -> None:
    """``varm[key_added]`` (genes × sets, NaN off the graph), ``uns[key_added]`` and the record."""
    table = np.full((adata.n_vars, len(sets)), np.nan, dtype=np.float32)
    table[adata.var_names.get_indexer(genes)] = scores
    adata.varm[key_added] = table
    adata.uns[key_added] = {
        "sets": np.asarray(list(sets), dtype=object),
        **{k: np.asarray(v, dtype=object if k == "unknown_genes" else np.int64) for k, v in summary.items()},
        "params": params,
    }
    record(adata, "gene_function", {**params, "key_added": key_added})
    logger.info("gene_function: %d sets over %d genes in %.1f s", len(sets), len(genes), params["seconds"])


def _tidy(sets: dict, genes: list[str], scores: np.ndarray, member: np.ndarray) -> pd.DataFrame:
    """Long table: one row per (set, graph gene), ranked within each set (1 = best; ties share the best rank)."""
    n = len(genes)
    frame = pd.DataFrame(
        {
            "set": pd.Categorical(np.repeat(list(sets), n), categories=list(sets)),
            "gene": np.tile(np.asarray(genes, dtype=object), len(sets)),
            "score": scores.T.ravel(),
            "is_member": member.T.ravel(),
        }
    )
    frame["rank"] = frame.groupby("set", observed=True)["score"].rank(ascending=False, method="min").astype("Int64")
    return frame[["set", "gene", "score", "rank", "is_member"]]
