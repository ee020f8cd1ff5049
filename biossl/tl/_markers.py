"""``tl.annotate_markers``: annotate from marker genes (and optionally a few labelled cells), no labels needed.

A biologist often knows a few marker genes per type before labelling any cell. Each cell gets a score per
type from the log-normalised expression of the type's markers, smoothed over the cell graph; the cells whose
best type is clearly ahead of the second become seeds, and the seeds propagate as in ``tl.annotate``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._check import check_fraction, check_int
from .._docs import doc_params
from .._record import record
from ..pp import check_copy, counts_matrix, find_counts
from ._propagation import (
    CLASS_PRIORS,
    UNKNOWN,
    annotation_predictor,
    call_labels,
    check_no_unknown_class,
    connectivities,
    graph_representation,
    label_codes,
    write_labels,
)

logger = logging.getLogger("biossl")

__all__ = ["annotate_markers", "marker_scores", "marker_seeds", "read_markers"]

# each marker's log-normalised expression is mapped to [0, 1] from its BACKGROUND_QUANTILE over all cells (the level
# of cells that do not express it: ambient RNA puts insulin reads in every pancreas cell) to this quantile of its
# non-zero values (so a marker of a rare type and one of a large type both reach 1 in typical cells)
SCALE_QUANTILE = 0.99
BACKGROUND_QUANTILE = 0.25
# half-steps of neighbour averaging of the scores (``0.5 S + 0.5 P S``): single cells drop out marker reads
SMOOTHING_STEPS = 2
_HEADER_WORDS = {"type", "cell_type", "celltype", "cell type", "label", "name", "set", "source"}
_GENE_WORDS = {"gene", "genes", "marker", "markers", "symbol", "target"}


# ---------------------------------------------------------------------------------------------------------------
# reading and checking marker lists


def read_markers(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read marker genes per cell type from a GMT or a tab-separated file.

    Formats (``#`` lines and blank lines are skipped):

    - ``.gmt``: ``type<TAB>description<TAB>gene1<TAB>gene2 ...`` (the MSigDB gene-set format);
    - anything else, tab-separated: ``type<TAB>gene`` one pair per line (a header such as ``cell_type<TAB>gene``
      is recognised and skipped), or one row per type, ``type<TAB>gene1<TAB>gene2 ...``; a field may also hold
      comma-separated genes (``B<TAB>MS4A1,CD79A``). ``.csv`` files are read the same way with commas.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    Type → genes in file order (a type given on several lines collects all its genes, without duplicates).
    Raises a one-line ``ValueError`` naming the line and the fix on a malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"marker file {str(path)!r} does not exist; pass a GMT or a tab-separated type/gene file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"marker file {str(path)!r} is not UTF-8 text ({err.reason}); save it as plain text."
        ) from None
    gmt = path.suffix.lower() == ".gmt"
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    where = f"marker file {str(path)!r}"
    fix = (
        "write one row per type, 'type<TAB>description<TAB>gene1<TAB>gene2...'"
        if gmt
        else "write 'type<TAB>gene' per line or 'type<TAB>gene1<TAB>gene2...' per type"
    )
    markers: dict[str, list[str]] = {}
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.rstrip("\r\n").split(sep)]
        if first and not gmt and len(fields) == 2 and _is_header(fields):
            first = False
            continue
        first = False
        name = fields[0]
        if not name:
            raise ValueError(f"{where}, line {number}: the type (first column) is empty; {fix}.")
        if len(fields) < 2 and sep not in line:
            other = "tabs" if sep == "," else "commas or spaces"
            hint = f" (it seems to use {other})" if ("," in line or " " in line.strip()) and not gmt else ""
            raise ValueError(f"{where}, line {number}: no {'tab' if sep == chr(9) else 'comma'}{hint}; {fix}.")
        genes = [g.strip() for field in fields[2 if gmt else 1 :] for g in field.split(",") if g.strip()]
        if not genes:
            raise ValueError(f"{where}, line {number}: type {name!r} has no gene; {fix}.")
        have = markers.setdefault(name, [])
        have.extend(g for g in genes if g not in have)
    if not markers:
        raise ValueError(f"{where} holds no markers (only blank or # lines); {fix}.")
    return markers


def _is_header(fields: list[str]) -> bool:
    return fields[0].lower() in _HEADER_WORDS and fields[1].lower() in _GENE_WORDS


def check_markers(markers) -> dict[str, list[str]]:
    """``markers`` (a dict type → genes, or a path) as a dict of non-empty gene lists; one-line errors."""
    if isinstance(markers, str | os.PathLike):
        return read_markers(markers)
    if not isinstance(markers, Mapping):
        raise ValueError(
            f"markers must be a dict of cell type -> marker genes or a path to a GMT/TSV file, got "
            f"{type(markers).__name__}."
        )
    if not markers:
        raise ValueError("markers is empty; give at least two cell types with their marker genes, e.g. "
                         "{'B': ['MS4A1'], 'NK': ['GNLY', 'NKG7']}.")  # fmt: skip
    out: dict[str, list[str]] = {}
    for name, genes in markers.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"markers: cell type names must be non-empty strings, got {name!r}.")
        if name == UNKNOWN:
            raise ValueError(f"markers: {UNKNOWN!r} is reserved for cells biossl cannot call; rename that type.")
        if isinstance(genes, str):
            genes = [genes]
        if not isinstance(genes, list | tuple | set | pd.Index | np.ndarray) or not all(
            isinstance(g, str) and g.strip() for g in genes
        ):
            raise ValueError(f"markers[{name!r}] must be a list of gene names (strings), got {genes!r}.")
        unique = list(dict.fromkeys(g.strip() for g in genes))
        if not unique:
            raise ValueError(f"markers[{name!r}] has no gene; give at least one marker gene per type.")
        out[name] = unique
    return out


def match_markers(
    markers: dict[str, list[str]], var_names: pd.Index, *, case_sensitive: bool = False
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Positions in ``var_names`` of each type's markers, and the markers not found (per type).

    Without ``case_sensitive`` a marker matches a gene that differs only in case (``Ins1`` / ``INS1``); an exact
    match wins. Raises when a type has no marker in ``var_names`` or a marker matches two genes ignoring case.
    """
    names = [str(g) for g in var_names]
    exact = {g: i for i, g in reversed(list(enumerate(names)))}
    folded: dict[str, list[int]] = {}
    if not case_sensitive:
        for i, g in enumerate(names):
            folded.setdefault(g.upper(), []).append(i)
    found: dict[str, list[int]] = {}
    missing: dict[str, list[str]] = {}
    for name, genes in markers.items():
        pos = []
        for g in genes:
            if g in exact:
                pos.append(exact[g])
            elif not case_sensitive and g.upper() in folded:
                hits = folded[g.upper()]
                if len(hits) > 1:
                    raise ValueError(
                        f"marker {g!r} of {name!r} matches {len(hits)} genes ignoring case "
                        f"({', '.join(repr(names[i]) for i in hits[:3])}); pass case_sensitive=True."
                    )
                pos.append(hits[0])
            else:
                missing.setdefault(name, []).append(g)
        if not pos:
            raise ValueError(
                f"none of the markers of {name!r} ({', '.join(genes[:5])}) is a gene of adata.var_names; "
                "check the gene names (symbols vs Ensembl IDs, species) or drop that type."
            )
        found[name] = list(dict.fromkeys(pos))
    return found, missing


# ---------------------------------------------------------------------------------------------------------------
# scores and seeds


def marker_scores(counts, genes: dict[str, list[int]], W: sp.csr_matrix | None = None) -> np.ndarray:
    """Cells × types marker scores in [0, 1]: mean scaled expression of each type's markers, graph-smoothed.

    Counts are normalised to 10,000 per cell and log1p-transformed (scanpy's ``normalize_total`` and ``log1p``,
    only for the marker columns); each marker is rescaled from its lower quartile over all cells (0: the level
    of cells that do not express it, ambient RNA included) to the 99th percentile of its non-zero values (1) and
    clipped to [0, 1], so every marker counts alike whatever its level; a type's score is the mean over its
    markers.
    With a graph ``W`` the scores are then averaged with the cells' graph neighbours (two half-steps of
    ``0.5 S + 0.5 P S``, ``P`` the row-normalised graph) so that a cell missing a marker read by chance
    still scores.
    """
    X = counts if sp.issparse(counts) else np.asarray(counts)
    library = np.asarray(X.sum(1), dtype=np.float64).ravel()
    columns = sorted({j for pos in genes.values() for j in pos})
    sub = X[:, columns]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    scale = 1e4 / np.maximum(library, 1e-12)
    expr = np.log1p(sub.astype(np.float64) * scale[:, None])
    for j in range(expr.shape[1]):
        values = expr[:, j]
        nz = values[values > 0]
        if len(nz):
            low, high = np.quantile(values, BACKGROUND_QUANTILE), np.quantile(nz, SCALE_QUANTILE)
            expr[:, j] = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    where = {g: i for i, g in enumerate(columns)}
    scores = np.column_stack([expr[:, [where[j] for j in pos]].mean(1) for pos in genes.values()])
    if W is not None:
        degree = np.asarray(W.sum(1)).ravel()
        P = sp.diags(1.0 / np.maximum(degree, 1e-12)) @ W
        for _ in range(SMOOTHING_STEPS):
            scores = 0.5 * scores + 0.5 * (P @ scores)
    return scores


def marker_seeds(scores: np.ndarray, *, min_score: float, n_seeds: int) -> np.ndarray:
    """Seed codes (-1 = not a seed): per type, the ``n_seeds`` cells most clearly ahead on its score.

    A cell is a candidate for its best-scoring type when that score is at least ``min_score`` and ahead of the
    second best; each type keeps its ``n_seeds`` candidates with the largest lead, so every type gets at most
    as many seeds as the others (the propagation balances the classes too).
    """
    codes = np.full(scores.shape[0], -1, dtype=np.int64)
    if scores.shape[1] < 2:
        return codes
    order = np.sort(scores, axis=1)
    top, lead = order[:, -1], order[:, -1] - order[:, -2]
    best = scores.argmax(1)
    for c in range(scores.shape[1]):
        idx = np.flatnonzero((best == c) & (lead > 0) & (top >= min_score))
        idx = idx[np.argsort(-lead[idx], kind="stable")][:n_seeds]
        codes[idx] = c
    return codes


# ---------------------------------------------------------------------------------------------------------------
# the step


@doc_params
def annotate_markers(
    adata: AnnData,
    markers: Mapping[str, list[str]] | str | os.PathLike,
    *,
    labels_key: str | None = None,
    unlabeled_category: str | None = "Unknown",
    min_score: float = 0.2,
    n_seeds: int = 25,
    case_sensitive: bool = False,
    layer: str | None = None,
    key_added: str = "biossl",
    unknown_threshold: float | None = None,
    neighbors_key: str | None = "biossl",
    alpha: float = 0.9,
    class_prior: str = "estimate",
    refine: bool = True,
    calibrate: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Annotate every cell from marker genes per cell type, optionally with a few labelled cells.

    Each cell scores each type by the mean scaled log-expression of the type's markers, averaged with its graph
    neighbours (:func:`marker_scores`). The cells whose best type is at least ``min_score`` and clearly ahead
    of the second become that type's seeds (at most ``n_seeds`` per type, :func:`marker_seeds`), and the seeds
    spread over the cell graph exactly as labelled cells do in :func:`biossl.tl.annotate` (label spreading,
    class prior, self-training). A cell whose called type's marker score is below ``min_score`` — its
    neighbourhood expresses none of the markers of that type, as for a type with no markers given — is called
    ``"Unknown"``. Labelled cells in ``obs[labels_key]`` keep their label and are seeds too (they replace a
    marker seed on the same cell); types may come from labels alone. Markers not in ``adata.var_names`` are
    named in a warning. See ``benchmarks/markers.py`` for how this compares with CellAssign, decoupler and
    ``scanpy.tl.score_genes``.

    Parameters
    ----------
    adata
        Annotated data with raw counts (``X`` or ``layers["counts"]``) and a graph from
        :func:`biossl.tl.neighbors`.
    markers
        Cell type → marker genes (e.g. ``{"B": ["MS4A1", "CD79A"], "NK": ["GNLY", "NKG7"]}``), or a path to a
        GMT or tab-separated file (:func:`read_markers`).
    labels_key
        Optional column of ``obs`` with a few labelled cells (unlabelled: NaN or ``unlabeled_category``).
    unlabeled_category
        Value marking unlabelled cells in ``obs[labels_key]`` (in addition to NaN).
    min_score
        Marker score (0–1, see :func:`marker_scores`) a seed needs, and below which a cell's call is
        ``"Unknown"``.
    n_seeds
        Most seed cells per type taken from the marker scores.
    case_sensitive
        Match gene names exactly; by default ``Ins1`` also finds ``INS1`` (an exact match wins).
    layer
        Layer with the raw counts; None finds them in ``X`` or ``layers["counts"]``.
    key_added
        Prefix of the keys written.
    unknown_threshold
        Also call ``"Unknown"`` below this confidence (0–1), as in :func:`biossl.tl.annotate`.
    neighbors_key
        {neighbors_key}
    alpha
        Propagation strength in (0, 1), as in :func:`biossl.tl.annotate`.
    class_prior
        ``"estimate"`` or ``"uniform"``, as in :func:`biossl.tl.annotate`.
    refine
        Self-training on the graph's representation, as in :func:`biossl.tl.annotate`.
    calibrate
        With labelled cells, calibrate the probabilities by cross-validation over them (as
        :func:`biossl.tl.annotate` does); the marker seeds are picked for being clear-cut, so they are never
        used for calibration, and with markers alone the probabilities stay uncalibrated.
    copy
        {copy}

    Returns
    -------
    None or a copy. Writes the keys of :func:`biossl.tl.annotate`:

    ``obs["{key_added}_label"]``
        Predicted type (labelled cells keep their label), ``"Unknown"`` where no type's markers fit.
    ``obs["{key_added}_confidence"]``
        Top class probability (1 for labelled cells).
    ``obsm["{key_added}_proba"]``
        Class probabilities, columns in the order of ``uns["biossl"]["classes"]``.

    and ``obs["{key_added}_seed"]`` (``"markers"`` / ``"labels"`` for the seed cells, NaN elsewhere),
    ``obsm["{key_added}_marker_scores"]`` (smoothed marker scores, columns in the order of
    ``uns["biossl"]["markers"]["types"]``), ``uns["biossl"]["annotate"]`` and ``uns["biossl"]["markers"]``
    (genes used and missing, seeds per type).
    """
    check_copy(adata, copy)
    markers = check_markers(markers)
    min_score = check_fraction("min_score", min_score)
    n_seeds = check_int("n_seeds", n_seeds, 1)
    unknown_threshold = check_fraction("unknown_threshold", unknown_threshold, allow_none=True)
    if not isinstance(alpha, int | float | np.integer | np.floating):  # graph.propagate checks the range
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if class_prior not in CLASS_PRIORS:
        raise ValueError(f"class_prior must be one of {CLASS_PRIORS}, got {class_prior!r}")
    found, missing = match_markers(markers, adata.var_names, case_sensitive=case_sensitive)
    W = connectivities(adata, neighbors_key)
    if W.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"the graph has shape {W.shape} but adata has {adata.n_obs} cells; rebuild it.")
    user_codes, user_classes = _user_labels(adata, labels_key, unlabeled_category)
    if len(set(markers) | set(user_classes)) < 2:
        raise ValueError(
            f"only 1 type ({next(iter(markers))!r}) has markers or labels; give markers for at least two types, "
            "or label a few cells of the others (labels_key)."
        )
    counts = counts_matrix(adata, find_counts(adata, layer))
    if missing:
        warnings.warn(
            "markers not in adata.var_names (ignored): "
            + "; ".join(f"{name}: {', '.join(genes)}" for name, genes in missing.items()),
            UserWarning,
            stacklevel=2,
        )
    seeding = _MarkerSeeds(list(markers), marker_scores(counts, found, W), user_codes, user_classes)
    seeding.pick(min_score=min_score, n_seeds=n_seeds)
    rep = graph_representation(adata, neighbors_key) if refine else None
    proba, calibration = seeding.propagate(W, alpha=alpha, rep=rep, class_prior=class_prior, calibrate=calibrate)
    labels, confidence, proba, unknown = call_labels(
        proba, seeding.fixed, seeding.classes, unknown_threshold=unknown_threshold,
        unknown=seeding.marker_fit(proba) < min_score,
    )  # fmt: skip
    adata = adata.copy() if copy else adata
    write_labels(adata, key_added, labels, confidence, proba)
    adata.obs[f"{key_added}_seed"] = pd.Categorical(seeding.source, categories=["labels", "markers"])
    adata.obsm[f"{key_added}_marker_scores"] = seeding.scores.astype(np.float32)
    settings = {
        "labels_key": labels_key, "unlabeled_category": unlabeled_category if labels_key is not None else None,
        "key_added": key_added, "unknown_threshold": unknown_threshold, "neighbors_key": neighbors_key,
        "alpha": alpha, "class_prior": class_prior, "refine": bool(rep is not None), "calibration": calibration,
    }  # fmt: skip
    record(adata, "annotate", {"seeds": "markers" if labels_key is None else "markers+labels", **settings,
           "n_labelled": int((seeding.fixed >= 0).sum()), "n_unknown": int(unknown.sum())})  # fmt: skip
    record(adata, "classes", seeding.classes)
    record(adata, "markers", {
        "types": seeding.types, "genes": {t: [str(adata.var_names[j]) for j in found[t]] for t in seeding.types},
        "missing": {t: list(g) for t, g in missing.items()}, "n_seeds": seeding.per_type, "min_score": min_score,
        "max_seeds_per_type": n_seeds, "case_sensitive": bool(case_sensitive),
    })  # fmt: skip
    logger.info(
        "annotate_markers: %d marker seeds, %d labelled → %d cells, %d Unknown",
        int((seeding.source == "markers").sum()), int((seeding.fixed >= 0).sum()), adata.n_obs, int(unknown.sum()),
    )  # fmt: skip
    return adata if copy else None


class _MarkerSeeds:
    """The stages of :func:`annotate_markers` between the marker scores and the calls: pick, propagate, fit."""

    def __init__(self, types: list[str], scores: np.ndarray, user_codes: np.ndarray, user_classes: list[str]):
        self.types, self.scores, self.user_codes, self.user_classes = types, scores, user_codes, user_classes
        self.classes = sorted(set(types) | set(user_classes))

    def pick(self, *, min_score: float, n_seeds: int) -> None:
        """Seed cells whose markers fit clearly best, merged with the user's labels; fail or warn on empty types."""
        seeds = marker_seeds(self.scores, min_score=min_score, n_seeds=n_seeds)
        self.codes, self.fixed, self.source = _merge_seeds(
            seeds, self.types, self.user_codes, self.user_classes, self.classes
        )
        self.per_type = {t: int((seeds == i).sum()) for i, t in enumerate(self.types)}
        seeded = sorted({self.classes[c] for c in self.codes[self.codes >= 0]})
        if len(seeded) < 2:
            raise ValueError(
                f"only {len(seeded)} type(s) ({', '.join(seeded) or 'none'}) have cells whose markers fit (score >= "
                f"min_score={min_score}); lower min_score, check the markers, or label a few cells (labels_key)."
            )
        empty = [t for t in self.types if self.per_type[t] == 0 and t not in self.user_classes]
        if empty:
            warnings.warn(
                f"no cell fits the markers of {', '.join(map(repr, empty))} (score >= min_score={min_score}); "
                "these types are not called.",
                UserWarning,
                stacklevel=3,
            )

    def propagate(self, W, *, alpha: float, rep, class_prior: str, calibrate: bool) -> tuple[np.ndarray, dict]:
        """Propagate the seeds as ``annotate`` does; calibrate on the labelled cells when there are any."""
        predictor = annotation_predictor(W, len(self.classes), alpha=alpha, rep=rep, class_prior=class_prior)
        proba = predictor(self.codes)
        calibration = {"method": "none", "reason": "markers only: no labelled cells to calibrate on"}
        if calibrate and (self.fixed >= 0).any():
            from .calibrate import calibrate_annotation

            marker_only = np.where(self.fixed >= 0, -1, self.codes)  # the folds hide labelled cells; markers stay

            def with_markers(label_codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
                return predictor.fold(np.where(label_codes >= 0, label_codes, marker_only), rows)

            proba, calibration = calibrate_annotation(with_markers, self.fixed, proba)
        return proba, calibration

    def marker_fit(self, proba: np.ndarray) -> np.ndarray:
        """Each cell's (smoothed) marker score of its called type; 1 for types known from labels only."""
        column = np.array([self.types.index(c) if c in self.types else -1 for c in self.classes])
        called = proba.argmax(1)
        picked = self.scores[np.arange(len(called)), np.maximum(column[called], 0)]
        return np.where(column[called] >= 0, picked, 1.0)


def _user_labels(adata: AnnData, labels_key: str | None, unlabeled_category) -> tuple[np.ndarray, list[str]]:
    if labels_key is None:
        return np.full(adata.n_obs, -1, dtype=np.int64), []
    codes, classes = label_codes(adata, labels_key, unlabeled_category)
    check_no_unknown_class(classes, labels_key)
    if len(classes) and (codes >= 0).all():
        raise ValueError(f"every cell in adata.obs[{labels_key!r}] is labelled, so there is nothing to annotate.")
    return codes, classes


def _merge_seeds(
    seeds: np.ndarray, types: list[str], user_codes: np.ndarray, user_classes: list[str], classes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed codes over ``classes`` (labelled cells win), the labelled cells' codes alone, and each seed's source."""
    to_class = np.array([classes.index(t) for t in types] + [-1])
    codes = to_class[np.where(seeds >= 0, seeds, len(types))]
    fixed = np.full(len(seeds), -1, dtype=np.int64)
    if user_classes:
        user_to_class = np.array([classes.index(t) for t in user_classes] + [-1])
        fixed = user_to_class[np.where(user_codes >= 0, user_codes, len(user_classes))]
    codes = np.where(fixed >= 0, fixed, codes)
    source = np.where(fixed >= 0, "labels", np.where(codes >= 0, "markers", None)).astype(object)
    return codes, fixed, source
