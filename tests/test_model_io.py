"""Saved models: a directory of ``model.pt`` (weights only) and ``config.json``; safe loading; gene alignment."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import biossl


@pytest.fixture
def model_dir(pbmc_model_dir, tmp_path) -> Path:
    """A private copy of the saved pbmc VAE (tests may damage it)."""
    return Path(shutil.copytree(pbmc_model_dir, tmp_path / "model"))


def test_saved_files(model_dir, pbmc_small):
    assert sorted(os.listdir(model_dir)) == ["config.json", "model.pt"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["model"] == "vae" and config["n_latent"] == 20
    assert config["training"]["seed"] == 0
    assert {"biossl", "torch", "anndata"} <= set(config["versions"])
    assert config["genes"] == list(pbmc_small.var_names[pbmc_small.X.getnnz(axis=0) > 0])
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


def test_load_gives_identical_latent(model_dir, pbmc_small, pbmc_embedded):
    biossl.tl.embed(pbmc_small, model=model_dir)
    np.testing.assert_array_equal(pbmc_small.obsm["X_biossl"], pbmc_embedded.obsm["X_biossl"])
    rec = pbmc_small.uns["biossl"]
    assert rec["embed"]["trained"] is False
    assert rec["gene_overlap"]["fraction_matched"] == 1.0 and rec["gene_overlap"]["n_missing"] == 0

    model = biossl.EmbeddingModel.load(model_dir, device="cpu")
    latent, _ = model.transform(pbmc_small)
    np.testing.assert_array_equal(latent, pbmc_embedded.obsm["X_biossl"])
    again = pbmc_embedded.copy()
    biossl.tl.embed(again, model=model)  # an EmbeddingModel object is reused as is
    np.testing.assert_array_equal(again.obsm["X_biossl"], pbmc_embedded.obsm["X_biossl"])


def test_return_model_and_save_again(sim, tmp_path):
    model = biossl.tl.embed(sim, model="ae", max_steps=20, device="cpu", return_model=True)
    assert isinstance(model, biossl.EmbeddingModel)
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="already exists"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    back = biossl.EmbeddingModel.load(tmp_path / "m", device="cpu")
    assert back.config == json.loads(json.dumps(model.config))
    np.testing.assert_array_equal(back.transform(sim, batch_key="batch")[0], model.transform(sim, batch_key="batch")[0])


def test_save_model_refuses_to_overwrite(sim, tmp_path, unchanged):
    target = tmp_path / "exists"
    target.mkdir()
    with unchanged(sim), pytest.raises(ValueError, match="exists"):
        biossl.tl.embed(sim, model="vae", max_steps=5, device="cpu", save_model=target)
    assert not any(target.iterdir())


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: stands in for any code a pickle could execute."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("obj", ["payload", "payload_in_dict"])
def test_pickled_object_is_refused(model_dir, tmp_path, pbmc_small, unchanged, obj):
    marker = tmp_path / "pwned"
    payload = _Payload(marker)
    torch.save(payload if obj == "payload" else {"encoder.0.weight": payload}, model_dir / "model.pt")
    with unchanged(pbmc_small), pytest.raises(ValueError, match=re.escape("model.pt")) as err:
        biossl.tl.embed(pbmc_small, model=model_dir)
    assert "refusing" in str(err.value)
    assert not marker.exists(), "loading the model executed code from model.pt"
    with pytest.raises(ValueError, match="refusing"):
        biossl.EmbeddingModel.load(model_dir, device="cpu")
    assert not marker.exists()

    # control: the payload is live, so the test above is not vacuous
    torch.save(_Payload(tmp_path / "control"), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert (tmp_path / "control").exists()


def test_non_tensor_state_is_refused(model_dir):
    torch.save({"encoder.0.weight": [1, 2, 3]}, model_dir / "model.pt")
    with pytest.raises(ValueError, match=re.escape("model.pt")):
        biossl.EmbeddingModel.load(model_dir, device="cpu")


@pytest.mark.parametrize("version", [0, 2, 999, "1", None])
def test_wrong_format_version(model_dir, version):
    config = json.loads((model_dir / "config.json").read_text())
    config["format_version"] = version
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version") as err:
        biossl.EmbeddingModel.load(model_dir, device="cpu")
    assert repr(version) in str(err.value)


def test_config_without_format_version(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    del config["format_version"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version"):
        biossl.EmbeddingModel.load(model_dir, device="cpu")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("no model.pt", "missing model.pt"),
        ("no config.json", "missing config.json"),
        ("no directory", "does not exist"),
        ("truncated model.pt", "not a plain weights file"),
        ("config.json not JSON", "not valid JSON"),
        ("config.json incomplete", "incomplete or damaged"),
        ("weights do not match config", "does not match"),
    ],
)
def test_damaged_model_dir(model_dir, pbmc_small, unchanged, damage, match):
    config_path, weights = model_dir / "config.json", model_dir / "model.pt"
    config = json.loads(config_path.read_text())
    if damage == "no model.pt":
        weights.unlink()
    elif damage == "no config.json":
        config_path.unlink()
    elif damage == "no directory":
        shutil.rmtree(model_dir)
    elif damage == "truncated model.pt":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "config.json not JSON":
        config_path.write_text("{not json")
    elif damage == "config.json incomplete":
        del config["n_hidden"]
        config_path.write_text(json.dumps(config))
    elif damage == "weights do not match config":
        config["n_latent"] = 7
        config_path.write_text(json.dumps(config))
    with unchanged(pbmc_small), pytest.raises(ValueError, match=re.escape(match)) as err:
        biossl.tl.embed(pbmc_small, model=model_dir)
    assert "\n" not in str(err.value)


def test_genes_aligned_by_name(model_dir, pbmc_small, pbmc_embedded, caplog):
    rng = np.random.default_rng(1)
    shuffled = pbmc_small[:, rng.permutation(pbmc_small.n_vars)].copy()
    biossl.tl.embed(shuffled, model=model_dir)
    np.testing.assert_array_equal(shuffled.obsm["X_biossl"], pbmc_embedded.obsm["X_biossl"])

    genes = json.loads((model_dir / "config.json").read_text())["genes"]
    dropped = set(rng.choice(genes, len(genes) // 5, replace=False))
    keep = [g for g in shuffled.var_names if g not in dropped]
    partial = shuffled[:, keep].copy()
    with caplog.at_level(logging.WARNING, logger="biossl"):
        biossl.tl.embed(partial, model=model_dir)
    overlap = partial.uns["biossl"]["gene_overlap"]
    assert overlap["n_model_genes"] == len(genes)
    assert overlap["n_missing"] == len(dropped) and overlap["n_matched"] == len(genes) - len(dropped)
    assert overlap["fraction_matched"] == pytest.approx(1 - len(dropped) / len(genes))
    assert set(overlap["missing_examples"]) <= dropped
    assert f"{len(dropped)} of {len(genes)} model genes are missing" in caplog.text
    latent = partial.obsm["X_biossl"]
    assert np.isfinite(latent).all()
    # 80% of the genes still place cells near where they were
    corr = np.corrcoef(latent.ravel(), pbmc_embedded.obsm["X_biossl"].ravel())[0, 1]
    assert corr > 0.8


def test_too_few_genes_is_an_error(model_dir, pbmc_small, unchanged):
    genes = json.loads((model_dir / "config.json").read_text())["genes"]
    keep = genes[: int(0.4 * len(genes))]
    query = pbmc_small[:, keep].copy()
    with unchanged(query), pytest.raises(ValueError) as err:
        biossl.tl.embed(query, model=model_dir)
    msg = str(err.value)
    assert f"only {len(keep)} of the model's {len(genes)} genes" in msg
    assert "40%" in msg and "50%" in msg
    assert "\n" not in msg
