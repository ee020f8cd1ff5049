"""The weak-mixing lift above ``MIXING_MAX_CELLS`` cells: its reading on the diagnostic's sample against the whole data.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/large_weak_mixing.py [--n-cells 50000 100000]

Simulated counts (``simulate.simulate_in_memory``: 2,000 genes, 12 types, 4 batches) whose batch factors are weak
(``batch_sigma`` 0.03-0.09 instead of the files' 0.3), so the pooled PCA mixes above the gate, with the same
composition in every batch (scaling lifts the mixing) or with one family of types missing from batch 0 (it does
not). Per file: ``pca_latent``'s choice and CPU seconds with the defaults, where the scaled PCA the lift measures is
fitted on the diagnostic's 20,000-cell sample; then, timed apart, that sample's scaled PCA and mixing and the
scaled PCA of every cell with its mixing (what the lift built before it was measured on the sample, kept or not),
so the sample's reading can be set against the whole data's and the default's time against the time before
(``cpu_s_before``: the default's, less the sample's scaled PCA, plus the whole one where it is not kept). Writes
``results/large_weak_mixing.json`` and prints one line per file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import simulate  # noqa: E402
from measure import machine, measure  # noqa: E402

SIGMAS = [0.03, 0.06, 0.09]


def run(n_cells: int, batch_sigma: float, missing_family: int | None) -> dict:
    from biossl import graph
    from biossl.tl import _pca

    counts, batch, _ = simulate.simulate_in_memory(n_cells, batch_sigma=batch_sigma, missing_family=missing_family)
    with measure() as m:
        _, info = _pca.pca_latent(counts, 50, 0, batch=batch)
    default = m["cpu_s"]
    L = _pca.log_normalise(counts)
    rows = _pca._mixing_rows(n_cells, 0)
    with measure() as m:
        _pca._mixing(_pca._pca_scaled_per_batch(L[rows], batch[rows], 50), batch[rows], 0)
    probe_cpu = m["cpu_s"]
    with measure() as m:
        whole = _pca._mixing(_pca._pca_scaled_per_batch(L, batch, 50), batch, 0)
    whole_cpu = m["cpu_s"]
    mixing = info["batch_mixing"]
    return {
        "n_cells": n_cells,
        "batch_sigma": batch_sigma,
        "missing_family": missing_family,
        "batch_correction": info["batch_correction"],
        "pooled_floor_sample": graph.mixing_floor(mixing["pooled"]),
        "scaled_floor_sample": graph.mixing_floor(mixing["scaled"]) if "scaled" in mixing else None,
        "scaled_floor_whole": graph.mixing_floor(whole),
        "cpu_s": round(default, 1),
        "cpu_s_sample_scaled_pca": round(probe_cpu, 1),
        "cpu_s_whole_scaled_pca": round(whole_cpu, 1),
        # before, the whole scaled PCA was measured instead of the sample's and, when not kept, built in vain
        "cpu_s_before": round(default - probe_cpu + (whole_cpu if info["batch_correction"] == "none" else 0.0), 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, nargs="+", default=[50_000, 100_000])
    args = parser.parse_args(argv)
    runs = []
    for n in args.n_cells:
        for sigma in SIGMAS:
            for missing in (None, 0):
                r = run(n, sigma, missing)
                runs.append(r)
                print(r, flush=True)
    from splits import write_json_atomic

    write_json_atomic(
        {"runs": runs, "args": vars(args), "machine": machine()}, HERE / "results" / "large_weak_mixing.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
