"""PyTorch models.  Importing this package imports torch: training and deploy only."""

from movrec.models.mf import MatrixFactorization

MODELS = {"mf": MatrixFactorization}

__all__ = ["MODELS", "MatrixFactorization"]
