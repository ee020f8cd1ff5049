"""How many CPUs this process may use, and one place that limits torch, BLAS/OpenMP and numba threads.

``os.cpu_count()`` counts the machine, not the job: SLURM, cgroups (docker, Kubernetes) and taskset give a
process fewer CPUs, and torch, BLAS and numba each start ``os.cpu_count()`` threads that then fight for them.
No heavy import here: torch and numba are touched only when they are already loaded (or asked for).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["available_cpus", "default_threads", "limit_threads"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[tuple[int, Path]]:
    """(cgroup version, directory) of this process's cgroups that may hold a CPU quota, own group first."""
    dirs: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            rel = path.lstrip("/")
            if hid == "0" and controllers == "":
                dirs += [(2, root / rel), (2, root)]
            elif "cpu" in controllers.split(","):
                for name in (controllers, "cpu", "cpu,cpuacct"):
                    dirs += [(1, root / name / rel), (1, root / name)]
    return [*dirs, (2, root), (1, root / "cpu"), (1, root / "cpu,cpuacct")]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``).

    Rounded up (a quota of 1.5 CPUs can keep 2 threads busy part of the time); None without a quota.
    """
    limits = []
    for version, d in _cgroup_dirs(root, proc_cgroup):
        with contextlib.suppress(OSError, ValueError):
            if version == 2:
                quota, period = (d / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    limits.append(math.ceil(int(quota) / int(period)))
            else:
                quota = int((d / "cpu.cfs_quota_us").read_text())
                if quota > 0:
                    limits.append(math.ceil(quota / int((d / "cpu.cfs_period_us").read_text())))
    return max(1, min(limits)) if limits else None


def available_cpus() -> int:
    """The CPUs this process may use: the least of its CPU affinity, a cgroup quota and ``SLURM_CPUS_PER_TASK``.

    Falls back to ``os.cpu_count()`` where none of these can be read.
    """
    counts = []
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            counts.append(len(os.sched_getaffinity(0)))
    if not counts:
        counts.append(os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        counts.append(quota)
    with contextlib.suppress(ValueError):
        slurm = int(os.environ.get("SLURM_CPUS_PER_TASK", ""))
        if slurm > 0:
            counts.append(slurm)
    return max(1, min(counts))


def default_threads() -> int:
    """The thread count biossl uses when none is given: :func:`available_cpus`."""
    return available_cpus()


@contextlib.contextmanager
def limit_threads(n: int | None, *, torch: bool | None = None) -> Iterator[None]:
    """Limit torch, BLAS/OpenMP and numba to ``n`` threads for the duration, then restore them.

    Parameters
    ----------
    n
        Thread count; None leaves everything as it is.
    torch
        True: set torch's intra-op threads (importing torch); None: only if torch is already imported;
        False: leave torch alone.

    BLAS and OpenMP libraries already loaded are limited with threadpoolctl; the ``OMP_NUM_THREADS`` family
    of environment variables covers those loaded inside the block. numba is limited with
    ``numba.set_num_threads`` when loaded (at most its ``NUMBA_NUM_THREADS``), else through that variable.
    """
    if n is None:
        yield
        return
    n = max(1, int(n))
    saved = {k: os.environ.get(k) for k in (*THREAD_ENV, "NUMBA_NUM_THREADS")}
    os.environ.update({k: str(n) for k in THREAD_ENV})
    if "numba" not in sys.modules:  # read once at numba's import; numba refuses more threads than cores
        os.environ["NUMBA_NUM_THREADS"] = str(min(n, os.cpu_count() or 1))
    try:
        with contextlib.ExitStack() as stack:
            with contextlib.suppress(ImportError):
                from threadpoolctl import threadpool_limits

                stack.enter_context(threadpool_limits(limits=n))
            if torch or (torch is None and "torch" in sys.modules):
                import torch as _torch

                stack.callback(_torch.set_num_threads, _torch.get_num_threads())
                _torch.set_num_threads(n)
            if "numba" in sys.modules:
                numba = sys.modules["numba"]
                stack.callback(numba.set_num_threads, numba.get_num_threads())
                numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
