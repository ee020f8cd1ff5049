"""``tl.annotate``: spread a few labels over the cell graph."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._docs import doc_params
from .._record import record
from ._propagation import (
    CLASS_PRIORS,
    annotation_predictor,
    attach_to_reached,
    call_labels,
    check_no_unknown_class,
    connectivities,
    graph_representation,
    split_labels,
    write_labels,
)

logger = logging.getLogger("biossl")


@doc_params
def annotate(
    adata: AnnData,
    labels_key: str,
    *,
    unlabeled_category: str | None = "Unknown",
    key_added: str = "biossl",
    unknown_threshold: float | None = None,
    neighbors_key: str | None = "biossl",
    alpha: float = 0.9,
    class_prior: str = "estimate",
    refine: bool = True,
    calibrate: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Annotate every cell from a few labelled ones by label propagation on the cell graph.

    Labels spread over ``obsp["biossl_connectivities"]`` by solving ``(I - alpha S) F = Y`` with
    class-balanced seeds (Zhou et al. 2004). Probabilities are the rows of ``F`` normalised to one.
    A cell no labelled cell can reach through the graph (a part of the graph with no label, such as a
    strongly shifted batch's type left without an edge to the labelled one) takes the mean class-balanced
    probabilities (before the class prior and the self-training, so a type the labelled cells hold few of is not
    shrunk) of its 15 nearest reached cells in the graph's representation, pulled toward uniform by how far away
    they lie (:func:`attach_unreached`); beyond 5 times their neighbourhood radius it is called ``"Unknown"``, as
    are cells whose top probability is below ``unknown_threshold``.

    Parameters
    ----------
    adata
        Annotated data with a graph from :func:`biossl.tl.neighbors`.
    labels_key
        Column of ``obs`` with the known labels; unlabelled cells are NaN or ``unlabeled_category``.
    unlabeled_category
        {unlabeled_category}
    key_added
        Prefix of the keys written.
    unknown_threshold
        Call ``"Unknown"`` below this confidence (0–1); None calls only cells far from every reached cell Unknown.
    neighbors_key
        {neighbors_key}
    class_prior
        ``"estimate"`` (default): after propagation, reweight the classes by their share of the calls,
        capped at 1.5 / n_classes, so a rare type whose few cells are all labelled does not claim the
        territory of a large one (:func:`biossl.tl._propagation.estimate_class_prior`); ``"uniform"``: every
        class carries the same total mass (biossl 0.1.0). On baron_mouse the estimate raised macro-F1 at 10 labels per
        type from 0.79 to 0.93, on pbmc3k at 25 from 0.80 to 0.90 (``benchmarks/anchors``).
    refine
        Refine the propagated probabilities with a logistic regression on the graph's representation,
        trained on the labelled and the confidently pseudo-labelled cells (self-training).
    calibrate
        Calibrate the probabilities by cross-validation over the labelled cells (temperature scaling,
        :mod:`biossl.tl.calibrate`); False keeps the raw propagated probabilities.
    alpha
        Propagation strength in (0, 1): the weight of the graph against the seeds. Near 1 the solution
        drifts toward a degree-weighted global average; 0.9 was best across pbmc3k and baron_mouse
        (``benchmarks/fewlabel.py``).
    copy
        {copy}

    Returns
    -------
    None or a copy. Writes

    ``obs["{key_added}_label"]``
        Predicted type (labelled cells keep their label), ``"Unknown"`` where no call is made.
    ``obs["{key_added}_confidence"]``
        Top class probability (1 for labelled cells, 0 for cells called Unknown as unreachable).
    ``obsm["{key_added}_proba"]``
        Class probabilities, columns in the order of ``uns["biossl"]["classes"]``.
    """
    if unknown_threshold is not None and not (
        isinstance(unknown_threshold, int | float | np.integer | np.floating) and 0 <= unknown_threshold <= 1
    ):
        raise ValueError(f"unknown_threshold must be a number between 0 and 1, got {unknown_threshold!r}")
    if not isinstance(alpha, int | float | np.integer | np.floating):  # graph.propagate checks the range
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if class_prior not in CLASS_PRIORS:
        raise ValueError(f"class_prior must be one of {CLASS_PRIORS}, got {class_prior!r}")
    codes, classes = split_labels(adata, labels_key, unlabeled_category)
    check_no_unknown_class(classes, labels_key)
    W = connectivities(adata, neighbors_key)
    if W.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"the graph has shape {W.shape} but adata has {adata.n_obs} cells; rebuild it.")
    rep = graph_representation(adata, neighbors_key) if refine else None
    predictor = annotation_predictor(W, len(classes), alpha=alpha, rep=rep, class_prior=class_prior)
    proba = predictor(codes)
    calibration = {"method": "none"}
    if calibrate:  # calibrated confidence (biossl/tl/calibrate.py); the argmax, hence the labels, do not change
        from .calibrate import calibrate_annotation

        proba, calibration = calibrate_annotation(predictor.fold, codes, proba)
    proba, n_attached = attach_unreached(adata, proba, neighbors_key, predictor.balanced)
    labels, confidence, proba, unknown = call_labels(proba, codes, classes, unknown_threshold=unknown_threshold)
    labelled = codes >= 0

    adata = adata.copy() if copy else adata
    write_labels(adata, key_added, labels, confidence, proba)
    record(
        adata,
        "annotate",
        {
            "labels_key": labels_key,
            "unlabeled_category": unlabeled_category,
            "key_added": key_added,
            "unknown_threshold": unknown_threshold,
            "neighbors_key": neighbors_key,
            "alpha": alpha,
            "class_prior": class_prior,
            "refine": bool(rep is not None),
            "calibration": calibration,
            "n_labelled": int(labelled.sum()),
            "n_attached": n_attached,
            "n_unknown": int(unknown.sum()),
        },
    )
    record(adata, "classes", classes)
    logger.info(
        "annotate: %d labelled → %d cells, %d Unknown; %d cells no label reached through the graph took the call "
        "of their nearest reached cells", labelled.sum(), adata.n_obs, unknown.sum(), n_attached,
    )  # fmt: skip
    return adata if copy else None


def attach_unreached(
    adata: AnnData, proba: np.ndarray, neighbors_key: str | None, balanced: np.ndarray | None
) -> tuple[np.ndarray, int]:
    """``proba`` with the cells no label reached given their nearest reached cells' call (:func:`attach_to_reached`).

    Needs the graph's representation and its distances (``obsp["{key}_distances"]``); without them, or when every
    cell was reached, ``proba`` comes back as it is. Returns the probabilities and how many cells took a call.
    """
    key = "distances" if neighbors_key is None else f"{neighbors_key}_distances"
    if balanced is None or key not in adata.obsp:
        return proba, 0
    rep = graph_representation(adata, neighbors_key)
    if rep is None:
        return proba, 0
    radius = sp.csr_matrix(adata.obsp[key]).max(axis=1).toarray().ravel()
    return attach_to_reached(rep, radius, proba, balanced)
