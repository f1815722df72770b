"""Synthetic ratings with a planted taste structure, deterministic by seed.

Each user has a taste for each genre; a movie's appeal to a user is the user's
taste over the movie's genres (normalised), plus the movie's quality and the
user's bias.  Users mostly watch popular movies and movies they like, as real
users do.  What a model should learn is therefore known: the taste term plus
the biases; what is left is rating noise and half-star rounding.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

import numpy as np

from movrec.content import GENRES


@dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    year: int
    genres: tuple[str, ...]


@dataclass(frozen=True)
class SyntheticRatings:
    users: np.ndarray  # int32, 1-based
    movies: np.ndarray  # int32 movie ids
    ratings: np.ndarray  # float32 half stars
    seconds: np.ndarray  # int64 offsets from 2020-01-01 UTC, increasing per user
    taste: np.ndarray  # (n_users, n_genres): the planted structure
    noise_std: float

    def __len__(self) -> int:
        return len(self.ratings)


def load_catalog() -> list[Movie]:
    text = resources.files("movrec.demo").joinpath("catalog.csv").read_text(encoding="utf-8")
    return [
        Movie(int(r["movie_id"]), r["title"], int(r["year"]), tuple(r["genres"].split("|")))
        for r in csv.DictReader(text.splitlines())
    ]


def genre_matrix(genres: list[tuple[str, ...]]) -> np.ndarray:
    """Row-normalised multi-hot genres, so every movie's taste term has the same scale."""
    index = {g: i for i, g in enumerate(GENRES)}
    x = np.zeros((len(genres), len(GENRES)), dtype=np.float64)
    for row, gs in enumerate(genres):
        for g in gs:
            x[row, index[g]] = 1.0
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


def generate(
    movies: list[Movie],
    n_users: int = 600,
    seed: int = 42,
    mean_ratings: float = 40.0,
    taste_std: float = 0.8,
    noise_std: float = 0.35,
    block: int = 2048,
) -> SyntheticRatings:
    rng = np.random.default_rng(seed)
    n_movies = len(movies)
    ids = np.array([m.movie_id for m in movies], dtype=np.int32)
    x = genre_matrix([m.genres for m in movies])
    quality = rng.normal(0.0, 0.35, n_movies)
    popularity = np.log(1.0 / (1.0 + rng.permutation(n_movies)) ** 0.9)  # Zipf-like, log weight
    taste = rng.normal(0.0, taste_std, (n_users, len(GENRES)))
    bias = rng.normal(0.0, 0.3, n_users)
    counts = np.clip(rng.lognormal(np.log(mean_ratings), 0.5, n_users).astype(int), 5, n_movies)

    users, items, ratings, seconds = [], [], [], []
    for start in range(0, n_users, block):
        stop = min(start + block, n_users)
        affinity = taste[start:stop] @ x.T  # (b, n_movies)
        # Gumbel top-k: sample without replacement with p ~ popularity * exp(0.7 affinity)
        keys = popularity + 0.7 * affinity + rng.gumbel(size=affinity.shape)
        order = np.argsort(-keys, axis=1)
        for row in range(stop - start):
            u = start + row
            chosen = order[row, : counts[u]]
            true = 3.5 + bias[u] + quality[chosen] + affinity[row, chosen]
            noisy = true + rng.normal(0.0, noise_std, len(chosen))
            users.append(np.full(len(chosen), u + 1, dtype=np.int32))
            items.append(ids[chosen])
            ratings.append(np.clip(np.round(noisy * 2) / 2, 0.5, 5.0).astype(np.float32))
            seconds.append(u * 86_400 + np.arange(len(chosen), dtype=np.int64) * 600)
    return SyntheticRatings(
        np.concatenate(users),
        np.concatenate(items),
        np.concatenate(ratings),
        np.concatenate(seconds),
        taste,
        noise_std,
    )
