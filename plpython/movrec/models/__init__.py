"""PyTorch models.  Importing this package imports torch: training and deploy only.

``base``        the Model protocol every model meets, and the shared user side
``mf``          matrix factorisation
``hybrid``      the content sub-network factorised with user vectors (cold start, ranking head)
``functional``  the hybrid without movie-id terms (content-only baseline)
``mlp``         user vectors and content through an MLP (not deployable)
"""

from movrec.models.base import Model
from movrec.models.functional import FunctionalModel
from movrec.models.hybrid import HybridModel
from movrec.models.mf import MatrixFactorization
from movrec.models.mlp import MLPModel

# Models whose movies come from content (movrec.content); the others index movies by id.
CONTENT_MODELS: dict[str, type[HybridModel]] = {
    m.kind: m for m in (HybridModel, FunctionalModel, MLPModel)
}
MODELS: dict[str, type[Model]] = {MatrixFactorization.kind: MatrixFactorization, **CONTENT_MODELS}

__all__ = [
    "CONTENT_MODELS",
    "MODELS",
    "FunctionalModel",
    "HybridModel",
    "MLPModel",
    "MatrixFactorization",
    "Model",
]
