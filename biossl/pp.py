"""Preprocessing: validate the input, find raw counts, select genes, record what was done.

Everything is checked before anything is written, so a failed call leaves ``adata`` unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._record import gene_hash, get_record, record

__all__ = ["setup"]

logger = logging.getLogger("biossl")

HVG_KEY = "biossl_hvg"


def _values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix (a view where possible)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def count_problem(matrix) -> str | None:
    """Describe why ``matrix`` is not a raw count matrix, or return None if it is one."""
    if matrix is None:
        return "it is missing"
    if not hasattr(matrix, "shape") or len(matrix.shape) != 2:
        return f"it is not a 2-D matrix ({type(matrix).__name__})"
    if isinstance(matrix, np.ndarray | np.matrix) or sp.issparse(matrix):
        vals = _values(matrix)
    else:
        return f"it is a {type(matrix).__name__}, not a numpy array or scipy sparse matrix"
    if vals.size == 0:
        return None
    if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(vals.dtype, np.complexfloating):
        return f"it has dtype {vals.dtype}, not a real number type"
    if np.issubdtype(vals.dtype, np.floating):
        bad = ~np.isfinite(vals)
        if bad.any():
            return f"it holds {int(bad.sum())} NaN/inf values"
    neg = vals < 0
    if neg.any():
        return f"it holds {int(neg.sum())} negative values (e.g. {vals[neg][0]:g})"
    if np.issubdtype(vals.dtype, np.floating):
        frac = vals != np.round(vals)
        if frac.any():
            return f"it holds non-integer values (e.g. {vals[frac][0]:g}; log-normalised data?)"
    return None


def find_counts(adata: AnnData, layer: str | None = None) -> str:
    """Return where raw counts live: ``"X"`` or a layer name. Raise ValueError if none qualifies."""
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(
                f"layer={layer!r} is not in adata.layers (have: {list(adata.layers) or 'none'}); "
                "pass the layer that holds raw counts."
            )
        problem = count_problem(adata.layers[layer])
        if problem:
            raise ValueError(f"adata.layers[{layer!r}] is not raw counts: {problem}. biossl needs raw integer counts.")
        return layer
    problem_x = count_problem(adata.X)
    if problem_x is None:
        return "X"
    if "counts" in adata.layers:
        problem_layer = count_problem(adata.layers["counts"])
        if problem_layer is None:
            return "counts"
        raise ValueError(
            f"No raw counts found: adata.X is not counts ({problem_x}) and adata.layers['counts'] is not either "
            f"({problem_layer}). Put raw integer counts in X or layers['counts']."
        )
    raise ValueError(
        f"No raw counts found: adata.X is not counts ({problem_x}) and there is no layers['counts']. "
        "Put raw integer counts in X or layers['counts'], or pass layer=."
    )


def counts_matrix(adata: AnnData, where: str):
    """The count matrix named by :func:`find_counts`."""
    return adata.X if where == "X" else adata.layers[where]


def check_batch(adata: AnnData, batch_key: str | None) -> pd.Series | None:
    """Validate ``obs[batch_key]`` and return it as string categories."""
    if batch_key is None:
        return None
    if batch_key not in adata.obs:
        raise ValueError(
            f"batch_key={batch_key!r} is not a column of adata.obs (have: {list(adata.obs.columns)[:10]}); "
            "pass an existing column or batch_key=None."
        )
    col = adata.obs[batch_key]
    if col.isna().any():
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {int(col.isna().sum())} missing values; give every cell a batch."
        )
    col = col.astype(str).astype("category")
    sizes = col.value_counts()
    tiny = sizes[sizes < 2]
    if len(tiny):
        raise ValueError(
            f"adata.obs[{batch_key!r}] has batches with a single cell ({', '.join(map(str, tiny.index[:5]))}); "
            "merge them into a larger batch or drop those cells."
        )
    return col


def check_anndata(adata: AnnData) -> None:
    """Shape and name checks every step relies on."""
    if not isinstance(adata, AnnData):
        raise ValueError(f"expected an AnnData object, got {type(adata).__name__}")
    if adata.n_obs < 2 or adata.n_vars < 2:
        raise ValueError(f"AnnData has shape {adata.shape}; biossl needs at least 2 cells and 2 genes.")
    for axis, names in (("var_names", adata.var_names), ("obs_names", adata.obs_names)):
        if not names.is_unique:
            dup = names[names.duplicated()][0]
            raise ValueError(f"adata.{axis} has duplicates (e.g. {dup!r}); run adata.{axis}_make_unique().")


def check_copy(adata: AnnData, copy: bool) -> None:
    """``copy=True`` would load a backed AnnData into memory (anndata refuses without a file name)."""
    if copy and isinstance(adata, AnnData) and adata.isbacked:
        raise ValueError(
            "copy=True is not supported for a backed AnnData; call with copy=False (results are written into "
            "adata in memory) or load it with adata.to_memory()."
        )


def _select_genes(counts, genes: pd.Index, n_top_genes: int, batch: pd.Series | None) -> np.ndarray:
    """Boolean mask of selected genes: scanpy's seurat_v3 on counts, all expressed genes if few."""
    import scanpy as sc

    expressed = np.asarray((counts != 0).sum(axis=0)).ravel() > 0
    if expressed.sum() <= n_top_genes:
        return expressed
    tmp = AnnData(X=sp.csr_matrix(counts[:, expressed], dtype=np.float32))
    tmp.var_names = genes[expressed]
    if batch is not None:
        tmp.obs["batch"] = batch.to_numpy()
    sc.pp.highly_variable_genes(
        tmp, flavor="seurat_v3", n_top_genes=int(n_top_genes), batch_key="batch" if batch is not None else None
    )
    mask = np.zeros(len(genes), dtype=bool)
    mask[np.flatnonzero(expressed)[tmp.var["highly_variable"].to_numpy()]] = True
    return mask


def setup(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    n_top_genes: int = 2000,
    progress: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Validate ``adata``, locate raw counts and select the genes the model will use.

    Parameters
    ----------
    adata
        Cells × genes with raw integer counts in ``X`` or ``layers["counts"]``. May be backed
        (``anndata.read_h5ad(path, backed="r")``, CSR or dense ``X``): ``X`` is then read in chunks, never
        loaded, and the genes are selected by the same rule in two streaming passes.
    layer
        Layer holding the counts. By default ``X`` is used when it holds counts, else ``layers["counts"]``.
    batch_key
        Column of ``obs`` with the batch (sample, donor, technology) of each cell.
    n_top_genes
        Number of highly variable genes (scanpy's ``seurat_v3`` on counts, batch-aware when
        ``batch_key`` is given). All expressed genes are kept when there are no more than this.
    progress
        Show progress bars for the passes over a backed file; default: only when stderr is a terminal.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    None, or a copy when ``copy=True``. Writes

    ``var["biossl_hvg"]``
        Genes used by the model.
    ``uns["biossl"]["setup"]``
        Where the counts were found, the batch key and the gene list fingerprint.
    """
    check_copy(adata, copy)
    mask, params = plan_setup(adata, layer=layer, batch_key=batch_key, n_top_genes=n_top_genes, progress=progress)
    adata = adata.copy() if copy else adata
    write_setup(adata, mask, params)
    return adata if copy else None


def _check_library(lib: np.ndarray) -> None:
    if (lib == 0).any():
        raise ValueError(
            f"{int((lib == 0).sum())} cells have no counts at all; remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )


def _select_genes_backed(adata: AnnData, n_top_genes: int, batch: pd.Series | None, progress) -> np.ndarray:
    """Gene selection on a backed ``X`` in chunks: counts checked, then streaming seurat_v3."""
    from ._backed import RowReader, scan_counts, seurat_v3_streaming

    reader = RowReader(adata.X)
    scan = scan_counts(reader, batch, progress)
    if scan["problem"]:
        raise ValueError(
            f"adata.X (backed, {str(adata.filename)!r}) is not raw counts: {scan['problem']}. biossl needs raw "
            "integer counts in X of a backed file; load the file into memory to use a layer."
        )
    _check_library(scan["library"])
    return seurat_v3_streaming(reader, scan, n_top_genes, progress=progress)


def plan_setup(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    n_top_genes: int = 2000,
    progress: bool | None = None,
) -> tuple[np.ndarray, dict]:
    """Validate and select genes without writing anything; returns the gene mask and the record.

    A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is read in chunks and never loaded: the
    counts are checked and the genes selected by :func:`biossl._backed.seurat_v3_streaming` (the same
    rule as the in-memory path) from two passes over the rows.
    """
    check_anndata(adata)
    if not isinstance(n_top_genes, int | np.integer) or isinstance(n_top_genes, bool) or n_top_genes < 2:
        raise ValueError(f"n_top_genes must be an integer >= 2, got {n_top_genes!r}")
    if adata.isbacked and layer is None:
        where = "X"
        batch = check_batch(adata, batch_key)
        mask = _select_genes_backed(adata, n_top_genes, batch, progress)
    else:
        where = find_counts(adata, layer)
        counts = counts_matrix(adata, where)
        _check_library(np.asarray(counts.sum(axis=1)).ravel())
        batch = check_batch(adata, batch_key)
        mask = _select_genes(counts, adata.var_names, n_top_genes, batch)
    if mask.sum() < 2:
        raise ValueError(f"only {int(mask.sum())} genes are expressed; biossl needs at least 2.")
    params = {
        "counts": where,
        "batch_key": batch_key,
        "n_top_genes": int(n_top_genes),
        "n_genes": int(mask.sum()),
        "gene_hash": gene_hash(adata.var_names[mask]),
    }
    return mask, params


def write_setup(adata: AnnData, mask: np.ndarray, params: dict) -> None:
    """Write the outcome of :func:`plan_setup` into ``adata``."""
    adata.var[HVG_KEY] = mask
    record(adata, "setup", params)
    logger.info("setup: counts in %s, %d genes selected", params["counts"], params["n_genes"])


def ensure_setup(adata: AnnData, batch_key: str | None = None) -> tuple[np.ndarray, dict, bool]:
    """Return the gene mask, the setup record, and whether the caller must still write them.

    Plans :func:`setup` with defaults (without writing) when it has not run or used another batch key.
    """
    rec = get_record(adata, "setup")
    if rec is not None and HVG_KEY in adata.var and batch_key in (None, rec.get("batch_key")):
        if not (adata.isbacked and rec["counts"] == "X"):  # a backed X was checked in chunks by setup
            find_counts(adata, None if rec["counts"] == "X" else rec["counts"])
        return adata.var[HVG_KEY].to_numpy(dtype=bool), rec, False
    mask, params = plan_setup(adata, batch_key=batch_key)
    return mask, params, True
