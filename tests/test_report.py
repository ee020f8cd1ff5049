"""`biossl report` / biossl.report: one self-contained HTML page, checked in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import biossl
from biossl.cli import main
from biossl.metrics import fewlabel_split
from biossl.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def _annotated():
    """600 pbmc3k cells: PCA embedding, graph, 5 labels per type, annotated, 8 suggested cells."""
    full = biossl.datasets.pbmc()
    adata = full[np.sort(np.random.default_rng(0).choice(full.n_obs, 600, replace=False))].copy()
    truth = adata.obs["cell_type"].astype(str)
    adata.obs["labels"] = pd.Categorical(truth.where(fewlabel_split(truth.to_numpy(), 5, 0)))
    biossl.pp.setup(adata)
    biossl.tl.embed(adata, model="pca", seed=0)
    biossl.tl.neighbors(adata)
    adata.obsm["X_umap"] = adata.obsm["X_biossl"][:, :2]  # the report plots any 2-d layout; skip UMAP's cost here
    biossl.tl.annotate(adata, "labels")
    biossl.tl.suggest_labels(adata, 8, labels_key="labels")
    return adata


@pytest.fixture
def annotated(_annotated):
    return _annotated.copy()


EVALUATION = {"runs": [{"k": k, "seed": s, "macro_f1": 0.6 + 0.03 * k - 0.01 * s} for k in (1, 3, 5) for s in (0, 1)]}


@pytest.fixture(scope="module")
def report_file(_annotated, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(_annotated.copy(), path, truth_key="cell_type", evaluation=EVALUATION)
    return path


def test_report_embeds_decodable_pngs(report_file):
    text = report_file.read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    alts = [alt for alt, _ in images]
    assert alts == ["UMAP of predicted labels and confidence", "reliability diagram", "UMAP of suggested cells",
                    "label-budget curve"]  # fmt: skip
    for _, data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    assert 'src="http' not in text and "<link" not in text and "<script" not in text  # nothing fetched
    assert "expected calibration error" in text and "macro-F1" in text
    assert text.count("<tr>") >= 9 + 8  # per-type table and the suggested cells


def test_report_without_truth_or_suggestions(annotated, tmp_path):
    del annotated.obs["biossl_suggest"]
    path = write_report(annotated, tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    assert text.count("<img ") == 1 and "reliability" not in text
    with pytest.raises(FileExistsError):
        write_report(annotated, path)
    with pytest.raises(ValueError, match="truth_key"):
        write_report(annotated, tmp_path / "x.html", truth_key="nope")
    assert not (tmp_path / "x.html").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


def test_cli_report(annotated, tmp_path):
    src = tmp_path / "in.h5ad"
    annotated.write_h5ad(src)
    before = src.read_bytes()
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(EVALUATION))
    out = tmp_path / "report.html"
    args = ["report", str(src), "-o", str(out), "--truth-key", "cell_type", "--evaluation", str(evaluation)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("report on 600 cells")
    assert out.read_text(encoding="utf-8").count("data:image/png;base64,") == 4
    assert src.read_bytes() == before
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and again.stderr.startswith("error: ") and "--force" in again.stderr
    bad = CliRunner().invoke(main, ["report", str(src), "-o", str(tmp_path / "b.html"), "--truth-key", "nope"])
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _webdriver(port: int, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_report_renders_in_headless_chromium(report_file, tmp_path):
    """Open the page in a real browser (Chromium via chromedriver's W3C WebDriver API) and check every image."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    port = _free_port()
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _webdriver(port, "GET", "/status")["value"]["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.2)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            f"--user-data-dir={tmp_path / 'profile'}",
                            "--window-size=1200,900",
                        ],
                    },
                }
            }
        }
        session = _webdriver(port, "POST", "/session", caps)["value"]["sessionId"]
        try:
            _webdriver(port, "POST", f"/session/{session}/url", {"url": report_file.resolve().as_uri()})
            script = (
                "return Array.from(document.images).map(i => "
                "[i.alt, i.complete, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]);"
            )
            images = _webdriver(port, "POST", f"/session/{session}/execute/sync", {"script": script, "args": []})
            title = _webdriver(port, "GET", f"/session/{session}/title")["value"]
        finally:
            _webdriver(port, "DELETE", f"/session/{session}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    images = images["value"]
    assert title == "biossl annotation report"
    assert len(images) == 4, images
    for alt, complete, width, height, shown in images:
        assert complete and width > 200 and height > 200 and shown > 100, (alt, width, height, shown)
