"""MLPModel: user vectors and movie content through an MLP.

Not a factorisation, so it is registered and evaluated but cannot be deployed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from movrec.models.hybrid import HybridModel


class MLPModel(HybridModel):
    """rating = MLP([user vector, movie content features]): not a factorisation, not deployable."""

    kind: ClassVar[str] = "mlp"
    deployable: ClassVar[bool] = False
    uses_id_embedding: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ranking"] = False
        super().__init__(*args, **kwargs)
        dim, hidden = self.config["dim"], self.config["hidden"]
        self.head = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        vec, bias, _ = self.movie_repr(movies)
        x = torch.cat([self.user_embedding(users), vec], dim=1)
        return (
            self.head(x).squeeze(-1) + bias + self.user_bias(users).squeeze(-1) + self.global_mean
        )
