"""Early stopping of the count model's training, on real counts."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from biossl.model.train import train
from biossl.model.vae import CountAutoencoder


def test_training_stops_four_evaluations_after_its_best_and_keeps_the_best_weights(pbmc_small):
    X = sp.csr_matrix(pbmc_small.X, dtype=np.float32)
    batch = np.zeros(pbmc_small.n_obs, dtype=np.int64)
    torch.manual_seed(0)
    module = CountAutoencoder(X.shape[1])
    history = train(module, X, batch, max_steps=1500, seed=0, device=torch.device("cpu"))
    steps, losses = np.array(history["step"]), np.array(history["val_loss"])
    eligible = steps >= int(0.3 * 1500)  # the ELBO counts only once the KL warm-up has ended
    best = np.flatnonzero(eligible)[np.argmin(losses[eligible])]
    # 600 cells overfit soon after the warm-up: training stops early, 4 evaluations (400 steps) after the best
    assert history["steps"] < 1500
    assert history["steps"] == steps[best] + 400 == steps[-1]
    assert history["best_val_loss"] == losses[best]
    # the weights of the best evaluation are restored: the held-out loss read again is the best one
    val = history["validation_index"]
    with torch.no_grad():
        x = torch.as_tensor(X[val].toarray())
        loss, _ = module.loss(x, torch.zeros(len(val), 0), None, 1.0)
    assert abs(float(loss) - losses[best]) < 1e-3 * abs(losses[best])
    assert float(loss) < losses[-1]


def test_sparse_counts_train_exactly_as_dense_ones(pbmc_small):
    """The likelihood reads the non-zero counts from the CSR structure instead of searching the dense rows:
    same weights to the bit, also when the rows store explicit zeros and unsorted column indices."""
    dense = np.asarray(pbmc_small.X.toarray() if sp.issparse(pbmc_small.X) else pbmc_small.X, dtype=np.float32)
    untidy = sp.csr_matrix(dense)
    untidy.data[::7] = 0.0  # explicit zeros
    dense = untidy.toarray()
    for r in range(0, untidy.shape[0], 3):  # reverse the column order of every third row
        lo, hi = untidy.indptr[r], untidy.indptr[r + 1]
        untidy.indices[lo:hi], untidy.data[lo:hi] = untidy.indices[lo:hi][::-1].copy(), untidy.data[lo:hi][::-1].copy()
    untidy.has_sorted_indices = False
    assert (untidy.data == 0).any()
    structure = untidy.indices.copy(), untidy.data.copy()
    states, histories = [], []
    for X in (dense, untidy):
        torch.manual_seed(0)
        module = CountAutoencoder(X.shape[1])
        history = train(
            module, X, np.zeros(X.shape[0], dtype=np.int64), max_steps=200, seed=0, device=torch.device("cpu")
        )
        states.append(module.state_dict())
        histories.append(history)
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
    # the losses too (the order in which a cell's terms are summed shows there, not in the gradients)
    assert histories[0]["train_loss"] == histories[1]["train_loss"]
    assert histories[0]["val_loss"] == histories[1]["val_loss"]
    # the caller's matrix is left as it was (its rows are tidied on a copy)
    assert np.array_equal(untidy.indices, structure[0]) and np.array_equal(untidy.data, structure[1])
