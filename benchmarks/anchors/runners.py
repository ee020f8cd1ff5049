"""One runner per method: a label-free ``prepare`` step (done once per dataset and seed, reused over splits)
and a ``predict`` step per split.

Every method sees the same AnnData (raw counts in ``X``), the same labelled positions and the same seed.
The time of ``prepare`` is counted in the end-to-end time of every run that reuses it.

Methods and settings:

- ``biossl``: the default API path, ``pp.setup → tl.embed → tl.neighbors → tl.annotate`` (``batch_key="batch"``
  on multi-batch sets; ``tl.embed``'s ``model="auto"`` is PCA since biossl 0.1.0's second round of
  benchmarks — before it trained the VAE whenever there were batches).
- ``biossl_best``: the best setting found through the public API (see ``BEST`` below and the report).
- ``knn_pca``: distance-weighted kNN, ``n_neighbors = min(15, k)``; ``knn1_pca``: 1-NN (see baselines.py).
- ``labelspreading``: sklearn LabelSpreading tuned (kNN kernel, alpha 0.99, 1000 iterations);
  ``labelspreading_default``: sklearn's defaults.
- ``scanvi``: scVI (scvi-tools defaults: n_latent 10, the default epoch heuristic, 400 epochs below
  20,000 cells) → ``SCANVI.from_scvi_model`` trained with its default epochs (10 after pretraining).
  scVI never sees labels, so it is trained once per dataset and seed and shared across splits; its time
  is in every run's end-to-end time. ``scanvi_fast``: scVI 100 epochs, scANVI 10 epochs.
- ``celltypist``: ``celltypist.train`` on the labelled cells (log1p of counts per 10,000, all genes, its
  defaults) and ``celltypist.annotate`` on the rest (no majority voting).
- ``ingest``: ``sc.tl.ingest`` with the labelled cells as the reference (log-normalised HVGs, PCA and
  kNN graph of the reference with ``n_neighbors = min(15, max(2, k))``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

UNLABELLED = "Unknown"


def labels_column(truth: np.ndarray, labelled: np.ndarray) -> pd.Categorical:
    """Truth on the labelled cells, NaN elsewhere (categories = all classes)."""
    return pd.Categorical(np.where(labelled, truth, None), categories=sorted(set(truth)))


def _hvg_lognorm(adata, batch_key, n_top_genes=2000):
    import scanpy as sc

    tmp = adata.copy()
    sc.pp.highly_variable_genes(
        tmp, flavor="seurat_v3", n_top_genes=min(n_top_genes, tmp.n_vars), batch_key=batch_key, subset=True
    )
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    return tmp


# ---------------------------------------------------------------------------------------------- biossl
def _biossl_prepare(adata, batch_key, seed, embed_kw=None, neighbors_kw=None):
    import biossl

    b = adata.copy()
    biossl.pp.setup(b, batch_key=batch_key)
    biossl.tl.embed(b, batch_key=batch_key, seed=seed, **(embed_kw or {}))
    biossl.tl.neighbors(b, **(neighbors_kw or {}))
    return b


def _biossl_predict(b, truth, labelled, k, annotate_kw=None):
    import biossl

    b.obs["bench_labels"] = labels_column(truth, labelled)
    biossl.tl.annotate(b, "bench_labels", **(annotate_kw or {}))
    return b.obs["biossl_label"].astype(str).to_numpy()


class Biossl:
    name = "biossl"
    params: ClassVar[dict] = {"embed": {}, "neighbors": {}, "annotate": {}}

    def prepare(self, adata, batch_key, seed):
        return _biossl_prepare(adata, batch_key, seed, self.params["embed"], self.params["neighbors"])

    def predict(self, state, truth, labelled, k, seed):
        return _biossl_predict(state, truth, labelled, k, self.params["annotate"])


# The best setting found through the public API by benchmarks/anchors/sweep.py on seeds 0-1 of every dataset
# (grid: pca50 × n_neighbors 15|30 × alpha 0.9|0.99 × refine × class_prior estimate|uniform; mean macro-F1 over
# the three datasets and all splits). It is the default path with the embedding named; the VAE settings of the
# first sweep (vae20, vae20 adversarial) lost to PCA on every dataset and were not re-swept. Seeds 2-4 were not
# used to choose it.
BEST: dict = {
    "embed": {"model": "pca"},
    "neighbors": {"n_neighbors": 15},
    "annotate": {"alpha": 0.9, "refine": True, "class_prior": "estimate"},
}


class BiosslBest(Biossl):
    name = "biossl_best"
    params = BEST


# ---------------------------------------------------------------------------------------------- PCA baselines
class _PCABase:
    def prepare(self, adata, batch_key, seed):
        from baselines import pca_representation

        return pca_representation(adata, batch_key=batch_key, seed=seed)


class KnnPCA(_PCABase):
    name = "knn_pca"
    params: ClassVar[dict] = {"weights": "distance", "n_neighbors": "min(15, k)"}

    def predict(self, X, truth, labelled, k, seed):
        from baselines import knn_predict

        classes = np.array(sorted(set(truth)))
        codes = np.where(labelled, np.searchsorted(classes, truth), -1)
        return classes[knn_predict(X, codes, k)]


class Knn1PCA(_PCABase):
    name = "knn1_pca"
    params: ClassVar[dict] = {"n_neighbors": 1}

    def predict(self, X, truth, labelled, k, seed):
        from baselines import knn_predict

        classes = np.array(sorted(set(truth)))
        codes = np.where(labelled, np.searchsorted(classes, truth), -1)
        return classes[knn_predict(X, codes, 1)]


class LabelSpreadingTuned(_PCABase):
    name = "labelspreading"
    params: ClassVar[dict] = {"kernel": "knn", "n_neighbors": 15, "alpha": 0.99, "max_iter": 1000}
    tuned = True

    def predict(self, X, truth, labelled, k, seed):
        from baselines import labelspreading_predict

        classes = np.array(sorted(set(truth)))
        codes = np.where(labelled, np.searchsorted(classes, truth), -1)
        return classes[labelspreading_predict(X, codes, tuned=self.tuned)]


class LabelSpreadingDefault(LabelSpreadingTuned):
    name = "labelspreading_default"
    params: ClassVar[dict] = {"kernel": "rbf", "gamma": 20, "alpha": 0.2, "max_iter": 30}
    tuned = False


# ---------------------------------------------------------------------------------------------- scANVI
class Scanvi:
    name = "scanvi"
    scvi_epochs: int | None = None  # None = scvi-tools' default heuristic
    scanvi_epochs: int | None = None

    @property
    def params(self):
        return {"scvi_max_epochs": self.scvi_epochs or "default", "scanvi_max_epochs": self.scanvi_epochs or "default"}

    def prepare(self, adata, batch_key, seed):
        import scvi

        scvi.settings.seed = seed
        scvi.settings.num_threads = 1
        scvi.settings.dl_num_workers = 0
        tmp = adata.copy()
        import scanpy as sc

        sc.pp.highly_variable_genes(
            tmp, flavor="seurat_v3", n_top_genes=min(2000, tmp.n_vars), batch_key=batch_key, subset=True
        )
        scvi.model.SCVI.setup_anndata(tmp, batch_key=batch_key)
        model = scvi.model.SCVI(tmp)
        model.train(max_epochs=self.scvi_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
        return {"adata": tmp, "model": model, "epochs": int(model.history["elbo_train"].shape[0])}

    def predict(self, state, truth, labelled, k, seed):
        import scvi

        scvi.settings.seed = seed
        tmp = state["adata"]
        tmp.obs["bench_labels"] = np.where(labelled, truth, UNLABELLED)
        model = scvi.model.SCANVI.from_scvi_model(
            state["model"], unlabeled_category=UNLABELLED, labels_key="bench_labels", adata=tmp
        )
        model.train(max_epochs=self.scanvi_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
        self.last_extra = {"scvi_epochs": state["epochs"], "scanvi_epochs": int(model.history["elbo_train"].shape[0])}
        return np.asarray(model.predict(), dtype=str)


class ScanviFast(Scanvi):
    name = "scanvi_fast"
    scvi_epochs = 100
    scanvi_epochs = 10


# ---------------------------------------------------------------------------------------------- CellTypist
class CellTypist:
    name = "celltypist"
    params: ClassVar[dict] = {"normalise": "log1p(1e4)", "genes": "all", "majority_voting": False, "train": "defaults"}

    def prepare(self, adata, batch_key, seed):
        import scanpy as sc

        tmp = adata.copy()
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        return tmp

    def predict(self, tmp, truth, labelled, k, seed):
        import celltypist

        train = tmp[labelled].copy()
        model = celltypist.train(train, labels=truth[labelled], n_jobs=1, check_expression=True)
        query = tmp[~labelled].copy()
        res = celltypist.annotate(query, model=model, majority_voting=False)
        pred = truth.astype(object).copy()
        pred[~labelled] = res.predicted_labels["predicted_labels"].astype(str).to_numpy()
        return pred.astype(str)


# ---------------------------------------------------------------------------------------------- scanpy ingest
class Ingest:
    name = "ingest"
    params: ClassVar[dict] = {"reference": "labelled cells", "n_neighbors": "min(15, max(2, k))", "embedding": "pca"}

    def prepare(self, adata, batch_key, seed):
        return _hvg_lognorm(adata, batch_key)

    def predict(self, tmp, truth, labelled, k, seed):
        import scanpy as sc

        ref = tmp[labelled].copy()
        ref.obs["bench_labels"] = pd.Categorical(truth[labelled])
        n_ref = ref.n_obs
        sc.pp.pca(ref, n_comps=int(min(50, n_ref - 1, ref.n_vars - 1)), random_state=seed)
        n_neighbors = int(min(15, max(2, k if k is not None else 15), n_ref - 1))
        sc.pp.neighbors(ref, n_neighbors=n_neighbors, random_state=seed)
        query = tmp[~labelled].copy()
        sc.tl.ingest(query, ref, obs="bench_labels", embedding_method="pca")
        pred = truth.astype(object).copy()
        pred[~labelled] = query.obs["bench_labels"].astype(str).to_numpy()
        return pred.astype(str)


METHODS = {
    cls.name: cls
    for cls in (
        Biossl,
        BiosslBest,
        KnnPCA,
        Knn1PCA,
        LabelSpreadingTuned,
        LabelSpreadingDefault,
        Scanvi,
        ScanviFast,
        CellTypist,
        Ingest,
    )
}
