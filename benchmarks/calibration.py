"""Expected calibration error of ``obs["biossl_confidence"]``, raw vs calibrated, at k labels per type.

Protocol (per dataset in ../shared/data): embedding and graph once (no labels used; cached as in
``benchmarks/active.py``); for k in {1, 3, 5, 10} and seeds 0-4, ``metrics.fewlabel_split(truth, k, seed)``
keeps k labels per type; ``tl.annotate`` runs with ``calibrate=False`` (raw top probability),
``calibrate=True`` (temperature scaling fitted by 5-fold cross-validation over the labelled cells, the
default) and the isotonic variant; ECE (15 equal-width bins, Guo et al. 2017) and macro-F1 are scored on
the unlabelled cells. Target: ECE ≤ 0.05 at k = 5 on every set.
Run: ``.venv/bin/python benchmarks/calibration.py`` → benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from active import DATASETS, load_embedded  # noqa: E402


def _annotate_isotonic(adata, key: str) -> None:
    """``tl.annotate(calibrate=False)`` followed by the isotonic calibration of biossl.tl.calibrate."""
    import biossl
    from biossl.tl._propagation import annotation_predictor, connectivities, graph_representation, split_labels
    from biossl.tl.calibrate import calibrate_annotation

    biossl.tl.annotate(adata, key, unlabeled_category=None, calibrate=False)
    codes, classes = split_labels(adata, key, None)
    W = connectivities(adata, "biossl")
    rep = graph_representation(adata, "biossl")
    predict = annotation_predictor(W, len(classes), alpha=0.9, rep=rep, class_prior="estimate")  # as tl.annotate
    proba, _ = calibrate_annotation(
        predict.fold, codes, np.asarray(adata.obsm["biossl_proba"], dtype=np.float64), method="isotonic"
    )
    adata.obs["biossl_confidence"] = proba.max(1)


def run_dataset(name: str, ks: list[int], seeds: list[int]) -> dict:
    import biossl
    from biossl.metrics import expected_calibration_error, fewlabel_split, macro_f1

    adata = load_embedded(name)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    classes = sorted(set(truth))
    runs = []
    for k in ks:
        for seed in seeds:
            mask = fewlabel_split(truth, k, seed)
            adata.obs["_labels"] = pd.Categorical(np.where(mask, truth, None), categories=classes)
            row = {"k": k, "seed": seed}
            for variant in ("raw", "temperature", "isotonic"):
                if variant == "isotonic":
                    _annotate_isotonic(adata, "_labels")
                else:
                    biossl.tl.annotate(adata, "_labels", unlabeled_category=None, calibrate=variant == "temperature")
                pred = adata.obs["biossl_label"].astype(str).to_numpy()
                conf = adata.obs["biossl_confidence"].to_numpy()
                q = ~mask
                row[f"ece_{variant}"] = expected_calibration_error(conf[q], pred[q] == truth[q])
                row[f"mean_confidence_{variant}"] = float(conf[q].mean())
                if variant == "temperature":
                    row["temperature"] = adata.uns["biossl"]["annotate"]["calibration"].get("temperature")
            row["accuracy"] = float(np.mean(pred[q] == truth[q]))
            row["macro_f1"] = macro_f1(truth[q], pred[q])
            runs.append(row)
            print(
                f"  {name} k={k} seed={seed}: ECE raw {row['ece_raw']:.3f} temp {row['ece_temperature']:.3f} "
                f"iso {row['ece_isotonic']:.3f} (acc {row['accuracy']:.3f}, T={row['temperature']})",
                flush=True,
            )
    table = pd.DataFrame(runs)
    summary = (
        table.groupby("k")[["ece_raw", "ece_temperature", "ece_isotonic", "accuracy", "macro_f1"]]
        .agg(["mean", "std"])
        .round(4)
    )
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    return {
        "n_cells": int(adata.n_obs),
        "n_types": len(classes),
        "summary": summary.reset_index().to_dict("records"),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--k", default="1,3,5,10")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=str(HERE / "results" / "calibration.json"))
    args = parser.parse_args(argv)
    import biossl
    from biossl._io import write_text_atomic

    ks = [int(x) for x in args.k.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    results = {name: run_dataset(name, ks, seeds) for name in args.datasets.split(",")}
    print(f"{'dataset':<12} {'k':>3} {'ECE raw':>8} {'ECE temp':>9} {'ECE iso':>8} {'accuracy':>9}")
    for name, res in results.items():
        for row in res["summary"]:
            print(
                f"{name:<12} {row['k']:>3} {row['ece_raw_mean']:>8.3f} {row['ece_temperature_mean']:>9.3f} "
                f"{row['ece_isotonic_mean']:>8.3f} {row['accuracy_mean']:>9.3f}"
            )
    at5 = {
        n: next(r["ece_temperature_mean"] for r in res["summary"] if r["k"] == 5)
        for n, res in results.items()
        if 5 in ks
    }
    doc = {
        "protocol": __doc__.split("Protocol", 1)[1].split("Run:", 1)[0].strip(),
        "seeds": seeds,
        "k": ks,
        "target": "ECE <= 0.05 at k = 5 (temperature, the default)",
        "ece_at_k5": at5,
        "target_met": bool(at5) and all(v <= 0.05 for v in at5.values()),
        "biossl_version": biossl.__version__,
        "results": results,
    }
    write_text_atomic(json.dumps(doc, indent=2) + "\n", args.out, overwrite=True)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
