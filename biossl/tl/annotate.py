"""``tl.annotate``: spread a few labels over the cell graph."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import graph
from .._record import record

logger = logging.getLogger("biossl")

UNKNOWN = "Unknown"


def split_labels(adata: AnnData, labels_key: str, unlabeled_category: str | None) -> tuple[np.ndarray, list[str]]:
    """Integer codes of ``obs[labels_key]`` (-1 = unlabelled) and the sorted class names.

    Raises ValueError when the column is missing, nothing or everything is labelled, or only one class is.
    """
    if labels_key not in adata.obs:
        raise ValueError(
            f"labels_key={labels_key!r} is not a column of adata.obs (have: {list(adata.obs.columns)[:10]})."
        )
    col = adata.obs[labels_key]
    missing = col.isna().to_numpy()
    text = col.astype(str).to_numpy()
    if unlabeled_category is not None:
        missing |= text == str(unlabeled_category)
    classes = sorted(set(text[~missing]))
    where = f"adata.obs[{labels_key!r}]"
    if not classes:
        raise ValueError(
            f"{where} has no labelled cell (all NaN or {unlabeled_category!r}); label a few cells of each type."
        )
    if len(classes) < 2:
        raise ValueError(f"{where} has only one labelled class ({classes[0]!r}); label cells of at least two types.")
    if not missing.any():
        raise ValueError(
            f"every cell in {where} is labelled, so there is nothing to annotate; mark unlabelled cells as NaN "
            f"or {unlabeled_category!r}."
        )
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.array([-1 if m else lookup[t] for m, t in zip(missing, text, strict=True)], dtype=np.int64)
    return codes, classes


def connectivities(adata: AnnData, neighbors_key: str | None) -> sp.csr_matrix:
    """The graph written by :func:`biossl.tl.neighbors` (or scanpy's, with ``neighbors_key=None``)."""
    key = "connectivities" if neighbors_key is None else f"{neighbors_key}_connectivities"
    if key not in adata.obsp:
        raise ValueError(
            f"no graph at adata.obsp[{key!r}]; run biossl.tl.neighbors(adata) (or sc.pp.neighbors and "
            "neighbors_key=None) first."
        )
    return sp.csr_matrix(adata.obsp[key])


def class_balanced_seeds(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Seed matrix with each class's seeds summing to one, so large classes do not swamp rare ones."""
    Y = np.zeros((len(codes), n_classes))
    labelled = np.flatnonzero(codes >= 0)
    counts = np.bincount(codes[labelled], minlength=n_classes)
    Y[labelled, codes[labelled]] = 1.0 / counts[codes[labelled]]
    return Y


def annotate(
    adata: AnnData,
    labels_key: str,
    *,
    unlabeled_category: str | None = "Unknown",
    key_added: str = "biossl",
    unknown_threshold: float | None = None,
    neighbors_key: str | None = "biossl",
    alpha: float = 0.9,
    copy: bool = False,
) -> AnnData | None:
    """Annotate every cell from a few labelled ones by label propagation on the cell graph.

    Labels spread over ``obsp["biossl_connectivities"]`` by solving ``(I - alpha S) F = Y`` with
    class-balanced seeds (Zhou et al. 2004). Probabilities are the rows of ``F`` normalised to one.
    Cells no labelled cell can reach through the graph, and cells whose top probability is below
    ``unknown_threshold``, are called ``"Unknown"``.

    Parameters
    ----------
    adata
        Annotated data with a graph from :func:`biossl.tl.neighbors`.
    labels_key
        Column of ``obs`` with the known labels; unlabelled cells are NaN or ``unlabeled_category``.
    unlabeled_category
        Value marking unlabelled cells (in addition to NaN).
    key_added
        Prefix of the keys written.
    unknown_threshold
        Call ``"Unknown"`` below this confidence (0–1); None calls only unreachable cells Unknown.
    neighbors_key
        Prefix of the graph in ``obsp``; None uses scanpy's ``obsp["connectivities"]``.
    alpha
        Propagation strength in (0, 1): the weight of the graph against the seeds. Near 1 the solution
        drifts toward a degree-weighted global average; 0.9 was best across pbmc3k and baron_mouse
        (``benchmarks/fewlabel.py``).
    copy
        Return a modified copy.

    Returns
    -------
    None or a copy. Writes

    ``obs["{key_added}_label"]``
        Predicted type (labelled cells keep their label), ``"Unknown"`` where no call is made.
    ``obs["{key_added}_confidence"]``
        Top class probability (1 for labelled cells, 0 for unreachable cells).
    ``obsm["{key_added}_proba"]``
        Class probabilities, columns in the order of ``uns["biossl"]["classes"]``.
    """
    if unknown_threshold is not None and not 0 <= unknown_threshold <= 1:
        raise ValueError(f"unknown_threshold must be between 0 and 1, got {unknown_threshold!r}")
    codes, classes = split_labels(adata, labels_key, unlabeled_category)
    if UNKNOWN in classes:
        raise ValueError(
            f"{UNKNOWN!r} is used as a real class in obs[{labels_key!r}] but biossl reserves it for cells it cannot "
            f"call; pass unlabeled_category={UNKNOWN!r} if it marks unlabelled cells, or rename the class."
        )
    W = connectivities(adata, neighbors_key)
    if W.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"the graph has shape {W.shape} but adata has {adata.n_obs} cells; rebuild it.")
    proba, confidence, label_codes = propagate_labels(W, codes, len(classes), alpha=alpha)

    labelled = codes >= 0
    label_codes[labelled] = codes[labelled]
    confidence[labelled] = 1.0
    unknown = label_codes < 0
    if unknown_threshold is not None:
        unknown |= (confidence < unknown_threshold) & ~labelled
    names = np.array([*classes, UNKNOWN], dtype=object)
    labels = pd.Categorical(names[np.where(unknown, len(classes), label_codes)], categories=[*classes, UNKNOWN])

    adata = adata.copy() if copy else adata
    adata.obs[f"{key_added}_label"] = pd.Series(labels, index=adata.obs_names)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    adata.obsm[f"{key_added}_proba"] = proba.astype(np.float32)
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
            "n_labelled": int(labelled.sum()),
            "n_unknown": int(unknown.sum()),
        },
    )
    adata.uns["biossl"]["classes"] = list(classes)
    logger.info("annotate: %d labelled → %d cells, %d Unknown", labelled.sum(), adata.n_obs, unknown.sum())
    return adata if copy else None


def propagate_labels(
    W: sp.csr_matrix, codes: np.ndarray, n_classes: int, *, alpha: float = 0.9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities, confidence and predicted code (-1 = unreachable) for every cell."""
    F = graph.propagate(W, class_balanced_seeds(codes, n_classes), alpha=alpha)
    mass = F.sum(1)
    reached = mass > 0
    proba = np.zeros_like(F)
    proba[reached] = F[reached] / mass[reached, None]
    confidence = proba.max(1)
    pred = np.where(reached, proba.argmax(1), -1)
    return proba, confidence, pred
