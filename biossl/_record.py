"""Bookkeeping shared by every step: the ``uns["biossl"]`` record and copy/in-place handling."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from typing import Any

from anndata import AnnData

UNS_KEY = "biossl"


def record(adata: AnnData, step: str, params: dict[str, Any] | list) -> None:
    """Store ``params`` of ``step`` in ``adata.uns["biossl"][step]`` (None values dropped: h5ad cannot hold them).

    A list (such as the ``classes`` of an annotation) is stored as it is.
    """
    from . import __version__

    rec = dict(adata.uns.get(UNS_KEY, {}))
    rec[step] = {k: v for k, v in params.items() if v is not None} if isinstance(params, dict) else list(params)
    rec["version"] = __version__
    adata.uns[UNS_KEY] = rec


def get_record(adata: AnnData, step: str) -> dict[str, Any] | None:
    """Return the parameters a step recorded, or None if it has not run on ``adata``."""
    rec = adata.uns.get(UNS_KEY, {})
    return dict(rec[step]) if step in rec else None


def gene_hash(genes: Iterable[str]) -> str:
    """Short stable fingerprint of an ordered gene list (to tell two gene spaces apart)."""
    return hashlib.sha1("\n".join(map(str, genes)).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of the libraries that shape results (recorded for reproducibility)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
    # read once per process: parsing the metadata of seven packages costs ~4 ms, ~1% of annotating pbmc3k
    import importlib.metadata as md

    out = {}
    for pkg in ("biossl", "anndata", "scanpy", "numpy", "scipy", "scikit-learn", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out
