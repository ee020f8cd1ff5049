"""The Python API's own speed with the machine's default threads (the anchors runner pins one thread).

``pp.setup → tl.embed → tl.neighbors → tl.annotate`` on pbmc3k with 5 labels per type (seed 0), run three
times in one process with no thread limit set; wall and CPU seconds of each step, median over the last two
runs (the first pays for imports and JIT). Writes benchmarks/results/default_threads.json.
Run: ``.venv/bin/python benchmarks/default_threads.py``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
STEPS = ("setup", "embed", "neighbors", "annotate")


def main() -> int:
    import biossl
    from biossl._io import write_text_atomic

    adata = biossl.datasets.pbmc()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    mask = biossl.metrics.fewlabel_split(truth, 5, 0)
    runs = []
    for _ in range(3):
        b = adata.copy()
        b.obs["labels"] = pd.Categorical(np.where(mask, truth, None))
        calls = {
            "setup": lambda b=b: biossl.pp.setup(b),
            "embed": lambda b=b: biossl.tl.embed(b, seed=0),
            "neighbors": lambda b=b: biossl.tl.neighbors(b),
            "annotate": lambda b=b: biossl.tl.annotate(b, "labels"),
        }
        run = {}
        for step in STEPS:
            w, c = time.perf_counter(), time.process_time()
            calls[step]()
            run[step] = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c}
        runs.append(run)
    summary = {s: {k: float(np.median([r[s][k] for r in runs[1:]])) for k in ("wall_s", "cpu_s")} for s in STEPS}
    doc = {
        "dataset": "pbmc3k",
        "labels_per_type": 5,
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "median_of_runs_2_3": summary,
        "runs": runs,
    }
    out = HERE / "results" / "default_threads.json"
    write_text_atomic(json.dumps(doc, indent=2) + "\n", out, overwrite=True)
    for s in STEPS:
        print(f"{s:<10} wall {summary[s]['wall_s']:.3f} s  cpu {summary[s]['cpu_s']:.3f} s")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
