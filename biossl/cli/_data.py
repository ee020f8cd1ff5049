"""The data side the commands share: read and write h5ad files, find the counts, embed, plot, write tables."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ._common import CliError, warn

__all__ = [
    "check_labels", "counts_from_raw", "embed_cells", "embedding", "few_labels_pbmc", "plot_annotation", "quiet_scanpy",
    "read_input", "tsv", "use_layer", "write_h5ad",
]  # fmt: skip


def read_input(path: str, *, backed: bool = False):
    """The input h5ad (read only)."""
    from .._io import read_h5ad

    return read_h5ad(path, backed=backed)


def write_h5ad(adata, path: str, *, force: bool) -> None:
    """Write ``adata`` atomically; an output that appeared meanwhile is an error without ``--force``."""
    from .._io import write_h5ad_atomic

    try:
        write_h5ad_atomic(adata, path, overwrite=force)
    except FileExistsError:
        raise CliError(f"{path!r} appeared while biossl was running; pass --force to overwrite it.") from None


def counts_from_raw(adata, layer: str | None) -> None:
    """Use counts kept in ``adata.raw`` (scanpy's habit) when X and layers['counts'] hold none; say so.

    Only when ``adata.raw`` holds counts for every gene of X; they go to ``layers['counts']`` of the in-memory
    copy, so the output file records where the counts came from (uns['biossl']['setup']['counts']).
    """
    from ..pp import count_problem

    if layer is not None or adata.isbacked or adata.raw is None or "counts" in adata.layers:
        return
    if count_problem(adata.X) is None or count_problem(adata.raw.X) is not None:
        return
    if not adata.var_names.isin(adata.raw.var_names).all():
        return  # the no-counts error then points at adata.raw
    adata.layers["counts"] = adata.raw[:, adata.var_names].X
    warn(
        f"X holds no raw counts ({count_problem(adata.X)}); using the counts in adata.raw ({adata.raw.n_vars} genes, "
        f"{adata.n_vars} of them in X) as layers['counts']."
    )


def use_layer(adata, layer: str | None) -> None:
    """``--layer NAME`` for steps without a ``layer=`` argument: put the layer in X of the in-memory copy."""
    if layer is None:
        return
    if layer not in adata.layers:
        raise CliError(f"--layer {layer!r} is not a layer of the input (have: {list(adata.layers) or 'none'}).")
    adata.X = adata.layers[layer]


def embed_cells(adata, *, model, batch_key, layer, n_latent, max_steps, seed, device, save_model, force) -> str:
    """Run setup → embed with the CLI options; returns a short description of the embedding."""
    import biossl

    biossl.pp.setup(adata, layer=layer, batch_key=batch_key)
    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    biossl.tl.embed(
        adata,
        model=model,
        n_latent=n_latent,
        batch_key=batch_key,
        seed=seed,
        device=device,
        save_model=save_model,
        overwrite=force,
        progress=None,
        **kwargs,
    )
    rec = adata.uns["biossl"]["embed"]
    kind = rec["model"] if rec.get("trained", True) else f"saved {rec['model']}"
    return f"{kind}, {adata.obsm['X_biossl'].shape[1]}-d"


def embedding(adata, input_path: str, *, reuse: bool, hint: str = "", **options) -> str:
    """``--reuse-embedding``: the obsm['X_biossl'] IN holds, else :func:`embed_cells` with ``options``; returns how."""
    if not reuse:
        return embed_cells(adata, **options)
    if "X_biossl" not in adata.obsm:
        raise CliError(f"{input_path!r} has no obsm['X_biossl']; {hint}drop --reuse-embedding.")
    return "reused embedding"


def check_labels(adata, labels_key: str, unlabeled_category: str | None) -> tuple[int, int]:
    """Fail fast (before training) on an unusable labels column; returns (n labelled, n types)."""
    from ..tl._propagation import split_labels

    codes, classes = split_labels(adata, labels_key, unlabeled_category)
    return int((codes >= 0).sum()), len(classes)


def few_labels_pbmc(seed: int):
    """The bundled PBMC 3k data with 5 labels per type in obs['labels']; returns it, the truth and the mask."""
    import pandas as pd

    import biossl

    from ..metrics import fewlabel_split

    adata = biossl.datasets.pbmc()
    truth = adata.obs["cell_type"].astype(str)
    labelled = fewlabel_split(truth.to_numpy(), 5, seed)
    adata.obs["labels"] = pd.Categorical(truth.where(labelled), categories=sorted(set(truth)))
    return adata, truth, labelled


@contextlib.contextmanager
def quiet_scanpy() -> Iterator[None]:
    """Silence scanpy's own log lines (e.g. its UMAP note about a non-umap graph) for the duration."""
    import scanpy as sc

    previous = sc.settings.verbosity
    sc.settings.verbosity = 0
    try:
        yield
    finally:
        sc.settings.verbosity = previous


def plot_annotation(adata, path: str | os.PathLike, *, key: str, force: bool) -> None:
    """UMAP of labels and confidence (biossl.pl.annotation), saved atomically with the usual file mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import biossl

    from .._io import write_figure_atomic

    with quiet_scanpy():
        fig = biossl.pl.annotation(adata, key=key, show=False)
    try:
        write_figure_atomic(fig, path, overwrite=force)
    finally:
        plt.close(fig)


def tsv(rows: list[dict]) -> str:
    """Rows as a tab-separated table (4 significant digits, NA for missing values)."""
    import pandas as pd

    return pd.DataFrame(rows).to_csv(sep="\t", index=False, float_format="%.4g", na_rep="NA")
