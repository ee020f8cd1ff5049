"""Tools: embed cells, build the graph, annotate from few labels or from a reference."""

from .annotate import annotate
from .calibrate import novelty
from .embed import embed
from .genes import gene_function
from .neighbors import neighbors
from .reference import fit_reference, map_query
from .suggest import suggest_labels

__all__ = ["annotate", "embed", "fit_reference", "gene_function", "map_query", "neighbors", "novelty", "suggest_labels"]
