"""Reference models: train once on a labelled dataset, save, and annotate new datasets with it.

A :class:`Reference` is a trained count VAE plus the reference cells' latent coordinates and labels.
:func:`map_query` embeds a query with the frozen model (new batches get their own one-hot columns,
fitted scArches-style), joins it to the reference in one kNN graph and propagates the labels.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from .. import graph
from .._check import check_fraction, check_int
from .._record import record, versions
from .._types import Device
from ..pp import check_anndata, check_batch, find_counts
from ._mapping import (
    AUTO_MAPPING_THRESHOLD,
    MAPPING_NEIGHBORS,
    UNKNOWN_WARN_SHARE,
    WIDE_SHARE_NEIGHBORS,
    calibrate_mapping,
    class_profiles,
    expression_match,
    expression_ratio,
    mapping_score,
    query_batches,
    reference_share,
    two_scale_share,
)
from ._propagation import (
    UNKNOWN,
    label_categorical,
    label_codes,
    normalise_rows,
    propagate_labels,
    self_train,
    write_labels,
)
from ._reference import Reference, expression_sample
from ._refine import REFINE_MAPPING_THRESHOLD, REFINE_MIN_CELLS, refine_on_query

if TYPE_CHECKING:
    pass

__all__ = [
    "Reference",
    "class_profiles",
    "expression_match",
    "expression_ratio",
    "fit_reference",
    "map_query",
    "mapping_score",
    "reference_share",
    "two_scale_share",
]  # the scores live in ._mapping; named here too, where map_query's documentation points

logger = logging.getLogger("biossl")


def fit_reference(
    adata: AnnData,
    labels_key: str,
    *,
    batch_key: str | None = None,
    unlabeled_category: str | None = "Unknown",
    n_latent: int = 20,
    adversarial: bool = False,
    max_steps: int = 3000,
    gene_key: str | None = None,
    seed: int = 0,
    device: Device | str = "auto",
    progress: bool | None = None,
) -> Reference:
    """Train a reference: a count VAE on ``adata`` plus its latent and labels.

    Parameters
    ----------
    adata
        Labelled reference cells with raw counts (genes are selected as in :func:`biossl.pp.setup`).
    labels_key
        Column of ``obs`` with the cell types (unlabelled cells, NaN or ``unlabeled_category``, are used
        for training the model but do not seed labels).
    batch_key
        Batches of the reference the model conditions on.
    unlabeled_category
        Value marking unlabelled cells.
    n_latent, adversarial, max_steps, seed, device, progress
        As in :func:`biossl.tl.embed`.
    gene_key
        ``var`` column with the gene identifiers to store (default ``var_names``), e.g. Ensembl ids.

    Returns
    -------
    A :class:`Reference`; ``adata`` is not modified.
    """
    from ..model import EmbeddingModel, align_genes, gene_ids
    from ..pp import plan_setup

    seed, n_latent, max_steps = (
        check_int("seed", seed, 0),
        check_int("n_latent", n_latent, 1),
        check_int("max_steps", max_steps, 1),
    )
    codes, classes = _reference_labels(adata, labels_key, unlabeled_category)
    mask, params = plan_setup(adata, batch_key=batch_key)
    genes = [str(g) for g in gene_ids(adata, gene_key)[mask]]
    counts, _, _ = align_genes(adata, genes, counts=params["counts"], gene_key=gene_key)
    batch = check_batch(adata, batch_key)
    model = EmbeddingModel.fit(
        counts,
        genes,
        batch,
        model="vae",
        n_latent=n_latent,
        adversarial=adversarial,
        max_steps=max_steps,
        seed=seed,
        device=device,
        progress=progress,
    )
    latent = model.embed_counts(counts, model.batch_codes(batch, adata.n_obs))
    meta = {
        "labels_key": labels_key,
        "batch_key": batch_key,
        "gene_key": gene_key,
        "n_cells": int(adata.n_obs),
        "distance_threshold": calibrate_mapping(latent, model.validation_index, codes),
    }
    profiles, similarity = class_profiles(counts, codes, len(classes))
    batch_names = np.full(adata.n_obs, "") if batch is None else batch.astype(str).to_numpy()
    sample = expression_sample(counts, codes, batch_names, seed)
    return Reference(model, latent, codes, classes, meta, model.validation_index, profiles, similarity, sample)


def _reference_labels(adata: AnnData, labels_key: str, unlabeled_category: str | None) -> tuple[np.ndarray, list[str]]:
    """Label codes of a reference, where (unlike a query) every cell may be labelled."""
    check_anndata(adata)
    codes, classes = label_codes(adata, labels_key, unlabeled_category)
    where = f"adata.obs[{labels_key!r}]"
    if not classes:
        raise ValueError(f"{where} has no labelled cell; a reference needs labels.")
    if len(classes) < 2:
        raise ValueError(f"{where} has only one class ({classes[0]!r}); a reference needs two.")
    if UNKNOWN in classes:
        raise ValueError(f"{UNKNOWN!r} is a class in {where}; biossl reserves it, rename the class.")
    return codes, classes


def map_query(
    adata: AnnData,
    reference: Reference | str | os.PathLike,
    *,
    batch_key: str | None = None,
    key_added: str = "biossl",
    n_neighbors: int = 15,
    alpha: float = 0.9,
    unknown_threshold: float | None = None,
    mapping_threshold: float | str = "auto",
    refine: bool = True,
    fine_tune_steps: int = 500,
    min_overlap: float = 0.5,
    case_sensitive: bool = True,
    gene_key: str | None = None,
    gene_map=None,
    seed: int = 0,
    device: Device | str = "auto",
    progress: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Annotate ``adata`` with a reference: embed with the frozen model, join the graphs, propagate.

    Parameters
    ----------
    adata
        Query cells with raw counts; genes are matched to the model's by name (missing genes are zero-filled
        and left out of the likelihood). A backed AnnData (``read_h5ad(path, backed="r")``) is read by chunks
        of rows, and only the model's genes are held in memory.
    reference
        A :class:`Reference` or a directory written by :meth:`Reference.save`.
    batch_key
        Batches of the query. Batches the model has not seen get new batch columns fitted on the query
        (only those weights are trained, ``fine_tune_steps`` steps), also when the reference was one batch
        (a model without batch columns); without a batch key the whole query is one new batch.
    key_added
        Prefix of the keys written (as :func:`biossl.tl.annotate`).
    n_neighbors, alpha
        Graph and propagation settings.
    unknown_threshold
        Call ``"Unknown"`` below this confidence.
    mapping_threshold
        Call ``"Unknown"`` where the mapping score is below this: cells of a type absent from the
        reference. The score (0 to 1; 1 = mapped as well as a typical query cell) is the product of three
        parts, each capped at 1: how much the cell's neighbourhood in the joint graph is shared with
        reference cells, relative to what the query as a whole and its predicted class make typical
        (:func:`reference_share`; a novel type forms query-only neighbourhoods even next to a related
        reference type); how close it lies to the reference cells of its predicted class
        (:func:`mapping_score`) relative to the distance that 1% of the reference cells held out of
        training fall below; and how well its expression matches its predicted class's mean profile
        relative to the class's own cells (:func:`expression_match`; a model that never saw a type embeds
        it onto a related known type, but its genes still differ). The share is the geometric mean of the
        share among ``n_neighbors`` and among 50 neighbours (:func:`two_scale_share`): a state of a known
        type that the query holds more of than the reference (a few dozen query-only cells next to
        well-mixed cells of their type) is not scored as a type of its own, while a novel type, query-only
        at both scales, is. ``"auto"``: with ``refine``, the lower-scoring half of the cells below 0.5 seed the
        Unknown class and the refinement settles every call; without, cells below 0.75 are called Unknown. A
        number calls every cell below it Unknown, with or without ``refine`` (``uns["biossl"]["map_query"]
        ["hard_threshold"]`` is then True). ``uns["biossl"]["map_query"]["reference_mixing"]`` records how well
        the query mixes with the reference in the joint graph (:func:`biossl.graph.batch_mixing`; 1 = as if one
        data set), ``["refine_mixing"]`` how well the refinement's expression graph joins them (see ``refine``; absent
        without a reference sample), ``["shifted_classes"]`` the known types that the refinement kept although every
        cell of theirs scored low, ``["refine_unknown_seeds"]`` how many query cells seeded its Unknown class,
        ``["known_from_unknown"]`` how many cells it gave back their top class after
        calling them Unknown and ``["refine_attached"]`` how many cells its graph left unreached by every seed,
        which took their nearest reached cells' call (see ``refine``). Limits (``benchmarks/reference_mapping.py``): a
        known type far more abundant in the query than in the reference still scores low, and a novel type close to a
        known one in expression too (naive vs memory CD4 T cells) is hard to tell from it. Lower the threshold when a
        known type is called Unknown in bulk (the top class of ``obsm["{key_added}_proba"]`` still names it; a warning
        is logged when more than 10% of the query is Unknown, naming the Unknown cells' most frequent top classes); a
        higher one flags more novel cells.
    refine
        Settle the calls on an expression graph: a PCA of the counts of the query and of the reference's sample of
        labelled cells (:attr:`Reference.sample`; genes scaled per batch when batches do not mix). The sample's
        labels, the more confident half of each predicted class among query cells whose mapping score reaches
        ``mapping_threshold`` and whose class the sample's labels alone, spread over that graph, give too (so a
        mapping that puts part of one type onto another does not seed its error; not checked when the sample and
        the query hardly mix in that graph unless the sample's calls agree with 60% of the well-scoring mapped
        ones), and the lower-scoring half of
        the cells below it, as an "Unknown" class (recorded as ``refine_unknown_seeds``; where the graph does not
        join sample and query and that half holds fewer than 5 cells, which carry as much mass as a whole class,
        the class they spread calls Unknown only them and cells whose own score is below 0.75), are
        propagated over that graph as in :func:`biossl.tl.annotate` (a cell no seed reaches takes its nearest
        reached cells' call, from their final probabilities), and the result is averaged with the mapped
        probabilities (with a numeric ``mapping_threshold``, cells below it count as Unknown there). When that
        graph joins the sample and the query well (mixing 0.5 or more, recorded as ``refine_mixing``), its
        propagated probabilities alone are the result, and a low-scoring cell seeds Unknown only where the
        sample's cells hardly reach (a known type the shift moved keeps reference cells around it; a type the
        reference lacks does not). A predicted class of which hardly any query cell scores well (at most 10%, 20
        low-scoring cells or more; at most 3 times its share of the reference) seeds itself instead of Unknown where
        its expression contrast against the well-mapped classes matches its contrast in the sample about as well
        as theirs do: a known type that the shift moved as a whole, not a type the reference lacks put onto its
        nearest class. Cells the propagation calls Unknown get their top class back where, grouped by it, their
        profile's contrast matches the class's contrast in the sample (0.9 of the typical agreement; 0.8 where the
        group's profile is almost the class's query profile) and lies near the class's query profile: a few
        Unknown seeds can take a region of a known type (a part of such a group that fails on its own stays
        Unknown; recorded as ``known_from_unknown``). A group that fails for its top class gets, on the same
        terms, the class whose query profile lies nearest its own (a type the reference holds few cells of,
        mapped onto a neighbouring class); its probabilities of the two classes swap. Neither rule applies with a
        numeric ``mapping_threshold``. References saved without a sample use the query's own graph. Under a strong
        shift (another technology or species) the frozen model aligns the query only roughly; expression
        neighbourhoods then carry the calls, and an Unknown call needs a region of the query, not a single low
        score (``benchmarks/strong_batch.py``). Skipped for queries under 30 cells.
    fine_tune_steps
        Training steps for new batch columns (0 embeds new batches as the average of known ones).
    min_overlap
        Minimum fraction of the model's genes that must be found in the query.
    case_sensitive
        Match gene names exactly; False ignores case.
    gene_key
        ``var`` column holding the identifiers to match (default ``var_names``).
    gene_map
        Rename the query's genes into the reference's namespace first, e.g. ``"human_to_mouse"`` for a human
        query on a mouse reference: a dict, a two-column table file with a header, or a built-in name (see
        :func:`biossl.pp.map_genes`). Only one-to-one pairs are used; the counts of renamed genes and of
        ambiguous pairs go to ``uns["biossl"]["gene_overlap"]["gene_map"]``.
    seed, device, progress
        As in :func:`biossl.tl.embed`.
    copy
        Return a modified copy.

    Returns
    -------
    None or a copy. Writes ``obsm["X_biossl"]`` (query latent), ``obs["{key_added}_label"]``,
    ``obs["{key_added}_confidence"]``, ``obsm["{key_added}_proba"]``, ``obs["{key_added}_mapping_score"]``,
    ``uns["biossl"]["classes"]``, ``uns["biossl"]["gene_overlap"]`` and ``uns["biossl"]["map_query"]``.
    """
    unknown_threshold = check_fraction("unknown_threshold", unknown_threshold, allow_none=True)
    if not (isinstance(mapping_threshold, str) and mapping_threshold == "auto"):
        if (
            not isinstance(mapping_threshold, int | float)
            or isinstance(mapping_threshold, bool)
            or mapping_threshold < 0
        ):
            raise ValueError(f"mapping_threshold must be 'auto' or a number >= 0, got {mapping_threshold!r}")
    min_overlap = check_fraction("min_overlap", min_overlap, open_low=True)
    n_neighbors, fine_tune_steps = (
        check_int("n_neighbors", n_neighbors, 2),
        check_int("fine_tune_steps", fine_tune_steps, 0),
    )
    seed = check_int("seed", seed, 0)
    if not isinstance(reference, Reference | str | os.PathLike):
        raise ValueError(
            f"reference must be a biossl.Reference or a reference directory, got {type(reference).__name__}."
        )
    check_anndata(adata)
    if not isinstance(reference, Reference):
        reference = Reference.load(reference, device=device)
    mapping = _QueryMapping(reference, n_neighbors=n_neighbors, alpha=alpha, seed=seed)
    mapping.embed(
        adata, batch_key, fine_tune_steps=fine_tune_steps, min_overlap=min_overlap, case_sensitive=case_sensitive,
        gene_key=gene_key, gene_map=gene_map, progress=progress,
    )  # fmt: skip
    mapping.propagate()
    mapping.score()
    mapping.settle(mapping_threshold, refine=bool(refine), unknown_threshold=unknown_threshold)
    adata = adata.copy() if copy else adata
    mapping.write(adata, key_added)
    return adata if copy else None


class _QueryMapping:
    """The stages of :func:`map_query`, in order: embed, propagate, score, settle, write.

    Each stage keeps what the next one needs as attributes; none of them changes the query AnnData but ``write``.
    """

    def __init__(self, reference: Reference, *, n_neighbors: int, alpha: float, seed: int) -> None:
        self.reference, self.n_neighbors, self.alpha, self.seed = reference, n_neighbors, alpha, seed
        self.n_ref = reference.latent.shape[0]

    def embed(
        self, adata: AnnData, batch_key: str | None, *, fine_tune_steps: int, min_overlap: float,
        case_sensitive: bool, gene_key: str | None, gene_map, progress: bool | None,
    ) -> None:  # fmt: skip
        """Match the genes, fit columns for new batches (``fine_tune_steps``) and embed with the frozen model."""
        from ..model import align_genes

        model = self.reference.model
        self.X, self.present, self.overlap = align_genes(
            adata, model.genes, counts="X" if adata.isbacked else find_counts(adata), min_overlap=min_overlap,
            case_sensitive=case_sensitive, gene_key=gene_key, gene_map=gene_map,
        )  # fmt: skip
        if adata.isbacked:  # a backed X: only the model's genes are read, by chunks of rows
            from .._backed import read_counts

            self.X = read_counts(self.X)
        codes, self.new = query_batches(model, check_batch(adata, batch_key), adata.n_obs)
        if self.new and fine_tune_steps > 0:
            model = model.adapt(
                self.X, self.new, codes, gene_mask=self.present, max_steps=fine_tune_steps, seed=self.seed,
                progress=progress,
            )  # fmt: skip
        elif self.new:
            codes = np.where(codes >= len(model.batches), -1, codes)
        self.fine_tune_steps = fine_tune_steps if self.new else 0
        self.codes = codes
        self.latent = model.embed_counts(self.X, codes)

    def propagate(self) -> None:
        """Join reference and query in one kNN graph and spread the reference labels over it (with self-training)."""
        ref, n_ref = self.reference, self.n_ref
        joint = np.vstack([ref.latent, self.latent])
        self.k = int(min(self.n_neighbors, joint.shape[0] - 1))
        self.wide_k = int(min(WIDE_SHARE_NEIGHBORS, joint.shape[0] - 1))
        self.wide_idx, wide_dist = graph.knn(joint, max(self.k, self.wide_k), seed=self.seed)  # serves both scales
        self.idx = self.wide_idx[:, : self.k]
        W = graph.gaussian_affinity(self.idx, wide_dist[:, : self.k])
        seeds = np.concatenate([ref.codes, np.full(self.latent.shape[0], -1)])
        proba, _, _ = propagate_labels(W, seeds, len(ref.classes), alpha=self.alpha)
        proba, confidence, pred = normalise_rows(self_train(joint, seeds, proba, seed=self.seed))
        self.proba, self.confidence, self.pred = proba[n_ref:], confidence[n_ref:], pred[n_ref:]
        # how well the query mixes with the reference in the joint graph (1 = as if one data set)
        self.mixing = graph.batch_mixing(self.idx, np.arange(joint.shape[0]) < n_ref)["score"]

    def score(self) -> None:
        """The mapping score: reference share x distance to the predicted class x expression match (each <= 1)."""
        ref, n_ref = self.reference, self.n_ref
        trained = ref.trained_index
        distance = mapping_score(
            ref.latent[trained], self.latent, MAPPING_NEIGHBORS, ref_codes=ref.codes[trained], query_codes=self.pred
        )
        threshold = ref.meta.get("distance_threshold")
        if threshold is None:  # saved before the class-aware distance: calibrate it now
            threshold = calibrate_mapping(ref.latent, ref.held_out, ref.codes)
        self.distance_threshold = float(threshold)
        share = two_scale_share(self.wide_idx, self.k, ref.codes, self.proba, batches=self.codes)
        score = share * np.minimum(1.0, distance / max(self.distance_threshold, 1e-12))
        if ref.profiles is not None:  # references saved before biossl kept class profiles go without
            query_neighbors = np.where(self.idx[n_ref:] >= n_ref, self.idx[n_ref:] - n_ref, -1)
            score = score * expression_match(
                self.X, self.present, self.pred, query_neighbors, ref.profiles, ref.profile_similarity,
                ref.class_sizes,
                batches=self.codes,
            )  # fmt: skip
        self.mapping_score = score

    def settle(self, mapping_threshold: float | str, *, refine: bool, unknown_threshold: float | None) -> None:
        """The calls: refined on the query's own graph (or thresholded on the mapping score), then Unknown."""
        self.refine = refine and self.latent.shape[0] >= REFINE_MIN_CELLS
        self.hard = hard = mapping_threshold != "auto"  # a threshold the user gave calls every cell below it Unknown
        if mapping_threshold == "auto":
            mapping_threshold = REFINE_MAPPING_THRESHOLD if self.refine else AUTO_MAPPING_THRESHOLD
        self.mapping_threshold, self.unknown_threshold = mapping_threshold, unknown_threshold
        self.refine_mixing, self.shifted, self.known_from_unknown, self.attached = None, [], 0, 0
        self.unknown_seeds = 0
        if self.refine:
            self.proba, self.confidence, self.pred, unknown, info = refine_on_query(
                self.X, self.present, self.codes, self.proba, self.pred, self.confidence, self.mapping_score,
                mapping_threshold, len(self.reference.classes), self.k, self.alpha, self.seed,
                sample=self.reference.sample, sample_codes=self.reference.codes, hard=hard,
            )  # fmt: skip
            self.refine_mixing = info["mixing"]
            self.shifted = [str(self.reference.classes[c]) for c in info["shifted"]]
            self.known_from_unknown, self.attached = info["known_from_unknown"], info["attached"]
            self.unknown_seeds = info["unknown_seeds"]
        else:
            unknown = (self.pred < 0) | (self.mapping_score < mapping_threshold)
        if unknown_threshold is not None:
            unknown |= self.confidence < unknown_threshold
        self.unknown = unknown

    def write(self, adata: AnnData, key_added: str) -> None:
        """Write the latent, labels, confidence, probabilities, mapping score and the record into ``adata``."""
        classes = self.reference.classes
        labels = label_categorical(classes, self.pred, self.unknown)
        adata.obsm["X_biossl"] = self.latent
        write_labels(adata, key_added, labels, self.confidence, self.proba)
        adata.obs[f"{key_added}_mapping_score"] = self.mapping_score.astype(np.float32)
        record(adata, "gene_overlap", self.overlap)
        n_unknown, sample = int(self.unknown.sum()), self.reference.sample
        record(
            adata,
            "map_query",
            {
                "reference_cells": int(self.n_ref),
                "new_batches": list(self.new),
                "fine_tune_steps": int(self.fine_tune_steps),
                "n_neighbors": self.k,
                "alpha": self.alpha,
                "mapping_threshold": self.mapping_threshold,
                "hard_threshold": self.hard,
                "refine": self.refine,
                "refine_reference_cells": len(sample["index"]) if self.refine and sample is not None else 0,
                "reference_mixing": self.mixing,
                "refine_mixing": self.refine_mixing,
                "shifted_classes": self.shifted,
                "refine_unknown_seeds": self.unknown_seeds,
                "known_from_unknown": self.known_from_unknown,
                "refine_attached": self.attached,
                "distance_threshold": self.distance_threshold,
                "wide_share_neighbors": self.wide_k,
                "unknown_threshold": self.unknown_threshold,
                "key_added": key_added,
                "n_unknown": n_unknown,
                "seed": self.seed,
                "versions": versions(),
            },
        )
        record(adata, "classes", classes)
        top_classes = self._unknown_top_classes()
        logger.info(
            "map_query: %d of %d model genes matched; %d cells, %d Unknown%s",
            self.overlap["n_matched"], self.overlap["n_model_genes"], adata.n_obs, n_unknown,
            ("" if self.refine_mixing is None else f"; refinement graph mixing {self.refine_mixing:.2f}")
            + (f"; moved as a whole by the shift, kept known: {', '.join(self.shifted)}" if self.shifted else "")
            + (f"; {self.known_from_unknown} cells called Unknown by the refinement express a known class and "
               "get it" if self.known_from_unknown else "")
            + (f"; {self.attached} cells no seed reached in the refinement graph took their nearest reached cells' "
               "call" if self.attached else "")
            + (f"; the Unknown cells' top classes: {top_classes}" if n_unknown else ""),
        )  # fmt: skip
        if n_unknown > UNKNOWN_WARN_SHARE * adata.n_obs:
            logger.warning(
                "map_query: %.0f%% of the query called Unknown (query-reference mixing %.2f; their top classes: %s). "
                "Types the reference lacks are Unknown by design; if known types are among them (the top class of "
                "obsm[%r] names them), a strong shift such as another technology or species may have lowered their "
                "mapping scores: pass a lower mapping_threshold=, or annotate reference and query as one data set "
                "with their batches as batch_key= (the pooled path of biossl.tl.annotate).",
                100 * n_unknown / max(adata.n_obs, 1), self.mixing, top_classes, f"{key_added}_proba",
            )  # fmt: skip

    def _unknown_top_classes(self, n_named: int = 3) -> str:
        """The most frequent top classes of the Unknown calls, with their counts and the classes' reference cells.

        For example "CD14+ Mono 221 (reference 30), DC 6 (reference 12)".

        A known type that a strong shift moved as a whole shows up here as one class holding most of them; one the
        reference holds only a few cells of (a rare type in one species, common in the other) is hard to tell from a
        type the reference lacks, and its reference count says so.
        """
        ref = self.reference
        proba = self.proba[self.unknown]
        counts = np.bincount(proba[proba.sum(1) > 0].argmax(1), minlength=len(ref.classes))
        in_reference = ref.class_sizes
        order = np.argsort(-counts, kind="stable")[:n_named]
        named = [f"{ref.classes[c]} {counts[c]} (reference {in_reference[c]})" for c in order if counts[c]]
        return ", ".join(named) if named else "none"
