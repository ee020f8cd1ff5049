"""The Snakemake workflow: lint, schema validation, dry run, and a real two-sample run with a failure and a rerun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from biossl.cli import workflow_source
from biossl.metrics import fewlabel_split

pytest.importorskip("snakemake")

WORKFLOW = workflow_source()
SNAKEFILE = WORKFLOW / "Snakefile"
N_CELLS = 600


def snakemake(workdir: Path, *args: str, configfile: Path | None = None) -> subprocess.CompletedProcess:
    """Run snakemake on the shipped Snakefile in ``workdir``, with this interpreter's ``biossl`` on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=workdir)


def planned_commands(proc: subprocess.CompletedProcess) -> list[list[str]]:
    """The ``biossl`` commands of a dry run with ``-p``, each split into words."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line.split("Shell command:", 1)[1].split() for line in lines if "Shell command: biossl " in line]


def write_config(path: Path, **entries) -> Path:
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.fixture(scope="module")
def samples(_pbmc_full, tmp_path_factory) -> dict[str, Path]:
    """Two disjoint 600-cell pbmc3k samples with 5 labels per type in obs["labels"] (truth in cell_type)."""
    directory = tmp_path_factory.mktemp("samples")
    order = np.random.default_rng(1).permutation(_pbmc_full.n_obs)
    paths = {}
    for i, name in enumerate(("donor_a", "donor_b")):
        adata = _pbmc_full[np.sort(order[i * N_CELLS : (i + 1) * N_CELLS])].copy()
        truth = adata.obs["cell_type"].astype(str)
        adata.obs["labels"] = pd.Categorical(truth.where(fewlabel_split(truth.to_numpy(), 5, 0)))
        paths[name] = directory / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    return paths


def test_lint(tmp_path):
    proc = snakemake(tmp_path, "--lint", configfile=WORKFLOW / "config.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_every_rule_has_log_threads_resources_and_conda():
    text = SNAKEFILE.read_text()
    rules = [block for block in text.split("\nrule ")[1:] if not block.startswith("all:")]
    assert {b.split(":")[0] for b in rules} == {"embed", "annotate", "report", "aggregate"}
    for block in rules:
        for directive in (
            "log:",
            "threads:",
            "resources:",
            "mem_mb=",
            "runtime=",
            'conda:\n        "envs/biossl.yaml"',
        ):
            assert directive in block, f"rule {block.split(':')[0]} lacks {directive}"
        assert "biossl " in block.split("shell:")[1], "rules call the biossl CLI"
    for profile in ("local", "slurm"):
        assert yaml.safe_load((WORKFLOW / "profiles" / profile / "config.yaml").read_text())
    slurm = yaml.safe_load((WORKFLOW / "profiles" / "slurm" / "config.yaml").read_text())
    assert slurm["executor"] == "slurm" and {"mem_mb", "runtime"} <= set(slurm["default-resources"])


def test_dry_run(samples, tmp_path):
    config = write_config(
        tmp_path / "config.yaml", samples={k: str(v) for k, v in samples.items()}, labels_key="labels"
    )
    proc = snakemake(tmp_path, "-n", "--cores", "2", configfile=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    for rule, count in (("embed", 2), ("annotate", 2), ("report", 2), ("aggregate", 1)):
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), f"{rule} x{count} not planned"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("limit", "backed"), [(0, True), (2000, False), (None, False)])
def test_large_inputs_are_read_backed(samples, tmp_path, limit, backed):
    """Samples above ``backed_above_mb`` on disk get ``--backed`` in the embed and annotate commands."""
    config = write_config(
        tmp_path / "config.yaml", samples={k: str(v) for k, v in samples.items()}, labels_key="labels",
        backed_above_mb=limit,
    )  # fmt: skip
    commands = planned_commands(snakemake(tmp_path, "-n", "-p", "--cores", "2", configfile=config))
    planned = [c for c in commands if c[1] in ("embed", "annotate")]
    assert len(planned) == 4 and all(("--backed" in c) is backed for c in planned), planned


def test_samples_are_mapped_onto_a_reference(samples, tmp_path):
    """With map.reference, each sample is mapped onto it (no embed job, no labels_key needed), then reported."""
    from click.testing import CliRunner

    from biossl.cli import main

    refdir = tmp_path / "ref"
    args = ["fit-reference", str(samples["donor_a"]), "--labels-key", "cell_type", "-o", str(refdir)]
    result = CliRunner().invoke(main, [*args, "--max-steps", "60"])
    assert result.exit_code == 0, result.output
    config = write_config(
        tmp_path / "config.yaml", samples={"donor_b": str(samples["donor_b"])}, truth_key="cell_type",
        map={"reference": str(refdir), "mapping_threshold": 0.2, "fine_tune_steps": 20},
    )  # fmt: skip
    plan = snakemake(tmp_path, "-n", "-p", "--cores", "2", configfile=config)
    commands = planned_commands(plan)
    assert [c[1] for c in commands] == ["annotate", "summarize"], commands  # and the aggregate, in a subshell
    assert not any(line.split()[:1] == ["embed"] for line in plan.stdout.splitlines()), "embed was planned"
    annotate = commands[0]
    assert annotate[annotate.index("--reference") + 1] == str(refdir) and "--labels-key" not in annotate
    assert annotate[annotate.index("--mapping-threshold") + 1] == "0.2"
    assert annotate[annotate.index("--max-steps") + 1] == "20"
    (tmp_path / "defaults").mkdir()  # a directory of its own: the Snakefile also reads config.yaml from its workdir
    defaults = write_config(
        tmp_path / "defaults" / "config.yaml", samples={"donor_b": str(samples["donor_b"])},
        map={"reference": str(refdir)},
    )  # fmt: skip
    plan = snakemake(tmp_path / "defaults", "-n", "-p", "--cores", "2", configfile=defaults)
    annotate = next(c for c in planned_commands(plan) if c[1] == "annotate")
    assert "--mapping-threshold" not in annotate and "--max-steps" not in annotate  # map_query's own defaults
    proc = snakemake(tmp_path, "--cores", "2", configfile=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mapped = ad.read_h5ad(tmp_path / "results" / "donor_b" / "annotated.h5ad")
    assert mapped.uns["biossl"]["map_query"]["hard_threshold"] and "biossl_mapping_score" in mapped.obs
    summary = pd.read_csv(tmp_path / "results" / "summary.tsv", sep="\t")
    assert summary["sample"].tolist() == ["donor_b"]


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ({"samples": {"a": "a.h5ad"}}, "labels_key"),
        ({"samples": {"a": "a.h5ad"}, "labels_key": "labels", "embed": {"modle": "vae"}}, "modle"),
        ({"samples": {"a": "a.h5ad"}, "labels_key": "labels", "annotate": {"unknown_threshold": 2}}, "maximum"),
        ({"samples": {}, "labels_key": "labels"}, "samples"),
        ({"samples": {"a": "a.h5ad"}, "map": {"reference": None}}, "labels_key"),
        ({"samples": {"a": "a.h5ad"}, "map": {"reference": "ref", "mapping_threshold": "high"}}, "high"),
    ],
    ids=["no labels_key", "misspelt option", "threshold > 1", "no samples", "no labels, no reference", "bad threshold"],
)
def test_config_is_validated(tmp_path, entries, needle):
    proc = snakemake(tmp_path, "-n", configfile=write_config(tmp_path / "config.yaml", **entries))
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr


def test_real_run_failure_leaves_no_partial_output_and_rerun_completes(samples, tmp_path):
    broken = tmp_path / "donor_b.h5ad"
    broken.write_text("not an h5ad file")
    config = write_config(
        tmp_path / "config.yaml",
        samples={"donor_a": str(samples["donor_a"]), "donor_b": broken.name},
        labels_key="labels",
        truth_key="cell_type",
        resources={"embed": {"threads": 1}, "annotate": {"threads": 1}},
    )
    first = snakemake(tmp_path, "--cores", "2", "--keep-going", configfile=config)
    assert first.returncode != 0, "a broken sample must fail the run"
    results = tmp_path / "results"
    assert (results / "donor_a" / "umap.png").exists(), first.stderr
    assert not (results / "donor_b").exists(), "the failed job left output behind"
    assert not (results / "summary.tsv").exists()
    assert "error: cannot read" in (results / "logs" / "embed" / "donor_b.log").read_text()
    done_a = {p: p.stat().st_mtime_ns for p in (results / "donor_a").iterdir()}

    broken.write_bytes(samples["donor_b"].read_bytes())
    second = snakemake(tmp_path, "--cores", "2", configfile=config)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = pd.read_csv(results / "summary.tsv", sep="\t")
    assert list(summary["sample"]) == ["donor_a", "donor_b"]
    assert (summary["n_cells"] == N_CELLS).all() and (summary["n_types"] == 9).all()
    assert (summary["macro_f1"] > 0.4).all(), summary
    labels = pd.read_csv(results / "labels.tsv", sep="\t")
    assert labels.groupby("sample")["n_cells"].sum().tolist() == [N_CELLS, N_CELLS]
    for name in samples:
        for file in ("embedded.h5ad", "annotated.h5ad", "summary.tsv", "labels.tsv", "umap.png"):
            assert (results / name / file).stat().st_size > 0
    assert {p: p.stat().st_mtime_ns for p in (results / "donor_a").iterdir()} == done_a, "donor_a was redone"
    third = snakemake(tmp_path, "--cores", "2", configfile=config)
    assert third.returncode == 0 and "Nothing to be done" in third.stdout + third.stderr
    leftovers = [p for p in results.rglob(".*") if p.is_file()]
    assert not leftovers, leftovers
