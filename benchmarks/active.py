"""Active label suggestion vs label choices a user can make without knowing the types, at the same budget.

Protocol (per dataset in ../shared/data, seeds 0-4):

* the embedding (``tl.embed`` with its defaults: PCA since the second benchmark round) and the graph use no
  labels, so they are computed once per dataset;
* round 1, every arm: 1 random label per type (``metrics.fewlabel_split(truth, 1, seed)``);
* rounds 2 and 3, each adds ``n_types`` labels:
  - *random cells*: ``n_types`` random unlabelled cells (what a user can do without knowing the types);
  - *margin*: the ``n_types`` unlabelled cells with the smallest margin between the two most probable types of
    ``tl.annotate``'s probabilities on the current labels (uncertainty sampling, Scheffer et al. 2001);
  - *suggest*: ``tl.suggest_labels(adata, n_types)`` on the current labels;
  - *random per class (oracle)*: one more random unlabelled cell of every type. It needs the true types of the
    unlabelled cells, the answer the user is looking for: an upper reference, not a baseline;
  the true types of the picked cells are then revealed (no chooser sees the truth of unlabelled cells);
* after each round ``tl.annotate`` runs on each arm's labels; macro-F1 is scored on the cells unlabelled in
  *every* arm (the same query cells for all).

Total budget: 3 × n_types labels (fewer for the oracle when a type has < 4 cells). Writes
benchmarks/results/active.json and active.md and prints a table. Run: ``.venv/bin/python benchmarks/active.py``.
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


ARMS = ("random_cells", "margin", "suggest", "random_per_class")


def _add_random_cells(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` more labelled cells drawn uniformly from the unlabelled ones."""
    mask = mask.copy()
    mask[rng.choice(np.flatnonzero(~mask), n, replace=False)] = True
    return mask


def _add_lowest_margin(proba: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` more labelled cells: the unlabelled ones with the smallest top-1 minus top-2 probability."""
    top2 = -np.sort(-proba, axis=1)[:, :2]
    margin = np.where(mask, np.inf, top2[:, 0] - top2[:, 1])
    mask = mask.copy()
    mask[np.argsort(margin, kind="stable")[:n]] = True
    return mask


def _annotate(adata, truth: np.ndarray, mask: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import biossl

    adata.obs["_labels"] = _labels_column(truth, mask, classes)
    biossl.tl.annotate(adata, "_labels", unlabeled_category=None)
    return adata.obs["biossl_label"].astype(str).to_numpy(), np.asarray(adata.obsm["biossl_proba"])


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
        rng_cells = np.random.default_rng(2000 + seed)
        start = fewlabel_split(truth, 1, seed)
        arms = {arm: [start] for arm in ARMS}
        for _ in range(rounds - 1):
            arms["random_per_class"].append(_add_random_per_class(truth, arms["random_per_class"][-1], rng))
            arms["random_cells"].append(_add_random_cells(arms["random_cells"][-1], n_types, rng_cells))
            _, proba = _annotate(adata, truth, arms["margin"][-1], classes)
            arms["margin"].append(_add_lowest_margin(proba, arms["margin"][-1], n_types))
            adata.obs["_labels"] = _labels_column(truth, arms["suggest"][-1], classes)
            biossl.tl.suggest_labels(adata, n_types, labels_key="_labels", **suggest_kwargs)
            picked = adata.obs["biossl_suggest"].notna().to_numpy()
            arms["suggest"].append(arms["suggest"][-1] | picked)
        per_round = {arm: [] for arm in arms}
        for r in range(rounds):
            query = ~np.logical_or.reduce([masks[r] for masks in arms.values()])
            for arm, masks in arms.items():
                pred, _ = _annotate(adata, truth, masks[r], classes)
                per_round[arm].append(
                    {
                        "round": r + 1,
                        "n_labelled": int(masks[r].sum()),
                        "n_types_labelled": len(set(truth[masks[r]])),
                        "macro_f1": macro_f1(truth[query], pred[query]),
                    }
                )
        runs.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 2), **per_round})
        last = "  ".join(f"{arm} {per_round[arm][-1]['macro_f1']:.3f}" for arm in ARMS)
        print(f"  {name} seed {seed}: {last}", flush=True)
    final = {arm: np.array([run[arm][-1]["macro_f1"] for run in runs]) for arm in ARMS}
    sd = {arm: float(v.std(ddof=1)) if len(seeds) > 1 else 0.0 for arm, v in final.items()}
    gain_random = final["suggest"] - final["random_cells"]
    gain_margin = final["suggest"] - final["margin"]
    return {
        "n_cells": int(adata.n_obs),
        "n_types": n_types,
        "embedding": adata.uns["biossl"]["embed"]["model"],
        "budget": rounds * n_types,
        **{f"{arm}_macro_f1_mean": float(final[arm].mean()) for arm in ARMS},
        **{f"{arm}_macro_f1_sd": sd[arm] for arm in ARMS},
        "gain_over_random_cells_mean": float(gain_random.mean()),
        "gain_over_random_cells_min": float(gain_random.min()),
        "gain_over_margin_mean": float(gain_margin.mean()),
        "gain_over_oracle_mean": float((final["suggest"] - final["random_per_class"]).mean()),
        "target": "suggest >= random_cells + 0.05 and >= margin",
        "target_met": bool(gain_random.mean() >= 0.05 and gain_margin.mean() >= 0),
        "runs": runs,
    }


LABELS = {
    "random_cells": "random cells",
    "margin": "margin sampling",
    "suggest": "`tl.suggest_labels`",
    "random_per_class": "random per type (oracle)",
}


def markdown(results: dict) -> str:
    """The table of final-round macro-F1 per arm (mean ± sd over seeds)."""
    names = list(results)
    lines = [
        "#### Which cells to label next (issue 26)",
        "",
        "Macro-F1 after 3 rounds (1 random label per type, then 2 × n_types chosen cells; 3 labels per type in all), "
        "mean ± sd over seeds 0-4, on the cells unlabelled in every arm. The oracle knows the true types of the "
        "unlabelled cells: an upper reference, not a choice a user can make. Generated by `benchmarks/active.py`.",
        "",
        "| arm | " + " | ".join(f"{n} ({results[n]['budget']} labels)" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for arm in ARMS:
        cells = [f"{results[n][f'{arm}_macro_f1_mean']:.3f} ± {results[n][f'{arm}_macro_f1_sd']:.3f}" for n in names]
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    lines.append(
        "| suggest − random cells (target +0.05) | "
        + " | ".join(f"{results[n]['gain_over_random_cells_mean']:+.3f}" for n in names)
        + " |"
    )
    lines.append(
        "| suggest − margin (target ≥ 0) | "
        + " | ".join(f"{results[n]['gain_over_margin_mean']:+.3f}" for n in names)
        + " |"
    )
    return "\n".join(lines)


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
    print(f"{'dataset':<12} {'budget':>6} " + " ".join(f"{arm:>18}" for arm in ARMS))
    for name, r in results.items():
        cells = " ".join(f"{r[f'{arm}_macro_f1_mean']:>11.3f}±{r[f'{arm}_macro_f1_sd']:.3f}" for arm in ARMS)
        print(f"{name:<12} {r['budget']:>6} {cells}")
    doc = {
        "protocol": __doc__.split("Protocol", 1)[1].split("Writes", 1)[0].strip(),
        "seeds": seeds,
        "biossl_version": biossl.__version__,
        "results": results,
    }
    from biossl._io import write_text_atomic

    write_text_atomic(json.dumps(doc, indent=2) + "\n", args.out, overwrite=True)
    write_text_atomic(markdown(results) + "\n", str(Path(args.out).with_suffix(".md")), overwrite=True)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
