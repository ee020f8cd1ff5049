"""``biossl workflow init``: copy the Snakemake workflow shipped with biossl into a run directory."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from ._common import CliError, common_options, echo_summary, elapsed
from ._data import few_labels_pbmc, write_h5ad
from ._options import force_option

__all__ = ["workflow", "workflow_source"]


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


@click.group()
@common_options
def workflow() -> None:
    """The Snakemake workflow (embed → annotate → report per sample, a table over samples)."""


@workflow.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--example", is_flag=True, help="Also write data/pbmc3k.h5ad (5 labels per type) used by config.yaml.")
@force_option("Overwrite files that already exist in DIRECTORY.")
@common_options
def workflow_init(directory: str, example: bool, force: bool) -> None:
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
        adata = few_labels_pbmc(0)[0]
        write_h5ad(adata, str(example_path), force=True)
    extra = f" and {example_path}" if example else ""
    echo_summary(
        f"copied the workflow ({len(files)} files){extra} to {directory} in {elapsed(start)}; "
        f"edit {dest / 'config.yaml'}, then run `snakemake --cores 2` in {directory}"
    )
