"""``biossl annotate`` and ``biossl embed``: few-label annotation of an h5ad file, and its embedding alone."""

from __future__ import annotations

import time
from typing import get_args

import click

from .._types import Bridges
from ._common import CliError, check_io, cli_threads, common_options, echo_summary, elapsed
from ._data import check_labels, counts_from_raw, embed_cells, embedding, read_input, write_h5ad
from ._options import (
    INPUT,
    Device,
    backed_option,
    check_backed,
    check_h5ad_name,
    check_model_option,
    check_threshold,
    labels_key_option,
    model_options,
    n_neighbors_option,
    output_options,
    unknown_threshold_option,
    unlabeled_category_option,
)
from .reference import map_file, map_options

__all__ = ["annotate", "embed"]


def _reference_clash(**given) -> None:
    """``annotate --reference`` (the alias of ``biossl map``) takes no option of label-based annotation."""
    clash = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if clash:
        raise click.UsageError(f"--reference cannot be combined with {', '.join(clash)}.")


def _labels_only(**given) -> None:
    """Without ``--reference``: the mapping options are usage errors and ``--labels-key`` is required."""
    for name, value in given.items():
        if value is not None:
            raise click.UsageError(f"--{name.replace('_', '-')} applies to --reference REFDIR only.")


@click.command()
@INPUT
@output_options
@labels_key_option("obs column with the few known labels (not with --reference).", required=False)
@unlabeled_category_option()
@unknown_threshold_option
@n_neighbors_option()
@click.option(
    "--bridges",
    type=click.Choice(get_args(Bridges)),
    default="auto",
    show_default=True,
    help="Mutual-nearest-neighbour edges between the batches of --batch-key: auto adds them only when the "
    "batches hardly mix in the graph, mnn always, none never (not with --reference).",
)
@click.option(
    "--reuse-embedding",
    is_flag=True,
    help="Use obsm['X_biossl'] already in IN (from `biossl embed`) instead of embedding again.",
)
@click.option(
    "--markers",
    "markers_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Marker genes per cell type (GMT, or TSV: type<TAB>gene per line or type<TAB>gene1<TAB>gene2...): "
    "annotate from them, with or without --labels-key.",
)
@click.option(
    "--reference",
    "reference",
    metavar="REFDIR",
    type=click.Path(file_okay=False),
    help="Annotate IN from a reference saved by `biossl fit-reference` instead of from labels in IN "
    "(the same as `biossl map`).",
)
@map_options("With --reference: ")
@model_options()
@backed_option
@common_options
def annotate(
    input_path: str, output: str, force: bool, labels_key: str | None, unlabeled_category: str,
    unknown_threshold: float | None, n_neighbors: int, bridges: Bridges, reuse_embedding: bool,
    markers_path: str | None, reference: str | None,
    mapping_threshold: float | None, gene_map: str | None, gene_key: str | None, model: str, batch_key: str | None,
    layer: str | None, n_latent: int | None, max_steps: int | None, seed: int, device: Device, threads: int | None,
    save_model: str | None, backed: bool,
) -> None:  # fmt: skip
    """Annotate every cell of IN.h5ad from a few labelled ones (or marker genes, or a reference); write OUT.h5ad.

    Runs setup → embed → neighbors → annotate (or reuses a model with --model DIR, or the embedding
    of `biossl embed` with --reuse-embedding). Writes obs['biossl_label'], obs['biossl_confidence'],
    obsm['biossl_proba'], obsm['X_biossl'], obsp['biossl_connectivities'/'_distances'], uns['biossl'].
    With --markers FILE, seeds come from marker genes (plus the labels of --labels-key, if given) and
    obs['biossl_seed'] and obsm['biossl_marker_scores'] are added. With --reference REFDIR, maps IN onto
    the reference (genes matched by name, or renamed first with --gene-map) and adds
    obs['biossl_mapping_score'] and uns['biossl']['gene_overlap'].
    """
    start = time.perf_counter()
    if reference is not None:
        _reference_clash(
            labels_key=labels_key, reuse_embedding=reuse_embedding or None, model=None if model == "auto" else model,
            save_model=save_model, layer=layer, n_latent=n_latent, markers=markers_path,
            bridges=None if bridges == "auto" else bridges,
        )  # fmt: skip
        map_file(
            input_path, output, reference, batch_key=batch_key, unknown_threshold=unknown_threshold,
            mapping_threshold=mapping_threshold, gene_map=gene_map, gene_key=gene_key, n_neighbors=n_neighbors,
            max_steps=max_steps, seed=seed, device=device, threads=threads, force=force, start=start, backed=backed,
        )  # fmt: skip
        return
    _labels_only(mapping_threshold=mapping_threshold, gene_map=gene_map, gene_key=gene_key)
    if labels_key is None and markers_path is None:
        raise click.UsageError("Missing option '--labels-key' (or give --markers FILE or --reference REFDIR).")
    markers = _read_markers(markers_path)
    if reuse_embedding and (model != "auto" or save_model is not None):
        raise click.UsageError("--reuse-embedding cannot be combined with --model or --save-model.")
    model = check_model_option(model, save_model)
    check_threshold(unknown_threshold)
    check_backed(backed, layer)
    check_h5ad_name(output)
    check_io(input_path, {"output": output, "--save-model": save_model}, force=force)
    with cli_threads(threads):
        import biossl

        adata = read_input(input_path, backed=backed)
        counts_from_raw(adata, layer)
        n_labelled, n_types = (0, 0) if labels_key is None else check_labels(adata, labels_key, unlabeled_category)
        how = embedding(
            adata, input_path, reuse=reuse_embedding, hint="run `biossl embed` on it first or ", model=model,
            batch_key=batch_key, layer=layer, n_latent=n_latent, max_steps=max_steps, seed=seed, device=device,
            save_model=save_model, force=force,
        )  # fmt: skip
        biossl.tl.neighbors(adata, n_neighbors=n_neighbors, bridges=bridges, seed=seed)
        seeds, n_types = _annotate_step(
            adata, markers, labels_key, unlabeled_category, unknown_threshold, n_labelled, n_types
        )
        write_h5ad(adata, output, force=force)
    n_unknown = int((adata.obs["biossl_label"] == "Unknown").sum())
    n_attached = 0 if markers is not None else int(adata.uns["biossl"]["annotate"].get("n_attached", 0))
    attached = f", {n_attached} without a graph path to a label called from their nearest cells" if n_attached else ""
    saved = f"; model saved to {save_model}" if save_model else ""
    echo_summary(
        f"annotated {adata.n_obs} cells from {seeds} ({n_types} types, {n_unknown} Unknown{attached}; {how}) "
        f"in {elapsed(start)} -> {output}{saved}"
    )


def _annotate_step(
    adata, markers, labels_key, unlabeled_category, unknown_threshold, n_labelled: int, n_types: int
) -> tuple[str, int]:
    """``tl.annotate`` from labels, or ``tl.annotate_markers``; returns what seeded it (for the summary) and types."""
    import biossl

    if markers is None:
        biossl.tl.annotate(
            adata, labels_key, unlabeled_category=unlabeled_category, unknown_threshold=unknown_threshold
        )
        return f"{n_labelled} labels", n_types
    biossl.tl.annotate_markers(
        adata, markers, labels_key=labels_key, unlabeled_category=unlabeled_category,
        unknown_threshold=unknown_threshold,
    )  # fmt: skip
    n_seeds = int((adata.obs["biossl_seed"] == "markers").sum())
    labels = f" and {n_labelled} labels" if labels_key else ""
    return f"markers of {len(markers)} types ({n_seeds} seed cells){labels}", len(adata.uns["biossl"]["classes"])


def _read_markers(path: str | None) -> dict | None:
    """The marker file of ``--markers``, read before any work so that a bad file fails fast and names the option."""
    if path is None:
        return None
    from ..tl._markers import read_markers

    try:
        return read_markers(path)
    except ValueError as err:
        raise CliError(f"--markers: {err}") from None


@click.command()
@INPUT
@output_options
@model_options()
@backed_option
@common_options
def embed(
    input_path: str, output: str, force: bool, model: str, batch_key: str | None, layer: str | None,
    n_latent: int | None, max_steps: int | None, seed: int, device: Device, threads: int | None,
    save_model: str | None, backed: bool,
) -> None:  # fmt: skip
    """Embed the cells of IN.h5ad (latent only); write OUT.h5ad with obsm['X_biossl'].

    Follow with `biossl annotate OUT.h5ad --reuse-embedding ...`, or reuse the model saved with
    --save-model on other data (`--model DIR`).
    """
    start = time.perf_counter()
    model = check_model_option(model, save_model)
    check_backed(backed, layer)
    check_h5ad_name(output)
    check_io(input_path, {"output": output, "--save-model": save_model}, force=force)
    with cli_threads(threads):
        adata = read_input(input_path, backed=backed)
        counts_from_raw(adata, layer)
        how = embed_cells(
            adata, model=model, batch_key=batch_key, layer=layer, n_latent=n_latent, max_steps=max_steps, seed=seed,
            device=device, save_model=save_model, force=force,
        )  # fmt: skip
        write_h5ad(adata, output, force=force)
    saved = f"; model saved to {save_model}" if save_model else ""
    echo_summary(
        f"embedded {adata.n_obs} cells x {int(adata.var['biossl_hvg'].sum())} genes ({how} latent) "
        f"in {elapsed(start)} -> {output}{saved}"
    )
