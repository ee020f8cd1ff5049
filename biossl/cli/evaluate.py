"""``biossl evaluate``: hide labels of a fully labelled file, annotate, score macro-F1 per labels per type.

Stages: read the true labels (:func:`_true_labels`), embed and build the graph once, annotate every split
(:func:`_score_splits`), summarise per k (:func:`_summarise`), print the table and write the JSON.
"""

from __future__ import annotations

import json
import time

import click

from .. import __version__
from ._common import FEW_SCORED, CliError, check_io, cli_threads, common_options, echo_summary, elapsed, warn
from ._data import counts_from_raw, embedding, read_input
from ._options import (
    INPUT,
    Device,
    backed_option,
    check_backed,
    check_model_option,
    check_threshold,
    force_option,
    labels_key_option,
    model_options,
    n_neighbors_option,
    parse_ints,
    unknown_threshold_option,
    unlabeled_category_option,
)

__all__ = ["evaluate"]

_SPLIT_KEY = "_biossl_evaluate_labels"  # the obs column each split's few labels go to


@click.command()
@INPUT
@labels_key_option("obs column with the true labels of (most) cells.")
@unlabeled_category_option("Value of cells without a true label (skipped).")
@click.option("--k", "k_text", default="1,3,5", show_default=True, help="Labelled cells per type: list or range.")
@click.option("--seeds", "seeds_text", default="0-4", show_default=True, help="Split seeds: list or range.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the scores as JSON here.")
@force_option("Overwrite an existing --json file.")
@unknown_threshold_option
@n_neighbors_option()
@click.option("--reuse-embedding", is_flag=True, help="Use obsm['X_biossl'] already in IN instead of embedding.")
@model_options(save=False)
@backed_option(writes_h5ad=False)
@common_options
def evaluate(
    input_path: str, labels_key: str, unlabeled_category: str, k_text: str, seeds_text: str, json_path: str | None,
    force: bool, unknown_threshold: float | None, n_neighbors: int, reuse_embedding: bool, model: str,
    batch_key: str | None, layer: str | None, n_latent: int | None, max_steps: int | None, seed: int, device: Device,
    threads: int | None, backed: bool,
) -> None:  # fmt: skip
    """Score few-label annotation on fully labelled IN.h5ad: hide labels, annotate, macro-F1 per k.

    For every k and seed, k cells per type keep their label (biossl.metrics.fewlabel_split) and the rest
    are hidden; biossl annotates them and is scored by macro-F1 (and accuracy) on the hidden cells.
    The embedding and the graph use no labels, so they are computed once. IN is not modified.
    """
    start = time.perf_counter()
    ks = parse_ints(k_text, "--k", minimum=1)
    seeds = parse_ints(seeds_text, "--seeds", minimum=0)
    if reuse_embedding and model != "auto":
        raise click.UsageError("--reuse-embedding cannot be combined with --model.")
    model = check_model_option(model, None)
    check_threshold(unknown_threshold)
    check_backed(backed, layer)
    check_io(input_path, {"--json": json_path}, force=force)
    with cli_threads(threads):
        import biossl

        adata = read_input(input_path, backed=backed)
        counts_from_raw(adata, layer)
        truth, known, classes = _true_labels(adata, labels_key, unlabeled_category)
        how = embedding(
            adata, input_path, reuse=reuse_embedding, model=model, batch_key=batch_key, layer=layer,
            n_latent=n_latent, max_steps=max_steps, seed=seed, device=device, save_model=None, force=False,
        )  # fmt: skip
        biossl.tl.neighbors(adata, n_neighbors=n_neighbors, seed=seed)
        runs = _score_splits(adata, truth, known, classes, ks, seeds, unknown_threshold=unknown_threshold)
    n_known = int(known.sum())
    summary = _summarise(runs, n_known)
    _print_scores(summary)
    if json_path is not None:
        from .._io import write_text_atomic

        doc = {
            "input": str(input_path),
            "labels_key": labels_key,
            "n_cells": int(adata.n_obs),
            "n_types": len(classes),
            "embedding": how,
            "embed": {"model": model, "seed": seed, "max_steps": max_steps, "batch_key": batch_key},
            "n_neighbors": n_neighbors,
            "unknown_threshold": unknown_threshold,
            "summary": summary,
            "runs": runs,
            "biossl_version": __version__,
        }
        write_text_atomic(json.dumps(doc, indent=2) + "\n", json_path, overwrite=force)
    wrote = f" -> {json_path}" if json_path else ""
    echo_summary(
        f"evaluated {adata.n_obs} cells, {len(classes)} types, k={','.join(map(str, ks))} x {len(seeds)} seeds "
        f"({how}; scored on the hidden ones of {n_known} cells with a true label) in {elapsed(start)}{wrote}"
    )


def _true_labels(adata, labels_key: str, unlabeled_category: str | None):
    """The true label of each cell ("" where none), the mask of cells with one, and the sorted types."""
    from ..tl._propagation import label_names

    if labels_key not in adata.obs:
        raise CliError(f"labels_key={labels_key!r} is not a column of obs (have: {list(adata.obs.columns)[:10]}).")
    truth, classes = label_names(adata, labels_key, unlabeled_category)
    known = truth != ""
    if len(classes) < 2:
        raise CliError(f"obs[{labels_key!r}] has {len(classes)} labelled type(s); evaluation needs at least two.")
    n_known = int(known.sum())
    if n_known < adata.n_obs / 2:
        warn(
            f"only {n_known} of {adata.n_obs} cells have a true label in obs[{labels_key!r}]; the scores use "
            "those cells alone (the others are unlabelled: NaN or --unlabeled-category)."
        )
    return truth, known, classes


def _hidden_split(truth, known, k: int, seed: int):
    """Labelled mask: ``k`` per class among cells with a known truth label (biossl.metrics.fewlabel_split)."""
    import numpy as np

    from ..metrics import fewlabel_split

    mask = np.zeros(len(truth), dtype=bool)
    mask[known] = fewlabel_split(truth[known], k, seed)
    return mask


def _score_splits(adata, truth, known, classes, ks, seeds, *, unknown_threshold) -> list[dict]:
    """Annotate from each split's few labels (one per k and seed) and score the hidden cells: one row each."""
    import numpy as np
    import pandas as pd

    import biossl

    from ..metrics import expected_calibration_error, macro_f1

    runs = []
    for k in ks:
        for split_seed in seeds:
            t0 = time.perf_counter()
            labelled = _hidden_split(truth, known, k, split_seed)
            hidden = known & ~labelled
            adata.obs[_SPLIT_KEY] = pd.Categorical(np.where(labelled, truth, None), categories=classes)
            biossl.tl.annotate(adata, _SPLIT_KEY, unlabeled_category=None, unknown_threshold=unknown_threshold)
            pred = adata.obs["biossl_label"].astype(str).to_numpy()
            right = truth[hidden] == pred[hidden]
            runs.append(
                {
                    "k": k,
                    "seed": split_seed,
                    "n_labelled": int(labelled.sum()),
                    "n_hidden": int(hidden.sum()),
                    "macro_f1": macro_f1(truth[hidden], pred[hidden]),
                    "accuracy": float(np.mean(right)),
                    "ece": expected_calibration_error(adata.obs["biossl_confidence"].to_numpy()[hidden], right),
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
    return runs


def _summarise(runs: list[dict], n_known: int) -> list[dict]:
    """Mean and sd over seeds per k; warns about a k that leaves few hidden cells to score."""
    import pandas as pd

    table = pd.DataFrame(runs)
    summary = []
    for k, grp in table.groupby("k", sort=True):
        hidden = int(grp["n_hidden"].min())
        if hidden < FEW_SCORED or hidden < n_known / 4:
            warn(
                f"--k {k} labels {int(grp['n_labelled'].max())} of the {n_known} labelled cells and leaves only "
                f"{hidden} hidden to score; macro-F1 on so few cells is noisy (use a smaller --k)."
            )
    for k, grp in table.groupby("k", sort=True):
        ddof = 1 if len(grp) > 1 else 0
        summary.append(
            {
                "k": int(k),
                "n_seeds": len(grp),
                "n_labelled": float(grp["n_labelled"].mean()),
                "n_scored": float(grp["n_hidden"].mean()),
                "macro_f1_mean": float(grp["macro_f1"].mean()),
                "macro_f1_sd": float(grp["macro_f1"].std(ddof=ddof)),
                "accuracy_mean": float(grp["accuracy"].mean()),
                "accuracy_sd": float(grp["accuracy"].std(ddof=ddof)),
                "ece_mean": float(grp["ece"].mean()),
            }
        )
    return summary


def _print_scores(summary: list[dict]) -> None:
    """The table of scores per k on stdout."""
    click.echo(
        f"{'k':>4}  {'labelled':>8}  {'scored':>8}  {'macro-F1 (mean ± sd)':>20}  {'accuracy (mean ± sd)':>20}  "
        f"{'ECE':>5}"
    )
    for row in summary:
        f1 = f"{row['macro_f1_mean']:.3f} ± {row['macro_f1_sd']:.3f}"
        acc = f"{row['accuracy_mean']:.3f} ± {row['accuracy_sd']:.3f}"
        click.echo(
            f"{row['k']:>4}  {row['n_labelled']:>8.0f}  {row['n_scored']:>8.0f}  {f1:>20}  {acc:>20}  "
            f"{row['ece_mean']:>5.3f}"
        )
