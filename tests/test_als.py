"""The alternating least squares solver of the mf rating objective (no database needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from movrec import als
from movrec.training import Ratings, TrainOptions, fit
from movrec_cli.generate import Plan, rating_chunks, synthetic_movies


def planted(n_users: int = 300, n_movies: int = 200, n_ratings: int = 12_000) -> Ratings:
    """The generator's ratings: taste x genre affinity, user and movie biases, noise."""
    plan = Plan(n_users, n_movies, n_ratings, seed=5)
    _, _, genres = synthetic_movies(n_movies, np.random.default_rng(plan.seed))
    parts = list(rating_chunks(plan, genres))
    users, movies, ratings, _ = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Ratings(users.astype(np.int64), movies.astype(np.int64), ratings.astype(np.float32))


@pytest.fixture(scope="module")
def data() -> Ratings:
    return planted()


def test_als_recovers_the_planted_structure_as_well_as_adam(data: Ratings) -> None:
    _, adam = fit(data, "mf", TrainOptions.parse({"seed": 1, "dim": 16, "batch_size": 512}))
    _, solved = fit(
        data, "mf", TrainOptions.parse({"seed": 1, "dim": 16, "solver": "als", "epochs": 10})
    )
    assert solved["val_rmse"] < 0.75 * solved["baseline_val_rmse"]
    assert solved["val_rmse"] <= adam["val_rmse"] + 0.01
    assert solved["best_epoch"] <= 10


def test_a_sweep_solves_each_side_exactly(data: Ratings) -> None:
    """After the user half of a sweep, the objective's gradient in every user's row is zero."""
    from movrec.models import MatrixFactorization

    torch.manual_seed(0)
    u_ids, u = np.unique(data.users, return_inverse=True)
    m_ids, m = np.unique(data.movies, return_inverse=True)
    model = MatrixFactorization(
        torch.from_numpy(u_ids), torch.from_numpy(m_ids), dim=8, global_mean=3.5
    )
    reg = 0.1
    solver = als.AlternatingLeastSquares(model, u, m, data.ratings, reg)
    solver.sweep()
    model.movie_embedding.weight.requires_grad_(False)
    ut, mt = torch.from_numpy(u), torch.from_numpy(m)
    err = model(ut, mt) - torch.from_numpy(data.ratings)
    objective = (err**2).sum() + reg * model.regularizer(ut, mt).sum()
    objective.backward()
    # the movie half ran last, so the users' rows are one solve behind: solve them again
    model.zero_grad()
    with torch.no_grad():
        mean = float(model.global_mean)
        target = solver.ratings - mean - model.movie_bias.weight[mt, 0]
        x = als.solve_side(
            solver.by_user, m, target, solver._with_ones(model.movie_embedding.weight), reg
        )
        model.user_embedding.weight.copy_(x[:, :-1])
        model.user_bias.weight[:, 0] = x[:, -1]
    err = model(ut, mt) - torch.from_numpy(data.ratings)
    objective = (err**2).sum() + reg * model.regularizer(ut, mt).sum()
    objective.backward()
    grad = model.user_embedding.weight.grad
    assert grad is not None and float(grad.abs().max()) < 1e-2
    assert float(model.user_bias.weight.grad.abs().max()) < 1e-2


def test_batches_stay_within_their_memory_bound() -> None:
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(500), rng.integers(1, 400, 500))
    side = als.Side.of(rows, 600)  # 100 rows have no ratings
    width = 33
    seen = []
    for batch in side.batches(width):
        longest = int(side.counts[batch].max())
        assert len(batch) == 1 or len(batch) * longest * width <= als.BATCH_ELEMENTS
        assert len(batch) <= als.BATCH_ROWS
        seen.append(batch)
    got = np.sort(np.concatenate(seen))
    assert np.array_equal(got, np.arange(500))


def test_als_is_for_mf_only() -> None:
    with pytest.raises(Exception, match="solver 'als' solves the rating objective of mf only"):
        TrainOptions.parse({"solver": "als"}, "hybrid")
    with pytest.raises(Exception, match="solver must be adam or als"):
        TrainOptions.parse({"solver": "sgd"}, "mf")
