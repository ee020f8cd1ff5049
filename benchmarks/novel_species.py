"""Pooled-path novelty on generated species pairs whose human query holds a type the mouse reference lacks.

    .venv/bin/python benchmarks/novel_species.py [--sets SEED:TYPE ...] [--out JSON]

The sets are the ``islets`` species pairs of ``benchmarks/species_pair.py`` (a 750-cell mouse-named reference, a
3,000-cell human-named query with the composition of human islets), each with one type left out of the reference:
ductal cells (13-16% of the query, as acinar cells are of a real human pancreas against a mouse islet reference),
or a smaller type. The path is the one a user takes: ``pp.map_genes`` + concat + the default pooled path with the
species as batch key, then ``tl.novelty``. Reported per set: the AUROC of ``obs["biossl_novelty"]`` for the
left-out type among the query cells, the share of query cells no label reaches through the graph (known types and
the left-out type), and the pooled macro-F1 over the reference's types (Unknown = miss). ``CHOSEN``: the sets on
which the expression view's treatment of cells no label reaches was chosen (``biossl/tl/_novelty.py``, 2026-12-07);
``CHECK``: looked at once, after the choice; ``FRESH``: drawn after both; ``LATER``: drawn after the class-balanced
attachment of ``tl.annotate`` was chosen on all the others (its check, on macro-F1). For an older checkout's figures,
copy this script and ``species_pair.py`` into it. Writes benchmarks/results/novel_species.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import species_pair as spp  # noqa: E402
import strong_batch as sb  # noqa: E402
from measure import machine, score  # noqa: E402

CHOSEN = ("31:ductal", "33:ductal", "35:ductal", "36:ductal")
CHECK = (
    "32:ductal", "34:ductal", "37:ductal", "38:delta", "39:quiescent_stellate", "40:endothelial",
    "32:endothelial", "34:endothelial",
)  # fmt: skip
FRESH = (
    "41:ductal", "42:ductal", "43:ductal", "44:ductal", "45:ductal", "46:ductal", "41:endothelial", "42:endothelial",
    "43:alpha", "44:beta",
)  # fmt: skip
# drawn after the class-balanced attachment of biossl/tl/_annotate.py was chosen (2026-12-07, on all the sets above):
# its check, on pooled macro-F1
LATER = (
    "47:ductal", "48:ductal", "49:ductal", "50:ductal", "51:ductal", "52:ductal", "47:endothelial", "48:gamma",
    "49:macrophage", "50:quiescent_stellate", "51:delta", "52:schwann",
)  # fmt: skip

GROUPS = {"chosen": CHOSEN, "check": CHECK, "fresh": FRESH, "later": LATER}


def run(spec: str) -> dict:
    """One set ``SEED:TYPE``: the pooled path and its novelty score on the query cells."""
    from sklearn.metrics import roc_auc_score

    from biossl.tl._propagation import connectivities, label_codes, propagate_labels

    seed, left_out = spec.split(":")
    name = f"baron_mouse_{seed}_islets_x3000_no_{left_out}"
    spp.SETS[name] = ("baron_mouse_divergent", int(seed), left_out, 3000, spp.ISLETS)
    ref, query, novel = spp.make_pair(name)
    both, is_q, m = spp.pooled_path(ref, query, novelty=True)
    truth = both.obs["cell_type"].astype(str).to_numpy()[is_q]
    pred = both.obs["biossl_label"].astype(str).to_numpy()[is_q]
    codes, _ = label_codes(both, "labels", None)
    reached = propagate_labels(connectivities(both, "biossl"), codes, int(codes.max()) + 1)[2][is_q] >= 0
    is_novel = truth == novel
    return {
        "set": name,
        "left_out": novel,
        "group": next((g for g, sets in GROUPS.items() if spec in sets), "other"),
        "novel_share": float(is_novel.mean()),
        "novelty_auroc": float(roc_auc_score(is_novel, both.obs["biossl_novelty"].to_numpy()[is_q])),
        "unreached_novel": float(np.mean(~reached[is_novel])),
        "unreached_known": float(np.mean(~reached[~is_novel])),
        "macro_f1": score(truth, pred, ~is_novel)["macro_f1"],
        "cpu_s": m["cpu_s"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=[s for sets in GROUPS.values() for s in sets], help="SEED:TYPE")
    p.add_argument("--out", type=Path, default=sb.RESULTS / "novel_species.json")
    args = p.parse_args(argv)
    rows = []
    for spec in args.sets:
        r = run(spec)
        rows.append(r)
        line = f"{r['set']:50s} {r['group']:6s} AUROC {r['novelty_auroc']:.3f}  unreached: left out "
        print(line + f"{r['unreached_novel']:.2f}, known {r['unreached_known']:.3f}  macro-F1 {r['macro_f1']:.3f}")
    from splits import write_json_atomic

    write_json_atomic({"runs": rows, "machine": machine()}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
