"""Small real datasets shipped with biossl (no downloads)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

__all__ = ["example_path", "pbmc"]


def example_path(name: str) -> Path:
    """Path of a file in ``example_data/`` (inside the installed package, or the source checkout)."""
    here = Path(__file__).resolve().parent
    for base in (here / "example_data", here.parent / "example_data"):
        if (base / name).exists():
            return base / name
    raise FileNotFoundError(f"example data file {name!r} is not installed with this copy of biossl.")


def pbmc() -> ad.AnnData:
    """10x PBMC 3k with the Seurat tutorial labels: 2,638 cells × 2,000 genes, raw counts in ``X``.

    ``obs["cell_type"]`` holds 9 types (Platelet 14 and DC 32 are rare). Source and licence:
    ``example_data/README.md`` (10x Genomics, CC BY 4.0; via rnabioco/clustifyr, MIT).
    """
    return ad.read_h5ad(example_path("pbmc3k.h5ad"))
