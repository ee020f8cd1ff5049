"""What every benchmark run records: scores on the query cells, wall and CPU time, peak RSS.

Peak RSS is per run, not per process: before a run the kernel's high-water mark is reset
(``/proc/self/clear_refs`` ← 5, Linux ≥ 4.0) and ``VmHWM`` is read afterwards. Where that is not possible
the process-wide ``ru_maxrss`` is reported and ``rss_scope`` says so.
"""

from __future__ import annotations

import platform
import resource
import time
from contextlib import contextmanager

import numpy as np

from biossl.metrics import per_class_f1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextmanager
def measure():
    """Time a block and record its peak memory; yields a dict filled in on exit."""
    out: dict = {}
    per_run = _reset_peak()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        out["wall_s"] = round(time.perf_counter() - wall, 3)
        out["cpu_s"] = round(time.process_time() - cpu, 3)
        peak = _peak_mb() if per_run else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["peak_rss_mb"] = round(peak, 1)
        out["rss_scope"] = "run" if per_run else "process"


def score(truth, pred, query: np.ndarray) -> dict:
    """Macro-F1, accuracy and per-class F1 on the query cells (any label outside the truth counts as wrong)."""
    truth = np.asarray(truth, dtype=object).astype(str)[query]
    pred = np.asarray(pred, dtype=object).astype(str)[query]
    per_class = per_class_f1(truth, pred)
    return {
        "macro_f1": float(np.mean(list(per_class.values()))),
        "accuracy": float(np.mean(truth == pred)),
        "per_class_f1": per_class,
        "n_query": int(query.sum()),
    }


def machine() -> dict:
    """Where the numbers were measured."""
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_cpu_capability": _torch_cpu_capability(),
    }


def _torch_cpu_capability() -> str | None:
    """The vector instruction set torch's CPU kernels dispatch to (``ATEN_CPU_CAPABILITY`` overrides it).

    A trained model's latent depends on it through float rounding: on one machine, forcing ``avx2`` instead of the
    detected ``avx512`` moved ``strong_batch.py``'s ``biossl_map`` rows by -0.023 to +0.018 with the same code and
    seeds (``benchmarks/strong_batch_log.md``), so runs compare only at the same capability.
    """
    try:
        import torch
    except ImportError:
        return None
    return str(torch.backends.cpu.get_cpu_capability())
