"""The :class:`Reference` object and its files: a trained model plus what ``map_query`` compares a query with.

``reference.npz`` holds plain arrays only (read with ``allow_pickle=False``): the reference cells' latent,
labels and held-out rows, each class's mean profile, and the raw counts of a class-stratified sample of the
labelled cells (:func:`expression_sample`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._types import Device

if TYPE_CHECKING:
    from ..model import EmbeddingModel

REFERENCE_FILE = "reference.npz"
SAMPLE_PER_CLASS = 1000  # labelled reference cells per class whose counts a reference keeps (at most)


class Reference:
    """A trained model with the reference cells' latent, labels and batches, and each class's mean profile.

    ``sample`` holds the raw counts (model genes, CSR) of up to ``SAMPLE_PER_CLASS`` labelled cells per class,
    with their rows (``index``) and batch names (``batch``): :func:`biossl.tl.map_query` settles its calls on a
    joint expression graph of these cells and the query. A reference file therefore carries some of the
    reference's counts; references saved before this carry none and map on the query's own graph.

    Build it with :func:`biossl.tl.fit_reference`; share it with :meth:`save` / :meth:`load`.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        latent: np.ndarray,
        codes: np.ndarray,
        classes: list[str],
        meta: dict,
        held_out: np.ndarray | None = None,
        profiles: np.ndarray | None = None,
        profile_similarity: np.ndarray | None = None,
        sample: dict | None = None,
    ):
        self.model = model
        self.latent = np.asarray(latent, dtype=np.float32)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.classes = list(classes)
        self.meta = dict(meta)
        # reference cells the model did not train on (its early-stopping cells): they calibrate the mapping score
        self.held_out = np.zeros(0, dtype=np.int64) if held_out is None else np.asarray(held_out, dtype=np.int64)
        # mean log-normalised expression per class and its cells' typical match to it (None: saved before these)
        self.profiles = None if profiles is None else np.asarray(profiles, dtype=np.float32)
        self.profile_similarity = None if profile_similarity is None else np.asarray(profile_similarity, np.float32)
        # raw counts (model genes) of a class-stratified sample of labelled reference cells, with their rows and
        # batch names: map_query settles its calls on a joint graph of these and the query (None: saved before)
        self.sample = sample

    @property
    def trained_index(self) -> np.ndarray:
        """Rows of the reference cells the model was trained on (query cells are scored against these)."""
        keep = np.ones(self.latent.shape[0], dtype=bool)
        keep[self.held_out] = False
        return np.flatnonzero(keep)

    @property
    def class_sizes(self) -> np.ndarray:
        """Labelled reference cells per class, in the order of ``classes``."""
        return np.bincount(self.codes[self.codes >= 0], minlength=len(self.classes))

    def __repr__(self) -> str:
        return (
            f"Reference({self.latent.shape[0]} cells, {len(self.classes)} classes, {len(self.model.genes)} genes, "
            f"batches={self.model.batches or 'none'})"
        )

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``model.pt`` (state dict), ``reference.npz`` (latent, labels, profiles) and ``config.json``."""
        import io

        from ..model.io import CONFIG, WEIGHTS, write_dir_atomic

        buf = io.BytesIO()
        arrays = {"latent": self.latent, "codes": self.codes, "held_out": self.held_out}
        if self.profiles is not None:
            arrays.update(profiles=self.profiles, profile_similarity=self.profile_similarity)
        if self.sample is not None:
            counts = self.sample["counts"]
            arrays.update(
                sample_index=self.sample["index"], sample_batch=np.asarray(self.sample["batch"], dtype=str),
                sample_data=counts.data, sample_indices=counts.indices, sample_indptr=counts.indptr,
            )  # fmt: skip
        np.savez_compressed(buf, **arrays)
        config = {**self.model.config, "reference": {**self.meta, "classes": self.classes}}
        state = {k: v.detach().cpu() for k, v in self.model.module.state_dict().items()}
        return write_dir_atomic(
            path, {WEIGHTS: state, REFERENCE_FILE: buf.getvalue(), CONFIG: config}, overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: Device | str = "auto") -> Reference:
        """Load a reference directory (weights only; ``reference.npz`` read without pickle)."""
        from ..model import EmbeddingModel
        from ..model.io import CONFIG, WEIGHTS, read_config

        config = read_config(path, required=(WEIGHTS, CONFIG))
        if "reference" not in config:
            raise ValueError(
                f"{path} is a model directory, not a reference (no labelled cells in it); build one with "
                "biossl.tl.fit_reference or `biossl fit-reference`."
            )
        if not (Path(path) / REFERENCE_FILE).is_file():
            raise ValueError(f"reference directory {path} is missing {REFERENCE_FILE}; save the reference again.")
        model = EmbeddingModel.load(path, device=device)
        try:
            with np.load(Path(path) / REFERENCE_FILE, allow_pickle=False) as npz:
                latent, codes = npz["latent"], npz["codes"]
                held_out = npz["held_out"] if "held_out" in npz.files else None
                profiles = npz["profiles"] if "profiles" in npz.files else None
                similarity = npz["profile_similarity"] if profiles is not None else None
                sample = _read_sample(npz, len(codes), len(model.genes))
        except (ValueError, OSError, KeyError) as err:
            why = "it holds pickled Python objects, which biossl never unpickles" if "pickle" in str(err) else err
            raise ValueError(f"{Path(path) / REFERENCE_FILE} is damaged or not a biossl reference ({why}).") from None
        meta = dict(config["reference"])
        classes = [str(c) for c in meta.pop("classes")]
        shape_ok = latent.shape == (len(codes), model.config["n_latent"]) and codes.max(initial=-1) < len(classes)
        held_out_ok = held_out is None or not len(held_out) or (held_out.min() >= 0 and held_out.max() < len(codes))
        profiles_ok = profiles is None or (
            profiles.shape == (len(classes), len(model.genes)) and similarity.shape == (len(classes),)
        )
        if not (shape_ok and held_out_ok and profiles_ok):
            raise ValueError(f"{Path(path) / REFERENCE_FILE} does not match config.json; the reference is damaged.")
        return cls(model, latent, codes, classes, meta, held_out, profiles, similarity, sample)


def expression_sample(counts, codes: np.ndarray, batch_names: np.ndarray, seed: int) -> dict:
    """Counts (CSR float32), rows and batch names of up to ``SAMPLE_PER_CLASS`` labelled cells of every class."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(codes == c))[:SAMPLE_PER_CLASS] for c in np.unique(codes[codes >= 0])]
    index = np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)
    block = sp.csr_matrix(counts[index], dtype=np.float32)
    block.sort_indices()
    return {"counts": block, "index": index.astype(np.int64), "batch": np.asarray(batch_names)[index].astype(str)}


def _read_sample(npz, n_cells: int, n_genes: int) -> dict | None:
    """The expression sample of a ``reference.npz`` (None when it was saved without one)."""
    if "sample_index" not in npz.files:
        return None
    index, indptr = npz["sample_index"], npz["sample_indptr"]
    if (len(index) and (index.min() < 0 or index.max() >= n_cells)) or len(indptr) != len(index) + 1:
        raise ValueError("the expression sample does not match the reference cells")
    counts = sp.csr_matrix((npz["sample_data"], npz["sample_indices"], indptr), shape=(len(index), n_genes))
    return {"counts": counts, "index": index, "batch": npz["sample_batch"].astype(str)}
