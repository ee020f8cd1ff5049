"""Calibrated confidence (tl/calibrate.py), expected calibration error, novelty, and ECE in `biossl evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import cut_off

import biossl
from biossl.cli import main
from biossl.metrics import auroc, expected_calibration_error, fewlabel_split, reliability_table
from biossl.tl.calibrate import calibrate_proba, fit_temperature, scale_temperature


def _label(adata, k: int, seed: int = 0, drop: str | None = None) -> np.ndarray:
    truth = adata.obs["cell_type"].astype(str)
    mask = fewlabel_split(truth.to_numpy(), k, seed)
    if drop is not None:
        mask &= truth.to_numpy() != drop
    adata.obs["labels"] = pd.Categorical(truth.where(mask))
    return mask


def test_ece_known_values():
    conf = np.full(1000, 0.8)
    assert expected_calibration_error(conf, np.arange(1000) < 800) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(10), np.arange(10) < 5) == pytest.approx(0.5)
    # two bins: 0.9 confident and always right (gap 0.1), 0.3 confident and right half the time (gap 0.2)
    conf = np.r_[np.full(50, 0.9), np.full(50, 0.3)]
    correct = np.r_[np.ones(50, bool), np.arange(50) < 25]
    assert expected_calibration_error(conf, correct) == pytest.approx(0.15)
    table = reliability_table(conf, correct, n_bins=10)
    assert table["n_cells"].tolist() == [50, 50]
    assert table["accuracy"].tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(np.ones(3), np.ones(4, bool))


def test_temperature_keeps_argmax_and_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 4))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=p) for p in true_p])
    # a model twice as confident as it should be: p ** 2, renormalised (temperature 0.5)
    over = scale_temperature(true_p, 0.5)
    assert (over.argmax(1) == true_p.argmax(1)).all()
    np.testing.assert_allclose(scale_temperature(true_p, 1.0), true_p, atol=1e-9)
    t = fit_temperature(over, y)
    assert t == pytest.approx(2.0, rel=0.15)
    calibrated, info = calibrate_proba(over, over, y)
    assert info["method"] == "temperature"
    ece_before = expected_calibration_error(over.max(1), over.argmax(1) == y)
    ece_after = expected_calibration_error(calibrated.max(1), calibrated.argmax(1) == y)
    assert ece_after < 0.03 < ece_before


def test_annotate_confidence_is_calibrated_on_pbmc(pbmc_graph):
    """k = 5 labels per type: the calibrated confidence matches accuracy better than the raw one."""
    mask = _label(pbmc_graph, 5)
    truth = pbmc_graph.obs["cell_type"].astype(str).to_numpy()
    raw = biossl.tl.annotate(pbmc_graph, "labels", calibrate=False, copy=True)
    cal = biossl.tl.annotate(pbmc_graph, "labels", copy=True)
    q = ~mask
    pd.testing.assert_series_equal(raw.obs["biossl_label"], cal.obs["biossl_label"])
    correct = cal.obs["biossl_label"].astype(str).to_numpy()[q] == truth[q]
    ece_raw = expected_calibration_error(raw.obs["biossl_confidence"].to_numpy()[q], correct)
    ece_cal = expected_calibration_error(cal.obs["biossl_confidence"].to_numpy()[q], correct)
    assert ece_cal < ece_raw
    assert ece_cal <= 0.07, ece_cal  # benchmarks/calibration.py: 0.041 mean over 5 seeds
    rec = cal.uns["biossl"]["annotate"]["calibration"]
    assert rec["method"] == "temperature" and rec["n_pairs"] == 45 and 0 < rec["temperature"] < 1
    np.testing.assert_allclose(cal.obsm["biossl_proba"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cal.obs["biossl_confidence"][q], cal.obsm["biossl_proba"][q].max(1), atol=1e-6)


def test_self_training_warm_start_lands_where_a_cold_fit_does(pbmc_graph):
    """Calibration folds start self-training from the full fit (``init``), which must not change the answer."""
    from biossl.tl._propagation import connectivities, label_codes, propagate_labels, self_train

    _label(pbmc_graph, 5)
    codes, classes = label_codes(pbmc_graph, "labels", None)
    W, rep = connectivities(pbmc_graph, "biossl"), pbmc_graph.obsm["X_biossl"]
    init: dict = {}
    self_train(rep, codes, propagate_labels(W, codes, len(classes))[0], init=init)
    assert init["coef"].shape == (len(classes), rep.shape[1]) and list(init["classes"]) == list(range(len(classes)))
    fold = codes.copy()
    fold[np.flatnonzero(codes >= 0)[::5]] = -1  # hide one label in five, as a calibration fold does
    proba = propagate_labels(W, fold, len(classes))[0]
    cold = self_train(rep, fold, proba)
    warm = self_train(rep, fold, proba, init=dict(init))
    assert not np.array_equal(warm, cold)  # the start was used ...
    assert (warm.argmax(1) == cold.argmax(1)).mean() > 0.99  # ... and the optimum is the same
    assert np.abs(warm - cold).mean() < 0.005, np.abs(warm - cold).mean()
    # stored classes that do not match the fit's: a cold start, not an error
    np.testing.assert_array_equal(self_train(rep, fold, proba, init={**init, "classes": init["classes"][:-1]}), cold)


def test_predictor_asked_for_some_rows_gives_those_rows_of_the_full_answer(pbmc_graph):
    """A calibration fold scores only its held-out cells; their probabilities are those of scoring every cell."""
    from biossl.tl._propagation import annotation_predictor, connectivities, label_codes

    _label(pbmc_graph, 3)
    codes, classes = label_codes(pbmc_graph, "labels", None)
    W, rep = connectivities(pbmc_graph, "biossl"), pbmc_graph.obsm["X_biossl"]
    rows = np.random.default_rng(0).choice(len(codes), 200, replace=False)  # labelled and unlabelled cells
    for refine in (rep, None):
        # a predictor keeps its first self-training fit as the next one's start: a fresh one for each answer
        full, some = (
            annotation_predictor(W, len(classes), alpha=0.9, rep=refine, class_prior="estimate").fold(codes, cells)
            for cells in (None, rows)
        )
        full = full[rows]
        assert some.shape == (len(rows), len(classes))
        np.testing.assert_allclose(some, full, rtol=0, atol=1e-12)
        assert np.allclose(some.sum(1), 1.0)


def test_calibration_folds_in_single_precision_fit_the_double_precision_temperature(pbmc_graph):
    """``AnnotationPredictor.fold`` solves in float32 to ``FOLD_TOL``: held-out probabilities and temperature hold."""
    from biossl.tl._propagation import FOLD_TOL, annotation_predictor, connectivities, label_codes
    from biossl.tl.calibrate import calibrate_annotation, crossval_proba

    assert FOLD_TOL > 1e-6  # looser than the annotation's own solve, hence the tolerances below
    _label(pbmc_graph, 5)
    codes, classes = label_codes(pbmc_graph, "labels", None)
    W, rep = connectivities(pbmc_graph, "biossl"), pbmc_graph.obsm["X_biossl"]
    predictor = annotation_predictor(W, len(classes), alpha=0.9, rep=rep, class_prior="estimate")
    proba = predictor(codes)
    held, double = crossval_proba(predictor, codes)
    held32, single = crossval_proba(predictor.fold, codes)
    assert predictor._operator.matrix.dtype == np.float32  # one operator held, cast down
    np.testing.assert_array_equal(held, held32)
    gap = np.abs(single - double)
    assert gap.mean() < 1e-3 and gap.max() < 0.05, (gap.mean(), gap.max())  # measured: 0.0004 and 0.022
    assert (single.argmax(1) == double.argmax(1)).mean() > 0.98
    t64 = calibrate_annotation(predictor, codes, proba)[1]["temperature"]
    t32 = calibrate_annotation(predictor.fold, codes, proba)[1]["temperature"]
    assert abs(t32 - t64) < 0.01 * t64, (t32, t64)  # measured: 0.762 vs 0.761
    np.testing.assert_array_equal(predictor(codes), proba)  # back to float64: rebuilt from the graph, not cast up


def test_one_label_per_type_leaves_confidence_uncalibrated(pbmc_graph):
    _label(pbmc_graph, 1)
    raw = biossl.tl.annotate(pbmc_graph, "labels", calibrate=False, copy=True)
    cal = biossl.tl.annotate(pbmc_graph, "labels", copy=True)
    assert cal.uns["biossl"]["annotate"]["calibration"]["method"] == "none"
    np.testing.assert_array_equal(raw.obs["biossl_confidence"], cal.obs["biossl_confidence"])


def test_novelty_flags_a_type_without_labels(pbmc_graph):
    """B cells with no label: the novelty score ranks them far above the rest, better than 1 - confidence."""
    mask = _label(pbmc_graph, 5, drop="B")
    biossl.tl.annotate(pbmc_graph, "labels")
    biossl.tl.novelty(pbmc_graph, "labels")
    q = ~mask
    is_b = (pbmc_graph.obs["cell_type"] == "B").to_numpy()[q]
    nov = pbmc_graph.obs["biossl_novelty"].to_numpy()
    assert (nov[mask] == 0).all()
    auc_novelty = auroc(nov[q], is_b)
    auc_conf = auroc(1 - pbmc_graph.obs["biossl_confidence"].to_numpy()[q], is_b)
    assert auc_novelty >= 0.85 and auc_novelty > auc_conf, (auc_novelty, auc_conf)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_novelty_reads_expression_where_the_graph_glues_a_type_to_its_neighbour(pbmc_graph, seed):
    """CD14+ monocytes with no label sit next to FCGR3A+ monocytes and DCs: by position alone they rank at
    AUROC 0.77 (benchmarks/novel_types.py, seeds 0-2), their expression gives them away."""
    from biossl.tl._novelty import novelty_score
    from biossl.tl._propagation import connectivities

    mask = _label(pbmc_graph, 5, seed, drop="CD14+ Mono")
    biossl.tl.novelty(pbmc_graph, "labels")
    q = ~mask
    novel = (pbmc_graph.obs["cell_type"] == "CD14+ Mono").to_numpy()[q]
    position = novelty_score(connectivities(pbmc_graph, "biossl"), np.where(mask, 0, -1), pbmc_graph.obsm["X_biossl"])
    auc_position = auroc(position[q], novel)
    auc_novelty = auroc(pbmc_graph.obs["biossl_novelty"].to_numpy()[q], novel)
    assert auc_novelty > 0.9 and auc_novelty > auc_position + 0.1, (auc_novelty, auc_position)


def test_novelty_reads_expression_of_a_type_no_label_reaches(pbmc_graph):
    """B cells with no label and no graph edge to the other cells (a type left without a bridge, as a query type the
    reference lacks can be after a strong shift): their expression is compared with every class and matches none
    well; counted as typical, as before 2026-12-07, it ranked them at AUROC 0.63."""
    mask = _label(pbmc_graph, 5, drop="B")
    is_b = (pbmc_graph.obs["cell_type"] == "B").to_numpy()
    cut_off(pbmc_graph, np.flatnonzero(is_b))  # every edge between B cells and the rest
    biossl.tl.annotate(pbmc_graph, "labels")
    assert (pbmc_graph.obs["biossl_label"].to_numpy()[is_b] != "Unknown").all()  # attached to a class
    biossl.tl.novelty(pbmc_graph, "labels")
    nov = pbmc_graph.obs["biossl_novelty"].to_numpy()
    assert auroc(nov[~mask], is_b[~mask]) >= 0.95
    assert np.std(nov[is_b]) > 0.01  # ranked by expression, not tied


def test_novelty_without_raw_counts_uses_position_only(pbmc_graph, caplog):
    from biossl.tl._novelty import novelty_score
    from biossl.tl._propagation import connectivities

    mask = _label(pbmc_graph, 5, drop="B")
    pbmc_graph.X = pbmc_graph.X.multiply(1e4 / pbmc_graph.X.sum(1)).log1p().tocsr()  # log-normalised, no counts
    del pbmc_graph.uns["biossl"]["setup"]
    with caplog.at_level("WARNING", logger="biossl"):
        biossl.tl.novelty(pbmc_graph, "labels")
    assert "position only" in caplog.text
    position = novelty_score(connectivities(pbmc_graph, "biossl"), np.where(mask, 0, -1), pbmc_graph.obsm["X_biossl"])
    np.testing.assert_allclose(pbmc_graph.obs["biossl_novelty"].to_numpy()[~mask], position[~mask], rtol=1e-6)


def test_evaluate_reports_ece(pbmc_graph, tmp_path):
    small = pbmc_graph[::3].copy()
    src = tmp_path / "in.h5ad"
    small.write_h5ad(src)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        main,
        ["evaluate", str(src), "--labels-key", "cell_type", "--k", "5", "--seeds", "0", "--reuse-embedding",
         "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ECE" in result.stdout.splitlines()[0]
    doc = json.loads(out.read_text())
    assert 0 <= doc["runs"][0]["ece"] <= 1
    assert 0 <= doc["summary"][0]["ece_mean"] <= 1
