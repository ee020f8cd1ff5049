"""``map_query``'s refinement: the mapped calls settled on an expression graph of the query and the reference sample.

:func:`refine_on_query` propagates the sample's labels, the confident mapped calls and an Unknown class seeded by low
mapping scores (:mod:`biossl.tl._mapping`) over a kNN graph on the PCA of their counts. The constants were chosen on
``benchmarks/strong_batch.py`` and exploratory generated sets (``benchmarks/divergent.py``); the figures are in
``benchmarks/strong_batch_log.md``.
"""

from __future__ import annotations

import numpy as np

from .. import graph
from ._mapping import AUTO_MAPPING_THRESHOLD, class_sums
from ._pca import log_normalise, pca_latent
from ._propagation import annotation_predictor, attach_to_reached, normalise_rows

REFINE_MAPPING_THRESHOLD = 0.5  # with refine: below it a cell may seed the Unknown class
REFINE_MIN_CELLS = 30  # smaller queries are not refined
REFINE_WEIGHT = 0.5  # the query graph's share of the final probabilities (the rest: the mapped ones)
# reference sample - query mixing of the refinement graph (graph.batch_mixing) from which that graph joins them well
# enough to settle the calls alone (weight 1), and an Unknown seed needs a neighbourhood the sample's cells hardly
# reach: its own and its query neighbours' mean share of sample neighbours, relative to the sample's share of the
# graph, below JOINED_UNKNOWN_SHARE. Chosen on divergent sets (seeds 1, 2 and species-like 5, 6), where the pbmc3k
# graphs mix at 0.66-0.96 and the baron_mouse ones at 0.17-0.26
REFINE_JOINED_MIXING = 0.5
JOINED_UNKNOWN_SHARE = 0.1
# Below MIXING_MIN the sample's labels spread over the refinement graph alone may be arbitrary (470 of 479 beta cells
# "B_cell" with donors as batches): they check the mapped calls only if they agree with at least this share of the
# well-scoring ones. Arbitrary graphs agreed at 0.14-0.50 (benchmarks/nested_batches.py, two donors, overall gate);
# graphs whose labels crossed a few edges well at 0.69-0.91 (9 generated strong-batch sets, seeds 0-26) and
# 0.77-0.82 (species pairs with a human-like composition: 9 alpha cells in the reference, 900 in the query)
REFINE_GRAPH_AGREEMENT = 0.6
# A known type that a strong shift moved as a whole: every query cell of the predicted class scores low, so its cells
# would seed Unknown like a type the reference lacks. It is told apart by its expression contrast (its mean profile
# against the query's well-mapped classes), which matches the class's contrast in the reference sample about as well
# as the well-mapped classes' own contrasts match (_shifted_classes). Chosen on generated pbmc3k sets (divergent 12,
# species-like 6, 12 and 14; shifted monocytes: 0.99-1.18 of the typical agreement) against the held-out cell lines
# of cellbench (benchmarks/reference_mapping.py, novel part: 0.50-0.67, which must stay Unknown); the 10% share of
# well-scoring cells on divergent 12's novel split, where 12 of its 204 mapped monocytes scored well
SHIFTED_MIN_CELLS = 20  # low-scoring query cells of the class, and its cells in the reference sample, at least
SHIFTED_MAX_WELL = 0.1  # the share of the class's query cells that score well, at most
# the class's share of the query cells over its share of the reference's labelled cells, at most: a type the reference
# lacks, put onto a rare class, makes it several times larger (B cells held out, put onto DC: 5.0 times on fresh
# species-like pbmc3k 27, 5.4 / 6.6 on divergent / species-like 25; the known classes the rule kept on 11 generated
# sets: 0.38-1.72)
SHIFTED_MAX_GROWTH = 3.0
SHIFTED_CONTRAST_GENES = 300  # genes whose reference class profiles vary most: the contrasts are compared on them
SHIFTED_AGREEMENT = 0.8  # the class's agreement relative to the median of the well-mapped classes', at least
SHIFTED_CLASS_CELLS = 5  # cells a class needs in the sample and among the well-scoring query cells to be compared
# Unknown cells given back to their top known class (_known_unknowns): the contrast of their profile agrees with the
# class's sample contrast at least this share of the typical agreement, and their profile lies within this share of
# the distance from the class's query profile to the nearest other class's. Chosen on generated pbmc3k species-like
# sets 12, 20 and 22 (known monocytes called Unknown: 0.92-1.09 of the typical agreement, 0.25-0.50 of the distance)
# against benchmarks/reference_mapping.py's held-out types and four novel-type splits (at most 0.84 of the
# agreement; those at 0.82-0.84 lie 0.46-0.79 of the distance away). A group that fails for its top class is tested
# on the same terms for the class whose query profile lies nearest its own: a generated pbmc3k species pair whose
# reference held 10 CD14+ monocytes and whose query 1,099 had 305 of them Unknown with top class DC (0.75 of the
# agreement, 0.90 of the distance); for CD14+ Mono they read 1.01 and 0.36
KNOWN_AGREEMENT = 0.9
KNOWN_DISTANCE = 0.6
# A group whose profile lies very close to its class's query profile needs less agreement. Found on a fresh
# species-like baron_mouse set (seed 31) with a 5,000-cell query, 6.7 times the reference: 148 beta cells called
# Unknown at 0.87 of the typical agreement and 0.19 of the distance. The groups of the measured novel-type splits all
# lie at least 0.46 of the distance away (that one at 0.84 of the agreement)
KNOWN_CLOSE_DISTANCE = 0.3
KNOWN_CLOSE_AGREEMENT = 0.8
REFINE_SEED_FRACTION = 0.5  # the share of each class's (and of the low-scoring) cells that seed the refinement
# Where the graph does not join sample and query and fewer than this many low-scoring cells seed Unknown, the class they
# spread calls Unknown only the seeds and the cells whose own mapping score is below AUTO_MAPPING_THRESHOLD (the
# threshold without refinement): a class of two seeds carries as much mass as one of hundreds. On
# baron_mouse_divergent (model seed 1) two such seeds (a beta and a ductal cell) spread Unknown over 46 low-depth beta
# cells scoring 0.77-1.00; on cellbench without HCC827 (reference_mapping.py's novel part) one seed spread it over 42%
# of the held-out line's cells, scoring 0.41-0.90 (0% Unknown when so few seeds seeded nothing)
REFINE_UNKNOWN_MIN_SEEDS = 5


def refine_on_query(
    X, present, batches, proba, pred, confidence, score, threshold, n_classes, k, alpha, seed, *,
    sample: dict | None = None, sample_codes: np.ndarray | None = None, hard: bool = False,
):  # fmt: skip
    """Propagate the mapped calls over an expression graph of the query, with an Unknown class seeded by low scores.

    The graph is a kNN graph on the PCA of the query's counts (:func:`biossl.tl._pca.pca_latent`, genes scaled per batch
    as in ``tl.embed``) and, with a reference ``sample`` (:func:`biossl.tl._reference.expression_sample`; labels:
    ``sample_codes`` at its rows), of the sampled reference cells' counts too, each reference batch a batch of its own.
    Seeds: the reference cells with their labels; per predicted class, the more confident half of its query cells whose
    score reaches ``threshold`` and whose class the reference sample's labels, spread over this graph alone, give too
    (all such cells of the class when none of them agrees: a class the expression graph cannot reach keeps its seeds; no
    class is checked when the sample and the query hardly mix in the graph, :func:`biossl.graph.batch_mixing` below
    ``MIXING_MIN``, unless those calls agree with most well-scoring mapped ones, ``REFINE_GRAPH_AGREEMENT``); and the
    lower-scoring half of the query cells below ``threshold``, as class ``n_classes`` (Unknown; where they are fewer
    than ``REFINE_UNKNOWN_MIN_SEEDS`` and the graph does not join sample and query, not with ``hard``, the Unknown class
    they spread calls only them and cells scoring below ``AUTO_MAPPING_THRESHOLD``). The agreement keeps a class that
    the mapping gives to part of another (monocytes shifted onto dendritic cells) from seeding that error. The
    propagated probabilities are averaged with the mapped ones (``proba``), so a cell below ``threshold`` that is not a
    seed is Unknown only where the Unknown class reaches it; with ``hard`` (a threshold the user chose) the mapped ones
    of those cells are Unknown, which makes every one of them Unknown. When the graph joins the sample and the query
    well (mixing at least ``REFINE_JOINED_MIXING``), its expression neighbourhoods carry the labels better than a model
    that did not align the query: the propagated probabilities are then the result (unless ``hard``), and a low-scoring
    cell seeds Unknown only where the sample's cells hardly reach (:func:`_sample_share` below
    ``JOINED_UNKNOWN_SHARE``), as a type the reference lacks does; a known type the shift moved does not. A class that
    the shift moved as a whole (:func:`_shifted_classes`; not with ``hard``) has no query cell scoring well: the more
    confident half of its low-scoring cells seed it, and none of them seeds Unknown. Cells called Unknown whose
    expression is their top class's, or the nearest class's, get it (:func:`_known_unknowns`; not with ``hard``; a cell
    given another class than its top one swaps their probabilities).
    Returns the class probabilities (reference classes, rows summing to 1 or 0; a cell that the Unknown class takes
    whole, as on a joined graph, keeps its mapped ones, so its top class still names what it resembles), the
    confidence (top class probability times the share not given to Unknown), the predicted code, the Unknown mask
    and a record: ``"mixing"``, the sample - query mixing of the graph (None without a sample), ``"shifted"``,
    the codes of the classes taken as moved as a whole, ``"unknown_seeds"``, the number of query cells that seeded
    Unknown, ``"known_from_unknown"``, the cells given a class, and
    ``"attached"``, the cells of the refinement graph no seed reached that took their nearest reached cells' call.
    """
    n = X.shape[0]
    counts, batch, ref_seeds = _expression_graph_input(X, present, batches, sample, sample_codes)
    low = score < threshold
    L = log_normalise(counts, copy=False)  # counts: a column selection, ours
    # the class contrasts tell a known type from one the reference lacks (not with a threshold the user chose)
    contrasts = _Contrasts(L, ref_seeds, n_classes) if len(ref_seeds) and not hard else None
    codes = np.asarray(sample_codes)
    ref_counts = None if contrasts is None else np.bincount(codes[codes >= 0], minlength=n_classes)  # per class
    shifted = _shifted_classes(contrasts, pred, low, ref_counts)  # a type the shift moved as a whole seeds itself
    latent, _ = pca_latent(L, 50, seed, batch=batch, normalised=True)
    idx, dist = graph.knn(latent, int(min(k, counts.shape[0] - 1)), seed=seed)
    W = graph.gaussian_affinity(idx, dist)
    spread = _SeedSpreader(W, latent, dist.max(1), alpha)
    n_ref = len(ref_seeds)
    mixing = float(graph.batch_mixing(idx, np.arange(len(idx)) < n_ref)["score"]) if n_ref else None
    joined = mixing is not None and mixing >= REFINE_JOINED_MIXING
    query_seeds = np.full(n, -1, dtype=np.int64)

    def seed_confident(members: np.ndarray, c: int) -> None:  # the more confident part of ``members`` seeds ``c``
        n_seeds = max(1, int(len(members) * REFINE_SEED_FRACTION))
        query_seeds[members[np.argsort(-confidence[members], kind="stable")[:n_seeds]]] = c

    well = (pred >= 0) & ~low  # the query cells mapped to a class with a score that reaches ``threshold``
    graph_pred = _reference_only_calls(spread, ref_seeds, n, n_classes, mixing, pred, well)
    for c in np.unique(pred[well]):
        candidates = well & (pred == c)
        agreeing = candidates & (graph_pred == c)  # a mapped call the expression graph does not share seeds nothing
        seed_confident(np.flatnonzero(agreeing if agreeing.any() else candidates), c)  # unless none agrees
    for c in shifted:
        seed_confident(np.flatnonzero((pred == c) & low), c)
    low_cells = np.flatnonzero(low & ~np.isin(pred, shifted))
    n_seeds = int(len(low_cells) * REFINE_SEED_FRACTION)
    chosen = low_cells[np.argsort(score[low_cells], kind="stable")[:n_seeds]]
    if joined:  # a low score seeds Unknown only where the reference sample's cells hardly reach
        chosen = chosen[_sample_share(idx, n_ref)[chosen] < JOINED_UNKNOWN_SHARE]
    query_seeds[chosen] = n_classes
    seeds = np.concatenate([ref_seeds, query_seeds])
    info = {
        "mixing": mixing, "shifted": [int(c) for c in shifted], "unknown_seeds": len(chosen), "known_from_unknown": 0,
        "attached": 0,
    }  # fmt: skip
    if len(np.unique(seeds[seeds >= 0])) < 2 or (query_seeds < 0).sum() == 0:  # nothing to refine: calls stand
        return proba, confidence, pred, (pred < 0) | low, info
    full, info["attached"] = spread(seeds, n_classes + 1)
    full = full[n_ref:]
    full[query_seeds >= 0] = np.eye(n_classes + 1)[query_seeds[query_seeds >= 0]]  # seeds keep their call
    mapped = np.zeros((n, n_classes + 1))
    mapped[:, :n_classes] = proba  # a low score alone does not make a cell Unknown: its neighbourhood decides
    if hard:
        mapped[low] = np.eye(n_classes + 1)[n_classes]
    weight = 1.0 if joined and not hard else REFINE_WEIGHT
    full = weight * full + (1 - weight) * mapped
    top = full.argmax(1)
    unknown = (full.sum(1) == 0) | (top == n_classes)
    if not (hard or joined) and 0 < len(chosen) < REFINE_UNKNOWN_MIN_SEEDS:  # a few seeds: their scores must agree
        unknown &= (score < AUTO_MAPPING_THRESHOLD) | (query_seeds == n_classes)
    known = full[:, :n_classes]
    mass = known.sum(1)
    shown = np.where((mass == 0)[:, None], proba, known)  # the Unknown class took it whole: its top class stays named
    proba, top_known, pred = normalise_rows(shown)
    confidence = top_known * mass / np.maximum(full.sum(1), 1e-12)
    unknown |= pred < 0
    given = _known_unknowns(contrasts, latent[n_ref:], pred, unknown, seed)  # see its docstring
    moved = np.flatnonzero((given >= 0) & (given != pred))  # given to another class than their top one: that class
    proba[moved, given[moved]], proba[moved, pred[moved]] = proba[moved, pred[moved]], proba[moved, given[moved]]
    pred = np.where(given >= 0, given, pred)  # takes the top probability (the two swap)
    info["known_from_unknown"] = int((given >= 0).sum())
    return proba, confidence, pred, unknown & (given < 0), info


class _SeedSpreader:
    """The refinement graph's propagation (as ``tl.annotate``: class prior estimated, self-training on ``latent``).

    Called with seeds (a class code per row, -1 = none) and a width, it returns the probabilities of the classes
    that have seeds in their columns (zeros in the others) and how many cells it attached (below); every call shares
    one spreading operator. A cell in a part of the graph no seed reaches takes the mean probabilities of its
    nearest reached cells on ``latent`` (:func:`biossl.tl._propagation.attach_to_reached`; ``radius``: each cell's
    distance to its farthest graph neighbour). Unlike ``tl.annotate``, which attaches with the class-balanced
    probabilities (its labels are few and need not follow the cells' composition), these are the final ones: the
    seeds here include the query's own mapped calls, so the estimated class prior follows the query. Measured on 24
    generated species pairs (``benchmarks/strong_batch_log.md``).
    """

    def __init__(self, W, latent: np.ndarray, radius: np.ndarray, alpha: float) -> None:
        self.W, self.rep, self.radius, self.alpha = W, latent.astype(np.float64), radius, alpha
        self.operator = graph.spreading_operator(W, alpha)

    def __call__(self, seeds: np.ndarray, width: int) -> tuple[np.ndarray, int]:
        used = np.unique(seeds[seeds >= 0])  # propagate over the classes that have seeds only
        compact = np.where(seeds >= 0, np.searchsorted(used, seeds), -1)
        predict = annotation_predictor(
            self.W, len(used), alpha=self.alpha, rep=self.rep, class_prior="estimate", operator=self.operator
        )
        out = np.zeros((len(seeds), width))
        proba = predict(compact)
        out[:, used], attached = attach_to_reached(self.rep, self.radius, proba, proba)  # cells no seed reaches
        return out, attached


def _reference_only_calls(
    spread: _SeedSpreader, ref_seeds: np.ndarray, n: int, n_classes: int, mixing: float | None,
    mapped: np.ndarray, well: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The query cells' classes from the reference sample's labels alone, spread over the expression graph.

    -1 for every cell without a reference sample or with one class only: no call to agree with. Where the sample and
    the query hardly mix in the graph (``mixing``, :func:`biossl.graph.batch_mixing` of sample against query, below
    ``MIXING_MIN``), the labels may not reach the query and their calls may be arbitrary: they are kept only if they
    give the ``mapped`` class to at least ``REFINE_GRAPH_AGREEMENT`` of the ``well``-scoring query cells.
    """
    used = np.unique(ref_seeds)
    if len(used) < 2 or mixing is None:
        return np.full(n, -1, dtype=np.int64)
    seeds = np.concatenate([ref_seeds, np.full(n, -1, dtype=np.int64)])
    proba = spread(seeds, n_classes)[0][len(ref_seeds) :, used]
    calls = np.where(proba.any(1), used[proba.argmax(1)], -1)  # -1: a cell the labels do not reach
    if mixing >= graph.MIXING_MIN or (well.any() and np.mean(calls[well] == mapped[well]) >= REFINE_GRAPH_AGREEMENT):
        return calls
    return np.full(n, -1, dtype=np.int64)


class _Contrasts:
    """Class profiles of the reference sample and the query, to compare a class's expression contrast in both.

    ``L``: the refinement graph's log-normalised counts, the ``len(ref_seeds)`` reference sample rows (labels
    ``ref_seeds``) first. Profiles are mean log-normalised expression on the ``SHIFTED_CONTRAST_GENES`` genes whose
    sample class profiles vary most (classes with ``SHIFTED_CLASS_CELLS`` sample cells; genes detected in 3 cells of
    the sample and of the query). A class's contrast is its profile minus the mean profile of other classes (the
    ``base``). A species or technology changes each gene's level, which cancels in a contrast within one data set,
    and the type's own pattern remains: a known type's query contrast correlates with its sample contrast about as
    well as the other known types' do, a type the reference lacks, put onto its nearest class, less.
    """

    def __init__(self, L, ref_seeds: np.ndarray, n_classes: int) -> None:
        n_ref = len(ref_seeds)
        self.query, self.n_classes = L[n_ref:], n_classes
        sample = L[:n_ref]
        sums, self.in_sample = class_sums(sample, ref_seeds, n_classes)
        ref_profiles = sums / np.maximum(self.in_sample, 1.0)[:, None]
        compared = self.in_sample >= SHIFTED_CLASS_CELLS
        detected = (np.asarray((sample > 0).sum(0)).ravel() >= 3) & (np.asarray((self.query > 0).sum(0)).ravel() >= 3)
        spread = np.where(detected, ref_profiles[compared].var(0), -1.0)
        self.genes = np.argsort(-spread, kind="stable")[: min(SHIFTED_CONTRAST_GENES, int(detected.sum()))]
        self.ref = ref_profiles[:, self.genes]

    def comparable(self, sizes: np.ndarray) -> np.ndarray:
        """The classes with ``SHIFTED_CLASS_CELLS`` cells in the sample and ``sizes`` (their query cells) at least."""
        return np.flatnonzero((sizes >= SHIFTED_CLASS_CELLS) & (self.in_sample >= SHIFTED_CLASS_CELLS))

    def profile(self, rows: np.ndarray) -> np.ndarray:
        """The profile (compared genes) of the query cells ``rows`` (sorted), as :meth:`query_profiles` reads it."""
        sums, _ = class_sums(self.query[rows], np.zeros(len(rows), dtype=np.int64), 1)
        return sums[0, self.genes] / len(rows)

    def query_profiles(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profiles (classes × compared genes) of the query cells by ``codes`` (-1: none), and their cell counts."""
        sums, sizes = class_sums(self.query, codes, self.n_classes)
        return sums[:, self.genes] / np.maximum(sizes, 1.0)[:, None], sizes

    def agreement(self, c: int, profile: np.ndarray, query: np.ndarray, base: np.ndarray) -> float:
        """Correlation of ``profile``'s contrast to ``query[base]`` with class ``c``'s contrast in the sample."""
        r = np.corrcoef(self.ref[c] - self.ref[base].mean(0), profile - query[base].mean(0))[0, 1]
        return float(r) if np.isfinite(r) else 0.0  # a constant contrast agrees with nothing

    def typical(self, query: np.ndarray, well: np.ndarray) -> float:
        """The median agreement of the ``well`` classes' own query profiles, each against the others."""
        return float(np.median([self.agreement(d, query[d], query, well[well != d]) for d in well]))


def _shifted_classes(contrasts, pred: np.ndarray, low: np.ndarray, ref_counts: np.ndarray | None) -> np.ndarray:
    """Predicted classes that a strong shift moved as a whole, rather than types the reference lacks.

    ``contrasts``: a :class:`_Contrasts` of the refinement graph's counts (None without a reference sample);
    ``pred`` and ``low``: the query cells' predicted classes and low mapping scores; ``ref_counts``: the
    reference's labelled cells per class. A candidate has at least ``SHIFTED_MIN_CELLS`` low-scoring query cells,
    at most ``SHIFTED_MAX_WELL`` of its query cells scoring well, ``SHIFTED_MIN_CELLS`` cells in the sample and a
    share of the query at most ``SHIFTED_MAX_GROWTH`` times its share of the reference. Its contrast in the query
    (the profile of its low-scoring cells against the well-mapped classes') is shifted where its agreement with
    its sample contrast reaches ``SHIFTED_AGREEMENT`` times the median of the well-mapped classes' own (cellbench's
    held-out cell lines: 0.50-0.67 of the typical agreement; shifted monocytes: 0.99-1.18).
    """
    none = np.zeros(0, dtype=np.int64)
    if contrasts is None:
        return none
    n_classes, in_sample = contrasts.n_classes, contrasts.in_sample
    n_low = np.bincount(pred[(pred >= 0) & low], minlength=n_classes)
    n_well = np.bincount(pred[(pred >= 0) & ~low], minlength=n_classes)
    candidates = np.flatnonzero(
        (n_low >= SHIFTED_MIN_CELLS)
        & (n_well <= SHIFTED_MAX_WELL * (n_low + n_well))
        & (in_sample >= SHIFTED_MIN_CELLS)
        & (n_low + n_well <= SHIFTED_MAX_GROWTH * len(pred) * ref_counts / max(ref_counts.sum(), 1))
    )
    well = np.setdiff1d(contrasts.comparable(n_well), candidates)
    if not len(candidates) or len(well) < 2:  # no contrast to compare, or no typical agreement to compare it with
        return none
    kept = np.isin(pred, well) & ~low | np.isin(pred, candidates) & low  # the cells each class's profile is read from
    query, _ = contrasts.query_profiles(np.where(kept, pred, -1))
    typical = contrasts.typical(query, well)
    if typical <= 0:
        return none
    return np.array(
        [c for c in candidates if contrasts.agreement(c, query[c], query, well) >= SHIFTED_AGREEMENT * typical],
        dtype=np.int64,
    )


def _known_unknowns(contrasts, latent: np.ndarray, pred: np.ndarray, unknown: np.ndarray, seed: int) -> np.ndarray:
    """The known class of each cell the refinement called Unknown that expresses it (-1: the cell stays Unknown).

    A few Unknown seeds can take a region of a known type whose cells map well (the propagation gives every class
    the same total mass, however few its seeds). Per top known class ``c``, the Unknown cells (``SHIFTED_CLASS_CELLS``
    at least) are given back to ``c`` where their profile's contrast agrees with ``c``'s sample contrast at least
    ``KNOWN_AGREEMENT`` times as well as the known classes' own contrasts typically do (:class:`_Contrasts`; the
    profiles of the cells called known) and lies near ``c``'s query profile: at most ``KNOWN_DISTANCE`` times the
    distance from it to the nearest other class's (within ``KNOWN_CLOSE_DISTANCE`` of it, ``KNOWN_CLOSE_AGREEMENT``
    of the agreement is enough). A group that fails for ``c`` is tested, on the same terms, for the class whose query
    profile lies nearest its own (a type the reference holds few cells of, mapped beside them onto a neighbouring
    class). A group of ``2 * SHIFTED_MIN_CELLS`` cells or more is split in two on ``latent`` (k-means); a part of
    ``SHIFTED_MIN_CELLS`` cells or more that fails on its own stays Unknown (a type the reference lacks beside a
    known region of the same class).
    """
    out = np.full(len(pred), -1, dtype=np.int64)
    if contrasts is None or not unknown.any():
        return out
    query, sizes = contrasts.query_profiles(np.where(unknown, -1, pred))
    well = contrasts.comparable(sizes)
    typical = contrasts.typical(query, well) if len(well) >= 3 else 0.0  # a class and two others to compare with
    if typical <= 0:
        return out

    def known(c: int, group: np.ndarray) -> bool:  # the profile of a group of query cells, taken as class ``c``
        others = well[well != c]
        near = np.linalg.norm(group - query[c]) / np.linalg.norm(query[others] - query[c], axis=1).min()
        agreement = contrasts.agreement(c, group, query, others) / typical
        if near <= KNOWN_CLOSE_DISTANCE:
            return agreement >= KNOWN_CLOSE_AGREEMENT
        return agreement >= KNOWN_AGREEMENT and near <= KNOWN_DISTANCE

    from sklearn.cluster import KMeans

    for c in np.intersect1d(pred[unknown], well):
        rows = np.flatnonzero(unknown & (pred == c))
        if len(rows) < SHIFTED_CLASS_CELLS:
            continue
        group = contrasts.profile(rows)
        others = well[well != c]
        home = c if known(c, group) else others[np.argmin(np.linalg.norm(query[others] - group, axis=1))]
        if home != c and not known(home, group):
            continue
        if len(rows) >= 2 * SHIFTED_MIN_CELLS:
            parts = KMeans(2, n_init=3, random_state=seed).fit_predict(latent[rows])
            failing = [
                p for p in (0, 1)
                if (parts == p).sum() >= SHIFTED_MIN_CELLS and not known(home, contrasts.profile(rows[parts == p]))
            ]  # fmt: skip
            rows = rows[~np.isin(parts, failing)]
        out[rows] = home
    return out


def _sample_share(idx: np.ndarray, n_ref: int) -> np.ndarray:
    """Per query cell: the reference sample's share of its neighbours, relative to the sample's share of the graph.

    Averaged over the cell and its query neighbours; ``idx``: the graph's neighbours, the ``n_ref`` sample rows first.
    """
    share = (idx[n_ref:] < n_ref).mean(1) / (n_ref / len(idx))
    near = idx[n_ref:] - n_ref  # query neighbours as query rows; sample neighbours are negative
    is_query = near >= 0
    total = share + np.where(is_query, share[np.where(is_query, near, 0)], 0.0).sum(1)
    return total / (1 + is_query.sum(1))


def _expression_graph_input(X, present, batches, sample: dict | None, sample_codes: np.ndarray | None):
    """Counts (present genes), batch names and reference seeds of the refinement graph.

    The query's cells alone, or after the reference sample's cells (their labels as seeds).
    """
    cols = np.flatnonzero(np.asarray(present) > 0)
    counts, batch = X[:, cols], np.asarray(batches).astype(str)
    if sample is None or not len(sample["index"]):
        return counts, batch, np.zeros(0, dtype=np.int64)
    import scipy.sparse as sp

    counts = sp.vstack([sample["counts"][:, cols], sp.csr_matrix(counts, dtype=np.float32)], format="csr")
    batch = np.concatenate([np.char.add("reference ", sample["batch"]), np.char.add("query ", batch)])
    return counts, batch, np.asarray(sample_codes)[sample["index"]].astype(np.int64)
