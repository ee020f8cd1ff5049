"""Minibatch training loop: fixed step budget, held-out early stopping, seeded."""

from __future__ import annotations

import functools
import logging
import math
import time

import numpy as np
import scipy.sparse as sp
import torch

from .._progress import progress_bar
from .._threads import training_threads
from .vae import CountAutoencoder

logger = logging.getLogger("biossl")

_TORCH_THREADS_AT_IMPORT = torch.get_num_threads()  # torch's own default, unless set before biossl loaded torch


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is available; use device='auto' or 'cpu'.")
    return torch.device(device)


def _float_tensor(block, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)


def rows_to_tensor(X, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Dense float32 tensor of rows ``idx`` of a dense or sparse (CSR) matrix."""
    block = X[idx]
    return _float_tensor(block.toarray() if sp.issparse(block) else block, device)


def count_rows(
    X, idx: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Rows ``idx`` as a dense float32 tensor, with the (row, column) indices of their non-zero counts.

    The indices come from the CSR structure in the row-major order of ``torch.nonzero``, which they replace
    in the likelihood (:func:`~biossl.model.vae.log_nb`) at a fraction of its cost (about 0.5 ms of a 10-12 ms
    training step on 128 × 2,000 counts); ``None`` for dense rows (the likelihood then finds them itself).
    """
    block = X[idx]
    if not sp.issparse(block):
        return _float_tensor(block, device), None
    block = sp.csr_matrix(block, dtype=np.float32)  # X[idx] made a copy of the rows: safe to tidy in place
    block.sum_duplicates()  # also sorts the column indices of each row
    block.eliminate_zeros()
    rows = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
    nonzero = (torch.from_numpy(rows).to(device), torch.from_numpy(block.indices.astype(np.int64)).to(device))
    return _float_tensor(block.toarray(), device), nonzero


def onehot(batch: np.ndarray, n_batches: int, device: torch.device) -> torch.Tensor:
    """One-hot rows for batch codes; code -1 (a batch the model never saw) gets the uniform mixture."""
    out = torch.zeros((len(batch), n_batches), device=device)
    if n_batches == 0:
        return out
    known = batch >= 0
    idx = torch.from_numpy(np.flatnonzero(known)).to(device)
    out[idx, torch.from_numpy(batch[known]).long().to(device)] = 1.0
    if (~known).any():
        out[torch.from_numpy(np.flatnonzero(~known)).to(device)] = 1.0 / n_batches
    return out


def _deterministic_on_cpu(fn):
    """Run ``fn`` with torch's deterministic algorithms on a CPU ``device`` (restored afterwards).

    Without them two fits with the same seed on the same 2-core machine gave different latents from run to
    run (a multi-threaded CPU kernel sums in a varying order); with them the latents are identical, at no
    measurable cost. On CUDA the setting is left to the user (it needs ``CUBLAS_WORKSPACE_CONFIG``).
    """

    @functools.wraps(fn)
    def wrapper(*args, device: torch.device, **kwargs):
        if device.type != "cpu":
            return fn(*args, device=device, **kwargs)
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return fn(*args, device=device, **kwargs)
        finally:
            torch.use_deterministic_algorithms(previous)

    return wrapper


def _capped_threads(fn):
    """Run ``fn`` with torch's intra-op threads capped for training (:func:`biossl._threads.training_threads`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with training_threads(_TORCH_THREADS_AT_IMPORT):
            return fn(*args, **kwargs)

    return wrapper


def _loss_text(train_loss: float, val_losses: list[float]) -> str:
    held_out = f", held-out {val_losses[-1]:.4g}" if val_losses else ""
    return f"loss {train_loss:.4g}{held_out}"


@_capped_threads
@_deterministic_on_cpu
def train(
    module: CountAutoencoder,
    X,
    batch: np.ndarray,
    *,
    max_steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    kl_warmup: float = 0.3,
    validation_fraction: float = 0.1,
    eval_every: int = 100,
    patience: int = 4,
    seed: int = 0,
    device: torch.device,
    progress: bool | None = None,
    parameters: list[torch.nn.Parameter] | None = None,
    gene_mask: np.ndarray | None = None,
) -> dict:
    """Train ``module`` on count rows ``X`` (cells × genes, CSR or dense) for at most ``max_steps`` steps.

    A random ``validation_fraction`` of cells (at most 2,000) is held out; every ``eval_every`` steps
    the held-out ELBO is computed, and once the KL weight, which rises linearly over the first ``kl_warmup`` of
    the budget, has reached 1, training stops after ``patience`` evaluations without improvement (the best
    weights are restored). On references and embeddings of 600-2,000 cells the best came at the first or second
    evaluation after the warm-up and never later (22 fits: 12 strong-batch references, 4 of the reference-mapping
    table, VAE and AE on the three few-label sets); 8 evaluations of patience trained 800 steps for nothing
    there, 4 give the same weights 400 steps sooner. On ~19,000 cells it improved at every evaluation up to the
    budget.
    ``parameters`` restricts what is trained (default: everything); ``gene_mask`` (0/1 per gene) leaves
    genes absent from the data out of the likelihood. Returns the training history (h5ad-writable).
    """
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    perm = rng.permutation(n)
    n_val = min(2000, round(validation_fraction * n)) if n >= 50 else 0
    val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]
    batch_size = max(2, min(batch_size, len(train_idx)))
    trained = list(module.parameters()) if parameters is None else parameters
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    mask_t = None if gene_mask is None else torch.as_tensor(gene_mask, dtype=torch.float32, device=device)
    warm = max(1, int(kl_warmup * max_steps))
    batch_t = torch.from_numpy(batch.astype(np.int64))
    held_out = _HeldOutLoss(module, X, val_idx, batch, batch_t, mask_t, device)
    stopping = _EarlyStopping(patience, warm)
    history: dict[str, list] = {"step": [], "train_loss": [], "val_loss": []}
    order, pos = rng.permutation(train_idx), 0
    logger.info(
        "training %s: up to %d steps of %d cells (%d cells, %d held out), %d genes, %s, torch threads %d",
        "VAE" if module.variational else "autoencoder", max_steps, batch_size, len(train_idx), n_val, X.shape[1],
        device, torch.get_num_threads(),
    )  # fmt: skip
    start = time.perf_counter()
    bar = progress_bar(max_steps, "training", progress, unit="step")
    module.train()
    running, steps_done, since_eval = 0.0, 0, 0
    for step in range(1, max_steps + 1):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(train_idx), 0
        idx = np.sort(order[pos : pos + batch_size])
        pos += batch_size
        oh = onehot(batch[idx], module.n_batches, device)
        x, nonzero = count_rows(X, idx, device)
        loss, _ = module.loss(x, oh, batch_t[idx].to(device), min(1.0, step / warm), gene_mask=mask_t, nonzero=nonzero)
        _gradient_step(opt, loss, trained)
        running += float(loss.detach())
        steps_done, since_eval = step, since_eval + 1
        if bar is not None:
            if step % 10 == 0:
                bar.set_postfix_str(_loss_text(running / since_eval, history["val_loss"]), refresh=False)
            bar.update(1)
        if step % eval_every == 0 or step == max_steps:
            vl = held_out() if n_val else running / eval_every
            history["step"].append(step)
            history["train_loss"].append(running / eval_every)
            history["val_loss"].append(vl)
            running, since_eval = 0.0, 0
            if stopping.should_stop(step, vl, module):
                break
    if bar is not None:
        bar.close()
    if stopping.best_state is not None:
        module.load_state_dict(stopping.best_state)
    module.eval()
    best = stopping.best
    logger.info("trained %d steps in %.1f s, best held-out loss %.2f", steps_done, time.perf_counter() - start, best)
    return {
        "steps": steps_done,
        "best_val_loss": float(best) if math.isfinite(best) else float("nan"),
        "validation_index": val_idx,
        **history,
    }


def _gradient_step(opt: torch.optim.Optimizer, loss: torch.Tensor, trained: list[torch.nn.Parameter]) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained, 10.0)
    opt.step()


class _HeldOutLoss:
    """The mean loss (full KL weight) of the held-out cells, read once when the rows are on disk."""

    def __init__(self, module: CountAutoencoder, X, val_idx: np.ndarray, batch, batch_t, mask_t, device) -> None:
        self.module, self.val_idx, self.batch, self.batch_t, self.mask_t, self.device = (
            module, val_idx, batch, batch_t, mask_t, device,
        )  # fmt: skip
        on_disk = not (sp.issparse(X) or isinstance(X, np.ndarray))  # a backed file: not at every evaluation
        self.X, self.X_val = X, (X[val_idx] if on_disk and len(val_idx) else None)

    def __call__(self) -> float:
        module, n_val = self.module, len(self.val_idx)
        module.eval()
        with torch.no_grad():
            tot = 0.0
            for s in range(0, n_val, 1024):
                idx = self.val_idx[s : s + 1024]
                rows = (self.X, idx) if self.X_val is None else (self.X_val, np.arange(s, s + len(idx)))
                x, nonzero = count_rows(*rows, self.device)
                oh = onehot(self.batch[idx], module.n_batches, self.device)
                bt = self.batch_t[idx].to(self.device)
                loss, _ = module.loss(x, oh, bt, 1.0, gene_mask=self.mask_t, nonzero=nonzero)
                tot += float(loss) * len(idx)
        module.train()
        return tot / max(n_val, 1)


class _EarlyStopping:
    """Keep the best weights; stop after ``patience`` evaluations without improvement once the KL warm-up ends."""

    def __init__(self, patience: int, warm: int) -> None:
        self.patience, self.warm = patience, warm
        self.best, self.best_state, self.bad = math.inf, None, 0

    def should_stop(self, step: int, loss: float, module: CountAutoencoder) -> bool:
        if step < self.warm:  # the ELBO is comparable only once the KL weight has reached 1
            return False
        if loss < self.best - 1e-4 * abs(self.best if math.isfinite(self.best) else 1.0):
            self.best, self.bad = loss, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return False
        self.bad += 1
        return self.bad >= self.patience
