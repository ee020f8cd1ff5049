"""The bad-input catalogue as code: every row of ``README.md`` is a :class:`Case` here.

Each case builds its bad input in a fresh directory, runs the API call, CLI command, workflow or model
load on it, and returns an :class:`Outcome`: the message the user sees and a list of problems (a
traceback, an exception other than ``ValueError``, a multi-line message, a modified input, a partial
output). ``make_catalogue.py`` writes the table from these outcomes; ``tests/test_robustness.py`` runs
every case and checks it against the table, so the table cannot drift from what users get.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # conftest's data simulator and AnnData snapshot, also outside pytest
    sys.path.insert(0, str(TESTS))

from conftest import assert_same, simulate, snapshot  # noqa: E402

import biossl  # noqa: E402

REPO = TESTS.parent
ROBUSTNESS_TEST = "tests/test_robustness.py::test_catalogue"


@dataclass
class Outcome:
    """What one run of a case gave: the user's message (paths normalised) and what went wrong."""

    message: str
    error: bool = True
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    """One catalogue row."""

    id: str
    surface: str  # API, CLI, config or model
    input: str
    run: Callable[[Path], Outcome]
    needles: tuple[str, ...] = ()
    also: str = ""  # an existing test that covers the same input
    known: str = ""  # a known bug, reported but not fixed yet: the test is a strict xfail until it is

    @property
    def test(self) -> str:
        own = f"`{ROBUSTNESS_TEST}[{self.id}]`"
        return own + (f", `{self.also}`" if self.also else "")


# ---------------------------------------------------------------------------------------------------------------
# shared plumbing


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def compare_trees(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Problems: input files changed or removed, files left behind by a failed run."""
    problems = [f"input file {k} was modified" for k in before if k in after and after[k] != before[k]]
    problems += [f"input file {k} was removed" for k in before if k not in after]
    problems += [f"failed run left {k} behind" for k in after if k not in before]
    return problems


def normalise(text: str, tmp: Path) -> str:
    """Replace the case's directory and the repository path so the message is the same on every run."""
    for real in {str(tmp), os.path.realpath(tmp)}:
        text = text.replace(real, "<tmp>")
    return text.replace(str(REPO), "<repo>")


def check_value_error(err: BaseException) -> list[str]:
    """The house rule for bad input: a one-line ValueError, not chained onto another exception."""
    problems = []
    if type(err) is not ValueError:
        problems.append(f"raised {type(err).__name__}, not ValueError")
    msg = str(err)
    if not msg or "\n" in msg:
        problems.append("message is empty or not one line")
    if err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        problems.append(f"chained exception (users see two tracebacks): {err.__context__!r}")
    return problems


def api_case(make: Callable[[Path], tuple], call: Callable, *, accept: Callable | None = None):
    """A case on the Python API: ``make(tmp)`` -> (adata, kwargs); ``call(adata, **kwargs)`` must raise ValueError.

    With ``accept`` the input is not an error: the call must succeed and ``accept(adata)`` returns a
    description of the result (or raises AssertionError).
    """

    def run(tmp: Path) -> Outcome:
        adata, kwargs = make(tmp)
        in_memory = isinstance(adata, AnnData) and not adata.isbacked
        before = snapshot(adata) if in_memory else None
        files = hash_tree(tmp)
        problems: list[str] = []
        try:
            result = call(adata, **kwargs)
        except Exception as err:  # any exception is recorded; only a one-line ValueError passes
            message, error = f"{type(err).__name__}: {err}".splitlines()[0], True
            problems += check_value_error(err)
            if accept is not None:
                problems.append("a valid input was refused")
        else:
            error = False
            if accept is None:
                message = "accepted (no error)"
                problems.append("bad input was accepted without an error")
            else:
                try:
                    message = "accepted: " + accept(result if isinstance(result, AnnData) else adata)
                except AssertionError as err:
                    message = "accepted, but wrong"
                    problems.append(f"accepted, but the result is wrong: {err}")
        if error and before is not None:
            try:
                assert_same(adata, before)
            except AssertionError as err:
                problems.append(str(err).splitlines()[0])
        if isinstance(adata, AnnData) and adata.isbacked:
            adata.file.close()
        problems += compare_trees(files, hash_tree(tmp))
        return Outcome(normalise(message, tmp), error, problems)

    return run


SUBPROCESS = "BIOSSL_CATALOGUE_SUBPROCESS"  # set to run CLI cases as real processes (make_catalogue.py --subprocess)


@dataclass
class _ProcessResult:
    """The parts of click's ``Result`` the checks use, from a real process."""

    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _run_in_subprocess(args: list[str]) -> _ProcessResult:
    script = Path(sys.executable).parent / "biossl"
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from biossl.cli import main; main()"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return _ProcessResult(proc.returncode, proc.stdout, proc.stderr)


def cli_case(make: Callable[[Path], list], *, accept: Callable[[Path, str], str] | None = None):
    """A case on the CLI, run in-process with click's runner: exit 1, one ``error:`` line, no file touched."""
    from click.testing import CliRunner

    from biossl.cli import main

    def run(tmp: Path) -> Outcome:
        args = [str(a) for a in make(tmp)]
        before = hash_tree(tmp)
        result = _run_in_subprocess(args) if os.environ.get(SUBPROCESS) else CliRunner().invoke(main, args)
        problems: list[str] = []
        lines = result.stderr.strip().splitlines()
        after = hash_tree(tmp)
        if accept is not None:
            if result.exit_code != 0:
                problems.append(f"a valid input was refused: {result.stderr.strip()[:300]}")
                return Outcome(normalise(result.stderr.strip(), tmp), True, problems)
            problems += [p for p in compare_trees(before, after) if "left" not in p]
            try:
                message = "accepted: " + accept(tmp, result.stdout)
            except AssertionError as err:
                message = "accepted, but wrong"
                problems.append(f"accepted, but the result is wrong: {err}")
            return Outcome(normalise(message, tmp), False, problems)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"uncaught {type(result.exception).__name__} (a traceback for the user)")
        if "Traceback" in result.output:
            problems.append("traceback in the output")
        if result.exit_code != 1:
            problems.append(f"exit code {result.exit_code}, not 1")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"stderr is not one 'error:' line: {result.stderr[:300]!r}")
        if result.stdout.strip():
            problems.append(f"stdout is not empty: {result.stdout[:200]!r}")
        problems += compare_trees(before, after)
        if (tmp / MARKER).exists():
            problems.append("a pickled payload was executed")
        message = lines[0] if lines else result.output.strip()[:300]
        return Outcome(normalise(message, tmp), True, problems)

    return run


# ---------------------------------------------------------------------------------------------------------------
# data


_SIM: AnnData | None = None


def sim() -> AnnData:
    """360 simulated cells × 120 genes (3 types, 2 batches, 5 labels per type in obs['labels']); a fresh copy."""
    global _SIM
    if _SIM is None:
        _SIM = simulate()
    return _SIM.copy()


def with_graph() -> AnnData:
    adata = sim()
    biossl.tl.embed(adata, model="pca", n_latent=10)
    biossl.tl.neighbors(adata)
    return adata


def lognorm(a: AnnData) -> AnnData:
    X = a.X.toarray()
    a.X = sp.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32))
    return a


def scaled(a: AnnData) -> AnnData:
    X = np.log1p(a.X.toarray())
    a.X = ((X - X.mean(0)) / (X.std(0) + 1e-8)).astype(np.float32)
    return a


def set_entry(a: AnnData, value: float) -> AnnData:
    X = a.X.toarray()
    X[3, 4] = value
    a.X = X
    return a


def zero_cells(a: AnnData) -> AnnData:
    X = a.X.toarray()
    X[[2, 11, 40]] = 0
    a.X = sp.csr_matrix(X)
    return a


def one_gene(a: AnnData) -> AnnData:
    X = np.zeros(a.shape, dtype=np.float32)
    X[:, 0] = 1 + np.arange(a.n_obs) % 5
    a.X = sp.csr_matrix(X)
    return a


def rename(a: AnnData, axis: str) -> AnnData:
    names = getattr(a, axis).tolist()
    names[10] = names[3]
    setattr(a, axis, names)
    return a


def labels(a: AnnData, values) -> AnnData:
    a.obs["labels"] = pd.Categorical(np.asarray(values, dtype=object))
    return a


def batch_nan(a: AnnData) -> AnnData:
    col = a.obs["batch"].astype(object)
    col.iloc[[5, 9]] = np.nan
    a.obs["batch"] = col.astype("category")
    return a


def lonely_batch(a: AnnData) -> AnnData:
    a.obs["batch"] = a.obs["batch"].cat.add_categories("lonely")
    a.obs.iloc[7, a.obs.columns.get_loc("batch")] = "lonely"
    return a


def unknown_class(a: AnnData) -> AnnData:
    lab = a.obs["labels"].astype(object).to_numpy()
    lab[np.flatnonzero(pd.isna(lab))[:4]] = "Unknown"
    lab[pd.isna(lab)] = "unlabelled"
    return labels(a, lab)


def one_labelled_alpha(a: AnnData) -> AnnData:
    lab = a.obs["labels"].astype(object).to_numpy()
    lab[np.flatnonzero(lab == "alpha")[1:]] = None
    return labels(a, lab)


def backed(tmp: Path, adata: AnnData | None = None) -> AnnData:
    import anndata as ad

    (sim() if adata is None else adata).write_h5ad(tmp / "backed.h5ad")
    return ad.read_h5ad(tmp / "backed.h5ad", backed="r")


def valid_annotation(a: AnnData) -> str:
    classes = list(a.uns["biossl"]["classes"])
    predicted = set(a.obs["biossl_label"].astype(str))
    assert predicted <= {*classes, "Unknown"}, f"labels outside the classes: {predicted}"
    proba = a.obsm["biossl_proba"]
    assert proba.shape == (a.n_obs, len(classes)) and np.isfinite(proba).all()
    return f"{len(classes)} classes, {int((a.obs['biossl_label'] == 'Unknown').sum())} Unknown"


def _setup(a, **kw):
    return biossl.pp.setup(a, **kw)


def _embed_pca(a, **kw):
    return biossl.tl.embed(a, **{"model": "pca", **kw})


def _embed_vae(a, **kw):
    return biossl.tl.embed(a, **{"model": "vae", "max_steps": 5, "device": "cpu", **kw})


def _neighbors(a, **kw):
    return biossl.tl.neighbors(a, **kw)


def _annotate(a, **kw):
    return biossl.tl.annotate(a, kw.pop("labels_key", "labels"), **kw)


def data(fn: Callable[[AnnData], AnnData], **kw) -> Callable[[Path], tuple]:
    return lambda tmp: (fn(sim()), kw)


def graph(fn: Callable[[AnnData], AnnData] = lambda a: a, **kw) -> Callable[[Path], tuple]:
    return lambda tmp: (fn(with_graph()), kw)


# ---------------------------------------------------------------------------------------------------------------
# model directories


_CACHE: dict[str, Path] = {}


def trained(kind: str) -> Path:
    """A tiny VAE (``"model"``) or reference (``"reference"``) trained once on the simulated data; do not modify."""
    if kind not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="biossl-catalogue-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # one per process; it used to outlive every run
        adata = sim()
        if kind == "model":
            biossl.tl.embed(adata, model="vae", max_steps=5, device="cpu", save_model=root / "model")
        else:
            ref = biossl.tl.fit_reference(adata, "cell_type", max_steps=5, device="cpu")
            ref.save(root / "model")
        _CACHE[kind] = root / "model"
    return _CACHE[kind]


class Payload:
    """Unpickling this creates the directory ``marker``: it stands for any code a pickle could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


MARKER = "pwned"  # created inside the case directory if a payload ever runs


def model_dir(tmp: Path, kind: str = "model", damage: Callable[[Path], None] | None = None) -> Path:
    path = Path(shutil.copytree(trained(kind), tmp / "model"))
    if damage is not None:
        damage(path)
    return path


def edit_config(**changes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        for key, value in changes.items():
            if value is _DELETE:
                del config[key]
            else:
                config[key] = value
        (path / "config.json").write_text(json.dumps(config))

    return damage


_DELETE = object()


def pickle_weights(path: Path) -> None:
    import torch

    torch.save({"encoder.0.weight": Payload(path.parent / MARKER)}, path / "model.pt")


def pickle_reference(path: Path) -> None:
    import pickle

    (path / "reference.npz").write_bytes(pickle.dumps(Payload(path.parent / MARKER)))


def object_array_reference(path: Path) -> None:
    latent = np.empty(3, dtype=object)
    latent[:] = [Payload(path.parent / MARKER)] * 3
    np.savez(path / "reference.npz", latent=latent, codes=np.zeros(3, dtype=np.int64))


def load_model(tmp: Path, kind: str, damage: Callable[[Path], None] | None) -> Outcome:
    """Load a (damaged) model directory with tl.embed (models) or Reference.load (references)."""
    path = model_dir(tmp, kind, damage)
    if kind == "model":
        outcome = api_case(lambda t: (sim(), {"model": path}), biossl.tl.embed)(tmp)
    else:
        outcome = api_case(lambda t: (None, {}), lambda _a: biossl.Reference.load(path, device="cpu"))(tmp)
    if (tmp / MARKER).exists():
        outcome.problems.append("a pickled payload in the model directory was executed")
    return outcome


def model_case(kind: str, damage: Callable[[Path], None] | None) -> Callable[[Path], Outcome]:
    return lambda tmp: load_model(tmp, kind, damage)


def mismatched_genes(tmp: Path) -> tuple:
    path = model_dir(tmp)
    query = sim()
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    return query, {"model": path}


# ---------------------------------------------------------------------------------------------------------------
# CLI


def h5ad(tmp: Path, adata: AnnData | None = None, name: str = "in.h5ad") -> Path:
    path = tmp / name
    (sim() if adata is None else adata).write_h5ad(path)
    return path


def annotate_args(tmp: Path, adata: AnnData | None = None, *extra) -> list:
    return ["annotate", h5ad(tmp, adata), "-o", tmp / "out.h5ad", "--labels-key", "labels", *extra]


def truncated(tmp: Path) -> list:
    path = tmp / "in.h5ad"
    path.write_bytes(h5ad(tmp, name="full.h5ad").read_bytes()[:5000])
    (tmp / "full.h5ad").unlink()
    return ["annotate", path, "-o", tmp / "out.h5ad", "--labels-key", "labels"]


def not_anndata(tmp: Path) -> list:
    import h5py

    with h5py.File(tmp / "in.h5ad", "w") as fh:
        fh["x"] = 1
    return ["annotate", tmp / "in.h5ad", "-o", tmp / "out.h5ad", "--labels-key", "labels"]


def output_under_a_file(tmp: Path) -> list:
    (tmp / "results").write_text("a file where the output directory should be")
    return ["annotate", h5ad(tmp), "-o", tmp / "results" / "out.h5ad", "--labels-key", "labels"]


def read_only_input(tmp: Path) -> list:
    path = h5ad(tmp)
    path.chmod(0o444)
    return ["annotate", path, "-o", tmp / "out.h5ad", "--labels-key", "labels"]


def wrote_labels(tmp: Path, stdout: str) -> str:
    import anndata as ad

    out = ad.read_h5ad(tmp / "out.h5ad")
    assert "biossl_label" in out.obs and out.n_obs == 360
    return stdout.strip().split(" in ")[0]


# ---------------------------------------------------------------------------------------------------------------
# workflow config


def config_case(entries: dict | str) -> Callable[[Path], Outcome]:
    """Dry-run the shipped Snakefile with a bad config.yaml: it must stop before any job, naming the problem."""

    def run(tmp: Path) -> Outcome:
        from biossl.cli import workflow_source

        h5ad(tmp, name="a.h5ad")
        config = tmp / "config.yaml"
        if isinstance(entries, str):
            config.write_text(entries)
        else:
            import yaml

            config.write_text(yaml.safe_dump(entries))
        before = hash_tree(tmp)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(workflow_source() / "Snakefile"), "-d", str(tmp)]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = subprocess.run([*cmd, "--configfile", str(config), "-n"], capture_output=True, text=True, env=env)
        text = proc.stdout + proc.stderr
        problems = []
        if proc.returncode == 0:
            problems.append("snakemake accepted the config")
        if "Traceback" in text:
            problems.append("traceback in snakemake's output")
        problems += compare_trees(before, {k: v for k, v in hash_tree(tmp).items() if not k.startswith(".snakemake")})
        found = [ln.strip() for ln in text.splitlines() if re.match(r"\s*(ValidationError|\w+Exception)\b", ln)]
        message = found[0] if found else (text.strip().splitlines() or ["(no output)"])[-1]
        if message.startswith("MissingInputException"):  # the next lines name the file
            lines = text.splitlines()
            i = next(i for i, ln in enumerate(lines) if ln.strip() == message)
            message = " ".join(ln.strip() for ln in lines[i : i + 6] if "affected files" not in ln)
        return Outcome(normalise(message, tmp), True, problems)

    return run


BASE = {"samples": {"a": "a.h5ad"}, "labels_key": "labels"}


def _both_lognorm(a: AnnData) -> AnnData:
    lognorm(a)
    a.layers["counts"] = a.X.copy()
    return a


def _embedded(a: AnnData) -> AnnData:
    biossl.tl.embed(a, model="pca", n_latent=3)
    return a


def _nan_rep(a: AnnData) -> AnnData:
    a.obsm["X_biossl"][0, 0] = np.nan
    return a


def _no_graph(a: AnnData) -> AnnData:
    del a.obsp["biossl_connectivities"], a.obsp["biossl_distances"]
    return a


def _load_reference(tmp: Path) -> Outcome:
    path = model_dir(tmp, "model")
    (path / "reference.npz").write_bytes(b"")  # present, so the missing config entry is what is reported
    return api_case(lambda t: (None, {}), lambda _a: biossl.Reference.load(path, device="cpu"))(tmp)


def gmt(content: str | bytes, name: str = "sets.gmt") -> Callable[[Path], tuple]:
    """A GMT file with ``content`` in the case directory, passed as ``gene_sets``."""

    def make(tmp: Path) -> tuple:
        path = tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return sim(), {"gene_sets": path}

    return make


def _genes(adata: AnnData, **kwargs):
    return biossl.tl.gene_function(adata, kwargs.pop("gene_sets"), graph="coexpression", **kwargs)


def _genes_cli(tmp: Path) -> list:
    sets = _write(tmp / "s.gmt", b"S1\td\tFOO\tBAR\n")
    return ["genes", h5ad(tmp), "--gene-sets", sets, "-o", tmp / "g.tsv", "--graph", "coexpression"]


def _reference_args(tmp: Path, damage: Callable[[Path], None], command: str = "annotate") -> list:
    ref = model_dir(tmp, "reference", damage)
    return [command, h5ad(tmp), "-o", tmp / "out.h5ad", "--reference", ref]


def _mkdir(path: Path) -> Path:
    path.mkdir()
    (path / "keep.txt").write_text("an older reference")
    return path


def _map(adata: AnnData, **kwargs) -> None:
    return biossl.tl.map_query(adata, trained("reference"), device="cpu", **kwargs)


def _write(path: Path, content: bytes, command: str | None = None) -> list | Path:
    path.write_bytes(content)
    if command is None:
        return path
    out = ["-o", path.parent / "out.h5ad"] + (["--labels-key", "labels"] if command == "annotate" else [])
    return [command, path, *out]


def _touch(path: Path) -> list:
    path.write_bytes(b"an older result")
    return []


def _twelve_cells() -> AnnData:
    a = sim()
    idx = np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:4] for t in ("alpha", "beta", "gamma")])
    a = a[idx].copy()
    return labels(a, np.where(np.arange(12) % 4 == 0, a.obs["cell_type"].astype(str), None))


def _ensembl() -> AnnData:
    a = sim()
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    return a


# ---------------------------------------------------------------------------------------------------------------
# the catalogue

S, E, N, A = _setup, _embed_pca, _neighbors, _annotate
BI = "tests/test_bad_inputs.py"
MI = "tests/test_model_io.py"
CL = "tests/test_cli.py"
WF = "tests/test_workflow.py"

CASES: list[Case] = [
    # --- counts and matrix ---------------------------------------------------------------------------
    Case(
        "log-normalised-X",
        "API",
        "log-normalised values in `X`, no counts anywhere (`pp.setup`)",
        api_case(data(lognorm), S),
        ("non-integer", "layers['counts']"),
        f"{BI}::test_bad_data",
    ),
    Case(
        "negative-X",
        "API",
        "scaled data with negative values in `X` (`pp.setup`)",
        api_case(data(scaled), S),
        ("negative",),
        f"{BI}::test_bad_data",
    ),
    Case(
        "NaN-in-X",
        "API",
        "a NaN in `X` (`pp.setup`)",
        api_case(lambda t: (set_entry(sim(), np.nan), {}), S),
        ("NaN",),
        f"{BI}::test_bad_data",
    ),
    Case(
        "inf-in-X",
        "API",
        "an inf in `X` (`tl.embed`)",
        api_case(lambda t: (set_entry(sim(), np.inf), {}), E),
        ("inf",),
        f"{BI}::test_bad_data",
    ),
    Case(
        "counts-layer-not-counts",
        "API",
        "log data in `X` and in `layers['counts']` (`pp.setup`)",
        api_case(lambda t: (_both_lognorm(sim()), {}), S),
        ("layers['counts']", "non-integer"),
    ),
    Case(
        "layer-missing",
        "API",
        "`layer='raw_counts'` that does not exist (`pp.setup`)",
        api_case(data(lambda a: a, layer="raw_counts"), S),
        ("'raw_counts'",),
        f"{BI}::test_bad_data",
    ),
    Case(
        "X-is-strings",
        "API",
        "`X` of strings (object dtype) (`pp.setup`)",
        api_case(lambda t: (AnnData(X=np.array([["1", "2"], ["3", "4"]], dtype=object)), {}), S),
        ("dtype object",),
    ),
    Case(
        "X-is-bool",
        "API",
        "`X` of booleans (`pp.setup`)",
        api_case(lambda t: (AnnData(X=np.eye(4, dtype=bool)), {}), S),
        ("dtype bool",),
    ),
    Case(
        "zero-count-cells",
        "API",
        "3 cells with no counts at all (`tl.embed`)",
        api_case(data(zero_cells), E),
        ("3 cells", "no counts"),
        f"{BI}::test_bad_data",
    ),
    Case(
        "all-zero-genes",
        "API",
        "every gene but one all-zero (`pp.setup`)",
        api_case(data(one_gene), S),
        ("only 1 genes",),
    ),
    Case(
        "duplicated-var-names",
        "API",
        "duplicated gene names (`pp.setup`)",
        api_case(data(lambda a: rename(a, "var_names")), S),
        ("var_names", "'gene3'"),
        f"{BI}::test_bad_data",
    ),
    Case(
        "duplicated-obs-names",
        "API",
        "duplicated cell names (`tl.embed`)",
        api_case(data(lambda a: rename(a, "obs_names")), E),
        ("obs_names", "'cell3'"),
        f"{BI}::test_bad_data",
    ),
    Case(
        "empty-anndata",
        "API",
        "an empty AnnData, shape (0, 0) (`pp.setup`)",
        api_case(lambda t: (AnnData(), {}), S),
        ("(0, 0)",),
        f"{BI}::test_too_few_cells",
    ),
    Case(
        "one-cell",
        "API",
        "an AnnData with one cell (`tl.embed`)",
        api_case(lambda t: (sim()[:1].copy(), {}), E),
        ("(1, 120)",),
        f"{BI}::test_too_few_cells",
    ),
    Case(
        "not-anndata",
        "API",
        "a pandas DataFrame instead of an AnnData (`pp.setup`)",
        api_case(lambda t: (pd.DataFrame(np.ones((3, 3))), {}), S),
        ("AnnData", "DataFrame"),
    ),
    Case(
        "backed-read-only",
        "API",
        "an h5ad opened with `backed='r'` (`pp.setup`): valid input, file untouched",
        api_case(lambda t: (backed(t), {}), S, accept=lambda a: f"{int(a.var['biossl_hvg'].sum())} genes selected"),
    ),
    Case(
        "backed-copy",
        "API",
        "`copy=True` on an AnnData opened with `backed='r'` (`pp.setup`)",
        api_case(lambda t: (backed(t), {"copy": True}), S),
        ("copy=True", "backed"),
    ),
    Case(
        "backed-log-data",
        "API",
        "log-normalised `X` in an h5ad opened with `backed='r'` (`pp.setup`)",
        api_case(lambda t: (backed(t, lognorm(sim())), {}), S),
        ("backed", "non-integer"),
    ),
    Case(
        "n_top_genes-1",
        "API",
        "`n_top_genes=1` (`pp.setup`)",
        api_case(data(lambda a: a, n_top_genes=1), S),
        ("n_top_genes",),
        f"{BI}::test_bad_data",
    ),
    # --- batches --------------------------------------------------------------------------------------
    Case(
        "batch_key-missing",
        "API",
        "`batch_key='donor'` not in `obs` (`pp.setup`)",
        api_case(data(lambda a: a, batch_key="donor"), S),
        ("batch_key='donor'",),
        f"{BI}::test_bad_data",
    ),
    Case(
        "batch_key-NaN",
        "API",
        "`obs['batch']` with 2 missing values (`tl.embed`)",
        api_case(data(batch_nan, batch_key="batch"), _embed_vae),
        ("2 missing",),
        f"{BI}::test_bad_data",
    ),
    Case(
        "one-cell-batch",
        "API",
        "a batch with a single cell (`pp.setup`)",
        api_case(data(lonely_batch, batch_key="batch"), S),
        ("lonely", "single cell"),
        f"{BI}::test_bad_data",
    ),
    # --- embedding options ----------------------------------------------------------------------------
    Case(
        "device-cuda-no-gpu",
        "API",
        "`device='cuda'` on a machine without a GPU (`tl.embed`)",
        api_case(data(lambda a: a, device="cuda"), _embed_vae),
        ("no CUDA GPU",),
        f"{BI}::test_device_cuda_without_gpu",
    ),
    Case(
        "model-kind-misspelt",
        "API",
        "`model='VAE'` (`tl.embed`)",
        api_case(data(lambda a: a, model="VAE"), biossl.tl.embed),
        ("'VAE'", "'vae'"),
        f"{BI}::test_unknown_model",
    ),
    Case(
        "n_latent-0-pca",
        "API",
        "`n_latent=0` with `model='pca'` (`tl.embed`)",
        api_case(data(lambda a: a, n_latent=0), E),
        ("n_latent", "0"),
    ),
    Case("seed-not-int", "API", "`seed='x'` (`tl.embed`)", api_case(data(lambda a: a, seed="x"), E), ("seed", "'x'")),
    Case(
        "copy-and-return_model",
        "API",
        "`copy=True, return_model=True` (`tl.embed`)",
        api_case(data(lambda a: a, copy=True, return_model=True), _embed_vae),
        ("copy=True",),
        f"{BI}::test_copy_with_return_model",
    ),
    # --- graph ----------------------------------------------------------------------------------------
    Case(
        "fewer-cells-than-n_neighbors",
        "API",
        "5 cells with the default `n_neighbors=15` (`tl.neighbors`)",
        api_case(lambda t: (_embedded(sim()[:5].copy()), {}), N),
        ("n_neighbors=15", "5 cells"),
    ),
    Case(
        "neighbors-before-embed",
        "API",
        "`tl.neighbors` before `tl.embed` (no `obsm['X_biossl']`)",
        api_case(data(lambda a: a), N),
        ("'X_biossl'", "tl.embed"),
        f"{BI}::test_neighbors_before_embed",
    ),
    Case(
        "NaN-in-representation",
        "API",
        "a NaN in `obsm['X_biossl']` (`tl.neighbors`)",
        api_case(graph(_nan_rep), N),
        ("NaN",),
        f"{BI}::test_bad_neighbors",
    ),
    # --- labels ---------------------------------------------------------------------------------------
    Case(
        "labels_key-missing",
        "API",
        "`labels_key='celltype'` not in `obs` (`tl.annotate`)",
        api_case(graph(labels_key="celltype"), A),
        ("labels_key='celltype'",),
        f"{BI}::test_bad_annotate",
    ),
    Case(
        "labels-all-NaN",
        "API",
        "every label NaN (`tl.annotate`)",
        api_case(graph(lambda a: labels(a, [None] * a.n_obs)), A),
        ("no labelled cell",),
        f"{BI}::test_bad_annotate",
    ),
    Case(
        "labels-one-class",
        "API",
        "only one class labelled (`tl.annotate`)",
        api_case(graph(lambda a: labels(a, np.where(np.arange(a.n_obs) < 10, "alpha", None))), A),
        ("only one labelled class", "'alpha'"),
        f"{BI}::test_bad_annotate",
    ),
    Case(
        "labels-every-cell",
        "API",
        "every cell labelled (`tl.annotate`)",
        api_case(graph(lambda a: labels(a, a.obs["cell_type"])), A),
        ("every cell",),
        f"{BI}::test_bad_annotate",
    ),
    Case(
        "Unknown-is-a-class",
        "API",
        "`'Unknown'` used as a real class while `unlabeled_category='unlabelled'` (`tl.annotate`)",
        api_case(graph(unknown_class, unlabeled_category="unlabelled"), A),
        ("'Unknown'", "unlabeled_category"),
        f"{BI}::test_bad_annotate",
    ),
    Case(
        "class-with-one-cell",
        "API",
        "a class with a single labelled cell (`tl.annotate`): valid input",
        api_case(graph(one_labelled_alpha), A, accept=valid_annotation),
    ),
    Case(
        "unknown_threshold-1.5",
        "API",
        "`unknown_threshold=1.5` (`tl.annotate`)",
        api_case(graph(unknown_threshold=1.5), A),
        ("unknown_threshold", "1.5"),
        f"{BI}::test_bad_annotate",
    ),
    Case(
        "unknown_threshold-string",
        "API",
        "`unknown_threshold='0.5'` (a string) (`tl.annotate`)",
        api_case(graph(unknown_threshold="0.5"), A),
        ("unknown_threshold", "'0.5'"),
    ),
    Case(
        "alpha-1",
        "API",
        "`alpha=1` (`tl.annotate`)",
        api_case(graph(alpha=1.0), A),
        ("alpha",),
        f"{BI}::test_bad_annotate",
    ),
    Case(
        "annotate-before-neighbors",
        "API",
        "`tl.annotate` without a graph",
        api_case(graph(_no_graph), A),
        ("biossl_connectivities", "tl.neighbors"),
        f"{BI}::test_bad_annotate",
    ),
    # --- model files ----------------------------------------------------------------------------------
    Case(
        "model-genes-mismatched",
        "model",
        "query gene ids (Ensembl) do not match the model's symbols (`tl.embed`)",
        api_case(mismatched_genes, biossl.tl.embed),
        ("only 0 of the model's",),
        f"{MI}::test_too_few_genes_is_an_error",
    ),
    Case(
        "model-dir-missing",
        "model",
        "`model=` a directory that does not exist (`tl.embed`)",
        api_case(lambda t: (sim(), {"model": t / "no_such_model"}), biossl.tl.embed),
        ("does not exist",),
    ),
    Case(
        "model-no-model.pt",
        "model",
        "model directory without `model.pt`",
        model_case("model", lambda p: (p / "model.pt").unlink()),
        ("missing model.pt",),
        f"{MI}::test_damaged_model_dir",
    ),
    Case(
        "model-no-config.json",
        "model",
        "model directory without `config.json`",
        model_case("model", lambda p: (p / "config.json").unlink()),
        ("missing config.json",),
        f"{MI}::test_damaged_model_dir",
    ),
    Case(
        "model-config-not-json",
        "model",
        "`config.json` that is not JSON",
        model_case("model", lambda p: (p / "config.json").write_text("{not json")),
        ("not valid JSON",),
        f"{MI}::test_damaged_model_dir",
    ),
    Case(
        "model-format-version-2",
        "model",
        "`config.json` with `format_version: 2` (a newer biossl)",
        model_case("model", edit_config(format_version=2)),
        ("format version 2",),
        f"{MI}::test_wrong_format_version",
    ),
    Case(
        "model-no-format-version",
        "model",
        "`config.json` without `format_version` (not written by biossl)",
        model_case("model", edit_config(format_version=_DELETE)),
        ("format_version",),
        f"{MI}::test_config_without_format_version",
    ),
    Case(
        "model-pickled-payload",
        "model",
        "`model.pt` holding a pickled object that runs code when unpickled",
        model_case("model", pickle_weights),
        ("refusing",),
        f"{MI}::test_pickled_object_is_refused",
    ),
    Case(
        "model-truncated-weights",
        "model",
        "`model.pt` cut short",
        model_case("model", lambda p: (p / "model.pt").write_bytes((p / "model.pt").read_bytes()[:200])),
        ("not a plain weights file",),
        f"{MI}::test_damaged_model_dir",
    ),
    Case(
        "model-weights-mismatch",
        "model",
        "`config.json` says `n_latent: 7`, the weights hold 20",
        model_case("model", edit_config(n_latent=7)),
        ("does not match",),
        f"{MI}::test_damaged_model_dir",
    ),
    Case(
        "reference-pickled-npz",
        "model",
        "`reference.npz` replaced by a pickle that runs code (`Reference.load`)",
        model_case("reference", pickle_reference),
        ("reference.npz",),
    ),
    Case(
        "reference-object-array",
        "model",
        "`reference.npz` holding an object array of payloads (`Reference.load`)",
        model_case("reference", object_array_reference),
        ("reference.npz",),
    ),
    Case(
        "reference-no-npz",
        "model",
        "reference directory without `reference.npz` (`Reference.load`)",
        model_case("reference", lambda p: (p / "reference.npz").unlink()),
        ("missing reference.npz",),
    ),
    Case(
        "reference-from-plain-model",
        "model",
        "a plain model directory given as a reference (`Reference.load`)",
        _load_reference,
        ("not a reference",),
    ),
    Case(
        "map_query-threshold-string",
        "API",
        "`unknown_threshold='0.5'` (a string) (`tl.map_query`)",
        api_case(lambda t: (sim(), {"unknown_threshold": "0.5"}), lambda a, **kw: _map(a, **kw)),
        ("unknown_threshold",),
    ),
    Case(
        "map_query-n_neighbors-0",
        "API",
        "`n_neighbors=0` (`tl.map_query`)",
        api_case(lambda t: (sim(), {"n_neighbors": 0}), lambda a, **kw: _map(a, **kw)),
        ("n_neighbors",),
    ),
    Case(
        "map_query-mapping_threshold-string",
        "API",
        "`mapping_threshold='x'` (`tl.map_query`)",
        api_case(lambda t: (sim(), {"mapping_threshold": "x"}), lambda a, **kw: _map(a, **kw)),
        ("mapping_threshold",),
    ),
    Case(
        "map_query-min_overlap-2",
        "API",
        "`min_overlap=2` (`tl.map_query`)",
        api_case(lambda t: (sim(), {"min_overlap": 2}), lambda a, **kw: _map(a, **kw)),
        ("min_overlap",),
    ),
    Case(
        "map_query-fine_tune_steps-negative",
        "API",
        "`fine_tune_steps=-5` with a query batch (`tl.map_query`)",
        api_case(lambda t: (sim(), {"fine_tune_steps": -5, "batch_key": "batch"}), lambda a, **kw: _map(a, **kw)),
        ("fine_tune_steps",),
    ),
    Case(
        "map_query-reference-not-a-path",
        "API",
        "`reference=42` (`tl.map_query`)",
        api_case(lambda t: (sim(), {}), lambda a: biossl.tl.map_query(a, 42, device="cpu")),
        ("reference",),
    ),
    Case(
        "fit_reference-seed-string",
        "API",
        "`seed='x'` (`tl.fit_reference`)",
        api_case(lambda t: (sim(), {}), lambda a: biossl.tl.fit_reference(a, "cell_type", seed="x", device="cpu")),
        ("seed",),
    ),
    # --- gene sets (tl.gene_function) -----------------------------------------------------------------
    Case(
        "gmt-no-overlap",
        "API",
        "a GMT file none of whose genes are in the data (`tl.gene_function`)",
        api_case(gmt("SET1\tdesc\tFOO\tBAR\nSET2\tdesc\tQUX\tQUUX\n"), _genes),
        ("no gene set has a member",),
    ),
    Case(
        "gmt-not-gmt",
        "API",
        "a gene-set file without tabs (`tl.gene_function`)",
        api_case(gmt("just some text\nno tabs here\n"), _genes),
        ("line 1 is not GMT",),
    ),
    Case(
        "gmt-empty",
        "API",
        "an empty GMT file (`tl.gene_function`)",
        api_case(gmt(""), _genes),
        ("no gene sets",),
    ),
    Case(
        "gmt-gz-damaged",
        "API",
        "a damaged `.gmt.gz` (`tl.gene_function`)",
        api_case(gmt(b"\x1f\x8bjunk", "sets.gmt.gz"), _genes),
        ("cannot read",),
    ),
    Case(
        "gene-set-is-a-string",
        "API",
        "`gene_sets={'a': 'CD3E'}` (a string, not a list) (`tl.gene_function`)",
        api_case(lambda t: (sim(), {"gene_sets": {"a": "gene1"}}), _genes),
        ("list of gene names",),
    ),
    Case(
        "cli-genes-no-overlap",
        "CLI",
        "`biossl genes --gene-sets` with a GMT none of whose genes are in the data",
        cli_case(_genes_cli),
        ("no member of the 1 gene sets",),
    ),
    # --- CLI ------------------------------------------------------------------------------------------
    Case(
        "cli-input-missing",
        "CLI",
        "`biossl annotate` on a file that does not exist",
        cli_case(lambda t: ["annotate", t / "nope.h5ad", "-o", t / "out.h5ad", "--labels-key", "labels"]),
        ("does not exist",),
        f"{CL}::test_unreadable_input_is_one_error_line",
    ),
    Case(
        "cli-input-not-hdf5",
        "CLI",
        "`biossl annotate` on a CSV renamed `.h5ad`",
        cli_case(lambda t: _write(t / "in.h5ad", b"cell,gene\n1,2\n", "annotate")),
        ("cannot read",),
        f"{CL}::test_unreadable_input_is_one_error_line",
    ),
    Case(
        "cli-input-empty",
        "CLI",
        "`biossl embed` on an empty file",
        cli_case(lambda t: _write(t / "in.h5ad", b"", "embed")),
        ("cannot read",),
        f"{CL}::test_unreadable_input_is_one_error_line",
    ),
    Case(
        "cli-input-truncated",
        "CLI",
        "`biossl annotate` on an h5ad cut off after 5,000 bytes",
        cli_case(truncated),
        ("cannot read",),
        f"{CL}::test_unreadable_input_is_one_error_line",
    ),
    Case(
        "cli-input-hdf5-not-anndata",
        "CLI",
        "`biossl annotate` on an HDF5 file that is not AnnData",
        cli_case(not_anndata),
        ("cannot read",),
        f"{CL}::test_unreadable_input_is_one_error_line",
    ),
    Case(
        "cli-output-is-input",
        "CLI",
        "`-o` equal to the input file (with `--force`)",
        cli_case(lambda t: ["annotate", h5ad(t), "-o", t / "in.h5ad", "--labels-key", "labels", "--force"]),
        ("is the input file",),
        f"{CL}::test_output_is_never_the_input",
    ),
    Case(
        "cli-output-exists",
        "CLI",
        "`-o` an existing file without `--force`",
        cli_case(lambda t: [*annotate_args(t), *_touch(t / "out.h5ad")]),
        ("already exists", "--force"),
        f"{CL}::test_existing_output_needs_force",
    ),
    Case(
        "cli-output-unwritable",
        "CLI",
        "`-o results/out.h5ad` where `results` is a file (output not writable)",
        cli_case(output_under_a_file),
        ("results",),
    ),
    Case(
        "cli-log-data",
        "CLI",
        "`biossl annotate` on log-normalised data without counts",
        cli_case(lambda t: annotate_args(t, lognorm(sim()))),
        ("non-integer",),
    ),
    Case(
        "cli-labels-key-missing",
        "CLI",
        "`--labels-key celltype` not in obs",
        cli_case(lambda t: [*annotate_args(t)[:-1], "celltype"]),
        ("--labels-key 'celltype'",),
        f"{CL}::test_bad_options_are_one_error_line",
    ),
    Case(
        "cli-one-class",
        "CLI",
        "`--labels-key` with one labelled class",
        cli_case(lambda t: annotate_args(t, labels(sim(), np.where(np.arange(360) < 10, "alpha", None)))),
        ("only one labelled class",),
    ),
    Case(
        "cli-duplicated-genes",
        "CLI",
        "`biossl embed` on a file with duplicated gene names",
        cli_case(lambda t: ["embed", h5ad(t, rename(sim(), "var_names")), "-o", t / "out.h5ad"]),
        ("var_names",),
    ),
    Case(
        "cli-one-cell",
        "CLI",
        "`biossl embed` on a one-cell file",
        cli_case(lambda t: ["embed", h5ad(t, sim()[:1].copy()), "-o", t / "out.h5ad"]),
        ("(1, 120)",),
    ),
    Case(
        "cli-too-few-cells",
        "CLI",
        "`biossl annotate` on 12 cells with `--n-neighbors 15`",
        cli_case(lambda t: annotate_args(t, _twelve_cells())),
        ("--n-neighbors 15", "12 cells"),
    ),
    Case(
        "cli-batch-NaN",
        "CLI",
        "`--batch-key batch` with missing batches",
        cli_case(lambda t: annotate_args(t, batch_nan(sim()), "--batch-key", "batch")),
        ("2 missing",),
    ),
    Case(
        "cli-device-cuda",
        "CLI",
        "`--device cuda` without a GPU",
        cli_case(lambda t: annotate_args(t, None, "--model", "vae", "--device", "cuda")),
        ("no CUDA GPU",),
    ),
    Case(
        "cli-model-pickled",
        "CLI",
        "`--model DIR` whose `model.pt` is a code-running pickle",
        cli_case(lambda t: annotate_args(t, None, "--model", model_dir(t, damage=pickle_weights))),
        ("refusing",),
    ),
    Case(
        "cli-model-format-version",
        "CLI",
        "`--model DIR` written by a newer biossl (format version 2)",
        cli_case(lambda t: annotate_args(t, None, "--model", model_dir(t, damage=edit_config(format_version=2)))),
        ("format version 2",),
    ),
    Case(
        "cli-model-genes-mismatched",
        "CLI",
        "`--model DIR` on a file whose gene names the model does not know",
        cli_case(lambda t: annotate_args(t, _ensembl(), "--model", model_dir(t))),
        ("only 0 of the model's",),
    ),
    Case(
        "cli-info-damaged-model",
        "CLI",
        "`biossl info` on a model directory with a broken `config.json`",
        cli_case(lambda t: ["info", model_dir(t, damage=lambda p: (p / "config.json").write_text("{"))]),
        ("not valid JSON",),
    ),
    Case(
        "cli-reference-pickled",
        "CLI",
        "`biossl annotate --reference DIR` whose `reference.npz` is a code-running pickle",
        cli_case(lambda t: _reference_args(t, pickle_reference)),
        ("reference.npz",),
    ),
    Case(
        "cli-reference-is-a-plain-model",
        "CLI",
        "`biossl annotate --reference DIR` with a model directory that holds no reference",
        cli_case(lambda t: ["annotate", h5ad(t), "-o", t / "out.h5ad", "--reference", model_dir(t)]),
        ("reference",),
    ),
    Case(
        "cli-reference-genes-mismatched",
        "CLI",
        "`biossl annotate --reference DIR` on a file whose gene names the reference does not know",
        cli_case(
            lambda t: ["annotate", h5ad(t, _ensembl()), "-o", t / "out.h5ad", "--reference", model_dir(t, "reference")]
        ),
        ("only 0 of the model's",),
    ),
    Case(
        "cli-map-reference-pickled",
        "CLI",
        "`biossl map --reference DIR` whose `reference.npz` is a code-running pickle",
        cli_case(lambda t: _reference_args(t, pickle_reference, "map")),
        ("reference.npz",),
    ),
    Case(
        "cli-map-reference-is-a-plain-model",
        "CLI",
        "`biossl map --reference DIR` with a model directory that holds no reference",
        cli_case(lambda t: ["map", h5ad(t), "-o", t / "out.h5ad", "--reference", model_dir(t)]),
        ("reference",),
    ),
    Case(
        "cli-map-reference-genes-mismatched",
        "CLI",
        "`biossl map --reference DIR` on a file whose gene names the reference does not know",
        cli_case(
            lambda t: ["map", h5ad(t, _ensembl()), "-o", t / "out.h5ad", "--reference", model_dir(t, "reference")]
        ),
        ("only 0 of the model's",),
    ),
    Case(
        "cli-fit-reference-one-class",
        "CLI",
        "`biossl fit-reference` on labels with a single class",
        cli_case(
            lambda t: [
                "fit-reference",
                h5ad(t, labels(sim(), ["alpha"] * 360)),
                "-o",
                t / "ref",
                "--labels-key",
                "labels",
            ]
        ),
        ("one class",),
    ),
    Case(
        "cli-fit-reference-output-exists",
        "CLI",
        "`biossl fit-reference -o DIR` where DIR exists, without `--force`",
        cli_case(lambda t: ["fit-reference", h5ad(t), "-o", _mkdir(t / "ref"), "--labels-key", "cell_type"]),
        ("already exists",),
    ),
    Case(
        "cli-summarize-not-annotated",
        "CLI",
        "`biossl summarize` on a file `biossl annotate` has not run on",
        cli_case(lambda t: ["summarize", h5ad(t), "--tsv", t / "s.tsv"]),
        ("biossl annotate",),
        f"{CL}::test_summarize_and_aggregate",
    ),
    Case(
        "cli-evaluate-one-type",
        "CLI",
        "`biossl evaluate` with a single true type",
        cli_case(lambda t: ["evaluate", h5ad(t, labels(sim(), ["alpha"] * 360)), "--labels-key", "labels"]),
        ("at least two",),
    ),
    Case(
        "cli-aggregate-bad-table",
        "CLI",
        "`biossl aggregate` on an empty TSV",
        cli_case(lambda t: ["aggregate", _write(t / "a.tsv", b""), "-o", t / "all.tsv"]),
        ("cannot read",),
    ),
    Case(
        "cli-read-only-input",
        "CLI",
        "input file with mode 0444 (read-only): valid input",
        cli_case(read_only_input, accept=wrote_labels),
    ),
    # --- workflow config ------------------------------------------------------------------------------
    Case(
        "config-unknown-key",
        "config",
        "`embed: {modle: vae}` (misspelt key)",
        config_case({**BASE, "embed": {"modle": "vae"}}),
        ("modle",),
        f"{WF}::test_config_is_validated",
    ),
    Case(
        "config-wrong-type",
        "config",
        "`annotate: {n_neighbors: ten}` (a string for an integer)",
        config_case({**BASE, "annotate": {"n_neighbors": "ten"}}),
        ("'ten'", "integer"),
    ),
    Case(
        "config-threshold-2",
        "config",
        "`annotate: {unknown_threshold: 2}`",
        config_case({**BASE, "annotate": {"unknown_threshold": 2}}),
        ("maximum",),
        f"{WF}::test_config_is_validated",
    ),
    Case(
        "config-no-labels_key",
        "config",
        "no `labels_key`",
        config_case({"samples": {"a": "a.h5ad"}}),
        ("labels_key",),
        f"{WF}::test_config_is_validated",
    ),
    Case(
        "config-device-gpu",
        "config",
        "`embed: {device: gpu}`",
        config_case({**BASE, "embed": {"device": "gpu"}}),
        ("'gpu'",),
    ),
    Case(
        "config-bad-sample-name",
        "config",
        "sample name with a slash (`a/b`)",
        config_case({**BASE, "samples": {"a/b": "a.h5ad"}}),
        ("a/b",),
    ),
    Case(
        "config-sample-file-missing",
        "config",
        "a sample whose h5ad does not exist",
        config_case({**BASE, "samples": {"a": "missing.h5ad"}}),
        ("missing.h5ad",),
    ),
    Case(
        "config-not-yaml-mapping",
        "config",
        "`config.yaml` that is a YAML list, not a mapping",
        config_case("- samples\n- labels_key\n"),
        ("keys at top level",),
    ),
]


BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "duplicate case ids"
