"""Reference → query mapping benchmark (issue 6): accuracy across batches, novel types, mapping speed.

    .venv/bin/python benchmarks/reference_mapping.py            # all parts
    .venv/bin/python benchmarks/reference_mapping.py --part novel --datasets pbmc3k cellbench
    .venv/bin/python benchmarks/reference_mapping.py --part cross --datasets baron_mouse

Parts
-----
cross   train a reference on one batch / technology (all its cells labelled), map the others:
        cellbench CEL-seq2 → Drop-seq and CEL-seq2 5-cell-line plates → the rest, baron_mouse donor → donor.
        Macro-F1 / accuracy on the query (Unknown counts as wrong), per-class F1, fit and map time; kNN on
        PCA of the pooled data (labels from the reference) as the simple baseline. CellTypist / scANVI on the
        same splits come from benchmarks/anchors (rows `*_to_*` of benchmarks/results/anchors.md).
novel   leave one type out of the reference and map a query that holds it: AUROC of (1 − mapping score) for
        "this cell's type is absent from the reference" (the score combines the reference share of the cell's
        neighbourhood with its distance to the reference cells of its predicted class, see
        biossl.tl.map_query), the share of novel cells called Unknown and of known cells called Unknown.
        pbmc3k (a random half as reference), cellbench and baron_mouse (every cross-batch split above), every
        type with >= 30 query cells.
speed   a saved pbmc3k reference loaded from disk maps 10,000 query cells (the query half tiled); wall time
        of load + map_query.

Writes benchmarks/results/reference_mapping.json (updated after every run) and reference_mapping.md.
``--cache DIR`` keeps every fitted reference (Reference.save) with its fit time and reuses it on the next run,
so a change to the mapping alone is re-measured without retraining the VAEs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

import biossl

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "reference_mapping.json"
MD = HERE / "results" / "reference_mapping.md"


def load(name: str) -> ad.AnnData:
    if name == "pbmc3k":
        return biossl.datasets.pbmc()
    path = {
        "cellbench": "cellbench/cellbench_lung_celllines.h5ad",
        "baron_mouse": "baron_mouse/baron2016_mouse_pancreas.h5ad",
    }
    return ad.read_h5ad(DATA / path[name])


def splits(name: str, data: ad.AnnData) -> dict[str, np.ndarray]:
    """Reference masks of the cross-batch settings (the same ones benchmarks/anchors uses)."""
    if name == "cellbench":
        tech = data.obs["technology"].astype(str).to_numpy()
        batch = data.obs["batch"].astype(str).to_numpy()
        return {
            "celseq2_to_dropseq": tech == "CEL-seq2",
            "celseq2_plates_to_rest": np.char.find(batch.astype(str), "5cl") >= 0,
        }
    if name == "baron_mouse":
        batch = data.obs["batch"].astype(str).to_numpy()
        return {"mouse1_to_mouse2": batch == "mouse1", "mouse2_to_mouse1": batch == "mouse2"}
    rng = np.random.default_rng(0)
    return {"random_half": rng.random(data.n_obs) < 0.5}


def scores(truth, pred) -> dict:
    truth, pred = np.asarray(truth, dtype=str), np.asarray(pred, dtype=str)
    labels = np.unique(truth)
    per_class = f1_score(truth, pred, labels=labels, average=None, zero_division=0)
    return {
        "macro_f1": float(per_class.mean()),
        "accuracy": float(accuracy_score(truth, pred)),
        "per_class_f1": {str(c): round(float(f), 4) for c, f in zip(labels, per_class, strict=True)},
        "unknown_fraction": float((pred == "Unknown").mean()),
    }


def knn_pca(data: ad.AnnData, is_ref: np.ndarray) -> np.ndarray:
    """Distance-weighted 15-NN on 50 PCs of the pooled, log-normalised data, trained on the reference."""
    import scanpy as sc
    from sklearn.neighbors import KNeighborsClassifier

    tmp = ad.AnnData(data.X.astype(np.float32).copy())
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, n_top_genes=2000, flavor="seurat")
    tmp = tmp[:, tmp.var["highly_variable"]].copy()
    sc.pp.scale(tmp, max_value=10)
    sc.tl.pca(tmp, n_comps=50, random_state=0)
    X = tmp.obsm["X_pca"]
    clf = KNeighborsClassifier(n_neighbors=15, weights="distance").fit(
        X[is_ref], data.obs["cell_type"].astype(str)[is_ref]
    )
    return clf.predict(X[~is_ref])


def save(results: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    results["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(OUT)
    write_markdown(results)


def _cache_dir(cache: Path | None, key: str) -> Path | None:
    """Where the reference of setting ``key`` is kept in ``cache`` (None: no cache)."""
    return None if cache is None else cache / key.replace("/", "__").replace(" ", "_")


def get_reference(cache: Path | None, key: str, adata: ad.AnnData, **kwargs) -> tuple[biossl.Reference, float]:
    """Fit a reference (all defaults but ``kwargs``), or load it with its fit time from ``cache``."""
    path = _cache_dir(cache, key)
    if path is not None and (path / "fit_s.txt").exists():
        return biossl.Reference.load(path), float((path / "fit_s.txt").read_text())
    t0 = time.perf_counter()
    reference = biossl.tl.fit_reference(adata, "cell_type", progress=False, **kwargs)
    fit_s = time.perf_counter() - t0
    if path is not None:
        reference.save(path, overwrite=True)
        (path / "fit_s.txt").write_text(f"{fit_s}")
    return reference, fit_s


def keep_query(cache: Path | None, key: str, query: ad.AnnData) -> None:
    """Keep the mapped query's latent next to its cached reference (to study the mapping score offline)."""
    if cache is not None:
        np.save(_cache_dir(cache, key) / "query_latent.npy", query.obsm["X_biossl"])


def run_cross(results: dict, datasets: list[str], cache: Path | None = None) -> None:
    for name in [d for d in ("cellbench", "baron_mouse") if d in datasets]:
        data = load(name)
        for setting, is_ref in splits(name, data).items():
            ref, query = data[is_ref].copy(), data[~is_ref].copy()
            reference, fit_s = get_reference(cache, f"{name}/{setting}", ref, batch_key="batch")
            t1 = time.perf_counter()
            biossl.tl.map_query(query, reference, batch_key="batch", progress=False)
            t2 = time.perf_counter()
            keep_query(cache, f"{name}/{setting}", query)
            ours = scores(query.obs["cell_type"], query.obs["biossl_label"])
            row = {
                "dataset": name, "setting": setting, "n_ref": int(ref.n_obs), "n_query": int(query.n_obs),
                "biossl": {**ours, "fit_s": fit_s, "map_s": t2 - t1},
                "knn_pca": scores(query.obs["cell_type"], knn_pca(data, is_ref)),
            }  # fmt: skip
            results.setdefault("cross", {})[f"{name}/{setting}"] = row
            print(f"{name}/{setting}: biossl {row['biossl']['macro_f1']:.3f} kNN-PCA {row['knn_pca']['macro_f1']:.3f}")
            save(results)


def run_novel(results: dict, datasets: list[str], cache: Path | None = None) -> None:
    novel = results.get("novel", {})  # rows of datasets not rerun are kept
    results["novel"] = {k: v for k, v in novel.items() if v["dataset"] not in datasets and k.count("/") == 2}
    for name in datasets:
        data = load(name)
        for setting, is_ref in splits(name, data).items():
            run_novel_setting(results, name, data, setting, is_ref, cache)


def run_novel_setting(results: dict, name: str, data, setting: str, is_ref: np.ndarray, cache: Path | None) -> None:
    """Every type with >= 30 query cells of one reference → query split, left out of the reference in turn."""
    query = data[~is_ref]
    counts = query.obs["cell_type"].astype(str).value_counts()
    for held_out in counts.index[counts >= 30]:
        keep = is_ref & (data.obs["cell_type"].astype(str) != held_out).to_numpy()
        batch_key = None if name == "pbmc3k" else "batch"
        key = f"{name}/{setting}/without {held_out}"
        reference, _ = get_reference(cache, key, data[keep].copy(), batch_key=batch_key)
        q = query.copy()
        biossl.tl.map_query(q, reference, batch_key=batch_key, progress=False)
        keep_query(cache, key, q)
        novel = (q.obs["cell_type"].astype(str) == held_out).to_numpy()
        unknown = (q.obs["biossl_label"] == "Unknown").to_numpy()
        row = {
            "dataset": name, "setting": setting, "held_out": held_out, "n_novel": int(novel.sum()),
            "auroc_mapping_score": float(roc_auc_score(novel, -q.obs["biossl_mapping_score"])),
            "auroc_confidence": float(roc_auc_score(novel, -q.obs["biossl_confidence"])),
            "novel_called_unknown": float(unknown[novel].mean()),
            "known_called_unknown": float(unknown[~novel].mean()),
            "known_macro_f1": scores(q.obs["cell_type"][~novel], q.obs["biossl_label"][~novel])["macro_f1"],
            "distance_threshold": float(q.uns["biossl"]["map_query"]["distance_threshold"]),
            "mapping_threshold": float(q.uns["biossl"]["map_query"]["mapping_threshold"]),
        }  # fmt: skip
        results.setdefault("novel", {})[key] = row
        print(
            f"{name}/{setting} without {held_out}: AUROC {row['auroc_mapping_score']:.3f}, novel→Unknown "
            f"{row['novel_called_unknown']:.2f}, known→Unknown {row['known_called_unknown']:.3f}"
        )
        save(results)


def run_speed(results: dict) -> None:
    data = load("pbmc3k")
    is_ref = splits("pbmc3k", data)["random_half"]
    reference = biossl.tl.fit_reference(data[is_ref].copy(), "cell_type", progress=False)
    query = data[~is_ref]
    reps = int(np.ceil(10_000 / query.n_obs))
    big = ad.concat([query] * reps, index_unique="-")[:10_000].copy()
    with tempfile.TemporaryDirectory() as tmp:
        reference.save(Path(tmp) / "ref")
        t0 = time.perf_counter()
        loaded = biossl.Reference.load(Path(tmp) / "ref")
        biossl.tl.map_query(big, loaded, progress=False)
        wall = time.perf_counter() - t0
    results["speed"] = {"n_query": int(big.n_obs), "n_reference": int(is_ref.sum()), "load_and_map_s": wall}
    print(f"load + map {big.n_obs} cells: {wall:.1f} s")
    save(results)


def write_markdown(results: dict) -> None:
    lines = ["## Reference → query mapping (issue 6)", ""]
    if "cross" in results:
        lines += [
            "Reference = one batch / technology, all its cells labelled; query = the rest. Macro-F1 on the query "
            "(Unknown counts as wrong). Generated by `benchmarks/reference_mapping.py`.",
            "",
            "| dataset / setting | ref → query cells | biossl | kNN-PCA | biossl Unknown | fit / map time |",
            "|---|---|---|---|---|---|",
        ]
        for key, row in results["cross"].items():
            b = row["biossl"]
            lines.append(
                f"| {key} | {row['n_ref']} → {row['n_query']} | {b['macro_f1']:.3f} | {row['knn_pca']['macro_f1']:.3f} "
                f"| {b['unknown_fraction']:.1%} | {b['fit_s']:.0f} s / {b['map_s']:.1f} s |"
            )
        lines.append("")
    if "novel" in results:
        lines += [
            "Novel types: one type left out of the reference. AUROC of (1 − mapping score) for novel vs known query "
            "cells (the score multiplies the reference share of the cell's neighbourhood, relative to what the query "
            "and the predicted class make typical, at 15 and 50 neighbours, by its distance to reference cells of its "
            "predicted class and by how well its expression matches that class's mean profile); share of each called "
            "Unknown by the default threshold (score < "
            f"{next(iter(results['novel'].values()))['mapping_threshold']:g}).",
            "",
            "| dataset / setting | held-out type | novel cells | AUROC | novel → Unknown | known → Unknown "
            "| known macro-F1 |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["novel"].values():
            lines.append(
                f"| {row['dataset']}/{row['setting']} | {row['held_out']} | {row['n_novel']} | "
                f"{row['auroc_mapping_score']:.3f} | "
                f"{row['novel_called_unknown']:.0%} | {row['known_called_unknown']:.1%} | {row['known_macro_f1']:.3f} |"
            )
        table = pd.DataFrame(results["novel"].values())
        by = table.groupby("dataset")["auroc_mapping_score"].mean()
        by_setting = table.groupby(["dataset", "setting"])["auroc_mapping_score"].mean()
        lines += [
            "",
            "Mean AUROC per dataset: " + ", ".join(f"{d} {v:.3f}" for d, v in by.items()),
            "(per setting: " + ", ".join(f"{d}/{s} {v:.3f}" for (d, s), v in by_setting.items()) + ")",
            "",
        ]
    if "speed" in results:
        s = results["speed"]
        lines += [
            f"Speed: loading a saved reference ({s['n_reference']} cells) and mapping {s['n_query']:,} query cells "
            f"took {s['load_and_map_s']:.1f} s (load average {results['machine']['load_average'][0]:.1f} on "
            f"{results['machine']['cpus']} cores).",
            "",
        ]
    tmp = MD.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(MD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cross", "novel", "speed", "all"], default="all")
    parser.add_argument("--datasets", nargs="+", default=["pbmc3k", "cellbench", "baron_mouse"])
    parser.add_argument("--cache", type=Path, help="directory to keep fitted references in and reuse them from")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.part in ("cross", "all"):
        run_cross(results, args.datasets, args.cache)
    if args.part in ("novel", "all"):
        run_novel(results, args.datasets, args.cache)
    if args.part in ("speed", "all"):
        run_speed(results)


if __name__ == "__main__":
    main()
