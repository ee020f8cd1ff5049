"""``biossl demo``: annotate the bundled PBMC 3k data from 5 labels per type and score it."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._common import CliError, cli_threads, common_options, echo_summary, elapsed
from ._data import few_labels_pbmc, plot_annotation, write_h5ad
from ._options import seed_option, threads_option

__all__ = ["demo"]

DEMO_H5AD, DEMO_PNG = "pbmc3k_annotated.h5ad", "pbmc3k_umap.png"


@click.command()
@click.option(
    "--out", "out_dir", default="demo_output", show_default=True, type=click.Path(file_okay=False),
    help="Directory for the outputs (the demo's own files in it are overwritten).",
)  # fmt: skip
@seed_option("Seed of the label split and the embedding.")
@threads_option
@common_options
def demo(out_dir: str, seed: int, threads: int | None) -> None:
    """Annotate the bundled PBMC 3k data from 5 labels per cell type and score it.

    Keeps 5 labels per type (obs['labels']), hides the rest, annotates, prints macro-F1 against the
    hidden labels and writes DIR/pbmc3k_annotated.h5ad and DIR/pbmc3k_umap.png. Rerunning replaces them.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out_dir!r} exists and is not a directory.")
    with cli_threads(threads):
        import biossl

        from ..metrics import macro_f1

        adata, truth, labelled = few_labels_pbmc(seed)
        biossl.pp.setup(adata)
        biossl.tl.embed(adata, seed=seed, progress=None)
        biossl.tl.neighbors(adata, seed=seed)
        biossl.tl.annotate(adata, "labels")
        hidden = ~labelled
        score = macro_f1(truth[hidden], adata.obs["biossl_label"].astype(str)[hidden])
        out.mkdir(parents=True, exist_ok=True)
        plot_annotation(adata, out / DEMO_PNG, key="biossl", force=True)
        write_h5ad(adata, str(out / DEMO_H5AD), force=True)
    n_types = adata.obs["labels"].cat.categories.size
    echo_summary(
        f"demo: annotated {adata.n_obs} PBMCs from {int(labelled.sum())} labels ({n_types} types): macro-F1 "
        f"{score:.3f} on the {int(hidden.sum())} hidden cells in {elapsed(start)} "
        f"-> {out / DEMO_H5AD}, {out / DEMO_PNG}"
    )
