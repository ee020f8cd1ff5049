# Build example_data/go/human_go_bp_pbmc3k.gmt.gz (run from the repository root; reads ../shared/data/go).
import gzip, anndata as ad
a = ad.read_h5ad('example_data/pbmc3k.h5ad', backed='r')
genes = {g.upper() for g in a.var_names}
n_in = 0; out = []
with gzip.open('../shared/data/go/human_go_bp.gmt.gz', 'rt') as fh:
    for line in fh:
        f = line.rstrip('\n').split('\t')
        members = [g for g in f[2:] if g in genes]
        if 20 <= len(members) <= 1000:
            out.append('\t'.join([f[0], f[1], *members]) + '\n')
with gzip.GzipFile('example_data/go/human_go_bp_pbmc3k.gmt.gz', 'wb', mtime=0) as fh:
    fh.write(''.join(out).encode())
print(len(out))
