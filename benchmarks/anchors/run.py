"""Run one method on one or more datasets over the saved splits; one JSON file per run.

    python benchmarks/anchors/run.py METHOD DATASET [DATASET ...] [--seeds 0 1 2] [--ks 1 3 5] [--no-ref-query]

Runs are ordered seed-major (all k of seed 0, then seed 1, ...); the label-free ``prepare`` step of the
method is done once per (dataset, seed) and its time is added to every run that reuses it. Results go to
``benchmarks/results/anchors/runs/<dataset>/<method>/<split>.json`` (reference → query splits get
``_s<seed>``); existing files are skipped, so an interrupted job resumes where it stopped. Threads are
limited to one (OMP/BLAS/torch) so methods compete on equal terms on a shared machine; compare CPU seconds.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.metadata as md  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import splits as splitlib  # noqa: E402
from measure import machine, measure, score  # noqa: E402
from runners import METHODS  # noqa: E402

RUNS = HERE.parent / "results" / "anchors" / "runs"


def run_path(dataset: str, method: str, split: str, seed: int | None, ref_query: bool, runs: Path = RUNS) -> Path:
    name = f"{split}_s{seed}" if ref_query else split
    return runs / dataset / method / f"{name}.json"


def _versions() -> dict:
    out = {}
    for pkg in ("biossl", "scvi-tools", "celltypist", "scanpy", "anndata", "scikit-learn", "torch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def run_dataset(method_name: str, dataset: str, seeds, ks, ref_query: bool, force: bool, runs: Path = RUNS) -> int:
    method = METHODS[method_name]()
    adata = splitlib.load_dataset(dataset)
    splits = splitlib.load_splits(dataset, adata)
    batch_key = splitlib.DATASETS[dataset][1]
    truth = adata.obs[splitlib.LABELS_KEY].astype(str).to_numpy()
    versions, mach = _versions(), machine()
    n_done = 0
    for seed in seeds:
        todo = []
        for split, pos, k, _ in splitlib.iter_splits(splits, ks=ks, seeds=[seed], ref_query=False):
            todo.append((split, pos, k, False))
        if ref_query:
            for split, pos, _, _ in splitlib.iter_splits(splits, ks=(), seeds=(), ref_query=True):
                todo.append((split, pos, None, True))
        todo = [t for t in todo if force or not run_path(dataset, method_name, t[0], seed, t[3], runs).exists()]
        if not todo:
            continue
        with measure() as prep_m:
            state = method.prepare(adata, batch_key, seed)
        print(f"[{method_name}] {dataset} seed {seed}: prepare {prep_m['cpu_s']:.1f} cpu-s", flush=True)
        for split, pos, k, is_rq in todo:
            labelled = np.zeros(adata.n_obs, dtype=bool)
            labelled[pos] = True
            record = {
                "dataset": dataset,
                "method": method_name,
                "params": method.params,
                "setting": "ref_query" if is_rq else "fewlabel",
                "split": split,
                "k": k,
                "seed": seed,
                "n_labelled": int(labelled.sum()),
                "prepare": {**prep_m, "shared_over_splits": True},
                "versions": versions,
                "machine": mach,
            }
            if is_rq:
                record["reference_batches"] = splits["ref_query"][split]["reference_batches"]
                record["query_batches"] = splits["ref_query"][split]["query_batches"]
            try:
                with measure() as run_m:
                    pred = method.predict(state, truth, labelled, k, seed)
                record.update(score(truth, pred, ~labelled))
                record["predicted_classes"] = sorted(set(np.asarray(pred)[~labelled].astype(str)))
                record["extra"] = getattr(method, "last_extra", None)
            except Exception as err:  # a failing method is a result too (e.g. too few cells for its defaults)
                record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                record["traceback"] = traceback.format_exc()[-2000:]
            record["run"] = run_m
            if run_m:
                record["e2e_wall_s"] = round(prep_m["wall_s"] + run_m["wall_s"], 3)
                record["e2e_cpu_s"] = round(prep_m["cpu_s"] + run_m["cpu_s"], 3)
                record["peak_rss_mb"] = max(prep_m["peak_rss_mb"], run_m["peak_rss_mb"])
            splitlib.write_json_atomic(record, run_path(dataset, method_name, split, seed, is_rq, runs))
            n_done += 1
            msg = record.get("error") or f"macro-F1 {record['macro_f1']:.3f}"
            print(f"[{method_name}] {dataset} {split} s{seed}: {msg} ({run_m.get('cpu_s', 0):.1f} cpu-s)", flush=True)
        del state
    return n_done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=sorted(METHODS))
    p.add_argument("datasets", nargs="+", choices=sorted(splitlib.DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(splitlib.SEEDS))
    p.add_argument("--ks", type=int, nargs="+", default=list(splitlib.KS))
    p.add_argument("--no-ref-query", action="store_true", help="skip the reference → query splits")
    p.add_argument("--force", action="store_true", help="rerun splits that already have a result")
    p.add_argument("--runs-dir", type=Path, default=RUNS, help="where to write (default: the results the report reads)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    total = 0
    for seed in args.seeds:  # seed-major across datasets: partial runs cover every dataset
        for dataset in args.datasets:
            total += run_dataset(
                args.method, dataset, [seed], args.ks, not args.no_ref_query, args.force, args.runs_dir
            )
    print(f"[{args.method}] {total} runs written to {args.runs_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
