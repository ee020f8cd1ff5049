"""Parameter descriptions shared by several public functions, filled into their docstrings by :func:`doc_params`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

SHARED = {
    "device": '``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.',
    "progress": "Show a progress bar; None (default): only when stderr is a terminal.",
    "copy": "Return a modified copy of ``adata`` instead of writing into it.",
    "neighbors_key": 'Prefix of the graph in ``obsp``; None uses scanpy\'s ``obsp["connectivities"]``.',
    "unlabeled_category": "Value marking unlabelled cells (in addition to NaN).",
}


def doc_params(func: F) -> F:
    """Replace ``{name}`` for each name of :data:`SHARED` in ``func``'s docstring with the shared text."""
    if func.__doc__:
        doc = func.__doc__
        for name, text in SHARED.items():
            doc = doc.replace("{" + name + "}", text)
        func.__doc__ = doc
    return func
