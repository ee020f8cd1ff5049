"""Gene renaming through an ortholog (or any identifier) table, one-to-one pairs only.

A table maps the data's gene identifiers to another namespace (human symbols to mouse symbols, Ensembl ids to
symbols). Only pairs whose source and target each occur once are used: a gene with several orthologs, or
several genes sharing one, has no single counterpart, so it is dropped and counted in the report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

# built-in tables: name -> (file in example_data/orthologs, source column, target column)
BUILTIN = {
    "human_to_mouse": ("human_mouse_one2one.tsv.gz", "human", "mouse"),
    "mouse_to_human": ("human_mouse_one2one.tsv.gz", "mouse", "human"),
}

GeneMap = Mapping[str, str] | str | os.PathLike


def gene_ids(adata, gene_key: str | None = None) -> pd.Index:
    """Gene identifiers of ``adata``: ``var_names`` or the column ``var[gene_key]`` (e.g. Ensembl ids)."""
    if gene_key is None:
        return adata.var_names.astype(str)
    if gene_key not in adata.var:
        raise ValueError(f"gene_key={gene_key!r} is not a column of adata.var (have: {list(adata.var.columns)[:10]}).")
    col = adata.var[gene_key]
    if col.isna().any():
        raise ValueError(f"adata.var[{gene_key!r}] has {int(col.isna().sum())} missing gene ids.")
    return pd.Index(col.astype(str))


def read_gene_map(gene_map: GeneMap, *, option: str = "gene_map") -> tuple[dict[str, str], dict]:
    """One-to-one pairs of ``gene_map`` and a report of what was dropped.

    ``gene_map`` is a dict (source → target), the name of a built-in table (``"human_to_mouse"``,
    ``"mouse_to_human"``: Ensembl one-to-one orthologs, ``example_data/orthologs/README.md``), or a path to a
    two-column TSV or CSV (source, target) whose first line is a header (e.g. ``human<TAB>mouse``).
    ``option`` names the argument in error messages (``--gene-map`` under the CLI).
    """
    if isinstance(gene_map, Mapping):
        pairs = pd.DataFrame({"source": list(gene_map.keys()), "target": list(gene_map.values())}, dtype=str)
        origin = "dict"
    elif isinstance(gene_map, str | os.PathLike):
        pairs, origin = _read_table(gene_map, option)
    else:
        raise ValueError(f"{option} must be a dict, a table file or one of {sorted(BUILTIN)}, got {type(gene_map)!r}.")
    pairs = pairs.dropna().astype(str).drop_duplicates()
    pairs = pairs[(pairs["source"] != "") & (pairs["target"] != "")]
    ambiguous = pairs["source"].duplicated(keep=False) | pairs["target"].duplicated(keep=False)
    one_to_one = dict(zip(pairs["source"][~ambiguous], pairs["target"][~ambiguous], strict=True))
    if not one_to_one:
        raise ValueError(f"{option} ({origin}) holds no one-to-one pair of gene identifiers.")
    report = {
        "gene_map": origin,
        "n_pairs": len(pairs),
        "n_one_to_one": len(one_to_one),
        "n_ambiguous_pairs": int(ambiguous.sum()),
    }
    return one_to_one, report


def _read_table(path: str | os.PathLike, option: str) -> tuple[pd.DataFrame, str]:
    if isinstance(path, str) and path in BUILTIN:
        from .datasets import example_path

        file, source, target = BUILTIN[path]
        tab = pd.read_csv(example_path(f"orthologs/{file}"), sep="\t", dtype=str)
        return tab[[source, target]].set_axis(["source", "target"], axis=1), path
    if not os.path.isfile(path):
        raise ValueError(
            f"{option}={os.fspath(path)!r} is neither a file nor a built-in table ({', '.join(sorted(BUILTIN))})."
        )
    name = os.fspath(path)
    sep = "," if name.endswith((".csv", ".csv.gz")) else "\t"
    try:
        tab = pd.read_csv(path, sep=sep, header=None, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{option}={name!r} cannot be read as a two-column table: {err}".splitlines()[0]) from None
    if tab.shape[1] < 2:
        raise ValueError(f"{option}={name!r} has {tab.shape[1]} column; it needs two (source and target gene).")
    tab = tab.iloc[1:, :2].set_axis(["source", "target"], axis=1)  # the first line names the columns
    return tab, name


def rename_genes(names, one_to_one: Mapping[str, str], report: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """New identifiers of ``names`` (None where a gene has no one-to-one partner), which were renamed, and a report."""
    names = [str(g) for g in names]
    new = np.array([one_to_one.get(g) for g in names], dtype=object)
    mapped = new != None  # noqa: E711 (elementwise on an object array)
    report = {
        **report,
        "n_genes": len(names),
        "n_renamed": int(mapped.sum()),
        "fraction_renamed": float(mapped.mean()) if len(names) else 0.0,
        "unmapped_examples": [g for g, m in zip(names, mapped, strict=True) if not m][:10],
    }
    return new, mapped, report
