"""The whole command-line path on every shared data set and on awkward but valid shapes of real data.

Each case runs annotate; fit-reference + annotate --reference; genes; suggest; report. A command either
succeeds or refuses with one ``error:``/usage line: never a traceback. The small shapes run by default; the
shared data sets (../shared/data) are slow tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from click.testing import CliRunner

import biossl
from biossl.cli import main

SHARED = Path(__file__).parents[2] / "shared" / "data"
REAL = {
    "pbmc3k": (SHARED / "pbmc3k" / "pbmc3k_seurat_labels_hvg2000.h5ad", None),
    "cellbench": (SHARED / "cellbench" / "cellbench_lung_celllines.h5ad", "batch"),
    "baron_mouse": (SHARED / "baron_mouse" / "baron2016_mouse_pancreas.h5ad", "batch"),
    "pbmc3k_two_technologies": (SHARED / "strong_batch" / "pbmc3k_two_technologies.h5ad", "batch"),
    "baron_mouse_two_technologies": (SHARED / "strong_batch" / "baron_mouse_two_technologies.h5ad", "batch"),
}
STEPS = "60"  # training budget per command: the zoo checks that every path runs, not the quality


def _run(runner, args) -> tuple[int, str]:
    res = runner.invoke(main, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"biossl {' '.join(map(str, args))} raised {res.exception!r}") from res.exception
    return res.exit_code, res.output


def _check_outcome(code: int, output: str, args) -> bool:
    """True when the command ran; a refusal must be one line that says what to do."""
    assert "Traceback" not in output, output
    if code == 0:
        return True
    lines = [line for line in output.splitlines() if line.startswith(("error:", "Error:"))]
    assert code in (1, 2) and len(lines) == 1, f"biossl {' '.join(map(str, args))}: exit {code}\n{output}"
    return False


def _gene_sets(genes, path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = [f"SET{i}\tna\t" + "\t".join(rng.choice(np.asarray(genes), 25, replace=False)) for i in range(4)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_zoo_case(adata: AnnData, tmp: Path, *, batch_key: str | None = None) -> dict[str, bool]:
    """All CLI commands on ``adata`` (truth in obs["cell_type"]); returns which of them ran.

    ``ran["annotate"]`` is True or, when annotate refused, its output.
    """
    runner = CliRunner()
    truth = adata.obs["cell_type"].astype(str)
    adata.obs["few"] = pd.Categorical(truth.where(biossl.metrics.fewlabel_split(truth.to_numpy(), 5, 0)))
    data = tmp / "in.h5ad"
    adata.write_h5ad(data)
    batch = ["--batch-key", batch_key] if batch_key else []
    ran = {}
    annotated = tmp / "annotated.h5ad"
    args = ["annotate", data, "-o", annotated, "--labels-key", "few", *batch]
    code, output = _run(runner, args)
    ran["annotate"] = _check_outcome(code, output, args) or output
    half = np.arange(adata.n_obs) % 2 == 0
    ref_path, query_path = tmp / "ref.h5ad", tmp / "query.h5ad"
    adata[half].copy().write_h5ad(ref_path)
    adata[~half].copy().write_h5ad(query_path)
    args = ["fit-reference", ref_path, "--labels-key", "cell_type", "-o", tmp / "ref", "--max-steps", STEPS, *batch]
    ran["fit-reference"] = _check_outcome(*_run(runner, args), args)
    if ran["fit-reference"]:
        args = ["annotate", query_path, "--reference", tmp / "ref", "-o", tmp / "mapped.h5ad", "--max-steps", STEPS]
        args += batch
        ran["map"] = _check_outcome(*_run(runner, args), args)
    sets = _gene_sets(adata.var_names, tmp / "sets.gmt")
    args = ["genes", data, "--gene-sets", sets, "-o", tmp / "genes.tsv", "--max-steps", STEPS]
    code, output = _run(runner, args)
    ran["genes"] = _check_outcome(code, output, args)
    if not ran["genes"] and "--case-sensitive" in output:  # symbols that differ only in case: the named fix works
        args.append("--case-sensitive")
        ran["genes"] = _check_outcome(*_run(runner, args), args)
    if ran["annotate"] is True:
        args = ["suggest", annotated, "-n", "5", "--labels-key", "few", "-o", tmp / "suggested.h5ad"]
        ran["suggest"] = _check_outcome(*_run(runner, args), args)
        args = ["report", annotated, "-o", tmp / "report.html", "--truth-key", "cell_type"]
        ran["report"] = _check_outcome(*_run(runner, args), args)
    return ran


# ------------------------------------------------------------------------------------------ awkward shapes
def _ensembl(a):
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    return a


def _case_duplicates(a):
    names = list(a.var_names)
    names[1] = names[0].lower() if names[0].lower() != names[0] else names[0].upper()
    a.var_names = names
    return a


def _zero_genes(a):
    zeros = AnnData(sp.csr_matrix((a.n_obs, 5), dtype=a.X.dtype), obs=a.obs)
    zeros.var_names = [f"ZERO{i}" for i in range(5)]
    out = AnnData(sp.hstack([a.X, zeros.X]).tocsr(), obs=a.obs.copy())
    out.var_names = [*a.var_names, *zeros.var_names]
    return out


def _raw_counts(a):
    counts = a.copy()
    import scanpy as sc

    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.raw = counts
    return a


def _dense(a):
    a.X = np.asarray(a.X.toarray())
    return a


def _csc(a):
    a.X = sp.csc_matrix(a.X)
    return a


def _float_counts(a):
    a.X = a.X.astype(np.float64)
    return a


def _tiny_types(a):
    ct = a.obs["cell_type"].astype(str).to_numpy().copy()
    ct[0], ct[1:3] = "one_cell_type", "two_cell_type"
    a.obs["cell_type"] = pd.Categorical(ct)
    return a


def _imbalance(a):
    ct = a.obs["cell_type"].astype(str).to_numpy()
    big = np.flatnonzero(ct == pd.Series(ct).value_counts().index[0])
    small = np.flatnonzero(ct == "B")[: max(2, len(big) // 50)]
    return a[np.sort(np.concatenate([big, small]))].copy()


def _many_genes(a):
    rng = np.random.default_rng(0)
    extra = sp.random(a.n_obs, 20_000 - a.n_vars, density=0.01, random_state=1, format="csr", dtype=np.float32)
    extra.data = rng.poisson(1.0, extra.nnz).astype(np.float32) + 1
    out = AnnData(sp.hstack([a.X, extra]).tocsr(), obs=a.obs.copy())
    out.var_names = [*a.var_names, *(f"PAD{i}" for i in range(extra.shape[1]))]
    return out


SHAPES = {
    "ensembl_ids": _ensembl,
    "case_duplicate_symbols": _case_duplicates,
    "all_zero_genes": _zero_genes,
    "counts_in_raw": _raw_counts,
    "dense_x": _dense,
    "csc_x": _csc,
    "float_integer_counts": _float_counts,
    "one_and_two_cell_types": _tiny_types,
    "imbalance_50_to_1": _imbalance,
    "genes_20000": _many_genes,
}


# a shape biossl may refuse, if the one-line error names the way out
REFUSAL_NAMES = {"counts_in_raw": "adata.raw"}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_zoo_shapes(pbmc_small, tmp_path, shape):
    adata = SHAPES[shape](pbmc_small)
    ran = run_zoo_case(adata, tmp_path)
    if shape in REFUSAL_NAMES and ran["annotate"] is not True:
        assert REFUSAL_NAMES[shape] in ran["annotate"]
    else:
        assert ran["annotate"] is True, f"{shape}: annotate refused valid data: {ran['annotate']}"


def test_zoo_refusals_are_one_line(pbmc_small, tmp_path):
    # cells without counts, and a batch of one cell: refused with one line each, nothing written
    cases = {}
    X = sp.lil_matrix(pbmc_small.X)
    X[:2] = 0
    cases["all_zero_cells"] = (AnnData(sp.csr_matrix(X), obs=pbmc_small.obs.copy(), var=pbmc_small.var.copy()), None)
    b = pbmc_small.copy()
    b.obs["batch"] = pd.Categorical(["solo", *["rest"] * (b.n_obs - 1)])
    cases["one_cell_batch"] = (b, "batch")
    for name, (adata, batch_key) in cases.items():
        (tmp_path / name).mkdir()
        ran = run_zoo_case(adata, tmp_path / name, batch_key=batch_key)
        assert ran["annotate"] is not True, f"{name} should be refused"
        assert not (tmp_path / name / "annotated.h5ad").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_zoo_real(tmp_path, name):
    import anndata as ad

    path, batch_key = REAL[name]
    if not path.exists():
        pytest.skip(f"{path} not available")
    ran = run_zoo_case(ad.read_h5ad(path), tmp_path, batch_key=batch_key)
    assert all(v is True for v in ran.values()), ran
