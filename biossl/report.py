"""One self-contained HTML page summarising an annotation run (plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["natural_key", "render_report", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
.facts dt { color: #555; } .facts dd { margin: 0; font-weight: 600; }
"""


def natural_key(label) -> tuple:
    """Sort key for type names with numbers in them: "2" before "10", "T cell 2" before "T cell 10"; Unknown last."""
    text = str(label)
    parts = re.split(r"(\d+)", text)
    return (text == "Unknown", tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p), text)


def _png(fig) -> str:
    """A figure as a base64 PNG (the figure is closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig, alt: str, caption: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for v in row:
            text = f"{v:.3f}" if isinstance(v, float | np.floating) else str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_report(
    adata: AnnData,
    *,
    key: str = "biossl",
    truth_key: str | None = None,
    evaluation: dict | None = None,
    suggest_key: str = "biossl_suggest",
    title: str | None = None,
) -> str:
    """The HTML text of the report (see :func:`write_report`); may add ``obsm["X_umap"]`` to ``adata``."""
    import matplotlib

    matplotlib.use("Agg")

    from . import __version__, pl
    from .metrics import expected_calibration_error, macro_f1, per_class_f1

    for col in (f"{key}_label", f"{key}_confidence"):
        if col not in adata.obs:
            raise ValueError(f"obs[{col!r}] not found; run biossl.tl.annotate (or `biossl annotate`) first.")
    if truth_key is not None and truth_key not in adata.obs:
        raise ValueError(f"truth_key={truth_key!r} is not a column of obs (have: {list(adata.obs.columns)[:10]}).")
    rec = adata.uns.get("biossl", {})
    ann = rec.get("annotate", {})
    labels_key = ann.get("labels_key")
    label = adata.obs[f"{key}_label"].astype(str)
    conf = adata.obs[f"{key}_confidence"].to_numpy(dtype=float)
    given = np.zeros(adata.n_obs, dtype=bool)
    if labels_key is not None and labels_key in adata.obs:
        col = adata.obs[labels_key]
        unl = ann.get("unlabeled_category")
        given = col.notna().to_numpy() & (col.astype(str).to_numpy() != str(unl))
    calib = ann.get("calibration", {})
    calib_text = (
        f"temperature {float(calib['temperature']):.2f} (from {int(calib['n_pairs'])} held-out labelled cells)"
        if isinstance(calib, dict) and "temperature" in calib
        else str(calib.get("method", "none"))
        if isinstance(calib, dict)
        else "none"
    )
    facts = {
        "cells": f"{adata.n_obs:,}",
        "labelled cells": f"{int(given.sum()):,}" + (f" (obs['{labels_key}'])" if labels_key else ""),
        "types": str(len([c for c in label.unique() if c != "Unknown"])),
        "Unknown calls": f"{int((label == 'Unknown').sum()):,}",
        "mean confidence (unlabelled cells)": f"{conf[~given].mean():.3f}" if (~given).any() else "-",
        "calibration": calib_text,
        "embedding": str(rec.get("embed", {}).get("model", "-")),
        "biossl version": str(rec.get("version", __version__)),
    }
    per_label = (
        pd.DataFrame({"label": label.to_numpy(), "confidence": conf, "labelled": given})
        .groupby("label", sort=True)
        .agg(cells=("confidence", "size"), labelled=("labelled", "sum"), mean_confidence=("confidence", "mean"))
        .reset_index()
    )
    per_label = per_label.sort_values("label", key=lambda c: c.map(natural_key), kind="stable").reset_index(drop=True)
    sections = []
    if truth_key is not None:
        scored = adata.obs[truth_key].notna().to_numpy() & ~given
        truth = adata.obs[truth_key].astype(str).to_numpy()
        if scored.any():
            f1 = per_class_f1(truth[scored], label.to_numpy()[scored])
            per_label["F1"] = [f1.get(lbl, np.nan) for lbl in per_label["label"]]
            correct = truth[scored] == label.to_numpy()[scored]
            facts[f"macro-F1 vs obs['{truth_key}']"] = (
                f"{macro_f1(truth[scored], label.to_numpy()[scored]):.3f} (on {int(scored.sum()):,} unlabelled cells)"
            )
            facts["accuracy"] = f"{correct.mean():.3f}"
            facts["expected calibration error"] = f"{expected_calibration_error(conf[scored], correct):.3f}"
    fig = pl.annotation(adata, key=key, show=False)
    sections.append(
        "<h2>Predicted types</h2>"
        + _figure(fig, "UMAP of predicted labels and confidence", "UMAP coloured by predicted type and confidence.")
    )
    if truth_key is not None and "expected calibration error" in facts:
        fig = pl.reliability(adata, truth_key, key=key, show=False)
        sections.append(
            "<h2>Calibration</h2>"
            + _figure(
                fig,
                "reliability diagram",
                "Accuracy against confidence on the unlabelled cells: bars on the diagonal mean the confidence "
                "can be read as a probability of being right.",
            )
        )
    if suggest_key in adata.obs and adata.obs[suggest_key].notna().any():
        fig = pl.suggestions(adata, key=suggest_key, label_key=f"{key}_label", show=False)
        picked = adata.obs[suggest_key].dropna().sort_values()
        listing = pd.DataFrame(
            {
                "rank": picked.astype(int).to_numpy(),
                "cell": picked.index.astype(str),
                "predicted": label[picked.index].to_numpy(),
                "confidence": adata.obs.loc[picked.index, f"{key}_confidence"].to_numpy(dtype=float),
            }
        )
        sections.append(
            "<h2>Cells to label next</h2>"
            + _figure(fig, "UMAP of suggested cells", "Label these cells (1 first), then annotate again.")
            + _table(listing)
        )
    if evaluation is None and "biossl_budget" in adata.uns:
        evaluation = {"runs": pd.DataFrame(dict(adata.uns["biossl_budget"]))}
    if evaluation is not None:
        fig = pl._budget_figure(evaluation)
        sections.append(
            "<h2>Label budget</h2>"
            + _figure(fig, "label-budget curve", "Macro-F1 on hidden labels against labelled cells per type.")
        )
    title = title or "biossl annotation report"
    facts_html = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items())
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><dl class='facts'>{facts_html}</dl>"
        f"<h2>Per type</h2>{_table(per_label)}{''.join(sections)}"
        f"<p><small>Generated by biossl {html.escape(__version__)}.</small></p></body></html>\n"
    )


def write_report(
    adata: AnnData,
    path: str | os.PathLike,
    *,
    key: str = "biossl",
    truth_key: str | None = None,
    evaluation: dict | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a self-contained HTML report of an annotation run (atomically).

    Parameters
    ----------
    adata
        Annotated data after :func:`biossl.tl.annotate` (optionally :func:`biossl.tl.suggest_labels`).
    path
        Output ``.html`` file.
    key
        Prefix used by ``annotate``.
    truth_key
        Optional ``obs`` column with true labels: adds macro-F1, ECE and a reliability diagram on the
        unlabelled cells.
    evaluation
        Optional result of ``biossl evaluate --json`` (parsed): adds the label-budget curve (else the one
        :func:`biossl.pl.budget_curve` stored in ``uns["biossl_budget"]``, if any).
    title
        Page title.
    overwrite
        Replace an existing file.

    Returns
    -------
    The output path. Every plot is a PNG embedded as base64, so the page needs no other file.
    """
    from ._io import write_text_atomic

    text = render_report(adata, key=key, truth_key=truth_key, evaluation=evaluation, title=title)
    return write_text_atomic(text, path, overwrite=overwrite)
