"""CPUs a job may use and the thread limits biossl applies (issue 23, item 2)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biossl import _threads
from biossl._threads import available_cpus, cgroup_cpu_limit, limit_threads


def _cgroup_v2(tmp_path: Path, cpu_max: str, own: str | None = None) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    group = root / "job.slice"
    group.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (group / "cpu.max").write_text(cpu_max)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(own or "0::/job.slice\n")
    return root, proc


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)],
)
def test_cgroup_v2_quota(tmp_path, cpu_max, expected):
    root, proc = _cgroup_v2(tmp_path, cpu_max)
    assert cgroup_cpu_limit(root, proc) == expected


def test_cgroup_v2_quota_of_a_parent_group(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "300000 100000\n", own="0::/job.slice/step_0/task\n")
    (root / "job.slice" / "step_0" / "task").mkdir(parents=True)
    (root / "job.slice" / "step_0" / "task" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, proc) == 3


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("300000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(root, proc) == 3
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing_proc") is None


def test_available_cpus_is_the_least_of_affinity_quota_and_slurm(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert available_cpus() == 6
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: 4)
    assert available_cpus() == 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert available_cpus() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "not a number")
    assert available_cpus() == 4


def test_available_cpus_falls_back_to_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert available_cpus() == (os.cpu_count() or 1)


def test_limit_threads_applies_and_restores_torch_blas_and_numba():
    import numba
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl limits)
    import torch
    from threadpoolctl import threadpool_info

    # numba's first call starts its OpenMP pool, which resets the count torch reports (2 here under
    # OMP_NUM_THREADS=1): start it before reading torch's, or "before" describes a state already gone
    numba.get_num_threads()
    before = (torch.get_num_threads(), numba.get_num_threads(), [i["num_threads"] for i in threadpool_info()])
    env_before = os.environ.get("OMP_NUM_THREADS")
    with limit_threads(1):
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpool_info())
        assert os.environ["OMP_NUM_THREADS"] == "1"
    after = (torch.get_num_threads(), numba.get_num_threads(), [i["num_threads"] for i in threadpool_info()])
    assert after == before and os.environ.get("OMP_NUM_THREADS") == env_before


def test_limit_threads_never_asks_numba_for_more_than_it_launched():
    import numba

    with limit_threads(numba.config.NUMBA_NUM_THREADS + 5):
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


def test_limit_threads_none_changes_nothing():
    env = dict(os.environ)
    with limit_threads(None):
        assert dict(os.environ) == env


def _biossl() -> list[str]:
    script = Path(sys.executable).parent / "biossl"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from biossl.cli import main; main()"]


def test_cli_default_threads_come_from_the_job_allocation(_pbmc_small, tmp_path):
    """Without --threads, a SLURM job with one CPU trains on one torch thread (set before any work)."""
    path = tmp_path / "in.h5ad"
    _pbmc_small[:150].copy().write_h5ad(path)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["SLURM_CPUS_PER_TASK"] = "1"
    cmd = [*_biossl(), "embed", str(path), "-o", str(tmp_path / "out.h5ad"), "--model", "vae", "--max-steps", "5", "-v"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("info: threads: 1 (default; 1 CPUs available)")
    assert "torch threads 1" in proc.stderr


@pytest.fixture
def torch_two_threads(monkeypatch):
    import torch

    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield torch
    torch.set_num_threads(before)


def test_training_caps_torch_threads_nobody_chose(torch_two_threads):
    torch = torch_two_threads
    with _threads.training_threads(torch_threads_at_import=2) as n:
        assert n == torch.get_num_threads() == _threads.TRAINING_THREADS
    assert torch.get_num_threads() == 2
    with limit_threads(2, chosen=False), _threads.training_threads(torch_threads_at_import=2) as n:
        assert n == _threads.TRAINING_THREADS  # the CLI's default is biossl's choice, not the user's


@pytest.mark.parametrize("how", ["limit_threads", "env", "set_num_threads"])
def test_training_keeps_torch_threads_the_user_chose(torch_two_threads, monkeypatch, how):
    torch = torch_two_threads
    with contextlib.ExitStack() as stack:
        if how == "limit_threads":
            stack.enter_context(limit_threads(2))
        elif how == "env":
            monkeypatch.setenv("OMP_NUM_THREADS", "2")
        at_import = 4 if how == "set_num_threads" else 2
        with _threads.training_threads(torch_threads_at_import=at_import) as n:
            assert n == torch.get_num_threads() == 2


def _run_under_one_omp_thread(script: str) -> str:
    """Run ``script`` in a fresh Python process under ``OMP_NUM_THREADS=1``; its stdout (it must succeed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-800:]
    return proc.stdout


_SAME_AFTER_SCANPY = """
import numpy as np, scipy.sparse as sp, biossl
from biossl.tl._pca import log_normalise
adata = biossl.datasets.pbmc()
latents = []
for _ in range(2):
    run = adata.copy()
    biossl.tl.embed(run, model="vae", max_steps=60, device="cpu", progress=False)
    latents.append(run.obsm["X_biossl"])
    log_normalise(sp.csr_matrix(np.ones((5, 5))))  # scanpy's numba code starts OpenMP with its own thread count
print(np.array_equal(*latents))
"""


def test_omp_num_threads_holds_after_scanpy_changes_openmp():
    """With OMP_NUM_THREADS set, a second fit in the same process (after scanpy's numba) gives the same latent."""
    assert _run_under_one_omp_thread(_SAME_AFTER_SCANPY).strip() == "True"


_SAME_AFTER_A_LIMIT = """
import torch  # loaded before the block, as in a session that ran `biossl annotate` in-process after using torch
import numpy as np, biossl
from biossl._threads import limit_threads
adata = biossl.datasets.pbmc()[:600].copy()
latents = []
for _ in range(2):
    run = adata.copy()
    biossl.tl.embed(run, model="vae", max_steps=60, device="cpu", progress=False)
    latents.append(run.obsm["X_biossl"])
    with limit_threads(2, chosen=False):  # what every CLI command enters
        pass
print(np.array_equal(*latents), torch.get_num_threads())
"""


def test_a_thread_limit_leaves_torch_as_it_found_it():
    """After a ``limit_threads`` block, torch runs on the threads it reports: a second fit gives the same latent.

    torch's count used to be read inside threadpoolctl's limit, which had already raised OpenMP's: the block then
    "restored" torch to its own count while torch reported the old one, and the next fit (under
    ``OMP_NUM_THREADS=1``) ran its matrix products on two threads, its latent 0.2 away from the first.
    """
    assert _run_under_one_omp_thread(_SAME_AFTER_A_LIMIT).split() == ["True", "1"]
