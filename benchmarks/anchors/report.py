"""Turn the per-run JSON of ``benchmarks/results/anchors/runs/`` into the README table and the plot.

    python benchmarks/anchors/report.py

Writes ``benchmarks/results/anchors.md`` (macro-F1 mean ± sd over seeds per dataset and k, reference → query
rows, biossl − best anchor, end-to-end times, peak memory, per-class F1 where biossl loses, and exactly which
runs exist) and ``benchmarks/results/anchors.png`` (macro-F1 vs k, one line per method, a panel per dataset).
Nothing in the table is typed by hand: rerun this script after more runs finish.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import splits as splitlib  # noqa: E402

RESULTS = HERE.parent / "results"
RUNS = RESULTS / "anchors" / "runs"

BIOSSL = ("biossl", "biossl_best")
ANCHORS = (
    "scanvi",
    "scanvi_fast",
    "celltypist",
    "ingest",
    "knn_pca",
    "knn1_pca",
    "labelspreading",
    "labelspreading_default",
)
LABELS = {
    "biossl": "biossl (default)",
    "biossl_best": "biossl (best)",
    "scanvi": "scANVI (default epochs)",
    "scanvi_fast": "scANVI (100+10 epochs)",
    "celltypist": "CellTypist",
    "ingest": "scanpy ingest",
    "knn_pca": "kNN-PCA",
    "knn1_pca": "1-NN-PCA",
    "labelspreading": "LabelSpreading (tuned)",
    "labelspreading_default": "LabelSpreading (sklearn default)",
}


# one colour per method in every panel
COLORS = {
    "biossl": "black",
    "biossl_best": "tab:red",
    "scanvi": "tab:blue",
    "scanvi_fast": "tab:cyan",
    "celltypist": "tab:green",
    "ingest": "tab:olive",
    "knn_pca": "tab:orange",
    "knn1_pca": "tab:brown",
    "labelspreading": "tab:purple",
    "labelspreading_default": "tab:gray",
}


def load_runs(runs_dir: Path = RUNS) -> list[dict]:
    """Every run record (failed runs included, with an ``error`` field)."""
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*/*/*.json"))]


def row_key(r: dict):
    """Table row of a run: the number k for few-label splits, the split name for reference → query."""
    return r["k"] if r["setting"] == "fewlabel" else r["split"]


def aggregate(runs: list[dict]) -> dict:
    """{dataset: {row: {method: stats}}} with macro-F1/accuracy mean, sd, seeds, times and per-class F1."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["dataset"], row_key(r), r["method"])].append(r)
    out: dict = defaultdict(lambda: defaultdict(dict))
    for (dataset, row, method), rs in groups.items():
        ok = [r for r in rs if "macro_f1" in r]
        stats = {"n": len(ok), "n_failed": len(rs) - len(ok), "seeds": sorted(r["seed"] for r in ok)}
        if ok:
            f1 = np.array([r["macro_f1"] for r in ok])
            stats.update(
                mean=float(f1.mean()),
                sd=float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
                accuracy=float(np.mean([r["accuracy"] for r in ok])),
                e2e_cpu_s=float(np.median([r["e2e_cpu_s"] for r in ok])),
                e2e_wall_s=float(np.median([r["e2e_wall_s"] for r in ok])),
                peak_rss_mb=float(np.max([r["peak_rss_mb"] for r in ok])),
                per_class=_mean_dicts([r["per_class_f1"] for r in ok]),
                by_seed={r["seed"]: r["macro_f1"] for r in ok},
            )
        else:
            stats["error"] = rs[0].get("error")
        out[dataset][row][method] = stats
    return out


def _mean_dicts(ds: list[dict]) -> dict:
    keys = sorted(set().union(*ds))
    return {k: float(np.mean([d[k] for d in ds if k in d])) for k in keys}


def _rows(table: dict) -> list:
    ks = sorted(r for r in table if isinstance(r, int))
    return ks + sorted(r for r in table if not isinstance(r, int))


def _fmt(s: dict | None) -> str:
    if not s:
        return "—"
    if "mean" not in s:
        return "failed"
    n = f" ({s['n']})" if s["n"] != 5 else ""
    return f"{s['mean']:.3f} ± {s['sd']:.3f}{n}"


def best_anchor(cells: dict, anchors, *, common_seeds: bool = False) -> tuple[str | None, float | None]:
    """Best anchor by mean macro-F1 over the seeds it ran on."""
    best, val = None, None
    for m in anchors:
        s = cells.get(m)
        if s and "mean" in s and (val is None or s["mean"] > val):
            best, val = m, s["mean"]
    return best, val


def markdown(agg: dict, methods, anchors, title: str, biossl: str = "biossl") -> str:
    """The README table(s) for ``methods`` (columns), with biossl − best anchor."""
    lines = [f"## {title}", ""]
    lines.append(
        "Macro-F1 on the unlabelled cells, mean ± sd over seeds (number of seeds in brackets when not 5). "
        "Rows: k labelled cells per type, or a reference → query split (all cells of the reference batches "
        "labelled). Δ = biossl (default) − the best other method in the row, Δ best = the same for biossl's best "
        "setting (chosen on seeds 0–1 by benchmarks/anchors/sweep.py; since the second round it is the default "
        "path). Generated by "
        "`benchmarks/anchors/report.py` from `benchmarks/results/anchors/runs/`."
    )
    for dataset in splitlib.DATASETS:
        if dataset not in agg:
            continue
        table = agg[dataset]
        present = [m for m in methods if any(m in table[r] for r in table)]
        lines += ["", f"### {dataset}", ""]
        lines.append("| k | " + " | ".join(LABELS.get(m, m) for m in present) + " | best other | Δ | Δ best |")
        lines.append("|---" * (len(present) + 4) + "|")
        for row in _rows(table):
            cells = table[row]
            others = [m for m in anchors if m in present]
            bname, bval = best_anchor(cells, others)
            own = cells.get(biossl, {}).get("mean")
            own_best = cells.get("biossl_best", {}).get("mean")
            vals = {m: cells[m]["mean"] for m in present if m in cells and "mean" in cells[m]}
            top = max(vals.values()) if vals else None
            row_cells = []
            for m in present:
                txt = _fmt(cells.get(m))
                if m in vals and top is not None and np.isclose(vals[m], top):
                    txt = f"**{txt}**"
                row_cells.append(txt)
            delta = f"{own - bval:+.3f}" if own is not None and bval is not None else "—"
            delta_best = f"{own_best - bval:+.3f}" if own_best is not None and bval is not None else "—"
            best_txt = f"{LABELS.get(bname, bname)}" if bname else "—"
            lines.append(f"| {row} | " + " | ".join(row_cells) + f" | {best_txt} | {delta} | {delta_best} |")
    return "\n".join(lines) + "\n"


def time_table(agg: dict, methods, k: int = 5, ratio_to=("scanvi", "celltypist")) -> str:
    """Median end-to-end CPU and wall seconds and peak RSS at ``k`` labels per type, and biossl's CPU ratios."""
    lines = [
        "",
        f"### End-to-end time and memory (k = {k}; median over seeds)",
        "",
        "End-to-end = the label-free step (embedding / HVG + PCA / scVI pretraining / normalisation), done "
        "once per dataset and seed and shared across k, plus the per-split step (graph + propagation / "
        "fine-tuning / training + prediction). One thread per process (OMP/torch), so CPU seconds are the "
        "fair comparison; wall seconds include waiting for the 2 cores shared with other jobs.",
        "",
        "| dataset | "
        + " | ".join(f"{LABELS.get(m, m)}" for m in methods)
        + " | "
        + " | ".join(f"biossl ÷ {LABELS.get(m, m)} (CPU)" for m in ratio_to)
        + " |",
        "|---" * (len(methods) + len(ratio_to) + 1) + "|",
    ]
    for dataset in splitlib.DATASETS:
        if dataset not in agg or k not in agg[dataset]:
            continue
        cells = agg[dataset][k]
        row = []
        for m in methods:
            s = cells.get(m)
            if s and "mean" in s:
                cpu = s["e2e_cpu_s"]
                cpu_txt = f"{cpu:.2f}" if cpu < 10 else f"{cpu:.1f}"
                row.append(f"{cpu_txt} cpu-s / {s['e2e_wall_s']:.0f} s / {s['peak_rss_mb']:.0f} MB")
            else:
                row.append("—")
        ours = cells.get("biossl", {})
        for m in ratio_to:
            other = cells.get(m, {})
            ok = "e2e_cpu_s" in ours and other.get("e2e_cpu_s")
            ratio = ours["e2e_cpu_s"] / other["e2e_cpu_s"] if ok else None
            row.append("—" if ratio is None else f"{ratio:.3f}×" if ratio < 0.1 else f"{ratio:.2f}×")
        lines.append(f"| {dataset} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def losses(agg: dict, anchors, biossl: str = "biossl", top: int = 3) -> str:
    """Per-class F1 of biossl against the best anchor wherever biossl's macro-F1 is lower."""
    lines = ["", "### Where biossl (default) loses: per-class F1 (mean over seeds), biossl vs best other", ""]
    any_loss = False
    for dataset, table in agg.items():
        for row in _rows(table):
            cells = table[row]
            bname, bval = best_anchor(cells, [m for m in anchors if m in cells])
            own = cells.get(biossl)
            if not own or "mean" not in own or bval is None or own["mean"] >= bval:
                continue
            any_loss = True
            other = cells[bname]["per_class"]
            gaps = sorted((own["per_class"].get(c, 0.0) - other[c], c) for c in other)[:top]
            worst = ", ".join(f"{c} {own['per_class'].get(c, 0.0):.2f} vs {other[c]:.2f}" for d, c in gaps if d < 0)
            lines.append(
                f"- {dataset} k={row}: {own['mean']:.3f} vs {LABELS.get(bname, bname)} {bval:.3f} — {worst or 'spread'}"
            )
    if not any_loss:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def coverage(runs: list[dict]) -> str:
    """Exactly which runs exist (dataset × method: seeds, splits, failures)."""
    lines = ["", "### What was run", "", "| dataset | method | few-label runs (seeds) | ref → query runs | failed |"]
    lines.append("|---|---|---|---|---|")
    groups = defaultdict(list)
    for r in runs:
        groups[(r["dataset"], r["method"])].append(r)
    for (dataset, method), rs in sorted(groups.items()):
        fl = [r for r in rs if r["setting"] == "fewlabel"]
        rq = [r for r in rs if r["setting"] != "fewlabel"]
        seeds = sorted({r["seed"] for r in fl})
        ks = sorted({r["k"] for r in fl})
        failed = [f"{r['split']}: {r['error'][:80]}" for r in rs if "error" in r]
        lines.append(
            f"| {dataset} | {method} | {len(fl)} (k {','.join(map(str, ks))}; seeds {','.join(map(str, seeds))}) "
            f"| {len(rq)} | {len(failed)}{' — ' + failed[0] if failed else ''} |"
        )
    return "\n".join(lines) + "\n"


def plot(agg: dict, methods, path: Path) -> None:
    """Macro-F1 vs k, one line per method (mean ± sd), a panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biossl._io import write_figure_atomic

    datasets = [d for d in splitlib.DATASETS if d in agg]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets) + 2.5, 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        table = agg[dataset]
        ks = sorted(r for r in table if isinstance(r, int))
        for m in methods:
            pts = [(k, table[k][m]["mean"], table[k][m]["sd"]) for k in ks if "mean" in table[k].get(m, {})]
            if not pts:
                continue
            x, y, e = map(np.array, zip(*pts, strict=True))
            lw = 2.5 if m in BIOSSL else 1.2
            ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, lw=lw, color=COLORS[m], label=LABELS.get(m, m))
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("labelled cells per type (k)")
        ax.set_ylabel("macro-F1 (unlabelled cells)")
        ax.set_title(dataset)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    write_figure_atomic(fig, path, overwrite=True)
    plt.close(fig)


def main() -> int:
    from biossl._io import write_text_atomic

    runs = load_runs()
    agg = aggregate(runs)
    methods = [m for m in (*BIOSSL, *ANCHORS) if any(r["method"] == m for r in runs)]
    anchors = [m for m in methods if m not in BIOSSL]
    text = markdown(agg, methods, anchors, "Few-label annotation: biossl vs scANVI, CellTypist, ingest and baselines")
    text += time_table(
        agg,
        [
            m
            for m in (
                "biossl",
                "biossl_best",
                "scanvi",
                "scanvi_fast",
                "celltypist",
                "ingest",
                "knn_pca",
                "labelspreading",
            )
            if m in methods
        ],
    )
    text += losses(agg, anchors)
    text += coverage(runs)
    write_text_atomic(text, RESULTS / "anchors.md", overwrite=True)
    plot(agg, methods, RESULTS / "anchors.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
