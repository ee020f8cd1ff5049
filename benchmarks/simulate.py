"""Seeded negative-binomial simulator of single-cell counts, written to h5ad in chunks.

Cells belong to hierarchical types (type families share a programme, each type has its own weaker
markers), batches multiply every gene by a gene-wise log-normal factor and shift the library size,
library sizes are log-normal and counts are negative binomial with gene-wise dispersion (a Splatter-
like gamma–Poisson model; Zappia, Phipson & Oshlack 2017, Genome Biol 18:174). With the defaults about
90% of the entries are zero.

``X`` is written as CSR (float32 data, int32 indices, int64 indptr) one chunk of rows at a time into
resizable HDF5 datasets, so memory stays O(chunk × genes) whatever the number of cells; the file is
written to a temporary name and renamed when complete.

Usage::

    python benchmarks/simulate.py OUT.h5ad --n-cells 1000000 --n-genes 2000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

N_FAMILIES = 4
TYPES_PER_FAMILY = 3


def _programme(n_cells, n_genes, n_types, n_batches, seed, batch_sigma=0.3):
    """Everything that is fixed per gene, type and batch (small), plus each cell's type and batch."""
    rng = np.random.default_rng(seed)
    # gene base proportions: heavy-tailed, as in real data (few genes take most reads)
    base = rng.lognormal(0.0, 2.0, n_genes)
    base /= base.sum()
    theta = rng.gamma(4.0, 1.0, n_genes) + 0.5  # gene-wise NB dispersion
    log_effect = np.zeros((n_types, n_genes))
    families = np.arange(n_types) // TYPES_PER_FAMILY
    for f in np.unique(families):  # a family programme shared by its types
        genes = rng.choice(n_genes, 80, replace=False)
        log_effect[np.ix_(families == f, genes)] += rng.normal(np.log(4.0), 0.4, len(genes))
    for t in range(n_types):  # each type's own, weaker markers
        genes = rng.choice(n_genes, 50, replace=False)
        log_effect[t, genes] += rng.normal(np.log(3.0), 0.4, len(genes))
    batch_effect = rng.normal(0.0, batch_sigma, (n_batches, n_genes))  # gene-wise, log scale
    batch_depth = rng.normal(0.0, 0.25, n_batches)
    # unequal type sizes, with rare types (smallest ~1%)
    weights = np.sort(rng.dirichlet(np.full(n_types, 2.0)))[::-1]
    weights = np.maximum(weights, 0.01)
    weights /= weights.sum()
    cell_type = rng.choice(n_types, n_cells, p=weights)
    batch = rng.integers(0, n_batches, n_cells)
    return base, theta, log_effect, batch_effect, batch_depth, cell_type, batch


def _chunk_counts(rng, base, theta, log_effect, batch_effect, batch_depth, cell_type, batch, library_mean):
    """Dense NB counts for one chunk of cells (float32)."""
    rate = base * np.exp(log_effect[cell_type] + batch_effect[batch])
    rate /= rate.sum(1, keepdims=True)
    library = rng.lognormal(np.log(library_mean) + batch_depth[batch], 0.35)
    mu = rate * library[:, None]
    counts = rng.negative_binomial(theta, theta / (theta + mu))
    empty = counts.sum(1) == 0  # every cell must have a read (biossl rejects empty cells)
    counts[empty, np.argmax(mu[empty], 1)] = 1
    return counts.astype(np.float32)


def _blocks(programme: tuple, n_cells: int, chunk_size: int, seed: int, library_mean: float):
    """(first row, end row, CSR counts) of each chunk of cells; chunk ``c`` draws from ``default_rng([seed, 1, c])``."""
    base, theta, log_effect, batch_effect, batch_depth, cell_type, batch = programme
    for c, start in enumerate(range(0, n_cells, chunk_size)):
        stop = min(n_cells, start + chunk_size)
        counts = _chunk_counts(
            np.random.default_rng([seed, 1, c]), base, theta, log_effect, batch_effect, batch_depth,
            cell_type[start:stop], batch[start:stop], library_mean,
        )  # fmt: skip
        yield start, stop, sp.csr_matrix(counts)


def simulate_h5ad(
    path: str | os.PathLike,
    n_cells: int,
    n_genes: int = 2000,
    *,
    n_types: int = N_FAMILIES * TYPES_PER_FAMILY,
    n_batches: int = 4,
    library_mean: float = 500.0,
    seed: int = 0,
    chunk_size: int = 20_000,
    progress: bool | None = None,
) -> Path:
    """Write a simulated count matrix to ``path`` (h5ad, CSR X) chunk by chunk; returns the path.

    ``obs["cell_type"]``, ``obs["family"]`` and ``obs["batch"]`` hold the truth. The result depends only on
    (``n_cells``, ``n_genes``, ``n_types``, ``n_batches``, ``library_mean``, ``seed``, ``chunk_size``).
    """
    path = Path(path)
    base, theta, log_effect, batch_effect, batch_depth, cell_type, batch = _programme(
        n_cells, n_genes, n_types, n_batches, seed
    )
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t:02d}" for t in cell_type]),
            "family": pd.Categorical([f"family{t // TYPES_PER_FAMILY}" for t in cell_type]),
            "batch": pd.Categorical([f"batch{b}" for b in batch]),
        },
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{g:05d}" for g in range(n_genes)]))
    # a skeleton with an empty CSR X gives anndata's own layout for obs/var/uns; X is then refilled
    skeleton = AnnData(X=sp.csr_matrix((n_cells, n_genes), dtype=np.float32), obs=obs, var=var)
    skeleton.uns["simulation"] = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_types": n_types,
        "n_batches": n_batches,
        "library_mean": library_mean,
        "seed": seed,
        "chunk_size": chunk_size,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.h5ad")
    skeleton.write_h5ad(tmp)
    del skeleton, obs
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_cells, desc="simulating", file=sys.stderr, leave=False)
    nnz = 0
    try:
        with h5py.File(tmp, "r+") as f:
            grp = f["X"]
            for name in ("data", "indices", "indptr"):
                del grp[name]
            chunks = (1 << 18,)
            data = grp.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=chunks)
            indices = grp.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=chunks)
            indptr = grp.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
            indptr[0] = 0
            programme = (base, theta, log_effect, batch_effect, batch_depth, cell_type, batch)
            for start, stop, block in _blocks(programme, n_cells, chunk_size, seed, library_mean):
                data.resize((nnz + block.nnz,))
                indices.resize((nnz + block.nnz,))
                data[nnz:] = block.data
                indices[nnz:] = block.indices.astype(np.int32)
                indptr[start + 1 : stop + 1] = block.indptr[1:].astype(np.int64) + nnz
                nnz += block.nnz
                if bar is not None:
                    bar.update(stop - start)
        os.replace(tmp, path)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    return path


def simulate_in_memory(
    n_cells: int,
    n_genes: int = 2000,
    *,
    n_batches: int = 4,
    batch_sigma: float = 0.3,
    missing_family: int | None = None,
    seed: int = 0,
    chunk_size: int = 20_000,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(counts, batch names, type codes) of :func:`simulate_h5ad`'s model, in memory.

    ``batch_sigma`` is the sd of the gene-wise batch factor on the log scale (0.3 in the files; smaller values give
    batches that mix weakly rather than not at all). ``missing_family``: batch 0 holds no cell of that family's types
    (its cells of them take another type at random), a difference in composition that scaling per batch cannot mend.
    With the defaults the cells' types and batches are those of ``simulate_h5ad(..., seed=seed)``.
    """
    base, theta, log_effect, batch_effect, batch_depth, cell_type, batch = _programme(
        n_cells, n_genes, N_FAMILIES * TYPES_PER_FAMILY, n_batches, seed, batch_sigma
    )
    if missing_family is not None:
        family = cell_type // TYPES_PER_FAMILY
        moved = (batch == 0) & (family == missing_family)
        others = np.flatnonzero(np.arange(N_FAMILIES * TYPES_PER_FAMILY) // TYPES_PER_FAMILY != missing_family)
        cell_type = cell_type.copy()
        cell_type[moved] = np.random.default_rng([seed, 2]).choice(others, moved.sum())
    programme = (base, theta, log_effect, batch_effect, batch_depth, cell_type, batch)
    blocks = [block for _, _, block in _blocks(programme, n_cells, chunk_size, seed, 500.0)]
    return sp.vstack(blocks).tocsr(), np.array([f"batch{b}" for b in batch]), cell_type


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--n-cells", type=int, default=10_000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=20_000)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = simulate_h5ad(
        args.out, args.n_cells, args.n_genes, n_batches=args.n_batches, seed=args.seed, chunk_size=args.chunk_size
    )
    with h5py.File(out, "r") as f:
        nnz = f["X/data"].shape[0]
    density = nnz / (args.n_cells * args.n_genes)
    print(
        f"{out}: {args.n_cells} cells x {args.n_genes} genes, {1 - density:.1%} zeros, {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
