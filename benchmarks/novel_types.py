"""Novel-type detection: leave one type out entirely and score how well biossl flags its cells.

Protocol (per dataset in ../shared/data, embedding and graph as in ``benchmarks/active.py``): for every
type with at least 10 cells and seeds 0-2, the other types keep k = 5 labels each
(``metrics.fewlabel_split``) and the held-out type keeps none; ``tl.annotate`` (default: calibrated) runs;
on the unlabelled cells, AUROC of a novelty score for "belongs to the held-out type". Scores compared:

* ``1 - confidence``: the calibrated top probability, as written to ``obs["biossl_confidence"]``;
* ``1 - confidence (raw)``: ``calibrate=False``;
* ``novelty (position)``: ``biossl.tl._novelty.novelty_score`` without counts (the larger of two ranks: how
  little label mass reaches the cell through the graph, and its latent distance to the nearest labelled cell);
* ``novelty``: ``biossl.tl.novelty`` (the mean of that rank and the rank of the cell's expression mismatch
  with the labelled cells of its predicted class).

Target: mean AUROC ≥ 0.85 over held-out types. Run: ``.venv/bin/python benchmarks/novel_types.py``
→ benchmarks/results/novel_types.json.
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

MIN_CELLS = 10
COLUMNS = ("auroc_confidence", "auroc_raw_confidence", "auroc_novelty_position", "auroc_novelty")


def run_dataset(name: str, seeds: list[int], k: int = 5) -> dict:
    import biossl
    from biossl.metrics import auroc, fewlabel_split
    from biossl.tl._novelty import novelty_score
    from biossl.tl._propagation import connectivities

    adata = load_embedded(name)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    counts = pd.Series(truth).value_counts()
    held_types = sorted(t for t, n in counts.items() if n >= MIN_CELLS)
    W = connectivities(adata, "biossl")
    rep = np.asarray(adata.obsm["X_biossl"], dtype=np.float64)
    rows = []
    for novel in held_types:
        known = sorted(set(truth) - {novel})
        for seed in seeds:
            mask = fewlabel_split(truth, k, seed) & (truth != novel)
            adata.obs["_labels"] = pd.Categorical(np.where(mask, truth, None), categories=known)
            query = ~mask
            is_novel = truth[query] == novel
            row = {"type": novel, "n_cells": int(counts[novel]), "seed": seed}
            biossl.tl.annotate(adata, "_labels", unlabeled_category=None, calibrate=False)
            row["auroc_raw_confidence"] = auroc(1 - adata.obs["biossl_confidence"].to_numpy()[query], is_novel)
            biossl.tl.annotate(adata, "_labels", unlabeled_category=None)
            conf = adata.obs["biossl_confidence"].to_numpy()
            row["auroc_confidence"] = auroc(1 - conf[query], is_novel)
            codes = np.where(mask, 0, -1)
            row["auroc_novelty_position"] = auroc(novelty_score(W, codes, rep)[query], is_novel)
            biossl.tl.novelty(adata, "_labels", unlabeled_category=None)
            row["auroc_novelty"] = auroc(adata.obs["biossl_novelty"].to_numpy()[query], is_novel)
            rows.append(row)
        last = pd.DataFrame(rows[-len(seeds) :])
        print(
            f"  {name} hide {novel} ({counts[novel]} cells): 1-conf {last['auroc_confidence'].mean():.3f}  "
            f"raw {last['auroc_raw_confidence'].mean():.3f}  position {last['auroc_novelty_position'].mean():.3f}  "
            f"novelty {last['auroc_novelty'].mean():.3f}",
            flush=True,
        )
    table = pd.DataFrame(rows)
    per_type = table.groupby("type")[list(COLUMNS)].mean()
    return {
        "n_cells": int(adata.n_obs),
        "held_out_types": held_types,
        "mean_auroc": {c: float(per_type[c].mean()) for c in per_type.columns},
        "per_type": per_type.round(4).reset_index().to_dict("records"),
        "runs": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(HERE / "results" / "novel_types.json"))
    args = parser.parse_args(argv)
    import biossl
    from biossl._io import write_text_atomic

    seeds = [int(x) for x in args.seeds.split(",")]
    results = {name: run_dataset(name, seeds) for name in args.datasets.split(",")}
    cols = COLUMNS
    print(f"{'dataset':<12} {'1-conf':>7} {'1-raw':>7} {'position':>8} {'novelty':>8}")
    for name, res in results.items():
        print(f"{name:<12} " + " ".join(f"{res['mean_auroc'][c]:>7.3f}" for c in cols))
    overall = {c: float(np.mean([r["mean_auroc"][c] for r in results.values()])) for c in cols}
    all_types = {c: float(np.mean([row[c] for r in results.values() for row in r["per_type"]])) for c in cols}
    print("mean over datasets: " + "  ".join(f"{c} {v:.3f}" for c, v in overall.items()))
    doc = {
        "protocol": __doc__.split("Protocol", 1)[1].split("Target:", 1)[0].strip(),
        "seeds": seeds,
        "target": "mean AUROC >= 0.85 over held-out types",
        "mean_over_datasets": overall,
        "mean_over_all_held_out_types": all_types,
        "biossl_version": biossl.__version__,
        "results": results,
    }
    write_text_atomic(json.dumps(doc, indent=2) + "\n", args.out, overwrite=True)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
