"""Base matrix factorisation: user and movie embeddings plus biases."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from movrec.models.base import UserEmbeddings


class MatrixFactorization(UserEmbeddings):
    """rating ~ global_mean + b_u + b_m + <u, m>.

    The index->id maps are buffers, so a checkpoint (the state_dict) is
    self-contained: deploy needs nothing else to publish the vectors.
    """

    kind: ClassVar[str] = "mf"
    deployable: ClassVar[bool] = True
    config: dict[str, Any]
    global_mean: torch.Tensor
    movie_ids: torch.Tensor

    def __init__(
        self,
        user_ids: torch.Tensor,
        movie_ids: torch.Tensor,
        dim: int = 100,
        global_mean: float = 3.5,
        init_std: float = 0.05,
    ) -> None:
        super().__init__()
        self.config = {"dim": dim}
        self.user_embedding = nn.Embedding(len(user_ids), dim)
        self.movie_embedding = nn.Embedding(len(movie_ids), dim)
        self.user_bias = nn.Embedding(len(user_ids), 1)
        self.movie_bias = nn.Embedding(len(movie_ids), 1)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.movie_embedding.weight, std=init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.movie_bias.weight)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.register_buffer("user_ids", user_ids.to(torch.int64))
        self.register_buffer("movie_ids", movie_ids.to(torch.int64))

    def forward(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        u = self.user_embedding(users)
        m = self.movie_embedding(movies)
        return (
            (u * m).sum(-1)
            + self.user_bias(users).squeeze(-1)
            + self.movie_bias(movies).squeeze(-1)
            + self.global_mean
        )

    def regularizer(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        """L2 on the rows a batch touches (weight decay on all rows would shrink unseen ones)."""
        return (
            (self.user_embedding(users) ** 2).sum(-1)
            + (self.movie_embedding(movies) ** 2).sum(-1)
            + 0.1
            * (self.user_bias(users).squeeze(-1) ** 2 + self.movie_bias(movies).squeeze(-1) ** 2)
        )

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], config: dict[str, Any] | None = None
    ) -> MatrixFactorization:
        dim = state["user_embedding.weight"].shape[1]
        model = cls(
            state["user_ids"], state["movie_ids"], dim=dim, global_mean=float(state["global_mean"])
        )
        model.load_state_dict(state)
        return model

    def movie_side(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(movie ids, vectors, biases): the movie representation serving multiplies with."""
        return (
            self.movie_ids,
            self.movie_embedding.weight.detach(),
            self.movie_bias.weight.detach().squeeze(-1),
        )

    def ranking_side(self) -> None:
        """MF ranks by predicted rating: no ranking head."""
        return None
