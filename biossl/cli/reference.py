"""``biossl fit-reference`` and ``biossl map``: train a reference once, map new data onto it.

``biossl annotate --reference REFDIR`` is an alias of ``biossl map``: both run :func:`map_file`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._common import CliError, check_io, cli_threads, common_options, echo_summary, elapsed, warn
from ._data import counts_from_raw, read_input, use_layer, write_h5ad
from ._options import (
    INPUT,
    Device,
    backed_option,
    batch_key_option,
    check_backed,
    check_h5ad_name,
    check_threshold,
    device_option,
    force_option,
    gene_key_option,
    labels_key_option,
    layer_option,
    n_neighbors_option,
    output_options,
    seed_option,
    threads_option,
    unknown_threshold_option,
    unlabeled_category_option,
)

__all__ = ["fit_reference", "map_file", "map_options", "map_query_cmd"]


def map_options(when: str = ""):
    """``--mapping-threshold``, ``--gene-map``, ``--gene-key``; ``when`` prefixes their help (annotate's alias)."""

    def decorate(func):
        func = gene_key_option(f"{when}var column of IN with the gene identifiers to match [default: var_names].")(func)
        func = click.option(
            "--gene-map",
            metavar="TSV",
            help=f"{when}rename IN's genes into the reference's first, one-to-one pairs only: a two-column "
            "TSV/CSV with a header (IN's gene, reference's gene), or human_to_mouse / mouse_to_human (built in, "
            "Ensembl).",
        )(func)
        return click.option(
            "--mapping-threshold",
            type=click.FloatRange(min=0.0),
            help=f"{when}call every cell whose mapping score (0-1) is below this 'Unknown'. Unset, the threshold is "
            "soft [default: 0.5]: the lower-scoring half of the cells below it seed the 'Unknown' calls, which are "
            "settled on an expression graph. 0.75 also calls novel types that sit next to a known one, and more "
            "known cells with them.",
        )(func)

    return decorate


def map_file(
    input_path: str, output: str, reference: str, *, batch_key: str | None, unknown_threshold: float | None,
    mapping_threshold: float | None, gene_map: str | None, gene_key: str | None, n_neighbors: int,
    max_steps: int | None, seed: int, device: Device, threads: int | None, force: bool, start: float,
    backed: bool = False,
) -> None:  # fmt: skip
    """Map IN onto a saved reference and write OUT (``biossl map``, ``biossl annotate --reference``)."""
    check_threshold(unknown_threshold)
    if not (Path(reference) / "config.json").is_file():
        raise CliError(f"--reference {reference!r} is not a biossl reference directory (no config.json in it).")
    check_h5ad_name(output)
    check_io(input_path, {"output": output}, force=force)
    if gene_map is not None:  # read once up front, so a bad table fails fast and names the option
        from .._genemap import read_gene_map

        read_gene_map(gene_map, option="--gene-map")
    with cli_threads(threads):
        import biossl

        ref = biossl.Reference.load(reference, device=device)
        adata = read_input(input_path, backed=backed)
        counts_from_raw(adata, None)
        kwargs = {} if max_steps is None else {"fine_tune_steps": max_steps}
        if mapping_threshold is not None:
            kwargs["mapping_threshold"] = mapping_threshold
        if gene_map is not None:
            kwargs["gene_map"] = gene_map
        biossl.tl.map_query(
            adata, ref, batch_key=batch_key, n_neighbors=n_neighbors, unknown_threshold=unknown_threshold,
            gene_key=gene_key, seed=seed, device=device, progress=None, **kwargs,
        )  # fmt: skip
        write_h5ad(adata, output, force=force)
    overlap = adata.uns["biossl"]["gene_overlap"]
    n_unknown = int((adata.obs["biossl_label"] == "Unknown").sum())
    echo_summary(
        f"mapped {adata.n_obs} cells onto {reference} ({len(ref.classes)} types, {overlap['n_matched']} of "
        f"{overlap['n_model_genes']} genes matched, {n_unknown} Unknown) in {elapsed(start)} -> {output}"
    )


@click.command(name="map")
@INPUT
@output_options
@click.option(
    "--reference", "reference", required=True, metavar="REFDIR", type=click.Path(file_okay=False),
    help="Reference directory saved by `biossl fit-reference`.",
)  # fmt: skip
@unknown_threshold_option
@n_neighbors_option()
@map_options()
@batch_key_option()
@click.option(
    "--max-steps", type=click.IntRange(min=1),
    help="Fine-tuning budget in gradient steps for IN's batches [default: as biossl.tl.map_query, 500].",
)  # fmt: skip
@seed_option()
@device_option("Where to run the model (auto: a CUDA GPU when there is one).")
@backed_option
@threads_option
@common_options
def map_query_cmd(
    input_path: str, output: str, force: bool, reference: str, unknown_threshold: float | None, n_neighbors: int,
    mapping_threshold: float | None, gene_map: str | None, gene_key: str | None, batch_key: str | None,
    max_steps: int | None, seed: int, device: Device, threads: int | None, backed: bool,
) -> None:  # fmt: skip
    """Annotate every cell of IN.h5ad from a reference (`biossl fit-reference`); write OUT.h5ad.

    Maps IN onto the reference (genes matched by name, or renamed first with --gene-map) and writes
    obs['biossl_label'], obs['biossl_confidence'], obs['biossl_mapping_score'], obsm['biossl_proba'],
    uns['biossl']['gene_overlap']. The same as `biossl annotate IN.h5ad --reference REFDIR`.
    """
    map_file(
        input_path, output, reference, batch_key=batch_key, unknown_threshold=unknown_threshold,
        mapping_threshold=mapping_threshold, gene_map=gene_map, gene_key=gene_key, n_neighbors=n_neighbors,
        max_steps=max_steps, seed=seed, device=device, threads=threads, force=force, start=time.perf_counter(),
        backed=backed,
    )  # fmt: skip


@click.command(name="fit-reference")
@INPUT
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Reference directory to write."
)
@force_option("Overwrite an existing reference directory.")
@labels_key_option("obs column with the reference's cell types.")
@unlabeled_category_option()
@batch_key_option("obs column with the batch of each reference cell.")
@gene_key_option("var column with the gene identifiers to store [default: var_names].")
@click.option("--n-latent", type=click.IntRange(min=1), default=20, show_default=True, help="Latent dimensions.")
@click.option("--max-steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Training budget.")
@seed_option()
@device_option("Where to train the model (auto: a CUDA GPU when there is one).")
@layer_option
@threads_option
@backed_option(writes_h5ad=False)
@common_options
def fit_reference(
    input_path: str, output: str, force: bool, labels_key: str, unlabeled_category: str, batch_key: str | None,
    gene_key: str | None, n_latent: int, max_steps: int, seed: int, device: Device, layer: str | None,
    threads: int | None, backed: bool,
) -> None:  # fmt: skip
    """Train a reference on labelled IN.h5ad and save it to a directory (model.pt, reference.npz, config.json).

    Map new data onto it: `biossl map QUERY.h5ad --reference REFDIR -o OUT.h5ad`.
    """
    start = time.perf_counter()
    check_backed(backed, layer)
    check_io(input_path, {"output": output}, force=force)
    with cli_threads(threads):
        import biossl

        from ..tl._propagation import label_codes

        adata = read_input(input_path, backed=backed)
        counts_from_raw(adata, layer)
        use_layer(adata, layer)
        n_labelled = int((label_codes(adata, labels_key, unlabeled_category)[0] >= 0).sum())
        if n_labelled < adata.n_obs / 2:
            warn(
                f"only {n_labelled} of {adata.n_obs} cells are labelled in obs[{labels_key!r}]; the reference's "
                "types come from those cells alone (the others train the model only)."
            )
        ref = biossl.tl.fit_reference(
            adata, labels_key, batch_key=batch_key, unlabeled_category=unlabeled_category, n_latent=n_latent,
            max_steps=max_steps, gene_key=gene_key, seed=seed, device=device, progress=None,
        )  # fmt: skip
        try:
            ref.save(output, overwrite=force)
        except FileExistsError:
            raise CliError(f"{output!r} appeared while biossl was running; pass --force to overwrite it.") from None
    echo_summary(
        f"reference of {ref.latent.shape[0]} cells ({n_labelled} labelled, {len(ref.classes)} types, "
        f"{len(ref.model.genes)} genes) "
        f"in {elapsed(start)} -> {output}"
    )
