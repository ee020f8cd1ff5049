"""Plumbing every ``biossl`` command shares: errors, messages, ``--debug``/``-v``, file checks, threads, SIGTERM.

Every command reads its input read-only and never writes to it, writes each output atomically (temp
file in the output's directory, fsync, rename), refuses to replace an existing output without
``--force``, prints a one-line summary on stdout and reports bad input as one ``error: ...`` line on
stderr with exit status 1 (``--debug`` shows the traceback instead). Nothing heavy (anndata, scanpy,
torch) is imported at module level, so ``biossl --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import click

from .. import __version__

__all__ = [
    "FEW_SCORED", "CliError", "check_io", "cli_message", "cli_threads", "common_options", "echo_summary", "elapsed",
    "exit_on_sigterm", "guarded", "one_line", "warn",
]  # fmt: skip

_DEBUG = "biossl.debug"
FEW_SCORED = 100  # evaluate and summarize warn when fewer cells than this are scored


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
# messages


def one_line(err: BaseException) -> str:
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
    ("(the pooled path of biossl.tl.annotate)", "(`biossl annotate` on one file holding both)"),
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


def warn(text: str) -> None:
    """A ``warning: ...`` line on stderr for misuse that still gives numbers (shown without -v)."""
    click.echo(f"warning: {text}", err=True)


def elapsed(start: float) -> str:
    """Seconds since ``start`` (``time.perf_counter``) for a summary line."""
    return f"{time.perf_counter() - start:.1f} s"


def echo_summary(text: str) -> None:
    """The command's one-line summary on stdout."""
    click.echo(text)


# ---------------------------------------------------------------------------------------------------------------
# every command: error lines, --debug, -v, --version, SIGTERM


@contextlib.contextmanager
def _biossl_warnings_as_lines():
    """Show the ``UserWarning``s that biossl raises (bad but usable input) as ``warning: ...`` lines."""
    package = Path(__file__).resolve().parents[1]
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(package):
            warn(str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.filterwarnings("always", category=UserWarning, module=r"biossl(\.|$)")
        warnings.showwarning = show
        yield


def guarded(func: Callable) -> Callable:
    """Turn exceptions of a command into one ``error:`` line (or a traceback with ``--debug``)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            with _biossl_warnings_as_lines():
                return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if ctx.meta.get(_DEBUG):
                raise
            if isinstance(err, ValueError | OSError | KeyError):  # the API's bad-input errors, unreadable files
                raise CliError(cli_message(one_line(err))) from None
            raise CliError(
                f"unexpected {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)"
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


def common_options(func: Callable) -> Callable:
    """What every command takes: ``--debug``, ``-v/--verbose``, ``--version`` (plus ``-h/--help``); :func:`guarded`."""
    func = guarded(func)
    func = click.option(
        "--debug", is_flag=True, expose_value=False, callback=_set_debug, help="Show the full traceback on errors."
    )(func)
    func = click.option(
        "-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbose, help="Log each step to stderr."
    )(func)
    return click.version_option(__version__, "--version", prog_name="biossl", message="%(prog)s %(version)s")(func)


def exit_on_sigterm() -> None:
    """On SIGTERM (Snakemake, SLURM, ``kill``) delete the temp paths of unfinished writes, then exit 143."""
    from .._io import install_sigterm_cleanup

    restore = install_sigterm_cleanup(
        lambda: click.echo("error: terminated (SIGTERM); unfinished outputs were removed.", err=True)
    )
    if restore is not None:
        click.get_current_context().call_on_close(restore)


def cli_threads(n: int | None):
    """Limit torch, BLAS/OpenMP and numba to ``--threads``, by default to the CPUs this process may use.

    Entered before any work, so the environment variables reach the libraries the command loads later.
    """
    from .._threads import available_cpus, default_threads, limit_threads

    chosen = n is not None
    how = "--threads" if chosen else f"default; {available_cpus()} CPUs available"
    n = n if chosen else default_threads()
    logging.getLogger("biossl").info("threads: %d (%s)", n, how)
    return limit_threads(n, chosen=chosen)


# ---------------------------------------------------------------------------------------------------------------
# arguments and paths


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_io(inp: str | None, outputs: dict[str, str | None], *, force: bool) -> None:
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
