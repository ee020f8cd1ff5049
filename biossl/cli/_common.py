"""The ``biossl`` command line: the annotation steps as commands on .h5ad files.

Every command reads its input read-only and never writes to it, writes each output atomically (temp
file in the output's directory, fsync, rename), refuses to replace an existing output without
``--force``, prints a one-line summary on stdout and reports bad input as one ``error: ...`` line on
stderr with exit status 1 (``--debug`` shows the traceback instead). Nothing heavy (anndata, scanpy,
torch) is imported at module level, so ``biossl --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from .. import __version__

__all__ = ["main"]

MODEL_KINDS = ("auto", "vae", "ae", "pca")
DEMO_H5AD, DEMO_PNG = "pbmc3k_annotated.h5ad", "pbmc3k_umap.png"
_DEBUG = "biossl.debug"
FEW_SCORED = 100  # evaluate warns when a k leaves fewer hidden cells than this to score
_THREADS_HELP = (
    "Threads for torch, BLAS and numba [default: the CPUs biossl may use (CPU affinity, cgroup quota, "
    "SLURM_CPUS_PER_TASK), with one torch thread for training the VAE]."
)


class CliError(click.ClickException):
    """Bad input or a failed step: shown as one ``error: ...`` line on stderr, exit status 1."""

    def show(self, file=None) -> None:
        """Print ``error: <message>`` to stderr."""
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class _EchoHandler(logging.Handler):
    """Log records of the ``biossl`` logger as ``warning: ...`` lines on the current stderr (each line once)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.levelname.lower()}: {cli_message(record.getMessage())}"
        if line not in self.seen:  # e.g. the label check before training and the step itself
            self.seen.add(line)
            click.echo(line, err=True)


_HANDLER = _EchoHandler()


# ---------------------------------------------------------------------------------------------------------------
# shared plumbing


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message (bounded), for an ``error:`` line."""
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = f"key {text} not found"
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= 400 else first[:397] + "..."


# the API's messages name Python arguments; under the CLI they name the option (phrases first, then names)
_CLI_PHRASES = (
    ("pass case_sensitive=True", "pass --case-sensitive"),
    ("or batch_key=None", "or drop --batch-key"),
    ("pass overwrite=True to replace it", "pass --force to replace it"),
    ("tl.embed(save_model=...)", "`biossl embed --save-model DIR`"),
    ("Pass model= (e.g. the one saved by", "Pass --model DIR (e.g. the one saved by"),
    ("; see uns['biossl_genes']['unknown_genes'].", "; the score table has no rows for them."),
)
_CLI_NAMES = (
    "layer", "batch_key", "labels_key", "gene_key", "n_neighbors", "n_latent", "max_steps", "device", "model",
    "save_model", "unknown_threshold", "mapping_threshold", "seed", "truth_key", "key_added", "gene_map",
)  # fmt: skip
_CLI_NAME = re.compile(rf"\b({'|'.join(_CLI_NAMES)})=(\S?)")
_ALL_LABELLED = re.compile(r"(nothing to annotate; mark unlabelled cells as NaN) or ('.*'|None)\.$")


def cli_message(text: str) -> str:
    """An API message in the CLI's words: ``layer='x'`` -> ``--layer 'x'``, ``case_sensitive=True`` -> option."""
    for python, cli in _CLI_PHRASES:
        text = text.replace(python, cli)
    text = _ALL_LABELLED.sub(r"\1 or as the value given to --unlabeled-category (now \2).", text)

    def option(match) -> str:
        name = "--" + match.group(1).replace("_", "-")
        nxt = match.group(2)
        return f"{name} {nxt}" if nxt and nxt not in ".,;)" else f"{name}{nxt}"

    return _CLI_NAME.sub(option, text)


def _guarded(func: Callable) -> Callable:
    """Turn exceptions of a command into one ``error:`` line (or a traceback with ``--debug``)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if ctx.meta.get(_DEBUG):
                raise
            if isinstance(err, ValueError | OSError | KeyError):  # the API's bad-input errors, unreadable files
                raise CliError(cli_message(_one_line(err))) from None
            raise CliError(
                f"unexpected {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)"
            ) from None

    return wrapper


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG] = True


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """Show biossl's warnings (and with ``-v`` its step log) on stderr for this invocation only."""
    logger = logging.getLogger("biossl")
    root = ctx.find_root()
    if "biossl.log_level" not in root.meta:
        root.meta["biossl.log_level"] = logger.level
        _HANDLER.seen.clear()
        logger.addHandler(_HANDLER)

        def restore() -> None:
            logger.removeHandler(_HANDLER)
            logger.setLevel(root.meta["biossl.log_level"])

        root.call_on_close(restore)
    root.meta["biossl.verbose"] = bool(root.meta.get("biossl.verbose")) or value
    logger.setLevel(logging.INFO if root.meta["biossl.verbose"] else logging.WARNING)


def _common(func: Callable) -> Callable:
    """Options every command takes: ``--debug``, ``-v/--verbose``, ``--version`` (plus ``-h/--help``)."""
    func = click.option(
        "--debug", is_flag=True, expose_value=False, callback=_set_debug, help="Show the full traceback on errors."
    )(func)
    func = click.option(
        "-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbose, help="Log each step to stderr."
    )(func)
    return click.version_option(__version__, "--version", prog_name="biossl", message="%(prog)s %(version)s")(func)


def _parse_ints(text: str, name: str, *, minimum: int) -> list[int]:
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


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_io(inp: str | None, outputs: dict[str, str | None], *, force: bool) -> None:
    """Fail before any work when the input is missing, an output is the input, or exists without --force."""
    if inp is not None:
        path = Path(inp)
        if not path.exists():
            raise CliError(f"input file {inp!r} does not exist.")
        if path.is_dir():
            raise CliError(f"input {inp!r} is a directory, not an h5ad file.")
    given = {name: Path(p) for name, p in outputs.items() if p is not None}
    seen: dict[str, str] = {}
    for name, out in given.items():
        if inp is not None and _same_file(Path(inp), out):
            raise CliError(
                f"{name} {str(out)!r} is the input file; biossl never writes to its input, choose another path."
            )
        key = os.path.realpath(out)
        if key in seen:
            raise CliError(f"{seen[key]} and {name} are the same path {str(out)!r}; give each output its own path.")
        seen[key] = name
        if out.exists() and not force:
            raise CliError(f"{name} {str(out)!r} already exists; pass --force to overwrite it.")
        base = next((p for p in out.parents if p.exists()), None)  # fail before the work, not at the write
        if base is not None and not base.is_dir():
            raise CliError(f"cannot write {name} {str(out)!r}: {str(base)!r} is a file, not a directory.")
        if base is not None and not os.access(base, os.W_OK | os.X_OK):
            raise CliError(f"cannot write {name} {str(out)!r}: directory {str(base)!r} is not writable.")


def _check_model_option(model: str, save_model: str | None) -> str:
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


def _threads(n: int | None):
    """Limit torch, BLAS/OpenMP and numba to ``--threads``, by default to the CPUs this process may use.

    Entered before any work, so the environment variables reach the libraries the command loads later.
    """
    from .._threads import available_cpus, default_threads, limit_threads

    chosen = n is not None
    how = "--threads" if chosen else f"default; {available_cpus()} CPUs available"
    n = n if chosen else default_threads()
    logging.getLogger("biossl").info("threads: %d (%s)", n, how)
    return limit_threads(n, chosen=chosen)


@contextlib.contextmanager
def _quiet_scanpy() -> Iterator[None]:
    """Silence scanpy's own log lines (e.g. its UMAP note about a non-umap graph) for the duration."""
    import scanpy as sc

    previous = sc.settings.verbosity
    sc.settings.verbosity = 0
    try:
        yield
    finally:
        sc.settings.verbosity = previous


def _plot(adata, path: str | os.PathLike, *, key: str, force: bool) -> None:
    """UMAP of labels and confidence (biossl.pl.annotation), saved atomically with the usual file mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import biossl

    from .._io import write_figure_atomic

    with _quiet_scanpy():
        fig = biossl.pl.annotation(adata, key=key, show=False)
    try:
        write_figure_atomic(fig, path, overwrite=force)
    finally:
        plt.close(fig)


def _warn(text: str) -> None:
    """A ``warning: ...`` line on stderr for misuse that still gives numbers (shown without -v)."""
    click.echo(f"warning: {text}", err=True)


def _elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"


def _echo_summary(text: str) -> None:
    click.echo(text)


def _read(path: str, *, backed: bool = False):
    from .._io import read_h5ad

    return read_h5ad(path, backed=backed)


def _write_h5ad(adata, path: str, *, force: bool) -> None:
    from .._io import write_h5ad_atomic

    try:
        write_h5ad_atomic(adata, path, overwrite=force)
    except FileExistsError:
        raise CliError(f"{path!r} appeared while biossl was running; pass --force to overwrite it.") from None


def _embed(adata, *, model, batch_key, layer, n_latent, max_steps, seed, device, save_model, force) -> str:
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


def _check_labels(adata, labels_key: str, unlabeled_category: str | None) -> tuple[int, int]:
    """Fail fast (before training) on an unusable labels column; returns (n labelled, n types)."""
    from ..tl._propagation import split_labels

    codes, classes = split_labels(adata, labels_key, unlabeled_category)
    return int((codes >= 0).sum()), len(classes)


def _check_threshold(unknown_threshold: float | None) -> None:
    if unknown_threshold is not None and not 0 <= unknown_threshold <= 1:
        raise CliError(f"--unknown-threshold must be between 0 and 1, got {unknown_threshold!r}.")


def _model_options(*, save: bool = True) -> Callable[[Callable], Callable]:
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
            click.option("--batch-key", metavar="KEY", help="obs column with the batch of each cell."),
            click.option("--layer", metavar="NAME", help="Layer with raw counts (default: X, else layers['counts'])."),
            click.option("--n-latent", type=click.IntRange(min=1), help="Latent dimensions [default: 20, PCA 50]."),
            click.option(
                "--max-steps",
                type=click.IntRange(min=1),
                help="VAE/AE training budget in gradient steps [default: as biossl.tl.embed, 3000].",
            ),
            click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
            click.option(
                "--device",
                type=click.Choice(["auto", "cpu", "cuda"]),
                default="auto",
                show_default=True,
                help="Where to train the model.",
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=1),
                help=_THREADS_HELP,
            ),
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
        for opt in reversed(opts):
            func = opt(func)
        return func

    return decorate


def _check_h5ad_name(output: str, option: str = "-o/--output") -> None:
    """Refuse an h5ad output named like another format (``-o out.csv`` would silently be an h5ad)."""
    suffix = Path(output).suffix
    if suffix and suffix.lower() != ".h5ad":
        raise CliError(f"{option} {output!r} ends in {suffix!r}, but this command writes an h5ad file; name it .h5ad.")


def _output_option(func: Callable) -> Callable:
    func = click.option("--force", is_flag=True, help="Overwrite existing outputs.")(func)
    return click.option(
        "-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Output .h5ad file."
    )(func)


_INPUT = click.argument("input_path", metavar="IN.h5ad", type=click.Path(dir_okay=True))


# ---------------------------------------------------------------------------------------------------------------
# the group


@click.group(name="biossl", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_common
def main() -> None:
    """biossl: few-label cell-type annotation on h5ad files.

    \b
    Typical use:
      biossl annotate cells.h5ad -o annotated.h5ad --labels-key cell_type
      biossl evaluate labelled.h5ad --labels-key cell_type --k 1,3,5 --seeds 0-4
      biossl demo

    Each command writes its outputs atomically, never modifies its input and prints a one-line summary.
    """  # noqa: D301 (click's \b paragraph marker must be a real backspace, not a raw string)
    _exit_on_sigterm()


def _exit_on_sigterm() -> None:
    """On SIGTERM (Snakemake, SLURM, ``kill``) delete the temp paths of unfinished writes, then exit 143."""
    from .._io import install_sigterm_cleanup

    restore = install_sigterm_cleanup(
        lambda: click.echo("error: terminated (SIGTERM); unfinished outputs were removed.", err=True)
    )
    if restore is not None:
        click.get_current_context().call_on_close(restore)


# ---------------------------------------------------------------------------------------------------------------
# annotate / embed


@main.command()
@_INPUT
@_output_option
@click.option("--labels-key", metavar="KEY", help="obs column with the few known labels (not with --reference).")
@click.option(
    "--unlabeled-category", default="Unknown", show_default=True, help="Value marking unlabelled cells (besides NaN)."
)
@click.option(
    "--unknown-threshold", type=float,
    help="Call cells 'Unknown' below this confidence (0-1) [default: none; only cells no label reaches].",
)  # fmt: skip
@click.option("--n-neighbors", type=click.IntRange(min=2), default=15, show_default=True, help="Neighbours per cell.")
@click.option(
    "--reuse-embedding",
    is_flag=True,
    help="Use obsm['X_biossl'] already in IN (from `biossl embed`) instead of embedding again.",
)
@click.option(
    "--reference",
    "reference",
    metavar="REFDIR",
    type=click.Path(file_okay=False),
    help="Annotate IN from a reference saved by `biossl fit-reference` instead of from labels in IN.",
)
@click.option(
    "--mapping-threshold",
    type=click.FloatRange(min=0.0),
    help="With --reference: cells whose mapping score (0-1) is below this seed the 'Unknown' calls, which are "
    "settled on the query's own graph [default: 0.5]; 0.75 also calls novel types that sit next to a known "
    "one, and more known cells with them.",
)
@click.option(
    "--gene-map",
    metavar="TSV",
    help="With --reference: rename IN's genes into the reference's first, one-to-one pairs only: a two-column "
    "TSV/CSV with a header (IN's gene, reference's gene), or human_to_mouse / mouse_to_human (built in, Ensembl).",
)
@click.option(
    "--gene-key", metavar="KEY",
    help="With --reference: var column of IN with the gene identifiers to match [default: var_names].",
)  # fmt: skip
@_model_options()
@_common
@_guarded
def annotate(
    input_path, output, force, labels_key, unlabeled_category, unknown_threshold, n_neighbors, reuse_embedding,
    reference, mapping_threshold, gene_map, gene_key, model, batch_key, layer, n_latent, max_steps, seed, device,
    threads, save_model,
) -> None:  # fmt: skip
    """Annotate every cell of IN.h5ad from a few labelled ones (or a reference); write OUT.h5ad.

    Runs setup → embed → neighbors → annotate (or reuses a model with --model DIR, or the embedding
    of `biossl embed` with --reuse-embedding). Writes obs['biossl_label'], obs['biossl_confidence'],
    obsm['biossl_proba'], obsm['X_biossl'], obsp['biossl_connectivities'/'_distances'], uns['biossl'].
    With --reference REFDIR, maps IN onto the reference (genes matched by name, or renamed first with
    --gene-map) and adds obs['biossl_mapping_score'] and uns['biossl']['gene_overlap'].
    """
    start = time.perf_counter()
    if reference is not None:
        clash = [
            name
            for name, value in (
                ("--labels-key", labels_key), ("--reuse-embedding", reuse_embedding or None),
                ("--model", None if model == "auto" else model), ("--save-model", save_model),
                ("--layer", layer), ("--n-latent", n_latent),
            )
            if value is not None
        ]  # fmt: skip
        if clash:
            raise click.UsageError(f"--reference cannot be combined with {', '.join(clash)}.")
        _check_threshold(unknown_threshold)
        _annotate_with_reference(
            input_path, output, reference, batch_key=batch_key, unknown_threshold=unknown_threshold,
            mapping_threshold=mapping_threshold, gene_map=gene_map, gene_key=gene_key, n_neighbors=n_neighbors,
            max_steps=max_steps, seed=seed, device=device, threads=threads, force=force, start=start,
        )  # fmt: skip
        return
    if mapping_threshold is not None:
        raise click.UsageError("--mapping-threshold applies to --reference REFDIR only.")
    if gene_map is not None:
        raise click.UsageError("--gene-map applies to --reference REFDIR only.")
    if gene_key is not None:
        raise click.UsageError("--gene-key applies to --reference REFDIR only.")
    if labels_key is None:
        raise click.UsageError("Missing option '--labels-key' (or give --reference REFDIR).")
    if reuse_embedding and (model != "auto" or save_model is not None):
        raise click.UsageError("--reuse-embedding cannot be combined with --model or --save-model.")
    model = _check_model_option(model, save_model)
    _check_threshold(unknown_threshold)
    _check_h5ad_name(output)
    _check_io(input_path, {"output": output, "--save-model": save_model}, force=force)
    with _threads(threads):
        import biossl

        adata = _read(input_path)
        _counts_from_raw(adata, layer)
        n_labelled, n_types = _check_labels(adata, labels_key, unlabeled_category)
        if reuse_embedding:
            if "X_biossl" not in adata.obsm:
                raise CliError(
                    f"{input_path!r} has no obsm['X_biossl']; run `biossl embed` on it first or drop --reuse-embedding."
                )
            how = "reused embedding"
        else:
            how = _embed(
                adata, model=model, batch_key=batch_key, layer=layer, n_latent=n_latent, max_steps=max_steps,
                seed=seed, device=device, save_model=save_model, force=force,
            )  # fmt: skip
        biossl.tl.neighbors(adata, n_neighbors=n_neighbors, seed=seed)
        biossl.tl.annotate(
            adata, labels_key, unlabeled_category=unlabeled_category, unknown_threshold=unknown_threshold
        )
        _write_h5ad(adata, output, force=force)
    n_unknown = int((adata.obs["biossl_label"] == "Unknown").sum())
    saved = f"; model saved to {save_model}" if save_model else ""
    _echo_summary(
        f"annotated {adata.n_obs} cells from {n_labelled} labels ({n_types} types, {n_unknown} Unknown; {how}) "
        f"in {_elapsed(start)} -> {output}{saved}"
    )


def _annotate_with_reference(
    input_path, output, reference, *, batch_key, unknown_threshold, mapping_threshold, gene_map, gene_key, n_neighbors,
    max_steps, seed, device, threads, force, start,
) -> None:  # fmt: skip
    """``biossl annotate --reference``: map IN onto a saved reference and write OUT."""
    if not (Path(reference) / "config.json").is_file():
        raise CliError(f"--reference {reference!r} is not a biossl reference directory (no config.json in it).")
    _check_h5ad_name(output)
    _check_io(input_path, {"output": output}, force=force)
    if gene_map is not None:  # read once up front, so a bad table fails fast and names the option
        from .._genemap import read_gene_map

        read_gene_map(gene_map, option="--gene-map")
    with _threads(threads):
        import biossl

        ref = biossl.Reference.load(reference, device=device)
        adata = _read(input_path)
        _counts_from_raw(adata, None)
        kwargs = {} if max_steps is None else {"fine_tune_steps": max_steps}
        if mapping_threshold is not None:
            kwargs["mapping_threshold"] = mapping_threshold
        if gene_map is not None:
            kwargs["gene_map"] = gene_map
        biossl.tl.map_query(
            adata, ref, batch_key=batch_key, n_neighbors=n_neighbors, unknown_threshold=unknown_threshold,
            gene_key=gene_key, seed=seed, device=device, progress=None, **kwargs,
        )  # fmt: skip
        _write_h5ad(adata, output, force=force)
    overlap = adata.uns["biossl"]["gene_overlap"]
    n_unknown = int((adata.obs["biossl_label"] == "Unknown").sum())
    _echo_summary(
        f"mapped {adata.n_obs} cells onto {reference} ({len(ref.classes)} types, {overlap['n_matched']} of "
        f"{overlap['n_model_genes']} genes matched, {n_unknown} Unknown) in {_elapsed(start)} -> {output}"
    )


@main.command(name="fit-reference")
@_INPUT
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Reference directory to write."
)
@click.option("--force", is_flag=True, help="Overwrite an existing reference directory.")
@click.option("--labels-key", required=True, metavar="KEY", help="obs column with the reference's cell types.")
@click.option(
    "--unlabeled-category", default="Unknown", show_default=True, help="Value marking unlabelled cells (besides NaN)."
)
@click.option("--batch-key", metavar="KEY", help="obs column with the batch of each reference cell.")
@click.option("--gene-key", metavar="KEY", help="var column with the gene identifiers to store [default: var_names].")
@click.option("--n-latent", type=click.IntRange(min=1), default=20, show_default=True, help="Latent dimensions.")
@click.option("--max-steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Training budget.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where to train the model (auto: a CUDA GPU when there is one).",
)  # fmt: skip
@click.option("--layer", metavar="NAME", help="Layer with raw counts (default: X, else layers['counts']).")
@click.option("--threads", type=click.IntRange(min=1), help=_THREADS_HELP)
@_common
@_guarded
def fit_reference(
    input_path, output, force, labels_key, unlabeled_category, batch_key, gene_key, n_latent, max_steps, seed,
    device, layer, threads,
) -> None:  # fmt: skip
    """Train a reference on labelled IN.h5ad and save it to a directory (model.pt, reference.npz, config.json).

    Annotate new data with it: `biossl annotate QUERY.h5ad --reference REFDIR -o OUT.h5ad`.
    """
    start = time.perf_counter()
    _check_io(input_path, {"output": output}, force=force)
    with _threads(threads):
        import biossl

        from ..tl._propagation import label_codes

        adata = _read(input_path)
        _counts_from_raw(adata, layer)
        _use_layer(adata, layer)
        n_labelled = int((label_codes(adata, labels_key, unlabeled_category)[0] >= 0).sum())
        if n_labelled < adata.n_obs / 2:
            _warn(
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
    _echo_summary(
        f"reference of {ref.latent.shape[0]} cells ({n_labelled} labelled, {len(ref.classes)} types, "
        f"{len(ref.model.genes)} genes) "
        f"in {_elapsed(start)} -> {output}"
    )


@main.command()
@_INPUT
@_output_option
@_model_options()
@_common
@_guarded
def embed(
    input_path, output, force, model, batch_key, layer, n_latent, max_steps, seed, device, threads, save_model
) -> None:
    """Embed the cells of IN.h5ad (latent only); write OUT.h5ad with obsm['X_biossl'].

    Follow with `biossl annotate OUT.h5ad --reuse-embedding ...`, or reuse the model saved with
    --save-model on other data (`--model DIR`).
    """
    start = time.perf_counter()
    model = _check_model_option(model, save_model)
    _check_h5ad_name(output)
    _check_io(input_path, {"output": output, "--save-model": save_model}, force=force)
    with _threads(threads):
        adata = _read(input_path)
        _counts_from_raw(adata, layer)
        how = _embed(
            adata, model=model, batch_key=batch_key, layer=layer, n_latent=n_latent, max_steps=max_steps, seed=seed,
            device=device, save_model=save_model, force=force,
        )  # fmt: skip
        _write_h5ad(adata, output, force=force)
    saved = f"; model saved to {save_model}" if save_model else ""
    _echo_summary(
        f"embedded {adata.n_obs} cells x {int(adata.var['biossl_hvg'].sum())} genes ({how} latent) "
        f"in {_elapsed(start)} -> {output}{saved}"
    )


# ---------------------------------------------------------------------------------------------------------------
# evaluate / demo


def _hidden_split(truth, known, k: int, seed: int):
    """Labelled mask: ``k`` per class among cells with a known truth label (biossl.metrics.fewlabel_split)."""
    import numpy as np

    from ..metrics import fewlabel_split

    mask = np.zeros(len(truth), dtype=bool)
    mask[known] = fewlabel_split(truth[known], k, seed)
    return mask


@main.command()
@_INPUT
@click.option("--labels-key", required=True, metavar="KEY", help="obs column with the true labels of (most) cells.")
@click.option(
    "--unlabeled-category", default="Unknown", show_default=True, help="Value of cells without a true label (skipped)."
)
@click.option("--k", "k_text", default="1,3,5", show_default=True, help="Labelled cells per type: list or range.")
@click.option("--seeds", "seeds_text", default="0-4", show_default=True, help="Split seeds: list or range.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the scores as JSON here.")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
@click.option(
    "--unknown-threshold", type=float,
    help="Call cells 'Unknown' below this confidence (0-1) [default: none; only cells no label reaches].",
)  # fmt: skip
@click.option("--n-neighbors", type=click.IntRange(min=2), default=15, show_default=True, help="Neighbours per cell.")
@click.option("--reuse-embedding", is_flag=True, help="Use obsm['X_biossl'] already in IN instead of embedding.")
@_model_options(save=False)
@_common
@_guarded
def evaluate(
    input_path, labels_key, unlabeled_category, k_text, seeds_text, json_path, force, unknown_threshold, n_neighbors,
    reuse_embedding, model, batch_key, layer, n_latent, max_steps, seed, device, threads,
) -> None:  # fmt: skip
    """Score few-label annotation on fully labelled IN.h5ad: hide labels, annotate, macro-F1 per k.

    For every k and seed, k cells per type keep their label (biossl.metrics.fewlabel_split) and the rest
    are hidden; biossl annotates them and is scored by macro-F1 (and accuracy) on the hidden cells.
    The embedding and the graph use no labels, so they are computed once. IN is not modified.
    """
    start = time.perf_counter()
    ks = _parse_ints(k_text, "--k", minimum=1)
    seeds = _parse_ints(seeds_text, "--seeds", minimum=0)
    if reuse_embedding and model != "auto":
        raise click.UsageError("--reuse-embedding cannot be combined with --model.")
    model = _check_model_option(model, None)
    _check_threshold(unknown_threshold)
    _check_io(input_path, {"--json": json_path}, force=force)
    with _threads(threads):
        import numpy as np
        import pandas as pd

        import biossl

        from ..metrics import expected_calibration_error, macro_f1

        adata = _read(input_path)
        _counts_from_raw(adata, layer)
        if labels_key not in adata.obs:
            raise CliError(f"labels_key={labels_key!r} is not a column of obs (have: {list(adata.obs.columns)[:10]}).")
        from ..tl._propagation import label_codes

        codes, classes = label_codes(adata, labels_key, unlabeled_category)
        known = codes >= 0
        truth = adata.obs[labels_key].astype(str).to_numpy()
        if len(classes) < 2:
            raise CliError(f"obs[{labels_key!r}] has {len(classes)} labelled type(s); evaluation needs at least two.")
        n_known = int(known.sum())
        if n_known < adata.n_obs / 2:
            _warn(
                f"only {n_known} of {adata.n_obs} cells have a true label in obs[{labels_key!r}]; the scores use "
                "those cells alone (the others are unlabelled: NaN or --unlabeled-category)."
            )
        if reuse_embedding:
            if "X_biossl" not in adata.obsm:
                raise CliError(f"{input_path!r} has no obsm['X_biossl']; drop --reuse-embedding.")
            how = "reused embedding"
        else:
            how = _embed(
                adata, model=model, batch_key=batch_key, layer=layer, n_latent=n_latent, max_steps=max_steps,
                seed=seed, device=device, save_model=None, force=False,
            )  # fmt: skip
        biossl.tl.neighbors(adata, n_neighbors=n_neighbors, seed=seed)
        key = "_biossl_evaluate_labels"
        runs = []
        for k in ks:
            for split_seed in seeds:
                t0 = time.perf_counter()
                labelled = _hidden_split(truth, known, k, split_seed)
                hidden = known & ~labelled
                adata.obs[key] = pd.Categorical(np.where(labelled, truth, None), categories=classes)
                biossl.tl.annotate(adata, key, unlabeled_category=None, unknown_threshold=unknown_threshold)
                pred = adata.obs["biossl_label"].astype(str).to_numpy()
                runs.append(
                    {
                        "k": k,
                        "seed": split_seed,
                        "n_labelled": int(labelled.sum()),
                        "n_hidden": int(hidden.sum()),
                        "macro_f1": macro_f1(truth[hidden], pred[hidden]),
                        "accuracy": float(np.mean(truth[hidden] == pred[hidden])),
                        "ece": expected_calibration_error(
                            adata.obs["biossl_confidence"].to_numpy()[hidden], truth[hidden] == pred[hidden]
                        ),
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
    table = pd.DataFrame(runs)
    for k, grp in table.groupby("k", sort=True):
        hidden = int(grp["n_hidden"].min())
        if hidden < FEW_SCORED or hidden < n_known / 4:
            _warn(
                f"--k {k} labels {int(grp['n_labelled'].max())} of the {n_known} labelled cells and leaves only "
                f"{hidden} hidden to score; macro-F1 on so few cells is noisy (use a smaller --k)."
            )
    summary = []
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
    _echo_summary(
        f"evaluated {adata.n_obs} cells, {len(classes)} types, k={','.join(map(str, ks))} x {len(seeds)} seeds "
        f"({how}; scored on the hidden ones of {n_known} cells with a true label) in {_elapsed(start)}{wrote}"
    )


@main.command()
@click.option(
    "--out", "out_dir", default="demo_output", show_default=True, type=click.Path(file_okay=False),
    help="Directory for the outputs (the demo's own files in it are overwritten).",
)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the label split and the embedding.")
@click.option("--threads", type=click.IntRange(min=1), help=_THREADS_HELP)
@_common
@_guarded
def demo(out_dir, seed, threads) -> None:
    """Annotate the bundled PBMC 3k data from 5 labels per cell type and score it.

    Keeps 5 labels per type (obs['labels']), hides the rest, annotates, prints macro-F1 against the
    hidden labels and writes DIR/pbmc3k_annotated.h5ad and DIR/pbmc3k_umap.png. Rerunning replaces them.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out_dir!r} exists and is not a directory.")
    with _threads(threads):
        import pandas as pd

        import biossl

        from ..metrics import fewlabel_split, macro_f1

        adata = biossl.datasets.pbmc()
        truth = adata.obs["cell_type"].astype(str)
        labelled = fewlabel_split(truth.to_numpy(), 5, seed)
        adata.obs["labels"] = pd.Categorical(truth.where(labelled), categories=sorted(set(truth)))
        biossl.pp.setup(adata)
        biossl.tl.embed(adata, seed=seed, progress=None)
        biossl.tl.neighbors(adata, seed=seed)
        biossl.tl.annotate(adata, "labels")
        hidden = ~labelled
        score = macro_f1(truth[hidden], adata.obs["biossl_label"].astype(str)[hidden])
        out.mkdir(parents=True, exist_ok=True)
        _plot(adata, out / DEMO_PNG, key="biossl", force=True)
        _write_h5ad(adata, str(out / DEMO_H5AD), force=True)
    n_types = adata.obs["labels"].cat.categories.size
    _echo_summary(
        f"demo: annotated {adata.n_obs} PBMCs from {int(labelled.sum())} labels ({n_types} types): macro-F1 "
        f"{score:.3f} on the {int(hidden.sum())} hidden cells in {_elapsed(start)} "
        f"-> {out / DEMO_H5AD}, {out / DEMO_PNG}"
    )


# ---------------------------------------------------------------------------------------------------------------
# genes


def _counts_from_raw(adata, layer: str | None) -> None:
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
    _warn(
        f"X holds no raw counts ({count_problem(adata.X)}); using the counts in adata.raw ({adata.raw.n_vars} genes, "
        f"{adata.n_vars} of them in X) as layers['counts']."
    )


def _use_layer(adata, layer: str | None) -> None:
    """``--layer NAME`` for steps without a ``layer=`` argument: put the layer in X of the in-memory copy."""
    if layer is None:
        return
    if layer not in adata.layers:
        raise CliError(f"--layer {layer!r} is not a layer of the input (have: {list(adata.layers) or 'none'}).")
    adata.X = adata.layers[layer]


def _check_gene_sets(adata, path: str, case_sensitive: bool) -> None:
    """Fail before any training when IN's names clash ignoring case, or no set member is a gene of IN."""
    from ..tl.genes import read_gmt

    names = [str(g) for g in adata.var_names]
    fold = (lambda g: g) if case_sensitive else str.upper
    seen: dict[str, str] = {}
    for name in names:
        if not case_sensitive and fold(name) in seen:
            raise CliError(
                f"genes {seen[fold(name)]!r} and {name!r} of the input are the same name ignoring case; pass "
                "--case-sensitive."
            )
        seen[fold(name)] = name
    sets = read_gmt(path)
    members = {fold(g) for genes in sets.values() for g in genes}
    if not members & seen.keys():
        example = next(iter(next(iter(sets.values()))))
        raise CliError(
            f"no member of the {len(sets)} gene sets in {path!r} is a gene of the input (e.g. {example!r}; input "
            f"genes e.g. {', '.join(names[:3])}); check the identifiers (symbols vs Ensembl ids) or the organism."
        )


def _rank_order(table):
    """The score table by set (file order), then rank; no rows for sets with no score (no gene in IN)."""
    scored = table.groupby("set", observed=True)["score"].transform(lambda v: v.notna().any())
    table = table[scored.astype(bool)]
    return table.sort_values(["set", "rank", "gene"], kind="stable", na_position="last").reset_index(drop=True)


@main.command()
@_INPUT
@click.option(
    "--gene-sets", "gene_sets", metavar="SETS.gmt", type=click.Path(dir_okay=False),
    help="Gene sets to extend (GMT, .gmt.gz allowed): score every gene for each set.",
)  # fmt: skip
@click.option(
    "--evaluate", "evaluate_gmt", metavar="GO.gmt", type=click.Path(dir_okay=False),
    help="Instead of scoring: EGAD cross-validation on these sets (sets with 20-1000 genes in the graph); "
    "prints the AUROC table of biossl vs neighbour voting, node degree and random.",
)  # fmt: skip
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="Output table (.tsv) of gene scores.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="With --evaluate: also write the scores.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option(
    "--model", "model_dir", metavar="DIR",
    help="Saved model directory (biossl embed --save-model) [default: train a VAE].",
)  # fmt: skip
@click.option(
    "--graph", type=click.Choice(["combined", "denoised", "loadings", "coexpression"]), default="combined",
    show_default=True,
    help="Gene graph: correlation of model-denoised expression, of decoder loadings, of raw co-expression, or "
    "the mean of denoised and raw (combined).",
)  # fmt: skip
@click.option("--n-neighbors", type=click.IntRange(min=1), default=30, show_default=True, help="Neighbours per gene.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True,
              help="Propagation strength.")  # fmt: skip
@click.option("--max-steps", type=click.IntRange(min=1), default=3000, show_default=True,
              help="VAE training budget when no --model is given.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (training, folds).")
@click.option(
    "--case-sensitive", is_flag=True,
    help="Match gene names exactly (needed when IN has names equal ignoring case, e.g. mouse 'Lpcat4' and 'LPCAT4') "
    "[default: ignore case].",
)  # fmt: skip
@click.option("--layer", metavar="NAME", help="Layer with raw counts (default: X, else layers['counts']).")
@click.option("--threads", type=click.IntRange(min=1), help=_THREADS_HELP)
@_common
@_guarded
def genes(
    input_path, gene_sets, evaluate_gmt, output, json_path, force, model_dir, graph, n_neighbors, alpha, max_steps,
    seed, case_sensitive, layer, threads,
) -> None:  # fmt: skip
    """Rank every gene of IN.h5ad by membership of known gene sets, or evaluate that on GO (EGAD).

    \b
      biossl genes cells.h5ad --gene-sets sets.gmt -o scores.tsv [--model DIR]
      biossl genes cells.h5ad --evaluate GO_BP.gmt [--json scores.json]

    The table has one row per (set, gene), sets in file order and genes by rank: set, gene, score (label
    propagation from the set's members over the gene graph, standardised over genes: higher = more tied to
    the members; unitless, so compare genes within a set, not across sets), rank (1 = best), is_member (the
    gene is in the set). Sets with no gene in IN get no rows; set members not found among the genes of IN are
    reported on stderr. IN is not modified.
    """  # noqa: D301 (click's \b paragraph marker)
    start = time.perf_counter()
    if (gene_sets is None) == (evaluate_gmt is None):
        raise click.UsageError("give exactly one of --gene-sets (score genes) or --evaluate (EGAD evaluation).")
    if gene_sets is not None and output is None:
        raise click.UsageError("--gene-sets needs -o/--output for the score table.")
    if evaluate_gmt is not None and output is not None:
        raise click.UsageError("--evaluate prints a table; use --json (not -o) to save it.")
    if model_dir is not None:
        _check_model_option(model_dir, None)
        if model_dir in MODEL_KINDS:
            raise CliError(f"--model {model_dir!r} must be a saved model directory here (or omit it to train a VAE).")
    for opt, path in (("--gene-sets", gene_sets), ("--evaluate", evaluate_gmt)):
        if path is not None and not Path(path).is_file():
            raise CliError(f"{opt} file {path!r} does not exist.")
    _check_io(input_path, {"--output": output, "--json": json_path}, force=force)
    with _threads(threads):
        from ..tl.genes import evaluate_gene_function, gene_function

        adata = _read(input_path)
        _counts_from_raw(adata, layer)
        _use_layer(adata, layer)
        _check_gene_sets(adata, gene_sets or evaluate_gmt, case_sensitive)  # before training a VAE
        kwargs = {"model": model_dir, "graph": graph, "n_neighbors": n_neighbors, "alpha": alpha}
        kwargs.update(max_steps=max_steps, seed=seed, case_sensitive=case_sensitive)
        if evaluate_gmt is not None:
            result = evaluate_gene_function(adata, evaluate_gmt, **kwargs)
        else:
            table = gene_function(adata, gene_sets, **kwargs)
    if evaluate_gmt is not None:
        summary, few = result["summary"], result["few_seed"]
        click.echo(f"{'method':<16}  {'mean AUROC':>10}  {'terms > NV':>10}  {'terms > degree':>14}")
        for name, row in summary.items():
            beat_nv = row.get("frac_terms_beating_neighbor_voting")
            beat_deg = row.get("frac_terms_beating_node_degree")
            click.echo(
                f"{name:<16}  {row['mean_auroc']:>10.3f}  {'' if beat_nv is None else f'{beat_nv:.0%}':>10}  "
                f"{'' if beat_deg is None else f'{beat_deg:.0%}':>14}"
            )
        click.echo(
            "few seeds (mean AUROC, biossl / neighbour voting): "
            + ", ".join(f"{n}: {v['biossl']:.3f}/{v['neighbor_voting']:.3f}" for n, v in few.items())
        )
        if json_path is not None:
            from .._io import write_text_atomic

            doc = {
                "input": str(input_path),
                "gene_sets": str(evaluate_gmt),
                **{k: result[k] for k in ("summary", "few_seed", "n_terms", "n_graph_genes", "params", "seconds")},
                "terms": result["terms"].to_dict(orient="records"),
                "biossl_version": __version__,
            }
            write_text_atomic(json.dumps(doc, indent=2) + "\n", json_path, overwrite=force)
        ours = summary["biossl"]
        wrote = f" -> {json_path}" if json_path else ""
        _echo_summary(
            f"evaluated {result['n_terms']} gene sets over {result['n_graph_genes']} genes: biossl AUROC "
            f"{ours['mean_auroc']:.3f} vs neighbour voting {summary['neighbor_voting']['mean_auroc']:.3f} "
            f"(Wilcoxon p={ours['wilcoxon_p_vs_neighbor_voting']:.2g}) in {_elapsed(start)}{wrote}"
        )
        return
    from .._io import atomic_path

    table = _rank_order(table)
    with atomic_path(output, overwrite=force) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    rec = adata.uns["biossl_genes"]
    n_unknown = int(sum(rec["n_unknown"]))
    _echo_summary(
        f"scored {len(rec['sets'])} gene sets over {rec['params']['n_graph_genes']} genes ({graph} graph, model "
        f"{rec['params']['model']}; {n_unknown} set genes not in IN) in {_elapsed(start)} -> {output}"
    )


# ---------------------------------------------------------------------------------------------------------------
# suggest / report


@main.command()
@_INPUT
@_output_option
@click.option("-n", "n", type=click.IntRange(min=1), required=True, help="Number of cells to suggest.")
@click.option("--labels-key", required=True, metavar="KEY", help="obs column with the labels known so far.")
@click.option(
    "--unlabeled-category", default="Unknown", show_default=True, help="Value marking unlabelled cells (besides NaN)."
)
@click.option(
    "--key", "--key-added", "key_added", default="biossl_suggest", show_default=True,
    help="obs column for the ranks (--key-added is the same option).",
)  # fmt: skip
@click.option("--n-neighbors", type=click.IntRange(min=2), default=15, show_default=True,
              help="Neighbours per cell, when IN has no biossl graph yet.")  # fmt: skip
@click.option(
    "--table", "table_path", metavar="FILE.tsv", type=click.Path(dir_okay=False),
    help="Also write the N cells as a TSV: cell, rank, predicted type and confidence (from `biossl annotate`).",
)  # fmt: skip
@_common
@_guarded
def suggest(input_path, output, force, n, labels_key, unlabeled_category, key_added, n_neighbors, table_path) -> None:
    """Suggest the N unlabelled cells of IN.h5ad to label next; write OUT.h5ad with their ranks.

    IN must hold an embedding (`biossl annotate` or `biossl embed` output). Writes obs[KEY_ADDED]: the
    rank (1 = label first) of the suggested cells, NaN elsewhere. Label those cells in obs[LABELS_KEY]
    and run `biossl annotate` again.
    """
    start = time.perf_counter()
    _check_h5ad_name(output)
    _check_io(input_path, {"output": output, "--table": table_path}, force=force)
    import biossl

    adata = _read(input_path)
    if "biossl_connectivities" not in adata.obsp:
        if "X_biossl" not in adata.obsm:
            raise CliError(f"{input_path!r} has no biossl embedding; run `biossl annotate` or `biossl embed` first.")
        biossl.tl.neighbors(adata, n_neighbors=n_neighbors)
    biossl.tl.suggest_labels(
        adata, n, labels_key=labels_key, unlabeled_category=unlabeled_category, key_added=key_added
    )
    _write_h5ad(adata, output, force=force)
    picked = adata.obs[key_added].dropna().sort_values().index.astype(str)
    if table_path is not None:
        from .._io import write_text_atomic

        write_text_atomic(_tsv(_suggest_rows(adata, key_added)), table_path, overwrite=force)
    shown = ", ".join(picked[:5]) + (", ..." if len(picked) > 5 else "")
    wrote = f", table -> {table_path}" if table_path else ""
    _echo_summary(f"suggested {len(picked)} cells to label next ({shown}) in {_elapsed(start)} -> {output}{wrote}")


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


@main.command()
@_INPUT
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .html file.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--truth-key", metavar="KEY", help="obs column with true labels: adds macro-F1, ECE, reliability.")
@click.option(
    "--evaluation", "evaluation_path", type=click.Path(dir_okay=False),
    help="JSON from `biossl evaluate --json`: adds the label-budget curve.",
)  # fmt: skip
@click.option("--key", default="biossl", show_default=True, help="key_added used by annotate.")
@click.option("--title", help="Page title.")
@_common
@_guarded
def report(input_path, output, force, truth_key, evaluation_path, key, title) -> None:
    """Write one self-contained HTML page (plots embedded) summarising the annotation in IN.h5ad."""
    start = time.perf_counter()
    _check_io(input_path, {"output": output}, force=force)
    if evaluation_path is not None and not Path(evaluation_path).is_file():
        raise CliError(f"--evaluation {evaluation_path!r} does not exist.")
    evaluation = None
    if evaluation_path is not None:
        try:
            evaluation = json.loads(Path(evaluation_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CliError(f"--evaluation {evaluation_path!r} is not readable JSON ({_one_line(err)}).") from None
        if not isinstance(evaluation, dict) or "runs" not in evaluation:
            raise CliError(f"--evaluation {evaluation_path!r} is not the JSON of `biossl evaluate --json`.")
    from ..report import write_report

    adata = _read(input_path)
    with _quiet_scanpy():
        write_report(adata, output, key=key, truth_key=truth_key, evaluation=evaluation, title=title, overwrite=force)
    _echo_summary(f"report on {adata.n_obs} cells in {_elapsed(start)} -> {output}")


# ---------------------------------------------------------------------------------------------------------------
# info


def _h5ad_info(path: str) -> dict:
    """The biossl keys of an h5ad file, read with h5py (nothing but the small biossl parts is loaded)."""
    import h5py
    from anndata.io import read_elem

    def shape(node) -> list[int] | None:
        if isinstance(node, h5py.Dataset):
            return list(node.shape)
        if "shape" in node.attrs:
            return [int(s) for s in node.attrs["shape"]]
        return None

    def plain(obj):
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return obj

    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot read {path!r} as an h5ad file ({_one_line(err)}).") from None
    with fh:
        if "obs" not in fh or "var" not in fh:
            raise ValueError(f"cannot read {path!r} as an h5ad file (an HDF5 file without obs/var groups).")
        n_obs = len(fh["obs"][fh["obs"].attrs.get("_index", "_index")])
        n_vars = len(fh["var"][fh["var"].attrs.get("_index", "_index")])
        info: dict = {"path": path, "kind": "h5ad", "n_obs": n_obs, "n_vars": n_vars}
        info["uns"] = plain(read_elem(fh["uns/biossl"])) if "uns/biossl" in fh else None
        for group in ("obsm", "obsp", "layers"):
            if group in fh:
                info[group] = {
                    k: shape(fh[group][k]) for k in fh[group] if k.startswith(("biossl", "X_biossl")) or k == "counts"
                }
        info["obs"] = {}
        for k in fh["obs"]:
            if not k.startswith("biossl"):
                continue
            values = read_elem(fh["obs"][k])
            if hasattr(values, "categories"):
                import pandas as pd

                info["obs"][k] = {str(c): int(n) for c, n in pd.Series(values).value_counts(sort=True).items()}
            else:
                info["obs"][k] = f"{getattr(values, 'dtype', type(values).__name__)}"
        info["var"] = {"biossl_hvg": int(read_elem(fh["var/biossl_hvg"]).sum())} if "var/biossl_hvg" in fh else {}
        info["uns_other"] = (
            sorted(k for k in fh["uns"] if k.startswith("biossl") and k != "biossl") if "uns" in fh else []
        )
    return info


def _model_info(path: str) -> dict:
    """What a model directory holds, from config.json (no torch import)."""
    directory = Path(path)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{path!r} is a directory but not a biossl model (no config.json).")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({_one_line(err)}).") from None
    if not isinstance(cfg, dict) or "format_version" not in cfg:
        raise ValueError(f"{cfg_path} has no format_version; it was not written by biossl.")
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return {
        "path": path,
        "kind": "model",
        "format_version": cfg.get("format_version"),
        "model": cfg.get("model"),
        "n_latent": cfg.get("n_latent"),
        "n_genes": len(cfg.get("genes", [])),
        "batches": cfg.get("batches", []),
        "adversarial": cfg.get("adversarial"),
        "training": cfg.get("training", {}),
        "adapted": cfg.get("adapted"),
        "reference": cfg.get("reference"),
        "versions": cfg.get("versions", {}),
        "files": files,
    }


def _print_info(info: dict) -> None:
    if info["kind"] == "model":
        tr = info["training"]
        click.echo(f"{info['path']}: biossl model directory (format {info['format_version']})")
        click.echo(f"  model: {info['model']}, {info['n_latent']}-d latent, {info['n_genes']} genes")
        click.echo(f"  batches: {', '.join(map(str, info['batches'])) or 'none'}; adversarial: {info['adversarial']}")
        click.echo(
            f"  training: {tr.get('steps')} of {tr.get('max_steps')} steps on {tr.get('n_cells')} cells, "
            f"seed {tr.get('seed')}"
        )
        if info.get("reference"):
            ref = info["reference"]
            click.echo(
                f"  reference: {ref.get('n_cells')} cells, {len(ref.get('classes', []))} classes "
                f"(labels_key {ref.get('labels_key')!r})"
            )
        if info["versions"]:
            click.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
        click.echo("  files: " + ", ".join(f"{k} ({v:,} bytes)" for k, v in info["files"].items()))
        return
    click.echo(f"{info['path']}: {info['n_obs']} cells x {info['n_vars']} genes")
    uns = info["uns"]
    if uns is None:
        click.echo("  no uns['biossl']: biossl has not run on this file")
    else:
        steps = [k for k in uns if isinstance(uns[k], dict)]
        click.echo(f"  uns['biossl']: biossl {uns.get('version', '?')}, steps: {', '.join(steps) or 'none'}")
        for step in steps:
            params = {k: v for k, v in uns[step].items() if not isinstance(v, dict | list)}
            click.echo(f"    {step}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        if "classes" in uns:
            click.echo(f"    classes: {', '.join(map(str, uns['classes']))}")
    for group in ("obsm", "obsp", "layers"):
        for key, shp in info.get(group, {}).items():
            click.echo(f"  {group}['{key}']: {' x '.join(map(str, shp)) if shp else '?'}")
    for key, val in info["obs"].items():
        if isinstance(val, dict):
            click.echo(f"  obs['{key}']: " + ", ".join(f"{c} {n}" for c, n in val.items()))
        else:
            click.echo(f"  obs['{key}']: {val}")
    for key, val in info["var"].items():
        click.echo(f"  var['{key}']: {val} genes selected")
    for key in info["uns_other"]:
        click.echo(f"  uns['{key}']")


@main.command()
@click.argument("path", metavar="FILE.h5ad|MODEL_DIR", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the information as JSON.")
@_common
@_guarded
def info(path, as_json) -> None:
    """Show what biossl wrote into an h5ad file, or what a saved model directory holds."""
    target = Path(path)
    if not target.exists():
        raise CliError(f"{path!r} does not exist.")
    data = _model_info(path) if target.is_dir() else _h5ad_info(path)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_info(data)


# ---------------------------------------------------------------------------------------------------------------
# report steps used by the workflow


def _sample_summary(adata, sample: str, truth_key: str | None, key: str) -> tuple[dict, list[dict]]:
    """One row of sample-level numbers and one row per predicted label."""
    import numpy as np

    from ..metrics import macro_f1, per_class_f1
    from ..report import natural_key

    label_col = f"{key}_label"
    for col in (label_col, f"{key}_confidence"):
        if col not in adata.obs:
            raise CliError(f"obs[{col!r}] not found; run `biossl annotate` on this file first.")
    rec = adata.uns.get("biossl", {}).get("annotate", {})
    pred = adata.obs[label_col].astype(str).to_numpy()
    conf = adata.obs[f"{key}_confidence"].to_numpy(dtype=float)
    seeds = np.zeros(adata.n_obs, dtype=bool)
    labels_key = rec.get("labels_key")
    if labels_key is not None and labels_key in adata.obs:
        col = adata.obs[labels_key]
        seeds = col.notna().to_numpy()
        if rec.get("unlabeled_category") is not None:
            seeds &= col.astype(str).to_numpy() != str(rec["unlabeled_category"])
    query = ~seeds
    f1 = {}
    row = {
        "sample": sample,
        "n_cells": int(adata.n_obs),
        "n_labelled": int(seeds.sum()),
        "n_types": len(adata.uns.get("biossl", {}).get("classes", [])),
        "n_unknown": int((pred == "Unknown").sum()),
        "frac_unknown": float((pred == "Unknown").mean()),
        "mean_confidence": float(conf[query].mean()) if query.any() else float("nan"),
        "macro_f1": float("nan"),
        "accuracy": float("nan"),
        "n_scored": 0,
        "embedding": str(adata.uns.get("biossl", {}).get("embed", {}).get("model", "")),
    }
    if truth_key is not None:
        if truth_key not in adata.obs:
            raise CliError(f"--truth-key {truth_key!r} is not a column of obs (have: {list(adata.obs.columns)[:10]}).")
        truth_col = adata.obs[truth_key]
        scored = query & truth_col.notna().to_numpy()
        truth = truth_col.astype(str).to_numpy()
        row["n_scored"] = int(scored.sum())
        if scored.any():
            row["macro_f1"] = macro_f1(truth[scored], pred[scored])
            row["accuracy"] = float(np.mean(truth[scored] == pred[scored]))
            f1 = per_class_f1(truth[scored], pred[scored])
    labels = []
    for label in sorted(set(pred), key=natural_key):
        sel = pred == label
        labels.append(
            {
                "sample": sample,
                "label": label,
                "n_cells": int(sel.sum()),
                "fraction": float(sel.mean()),
                "n_labelled": int((sel & seeds).sum()),
                "mean_confidence": float(conf[sel & query].mean()) if (sel & query).any() else float("nan"),
                "f1": f1.get(label, float("nan")),
            }
        )
    return row, labels


def _tsv(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_csv(sep="\t", index=False, float_format="%.4g", na_rep="NA")


@main.command()
@_INPUT
@click.option("--tsv", "tsv_path", required=True, type=click.Path(dir_okay=False), help="Sample summary (one row).")
@click.option("--labels-tsv", type=click.Path(dir_okay=False), help="Per-label table (cells, confidence, F1).")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="UMAP of labels and confidence.")
@click.option("--sample", help="Sample name in the tables [default: file name without extension].")
@click.option("--truth-key", metavar="KEY", help="obs column with true labels: adds macro-F1 on unlabelled cells.")
@click.option("--key", default="biossl", show_default=True, help="key_added used by annotate.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--threads", type=click.IntRange(min=1), help=_THREADS_HELP)
@_common
@_guarded
def summarize(input_path, tsv_path, labels_tsv, png_path, sample, truth_key, key, force, threads) -> None:
    """Report on an annotated IN.h5ad: summary TSV, per-label TSV and UMAP PNG (used by the workflow)."""
    start = time.perf_counter()
    outputs = {"--tsv": tsv_path, "--labels-tsv": labels_tsv, "--png": png_path}
    _check_io(input_path, outputs, force=force)
    sample = sample or Path(input_path).name.split(".")[0]
    with _threads(threads):
        from .._io import write_text_atomic

        adata = _read(input_path)
        row, labels = _sample_summary(adata, sample, truth_key, key)
        if png_path is not None:
            _plot(adata, png_path, key=key, force=force)
        if labels_tsv is not None:
            write_text_atomic(_tsv(labels), labels_tsv, overwrite=force)
        write_text_atomic(_tsv([row]), tsv_path, overwrite=force)
    f1 = f", macro-F1 {row['macro_f1']:.3f} on {row['n_scored']} cells" if row["macro_f1"] == row["macro_f1"] else ""
    if truth_key is not None and row["n_scored"] < FEW_SCORED:
        _warn(
            f"macro-F1 is scored on {row['n_scored']} unlabelled cells with a value in obs[{truth_key!r}]; "
            "so few give a noisy score."
        )
    _echo_summary(
        f"summarized {sample}: {row['n_cells']} cells, {row['n_labelled']} labels, {row['n_types']} types, "
        f"{row['n_unknown']} Unknown{f1} in {_elapsed(start)} -> {tsv_path}"
    )


@main.command(hidden=True)
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Combined TSV.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@_common
@_guarded
def aggregate(tables, output, force) -> None:
    """Concatenate TSV tables with the same columns (the workflow's table over samples)."""
    start = time.perf_counter()
    for table in tables:
        _check_io(table, {"output": output}, force=True)
    _check_io(None, {"output": output}, force=force)
    import pandas as pd

    from .._io import write_text_atomic

    frames = []
    for table in tables:
        try:
            frame = pd.read_csv(table, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise CliError(f"cannot read {table!r} as a TSV table ({_one_line(err)}).") from None
        if frames and list(frame.columns) != list(frames[0].columns):
            raise CliError(f"{table!r} has other columns than {tables[0]!r}; only like tables can be combined.")
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True)
    write_text_atomic(combined.to_csv(sep="\t", index=False, float_format="%.4g", na_rep="NA"), output, overwrite=force)
    _echo_summary(f"combined {len(tables)} tables ({len(combined)} rows) in {_elapsed(start)} -> {output}")


# ---------------------------------------------------------------------------------------------------------------
# workflow


def workflow_source() -> Path:
    """The Snakemake workflow shipped with biossl: ``biossl/workflows`` (wheel) or the checkout's ``workflows/``."""
    here = Path(__file__).resolve().parents[1]
    for base in (here / "workflows", here.parent / "workflows"):
        if (base / "Snakefile").is_file():
            return base
    raise CliError("the Snakemake workflow is not installed with this copy of biossl (no workflows/Snakefile).")


def _workflow_files(src: Path) -> list[Path]:
    skip = {"__pycache__", ".snakemake", ".ruff_cache"}
    return sorted(
        p.relative_to(src)
        for p in src.rglob("*")
        if p.is_file() and not skip.intersection(p.relative_to(src).parts) and p.suffix != ".pyc"
    )


@main.group()
@_common
def workflow() -> None:
    """The Snakemake workflow (embed → annotate → report per sample, a table over samples)."""


@workflow.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--example", is_flag=True, help="Also write data/pbmc3k.h5ad (5 labels per type) used by config.yaml.")
@click.option("--force", is_flag=True, help="Overwrite files that already exist in DIRECTORY.")
@_common
@_guarded
def workflow_init(directory, example, force) -> None:
    """Copy the Snakemake workflow and a starter config.yaml into DIRECTORY.

    \b
    Then edit DIRECTORY/config.yaml and run, from DIRECTORY:
      snakemake --cores 2                       # or: --profile profiles/local
      snakemake --profile profiles/slurm        # on a SLURM cluster
    """  # noqa: D301
    start = time.perf_counter()
    src = workflow_source()
    dest = Path(directory)
    files = _workflow_files(src)
    targets = [dest / f for f in files]
    example_path = dest / "data" / "pbmc3k.h5ad"
    if example:
        targets.append(example_path)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise CliError(f"{len(existing)} file(s) already exist in {directory!r} (e.g. {existing[0]}); pass --force.")
    from .._io import atomic_path

    for rel in files:
        with atomic_path(dest / rel, overwrite=True) as tmp:
            shutil.copyfile(src / rel, tmp)
        shutil.copymode(src / rel, dest / rel)
    if example:
        import pandas as pd

        import biossl

        from ..metrics import fewlabel_split

        adata = biossl.datasets.pbmc()
        truth = adata.obs["cell_type"].astype(str)
        mask = fewlabel_split(truth.to_numpy(), 5, 0)
        adata.obs["labels"] = pd.Categorical(truth.where(mask), categories=sorted(set(truth)))
        _write_h5ad(adata, str(example_path), force=True)
    extra = f" and {example_path}" if example else ""
    _echo_summary(
        f"copied the workflow ({len(files)} files){extra} to {directory} in {_elapsed(start)}; "
        f"edit {dest / 'config.yaml'}, then run `snakemake --cores 2` in {directory}"
    )
