"""``biossl report`` (one HTML page), ``biossl summarize`` and ``biossl aggregate`` (the workflow's tables)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ._common import FEW_SCORED, CliError, check_io, cli_threads, common_options, echo_summary, elapsed, one_line, warn
from ._data import plot_annotation, quiet_scanpy, read_input, tsv
from ._options import INPUT, force_option, key_option, threads_option, truth_key_option

__all__ = ["aggregate", "report", "summarize"]


@click.command()
@INPUT
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .html file.")
@force_option("Overwrite an existing output.")
@truth_key_option("obs column with true labels: adds macro-F1, ECE, reliability.")
@click.option(
    "--evaluation", "evaluation_path", type=click.Path(dir_okay=False),
    help="JSON from `biossl evaluate --json`: adds the label-budget curve.",
)  # fmt: skip
@key_option
@click.option("--title", help="Page title.")
@common_options
def report(
    input_path: str, output: str, force: bool, truth_key: str | None, evaluation_path: str | None, key: str,
    title: str | None,
) -> None:  # fmt: skip
    """Write one self-contained HTML page (plots embedded) summarising the annotation in IN.h5ad."""
    start = time.perf_counter()
    check_io(input_path, {"output": output}, force=force)
    if evaluation_path is not None and not Path(evaluation_path).is_file():
        raise CliError(f"--evaluation {evaluation_path!r} does not exist.")
    evaluation = None
    if evaluation_path is not None:
        try:
            evaluation = json.loads(Path(evaluation_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CliError(f"--evaluation {evaluation_path!r} is not readable JSON ({one_line(err)}).") from None
        if not isinstance(evaluation, dict) or "runs" not in evaluation:
            raise CliError(f"--evaluation {evaluation_path!r} is not the JSON of `biossl evaluate --json`.")
    from ..report import write_report

    adata = read_input(input_path)
    with quiet_scanpy():
        write_report(adata, output, key=key, truth_key=truth_key, evaluation=evaluation, title=title, overwrite=force)
    echo_summary(f"report on {adata.n_obs} cells in {elapsed(start)} -> {output}")


def _sample_summary(adata, sample: str, truth_key: str | None, key: str) -> tuple[dict, list[dict]]:
    """One row of sample-level numbers and one row per predicted label (:func:`biossl.report.annotation_summary`)."""
    from ..report import annotation_summary

    for col in (f"{key}_label", f"{key}_confidence"):
        if col not in adata.obs:
            raise CliError(f"obs[{col!r}] not found; run `biossl annotate` on this file first.")
    if truth_key is not None and truth_key not in adata.obs:
        raise CliError(f"--truth-key {truth_key!r} is not a column of obs (have: {list(adata.obs.columns)[:10]}).")
    summary = annotation_summary(adata, key=key, truth_key=truth_key)
    rec = adata.uns.get("biossl", {})
    row = {
        "sample": sample,
        "n_cells": int(adata.n_obs),
        "n_labelled": int(summary.labelled.sum()),
        "n_types": len(rec.get("classes", [])),
        "n_unknown": summary.n_unknown,
        "frac_unknown": summary.n_unknown / adata.n_obs,
        "mean_confidence": summary.mean_confidence,
        "macro_f1": summary.macro_f1,
        "accuracy": summary.accuracy,
        "n_scored": int(summary.scored.sum()),
        "embedding": str(rec.get("embed", {}).get("model", "")),
    }
    labels = [
        {
            "sample": sample,
            "label": per.label,
            "n_cells": per.cells,
            "fraction": per.fraction,
            "n_labelled": per.labelled,
            "mean_confidence": per.mean_confidence_unlabelled,
            "f1": per.F1,
        }
        for per in summary.per_label.itertuples()
    ]
    return row, labels


@click.command()
@INPUT
@click.option("--tsv", "tsv_path", required=True, type=click.Path(dir_okay=False), help="Sample summary (one row).")
@click.option("--labels-tsv", type=click.Path(dir_okay=False), help="Per-label table (cells, confidence, F1).")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="UMAP of labels and confidence.")
@click.option("--sample", help="Sample name in the tables [default: file name without extension].")
@truth_key_option("obs column with true labels: adds macro-F1 on unlabelled cells.")
@key_option
@force_option()
@threads_option
@common_options
def summarize(
    input_path: str, tsv_path: str, labels_tsv: str | None, png_path: str | None, sample: str | None,
    truth_key: str | None, key: str, force: bool, threads: int | None,
) -> None:  # fmt: skip
    """Report on an annotated IN.h5ad: summary TSV, per-label TSV and UMAP PNG (used by the workflow)."""
    start = time.perf_counter()
    outputs = {"--tsv": tsv_path, "--labels-tsv": labels_tsv, "--png": png_path}
    check_io(input_path, outputs, force=force)
    sample = sample or Path(input_path).name.split(".")[0]
    with cli_threads(threads):
        from .._io import write_text_atomic

        adata = read_input(input_path)
        row, labels = _sample_summary(adata, sample, truth_key, key)
        if png_path is not None:
            plot_annotation(adata, png_path, key=key, force=force)
        if labels_tsv is not None:
            write_text_atomic(tsv(labels), labels_tsv, overwrite=force)
        write_text_atomic(tsv([row]), tsv_path, overwrite=force)
    f1 = f", macro-F1 {row['macro_f1']:.3f} on {row['n_scored']} cells" if row["macro_f1"] == row["macro_f1"] else ""
    if truth_key is not None and row["n_scored"] < FEW_SCORED:
        warn(
            f"macro-F1 is scored on {row['n_scored']} unlabelled cells with a value in obs[{truth_key!r}]; "
            "so few give a noisy score."
        )
    echo_summary(
        f"summarized {sample}: {row['n_cells']} cells, {row['n_labelled']} labels, {row['n_types']} types, "
        f"{row['n_unknown']} Unknown{f1} in {elapsed(start)} -> {tsv_path}"
    )


@click.command(hidden=True)
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Combined TSV.")
@force_option("Overwrite an existing output.")
@common_options
def aggregate(tables: tuple[str, ...], output: str, force: bool) -> None:
    """Concatenate TSV tables with the same columns (the workflow's table over samples)."""
    start = time.perf_counter()
    for table in tables:
        check_io(table, {"output": output}, force=True)
    check_io(None, {"output": output}, force=force)
    import pandas as pd

    from .._io import write_text_atomic

    frames = []
    for table in tables:
        try:
            frame = pd.read_csv(table, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise CliError(f"cannot read {table!r} as a TSV table ({one_line(err)}).") from None
        if frames and list(frame.columns) != list(frames[0].columns):
            raise CliError(f"{table!r} has other columns than {tables[0]!r}; only like tables can be combined.")
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True)
    write_text_atomic(combined.to_csv(sep="\t", index=False, float_format="%.4g", na_rep="NA"), output, overwrite=force)
    echo_summary(f"combined {len(tables)} tables ({len(combined)} rows) in {elapsed(start)} -> {output}")
