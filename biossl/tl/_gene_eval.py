"""EGAD evaluation of ``tl.gene_function`` against neighbour voting, node degree and random, on the same folds.

The protocol follows Ballouz et al. 2017 (Bioinformatics 33:612); see :mod:`biossl.metrics` and
``benchmarks/gene_function.py``. Used by ``biossl genes --evaluate`` and the benchmark.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._types import GeneGraph, GeneScoring
from ._gene_graph import (
    build_scorer,
    check_components,
    check_options,
    gene_sets_of,
    graph_genes,
    match_genes,
    resolve_model,
)

if TYPE_CHECKING:
    from ..model import EmbeddingModel


def evaluate_gene_function(
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
    min_size: int = 20,
    max_size: int = 1000,
    n_folds: int = 3,
    few_seeds: tuple[int, ...] = (3, 5, 10, 20),
    n_repeats: int = 3,
    max_steps: int = 3000,
    seed: int = 0,
    key_added: str | None = "biossl_genes_eval",
) -> dict:
    """EGAD evaluation of :func:`gene_function` against neighbour voting, node degree and random, same folds.

    Parameters
    ----------
    adata
        Cells × genes counts.
    gene_sets
        Dict or GMT path (e.g. GO BP).
    model, graph, n_neighbors, alpha, remove_components, scoring, case_sensitive, max_steps, seed
        As for :func:`gene_function`.
    min_size, max_size
        Sets are scored when this many of their genes are graph genes (EGAD: 20–1000).
    n_folds
        Cross-validation folds over each set's members.
    few_seeds
        Seed-set sizes of the few-seed mode (AUROC over the set's other members).
    n_repeats
        Random seed sets per set and size in the few-seed mode.
    key_added
        Also store the summary, mean ROC curves and few-seed curve in ``adata.uns[key_added]`` (for
        :func:`biossl.pl.gene_function_roc`); None leaves ``adata`` untouched.

    Returns
    -------
    A dict: ``terms`` (DataFrame, one row per set: ``set``, ``n_genes`` and the AUROC of each method),
    ``summary`` (per method: mean AUROC, and for ours the paired Wilcoxon p-value against neighbour
    voting, the fraction of sets won against it and against node degree), ``few_seed`` (mean AUROC per
    method and seed size), ``roc`` (``fpr`` and per-method mean ``tpr``) and ``seconds``. Methods:
    ``biossl``, ``neighbor_voting`` (raw co-expression, rank-standardised), ``node_degree`` (degree in that
    network), ``node_degree_graph`` (degree in biossl's own gene graph, EGAD's reading) and ``random``.
    """
    from .. import metrics

    start = time.perf_counter()
    sets = gene_sets_of(gene_sets)
    check_options(graph, n_neighbors, alpha, scoring)
    components = check_components(remove_components)
    fitted, origin = resolve_model(adata, model, graph=graph, max_steps=max_steps, seed=seed)
    t_model = time.perf_counter() - start
    genes = graph_genes(adata, fitted)
    membership, names = _membership(sets, genes, case_sensitive, min_size, max_size)
    ours, raw = build_scorer(adata, graph, fitted, genes, seed, components, n_neighbors, alpha, scoring, need_raw=True)
    methods = _methods(ours, metrics.rank_standardize(raw), seed)
    tasks = metrics.egad_folds(membership, n_folds=n_folds, seed=seed)
    terms, timing = _cross_validate(methods, membership, names, tasks)
    few = _few_seed(methods, membership, few_seeds, n_repeats, seed)
    summary = _summarise(terms, list(methods))
    roc = {}
    for name, predict in methods.items():
        fpr, roc[name] = metrics.mean_roc(predict, membership, tasks)
    if key_added is not None:
        adata.uns[key_added] = {
            "summary": summary,
            "fpr": fpr,
            "tpr": roc,
            "few_seed": {
                "n_seeds": np.asarray(list(few), dtype=np.int64),
                **{name: np.asarray([few[n][name] for n in few]) for name in methods},
            },
            "n_terms": len(names),
            "n_graph_genes": len(genes),
        }
    return {
        "terms": terms,
        "summary": summary,
        "few_seed": few,
        "roc": {"fpr": fpr, "tpr": roc},
        "n_terms": len(names),
        "n_graph_genes": len(genes),
        "params": {
            "graph": graph,
            "model": origin,
            "n_neighbors": int(n_neighbors),
            "alpha": float(alpha),
            "remove_components": list(components),
            "scoring": scoring,
            "min_size": int(min_size),
            "max_size": int(max_size),
            "n_folds": int(n_folds),
            "few_seeds": [int(s) for s in few_seeds],
            "n_repeats": int(n_repeats),
            "seed": int(seed),
        },
        "seconds": {"model": round(t_model, 2), **timing, "total": round(time.perf_counter() - start, 2)},
    }


def _membership(
    sets: dict, genes: list[str], case_sensitive: bool, min_size: int, max_size: int
) -> tuple[np.ndarray, list[str]]:
    """Graph genes × scored sets (0/1) and the sets' names: sets with ``min_size``-``max_size`` graph genes."""
    from .. import metrics

    match_genes(genes, case_sensitive)
    fold = (lambda g: g) if case_sensitive else (lambda g: g.upper())
    folded_sets = {name: {fold(g) for g in members} for name, members in sets.items()}
    membership, names = metrics.gene_set_matrix(
        folded_sets, [fold(g) for g in genes], min_size=min_size, max_size=max_size
    )
    if not names:
        raise ValueError(
            f"no gene set has {min_size}-{max_size} members among the {len(genes)} graph genes; check the gene "
            "identifiers (symbols vs Ensembl ids) or the organism."
        )
    return membership, names


def _methods(ours, raw: np.ndarray, seed: int) -> dict:
    """The scorers: biossl, neighbour voting and node degree on ``raw`` co-expression, its own degree, random."""
    from .. import metrics

    return {
        "biossl": ours,
        "neighbor_voting": lambda y: metrics.neighbor_voting(raw, y),
        "node_degree": lambda y: metrics.node_degree_scores(raw, y),
        "node_degree_graph": lambda y: metrics.node_degree_scores(ours.W.toarray(), y),
        "random": lambda y: metrics.random_scores(y, seed=seed),
    }


def _cross_validate(methods: dict, membership: np.ndarray, names: list[str], tasks) -> tuple[pd.DataFrame, dict]:
    """Per set, the cross-validated AUROC of every method (and the seconds each took)."""
    from .. import metrics

    terms = pd.DataFrame({"set": names, "n_genes": membership.sum(0)})
    timing = {}
    for name, predict in methods.items():
        t0 = time.perf_counter()
        terms[name] = metrics.egad(predict, membership, tasks=tasks)
        timing[name] = round(time.perf_counter() - t0, 2)
    return terms, timing


def _few_seed(methods: dict, membership: np.ndarray, few_seeds, n_repeats: int, seed: int) -> dict:
    """Mean AUROC of every method per seed-set size, over random seed sets of each set's members."""
    from .. import metrics

    few = {}
    for n_seed in few_seeds:
        keep = membership.sum(0) > n_seed
        if not keep.any():  # no set has genes left to find with this many seeds
            continue
        sub = membership[:, keep]
        few_tasks = metrics.few_seed_tasks(sub, n_seed, n_repeats=n_repeats, seed=seed)
        few[int(n_seed)] = {
            name: float(np.nanmean(metrics.egad(p, sub, tasks=few_tasks))) for name, p in methods.items()
        }
    return few


def _summarise(terms: pd.DataFrame, methods: list[str]) -> dict:
    """Mean AUROC per method, the share of sets each beats the baselines on, biossl's paired test and margin."""
    from scipy.stats import wilcoxon

    diff = terms["biossl"] - terms["neighbor_voting"]
    p_value = float(wilcoxon(terms["biossl"], terms["neighbor_voting"]).pvalue) if (diff != 0).any() else 1.0
    summary = {name: {"mean_auroc": float(terms[name].mean())} for name in methods}
    for name in methods:
        if name != "neighbor_voting":
            summary[name]["frac_terms_beating_neighbor_voting"] = float((terms[name] > terms["neighbor_voting"]).mean())
        if name != "node_degree":
            summary[name]["frac_terms_beating_node_degree"] = float((terms[name] > terms["node_degree"]).mean())
    summary["biossl"]["frac_terms_beating_node_degree_graph"] = float(
        (terms["biossl"] > terms["node_degree_graph"]).mean()
    )
    summary["biossl"]["wilcoxon_p_vs_neighbor_voting"] = p_value
    summary["biossl"]["delta_vs_neighbor_voting"] = float(diff.mean())
    return summary
