"""A harder strong-batch check set than ../shared/data/strong_batch: shifts that per-batch scaling cannot undo.

    .venv/bin/python benchmarks/divergent.py OUT_DIR [--seed 0]

The shared sets re-sample one batch as Poisson(count x gene factor x depth): one multiplicative factor per gene,
which scaling each gene within its batch removes almost exactly. Species and labs differ in more ways, so this
generator (built to check choices made on the shared sets, not to tune on) adds three:

- a factor per gene *and cell type*, exp(N(0, 0.5)): regulation that differs type by type, as between species;
- a different composition: each type keeps a random share, uniform on [0.2, 1], of its shifted cells;
- gamma-Poisson counts (shape 4) instead of Poisson: a noisier technology.

Beside those, as in the shared sets: a gene-wise factor exp(N(0, 1)), half the depth and 20% of genes absent.
Writes ``pbmc3k_divergent.h5ad`` (a random half of ../shared/data/pbmc3k shifted) and
``baron_mouse_divergent.h5ad`` (donor mouse2 of ../shared/data/baron_mouse shifted) with obs["batch"]
(tech_A / tech_B) and obs["cell_type"]; licences as in those folders' READMEs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.sparse as sp

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {
    "pbmc3k_divergent": (SHARED / "pbmc3k" / "pbmc3k_seurat_labels_hvg2000.h5ad", None),
    "baron_mouse_divergent": (SHARED / "baron_mouse" / "baron2016_mouse_pancreas.h5ad", "mouse2"),
}
GENE_SIGMA, TYPE_SIGMA, DEPTH, DROP, SHAPE = 1.0, 0.5, 0.5, 0.2, 4.0


def divergent(
    adata,
    shift_batch: str | None,
    seed: int,
    *,
    type_sigma: float = TYPE_SIGMA,
    gene_sigma: float = GENE_SIGMA,
    drop: float = DROP,
):
    """A copy of ``adata`` whose shifted cells (batch ``shift_batch``, or a random half) form a divergent tech_B.

    ``drop``: the share of genes absent from tech_B (0 keeps them all; the random draws stay the same).
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    types = adata.obs["cell_type"].astype(str).to_numpy()
    if shift_batch is None:
        shift = rng.random(adata.n_obs) < 0.5
    else:
        shift = (adata.obs["batch"].astype(str) == shift_batch).to_numpy()
    names, codes = np.unique(types, return_inverse=True)
    keep_share = rng.uniform(0.2, 1.0, len(names))
    keep = ~shift | (rng.random(adata.n_obs) < keep_share[codes])
    gene = np.exp(rng.normal(0.0, gene_sigma, adata.n_vars)) * DEPTH
    gene[rng.random(adata.n_vars) < drop] = 0.0
    per_type = np.exp(rng.normal(0.0, type_sigma, (len(names), adata.n_vars)))
    B = X[shift & keep].tocoo()
    mean = B.data * gene[B.col] * per_type[codes[shift & keep][B.row], B.col]
    B.data = rng.poisson(rng.gamma(SHAPE, mean / SHAPE)).astype(np.float64)
    B = sp.csr_matrix(B)
    B.eliminate_zeros()
    a_rows, b_rows = np.flatnonzero(~shift), np.flatnonzero(shift & keep)
    out = ad.AnnData(
        sp.vstack([X[a_rows], B]).tocsr().astype(np.int32),
        obs=adata.obs.iloc[np.concatenate([a_rows, b_rows])][["cell_type"]].copy(),
        var=adata.var[[]].copy(),
    )
    out.obs["batch"] = np.where(np.arange(out.n_obs) < len(a_rows), "tech_A", "tech_B")
    out.uns["divergent"] = {
        "gene_sigma": gene_sigma, "type_sigma": type_sigma, "depth": DEPTH, "drop": drop,
        "gamma_shape": SHAPE, "seed": seed, "shift_batch": shift_batch or "random half",
    }  # fmt: skip
    return out


def main(argv=None) -> int:
    import anndata as ad

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, (path, shift_batch) in SOURCES.items():
        out = divergent(ad.read_h5ad(path), shift_batch, args.seed)
        out.write_h5ad(args.out_dir / f"{name}.h5ad", compression="gzip")
        counts = out.obs.groupby(["batch", "cell_type"], observed=True).size().unstack(0)
        print(name, out.shape, "\n", counts.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
