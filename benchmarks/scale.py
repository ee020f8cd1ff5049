"""Scaling benchmark: biossl on 10^4 … 10^6 simulated cells × 2,000 genes, read from a backed h5ad.

For every n a fresh subprocess (so peak RSS is that run's own) opens the simulated file with
``backed="r"`` and runs ``pp.setup`` (streaming HVG), ``tl.embed`` (VAE, minibatches read from disk,
chunked embedding), ``tl.neighbors`` (exact ≤ 50,000 cells, pynndescent above) and ``tl.annotate`` at 5
labelled cells per type. Recorded per stage: wall time and peak RSS so far (``ru_maxrss``); accuracy and
macro-F1 on the unlabelled cells against the simulated truth; the machine load (``/proc/loadavg``)
before and after. The baseline (scanpy normalise/log1p/HVG/PCA + ``sc.pp.neighbors`` + sklearn
``LabelSpreading`` on scanpy's graph, all in memory) runs in its own subprocess up to ``--baseline-max``.

Each run writes ``/tmp/biossl_scale/result_{kind}_{n}.json`` and then all results found there are merged
into ``benchmarks/results/scale.json`` (beside its saved runs of other methods and sizes) and plotted (log-log)
in ``benchmarks/results/scale.png``, so sizes can be run separately (e.g. 10^6 in the background)::

    python benchmarks/scale.py --sizes 10000 100000 300000 1000000
    python benchmarks/scale.py --sizes 1000000 --no-baseline     # one size
    python benchmarks/scale.py --collect                          # only merge and plot
    .venv-bench/bin/python benchmarks/scale.py --sizes 100000 1000000 --no-biossl --no-baseline --celltypist

CellTypist (``--celltypist``, needs ``make bench-env``) runs on the same file and labelled cells, in memory.
``--pca`` adds biossl with its default PCA latent (kind ``biossl_pca``, the path of ``biossl annotate``), which
loads the selected genes of X instead of training on minibatches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = Path(os.environ.get("BIOSSL_SCALE_DIR", "/tmp/biossl_scale"))
STAGES = ["read", "hvg", "train", "embed", "knn", "propagate"]
LABELS_PER_TYPE = 5
CELLTYPIST_CHUNK = 100_000


def _load() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu() -> float:
    """CPU seconds (user + system) of this process so far: on a shared machine wall time also counts waiting."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _scores(truth, pred, mask) -> dict:
    import numpy as np

    from biossl.metrics import macro_f1

    t = np.asarray(truth, dtype=str)[~mask]
    p = np.asarray(pred, dtype=str)[~mask]
    return {"accuracy": round(float((t == p).mean()), 4), "macro_f1": round(macro_f1(t, p), 4)}


def run_biossl(path: Path, max_steps: int, seed: int, save=None, model: str = "vae") -> dict:
    """The biossl pipeline on a backed file; returns stage times, peak RSS and scores.

    ``model="vae"`` (kind ``biossl``) trains the VAE on minibatches read from disk; ``model="pca"`` (kind
    ``biossl_pca``) is the default latent of ``biossl annotate``, which loads the selected genes of X. ``save(out)``
    is called after every stage, so a run cut short still leaves its finished stages.
    """
    import anndata as ad
    import numpy as np

    import biossl

    out: dict = {"stages": {}, "cpu_s": {}, "rss_mb": {}}
    cpu = [_cpu()]

    def stage(name, t0):
        out["stages"][name] = round(time.perf_counter() - t0, 2)
        out["cpu_s"][name] = round(_cpu() - cpu[0], 2)
        cpu[0] = _cpu()
        out["rss_mb"][name] = _rss_mb()
        print(
            f"  {name}: {out['stages'][name]:.1f} s wall, {out['cpu_s'][name]:.1f} s CPU, "
            f"peak RSS {out['rss_mb'][name]:.0f} MB, load {_load()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )
        if save is not None:
            save(out)

    t0 = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r")
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    stage("read", t0)
    t0 = time.perf_counter()
    biossl.pp.setup(adata, batch_key="batch", n_top_genes=2000)
    stage("hvg", t0)
    t0 = time.perf_counter()
    biossl.tl.embed(adata, model=model, batch_key="batch", max_steps=max_steps, seed=seed)
    rec = adata.uns["biossl"]["embed"]
    out["stages"]["train"] = rec.get("train_seconds", 0.0)  # PCA: no training
    out["rss_mb"]["train"] = None  # train and embed run in one call; the peak is reported after embed
    out["stages"]["embed"] = round(time.perf_counter() - t0 - out["stages"]["train"], 2)
    out["rss_mb"]["embed"] = _rss_mb()
    # CPU of train vs embed: split the call's CPU time in proportion to their wall times
    both = _cpu() - cpu[0]
    cpu[0] = _cpu()
    wall = max(out["stages"]["train"] + out["stages"]["embed"], 1e-9)
    out["cpu_s"]["train"] = round(both * out["stages"]["train"] / wall, 2)
    out["cpu_s"]["embed"] = round(both * out["stages"]["embed"] / wall, 2)
    if save is not None:
        save(out)
    out["train_steps"] = int(rec.get("steps", 0))
    print(f"  train+embed: {time.perf_counter() - t0:.1f} s ({out['train_steps']} steps)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    biossl.tl.neighbors(adata, n_neighbors=15, seed=seed)
    stage("knn", t0)
    mask = biossl.metrics.fewlabel_split(truth, LABELS_PER_TYPE, seed)
    adata.obs["labels"] = np.where(mask, truth, None)
    t0 = time.perf_counter()
    biossl.tl.annotate(adata, "labels")
    stage("propagate", t0)
    out["scores"] = _scores(truth, adata.obs["biossl_label"], mask)
    out["n_labelled"] = int(mask.sum())
    out["graph_nnz"] = int(adata.obsp["biossl_connectivities"].nnz)
    rec = adata.uns["biossl"]["annotate"]
    out["annotate"] = {k: rec[k] for k in ("refine", "calibration") if k in rec}
    adata.file.close()
    return out


def run_baseline(path: Path, seed: int) -> dict:
    """scanpy in memory: normalise, log1p, seurat_v3 HVG, PCA, pp.neighbors; sklearn LabelSpreading on that graph."""
    import anndata as ad
    import numpy as np
    import scanpy as sc
    from sklearn.semi_supervised import LabelSpreading

    import biossl

    out: dict = {"stages": {}, "rss_mb": {}}

    def stage(name, t0):
        out["stages"][name] = round(time.perf_counter() - t0, 2)
        out["rss_mb"][name] = _rss_mb()
        print(f"  baseline {name}: {out['stages'][name]:.1f} s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    adata = ad.read_h5ad(path)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    stage("read", t0)
    t0 = time.perf_counter()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000, batch_key="batch")
    stage("hvg", t0)
    t0 = time.perf_counter()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.pca(adata, n_comps=50, random_state=seed, mask_var="highly_variable")
    stage("embed", t0)
    t0 = time.perf_counter()
    sc.pp.neighbors(adata, n_neighbors=15, random_state=seed)
    stage("knn", t0)
    mask = biossl.metrics.fewlabel_split(truth, LABELS_PER_TYPE, seed)
    classes = np.array(sorted(set(truth)))
    y = np.full(len(truth), -1)
    y[mask] = np.searchsorted(classes, truth[mask])
    conn = adata.obsp["connectivities"]
    t0 = time.perf_counter()
    model = LabelSpreading(kernel=lambda a, b: conn).fit(adata.obsm["X_pca"], y)
    stage("propagate", t0)
    out["scores"] = _scores(truth, classes[model.transduction_], mask)
    return out


def run_celltypist(path: Path, seed: int) -> dict:
    """CellTypist (the issue's speed anchor) on the same file and labelled cells: normalise, train, predict.

    In memory (CellTypist has no backed path): log1p of counts per 10^4, a logistic-regression model trained on
    the labelled cells over all genes (its defaults), then ``celltypist.annotate`` without majority voting, on
    blocks of ``CELLTYPIST_CHUNK`` cells (its prediction holds a dense float64 copy: 10.7 GiB at 10^6 cells).
    """
    import anndata as ad
    import celltypist
    import numpy as np
    import scanpy as sc

    import biossl

    out: dict = {"stages": {}, "rss_mb": {}, "cpu_s": {}}

    def stage(name, t0, c0):
        out["stages"][name] = round(time.perf_counter() - t0, 2)
        out["cpu_s"][name] = round(_cpu() - c0, 2)
        out["rss_mb"][name] = _rss_mb()
        print(f"  celltypist {name}: {out['stages'][name]:.1f} s", file=sys.stderr, flush=True)

    t0, c0 = time.perf_counter(), _cpu()
    adata = ad.read_h5ad(path)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    stage("read", t0, c0)
    t0, c0 = time.perf_counter(), _cpu()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    stage("normalise", t0, c0)
    mask = biossl.metrics.fewlabel_split(truth, LABELS_PER_TYPE, seed)
    t0, c0 = time.perf_counter(), _cpu()
    train = adata[mask].copy()
    model = celltypist.train(train, truth[mask], n_jobs=1, check_expression=False)
    stage("train", t0, c0)
    t0, c0 = time.perf_counter(), _cpu()
    pred = []
    for start in range(0, adata.n_obs, CELLTYPIST_CHUNK):  # its prediction densifies the cells x genes matrix
        block = adata[start : start + CELLTYPIST_CHUNK]
        labels = celltypist.annotate(block, model=model, majority_voting=False).predicted_labels
        pred.append(labels["predicted_labels"].astype(str).to_numpy())
    stage("predict", t0, c0)
    out["scores"] = _scores(truth, np.concatenate(pred), mask)
    out["n_labelled"] = int(mask.sum())
    return out


def child(n: int, kind: str, max_steps: int, seed: int, out_path: Path) -> None:
    """Run one size in this (fresh) process and write its JSON."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    path = WORK / f"sim_{n}.h5ad"
    if kind.startswith("biossl"):
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before = _load()
    t0 = time.perf_counter()

    def save(out):  # finished stages so far (complete=False)
        partial = {**out, "n_cells": n, "method": kind, "complete": False, "peak_rss_mb": _rss_mb()}
        partial.update(total_cpu_s=round(_cpu(), 2), load_before=load_before, load_after=_load())
        out_path.write_text(json.dumps(partial, indent=1))

    runners = {"biossl": lambda: run_biossl(path, max_steps, seed, save), "baseline": lambda: run_baseline(path, seed)}
    runners["biossl_pca"] = lambda: run_biossl(path, max_steps, seed, save, model="pca")
    runners["celltypist"] = lambda: run_celltypist(path, seed)
    res = runners[kind]()
    res.update(
        complete=True,
        n_cells=n,
        method=kind,
        total_s=round(time.perf_counter() - t0, 2),
        total_cpu_s=round(_cpu(), 2),
        peak_rss_mb=_rss_mb(),
        load_before=load_before,
        load_after=_load(),
        threads=int(os.environ.get("OMP_NUM_THREADS", "1")),
    )
    out_path.write_text(json.dumps(res, indent=1))


def ensure_data(n: int, seed: int) -> Path:
    path = WORK / f"sim_{n}.h5ad"
    if not path.exists():
        sys.path.insert(0, str(HERE))
        from simulate import simulate_h5ad

        t0 = time.perf_counter()
        simulate_h5ad(path, n, 2000, seed=seed)
        print(f"simulated {n} cells in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def run_size(n: int, kind: str, max_steps: int, seed: int, threads: int) -> dict | None:
    """Run one size in a fresh subprocess; returns its result (None if it failed)."""
    out_path = WORK / f"result_{kind}_{n}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", str(n), "--kind", kind, "--steps", str(max_steps), "--seed", str(seed)]
    print(f"== {kind} n={n}", file=sys.stderr, flush=True)
    proc = subprocess.run([*cmd, "--out", str(out_path)], env=env, check=False)
    if proc.returncode != 0:
        print(f"{kind} n={n} failed (exit {proc.returncode})", file=sys.stderr)
        return None
    return json.loads(out_path.read_text())


def collect() -> dict:
    """Merge every result in WORK into scale.json and draw scale.png."""
    sys.path.insert(0, str(HERE.parent))
    from biossl._io import write_figure_atomic, write_text_atomic

    saved = RESULTS / "scale.json"
    by = {(r["method"], r["n_cells"]): r for r in (json.loads(saved.read_text())["runs"] if saved.exists() else [])}
    for p in sorted(WORK.glob("result_*.json")):  # runs found in WORK replace the saved run of their method and size
        r = json.loads(p.read_text())
        by[(r["method"], r["n_cells"])] = r
    runs = sorted(by.values(), key=lambda r: (r["method"], r["n_cells"]))
    summary = {}
    big, small = by.get(("biossl", 1_000_000)), by.get(("biossl", 100_000))
    if big and small and big.get("complete", True) and small.get("complete", True):
        pipeline = ("hvg", "train", "embed", "knn", "propagate")
        summary = {"targets": {"time_s": 1800, "rss_gib": 8, "accuracy_gap": 0.02, "time_ratio": 12}}
        for unit, key in (("wall", "stages"), ("cpu", "cpu_s")):
            t_big = sum(big[key][s] for s in pipeline)
            t_small = sum(small[key][s] for s in pipeline)
            summary[f"setup_embed_neighbors_annotate_1e6_{unit}_s"] = round(t_big, 1)
            summary[f"time_ratio_1e6_over_1e5_{unit}"] = round(t_big / t_small, 2)
        summary["peak_rss_1e6_gib"] = round(big["peak_rss_mb"] / 1024, 2)
        summary["accuracy_1e6_minus_1e5"] = round(big["scores"]["accuracy"] - small["scores"]["accuracy"], 4)
    doc = {
        "description": "biossl on simulated NB counts (benchmarks/simulate.py, 2,000 genes, 12 types, 4 batches) "
        "read from a backed h5ad; 5 labelled cells per type; accuracy on the unlabelled cells",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "the machine (2 cores) was shared with other jobs: wall times include waiting for a core; cpu_s "
        "(user + system CPU seconds of the run's process, 1 thread) is the load-independent cost. load_before/"
        "load_after are /proc/loadavg (1, 5, 15 min). complete=false: the run was stopped; its finished stages "
        "are kept.",
        "summary": summary,
        "runs": runs,
    }
    write_text_atomic(json.dumps(doc, indent=1), RESULTS / "scale.json", overwrite=True)
    if runs:
        write_figure_atomic(_plot(runs), RESULTS / "scale.png", overwrite=True)
    return doc


def _plot(runs):
    """Log-log: CPU seconds per stage, total CPU and wall time, peak RSS against the number of cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_t, ax_m) = plt.subplots(1, 3, figsize=(14, 4.2))
    ours = [r for r in runs if r["method"] == "biossl"]
    base = [r for r in runs if r["method"] == "baseline"]
    typist = [r for r in runs if r["method"] == "celltypist"]
    pca = [r for r in runs if r["method"] == "biossl_pca" and r.get("complete", True)]
    for s in STAGES:
        pts = [(r["n_cells"], max(r["cpu_s"][s], 1e-2)) for r in ours if s in r.get("cpu_s", {})]
        if pts:
            ax_c.plot(*zip(*pts, strict=True), "o-", label=s, lw=1)
    done = [r for r in ours if r.get("complete", True)]
    if done:
        ax_c.plot([r["n_cells"] for r in done], [r["total_cpu_s"] for r in done], "ks-", label="total", lw=2)
        n0, c0 = done[0]["n_cells"], done[0]["total_cpu_s"]
        ax_c.plot([n0, 1e6], [c0, c0 * 1e6 / n0], ":", color="grey", label="linear from smallest")
    ax_c.set(xscale="log", yscale="log", xlabel="cells", ylabel="CPU seconds (1 thread)", title="biossl CPU per stage")
    ax_c.legend(fontsize=7)
    others = (
        (pca, "gD-", "biossl, PCA latent"),
        (base, "r^--", "scanpy + LabelSpreading"),
        (typist, "bv-.", "CellTypist (in memory)"),
    )
    for rows, style, name in ((done, "ks-", "biossl"), *others):
        if rows:
            ax_t.plot([r["n_cells"] for r in rows], [r["total_cpu_s"] for r in rows], style, label=f"{name} CPU")
            ax_t.plot(
                [r["n_cells"] for r in rows], [r["total_s"] for r in rows], style, alpha=0.35, label=f"{name} wall"
            )
    ax_t.axhline(1800, color="grey", ls=":", label="30 min")
    ax_t.set(
        xscale="log", yscale="log", xlabel="cells", ylabel="seconds", title="total (wall includes waiting on load)"
    )
    ax_t.legend(fontsize=7)
    for rows, style, name in ((ours, "ks-", "biossl (backed)"), *others):
        if rows:
            ax_m.plot([r["n_cells"] for r in rows], [r["peak_rss_mb"] / 1024 for r in rows], style, label=name)
    ax_m.axhline(8, color="grey", ls=":", label="8 GiB target")
    ax_m.set(xscale="log", yscale="log", xlabel="cells", ylabel="peak RSS (GiB)", title="memory")
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 3e5, 1e6])
    parser.add_argument("--steps", type=int, default=3000, help="training budget (gradient steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline-max", type=float, default=1e5, help="largest n for the in-memory baseline")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--celltypist", action="store_true", help="also run CellTypist (needs make bench-env)")
    parser.add_argument("--no-biossl", action="store_true", help="skip biossl (e.g. only add CellTypist rows)")
    parser.add_argument("--pca", action="store_true", help="also run biossl with its default PCA latent")
    parser.add_argument("--collect", action="store_true", help="only merge the results and plot")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="biossl", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.kind, args.steps, args.seed, Path(args.out))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        for n in (int(s) for s in args.sizes):
            ensure_data(n, args.seed)
            kinds = ["biossl"] * (not args.no_biossl) + ["biossl_pca"] * args.pca + ["celltypist"] * args.celltypist
            for kind in kinds:
                res = run_size(n, kind, args.steps, args.seed, args.threads)
                if res:
                    print(
                        f"{kind} n={n}: {res['total_s']:.0f} s, {res['total_cpu_s']:.0f} CPU-s, "
                        f"{res['peak_rss_mb']:.0f} MB, {res['scores']}"
                    )
            if not args.no_baseline and n <= args.baseline_max:
                res = run_size(n, "baseline", args.steps, args.seed, args.threads)
                if res:
                    print(f"baseline n={n}: {res['total_s']:.0f} s, {res['peak_rss_mb']:.0f} MB, {res['scores']}")
            collect()
    doc = collect()
    print(json.dumps(doc["summary"], indent=1))


if __name__ == "__main__":
    main()
