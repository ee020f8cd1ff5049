"""``biossl suggest``: the unlabelled cells to label next."""

from __future__ import annotations

import time

import click

from ._common import CliError, check_io, common_options, echo_summary, elapsed
from ._data import read_input, tsv, write_h5ad
from ._options import (
    INPUT,
    check_h5ad_name,
    labels_key_option,
    n_neighbors_option,
    output_options,
    unlabeled_category_option,
)

__all__ = ["suggest"]


@click.command()
@INPUT
@output_options
@click.option("-n", "n", type=click.IntRange(min=1), required=True, help="Number of cells to suggest.")
@labels_key_option("obs column with the labels known so far.")
@unlabeled_category_option()
@click.option(
    "--key", "--key-added", "key_added", default="biossl_suggest", show_default=True,
    help="obs column for the ranks (--key-added is the same option).",
)  # fmt: skip
@n_neighbors_option("Neighbours per cell, when IN has no biossl graph yet.")
@click.option(
    "--table", "table_path", metavar="FILE.tsv", type=click.Path(dir_okay=False),
    help="Also write the N cells as a TSV: cell, rank, predicted type and confidence (from `biossl annotate`).",
)  # fmt: skip
@common_options
def suggest(
    input_path: str, output: str, force: bool, n: int, labels_key: str, unlabeled_category: str, key_added: str,
    n_neighbors: int, table_path: str | None,
) -> None:  # fmt: skip
    """Suggest the N unlabelled cells of IN.h5ad to label next; write OUT.h5ad with their ranks.

    IN must hold an embedding (`biossl annotate` or `biossl embed` output). Writes obs[KEY_ADDED]: the
    rank (1 = label first) of the suggested cells, NaN elsewhere. Label those cells in obs[LABELS_KEY]
    and run `biossl annotate` again.
    """
    start = time.perf_counter()
    check_h5ad_name(output)
    check_io(input_path, {"output": output, "--table": table_path}, force=force)
    import biossl

    adata = read_input(input_path)
    if "biossl_connectivities" not in adata.obsp:
        if "X_biossl" not in adata.obsm:
            raise CliError(f"{input_path!r} has no biossl embedding; run `biossl annotate` or `biossl embed` first.")
        biossl.tl.neighbors(adata, n_neighbors=n_neighbors)
    biossl.tl.suggest_labels(
        adata, n, labels_key=labels_key, unlabeled_category=unlabeled_category, key_added=key_added
    )
    write_h5ad(adata, output, force=force)
    picked = adata.obs[key_added].dropna().sort_values().index.astype(str)
    if table_path is not None:
        from .._io import write_text_atomic

        write_text_atomic(tsv(_suggest_rows(adata, key_added)), table_path, overwrite=force)
    shown = ", ".join(picked[:5]) + (", ..." if len(picked) > 5 else "")
    wrote = f", table -> {table_path}" if table_path else ""
    echo_summary(f"suggested {len(picked)} cells to label next ({shown}) in {elapsed(start)} -> {output}{wrote}")


def _suggest_rows(adata, key_added: str) -> list[dict]:
    """One row per suggested cell, by rank: cell id, rank, and the current prediction where annotate ran."""
    ranks = adata.obs[key_added].dropna().sort_values()
    pred = adata.obs["biossl_label"] if "biossl_label" in adata.obs else None
    conf = adata.obs["biossl_confidence"] if "biossl_confidence" in adata.obs else None
    return [
        {
            "cell": str(cell),
            "rank": int(rank),
            "predicted": str(pred[cell]) if pred is not None else "NA",
            "confidence": float(conf[cell]) if conf is not None else float("nan"),
        }
        for cell, rank in ranks.items()
    ]
