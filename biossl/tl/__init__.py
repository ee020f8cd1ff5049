"""Tools: embed cells, build the graph, annotate from few labels or from a reference."""

from ._annotate import annotate
from ._embed import embed
from ._markers import annotate_markers
from ._neighbors import neighbors
from ._novelty import novelty
from .genes import gene_function
from .reference import fit_reference, map_query
from .suggest import suggest_labels

__all__ = [
    "annotate",
    "annotate_markers",
    "embed",
    "fit_reference",
    "gene_function",
    "map_query",
    "neighbors",
    "novelty",
    "suggest_labels",
]
