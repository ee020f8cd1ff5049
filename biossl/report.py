"""One self-contained HTML page summarising an annotation run (plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["AnnotationSummary", "annotation_summary", "natural_key", "render_report", "write_report"]

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


@dataclass(frozen=True)
class AnnotationSummary:
    """The numbers of an annotation run, as the report page and ``biossl summarize`` show them.

    Cell arrays are in ``adata``'s order; ``per_label`` has one row per predicted type (natural order): label,
    cells, fraction, labelled, mean_confidence (all its cells), mean_confidence_unlabelled and F1 (NaN without
    scored cells). Scores are NaN when no cell is scored.
    """

    label: np.ndarray  # the predicted type of each cell, as text
    confidence: np.ndarray
    labelled: np.ndarray  # the cells annotate was given a label for (parsed as annotate parsed them)
    labels_key: str | None
    scored: np.ndarray  # unlabelled cells with a true label (none without a truth column)
    n_unknown: int
    mean_confidence: float  # over the unlabelled cells
    macro_f1: float
    accuracy: float
    ece: float
    per_label: pd.DataFrame


def _labels_given(adata: AnnData, ann: dict) -> np.ndarray:
    """The cells annotate took as labelled: its labels column parsed as annotate parses it."""
    from .tl._propagation import label_codes

    labels_key = ann.get("labels_key")
    if labels_key is None or labels_key not in adata.obs:
        return np.zeros(adata.n_obs, dtype=bool)
    return label_codes(adata, labels_key, ann.get("unlabeled_category"))[0] >= 0


def _per_label(label: np.ndarray, conf: np.ndarray, labelled: np.ndarray, f1: dict[str, float]) -> pd.DataFrame:
    """One row per predicted type, in natural order (see :class:`AnnotationSummary`)."""
    rows = []
    for name in sorted(set(label), key=natural_key):
        sel = label == name
        unlabelled = sel & ~labelled
        rows.append(
            {
                "label": name,
                "cells": int(sel.sum()),
                "fraction": float(sel.mean()),
                "labelled": int((sel & labelled).sum()),
                "mean_confidence": float(conf[sel].mean()),
                "mean_confidence_unlabelled": float(conf[unlabelled].mean()) if unlabelled.any() else np.nan,
                "F1": f1.get(name, np.nan),
            }
        )
    columns = ["label", "cells", "fraction", "labelled", "mean_confidence", "mean_confidence_unlabelled", "F1"]
    return pd.DataFrame(rows, columns=columns)


def annotation_summary(adata: AnnData, *, key: str = "biossl", truth_key: str | None = None) -> AnnotationSummary:
    """Cells, labels, Unknown calls, confidences and (with ``truth_key``) scores of an annotation run.

    Scores (macro-F1, accuracy, ECE, per-type F1) are on the unlabelled cells with a value in
    ``obs[truth_key]``. Raises ValueError when annotate's columns or ``truth_key`` are missing.
    """
    from .metrics import expected_calibration_error, macro_f1, per_class_f1
    from .tl._propagation import label_names

    for col in (f"{key}_label", f"{key}_confidence"):
        if col not in adata.obs:
            raise ValueError(f"obs[{col!r}] not found; run biossl.tl.annotate (or `biossl annotate`) first.")
    if truth_key is not None and truth_key not in adata.obs:
        raise ValueError(f"truth_key={truth_key!r} is not a column of obs (have: {list(adata.obs.columns)[:10]}).")
    ann = adata.uns.get("biossl", {}).get("annotate", {})
    label = adata.obs[f"{key}_label"].astype(str).to_numpy()
    conf = adata.obs[f"{key}_confidence"].to_numpy(dtype=float)
    labelled = _labels_given(adata, ann)
    scored = np.zeros(adata.n_obs, dtype=bool)
    f1, scores = {}, [np.nan, np.nan, np.nan]
    if truth_key is not None:
        truth = label_names(adata, truth_key, None)[0]
        scored = (truth != "") & ~labelled
        if scored.any():
            correct = truth[scored] == label[scored]
            f1 = per_class_f1(truth[scored], label[scored])
            scores = [
                macro_f1(truth[scored], label[scored]),
                float(np.mean(correct)),
                expected_calibration_error(conf[scored], correct),
            ]
    return AnnotationSummary(
        label=label, confidence=conf, labelled=labelled, labels_key=ann.get("labels_key"), scored=scored,
        n_unknown=int((label == "Unknown").sum()),
        mean_confidence=float(conf[~labelled].mean()) if (~labelled).any() else np.nan,
        macro_f1=scores[0], accuracy=scores[1], ece=scores[2], per_label=_per_label(label, conf, labelled, f1),
    )  # fmt: skip


def _facts(adata: AnnData, summary: AnnotationSummary, truth_key: str | None) -> dict[str, str]:
    """The list of facts at the top of the page."""
    from . import __version__

    rec = adata.uns.get("biossl", {})
    calib = rec.get("annotate", {}).get("calibration", {})
    calib_text = (
        f"temperature {float(calib['temperature']):.2f} (from {int(calib['n_pairs'])} held-out labelled cells)"
        if isinstance(calib, dict) and "temperature" in calib
        else str(calib.get("method", "none"))
        if isinstance(calib, dict)
        else "none"
    )
    labels_key, n_given = summary.labels_key, int(summary.labelled.sum())
    mean_conf = f"{summary.mean_confidence:.3f}" if (~summary.labelled).any() else "-"
    facts = {
        "cells": f"{adata.n_obs:,}",
        "labelled cells": f"{n_given:,}" + (f" (obs['{labels_key}'])" if labels_key else ""),
        "types": str(len([c for c in set(summary.label) if c != "Unknown"])),
        "Unknown calls": f"{summary.n_unknown:,}",
        "mean confidence (unlabelled cells)": mean_conf,
        "calibration": calib_text,
        "embedding": str(rec.get("embed", {}).get("model", "-")),
        "biossl version": str(rec.get("version", __version__)),
    }
    if summary.scored.any():
        facts[f"macro-F1 vs obs['{truth_key}']"] = (
            f"{summary.macro_f1:.3f} (on {int(summary.scored.sum()):,} unlabelled cells)"
        )
        facts["accuracy"] = f"{summary.accuracy:.3f}"
        facts["expected calibration error"] = f"{summary.ece:.3f}"
    return facts


def _figure_sections(
    adata: AnnData, *, key: str, truth_key: str | None, scored: bool, evaluation: dict | None, suggest_key: str
) -> list[str]:
    """The sections with plots: predicted types, calibration, cells to label next, label budget (those that apply)."""
    from . import pl

    fig = pl.annotation(adata, key=key, show=False)
    sections = [
        "<h2>Predicted types</h2>"
        + _figure(fig, "UMAP of predicted labels and confidence", "UMAP coloured by predicted type and confidence.")
    ]
    if truth_key is not None and scored:
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
        sections.append(_suggestion_section(adata, key=key, suggest_key=suggest_key))
    if evaluation is None and "biossl_budget" in adata.uns:
        evaluation = {"runs": pd.DataFrame(dict(adata.uns["biossl_budget"]))}
    if evaluation is not None:
        fig = pl._budget_figure(evaluation)
        sections.append(
            "<h2>Label budget</h2>"
            + _figure(fig, "label-budget curve", "Macro-F1 on hidden labels against labelled cells per type.")
        )
    return sections


def _suggestion_section(adata: AnnData, *, key: str, suggest_key: str) -> str:
    """The cells ``tl.suggest_labels`` ranked: a UMAP and their table."""
    from . import pl

    fig = pl.suggestions(adata, key=suggest_key, label_key=f"{key}_label", show=False)
    picked = adata.obs[suggest_key].dropna().sort_values()
    listing = pd.DataFrame(
        {
            "rank": picked.astype(int).to_numpy(),
            "cell": picked.index.astype(str),
            "predicted": adata.obs.loc[picked.index, f"{key}_label"].astype(str).to_numpy(),
            "confidence": adata.obs.loc[picked.index, f"{key}_confidence"].to_numpy(dtype=float),
        }
    )
    return (
        "<h2>Cells to label next</h2>"
        + _figure(fig, "UMAP of suggested cells", "Label these cells (1 first), then annotate again.")
        + _table(listing)
    )


def _page(title: str, facts: dict[str, str], per_label: pd.DataFrame, sections: list[str]) -> str:
    """The whole HTML document."""
    from . import __version__

    facts_html = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items())
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><dl class='facts'>{facts_html}</dl>"
        f"<h2>Per type</h2>{_table(per_label)}{''.join(sections)}"
        f"<p><small>Generated by biossl {html.escape(__version__)}.</small></p></body></html>\n"
    )


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

    summary = annotation_summary(adata, key=key, truth_key=truth_key)
    columns = ["label", "cells", "labelled", "mean_confidence"] + (["F1"] if summary.scored.any() else [])
    sections = _figure_sections(
        adata, key=key, truth_key=truth_key, scored=bool(summary.scored.any()), evaluation=evaluation,
        suggest_key=suggest_key,
    )  # fmt: skip
    facts = _facts(adata, summary, truth_key)
    return _page(title or "biossl annotation report", facts, summary.per_label[columns], sections)


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
