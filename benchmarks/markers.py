"""Annotation from marker genes (issue 26): biossl.tl.annotate_markers vs CellAssign, decoupler and score_genes.

    .venv-bench/bin/python benchmarks/markers.py [--datasets pbmc3k,baron_mouse] [--seeds 0,1,2,3,4]

Protocol:

* marker lists: ``example_data/markers/pbmc3k_seurat.tsv`` (the Seurat tutorial's table, plus CCL5/GZMK for CD8 T
  whose CD8A is not among the file's 2,000 genes) and ``example_data/markers/pancreas_mouse.tsv`` (textbook mouse
  pancreas markers); sources in ``example_data/markers/README.md``. Every method gets the same lists; markers
  absent from the data are dropped for all;
* biossl runs its default path (``pp.setup → tl.embed → tl.neighbors``, the label-free graph of
  ``benchmarks/active.py``) and ``tl.annotate_markers`` with its defaults;
* anchors: ``scanpy.tl.score_genes`` per type + argmax; decoupler ULM and ORA (``tmin=1``, other options
  default) + argmax, on log-normalised counts (normalize_total 1e4, log1p, all genes); CellAssign
  (``scvi.external.CellAssign``: binary marker matrix, size factors = library size / mean, counts of the
  marker genes, ``max_epochs=400`` with scvi-tools' early stopping, seed 0, one thread);
* macro-F1 over the true types that have markers, on the cells of those types (Unknown = a miss);
* markers + labels: 1 random label per type (``metrics.fewlabel_split(truth, 1, seed)``, seeds 0-4) with
  ``tl.annotate`` alone and with ``tl.annotate_markers(..., labels_key=...)``, scored on the unlabelled cells of
  the marker types.

Method settings were chosen on pbmc3k; baron_mouse is the check set (one change, the lower-quartile background of
the marker scores, came after baron_mouse failed on ambient insulin reads; see the README).
Writes benchmarks/results/markers.json and benchmarks/results/markers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from active import load_embedded  # noqa: E402

MARKERS = {
    "pbmc3k": ROOT / "example_data" / "markers" / "pbmc3k_seurat.tsv",
    "baron_mouse": ROOT / "example_data" / "markers" / "pancreas_mouse.tsv",
}
ANCHORS = ("score_genes", "decoupler_ulm", "decoupler_ora", "cellassign")
CELLASSIGN_EPOCHS = 400


def present_markers(adata, markers: dict[str, list[str]]) -> dict[str, list[str]]:
    """The markers found in ``var_names`` (case-insensitive, as biossl matches them), in the data's spelling."""
    lookup = {g.upper(): g for g in adata.var_names.astype(str)}
    return {t: [lookup[g.upper()] for g in genes if g.upper() in lookup] for t, genes in markers.items()}


def log_normalised(adata):
    import scanpy as sc

    out = adata.copy()
    out.X = out.X.astype(np.float32)
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def run_score_genes(adata, markers) -> np.ndarray:
    import scanpy as sc

    log = log_normalised(adata)
    types = list(markers)
    scores = np.zeros((adata.n_obs, len(types)))
    for i, t in enumerate(types):
        sc.tl.score_genes(log, markers[t], score_name="_s", random_state=0)
        scores[:, i] = log.obs["_s"].to_numpy()
    return np.array(types, dtype=object)[scores.argmax(1)]


def run_decoupler(adata, markers, method: str) -> np.ndarray:
    import decoupler as dc

    log = log_normalised(adata)
    net = pd.DataFrame(
        [(t, g, 1.0) for t, genes in markers.items() for g in genes], columns=["source", "target", "weight"]
    )
    getattr(dc.mt, method)(log, net, tmin=1)
    scores = log.obsm[f"score_{method}"]
    scores = scores[[t for t in markers if t in scores.columns]]
    return scores.columns.to_numpy(dtype=object)[np.nan_to_num(scores.to_numpy(), nan=-np.inf).argmax(1)]


def run_cellassign(adata, markers) -> np.ndarray:
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = 0
    genes = sorted({g for v in markers.values() for g in v})
    matrix = pd.DataFrame(0, index=genes, columns=list(markers))
    for t, v in markers.items():
        matrix.loc[v, t] = 1
    lib = np.asarray(adata.X.sum(1)).ravel().astype(np.float64)
    bdata = adata[:, genes].copy()
    bdata.obs["size_factor"] = lib / lib.mean()
    scvi.external.CellAssign.setup_anndata(bdata, size_factor_key="size_factor")
    model = scvi.external.CellAssign(bdata, matrix)
    model.train(max_epochs=CELLASSIGN_EPOCHS, accelerator="cpu", enable_progress_bar=False)
    proba = model.predict()
    return proba.columns.to_numpy(dtype=object)[proba.to_numpy().argmax(1)]


def run_biossl(adata, markers, labels_key=None) -> np.ndarray:
    import biossl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # markers absent from the data (listed in the JSON)
        biossl.tl.annotate_markers(adata, markers, labels_key=labels_key)
    return adata.obs["biossl_label"].astype(str).to_numpy()


def run_dataset(name: str, seeds: list[int]) -> dict:
    import anndata as ad

    import biossl
    from biossl.metrics import fewlabel_split, macro_f1, per_class_f1
    from biossl.tl._markers import read_markers

    adata = load_embedded(name)
    raw = ad.read_h5ad(DATASETS_RAW[name])  # counts only, for the anchors
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    listed = read_markers(MARKERS[name])
    markers = present_markers(adata, listed)
    missing = {t: [g for g in listed[t] if g.upper() not in {m.upper() for m in markers[t]}] for t in listed}
    evaluated = np.isin(truth, list(markers))
    out = {
        "n_cells": int(adata.n_obs),
        "marker_file": str(MARKERS[name].relative_to(ROOT)),
        "markers_used": markers,
        "markers_missing": {t: g for t, g in missing.items() if g},
        "types_not_in_markers": sorted(set(truth) - set(markers)),
        "n_evaluated": int(evaluated.sum()),
        "markers_only": {},
    }

    def score(pred, mask):
        return {
            "macro_f1": macro_f1(truth[mask], pred[mask]),
            "unknown": float(np.mean(pred[mask] == "Unknown")),
            "per_class_f1": per_class_f1(truth[mask], pred[mask]),
        }

    pred = run_biossl(adata, markers)
    out["markers_only"]["biossl"] = score(pred, evaluated)
    out["biossl_seeds"] = adata.uns["biossl"]["markers"]["n_seeds"]
    print(f"  {name} biossl {out['markers_only']['biossl']['macro_f1']:.3f}", flush=True)
    runners = {
        "score_genes": lambda: run_score_genes(raw, markers),
        "decoupler_ulm": lambda: run_decoupler(raw, markers, "ulm"),
        "decoupler_ora": lambda: run_decoupler(raw, markers, "ora"),
        "cellassign": lambda: run_cellassign(raw, markers),
    }
    for anchor, run in runners.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = np.asarray(run(), dtype=object).astype(str)
        out["markers_only"][anchor] = score(pred, evaluated)
        print(f"  {name} {anchor} {out['markers_only'][anchor]['macro_f1']:.3f}", flush=True)
    best = max(ANCHORS, key=lambda a: out["markers_only"][a]["macro_f1"])
    gain = out["markers_only"]["biossl"]["macro_f1"] - out["markers_only"][best]["macro_f1"]
    out["best_anchor"], out["gain_over_best_anchor"] = best, gain
    out["target_markers_met"] = bool(gain >= 0.05)

    runs = []
    for seed in seeds:
        known = fewlabel_split(truth, 1, seed)
        adata.obs["_few"] = pd.Categorical(np.where(known, truth, None))
        query = evaluated & ~known
        biossl.tl.annotate(adata, "_few")
        alone = macro_f1(truth[query], adata.obs["biossl_label"].astype(str).to_numpy()[query])
        both = macro_f1(truth[query], run_biossl(adata, markers, labels_key="_few")[query])
        runs.append({"seed": seed, "labels_only": alone, "markers_plus_labels": both})
        print(f"  {name} seed {seed}: 1 label/type {alone:.3f}  markers + 1 label/type {both:.3f}", flush=True)
    alone = np.array([r["labels_only"] for r in runs])
    both = np.array([r["markers_plus_labels"] for r in runs])
    out["one_label"] = {
        "runs": runs,
        "labels_only_mean": float(alone.mean()),
        "labels_only_sd": float(alone.std(ddof=1)) if len(runs) > 1 else 0.0,
        "markers_plus_labels_mean": float(both.mean()),
        "markers_plus_labels_sd": float(both.std(ddof=1)) if len(runs) > 1 else 0.0,
        "gain_mean": float((both - alone).mean()),
        "gain_min": float((both - alone).min()),
        "target_met": bool((both - alone).mean() >= 0.05),
    }
    return out


DATASETS_RAW = {
    "pbmc3k": ROOT.parent / "shared" / "data" / "pbmc3k" / "pbmc3k_seurat_labels_hvg2000.h5ad",
    "baron_mouse": ROOT.parent / "shared" / "data" / "baron_mouse" / "baron2016_mouse_pancreas.h5ad",
}


def markdown(results: dict) -> str:
    names = list(results)
    lines = [
        "#### Annotation from marker genes (issue 26)",
        "",
        "Macro-F1 over the types in the marker list, on their cells (Unknown = a miss); no labelled cell. "
        "Markers: `example_data/markers/` (sources in its README). Generated by `benchmarks/markers.py`.",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for method in ("biossl", *ANCHORS):
        row = []
        for n in names:
            r = results[n]["markers_only"][method]
            row.append(f"{r['macro_f1']:.3f}" + (f" ({100 * r['unknown']:.1f}% Unknown)" if r["unknown"] else ""))
        label = "biossl `annotate_markers`" if method == "biossl" else method
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append(
        "| gain over the best anchor (target +0.05) | "
        + " | ".join(
            f"{results[n]['gain_over_best_anchor']:+.3f} vs {results[n]['best_anchor']}"
            f" ({'met' if results[n]['target_markers_met'] else 'missed'})"
            for n in names
        )
        + " |"
    )
    lines += [
        "",
        "Markers + 1 random label per type vs 1 label per type alone (mean ± sd over seeds 0-4, unlabelled cells "
        "of the marker types):",
        "",
        "| dataset | 1 label/type (`annotate`) | markers + 1 label/type | gain (target +0.05) |",
        "|---|---|---|---|",
    ]
    for n in names:
        r = results[n]["one_label"]
        lines.append(
            f"| {n} | {r['labels_only_mean']:.3f} ± {r['labels_only_sd']:.3f} | "
            f"{r['markers_plus_labels_mean']:.3f} ± {r['markers_plus_labels_sd']:.3f} | {r['gain_mean']:+.3f} "
            f"(min {r['gain_min']:+.3f}; {'met' if r['target_met'] else 'missed'}) |"
        )
    lines += ["", "Per-type F1 (markers only):", ""]
    for n in names:
        types = sorted(results[n]["markers_only"]["biossl"]["per_class_f1"])
        lines += [f"##### {n}", "", "| method | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
        for method in ("biossl", *ANCHORS):
            f1 = results[n]["markers_only"][method]["per_class_f1"]
            lines.append(f"| {method} | " + " | ".join(f"{f1[t]:.2f}" for t in types) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(MARKERS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=str(HERE / "results" / "markers.json"))
    args = parser.parse_args(argv)
    import importlib.metadata as md

    import biossl
    from biossl._io import write_text_atomic

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {name: run_dataset(name, seeds) for name in args.datasets.split(",")}
    versions = {}
    for pkg in ("biossl", "scanpy", "decoupler", "scvi-tools", "anndata", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    doc = {
        "protocol": __doc__.split("Protocol:", 1)[1].split("Writes", 1)[0].strip(),
        "seeds": seeds,
        "cellassign_max_epochs": CELLASSIGN_EPOCHS,
        "versions": versions,
        "biossl_version": biossl.__version__,
        "results": results,
    }
    text = markdown(results)
    print(text)
    write_text_atomic(json.dumps(doc, indent=2) + "\n", args.out, overwrite=True)
    write_text_atomic(text + "\n", str(Path(args.out).with_suffix(".md")), overwrite=True)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
