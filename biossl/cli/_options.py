"""Options more than one command takes, defined once, and the checks of their values (before any work)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import get_args

import click

from .._types import Device, ModelKind
from ._common import CliError

__all__ = [
    "DEVICES", "INPUT", "MODEL_KINDS", "Device", "ModelKind", "batch_key_option", "check_h5ad_name",
    "check_model_option", "check_threshold", "device_option", "force_option", "gene_key_option", "key_option",
    "labels_key_option", "layer_option", "model_options", "n_neighbors_option", "output_options", "parse_ints",
    "seed_option", "threads_option", "truth_key_option", "unknown_threshold_option", "unlabeled_category_option",
]  # fmt: skip

DEVICES: tuple[str, ...] = get_args(Device)
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)

_THREADS_HELP = (
    "Threads for torch, BLAS and numba [default: the CPUs biossl may use (CPU affinity, cgroup quota, "
    "SLURM_CPUS_PER_TASK), with one torch thread for training the VAE]."
)
_UNLABELLED_HELP = "Value marking unlabelled cells (besides NaN)."

INPUT = click.argument("input_path", metavar="IN.h5ad", type=click.Path(dir_okay=True))


def force_option(help: str = "Overwrite existing outputs."):
    """``--force``: replace existing outputs."""
    return click.option("--force", is_flag=True, help=help)


def threads_option(func: Callable) -> Callable:
    """``--threads N`` (see :func:`biossl.cli._common.cli_threads`)."""
    return click.option("--threads", type=click.IntRange(min=1), help=_THREADS_HELP)(func)


def seed_option(help: str = "Random seed."):
    """``--seed``, default 0."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def device_option(help: str = "Where to train the model."):
    """``--device auto|cpu|cuda``."""
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help=help)


def backed_option(func: Callable | None = None, *, writes_h5ad: bool = True) -> Callable:
    """``--backed``: read the input from disk in chunks (files larger than memory).

    ``@backed_option`` on commands that write an h5ad (its X is copied in chunks), ``@backed_option(writes_h5ad=False)``
    on the others.
    """
    text = "Read IN.h5ad from disk in chunks instead of loading it (files larger than memory)"
    text += "; OUT gets IN's X copied in chunks." if writes_h5ad else "."
    decorate = click.option("--backed", is_flag=True, help=text)
    return decorate if func is None else decorate(func)


def check_backed(backed: bool, layer: str | None) -> None:
    """``--backed`` reads the counts from X on disk (or a layers['counts'] held in memory), not from --layer."""
    if backed and layer is not None:
        raise click.UsageError("--backed cannot be combined with --layer: a backed file's counts are read from X.")


def layer_option(func: Callable) -> Callable:
    """``--layer NAME``: the layer with raw counts."""
    layer_help = "Layer with raw counts (default: X, else layers['counts'])."
    return click.option("--layer", metavar="NAME", help=layer_help)(func)


def batch_key_option(help: str = "obs column with the batch of each cell."):
    """``--batch-key KEY``."""
    return click.option("--batch-key", metavar="KEY", help=help)


def gene_key_option(help: str):
    """``--gene-key KEY``: a var column with the gene identifiers."""
    return click.option("--gene-key", metavar="KEY", help=help)


def labels_key_option(help: str, *, required: bool = True):
    """``--labels-key KEY``: the obs column with the labels."""
    return click.option("--labels-key", required=required, metavar="KEY", help=help)


def unlabeled_category_option(help: str = _UNLABELLED_HELP):
    """``--unlabeled-category``, default ``Unknown``."""
    return click.option("--unlabeled-category", default="Unknown", show_default=True, help=help)


def unknown_threshold_option(func: Callable) -> Callable:
    """``--unknown-threshold`` (checked by :func:`check_threshold`)."""
    return click.option(
        "--unknown-threshold", type=float,
        help="Call cells 'Unknown' below this confidence (0-1) [default: none; only cells no label reaches].",
    )(func)  # fmt: skip


def n_neighbors_option(help: str = "Neighbours per cell.", *, minimum: int = 2, default: int = 15):
    """``--n-neighbors``."""
    return click.option(
        "--n-neighbors", type=click.IntRange(min=minimum), default=default, show_default=True, help=help
    )


def truth_key_option(help: str):
    """``--truth-key KEY``: obs column with true labels."""
    return click.option("--truth-key", metavar="KEY", help=help)


def key_option(func: Callable) -> Callable:
    """``--key``: the ``key_added`` of annotate."""
    return click.option("--key", default="biossl", show_default=True, help="key_added used by annotate.")(func)


def output_options(func: Callable) -> Callable:
    """``-o/--output OUT.h5ad`` and ``--force``."""
    func = force_option()(func)
    return click.option(
        "-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Output .h5ad file."
    )(func)


def _apply(func: Callable, options: list[Callable]) -> Callable:
    """Decorate with ``options`` so that they appear in the help in list order."""
    for opt in reversed(options):
        func = opt(func)
    return func


def model_options(*, save: bool = True) -> Callable[[Callable], Callable]:
    """Options shared by the commands that embed: model, batches, counts layer, training, device, threads."""

    def decorate(func: Callable) -> Callable:
        opts = [
            click.option(
                "--model",
                default="auto",
                show_default=True,
                metavar="KIND|DIR",
                help="Embedding to compute: auto (PCA; VAE when --save-model is given), vae, ae, pca; or a "
                "saved model directory to reuse without training.",
            ),
            batch_key_option(),
            layer_option,
            click.option("--n-latent", type=click.IntRange(min=1), help="Latent dimensions [default: 20, PCA 50]."),
            click.option(
                "--max-steps",
                type=click.IntRange(min=1),
                help="VAE/AE training budget in gradient steps [default: as biossl.tl.embed, 3000].",
            ),
            seed_option(),
            device_option(),
            threads_option,
        ]
        if save:
            opts.append(
                click.option(
                    "--save-model",
                    metavar="DIR",
                    type=click.Path(file_okay=False),
                    help="Save the trained model to this directory (implies --model vae when --model is auto).",
                )
            )
        return _apply(func, opts)

    return decorate


# ---------------------------------------------------------------------------------------------------------------
# checks of option values


def parse_ints(text: str, name: str, *, minimum: int) -> list[int]:
    """``"1,3,5"`` or ``"0-4"`` (or a mix, ``"1,3,10-12"``) to a sorted list of unique integers."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                out.update(range(lo_i, hi_i + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise click.BadParameter(f"{part!r} is not an integer or a range like 0-4", param_hint=name) from None
    if not out:
        raise click.BadParameter("give at least one value, e.g. 1,3,5 or 0-4", param_hint=name)
    if min(out) < minimum:
        raise click.BadParameter(f"values must be >= {minimum}, got {min(out)}", param_hint=name)
    return sorted(out)


def check_model_option(model: str, save_model: str | None) -> str:
    """Validate ``--model`` early (a kind or an existing directory); with --save-model, ``tl.embed`` trains a VAE."""
    if model in MODEL_KINDS:
        if save_model is not None and model == "pca":
            raise CliError("--model pca has no trained model to save; drop --save-model or use --model vae.")
        return model
    path = Path(model)
    if not path.exists():
        raise CliError(
            f"--model {model!r} is neither a model kind ({', '.join(MODEL_KINDS)}) nor an existing directory."
        )
    if not (path / "config.json").is_file():
        raise CliError(f"--model {model!r} is not a biossl model directory (no config.json in it).")
    return model


def check_threshold(unknown_threshold: float | None) -> None:
    """``--unknown-threshold`` is a confidence: between 0 and 1."""
    if unknown_threshold is not None and not 0 <= unknown_threshold <= 1:
        raise CliError(f"--unknown-threshold must be between 0 and 1, got {unknown_threshold!r}.")


def check_h5ad_name(output: str, option: str = "-o/--output") -> None:
    """Refuse an h5ad output named like another format (``-o out.csv`` would silently be an h5ad)."""
    suffix = Path(output).suffix
    if suffix and suffix.lower() != ".h5ad":
        raise CliError(f"{option} {output!r} ends in {suffix!r}, but this command writes an h5ad file; name it .h5ad.")
