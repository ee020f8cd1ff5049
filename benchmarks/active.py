"""Active label suggestion vs random per-class sampling at the same label budget.

Protocol (per dataset in ../shared/data, seeds 0-4):

* the embedding (``tl.embed`` with its defaults: PCA since the second benchmark round) and the graph use no
  labels, so they are computed once per dataset;
* round 1, both arms: 1 random label per type (``metrics.fewlabel_split(truth, 1, seed)``);
* rounds 2 and 3, each adds ``n_types`` labels:
  - *random per class*: one more random unlabelled cell of every type (an oracle that knows the types);
  - *suggest*: ``tl.suggest_labels(adata, n_types)`` on the current labels, whose true types are then
    revealed (the chooser never sees the truth of unlabelled cells);
* after each round ``tl.annotate`` runs on each arm's labels; macro-F1 is scored on the cells unlabelled in
  *both* arms (the same query cells for both).

Total budget: 3 × n_types labels (fewer for random when a type has < 4 cells). Writes
benchmarks/results/active.json and prints a table. Run: ``.venv/bin/python benchmarks/active.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
DATASETS = {
    "pbmc3k": DATA / "pbmc3k" / "pbmc3k_seurat_labels_hvg2000.h5ad",
    "baron_mouse": DATA / "baron_mouse" / "baron2016_mouse_pancreas.h5ad",
    "cellbench": DATA / "cellbench" / "cellbench_lung_celllines.h5ad",
}
CACHE = Path(os.environ.get("BIOSSL_BENCH_CACHE", "/tmp/biossl_bench_cache"))


def load_embedded(name: str):
    """The dataset with ``obsm["X_biossl"]`` and the biossl graph (cached in $BIOSSL_BENCH_CACHE)."""
    import anndata as ad

    import biossl

    cached = CACHE / f"{name}_embedded.h5ad"
    if cached.exists():
        return ad.read_h5ad(cached)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    adata = ad.read_h5ad(DATASETS[name])
    batch_key = "batch" if adata.obs["batch"].nunique() > 1 else None
    biossl.pp.setup(adata, batch_key=batch_key)
    biossl.tl.embed(adata, batch_key=batch_key, seed=0, progress=False)
    biossl.tl.neighbors(adata)
    CACHE.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(cached)
    return adata


def _labels_column(truth: np.ndarray, mask: np.ndarray, classes: list[str]) -> pd.Categorical:
    return pd.Categorical(np.where(mask, truth, None), categories=classes)


def _add_random_per_class(truth: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One more labelled cell of every type (if it has an unlabelled cell to spare beyond one)."""
    mask = mask.copy()
    for c in sorted(set(truth)):
        free = np.flatnonzero((truth == c) & ~mask)
        if len(free) > 1:  # keep at least one query cell per type, as metrics.fewlabel_split does
            mask[rng.choice(free, 1)] = True
    return mask


def run_dataset(name: str, seeds: list[int], rounds: int = 3, **suggest_kwargs) -> dict:
    import biossl
    from biossl.metrics import fewlabel_split, macro_f1

    adata = load_embedded(name)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    classes = sorted(set(truth))
    n_types = len(classes)
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        rng = np.random.default_rng(1000 + seed)
        start = fewlabel_split(truth, 1, seed)
        arms = {"random": [start], "suggest": [start]}
        for _ in range(rounds - 1):
            arms["random"].append(_add_random_per_class(truth, arms["random"][-1], rng))
            adata.obs["_labels"] = _labels_column(truth, arms["suggest"][-1], classes)
            biossl.tl.suggest_labels(adata, n_types, labels_key="_labels", **suggest_kwargs)
            picked = adata.obs["biossl_suggest"].notna().to_numpy()
            arms["suggest"].append(arms["suggest"][-1] | picked)
        per_round = {arm: [] for arm in arms}
        for r in range(rounds):
            query = ~arms["random"][r] & ~arms["suggest"][r]
            for arm, masks in arms.items():
                adata.obs["_labels"] = _labels_column(truth, masks[r], classes)
                biossl.tl.annotate(adata, "_labels", unlabeled_category=None)
                pred = adata.obs["biossl_label"].astype(str).to_numpy()
                per_round[arm].append(
                    {
                        "round": r + 1,
                        "n_labelled": int(masks[r].sum()),
                        "n_types_labelled": len(set(truth[masks[r]])),
                        "macro_f1": macro_f1(truth[query], pred[query]),
                    }
                )
        runs.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 2), **per_round})
        last = {arm: per_round[arm][-1]["macro_f1"] for arm in arms}
        print(f"  {name} seed {seed}: random {last['random']:.3f}  suggest {last['suggest']:.3f}", flush=True)
    final = {arm: np.array([run[arm][-1]["macro_f1"] for run in runs]) for arm in ("random", "suggest")}
    diff = final["suggest"] - final["random"]
    return {
        "n_cells": int(adata.n_obs),
        "n_types": n_types,
        "embedding": adata.uns["biossl"]["embed"]["model"],
        "budget": rounds * n_types,
        "random_macro_f1_mean": float(final["random"].mean()),
        "random_macro_f1_sd": float(final["random"].std(ddof=1)) if len(seeds) > 1 else 0.0,
        "suggest_macro_f1_mean": float(final["suggest"].mean()),
        "suggest_macro_f1_sd": float(final["suggest"].std(ddof=1)) if len(seeds) > 1 else 0.0,
        "gain_mean": float(diff.mean()),
        "gain_min": float(diff.min()),
        "target_gain": 0.05,
        "target_met": bool(diff.mean() >= 0.05),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=str(HERE / "results" / "active.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    import biossl

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for name in args.datasets.split(","):
        results[name] = run_dataset(name, seeds)
    print(f"{'dataset':<12} {'budget':>6} {'random':>14} {'suggest':>14} {'gain':>7}")
    for name, r in results.items():
        print(
            f"{name:<12} {r['budget']:>6} {r['random_macro_f1_mean']:>8.3f}±{r['random_macro_f1_sd']:.3f} "
            f"{r['suggest_macro_f1_mean']:>8.3f}±{r['suggest_macro_f1_sd']:.3f} {r['gain_mean']:>+7.3f}"
        )
    doc = {
        "protocol": __doc__.split("Protocol", 1)[1].split("Writes", 1)[0].strip(),
        "seeds": seeds,
        "biossl_version": biossl.__version__,
        "results": results,
    }
    from biossl._io import write_text_atomic

    write_text_atomic(json.dumps(doc, indent=2) + "\n", args.out, overwrite=True)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
