"""The option strings of the public API as ``Literal`` types, named once and shared by every signature."""

from __future__ import annotations

from typing import Literal

Device = Literal["auto", "cpu", "cuda"]  # "cuda:N" picks one GPU
ModelKind = Literal["auto", "vae", "ae", "pca"]
BatchCorrection = Literal["auto", "none", "scale"]
KnnMethod = Literal["auto", "exact", "pynndescent"]
Bridges = Literal["auto", "mnn", "none"]
GeneGraph = Literal["combined", "denoised", "loadings", "coexpression"]
GeneScoring = Literal["ensemble", "propagation"]
CalibrationMethod = Literal["temperature", "isotonic"]
ClassPrior = Literal["estimate", "uniform"]
