"""The ``biossl`` command line: exit codes, one-line errors, outputs, --force, atomic writes, speed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import biossl
from biossl import _io
from biossl.cli import main, workflow_source
from biossl.metrics import fewlabel_split, macro_f1

STEPS = "100"  # VAE budget where a test trains one


def run(*args: str | os.PathLike):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def one_error(result, *needles: str) -> str:
    """Assert exit status 1 and exactly one ``error: ...`` line on stderr (no traceback)."""
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {result.stderr!r}"
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_temp_files(directory: Path) -> None:
    leftovers = [p.name for p in directory.rglob(".*") if p.is_file()]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def biossl_command() -> list[str]:
    script = Path(sys.executable).parent / "biossl"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from biossl.cli import main; main()"]


@pytest.fixture
def h5ad(pbmc_small, tmp_path) -> Path:
    """600 pbmc3k cells written to ``in.h5ad``: counts in X, 5 labels per type in obs["labels"]."""
    path = tmp_path / "in.h5ad"
    pbmc_small.write_h5ad(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# help, version, import cost


COMMANDS = [
    [],
    ["annotate"],
    ["embed"],
    ["evaluate"],
    ["demo"],
    ["info"],
    ["summarize"],
    ["workflow"],
    ["workflow", "init"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "biossl")
def test_help_and_version_everywhere(command):
    out = ok(run(*command, "--help"))
    assert out.startswith("Usage: biossl")
    assert ok(run(*command, "--version")).strip() == f"biossl {biossl.__version__}"


def test_help_is_fast_and_imports_nothing_heavy():
    code = "import sys, biossl.cli; print([m for m in ('torch', 'scanpy', 'anndata', 'numpy') if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"biossl.cli imports {loaded.strip()} at module level"
    subprocess.run([*biossl_command(), "--help"], capture_output=True, check=True)  # warm the file cache
    start = time.perf_counter()
    proc = subprocess.run([*biossl_command(), "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "annotate" in proc.stdout
    assert elapsed < 1.0, f"biossl --help took {elapsed:.2f} s"


# ---------------------------------------------------------------------------------------------------------------
# annotate / embed


def test_annotate_writes_keys_and_leaves_input_alone(h5ad, tmp_path):
    before = digest(h5ad)
    out = tmp_path / "out" / "annotated.h5ad"  # the output directory is created
    stdout = ok(run("annotate", h5ad, "-o", out, "--labels-key", "labels"))
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("annotated 600 cells from ") and str(out) in lines[0]
    assert "9 types" in lines[0]
    assert digest(h5ad) == before, "the input file changed"
    result = ad.read_h5ad(out)
    n = result.n_obs
    assert {"biossl_label", "biossl_confidence"} <= set(result.obs)
    assert result.obsm["X_biossl"].shape[0] == n and result.obsm["biossl_proba"].shape == (n, 9)
    assert {"biossl_connectivities", "biossl_distances"} <= set(result.obsp)
    assert {"setup", "embed", "neighbors", "annotate"} <= set(result.uns["biossl"])
    assert set(result.obs["biossl_label"].astype(str)) <= {*result.uns["biossl"]["classes"], "Unknown"}
    assert oct(out.stat().st_mode & 0o777) != oct(0o600), "output kept the private mode of its temp file"
    no_temp_files(tmp_path)


def test_annotate_gives_the_api_labels(h5ad, pbmc_small, tmp_path):
    out = tmp_path / "cli.h5ad"
    ok(run("annotate", h5ad, "-o", out, "--labels-key", "labels", "--model", "vae", "--max-steps", STEPS,
           "--seed", "3", "--device", "cpu"))  # fmt: skip
    adata = pbmc_small
    biossl.pp.setup(adata)
    biossl.tl.embed(adata, model="vae", max_steps=int(STEPS), seed=3, device="cpu")
    biossl.tl.neighbors(adata)
    biossl.tl.annotate(adata, "labels")
    cli = ad.read_h5ad(out)
    np.testing.assert_allclose(cli.obsm["X_biossl"], adata.obsm["X_biossl"], rtol=1e-5, atol=1e-6)
    assert (cli.obs["biossl_label"].astype(str) == adata.obs["biossl_label"].astype(str)).all()
    # the latent agrees to 1e-5, the confidence to a few 1e-6 (3e-6 under OMP_NUM_THREADS=1)
    np.testing.assert_allclose(cli.obs["biossl_confidence"], adata.obs["biossl_confidence"], atol=1e-5)


def test_existing_output_needs_force(h5ad, tmp_path):
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"an older result")
    one_error(run("annotate", h5ad, "-o", out, "--labels-key", "labels"), "already exists", "--force")
    assert out.read_bytes() == b"an older result"
    ok(run("annotate", h5ad, "-o", out, "--labels-key", "labels", "--force"))
    assert "biossl_label" in ad.read_h5ad(out).obs


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_output_is_never_the_input(h5ad, tmp_path, spelling):
    before = digest(h5ad)
    out = {"same": h5ad, "dot": tmp_path / "." / h5ad.name, "symlink": tmp_path / "link.h5ad"}[spelling]
    if spelling == "symlink":
        out.symlink_to(h5ad)
    one_error(run("annotate", h5ad, "-o", out, "--labels-key", "labels", "--force"), "is the input file")
    assert digest(h5ad) == before


def _not_anndata(path: Path) -> None:
    with h5py.File(path, "w") as fh:
        fh["x"] = 1


BAD_FILES = {
    "missing": (lambda p: None, "does not exist"),
    "text": (lambda p: p.write_text("cell,gene\n1,2\n"), "cannot read"),
    "empty": (lambda p: p.write_bytes(b""), "cannot read"),
    "truncated": (lambda p: p.write_bytes(biossl.datasets.example_path("pbmc3k.h5ad").read_bytes()[:5000]), "cannot"),
    "hdf5 but not anndata": (_not_anndata, "cannot read"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=str)
@pytest.mark.parametrize("command", ["annotate", "embed", "evaluate", "info", "summarize"])
def test_unreadable_input_is_one_error_line(tmp_path, case, command):
    make, needle = BAD_FILES[case]
    path = tmp_path / "bad.h5ad"
    make(path)
    args = {
        "annotate": ["-o", tmp_path / "o.h5ad", "--labels-key", "labels"],
        "embed": ["-o", tmp_path / "o.h5ad"],
        "evaluate": ["--labels-key", "labels"],
        "info": [],
        "summarize": ["--tsv", tmp_path / "o.tsv"],
    }[command]
    if command == "info" and case == "directory":
        needle = "not a biossl model"
    one_error(run(command, path, *args), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.h5ad"] if case != "missing" else [])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--labels-key", "nope"], "--labels-key 'nope'"),
        (["--labels-key", "cell_type"], "nothing to annotate"),
        (["--labels-key", "labels", "--batch-key", "nope"], "--batch-key 'nope'"),
        (["--labels-key", "labels", "--layer", "nope"], "--layer 'nope'"),
        (["--labels-key", "labels", "--unknown-threshold", "2"], "between 0 and 1"),
        (["--labels-key", "labels", "--model", "vea"], "neither a model kind"),
        (["--labels-key", "labels", "--model", "pca", "--save-model", "m"], "no trained model to save"),
    ],
    ids=["labels key", "all labelled", "batch key", "layer", "threshold", "model kind", "save pca"],
)
def test_bad_options_are_one_error_line(h5ad, tmp_path, args, needle):
    before = digest(h5ad)
    one_error(run("annotate", h5ad, "-o", tmp_path / "o.h5ad", *args), needle)
    assert not (tmp_path / "o.h5ad").exists() and not (tmp_path / "m").exists()
    assert digest(h5ad) == before


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    args = ["annotate", str(bad), "-o", str(tmp_path / "o.h5ad"), "--labels-key", "x"]
    plain = subprocess.run([*biossl_command(), *args], capture_output=True, text=True)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()] and plain.stderr.startswith("error: cannot read")
    debug = subprocess.run([*biossl_command(), "--debug", *args], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ValueError" in debug.stderr
    result = run(*args[:1], *args[1:], "--debug")  # --debug after the command works too
    assert isinstance(result.exception, ValueError)


def test_annotate_subprocess_end_to_end(h5ad, tmp_path):
    out = tmp_path / "out.h5ad"
    cmd = [*biossl_command(), "annotate", str(h5ad), "-o", str(out), "--labels-key", "labels", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("annotated 600 cells")
    assert proc.stderr == ""
    assert "biossl_label" in ad.read_h5ad(out).obs


def test_embed_then_annotate_with_the_embedding_or_the_saved_model(h5ad, tmp_path):
    emb, model_dir = tmp_path / "emb.h5ad", tmp_path / "model"
    stdout = ok(run("embed", h5ad, "-o", emb, "--save-model", model_dir, "--max-steps", "50", "--device", "cpu"))
    assert stdout.startswith("embedded 600 cells") and "vae, 20-d" in stdout and str(model_dir) in stdout
    embedded = ad.read_h5ad(emb)
    assert embedded.obsm["X_biossl"].shape == (600, 20) and "biossl_label" not in embedded.obs
    assert {"model.pt", "config.json"} <= {p.name for p in model_dir.iterdir()}
    one_error(run("embed", h5ad, "-o", tmp_path / "e2.h5ad", "--save-model", model_dir), "--save-model", "exists")

    reused = tmp_path / "reused.h5ad"
    assert "reused embedding" in ok(run("annotate", emb, "-o", reused, "--labels-key", "labels", "--reuse-embedding"))
    np.testing.assert_array_equal(ad.read_h5ad(reused).obsm["X_biossl"], embedded.obsm["X_biossl"])
    one_error(run("annotate", h5ad, "-o", tmp_path / "x.h5ad", "--labels-key", "labels", "--reuse-embedding"), "embed")

    from_model = tmp_path / "from_model.h5ad"
    assert "saved vae" in ok(run("annotate", h5ad, "-o", from_model, "--labels-key", "labels", "--model", model_dir))
    result = ad.read_h5ad(from_model)
    np.testing.assert_allclose(result.obsm["X_biossl"], embedded.obsm["X_biossl"], atol=1e-5)
    assert result.uns["biossl"]["embed"]["trained"] == False  # noqa: E712 (h5ad gives numpy bools)

    info = json.loads(ok(run("info", model_dir, "--json")))
    assert info["kind"] == "model" and info["model"] == "vae" and info["n_latent"] == 20
    assert "vae, 20-d latent" in ok(run("info", model_dir))


def test_failed_write_leaves_no_partial_output_and_keeps_the_old_one(h5ad, tmp_path, monkeypatch):
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"previous result")

    def half_write(self, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_write)
    one_error(run("annotate", h5ad, "-o", out, "--labels-key", "labels", "--force"), "No space left on device")
    assert out.read_bytes() == b"previous result"
    one_error(run("embed", h5ad, "-o", tmp_path / "new.h5ad"), "No space left")
    assert not (tmp_path / "new.h5ad").exists()
    no_temp_files(tmp_path)


def test_atomic_writer(tmp_path, pbmc_small):
    path = tmp_path / "sub" / "x.h5ad"
    _io.write_h5ad_atomic(pbmc_small, path)
    assert ad.read_h5ad(path).shape == pbmc_small.shape
    with pytest.raises(FileExistsError):
        _io.write_h5ad_atomic(pbmc_small, path)
    with pytest.raises(RuntimeError), _io.atomic_path(path, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert ad.read_h5ad(path).shape == pbmc_small.shape
    _io.write_text_atomic("a\tb\n", tmp_path / "t.tsv")
    assert (tmp_path / "t.tsv").read_text() == "a\tb\n"
    no_temp_files(tmp_path)


def test_threads_limit_is_applied_and_restored(monkeypatch):
    import torch

    from biossl.cli import _threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with _threads(1):
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ


# ---------------------------------------------------------------------------------------------------------------
# evaluate / demo


def test_evaluate_scores_hidden_labels(pbmc_small, tmp_path):
    path = tmp_path / "truth.h5ad"
    pbmc_small.write_h5ad(path)
    before = digest(path)
    report = tmp_path / "scores.json"
    stdout = ok(run("evaluate", path, "--labels-key", "cell_type", "--k", "1,3", "--seeds", "0-1", "--json", report))
    assert digest(path) == before
    lines = stdout.strip().splitlines()
    assert "macro-F1" in lines[0] and lines[1].split()[0] == "1" and lines[2].split()[0] == "3"
    assert lines[-1].startswith("evaluated 600 cells, 9 types") and str(report) in lines[-1]
    doc = json.loads(report.read_text())
    assert [(r["k"], r["seed"]) for r in doc["runs"]] == [(1, 0), (1, 1), (3, 0), (3, 1)]
    assert [s["k"] for s in doc["summary"]] == [1, 3]
    assert all(0 <= r["macro_f1"] <= 1 for r in doc["runs"])

    # the same split through the API gives the same score
    adata = pbmc_small
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    labelled = fewlabel_split(truth, 3, 1)
    adata.obs["few"] = pd.Categorical(np.where(labelled, truth, None))
    biossl.pp.setup(adata)
    biossl.tl.embed(adata)
    biossl.tl.neighbors(adata)
    biossl.tl.annotate(adata, "few")
    pred = adata.obs["biossl_label"].astype(str).to_numpy()
    expected = macro_f1(truth[~labelled], pred[~labelled])
    assert doc["runs"][3]["macro_f1"] == pytest.approx(expected, abs=1e-9)
    assert doc["runs"][3]["n_labelled"] == int(labelled.sum())

    one_error(run("evaluate", path, "--labels-key", "cell_type", "--json", report), "already exists")
    assert run("evaluate", path, "--labels-key", "cell_type", "--k", "0").exit_code == 2
    assert run("evaluate", path, "--labels-key", "cell_type", "--seeds", "4-1").exit_code == 2


def test_demo_is_rerunnable(pbmc_small, tmp_path, monkeypatch):
    small = pbmc_small.copy()
    del small.obs["labels"]
    monkeypatch.setattr(biossl.datasets, "pbmc", lambda: small.copy())
    out = tmp_path / "demo"
    first = ok(run("demo", "--out", out))
    assert "macro-F1" in first and str(out / "pbmc3k_annotated.h5ad") in first
    files = {"pbmc3k_annotated.h5ad", "pbmc3k_umap.png"}
    assert {p.name for p in out.iterdir()} == files
    assert (out / "pbmc3k_umap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    second = ok(run("demo", "--out", out))
    assert first.split("macro-F1")[1].split()[0] == second.split("macro-F1")[1].split()[0]
    assert {p.name for p in out.iterdir()} == files
    result = ad.read_h5ad(out / "pbmc3k_annotated.h5ad")
    assert {"labels", "biossl_label", "biossl_confidence"} <= set(result.obs) and "X_umap" in result.obsm
    expected = fewlabel_split(small.obs["cell_type"].astype(str).to_numpy(), 5, 0)
    assert (result.obs["labels"].notna().to_numpy() == expected).all()


def test_demo_on_pbmc3k(tmp_path):
    stdout = ok(run("demo", "--out", tmp_path / "demo"))
    score = float(stdout.split("macro-F1")[1].split()[0])
    assert "2638 PBMCs from 45 labels" in stdout
    assert score > 0.8, stdout


# ---------------------------------------------------------------------------------------------------------------
# info / summarize / aggregate / workflow init


def test_info_lists_biossl_keys(h5ad, tmp_path):
    assert "biossl has not run" in ok(run("info", h5ad))
    out = tmp_path / "annotated.h5ad"
    ok(run("annotate", h5ad, "-o", out, "--labels-key", "labels"))
    text = ok(run("info", out))
    for needle in (
        "600 cells",
        "obsm['X_biossl']",
        "obsp['biossl_connectivities']",
        "obs['biossl_label']",
        "annotate:",
    ):
        assert needle in text
    doc = json.loads(ok(run("info", out, "--json")))
    assert doc["kind"] == "h5ad" and doc["n_obs"] == 600
    assert set(doc["uns"]) >= {"setup", "embed", "neighbors", "annotate", "classes"}
    assert sum(doc["obs"]["biossl_label"].values()) == 600


def test_summarize_and_aggregate(h5ad, tmp_path):
    out = tmp_path / "annotated.h5ad"
    ok(run("annotate", h5ad, "-o", out, "--labels-key", "labels"))
    one_error(run("summarize", h5ad, "--tsv", tmp_path / "x.tsv"), "biossl annotate")
    tsv, labels, png = tmp_path / "r" / "s.tsv", tmp_path / "r" / "l.tsv", tmp_path / "r" / "u.png"
    stdout = ok(run("summarize", out, "--tsv", tsv, "--labels-tsv", labels, "--png", png, "--truth-key", "cell_type",
                    "--sample", "s1"))  # fmt: skip
    assert stdout.startswith("summarized s1: 600 cells") and "macro-F1" in stdout
    row = pd.read_csv(tsv, sep="\t")
    assert len(row) == 1 and row.loc[0, "sample"] == "s1" and 0 <= row.loc[0, "macro_f1"] <= 1
    assert row.loc[0, "n_labelled"] == 42 and row.loc[0, "n_cells"] == 600
    per_label = pd.read_csv(labels, sep="\t")
    assert per_label["n_cells"].sum() == 600 and per_label["n_labelled"].sum() == 42
    assert png.read_bytes()[:4] == b"\x89PNG"
    one_error(run("summarize", out, "--tsv", tsv), "already exists")

    both = tmp_path / "all.tsv"
    ok(run("aggregate", tsv, tsv, "-o", both))
    assert len(pd.read_csv(both, sep="\t")) == 2
    one_error(run("aggregate", tsv, labels, "-o", tmp_path / "mixed.tsv"), "other columns")
    no_temp_files(tmp_path)


def test_workflow_init_copies_the_workflow(tmp_path):
    dest = tmp_path / "wf"
    stdout = ok(run("workflow", "init", dest))
    assert str(dest) in stdout
    src = workflow_source()
    for rel in ("Snakefile", "config.yaml", "schemas/config.schema.yaml", "envs/biossl.yaml",
                "profiles/slurm/config.yaml", "profiles/local/config.yaml"):  # fmt: skip
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
    (dest / "config.yaml").write_text("samples: {mine: mine.h5ad}\nlabels_key: labels\n")
    one_error(run("workflow", "init", dest), "already exist", "--force")
    assert "mine.h5ad" in (dest / "config.yaml").read_text()
    ok(run("workflow", "init", dest, "--force"))
    assert (dest / "config.yaml").read_bytes() == (src / "config.yaml").read_bytes()
    no_temp_files(dest)
