"""CF quality outside the database: coverage and RMSE per variant on a seeded 90/10 split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from movrec.metrics import split

QUALITY_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults (corr >= 0.65, overlap >= 14)", {}),
    ("shrinkage 25", {"shrinkage": 25.0}),
    ("shrinkage 100", {"shrinkage": 100.0}),
    ("baseline-centred", {"baseline": True}),
    ("baseline-centred + shrinkage 25", {"baseline": True, "shrinkage": 25.0}),
    ("damping 2", {"damping": 2.0}),
    ("baseline-centred + damping 2", {"baseline": True, "damping": 2.0}),
    (
        "baseline-centred + shrinkage 25 + damping 1",
        {"baseline": True, "shrinkage": 25.0, "damping": 1.0},
    ),
    ("corr >= 0.3, overlap >= 5", {"min_corr": 0.3, "min_overlap": 5}),
    (
        "corr >= 0.3, overlap >= 5, baseline + shrinkage 25 + damping 1",
        {"min_corr": 0.3, "min_overlap": 5, "baseline": True, "shrinkage": 25.0, "damping": 1.0},
    ),
]


def split_ratings(ratings_csv: Path, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) as float64 arrays of (user, movie, rating) rows, by movrec.metrics.split."""
    import pandas as pd

    df = pd.read_csv(ratings_csv, usecols=["userId", "movieId", "rating"])
    data = df[["userId", "movieId", "rating"]].to_numpy(dtype=np.float64)
    train, test = split(len(data), seed)
    return data[train], data[test]


def quality_cf(
    ratings_csv: Path,
    variants: Sequence[tuple[str, dict[str, Any]]] = QUALITY_VARIANTS,
    seed: int = 42,
) -> list[tuple[Any, ...]]:
    """Coverage (test rows with a prediction) and RMSE on covered rows, per variant.

    Uses movrec.cf's functions on a RatingsIndex of the training rows, so the
    numbers are those of the database version.  The last column is the RMSE, on
    the same covered rows, of the baseline alone (mu + b_u + b_m): what the
    neighbours add.
    """
    from movrec import cf

    train, test = split_ratings(ratings_csv, seed)
    ix = cf.RatingsIndex.from_arrays(
        train[:, 0].astype(np.int64), train[:, 1].astype(np.int64), train[:, 2]
    )
    mu, b_user, b_movie = ix.baselines()
    t_user, t_movie, t_rating = test[:, 0].astype(np.int64), test[:, 1].astype(np.int64), test[:, 2]
    movie_idx = ix.movie_indices(t_movie)
    user_idx = np.array(
        [ix.user_index(int(u)) if ix.user_index(int(u)) is not None else -1 for u in t_user]
    )
    baseline_pred = (
        mu
        + np.where(user_idx >= 0, b_user[np.maximum(user_idx, 0)], 0.0)
        + np.where(movie_idx >= 0, b_movie[np.maximum(movie_idx, 0)], 0.0)
    )
    order = np.argsort(t_user, kind="stable")
    bounds = np.flatnonzero(np.diff(t_user[order])) + 1
    groups = np.split(order, bounds)
    rows: list[tuple[Any, ...]] = []
    for label, overrides in variants:
        opt = cf.Options(**overrides)
        pred = np.full(len(test), np.nan)
        for rows_of_user in groups:
            scores = cf.score_all(ix, int(t_user[rows_of_user[0]]), opt)
            if len(scores.movies) == 0:
                continue
            m = movie_idx[rows_of_user]
            at = np.searchsorted(scores.movies, m)
            hit = (m >= 0) & (at < len(scores.movies))
            hit[hit] = scores.movies[at[hit]] == m[hit]
            pred[rows_of_user[hit]] = scores.score[at[hit]]
        covered = ~np.isnan(pred)
        err = pred[covered] - t_rating[covered]
        clipped = np.clip(pred[covered], 0.5, 5.0) - t_rating[covered]
        base_err = baseline_pred[covered] - t_rating[covered]
        rows.append(
            (
                label,
                f"{covered.mean():.1%}",
                int(covered.sum()),
                float(np.sqrt(np.mean(err**2))) if covered.any() else None,
                float(np.sqrt(np.mean(clipped**2))) if covered.any() else None,
                float(np.sqrt(np.mean(base_err**2))) if covered.any() else None,
            )
        )
    all_err = baseline_pred - t_rating
    rows.append(
        (
            "baseline alone (mu + b_u + b_m), all rows",
            "100.0%",
            len(test),
            float(np.sqrt(np.mean(all_err**2))),
            float(np.sqrt(np.mean((np.clip(baseline_pred, 0.5, 5) - t_rating) ** 2))),
            None,
        )
    )
    return rows
