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
from contextvars import ContextVar
from pathlib import Path

__all__ = ["available_cpus", "default_threads", "limit_threads", "training_threads"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# a 2nd torch thread speeds VAE steps a bit when idle, stalls them beside a busy job (benchmarks/results/threads.json)
TRAINING_THREADS = 1
# the limit of the innermost limit_threads block: (threads, chosen by the user rather than biossl's default)
_LIMIT: ContextVar[tuple[int, bool] | None] = ContextVar("biossl_thread_limit", default=None)


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[tuple[int, Path]]:
    """(cgroup version, directory) of this process's cgroups and their parents, where a CPU quota may be set."""

    def with_parents(base: Path, rel: str) -> list[Path]:
        parts = [p for p in rel.split("/") if p]
        return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]

    dirs: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError, ValueError):
        for line in proc_cgroup.read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            if hid == "0" and controllers == "":
                dirs += [(2, d) for d in with_parents(root, path)]
            elif "cpu" in controllers.split(","):
                for name in (controllers, "cpu", "cpu,cpuacct"):
                    dirs += [(1, d) for d in with_parents(root / name, path)]
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
    """The thread count biossl uses when none is given: :func:`available_cpus` (training: :func:`training_threads`)."""
    return available_cpus()


@contextlib.contextmanager
def limit_threads(n: int | None, *, torch: bool | None = None, chosen: bool = True) -> Iterator[None]:
    """Limit torch, BLAS/OpenMP and numba to ``n`` threads for the duration, then restore them.

    Parameters
    ----------
    n
        Thread count; None leaves everything as it is.
    torch
        True: set torch's intra-op threads (importing torch); None: only if torch is already imported;
        False: leave torch alone.
    chosen
        False when ``n`` is biossl's default rather than the user's choice: :func:`training_threads` then
        still applies its own cap.

    BLAS and OpenMP libraries already loaded are limited with threadpoolctl; the ``OMP_NUM_THREADS`` family
    of environment variables covers those loaded inside the block. numba is limited with
    ``numba.set_num_threads`` when loaded (at most its ``NUMBA_NUM_THREADS``), else through that variable.
    """
    if n is None:
        yield
        return
    n = max(1, int(n))
    saved = {k: os.environ.get(k) for k in (*THREAD_ENV, "NUMBA_NUM_THREADS")}
    token = _LIMIT.set((n, chosen))
    os.environ.update({k: str(n) for k in THREAD_ENV})
    if "numba" not in sys.modules:  # read once at numba's import; numba refuses more threads than cores
        os.environ["NUMBA_NUM_THREADS"] = str(min(n, os.cpu_count() or 1))
    try:
        with contextlib.ExitStack() as stack:
            # torch's count is read, and restored last, outside threadpoolctl's limit: torch reports OpenMP's
            # count, which threadpoolctl has already changed inside it (reading it there restored torch to the
            # block's count while reporting the old one, and a later fit ran on more threads than it said)
            _torch = None
            if torch or (torch is None and "torch" in sys.modules):
                import torch as _torch

                stack.callback(_torch.set_num_threads, _torch.get_num_threads())
            with contextlib.suppress(ImportError):
                from threadpoolctl import threadpool_limits

                stack.enter_context(threadpool_limits(limits=n))
            if _torch is not None:
                _torch.set_num_threads(n)
            if "numba" in sys.modules:
                numba = sys.modules["numba"]
                stack.callback(numba.set_num_threads, numba.get_num_threads())
                numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            yield
    finally:
        _LIMIT.reset(token)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _env_threads() -> int | None:
    """The thread count set by ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``), if one is."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        with contextlib.suppress(TypeError, ValueError):
            return max(1, int(os.environ.get(key)))
    return None


@contextlib.contextmanager
def training_threads(torch_threads_at_import: int) -> Iterator[int]:
    """Cap torch's intra-op threads at :data:`TRAINING_THREADS` for a training loop, unless the user chose them.

    The user chose them with ``--threads`` / :func:`limit_threads`, ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` in the environment, or ``torch.set_num_threads`` (a count other than
    ``torch_threads_at_import``, torch's own when biossl imported it). Yields the count in effect.
    """
    import torch

    current = torch.get_num_threads()
    limit = _LIMIT.get()
    from_env = _env_threads()
    if limit is not None:
        chosen, n = limit[1], current
    elif from_env is not None:  # the user's count, even after a library (numba) changed OpenMP's
        chosen, n = True, from_env
    else:
        chosen, n = current != torch_threads_at_import, current
    n = n if chosen else min(n, TRAINING_THREADS)
    with _torch_threads(n):
        yield n


@contextlib.contextmanager
def env_threads() -> Iterator[None]:
    """Hold torch at the ``OMP_NUM_THREADS`` count for a block, when one is set and biossl sets no limit.

    numba (under scanpy) resets OpenMP's thread count when it starts, which torch reads as its own: without
    this, a model applied before and after a scanpy call in one process would run with different thread
    counts and give slightly different floats.
    """
    with _torch_threads(_env_threads() if _LIMIT.get() is None else None):
        yield


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads to ``n`` for a block and restore them after (None or the same count: no-op)."""
    import torch

    current = torch.get_num_threads()
    if n is None or n == current:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(current)
