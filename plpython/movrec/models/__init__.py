"""PyTorch models.  Importing this package imports torch: training and deploy only."""

from movrec.models.hybrid import FunctionalModel, HybridModel, MLPModel
from movrec.models.mf import MatrixFactorization

MODELS = {m.kind: m for m in (MatrixFactorization, HybridModel, FunctionalModel, MLPModel)}
CONTENT_MODELS = {"hybrid", "functional", "mlp"}

__all__ = [
    "CONTENT_MODELS",
    "MODELS",
    "FunctionalModel",
    "HybridModel",
    "MLPModel",
    "MatrixFactorization",
]
