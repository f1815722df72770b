"""PyTorch models.  Importing this package imports torch: training and deploy only."""

from movrec.models.base import Model
from movrec.models.functional import FunctionalModel
from movrec.models.hybrid import HybridModel
from movrec.models.mf import MatrixFactorization
from movrec.models.mlp import MLPModel

MODELS: dict[str, type[Model]] = {
    m.kind: m for m in (MatrixFactorization, HybridModel, FunctionalModel, MLPModel)
}
CONTENT_MODELS = {"hybrid", "functional", "mlp"}

__all__ = [
    "CONTENT_MODELS",
    "MODELS",
    "FunctionalModel",
    "HybridModel",
    "MLPModel",
    "MatrixFactorization",
    "Model",
]
