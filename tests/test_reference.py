"""Reference → query mapping: save/load, gene alignment, cross-technology mapping, novel types, CLI."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from sklearn.metrics import f1_score, roc_auc_score

import biossl
from biossl.cli import main
from biossl.cli._common import cli_message
from biossl.tl._reference import SAMPLE_PER_CLASS
from biossl.tl.reference import AUTO_MAPPING_THRESHOLD as AUTO
from biossl.tl.reference import REFINE_MAPPING_THRESHOLD as AUTO_REFINED
from biossl.tl.reference import WIDE_SHARE_NEIGHBORS as WIDE
from biossl.tl.reference import class_profiles, expression_match, mapping_score, reference_share, two_scale_share

CELLBENCH = Path(__file__).parents[2] / "shared" / "data" / "cellbench" / "cellbench_lung_celllines.h5ad"
STRONG_PBMC = Path(__file__).parents[2] / "shared" / "data" / "strong_batch" / "pbmc3k_two_technologies.h5ad"
BARON = Path(__file__).parents[2] / "shared" / "data" / "baron_mouse" / "baron2016_mouse_pancreas.h5ad"
STEPS = 600  # a short training budget keeps the tests fast; the benchmark uses the default


def macro_f1(truth, pred) -> float:
    truth, pred = np.asarray(truth, dtype=str), np.asarray(pred, dtype=str)
    return f1_score(truth, pred, labels=np.unique(truth), average="macro", zero_division=0)


@pytest.fixture(scope="module")
def halves(_pbmc_full):
    """pbmc3k split at random into a reference and a query half."""
    rng = np.random.default_rng(0)
    is_ref = rng.random(_pbmc_full.n_obs) < 0.5
    return _pbmc_full[is_ref].copy(), _pbmc_full[~is_ref].copy()


@pytest.fixture(scope="module")
def reference(halves):
    return biossl.tl.fit_reference(halves[0], "cell_type", max_steps=STEPS, progress=False)


@pytest.fixture(scope="module")
def reference_dir(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "pbmc_ref"
    reference.save(path)
    return path


@pytest.fixture(scope="module")
def mapped(halves, reference):
    query = halves[1].copy()
    biossl.tl.map_query(query, reference, progress=False)
    return query


def test_fit_reference_leaves_input_alone(halves, unchanged):
    ref = halves[0][:300].copy()
    check = unchanged(ref)
    biossl.tl.fit_reference(ref, "cell_type", max_steps=50, progress=False)
    check(ref)


def test_map_query_keys_and_accuracy(mapped, reference, tmp_path):
    obs = mapped.obs
    for key in ("biossl_label", "biossl_confidence", "biossl_mapping_score"):
        assert key in obs
    assert mapped.obsm["biossl_proba"].shape == (mapped.n_obs, len(reference.classes))
    assert mapped.obsm["X_biossl"].shape == (mapped.n_obs, reference.latent.shape[1])
    assert mapped.uns["biossl"]["classes"] == reference.classes
    assert mapped.uns["biossl"]["gene_overlap"]["n_matched"] == len(reference.model.genes)
    # same technology, same donor; measured 0.75 at this short training budget (rare DC / Platelet and
    # naive vs memory CD4 T cost most), so 0.7 is a regression floor, not a target
    assert macro_f1(obs["cell_type"], obs["biossl_label"]) > 0.7
    mapped.write_h5ad(tmp_path / "mapped.h5ad")  # everything written is h5ad-writable
    back = ad.read_h5ad(tmp_path / "mapped.h5ad")
    assert back.uns["biossl"]["gene_overlap"]["n_matched"] == len(reference.model.genes)


def test_mapped_query_gets_its_plot_and_report(mapped, tmp_path):
    # map_query writes the query's latent but no graph; the UMAP (biossl summarize, biossl report, pl.annotation)
    # builds one on the latent instead of refusing the file
    import matplotlib.pyplot as plt

    from biossl.report import write_report

    query = mapped.copy()
    assert "biossl_neighbors" not in query.uns
    plt.close(biossl.pl.annotation(query, show=False))
    assert query.uns["biossl_neighbors"]["params"]["use_rep"] == "X_biossl"
    assert query.obsm["X_umap"].shape == (query.n_obs, 2)
    write_report(mapped.copy(), tmp_path / "report.html", truth_key="cell_type")
    assert "Predicted types" in (tmp_path / "report.html").read_text()


def test_saved_reference_gives_identical_predictions_in_a_fresh_process(reference_dir, mapped, halves, tmp_path):
    query_path = tmp_path / "query.h5ad"
    halves[1].write_h5ad(query_path)
    out = tmp_path / "labels.json"
    code = (
        "import json, sys, anndata, biossl\n"
        "q = anndata.read_h5ad(sys.argv[2])\n"
        "biossl.tl.map_query(q, biossl.Reference.load(sys.argv[1]), progress=False)\n"
        "json.dump({'label': q.obs['biossl_label'].astype(str).tolist(),\n"
        "           'confidence': q.obs['biossl_confidence'].astype(float).tolist()}, open(sys.argv[3], 'w'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(reference_dir), str(query_path), str(out)], check=True)
    fresh = json.loads(out.read_text())
    assert fresh["label"] == mapped.obs["biossl_label"].astype(str).tolist()
    np.testing.assert_allclose(fresh["confidence"], mapped.obs["biossl_confidence"].to_numpy(), atol=1e-5)


def test_shuffled_genes_and_missing_genes_still_map(halves, reference, mapped):
    query = halves[1]
    rng = np.random.default_rng(1)
    keep = np.sort(rng.choice(query.n_vars, int(0.8 * query.n_vars), replace=False))
    shuffled = query[:, rng.permutation(keep)].copy()
    biossl.tl.map_query(shuffled, reference, progress=False)
    overlap = shuffled.uns["biossl"]["gene_overlap"]
    model_genes = set(reference.model.genes)
    assert overlap["n_matched"] == len(model_genes & set(query.var_names[keep]))
    assert overlap["n_missing"] == len(model_genes - set(query.var_names[keep]))
    full = macro_f1(mapped.obs["cell_type"], mapped.obs["biossl_label"])
    assert macro_f1(shuffled.obs["cell_type"], shuffled.obs["biossl_label"]) > full - 0.1


def test_case_insensitive_gene_matching(halves, reference):
    query = halves[1][:400].copy()
    query.var_names = [g.lower() for g in query.var_names]
    with pytest.raises(ValueError, match="genes"):
        biossl.tl.map_query(query.copy(), reference, progress=False)
    biossl.tl.map_query(query, reference, case_sensitive=False, progress=False)
    assert query.uns["biossl"]["gene_overlap"]["n_matched"] == len(reference.model.genes)


def test_too_few_shared_genes_is_a_clear_error(halves, reference, unchanged):
    query = halves[1][:200, :800].copy()  # 40% of the model's genes
    check = unchanged(query)
    with pytest.raises(ValueError, match=r"(?i)overlap|genes") as err:
        biossl.tl.map_query(query, reference, progress=False)
    assert "\n" not in str(err.value)
    check(query)


def _map_without(halves, cell_type: str, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map the query half onto a reference fitted without ``cell_type``: (novel, called Unknown, score)."""
    ref, query = halves
    ref = ref[(ref.obs["cell_type"] != cell_type).to_numpy()].copy()
    reference = biossl.tl.fit_reference(ref, "cell_type", max_steps=STEPS, progress=False)
    query = query.copy()
    biossl.tl.map_query(query, reference, progress=False, **kwargs)
    novel = (query.obs["cell_type"] == cell_type).to_numpy()
    called = (query.obs["biossl_label"] == "Unknown").to_numpy()
    return novel, called, query.obs["biossl_mapping_score"].to_numpy()


def test_held_out_type_is_called_unknown(halves):
    novel, called, score = _map_without(halves, "B")
    assert called[novel].mean() > 0.5, "most B cells (absent from the reference) should be Unknown"
    assert called[~novel].mean() < 0.1, "known types should rarely be Unknown"
    assert roc_auc_score(novel, -score) > 0.85


def _mapped_and_warnings(halves, reference, caplog, threshold: float) -> tuple[ad.AnnData, list[str]]:
    """The query half mapped with ``mapping_threshold=threshold``, and the Unknown warnings it logged."""
    query = halves[1].copy()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="biossl"):
        biossl.tl.map_query(query, reference, mapping_threshold=threshold, progress=False)
    return query, [r.getMessage() for r in caplog.records if "called Unknown" in r.getMessage()]


def test_many_unknown_calls_warn_with_what_to_try(halves, reference, caplog):
    # a threshold of 0 calls no cell Unknown: no warning
    query, warned = _mapped_and_warnings(halves, reference, caplog, 0.0)
    assert (query.obs["biossl_label"] == "Unknown").mean() == 0.0 and warned == []
    # one above every score calls all of them: one warning, naming the share and what to try (a strong shift can
    # push known types below the threshold)
    query, warned = _mapped_and_warnings(halves, reference, caplog, 1e6)
    assert (query.obs["biossl_label"] == "Unknown").mean() == 1.0
    assert len(warned) == 1 and warned[0].startswith("map_query: 100% of the query called Unknown")
    assert "mapping_threshold=" in warned[0] and "batch_key=" in warned[0] and "\n" not in warned[0]
    # the Unknown cells' top classes, most frequent first, with their counts
    proba = np.asarray(query.obsm["biossl_proba"])
    counts = np.bincount(proba[proba.sum(1) > 0].argmax(1), minlength=len(reference.classes))
    top = counts.argmax()
    in_reference = int((reference.codes == top).sum())
    assert f"their top classes: {reference.classes[top]} {counts.max()} (reference {in_reference})" in warned[0]
    cli = cli_message(warned[0])  # the CLI names its options and command instead
    assert "lower --mapping-threshold," in cli and "--batch-key (`biossl annotate` on one file" in cli


def test_the_info_line_names_the_unknown_cells_top_classes(halves, reference, caplog):
    """The info line names what the Unknown cells resemble and how many reference cells those classes have (a class
    of a few reference cells is hard to tell from a type the reference lacks); a threshold above every score calls
    every cell Unknown."""
    query = halves[1].copy()
    with caplog.at_level(logging.INFO, logger="biossl"):
        biossl.tl.map_query(query, reference, mapping_threshold=1e6, progress=False)
    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("map_query: ") and "genes" in r.getMessage()
    ]
    n_unknown = int((query.obs["biossl_label"] == "Unknown").sum())
    proba = np.asarray(query.obsm["biossl_proba"])[(query.obs["biossl_label"] == "Unknown").to_numpy()]
    calls = proba[proba.sum(1) > 0].argmax(1)
    top = np.bincount(calls, minlength=len(reference.classes)).argmax()
    named = f"{reference.classes[top]} {(calls == top).sum()} (reference {(reference.codes == top).sum()})"
    assert f"{n_unknown} Unknown" in lines[0] and f"the Unknown cells' top classes: {named}" in lines[0]


def test_held_out_sibling_type_ranks_as_novel(halves):
    # NK cells sit next to CD8 T cells: the distance to the reference alone does not single them out (AUROC
    # 0.52 before the reference share), but they form query-only neighbourhoods in the joint graph. The default
    # Unknown seeds (score < 0.5) let the query graph settle them as CD8 T; the documented higher threshold
    # calls them. The AUROC moves with the reference's training: 0.833, 0.946, 0.959, 0.853, 0.881 for training seeds
    # 0-4 at this budget (2026-12-06; seed 0, the one run here, read above 0.85 on the machine the test was written
    # on), so the bound checks the mechanism (0.52 without it), not one run's digits
    novel, called, score = _map_without(halves, "NK", mapping_threshold=AUTO)
    assert roc_auc_score(novel, -score) > 0.8
    assert called[novel].mean() > 3 * called[~novel].mean()
    assert called[~novel].mean() < 0.05


def test_class_profiles_by_hand():
    # class 0: two cells with the same expression pattern at different depths; class 1: one cell
    counts = np.array([[10, 0, 30, 0], [20, 0, 60, 0], [0, 5, 0, 15]], dtype=np.float32)
    codes = np.array([0, 0, 1])
    profiles, similarity = class_profiles(sp.csr_matrix(counts), codes, 2)
    logn = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(profiles, [logn[:2].mean(0), logn[2]], rtol=1e-5)
    # leave one out: each class-0 cell is compared with the other one, which has the same log-normalised profile
    np.testing.assert_allclose(similarity[0], 1.0, rtol=1e-5)
    assert similarity[1] == similarity[0]  # a one-cell class takes the median over all cells


def test_expression_match_flags_cells_unlike_their_predicted_class(halves):
    # real pbmc3k counts: profiles from the reference half without B cells; query B cells predicted as CD14+
    # monocytes (where a reference model that never saw B cells may put them) get a low expression part, the
    # other query cells, predicted as their own type, keep about 1
    ref, query = halves
    ref = ref[(ref.obs["cell_type"] != "B").to_numpy()]
    classes = sorted(set(ref.obs["cell_type"].astype(str)))
    codes = np.array([classes.index(c) for c in ref.obs["cell_type"].astype(str)])
    profiles, similarity = class_profiles(sp.csr_matrix(ref.X), codes, len(classes))
    truth = query.obs["cell_type"].astype(str).to_numpy()
    novel = truth == "B"
    pred = np.array([classes.index("CD14+ Mono") if t == "B" else classes.index(t) for t in truth])
    sizes = np.bincount(codes, minlength=len(classes))
    no_neighbors = np.full((query.n_obs, 1), -1)
    present = np.ones(query.n_vars)
    part = expression_match(sp.csr_matrix(query.X), present, pred, no_neighbors, profiles, similarity, sizes)
    assert np.median(part[novel]) < 0.5 and (part[novel] < AUTO).mean() > 0.8
    assert (part[~novel] < AUTO).mean() < 0.05
    # a missing gene is left out, not read as a zero; unpredicted cells (-1) keep 1
    present[:100] = 0
    pred[:5] = -1
    gapped = expression_match(sp.csr_matrix(query.X), present, pred, no_neighbors, profiles, similarity, sizes)
    assert np.all(gapped[:5] == 1) and (gapped[novel] < AUTO).mean() > 0.8


@pytest.mark.skipif(not BARON.exists(), reason="../shared/data/baron_mouse is not on this machine")
def test_novel_type_embedded_onto_a_sibling_is_called_unknown_baron():
    # reference: donor mouse2 without its beta cells; query: donor mouse1, a third of it beta cells. The model
    # has no latent direction for beta cells and embeds them onto other endocrine types (alpha, delta), where
    # the reference share and distance alone called 13% of them Unknown (AUROC 0.74 with this 1000-step
    # reference); their expression still differs from those types' profiles (51% Unknown, AUROC 0.95; known
    # cells 5.0% Unknown, 4.4% without the expression part).
    data = ad.read_h5ad(BARON)
    batch, cell_type = data.obs["batch"].astype(str).to_numpy(), data.obs["cell_type"].astype(str).to_numpy()
    ref = data[(batch == "mouse2") & (cell_type != "beta")].copy()
    query = data[batch == "mouse1"].copy()
    reference = biossl.tl.fit_reference(ref, "cell_type", batch_key="batch", max_steps=1000, progress=False)
    # the higher threshold of the docstring: at the default (0.5) the query graph settles them as alpha/delta
    biossl.tl.map_query(query, reference, batch_key="batch", mapping_threshold=AUTO, progress=False)
    novel = (query.obs["cell_type"] == "beta").to_numpy()
    called = (query.obs["biossl_label"] == "Unknown").to_numpy()
    assert roc_auc_score(novel, -query.obs["biossl_mapping_score"]) > 0.85
    assert called[novel].mean() > 0.3 and called[~novel].mean() < 0.1


def _clusters(rng, centres, sizes, shift=0.0):
    return np.vstack([rng.normal(c, 1.0, (n, 2)) + shift for c, n in zip(centres, sizes, strict=True)])


def _share(ref, query, ref_codes, proba, k=15):
    """The share map_query scores with (15 and 50 neighbours)."""
    joint = np.vstack([ref, query])
    idx, _ = biossl.graph.knn(joint, max(k, min(WIDE, len(joint) - 1)))
    return two_scale_share(idx, k, ref_codes, proba)


def test_reference_share_flags_query_only_neighbourhoods_not_composition():
    rng = np.random.default_rng(0)
    centres = [(0, 0), (12, 0)]
    ref = _clusters(rng, centres, [200, 200])
    codes = np.repeat([0, 1], 200)
    # a novel type right next to type 1 (no reference cells there), known types mixed with the reference
    query = np.vstack([_clusters(rng, centres, [200, 200]), rng.normal((17, 0), 1.0, (60, 2))])
    proba = np.zeros((460, 2))
    proba[:200, 0] = 1
    proba[200:, 1] = 1  # the novel cells are predicted as the neighbouring type
    share = _share(ref, query, codes, proba)
    assert np.median(share[400:]) < 0.35 and np.mean(share[:400] < AUTO) < 0.05
    # 10x more of type 0 in the query than in the reference (baron mouse1 -> mouse2: 9 vs 182 alpha cells):
    # its neighbourhoods hold few reference cells, as expected from the counts, so most are not flagged
    ref = np.vstack([rng.normal(centres[0], 1.0, (20, 2)), rng.normal(centres[1], 1.0, (300, 2))])
    codes = np.repeat([0, 1], [20, 300])
    query = _clusters(rng, centres, [200, 300])
    proba = np.zeros((500, 2))
    proba[:200, 0] = 1
    proba[200:, 1] = 1
    corrected = _share(ref, query, codes, proba)
    uncorrected = _share(ref, query, codes, np.zeros_like(proba))  # no class information
    assert np.mean(uncorrected[:200] < AUTO) > 0.9
    assert np.mean(corrected[:200] < AUTO) < 0.5 and np.mean(corrected[200:] < AUTO) < 0.05


def test_rare_reference_type_is_not_off_reference():
    # a type with 3 reference cells is judged by those cells, not by the 50 nearest cells of other types
    rng = np.random.default_rng(0)
    ref = np.vstack([rng.normal(0, 1, (300, 5)), rng.normal(6, 0.3, (3, 5))])
    codes = np.repeat([0, 1], [300, 3])
    query = rng.normal(6, 0.3, (5, 5))
    pooled = mapping_score(ref, query, 50)
    by_class = mapping_score(ref, query, 50, ref_codes=codes, query_codes=np.ones(5, dtype=int))
    assert pooled.max() < 0.5 and by_class.min() > 0.5


@pytest.mark.skipif(not CELLBENCH.exists(), reason="../shared/data/cellbench is not on this machine")
def test_cross_technology_mapping_cellbench():
    data = ad.read_h5ad(CELLBENCH)
    is_ref = (data.obs["technology"] == "CEL-seq2").to_numpy()
    ref, query = data[is_ref].copy(), data[~is_ref].copy()
    reference = biossl.tl.fit_reference(ref, "cell_type", batch_key="batch", max_steps=1000, progress=False)
    biossl.tl.map_query(query, reference, batch_key="batch", progress=False)
    assert query.uns["biossl"]["map_query"]["new_batches"] == ["sc_dropseq"]
    assert macro_f1(query.obs["cell_type"], query.obs["biossl_label"]) > 0.98
    # the whole query is shifted by technology: the reference share is measured against that, not absolutely;
    # a state of H1975 that Drop-seq holds more of forms query-only neighbourhoods at 15 neighbours but not at
    # 50, so it is not a novel type (3.8% of the query was Unknown with the 15-neighbour share alone; now 0)
    assert (query.obs["biossl_label"] == "Unknown").mean() < 0.01


def test_reference_sample_carries_labels_across_technologies():
    """Under a strong shift the calls settle on a joint expression graph with the reference's sampled cells."""
    data = ad.read_h5ad(STRONG_PBMC)
    is_b = (data.obs["batch"] == "tech_B").to_numpy()
    reference = biossl.tl.fit_reference(
        data[~is_b].copy(), "cell_type", batch_key="batch", max_steps=500, progress=False
    )
    without = biossl.Reference(
        *(
            getattr(reference, a)
            for a in ("model", "latent", "codes", "classes", "meta", "held_out", "profiles", "profile_similarity")
        )
    )
    scores = {}
    for name, ref in (("sample", reference), ("query graph only", without)):
        query = data[is_b].copy()
        biossl.tl.map_query(query, ref, batch_key="batch", progress=False)
        scores[name] = macro_f1(query.obs["cell_type"], query.obs["biossl_label"])
        record = query.uns["biossl"]["map_query"]
        assert record["refine_reference_cells"] == (len(reference.sample["index"]) if ref is reference else 0)
        # how well the refinement's graph joins sample and query: technologies scaled apart mix (0.87 measured)
        assert (record["refine_mixing"] > 0.5) if ref is reference else "refine_mixing" not in record
        assert record["shifted_classes"] == []  # no known type lost its mapping as a whole here
        assert record["refine_attached"] == 0  # a graph that joins sample and query leaves no cell unreached
        # a reference of one batch has no batch columns; the query's batch still gets its own, fitted on it
        assert record["new_batches"] == ["tech_B"] and record["fine_tune_steps"] == 500
    # measured 0.850 with the sample, 0.819 without (500-step reference)
    assert scores["sample"] > 0.8 and scores["sample"] > scores["query graph only"] + 0.01, scores


def test_poorly_mixed_batch_weighs_the_local_share_less():
    # batch 0: every query cell's 15 nearest cells are query cells (a technology the model did not align),
    # batch 1: well mixed. Batch 1 weighs the local share and the 50-neighbour share equally, batch 0 gives the
    # local one a weight of 0.1.
    rng = np.random.default_rng(0)
    n_ref, n_query, k, wide = 100, 60, 15, 50
    ref_codes = np.zeros(n_ref, dtype=np.int64)
    proba = np.ones((n_query, 1))
    batches = np.repeat([0, 1], n_query // 2)
    idx = np.empty((n_ref + n_query, wide), dtype=np.int64)
    for i in range(n_ref + n_query):
        idx[i] = rng.choice(np.delete(np.arange(n_ref + n_query), i), wide, replace=False)
    query_rows = n_ref + np.flatnonzero(batches == 0)
    for i in query_rows:  # query-only at 15, a few reference cells among the 50
        others = np.setdiff1d(np.arange(n_ref, n_ref + n_query), [i])
        idx[i, :k] = rng.choice(others, k, replace=False)
    share = two_scale_share(idx, k, ref_codes, proba, batches=batches)
    local = np.minimum(1.0, reference_share(idx[:, :k], ref_codes, proba, batches=batches))
    wide_share = np.minimum(1.0, reference_share(idx, ref_codes, proba, batches=batches))
    assert np.median((idx[query_rows, :k] < n_ref).sum(1)) == 0
    poor = batches == 0
    np.testing.assert_allclose(share[poor], local[poor] ** 0.1 * wide_share[poor] ** 0.9)
    assert not np.allclose(share[poor], np.sqrt(local * wide_share)[poor])
    np.testing.assert_allclose(share[batches == 1], np.sqrt(local * wide_share)[batches == 1])


@pytest.mark.skipif(not CELLBENCH.exists(), reason="../shared/data/cellbench is not on this machine")
def test_plates_to_other_protocols_cellbench():
    # reference: the three 5-line CEL-seq2 plates; query: the 3-line CEL-seq2 plate and Drop-seq, whose cells
    # have almost no reference cell among their 15 neighbours. With the local share weighed as elsewhere, HCC827
    # cells were called Unknown although they are a reference type: 3% of the query with the default 3000-step
    # budget (macro-F1 0.98). A 1000-step reference left 1.3-2.2% Unknown until the refinement's seeds had to
    # agree with the expression graph; since then 0% and macro-F1 1.000 for seeds 0-2 (0.2% with the local
    # share weighed as elsewhere, which test_poorly_mixed_batch_weighs_the_local_share_less checks directly)
    data = ad.read_h5ad(CELLBENCH)
    is_ref = data.obs["batch"].astype(str).str.contains("5cl").to_numpy()
    ref, query = data[is_ref].copy(), data[~is_ref].copy()
    reference = biossl.tl.fit_reference(ref, "cell_type", batch_key="batch", max_steps=1000, progress=False)
    biossl.tl.map_query(query, reference, batch_key="batch", progress=False)
    assert sorted(query.uns["biossl"]["map_query"]["new_batches"]) == ["sc_celseq2", "sc_dropseq"]
    assert (query.obs["biossl_label"] == "Unknown").mean() < 0.01
    assert macro_f1(query.obs["cell_type"], query.obs["biossl_label"]) > 0.99


def test_reference_dir_round_trip_and_damage(reference, reference_dir, halves, mapped, tmp_path):
    loaded = biossl.Reference.load(reference_dir)
    np.testing.assert_array_equal(loaded.latent, reference.latent)
    np.testing.assert_array_equal(loaded.profiles, reference.profiles)
    np.testing.assert_array_equal(loaded.profile_similarity, reference.profile_similarity)
    assert loaded.profiles.shape == (len(reference.classes), len(reference.model.genes))
    assert loaded.classes == reference.classes
    # the expression sample: labelled cells only, at most SAMPLE_PER_CLASS per class, counts kept exactly
    assert (loaded.sample["counts"] != reference.sample["counts"]).nnz == 0
    np.testing.assert_array_equal(loaded.sample["index"], reference.sample["index"])
    sampled_codes = reference.codes[reference.sample["index"]]
    assert (sampled_codes >= 0).all() and np.bincount(sampled_codes).max() <= SAMPLE_PER_CLASS
    assert loaded.sample["counts"].shape == (len(reference.sample["index"]), len(reference.model.genes))
    # a reference saved before biossl kept class profiles still loads and maps (without the expression part)
    old = tmp_path / "old"
    biossl.Reference(
        reference.model, reference.latent, reference.codes, reference.classes, reference.meta, reference.held_out
    ).save(old)
    query = halves[1].copy()
    biossl.tl.map_query(query, old, progress=False)
    assert biossl.Reference.load(old).profiles is None
    assert (query.obs["biossl_mapping_score"] >= mapped.obs["biossl_mapping_score"] - 1e-6).all()
    # profiles that do not fit the classes and genes are refused, and so is a sample that does not fit the cells
    with np.load(reference_dir / "reference.npz") as npz:
        arrays = dict(npz)
    shutil.copytree(reference_dir, tmp_path / "bad_sample")
    np.savez(tmp_path / "bad_sample" / "reference.npz", **{**arrays, "sample_index": arrays["sample_index"] + 10**6})
    with pytest.raises(ValueError, match=r"reference\.npz.*expression sample"):
        biossl.Reference.load(tmp_path / "bad_sample")
    arrays["profiles"] = arrays["profiles"][:, :10]
    shutil.copytree(reference_dir, tmp_path / "bad_profiles")
    np.savez(tmp_path / "bad_profiles" / "reference.npz", **arrays)
    with pytest.raises(ValueError, match=r"does not match config\.json"):
        biossl.Reference.load(tmp_path / "bad_profiles")
    config = json.loads((reference_dir / "config.json").read_text())
    assert config["reference"]["labels_key"] == "cell_type"
    assert sorted(p.name for p in reference_dir.iterdir()) == ["config.json", "model.pt", "reference.npz"]
    # a damaged reference.npz is refused with a clear message
    broken = tmp_path / "broken"
    reference.save(broken)
    (broken / "reference.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"reference\.npz"):
        biossl.Reference.load(broken)
    # a plain model directory (no reference in it) is not a reference
    with pytest.raises(ValueError, match="not a reference"):
        reference.model.save(tmp_path / "model_only")
        biossl.Reference.load(tmp_path / "model_only")
    with pytest.raises(ValueError, match="already exists"):
        reference.save(reference_dir)


def test_cli_fit_reference_and_annotate_with_it(halves, tmp_path):
    ref_path, query_path = tmp_path / "ref.h5ad", tmp_path / "query.h5ad"
    halves[0][:500].copy().write_h5ad(ref_path)
    halves[1][:300].copy().write_h5ad(query_path)
    runner = CliRunner()
    refdir = tmp_path / "refdir"
    res = runner.invoke(
        main, ["fit-reference", str(ref_path), "--labels-key", "cell_type", "-o", str(refdir), "--max-steps", "50"]
    )
    assert res.exit_code == 0, res.output
    assert "reference of 500 cells" in res.output
    out = tmp_path / "out.h5ad"
    res = runner.invoke(main, ["annotate", str(query_path), "--reference", str(refdir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "mapped 300 cells" in res.output
    annotated = ad.read_h5ad(out)
    assert "biossl_mapping_score" in annotated.obs
    score = annotated.obs["biossl_mapping_score"].to_numpy()
    assert annotated.uns["biossl"]["map_query"]["mapping_threshold"] == AUTO_REFINED
    assert not annotated.uns["biossl"]["map_query"]["hard_threshold"]  # "auto": the refinement settles the calls
    # --mapping-threshold moves the Unknown call: above every score, every cell is Unknown; at 0, none is
    for threshold, expect_unknown in ((float(score.max()) + 0.01, True), (0.0, False)):
        path = tmp_path / f"out_{threshold:.2f}.h5ad"
        res = runner.invoke(
            main, ["annotate", str(query_path), "--reference", str(refdir), "-o", str(path),
                   "--mapping-threshold", str(threshold)]
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        labels = ad.read_h5ad(path).obs["biossl_label"].astype(str)
        assert (labels == "Unknown").all() if expect_unknown else (labels != "Unknown").all()
    res = runner.invoke(main, ["annotate", str(query_path), "--labels-key", "cell_type", "-o", str(tmp_path / "y.h5ad"),
                               "--mapping-threshold", "0.5"])  # fmt: skip
    assert res.exit_code == 2 and "--reference REFDIR only" in res.output
    res = runner.invoke(main, ["annotate", str(query_path), "--reference", str(refdir), "-o", str(tmp_path / "z.h5ad"),
                               "--mapping-threshold", "-1"])  # fmt: skip
    assert res.exit_code == 2 and not (tmp_path / "z.h5ad").exists()
    help_text = " ".join(runner.invoke(main, ["annotate", "--help"]).output.split())
    assert f"[default: {AUTO_REFINED:g}]" in help_text  # the help states map_query's real default
    # a second fit to the same directory needs --force; --reference with --labels-key is a usage error
    res = runner.invoke(main, ["fit-reference", str(ref_path), "--labels-key", "cell_type", "-o", str(refdir)])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(
        main, ["annotate", str(query_path), "--reference", str(refdir), "-o", str(tmp_path / "x.h5ad"),
               "--labels-key", "cell_type"]
    )  # fmt: skip
    assert res.exit_code == 2 and "cannot be combined" in res.output
