"""VAE training speed by thread setting, on a quiet machine and beside another CPU-bound process.

Each run is a fresh process training the VAE on pbmc3k (``biossl embed --model vae --max-steps N``; 1,000 steps
by default, too few for early stopping, so every run does the same work):

``default``  the CLI without ``--threads``: BLAS/numba on the CPUs biossl may use, training on
             ``biossl._threads.TRAINING_THREADS`` torch thread(s)
``1``, ``2`` the CLI with ``--threads 1`` / ``--threads 2``
``api``      ``pp.setup`` + ``tl.embed(model="vae")`` in a Python process that sets no threads (torch's own
             default is all cores; training caps it as the CLI's default does)
``X+passive`` setting X with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning)

"loaded" runs share the machine with a second process, a Python busy loop (one CPU-bound thread), started
``--warmup`` seconds before the first loaded run. Wall seconds and CPU seconds (user + system of the run,
from ``resource.getrusage(RUSAGE_CHILDREN)``) per setting; writes benchmarks/results/threads.json and prints
a table. The load average before the benchmark is recorded: other work on the machine shows up there.
Run: ``.venv/bin/python benchmarks/threads.py [--max-steps 1000] [--settings default,1,2,api]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUSY_LOOP = "while True:\n    pass\n"
API_SCRIPT = """
import logging, sys, biossl
logging.basicConfig(level=logging.INFO, format="info: %(message)s")
adata = biossl.datasets.pbmc()
biossl.pp.setup(adata)
biossl.tl.embed(adata, model="vae", max_steps=int(sys.argv[1]), seed=0, progress=False)
"""


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "biossl"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from biossl.cli import main; main()"]


def _command(setting: str, max_steps: int, data: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.pop(key, None)
    base, _, variant = setting.partition("+")
    if variant == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if base == "api":
        return [sys.executable, "-c", API_SCRIPT, str(max_steps)], env
    cmd = [*_cli(), "embed", str(data), "-o", str(out), "--force", "--model", "vae", "--max-steps", str(max_steps)]
    cmd.append("-v")  # the log names the torch threads the training used
    if base != "default":
        cmd += ["--threads", base]
    return cmd, env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(setting: str, max_steps: int, data: Path, out: Path) -> dict:
    from biossl._threads import default_threads

    cmd, env = _command(setting, max_steps, data, out)
    load = os.getloadavg()
    threads = default_threads()
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{setting}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    found = re.search(r"torch threads (\d+)", proc.stderr)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "torch_threads_in_training": int(found.group(1)) if found else None,
        "load_before": load,
        "default_threads": threads,
    }


def _top() -> str:
    try:
        return subprocess.run(["top", "-bn1"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    import biossl
    from biossl._io import write_text_atomic
    from biossl._threads import available_cpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--settings", default="default,1,2,api")
    parser.add_argument("--conditions", default="quiet,loaded")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds the busy loop runs before loaded runs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "threads.json")
    args = parser.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    conditions = [c for c in args.conditions.split(",") if c]
    data = biossl.datasets.example_path("pbmc3k.h5ad")
    top_before = _top()
    doc = {
        "command": f"biossl embed pbmc3k.h5ad --model vae --max-steps {args.max_steps} [--threads N]",
        "max_steps": args.max_steps,
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "load_average_before": os.getloadavg(),
        "top_before": top_before.splitlines()[:15],
        "competitor": "python busy loop (one CPU-bound thread) in a second process",
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.h5ad"
        for condition in conditions:
            competitor = None
            if condition == "loaded":
                competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
                time.sleep(args.warmup)
            try:
                for setting in settings:
                    res = _run(setting, args.max_steps, data, out)
                    doc["results"].setdefault(condition, {})[setting] = res
                    print(
                        f"{condition:<7} {setting:<10} wall {res['wall_s']:7.1f} s  cpu {res['cpu_s']:7.1f} s  "
                        f"torch threads {res['torch_threads_in_training']}  load {res['load_before'][0]:.2f}",
                        flush=True,
                    )
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    doc["load_average_after"] = os.getloadavg()
    write_text_atomic(json.dumps(doc, indent=2) + "\n", args.out, overwrite=True)
    print(f"\nload average before: {' '.join(f'{x:.2f}' for x in doc['load_average_before'])}")
    print(f"{'setting':<12}" + "".join(f"{c + ' wall':>14}{c + ' cpu':>13}" for c in conditions))
    for setting in settings:
        row = "".join(
            f"{doc['results'][c][setting]['wall_s']:13.1f}s{doc['results'][c][setting]['cpu_s']:12.1f}s"
            for c in conditions
        )
        print(f"{setting:<12}{row}")
    for c in conditions:
        best = min(r["wall_s"] for s, r in doc["results"][c].items() if s[0].isdigit())
        if "default" in doc["results"][c]:
            print(f"{c}: default / best --threads = {doc['results'][c]['default']['wall_s'] / best:.2f}x")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
