"""Training progress: a bar (step, loss, ETA) on a terminal, log lines at -v, silence otherwise (issue 23, item 3)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 60


def _biossl() -> list[str]:
    script = Path(sys.executable).parent / "biossl"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from biossl.cli import main; main()"]


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory, _pbmc_small) -> Path:
    path = tmp_path_factory.mktemp("progress") / "in.h5ad"
    _pbmc_small[:200].copy().write_h5ad(path)
    return path


def _embed_cmd(small_h5ad: Path, out: Path, *extra: str) -> list[str]:
    return [*_biossl(), "embed", str(small_h5ad), "-o", str(out), "--model", "vae", "--max-steps", str(STEPS),
            "--threads", "1", *extra]  # fmt: skip


def _run_in_pty(cmd: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd`` with stdin/stdout/stderr on a fresh pseudo-terminal (no window size set); return its output."""
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_training_bar_on_a_terminal(small_h5ad, tmp_path):
    code, out = _run_in_pty(_embed_cmd(small_h5ad, tmp_path / "out.h5ad"))
    assert code == 0, out
    frames = re.findall(rf"training:\s+\d+%.*?(\d+)/{STEPS} \[[\d:]+<[\d:?]+.*?step/s(.*?)\]", out)
    assert frames, out[-2000:]
    steps = [int(done) for done, _ in frames]
    assert steps == sorted(steps) and max(steps) >= STEPS // 2
    assert any("loss" in postfix for _, postfix in frames), out[-2000:]
    assert "embedded" in out


def test_silent_when_not_on_a_terminal(small_h5ad, tmp_path):
    proc = subprocess.run(_embed_cmd(small_h5ad, tmp_path / "out.h5ad"), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("embedded 200 cells")


def test_verbose_logs_each_stage_without_a_bar(small_h5ad, tmp_path):
    proc = subprocess.run(
        _embed_cmd(small_h5ad, tmp_path / "out.h5ad", "-v"), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "step/s" not in proc.stderr
    expected = [
        "info: threads: 1",
        "info: setup:",
        f"info: training VAE: up to {STEPS} steps",
        "info: trained",
        "info: embed:",
    ]
    found = [next((i for i, line in enumerate(lines) if line.startswith(e)), None) for e in expected]
    assert None not in found and found == sorted(found), proc.stderr
