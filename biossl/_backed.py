"""Reading counts from a backed (on-disk) AnnData in chunks, and streaming gene selection.

A backed ``X`` (``anndata.read_h5ad(path, backed="r")``) is read through :class:`RowReader`: rows of
the CSR matrix come from HDF5 one contiguous chunk (full passes) or one row run (minibatches) at a
time, restricted to and reordered into the model's genes. Memory is O(n_cells) for the row pointer
plus O(chunk × genes), never O(n_cells × genes).

No torch here: :mod:`biossl.pp` uses this module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._progress import progress_bar

CHUNK_ROWS = 20_000


def is_backed_matrix(matrix) -> bool:
    """True for anndata's on-disk sparse datasets and h5py datasets (not numpy/scipy in memory)."""
    return not (isinstance(matrix, np.ndarray) or sp.issparse(matrix)) and hasattr(matrix, "shape")


class RowReader:
    """Rows of an on-disk count matrix as CSR float32, optionally in the column order of a gene list.

    Parameters
    ----------
    matrix
        ``adata.X`` of a backed AnnData: anndata's CSR dataset, or a dense ``h5py.Dataset``.
    columns
        For every output column, the column of ``matrix`` it comes from (-1: absent, zero-filled);
        None keeps all columns.

    ``reader[idx]`` (sorted integer array or slice) returns a :class:`scipy.sparse.csr_matrix`, so the
    reader can stand in for an in-memory CSR matrix wherever rows are indexed.
    """

    def __init__(self, matrix, columns: np.ndarray | None = None):
        self.n_rows, self.n_file_cols = (int(s) for s in matrix.shape)
        fmt = getattr(matrix, "format", None)
        if fmt == "csc":
            raise ValueError(
                "the backed X is stored as CSC (column-major), which cannot be read by rows; rewrite the file "
                "with a CSR X, e.g. adata.X = scipy.sparse.csr_matrix(adata.X) before write_h5ad."
            )
        self.sparse = fmt == "csr"
        if self.sparse:
            group = matrix.group
            self._data, self._indices = group["data"], group["indices"]
            self._indptr = np.asarray(group["indptr"][:], dtype=np.int64)
        else:
            self._dense = matrix
        if columns is None:
            columns = np.arange(self.n_file_cols)
        columns = np.asarray(columns, dtype=np.int64)
        self.n_cols = len(columns)
        # file column -> output column (-1: not used)
        self._colmap = np.full(self.n_file_cols, -1, dtype=np.int64)
        present = columns >= 0
        self._colmap[columns[present]] = np.flatnonzero(present)
        self._all = bool(
            present.all() and self.n_cols == self.n_file_cols and (columns == np.arange(self.n_cols)).all()
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.n_cols)

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, idx) -> sp.csr_matrix:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self.n_rows)
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._rows_range(start, stop)
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if len(idx) == 0:
            return sp.csr_matrix((0, self.n_cols), dtype=np.float32)
        if (np.diff(idx) <= 0).any():  # h5py needs increasing indices: read sorted, then reorder
            order = np.argsort(idx, kind="stable")
            uniq, inverse = np.unique(idx[order], return_inverse=True)
            return sp.csr_matrix(self[uniq][inverse][np.argsort(order, kind="stable")])
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if hi - lo <= 4 * len(idx):  # dense enough: one read of the span, then pick the rows
            return self._rows_range(lo, hi)[idx - lo]
        if not self.sparse:
            return self._restrict_dense(self._dense[idx])
        starts, stops = self._indptr[idx], self._indptr[idx + 1]
        data = [self._data[a:b] for a, b in zip(starts, stops, strict=True) if b > a]
        ind = [self._indices[a:b] for a, b in zip(starts, stops, strict=True) if b > a]
        indptr = np.concatenate([[0], np.cumsum(stops - starts)])
        data = np.concatenate(data) if data else np.zeros(0, np.float32)
        ind = np.concatenate(ind) if ind else np.zeros(0, np.int64)
        return self._restrict(data, ind, indptr)

    def _rows_range(self, start: int, stop: int) -> sp.csr_matrix:
        if not self.sparse:
            return self._restrict_dense(self._dense[start:stop])
        a, b = int(self._indptr[start]), int(self._indptr[stop])
        return self._restrict(self._data[a:b], self._indices[a:b], self._indptr[start : stop + 1] - a)

    def _restrict(self, data, indices, indptr) -> sp.csr_matrix:
        n = len(indptr) - 1
        data = np.asarray(data, dtype=np.float32)
        if self._all:
            return sp.csr_matrix((data, np.asarray(indices, dtype=np.int32), indptr), shape=(n, self.n_cols))
        cols = self._colmap[indices]
        keep = cols >= 0
        row = np.repeat(np.arange(n), np.diff(indptr))[keep]
        new_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=n), out=new_ptr[1:])
        return sp.csr_matrix((data[keep], cols[keep].astype(np.int32), new_ptr), shape=(n, self.n_cols))

    def _restrict_dense(self, block) -> sp.csr_matrix:
        return self._restrict_csr(sp.csr_matrix(np.asarray(block, dtype=np.float32)))

    def _restrict_csr(self, block: sp.csr_matrix) -> sp.csr_matrix:
        return self._restrict(block.data, block.indices, block.indptr.astype(np.int64))

    def chunks(self, chunk_size: int = CHUNK_ROWS):
        """Yield ``(start, stop, csr_block)`` over all rows in order."""
        for start in range(0, self.n_rows, chunk_size):
            stop = min(self.n_rows, start + chunk_size)
            yield start, stop, self._rows_range(start, stop)

    def to_csr(self, chunk_size: int = CHUNK_ROWS) -> sp.csr_matrix:
        """All rows in memory (O(nnz) of the selected columns), float32.

        The result is allocated once and filled block by block, each block read, copied and dropped. Its size
        comes first: from the row pointers when every column is kept, else from a pass over the column indices
        only. (Holding every block until the size is known kept twice the matrix resident, 4.2 GB for the
        10^6-cell simulation: the freed blocks stay in the C heap; ``sp.vstack`` held both outright.)
        """
        nnz = self._stored_entries(chunk_size)
        data = np.empty(nnz, dtype=np.float32)  # pages are committed as they are written
        indices = np.empty(nnz, dtype=np.int32 if self.n_cols < 2**31 else np.int64)
        indptr = np.zeros(self.n_rows + 1, dtype=np.int64)
        pos = 0
        for start, stop, block in self.chunks(chunk_size):
            k = block.nnz
            data[pos : pos + k] = block.data
            indices[pos : pos + k] = block.indices
            indptr[start + 1 : stop + 1] = block.indptr[1:] + pos
            pos += k
            del block
        if pos != nnz:
            raise RuntimeError(f"the backed X changed while it was read ({pos} entries, {nnz} expected)")
        return sp.csr_matrix((data, indices, indptr), shape=(self.n_rows, self.n_cols))

    def _stored_entries(self, chunk_size: int) -> int:
        """Entries of the selected columns (for a dense X: non-zero values), without keeping any block."""
        if self.sparse and self._all:
            return int(self._indptr[-1] - self._indptr[0])
        total = 0
        for start in range(0, self.n_rows, chunk_size):
            stop = min(self.n_rows, start + chunk_size)
            if self.sparse:
                a, b = int(self._indptr[start]), int(self._indptr[stop])
                total += int(np.count_nonzero(self._colmap[self._indices[a:b]] >= 0))
            else:
                total += self._rows_range(start, stop).nnz
        return total


def _stats_pass(
    reader: RowReader,
    codes: np.ndarray,
    n_groups: int,
    progress,
    clip: np.ndarray | None = None,
    row_scale: np.ndarray | None = None,
):
    """Per group × gene sums (and sums of squares, nnz).

    With ``clip`` (groups × genes) the sums are of min(x, clip), with ``row_scale`` (one factor per row) of
    the scaled rows.
    """
    G = reader.n_cols
    s1 = np.zeros(n_groups * G)
    s2 = np.zeros(n_groups * G)
    nnz = np.zeros(G, dtype=np.int64)
    problem = None
    first = clip is None and row_scale is None
    bar = progress_bar(reader.n_rows, "gene statistics" if first else "gene variances", progress,
                       min_total=100_000)  # fmt: skip
    row_sums = np.zeros(reader.n_rows) if first else None
    for start, stop, block in reader.chunks():
        data = block.data.astype(np.float64)
        if first and problem is None:
            problem = _count_problem(data)
        rows = np.repeat(np.arange(start, stop), np.diff(block.indptr))
        key = codes[rows] * G + block.indices
        if clip is not None:
            data = np.minimum(data, clip.ravel()[key])
        elif row_scale is not None:
            data = data * row_scale[rows]
        else:
            row_sums[start:stop] = np.asarray(block.sum(1)).ravel()
            nnz += np.bincount(block.indices[data != 0], minlength=G)
        s1 += np.bincount(key, weights=data, minlength=n_groups * G)
        s2 += np.bincount(key, weights=data * data, minlength=n_groups * G)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    return s1.reshape(n_groups, G), s2.reshape(n_groups, G), nnz, row_sums, problem


def read_counts(reader: RowReader, what: str = "the backed X") -> sp.csr_matrix:
    """The reader's rows (its selected columns only) in memory as float32 CSR, checked to be raw counts."""
    X = reader.to_csr()
    problem = _count_problem(X.data)
    if problem:
        raise ValueError(f"{what} is not raw counts: {problem}. biossl needs raw integer counts.")
    return X


def _count_problem(vals: np.ndarray) -> str | None:
    bad = ~np.isfinite(vals)
    if bad.any():
        return f"it holds NaN/inf values (e.g. {vals[bad][0]:g})"
    neg = vals < 0
    if neg.any():
        return f"it holds negative values (e.g. {vals[neg][0]:g})"
    frac = vals != np.round(vals)
    if frac.any():
        return f"it holds non-integer values (e.g. {vals[frac][0]:g}; log-normalised data?)"
    return None


def scan_counts(reader: RowReader, batch: pd.Series | None, progress: bool | None = None) -> dict:
    """One pass over the rows: count checks, library sizes, per-batch gene sums and sums of squares."""
    if batch is None:
        codes, n_groups = np.zeros(reader.n_rows, dtype=np.int64), 1
    else:
        codes = batch.cat.codes.to_numpy().astype(np.int64)
        n_groups = len(batch.cat.categories)
    s1, s2, nnz, row_sums, problem = _stats_pass(reader, codes, n_groups, progress)
    return {
        "codes": codes,
        "n_groups": n_groups,
        "sum": s1,
        "sumsq": s2,
        "nnz": nnz,
        "library": row_sums,
        "problem": problem,
    }


def seurat_v3_streaming(
    reader: RowReader, scan: dict, n_top_genes: int, *, span: float = 0.3, progress: bool | None = None
) -> np.ndarray:
    """Boolean mask of highly variable genes by Seurat v3's rule, from two passes over the rows.

    Follows Stuart et al. 2019 (Cell 177:1888) as implemented in scanpy's ``flavor="seurat_v3"``: per
    batch, a loess fit of log variance on log mean gives each gene's expected standard deviation; the
    variance of the standardised counts, clipped at sqrt(n_cells), ranks the genes; genes are ordered by
    median rank over batches, ties by the number of batches they are variable in. Pass one (``scan``)
    gives the means and variances, pass two the clipped sums. Genes expressed in no cell are never chosen,
    and all expressed genes are kept when there are no more than ``n_top_genes``.
    """
    from skmisc.loess import loess

    expressed = scan["nnz"] > 0
    if expressed.sum() <= n_top_genes:
        return expressed
    G = reader.n_cols
    n_groups, codes = scan["n_groups"], scan["codes"]
    n_per = np.bincount(codes, minlength=n_groups).astype(np.float64)
    groups = [g for g in range(n_groups) if n_per[g] > 0]
    means = np.zeros((n_groups, G))
    reg_std = np.ones((n_groups, G))
    clip = np.zeros((n_groups, G))
    for g in groups:
        n = n_per[g]
        mean = scan["sum"][g] / n
        var = (scan["sumsq"][g] / n - mean**2) * (n / (n - 1))
        not_const = (var > 0) & expressed
        est = np.zeros(G)
        model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
        model.fit()
        est[not_const] = model.outputs.fitted_values
        means[g], reg_std[g] = mean, np.sqrt(10**est)
        clip[g] = reg_std[g] * np.sqrt(n) + mean
    c1, c2, _, _, _ = _stats_pass(reader, codes, n_groups, progress, clip=clip)
    norm_var = []
    for g in groups:
        n, mean = n_per[g], means[g]
        v = (n * mean**2 + c2[g] - 2 * c1[g] * mean) / ((n - 1) * reg_std[g] ** 2)
        norm_var.append(v[expressed])
    norm_var = np.vstack(norm_var)
    ranks = np.argsort(np.argsort(-norm_var, axis=1), axis=1).astype(np.float32)
    n_batches_hv = (ranks < n_top_genes).sum(0)
    ranks[ranks >= n_top_genes] = np.nan
    median_rank = np.ma.median(np.ma.masked_invalid(ranks), axis=0).filled(np.nan)
    df = pd.DataFrame({"rank": median_rank, "nbatches": n_batches_hv})
    order = df.sort_values(["rank", "nbatches"], ascending=[True, False], na_position="last").index
    chosen = np.zeros(int(expressed.sum()), dtype=bool)
    chosen[np.asarray(order[:n_top_genes])] = True
    mask = np.zeros(G, dtype=bool)
    mask[np.flatnonzero(expressed)[chosen]] = True
    return mask


def top_genes(keys: list[np.ndarray], n: int) -> np.ndarray:
    """Mask of the ``n`` genes ranked highest by ``keys`` (the last key first; NaN lowest; ties by position)."""
    order = np.lexsort([np.nan_to_num(-np.asarray(k, dtype=float), nan=np.inf) for k in keys])
    chosen = np.zeros(len(keys[0]), dtype=bool)
    chosen[order[:n]] = True
    return chosen


def normalised_dispersion(mean: np.ndarray, var: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """The statistic of scanpy's ``flavor="seurat"``, from the mean and variance of normalised counts.

    The log dispersion (var / mean) z-scored within ``n_bins`` equal-width bins of log1p(mean); a gene alone
    in its bin gets 1, a gene with no variance NaN.
    """
    mean = np.where(mean == 0, 1e-12, mean)
    disp = var / mean
    disp[disp <= 0] = np.nan
    disp = np.log(disp)
    bins = pd.cut(np.log1p(mean), bins=n_bins)
    stats = pd.Series(disp).groupby(bins, observed=True).agg(["mean", "std"])
    single = stats["std"].isna()
    stats.loc[single, "std"] = stats.loc[single, "mean"]
    stats.loc[single, "mean"] = 0.0
    per_gene = stats.loc[bins]
    with np.errstate(divide="ignore", invalid="ignore"):  # a bin of equal dispersions: NaN/inf, as in scanpy
        return (disp - per_gene["mean"].to_numpy()) / per_gene["std"].to_numpy()


def seurat_dispersion_streaming(
    reader: RowReader, scan: dict, n_top_genes: int, *, progress: bool | None = None
) -> np.ndarray:
    """Boolean mask of ``n_top_genes`` genes by scanpy's ``flavor="seurat"`` rule (no loess), in one more pass.

    The rule biossl falls back to when seurat_v3's loess fails, as :func:`biossl.pp.setup` applies it in
    memory: counts normalised to the median library size (``sc.pp.normalize_total``), per batch the
    :func:`normalised_dispersion` of the genes expressed in that batch (0 elsewhere) and the top
    ``n_top_genes`` of them; genes ranked by the number of batches they are top in, then by the mean
    normalised dispersion.
    """
    expressed = scan["nnz"] > 0
    lib = scan["library"]
    scale = np.median(lib[lib > 0]) / np.where(lib > 0, lib, 1.0)
    n_groups, codes = scan["n_groups"], scan["codes"]
    s1, s2, _, _, _ = _stats_pass(reader, codes, n_groups, progress, row_scale=scale)
    n_per = np.bincount(codes, minlength=n_groups).astype(np.float64)
    norms, n_top = [], np.zeros(int(expressed.sum()))
    for g in range(n_groups):
        n = n_per[g]
        if n < 2:
            continue
        in_batch = (scan["sum"][g] > 0)[expressed]
        mean = s1[g][expressed][in_batch] / n
        var = np.maximum(s2[g][expressed][in_batch] / n - mean**2, 0.0) * (n / (n - 1))
        var[var < 1e-12 * mean**2] = 0.0  # constant genes: rounding, not variance
        norm = np.zeros(len(in_batch))
        norm[in_batch] = normalised_dispersion(mean, var)
        valid = np.sort(norm[in_batch][~np.isnan(norm[in_batch])])[::-1]
        if len(valid):  # scanpy's per-batch choice: everything at or above the n-th highest
            top = np.nan_to_num(norm, nan=-np.inf) >= valid[min(n_top_genes, len(valid)) - 1]
            n_top += top & in_batch
        norms.append(norm)
    mean_norm = pd.DataFrame(np.vstack(norms)).mean(axis=0).to_numpy()  # NaN skipped, as scanpy averages
    chosen = top_genes([mean_norm, n_top], n_top_genes)
    mask = np.zeros(reader.n_cols, dtype=bool)
    mask[np.flatnonzero(expressed)[chosen]] = True
    return mask
