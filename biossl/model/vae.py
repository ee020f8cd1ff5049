"""Torch modules: encoder, negative-binomial decoder, optional batch discriminator.

Pure ``nn.Module`` code; the training loop lives in ``train.py`` and the user-facing model in ``__init__.py``.
The design follows scVI (Lopez et al. 2018, Nat Methods 15:1053): log-normalised input, library-size
scaled decoder, gene-wise NB dispersion; the adversarial option follows domain-adversarial training
with gradient reversal (Ganin & Lempitsky 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(n_in: int, n_hidden: int, n_layers: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else n_hidden, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def log_nb(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    mask: torch.Tensor | None = None,
    nonzero: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Log-likelihood of counts ``x`` under NB(mean ``exp(log_mu)``, inverse dispersion ``exp(log_theta)``).

    Summed per cell, without the ``-lgamma(x + 1)`` term (constant in the parameters). The
    ``lgamma(x + theta) - lgamma(theta)`` term vanishes where ``x == 0``, so it is evaluated only on the
    non-zero entries: counts are sparse and lgamma (and digamma in the backward pass) dominate the cost.
    Genes where ``mask`` is 0 (absent from the data) do not count. ``nonzero``: the (row, column) indices of the
    non-zero entries of ``x`` in row-major order, when known (as ``torch.nonzero(x, as_tuple=True)`` gives them).
    """
    theta = log_theta.exp()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)
    dense = theta * (log_theta - log_theta_mu) + x * (log_mu - log_theta_mu)
    if mask is not None:
        dense = dense * mask
    rows, cols = torch.nonzero(x, as_tuple=True) if nonzero is None else nonzero
    th = theta[cols] if theta.dim() == 1 else theta[rows, cols]
    sparse = torch.lgamma(x[rows, cols] + th) - torch.lgamma(th)
    per_cell = dense.sum(1).index_add(0, rows, sparse)
    return per_cell


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class CountAutoencoder(nn.Module):
    """VAE (``variational=True``) or plain autoencoder on counts with an NB decoder.

    Parameters
    ----------
    n_genes, n_batches, n_latent, n_hidden, n_layers, dropout
        Architecture.
    variational
        Gaussian latent with a KL term (VAE) or a deterministic code (AE).
    adversarial
        Add a discriminator that predicts the batch from the latent, trained through gradient
        reversal so that the encoder learns to hide the batch.
    """

    def __init__(
        self,
        n_genes: int,
        n_batches: int = 0,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout: float = 0.1,
        variational: bool = True,
        adversarial: bool = False,
    ):
        super().__init__()
        self.n_genes, self.n_batches, self.n_latent = n_genes, n_batches, n_latent
        self.variational, self.adversarial = variational, adversarial
        self.encoder = _mlp(n_genes + n_batches, n_hidden, n_layers, dropout)
        self.mean = nn.Linear(n_hidden, n_latent)
        self.logvar = nn.Linear(n_hidden, n_latent) if variational else None
        self.decoder = _mlp(n_latent + n_batches, n_hidden, n_layers, 0.0)
        self.scale = nn.Linear(n_hidden, n_genes)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        if adversarial and n_batches > 1:
            self.discriminator = nn.Sequential(nn.Linear(n_latent, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_batches))
        else:
            self.discriminator = None

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """Encoder input: log1p of counts scaled to 10,000 per cell (removes library size)."""
        lib = x.sum(1, keepdim=True).clamp(min=1.0)
        return torch.log1p(x / lib * 1e4)

    def encode(self, x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latent mean (and log-variance for the VAE) of counts ``x``."""
        h = self.encoder(torch.cat([self.normalise(x), onehot], 1))
        return self.mean(h), (self.logvar(h).clamp(-12, 8) if self.variational else None)

    def log_fractions(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Log of the expected expression fraction of each gene (fractions sum to one per cell)."""
        return F.log_softmax(self.scale(self.decoder(torch.cat([z, onehot], 1))), dim=-1)

    def loss(
        self,
        x: torch.Tensor,
        onehot: torch.Tensor,
        batch: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        adv_weight: float = 1.0,
        gene_mask: torch.Tensor | None = None,
        nonzero: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean negative ELBO per cell (plus the adversarial term when enabled).

        ``gene_mask`` (0/1 per gene) leaves genes missing from the data out of the likelihood
        (their zero-filled counts would otherwise be read as true zeros); ``nonzero`` as in :func:`log_nb`.
        """
        mu_z, logvar = self.encode(x, onehot)
        if self.variational and self.training:
            z = mu_z + torch.randn_like(mu_z) * torch.exp(0.5 * logvar)
        else:
            z = mu_z
        log_rho = self.log_fractions(z, onehot)
        log_lib = torch.log(x.sum(1, keepdim=True).clamp(min=1.0))
        ll = log_nb(x, log_lib + log_rho, self.log_theta, gene_mask, nonzero)
        recon = -ll.mean()
        if self.variational:
            kl = (0.5 * (mu_z.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()
        else:
            kl = 1e-3 * mu_z.pow(2).sum(1).mean()  # keeps the AE code from drifting in scale
        total = recon + kl_weight * kl
        parts = {"recon": float(recon.detach()), "kl": float(kl.detach())}
        if self.discriminator is not None and batch is not None and adv_weight > 0:
            logits = self.discriminator(_GradReverse.apply(z, adv_weight))
            adv = F.cross_entropy(logits, batch)
            total = total + adv
            parts["adv"] = float(adv.detach())
        return total, parts
