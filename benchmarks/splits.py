"""Few-label and reference → query splits shared by every benchmark method (the protocol of DESIGN.md).

Per dataset: for k in {1, 3, 5, 10, 25} labelled cells per class and seeds 0–4, the labelled cells are
drawn per class by :func:`biossl.metrics.fewlabel_split` (``numpy.random.default_rng(seed)``, classes in
sorted order). A class with no more than k cells keeps one cell unlabelled (k' = n_class − 1, at least 1
labelled), so every class has query cells to score; this only matters for baron_mouse (schwann 6, T_cell 7,
immune_other 8, B_cell 10 cells) at k = 10 and 25.

Reference → query splits on the multi-batch sets: every cell of the reference batches is labelled, the
other batches are the query.

- cellbench ``celseq2_plates_to_rest``: the three 5-line CEL-seq2 plates (all five lines) → sc_celseq2
  (CEL-seq2, 3 lines) + sc_dropseq (Drop-seq, 3 lines). ``celseq2_to_dropseq``: every CEL-seq2 cell →
  Drop-seq (cross-technology only).
- baron_mouse ``mouse1_to_mouse2`` and ``mouse2_to_mouse1`` (one donor → the other; the split is lopsided:
  alpha 9 vs 182 cells, ductal 236 vs 39).

Splits are saved as positions of the labelled cells in ``benchmarks/splits/<dataset>.json`` together with a
fingerprint of ``obs_names`` and labels, so every method reads identical splits and a changed file is caught.

Run: ``.venv/bin/python benchmarks/splits.py`` (rewrites the JSON only when it would change).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPLIT_DIR = HERE / "splits"
SHARED = ROOT.parent / "shared" / "data"

KS = (1, 3, 5, 10, 25)
SEEDS = (0, 1, 2, 3, 4)
LABELS_KEY = "cell_type"
BATCH_KEY = "batch"

# name: (path, batch key or None). example_data/pbmc3k.h5ad is byte-identical to the shared pbmc3k file
# (same sha256), so it is one dataset here.
DATASETS = {
    "pbmc3k": (ROOT / "example_data" / "pbmc3k.h5ad", None),
    "cellbench": (SHARED / "cellbench" / "cellbench_lung_celllines.h5ad", BATCH_KEY),
    "baron_mouse": (SHARED / "baron_mouse" / "baron2016_mouse_pancreas.h5ad", BATCH_KEY),
}

# dataset: {split name: reference batches}
REF_QUERY = {
    "cellbench": {
        "celseq2_plates_to_rest": ["sc_celseq2_5cl_p1", "sc_celseq2_5cl_p2", "sc_celseq2_5cl_p3"],
        "celseq2_to_dropseq": ["sc_celseq2", "sc_celseq2_5cl_p1", "sc_celseq2_5cl_p2", "sc_celseq2_5cl_p3"],
    },
    "baron_mouse": {"mouse1_to_mouse2": ["mouse1"], "mouse2_to_mouse1": ["mouse2"]},
}


def fingerprint(obs_names, labels) -> str:
    """Short hash of the cell names and their labels, to tell that a split still fits the data."""
    h = hashlib.sha1()
    for name, lab in zip(obs_names, labels, strict=True):
        h.update(f"{name}\t{lab}\n".encode())
    return h.hexdigest()[:16]


def load_dataset(name: str):
    """The AnnData of a benchmark dataset (raw counts in X as float32)."""
    import anndata as ad

    path, _ = DATASETS[name]
    adata = ad.read_h5ad(path)
    adata.X = adata.X.astype(np.float32)
    return adata


def split_id(k: int, seed: int) -> str:
    return f"k{k}_s{seed}"


def make_splits(name: str) -> dict:
    """All splits of one dataset as a JSON-able dict."""
    from biossl.metrics import fewlabel_split

    adata = load_dataset(name)
    labels = adata.obs[LABELS_KEY].astype(str).to_numpy()
    out = {
        "dataset": name,
        "path": os.path.relpath(DATASETS[name][0], ROOT),
        "n_obs": int(adata.n_obs),
        "labels_key": LABELS_KEY,
        "batch_key": DATASETS[name][1],
        "fingerprint": fingerprint(adata.obs_names, labels),
        "classes": {c: int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True)},
        "fewlabel": {},
        "ref_query": {},
    }
    for k in KS:
        for seed in SEEDS:
            mask = fewlabel_split(labels, k, seed)
            out["fewlabel"][split_id(k, seed)] = {"k": k, "seed": seed, "labelled": np.flatnonzero(mask).tolist()}
    batch = adata.obs[BATCH_KEY].astype(str).to_numpy() if DATASETS[name][1] else None
    for split, ref_batches in REF_QUERY.get(name, {}).items():
        mask = np.isin(batch, ref_batches)
        out["ref_query"][split] = {
            "reference_batches": ref_batches,
            "query_batches": sorted(set(batch[~mask])),
            "labelled": np.flatnonzero(mask).tolist(),
        }
    return out


def split_path(name: str) -> Path:
    return SPLIT_DIR / f"{name}.json"


def load_splits(name: str, adata=None) -> dict:
    """Read the saved splits of ``name``; with ``adata``, check they were made for these cells and labels."""
    splits = json.loads(split_path(name).read_text())
    if adata is not None:
        fp = fingerprint(adata.obs_names, adata.obs[LABELS_KEY].astype(str).to_numpy())
        if fp != splits["fingerprint"]:
            raise ValueError(f"benchmarks/splits/{name}.json does not match the data; rerun benchmarks/splits.py.")
    return splits


def iter_splits(splits: dict, *, ks=KS, seeds=SEEDS, ref_query: bool = True):
    """Yield (split name, labelled positions, k or None, seed or None) in a fixed order (seed-major)."""
    for seed in seeds:
        for k in ks:
            s = splits["fewlabel"][split_id(k, seed)]
            yield split_id(k, seed), np.asarray(s["labelled"]), k, seed
    if ref_query:
        for split, s in splits["ref_query"].items():
            yield split, np.asarray(s["labelled"]), None, None


def write_json_atomic(obj, path: Path) -> None:
    """Write JSON via a temporary file and rename, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, separators=(",", ":"))
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> int:
    for name in DATASETS:
        new = make_splits(name)
        path = split_path(name)
        if path.exists() and json.loads(path.read_text()) == new:
            print(f"{path.relative_to(ROOT)}: unchanged")
            continue
        write_json_atomic(new, path)
        n_ref = {k: len(v["labelled"]) for k, v in new["ref_query"].items()}
        print(f"{path.relative_to(ROOT)}: {len(new['fewlabel'])} few-label splits, reference → query {n_ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
