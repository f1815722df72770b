"""Alternating least squares for the rating objective of matrix factorisation.

The model is the one SGD trains (``MatrixFactorization``)::

    r ~ mu + b_u + b_m + <p_u, q_m>

and so is the objective, summed over the training ratings::

    sum (r - r_hat)^2 + reg * (n_u |p_u|^2 + n_m |q_m|^2 + 0.1 n_u b_u^2 + 0.1 n_m b_m^2)

(SGD's per-rating L2 on the rows a batch touches is this weighted-lambda penalty).  With the
movie side fixed, each user's ``[p_u, b_u]`` is the solution of a (dim + 1)-square linear
system, and the same holds the other way round, so one sweep solves every user, then every
movie, exactly.  Systems are built and solved in batches of rows with similar rating counts,
padded to the batch's longest row, so the work is one ``bmm`` and one Cholesky solve per
batch and no Python loop runs over rows: a sweep costs about ``n_ratings * (dim + 1)^2``
multiply-adds per side, where an SGD epoch with Adam also rewrites every parameter at every
step (at 20M ratings, 18,545 steps of 16.5M parameters each).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from movrec import backend

if TYPE_CHECKING:
    import torch

    from movrec.models.mf import MatrixFactorization

BIAS_REG = 0.1  # the bias terms' share of the penalty, as in MatrixFactorization.regularizer
BATCH_ELEMENTS = 1 << 23  # padded ratings x (dim + 1) floats per batch: 32 MiB of float32
BATCH_ROWS = 2048  # systems per batch: 2048 x 101^2 floats of Gram matrices are 84 MiB


@dataclass
class Side:
    """The ratings of one side (users or movies) as rows: CSR over the training ratings."""

    ptr: np.ndarray  # int64, row i's ratings are order[ptr[i]:ptr[i + 1]]
    order: np.ndarray  # int64 positions into the training arrays, grouped by row
    counts: np.ndarray  # int64 ratings per row
    by_count: np.ndarray  # rows sorted by count: batches of similar length pad little

    @classmethod
    def of(cls, rows: np.ndarray, n: int) -> Side:
        order = np.argsort(rows, kind="stable").astype(np.int64)
        counts = np.bincount(rows, minlength=n).astype(np.int64)
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        return cls(ptr, order, counts, np.argsort(counts, kind="stable").astype(np.int64))

    def batches(self, width: int) -> Iterator[np.ndarray]:
        """Rows with ratings, in batches whose padded size stays under BATCH_ELEMENTS."""
        rows = self.by_count[self.counts[self.by_count] > 0]
        lengths = self.counts[rows]  # ascending: a batch's last row is its longest
        start, budget = 0, max(1, BATCH_ELEMENTS // width)
        while start < len(rows):
            lo, hi = start + 1, min(len(rows), start + BATCH_ROWS)  # the largest stop that fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if (mid - start) * lengths[mid - 1] <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            yield rows[start:lo]
            start = lo


def solve_side(
    side: Side,
    other: np.ndarray,
    target: torch.Tensor,
    features: torch.Tensor,
    reg: float,
) -> torch.Tensor:
    """Every row's ``[vector, bias]`` given the other side's ``features`` (``[vector, 1]``).

    ``other`` holds, per training rating, the index of the other side's row; ``target`` the
    rating minus what the fixed terms predict (mu and the other side's bias).
    """
    import torch

    n, width = len(side.counts), features.shape[1]
    device = features.device
    out = torch.zeros((n, width), dtype=features.dtype, device=device)
    penalty = torch.full((width,), reg, dtype=features.dtype, device=device)
    penalty[-1] = reg * BIAS_REG
    other_t = torch.from_numpy(other).to(device)
    order_t = torch.from_numpy(side.order).to(device)
    for rows in side.batches(width):
        backend.check_interrupts()  # a cancel or terminate ends the sweep within a batch
        counts = side.counts[rows]
        longest = int(counts.max())
        lanes = np.arange(longest)
        mask_np = lanes[None, :] < counts[:, None]
        pos_np = side.ptr[rows][:, None] + np.minimum(lanes[None, :], counts[:, None] - 1)
        pos = order_t[torch.from_numpy(pos_np).to(device)]
        mask = torch.from_numpy(mask_np).to(device=device, dtype=features.dtype)
        y = features[other_t[pos]] * mask[..., None]  # (rows, longest, width)
        t = target[pos] * mask
        n_r = torch.from_numpy(counts).to(device=device, dtype=features.dtype)
        d = n_r[:, None] * penalty[None, :]  # the diagonal penalty of each row's system
        # fewer ratings than unknowns: the ratings-square system is the smaller one
        dual = longest < width and reg > 0
        solved = _solve_dual(y, t, d) if dual else _solve_primal(y, t, d)
        out[torch.from_numpy(rows).to(device)] = solved
    return out


def _solve_primal(y: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x = (Y'Y + D)^-1 Y't per row: a width-square system."""
    import torch

    gram = torch.bmm(y.transpose(1, 2), y)
    gram.diagonal(dim1=1, dim2=2).add_(d)
    rhs = torch.bmm(y.transpose(1, 2), t[..., None])
    return _spd_solve(gram, rhs).squeeze(-1)


def _solve_dual(y: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The same x for rows with fewer ratings than unknowns, through a ratings-square system:
    (Y'Y + D)^-1 Y' = D^-1 Y' (Y D^-1 Y' + I)^-1.  Padded lanes have y = 0 and t = 0, so
    they add an identity row that solves to 0."""
    import torch

    scaled = y / d[:, None, :]  # Y D^-1
    kernel = torch.bmm(scaled, y.transpose(1, 2))
    kernel.diagonal(dim1=1, dim2=2).add_(1.0)
    a = _spd_solve(kernel, t[..., None])
    return torch.bmm(scaled.transpose(1, 2), a).squeeze(-1)


def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import torch

    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):  # only with reg = 0 and a degenerate row: least squares
        return torch.linalg.lstsq(a, b).solution
    return torch.cholesky_solve(b, chol)


class AlternatingLeastSquares:
    """Sweeps of exact per-row solves over a ``MatrixFactorization``'s parameters, in place."""

    def __init__(
        self,
        model: MatrixFactorization,
        users: np.ndarray,
        movies: np.ndarray,
        ratings: np.ndarray,
        reg: float,
    ) -> None:
        import torch

        self.model, self.reg = model, reg
        weight = model.user_embedding.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.users, self.movies = users.astype(np.int64), movies.astype(np.int64)
        self.ratings = torch.from_numpy(ratings.astype(np.float32)).to(self.device)
        self.by_user = Side.of(self.users, model.user_embedding.num_embeddings)
        self.by_movie = Side.of(self.movies, model.movie_embedding.num_embeddings)

    def _with_ones(self, vectors: torch.Tensor) -> torch.Tensor:
        import torch

        ones = torch.ones((vectors.shape[0], 1), dtype=self.dtype, device=self.device)
        return torch.cat([vectors, ones], dim=1)

    def sweep(self) -> None:
        """Solve every user given the movies, then every movie given the users."""
        import torch

        m = self.model
        mu = float(m.global_mean)
        with torch.no_grad():
            m_idx = torch.from_numpy(self.movies).to(self.device)
            u_idx = torch.from_numpy(self.users).to(self.device)
            target = self.ratings - mu - m.movie_bias.weight[m_idx, 0]
            x = solve_side(
                self.by_user,
                self.movies,
                target,
                self._with_ones(m.movie_embedding.weight),
                self.reg,
            )
            users_solved = self.by_user.counts > 0
            keep = torch.from_numpy(users_solved).to(self.device)
            m.user_embedding.weight[keep] = x[keep, :-1]
            m.user_bias.weight[keep, 0] = x[keep, -1]
            target = self.ratings - mu - m.user_bias.weight[u_idx, 0]
            x = solve_side(
                self.by_movie,
                self.users,
                target,
                self._with_ones(m.user_embedding.weight),
                self.reg,
            )
            keep = torch.from_numpy(self.by_movie.counts > 0).to(self.device)
            m.movie_embedding.weight[keep] = x[keep, :-1]
            m.movie_bias.weight[keep, 0] = x[keep, -1]

    def train_sse(self) -> float:
        """The summed squared error over the training ratings (the loss SGD's epoch returns)."""
        import torch

        with torch.no_grad():
            total = 0.0
            for start in range(0, len(self.users), 1 << 20):
                stop = start + (1 << 20)
                u = torch.from_numpy(self.users[start:stop]).to(self.device)
                mv = torch.from_numpy(self.movies[start:stop]).to(self.device)
                err = self.model(u, mv) - self.ratings[start:stop]
                total += float((err * err).sum())
            return total
