"""Tools: embed cells, build the graph, annotate from few labels."""

from .annotate import annotate
from .embed import embed
from .neighbors import neighbors

__all__ = ["annotate", "embed", "neighbors"]
