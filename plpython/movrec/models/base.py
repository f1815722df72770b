"""What every movrec model is: the Protocol that training, the registry and deploy rely on.

A model is a torch ``nn.Module`` that predicts ratings from (user index, movie index)
and publishes three sides: users (vectors and biases, into
model.user_latent_attributes), movies (what serving multiplies with) and an optional
ranking matrix ``[ranking vector | prior]`` that recommend() orders by.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Self

import torch
from torch import nn


class Model(Protocol):
    """The interface of MatrixFactorization, HybridModel and the experimental baselines."""

    kind: ClassVar[str]  # the registry's model.registry.kind
    deployable: ClassVar[bool]  # a factorisation: its sides are what serving multiplies
    config: dict[str, Any]  # hyperparameters kept in the registry row
    user_ids: torch.Tensor
    movie_ids: torch.Tensor
    global_mean: torch.Tensor  # a 0-d buffer

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Self: ...

    def __call__(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor: ...

    def regularizer(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor: ...

    def user_side(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def movie_side(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def ranking_side(self) -> torch.Tensor | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Any) -> Any: ...

    def parameters(self) -> Any: ...

    def to(self, device: Any) -> Any: ...

    def cpu(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


class UserEmbeddings(nn.Module):
    """The user side every factorisation shares: an embedding and a bias per user index."""

    user_ids: torch.Tensor
    user_embedding: nn.Embedding
    user_bias: nn.Embedding

    def user_side(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(user ids, vectors, biases) to publish into model.user_latent_attributes."""
        return (
            self.user_ids,
            self.user_embedding.weight.detach(),
            self.user_bias.weight.detach().squeeze(-1),
        )
