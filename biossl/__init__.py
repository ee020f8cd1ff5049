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
__all__ = [*_SUBMODULES, "EmbeddingModel", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from . import datasets, graph, metrics, model, pl, pp, tl  # noqa: F401
    from .model import EmbeddingModel


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "EmbeddingModel":
        from .model import EmbeddingModel

        return EmbeddingModel
    raise AttributeError(f"module 'biossl' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
