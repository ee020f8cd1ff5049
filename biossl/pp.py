"""Preprocessing: validate the input, find raw counts, select genes, record what was done.

Everything is checked before anything is written, so a failed call leaves ``adata`` unchanged.
"""

from __future__ import annotations

import logging
import traceback
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._record import gene_hash, get_record, record

__all__ = ["map_genes", "setup"]

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
        "Put raw integer counts in X or layers['counts'], or pass layer=." + _raw_hint(adata)
    )


def _raw_hint(adata: AnnData) -> str:
    """Point at ``adata.raw`` when it holds counts (scanpy's habit), which biossl does not read by itself."""
    raw = getattr(adata, "raw", None)
    if raw is None or count_problem(raw.X) is not None:
        return ""
    has_all = adata.var_names.isin(raw.var_names).all()
    copy = "adata.layers['counts'] = adata.raw[:, adata.var_names].X" if has_all else "adata = adata.raw.to_adata()"
    return (
        f" adata.raw holds counts ({raw.n_vars} genes{'' if has_all else ', not all those of X'}), which biossl does "
        f"not read: copy them with `{copy}` (and save the h5ad file again for the command line)."
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


# spans of seurat_v3's loess, tried in order: the first is scanpy's default, the wider ones survive the
# singular local fits that many genes with the same few counts cause (see _loess_failure)
HVG_SPANS = (0.3, 0.5, 1.0)


def _loess_failure(err: BaseException) -> bool:
    """True when ``err`` was raised by skmisc's loess (e.g. ``b'reciprocal condition number  5.5e-15'``).

    Degree-2 local fits become singular where most genes in a neighbourhood share one mean (genes seen
    1, 2, 3 times in all cells); skmisc turns loess's warning into a ValueError with a bytes message.
    """
    if not isinstance(err, ValueError):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "loess" in frames[-1].filename


def _fit_with_fallback(seurat_v3: Callable[[float], np.ndarray], seurat: Callable[[], np.ndarray]):
    """Run ``seurat_v3(span)`` over :data:`HVG_SPANS` until its loess fits, else ``seurat()``; warn on a fallback.

    Returns the chosen genes and the record of how (``hvg_flavor``, ``hvg_span``).
    """
    failure = None
    for span in HVG_SPANS:
        try:
            chosen = seurat_v3(span)
        except ValueError as err:
            if not _loess_failure(err):
                raise
            failure = failure or _message(err)
            continue
        how = {"hvg_flavor": "seurat_v3", "hvg_span": span}
        break
    else:
        chosen, how = seurat(), {"hvg_flavor": "seurat"}
    if failure is not None:
        used = f"span={how['hvg_span']}" if "hvg_span" in how else "flavor='seurat' (binned dispersions, no loess)"
        warnings.warn(
            f"seurat_v3 gene selection failed in its loess fit ({failure}); genes were selected with {used} "
            "instead, as recorded in uns['biossl']['setup']. Many genes seen only a few times cause this.",
            UserWarning,
            stacklevel=5,
        )
    return chosen, how


def _message(err: BaseException) -> str:
    msg = err.args[0] if err.args else err
    return (msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)).strip()


def _select_genes(counts, genes: pd.Index, n_top_genes: int, batch: pd.Series | None) -> tuple[np.ndarray, dict]:
    """Boolean mask of selected genes and how they were chosen (``hvg_flavor``, ``hvg_span``).

    scanpy's seurat_v3 on counts; if its loess fails, again with wider spans (:data:`HVG_SPANS`), then
    scanpy's "seurat" flavour (binned dispersions, no loess) on log-normalised counts, with a warning.
    All expressed genes are kept when there are no more than ``n_top_genes``.
    """
    import scanpy as sc

    expressed = np.asarray((counts != 0).sum(axis=0)).ravel() > 0
    if expressed.sum() <= n_top_genes:
        return expressed, {"hvg_flavor": "all_expressed"}
    tmp = AnnData(X=sp.csr_matrix(counts[:, expressed], dtype=np.float32))
    tmp.var_names = genes[expressed]
    batch_key = None
    if batch is not None:
        tmp.obs["batch"] = batch.to_numpy()
        batch_key = "batch"

    def seurat_v3(span: float) -> np.ndarray:
        sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key, span=span)
        return tmp.var["highly_variable"].to_numpy()

    chosen, how = _fit_with_fallback(seurat_v3, lambda: _seurat_dispersion(tmp, n_top_genes, batch_key))
    mask = np.zeros(len(genes), dtype=bool)
    mask[np.flatnonzero(expressed)[chosen]] = True
    return mask, how


def _seurat_dispersion(tmp: AnnData, n_top_genes: int, batch_key: str | None) -> np.ndarray:
    """The ``n_top_genes`` genes of scanpy's "seurat" flavour on log-normalised counts (exactly that many).

    Ranked by normalised dispersion (with batches: by the number of batches a gene is variable in, then the
    mean normalised dispersion, as scanpy does); genes without a dispersion come last.
    """
    import scanpy as sc

    from ._backed import top_genes

    log = tmp.copy()
    sc.pp.normalize_total(log)
    sc.pp.log1p(log)
    with warnings.catch_warnings():  # a batch with fewer expressed genes than n_top_genes keeps them all
        warnings.filterwarnings("ignore", message=r"`n_top_genes` > number of normalized", category=UserWarning)
        sc.pp.highly_variable_genes(log, flavor="seurat", n_top_genes=n_top_genes, batch_key=batch_key)
    keys = [log.var["dispersions_norm"].to_numpy(dtype=float)]
    if batch_key is not None:
        keys.append(log.var["highly_variable_nbatches"].to_numpy(dtype=float))
    return top_genes(keys, n_top_genes)


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
        ``batch_key`` is given). All expressed genes are kept when there are no more than this. When the
        loess of ``seurat_v3`` fails (data with many genes seen only a few times), it is retried with a wider
        span (0.5, then 1.0), then scanpy's ``seurat`` flavour on log-normalised counts is used, with a warning.
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
        Where the counts were found, the batch key, the gene list fingerprint and how the genes were
        chosen: ``hvg_flavor`` (``"seurat_v3"``, ``"seurat"`` or ``"all_expressed"``) and ``hvg_span``.
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


def _select_genes_backed(
    adata: AnnData, n_top_genes: int, batch: pd.Series | None, progress
) -> tuple[np.ndarray, dict]:
    """Gene selection on a backed ``X`` in chunks: counts checked, then streaming seurat_v3 (same fallbacks)."""
    from ._backed import RowReader, scan_counts, seurat_dispersion_streaming, seurat_v3_streaming

    reader = RowReader(adata.X)
    scan = scan_counts(reader, batch, progress)
    if scan["problem"]:
        raise ValueError(
            f"adata.X (backed, {str(adata.filename)!r}) is not raw counts: {scan['problem']}. biossl needs raw "
            "integer counts in X of a backed file; load the file into memory to use a layer."
        )
    _check_library(scan["library"])
    if (scan["nnz"] > 0).sum() <= n_top_genes:
        return scan["nnz"] > 0, {"hvg_flavor": "all_expressed"}
    return _fit_with_fallback(
        lambda span: seurat_v3_streaming(reader, scan, n_top_genes, span=span, progress=progress),
        lambda: seurat_dispersion_streaming(reader, scan, n_top_genes, progress=progress),
    )


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
        mask, how = _select_genes_backed(adata, n_top_genes, batch, progress)
    else:
        where = find_counts(adata, layer)
        counts = counts_matrix(adata, where)
        _check_library(np.asarray(counts.sum(axis=1)).ravel())
        batch = check_batch(adata, batch_key)
        mask, how = _select_genes(counts, adata.var_names, int(n_top_genes), batch)
    if mask.sum() < 2:
        raise ValueError(f"only {int(mask.sum())} genes are expressed; biossl needs at least 2.")
    params = {
        "counts": where,
        "batch_key": batch_key,
        "n_top_genes": int(n_top_genes),
        "n_genes": int(mask.sum()),
        "gene_hash": gene_hash(adata.var_names[mask]),
        **how,
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


def map_genes(
    adata: AnnData,
    gene_map,
    *,
    gene_key: str | None = None,
    min_overlap: float = 0.1,
    copy: bool = False,
) -> AnnData | None:
    """Rename genes through an ortholog table (e.g. human symbols to mouse ones), keeping one-to-one pairs.

    Use it to bring two species (or two gene annotations) into one gene space before concatenating them, or
    pass the same ``gene_map`` to :func:`biossl.tl.map_query` to map a query onto a reference of another
    species. Genes without a one-to-one partner are dropped; how many, and how many ambiguous pairs the table
    held, is recorded.

    Parameters
    ----------
    adata
        Cells × genes.
    gene_map
        A dict (old → new identifier), a two-column TSV/CSV with a header line, or a built-in table:
        ``"human_to_mouse"`` / ``"mouse_to_human"`` (Ensembl one-to-one orthologs, 17,049 pairs; source and
        licence in ``example_data/orthologs/README.md``).
    gene_key
        ``var`` column holding the identifiers to rename (default ``var_names``).
    min_overlap
        Refuse when fewer than this fraction of the genes can be renamed (a table for the wrong species or
        identifier type).
    copy
        Return a renamed copy instead of changing ``adata``.

    Returns
    -------
    None or a copy. ``adata`` keeps the renamed genes only; ``var_names`` are the new identifiers,
    ``var["biossl_source_gene"]`` the old ones, ``uns["biossl"]["map_genes"]`` the report.
    """
    from ._check import check_fraction
    from ._genemap import gene_ids, read_gene_map, rename_genes

    check_copy(adata, copy)
    if not isinstance(adata, AnnData):
        raise ValueError(f"expected an AnnData object, got {type(adata).__name__}")
    min_overlap = check_fraction("min_overlap", min_overlap)
    one_to_one, report = read_gene_map(gene_map)
    old = gene_ids(adata, gene_key)
    new, keep, report = rename_genes(old, one_to_one, report)
    if report["fraction_renamed"] < min_overlap or keep.sum() < 2:
        raise ValueError(
            f"gene_map renames only {int(keep.sum())} of {len(old)} genes ({report['fraction_renamed']:.0%}; "
            f"unmapped e.g. {', '.join(report['unmapped_examples'][:3])}); check that the table's first column uses "
            "the same identifiers (species, symbols vs Ensembl ids) as the data."
        )
    adata = adata.copy() if copy else adata
    source = old[keep]
    adata._inplace_subset_var(np.flatnonzero(keep))
    adata.var["biossl_source_gene"] = np.asarray(source, dtype=str)
    adata.var_names = pd.Index(new[keep].astype(str))
    record(adata, "map_genes", report)
    logger.info("map_genes: %d of %d genes renamed (%s)", report["n_renamed"], report["n_genes"], report["gene_map"])
    return adata if copy else None
