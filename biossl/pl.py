"""Plots (matplotlib): UMAP of predicted labels, confidence and suggested cells; label-budget curve; reliability."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData

__all__ = ["annotation", "budget_curve", "gene_function_roc", "reliability", "suggestions"]


def _umap(adata: AnnData, neighbors_key: str) -> np.ndarray:
    """``obsm["X_umap"]``, computed from the biossl graph when missing (written into ``adata``).

    A query mapped by :func:`biossl.tl.map_query` has its latent but no graph: the graph is built on it first
    (:func:`biossl.tl.neighbors`, written into ``adata`` too).
    """
    if "X_umap" not in adata.obsm:
        import scanpy as sc

        if f"{neighbors_key}_neighbors" not in adata.uns and neighbors_key == "biossl" and "X_biossl" in adata.obsm:
            from .tl import neighbors

            neighbors(adata)
        if f"{neighbors_key}_neighbors" not in adata.uns:
            raise ValueError(f"no uns[{neighbors_key + '_neighbors'!r}]; run biossl.tl.neighbors(adata) first.")
        sc.tl.umap(adata, neighbors_key=f"{neighbors_key}_neighbors", random_state=0)
    return np.asarray(adata.obsm["X_umap"])


def annotation(
    adata: AnnData,
    *,
    key: str = "biossl",
    neighbors_key: str = "biossl",
    save: str | os.PathLike | None = None,
    show: bool | None = None,
):
    """Two UMAP panels: the predicted label and its confidence.

    Parameters
    ----------
    adata
        Annotated data after :func:`biossl.tl.annotate`.
    key
        Prefix used by ``annotate`` (reads ``obs["{key}_label"]`` and ``obs["{key}_confidence"]``).
    neighbors_key
        Graph used to compute ``obsm["X_umap"]`` when it is missing. A query annotated by
        :func:`biossl.tl.map_query` has no graph yet: with the default key it is built on ``obsm["X_biossl"]``
        (:func:`biossl.tl.neighbors`) and written into ``adata``.
    save
        Write the figure to this path (PNG, PDF, SVG by extension), atomically.
    show
        Show the figure (default: only when not saving).

    Returns
    -------
    The matplotlib figure. Writes ``obsm["X_umap"]`` if it was missing.
    """
    import matplotlib

    if save is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    for col in (f"{key}_label", f"{key}_confidence"):
        if col not in adata.obs:
            raise ValueError(f"obs[{col!r}] not found; run biossl.tl.annotate(adata, ...) first.")
    xy = _umap(adata, neighbors_key)
    labels = adata.obs[f"{key}_label"].astype("category")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    cmap = plt.get_cmap("tab20")
    for i, cat in enumerate(labels.cat.categories):
        sel = (labels == cat).to_numpy()
        color = "lightgrey" if cat == "Unknown" else cmap(i % 20)
        axes[0].scatter(xy[sel, 0], xy[sel, 1], s=4, color=color, label=f"{cat} ({sel.sum()})", rasterized=True)
    axes[0].legend(markerscale=3, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[0].set_title("predicted label")
    sc_ = axes[1].scatter(
        xy[:, 0], xy[:, 1], s=4, c=adata.obs[f"{key}_confidence"], cmap="viridis", vmin=0, vmax=1, rasterized=True
    )
    fig.colorbar(sc_, ax=axes[1], label="confidence")
    axes[1].set_title("confidence")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
    if save is not None:
        save_figure(fig, save)
    if show or (show is None and save is None):
        plt.show()
    return fig


def _finish(fig, save, show):
    """Save (atomically) and/or show a figure, as :func:`annotation` does."""
    import matplotlib.pyplot as plt

    if save is not None:
        save_figure(fig, save)
    if show or (show is None and save is None):
        plt.show()
    return fig


def _pyplot(save):
    import matplotlib

    if save is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def suggestions(
    adata: AnnData,
    *,
    key: str = "biossl_suggest",
    label_key: str = "biossl_label",
    neighbors_key: str = "biossl",
    save: str | os.PathLike | None = None,
    show: bool | None = None,
):
    """UMAP with the cells :func:`biossl.tl.suggest_labels` asks to label next, numbered by rank.

    Parameters
    ----------
    adata
        Annotated data after ``tl.suggest_labels``.
    key
        ``obs`` column with the suggestion ranks (NaN = not suggested).
    label_key
        ``obs`` column to colour the other cells by (e.g. the predicted label); None for grey.
    neighbors_key
        Graph used to compute ``obsm["X_umap"]`` when it is missing.
    save, show
        As in :func:`annotation`.

    Returns
    -------
    The matplotlib figure. Writes ``obsm["X_umap"]`` if it was missing.
    """
    plt = _pyplot(save)
    if key not in adata.obs:
        raise ValueError(f"obs[{key!r}] not found; run biossl.tl.suggest_labels(adata, n, labels_key=...) first.")
    xy = _umap(adata, neighbors_key)
    rank = adata.obs[key].to_numpy(dtype=float)
    picked = np.flatnonzero(np.isfinite(rank))
    fig, ax = plt.subplots(figsize=(7, 5.5), constrained_layout=True)
    if label_key is not None and label_key in adata.obs:
        labels = adata.obs[label_key].astype("category")
        cmap = plt.get_cmap("tab20")
        for i, cat in enumerate(labels.cat.categories):
            sel = (labels == cat).to_numpy()
            color = "lightgrey" if cat == "Unknown" else cmap(i % 20)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, color=color, alpha=0.35, label=str(cat), rasterized=True)
        ax.legend(markerscale=3, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, color="lightgrey", rasterized=True)
    ax.scatter(xy[picked, 0], xy[picked, 1], s=60, facecolor="none", edgecolor="black", linewidth=1.2)
    for i in picked:
        ax.annotate(str(int(rank[i])), xy[i], xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.set_title(f"{len(picked)} cells to label next (1 = first)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    return _finish(fig, save, show)


def reliability(
    adata: AnnData,
    truth_key: str,
    *,
    key: str = "biossl",
    n_bins: int = 15,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
):
    """Reliability diagram: accuracy against confidence on the cells ``annotate`` had no label for.

    Parameters
    ----------
    adata
        Annotated data after :func:`biossl.tl.annotate`.
    truth_key
        ``obs`` column with true labels (cells with NaN truth are skipped).
    key
        Prefix used by ``annotate``.
    n_bins
        Equal-width confidence bins (15, as :func:`biossl.metrics.expected_calibration_error`).
    save, show
        As in :func:`annotation`.

    Returns
    -------
    The matplotlib figure; its title gives the expected calibration error.
    """
    from .metrics import expected_calibration_error, reliability_table

    plt = _pyplot(save)
    correct, conf = _scored_cells(adata, truth_key, key)
    table = reliability_table(conf, correct, n_bins=n_bins)
    ece = expected_calibration_error(conf, correct, n_bins=n_bins)
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / n_bins
    ax.bar(table["lo"], table["accuracy"], width=width, align="edge", color="tab:blue", alpha=0.7, label="accuracy")
    ax.plot(table["confidence"], table["accuracy"], "o-", color="black", ms=4, label="mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.set_title(f"reliability ({len(conf)} cells, ECE {ece:.3f})")
    ax_n.bar(table["lo"], table["n_cells"], width=width, align="edge", color="grey")
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("cells")
    ax_n.set_xlim(0, 1)
    return _finish(fig, save, show)


def _scored_cells(adata: AnnData, truth_key: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Correctness and confidence of the unlabelled cells with a known truth (for reliability plots)."""
    for col in (truth_key, f"{key}_label", f"{key}_confidence"):
        if col not in adata.obs:
            raise ValueError(f"obs[{col!r}] not found; pass the truth column and run biossl.tl.annotate first.")
    from .tl._propagation import UNKNOWN, label_codes

    truth = adata.obs[truth_key]
    keep = truth.notna().to_numpy()
    run = adata.uns.get("biossl", {}).get("annotate", {})
    labels_key = run.get("labels_key")
    if labels_key is not None and labels_key in adata.obs and labels_key != truth_key:
        keep &= label_codes(adata, labels_key, run.get("unlabeled_category", UNKNOWN))[0] < 0
    if not keep.any():
        raise ValueError(f"no unlabelled cell has a value in obs[{truth_key!r}]; nothing to score.")
    pred = adata.obs[f"{key}_label"].astype(str).to_numpy()[keep]
    correct = pred == truth.astype(str).to_numpy()[keep]
    return correct, adata.obs[f"{key}_confidence"].to_numpy(dtype=float)[keep]


def budget_curve(
    adata: AnnData,
    labels_key: str,
    *,
    ks: tuple[int, ...] = (1, 3, 5, 10),
    seeds: tuple[int, ...] = (0, 1, 2),
    neighbors_key: str = "biossl",
    save: str | os.PathLike | None = None,
    show: bool | None = None,
):
    """Label-budget curve: macro-F1 on hidden labels against labelled cells per type.

    For every ``k`` and seed, ``k`` cells per type of ``obs[labels_key]`` keep their label
    (:func:`biossl.metrics.fewlabel_split`), :func:`biossl.tl.annotate` runs on the existing graph and is
    scored on the other cells — how many labels per type this dataset needs.

    Parameters
    ----------
    adata
        Data with a graph from :func:`biossl.tl.neighbors` and (mostly) known labels.
    labels_key
        ``obs`` column with the true labels (NaN = unknown, skipped).
    ks
        Labelled cells per type.
    seeds
        Split seeds.
    neighbors_key
        Prefix of the graph in ``obsp``.
    save, show
        As in :func:`annotation`.

    Returns
    -------
    The matplotlib figure. Writes ``uns["biossl_budget"]`` (one row per run: k, seed, macro_f1) so the
    curve can be redrawn or put in a report.
    """
    import pandas as pd

    from .metrics import fewlabel_split, macro_f1
    from .tl import annotate

    if labels_key not in adata.obs:
        raise ValueError(f"labels_key={labels_key!r} is not a column of obs (have: {list(adata.obs.columns)[:10]}).")
    from .tl._propagation import label_codes

    codes, classes = label_codes(adata, labels_key, None)
    known = codes >= 0
    truth = adata.obs[labels_key].astype(str).to_numpy()
    scratch = AnnData(obs=pd.DataFrame(index=adata.obs_names))
    for name in (f"{neighbors_key}_connectivities", f"{neighbors_key}_distances"):
        if name in adata.obsp:
            scratch.obsp[name] = adata.obsp[name]
    uns_key = f"{neighbors_key}_neighbors"
    if uns_key in adata.uns:
        scratch.uns[uns_key] = adata.uns[uns_key]
        rep = adata.uns[uns_key].get("params", {}).get("use_rep")
        if rep in adata.obsm:
            scratch.obsm[rep] = adata.obsm[rep]
    runs = []
    for k in ks:
        for seed in seeds:
            mask = np.zeros(adata.n_obs, dtype=bool)
            mask[known] = fewlabel_split(truth[known], int(k), int(seed))
            scratch.obs["_labels"] = pd.Categorical(np.where(mask, truth, None), categories=classes)
            annotate(scratch, "_labels", unlabeled_category=None, neighbors_key=neighbors_key, calibrate=False)
            hidden = known & ~mask
            pred = scratch.obs["biossl_label"].astype(str).to_numpy()
            runs.append({"k": int(k), "seed": int(seed), "macro_f1": macro_f1(truth[hidden], pred[hidden])})
    table = pd.DataFrame(runs)
    adata.uns["biossl_budget"] = {c: table[c].to_numpy() for c in table.columns}
    return _finish(_budget_figure(table), save, show)


def _budget_figure(results, group: str | None = None):
    """Plot macro-F1 (mean ± sd over seeds) against k from evaluate's JSON or a table of runs."""
    import matplotlib.pyplot as plt
    import pandas as pd

    if isinstance(results, dict) and "runs" in results:
        results = results["runs"]
    table = pd.DataFrame(results)
    missing = {"k", "macro_f1"} - set(table.columns)
    if missing:
        raise ValueError(f"results lack column(s) {sorted(missing)}; pass evaluate's JSON or a table of runs.")
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    groups = [(None, table)] if group is None else list(table.groupby(group, sort=True))
    for name, sub in groups:
        stats = sub.groupby("k")["macro_f1"].agg(["mean", "std"]).fillna(0.0)
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=name)
    if group is not None:
        ax.legend(frameon=False)
    ax.set_xscale("log")
    ks = sorted(table["k"].unique())
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("labelled cells per type")
    ax.set_ylabel("macro-F1 on unlabelled cells")
    ax.set_ylim(0, 1.02)
    ax.set_title("label budget")
    return fig


def gene_function_roc(
    adata: AnnData,
    *,
    key: str = "biossl_genes_eval",
    save: str | os.PathLike | None = None,
    show: bool | None = None,
):
    """Gene-function evaluation: mean ROC curves and the few-seed curve of biossl vs the baselines.

    Parameters
    ----------
    adata
        Data after :func:`biossl.tl.genes.evaluate_gene_function` (or ``biossl genes --evaluate``).
    key
        ``uns`` key the evaluation wrote (its ``key_added``).
    save
        Write the figure to this path (PNG, PDF, SVG by extension), atomically.
    show
        Show the figure (default: only when not saving).

    Returns
    -------
    The matplotlib figure (two panels: ROC averaged over all EGAD cross-validation tasks, with mean AUROC
    per method; mean AUROC against the number of seed genes).
    """
    import matplotlib

    if save is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if key not in adata.uns or "tpr" not in adata.uns[key]:
        raise ValueError(f"uns[{key!r}] has no gene-function evaluation; run biossl.tl.genes.evaluate_gene_function.")
    rec = adata.uns[key]
    labels = {
        "biossl": "biossl (model gene graph + propagation)",
        "neighbor_voting": "neighbour voting, raw co-expression",
        "node_degree": "node degree (raw co-expression)",
        "node_degree_graph": "node degree (biossl graph)",
        "random": "random",
    }
    styles = {"biossl": "-", "neighbor_voting": "--", "random": ":"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    fpr = np.asarray(rec["fpr"])
    for name in rec["tpr"]:
        mean = float(rec["summary"][name]["mean_auroc"])
        axes[0].plot(
            fpr, np.asarray(rec["tpr"][name]), styles.get(name, "-."), label=f"{labels.get(name, name)}: {mean:.3f}"
        )
    axes[0].plot([0, 1], [0, 1], color="lightgrey", lw=0.8)
    axes[0].set_xlabel("false-positive rate")
    axes[0].set_ylabel("true-positive rate (mean over CV tasks)")
    axes[0].set_title(f"EGAD 3-fold CV, {int(rec['n_terms'])} gene sets")
    axes[0].legend(fontsize=7, frameon=False, loc="lower right", title="mean AUROC", title_fontsize=7)
    few = rec["few_seed"]
    n_seeds = np.asarray(few["n_seeds"])
    for name in rec["tpr"]:
        if name in few:
            axes[1].plot(
                n_seeds, np.asarray(few[name]), styles.get(name, "-."), marker="o", label=labels.get(name, name)
            )
    axes[1].set_xscale("log")
    axes[1].set_xticks(n_seeds, [str(n) for n in n_seeds])
    axes[1].set_xlabel("known genes per set (seeds)")
    axes[1].set_ylabel("mean AUROC on the other members")
    axes[1].set_title("few-seed mode")
    if save is not None:
        save_figure(fig, save)
    if show or (show is None and save is None):
        plt.show()
    return fig


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a figure atomically, replacing ``path`` (format from the suffix; :mod:`biossl._io`)."""
    from ._io import write_figure_atomic

    write_figure_atomic(fig, path, overwrite=True)
