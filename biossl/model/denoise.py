"""Model-denoised expression: the decoder's expected expression of every gene in every cell (for gene graphs)."""

from __future__ import annotations

import numpy as np
import torch

from .train import onehot, rows_to_tensor

__all__ = ["denoised_log_expression"]


def denoised_log_expression(model, X, batch_codes: np.ndarray, *, chunk_size: int = 2048) -> np.ndarray:
    """``log1p(1e4 × expected fraction)`` of each gene in each cell, decoded from the latent means.

    Parameters
    ----------
    model
        A trained :class:`~biossl.model.EmbeddingModel`.
    X
        Counts (cells × the model's genes, in model order).
    batch_codes
        Batch code of each cell in the model's categories (-1: unseen, decoded with the mean of the batches).

    Returns
    -------
    Cells × genes float32 array.
    """
    from .._threads import env_threads

    module = model.module
    n = X.shape[0]
    out = np.empty((n, module.n_genes), dtype=np.float32)
    with torch.no_grad(), env_threads():
        for s in range(0, n, chunk_size):
            idx = np.arange(s, min(n, s + chunk_size))
            x = rows_to_tensor(X, idx, model.device)
            oh = onehot(batch_codes[idx], module.n_batches, model.device)
            mu, _ = module.encode(x, oh)
            out[idx] = torch.log1p(torch.exp(module.log_fractions(mu, oh)) * 1e4).cpu().numpy()
    return out
