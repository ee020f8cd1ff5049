"""Plots (matplotlib): UMAP of predicted labels and confidence."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData

__all__ = ["annotation", "gene_function_roc"]


def _umap(adata: AnnData, neighbors_key: str) -> np.ndarray:
    """``obsm["X_umap"]``, computed from the biossl graph when missing (written into ``adata``)."""
    if "X_umap" not in adata.obsm:
        import scanpy as sc

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
        Graph used to compute ``obsm["X_umap"]`` when it is missing.
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
    """Save a figure atomically (temp file in the same directory, then rename)."""
    import tempfile

    path = os.fspath(path)
    ext = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(prefix=".biossl.", suffix=ext, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
