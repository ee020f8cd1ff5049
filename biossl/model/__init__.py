"""The user-facing embedding model: fit on counts, embed any AnnData with matching genes, save/load.

This package is the only place biossl imports torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._backed import RowReader, is_backed_matrix
from .._genemap import gene_ids
from .._types import Device
from .io import FORMAT_VERSION, WEIGHTS, read_config, read_weights, write_dir_atomic
from .train import onehot, resolve_device, rows_to_tensor, train
from .vae import CountAutoencoder

__all__ = ["EmbeddingModel", "align_genes", "gene_ids"]

logger = logging.getLogger("biossl")

KINDS = ("vae", "ae")


def align_genes(
    adata: AnnData,
    genes: list[str],
    *,
    counts: str = "X",
    min_overlap: float = 0.5,
    case_sensitive: bool = True,
    gene_key: str | None = None,
    gene_map=None,
) -> tuple[sp.csr_matrix, np.ndarray, dict]:
    """Counts of ``adata`` in the order of ``genes`` (missing genes zero-filled).

    For a backed ``adata`` the counts come back as a :class:`biossl._backed.RowReader` (rows read from
    disk when indexed) instead of a CSR matrix.

    Genes are matched on ``var_names`` or ``var[gene_key]``, optionally ignoring case, after renaming them
    through ``gene_map`` (one-to-one pairs, :func:`biossl._genemap.read_gene_map`) when given. Returns the CSR
    matrix, a 0/1 mask of genes present, and an overlap report. Raises ValueError when fewer than
    ``min_overlap`` of ``genes`` are found.
    """
    names = gene_ids(adata, gene_key)
    rename_report = None
    if gene_map is not None:
        from .._genemap import read_gene_map, rename_genes

        new, renamed, rename_report = rename_genes(names, *read_gene_map(gene_map))
        # a gene without a one-to-one partner gets a name no model gene has (unique, so the lookup stays valid)
        names = pd.Index(np.where(renamed, new, "\0unmapped:" + np.asarray(names, dtype=object)).astype(str))
    key = (lambda s: s) if case_sensitive else (lambda s: s.upper())
    lookup = pd.Index([key(g) for g in names])
    if not lookup.is_unique:
        dup = lookup[lookup.duplicated()][0]
        raise ValueError(
            f"gene identifiers are not unique (e.g. {dup!r}{'' if case_sensitive else ' after case folding'}); "
            "make them unique first (adata.var_names_make_unique())."
        )
    pos = lookup.get_indexer([key(g) for g in genes])
    present = pos >= 0
    n_model = len(genes)
    report = {
        "n_model_genes": n_model,
        "n_matched": int(present.sum()),
        "n_missing": int((~present).sum()),
        "n_extra": int(len(names) - present.sum()),
        "fraction_matched": float(present.mean()),
        "missing_examples": [str(g) for g in np.asarray(genes)[~present][:10]],
    }
    if rename_report is not None:
        report["gene_map"] = {k: v for k, v in rename_report.items() if k != "unmapped_examples"}
    if present.mean() < min_overlap:
        raise ValueError(
            f"only {present.sum()} of the model's {n_model} genes are in the data ({present.mean():.0%} < "
            f"{min_overlap:.0%}; missing e.g. {', '.join(report['missing_examples'][:3])}); check that the gene "
            "names use the same identifiers (symbols vs Ensembl ids) as the model."
        )
    matrix = adata.X if counts == "X" else adata.layers[counts]
    if is_backed_matrix(matrix):  # rows are read from disk on demand, already in model gene order
        return RowReader(matrix, columns=np.where(present, pos, -1)), present.astype(np.float32), report
    cols = sp.csc_matrix(matrix)[:, pos[present]] if sp.issparse(matrix) else np.asarray(matrix)[:, pos[present]]
    cols = sp.csr_matrix(cols, dtype=np.float32)
    if present.all():
        return cols, present.astype(np.float32), report
    # scatter present columns into model order
    mapping = np.flatnonzero(present)
    coo = cols.tocoo()
    full = sp.csr_matrix((coo.data, (coo.row, mapping[coo.col])), shape=(adata.n_obs, n_model), dtype=np.float32)
    return full, present.astype(np.float32), report


class EmbeddingModel:
    """A trained count autoencoder (VAE or AE) with the gene list and batches it was fitted on.

    Create it with :meth:`fit` or :meth:`load`; :meth:`transform` embeds new cells.
    """

    def __init__(self, module: CountAutoencoder, config: dict, device: torch.device):
        self.module = module.to(device).eval()
        self.config = config
        self.device = device
        self.validation_index = np.zeros(0, dtype=np.int64)  # cells held out in training (set by fit)

    @property
    def genes(self) -> list[str]:
        """Genes the model reads, in order."""
        return list(self.config["genes"])

    @property
    def batches(self) -> list[str]:
        """Batch categories seen in training (empty without a batch key)."""
        return list(self.config["batches"])

    @classmethod
    def fit(
        cls,
        counts,
        genes: list[str],
        batch: pd.Series | None = None,
        *,
        model: Literal["vae", "ae"] = "vae",
        n_latent: int = 20,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout: float = 0.1,
        adversarial: bool = False,
        max_steps: int = 3000,
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        device: Device | str = "auto",
        progress: bool | None = None,
    ) -> EmbeddingModel:
        """Train on a cells × genes count matrix (CSR or dense) with optional batch labels.

        The budget is ``max_steps`` gradient steps (independent of the number of cells);
        ``max_epochs`` caps it further for small data.
        """
        if model not in KINDS:
            raise ValueError(f"model must be one of {KINDS}, got {model!r}")
        for name, val, lo in (("n_latent", n_latent, 1), ("max_steps", max_steps, 1), ("batch_size", batch_size, 2)):
            if not isinstance(val, int | np.integer) or isinstance(val, bool) or val < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        dev = resolve_device(device)
        n = counts.shape[0]
        steps = int(max_steps)
        if max_epochs is not None:
            steps = max(1, min(steps, int(np.ceil(max_epochs * n / batch_size))))
        categories, codes, n_batches = _training_batches(batch, n)
        X = counts if isinstance(counts, RowReader) else _float32_matrix(counts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = CountAutoencoder(
                len(genes),
                n_batches,
                n_latent=n_latent,
                n_hidden=n_hidden,
                n_layers=n_layers,
                dropout=dropout,
                variational=model == "vae",
                adversarial=adversarial,
            ).to(dev)
            history = train(
                module, X, codes, max_steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                progress=progress,
            )  # fmt: skip
        architecture = {"n_latent": n_latent, "n_hidden": n_hidden, "n_layers": n_layers, "dropout": dropout}
        training = {"max_steps": max_steps, "max_epochs": max_epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
        config = _config(model, architecture, adversarial and n_batches > 1, genes, categories, training, n, history)
        fitted = cls(module, config, dev)
        fitted.validation_index = np.asarray(history["validation_index"], dtype=np.int64)
        return fitted

    def embed_counts(self, X, batch_codes: np.ndarray, chunk_size: int = 4096, progress: bool | None = None):
        """Latent means of count rows ``X`` (already in model gene order)."""
        from .._progress import progress_bar
        from .._threads import env_threads

        n = X.shape[0]
        out = np.empty((n, self.config["n_latent"]), dtype=np.float32)
        bar = progress_bar(n, "embedding", progress) if n > 50_000 else None
        with torch.no_grad(), env_threads():
            for s in range(0, n, chunk_size):
                idx = np.arange(s, min(n, s + chunk_size))
                x = rows_to_tensor(X, idx, self.device)
                mu, _ = self.module.encode(x, onehot(batch_codes[idx], self.module.n_batches, self.device))
                out[idx] = mu.cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def transform(
        self,
        adata: AnnData,
        *,
        batch_key: str | None = None,
        counts: str | None = None,
        min_overlap: float = 0.5,
        case_sensitive: bool = True,
        gene_key: str | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Embed ``adata`` (genes aligned by name) and return the latent and the gene-overlap report."""
        from ..pp import check_batch, find_counts

        where = counts or ("X" if adata.isbacked else find_counts(adata))  # a backed X is checked while read
        X, _, report = align_genes(
            adata, self.genes, counts=where, min_overlap=min_overlap, case_sensitive=case_sensitive, gene_key=gene_key
        )
        if report["n_missing"]:
            logger.warning(
                "%d of %d model genes are missing from the data (zero-filled), e.g. %s",
                report["n_missing"], report["n_model_genes"], ", ".join(report["missing_examples"][:3]),
            )  # fmt: skip
        codes = self.batch_codes(check_batch(adata, batch_key) if batch_key else None, adata.n_obs)
        return self.embed_counts(X, codes), report

    def batch_codes(self, batch: pd.Series | None, n: int) -> np.ndarray:
        """Codes of batches in the model's categories; unseen batches (or none given) map to -1."""
        if not self.batches or batch is None:
            return np.full(n, -1 if self.batches else 0, dtype=np.int64)
        lookup = {b: i for i, b in enumerate(self.batches)}
        return np.array([lookup.get(str(b), -1) for b in batch], dtype=np.int64)

    def adapt(
        self,
        X,
        new_batches: list[str],
        batch_codes: np.ndarray,
        *,
        gene_mask: np.ndarray | None = None,
        max_steps: int = 500,
        seed: int = 0,
        progress: bool | None = None,
    ) -> EmbeddingModel:
        """A copy of the model extended with ``new_batches``, fitted to counts ``X`` of those batches.

        Architecture surgery in the spirit of scArches (Lotfollahi et al. 2022, Nat Biotechnol 40:121):
        one-hot columns for the new batches are added to the first encoder and decoder layers and only
        their weights are trained; every weight of the reference model stays frozen, so the reference
        latent does not move. ``batch_codes`` index the extended list (old batches first).
        """
        old = self.module
        n_old, n_new = old.n_batches, len(new_batches)
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = CountAutoencoder(
                old.n_genes,
                n_old + n_new,
                n_latent=old.n_latent,
                n_hidden=int(cfg["n_hidden"]),
                n_layers=int(cfg["n_layers"]),
                dropout=float(cfg["dropout"]),
                variational=old.variational,
                adversarial=False,
            ).to(self.device)
            state = old.state_dict()
            new_state = module.state_dict()
            for name, tensor in new_state.items():
                if name not in state:
                    continue
                src = state[name]
                if src.shape == tensor.shape:
                    new_state[name] = src.clone()
                else:  # a first layer: copy the old columns, new batch columns start at zero
                    block = torch.zeros_like(tensor)
                    block[:, : src.shape[1]] = src
                    new_state[name] = block
            module.load_state_dict(new_state)
            first_layers = [module.encoder[0].weight, module.decoder[0].weight]
            for p in module.parameters():
                p.requires_grad_(False)
            for w in first_layers:
                w.requires_grad_(True)
                keep = torch.zeros_like(w)
                keep[:, w.shape[1] - n_new :] = 1.0
                w.register_hook(lambda g, keep=keep: g * keep)
            history = train(
                module,
                sp.csr_matrix(X, dtype=np.float32),
                batch_codes,
                max_steps=max_steps,
                kl_warmup=0.0,
                weight_decay=0.0,
                seed=seed,
                device=self.device,
                progress=progress,
                parameters=first_layers,
                gene_mask=gene_mask,
            )
        for p in module.parameters():
            p.requires_grad_(True)
        config = {
            **cfg,
            "batches": [*self.batches, *new_batches],
            "adversarial": False,
            "adapted": {"new_batches": list(new_batches), "steps": int(history["steps"]), "seed": int(seed)},
        }
        return EmbeddingModel(module, config, self.device)

    def gene_loadings(self) -> np.ndarray:
        """Decoder output weights, genes × hidden units (a gene embedding learned by the model)."""
        return self.module.scale.weight.detach().cpu().numpy().copy()

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``model.pt`` (state dict) and ``config.json`` into directory ``path`` atomically."""
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        return write_dir_atomic(path, {WEIGHTS: state, "config.json": self.config}, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: Device | str = "auto") -> EmbeddingModel:
        """Load a model directory written by :meth:`save` (weights only; no code is executed)."""
        config = read_config(path)
        dev = resolve_device(device)
        try:
            module = CountAutoencoder(
                len(config["genes"]),
                len(config["batches"]),
                n_latent=int(config["n_latent"]),
                n_hidden=int(config["n_hidden"]),
                n_layers=int(config["n_layers"]),
                dropout=float(config["dropout"]),
                variational=config["model"] == "vae",
                adversarial=bool(config["adversarial"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{Path(path) / 'config.json'} is incomplete or damaged ({err!r}).") from None
        state = read_weights(path, dev)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"{Path(path) / WEIGHTS} does not match its config.json ({first}).") from None
        return cls(module, config, dev)


def _versions() -> dict[str, str]:
    from .._record import versions

    return versions()


def _training_batches(batch: pd.Series | None, n: int) -> tuple[list[str], np.ndarray, int]:
    """Batch categories, per-cell codes and the number of batch columns (0 for fewer than two batches)."""
    categories = [] if batch is None else [str(c) for c in batch.cat.categories]
    n_batches = len(categories) if len(categories) > 1 else 0
    if n_batches == 0:
        return categories, np.zeros(n, dtype=np.int64), 0
    return categories, batch.cat.codes.to_numpy().astype(np.int64), n_batches


def _float32_matrix(counts):
    """Counts as float32 CSR (sparse input) or a dense float32 array."""
    if sp.issparse(counts):
        return sp.csr_matrix(counts, dtype=np.float32)
    return np.asarray(counts, dtype=np.float32)


def _config(
    model: str, architecture: dict, adversarial: bool, genes, categories: list[str], training: dict, n: int,
    history: dict,
) -> dict:  # fmt: skip
    """The JSON config saved beside the weights: enough to rebuild the module and to say how it was trained."""
    return {
        "format_version": FORMAT_VERSION,
        "model": model,
        "n_latent": int(architecture["n_latent"]),
        "n_hidden": int(architecture["n_hidden"]),
        "n_layers": int(architecture["n_layers"]),
        "dropout": float(architecture["dropout"]),
        "adversarial": bool(adversarial),
        "genes": [str(g) for g in genes],
        "batches": categories if len(categories) > 1 else [],
        "training": {
            "max_steps": int(training["max_steps"]),
            "max_epochs": training["max_epochs"],
            "batch_size": int(training["batch_size"]),
            "lr": float(training["lr"]),
            "seed": int(training["seed"]),
            "n_cells": int(n),
            "steps": int(history["steps"]),
            "best_val_loss": history["best_val_loss"],
        },
        "versions": _versions(),
    }
