"""biossl: few-label cell-type annotation and gene-function prediction for single-cell data.

Submodules are imported lazily so that ``import biossl`` stays fast and never imports torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

__version__ = "0.1.0"

logging.getLogger("biossl").addHandler(logging.NullHandler())

_SUBMODULES = ("pp", "tl", "pl", "datasets", "metrics", "graph", "model")
_CLASSES = {"EmbeddingModel": "biossl.model", "Reference": "biossl.tl.reference"}
__all__ = [*_SUBMODULES, *_CLASSES, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from . import datasets, graph, metrics, model, pl, pp, tl  # noqa: F401
    from .model import EmbeddingModel  # noqa: F401
    from .tl.reference import Reference  # noqa: F401


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'biossl' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
