"""Working memory of the default in-memory path (issue 25): setup → embed → neighbors → annotate.

A simulated data set (``benchmarks/simulate.py``: n cells × 2,000 genes, 4 batches, 5 labelled cells per
type) is loaded with ``X`` and a copy in ``layers["counts"]``, as many users hold it. Per stage: the peak of
memory allocated through Python (``tracemalloc``: numpy and scipy arrays report to it) above what the
loaded AnnData holds, what the stage leaves behind, the process's peak RSS (``ru_maxrss``; scanpy, sklearn
and pynndescent are imported before the data are loaded, as in a scanpy session), wall and CPU seconds.
The working memory the issue targets is the largest stage peak above the loaded data. Results go to
``benchmarks/results/memory.json``; run one size per process::

    python benchmarks/memory.py --n-cells 200000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("BIOSSL_SCALE_DIR", "/tmp/biossl_scale"))
GIB = 2**30


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def run(n_cells: int) -> dict:
    import anndata as ad
    import numpy as np
    import pynndescent  # noqa: F401  (a scanpy session has these loaded already: their code is not working memory)
    import scanpy  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    import biossl

    sys.path.insert(0, str(HERE))
    from simulate import simulate_h5ad

    path = WORK / f"sim_{n_cells}.h5ad"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        simulate_h5ad(path, n_cells, 2000, seed=0)
    adata = ad.read_h5ad(path)
    adata.layers["counts"] = adata.X.copy()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    labelled = biossl.metrics.fewlabel_split(truth, 5, 0)
    adata.obs["few"] = np.where(labelled, truth, None)
    loaded_rss = _rss_gib()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    stages = {
        "setup": lambda: biossl.pp.setup(adata, batch_key="batch"),
        "embed": lambda: biossl.tl.embed(adata),
        "neighbors": lambda: biossl.tl.neighbors(adata),
        "annotate": lambda: biossl.tl.annotate(adata, "few"),
    }
    out = {"n_cells": n_cells, "loaded_rss_gib": round(loaded_rss, 3), "stages": {}}
    for name, step in stages.items():
        tracemalloc.reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        current, peak = tracemalloc.get_traced_memory()
        out["stages"][name] = {
            "peak_above_loaded_gib": round((peak - base) / GIB, 3),
            "held_after_gib": round((current - base) / GIB, 3),
            "max_rss_gib": round(_rss_gib(), 3),
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
        }
        print(name, out["stages"][name], flush=True)
    pred = adata.obs["biossl_label"].astype(str).to_numpy()
    out["macro_f1"] = round(biossl.metrics.macro_f1(truth[~labelled], pred[~labelled]), 4)
    out["working_memory_gib"] = max(s["peak_above_loaded_gib"] for s in out["stages"].values())
    out["rss_above_loaded_gib"] = round(max(s["max_rss_gib"] for s in out["stages"].values()) - loaded_rss, 3)
    with open("/proc/loadavg") as fh:
        out["load_average"] = [float(x) for x in fh.read().split()[:3]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=float, default=2e5)
    args = parser.parse_args()
    result = run(int(args.n_cells))
    path = HERE / "results" / "memory.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[str(result["n_cells"])] = result
    sys.path.insert(0, str(HERE.parent))
    from biossl._io import write_text_atomic

    write_text_atomic(json.dumps(saved, indent=2) + "\n", path, overwrite=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
